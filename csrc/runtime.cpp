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

namespace {
#if GC_HAVE_CLONES
// The conditions of the ifunc resolvers GCC emits for target_clones: a clone for
// "arch=x86-64-vN" runs when the CPU supports every feature of that level.
bool cpu_is_level(int level) {
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
  return level == 4 ? __builtin_cpu_supports("x86-64-v4") : __builtin_cpu_supports("x86-64-v3");
#else  // the main features of each level (GCC < 12 and Clang have no level names here)
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  if (level == 3) return v3;
  return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
#endif
}
#endif
}  // namespace

// The widest instruction set any kernel runs on this CPU: the x86-64-v4 (AVX-512) clones
// of stats.cpp / transpose.cpp (GC_CLONES_V4), the x86-64-v3 clones of the rest, and
// dense_small.cpp's AVX-512F kernels (taken on any CPU with avx512f, whatever the clones).
const char* simd_level() {
#if GC_HAVE_CLONES
  __builtin_cpu_init();
  const bool small512 = __builtin_cpu_supports("avx512f");
#if !defined(GC_NO_V4_CLONES)
  if (cpu_is_level(4)) return "avx512 (x86-64-v4)";
#endif
  if (cpu_is_level(3))
    return small512 ? "avx2+fma (x86-64-v3); avx512f in the small Dense kernels" : "avx2+fma (x86-64-v3)";
  return small512 ? "sse2 (x86-64 baseline); avx512f in the small Dense kernels" : "sse2 (x86-64 baseline)";
#elif (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") ? "generic; avx512f in the small Dense kernels" : "generic";
#else
  return "generic";
#endif
}

}  // namespace gc
