#include "dense.h"

#include <cstring>

#include "blas.h"
#include "simd.h"

namespace gc {

namespace {

template <class T>
GC_INLINE void add_bias_rows(T* Y, const T* b, index_t rows, index_t cols) {
  for (index_t i = 0; i < rows; ++i) {
    T* y = Y + i * cols;
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) y[j] += b[j];
  }
}
GC_SIMD_DISPATCH(void, add_bias_k, add_bias_rows, (T* Y, const T* b, index_t r, index_t c), (Y, b, r, c))

// One run of rows per thread; the region sits outside the dispatched kernel.
template <class T>
void add_bias(T* Y, const T* b, index_t rows, index_t cols) {
  const int parts = threads_for(rows * cols);
  parallel_for(parts, parts, [&](index_t t) {
    const index_t r0 = rows * t / parts, r1 = rows * (t + 1) / parts;
    add_bias_k(Y + r0 * cols, b, r1 - r0, cols);
  });
}

// Column sums of dY (rows, cols) into db, in blocks of columns so each thread owns its
// slice of db and reads dY row by row. One block [j0, j1) here.
constexpr index_t kColumnBlock = 256;

template <class T>
GC_INLINE void column_block(const T* dY, T* db, index_t rows, index_t cols, index_t j0, index_t j1, bool accumulate) {
  T acc[kColumnBlock];
  for (index_t j = j0; j < j1; ++j) acc[j - j0] = accumulate ? db[j] : T(0);
  for (index_t i = 0; i < rows; ++i) {
    const T* g = dY + i * cols;
#pragma omp simd
    for (index_t j = j0; j < j1; ++j) acc[j - j0] += g[j];
  }
  for (index_t j = j0; j < j1; ++j) db[j] = acc[j - j0];
}
GC_SIMD_DISPATCH(void, column_block_k, column_block,
                 (const T* g, T* db, index_t r, index_t c, index_t j0, index_t j1, bool a), (g, db, r, c, j0, j1, a))

// The blocks split over threads; the region sits outside the dispatched kernel.
template <class T>
void col_sums(const T* dY, T* db, index_t rows, index_t cols, bool accumulate) {
  const index_t nblocks = (cols + kColumnBlock - 1) / kColumnBlock;
  parallel_for(nblocks, nblocks > 1 ? threads_for(rows * cols) : 1, [&](index_t blk) {
    const index_t j0 = blk * kColumnBlock;
    column_block_k(dY, db, rows, cols, j0, j0 + kColumnBlock < cols ? j0 + kColumnBlock : cols, accumulate);
  });
}

}  // namespace

template <class T>
void dense_forward(const T* X, const T* W, const T* b, T* Y, T* Z, index_t batch, index_t in, index_t out,
                   Act act, double alpha) {
  T* pre = (Z && act != Act::identity) ? Z : Y;
  if (in == 0) {
    std::memset(pre, 0, sizeof(T) * static_cast<size_t>(batch * out));
  } else {
    gemm_rowmajor<T>(false, false, batch, out, in, T(1), X, in, W, out, T(0), pre, out);
  }
  if (b) add_bias(pre, b, batch, out);
  if (act != Act::identity) activation_forward<T>(act, pre, Y, batch * out, alpha);
  else if (Z && Z != Y) std::memcpy(Z, Y, sizeof(T) * static_cast<size_t>(batch * out));
}

template <class T>
void dense_backward(const T* X, const T* W, const T* dY, T* dX, T* dW, T* db, index_t batch, index_t in,
                    index_t out, bool accumulate) {
  if (dX) {
    if (out == 0) std::memset(dX, 0, sizeof(T) * static_cast<size_t>(batch * in));
    else gemm_rowmajor<T>(false, true, batch, in, out, T(1), dY, out, W, out, T(0), dX, in);
  }
  if (dW) {
    if (batch == 0) {
      if (!accumulate) std::memset(dW, 0, sizeof(T) * static_cast<size_t>(in * out));
    } else {
      gemm_rowmajor<T>(true, false, in, out, batch, T(1), X, in, dY, out, accumulate ? T(1) : T(0), dW, out);
    }
  }
  if (db) col_sums(dY, db, batch, out, accumulate);
}

template void dense_forward<float>(const float*, const float*, const float*, float*, float*, index_t, index_t,
                                   index_t, Act, double);
template void dense_forward<double>(const double*, const double*, const double*, double*, double*, index_t,
                                    index_t, index_t, Act, double);
template void dense_backward<float>(const float*, const float*, const float*, float*, float*, float*, index_t,
                                    index_t, index_t, bool);
template void dense_backward<double>(const double*, const double*, const double*, double*, double*, double*,
                                     index_t, index_t, index_t, bool);

}  // namespace gc
