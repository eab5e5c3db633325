// Gradient statistics in one pass: per array the sum of squares, max |x| over finite
// values, the number of non-finite values, and the sum (for mean / std).
#pragma once
#include <cstdint>
#include <vector>

#include "parallel.h"

namespace gc {

struct Segment {
  const void* data;
  index_t size;
  bool is_double;
};

struct SegmentStats {
  double sum = 0.0;      // of (x - shift), shift = the segment's first value (for a stable std)
  double sumsq_shifted = 0.0;
  double sumsq = 0.0;
  double maxabs = 0.0;
  std::int64_t nonfinite = 0;
};

// Statistics of every segment. mean = shift + sum / n, var = sumsq_shifted / n - (sum / n)^2
// with shift the first element, which avoids the cancellation of E[x^2] - E[x]^2 when
// |mean| >> std. Work is cut into fixed-size pieces independent of the
// thread count and combined in order, so results do not depend on the number of threads.
// squares_only skips everything but the sum of squares (the global-norm fast path).
std::vector<SegmentStats> segment_stats(const std::vector<Segment>& segments, bool squares_only);

// The shift used for a segment (its first finite-or-not value; 0 when empty).
double segment_shift(const Segment& s);

}  // namespace gc
