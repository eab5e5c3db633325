// Statistics kernels of the gradient monitor (see stats.h for what they compute).
//
// Layout of this file:
//   * block kernels over raw pointers, reached through GC_SIMD_DISPATCH (simd.h) so an
//     AVX2/FMA clone runs where the CPU has it;
//   * drivers that cut the data into fixed chunks (kChunk values, whatever the thread
//     count) and run them on several threads only above the measured grain.
//
// The sums are accumulated in double lanes (float32 values are widened first; their
// squares are exact in double). min / max run in the input's precision, which is exact.
#include "stats.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "norm.h"  // SmallBuffer
#include "simd.h"

// These loops also get an x86-64-v4 (AVX-512) clone: a zmm converts 8 float32 values to
// double in one instruction where AVX2 needs two (plus an extract), and the conversion is
// this file's bottleneck. activation_stats of 128 x 512 float32 values (L2-resident, one
// thread, Xeon VM): 9.4 us -> 7.5 us; 128 x 256: 4.8 -> 3.8 us. The lanes are the same 16
// doubles in every clone, so every clone gives bit-identical sums. (On this CPU OpenBLAS's
// SKYLAKEX kernels already run AVX-512 in the same step: no extra frequency drop.)
#undef GC_CLONES
#define GC_CLONES GC_CLONES_V4

namespace gc {

namespace {

// Values per work unit of the sums: fixed, so the order in which partial sums are added,
// and hence the result, is the same on 1 or n threads.
constexpr index_t kChunk = index_t(1) << 16;
// Values per block. The fast loop keeps min / max without looking for NaN / Inf; a block
// whose sum of squares is not finite is scanned again for its finite min / max and its
// count of NaN / Inf (a rare block: exploding or broken activations).
constexpr index_t kBlock = 4096;
// Independent accumulators per sum: 16 double lanes, four AVX2 vectors, enough to hide
// the latency of the adds.
constexpr int kLanes = 16;

// Grain (parallel.h), the grad_stats grain (norm.cpp): a second thread is woken only
// from 4M values. Measured with benchmarks/threads.py (float32, 1 vs 2 threads, grain
// lowered to 16K for the measurement) on the 2-core Xeon VM while other jobs shared it:
// activation_stats 1M 170 us vs 179 us, 2M 323 us vs 335 us, 4M 691 us vs 397 us;
// diff_sumsq_flat 1M 283 us vs 291 us, 4M 1.13 ms vs 1.14 ms (one thread streams ~7-9
// values per ns from L2, 3-4 from memory, so the ~50 us wake-up is repaid late).
constexpr index_t kStatsGrain = index_t(1) << 21;

// Chunks whose partials live on the stack (SmallBuffer): up to 4M values, so a recorded
// step makes no heap allocation for the statistics of any layer below that size.
constexpr std::size_t kLocalChunks = 64;

// Below this fraction of E[x^2], E[x^2] - E[x]^2 is recomputed from deviations in a second
// pass. The one-pass sums carry a relative error of ~1e-14 (double lanes, 4K blocks), so
// above it the variance keeps ~12 digits; activations near a constant (a saturated
// sigmoid layer, ~0.5 with a tiny spread) take the second pass.
constexpr double kCancellation = 1.0 / 16;
// float64 values beyond these magnitudes would overflow or underflow their squares: the
// second pass scales them by a power of two. (float32 values never do, in double.)
constexpr double kHugeAbs = 0x1p+400;
constexpr double kTinyAbs = 0x1p-400;

template <class T>
constexpr T kInf = std::numeric_limits<T>::infinity();

template <class T>
GC_INLINE bool is_finite(T v) {
  return std::abs(v) <= std::numeric_limits<T>::max();  // false for NaN and +-Inf
}

// Partial moments of a chunk. lo > hi means no finite value was seen.
struct Moments {
  double sum = 0, sumsq = 0;
  double lo = kInf<double>, hi = -kInf<double>;
  std::int64_t nonfinite = 0;
};

// Finite min / max and count of NaN / Inf of a block that holds one.
template <class T>
GC_INLINE void rescan_block(const T* x, index_t n, T& lo, T& hi, std::int64_t& count) {
  T l = kInf<T>, h = -kInf<T>;
  std::int64_t c = 0;
  for (index_t i = 0; i < n; ++i) {
    const T v = x[i];
    if (is_finite(v)) {
      l = v < l ? v : l;
      h = v > h ? v : h;
    } else {
      ++c;
    }
  }
  lo = l;
  hi = h;
  count = c;
}

// Sum, sum of squares (double lanes), min and max (NaN never enters them: a comparison
// with NaN is false) of one block.
template <class T>
GC_INLINE void moments_block(const T* x, index_t n, Moments& p) {
  double s[kLanes] = {}, q[kLanes] = {};
  T lo[kLanes], hi[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    lo[j] = kInf<T>;
    hi[j] = -kInf<T>;
  }
  index_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const T v = x[i + j];
      const double d = double(v);
      s[j] += d;
      q[j] += d * d;
      lo[j] = v < lo[j] ? v : lo[j];
      hi[j] = v > hi[j] ? v : hi[j];
    }
  }
  double ds = 0, dq = 0;
  T l = kInf<T>, h = -kInf<T>;
  for (int j = 0; j < kLanes; ++j) {
    ds += s[j];
    dq += q[j];
    l = lo[j] < l ? lo[j] : l;
    h = hi[j] > h ? hi[j] : h;
  }
  for (; i < n; ++i) {
    const T v = x[i];
    ds += double(v);
    dq += double(v) * double(v);
    l = v < l ? v : l;
    h = v > h ? v : h;
  }
  std::int64_t count = 0;
  // A NaN or an Inf makes the sum of squares non-finite (so does a float64 square that
  // overflows: the rescan then finds no NaN / Inf and the true finite min / max).
  if (!std::isfinite(dq)) rescan_block(x, n, l, h, count);
  p.sum += ds;
  p.sumsq += dq;
  if (l <= h) {
    p.lo = double(l) < p.lo ? double(l) : p.lo;
    p.hi = double(h) > p.hi ? double(h) : p.hi;
  }
  p.nonfinite += count;
}

