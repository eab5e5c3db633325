#include "dense.h"

#include <cstring>

#include "blas.h"
#include "simd.h"

namespace gc {

namespace {

template <class T>
GC_INLINE void add_bias_rows(T* Y, const T* b, index_t rows, index_t cols) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * cols)) if (rows * cols >= kParallelGrain)
  for (index_t i = 0; i < rows; ++i) {
    T* y = Y + i * cols;
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) y[j] += b[j];
  }
}

GC_CLONES void add_bias_rows_f(float* Y, const float* b, index_t r, index_t c) { add_bias_rows(Y, b, r, c); }
GC_CLONES void add_bias_rows_d(double* Y, const double* b, index_t r, index_t c) { add_bias_rows(Y, b, r, c); }
void add_bias(float* Y, const float* b, index_t r, index_t c) { add_bias_rows_f(Y, b, r, c); }
void add_bias(double* Y, const double* b, index_t r, index_t c) { add_bias_rows_d(Y, b, r, c); }

// Column sums of dY (rows, cols) into db, in blocks of columns so each thread owns its
// slice of db and reads dY row by row. The partial sums are kept in Acc (double for
// float32 data): a float32 accumulator drifts once the sum dwarfs each term (4M rows of
// 0.1 summed in float32 come out 4% low).
template <class T, class Acc>
GC_INLINE void column_sums(const T* dY, T* db, index_t rows, index_t cols, bool accumulate) {
  constexpr index_t kBlock = 256;
  const index_t nblocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * cols)) if (rows * cols >= kParallelGrain && nblocks > 1)
  for (index_t blk = 0; blk < nblocks; ++blk) {
    const index_t j0 = blk * kBlock;
    const index_t j1 = j0 + kBlock < cols ? j0 + kBlock : cols;
    Acc acc[kBlock];
    for (index_t j = j0; j < j1; ++j) acc[j - j0] = accumulate ? Acc(db[j]) : Acc(0);
    for (index_t i = 0; i < rows; ++i) {
      const T* g = dY + i * cols;
#pragma omp simd
      for (index_t j = j0; j < j1; ++j) acc[j - j0] += Acc(g[j]);
    }
    for (index_t j = j0; j < j1; ++j) db[j] = static_cast<T>(acc[j - j0]);
  }
}

GC_CLONES void column_sums_f(const float* g, float* db, index_t r, index_t c, bool a) { column_sums<float, double>(g, db, r, c, a); }
GC_CLONES void column_sums_d(const double* g, double* db, index_t r, index_t c, bool a) { column_sums<double, double>(g, db, r, c, a); }
void col_sums(const float* g, float* db, index_t r, index_t c, bool a) { column_sums_f(g, db, r, c, a); }
void col_sums(const double* g, double* db, index_t r, index_t c, bool a) { column_sums_d(g, db, r, c, a); }

}  // namespace

template <class T>
void dense_forward(const T* X, const T* W, const T* b, T* Y, T* Z, index_t batch, index_t in, index_t out,
                   Act act, double alpha) {
  T* pre = (Z && act != Act::identity) ? Z : Y;
  if (in == 0) {
    std::memset(pre, 0, sizeof(T) * static_cast<size_t>(batch * out));
  } else {
    // W is (out, in): Y = X W^T, the transpose taken by the BLAS flag (no copy).
    gemm_rowmajor<T>(false, true, batch, out, in, T(1), X, in, W, in, T(0), pre, out);
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
    else gemm_rowmajor<T>(false, false, batch, in, out, T(1), dY, out, W, in, T(0), dX, in);  // dX = dY W
  }
  if (dW) {
    if (batch == 0) {
      if (!accumulate) std::memset(dW, 0, sizeof(T) * static_cast<size_t>(in * out));
    } else {
      // dW (out, in) = dY^T X, dY transposed by the BLAS flag.
      gemm_rowmajor<T>(true, false, out, in, batch, T(1), dY, out, X, in, accumulate ? T(1) : T(0), dW, in);
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
