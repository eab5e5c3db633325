// The compiled training step (issue 8): a fixed graph of layers over the network's flat
// parameter / gradient buffers whose forward, loss, backward, per-tensor gradient
// statistics, clipping and optimizer update run in one call.
//
// A Plan<T> is built once (nodes over raw pointers into buffers the caller keeps alive),
// then run many times. It calls the same kernels in the same order as the eager path
// (gradcore/functional.py, gradcore/losses.py, gradcore/optim), so both give the same
// numbers. Its workspace (activations, pre-activations, gradients, statistics, masks) is
// allocated once per batch size; after that a step allocates nothing of its own.
// Every heap allocation a plan makes goes through PlanAllocator and is counted in
// plan_memory_stats().
//
// No pybind11 here: csrc/bind_plan.cpp validates the arrays and holds the references.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "activation.h"
#include "norm.h"
#include "parallel.h"
#include "stats.h"

namespace gc {

// ---------------------------------------------------------------------- memory accounting
struct PlanMemoryStats {
  std::int64_t bytes_live;
  std::int64_t allocations;  // since the last reset
};
PlanMemoryStats plan_memory_stats();
void reset_plan_memory_stats();
void plan_count_alloc(std::size_t bytes);
void plan_count_free(std::size_t bytes);

// std::allocator that counts into the plan counters (64-byte aligned blocks).
template <class U>
struct PlanAllocator {
  using value_type = U;
  PlanAllocator() noexcept = default;
  template <class V>
  PlanAllocator(const PlanAllocator<V>&) noexcept {}
  U* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(U);
    U* p = static_cast<U*>(::operator new(bytes, std::align_val_t(64)));
    plan_count_alloc(bytes);
    return p;
  }
  void deallocate(U* p, std::size_t n) noexcept {
    ::operator delete(p, std::align_val_t(64));
    plan_count_free(n * sizeof(U));
  }
  template <class V>
  bool operator==(const PlanAllocator<V>&) const noexcept { return true; }
  template <class V>
  bool operator!=(const PlanAllocator<V>&) const noexcept { return false; }
};
template <class U>
using pvector = std::vector<U, PlanAllocator<U>>;

// A problem with the data of one run (labels out of range, probabilities outside [0, 1]):
// raised as ValueError by the binding. Nothing was written except what the eager path
// writes before the same check (BatchNorm statistics, which are rolled back here).
struct PlanDataError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// ---------------------------------------------------------------------- graph
enum class PlanOp { dense, activation, softmax, prelu, batchnorm, layernorm, dropout, add };

enum class PlanLoss {
  mse,
  bce_logits,
  bce_probs_keras,
  bce_probs_torch,
  ce_labels,
  ce_probs,
  cce_probs_keras,
  sce_probs_keras
};
// "mse", ...; throws std::invalid_argument naming the valid kinds.
PlanLoss parse_plan_loss(const std::string& name);
// Targets: int64 labels (B,) for ce_labels / sce_probs_keras; float64 (B, width) for the
// probability losses (as the eager code reads them: the target in float64); otherwise the
// plan dtype, (B, width).
bool plan_loss_labels(PlanLoss k);
bool plan_loss_float64_target(PlanLoss k);

enum class PlanOpt { none, sgd, adam, rmsprop, adagrad };
PlanOpt parse_plan_optimizer(const std::string& name);
int plan_hyper_count(PlanOpt k);

// One node. Pointers are into the caller's buffers; widths are resolved by the plan.
template <class T>
struct PlanNode {
  PlanOp op;
  int src = -1, src2 = -1;  // -1: the plan's input
  index_t width = -1;       // output width (-1: the input's, resolved at finalize)
  index_t in_width = -1;    // the input width it requires (-1: any)
  // dense: W (width, in_width), b, dW, db; prelu: a -> W, da -> dW, a_size = in
  const T* W = nullptr;
  const T* b = nullptr;
  T* dW = nullptr;
  T* db = nullptr;
  Act act = Act::identity;
  double alpha = 0;
  double l2 = 0;
  bool log = false;          // softmax: log_softmax
  index_t a_size = 0;        // prelu
  // batchnorm / layernorm: gamma -> W, beta -> b, dgamma -> dW, dbeta -> db
  T* running_mean = nullptr;
  T* running_var = nullptr;
  std::int64_t* num_batches_tracked = nullptr;
  double momentum = 0.1;
  bool cumulative = false;   // momentum None: 1 / (num_batches_tracked + 1)
  double eps = 1e-5;
  double p = 0;              // dropout
};

struct PlanStepResult {
  double loss;
  double norm;               // pre-clip global norm
  std::int64_t bad_tensor;   // first tensor with a non-finite gradient, -1 if none
  double clip_coef;          // global clip coefficient (1 without global clipping)
};

