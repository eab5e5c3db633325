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

GC_CLONES void fwd_f(const float* x, float* y, std::uint8_t* m, index_t lo, index_t hi, std::uint32_t t, float s,
                     std::uint64_t k, std::uint64_t o) {
  forward_range(x, y, m, lo, hi, t, s, k, o);
}
GC_CLONES void fwd_d(const double* x, double* y, std::uint8_t* m, index_t lo, index_t hi, std::uint32_t t, double s,
                     std::uint64_t k, std::uint64_t o) {
  forward_range(x, y, m, lo, hi, t, s, k, o);
}
GC_CLONES void bwd_f(const float* g, const std::uint8_t* m, float* d, index_t lo, index_t hi, float s) {
  backward_range(g, m, d, lo, hi, s);
}
GC_CLONES void bwd_d(const double* g, const std::uint8_t* m, double* d, index_t lo, index_t hi, double s) {
  backward_range(g, m, d, lo, hi, s);
}
void fwd(const float* x, float* y, std::uint8_t* m, index_t lo, index_t hi, std::uint32_t t, double s,
         std::uint64_t k, std::uint64_t o) {
  fwd_f(x, y, m, lo, hi, t, float(s), k, o);
}
void fwd(const double* x, double* y, std::uint8_t* m, index_t lo, index_t hi, std::uint32_t t, double s,
         std::uint64_t k, std::uint64_t o) {
  fwd_d(x, y, m, lo, hi, t, s, k, o);
}
void bwd(const float* g, const std::uint8_t* m, float* d, index_t lo, index_t hi, double s) {
  bwd_f(g, m, d, lo, hi, float(s));
}
void bwd(const double* g, const std::uint8_t* m, double* d, index_t lo, index_t hi, double s) {
  bwd_d(g, m, d, lo, hi, s);
}

template <class F>
void split(index_t n, F body) {
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int t = 0; t < threads; ++t) body(n * t / threads, n * (t + 1) / threads);
}

}  // namespace

template <class T>
void dropout_forward(const T* x, T* y, std::uint8_t* mask, index_t n, double p, std::uint64_t seed,
                     std::uint64_t offset) {
  const std::uint32_t threshold = static_cast<std::uint32_t>(p * 16777216.0);
  const double scale = 1.0 / (1.0 - p);
  const std::uint64_t key = mix64(seed + 0x632be59bd9b4e019ull);
  split(n, [&](index_t lo, index_t hi) { fwd(x, y, mask, lo, hi, threshold, scale, key, offset); });
}

template <class T>
void dropout_backward(const T* dy, const std::uint8_t* mask, T* dx, index_t n, double p) {
  const double scale = 1.0 / (1.0 - p);
  split(n, [&](index_t lo, index_t hi) { bwd(dy, mask, dx, lo, hi, scale); });
}

template void dropout_forward<float>(const float*, float*, std::uint8_t*, index_t, double, std::uint64_t, std::uint64_t);
template void dropout_forward<double>(const double*, double*, std::uint8_t*, index_t, double, std::uint64_t,
                                      std::uint64_t);
template void dropout_backward<float>(const float*, const std::uint8_t*, float*, index_t, double);
template void dropout_backward<double>(const double*, const std::uint8_t*, double*, index_t, double);

}  // namespace gc
