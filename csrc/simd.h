// Runtime SIMD dispatch: portable flags, wide paths chosen per CPU at load time.
//
// Hot element loops are written once as always-inline templates over the element type T
// and reached only through GC_SIMD_DISPATCH, which instantiates them inside thin
// non-template wrappers marked GC_CLONES. On x86-64 Linux with GCC or Clang the compiler
// emits an x86-64-v3 (AVX2 + FMA) clone and a baseline clone of each wrapper, and the
// dynamic loader picks one per process through an ifunc resolver. Elsewhere the macro is
// empty and the baseline runs.
//
// OpenMP regions stay outside the wrappers (in the drivers, through parallel_for): the
// outlined body of a region inside a cloned function is compiled for the baseline only.
#pragma once

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    defined(__linux__) && !defined(GC_NO_CLONES)
#define GC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define GC_HAVE_CLONES 1
#else
#define GC_CLONES
#define GC_HAVE_CLONES 0
#endif

// GC_CLONES_V4: GC_CLONES plus an x86-64-v4 (AVX-512) clone, for a file whose loops were
// measured faster with it (stats.cpp). Such a file redefines GC_CLONES as this after the
// includes; GC_NO_V4_CLONES (or GC_NO_CLONES) leaves it at GC_CLONES.
// (Spelled out in full in every branch: a file redefines GC_CLONES in terms of it.)
#if GC_HAVE_CLONES && !defined(GC_NO_V4_CLONES)
#define GC_CLONES_V4 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif GC_HAVE_CLONES
#define GC_CLONES_V4 __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GC_CLONES_V4
#endif

#if defined(__GNUC__) || defined(__clang__)
#define GC_INLINE inline __attribute__((always_inline))
#else
#define GC_INLINE inline
#endif

// GC_SIMD_DISPATCH(ret, name, kernel, params, args) declares two overloads
//   ret name params   with T = float and with T = double,
// each a GC_CLONES function whose body is `return kernel<T> args;`. `params` is the
// parenthesised parameter list written with T, `args` the parenthesised call arguments;
// the overload is chosen by the T-typed arguments. Use it inside the file's anonymous
// namespace, e.g.
//   GC_SIMD_DISPATCH(void, fwd_k, forward_range, (const T* x, T* y, index_t n), (x, y, n))
#define GC_SIMD_DISPATCH(ret, name, kernel, params, args)  \
  namespace simd_f32 {                                     \
  using T = float;                                         \
  GC_CLONES ret name params { return kernel<T> args; }     \
  }                                                        \
  namespace simd_f64 {                                     \
  using T = double;                                        \
  GC_CLONES ret name params { return kernel<T> args; }     \
  }                                                        \
  using simd_f32::name;                                    \
  using simd_f64::name;

namespace gc {
// Name of the widest instruction set the dispatched loops use on this CPU.
const char* simd_level();
}  // namespace gc