template <class T>
class Plan {
 public:
  Plan();
  ~Plan();
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  void set_input_width(index_t w);   // optional; otherwise inferred (or taken from the first x)
  index_t input_width() const { return in_width_; }
  int add_node(const PlanNode<T>& n);
  int num_nodes() const { return static_cast<int>(nodes_.size()); }
  const PlanNode<T>& node(int i) const { return nodes_[static_cast<size_t>(i)]; }
  int dropout_count() const { return n_dropout_; }
  bool has_batchnorm() const { return n_batchnorm_ > 0; }

  void set_loss(int src, PlanLoss kind, double eps);
  bool has_loss() const { return loss_src_ >= 0; }  // set_loss takes a node id >= 0
  PlanLoss loss_kind() const { return loss_kind_; }
  void set_grads(T* grad, const std::int64_t* offsets, index_t k);
  bool has_grads() const { return grad_ != nullptr; }
  index_t num_tensors() const { return k_; }
  // states: sgd {buf}, adam {m, v, vmax}, rmsprop {square_avg, grad_avg, buf}, adagrad {sum}
  void set_optimizer(PlanOpt kind, T* param, T* s0, T* s1, T* s2, double* sumsq, double* scales);
  void set_sumsq(double* sumsq);     // where forward_backward writes the per-tensor sums of squares
  PlanOpt optimizer() const { return opt_; }

  // Statistics for gradcore.monitor (a GradientMonitor recording a compiled step), taken
  // while each buffer is hot. Row r of the monitored layers:
  //   act_nodes[r]: activation_stats (stats.h) of that node's output, right after its
  //     forward, into act_out + r * kActStatCols; modes[r] dead / saturated read the
  //     pre-activation: a dense node's z (its output without a fused activation), another
  //     node's input; threshold: the saturation bound;
  //   dz_nodes[r]: grad_stats' (norm.h) columns kSumSq, kL2, kMaxAbs, kNonFinite
  //     (magnitude_stats, stats.h; kMean and kStd are left NaN: the monitor reads neither)
  //     of the gradient at that node's output at the start of its backward (a dense
  //     node's after its fused activation's backward: the gradient at the pre-activation)
  //     into dz_out + r * kStatCols;
  //   -1: nothing.
  // opt_out (num_tensors x kOptStatCols, optim.h; may be null) receives the per-tensor
  // statistics of the optimizer's layout: the gradient columns from the backward's
  // sum-of-squares pass, the parameter columns from the update pass (a skipped step: the
  // parameters' sums of squares and zero updates).
  // Only runs with statistics on (enable_stats(true) before forward_backward /
  // apply_update) write them; such a forward_backward first sets every row to NaN, so a
  // node the run does not reach (no gradient) leaves a NaN row.
  // param_out (num_tensors x kStatCols, may be null) receives, on runs with statistics and
  // params (enable_stats(true, true)), magnitude_stats' columns of each parameter tensor
  // (kMean, kStd NaN) as this run's forward used it: measured right after the node that
  // reads it (its GEMM just streamed a dense weight through the cache); a tensor no node
  // reads from the optimizer's parameter buffer after the forward, when it is bound.
  void set_stats(const std::vector<int>& act_nodes, const std::vector<int>& dz_nodes,
                 const std::vector<StatsMode>& modes, double threshold, double* act_out, double* dz_out,
                 double* opt_out, double* param_out = nullptr);
  void clear_stats();
  bool has_stats() const { return stats_set_; }
  bool has_param_stats() const { return param_out_ != nullptr; }
  int stats_rows() const { return static_cast<int>(stat_mode_.size()); }
  void enable_stats(bool on, bool params = false) {
    stats_on_ = on && stats_set_;
    params_on_ = stats_on_ && params && param_out_;
  }

  // Resolves widths and gradient tensors; throws std::invalid_argument on an inconsistent
  // graph. Idempotent; the run functions call it.
  void finalize();
  index_t output_width();  // finalizes
  bool finalized() const { return finalized_; }
  bool has_run() const { return !ws_.empty(); }

  // One forward + loss + backward over x (batch, in_width) and y. seeds: one per dropout
  // node. Returns the loss (unscaled, rounded to T as eager's loss tensor is).
  double forward_backward(const T* x, const void* y, index_t batch, const std::uint64_t* seeds, double scale,
                          bool accumulate);
  // The optimizer half: non-finite check, clip scales, update (or rollback on a bad tensor).
  PlanStepResult apply_update(const double* hyper, double clip_value, double clip_norm, double global_clip_norm);

  // Output of the output node from the last run with that batch size (null if none).
  const T* output(index_t batch) const;
  std::int64_t nbytes() const { return ws_bytes_; }
  std::int64_t last_bad() const { return bad_; }

