// The compiled plan's forward of small Dense layers (dense_small.h): an AVX-512 register-
// tiled kernel, its own family beside dense.cpp's BLAS path.
#include "dense_small.h"

#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GC_SMALL_DENSE 1
#else
#define GC_SMALL_DENSE 0
#endif

namespace gc {

// ------------------------------------------------------------------------------ small dense forward
// dense_forward_small (dense_small.h). W is transposed into a zero-padded stack tile
// wt (in, outp) (outp: out rounded up to whole vectors), then each tile of R rows x NV
// vectors of outputs keeps its accumulators in registers over the whole k loop:
// acc = fma(x[r, k], wt[k, :], acc) for k = 0, 1, ... from zero, then y = acc + b. That is
// the order of OpenBLAS's blocked SkylakeX / Haswell kernels (one FMA chain per output,
// alpha = 1 applied as acc * 1 + C with C = b), so the results are the eager path's bit
// for bit (tests/test_compiled_small.py). Its small-matrix TN kernel (taken when k >= 32
// and out * rows <= 1200) sums in another order: those shapes stay on the BLAS.

#if GC_SMALL_DENSE
namespace {

constexpr index_t kSmallMax = 64;

template <class T>
struct V512;
template <>
struct V512<float> {
  using v = __m512;
  static constexpr int lanes = 16;
  __attribute__((target("avx512f"))) static v zero() { return _mm512_setzero_ps(); }
  __attribute__((target("avx512f"))) static v load(const float* p) { return _mm512_load_ps(p); }
  __attribute__((target("avx512f"))) static v bcast(const float* p) { return _mm512_set1_ps(*p); }
  __attribute__((target("avx512f"))) static v fma(v a, v b, v c) { return _mm512_fmadd_ps(a, b, c); }
  __attribute__((target("avx512f"))) static v add(v a, v b) { return _mm512_add_ps(a, b); }
  __attribute__((target("avx512f"))) static void store(float* p, v a, int n) {
    if (n >= lanes) _mm512_storeu_ps(p, a);
    else _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), a);
  }
};
template <>
struct V512<double> {
  using v = __m512d;
  static constexpr int lanes = 8;
  __attribute__((target("avx512f"))) static v zero() { return _mm512_setzero_pd(); }
  __attribute__((target("avx512f"))) static v load(const double* p) { return _mm512_load_pd(p); }
  __attribute__((target("avx512f"))) static v bcast(const double* p) { return _mm512_set1_pd(*p); }
  __attribute__((target("avx512f"))) static v fma(v a, v b, v c) { return _mm512_fmadd_pd(a, b, c); }
  __attribute__((target("avx512f"))) static v add(v a, v b) { return _mm512_add_pd(a, b); }
  __attribute__((target("avx512f"))) static void store(double* p, v a, int n) {
    if (n >= lanes) _mm512_storeu_pd(p, a);
    else _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1u), a);
  }
};

// R rows x NV vectors: Y[r, j0 + ...] = sum_k X[r, k] wt[k, j0 + ...] (+ bias), the first
// `cols` columns stored.
template <class T, int R, int NV>
__attribute__((target("avx512f"), always_inline)) inline void small_tile(const T* X, index_t in, const T* wt,
                                                                         index_t outp, const T* bias, T* Y,
                                                                         index_t ldy, index_t cols) {
  using S = V512<T>;
  typename S::v acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = S::zero();
  for (index_t k = 0; k < in; ++k) {
    typename S::v w[NV];
    for (int j = 0; j < NV; ++j) w[j] = S::load(wt + k * outp + j * S::lanes);
    for (int r = 0; r < R; ++r) {
      const typename S::v x = S::bcast(X + r * in + k);
      for (int j = 0; j < NV; ++j) acc[r][j] = S::fma(x, w[j], acc[r][j]);
    }
  }
  for (int j = 0; j < NV; ++j) {
    const int n = static_cast<int>(cols - j * S::lanes);
    if (n <= 0) break;
    const typename S::v bv = bias ? S::load(bias + j * S::lanes) : S::zero();
    for (int r = 0; r < R; ++r) S::store(Y + r * ldy + j * S::lanes, bias ? S::add(acc[r][j], bv) : acc[r][j], n);
  }
}

template <class T, int NV>
__attribute__((target("avx512f"))) void small_rows(const T* X, index_t rows, index_t in, const T* wt, index_t outp,
                                                   const T* bias, T* Y, index_t out) {
  constexpr int R = NV <= 2 ? 8 : 4;  // accumulators + weights within the 32 zmm registers
  index_t r = 0;
  for (; r + R <= rows; r += R) small_tile<T, R, NV>(X + r * in, in, wt, outp, bias, Y + r * out, out, out);
  for (; r < rows; ++r) small_tile<T, 1, NV>(X + r * in, in, wt, outp, bias, Y + r * out, out, out);
}