// float32 moments of one block in float lanes. The conversion of every value to double
// (two conversions per vector, each as costly as an add) was moments_block's bottleneck:
// here the sums run in kFloatLanes float lanes for kFlushRounds values per lane, and the
// lanes are then added into double lanes, so a float partial sum holds at most 16 values
// (relative error <= 16 * 2^-24 of the sum of their magnitudes; ~1e-7 in practice, the
// rounding NumPy's own float32 mean carries). The squares are fused multiply-adds in float.
// A block whose float sum of squares overflowed (|x| >~ 1.8e19), may have lost digits to
// underflow (a nonzero block summing below 2^-90: squares below 2^-126 are denormal) or
// holds a NaN / Inf is measured again by moments_block, in double.
constexpr int kFloatLanes = 32;
constexpr index_t kFlushRounds = 16;
constexpr double kSafeSumSqLow = 0x1p-90;

GC_INLINE void moments_block_f32(const float* x, index_t n, Moments& p) {
  double s[kFloatLanes] = {}, q[kFloatLanes] = {};
  float lo[kFloatLanes], hi[kFloatLanes];
  for (int j = 0; j < kFloatLanes; ++j) {
    lo[j] = kInf<float>;
    hi[j] = -kInf<float>;
  }
  index_t i = 0;
  constexpr index_t kRun = kFloatLanes * kFlushRounds;
  while (i + kFloatLanes <= n) {
    float fs[kFloatLanes] = {}, fq[kFloatLanes] = {};
    const index_t stop = i + kRun <= n ? i + kRun : n - (n - i) % kFloatLanes;
    for (; i < stop; i += kFloatLanes) {
#pragma omp simd
      for (int j = 0; j < kFloatLanes; ++j) {
        const float v = x[i + j];
        fs[j] += v;
        fq[j] = std::fma(v, v, fq[j]);
        lo[j] = v < lo[j] ? v : lo[j];
        hi[j] = v > hi[j] ? v : hi[j];
      }
    }
#pragma omp simd
    for (int j = 0; j < kFloatLanes; ++j) {
      s[j] += double(fs[j]);
      q[j] += double(fq[j]);
    }
  }
  double ds = 0, dq = 0;
  float l = kInf<float>, h = -kInf<float>;
  for (int j = 0; j < kFloatLanes; ++j) {
    ds += s[j];
    dq += q[j];
    l = lo[j] < l ? lo[j] : l;
    h = hi[j] > h ? hi[j] : h;
  }
  for (; i < n; ++i) {
    const float v = x[i];
    ds += double(v);
    dq += double(v) * double(v);
    l = v < l ? v : l;
    h = v > h ? v : h;
  }
  if (!std::isfinite(dq) || (dq < kSafeSumSqLow && (l != 0 || h != 0))) {
    moments_block(x, n, p);
    return;
  }
  p.sum += ds;
  p.sumsq += dq;
  if (l <= h) {
    p.lo = double(l) < p.lo ? double(l) : p.lo;
    p.hi = double(h) > p.hi ? double(h) : p.hi;
  }
}

template <class T>
GC_INLINE Moments moments_chunk(const T* x, index_t n) {
  Moments p;
  for (index_t b = 0; b < n; b += kBlock) {
    const index_t m = n - b < kBlock ? n - b : kBlock;
    if constexpr (sizeof(T) == sizeof(float)) moments_block_f32(x + b, m, p);
    else moments_block(x + b, m, p);
  }
  return p;
}

// Sums of d and d^2 for d = (x - mean) * inv in double lanes: the second pass of the
// variance (inv a power of two that keeps d^2 from overflowing or underflowing).
template <class T>
GC_INLINE void deviation_sums(const T* x, index_t n, double mean, double inv, double& sum, double& sumsq) {
  const double m = mean * inv;
  double s[kLanes] = {}, q[kLanes] = {};
  index_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const double d = double(x[i + j]) * inv - m;
      s[j] += d;
      q[j] += d * d;
    }
  }
  double ds = 0, dq = 0;
  for (int j = 0; j < kLanes; ++j) {
    ds += s[j];
    dq += q[j];
  }
  for (; i < n; ++i) {
    const double d = double(x[i]) * inv - m;
    ds += d;
    dq += d * d;
  }
  sum = ds;
  sumsq = dq;
}

// Count of |z| > t. The count of one block fits the lanes' integers (kBlock < 2^31).
template <class T>
GC_INLINE std::int64_t count_above(const T* z, index_t n, T t) {
  std::int64_t total = 0;
  for (index_t b = 0; b < n; b += kBlock) {
    const index_t m = n - b < kBlock ? n - b : kBlock;
    int c = 0;
#pragma omp simd reduction(+ : c)
    for (index_t i = 0; i < m; ++i) c += std::abs(z[b + i]) > t ? 1 : 0;
    total += c;
  }
  return total;
}

