// Small Dense layers without the BLAS (dense_small.h): AVX-512 register-tiled kernels for
// the forward (the compiled plan's) and the backward's dW and dX (dense.cpp's
// dense_backward, eager and compiled), beside dense.cpp's BLAS path.
#include "dense_small.h"

#include <array>
#include <atomic>
#include <cstring>
#include <utility>

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
// alpha = 1 applied as acc * 1 + C with C = b), so there the results are the eager path's
// bit for bit. Its small-matrix TN kernel (taken when k >= 32 and out * rows <= 1200) sums
// in another order: on those shapes compiled and eager agree to rounding
// (tests/test_compiled_small.py, 1e-6 float32 / 1e-13 float64).

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
  __attribute__((target("avx512f"))) static v loadu(const float* p) { return _mm512_loadu_ps(p); }
  __attribute__((target("avx512f"))) static void store_a(float* p, v a) { _mm512_store_ps(p, a); }
  using mask = __mmask16;
  static mask mask_of(int n) { return static_cast<__mmask16>(n >= lanes ? 0xffffu : (1u << n) - 1u); }
  __attribute__((target("avx512f"))) static v maskz_load(mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  __attribute__((target("avx512f"))) static void mask_store(float* p, mask m, v a) { _mm512_mask_storeu_ps(p, m, a); }
  // lane l at p[l * stride]
  using index = __m512i;
  __attribute__((target("avx512f"))) static index strides(index_t stride) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32(static_cast<int>(stride)));
  }
  __attribute__((target("avx512f"))) static v gather(mask m, index ix, const float* p) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, ix, p, 4);
  }
  __attribute__((target("avx512f"))) static void scatter(float* p, mask m, index ix, v a) {
    _mm512_mask_i32scatter_ps(p, m, ix, a, 4);
  }
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
  __attribute__((target("avx512f"))) static v loadu(const double* p) { return _mm512_loadu_pd(p); }
  __attribute__((target("avx512f"))) static void store_a(double* p, v a) { _mm512_store_pd(p, a); }
  using mask = __mmask8;
  static mask mask_of(int n) { return static_cast<__mmask8>(n >= lanes ? 0xffu : (1u << n) - 1u); }
  __attribute__((target("avx512f"))) static v maskz_load(mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  __attribute__((target("avx512f"))) static void mask_store(double* p, mask m, v a) { _mm512_mask_storeu_pd(p, m, a); }
  using index = __m256i;
  __attribute__((target("avx512f"))) static index strides(index_t stride) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(static_cast<int>(stride)));
  }
  __attribute__((target("avx512f"))) static v gather(mask m, index ix, const double* p) {
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m, ix, p, 8);
  }
  __attribute__((target("avx512f"))) static void scatter(double* p, mask m, index ix, v a) {
    _mm512_mask_i32scatter_pd(p, m, ix, a, 8);
  }
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
__attribute__((target("avx512f"))) void small_transpose(const T* W, T* wt, index_t in, index_t out, index_t outp) {
  using S = V512<T>;
  constexpr index_t L = S::lanes;
  const typename S::index lane = S::strides(in);
  for (index_t j0 = 0; j0 < outp; j0 += L) {
    const typename S::mask m = S::mask_of(static_cast<int>(out - j0 < L ? out - j0 : L));
    const T* base = W + j0 * in;
    for (index_t k = 0; k < in; ++k) S::store_a(wt + k * outp + j0, S::gather(m, lane, base + k));
  }
}

