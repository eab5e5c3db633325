#include "optim.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "norm.h"
#include "simd.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
#define GC_FLUSH_DENORMALS 1
#else
#define GC_FLUSH_DENORMALS 0
#endif

namespace gc {

namespace {

// Work unit of the update pass. Chunks never straddle two tensors, so each carries one
// clip scale.
constexpr index_t kChunk = 1 << 14;

// Grains of the update pass (values per thread before a second thread pays for its
// ~50 us wake-up, parallel.h), by how much work a value costs. Measured with
// benchmarks/threads.py on the 2-core EPYC VM, float32 in 4 tensors, 1 vs 2 threads
// (the sum-of-squares pass before it forks on its own, from norm.cpp's grain):
// - clip: one multiply and clamp per value, a single stream like the norms (norm.cpp):
//   1M: 53 us vs 66 us, 2M: 129 us vs 144 us, 4M: 666 us vs 383 us in a quiet run
//   (0.95x-1.05x in runs sharing the machine);
// - SGD with momentum: three streams read, two written, bandwidth-bound:
//   1M: 259 us vs 292 us, 2M: 762 us vs 738 us, 8M: 4.6 ms vs 3.2 ms;
// - Adam: a square root and a division per value, 512K: 281 us vs 287 us,
//   1M: 544 us vs 357 us;
// - RMSprop / Adagrad: a square root and a division, one state stream fewer than Adam,
//   1M: 410 us vs 471 us (RMSprop), 2M: 1.20 ms vs 1.09 ms, 4M: 2.02 ms vs 1.63 ms.
constexpr index_t kClipGrain = index_t(1) << 21;
constexpr index_t kSgdGrain = index_t(1) << 20;
constexpr index_t kAdamGrain = index_t(1) << 19;
constexpr index_t kRmspropGrain = index_t(1) << 20;
constexpr index_t kAdagradGrain = index_t(1) << 20;

struct Chunk {
  index_t begin, end, tensor;
};

// The chunks of a layout live in the caller's frame up to this count (16K values each:
// 8M values), on the heap above (SmallBuffer).
constexpr size_t kLocalChunks = 512;
using ChunkList = SmallBuffer<Chunk, kLocalChunks>;

size_t count_chunks(FlatLayout L) {
  size_t n = 0;
  for (index_t i = 0; i < L.k; ++i) n += static_cast<size_t>((L.offsets[i + 1] - L.offsets[i] + kChunk - 1) / kChunk);
  return n;
}

// Writes the count_chunks(L) chunks of the layout, in order.
void fill_chunks(FlatLayout L, Chunk* out) {
  size_t c = 0;
  for (index_t i = 0; i < L.k; ++i) {
    const index_t end = L.offsets[i + 1];
    for (index_t a = L.offsets[i]; a < end; a += kChunk) out[c++] = {a, std::min(a + kChunk, end), i};
  }
}

// Denormals (optim.h): while it runs a chunk of an update pass, the thread computes with
// MXCSR FTZ (results below the smallest normal number become zero) and DAZ (denormal
// inputs are read as zero), and puts its own MXCSR back afterwards, so no other kernel
// (vmath, the norms, user code on the thread) sees the change. Set and restored once per
// run of chunks on each thread: a handful of ldmxcsr per step.
class FlushDenormals {
 public:
#if GC_FLUSH_DENORMALS
  FlushDenormals() : saved_(_mm_getcsr()) {
    if ((saved_ & kFtzDaz) != kFtzDaz) _mm_setcsr(saved_ | kFtzDaz);
  }
  ~FlushDenormals() {
    if ((saved_ & kFtzDaz) != kFtzDaz) _mm_setcsr(saved_);
  }
#else
  FlushDenormals() = default;  // no MXCSR here: IEEE denormals (optim.h)
#endif
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

#if GC_FLUSH_DENORMALS
 private:
  static constexpr unsigned kFtzDaz = 0x8000u | 0x0040u;  // MXCSR bit 15 FTZ, bit 6 DAZ
  unsigned saved_;
#endif
};

template <class T>
GC_INLINE T clamp_to(T g, T lo, T hi) {
  g = g < lo ? lo : g;
  return g > hi ? hi : g;
}

// ------------------------------------------------------------------ pass 1: sums of squares
// The shared sum-of-squares / non-finite kernel of norm.cpp, over the tensors of the
// layout: per-tensor sums (of grad + noise), first tensor holding a NaN or an Inf; with
// stats, the grad columns of the raw gradient from the same read.
template <class T>
std::int64_t sumsq_pass(const T* grad, const T* noise, FlatLayout L, double* sumsq, double* stats, index_t cols) {
  ViewList views(static_cast<size_t>(L.k));
  flat_views(grad, noise, L.offsets, L.k, views.data());
  return sum_of_squares(views.data(), L.k, sumsq, /*double_lanes=*/true, stats ? stats + kGradSumSq : nullptr,
                        cols);
}

// What the update pass measures (update_loop): nothing; the parameters' p^2 before the
// update only; p^2 after and the update's squares (a table without the column before); all
// three; or the update's squares and p^2 before (stats_updates 2: optim.h).
enum StatsMode : int { kNoStats = 0, kBeforeOnly = 1, kUpdates = 2, kAllStats = 3, kUpdateBefore = 4 };

constexpr bool measures_after(StatsMode m) { return m == kUpdates || m == kAllStats; }
constexpr bool measures_update(StatsMode m) { return m == kUpdates || m == kAllStats || m == kUpdateBefore; }

// Per chunk of the update pass: [sum p_new^2, sum (p_new - p_old)^2, sum p_old^2].
constexpr size_t kAccSlots = 3;

StatsMode stats_mode(const double* stats, index_t cols, int updates) {
  if (!stats) return kNoStats;
  const bool before = cols > kOptStatCols;
  if (updates == 0) return before ? kBeforeOnly : kNoStats;
  if (!before) return kUpdates;
  return updates == 2 ? kUpdateBefore : kAllStats;
}

// The parameter columns of a step that wrote nothing: sum of p^2 (after and before: the
// same) and no update, those of `mode`.
template <class T>
void unchanged_param_stats(const T* param, FlatLayout L, double* stats, index_t cols, StatsMode mode) {
  ViewList views(static_cast<size_t>(L.k));
  flat_views(param, static_cast<const T*>(nullptr), L.offsets, L.k, views.data());
  SmallBuffer<double, 64> sums(static_cast<size_t>(L.k));
  sum_of_squares(views.data(), L.k, sums.data(), /*double_lanes=*/true);
  for (index_t i = 0; i < L.k; ++i) {
    double* row = stats + i * cols;
    if (measures_after(mode)) row[kParamSumSq] = sums[static_cast<size_t>(i)];
    if (measures_update(mode)) row[kUpdateSumSq] = 0;
    if (cols > kOptStatCols) row[kParamSumSqBefore] = sums[static_cast<size_t>(i)];
  }
}

// Runs pass 1 (when asked) and then `body(begin, count, scale, acc)` over every chunk, on
// threads_for(total, grain) threads (grain: the optimizer's, above). FLUSH: the chunks run
// with denormals flushed (FlushDenormals; the optimizers' update passes, not clip_grads).
// mode (stats_mode: what the body's update loop measures, which its Args carry too): acc
// is null with kNoStats, else it points to the chunk's kAccSlots slots, added per tensor in
// chunk order afterwards into the columns of `stats` (cols wide) that mode measures.
template <class T, bool FLUSH, class Body>
StepResult run_step(const T* param, const T* grad, const T* noise, FlatLayout L, double* sumsq, double* scales,
                    double* stats, index_t cols, StatsMode mode, const ClipOptions& clip, index_t grain,
                    Body&& body) {
  StepResult r{std::numeric_limits<double>::quiet_NaN(), -1};
  if (clip.compute_scales) {
    r.bad_tensor = sumsq_pass(grad, noise, L, sumsq, stats, cols);
    if (r.bad_tensor >= 0) {
      double raw = 0;
      for (index_t i = 0; i < L.k; ++i) raw += sumsq[i];
      r.norm = std::sqrt(raw);
      if (mode != kNoStats) unchanged_param_stats(param, L, stats, cols, mode);
      return r;  // nothing written: a skipped step leaves parameters and state bit-identical
    }
    r.norm = clip_scales(sumsq, L.k, clip.clip_norm, clip.global_clip_norm, scales);
  }
  ChunkList chunks(count_chunks(L));
  fill_chunks(L, chunks.data());
  if (mode == kNoStats) stats = nullptr;  // the grad columns are written: nothing more to measure
  SmallBuffer<double, kAccSlots * kLocalChunks> acc(stats ? kAccSlots * chunks.size() : 0);
  // Each thread runs a contiguous run of chunks (every chunk writes only its own slots, so
  // how they are grouped cannot change a result), inside one denormal flush when asked.
  const index_t nchunks = static_cast<index_t>(chunks.size());
  parallel_runs(nchunks, L.offsets[L.k], grain, [&](index_t lo, index_t hi) {
    auto run = [&] {
      for (index_t c = lo; c < hi; ++c) {
        const Chunk& ch = chunks[static_cast<size_t>(c)];
        double* chunk_acc = stats ? &acc[kAccSlots * static_cast<size_t>(c)] : nullptr;
        body(ch.begin, ch.end - ch.begin, static_cast<T>(scales[ch.tensor]), chunk_acc);
      }
    };
    if constexpr (FLUSH) {
      const FlushDenormals flush;
      run();
    } else {
      run();
    }
  });
  if (stats) {
    const bool after = measures_after(mode), update = measures_update(mode), before = cols > kOptStatCols;
    for (index_t i = 0; i < L.k; ++i) {
      double* row = stats + i * cols;
      if (after) row[kParamSumSq] = 0;
      if (update) row[kUpdateSumSq] = 0;
      if (before) row[kParamSumSqBefore] = 0;
    }
    for (size_t c = 0; c < chunks.size(); ++c) {
      double* row = stats + chunks[c].tensor * cols;
      const double* a = &acc[kAccSlots * c];
      if (after) row[kParamSumSq] += a[0];
      if (update) row[kUpdateSumSq] += a[1];
      if (before) row[kParamSumSqBefore] += a[2];
    }
  }
  return r;
}

// One value's share of a chunk's statistics (STATS: kUpdates, kAllStats or kUpdateBefore):
// (p_new - p_old)^2, the difference rounded to T as the difference of two snapshots would be,
// and p_new^2 (kUpdates, kAllStats) and / or p_old^2 (kAllStats, kUpdateBefore).
//
// Two sums per value at most, and kAllStats takes p_old as a - d: p_old exactly where the
// rounded difference is exact (p_new within a factor 2 of p_old, or either 0), else within
// half an ulp (of T) of it. A third conversion and sum in this loop (beside the update's
// constants) spilled registers: net3's Adam step +35-57 us, where kUpdateBefore (p_old
// converted, p_new not) costs what kUpdates does.
template <class T, int STATS>
GC_INLINE void tally(T p_new, T p_old, double& param_sq, double& update_sq, double& before_sq) {
  const double d = double(T(p_new - p_old));
  update_sq += d * d;
  if constexpr (STATS == kUpdateBefore) {
    const double b = double(p_old);
    before_sq += b * b;
  } else {
    const double a = double(p_new);
    param_sq += a * a;
    if constexpr (STATS == kAllStats) {
      const double b = a - d;
      before_sq += b * b;
    }
  }
}

#if defined(__GNUC__) || defined(__clang__)
#define GC_LAMBDA_INLINE __attribute__((always_inline))
#else
#define GC_LAMBDA_INLINE
#endif

// A parameter's value before and after the update of one element.
template <class T>
struct Updated {
  T p_new, p_old;
};

// Values per block of the statistics' update loop (below): kStatBlock old parameters set
// aside in the caller's frame.
constexpr index_t kStatBlock = 256;

// The update loop of a chunk of n values at p: elem(i) updates element i (parameter and
// state) and returns its Updated values. STATS (StatsMode): kUpdates also sums, in double,
// acc[0] = p_new^2 and acc[1] = (p_new - p_old)^2 (the difference rounded to T: tally),
// kAllStats those and acc[2] = p_old^2, kUpdateBefore acc[1] and acc[2], kBeforeOnly acc[2].
//
// p_old is an input of the update: its square hangs off no dependency chain, so kBeforeOnly
// sums it in the same loop (net3's 537K float32 Adam step: 0-5 us over the plain one, where
// a pass of its own over the weights costs 50 us from cache, 75-300 us in training). With
// the other modes the statistics are taken one block behind the
// update: while the loop updates block b it sums the squares of block b - 1, from the
// parameters it wrote there (in L1) and their old values it set aside. Tallied right after
// its own update (one `omp simd reduction` loop), p_new - p_old, its conversion to double
// and the adds hang onto the end of the update's long dependency chain (square root, two
// divisions): on net3's 537K float32 Adam step the statistics cost ~90 us over a 380 us step
// (RMSprop ~120, Adagrad ~90), while summing p_new^2 and p_old^2 alone (off that chain's
// end) cost ~15 us, and float lanes (not exact enough: the statistics are held to 1e-10)
// ~7 us. One block behind, the tally is independent work that runs in the update's shadow:
// ~10-25 us. Each element's update is the same expression as without statistics (they only
// read its result), so a step with statistics writes the same values. The sums are added in
// one double per lane of the loop's vectors, per chunk: the same for any thread count.
template <class T, int STATS, class Elem>
GC_INLINE void update_loop(const T* p, index_t n, double* acc, Elem&& elem) {
  if constexpr (STATS == kNoStats) {
#pragma omp simd
    for (index_t i = 0; i < n; ++i) elem(i);
    (void)p;
    (void)acc;
  } else if constexpr (STATS == kBeforeOnly) {
    double before_sq = 0;
#pragma omp simd reduction(+ : before_sq)
    for (index_t i = 0; i < n; ++i) {
      const double b = double(elem(i).p_old);
      before_sq += b * b;
    }
    (void)p;
    acc[2] = before_sq;
  } else {
    T old[kStatBlock];
    double param_sq = 0, update_sq = 0, before_sq = 0;
    index_t prev = -1, prev_m = 0;  // the block whose statistics are pending (its old values in old)
    for (index_t b = 0; b < n; b += kStatBlock) {
      const index_t m = n - b < kStatBlock ? n - b : kStatBlock;
      if (prev >= 0 && m == prev_m) {
        const T* __restrict pp = p + prev;
#pragma omp simd reduction(+ : param_sq, update_sq, before_sq)
        for (index_t j = 0; j < m; ++j) {
          tally<T, STATS>(pp[j], old[j], param_sq, update_sq, before_sq);
          old[j] = elem(b + j).p_old;
        }
      } else {
        if (prev >= 0) {
          const T* __restrict pp = p + prev;
#pragma omp simd reduction(+ : param_sq, update_sq, before_sq)
          for (index_t j = 0; j < prev_m; ++j) tally<T, STATS>(pp[j], old[j], param_sq, update_sq, before_sq);
        }
#pragma omp simd
        for (index_t j = 0; j < m; ++j) old[j] = elem(b + j).p_old;
      }
      prev = b;
      prev_m = m;
    }
    if (prev >= 0) {
      const T* __restrict pp = p + prev;
#pragma omp simd reduction(+ : param_sq, update_sq, before_sq)
      for (index_t j = 0; j < prev_m; ++j) tally<T, STATS>(pp[j], old[j], param_sq, update_sq, before_sq);
    }
    acc[0] = param_sq;
    acc[1] = update_sq;
    acc[2] = before_sq;  // (0 with kUpdates; param_sq 0 with kUpdateBefore)
  }
}

template <class T>
struct ClipBounds {
  T lo, hi;
};

template <class T>
ClipBounds<T> bounds(const ClipOptions& clip) {
  if (clip.clip_value > 0) return {static_cast<T>(-clip.clip_value), static_cast<T>(clip.clip_value)};
  return {-std::numeric_limits<T>::infinity(), std::numeric_limits<T>::infinity()};
}

// Runtime-dispatched entry point name##_run of one inline chunk template.
#define GC_DISPATCHED_CHUNK(name, Args)                                                            \
  GC_SIMD_DISPATCH(void, name##_run, name, (const Args<T>& a, index_t o, index_t n, T s, double* acc), \
                   (a, o, n, s, acc))

// ------------------------------------------------------------------ clip only
template <class T>
struct ClipArgs {
  T* g;
  T lo, hi;
};

template <class T>
GC_INLINE void clip_chunk(const ClipArgs<T>& a, index_t o, index_t n, T s, double* /*acc: no statistics*/) {
  T* __restrict g = a.g + o;
  const T lo = a.lo, hi = a.hi;
#pragma omp simd
  for (index_t i = 0; i < n; ++i) g[i] = clamp_to(g[i] * s, lo, hi);
}
GC_DISPATCHED_CHUNK(clip_chunk, ClipArgs)

// ------------------------------------------------------------------ SGD
template <class T>
struct SgdArgs {
  T* p;
  const T* g;
  const T* nz;
  T* buf;
  T lo, hi, wd, lr, mom, one_minus_damp;
  bool momentum, nesterov, init;  // momentum: the momentum value is not 0 (buf is then set)
  StatsMode stats;                // what the update loop measures
};

// MOM: 0 no momentum, 1 first step (buf = g), 2 buf = mom * buf + (1 - dampening) * g.
// NESTEROV a template argument too: a run-time select in the loop kept GCC from
// vectorizing it once the statistics' reductions were added.
template <class T, bool NOISE, int MOM, bool NESTEROV, int STATS>
GC_INLINE void sgd_loop(const SgdArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  T* __restrict p = a.p + o;
  const T* __restrict g = a.g + o;
  const T* __restrict nz = NOISE ? a.nz + o : nullptr;
  T* __restrict buf = MOM ? a.buf + o : nullptr;
  const T lo = a.lo, hi = a.hi, wd = a.wd, lr = a.lr, mom = a.mom, omd = a.one_minus_damp;
  update_loop<T, STATS>(p, n, acc, [&](index_t i) GC_LAMBDA_INLINE {
    T gi = g[i];
    if constexpr (NOISE) gi += nz[i];
    const T pi = p[i];
    gi = clamp_to(gi * s, lo, hi) + wd * pi;
    T pn;
    if constexpr (MOM == 0) {
      pn = pi - lr * gi;
    } else {
      const T b = MOM == 1 ? gi : mom * buf[i] + omd * gi;
      buf[i] = b;
      const T d = NESTEROV ? gi + mom * b : b;
      pn = pi - lr * d;
    }
    p[i] = pn;
    return Updated<T>{pn, pi};
  });
}

template <class T, bool NOISE, int STATS>
GC_INLINE void sgd_momentum_modes(const SgdArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  if (!a.momentum) sgd_loop<T, NOISE, 0, false, STATS>(a, o, n, s, acc);
  else if (a.init && a.nesterov) sgd_loop<T, NOISE, 1, true, STATS>(a, o, n, s, acc);
  else if (a.init) sgd_loop<T, NOISE, 1, false, STATS>(a, o, n, s, acc);
  else if (a.nesterov) sgd_loop<T, NOISE, 2, true, STATS>(a, o, n, s, acc);
  else sgd_loop<T, NOISE, 2, false, STATS>(a, o, n, s, acc);
}

template <class T, int STATS>
GC_INLINE void sgd_modes(const SgdArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  if (a.nz) sgd_momentum_modes<T, true, STATS>(a, o, n, s, acc);
  else sgd_momentum_modes<T, false, STATS>(a, o, n, s, acc);
}

template <class T>
GC_INLINE void sgd_chunk(const SgdArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  if (a.stats == kAllStats) sgd_modes<T, kAllStats>(a, o, n, s, acc);
  else if (a.stats == kUpdates) sgd_modes<T, kUpdates>(a, o, n, s, acc);
  else if (a.stats == kUpdateBefore) sgd_modes<T, kUpdateBefore>(a, o, n, s, acc);
  else if (a.stats == kBeforeOnly) sgd_modes<T, kBeforeOnly>(a, o, n, s, acc);
  else sgd_modes<T, kNoStats>(a, o, n, s, acc);
}
GC_DISPATCHED_CHUNK(sgd_chunk, SgdArgs)

// ------------------------------------------------------------------ Adam / AdamW / AMSGrad
template <class T>
struct AdamArgs {
  T* p;
  const T* g;
  const T* nz;
  T *m, *v, *vmax;
  T lo, hi, l2, decay, b1, omb1, b2, omb2, step, sqrt_bc2, eps;
  StatsMode stats;  // what the update loop measures
};

template <class T, bool NOISE, bool AMS, int STATS>
GC_INLINE void adam_loop(const AdamArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  T* __restrict p = a.p + o;
  const T* __restrict g = a.g + o;
  const T* __restrict nz = NOISE ? a.nz + o : nullptr;
  T* __restrict m = a.m + o;
  T* __restrict v = a.v + o;
  T* __restrict vmax = AMS ? a.vmax + o : nullptr;
  const T lo = a.lo, hi = a.hi, l2 = a.l2, decay = a.decay, b1 = a.b1, omb1 = a.omb1, b2 = a.b2, omb2 = a.omb2,
          step = a.step, inv_bc2 = T(1) / a.sqrt_bc2, eps = a.eps;
  update_loop<T, STATS>(p, n, acc, [&](index_t i) GC_LAMBDA_INLINE {
    T gi = g[i];
    if constexpr (NOISE) gi += nz[i];
    const T pi = p[i];
    gi = clamp_to(gi * s, lo, hi) + l2 * pi;
    const T mi = b1 * m[i] + omb1 * gi;
    const T vi = b2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    T vhat = vi;
    if constexpr (AMS) {
      vhat = vmax[i] > vi ? vmax[i] : vi;
      vmax[i] = vhat;
    }
    const T pn = pi * decay - step * (mi / (std::sqrt(vhat) * inv_bc2 + eps));
    p[i] = pn;
    return Updated<T>{pn, pi};
  });
}

template <class T, int STATS>
GC_INLINE void adam_modes(const AdamArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  if (a.nz) {
    if (a.vmax) adam_loop<T, true, true, STATS>(a, o, n, s, acc);
    else adam_loop<T, true, false, STATS>(a, o, n, s, acc);
  } else {
    if (a.vmax) adam_loop<T, false, true, STATS>(a, o, n, s, acc);
    else adam_loop<T, false, false, STATS>(a, o, n, s, acc);
  }
}

template <class T>
GC_INLINE void adam_chunk(const AdamArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  if (a.stats == kAllStats) adam_modes<T, kAllStats>(a, o, n, s, acc);
  else if (a.stats == kUpdates) adam_modes<T, kUpdates>(a, o, n, s, acc);
  else if (a.stats == kUpdateBefore) adam_modes<T, kUpdateBefore>(a, o, n, s, acc);
  else if (a.stats == kBeforeOnly) adam_modes<T, kBeforeOnly>(a, o, n, s, acc);
  else adam_modes<T, kNoStats>(a, o, n, s, acc);
}
GC_DISPATCHED_CHUNK(adam_chunk, AdamArgs)

// ------------------------------------------------------------------ RMSprop
template <class T>
struct RmspropArgs {
  T* p;
  const T* g;
  const T* nz;
  T *sq, *ga, *buf;
  T lo, hi, wd, lr, alpha, one_minus_alpha, eps, mom;
  StatsMode stats;  // what the update loop measures
};

template <class T, bool NOISE, bool CENTERED, bool MOM, int STATS>
GC_INLINE void rmsprop_loop(const RmspropArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  T* __restrict p = a.p + o;
  const T* __restrict g = a.g + o;
  const T* __restrict nz = NOISE ? a.nz + o : nullptr;
  T* __restrict sq = a.sq + o;
  T* __restrict ga = CENTERED ? a.ga + o : nullptr;
  T* __restrict buf = MOM ? a.buf + o : nullptr;
  const T lo = a.lo, hi = a.hi, wd = a.wd, lr = a.lr, alpha = a.alpha, oma = a.one_minus_alpha, eps = a.eps,
          mom = a.mom;
  update_loop<T, STATS>(p, n, acc, [&](index_t i) GC_LAMBDA_INLINE {
    T gi = g[i];
    if constexpr (NOISE) gi += nz[i];
    const T pi = p[i];
    gi = clamp_to(gi * s, lo, hi) + wd * pi;
    const T si = alpha * sq[i] + oma * gi * gi;
    sq[i] = si;
    T var = si;
    if constexpr (CENTERED) {
      const T gai = alpha * ga[i] + oma * gi;
      ga[i] = gai;
      var = si - gai * gai;
      var = var > T(0) ? var : T(0);  // rounding can leave it a hair below zero; sqrt would give NaN
    }
    const T avg = std::sqrt(var) + eps;
    T pn;
    if constexpr (MOM) {
      const T b = mom * buf[i] + gi / avg;
      buf[i] = b;
      pn = pi - lr * b;
    } else {
      pn = pi - lr * (gi / avg);
    }
    p[i] = pn;
    return Updated<T>{pn, pi};
  });
}

template <class T, int STATS>
GC_INLINE void rmsprop_modes(const RmspropArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  const int mode = (a.ga ? 1 : 0) + (a.buf ? 2 : 0);
  if (a.nz) {
    switch (mode) {
      case 0: rmsprop_loop<T, true, false, false, STATS>(a, o, n, s, acc); break;
      case 1: rmsprop_loop<T, true, true, false, STATS>(a, o, n, s, acc); break;
      case 2: rmsprop_loop<T, true, false, true, STATS>(a, o, n, s, acc); break;
      default: rmsprop_loop<T, true, true, true, STATS>(a, o, n, s, acc); break;
    }
  } else {
    switch (mode) {
      case 0: rmsprop_loop<T, false, false, false, STATS>(a, o, n, s, acc); break;
      case 1: rmsprop_loop<T, false, true, false, STATS>(a, o, n, s, acc); break;
      case 2: rmsprop_loop<T, false, false, true, STATS>(a, o, n, s, acc); break;
      default: rmsprop_loop<T, false, true, true, STATS>(a, o, n, s, acc); break;
    }
  }
}

template <class T>
GC_INLINE void rmsprop_chunk(const RmspropArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  if (a.stats == kAllStats) rmsprop_modes<T, kAllStats>(a, o, n, s, acc);
  else if (a.stats == kUpdates) rmsprop_modes<T, kUpdates>(a, o, n, s, acc);
  else if (a.stats == kUpdateBefore) rmsprop_modes<T, kUpdateBefore>(a, o, n, s, acc);
  else if (a.stats == kBeforeOnly) rmsprop_modes<T, kBeforeOnly>(a, o, n, s, acc);
  else rmsprop_modes<T, kNoStats>(a, o, n, s, acc);
}
GC_DISPATCHED_CHUNK(rmsprop_chunk, RmspropArgs)

// ------------------------------------------------------------------ Adagrad
template <class T>
struct AdagradArgs {
  T* p;
  const T* g;
  const T* nz;
  T* sum;
  T lo, hi, wd, clr, eps;
  StatsMode stats;  // what the update loop measures
};

template <class T, bool NOISE, int STATS>
GC_INLINE void adagrad_loop(const AdagradArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  T* __restrict p = a.p + o;
  const T* __restrict g = a.g + o;
  const T* __restrict nz = NOISE ? a.nz + o : nullptr;
  T* __restrict sum = a.sum + o;
  const T lo = a.lo, hi = a.hi, wd = a.wd, clr = a.clr, eps = a.eps;
  update_loop<T, STATS>(p, n, acc, [&](index_t i) GC_LAMBDA_INLINE {
    T gi = g[i];
    if constexpr (NOISE) gi += nz[i];
    const T pi = p[i];
    gi = clamp_to(gi * s, lo, hi) + wd * pi;
    const T si = sum[i] + gi * gi;
    sum[i] = si;
    const T pn = pi - clr * (gi / (std::sqrt(si) + eps));
    p[i] = pn;
    return Updated<T>{pn, pi};
  });
}

template <class T, int STATS>
GC_INLINE void adagrad_modes(const AdagradArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  if (a.nz) adagrad_loop<T, true, STATS>(a, o, n, s, acc);
  else adagrad_loop<T, false, STATS>(a, o, n, s, acc);
}

template <class T>
GC_INLINE void adagrad_chunk(const AdagradArgs<T>& a, index_t o, index_t n, T s, double* acc) {
  if (a.stats == kAllStats) adagrad_modes<T, kAllStats>(a, o, n, s, acc);
  else if (a.stats == kUpdates) adagrad_modes<T, kUpdates>(a, o, n, s, acc);
  else if (a.stats == kUpdateBefore) adagrad_modes<T, kUpdateBefore>(a, o, n, s, acc);
  else if (a.stats == kBeforeOnly) adagrad_modes<T, kBeforeOnly>(a, o, n, s, acc);
  else adagrad_modes<T, kNoStats>(a, o, n, s, acc);
}
GC_DISPATCHED_CHUNK(adagrad_chunk, AdagradArgs)

#undef GC_DISPATCHED_CHUNK

}  // namespace

// ---------------------------------------------------------------------- public entry points
bool optim_flushes_denormals() { return GC_FLUSH_DENORMALS != 0; }

double clip_scales(const double* sumsq, index_t k, double clip_norm, double global_clip_norm, double* scales) {
  double raw = 0, post = 0;
  for (index_t i = 0; i < k; ++i) {
    raw += sumsq[i];
    const double norm = std::sqrt(sumsq[i]);
    double s = 1;
    if (clip_norm > 0 && norm > clip_norm) s = clip_norm / norm;
    scales[i] = s;
    if (s != 0) post += (s * norm) * (s * norm);  // s == 0 only for an overflowed (inf) norm
  }
  if (global_clip_norm > 0) {
    const double coef = global_clip_norm / (std::sqrt(post) + 1e-6);
    if (coef < 1)
      for (index_t i = 0; i < k; ++i) scales[i] *= coef;
  }
  return std::sqrt(raw);
}

template <class T>
std::int64_t grad_sumsq(const T* grad, const T* noise, FlatLayout L, double* sumsq, double* stats,
                        index_t stats_cols) {
  return sumsq_pass(grad, noise, L, sumsq, stats, stats_cols);
}

template <class T>
StepResult clip_grads(T* grad, FlatLayout L, double* sumsq, double* scales, const ClipOptions& clip) {
  const ClipBounds<T> b = bounds<T>(clip);
  const ClipArgs<T> a{grad, b.lo, b.hi};
  return run_step<T, false>(nullptr, grad, nullptr, L, sumsq, scales, nullptr, kOptStatCols, kNoStats, clip,
                            kClipGrain,
                     [&](index_t o, index_t n, T s, double* acc) { clip_chunk_run(a, o, n, s, acc); });
}

template <class T>
StepResult sgd_step(T* param, const T* grad, const T* noise, T* buf, FlatLayout L, double* sumsq, double* scales,
                    const SgdHyper& h, const ClipOptions& clip, double* stats, int stats_updates,
                    index_t stats_cols) {
  const StatsMode mode = stats_mode(stats, stats_cols, stats_updates);
  const ClipBounds<T> b = bounds<T>(clip);
  const SgdArgs<T> a{param,
                     grad,
                     noise,
                     buf,
                     b.lo,
                     b.hi,
                     static_cast<T>(h.weight_decay),
                     static_cast<T>(h.lr),
                     static_cast<T>(h.momentum),
                     static_cast<T>(1.0 - h.dampening),
                     h.momentum != 0,
                     h.nesterov,
                     h.init_buffer,
                     mode};
  return run_step<T, true>(param, grad, noise, L, sumsq, scales, stats, stats_cols, mode, clip, kSgdGrain,
                     [&](index_t o, index_t n, T s, double* acc) { sgd_chunk_run(a, o, n, s, acc); });
}

template <class T>
StepResult adam_step(T* param, const T* grad, const T* noise, T* m, T* v, T* vmax, FlatLayout L, double* sumsq,
                     double* scales, const AdamHyper& h, const ClipOptions& clip, double* stats,
                     int stats_updates, index_t stats_cols) {
  const StatsMode mode = stats_mode(stats, stats_cols, stats_updates);
  const ClipBounds<T> b = bounds<T>(clip);
  const AdamArgs<T> a{param,
                      grad,
                      noise,
                      m,
                      v,
                      vmax,
                      b.lo,
                      b.hi,
                      static_cast<T>(h.decoupled ? 0.0 : h.weight_decay),
                      static_cast<T>(h.decoupled ? 1.0 - h.lr * h.weight_decay : 1.0),
                      static_cast<T>(h.beta1),
                      static_cast<T>(1.0 - h.beta1),
                      static_cast<T>(h.beta2),
                      static_cast<T>(1.0 - h.beta2),
                      static_cast<T>(h.lr / h.bias_correction1),
                      static_cast<T>(std::sqrt(h.bias_correction2)),
                      static_cast<T>(h.eps),
                      mode};
  return run_step<T, true>(param, grad, noise, L, sumsq, scales, stats, stats_cols, mode, clip, kAdamGrain,
                     [&](index_t o, index_t n, T s, double* acc) { adam_chunk_run(a, o, n, s, acc); });
}

template <class T>
StepResult rmsprop_step(T* param, const T* grad, const T* noise, T* square_avg, T* grad_avg, T* buf, FlatLayout L,
                        double* sumsq, double* scales, const RmspropHyper& h, const ClipOptions& clip,
                        double* stats, int stats_updates, index_t stats_cols) {
  const StatsMode mode = stats_mode(stats, stats_cols, stats_updates);
  const ClipBounds<T> b = bounds<T>(clip);
  const RmspropArgs<T> a{param,
                         grad,
                         noise,
                         square_avg,
                         grad_avg,
                         buf,
                         b.lo,
                         b.hi,
                         static_cast<T>(h.weight_decay),
                         static_cast<T>(h.lr),
                         static_cast<T>(h.alpha),
                         static_cast<T>(1.0 - h.alpha),
                         static_cast<T>(h.eps),
                         static_cast<T>(h.momentum),
                         mode};
  return run_step<T, true>(param, grad, noise, L, sumsq, scales, stats, stats_cols, mode, clip, kRmspropGrain,
                     [&](index_t o, index_t n, T s, double* acc) { rmsprop_chunk_run(a, o, n, s, acc); });
}

template <class T>
StepResult adagrad_step(T* param, const T* grad, const T* noise, T* sum, FlatLayout L, double* sumsq, double* scales,
                        const AdagradHyper& h, const ClipOptions& clip, double* stats,
                        int stats_updates, index_t stats_cols) {
  const StatsMode mode = stats_mode(stats, stats_cols, stats_updates);
  const ClipBounds<T> b = bounds<T>(clip);
  const AdagradArgs<T> a{param,
                         grad,
                         noise,
                         sum,
                         b.lo,
                         b.hi,
                         static_cast<T>(h.weight_decay),
                         static_cast<T>(h.clr),
                         static_cast<T>(h.eps),
                         mode};
  return run_step<T, true>(param, grad, noise, L, sumsq, scales, stats, stats_cols, mode, clip, kAdagradGrain,
                     [&](index_t o, index_t n, T s, double* acc) { adagrad_chunk_run(a, o, n, s, acc); });
}

#define GC_INSTANTIATE_OPTIM(T)                                                                                       \
  template std::int64_t grad_sumsq<T>(const T*, const T*, FlatLayout, double*, double*, index_t);                     \
  template StepResult clip_grads<T>(T*, FlatLayout, double*, double*, const ClipOptions&);                            \
  template StepResult sgd_step<T>(T*, const T*, const T*, T*, FlatLayout, double*, double*, const SgdHyper&,          \
                                  const ClipOptions&, double*, int, index_t);                                        \
  template StepResult adam_step<T>(T*, const T*, const T*, T*, T*, T*, FlatLayout, double*, double*,                  \
                                   const AdamHyper&, const ClipOptions&, double*, int, index_t);                     \
  template StepResult rmsprop_step<T>(T*, const T*, const T*, T*, T*, T*, FlatLayout, double*, double*,               \
                                      const RmspropHyper&, const ClipOptions&, double*, int, index_t);               \
  template StepResult adagrad_step<T>(T*, const T*, const T*, T*, FlatLayout, double*, double*, const AdagradHyper&,  \
                                      const ClipOptions&, double*, int, index_t);

GC_INSTANTIATE_OPTIM(float)
GC_INSTANTIATE_OPTIM(double)
#undef GC_INSTANTIATE_OPTIM

}  // namespace gc
