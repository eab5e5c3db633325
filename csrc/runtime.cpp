#include "parallel.h"
#include "simd.h"

namespace gc {

namespace {
int g_num_threads = 0;  // 0: not set yet, ask OpenMP
}

int get_num_threads() {
#if defined(GC_HAVE_OPENMP)
  if (g_num_threads <= 0) g_num_threads = omp_get_max_threads();
  return g_num_threads;
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  if (n < 1) n = 1;
  g_num_threads = n;
#if defined(GC_HAVE_OPENMP)
  omp_set_num_threads(n);
#endif
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