// alive[j] = 1 for every unit j with a value that is not <= 0 in rows [0, rows) of z
// (NaN is not <= 0). Four rows per sweep of the flags; stops early once every unit is
// alive (a healthy layer: after a few rows).
template <class T>
GC_INLINE void mark_alive(const T* z, index_t rows, index_t units, T* alive) {
  constexpr index_t kRows = 4, kCheck = 16;  // rows per sweep; rows between early-exit checks
  index_t r = 0;
  while (r < rows) {
    const index_t stop = r + kCheck < rows ? r + kCheck : rows;
    for (; r + kRows <= stop; r += kRows) {
      const T* z0 = z + r * units;
      const T *z1 = z0 + units, *z2 = z1 + units, *z3 = z2 + units;
#pragma omp simd
      for (index_t j = 0; j < units; ++j) {
        const bool off = (z0[j] <= T(0)) & (z1[j] <= T(0)) & (z2[j] <= T(0)) & (z3[j] <= T(0));
        alive[j] = off ? alive[j] : T(1);
      }
    }
    for (; r < stop; ++r) {
      const T* row = z + r * units;
#pragma omp simd
      for (index_t j = 0; j < units; ++j) alive[j] = row[j] <= T(0) ? alive[j] : T(1);
    }
    T all = T(1);
#pragma omp simd reduction(min : all)
    for (index_t j = 0; j < units; ++j) all = alive[j] < all ? alive[j] : all;
    if (all != T(0)) return;
  }
}

// Sum of (a - b)^2: the difference in T (exact when a and b are within a factor 2 of each
// other, as a parameter and its update are; else rounded once, 2^-24 relative in float32),
// its square summed in double lanes. Widening the difference rather than a and b halves
// the conversions, the bottleneck of this loop.
template <class T>
GC_INLINE double diff_sumsq(const T* a, const T* b, index_t n) {
  double q[kLanes] = {};
  index_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const double d = double(a[i + j] - b[i + j]);
      q[j] += d * d;
    }
  }
  double dq = 0;
  for (int j = 0; j < kLanes; ++j) dq += q[j];
  for (; i < n; ++i) {
    const double d = double(a[i] - b[i]);
    dq += d * d;
  }
  return dq;
}

// |x| as an unsigned integer: for finite values its order is the order of |x|, and NaN /
// Inf have the largest ones (from kExpAll up), so one integer max gives max |x| and flags
// a block holding a NaN or an Inf.
template <class T>
struct AbsBits;
template <>
struct AbsBits<float> {
  using U = std::uint32_t;
  static constexpr U kMask = 0x7fffffffu, kExpAll = 0x7f800000u;
};
template <>
struct AbsBits<double> {
  using U = std::uint64_t;
  static constexpr U kMask = 0x7fffffffffffffffull, kExpAll = 0x7ff0000000000000ull;
};

template <class T>
GC_INLINE typename AbsBits<T>::U abs_bits(T v) {
  typename AbsBits<T>::U u;
  std::memcpy(&u, &v, sizeof u);
  return u & AbsBits<T>::kMask;
}

// Partial magnitude statistics of a chunk (magnitude_stats).
struct Magnitude {
  double sumsq = 0, max_abs = 0;
  std::int64_t nonfinite = 0;
};

// Sum of squares (fused multiply-adds in T lanes, flushed into double lanes every
// kFlushRounds values per lane, as moments_block_f32), max |x| over the finite values and
// the count of NaN / Inf of one block. A float32 block of finite values whose float sum
// of squares overflowed or may have lost digits to underflow is summed again in double.
template <class T>
GC_INLINE void magnitude_block(const T* x, index_t n, Magnitude& p) {
  using U = typename AbsBits<T>::U;
  double q[kFloatLanes] = {};
  U mb[kFloatLanes] = {};
  index_t i = 0;
  constexpr index_t kRun = kFloatLanes * kFlushRounds;
  while (i + kFloatLanes <= n) {
    T fq[kFloatLanes] = {};
    const index_t stop = i + kRun <= n ? i + kRun : n - (n - i) % kFloatLanes;
    for (; i < stop; i += kFloatLanes) {
#pragma omp simd
      for (int j = 0; j < kFloatLanes; ++j) {
        const T v = x[i + j];
        fq[j] = std::fma(v, v, fq[j]);
        const U a = abs_bits(v);
        mb[j] = a > mb[j] ? a : mb[j];
      }
    }
#pragma omp simd
    for (int j = 0; j < kFloatLanes; ++j) q[j] += double(fq[j]);
  }
  double dq = 0;
  U bits = 0;
  for (int j = 0; j < kFloatLanes; ++j) {
    dq += q[j];
    bits = mb[j] > bits ? mb[j] : bits;
  }
  for (; i < n; ++i) {
    dq += double(x[i]) * double(x[i]);
    bits = abs_bits(x[i]) > bits ? abs_bits(x[i]) : bits;
  }
  std::int64_t count = 0;
  if (bits >= AbsBits<T>::kExpAll) {  // a NaN or an Inf: the finite max and the count
    U fb = 0;
    for (index_t e = 0; e < n; ++e) {
      const U a = abs_bits(x[e]);
      if (a < AbsBits<T>::kExpAll) fb = a > fb ? a : fb;
      else ++count;
    }
    bits = fb;
  } else if (sizeof(T) == sizeof(float) && bits != 0 && !(std::isfinite(dq) && dq >= kSafeSumSqLow)) {
    dq = 0;
    for (index_t e = 0; e < n; ++e) dq += double(x[e]) * double(x[e]);
  }
  T mx;
  std::memcpy(&mx, &bits, sizeof mx);
  p.sumsq += dq;
  p.max_abs = double(mx) > p.max_abs ? double(mx) : p.max_abs;
  p.nonfinite += count;
}

template <class T>
GC_INLINE Magnitude magnitude_chunk(const T* x, index_t n) {
  Magnitude p;
  for (index_t b = 0; b < n; b += kBlock) magnitude_block(x + b, n - b < kBlock ? n - b : kBlock, p);
  return p;
}

