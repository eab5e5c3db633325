// Gradient statistics: sum of squares, norm, max |x|, non-finite count, mean and std of
// many arrays, each read once. This is the monitoring hot path (DESIGN.md, decision 7).
//
// Results are deterministic for any thread count: every array is cut into chunks of a
// fixed size that does not depend on the threads, each chunk's partials are computed
// alone, and the partials are combined in chunk order.
#pragma once
#include <cstdint>

#include "parallel.h"

namespace gc {

// One array of gradient values (float32 or float64), contiguous.
struct GradView {
  const void* data;
  index_t size;
  bool is_double;
};

// Columns of one row of grad_stats' output.
enum StatCol { kSumSq = 0, kL2 = 1, kMaxAbs = 2, kNonFinite = 3, kMean = 4, kStd = 5, kStatCols = 6 };

// out: (k, kStatCols) row-major. max_abs is over finite values only; NaN and +-Inf are
// counted in nonfinite (and do reach the sums, mean and std). Empty arrays give zeros.
void grad_stats(const GradView* arrays, index_t k, double* out);

// Segments [offsets[i], offsets[i+1]) of one buffer; offsets (k+1,) must be valid
// (non-decreasing, from 0 to the buffer's size).
template <class T>
void grad_stats_flat(const T* buffer, const std::int64_t* offsets, index_t k, double* out);

// out: (k,) sum of squares per array.
void sum_of_squares(const GradView* arrays, index_t k, double* out);

// sqrt of the sum of squares over all arrays.
double global_norm(const GradView* arrays, index_t k);

}  // namespace gc
