// Statistics kernels of the gradient monitor (gradcore.monitor): activation statistics of
// one layer's output and the size of a parameter update, each in one read of the data.
//
// Sums are accumulated in double. Results are deterministic for any thread count: the
// sums run over chunks of a fixed size (not derived from the threads) whose partials are
// combined in chunk order; the counts are integers.
#pragma once
#include <cstdint>

#include "parallel.h"

namespace gc {

// What activation_stats counts besides the moments.
enum class StatsMode { none, dead, saturated };

// Entries of activation_stats' output (float64, kActStatCols).
enum ActStatCol {
  kActMean = 0,
  kActStd = 1,
  kActMin = 2,
  kActMax = 3,
  kActNonFinite = 4,
  kActDead = 5,
  kActSaturated = 6,
  kActUnits = 7,
  kActStatCols = 8
};

// Statistics of an activation a (rows, units), row-major, with its pre-activation z of
// the same shape (or null):
//   mean, std (population) over all entries: NaN / Inf propagate into them;
//   min, max over the finite entries only (NaN when there is none);
//   nonfinite: count of NaN / +-Inf entries of a;
//   dead (mode dead): units whose value (z if given, else a) is <= 0 for every row (a NaN
//     is not <= 0, so it keeps its unit alive; with no rows, no unit is dead);
//   saturated (mode saturated; z required): count of entries with |z| > threshold
//     (a NaN is not counted, an Inf is);
//   units.
// With no entries, mean, std, min and max are NaN and the counts 0.
template <class T>
void activation_stats(const T* a, const T* z, index_t rows, index_t units, StatsMode mode, double threshold,
                      double* out);

// out[i] = sum of (a - b)^2 over [offsets[i], offsets[i+1]), each difference taken in T
// (exact when a and b are within a factor 2, as a parameter before and after a step
// usually is) and its square summed in double. offsets (k+1,) must be valid (non-decreasing, from 0 to the size).
template <class T>
void diff_sumsq_flat(const T* a, const T* b, const std::int64_t* offsets, index_t k, double* out);

}  // namespace gc