// The end of a block of the fused ReLU kernels (relu_moments, relu_magnitudes): the block's
// two lane sums of squares a and b join the running lanes qa and qb. False when a block
// total is not finite (a NaN / Inf, or a float square beyond float's range) or, in float32,
// nonzero below 2^-90 (it may have lost digits to float underflow).
template <class T>
GC_INLINE bool add_block_squares(const double* a, const double* b, double* qa, double* qb) {
  double ta = 0, tb = 0;
  for (int j = 0; j < kFloatLanes; ++j) {
    ta += a[j];
    tb += b[j];
    qa[j] += a[j];
    qb[j] += b[j];
  }
  const bool tiny = sizeof(T) == sizeof(float) && ((ta < kSafeSumSqLow && ta != 0) || (tb < kSafeSumSqLow && tb != 0));
  return std::isfinite(ta) && std::isfinite(tb) && !tiny;
}

// ReLU forward fused with the statistics of its input z and output y (relu_forward_stats):
// y = z < 0 ? 0 : z (activation.cpp's Relu), the float-lane moments of z and of y and the
// alive flags of z's units, in one read of z. units is a multiple of kFloatLanes (a lane
// group stays in one row). Returns false, with y written, when a block's sums are not
// finite or may have lost digits (the caller then measures z and y by the general kernels).
template <class T>
GC_INLINE bool relu_moments(const T* z, T* y, index_t rows, index_t units, Moments& mz, Moments& my, T* alive) {
  const index_t n = rows * units;
  bool ok = true;
  double sz[kFloatLanes] = {}, qz[kFloatLanes] = {}, sy[kFloatLanes] = {}, qy[kFloatLanes] = {};
  T lz[kFloatLanes], hz[kFloatLanes], ly[kFloatLanes], hy[kFloatLanes];
  for (int j = 0; j < kFloatLanes; ++j) {
    lz[j] = ly[j] = kInf<T>;
    hz[j] = hy[j] = -kInf<T>;
  }
  index_t u0 = 0;  // unit of the group's first value
  for (index_t b = 0; b < n; b += kBlock) {
    const index_t end = b + kBlock < n ? b + kBlock : n;
    double bz[kFloatLanes] = {}, bq[kFloatLanes] = {};  // the block's squares (its check)
    for (index_t i = b; i < end;) {
      T fsz[kFloatLanes] = {}, fqz[kFloatLanes] = {}, fsy[kFloatLanes] = {}, fqy[kFloatLanes] = {};
      const index_t stop = i + kFloatLanes * kFlushRounds < end ? i + kFloatLanes * kFlushRounds : end;
      for (; i < stop; i += kFloatLanes) {
        T* al = alive + u0;
#pragma omp simd
        for (int j = 0; j < kFloatLanes; ++j) {
          const T v = z[i + j];
          const T r = v < T(0) ? T(0) : v;
          y[i + j] = r;
          fsz[j] += v;
          fqz[j] = std::fma(v, v, fqz[j]);
          fsy[j] += r;
          fqy[j] = std::fma(r, r, fqy[j]);
          lz[j] = v < lz[j] ? v : lz[j];
          hz[j] = v > hz[j] ? v : hz[j];
          ly[j] = r < ly[j] ? r : ly[j];
          hy[j] = r > hy[j] ? r : hy[j];
          al[j] = v <= T(0) ? al[j] : T(1);
        }
        u0 += kFloatLanes;
        if (u0 == units) u0 = 0;
      }
#pragma omp simd
      for (int j = 0; j < kFloatLanes; ++j) {
        sz[j] += double(fsz[j]);
        sy[j] += double(fsy[j]);
        bz[j] += double(fqz[j]);
        bq[j] += double(fqy[j]);
      }
    }
    if (!add_block_squares<T>(bz, bq, qz, qy)) ok = false;
  }
  auto finish = [&](const double* s, const double* q, const T* lo, const T* hi, Moments& m) {
    T l = kInf<T>, h = -kInf<T>;
    for (int j = 0; j < kFloatLanes; ++j) {
      m.sum += s[j];
      m.sumsq += q[j];
      l = lo[j] < l ? lo[j] : l;
      h = hi[j] > h ? hi[j] : h;
    }
    if (l <= h) {
      m.lo = double(l);
      m.hi = double(h);
    }
  };
  finish(sz, qz, lz, hz, mz);
  finish(sy, qy, ly, hy, my);
  // (a float sum of 0 over nonzero values: every square underflowed)
  for (const Moments* m : {&mz, &my})
    if (sizeof(T) == sizeof(float) && m->sumsq < kSafeSumSqLow && m->lo <= m->hi && (m->lo != 0 || m->hi != 0))
      ok = false;
  return ok;
}