// out above 4 vectors (double, out > 32): panels of 4 vectors, one row at a time.
template <class T>
__attribute__((target("avx512f"))) void small_panels(const T* X, index_t rows, index_t in, const T* wt, index_t outp,
                                                     const T* bias, T* Y, index_t out) {
  constexpr index_t L = V512<T>::lanes;
  for (index_t j0 = 0; j0 < outp; j0 += 4 * L) {
    const index_t cols = out - j0 < 4 * L ? out - j0 : 4 * L;
    const T* w = wt + j0;
    const T* bj = bias ? bias + j0 : nullptr;
    for (index_t r = 0; r < rows; ++r) {
      const T* x = X + r * in;
      T* y = Y + r * out + j0;
      switch ((cols + L - 1) / L) {
        case 1: small_tile<T, 1, 1>(x, in, w, outp, bj, y, out, cols); break;
        case 2: small_tile<T, 1, 2>(x, in, w, outp, bj, y, out, cols); break;
        case 3: small_tile<T, 1, 3>(x, in, w, outp, bj, y, out, cols); break;
        default: small_tile<T, 1, 4>(x, in, w, outp, bj, y, out, cols); break;
      }
    }
  }
}

// wt (in, outp) = W^T zero-padded, one gather per vector of wt (W's column k, strided).
template <class T>
__attribute__((target("avx512f"))) void small_transpose(const T* W, T* wt, index_t in, index_t out, index_t outp);
template <>
__attribute__((target("avx512f"))) void small_transpose<float>(const float* W, float* wt, index_t in, index_t out,
                                                               index_t outp) {
  const __m512i lane = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(in)));
  for (index_t j0 = 0; j0 < outp; j0 += 16) {
    const index_t n = out - j0 < 16 ? out - j0 : 16;
    const __mmask16 m = static_cast<__mmask16>(n >= 16 ? 0xffffu : (1u << n) - 1u);
    const float* base = W + j0 * in;
    for (index_t k = 0; k < in; ++k)
      _mm512_store_ps(wt + k * outp + j0, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, lane, base + k, 4));
  }
}
template <>
__attribute__((target("avx512f"))) void small_transpose<double>(const double* W, double* wt, index_t in, index_t out,
                                                                index_t outp) {
  const __m256i lane = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                          _mm256_set1_epi32(static_cast<int>(in)));
  for (index_t j0 = 0; j0 < outp; j0 += 8) {
    const index_t n = out - j0 < 8 ? out - j0 : 8;
    const __mmask8 m = static_cast<__mmask8>(n >= 8 ? 0xffu : (1u << n) - 1u);
    const double* base = W + j0 * in;
    for (index_t k = 0; k < in; ++k)
      _mm512_store_pd(wt + k * outp + j0, _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m, lane, base + k, 8));
  }
}

template <class T>
bool small_dense_run(const T* X, const T* W, const T* b, T* Y, index_t rows, index_t in, index_t out) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!avx512) return false;
  constexpr index_t L = V512<T>::lanes;
  const index_t nv = (out + L - 1) / L;
  const index_t outp = nv * L;
  alignas(64) T wt[kSmallMax * kSmallMax];
  alignas(64) T bias[kSmallMax];
  small_transpose<T>(W, wt, in, out, outp);
  if (b) {
    for (index_t o = 0; o < out; ++o) bias[o] = b[o];
    for (index_t o = out; o < outp; ++o) bias[o] = T(0);
  }
  const T* bp = b ? bias : nullptr;
  switch (nv) {
    case 1: small_rows<T, 1>(X, rows, in, wt, outp, bp, Y, out); break;
    case 2: small_rows<T, 2>(X, rows, in, wt, outp, bp, Y, out); break;
    case 3: small_rows<T, 3>(X, rows, in, wt, outp, bp, Y, out); break;
    case 4: small_rows<T, 4>(X, rows, in, wt, outp, bp, Y, out); break;
    default: small_panels<T>(X, rows, in, wt, outp, bp, Y, out); break;
  }
  return true;
}

}  // namespace
#endif

template <class T>
bool dense_forward_small(const T* X, const T* W, const T* b, T* Y, T* Z, index_t rows, index_t in, index_t out,
                         Act act, double alpha) {
#if GC_SMALL_DENSE
  if (rows < 1 || in < 1 || out < 1 || in > kSmallMax || out > kSmallMax) return false;
  if (in >= 32 && out * rows <= 1200) return false;  // the BLAS's small-matrix kernel (its summation order)
  T* pre = (Z && act != Act::identity) ? Z : Y;
  if (!small_dense_run<T>(X, W, b, pre, rows, in, out)) return false;
  if (act != Act::identity) activation_forward<T>(act, pre, Y, rows * out, alpha);
  else if (Z && Z != Y) std::memcpy(Z, Y, sizeof(T) * static_cast<size_t>(rows * out));
  return true;
#else
  (void)X, (void)W, (void)b, (void)Y, (void)Z, (void)rows, (void)in, (void)out, (void)act, (void)alpha;
  return false;
#endif
}

template bool dense_forward_small<float>(const float*, const float*, const float*, float*, float*, index_t, index_t,
                                         index_t, Act, double);
template bool dense_forward_small<double>(const double*, const double*, const double*, double*, double*, index_t,
                                          index_t, index_t, Act, double);

}  // namespace gc
