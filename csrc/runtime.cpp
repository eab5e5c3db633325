#include <atomic>

#include "blas.h"
#include "parallel.h"
#include "simd.h"

namespace gc {

namespace {
// Read by every kernel (with the GIL released, from any Python thread), written by
// set_num_threads: atomic so a concurrent change is never a data race.
std::atomic<int> g_num_threads{0};  // 0: not set yet, ask OpenMP
}  // namespace

int get_num_threads() {
#if defined(GC_HAVE_OPENMP)
  int n = g_num_threads.load(std::memory_order_relaxed);
  if (n <= 0) {
    int unset = 0;
    n = omp_get_max_threads();
    // Another thread may have set a count meanwhile: keep its value.
    if (!g_num_threads.compare_exchange_strong(unset, n, std::memory_order_relaxed)) n = unset;
  }
  return n;
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  if (n < 1) n = 1;
  g_num_threads.store(n, std::memory_order_relaxed);
#if defined(GC_HAVE_OPENMP)
  // Only the calling thread's default: gradcore's regions pass num_threads explicitly.
  omp_set_num_threads(n);
#endif
  // The same count for GEMMs above the BLAS threshold (blas.cpp).
  set_blas_user_threads(n);
}

bool have_openmp() {
#if defined(GC_HAVE_OPENMP)
  return true;
#else
  return false;
#endif
}

const char* simd_level() {
#if GC_HAVE_CLONES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2+fma (x86-64-v3)";
  return "sse2 (x86-64 baseline)";
#else
  return "generic";
#endif
}

}  // namespace gc
