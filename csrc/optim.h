// Fused optimizer steps over flat parameter buffers (DESIGN.md, decision 1).
//
// A flat buffer holds k tensors end to end: tensor i is [offsets[i], offsets[i+1]). The
// gradient and every optimizer state share that layout. One step is at most two passes:
//   1. (compute_scales) per-tensor sums of squares of the gradient (+ noise) and a
//      non-finite check; from them the per-tensor clip scales. If any gradient element
//      is NaN or Inf the step returns here, before anything is written.
//   2. one fused pass: g = clamp((grad + noise) * scale[i], -clip_value, clip_value),
//      weight decay, then the optimizer's update of the parameters and its state.
// Pass 1 is norm.cpp's sum_of_squares, the kernel global_norm uses too: fixed chunks
// reduced in order, so the result does not depend on the number of threads.
//
// Statistics (opt-in, DESIGN.md decision 7): given a non-null `stats` (k x stats_cols,
// row-major; stats_cols kOptStatCols or kOptStatColsBefore) a step writes per tensor, from
// the passes it makes anyway:
//   [grad_sumsq, grad_max_abs, grad_nonfinite, param_sumsq_after, update_sumsq
//    (, param_sumsq_before when stats_cols is kOptStatColsBefore)]
// grad_* are of the raw gradient as received (before noise, clipping and weight decay;
// max |g| over its finite values), read in pass 1; param_sumsq_after = sum of p^2 after
// the update and update_sumsq = sum of (p_new - p_old)^2 (the difference rounded to the
// dtype) come from the registers of the fused pass, summed in double per fixed chunk and
// the chunks in order (the same for any thread count); so does param_sumsq_before = sum of
// p^2 before the update (the weights the step started from, which a monitor reports: the
// fused pass reads them anyway, a separate pass before the step would read them again).
// A skipped step (non-finite gradient) writes the grad columns, the parameters' sums of
// squares (after and before: nothing moved) and zero updates. With compute_scales false the
// step leaves the grad columns to the caller's grad_sumsq. stats_updates false: the grad
// columns (from pass 1) and, with stats_cols kOptStatColsBefore, param_sumsq_before; the
// update pass measures nothing else (its p^2 before is one FMA per value off the update's
// dependency chain) and param_sumsq_after / update_sumsq are left as they are.
// stats_updates 1 (true): every column of the table; with all three parameter columns the
// weights before are taken as p_new - (p_new - p_old), the difference rounded to the dtype:
// p_old exactly where that difference is exact (p_new within a factor 2 of p_old, or either
// 0), else within half an ulp of it. stats_updates 2 with a kOptStatColsBefore table:
// update_sumsq and param_sumsq_before (of p_old itself) but not param_sumsq_after, left as
// it is: two sums in the update pass cost what the five columns do, three cost more
// (optim.cpp's tally); a monitor of the weights before and the update needs no more. With stats
// null the passes are the ones above, unchanged. The sums of the update pass are taken
// with denormals flushed (below): a value under FLT_MIN / DBL_MIN adds 0.
//
// Denormals: the update pass of every optimizer step (sgd_step, adam_step, rmsprop_step,
// adagrad_step; the eager optimizers and the compiled plans both run these) computes with
// denormals flushed to zero, on x86-64 through MXCSR FTZ | DAZ set around each thread's run
// of chunks and restored after it: a denormal input (gradient, parameter or state value
// below the smallest normal number, FLT_MIN / DBL_MIN) is read as a zero of its sign and
// every denormal result, intermediate or stored, becomes zero. State that decays towards
// zero (Adam's m and v of a unit whose gradient stays 0) then reaches 0 instead of
// crawling through the denormal range, where every operation costs 10-20x (a float32 net
// whose Adam state held 131 denormals of 15K values ran its step 1.3x slower). XLA on CPU
// flushes the same way; PyTorch keeps IEEE denormals unless torch.set_flush_denormal(True).
// Results differ from IEEE arithmetic only where a value is below FLT_MIN (1.2e-38) /
// DBL_MIN. Pass 1 (the norms and gradient statistics) and clip_grads keep IEEE
// arithmetic, and so does every other kernel: the thread's MXCSR is put back.
// optim_flushes_denormals() is false where there is no such control (non-x86 builds):
// there the update passes use IEEE denormals.
#pragma once
#include <cstdint>

#include "parallel.h"