template <class T>
bool small_dense_run(const T* X, const T* W, const T* b, T* Y, index_t rows, index_t in, index_t out) {
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


// ------------------------------------------------------------------------------ small dense backward
// dW = dY^T X: both operands row-major (batch, features), the sum runs over the batch rows.
// A tile keeps R x NV accumulators in registers over the whole batch: per row b, R
// broadcasts of one operand and NV vectors of the other, C[r, c] = sum_b P[b, r] Q[b, c].
// Two orientations: P = dY, Q = X (a tile of R output rows x NV vectors of inputs, stored
// as rows of dW), or, when the inputs fill the vectors worse than the outputs (in = 20:
// 2 vectors of which 12 lanes idle), P = X, Q = dY (R inputs x NV vectors of outputs,
// dW^T's tile, stored by scatter). Each dW value is one FMA chain over b in order from
// zero either way; accumulate adds the finished sum to dW (dW + sum, as leaf.grad += g
// and the BLAS's beta = 1 give it).
template <int NV>
constexpr int dw_max_rows() {
  return NV == 1 ? 16 : NV == 2 ? 12 : NV == 3 ? 8 : 6;  // accumulators + Q vectors in 32 zmm
}

// How a tile reads P and stores C: P (batch, rows) with C row-major (dW's rows), the same
// with C stored transposed (C[r, c] at C + c * ldc + r: dW^T's tile), or P (rows, k)
// row-major, its row r read along the sum's index (dX = dY W: P = dY, Q = W).
enum TileMode { kRowsC = 0, kTransC = 1, kRowsP = 2 };

// C (R, cols) = sum over k of P[k, r] Q[k, c] (kRowsP: P[r, k]), cols in (NV - 1, NV]
// vectors, P / Q / C offset to the tile's corner.
template <class T, int R, int NV, int MODE>
__attribute__((target("avx512f"), always_inline)) inline void dw_tile(const T* P, index_t ldp, const T* Q,
                                                                      index_t ldq, index_t batch, T* C,
                                                                      index_t ldc, index_t cols, bool accumulate) {
  using S = V512<T>;
  constexpr int L = S::lanes;
  const typename S::mask last = S::mask_of(static_cast<int>(cols - (NV - 1) * L));
  typename S::v acc[R][NV];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) acc[r][j] = S::zero();
  for (index_t b = 0; b < batch; ++b) {
    const T* q = Q + b * ldq;
    const T* p = MODE == kRowsP ? P + b : P + b * ldp;
    typename S::v qv[NV];
    #pragma GCC unroll 16
    for (int j = 0; j < NV - 1; ++j) qv[j] = S::loadu(q + j * L);
    qv[NV - 1] = S::maskz_load(last, q + (NV - 1) * L);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const typename S::v pv = S::bcast(MODE == kRowsP ? p + r * ldp : p + r);
      #pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) acc[r][j] = S::fma(pv, qv[j], acc[r][j]);
    }
  }
  if constexpr (MODE == kTransC) {
    const typename S::index ix = S::strides(ldc);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      #pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) {
        const typename S::mask m = j < NV - 1 ? S::mask_of(L) : last;
        T* c = C + j * L * ldc + r;
        typename S::v a = acc[r][j];
        if (accumulate) a = S::add(S::gather(m, ix, c), a);
        S::scatter(c, m, ix, a);
      }
    }
  } else {
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      T* c = C + r * ldc;
      #pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) {
        const typename S::mask m = j < NV - 1 ? S::mask_of(L) : last;
        typename S::v a = acc[r][j];
        if (accumulate) a = S::add(S::maskz_load(m, c + j * L), a);
        S::mask_store(c + j * L, m, a);
      }
    }
  }
}

// dw_tile as a function of its own per (R, NV, MODE), reached through a table by R
// (inlined into one dispatcher, the tiles' accumulators spilled to the stack).
template <class T, int R, int NV, int MODE>
__attribute__((target("avx512f"), noinline)) void dw_tile_fn(const T* P, index_t ldp, const T* Q, index_t ldq,
                                                            index_t batch, T* C, index_t ldc, index_t cols,
                                                            bool accumulate) {
  dw_tile<T, R, NV, MODE>(P, ldp, Q, ldq, batch, C, ldc, cols, accumulate);
}

template <class T>
using dw_tile_ptr = void (*)(const T*, index_t, const T*, index_t, index_t, T*, index_t, index_t, bool);

template <class T, int NV, int MODE, int... Rm1>
constexpr std::array<dw_tile_ptr<T>, sizeof...(Rm1)> dw_tile_table(std::integer_sequence<int, Rm1...>) {
  return {{&dw_tile_fn<T, Rm1 + 1, NV, MODE>...}};
}

// C (rows, ldq) = the tiles' sums (dw_tile, MODE) over P and Q (len, ldq) row-major: P's
// `rows` broadcast values (P (len, ldp) read by column, kRowsP: P (rows, ldp) by row)
// times all of Q's columns, in panels of at most 4 vectors (float64 above 32 columns),
// each panel's rows split into tiles of nearly equal size. C (rows, ldq), ldc its row
// stride (dW, or dX with kRowsP), or kTransC: stored transposed, element (r, c) at
// C[c * ldc + r] (dW^T's tile). dW: len = batch; dX = dY W: P = dY, Q = W, len = out.
template <class T, int NV, int MODE>
__attribute__((target("avx512f"))) void tile_panel(const T* P, index_t ldp, const T* Q, index_t ldq, index_t len,
                                                   T* C, index_t ldc, index_t rows, index_t c0, index_t cols,
                                                   bool accumulate) {
  constexpr int RM = dw_max_rows<NV>();
  static constexpr auto table = dw_tile_table<T, NV, MODE>(std::make_integer_sequence<int, RM>());
  const index_t tiles = (rows + RM - 1) / RM;
  for (index_t t = 0; t < tiles; ++t) {
    const index_t r0 = rows * t / tiles, r1 = rows * (t + 1) / tiles;
    const T* p = MODE == kRowsP ? P + r0 * ldp : P + r0;
    T* c = MODE == kTransC ? C + c0 * ldc + r0 : C + r0 * ldc + c0;
    table[static_cast<size_t>(r1 - r0 - 1)](p, ldp, Q + c0, ldq, len, c, ldc, cols, accumulate);
  }
}

