#include "norm.h"

#include <cmath>
#include <cstring>

#include "simd.h"

namespace gc {

namespace {

constexpr index_t kPiece = 1 << 16;  // elements per work item
constexpr index_t kBlock = 2048;
// Sizes from which a second thread pays for its wake-up (~50 us measured with passive
// waiting on this 2-core machine): the sum of squares streams ~14 elements/ns on one
// core, the full statistics about a third of that.
constexpr index_t kParallelSquares = index_t(1) << 22;
constexpr index_t kParallelStats = index_t(1) << 19;     // elements summed in the working precision before flushing to double

template <class T>
struct Bits;
template <>
struct Bits<float> {
  using U = std::uint32_t;
  static constexpr U abs_mask = 0x7fffffffu;
  static constexpr U inf = 0x7f800000u;
};
template <>
struct Bits<double> {
  using U = std::uint64_t;
  static constexpr U abs_mask = 0x7fffffffffffffffull;
  static constexpr U inf = 0x7ff0000000000000ull;
};

// Lanes of independent accumulators: a single running sum is bound by the add latency
// (one vector per 4 cycles); 32 lanes give the compiler four independent vector chains.
constexpr index_t kLanes = 32;

template <class T>
GC_INLINE SegmentStats piece_stats(const T* x, index_t n, bool squares_only, T shift) {
  using U = typename Bits<T>::U;
  SegmentStats out;
  U maxbits = 0;
  std::int64_t bad = 0;
  for (index_t b0 = 0; b0 < n; b0 += kBlock) {
    const index_t len = (b0 + kBlock < n ? b0 + kBlock : n) - b0;
    const index_t body = len - len % kLanes;
    const T* xb = x + b0;
    T s[kLanes] = {}, q[kLanes] = {}, qs[kLanes] = {};
    U m[kLanes] = {}, cnt[kLanes] = {};
    if (squares_only) {
      for (index_t i = 0; i < body; i += kLanes) {
#pragma omp simd
        for (index_t k = 0; k < kLanes; ++k) q[k] += xb[i + k] * xb[i + k];
      }
      for (index_t i = body; i < len; ++i) q[0] += xb[i] * xb[i];
    } else {
      // one fused pass; the reductions vectorise as a whole (the lane arrays are not used)
      T s1 = 0, q1 = 0, qs1 = 0;
      U m1 = 0, c1 = 0;
#pragma omp simd reduction(+ : s1, q1, qs1, c1) reduction(max : m1)
      for (index_t i = 0; i < len; ++i) {
        const T v = xb[i];
        U u;
        std::memcpy(&u, &v, sizeof(U));
        u &= Bits<T>::abs_mask;
        const bool finite = u < Bits<T>::inf;
        m1 = (finite && u > m1) ? u : m1;
        c1 += finite ? 0 : 1;
        const T d = v - shift;
        s1 += d;
        q1 += v * v;
        qs1 += d * d;
      }
      s[0] = s1;
      q[0] = q1;
      qs[0] = qs1;
      m[0] = m1;
      cnt[0] = c1;
    }
    double ds = 0, dq = 0, dqs = 0;
    for (index_t k = 0; k < kLanes; ++k) {
      ds += double(s[k]);
      dq += double(q[k]);
      dqs += double(qs[k]);
      maxbits = m[k] > maxbits ? m[k] : maxbits;
      bad += static_cast<std::int64_t>(cnt[k]);
    }
    out.sum += ds;
    out.sumsq += dq;
    out.sumsq_shifted += dqs;
  }
  T mx;
  std::memcpy(&mx, &maxbits, sizeof(U));
  out.maxabs = double(mx);
  out.nonfinite = bad;
  return out;
}

GC_CLONES SegmentStats piece_f(const float* x, index_t n, bool sq, float sh) { return piece_stats(x, n, sq, sh); }
GC_CLONES SegmentStats piece_d(const double* x, index_t n, bool sq, double sh) { return piece_stats(x, n, sq, sh); }

struct Item {
  std::size_t segment;
  index_t begin, end;
};

}  // namespace

double segment_shift(const Segment& s) {
  if (s.size == 0) return 0.0;
  const double v = s.is_double ? *static_cast<const double*>(s.data) : double(*static_cast<const float*>(s.data));
  return std::isfinite(v) ? v : 0.0;
}

std::vector<SegmentStats> segment_stats(const std::vector<Segment>& segments, bool squares_only) {
  std::vector<Item> items;
  index_t total = 0;
  for (std::size_t s = 0; s < segments.size(); ++s) {
    total += segments[s].size;
    for (index_t b = 0; b < segments[s].size; b += kPiece)
      items.push_back({s, b, b + kPiece < segments[s].size ? b + kPiece : segments[s].size});
  }
  std::vector<SegmentStats> partial(items.size());
  const index_t count = static_cast<index_t>(items.size());
  const int threads = total >= (squares_only ? kParallelSquares : kParallelStats) ? threads_for(total) : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (index_t k = 0; k < count; ++k) {
    const Item& it = items[k];
    const Segment& seg = segments[it.segment];
    const double shift = segment_shift(seg);
    partial[k] = seg.is_double ? piece_d(static_cast<const double*>(seg.data) + it.begin, it.end - it.begin,
                                         squares_only, shift)
                               : piece_f(static_cast<const float*>(seg.data) + it.begin, it.end - it.begin,
                                         squares_only, float(shift));
  }
  std::vector<SegmentStats> out(segments.size());
  for (index_t k = 0; k < count; ++k) {
    SegmentStats& o = out[items[k].segment];
    o.sum += partial[k].sum;
    o.sumsq += partial[k].sumsq;
    o.sumsq_shifted += partial[k].sumsq_shifted;
    o.maxabs = partial[k].maxabs > o.maxabs ? partial[k].maxabs : o.maxabs;
    o.nonfinite += partial[k].nonfinite;
  }
  return out;
}

}  // namespace gc