// ReLU backward fused with the magnitude statistics of its incoming gradient g and of the
// gradient it makes, dx = z > 0 ? g : 0 (activation.cpp's Relu); n a multiple of
// kFloatLanes. False, with dx written, when a value is NaN / Inf or a float sum may be
// inexact (the caller then measures g and dx by magnitude_stats).
template <class T>
GC_INLINE bool relu_magnitudes(const T* z, const T* g, T* dx, index_t n, Magnitude& mg, Magnitude& md) {
  using U = typename AbsBits<T>::U;
  bool ok = true;
  double qg[kFloatLanes] = {}, qd[kFloatLanes] = {};
  U bg[kFloatLanes] = {}, bd[kFloatLanes] = {};
  for (index_t b = 0; b < n; b += kBlock) {
    const index_t end = b + kBlock < n ? b + kBlock : n;
    double blk_g[kFloatLanes] = {}, blk_d[kFloatLanes] = {};
    for (index_t i = b; i < end;) {
      T fg[kFloatLanes] = {}, fd[kFloatLanes] = {};
      const index_t stop = i + kFloatLanes * kFlushRounds < end ? i + kFloatLanes * kFlushRounds : end;
      for (; i < stop; i += kFloatLanes) {
#pragma omp simd
        for (int j = 0; j < kFloatLanes; ++j) {
          const T v = g[i + j];
          const T d = z[i + j] > T(0) ? v : T(0);
          dx[i + j] = d;
          fg[j] = std::fma(v, v, fg[j]);
          fd[j] = std::fma(d, d, fd[j]);
          const U a = abs_bits(v), c = abs_bits(d);
          bg[j] = a > bg[j] ? a : bg[j];
          bd[j] = c > bd[j] ? c : bd[j];
        }
      }
#pragma omp simd
      for (int j = 0; j < kFloatLanes; ++j) {
        blk_g[j] += double(fg[j]);
        blk_d[j] += double(fd[j]);
      }
    }
    if (!add_block_squares<T>(blk_g, blk_d, qg, qd)) ok = false;
  }
  U xg = 0, xd = 0;
  for (int j = 0; j < kFloatLanes; ++j) {
    mg.sumsq += qg[j];
    md.sumsq += qd[j];
    xg = bg[j] > xg ? bg[j] : xg;
    xd = bd[j] > xd ? bd[j] : xd;
  }
  if (xg >= AbsBits<T>::kExpAll || xd >= AbsBits<T>::kExpAll) ok = false;
  // (a float sum of 0 over nonzero values: every square underflowed)
  if (sizeof(T) == sizeof(float) && ((mg.sumsq < kSafeSumSqLow && xg != 0) || (md.sumsq < kSafeSumSqLow && xd != 0)))
    ok = false;
  T a, c;
  std::memcpy(&a, &xg, sizeof a);
  std::memcpy(&c, &xd, sizeof c);
  mg.max_abs = double(a);
  md.max_abs = double(c);
  return ok;
}

GC_SIMD_DISPATCH(Moments, moments_chunk_k, moments_chunk, (const T* x, index_t n), (x, n))
GC_SIMD_DISPATCH(bool, relu_moments_k, relu_moments,
                 (const T* z, T* y, index_t r, index_t u, Moments& mz, Moments& my, T* alive), (z, y, r, u, mz, my, alive))
GC_SIMD_DISPATCH(bool, relu_magnitudes_k, relu_magnitudes,
                 (const T* z, const T* g, T* dx, index_t n, Magnitude& mg, Magnitude& md), (z, g, dx, n, mg, md))
GC_SIMD_DISPATCH(Magnitude, magnitude_chunk_k, magnitude_chunk, (const T* x, index_t n), (x, n))
GC_SIMD_DISPATCH(void, deviation_sums_k, deviation_sums,
                 (const T* x, index_t n, double mean, double inv, double& s, double& q), (x, n, mean, inv, s, q))
GC_SIMD_DISPATCH(std::int64_t, count_above_k, count_above, (const T* z, index_t n, T t), (z, n, t))
GC_SIMD_DISPATCH(void, mark_alive_k, mark_alive, (const T* z, index_t rows, index_t units, T* alive),
                 (z, rows, units, alive))
GC_SIMD_DISPATCH(double, diff_sumsq_k, diff_sumsq, (const T* a, const T* b, index_t n), (a, b, n))

// Runs body(c, lo, hi) for the fixed chunks [lo, hi) of [0, n), on several threads from
// kStatsGrain values; each call writes only its own slot c.
template <class Body>
void for_chunks(index_t n, Body&& body) {
  const index_t nchunks = (n + kChunk - 1) / kChunk;
  parallel_for(nchunks, threads_for(n, kStatsGrain), [&](index_t c) {
    const index_t lo = c * kChunk;
    body(c, lo, lo + kChunk < n ? lo + kChunk : n);
  });
}

template <class T>
Moments moments(const T* a, index_t n) {
  SmallBuffer<Moments, kLocalChunks> parts(static_cast<size_t>((n + kChunk - 1) / kChunk));
  for_chunks(n, [&](index_t c, index_t lo, index_t hi) { parts[static_cast<size_t>(c)] = moments_chunk_k(a + lo, hi - lo); });
  Moments m;
  for (size_t c = 0; c < parts.size(); ++c) {
    const Moments& p = parts[c];
    m.sum += p.sum;
    m.sumsq += p.sumsq;
    m.lo = p.lo < m.lo ? p.lo : m.lo;
    m.hi = p.hi > m.hi ? p.hi : m.hi;
    m.nonfinite += p.nonfinite;
  }
  return m;
}

template <class T>
Magnitude magnitudes(const T* a, index_t n) {
  SmallBuffer<Magnitude, kLocalChunks> parts(static_cast<size_t>((n + kChunk - 1) / kChunk));
  for_chunks(n, [&](index_t c, index_t lo, index_t hi) { parts[static_cast<size_t>(c)] = magnitude_chunk_k(a + lo, hi - lo); });
  Magnitude m;
  for (size_t c = 0; c < parts.size(); ++c) {
    m.sumsq += parts[c].sumsq;
    m.max_abs = parts[c].max_abs > m.max_abs ? parts[c].max_abs : m.max_abs;
    m.nonfinite += parts[c].nonfinite;
  }
  return m;
}

// magnitude_stats' columns from a Magnitude.
void write_magnitude(const Magnitude& m, double* out) {
  out[kMagSumSq] = m.sumsq;
  out[kMagL2] = std::sqrt(m.sumsq);
  out[kMagMaxAbs] = m.max_abs;
  out[kMagNonFinite] = double(m.nonfinite);
}

