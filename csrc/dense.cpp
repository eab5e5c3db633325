#include "dense.h"

#include <cstring>
#include <vector>

#include "blas.h"
#include "dense_small.h"
#include "simd.h"
#include "transpose.h"

namespace gc {

namespace {

// Grain (parallel.h) of the bias passes, both bandwidth-bound streams over (rows, cols):
// measured with benchmarks/threads.py on the 2-core EPYC VM, float32 column sums of
// (rows x 1024), 1 vs 2 threads, 2M: 193 us vs 209 us, 4M: 769 us vs 564 us. The bias
// broadcast (a write-only stream, inside the GEMM's timing) uses the same grain.
constexpr index_t kBiasGrain = index_t(1) << 21;

// Every row of Y (rows, cols) set to b. Small layers skip the OpenMP region entirely
// (threads_for gives 1 and parallel_for then runs the loop itself): even with a false
// if() clause, entering a region costs a runtime call per kernel.
//
// On one thread the rows are written by doubling: b into row 0, then rows [0, k) copied
// to [k, 2k), ... (log2(rows) memcpy calls of growing size). A memcpy call per row costs
// more than the copy on the small nets (rows of 4-200 bytes: net2's 800 rows per layer
// showed memmove + memcpy@plt at 4% of its step, ~0.3% this way).
template <class T>
void fill_rows(T* Y, const T* b, index_t rows, index_t cols) {
  const size_t bytes = sizeof(T) * static_cast<size_t>(cols);
  const index_t threads = threads_for(rows * cols, kBiasGrain);
  if (threads == 1) {
    if (rows <= 0 || cols <= 0) return;
    std::memcpy(Y, b, bytes);
    for (index_t done = 1; done < rows;) {
      const index_t k = done < rows - done ? done : rows - done;
      std::memcpy(Y + done * cols, Y, bytes * static_cast<size_t>(k));
      done += k;
    }
    return;
  }
  parallel_for(rows, threads, [&](index_t i) { std::memcpy(Y + i * cols, b, bytes); });
}

// Column sums of dY (rows, cols) into db, in blocks of kBlock columns so each thread owns
// its slice of db and reads dY row by row. A float32 running sum drifts once the sum
// dwarfs each term (4M rows of 0.1 came out 4% low), so the running sums are kept in
// double (for float32 and float64 data alike): each group of kRows rows is added up in T
// at full SIMD width, then folded into the double partials. The error is at most ~kRows float32 roundings of the
// terms' magnitude, whatever the batch size.
constexpr index_t kBlock = 256;

// The double partials of columns [j0, j0 + n) over rows [0, rows) of dY (rows, cols),
// added into acc: groups of kRows rows summed in T, each group folded into acc. Callers
// that split the rows into pieces keep the groups (and so the result) unchanged by
// starting every piece on a multiple of kRows.
constexpr index_t kRows = 8;

template <class T>
GC_INLINE void column_rows_acc(const T* dY, double* acc, index_t rows, index_t cols, index_t j0, index_t n) {
  T part[kBlock];
  for (index_t i0 = 0; i0 < rows; i0 += kRows) {
    const index_t i1 = i0 + kRows < rows ? i0 + kRows : rows;
    const T* g = dY + i0 * cols + j0;
#pragma omp simd
    for (index_t j = 0; j < n; ++j) part[j] = g[j];
    for (index_t i = i0 + 1; i < i1; ++i) {
      g += cols;
#pragma omp simd
      for (index_t j = 0; j < n; ++j) part[j] += g[j];
    }
#pragma omp simd
    for (index_t j = 0; j < n; ++j) acc[j] += double(part[j]);
  }
}

template <class T>
GC_INLINE void column_block_sums(const T* dY, T* db, index_t rows, index_t cols, index_t j0, bool accumulate) {
  const index_t n = (j0 + kBlock < cols ? j0 + kBlock : cols) - j0;
  double acc[kBlock];
  for (index_t j = 0; j < n; ++j) acc[j] = accumulate ? double(db[j0 + j]) : 0.0;
  column_rows_acc(dY, acc, rows, cols, j0, n);
  for (index_t j = 0; j < n; ++j) db[j0 + j] = static_cast<T>(acc[j]);
}

// All columns (cols <= kBlock) of rows [0, rows) into acc.
template <class T>
GC_INLINE void column_rows_all(const T* dY, double* acc, index_t rows, index_t cols) {
  column_rows_acc(dY, acc, rows, cols, 0, cols);
}

GC_SIMD_DISPATCH(void, column_rows_k, column_rows_all, (const T* g, double* acc, index_t r, index_t c), (g, acc, r, c))
GC_SIMD_DISPATCH(void, column_block_k, column_block_sums,
                 (const T* g, T* db, index_t r, index_t c, index_t j0, bool a), (g, db, r, c, j0, a))

// The blocks split over threads; the region sits outside the dispatched kernel (an
// OpenMP body outlined from a cloned function would run baseline code).
template <class T>
void col_sums(const T* dY, T* db, index_t rows, index_t cols, bool accumulate) {
  const index_t nblocks = (cols + kBlock - 1) / kBlock;
  parallel_for(nblocks, nblocks > 1 ? threads_for(rows * cols, kBiasGrain) : 1,
               [&](index_t blk) { column_block_k(dY, db, rows, cols, blk * kBlock, accumulate); });
}

}  // namespace

template <class T>
void dense_forward(const T* X, const T* W, const T* b, T* Y, T* Z, index_t batch, index_t in, index_t out,
                   Act act, double alpha) {
  T* pre = (Z && act != Act::identity) ? Z : Y;
  // Start from the broadcast bias and let the GEMM add to it (beta = 1): one pass over Y
  // fewer than zeroing it (beta = 0) and adding the bias afterwards.
  if (b) fill_rows(pre, b, batch, out);
  if (in == 0) {
    if (!b) std::memset(pre, 0, sizeof(T) * static_cast<size_t>(batch * out));
  } else {
    // W is (out, in): Y = X W^T, the transpose taken by the BLAS flag (no copy).
    gemm_rowmajor<T>(false, true, batch, out, in, T(1), X, in, W, in, b ? T(1) : T(0), pre, out);
  }
  if (act != Act::identity) activation_forward<T>(act, pre, Y, batch * out, alpha);
  else if (Z && Z != Y) std::memcpy(Z, Y, sizeof(T) * static_cast<size_t>(batch * out));
}

// ---------------------------------------------------------------------- dX = dY W
// Row-major dX = dY W is the column-major GEMM dX^T = A dY^T with A = W^T, which is W's
// memory read as a column-major matrix with W's row stride: the "N" form of A, whose
// packing OpenBLAS 0.3.30 (SciPy's wheel, SkylakeX sgemm) runs far slower than the "T"
// form's (A's memory read along its rows, as dense_forward reads W). The fast form needs
// W^T stored, so W is transposed kDxBlock rows at a time (transpose.h) into a buffer of
// in x kDxBlock values (1 MB for in = 2048: it is still in L2 when the GEMM packs it) and
// each block's GEMM adds its kDxBlock terms of the sum over `out` into dX (beta = 1 after
// the first block). Measured with scipy's OpenBLAS on the 2-core Xeon VM, float32, one
// thread, thread CPU time, the forms interleaved (batch, in, out: plain GEMM -> blocks):
//   (256, 2048, 2048) net4's middle layer: 19.9 -> 16.3-16.6 ms (the fast GEMM form alone:
//   16.2; transposing all of W at once with streaming stores, then one GEMM: 17.4);
//   (32 / 64 / 128, 2048, 2048): 6.9 -> 4.6, 8.1 -> 6.1, 14.9 -> 10.4; (1, 2048, 2048):
//   3.8 -> 2.6; (256, 2048, 1024) 10.1 -> 8.0; (256, 1024, 2048) 9.2 -> 8.0;
//   (256, 1024, 4096) 19.7 -> 17.3; (256, 2048, 512) 4.7 -> 4.2;
//   at 1M values of W about even: (256, 1024, 1024) 4.0 -> 3.9-4.1, (256, 512, 2048)
//   3.87 -> 3.84; below it a loss: (256, 512, 512) 0.92 -> 0.95, (256, 784, 512)
//   1.36 -> 1.40, (128, 512, 256) 0.24 -> 0.26.
//   Blocks of 64 / 256 rows: within noise of 128 for in = 1024-2048, 64 slower for
//   in = 4096 (18.4 vs 17.3 ms).
// float64 gains nothing: both GEMM forms take the same time ((256, 2048, 2048): NN 29.8,
// TN 30.3 ms), so it keeps the plain GEMM.
constexpr index_t kDxBlock = 128;
constexpr index_t kDxMinWeights = index_t(1) << 20;

bool dense_dx_blocked_shape(index_t in, index_t out, std::size_t elem) {
  return elem == sizeof(float) && in > 0 && out > 0 && in * out >= kDxMinWeights;
}

index_t dense_dx_buffer_values(index_t in, index_t out) { return in * (out < kDxBlock ? out : kDxBlock); }

namespace {

// dX = dY W through W's blocks of kDxBlock rows transposed into buf (in x kq).
template <class T>
void dx_blocked(const T* W, const T* dY, T* dX, T* buf, index_t batch, index_t in, index_t out) {
  for (index_t k0 = 0; k0 < out; k0 += kDxBlock) {
    const index_t kq = kDxBlock < out - k0 ? kDxBlock : out - k0;
    transpose<T>(W + k0 * in, buf, kq, in, in, kq);
    gemm_rowmajor<T>(false, true, batch, in, kq, T(1), dY + k0, out, buf, kq, k0 ? T(1) : T(0), dX, in);
  }
}

// The eager path's buffer: one per thread, kept and grown to the largest need.
template <class T>
T* own_dx_buffer(index_t values) {
  thread_local std::vector<T> buf;
  if (buf.size() < static_cast<std::size_t>(values)) buf.resize(static_cast<std::size_t>(values));
  return buf.data();
}

template <class T>
void backward_impl(const T* X, const T* W, const T* dY, T* dX, T* dW, T* db, index_t batch, index_t in,
                   index_t out, bool accumulate, T* dx_buffer, index_t dx_buffer_values, bool own) {
  if (dX) {
    // the blocked form and the small kernel both replace a GEMM that runs on one BLAS thread
    const bool one_thread = blas_threads_for(batch, in, out) == 1;
    if (out == 0) {
      std::memset(dX, 0, sizeof(T) * static_cast<size_t>(batch * in));
    } else if (one_thread && batch > 0 && dense_dx_blocked_shape(in, out, sizeof(T)) &&
               (own || (dx_buffer && dx_buffer_values >= dense_dx_buffer_values(in, out)))) {
      if (own) dx_buffer = own_dx_buffer<T>(dense_dx_buffer_values(in, out));
      dx_blocked<T>(W, dY, dX, dx_buffer, batch, in, out);
    } else if (one_thread && dense_backward_dx_small<T>(dY, W, dX, batch, in, out)) {
      // a small layer's dX without the BLAS (dense_small.h: the shapes where it wins)
    } else {
      gemm_rowmajor<T>(false, false, batch, in, out, T(1), dY, out, W, in, T(0), dX, in);  // dX = dY W
    }
  }
  if (dW) dense_backward_dw<T>(X, dY, dW, batch, in, out, accumulate);
  if (db) col_sums(dY, db, batch, out, accumulate);
}

}  // namespace

template <class T>
void dense_backward(const T* X, const T* W, const T* dY, T* dX, T* dW, T* db, index_t batch, index_t in,
                    index_t out, bool accumulate) {
  backward_impl<T>(X, W, dY, dX, dW, db, batch, in, out, accumulate, nullptr, 0, true);
}

template <class T>
void dense_backward(const T* X, const T* W, const T* dY, T* dX, T* dW, T* db, index_t batch, index_t in,
                    index_t out, bool accumulate, T* dx_buffer, index_t dx_buffer_values) {
  backward_impl<T>(X, W, dY, dX, dW, db, batch, in, out, accumulate, dx_buffer, dx_buffer_values, false);
}

// Fused pieces of at most kFuseElems values (rows a multiple of kRows): the activation's
// gradient of a piece is still in L1 when its column sums read it.
constexpr index_t kFuseElems = 4096;

template <class T>
void dense_act_backward_bias(Act act, const T* z, const T* y, T* G, T* db, index_t rows, index_t cols,
                             double alpha) {
  const index_t n = rows * cols;
  if (cols > kBlock || cols <= 0 || rows <= 0 || (get_num_threads() > 1 && n > kFuseElems * 8)) {
    activation_backward<T>(act, z, y, G, G, n, alpha);
    col_sums(G, db, rows, cols, false);
    return;
  }
  double acc[kBlock];
  for (index_t j = 0; j < cols; ++j) acc[j] = 0.0;
  index_t piece = (kFuseElems / cols) / kRows * kRows;
  if (piece < kRows) piece = kRows;
  for (index_t i0 = 0; i0 < rows; i0 += piece) {
    const index_t r = i0 + piece < rows ? piece : rows - i0;
    T* g = G + i0 * cols;
    activation_backward<T>(act, z + i0 * cols, y + i0 * cols, g, g, r * cols, alpha);
    column_rows_k(g, acc, r, cols);
  }
  for (index_t j = 0; j < cols; ++j) db[j] = static_cast<T>(acc[j]);
}

template void dense_act_backward_bias<float>(Act, const float*, const float*, float*, float*, index_t, index_t,
                                             double);
template void dense_act_backward_bias<double>(Act, const double*, const double*, double*, double*, index_t,
                                              index_t, double);
template void dense_forward<float>(const float*, const float*, const float*, float*, float*, index_t, index_t,
                                   index_t, Act, double);
template void dense_forward<double>(const double*, const double*, const double*, double*, double*, index_t,
                                    index_t, index_t, Act, double);
template void dense_backward<float>(const float*, const float*, const float*, float*, float*, float*, index_t,
                                    index_t, index_t, bool);
template void dense_backward<double>(const double*, const double*, const double*, double*, double*, double*,
                                     index_t, index_t, index_t, bool);
template void dense_backward<float>(const float*, const float*, const float*, float*, float*, float*, index_t,
                                    index_t, index_t, bool, float*, index_t);
template void dense_backward<double>(const double*, const double*, const double*, double*, double*, double*,
                                     index_t, index_t, index_t, bool, double*, index_t);

template <class T>
void dense_backward_dw(const T* X, const T* dY, T* dW, index_t batch, index_t in, index_t out, bool accumulate) {
  if (batch == 0) {
    if (!accumulate) std::memset(dW, 0, sizeof(T) * static_cast<size_t>(in * out));
    return;
  }
  // a small layer's dW without the BLAS (dense_small.h: the shapes where it wins)
  if (blas_threads_for(out, in, batch) == 1 && dense_backward_dw_small<T>(X, dY, dW, batch, in, out, accumulate)) return;
  // dW (out, in) = dY^T X, dY transposed by the BLAS flag.
  gemm_rowmajor<T>(true, false, out, in, batch, T(1), dY, out, X, in, accumulate ? T(1) : T(0), dW, in);
}

template void dense_backward_dw<float>(const float*, const float*, float*, index_t, index_t, index_t, bool);
template void dense_backward_dw<double>(const double*, const double*, double*, index_t, index_t, index_t, bool);

}  // namespace gc
