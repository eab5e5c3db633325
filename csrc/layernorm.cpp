#include "layernorm.h"

#include <cmath>
#include <vector>

#include "simd.h"

namespace gc {

namespace {

template <class T>
GC_INLINE void forward_row(const T* x, const T* gamma, const T* beta, double eps, T* y, T* mean_out, T* inv_out,
                           index_t d) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (index_t j = 0; j < d; ++j) s += double(x[j]);
  const double mean = s / double(d);
  double q = 0.0;
#pragma omp simd reduction(+ : q)
  for (index_t j = 0; j < d; ++j) {
    const double c = double(x[j]) - mean;
    q += c * c;
  }
  const double inv = 1.0 / std::sqrt(q / double(d) + eps);
  *mean_out = T(mean);
  *inv_out = T(inv);
  const T m = T(mean), r = T(inv);
  if (gamma && beta) {
#pragma omp simd
    for (index_t j = 0; j < d; ++j) y[j] = (x[j] - m) * r * gamma[j] + beta[j];
  } else {
#pragma omp simd
    for (index_t j = 0; j < d; ++j) y[j] = (x[j] - m) * r * (gamma ? gamma[j] : T(1)) + (beta ? beta[j] : T(0));
  }
}

template <class T>
GC_INLINE void backward_row(const T* x, const T* g, const T* gamma, T mean, T inv, T* dx, double* dgamma,
                            double* dbeta, index_t d) {
  double sg = 0.0, sgx = 0.0;
#pragma omp simd reduction(+ : sg, sgx)
  for (index_t j = 0; j < d; ++j) {
    const double xhat = (double(x[j]) - double(mean)) * double(inv);
    const double gj = double(g[j]) * (gamma ? double(gamma[j]) : 1.0);
    sg += gj;
    sgx += gj * xhat;
  }
  if (dgamma) {
#pragma omp simd
    for (index_t j = 0; j < d; ++j) dgamma[j] += double(g[j]) * (double(x[j]) - double(mean)) * double(inv);
  }
  if (dbeta) {
#pragma omp simd
    for (index_t j = 0; j < d; ++j) dbeta[j] += double(g[j]);
  }
  if (dx) {
    const T a = T(sg / double(d)), b = T(sgx / double(d));
#pragma omp simd
    for (index_t j = 0; j < d; ++j) {
      const T xhat = (x[j] - mean) * inv;
      const T gj = g[j] * (gamma ? gamma[j] : T(1));
      dx[j] = inv * (gj - a - xhat * b);
    }
  }
}

template <class T>
GC_INLINE void forward_rows(const T* X, const T* g, const T* b, double eps, T* Y, T* m, T* s, index_t r0, index_t r1,
                            index_t d) {
  for (index_t r = r0; r < r1; ++r) forward_row(X + r * d, g, b, eps, Y + r * d, m + r, s + r, d);
}

template <class T>
GC_INLINE void backward_rows(const T* X, const T* dY, const T* g, const T* m, const T* s, T* dX, double* dg,
                             double* db, index_t r0, index_t r1, index_t d) {
  for (index_t r = r0; r < r1; ++r)
    backward_row(X + r * d, dY + r * d, g, m[r], s[r], dX ? dX + r * d : nullptr, dg, db, d);
}

GC_SIMD_DISPATCH(void, fwd_rows, forward_rows,
                 (const T* X, const T* g, const T* b, double eps, T* Y, T* m, T* s, index_t r0, index_t r1, index_t d),
                 (X, g, b, eps, Y, m, s, r0, r1, d))
GC_SIMD_DISPATCH(void, bwd_rows, backward_rows,
                 (const T* X, const T* dY, const T* g, const T* m, const T* s, T* dX, double* dg, double* db,
                  index_t r0, index_t r1, index_t d),
                 (X, dY, g, m, s, dX, dg, db, r0, r1, d))

}  // namespace

// Grains (parallel.h), measured with benchmarks/threads.py on the 2-core EPYC VM, float32
// (rows x 256), 1 vs 2 threads: forward 256K: 114 us vs 130 us, 512K: 233 us vs 179 us;
// backward (reads X and dY, writes dX, plus the column sums) 2M: 1.41 ms vs 1.46 ms.
constexpr index_t kForwardGrain = index_t(1) << 18;
constexpr index_t kBackwardGrain = index_t(1) << 20;
// Most row runs of the backward (each keeps 2 * d partial column sums).
constexpr int kMaxParts = 16;

// The forward cuts the rows into one run per thread; its result does not depend on the
// cut.
template <class T>
void layer_norm_forward(const T* X, const T* gamma, const T* beta, double eps, T* Y, T* save_mean, T* save_invstd,
                        index_t rows, index_t d) {
  parallel_runs(rows, rows * d, kForwardGrain, [&](index_t r0, index_t r1) {
    fwd_rows(X, gamma, beta, eps, Y, save_mean, save_invstd, r0, r1, d);
  });
}

// The backward keeps one partial column sum per run of rows, added in run order. The
// runs are cut from the size alone (one per kBackwardGrain values, at most kMaxParts),
// never from the thread count, so dgamma / dbeta are the same on any number of threads.
template <class T>
void layer_norm_backward(const T* X, const T* dY, const T* gamma, const T* mean, const T* invstd, T* dX, T* dgamma,
                         T* dbeta, index_t rows, index_t d, bool accumulate) {
  const int parts = reduction_units(rows * d, rows, kBackwardGrain, kMaxParts);
  std::vector<double> partial(static_cast<size_t>(parts) * 2 * static_cast<size_t>(d), 0.0);
  parallel_for(parts, threads_for(rows * d, kBackwardGrain), [&](index_t t) {
    double* dg = dgamma ? partial.data() + size_t(t) * 2 * d : nullptr;
    double* db = dbeta ? partial.data() + (size_t(t) * 2 + 1) * d : nullptr;
    bwd_rows(X, dY, gamma, mean, invstd, dX, dg, db, rows * t / parts, rows * (t + 1) / parts, d);
  });
  for (index_t j = 0; j < d; ++j) {
    double g = 0.0, b = 0.0;
    for (int t = 0; t < parts; ++t) {
      g += partial[size_t(t) * 2 * d + j];
      b += partial[(size_t(t) * 2 + 1) * d + j];
    }
    if (dgamma) dgamma[j] = accumulate ? T(double(dgamma[j]) + g) : T(g);
    if (dbeta) dbeta[j] = accumulate ? T(double(dbeta[j]) + b) : T(b);
  }
}

template void layer_norm_forward<float>(const float*, const float*, const float*, double, float*, float*, float*,
                                        index_t, index_t);
template void layer_norm_forward<double>(const double*, const double*, const double*, double, double*, double*,
                                         double*, index_t, index_t);
template void layer_norm_backward<float>(const float*, const float*, const float*, const float*, const float*, float*,
                                         float*, float*, index_t, index_t, bool);
template void layer_norm_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                          double*, double*, double*, index_t, index_t, bool);

}  // namespace gc
