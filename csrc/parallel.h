// Thread policy shared by every kernel family: OpenMP only above a size where the fork
// and join cost (a few microseconds) is repaid; small layers stay on one thread.
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

}  // namespace gc