template <class T, int MODE>
void tile_run(const T* P, index_t ldp, const T* Q, index_t ldq, index_t len, T* C, index_t ldc, index_t rows,
              bool accumulate) {
  constexpr index_t L = V512<T>::lanes;
  for (index_t c0 = 0; c0 < ldq; c0 += 4 * L) {
    const index_t cols = ldq - c0 < 4 * L ? ldq - c0 : 4 * L;
    switch ((cols + L - 1) / L) {
      case 1: tile_panel<T, 1, MODE>(P, ldp, Q, ldq, len, C, ldc, rows, c0, cols, accumulate); break;
      case 2: tile_panel<T, 2, MODE>(P, ldp, Q, ldq, len, C, ldc, rows, c0, cols, accumulate); break;
      case 3: tile_panel<T, 3, MODE>(P, ldp, Q, ldq, len, C, ldc, rows, c0, cols, accumulate); break;
      default: tile_panel<T, 4, MODE>(P, ldp, Q, ldq, len, C, ldc, rows, c0, cols, accumulate); break;
    }
  }
}

// The orientation with fewer vector FMAs, counting each of the transposed tile's
// scatters (one per accumulator) as ~24 FMAs.
template <class T>
bool dw_transposed(index_t batch, index_t in, index_t out) {
  constexpr index_t L = V512<T>::lanes;
  const index_t normal = out * ((in + L - 1) / L), flipped = in * ((out + L - 1) / L);
  return batch * (normal - flipped) > 24 * flipped;
}

template <class T>
void small_dw_run(const T* X, const T* dY, T* dW, index_t batch, index_t in, index_t out, bool accumulate) {
  // P = X, Q = dY: tiles of inputs x outputs (dW^T's); P = dY, Q = X: outputs x inputs
  if (dw_transposed<T>(batch, in, out)) tile_run<T, kTransC>(X, in, dY, out, batch, dW, in, in, accumulate);
  else tile_run<T, kRowsC>(dY, out, X, in, batch, dW, in, out, accumulate);
}

// dX = dY W: tiles of R batch rows x NV vectors of inputs, dY's rows broadcast along the
// sum over the outputs, W (out, in) read in place: each dX value is one FMA chain over
// the outputs o in order from zero.
template <class T>
void small_dx_run(const T* dY, const T* W, T* dX, index_t batch, index_t in, index_t out) {
  tile_run<T, kRowsP>(dY, out, W, in, out, dX, in, batch, false);
}

// Where each kernel beats OpenBLAS 0.3.30 (SciPy 1.17's wheel, SkylakeX kernels), float32
// on the 2-core AVX-512 Xeon VM, one thread, thread CPU time, the two interleaved in one
// process, min over 7 rounds, in and out over {1, 4, 10, 20, 33, 50, 64} at batches
// {1, 7, 32, 128, 800} (ratios BLAS / small; the per-shape table of the session's report):
//  - forward: 1.2-3x wherever the layer has several outputs; it loses where the BLAS's
//    small-matrix kernel takes dot products along a long k: a single output with
//    in >= 4 (in = 10..64: 0.2-0.96x), <= 4 outputs with in >= 32 (0.2-0.8x below batch
//    800), and fewer than 8 rows with in >= 32 (0.2-0.9x: the transpose of W is not repaid).
//  - dW: batch < 4 (1.1-4.9x) and batch >= 512 (0.96-3.2x, mostly 1.2-2.3x: the BLAS packs
//    its operands there); in between (the BLAS's small kernel, the same register tiling as
//    this one) layers of <= 1200 weights are even or win (0.93-5x, (40, 30) at batch 32:
//    1.2x) unless the input width is a few past whole vectors (in = 33: 0.9x, (20, 50) at
//    batch 128: 0.94x); larger ones lose up to 0.74x.
//  - dX: wins almost everywhere (1.0-2.6x) except few inputs against many outputs
//    (in <= 4, out >= 33: 0.2-0.9x), an input width one past whole vectors (in = 33:
//    0.8-0.9x from batch 32) and in <= 10 at batch >= 512 (0.85-0.95x, bandwidth).
// The shapes the kernels take at all; the `pays` rules below are asked only within them.
bool within_small(index_t rows, index_t in, index_t out) {
  return rows >= 1 && in >= 1 && out >= 1 && in <= kSmallMax && out <= kSmallMax;
}