 private:
  struct Bufs {
    T* y = nullptr;       // output (B, width)
    T* z = nullptr;       // dense pre-activation (fused activation only)
    T* g = nullptr;       // gradient of the output
    T* mean = nullptr;    // batchnorm (width) / layernorm (B)
    T* invstd = nullptr;
    std::uint8_t* mask = nullptr;  // dropout
  };
  struct Workspace {
    index_t batch = 0;
    pvector<unsigned char> mem;
    pvector<Bufs> bufs;
    T* scratch = nullptr;    // (B, max width): a second gradient contribution
    double* terms = nullptr; // (B * out width) float64: probability-loss terms
    bool ran = false;
  };

  Workspace& workspace(index_t batch);
  void forward(const T* x, Workspace& ws, const std::uint64_t* seeds);
  double loss(const void* y, Workspace& ws, double scale);
  void backward(Workspace& ws, double scale, bool accumulate);
  void measure(index_t t, index_t t2);  // sums of squares of tensors t, t2 (-1: none)
  void measure_views(const GradView* v, const index_t* ids, index_t k);
  void flush_measures();
  void check_open(const char* what) const;
  double regularization();
  void snapshot_bn(int which);
  void node_act_stats(int i, const T* X, const Bufs& o, index_t B);
  void node_dz_stats(int i, const T* G, index_t n);  // 0: the group's start, 1: this run's start
  void node_param_stats(int i);
  // node i (a ReLU) takes its statistics in its own forward (fwd) / backward pass
  bool relu_fused(const pvector<std::uint8_t>& which, int i, index_t B) const;
  void restore_bn(int which);
  index_t tensor_of(const T* view, index_t size, const char* what, int node);
  const T* src_out(int src, const T* x, Workspace& ws) const { return src < 0 ? x : ws.bufs[src].y; }
  index_t width_of(int src) const { return src < 0 ? in_width_ : nodes_[static_cast<size_t>(src)].width; }

  pvector<PlanNode<T>> nodes_;
  pvector<index_t> tensors_;      // per node: 2 tensor indices (weight-like, bias-like), -1 if none
  pvector<std::uint8_t> has_g_;
  pvector<std::uint8_t> covered_; // per tensor: written by some node
  pvector<index_t> uncovered_;
  pvector<Workspace> ws_;
  pvector<T> pscratch_;           // largest parameter tensor (accumulate mode)
  pvector<T> dx_buf_;             // dense dX through transposed blocks of W (dense.h), shared by the nodes
  pvector<T> bn_snapshot_;
  pvector<std::int64_t> bn_counts_;
  pvector<double> sumsq_own_;
  pvector<GradView> pending_views_;  // small gradients measured together after the backward
  pvector<index_t> pending_ids_;
  pvector<double> pending_out_;
  index_t n_pending_ = 0;
  index_t in_width_ = -1;
  int n_dropout_ = 0, n_batchnorm_ = 0;
  int loss_src_ = -2;
  PlanLoss loss_kind_ = PlanLoss::mse;
  double loss_eps_ = 1e-7;
  T* grad_ = nullptr;
  const std::int64_t* offsets_ = nullptr;
  index_t k_ = 0;
  PlanOpt opt_ = PlanOpt::none;
  T* param_ = nullptr;
  T* state_[3] = {nullptr, nullptr, nullptr};
  double* sumsq_ = nullptr;
  double* scales_ = nullptr;
  bool finalized_ = false;
  bool snapshot_valid_ = false;
  bool grads_ready_ = false;
  std::int64_t bad_ = -1;
  std::int64_t ws_bytes_ = 0;
  const T* x_ = nullptr;  // the input of the current run
  // monitor statistics (set_stats): per node its row (-1: none), per row its mode
  pvector<int> act_row_, dz_row_;
  // a standalone ReLU node whose statistics its own passes take (relu_forward_stats /
  // relu_backward_stats): per node i 1 if its forward / backward does; per node j 1 if its
  // output's row / its dz row is written by its ReLU consumer (its only consumer, for the
  // dz); per run: the dz rows so written
  pvector<std::uint8_t> relu_fwd_, relu_bwd_, act_by_relu_, dz_by_relu_, dz_done_;
  pvector<StatsMode> stat_mode_;
  double stat_threshold_ = 5.0;
  double* act_out_ = nullptr;
  double* dz_out_ = nullptr;
  double* opt_out_ = nullptr;
  double* param_out_ = nullptr;
  bool stats_set_ = false;
  bool stats_on_ = false;
  bool params_on_ = false;
  pvector<double> pending_raw_;  // the gradient columns of the queued measures
};

}  // namespace gc
