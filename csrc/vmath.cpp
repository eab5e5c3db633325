// Array drivers of the vector math functions (vmath.h): a `#pragma omp simd` loop per
// function, dispatched per CPU (simd.h), split over threads above a measured grain.
#include "vmath.h"

#include <stdexcept>

namespace gc {

namespace {

struct NamedFn {
  const char* name;
  VFn fn;
};
constexpr NamedFn kFns[] = {{"exp", VFn::exp},   {"expm1", VFn::expm1}, {"log1p", VFn::log1p},
                            {"tanh", VFn::tanh}, {"erf", VFn::erf},     {"erfc", VFn::erfc}};

template <class T, class F>
GC_INLINE void map(const T* x, T* y, index_t n, F f) {
  // y may alias x: every iteration reads and writes only its own index.
#pragma omp simd
  for (index_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

template <class T>
GC_INLINE void apply_range(VFn fn, const T* x, T* y, index_t n) {
  switch (fn) {
    case VFn::exp: map(x, y, n, [](T v) { return vmath::exp(v); }); break;
    case VFn::expm1: map(x, y, n, [](T v) { return vmath::expm1(v); }); break;
    case VFn::log1p: map(x, y, n, [](T v) { return vmath::log1p(v); }); break;
    case VFn::tanh: map(x, y, n, [](T v) { return vmath::tanh(v); }); break;
    case VFn::erf: map(x, y, n, [](T v) { return vmath::erf(v); }); break;
    case VFn::erfc: map(x, y, n, [](T v) { return vmath::erfc(v); }); break;
  }
}

GC_SIMD_DISPATCH(void, apply_k, apply_range, (VFn f, const T* x, T* y, index_t n), (f, x, y, n))

// The baseline code alone (not cloned), for generic = true.
void apply_generic(VFn f, const float* x, float* y, index_t n) { apply_range(f, x, y, n); }
void apply_generic(VFn f, const double* x, double* y, index_t n) { apply_range(f, x, y, n); }

// Values per thread before a second thread pays for its wake-up (parallel.h). Measured
// with benchmarks/threads.py ("vmath" rows) on the 2-core VM, 1 vs 2 threads: waking the
// second thread costs ~60 us (exp float32 128K: 51 us on 1 thread, 85 us on 2; 1M: 435
// vs 285 us), so a second thread pays once each half takes longer than ~75 us. The grain
// is that time over the function's cost per value on one thread (ns, AVX2 clone, float /
// double, benchmarks/kernels.py --elementwise).
constexpr double kForkNs = 75000.0;
constexpr double kCostNs[][2] = {
    {0.45, 1.1},  // exp
    {0.5, 1.2},   // expm1
    {0.85, 1.9},  // log1p
    {0.9, 2.3},   // tanh
    {1.8, 5.0},   // erf
    {1.8, 7.4},   // erfc
};

index_t grain_of(VFn f, bool is_double) {
  return static_cast<index_t>(kForkNs / kCostNs[static_cast<int>(f)][is_double ? 1 : 0]);
}

}  // namespace

VFn parse_vfn(const std::string& name) {
  for (const auto& e : kFns)
    if (name == e.name) return e.fn;
  std::string valid;
  for (const auto& e : kFns) valid += (valid.empty() ? "" : ", ") + std::string(e.name);
  throw std::invalid_argument("unknown function '" + name + "'; valid names: " + valid);
}

template <class T>
void vmath_apply(VFn f, const T* x, T* y, index_t n, bool generic) {
  if (n <= 0) return;
  parallel_runs(n, n, grain_of(f, sizeof(T) == sizeof(double)), [&](index_t lo, index_t hi) {
    if (generic) apply_generic(f, x + lo, y + lo, hi - lo);
    else apply_k(f, x + lo, y + lo, hi - lo);
  });
}

template void vmath_apply<float>(VFn, const float*, float*, index_t, bool);
template void vmath_apply<double>(VFn, const double*, double*, index_t, bool);

}  // namespace gc
