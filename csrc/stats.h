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

// Columns of magnitude_stats' output: grad_stats' (norm.h) first four.
enum MagCol { kMagSumSq = 0, kMagL2 = 1, kMagMaxAbs = 2, kMagNonFinite = 3, kMagCols = 4 };

// The size of a gradient g (n values), for the monitor's dz statistics: out[kMagCols] =
// sum of squares, its sqrt, max |g| over the finite values (0 when none), count of NaN /
// Inf; grad_stats' columns without the mean and std (not read by the monitor, and their
// sum cost a quarter of the pass). NaN / Inf reach the sum of squares. float32 squares
// are summed in float lanes for 16 values per lane, then in double (relative error
// ~1e-7); float64 in double.
template <class T>
void magnitude_stats(const T* g, index_t n, double* out);

// A standalone ReLU layer's statistics fused into its passes (the compiled plan, on a
// recorded step; Dense -> BatchNorm -> ReLU). relu_fusable: the shapes they take (units a
// multiple of 32, fewer values than the statistics' thread grain); others go the general way.
// relu_forward_stats: y = z < 0 ? 0 : z (the ReLU forward of activation.cpp, bit for bit)
// and, in the same read of z, activation_stats of z (mode none, into out_z; may be null)
// and of y with pre-activation z (mode dead, into out_y); the same values as those calls
// up to the float lanes' order. relu_backward_stats: dx = z > 0 ? g : 0 (the ReLU
// backward) and magnitude_stats of g (out_g) and of dx (out_dx; either may be null).
template <class T>
bool relu_fusable(index_t rows, index_t units);
template <class T>
void relu_forward_stats(const T* z, T* y, index_t rows, index_t units, double* out_z, double* out_y);
template <class T>
void relu_backward_stats(const T* z, const T* g, T* dx, index_t n, double* out_g, double* out_dx);

// out[i] = sum of (a - b)^2 over [offsets[i], offsets[i+1]), each difference taken in T
// (exact when a and b are within a factor 2, as a parameter before and after a step
// usually is) and its square summed in double. offsets (k+1,) must be valid (non-decreasing, from 0 to the size).
template <class T>
void diff_sumsq_flat(const T* a, const T* b, const std::int64_t* offsets, index_t k, double* out);

// One recorded step of gradcore.monitor's fast path (GradientMonitor._record_fast): the
// history rows made from the statistics a compiled step computed, and the event conditions.
// R (k, 5): per parameter the optimizer's statistics (gradient sum of squares, max |g|,
// non-finite count, parameters' and update's sums of squares); W (k, wcols >= 2): the
// weights' statistics (sum of squares, norm, ...); D (L, 6): grad_stats of each layer's
// dz; S (L, kActStatCols): activation_stats of each layer's output. spec (int64):
//   k, L, ng, ndz, nact, ndead, nsat, nkern, then param_layer[k], graded[ng], dz[ndz],
//   act[nact], dead[ndead], sat[nsat], kern[nkern] (indices checked by the caller).
// sat_size[nsat]: entries whose saturation was counted; limits: exploding, vanishing,
// flow_ratio, dead, saturated, update_ratio low, high; glob: grad_norm, clip_coef,
// skipped, lr. vals receives, in order: per parameter (sqrt R0, R1, R2); per graded layer
// the norm of its parameters' gradients (0 + the sums of squares in parameter order, then
// sqrt); per parameter W1; per dz layer D1..D3; per act layer S0..S4; dead fractions
// S5 / S7; saturated fractions S6 / sat_size; loss; glob; with updates per parameter
// sqrt R4 and then (sqrt R4) / W1. mask receives 0/1: exploding[ng] (norm > exploding),
// vanishing[nkern] (gradient norm < vanishing), flow[1] (first / last kernel gradient
// norm < flow_ratio, last 0: inf), dead[ndead], saturated[nsat] (> limits), high[nkern],
// low[nkern] (ratio > high, < low). Returns 0, writing nothing, when a value of the
// step is non-finite (a gradient / weight sum of squares, a dz sum of squares, an
// output's non-finite count; with updates, an update sum of squares R4 that is NaN: a
// tensor the optimizer did not step): the general path takes it. Else kRowsWritten, with
// kRowsUpdateMoved when updates and some R4 is not 0 (an update moved a parameter), and
// kRowsWeightsNext when w_next (k, 4), if not null, received the next step's weight
// statistics from the parameters' sums of squares after the update (R3, R3^0.5, NaN for
// the unmeasured max |w|, 0 non-finite), written only when their sum is finite.
enum MonitorRowsCode {
  kRowsWritten = 1,
  kRowsUpdateMoved = 2,
  kRowsWeightsNext = 4,
  kRowsNextSecond = 8,  // MonitorStep: w_next went to its second buffer (W was the first)
  kRowsQuiet = 16       // MonitorStep: no event condition can start; the norms joined the windows
};
int monitor_rows(const double* R, const double* W, index_t wcols, const double* D, const double* S,
                 const std::int64_t* spec, const double* sat_size, const double* limits, double loss,
                 const double* glob, bool updates, double* vals, std::uint8_t* mask, double* w_next);

