// Thread policy shared by every kernel family: OpenMP only above a size where the fork
// and join cost is repaid (a few microseconds with spinning waits, tens with passive
// ones); small layers stay on one thread. Every parallel loop goes through parallel_for.
#pragma once
#include <cstddef>

#if defined(GC_HAVE_OPENMP)
#include <omp.h>
#endif

namespace gc {

using index_t = std::ptrdiff_t;

// Elements below which an element-wise loop runs serially.
constexpr index_t kParallelGrain = 1 << 15;

int get_num_threads();
void set_num_threads(int n);
bool have_openmp();

// Number of threads to use for `work` elements of element-wise work.
inline int threads_for(index_t work) {
#if defined(GC_HAVE_OPENMP)
  if (work < kParallelGrain) return 1;
  int t = get_num_threads();
  index_t cap = work / kParallelGrain;
  return cap < t ? static_cast<int>(cap) : t;
#else
  (void)work;
  return 1;
#endif
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

}  // namespace gc
