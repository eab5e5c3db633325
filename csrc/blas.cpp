#include "blas.h"

#include <atomic>
#include <limits>
#include <stdexcept>
#include <string>

namespace gc {

namespace {
sgemm_t g_sgemm = nullptr;
dgemm_t g_dgemm = nullptr;

// OpenBLAS's thread-count entry points (null: not an OpenBLAS with a pthreads pool, or
// not found; OpenBLAS then picks its threads itself, as before). Atomics: kernels read
// them with the GIL released.
std::atomic<blas_set_threads_t> g_set_threads{nullptr};
std::atomic<blas_get_threads_t> g_get_threads{nullptr};
std::atomic<int> g_user_threads{1};
std::atomic<bool> g_user_set{false};  // set_blas_user_threads called: keep its count on a re-install
std::atomic<bool> g_policy{true};

// When a second BLAS thread repays its wake-up: benchmarks/threads.py --gemm, every GEMM
// of the issue-8 networks' dense layers plus a sweep around the boundary, OpenBLAS 0.3.30
// (SciPy 1.17 wheel, pthreads pool) on 1 against 2 threads, interleaved medians,
// OMP_WAIT_POLICY=PASSIVE, 2-core Xeon (SkylakeX) VM; then whole training steps
// (threads.py --nets). A two-thread GEMM costs ~10-25 us of hand-off on top of its
// halved work, and m*n*k alone does not tell when that pays, because OpenBLAS splits C's
// rows and columns, never k:
//  - from m*n*k = 4M a second thread pays (128x128x256 dY^T X: 1.11-1.19x, 100x100x400:
//    1.16x, 256x10x2048 X W^T: 1.87x, the 784- and 1024-wide networks' GEMMs 1.5-1.97x);
//    below it most shapes lose (64x64x800: 0.85x, 128x128x128: 0.73x, 40x50x800:
//    36 -> 65 us, 128x128x64: 16.9 -> 28.8 us);
//  - except a C small on both sides (m*n < 8192 and m, n < 256) with a long k, dY^T X of
//    a small layer at a large batch: it loses even there (64x64x1024: 0.91x,
//    32x32x4096: 0.67x) and stays on one thread;
//  - C with many rows (m >= 512) gains from ~640K alone (800x50x20: 17.4 -> 11.7 us),
//    but not inside a training step: [20,50,40,30,20,10,1] at batch 800, whose four such
//    GEMMs (0.8M-1.6M) OpenBLAS also ran on 2 threads, took 1.33x as long on 2 threads
//    as on 1 (five runs; probably the worker reading data hot in the other core's cache,
//    which the isolated loop keeps warm on both). Those stay on one thread too.
// float64 does the same work in about twice the time, so these float32 sizes are safe
// (if conservative) for it too.
constexpr double kWork = 4.0e6;     // m*n*k from which a second thread pays, when C has ...
constexpr double kMinOutput = 8192; // ... this many values
constexpr double kMinSide = 256;    // ... or this many rows or columns

// Sets OpenBLAS's (process-wide) count to the policy's, calling the setter only when the
// count differs (reading it costs ~2 ns, setting ~2-6 ns: measured with dlopen on the
// SciPy library). The current value is read each time, not cached, so a change made
// behind gradcore's back (threadpoolctl) is seen and corrected. The count is process-wide:
// two Python threads running GEMMs at the same time can run one on the other's count
// (slower, and for the inner sizes where OpenBLAS's bits depend on its thread count,
// tests/test_threads_policy.py, other last bits).
void apply_blas_threads(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k) {
  blas_set_threads_t set = g_set_threads.load(std::memory_order_acquire);
  blas_get_threads_t get = g_get_threads.load(std::memory_order_acquire);
  if (!set || !get) return;
  const int want = blas_threads_for(m, n, k);
  if (get() != want) set(want);
}

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
  apply_blas_threads(m, n, k);
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

void set_blas_threading(blas_set_threads_t set, blas_get_threads_t get, int default_threads) {
  if (!set || !get) set = nullptr, get = nullptr;
  if (!g_user_set.load(std::memory_order_relaxed))
    g_user_threads.store(default_threads < 1 ? 1 : default_threads, std::memory_order_relaxed);
  g_get_threads.store(get, std::memory_order_release);
  g_set_threads.store(set, std::memory_order_release);
}

bool blas_thread_control() { return g_set_threads.load(std::memory_order_acquire) != nullptr; }

void set_blas_user_threads(int n) {
  if (n < 1) n = 1;
  g_user_threads.store(n, std::memory_order_relaxed);
  g_user_set.store(true, std::memory_order_relaxed);
  // Leave OpenBLAS at the new count: a BLAS call gradcore does not route (SciPy's own
  // linalg) then runs as set_num_threads said.
  blas_set_threads_t set = g_set_threads.load(std::memory_order_acquire);
  if (set) set(n);
}

int blas_user_threads() { return g_user_threads.load(std::memory_order_relaxed); }

int blas_threads_for(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k) {
  const int user = blas_user_threads();
  if (!g_policy.load(std::memory_order_relaxed) || user <= 1) return user;
  // In double: the product of three dimensions may overflow 64-bit integers.
  const double out = static_cast<double>(m) * static_cast<double>(n), work = out * static_cast<double>(k);
  const double rows = static_cast<double>(m), cols = static_cast<double>(n);
  const bool pays = work >= kWork && (out >= kMinOutput || rows >= kMinSide || cols >= kMinSide);
  return pays ? user : 1;
}

void set_blas_policy(bool on) { g_policy.store(on, std::memory_order_relaxed); }

bool blas_policy() { return g_policy.load(std::memory_order_relaxed); }

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