// The growth check of the quiet path (GradientMonitor._growth_candidate over the graded
// layers): each layer i = graded[g] keeps its last `window` finite gradient norms in
// buf[i * window ...] (count n[i], next slot head[i], oldest first from head once full).
// A layer is a growth candidate when it holds at least min_count norms, ln[g] >
// vanishing and ln[g] > growth * the minimum of its norms. With no candidate each ln[g]
// (finite) joins its layer's window and the result is true; else nothing changes.
bool recent_quiet_push(double* buf, std::int64_t* n, std::int64_t* head, index_t window, index_t min_count,
                       const std::int64_t* graded, index_t ng, const double* ln, double vanishing, double growth);
// Its two halves: the positions g of the growth candidates (into out, if not null; their
// count returned), and every ln[g] joining its layer's window.
index_t recent_candidates(const double* buf, const std::int64_t* n, index_t window, index_t min_count,
                          const std::int64_t* graded, index_t ng, const double* ln, double vanishing, double growth,
                          std::int64_t* out);
void recent_push(double* buf, std::int64_t* n, std::int64_t* head, index_t window, const std::int64_t* graded,
                 index_t ng, const double* ln);

// One recorded compiled step of GradientMonitor in one call (_record_compiled): the checks
// that send a step to the general path, monitor_rows, the rows written straight into the
// history's columns, and the quiet check. Pointers as monitor_rows; act_nan / dz_nan (L):
// 1 where the layout expects a NaN row of S (column kActUnits) / D (column 3) (another
// pattern: other captures, the general path); lc / mc (rows): the rows' codes; w0 / w1
// (k, 4): the two buffers the next step's weight statistics alternate between (w1 when W
// is w0); hist_*: the history's columns from row `at` (capacity checked by the caller);
// prev (mask_size or null): the signature of the previous recorded step's conditions.
// Returns 0 with nothing written (a non-finite value or loss, R4 NaN with updates, another
// NaN pattern): the general path takes the step. Else monitor_rows' code with kRowsNextSecond
// and kRowsQuiet (prev equals the new mask, the update group is in sync and no layer is a
// growth candidate: the norms joined their windows).
struct MonitorStep {
  const double *R, *D, *S;
  const std::int64_t* spec;
  const double* sat_size;
  const std::uint8_t *act_nan, *dz_nan;
  const std::int32_t *lc, *mc;
  index_t rows, L, k, ng, o_ln, mask_size;
  double* vals;
  std::uint8_t* mask;
  double *w0, *w1;
  double* recent;
  std::int64_t *recent_n, *recent_head;
  index_t window, min_count;
  bool updates;
};
int monitor_step(const MonitorStep& m, const double* W, index_t wcols, const double* limits, double growth,
                 double loss, const double* glob, std::int64_t step, std::int64_t* hist_step, std::int32_t* hist_lc,
                 std::int32_t* hist_mc, double* hist_val, const std::uint8_t* prev);

}  // namespace gc
