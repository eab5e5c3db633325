#include "blas.h"

#include <atomic>
#include <limits>
#include <stdexcept>
#include <string>

#if defined(GC_HAVE_OPENMP)
#include <omp.h>
#endif

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

// One column-major BLAS call, its arguments checked and converted (the row-major C^T =
// op(B)^T op(A)^T of gemm_rowmajor).
template <class T>
struct Fortran {
  char ta, tb;
  int M, N, K, LDA, LDB, LDC;
  T alpha, beta;
  const T* A;
  const T* B;
  T* C;
};

template <class T>
Fortran<T> fortran_args(const GemmArgs<T>& g) {
  Fortran<T> f;
  // Column-major BLAS sees a row-major matrix as its transpose: C^T = op(B)^T op(A)^T.
  f.ta = g.trans_b ? 'T' : 'N';
  f.tb = g.trans_a ? 'T' : 'N';
  f.M = as_blas_int(g.n);
  f.N = as_blas_int(g.m);
  f.K = as_blas_int(g.k);
  f.LDA = as_blas_int(g.ldb < 1 ? 1 : g.ldb);
  f.LDB = as_blas_int(g.lda < 1 ? 1 : g.lda);
  f.LDC = as_blas_int(g.ldc < 1 ? 1 : g.ldc);
  f.alpha = g.alpha;
  f.beta = g.beta;
  f.A = g.B;
  f.B = g.A;
  f.C = g.C;
  return f;
}

template <class T, class F>
void invoke(F f, const Fortran<T>& a) {
  f(&a.ta, &a.tb, &a.M, &a.N, &a.K, &a.alpha, a.A, &a.LDA, a.B, &a.LDB, &a.beta, a.C, &a.LDC);
}

template <class T, class F>
void call(F f, const GemmArgs<T>& g) {
  if (!f) throw std::runtime_error("gemm: BLAS not initialised (import gradcore, not gradcore._C)");
  if (g.m == 0 || g.n == 0) return;
  const Fortran<T> a = fortran_args(g);
  apply_blas_threads(g.m, g.n, g.k);
  invoke(f, a);
}

// When two independent GEMMs run side by side, one BLAS thread each, instead of one after
// the other on blas_user_threads() OpenBLAS threads: when the policy gives both of them
// more than one thread and both are large (kPairWork). Side by side, each core runs one whole GEMM with no hand-off
// between OpenBLAS's threads and no shared packed panels; a dense layer's dX = dY W and
// dW = dY^T X do the same number of flops. Needs the thread-count entry points (to hold
// OpenBLAS at one thread meanwhile), OpenMP, and not to be inside a parallel region.
// (Measured on [1024, 2048, 2048, 10] at batch 256: see the commit message.)
// Only from this m*n*k on each side: below it (the 4M-100M GEMMs of the [784, 512, 256,
// 10] and small layers) the two forms timed alike or side by side slower in the quieter
// runs (128x512x256 dX + dW: 1.01x, 128x784x512: 1.3x, 256x2048x10: 1.07x, minima of 15
// interleaved batches), while 256x2048x2048 and 256x1024x2048 ran in 0.43-0.71x the
// time in every run (benchmarks/threads.py --pair, shared 2-core machine).
constexpr double kPairWork = 1.0e8;

template <class T>
bool pair_side_by_side(const GemmArgs<T>& a, const GemmArgs<T>& b) {
#if defined(GC_HAVE_OPENMP)
  if (!g_set_threads.load(std::memory_order_acquire) || !g_get_threads.load(std::memory_order_acquire)) return false;
  if (!g_policy.load(std::memory_order_relaxed) || blas_user_threads() < 2 || omp_in_parallel()) return false;
  const auto work = [](const GemmArgs<T>& g) { return double(g.m) * double(g.n) * double(g.k); };
  if (work(a) < kPairWork || work(b) < kPairWork) return false;
  return blas_threads_for(a.m, a.n, a.k) >= 2 && blas_threads_for(b.m, b.n, b.k) >= 2;
#else
  (void)a;
  (void)b;
  return false;
#endif
}

// Columns [j0, j1) of a row-major GEMM's C: the same columns of op(B) and of C.
template <class T>
GemmArgs<T> columns(GemmArgs<T> g, std::ptrdiff_t j0, std::ptrdiff_t j1) {
  g.B += g.trans_b ? j0 * g.ldb : j0;
  g.C += j0;
  g.n = j1 - j0;
  return g;
}

// The two sides are balanced by giving the second thread, after its GEMM, the last eighth
// of the first GEMM's columns (whole 64-column tiles): a dense layer's dX = dY W (the
// first, OpenBLAS's slower "nn" call form: 17 against 12.6 ms for dW on 256 x 2048 x 2048
// on one thread) is the longer side. 256 x 2048 x 2048 on 2 threads, interleaved in one
// process, minima (medians) of 25 batches in a quieter stretch: the whole first GEMM on
// one side 20.2 (37.2) ms, an eighth moved 18.5 (20.9), a quarter 20.7 (21.8), in turn on
// OpenBLAS's 2 threads 18.3 (19.5); loaded: 36.1 (49.5), 36.5 (38.3), 34.1 (37.3) and
// 54.4 (76.7). The cut is a function of the shape only, so the results are the same from
// call to call (and, where OpenBLAS computes a column the same wherever C is cut, the
// one-thread bits).
constexpr std::ptrdiff_t kTailDivisor = 8;
constexpr std::ptrdiff_t kTailAlign = 64;

template <class T, class F>
void call_pair(F f, const GemmArgs<T>& a, const GemmArgs<T>& b) {
  if (!pair_side_by_side(a, b)) {
    call(f, a);
    call(f, b);
    return;
  }
  if (!f) throw std::runtime_error("gemm: BLAS not initialised (import gradcore, not gradcore._C)");
  const std::ptrdiff_t cut = a.n - a.n / kTailDivisor / kTailAlign * kTailAlign;
  // Checked before the parallel region: nothing in it throws.
  const Fortran<T> head = fortran_args(columns(a, 0, cut)), second = fortran_args(b);
  const bool has_tail = cut < a.n;
  const Fortran<T> tail = has_tail ? fortran_args(columns(a, cut, a.n)) : head;
  blas_set_threads_t set = g_set_threads.load(std::memory_order_acquire);
  blas_get_threads_t get = g_get_threads.load(std::memory_order_acquire);
  if (get() != 1) set(1);
#if defined(GC_HAVE_OPENMP)
#pragma omp parallel num_threads(2)
  {
    // A team smaller than asked for (OMP_THREAD_LIMIT, a busy runtime): thread 0 runs all.
    const int team = omp_get_num_threads(), me = omp_get_thread_num();
    if (me == 0) invoke(f, head);
    if (me == 1 || team < 2) {
      invoke(f, second);
      if (has_tail) invoke(f, tail);
    }
  }
#endif
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
  call<float>(g_sgemm, GemmArgs<float>{ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc});
}

template <>
void gemm_rowmajor<double>(bool ta, bool tb, std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, double alpha,
                           const double* A, std::ptrdiff_t lda, const double* B, std::ptrdiff_t ldb, double beta,
                           double* C, std::ptrdiff_t ldc) {
  call<double>(g_dgemm, GemmArgs<double>{ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc});
}

template <>
void gemm_rowmajor_pair<float>(const GemmArgs<float>& first, const GemmArgs<float>& second) {
  call_pair<float>(g_sgemm, first, second);
}

template <>
void gemm_rowmajor_pair<double>(const GemmArgs<double>& first, const GemmArgs<double>& second) {
  call_pair<double>(g_dgemm, first, second);
}

}  // namespace gc
