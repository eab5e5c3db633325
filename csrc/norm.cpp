#include "norm.h"

#include <cmath>
#include <cstring>

#include "simd.h"

namespace gc {

namespace {

// Elements per task. Fixed (not derived from the thread count) so the order in which
// partial sums are added, and hence the result, is the same for 1 or n threads.
constexpr index_t kChunk = index_t(1) << 16;
// Elements summed in the lane accumulators (in the input's precision) before the lanes
// are flushed into double: 128 per lane, an L1-sized block.
constexpr index_t kBlock = 4096;

template <class T>
struct Bits;
template <>
struct Bits<float> {
  using U = std::uint32_t;
  static constexpr U kAbsMask = 0x7fffffffu;
  static constexpr U kExpAll = 0x7f800000u;  // |bits| >= this: Inf or NaN
};
template <>
struct Bits<double> {
  using U = std::uint64_t;
  static constexpr U kAbsMask = 0x7fffffffffffffffull;
  static constexpr U kExpAll = 0x7ff0000000000000ull;
};

// Elements of T in one AVX2 register: the width of the lane arrays below.
template <class T>
constexpr int kVec = 32 / int(sizeof(T));

template <class T>
GC_INLINE typename Bits<T>::U abs_bits(T v) {
  typename Bits<T>::U u;
  std::memcpy(&u, &v, sizeof u);
  return u & Bits<T>::kAbsMask;
}

template <class T>
GC_INLINE T from_bits(typename Bits<T>::U u) {
  T v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

struct Partial {
  double sum = 0, sumsq = 0, max_abs = 0;
  std::int64_t nonfinite = 0;
};

// Statistics of the values without their noise (sum_of_squares' raw_stats).
struct RawStats {
  double sumsq = 0, max_abs = 0;
  std::int64_t nonfinite = 0;
};

// Squares of float32 values are summed in float within a block (twice the lanes per
// vector of double, and measured 1.3-1.7x faster) and in double across blocks. A block
// whose float sum of squares overflowed (Inf) or may have lost digits to underflow is
// summed again in double. Squares below 2^-126 are denormal or flushed and lose digits;
// 4096 of them add up to less than 2^-114, under float rounding (2^-24 relative) of any
// block sum of at least 2^-90, so only sums below 2^-90 are redone. Exploding and
// vanishing gradients are what these kernels watch: the fast path must not distort them.
constexpr double kSafeSumSqLow = 0x1p-90;

template <class Acc>
GC_INLINE bool needs_double(double block_sumsq) {
  return sizeof(Acc) == sizeof(float) && (std::isinf(block_sumsq) || block_sumsq < kSafeSumSqLow);
}

// Element i of the summed values: x, or x + noise rounded to T (the gradient an
// optimizer steps with).
template <class T, bool NOISE>
GC_INLINE T value_at(const T* x, const T* nz, index_t i) {
  if constexpr (NOISE) return T(x[i] + nz[i]);
  (void)nz;
  return x[i];
}

template <class T, bool NOISE = false>
GC_INLINE double sumsq_double(const T* x, const T* nz, index_t n) {
  double q = 0;
  for (index_t i = 0; i < n; ++i) {
    const double v = double(value_at<T, NOISE>(x, nz, i));
    q += v * v;
  }
  return q;
}

template <class T>
GC_INLINE double sum_double(const T* x, index_t n) {
  double s = 0;
  for (index_t i = 0; i < n; ++i) s += double(x[i]);
  return s;
}

// True when a block holds a NaN or an Inf (for the rare block whose sum of squares is not
// finite: float64 squares of finite values can overflow).
template <class T, bool NOISE>
GC_INLINE bool any_nonfinite(const T* x, const T* nz, index_t n) {
  for (index_t i = 0; i < n; ++i)
    if (!std::isfinite(value_at<T, NOISE>(x, nz, i))) return true;
  return false;
}

// Count of non-finite values and max |x| over the finite ones, for the rare block that
// has a NaN or an Inf.
template <class T>
GC_INLINE void nonfinite_block(const T* x, index_t n, T& max_abs, std::int64_t& count) {
  using U = typename Bits<T>::U;
  U mb = 0;
  std::int64_t c = 0;
#pragma omp simd reduction(max : mb) reduction(+ : c)
  for (index_t i = 0; i < n; ++i) {
    const U a = abs_bits(x[i]);
    const bool finite = a < Bits<T>::kExpAll;
    mb = finite && a > mb ? a : mb;
    c += finite ? 0 : 1;
  }
  max_abs = from_bits<T>(mb);
  count = c;
}

// Sum of x^2, sum of x and max |x| (as bits) of one block. Each step reads four vectors:
// the squares keep four vector accumulators (four independent FMA chains, and the lanes
// of sumsq_block, so the two kernels agree bit for bit); the sum and the max combine the
// four vectors first and keep one accumulator each, so everything stays in registers.
// For finite values the integer order of |x|'s bits is the order of |x|, and NaN / Inf
// have the largest bits: one integer max gives the max and flags a non-finite block.
template <class T>
GC_INLINE void stats_block(const T* x, index_t n, Partial& p) {
  using U = typename Bits<T>::U;
  constexpr int V = kVec<T>;
  T q[4 * V] = {}, s[V] = {};
  U mb[V] = {};
  index_t i = 0;
  for (; i + 4 * V <= n; i += 4 * V) {
#pragma omp simd
    for (int j = 0; j < V; ++j) {
      const T v0 = x[i + j], v1 = x[i + V + j], v2 = x[i + 2 * V + j], v3 = x[i + 3 * V + j];
      q[j] += v0 * v0;
      q[V + j] += v1 * v1;
      q[2 * V + j] += v2 * v2;
      q[3 * V + j] += v3 * v3;
      s[j] += (v0 + v1) + (v2 + v3);
      const U a01 = abs_bits(v0) > abs_bits(v1) ? abs_bits(v0) : abs_bits(v1);
      const U a23 = abs_bits(v2) > abs_bits(v3) ? abs_bits(v2) : abs_bits(v3);
      const U a = a01 > a23 ? a01 : a23;
      mb[j] = a > mb[j] ? a : mb[j];
    }
  }
  double ds = 0, dq = 0;
  U bits = 0;
  for (int j = 0; j < 4 * V; ++j) dq += double(q[j]);
  for (int j = 0; j < V; ++j) {
    ds += double(s[j]);
    bits = mb[j] > bits ? mb[j] : bits;
  }
  for (; i < n; ++i) {
    const T v = x[i];
    ds += double(v);
    dq += double(v) * double(v);
    bits = abs_bits(v) > bits ? abs_bits(v) : bits;
  }
  T mx = from_bits<T>(bits);
  std::int64_t cnt = 0;
  if (bits >= Bits<T>::kExpAll) nonfinite_block(x, n, mx, cnt);
  // The same test on the same value as sumsq_block, so the two kernels agree exactly.
  // (An all-zero block is exact either way; skip the redundant pass.)
  if (bits != 0 && needs_double<T>(dq)) dq = sumsq_double(x, static_cast<const T*>(nullptr), n);
  // Finite float32 values whose float lane sum overflowed (|x| ~ 1e36 and up): sum again
  // in double, where it cannot.
  if (bits < Bits<T>::kExpAll && !std::isfinite(ds)) ds = sum_double(x, n);
  p.sum += ds;
  p.sumsq += dq;
  if (double(mx) > p.max_abs) p.max_abs = double(mx);
  p.nonfinite += cnt;
}

// Sum of squares of one block, and whether it holds a NaN or an Inf: the one kernel
// behind sum_of_squares, global_norm, clip_grad_norm_ and the optimizers' clip pass.
// The squares are summed in lanes of Acc: T (float32 lanes, the fast path of the norms)
// or double (the optimizers, whose clip coefficients are reproducible to 1e-12).
// RAW (double lanes only): also the statistics of the values x themselves, without the
// noise, into raw: sum of x^2 (the same lanes and order as without noise, so it equals
// the noiseless sum bit for bit), max |x| over the finite values and the non-finite count.
template <class T, class Acc, bool NOISE, bool RAW>
GC_INLINE double sumsq_block(const T* x, const T* nz, index_t n, bool& nonfinite, RawStats& raw) {
  static_assert(!RAW || sizeof(Acc) == sizeof(double), "raw statistics are summed in double lanes");
  using U = typename Bits<T>::U;
  constexpr int L = 4 * kVec<Acc>;
  Acc q[L] = {}, r[L] = {};
  U mb[L] = {};
  index_t i = 0;
  for (; i + L <= n; i += L) {
#pragma omp simd
    for (int j = 0; j < L; ++j) {
      const Acc v = Acc(value_at<T, NOISE>(x, nz, i + j));
      q[j] += v * v;
      if constexpr (RAW) {
        const T xi = x[i + j];
        if constexpr (NOISE) r[j] += Acc(xi) * Acc(xi);
        mb[j] = abs_bits(xi) > mb[j] ? abs_bits(xi) : mb[j];
      }
    }
  }
  double dq = 0, dr = 0;
  U bits = 0;
  for (int j = 0; j < L; ++j) {
    dq += double(q[j]);
    if constexpr (RAW && NOISE) dr += double(r[j]);
    if constexpr (RAW) bits = mb[j] > bits ? mb[j] : bits;
  }
  for (; i < n; ++i) {
    const double v = double(value_at<T, NOISE>(x, nz, i));
    dq += v * v;
    if constexpr (RAW) {
      if constexpr (NOISE) dr += double(x[i]) * double(x[i]);
      bits = abs_bits(x[i]) > bits ? abs_bits(x[i]) : bits;
    }
  }
  if (needs_double<Acc>(dq)) dq = sumsq_double<T, NOISE>(x, nz, n);
  // A float32 block's double sum is finite exactly when its values are; float64 squares
  // can overflow, so look at the values themselves.
  if (!std::isfinite(dq)) nonfinite = nonfinite || sizeof(T) == sizeof(float) || any_nonfinite<T, NOISE>(x, nz, n);
  if constexpr (RAW) {
    T mx = from_bits<T>(bits);
    std::int64_t cnt = 0;
    if (bits >= Bits<T>::kExpAll) nonfinite_block(x, n, mx, cnt);
    raw.sumsq += NOISE ? dr : dq;
    if (double(mx) > raw.max_abs) raw.max_abs = double(mx);
    raw.nonfinite += cnt;
  }
  return dq;
}

// Sum of (x - mean) and of its square in double: the second pass of the variance, run
// only for arrays where E[x^2] - E[x]^2 would cancel (|mean| comparable to or above std).
template <class T>
GC_INLINE void deviation_sums(const T* x, index_t n, double mean, double& sum, double& sumsq) {
  double s = 0, q = 0;
#pragma omp simd reduction(+ : s, q)
  for (index_t i = 0; i < n; ++i) {
    const double d = double(x[i]) - mean;
    s += d;
    q += d * d;
  }
  sum = s;
  sumsq = q;
}

template <class T>
GC_INLINE Partial stats_chunk(const T* x, index_t n) {
  Partial p;
  for (index_t b = 0; b < n; b += kBlock) stats_block(x + b, n - b < kBlock ? n - b : kBlock, p);
  return p;
}

struct SumSq {
  double sumsq = 0;
  bool nonfinite = false;
  RawStats raw;  // filled when asked for (sum_of_squares' raw_stats)
};

template <class T, class Acc, bool RAW>
GC_INLINE SumSq sumsq_blocks(const T* x, const T* nz, index_t n) {
  SumSq r;
  for (index_t b = 0; b < n; b += kBlock) {
    const index_t m = n - b < kBlock ? n - b : kBlock;
    r.sumsq += nz ? sumsq_block<T, Acc, true, RAW>(x + b, nz + b, m, r.nonfinite, r.raw)
                  : sumsq_block<T, Acc, false, RAW>(x + b, nullptr, m, r.nonfinite, r.raw);
  }
  return r;
}

template <class T>
GC_INLINE SumSq sumsq_chunk(const T* x, const T* nz, index_t n, bool double_lanes, bool raw) {
  if (raw) return sumsq_blocks<T, double, true>(x, nz, n);
  return double_lanes ? sumsq_blocks<T, double, false>(x, nz, n) : sumsq_blocks<T, T, false>(x, nz, n);
}

GC_SIMD_DISPATCH(Partial, stats_chunk_k, stats_chunk, (const T* x, index_t n), (x, n))
GC_SIMD_DISPATCH(SumSq, sumsq_chunk_k, sumsq_chunk, (const T* x, const T* nz, index_t n, bool dl, bool raw),
                 (x, nz, n, dl, raw))
GC_SIMD_DISPATCH(void, deviation_sums_k, deviation_sums, (const T* x, index_t n, double m, double& s, double& q),
                 (x, n, m, s, q))

// A chunk of one array; tasks of an array are contiguous and in order.
struct Task {
  index_t array;
  index_t begin;
  index_t end;
};

// Number of tasks of the arrays for which use(a) holds; total receives their element count.
template <class Use>
size_t count_tasks(const GradView* arrays, index_t k, index_t& total, Use use) {
  size_t count = 0;
  total = 0;
  for (index_t a = 0; a < k; ++a)
    if (use(a)) {
      count += static_cast<size_t>((arrays[a].size + kChunk - 1) / kChunk);
      total += arrays[a].size;
    }
  return count;
}

// Writes the tasks of the arrays for which use(a) holds (count_tasks of them), in order.
template <class Use>
void fill_tasks(const GradView* arrays, index_t k, Task* tasks, Use use) {
  size_t t = 0;
  for (index_t a = 0; a < k; ++a) {
    if (!use(a)) continue;
    for (index_t b = 0; b < arrays[a].size; b += kChunk)
      tasks[t++] = {a, b, b + kChunk < arrays[a].size ? b + kChunk : arrays[a].size};
  }
}

constexpr auto kAllArrays = [](index_t) { return true; };

// Tasks and per-task partials live in the caller's frame up to these counts (chunks of 64K
// values: 16M values), on the heap above.
constexpr size_t kLocalTasks = 256;
using TaskList = SmallBuffer<Task, kLocalTasks>;

// Runs body(task_index) for every task, on several threads when the total is large.
// Each task writes only its own slot, so the schedule cannot change the results.
// Grain (parallel.h): one thread streams these sums at ~20 float32 values per ns, so the
// ~50 us wake-up of a second thread is repaid only from ~4M values. Measured with
// benchmarks/threads.py on the 2-core EPYC VM, 8 arrays, 1 vs 2 threads: global_norm
// 1M 49 us vs 88 us, 2M 98 us vs 99 us, 8M 830 us vs 728 us; grad_stats 2M 121 us vs
// 148 us, 4M 269 us vs 194 us.
constexpr index_t kStatsGrain = index_t(1) << 21;

template <class Body>
void run_tasks(index_t ntasks, index_t total, Body body) {
  parallel_for(ntasks, threads_for(total, kStatsGrain), body);
}

// Below this fraction of E[x^2], E[x^2] - E[x]^2 has lost too many digits to the
// cancellation (the one-pass sums carry ~1e-6 relative error in float32) and the
// variance is recomputed from deviations in a second pass.
constexpr double kCancellation = 1.0 / 16;

}  // namespace

void grad_stats(const GradView* arrays, index_t k, double* out) {
  index_t total = 0;
  TaskList tasks(count_tasks(arrays, k, total, kAllArrays));
  fill_tasks(arrays, k, tasks.data(), kAllArrays);
  SmallBuffer<Partial, kLocalTasks> parts(tasks.size());
  run_tasks(static_cast<index_t>(tasks.size()), total, [&](index_t t) {
    const Task& task = tasks[static_cast<size_t>(t)];
    const GradView& g = arrays[task.array];
    const index_t n = task.end - task.begin;
    parts[static_cast<size_t>(t)] = g.is_double ? stats_chunk_k(static_cast<const double*>(g.data) + task.begin, n)
                                                : stats_chunk_k(static_cast<const float*>(g.data) + task.begin, n);
  });

  SmallBuffer<char, 256> second_pass(static_cast<size_t>(k));
  size_t t = 0;
  for (index_t a = 0; a < k; ++a) {
    Partial acc;
    for (; t < tasks.size() && tasks[t].array == a; ++t) {
      acc.sum += parts[t].sum;
      acc.sumsq += parts[t].sumsq;
      if (parts[t].max_abs > acc.max_abs) acc.max_abs = parts[t].max_abs;
      acc.nonfinite += parts[t].nonfinite;
    }
    double* row = out + a * kStatCols;
    const index_t n = arrays[a].size;
    row[kSumSq] = acc.sumsq;
    row[kL2] = std::sqrt(acc.sumsq);
    row[kMaxAbs] = acc.max_abs;
    row[kNonFinite] = double(acc.nonfinite);
    row[kMean] = 0;
    row[kStd] = 0;
    if (n > 0) {
      const double mean = acc.sum / double(n), mean_sq = acc.sumsq / double(n);
      double var = mean_sq - mean * mean;  // NaN / Inf inputs make it NaN, as they should
      row[kMean] = mean;
      if (std::isfinite(var) && var < kCancellation * mean_sq) second_pass[static_cast<size_t>(a)] = 1;
      if (var < 0) var = 0;
      row[kStd] = std::sqrt(var);
    }
  }

  // Second pass, over the arrays whose variance cancelled: sum of (x - mean)^2 in double
  // with the correction term of the corrected two-pass algorithm.
  index_t total2 = 0;
  const auto cancelled = [&](index_t a) { return second_pass[static_cast<size_t>(a)] != 0; };
  TaskList tasks2(count_tasks(arrays, k, total2, cancelled));
  if (tasks2.size() == 0) return;
  fill_tasks(arrays, k, tasks2.data(), cancelled);
  SmallBuffer<double, kLocalTasks> dev_sum(tasks2.size()), dev_sumsq(tasks2.size());
  run_tasks(static_cast<index_t>(tasks2.size()), total2, [&](index_t i) {
    const Task& task = tasks2[static_cast<size_t>(i)];
    const GradView& g = arrays[task.array];
    const index_t n = task.end - task.begin;
    const double mean = out[task.array * kStatCols + kMean];
    double& s = dev_sum[static_cast<size_t>(i)];
    double& q = dev_sumsq[static_cast<size_t>(i)];
    if (g.is_double)
      deviation_sums_k(static_cast<const double*>(g.data) + task.begin, n, mean, s, q);
    else
      deviation_sums_k(static_cast<const float*>(g.data) + task.begin, n, mean, s, q);
  });
  t = 0;
  while (t < tasks2.size()) {
    const index_t a = tasks2[t].array;
    double s = 0, q = 0;
    for (; t < tasks2.size() && tasks2[t].array == a; ++t) {
      s += dev_sum[t];
      q += dev_sumsq[t];
    }
    const double n = double(arrays[a].size);
    double var = (q - s * s / n) / n;
    if (var < 0) var = 0;
    out[a * kStatCols + kMean] += s / n;
    out[a * kStatCols + kStd] = std::sqrt(var);
  }
}

template <class T>
void grad_stats_flat(const T* buffer, const std::int64_t* offsets, index_t k, double* out) {
  ViewList views(static_cast<size_t>(k));
  flat_views(buffer, static_cast<const T*>(nullptr), offsets, k, views.data());
  grad_stats(views.data(), k, out);
}

std::int64_t sum_of_squares(const GradView* arrays, index_t k, double* out, bool double_lanes, double* raw_stats,
                            index_t raw_stride) {
  index_t total = 0;
  TaskList tasks(count_tasks(arrays, k, total, kAllArrays));
  fill_tasks(arrays, k, tasks.data(), kAllArrays);
  SmallBuffer<SumSq, kLocalTasks> parts(tasks.size());
  const bool raw = raw_stats != nullptr;
  run_tasks(static_cast<index_t>(tasks.size()), total, [&](index_t t) {
    const Task& task = tasks[static_cast<size_t>(t)];
    const GradView& g = arrays[task.array];
    const index_t n = task.end - task.begin;
    if (g.is_double) {
      const double* nz = static_cast<const double*>(g.noise);
      parts[static_cast<size_t>(t)] = sumsq_chunk_k(static_cast<const double*>(g.data) + task.begin,
                                                    nz ? nz + task.begin : nz, n, double_lanes, raw);
    } else {
      const float* nz = static_cast<const float*>(g.noise);
      parts[static_cast<size_t>(t)] = sumsq_chunk_k(static_cast<const float*>(g.data) + task.begin,
                                                    nz ? nz + task.begin : nz, n, double_lanes, raw);
    }
  });
  std::int64_t first_bad = -1;
  size_t t = 0;
  for (index_t a = 0; a < k; ++a) {
    double acc = 0;
    RawStats r;
    for (; t < tasks.size() && tasks[t].array == a; ++t) {
      acc += parts[t].sumsq;
      if (parts[t].nonfinite && first_bad < 0) first_bad = a;
      r.sumsq += parts[t].raw.sumsq;
      if (parts[t].raw.max_abs > r.max_abs) r.max_abs = parts[t].raw.max_abs;
      r.nonfinite += parts[t].raw.nonfinite;
    }
    out[a] = acc;
    if (raw) {
      double* row = raw_stats + a * raw_stride;
      row[0] = r.sumsq;
      row[1] = r.max_abs;
      row[2] = double(r.nonfinite);
    }
  }
  return first_bad;
}

double global_norm(const GradView* arrays, index_t k) {
  SmallBuffer<double, 256> per(static_cast<size_t>(k));
  sum_of_squares(arrays, k, per.data());
  double s = 0;
  for (size_t i = 0; i < per.size(); ++i) s += per[i];
  return std::sqrt(s);
}

template void grad_stats_flat<float>(const float*, const std::int64_t*, index_t, double*);
template void grad_stats_flat<double>(const double*, const std::int64_t*, index_t, double*);

}  // namespace gc
