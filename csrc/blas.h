// GEMM through the BLAS that SciPy ships. The Fortran entry points are handed over at
// import time (gradcore/_blas.py reads them from scipy.linalg.cython_blas), and with them,
// when that BLAS is an OpenBLAS with its own thread pool, its set / get-num-threads entry
// points: each GEMM then runs on as many BLAS threads as its size repays (blas_threads_for).
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

// OpenBLAS's openblas_set_num_threads / openblas_get_num_threads (C ABI, process-wide).
using blas_set_threads_t = void (*)(int);
using blas_get_threads_t = int (*)();

// Installs the thread-count entry points (both null: uninstall, OpenBLAS then picks its
// own threads as before). `default_threads` is the count above the threshold until
// set_blas_user_threads is called (OpenBLAS's own count at import: OPENBLAS_NUM_THREADS,
// OMP_NUM_THREADS or the cores).
void set_blas_threading(blas_set_threads_t set, blas_get_threads_t get, int default_threads);
bool blas_thread_control();  // true when the entry points are installed

// The BLAS thread count for GEMMs above the threshold (gradcore.set_num_threads).
void set_blas_user_threads(int n);
int blas_user_threads();

// BLAS threads the policy gives a row-major GEMM C(m, n) += A(m, k) B(k, n): one below
// the measured size (see blas.cpp), blas_user_threads() above it. With the policy off
// (set_blas_policy(false), for benchmarks), always blas_user_threads().
int blas_threads_for(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k);
void set_blas_policy(bool on);
bool blas_policy();

// Row-major C(m, n) = alpha * op(A)(m, k) * op(B)(k, n) + beta * C, where lda, ldb, ldc
// are the row strides of the stored (untransposed) arrays.
template <class T>
void gemm_rowmajor(bool trans_a, bool trans_b, std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k,
                   T alpha, const T* A, std::ptrdiff_t lda, const T* B, std::ptrdiff_t ldb, T beta,
                   T* C, std::ptrdiff_t ldc);

}  // namespace gc