// Mean and population std from the one-pass sums, with the second pass where they lose
// digits. NaN / Inf entries make both NaN or Inf, as in NumPy.
template <class T>
void mean_std(const T* a, index_t n, const Moments& m, double& mean, double& std) {
  const double nn = double(n);
  mean = m.sum / nn;
  const double mean_sq = m.sumsq / nn;
  double var = mean_sq - mean * mean;
  std = std::sqrt(var < 0 ? 0 : var);
  const double max_abs = std::fmax(std::fabs(m.lo), std::fabs(m.hi));
  const bool second = m.nonfinite == 0 && std::isfinite(mean) && max_abs > 0 &&
                      (var < kCancellation * mean_sq || max_abs > kHugeAbs || max_abs < kTinyAbs);
  if (!second) return;
  int e = 0;
  std::frexp(max_abs, &e);  // max_abs < 2^e: the deviations scaled by 2^-e are at most 2 in size
  const double inv = std::ldexp(1.0, -e), scale = std::ldexp(1.0, e);
  SmallBuffer<double, kLocalChunks> s(static_cast<size_t>((n + kChunk - 1) / kChunk)), q(s.size());
  for_chunks(n, [&](index_t c, index_t lo, index_t hi) {
    deviation_sums_k(a + lo, hi - lo, mean, inv, s[static_cast<size_t>(c)], q[static_cast<size_t>(c)]);
  });
  double ds = 0, dq = 0;
  for (size_t c = 0; c < s.size(); ++c) {
    ds += s[c];
    dq += q[c];
  }
  var = (dq - ds * ds / nn) / nn;  // the corrected two-pass formula (sum of deviations ~0)
  mean += scale * (ds / nn);
  std = scale * std::sqrt(var < 0 ? 0 : var);
}

// Units of z (rows, units) whose value is <= 0 in every row. Rows are cut into one run per
// thread, each marking its own flags; the union does not depend on the cut.
template <class T>
std::int64_t dead_units(const T* z, index_t rows, index_t units) {
  if (rows <= 0 || units <= 0) return 0;
  const int parts = threads_for(rows * units, kStatsGrain);
  SmallBuffer<T, 2048> alive(static_cast<size_t>(parts * units));  // zeros: no unit seen alive
  parallel_for(parts, parts, [&](index_t t) {
    const index_t lo = rows * t / parts, hi = rows * (t + 1) / parts;
    mark_alive_k(z + lo * units, hi - lo, units, alive.data() + t * units);
  });
  std::int64_t dead = 0;
  for (index_t j = 0; j < units; ++j) {
    bool live = false;
    for (index_t t = 0; t < parts; ++t) live = live || alive[static_cast<size_t>(t * units + j)] != T(0);
    dead += live ? 0 : 1;
  }
  return dead;
}

// The largest T not above t: for every T value v, |v| > it exactly when |v| > t.
template <class T>
T threshold_as(double t) {
  T c = static_cast<T>(t);
  if (double(c) > t) c = std::nextafter(c, -kInf<T>);
  return c;
}

template <class T>
std::int64_t saturated_entries(const T* z, index_t n, double threshold) {
  const T t = threshold_as<T>(threshold);
  SmallBuffer<std::int64_t, kLocalChunks> parts(static_cast<size_t>((n + kChunk - 1) / kChunk));
  for_chunks(n, [&](index_t c, index_t lo, index_t hi) { parts[static_cast<size_t>(c)] = count_above_k(z + lo, hi - lo, t); });
  std::int64_t total = 0;
  for (size_t c = 0; c < parts.size(); ++c) total += parts[c];
  return total;
}

}  // namespace

template <class T>
void activation_stats(const T* a, const T* z, index_t rows, index_t units, StatsMode mode, double threshold,
                      double* out) {
  const index_t n = rows * units;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int c = 0; c < kActStatCols; ++c) out[c] = 0;
  out[kActMean] = out[kActStd] = out[kActMin] = out[kActMax] = nan;
  out[kActUnits] = double(units);
  if (n > 0) {
    const Moments m = moments(a, n);
    mean_std(a, n, m, out[kActMean], out[kActStd]);
    if (m.lo <= m.hi) {
      out[kActMin] = m.lo;
      out[kActMax] = m.hi;
    }
    out[kActNonFinite] = double(m.nonfinite);
  }
  if (mode == StatsMode::dead) out[kActDead] = double(dead_units(z ? z : a, rows, units));
  if (mode == StatsMode::saturated && z) out[kActSaturated] = double(saturated_entries(z, n, threshold));
}

template <class T>
bool relu_fusable(index_t rows, index_t units) {
  return units > 0 && units % kFloatLanes == 0 && rows > 0 && rows * units < kStatsGrain;
}

template <class T>
void relu_forward_stats(const T* z, T* y, index_t rows, index_t units, double* out_z, double* out_y) {
  const index_t n = rows * units;
  SmallBuffer<T, 2048> alive(static_cast<size_t>(units));  // zeros: no unit seen alive
  Moments mz, my;
  if (!relu_moments_k(z, y, rows, units, mz, my, alive.data())) {  // (y is written): the general kernels
    if (out_z) activation_stats<T>(z, nullptr, rows, units, StatsMode::none, 0.0, out_z);
    activation_stats<T>(y, z, rows, units, StatsMode::dead, 0.0, out_y);
    return;
  }
  auto write = [&](const T* a, const Moments& m, double* out) {
    for (int c = 0; c < kActStatCols; ++c) out[c] = 0;
    mean_std(a, n, m, out[kActMean], out[kActStd]);
    out[kActMin] = m.lo;
    out[kActMax] = m.hi;
    out[kActUnits] = double(units);
  };
  if (out_z) write(z, mz, out_z);
  write(y, my, out_y);
  std::int64_t dead = 0;
  for (index_t j = 0; j < units; ++j) dead += alive[static_cast<size_t>(j)] != T(0) ? 0 : 1;
  out_y[kActDead] = double(dead);
}

