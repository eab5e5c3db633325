#include "blas.h"

#include <limits>
#include <stdexcept>
#include <string>

namespace gc {

namespace {
sgemm_t g_sgemm = nullptr;
dgemm_t g_dgemm = nullptr;

int as_blas_int(std::ptrdiff_t v) {
  if (v > std::numeric_limits<int>::max())
    throw std::invalid_argument("gemm: dimension " + std::to_string(v) + " exceeds the 32-bit BLAS interface");
  return static_cast<int>(v);
}

template <class T, class F>
void call(F f, bool trans_a, bool trans_b, std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, T alpha,
          const T* A, std::ptrdiff_t lda, const T* B, std::ptrdiff_t ldb, T beta, T* C, std::ptrdiff_t ldc) {
  if (!f) throw std::runtime_error("gemm: BLAS not initialised (import gradcore, not gradcore._C)");
  if (m == 0 || n == 0) return;
  // Column-major BLAS sees a row-major matrix as its transpose: C^T = op(B)^T op(A)^T.
  const char ta = trans_a ? 'T' : 'N';
  const char tb = trans_b ? 'T' : 'N';
  int M = as_blas_int(n), N = as_blas_int(m), K = as_blas_int(k);
  int LDA = as_blas_int(ldb < 1 ? 1 : ldb), LDB = as_blas_int(lda < 1 ? 1 : lda), LDC = as_blas_int(ldc < 1 ? 1 : ldc);
  f(&tb, &ta, &M, &N, &K, &alpha, B, &LDA, A, &LDB, &beta, C, &LDC);
}
}  // namespace

void set_blas(sgemm_t s, dgemm_t d) {
  g_sgemm = s;
  g_dgemm = d;
}

bool blas_ready() { return g_sgemm && g_dgemm; }

template <>
void gemm_rowmajor<float>(bool ta, bool tb, std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, float alpha,
                          const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb, float beta,
                          float* C, std::ptrdiff_t ldc) {
  call<float>(g_sgemm, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm_rowmajor<double>(bool ta, bool tb, std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, double alpha,
                           const double* A, std::ptrdiff_t lda, const double* B, std::ptrdiff_t ldb, double beta,
                           double* C, std::ptrdiff_t ldc) {
  call<double>(g_dgemm, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace gc
