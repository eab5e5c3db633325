#include "dropout.h"

#include "simd.h"

namespace gc {

namespace {

// A 64-bit finaliser (xor-shift / multiply rounds) spreading any counter over all bits.
GC_INLINE std::uint64_t mix64(std::uint64_t z) {
  z ^= z >> 31;
  z *= 0x7fb5d329728ea185ull;
  z ^= z >> 27;
  z *= 0x81dadef4bc2dd44dull;
  z ^= z >> 33;
  return z;
}

template <class T>
GC_INLINE void forward_range(const T* x, T* y, std::uint8_t* mask, index_t lo, index_t hi, std::uint32_t threshold,
                             T scale, std::uint64_t key, std::uint64_t offset) {
#pragma omp simd
  for (index_t i = lo; i < hi; ++i) {
    const std::uint64_t h = mix64(key ^ ((offset + std::uint64_t(i)) * 0x9e3779b97f4a7c15ull));
    const std::uint8_t keep = std::uint32_t(h >> 40) >= threshold;  // top 24 bits, uniform
    mask[i] = keep;
    y[i] = keep ? x[i] * scale : T(0);
  }
}

template <class T>
GC_INLINE void backward_range(const T* dy, const std::uint8_t* mask, T* dx, index_t lo, index_t hi, T scale) {
#pragma omp simd
  for (index_t i = lo; i < hi; ++i) dx[i] = mask[i] ? dy[i] * scale : T(0);
}

GC_SIMD_DISPATCH(void, fwd, forward_range,
                 (const T* x, T* y, std::uint8_t* m, index_t lo, index_t hi, std::uint32_t t, T s, std::uint64_t k,
                  std::uint64_t o),
                 (x, y, m, lo, hi, t, s, k, o))
GC_SIMD_DISPATCH(void, bwd, backward_range, (const T* g, const std::uint8_t* m, T* d, index_t lo, index_t hi, T s),
                 (g, m, d, lo, hi, s))

// Grains (parallel.h), measured with benchmarks/threads.py on the 2-core EPYC VM, float32,
// 1 vs 2 threads: the forward hashes every index (~0.9 ns per value), 256K: 226 us vs
// 235 us, 512K: 443 us vs 309 us; the backward is a bandwidth-bound select,
// 1M: 119 us vs 130 us, 2M: 538 us vs 434 us.
constexpr index_t kForwardGrain = index_t(1) << 18;
constexpr index_t kBackwardGrain = index_t(1) << 20;

}  // namespace

template <class T>
void dropout_forward(const T* x, T* y, std::uint8_t* mask, index_t n, double p, std::uint64_t seed,
                     std::uint64_t offset) {
  const std::uint32_t threshold = static_cast<std::uint32_t>(p * 16777216.0);
  const double scale = 1.0 / (1.0 - p);
  const std::uint64_t key = mix64(seed + 0x632be59bd9b4e019ull);
  // The mask of element i does not depend on where the runs are cut.
  parallel_runs(n, n, kForwardGrain, [&](index_t lo, index_t hi) {
    fwd(x, y, mask, lo, hi, threshold, T(scale), key, offset);
  });
}

template <class T>
void dropout_backward(const T* dy, const std::uint8_t* mask, T* dx, index_t n, double p) {
  const double scale = 1.0 / (1.0 - p);
  parallel_runs(n, n, kBackwardGrain, [&](index_t lo, index_t hi) { bwd(dy, mask, dx, lo, hi, T(scale)); });
}

template void dropout_forward<float>(const float*, float*, std::uint8_t*, index_t, double, std::uint64_t, std::uint64_t);
template void dropout_forward<double>(const double*, double*, std::uint8_t*, index_t, double, std::uint64_t,
                                      std::uint64_t);
template void dropout_backward<float>(const float*, const std::uint8_t*, float*, index_t, double);
template void dropout_backward<double>(const double*, const std::uint8_t*, double*, index_t, double);

}  // namespace gc