template <class T>
void relu_backward_stats(const T* z, const T* g, T* dx, index_t n, double* out_g, double* out_dx) {
  Magnitude mg, md;
  if (!relu_magnitudes_k(z, g, dx, n, mg, md)) {  // (dx is written): the general kernel
    if (out_g) magnitude_stats<T>(g, n, out_g);
    if (out_dx) magnitude_stats<T>(dx, n, out_dx);
    return;
  }
  if (out_g) write_magnitude(mg, out_g);  // (nonfinite 0: the fused kernel saw no NaN / Inf)
  if (out_dx) write_magnitude(md, out_dx);
}

template <class T>
void magnitude_stats(const T* g, index_t n, double* out) {
  write_magnitude(magnitudes(g, n), out);
}

template <class T>
void diff_sumsq_flat(const T* a, const T* b, const std::int64_t* offsets, index_t k, double* out) {
  // Fixed chunks of each segment, as for the moments; partials summed in order per segment.
  struct Task {
    index_t segment, begin, end;
  };
  std::vector<Task> tasks;
  for (index_t i = 0; i < k; ++i)
    for (index_t lo = offsets[i]; lo < offsets[i + 1]; lo += kChunk)
      tasks.push_back({i, lo, lo + kChunk < offsets[i + 1] ? lo + kChunk : offsets[i + 1]});
  std::vector<double> parts(tasks.size());
  const index_t total = offsets[k];
  parallel_for(static_cast<index_t>(tasks.size()), threads_for(total, kStatsGrain), [&](index_t t) {
    const Task& task = tasks[static_cast<size_t>(t)];
    parts[static_cast<size_t>(t)] = diff_sumsq_k(a + task.begin, b + task.begin, task.end - task.begin);
  });
  for (index_t i = 0; i < k; ++i) out[i] = 0;
  for (size_t t = 0; t < tasks.size(); ++t) out[tasks[t].segment] += parts[t];
}

int monitor_rows(const double* R, const double* W, index_t wcols, const double* D, const double* S,
                 const std::int64_t* spec, const double* sat_size, const double* limits, double loss,
                 const double* glob, bool updates, double* vals, std::uint8_t* mask, double* w_next) {
  const index_t k = spec[0], L = spec[1], ng = spec[2], ndz = spec[3], nact = spec[4], ndead = spec[5],
                nsat = spec[6], nkern = spec[7];
  (void)L;
  const std::int64_t* param_layer = spec + 8;
  const std::int64_t* graded = param_layer + k;
  const std::int64_t* dz = graded + ng;
  const std::int64_t* act = dz + ndz;
  const std::int64_t* dead = act + nact;
  const std::int64_t* sat = dead + ndead;
  const std::int64_t* kern = sat + nsat;
  // the general path's test: a NaN / Inf anywhere makes a sum of squares non-finite
  double total = 0, wtotal = 0, dtotal = 0;
  for (index_t j = 0; j < k; ++j) {
    total += R[j * 5];
    wtotal += W[j * wcols];
  }
  for (index_t r = 0; r < ndz; ++r) dtotal += D[dz[r] * 6];
  if (!std::isfinite(std::sqrt(total) + wtotal) || !std::isfinite(dtotal)) return 0;
  if (updates)  // an update not measured (a tensor not stepped): the general path
    for (index_t j = 0; j < k; ++j)
      if (std::isnan(R[j * 5 + 4])) return 0;
  for (index_t r = 0; r < nact; ++r)
    if (S[act[r] * kActStatCols + kActNonFinite] != 0) return 0;
  double* v = vals;
  for (index_t j = 0; j < k; ++j) {
    *v++ = std::sqrt(R[j * 5]);
    *v++ = R[j * 5 + 1];
    *v++ = R[j * 5 + 2];
  }
  const double* ln = v;
  for (index_t g = 0; g < ng; ++g) {
    double sq = 0;
    for (index_t j = 0; j < k; ++j)
      if (param_layer[j] == graded[g]) sq += R[j * 5];
    *v++ = std::sqrt(sq);
  }
  const double* wn = v;
  for (index_t j = 0; j < k; ++j) *v++ = W[j * wcols + 1];
  for (index_t r = 0; r < ndz; ++r)
    for (int c = 1; c < 4; ++c) *v++ = D[dz[r] * 6 + c];
  for (index_t r = 0; r < nact; ++r)
    for (int c = 0; c < 5; ++c) *v++ = S[act[r] * kActStatCols + c];
  const double* fr = v;
  for (index_t r = 0; r < ndead; ++r) *v++ = S[dead[r] * kActStatCols + kActDead] / S[dead[r] * kActStatCols + kActUnits];
  for (index_t r = 0; r < nsat; ++r) *v++ = S[sat[r] * kActStatCols + kActSaturated] / sat_size[r];
  *v++ = loss;
  for (int c = 0; c < 4; ++c) *v++ = glob[c];
  const double* ratio = nullptr;
  if (updates) {
    const double* u = v;
    for (index_t j = 0; j < k; ++j) *v++ = std::sqrt(R[j * 5 + 4]);
    ratio = v;
    for (index_t j = 0; j < k; ++j) *v++ = u[j] / wn[j];
  }
  std::uint8_t* m = mask;
  for (index_t g = 0; g < ng; ++g) *m++ = ln[g] > limits[0];
  for (index_t r = 0; r < nkern; ++r) *m++ = vals[3 * kern[r]] < limits[1];
  if (nkern >= 2) {
    const double first = vals[3 * kern[0]], last = vals[3 * kern[nkern - 1]];
    *m++ = (last > 0 ? first / last : std::numeric_limits<double>::infinity()) < limits[2];
  } else {
    *m++ = 0;
  }
  for (index_t r = 0; r < ndead; ++r) *m++ = fr[r] > limits[3];
  for (index_t r = 0; r < nsat; ++r) *m++ = fr[ndead + r] > limits[4];
  for (index_t r = 0; r < nkern; ++r) *m++ = ratio && ratio[kern[r]] > limits[6];
  for (index_t r = 0; r < nkern; ++r) *m++ = ratio && ratio[kern[r]] < limits[5];
  int code = kRowsWritten;
  if (updates)
    for (index_t j = 0; j < k; ++j)
      if (R[j * 5 + 4] != 0) {  // (NaN too, as a nonzero update norm)
        code |= kRowsUpdateMoved;
        break;
      }
  if (w_next) {
    double after = 0;
    for (index_t j = 0; j < k; ++j) after += R[j * 5 + 3];
    if (std::isfinite(after)) {
      for (index_t j = 0; j < k; ++j) {
        double* row = w_next + j * 4;
        row[0] = R[j * 5 + 3];
        row[1] = std::sqrt(R[j * 5 + 3]);
        row[2] = std::numeric_limits<double>::quiet_NaN();  // max |w| is not measured by the update
        row[3] = 0;
      }
      code |= kRowsWeightsNext;
    }
  }
  return code;
}