template <class T>
bool forward_pays(index_t rows, index_t in, index_t out) {
  constexpr index_t L = V512<T>::lanes;
  if (out > 4 * L) return false;  // float64 above 32 outputs: one row at a time (0.88x at (800, 50, 40))
  if (out == 1 && in >= 4) return false;
  if (in >= 32 && (out <= 4 || rows < 8)) return false;
  return true;
}

template <class T>
bool dw_pays(index_t batch, index_t in, index_t out) {
  constexpr index_t L = V512<T>::lanes;
  if (batch < 4 || batch >= 512) return true;
  if (in * out <= 600) return true;
  return in * out <= 1200 && !(in > L && in % L != 0 && in % L <= L / 4);  // not a nearly empty last vector
}

template <class T>
bool dx_pays(index_t batch, index_t in, index_t out) {
  constexpr index_t L = V512<T>::lanes;
  if (in <= 4 && out >= 33) return false;
  if (in > L && in % L == 1 && batch >= 32) return false;
  if (in <= 10 && batch >= 512) return false;
  return true;
}

}  // namespace
#endif

namespace {
std::atomic<int> g_small_mode{static_cast<int>(SmallDense::automatic)};
}  // namespace

void set_dense_small(SmallDense mode) { g_small_mode.store(static_cast<int>(mode), std::memory_order_relaxed); }

SmallDense dense_small_mode() { return static_cast<SmallDense>(g_small_mode.load(std::memory_order_relaxed)); }

bool dense_small_enabled() {
#if GC_SMALL_DENSE
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && dense_small_mode() != SmallDense::off;
#else
  return false;
#endif
}

#if GC_SMALL_DENSE
namespace {
// The kernel runs: switched on, on an AVX-512 CPU, a layer within its limits and (unless
// forced) a shape where it was measured faster (`Pays`, asked last).
template <bool (*Pays)(index_t, index_t, index_t)>
bool small_runs(index_t rows, index_t in, index_t out) {
  return within_small(rows, in, out) && dense_small_enabled() &&
         (dense_small_mode() == SmallDense::always || Pays(rows, in, out));
}
}  // namespace
#endif

template <class T>
bool dense_forward_small(const T* X, const T* W, const T* b, T* Y, T* Z, index_t rows, index_t in, index_t out,
                         Act act, double alpha) {
#if GC_SMALL_DENSE
  if (!small_runs<forward_pays<T>>(rows, in, out)) return false;
  T* pre = (Z && act != Act::identity) ? Z : Y;
  small_dense_run<T>(X, W, b, pre, rows, in, out);
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

template <class T>
bool dense_backward_dw_small(const T* X, const T* dY, T* dW, index_t batch, index_t in, index_t out,
                             bool accumulate) {
#if GC_SMALL_DENSE
  if (!small_runs<dw_pays<T>>(batch, in, out)) return false;
  small_dw_run<T>(X, dY, dW, batch, in, out, accumulate);
  return true;
#else
  (void)X, (void)dY, (void)dW, (void)batch, (void)in, (void)out, (void)accumulate;
  return false;
#endif
}

template <class T>
bool dense_backward_dx_small(const T* dY, const T* W, T* dX, index_t batch, index_t in, index_t out) {
#if GC_SMALL_DENSE
  if (!small_runs<dx_pays<T>>(batch, in, out)) return false;
  small_dx_run<T>(dY, W, dX, batch, in, out);
  return true;
#else
  (void)dY, (void)W, (void)dX, (void)batch, (void)in, (void)out;
  return false;
#endif
}

template bool dense_backward_dw_small<float>(const float*, const float*, float*, index_t, index_t, index_t, bool);
template bool dense_backward_dw_small<double>(const double*, const double*, double*, index_t, index_t, index_t, bool);
template bool dense_backward_dx_small<float>(const float*, const float*, float*, index_t, index_t, index_t);
template bool dense_backward_dx_small<double>(const double*, const double*, double*, index_t, index_t, index_t);

}  // namespace gc
