// Runtime SIMD dispatch: portable flags, wide paths chosen per CPU at load time.
//
// Hot element loops are written once as inline templates and instantiated inside thin
// non-template wrappers marked GC_CLONES. On x86-64 with GCC or Clang the compiler emits
// an x86-64-v3 (AVX2 + FMA) clone and a baseline clone, and the loader picks one per
// process through an ifunc resolver. Elsewhere the macro is empty and the baseline runs.
#pragma once

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    defined(__linux__) && !defined(GC_NO_CLONES)
#define GC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define GC_HAVE_CLONES 1
#else
#define GC_CLONES
#define GC_HAVE_CLONES 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define GC_INLINE inline __attribute__((always_inline))
#else
#define GC_INLINE inline
#endif

namespace gc {
// Name of the widest instruction set the dispatched loops use on this CPU.
const char* simd_level();
}  // namespace gc