index_t recent_candidates(const double* buf, const std::int64_t* n, index_t window, index_t min_count,
                          const std::int64_t* graded, index_t ng, const double* ln, double vanishing, double growth,
                          std::int64_t* out) {
  index_t found = 0;
  for (index_t g = 0; g < ng; ++g) {
    const index_t i = graded[g];
    const index_t c = n[i];
    if (c < min_count || !(ln[g] > vanishing)) continue;
    const double* row = buf + i * window;
    double lo = row[0];
    for (index_t j = 1; j < c; ++j) lo = row[j] < lo ? row[j] : lo;
    if (ln[g] > growth * lo) {
      if (out) out[found] = g;
      ++found;
    }
  }
  return found;
}

void recent_push(double* buf, std::int64_t* n, std::int64_t* head, index_t window, const std::int64_t* graded,
                 index_t ng, const double* ln) {
  for (index_t g = 0; g < ng; ++g) {
    const index_t i = graded[g];
    buf[i * window + head[i]] = ln[g];
    head[i] = (head[i] + 1) % window;
    if (n[i] < window) ++n[i];
  }
}

bool recent_quiet_push(double* buf, std::int64_t* n, std::int64_t* head, index_t window, index_t min_count,
                       const std::int64_t* graded, index_t ng, const double* ln, double vanishing, double growth) {
  if (recent_candidates(buf, n, window, min_count, graded, ng, ln, vanishing, growth, nullptr) > 0) return false;
  recent_push(buf, n, head, window, graded, ng, ln);
  return true;
}

int monitor_step(const MonitorStep& m, const double* W, index_t wcols, const double* limits, double growth,
                 double loss, const double* glob, std::int64_t step, std::int64_t* hist_step, std::int32_t* hist_lc,
                 std::int32_t* hist_mc, double* hist_val, const std::uint8_t* prev) {
  if (!std::isfinite(loss)) return 0;
  for (index_t i = 0; i < m.L; ++i) {
    if (std::isnan(m.S[i * kActStatCols + kActUnits]) != (m.act_nan[i] != 0)) return 0;
    if (std::isnan(m.D[i * 6 + 3]) != (m.dz_nan[i] != 0)) return 0;
  }
  double* w_next = W == m.w0 ? m.w1 : m.w0;
  int code = monitor_rows(m.R, W, wcols, m.D, m.S, m.spec, m.sat_size, limits, loss, glob, m.updates, m.vals,
                          m.mask, w_next);
  if (!code) return 0;
  if (w_next == m.w1) code |= kRowsNextSecond;
  for (index_t r = 0; r < m.rows; ++r) {
    hist_step[r] = step;
    hist_lc[r] = m.lc[r];
    hist_mc[r] = m.mc[r];
    hist_val[r] = m.vals[r];
  }
  const bool in_sync = !m.updates || (glob[2] != 1 && (code & kRowsUpdateMoved));
  if (prev && in_sync && std::memcmp(prev, m.mask, static_cast<size_t>(m.mask_size)) == 0 &&
      recent_quiet_push(m.recent, m.recent_n, m.recent_head, m.window, m.min_count, m.spec + 8 + m.k, m.ng,
                        m.vals + m.o_ln, limits[1], growth))
    code |= kRowsQuiet;
  return code;
}

template void activation_stats<float>(const float*, const float*, index_t, index_t, StatsMode, double, double*);
template void activation_stats<double>(const double*, const double*, index_t, index_t, StatsMode, double, double*);
template bool relu_fusable<float>(index_t, index_t);
template bool relu_fusable<double>(index_t, index_t);
template void relu_forward_stats<float>(const float*, float*, index_t, index_t, double*, double*);
template void relu_forward_stats<double>(const double*, double*, index_t, index_t, double*, double*);
template void relu_backward_stats<float>(const float*, const float*, float*, index_t, double*, double*);
template void relu_backward_stats<double>(const double*, const double*, double*, index_t, double*, double*);
template void magnitude_stats<float>(const float*, index_t, double*);
template void magnitude_stats<double>(const double*, index_t, double*);
template void diff_sumsq_flat<float>(const float*, const float*, const std::int64_t*, index_t, double*);
template void diff_sumsq_flat<double>(const double*, const double*, const std::int64_t*, index_t, double*);

}  // namespace gc
