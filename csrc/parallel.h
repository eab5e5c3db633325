// Thread policy shared by every kernel family: OpenMP only above a size where waking the
// other threads is repaid; small layers stay on one thread. Every parallel loop goes
// through parallel_for, and every thread count through threads_for with the grain of its
// kernel family.
//
// What a fork costs decides the grains. gradcore runs libgomp with OMP_WAIT_POLICY=PASSIVE
// (spinning workers would steal a core from OpenBLAS), so idle workers sleep and each
// parallel region pays a wake-up: ~50 us on the 2-core EPYC VM of benchmarks/RESULTS.md,
// where a memory-bound pass streams ~10 float32 values per ns. The grains were measured
// with benchmarks/threads.py (1 vs 2 threads, interleaved) and sit in each family's file,
// next to the measurement: bandwidth-bound passes fork from 1M-4M values, batch / layer
// norm and Adam from 512K-1M, transcendental activations (0.5-7 ns a value with vmath.h)
// from 128K float32 / 64K float64 values.
//
// GEMMs run in OpenBLAS's own pthreads pool, not here: blas.cpp gives each one 1 thread
// or get_num_threads() from its shape (blas_threads_for, measured the same way with
// benchmarks/threads.py --gemm / --nets).
#pragma once
#include <cstddef>

#if defined(GC_HAVE_OPENMP)
#include <omp.h>
#endif

namespace gc {

using index_t = std::ptrdiff_t;

int get_num_threads();
void set_num_threads(int n);
bool have_openmp();

// Number of threads to use for `work` elements of a kernel whose family needs `grain`
// elements per thread to repay the fork: 1 below 2 * grain, then one thread per grain up
// to get_num_threads(). The grain is the family's measured constant (no default: a new
// kernel must measure its own with benchmarks/threads.py).
inline int threads_for(index_t work, index_t grain) {
#if defined(GC_HAVE_OPENMP)
  const index_t cap = work / grain;
  if (cap < 2) return 1;
  const int t = get_num_threads();
  return cap < t ? static_cast<int>(cap) : t;
#else
  (void)work;
  (void)grain;
  return 1;
#endif
}

// Number of fixed work units of a reduction over `work` values in `items` pieces: one per
// `grain` values, at most max_units and items, at least 1. A function of the size only,
// never of the thread count, so the partial sums and their order (and the result) are the
// same on any number of threads.
inline int reduction_units(index_t work, index_t items, index_t grain, int max_units) {
  index_t u = work / grain;
  if (u > max_units) u = max_units;
  if (u > items) u = items;
  return u < 1 ? 1 : static_cast<int>(u);
}

// Calls body(i) for every i in [0, n), on up to `threads` threads (serially when
// threads <= 1 or n <= 1). Each thread of the team runs one contiguous run of indices,
// cut from the team size OpenMP actually started (omp_get_num_threads), which can be
// smaller than the request (OMP_THREAD_LIMIT, nested regions, a busy runtime): every
// index runs exactly once whatever the team. Callers whose result depends on how work is
// grouped make the indices fixed work units (chunks with their own partial sums), never
// "one per requested thread", so results do not depend on the team either.
template <class Body>
void parallel_for(index_t n, int threads, Body&& body) {
#if defined(GC_HAVE_OPENMP)
  if (threads > 1 && n > 1) {
#pragma omp parallel num_threads(threads)
    {
      const index_t team = omp_get_num_threads(), me = omp_get_thread_num();
      const index_t end = n * (me + 1) / team;
      for (index_t i = n * me / team; i < end; ++i) body(i);
    }
    return;
  }
#else
  (void)threads;
#endif
  for (index_t i = 0; i < n; ++i) body(i);
}

// Calls body(lo, hi) over [0, n) cut into threads_for(work, grain) contiguous runs, one
// per thread (work counts values, so a row-wise caller passes rows * cols). Only for
// kernels whose result does not depend on where the runs are cut.
template <class Body>
void parallel_runs(index_t n, index_t work, index_t grain, Body&& body) {
  const int parts = threads_for(work, grain);
  parallel_for(parts, parts, [&](index_t t) { body(n * t / parts, n * (t + 1) / parts); });
}

}  // namespace gc
