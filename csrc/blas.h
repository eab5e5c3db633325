// GEMM through the BLAS that SciPy ships. The Fortran entry points are handed over at
// import time (gradcore/_blas.py reads them from scipy.linalg.cython_blas).
#pragma once
#include <cstddef>

namespace gc {

using sgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);
using dgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*, const double*,
                         const double*, const int*, const double*, const int*, const double*, double*,
                         const int*);

void set_blas(sgemm_t s, dgemm_t d);
bool blas_ready();

// Row-major C(m, n) = alpha * op(A)(m, k) * op(B)(k, n) + beta * C, where lda, ldb, ldc
// are the row strides of the stored (untransposed) arrays.
template <class T>
void gemm_rowmajor(bool trans_a, bool trans_b, std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k,
                   T alpha, const T* A, std::ptrdiff_t lda, const T* B, std::ptrdiff_t ldb, T beta,
                   T* C, std::ptrdiff_t ldc);

}  // namespace gc