namespace gc {

struct FlatLayout {
  const std::int64_t* offsets;  // k + 1 entries, offsets[0] == 0, offsets[k] == n
  index_t k;
};

struct ClipOptions {
  double clip_value = 0;        // > 0: clamp each element to [-clip_value, clip_value], last
  double clip_norm = 0;         // > 0: per-tensor cap (Keras clipnorm): scale clip_norm / max(norm, clip_norm)
  double global_clip_norm = 0;  // > 0: coef = min(1, max / (total + 1e-6)) on the per-tensor-clipped norms
  bool compute_scales = true;   // false: scales[] is given (the caller ran grad_sumsq + clip_scales)
};

enum OptStatCol {
  kGradSumSq = 0,
  kGradMaxAbs = 1,
  kGradNonFinite = 2,
  kParamSumSq = 3,
  kUpdateSumSq = 4,
  kOptStatCols = 5,         // the table's width without the column below
  kParamSumSqBefore = 5,    // (only in a table of kOptStatColsBefore columns)
  kOptStatColsBefore = 6
};

// True when the optimizers' update passes flush denormals (above), i.e. on x86-64.
bool optim_flushes_denormals();

struct StepResult {
  double norm;               // pre-clip global norm (NaN when compute_scales is false)
  std::int64_t bad_tensor;   // first tensor with a non-finite gradient, -1 when all are finite
};

// sumsq[i] = sum over tensor i of (grad + noise)^2 in double; returns the first tensor
// holding a NaN or Inf, or -1. noise may be null; stats (null or k x stats_cols) receives
// the grad columns of the raw gradient.
template <class T>
std::int64_t grad_sumsq(const T* grad, const T* noise, FlatLayout L, double* sumsq, double* stats = nullptr,
                        index_t stats_cols = kOptStatCols);

// From per-tensor sums of squares (k entries) write per-tensor gradient scales and return
// the pre-clip global norm sqrt(sum sumsq).
double clip_scales(const double* sumsq, index_t k, double clip_norm, double global_clip_norm, double* scales);

// In place: grad = clamp(grad * scale[i], -clip_value, clip_value). Nothing is written
// when a gradient is non-finite and scales are computed here.
template <class T>
StepResult clip_grads(T* grad, FlatLayout L, double* sumsq, double* scales, const ClipOptions& clip);

struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  bool init_buffer;  // first step of the momentum buffer: buf = g (PyTorch)
};
// buf is read and written only when momentum != 0 (then it must not be null); with
// momentum 0 the step is plain SGD whatever buf is, as in torch.optim.SGD.
template <class T>
StepResult sgd_step(T* param, const T* grad, const T* noise, T* buf, FlatLayout L, double* sumsq, double* scales,
                    const SgdHyper& h, const ClipOptions& clip, double* stats = nullptr,
                   int stats_updates = 1, index_t stats_cols = kOptStatCols);

struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;                        // AdamW: p *= 1 - lr * wd; else wd * p is added to g
  double bias_correction1, bias_correction2;  // 1 - beta^t, computed in double by the caller
};
// vmax may be null (no AMSGrad).
template <class T>
StepResult adam_step(T* param, const T* grad, const T* noise, T* m, T* v, T* vmax, FlatLayout L, double* sumsq,
                     double* scales, const AdamHyper& h, const ClipOptions& clip,
                     double* stats = nullptr,
                   int stats_updates = 1, index_t stats_cols = kOptStatCols);

struct RmspropHyper {
  double lr, alpha, eps, weight_decay, momentum;
};
// grad_avg may be null (not centered), buf may be null (no momentum).
template <class T>
StepResult rmsprop_step(T* param, const T* grad, const T* noise, T* square_avg, T* grad_avg, T* buf, FlatLayout L,
                        double* sumsq, double* scales, const RmspropHyper& h, const ClipOptions& clip,
                        double* stats = nullptr,
                   int stats_updates = 1, index_t stats_cols = kOptStatCols);

struct AdagradHyper {
  double clr, eps, weight_decay;  // clr = lr / (1 + (t - 1) * lr_decay)
};
template <class T>
StepResult adagrad_step(T* param, const T* grad, const T* noise, T* sum, FlatLayout L, double* sumsq, double* scales,
                        const AdagradHyper& h, const ClipOptions& clip, double* stats = nullptr,
                   int stats_updates = 1, index_t stats_cols = kOptStatCols);

}  // namespace gc
