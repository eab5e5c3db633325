#include "plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <tuple>

#include "batchnorm.h"
#include "dense.h"
#include "dense_small.h"
#include "dropout.h"
#include "layernorm.h"
#include "loss.h"
#include "norm.h"
#include "optim.h"
#include "stats.h"

namespace gc {

// ---------------------------------------------------------------------- memory accounting
namespace {
std::atomic<std::int64_t> g_bytes_live{0};
std::atomic<std::int64_t> g_allocations{0};
}  // namespace

PlanMemoryStats plan_memory_stats() { return {g_bytes_live.load(), g_allocations.load()}; }
void reset_plan_memory_stats() { g_allocations.store(0); }
void plan_count_alloc(std::size_t bytes) {
  g_bytes_live += static_cast<std::int64_t>(bytes);
  g_allocations += 1;
}
void plan_count_free(std::size_t bytes) { g_bytes_live -= static_cast<std::int64_t>(bytes); }

// ---------------------------------------------------------------------- names
PlanLoss parse_plan_loss(const std::string& name) {
  static const char* names[] = {"mse",     "bce_logits",      "bce_probs_keras", "bce_probs_torch",
                                "ce_labels", "ce_probs", "cce_probs_keras", "sce_probs_keras"};
  for (int i = 0; i < 8; ++i)
    if (name == names[i]) return static_cast<PlanLoss>(i);
  std::string valid;
  for (int i = 0; i < 8; ++i) valid += (i ? ", " : "") + std::string(names[i]);
  throw std::invalid_argument("Plan.set_loss: unknown loss kind '" + name + "'; valid kinds: " + valid);
}

bool plan_loss_labels(PlanLoss k) { return k == PlanLoss::ce_labels || k == PlanLoss::sce_probs_keras; }
bool plan_loss_float64_target(PlanLoss k) {
  return k == PlanLoss::bce_probs_keras || k == PlanLoss::bce_probs_torch || k == PlanLoss::cce_probs_keras;
}

PlanOpt parse_plan_optimizer(const std::string& name) {
  if (name == "sgd") return PlanOpt::sgd;
  if (name == "adam") return PlanOpt::adam;
  if (name == "rmsprop") return PlanOpt::rmsprop;
  if (name == "adagrad") return PlanOpt::adagrad;
  throw std::invalid_argument("Plan.set_optimizer: unknown optimizer kind '" + name +
                              "'; valid kinds: sgd, adam, rmsprop, adagrad");
}

int plan_hyper_count(PlanOpt k) {
  switch (k) {
    case PlanOpt::sgd: return 6;
    case PlanOpt::adam: return 8;
    case PlanOpt::rmsprop: return 5;
    case PlanOpt::adagrad: return 3;
    default: return 0;
  }
}

namespace {

const char* op_name(PlanOp op) {
  switch (op) {
    case PlanOp::dense: return "dense";
    case PlanOp::activation: return "activation";
    case PlanOp::softmax: return "softmax";
    case PlanOp::prelu: return "prelu";
    case PlanOp::batchnorm: return "batchnorm";
    case PlanOp::layernorm: return "layernorm";
    case PlanOp::dropout: return "dropout";
    case PlanOp::add: return "add";
  }
  return "?";
}

std::string node_str(int i, PlanOp op) { return "node " + std::to_string(i) + " (" + op_name(op) + ")"; }

// NumPy's pairwise summation (np.add.reduce over a contiguous axis): blocks of up to 128
// values in 8 accumulators, halves above that. Used where the eager path sums with NumPy
// (the probability losses' terms, the L2 penalty) so the plan's loss is bit-identical.
template <class A, class F>
A pairwise(const F& f, index_t lo, index_t n) {
  if (n < 8) {
    A res = A(0);
    for (index_t i = 0; i < n; ++i) res += f(lo + i);
    return res;
  }
  if (n <= 128) {
    A r[8];
    for (int j = 0; j < 8; ++j) r[j] = f(lo + j);
    index_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += f(lo + i + j);
    A res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += f(lo + i);
    return res;
  }
  index_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise<A>(f, lo, n2) + pairwise<A>(f, lo + n2, n - n2);
}

// np.sum of n values: the identity plus the pairwise sum.
template <class A, class F>
A np_sum(const F& f, index_t n) {
  return A(0) + pairwise<A>(f, 0, n);
}

// np.maximum: NaN in either operand propagates.
inline double np_max(double a, double b) {
  if (a != a) return a;
  if (b != b) return b;
  return a < b ? b : a;
}

// np.clip(x, lo, hi) = minimum(maximum(x, lo), hi), NaN kept.
inline double np_clip(double x, double lo, double hi) {
  if (x != x) return x;
  return x < lo ? lo : (x > hi ? hi : x);
}

std::string fmt_g(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

constexpr std::size_t kAlign = 64;
inline std::size_t align_up(std::size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

}  // namespace

// ---------------------------------------------------------------------- building
template <class T>
Plan<T>::Plan() = default;
template <class T>
Plan<T>::~Plan() = default;

template <class T>
void Plan<T>::check_open(const char* what) const {
  if (!ws_.empty())
    throw std::invalid_argument(std::string("Plan.") + what +
                                ": the plan has already run (its workspaces and output views are laid out for "
                                "this graph); build a new Plan to change the graph");
}

template <class T>
void Plan<T>::set_input_width(index_t w) {
  if (w == in_width_) return;
  check_open("set_input_width");
  if (w < 0) {  // forget a width guessed from an x that did not fit the graph
    in_width_ = -1;
    finalized_ = false;
    return;
  }
  if (in_width_ >= 0 && in_width_ != w)
    throw std::invalid_argument("Plan: input width " + std::to_string(w) + " conflicts with " +
                                std::to_string(in_width_));
  in_width_ = w;
  finalized_ = false;
}

template <class T>
int Plan<T>::add_node(const PlanNode<T>& n) {
  check_open(op_name(n.op));
  const int id = num_nodes();
  auto check_src = [&](int s, const char* what) {
    if (s < -1 || s >= id)
      throw std::invalid_argument("Plan." + std::string(op_name(n.op)) + ": " + what + " " + std::to_string(s) +
                                  " is not an existing node id (-1 is the input, nodes so far: 0.." +
                                  std::to_string(id - 1) + ")");
  };
  check_src(n.src, "src");
  if (n.op == PlanOp::add) check_src(n.src2, "b");
  nodes_.push_back(n);
  if (n.op == PlanOp::dropout) ++n_dropout_;
  if (n.op == PlanOp::batchnorm) ++n_batchnorm_;
  finalized_ = false;
  return id;
}

template <class T>
void Plan<T>::set_loss(int src, PlanLoss kind, double eps) {
  check_open("set_loss");
  if (src < 0 || src >= num_nodes())
    throw std::invalid_argument("Plan.set_loss: src " + std::to_string(src) +
                                " is not an existing node id (the loss reads a node's output, not the input)");
  if (!(eps > 0 && eps < 0.5)) throw std::invalid_argument("Plan.set_loss: eps must be in (0, 0.5), got " + fmt_g(eps));
  loss_src_ = src;
  loss_kind_ = kind;
  loss_eps_ = eps;
  finalized_ = false;
}

template <class T>
void Plan<T>::set_grads(T* grad, const std::int64_t* offsets, index_t k) {
  grad_ = grad;
  offsets_ = offsets;
  k_ = k;
  sumsq_own_.assign(static_cast<size_t>(k), 0.0);
  // a new gradient layout unbinds the optimizer (its buffers follow the old layout)
  opt_ = PlanOpt::none;
  param_ = nullptr;
  state_[0] = state_[1] = state_[2] = nullptr;
  sumsq_ = sumsq_own_.data();
  scales_ = nullptr;
  grads_ready_ = false;
  finalized_ = false;
}

template <class T>
void Plan<T>::set_sumsq(double* sumsq) {
  sumsq_ = sumsq;
}

template <class T>
void Plan<T>::set_optimizer(PlanOpt kind, T* param, T* s0, T* s1, T* s2, double* sumsq, double* scales) {
  opt_ = kind;
  param_ = param;
  state_[0] = s0;
  state_[1] = s1;
  state_[2] = s2;
  sumsq_ = sumsq;
  scales_ = scales;
}

template <class T>
index_t Plan<T>::tensor_of(const T* view, index_t size, const char* what, int node) {
  const std::string who = node_str(node, nodes_[static_cast<size_t>(node)].op);
  const index_t n = offsets_[k_];
  const index_t at = view - grad_;
  if (view < grad_ || at >= n + (size == 0 ? 1 : 0))
    throw std::invalid_argument("Plan: " + who + ": " + what + " is not a view of the flat gradient buffer");
  // first tensor starting at `at` with that size
  index_t lo = std::lower_bound(offsets_, offsets_ + k_ + 1, static_cast<std::int64_t>(at)) - offsets_;
  for (index_t i = lo; i < k_ && offsets_[i] == at; ++i) {
    if (offsets_[i + 1] - offsets_[i] == size && !covered_[static_cast<size_t>(i)]) {
      covered_[static_cast<size_t>(i)] = 1;
      return i;
    }
  }
  throw std::invalid_argument("Plan: " + who + ": " + what + " (" + std::to_string(size) +
                              " values at offset " + std::to_string(at) +
                              ") is not one whole tensor of the flat gradient buffer (or is another node's)");
}

template <class T>
void Plan<T>::finalize() {
  if (finalized_) return;
  if (!has_loss()) throw std::invalid_argument("Plan: set_loss was not called");
  if (!grad_) throw std::invalid_argument("Plan: set_grads was not called");
  if (nodes_.empty()) throw std::invalid_argument("Plan: the plan has no nodes");
  const int nn = num_nodes();
  // The input width, when not given: the width the first node with a fixed input width
  // needs, if that node reads the input through width-preserving nodes only (e.g. Dropout,
  // an activation or a LayerNorm without affine before the first Dense). Conflicts are
  // reported by the width checks below.
  if (in_width_ < 0) {
    for (int i = 0; i < nn && in_width_ < 0; ++i) {
      const PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
      if (N.in_width < 0) continue;
      int s = N.src;
      while (s >= 0) {
        const PlanNode<T>& S = nodes_[static_cast<size_t>(s)];
        if (S.in_width >= 0 || S.op == PlanOp::dense || S.op == PlanOp::batchnorm) break;
        s = S.src;
      }
      if (s == -1) in_width_ = N.in_width;
    }
  }
  if (in_width_ < 0) return;  // resolved at the first run from x's width
  index_t max_param = 0;
  for (int i = 0; i < nn; ++i) {
    PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
    const index_t w_in = width_of(N.src);
    if (N.in_width >= 0 && N.in_width != w_in)
      throw std::invalid_argument("Plan: " + node_str(i, N.op) + " expects width " + std::to_string(N.in_width) +
                                  " but its source " + std::to_string(N.src) + " has width " + std::to_string(w_in));
    if (N.op == PlanOp::add && width_of(N.src2) != w_in)
      throw std::invalid_argument("Plan: " + node_str(i, N.op) + " adds widths " + std::to_string(w_in) + " and " +
                                  std::to_string(width_of(N.src2)) + "; they must be equal");
    if (N.op != PlanOp::dense) N.width = w_in;
    max_param = std::max(max_param, N.op == PlanOp::dense ? N.width * N.in_width : std::max(N.width, N.a_size));
  }
  // gradient tensors
  covered_.assign(static_cast<size_t>(k_), 0);
  tensors_.assign(2 * static_cast<size_t>(nn), -1);
  for (int i = 0; i < nn; ++i) {
    const PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
    index_t wsize = 0, bsize = 0;
    switch (N.op) {
      case PlanOp::dense: wsize = N.width * N.in_width; bsize = N.width; break;
      case PlanOp::prelu: wsize = N.a_size; break;
      case PlanOp::batchnorm:
      case PlanOp::layernorm: wsize = bsize = N.width; break;
      default: break;
    }
    if (N.dW) tensors_[2 * static_cast<size_t>(i)] = tensor_of(N.dW, wsize, N.op == PlanOp::dense ? "dW" : "the weight gradient", i);
    if (N.db) tensors_[2 * static_cast<size_t>(i) + 1] = tensor_of(N.db, bsize, N.op == PlanOp::dense ? "db" : "the bias gradient", i);
  }
  uncovered_.clear();
  for (index_t t = 0; t < k_; ++t)
    if (!covered_[static_cast<size_t>(t)]) uncovered_.push_back(t);
  pscratch_.assign(2 * static_cast<size_t>(max_param), T(0));
  pending_views_.assign(static_cast<size_t>(k_), GradView{nullptr, 0, false, nullptr});
  pending_ids_.assign(static_cast<size_t>(k_), -1);
  pending_out_.assign(static_cast<size_t>(k_), 0.0);
  pending_raw_.assign(3 * static_cast<size_t>(k_), 0.0);
  n_pending_ = 0;
  has_g_.assign(static_cast<size_t>(nn), 0);
  index_t bn_values = 0;
  for (const auto& N : nodes_)
    if (N.op == PlanOp::batchnorm) bn_values += 2 * N.width;
  // two snapshots: [0] the accumulation group's start (a skipped step rolls back to it),
  // [1] this run's start (a run that raises undoes only its own update)
  bn_snapshot_.assign(2 * static_cast<size_t>(bn_values), T(0));
  bn_counts_.assign(2 * static_cast<size_t>(n_batchnorm_), 0);
  snapshot_valid_ = false;
  finalized_ = true;  // (workspaces exist only once the graph is frozen: they stay valid)
}

template <class T>
index_t Plan<T>::output_width() {
  finalize();
  return width_of(loss_src_);
}

// ---------------------------------------------------------------------- workspace
template <class T>
typename Plan<T>::Workspace& Plan<T>::workspace(index_t batch) {
  for (auto& w : ws_)
    if (w.batch == batch) return w;
  const int nn = num_nodes();
  std::size_t off = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t at = off;
    off = align_up(off + bytes);
    return at;
  };
  struct Off {
    std::size_t y, z, g, mean, invstd, mask;
  };
  pvector<Off> offs(static_cast<size_t>(nn));
  const std::size_t none = std::numeric_limits<std::size_t>::max();
  index_t max_w = in_width_;
  for (int i = 0; i < nn; ++i) {
    const PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
    Off& o = offs[static_cast<size_t>(i)];
    const std::size_t vals = static_cast<std::size_t>(batch * N.width);
    max_w = std::max(max_w, N.width);
    o.y = take(vals * sizeof(T));
    o.g = take(vals * sizeof(T));
    o.z = (N.op == PlanOp::dense && N.act != Act::identity) ? take(vals * sizeof(T)) : none;
    o.mean = o.invstd = o.mask = none;
    if (N.op == PlanOp::batchnorm) {
      o.mean = take(sizeof(T) * static_cast<size_t>(N.width));
      o.invstd = take(sizeof(T) * static_cast<size_t>(N.width));
    } else if (N.op == PlanOp::layernorm) {
      o.mean = take(sizeof(T) * static_cast<size_t>(batch));
      o.invstd = take(sizeof(T) * static_cast<size_t>(batch));
    } else if (N.op == PlanOp::dropout && N.p > 0 && N.p < 1) {
      o.mask = take(vals);
    }
  }
  const std::size_t scratch = take(sizeof(T) * static_cast<size_t>(batch * max_w));
  const bool prob = loss_kind_ == PlanLoss::bce_probs_keras || loss_kind_ == PlanLoss::bce_probs_torch ||
                    loss_kind_ == PlanLoss::cce_probs_keras || loss_kind_ == PlanLoss::sce_probs_keras;
  const std::size_t terms = prob ? take(sizeof(double) * static_cast<size_t>(batch * width_of(loss_src_))) : none;
  Workspace w;
  w.batch = batch;
  w.mem.resize(off + kAlign);
  unsigned char* base = w.mem.data();
  w.bufs.resize(static_cast<size_t>(nn));
  for (int i = 0; i < nn; ++i) {
    const Off& o = offs[static_cast<size_t>(i)];
    Bufs& b = w.bufs[static_cast<size_t>(i)];
    b.y = reinterpret_cast<T*>(base + o.y);
    b.g = reinterpret_cast<T*>(base + o.g);
    if (o.z != none) b.z = reinterpret_cast<T*>(base + o.z);
    if (o.mean != none) b.mean = reinterpret_cast<T*>(base + o.mean);
    if (o.invstd != none) b.invstd = reinterpret_cast<T*>(base + o.invstd);
    if (o.mask != none) b.mask = base + o.mask;
  }
  w.scratch = reinterpret_cast<T*>(base + scratch);
  if (terms != none) w.terms = reinterpret_cast<double*>(base + terms);
  ws_bytes_ += static_cast<std::int64_t>(w.mem.size());
  // The buffer of the dense nodes' blocked dX (any batch size: sized by the layers alone),
  // made with the first workspace so that no step allocates it.
  std::size_t dx_need = 0;
  for (const auto& N : nodes_)
    if (N.op == PlanOp::dense && N.src >= 0 && dense_dx_blocked_shape(N.in_width, N.width, sizeof(T)))
      dx_need = std::max(dx_need, static_cast<std::size_t>(dense_dx_buffer_values(N.in_width, N.width)));
  if (dx_need > dx_buf_.size()) {
    const std::size_t had = dx_buf_.size();
    dx_buf_.resize(dx_need);
    ws_bytes_ += static_cast<std::int64_t>(sizeof(T) * (dx_need - had));
  }
  ws_.push_back(std::move(w));
  return ws_.back();
}

template <class T>
const T* Plan<T>::output(index_t batch) const {
  for (const auto& w : ws_)
    if (w.batch == batch && w.ran) return loss_src_ < 0 ? nullptr : w.bufs[static_cast<size_t>(loss_src_)].y;
  return nullptr;
}

// ---------------------------------------------------------------------- batchnorm snapshot
template <class T>
void Plan<T>::snapshot_bn(int which) {
  T* vals = bn_snapshot_.data() + (which ? bn_snapshot_.size() / 2 : 0);
  std::int64_t* counts = bn_counts_.data() + (which ? bn_counts_.size() / 2 : 0);
  size_t at = 0, c = 0;
  for (const auto& N : nodes_) {
    if (N.op != PlanOp::batchnorm) continue;
    const size_t w = static_cast<size_t>(N.width);
    std::memcpy(vals + at, N.running_mean, w * sizeof(T));
    std::memcpy(vals + at + w, N.running_var, w * sizeof(T));
    at += 2 * w;
    counts[c++] = *N.num_batches_tracked;
  }
  if (which == 0) snapshot_valid_ = true;
}

template <class T>
void Plan<T>::restore_bn(int which) {
  if (which == 0 && !snapshot_valid_) return;
  const T* vals = bn_snapshot_.data() + (which ? bn_snapshot_.size() / 2 : 0);
  const std::int64_t* counts = bn_counts_.data() + (which ? bn_counts_.size() / 2 : 0);
  size_t at = 0, c = 0;
  for (const auto& N : nodes_) {
    if (N.op != PlanOp::batchnorm) continue;
    const size_t w = static_cast<size_t>(N.width);
    std::memcpy(N.running_mean, vals + at, w * sizeof(T));
    std::memcpy(N.running_var, vals + at + w, w * sizeof(T));
    at += 2 * w;
    *N.num_batches_tracked = counts[c++];
  }
}

// ---------------------------------------------------------------------- monitor statistics
template <class T>
void Plan<T>::set_stats(const std::vector<int>& act_nodes, const std::vector<int>& dz_nodes,
                        const std::vector<StatsMode>& modes, double threshold, double* act_out, double* dz_out,
                        double* opt_out, double* param_out) {
  const size_t rows = modes.size();
  if (act_nodes.size() != rows || dz_nodes.size() != rows)
    throw std::invalid_argument("Plan.set_stats: act_nodes, dz_nodes and modes must have one entry per row");
  if (!(threshold > 0) || !std::isfinite(threshold))
    throw std::invalid_argument("Plan.set_stats: threshold must be a finite number > 0");
  const int nn = num_nodes();
  pvector<int> act_row(static_cast<size_t>(nn), -1), dz_row(static_cast<size_t>(nn), -1);
  for (size_t r = 0; r < rows; ++r) {
    for (auto [node, table, what] : {std::tuple<int, pvector<int>*, const char*>{act_nodes[r], &act_row, "act_nodes"},
                                     std::tuple<int, pvector<int>*, const char*>{dz_nodes[r], &dz_row, "dz_nodes"}}) {
      if (node == -1) continue;
      if (node < 0 || node >= nn)
        throw std::invalid_argument(std::string("Plan.set_stats: ") + what + "[" + std::to_string(r) + "] = " +
                                    std::to_string(node) + " is not a node (0.." + std::to_string(nn - 1) + ") or -1");
      int& slot = (*table)[static_cast<size_t>(node)];
      if (slot >= 0)
        throw std::invalid_argument(std::string("Plan.set_stats: ") + what + " names node " + std::to_string(node) +
                                    " twice (rows " + std::to_string(slot) + " and " + std::to_string(r) + ")");
      slot = static_cast<int>(r);
    }
  }
  act_row_ = std::move(act_row);
  dz_row_ = std::move(dz_row);
  // standalone ReLU nodes with statistics (Dense -> BatchNorm -> ReLU): their passes take
  // them (relu_forward_stats / relu_backward_stats), and their source's rows with them
  // where the source's output row has no pre-activation of its own (mode none) and, for
  // the dz, the ReLU is the source's only consumer
  pvector<int> consumers(static_cast<size_t>(nn), 0);
  for (int i = 0; i < nn; ++i) {
    const PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
    if (N.src >= 0) ++consumers[static_cast<size_t>(N.src)];
    if (N.src2 >= 0) ++consumers[static_cast<size_t>(N.src2)];
  }
  relu_fwd_.assign(static_cast<size_t>(nn), 0);
  relu_bwd_.assign(static_cast<size_t>(nn), 0);
  act_by_relu_.assign(static_cast<size_t>(nn), 0);
  dz_by_relu_.assign(static_cast<size_t>(nn), 0);
  dz_done_.assign(static_cast<size_t>(nn), 0);
  for (int i = 0; i < nn; ++i) {
    const PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
    if (N.op != PlanOp::activation || N.act != Act::relu || N.src < 0) continue;
    const size_t j = static_cast<size_t>(N.src);
    const int ar = act_row_[static_cast<size_t>(i)];
    if (ar >= 0 && modes[static_cast<size_t>(ar)] == StatsMode::dead) {
      relu_fwd_[static_cast<size_t>(i)] = 1;
      const int jr = act_row_[j];
      if (jr >= 0 && modes[static_cast<size_t>(jr)] == StatsMode::none) act_by_relu_[j] = 1;
    }
    if (dz_row_[j] >= 0 && consumers[j] == 1) dz_by_relu_[j] = 1;
    if (dz_row_[static_cast<size_t>(i)] >= 0 || dz_by_relu_[j]) relu_bwd_[static_cast<size_t>(i)] = 1;
  }
  stat_mode_.assign(modes.begin(), modes.end());
  stat_threshold_ = threshold;
  act_out_ = act_out;
  dz_out_ = dz_out;
  opt_out_ = opt_out;
  param_out_ = param_out;
  stats_set_ = true;
  stats_on_ = params_on_ = false;
}

template <class T>
void Plan<T>::clear_stats() {
  act_row_.clear();
  dz_row_.clear();
  relu_fwd_.clear();
  relu_bwd_.clear();
  act_by_relu_.clear();
  dz_by_relu_.clear();
  dz_done_.clear();
  stat_mode_.clear();
  act_out_ = dz_out_ = opt_out_ = param_out_ = nullptr;
  stats_set_ = stats_on_ = params_on_ = false;
}

// GradientMonitor's activation statistics of node i's output (its _act_stats): the
// pre-activation for dead / saturated is a dense node's z (its output when the activation
// is the identity or row-wise) or the input of an activation / PReLU node.
template <class T>
void Plan<T>::node_act_stats(int i, const T* X, const Bufs& o, index_t B) {
  if (static_cast<size_t>(i) >= act_row_.size()) return;
  const int r = act_row_[static_cast<size_t>(i)];
  if (r < 0) return;
  const PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
  const StatsMode mode = stat_mode_[static_cast<size_t>(r)];
  const T* Z = nullptr;
  if (mode != StatsMode::none) Z = N.op == PlanOp::dense ? (N.act != Act::identity ? o.z : o.y) : X;
  activation_stats<T>(o.y, Z, B, N.width, mode, stat_threshold_, act_out_ + static_cast<index_t>(r) * kActStatCols);
}

template <class T>
bool Plan<T>::relu_fused(const pvector<std::uint8_t>& which, int i, index_t B) const {
  return static_cast<size_t>(i) < which.size() && which[static_cast<size_t>(i)] &&
         relu_fusable<T>(B, nodes_[static_cast<size_t>(i)].width);
}

template <class T>
void Plan<T>::node_dz_stats(int i, const T* G, index_t n) {
  if (static_cast<size_t>(i) >= dz_row_.size()) return;
  const int r = dz_row_[static_cast<size_t>(i)];
  if (r < 0 || dz_done_[static_cast<size_t>(i)]) return;
  magnitude_stats<T>(G, n, dz_out_ + static_cast<index_t>(r) * kStatCols);  // (mean, std: left NaN)
}

// The parameters node i reads (its weight-like and bias-like tensors), as its forward used
// them: a dense node's weight was just streamed through the cache by its GEMM.
template <class T>
void Plan<T>::node_param_stats(int i) {
  const PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
  const index_t tw = tensors_[2 * static_cast<size_t>(i)], tb = tensors_[2 * static_cast<size_t>(i) + 1];
  if (tw >= 0 && N.W) magnitude_stats<T>(N.W, offsets_[tw + 1] - offsets_[tw], param_out_ + tw * kStatCols);
  if (tb >= 0 && N.b) magnitude_stats<T>(N.b, offsets_[tb + 1] - offsets_[tb], param_out_ + tb * kStatCols);
}

// ---------------------------------------------------------------------- forward
template <class T>
void Plan<T>::forward(const T* x, Workspace& ws, const std::uint64_t* seeds) {
  const index_t B = ws.batch;
  int d = 0;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const PlanNode<T>& N = nodes_[i];
    Bufs& o = ws.bufs[i];
    const T* X = src_out(N.src, x, ws);
    const index_t w = N.width, n = B * w;
    switch (N.op) {
      case PlanOp::dense:
        if (!dense_forward_small<T>(X, N.W, N.b, o.y, o.z, B, N.in_width, w, N.act, N.alpha))
          dense_forward<T>(X, N.W, N.b, o.y, o.z, B, N.in_width, w, N.act, N.alpha);
        break;
      case PlanOp::activation:
        if (stats_on_ && relu_fused(relu_fwd_, static_cast<int>(i), B)) {
          const size_t j = static_cast<size_t>(N.src);
          double* out_z = act_by_relu_[j] ? act_out_ + static_cast<index_t>(act_row_[j]) * kActStatCols : nullptr;
          relu_forward_stats<T>(X, o.y, B, w, out_z, act_out_ + static_cast<index_t>(act_row_[i]) * kActStatCols);
          break;
        }
        activation_forward<T>(N.act, X, o.y, n, N.alpha);
        break;
      case PlanOp::softmax:
        if (N.log) log_softmax_forward<T>(X, o.y, B, w);
        else softmax_forward<T>(X, o.y, B, w);
        break;
      case PlanOp::prelu:
        prelu_forward<T>(X, N.W, o.y, B, w, N.a_size);
        break;
      case PlanOp::batchnorm: {
        // BatchNorm.forward: momentum None is the cumulative average 1 / (count + 1)
        const double momentum = N.cumulative ? 1.0 / double(*N.num_batches_tracked + 1) : N.momentum;
        batch_norm_forward_train<T>(X, N.W, N.b, N.running_mean, N.running_var, momentum, N.eps, o.y, o.mean,
                                    o.invstd, B, w);
        *N.num_batches_tracked += 1;
        break;
      }
      case PlanOp::layernorm:
        layer_norm_forward<T>(X, N.W, N.b, N.eps, o.y, o.mean, o.invstd, B, w);
        break;
      case PlanOp::dropout: {
        const std::uint64_t seed = seeds ? seeds[d] : 0;
        ++d;
        if (N.p == 0) {
          std::memcpy(o.y, X, sizeof(T) * static_cast<size_t>(n));
        } else if (N.p == 1) {  // F.dropout: x * 0.0
          for (index_t e = 0; e < n; ++e) o.y[e] = X[e] * T(0);
        } else {
          dropout_forward<T>(X, o.y, o.mask, n, N.p, seed, 0);
        }
        break;
      }
      case PlanOp::add: {
        const T* X2 = src_out(N.src2, x, ws);
        for (index_t e = 0; e < n; ++e) o.y[e] = X[e] + X2[e];
        break;
      }
    }
    if (stats_on_) {
      // (a ReLU consumer that takes this node's row, or a fused ReLU itself: done there)
      const bool by_consumer = act_by_relu_[i] && relu_fusable<T>(B, N.width);
      if (!by_consumer && !relu_fused(relu_fwd_, static_cast<int>(i), B))
        node_act_stats(static_cast<int>(i), X, o, B);
    }
    if (params_on_) node_param_stats(static_cast<int>(i));
  }
  if (params_on_ && param_)  // tensors no node reads (a row no node wrote is still NaN)
    for (index_t t = 0; t < k_; ++t)
      if (std::isnan(param_out_[t * kStatCols + kNonFinite]))
        magnitude_stats<T>(param_ + offsets_[t], offsets_[t + 1] - offsets_[t], param_out_ + t * kStatCols);
}

// ---------------------------------------------------------------------- loss
template <class T>
double Plan<T>::loss(const void* y, Workspace& ws, double scale) {
  const index_t B = ws.batch, C = width_of(loss_src_), n = B * C;
  Bufs& o = ws.bufs[static_cast<size_t>(loss_src_)];
  const T* P = o.y;
  T* G = o.g;
  double value = 0;
  bool fused = true;
  switch (loss_kind_) {
    case PlanLoss::mse:
      value = mse_loss<T>(P, static_cast<const T*>(y), G, n);
      break;
    case PlanLoss::bce_logits:
      value = bce_with_logits_loss<T>(P, static_cast<const T*>(y), G, n);
      break;
    case PlanLoss::ce_labels: {
      index_t bad_row = -1;
      value = cross_entropy_loss<T>(P, static_cast<const std::int64_t*>(y), G, B, C, &bad_row);
      if (bad_row >= 0)
        throw PlanDataError("cross_entropy: label " +
                            std::to_string(static_cast<const std::int64_t*>(y)[bad_row]) + " at row " +
                            std::to_string(bad_row) + " is out of range for " + std::to_string(C) + " classes");
      break;
    }
    case PlanLoss::ce_probs:
      value = cross_entropy_onehot_loss<T>(P, static_cast<const T*>(y), G, B, C);
      break;
    default:
      fused = false;
  }
  if (fused) {
    // F._loss: grad * g, g the upstream gradient (the loss weight, rounded to T)
    if (scale != 1.0) {
      const T s = static_cast<T>(scale);
      for (index_t e = 0; e < n; ++e) G[e] = G[e] * s;
    }
    return static_cast<double>(static_cast<T>(value));
  }

  // The probability losses of gradcore/functional.py and gradcore/losses.py, in float64
  // as NumPy computes them there; the terms are summed with NumPy's pairwise order.
  const double eps = loss_eps_, hi = 1.0 - loss_eps_;
  const double gup = static_cast<double>(static_cast<T>(scale));  // float(g): the weight in T
  double* terms = ws.terms;
  auto range_error = [&](const char* op, const std::string& what, const char* hint) {
    double lo = std::numeric_limits<double>::infinity(), top = -lo;
    for (index_t e = 0; e < n; ++e) {
      const double p = double(P[e]);
      if (p != p) continue;
      lo = std::min(lo, p);
      top = std::max(top, p);
    }
    if (what == "min")
      throw PlanDataError(std::string(op) + ": input must hold probabilities (non-negative), got a minimum of " +
                          fmt_g(lo) + "; " + hint);
    throw PlanDataError(std::string(op) + ": input must hold probabilities in [0, 1], got values from " + fmt_g(lo) +
                        " to " + fmt_g(top) + "; " + hint);
  };
  switch (loss_kind_) {
    case PlanLoss::bce_probs_keras: {
      const double* t = static_cast<const double*>(y);
      // per element: values and d/dp, then the mean over the last axis per sample
      const double kd = double(C);
      const double sc = gup * (1.0 / double(B));
      for (index_t e = 0; e < n; ++e) {
        const double p = double(P[e]), q = np_clip(p, eps, hi), te = t[e];
        // checked in the same pass: an error throws away G and the terms (workspace only)
        if (p < 0.0 || p > 1.0)
          range_error("binary_crossentropy", "range", "pass from_logits=True if the network outputs logits");
        terms[e] = -(te * std::log(q) + (1.0 - te) * std::log1p(-q));
        const bool inside = p > eps && p < hi;
        const double dv = inside ? (q - te) / (q * (1.0 - q)) : 0.0;
        G[e] = static_cast<T>((dv / kd) * sc);
      }
      // values.mean(axis=-1): pairwise sum of each row / C; then the sum over the batch
      for (index_t r = 0; r < B; ++r) {
        const double* row = terms + r * C;
        const double s = np_sum<double>([&](index_t j) { return row[j]; }, C);
        terms[r] = s / kd;  // row r's terms are no longer read (rows are processed in order)
      }
      const double total = np_sum<double>([&](index_t r) { return terms[r]; }, B);
      value = total * (1.0 / double(B));
      break;
    }
    case PlanLoss::bce_probs_torch: {
      const double* t = static_cast<const double*>(y);
      const double sc = gup * (1.0 / double(n));
      for (index_t e = 0; e < n; ++e) {
        const double p = double(P[e]), te = t[e];
        if (p < 0.0 || p > 1.0)
          range_error("binary_cross_entropy", "range", "for logits use binary_cross_entropy_with_logits");
        terms[e] = -(te * np_max(std::log(p), -100.0) + (1.0 - te) * np_max(std::log1p(-p), -100.0));
        const double dv = (p - te) / np_max(p * (1.0 - p), 1e-12);
        G[e] = static_cast<T>(dv * sc);
      }
      const double total = np_sum<double>([&](index_t e) { return terms[e]; }, n);
      value = total * (1.0 / double(n));
      break;
    }
    case PlanLoss::cce_probs_keras:
    case PlanLoss::sce_probs_keras: {
      const bool sparse = loss_kind_ == PlanLoss::sce_probs_keras;
      const char* op = sparse ? "sparse_categorical_crossentropy" : "categorical_crossentropy";
      for (index_t e = 0; e < n; ++e)
        if (double(P[e]) < 0.0) range_error(op, "min", "pass from_logits=True if the network outputs logits");
      const double* tp = sparse ? nullptr : static_cast<const double*>(y);
      const std::int64_t* labels = sparse ? static_cast<const std::int64_t*>(y) : nullptr;
      const double sc = gup * (1.0 / double(B));
      for (index_t r = 0; r < B; ++r) {
        const T* pr = P + r * C;
        T* gr = G + r * C;
        auto tgt = [&](index_t c) -> double {
          return sparse ? (labels[r] == c ? 1.0 : 0.0) : tp[r * C + c];
        };
        const double s = np_sum<double>([&](index_t c) { return double(pr[c]); }, C);
        auto q = [&](index_t c) { return double(pr[c]) / s; };
        auto qc = [&](index_t c) { return np_clip(q(c), eps, hi); };
        const double lsum = np_sum<double>([&](index_t c) { return tgt(c) * std::log(qc(c)); }, C);
        terms[r] = -lsum;
        auto rr = [&](index_t c) {
          const double qv = q(c);
          return (qv > eps && qv < hi) ? -tgt(c) / qc(c) : 0.0;
        };
        const double rq = np_sum<double>([&](index_t c) { return rr(c) * q(c); }, C);
        for (index_t c = 0; c < C; ++c) gr[c] = static_cast<T>(((rr(c) - rq) / s) * sc);
      }
      const double total = np_sum<double>([&](index_t r) { return terms[r]; }, B);
      value = total * (1.0 / double(B));
      break;
    }
    default:
      break;
  }
  return static_cast<double>(static_cast<T>(value));
}

// Module.regularization_loss: sum over Dense layers of (w * w).sum() * l2, in T with
// NumPy's pairwise sum, the terms added in node order.
template <class T>
double Plan<T>::regularization() {
  bool any = false;
  T total = T(0);
  for (const auto& N : nodes_) {
    if (N.op != PlanOp::dense || !(N.l2 > 0)) continue;
    const T* W = N.W;
    const T s = np_sum<T>([&](index_t e) { return T(W[e] * W[e]); }, N.width * N.in_width);
    const T term = s * static_cast<T>(N.l2);
    total = any ? T(total + term) : term;
    any = true;
  }
  return any ? static_cast<double>(total) : 0.0;
}

// ---------------------------------------------------------------------- backward
// Sums of squares and the non-finite check of parameter gradients: optim.h's grad_sumsq,
// i.e. norm.h's shared kernel with double lanes. Each array's sum is independent of the
// other arrays of the call, so any grouping gives the whole-buffer call's numbers.
// A node's gradients of at least kMeasureNow values are measured right after its backward,
// while they are in cache; smaller ones (which stay cached anyway) are queued and measured
// by one call at the end of the backward pass (each call of the kernel allocates its task
// list, so one call instead of one per node).
constexpr index_t kMeasureNow = index_t(1) << 15;

template <class T>
void Plan<T>::measure(index_t t, index_t t2) {
  GradView v[2];
  index_t ids[2], k = 0;
  for (index_t i : {t, t2}) {
    if (i < 0) continue;
    const index_t lo = offsets_[i], size = offsets_[i + 1] - lo;
    const GradView g{grad_ + lo, size, sizeof(T) == sizeof(double), nullptr};
    if (size < kMeasureNow) {
      pending_ids_[static_cast<size_t>(n_pending_++)] = i;
    } else {
      v[k] = g;
      ids[k++] = i;
    }
  }
  if (k > 0) measure_views(v, ids, k);
}

template <class T>
void Plan<T>::measure_views(const GradView* v, const index_t* ids, index_t k) {
  double out[2];
  for (index_t a = 0; a < k; a += 2) {  // the out buffer on the stack holds two
    const index_t m = std::min<index_t>(2, k - a);
    // with statistics on, the same read gives the gradient columns of the optimizer's rows
    double raw[2 * 3];
    const bool rows = stats_on_ && opt_out_;
    const std::int64_t bad = sum_of_squares(v + a, m, out, /*double_lanes=*/true, rows ? raw : nullptr, 3);
    for (index_t j = 0; j < m; ++j) sumsq_[ids[a + j]] = out[j];
    if (rows)
      for (index_t j = 0; j < m; ++j)
        std::copy(raw + 3 * j, raw + 3 * j + 3, opt_out_ + ids[a + j] * kOptStatCols + kGradSumSq);
    if (bad >= 0 && (bad_ < 0 || ids[a + bad] < bad_)) bad_ = ids[a + bad];
  }
}

template <class T>
void Plan<T>::flush_measures() {
  if (n_pending_ == 0) return;
  // in tensor order, so the first non-finite array the kernel reports is the lowest index
  std::sort(pending_ids_.begin(), pending_ids_.begin() + n_pending_);
  for (index_t j = 0; j < n_pending_; ++j) {
    const index_t i = pending_ids_[static_cast<size_t>(j)], lo = offsets_[i];
    pending_views_[static_cast<size_t>(j)] = GradView{grad_ + lo, offsets_[i + 1] - lo, sizeof(T) == sizeof(double), nullptr};
  }
  const bool rows = stats_on_ && opt_out_;
  const std::int64_t bad = sum_of_squares(pending_views_.data(), n_pending_, pending_out_.data(), /*double_lanes=*/true,
                                          rows ? pending_raw_.data() : nullptr, 3);
  for (index_t j = 0; j < n_pending_; ++j) sumsq_[pending_ids_[static_cast<size_t>(j)]] = pending_out_[static_cast<size_t>(j)];
  if (rows)
    for (index_t j = 0; j < n_pending_; ++j)
      std::copy(pending_raw_.data() + 3 * j, pending_raw_.data() + 3 * j + 3,
                opt_out_ + pending_ids_[static_cast<size_t>(j)] * kOptStatCols + kGradSumSq);
  if (bad >= 0) {
    const index_t id = pending_ids_[static_cast<size_t>(bad)];
    if (bad_ < 0 || id < bad_) bad_ = id;
  }
  n_pending_ = 0;
}

template <class T>
void Plan<T>::backward(Workspace& ws, double scale, bool accumulate) {
  const index_t B = ws.batch;
  const int nn = num_nodes();
  std::fill(has_g_.begin(), has_g_.end(), std::uint8_t(0));
  if (loss_src_ >= 0) has_g_[static_cast<size_t>(loss_src_)] = 1;
  // Where a node writes the gradient of source s: s's own buffer for the first
  // contribution, the scratch for a later one (added afterwards, as run_backward's prev + pg).
  auto dest = [&](int s) -> T* {
    if (s < 0) return nullptr;
    return has_g_[static_cast<size_t>(s)] ? ws.scratch : ws.bufs[static_cast<size_t>(s)].g;
  };
  auto commit = [&](int s) {
    if (s < 0) return;
    Bufs& b = ws.bufs[static_cast<size_t>(s)];
    if (has_g_[static_cast<size_t>(s)]) {
      const index_t n = B * nodes_[static_cast<size_t>(s)].width;
      for (index_t e = 0; e < n; ++e) b.g[e] = b.g[e] + ws.scratch[e];
    }
    has_g_[static_cast<size_t>(s)] = 1;
  };
  T* const sw = pscratch_.data();
  const size_t half = pscratch_.size() / 2;
  T* const sb = sw + half;
  // the parameter gradient goes straight into the flat view, or (accumulating) into the
  // scratch and is then added: leaf.grad += g
  auto target = [&](T* view, T* scratch) -> T* { return view ? (accumulate ? scratch : view) : nullptr; };
  auto land = [&](index_t t, T* view, const T* scratch) {
    if (t < 0 || !accumulate) return;
    const index_t size = offsets_[t + 1] - offsets_[t];
    for (index_t e = 0; e < size; ++e) view[e] = view[e] + scratch[e];
  };
  for (int i = nn - 1; i >= 0; --i) {
    const PlanNode<T>& N = nodes_[static_cast<size_t>(i)];
    const index_t tw = tensors_[2 * static_cast<size_t>(i)], tb = tensors_[2 * static_cast<size_t>(i) + 1];
    if (!has_g_[static_cast<size_t>(i)]) {  // not on a path to the loss: no gradient
      for (auto [t, view] : {std::pair<index_t, T*>{tw, N.dW}, std::pair<index_t, T*>{tb, N.db}}) {
        if (t < 0 || accumulate) continue;
        std::memset(view, 0, sizeof(T) * static_cast<size_t>(offsets_[t + 1] - offsets_[t]));
      }
      measure(tw, tb);
      continue;
    }
    Bufs& o = ws.bufs[static_cast<size_t>(i)];
    const T* Xin = src_out(N.src, x_, ws);  // the node's forward input
    const index_t w = N.width, n = B * w;
    T* G = o.g;
    T* dX = dest(N.src);
    // a fused ReLU takes its dz (and its source's, when it is the only consumer) in its pass
    const bool relu_pass = stats_on_ && dX && dX == ws.bufs[static_cast<size_t>(N.src)].g && relu_fused(relu_bwd_, i, B);
    if (stats_on_ && N.op != PlanOp::dense && !relu_pass) node_dz_stats(i, G, n);
    switch (N.op) {
      case PlanOp::dense: {
        // Accumulating, the weight GEMM adds into the flat view itself (beta = 1): no zeroed
        // scratch and no land pass over dW (dense_backward_dw: the same sum as leaf.grad += g
        // while the BLAS sums the batch in one k block). With an L2 penalty, whose gradient
        // eager adds to the layer's before the leaf's sum, dW goes through the scratch.
        const bool dw_in_view = accumulate && N.dW && !(N.l2 > 0);
        T* dW = dw_in_view ? nullptr : target(N.dW, sw);
        T* db = target(N.db, sb);
        if (N.act != Act::identity && db) {
          // the activation's gradient and the bias gradient in one pass over G (the same
          // values as the two passes below), then the dz statistics and the GEMMs, which
          // only read G (it holds the whole dz when the fused pass returns)
          dense_act_backward_bias<T>(N.act, o.z, o.y, G, db, B, w, N.alpha);
          db = nullptr;
        } else if (N.act != Act::identity) {
          activation_backward<T>(N.act, o.z, o.y, G, G, n, N.alpha);
        }
        if (stats_on_) node_dz_stats(i, G, n);
        dense_backward<T>(Xin, N.W, G, dX, dW, db, B, N.in_width, w, false, dx_buf_.data(),
                          static_cast<index_t>(dx_buf_.size()));
        if (dw_in_view) dense_backward_dw<T>(Xin, G, N.dW, B, N.in_width, w, true);
        if (dW && N.l2 > 0) {
          // the penalty's gradient: G * w from each factor of w * w, added after the
          // layer's (run_backward's order), G = weight * l2 in T
          const T gl = static_cast<T>(static_cast<T>(scale) * static_cast<T>(N.l2));
          const index_t size = w * N.in_width;
          for (index_t e = 0; e < size; ++e) {
            const T r = gl * N.W[e];
            dW[e] = (dW[e] + r) + r;
          }
        }
        commit(N.src);
        if (!dw_in_view) land(tw, N.dW, sw);
        land(tb, N.db, sb);
        break;
      }
      case PlanOp::activation:
        if (relu_pass) {
          const size_t j = static_cast<size_t>(N.src);
          const int ri = dz_row_[static_cast<size_t>(i)];
          double* out_g = ri >= 0 ? dz_out_ + static_cast<index_t>(ri) * kStatCols : nullptr;
          double* out_dx = dz_by_relu_[j] ? dz_out_ + static_cast<index_t>(dz_row_[j]) * kStatCols : nullptr;
          relu_backward_stats<T>(Xin, G, dX, n, out_g, out_dx);
          if (out_dx) dz_done_[j] = 1;
        } else if (dX) {
          activation_backward<T>(N.act, Xin, o.y, G, dX, n, N.alpha);
        }
        commit(N.src);
        break;
      case PlanOp::softmax:
        if (dX) {
          if (N.log) log_softmax_backward<T>(o.y, G, dX, B, w);
          else softmax_backward<T>(o.y, G, dX, B, w);
        }
        commit(N.src);
        break;
      case PlanOp::prelu: {
        T* da = target(N.dW, sw);
        prelu_backward<T>(Xin, N.W, G, dX, da, B, w, N.a_size, false);
        commit(N.src);
        land(tw, N.dW, sw);
        break;
      }
      case PlanOp::batchnorm: {
        T* dg = target(N.dW, sw);
        T* dbeta = target(N.db, sb);
        batch_norm_backward<T>(Xin, G, N.W, o.mean, o.invstd, dX, dg, dbeta, B, w, true, false);
        commit(N.src);
        land(tw, N.dW, sw);
        land(tb, N.db, sb);
        break;
      }
      case PlanOp::layernorm: {
        T* dg = target(N.dW, sw);
        T* dbeta = target(N.db, sb);
        layer_norm_backward<T>(Xin, G, N.W, o.mean, o.invstd, dX, dg, dbeta, B, w, false);
        commit(N.src);
        land(tw, N.dW, sw);
        land(tb, N.db, sb);
        break;
      }
      case PlanOp::dropout:
        if (dX) {
          if (N.p == 0) std::memcpy(dX, G, sizeof(T) * static_cast<size_t>(n));
          else if (N.p == 1) for (index_t e = 0; e < n; ++e) dX[e] = G[e] * T(0);
          else dropout_backward<T>(G, o.mask, dX, n, N.p);
        }
        commit(N.src);
        break;
      case PlanOp::add:
        if (dX) std::memcpy(dX, G, sizeof(T) * static_cast<size_t>(n));
        commit(N.src);
        {
          T* dX2 = dest(N.src2);
          if (dX2) std::memcpy(dX2, G, sizeof(T) * static_cast<size_t>(n));
          commit(N.src2);
        }
        break;
    }
    measure(tw, tb);  // the node's parameter gradients, while they are in cache
  }
  for (index_t t : uncovered_) {
    if (!accumulate) std::memset(grad_ + offsets_[t], 0, sizeof(T) * static_cast<size_t>(offsets_[t + 1] - offsets_[t]));
    measure(t, -1);
  }
  flush_measures();
}

// ---------------------------------------------------------------------- runs
template <class T>
double Plan<T>::forward_backward(const T* x, const void* y, index_t batch, const std::uint64_t* seeds, double scale,
                                 bool accumulate) {
  finalize();
  Workspace& ws = workspace(batch);
  if (n_batchnorm_ > 0) {
    if (!accumulate) snapshot_bn(0);
    snapshot_bn(1);
  }
  bad_ = -1;
  grads_ready_ = false;
  x_ = x;
  ws.ran = false;
  if (stats_on_) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const size_t rows = stat_mode_.size();
    std::fill(act_out_, act_out_ + rows * kActStatCols, nan);
    std::fill(dz_out_, dz_out_ + rows * kStatCols, nan);
    if (opt_out_) std::fill(opt_out_, opt_out_ + static_cast<size_t>(k_) * kOptStatCols, nan);
    if (params_on_) std::fill(param_out_, param_out_ + static_cast<size_t>(k_) * kStatCols, nan);
    std::fill(dz_done_.begin(), dz_done_.end(), std::uint8_t(0));
  }
  forward(x, ws, seeds);
  double value;
  try {
    value = loss(y, ws, scale);
  } catch (...) {
    if (n_batchnorm_ > 0) restore_bn(1);
    throw;
  }
  const double reg = regularization();
  if (reg != 0.0 || std::signbit(reg)) value = static_cast<double>(static_cast<T>(static_cast<T>(value) + static_cast<T>(reg)));
  backward(ws, scale, accumulate);
  ws.ran = true;
  grads_ready_ = true;
  return value;
}

template <class T>
PlanStepResult Plan<T>::apply_update(const double* h, double clip_value, double clip_norm, double global_clip_norm) {
  if (!grads_ready_)
    throw std::invalid_argument("Plan.apply_update: no complete forward_backward since the plan was built or "
                                "since a run failed: there is no gradient to apply");
  PlanStepResult r{std::numeric_limits<double>::quiet_NaN(), 0.0, bad_, 1.0};
  if (bad_ >= 0) {  // nothing written; the BatchNorm statistics go back to before the group
    double raw = 0;
    for (index_t i = 0; i < k_; ++i) raw += sumsq_[i];
    r.norm = std::sqrt(raw);
    restore_bn(0);
    if (stats_on_ && opt_out_) {  // nothing written: the parameters as they are, no update
      for (index_t t = 0; t < k_; ++t) {
        const GradView v{param_ + offsets_[t], offsets_[t + 1] - offsets_[t], sizeof(T) == sizeof(double), nullptr};
        double* row = opt_out_ + t * kOptStatCols;
        sum_of_squares(&v, 1, &row[kParamSumSq], /*double_lanes=*/true);
        row[kUpdateSumSq] = 0;
      }
    }
    return r;
  }
  double* st = stats_on_ ? opt_out_ : nullptr;  // the update pass's parameter columns
  r.norm = clip_scales(sumsq_, k_, clip_norm, global_clip_norm, scales_);
  if (global_clip_norm > 0) {
    double coef;
    if (clip_norm > 0) {
      // optimizer.clip_scales (Python): the norm of the per-tensor-clipped norms
      const double post2 = np_sum<double>(
          [&](index_t i) {
            const double nm = std::sqrt(sumsq_[i]);
            const double s = nm > clip_norm ? clip_norm / nm : 1.0;
            return (s * nm) * (s * nm);
          },
          k_);
      coef = global_clip_norm / (std::sqrt(post2) + 1e-6);
    } else {
      coef = global_clip_norm / (r.norm + 1e-6);
    }
    r.clip_coef = coef < 1.0 ? coef : 1.0;
  }
  const FlatLayout L{offsets_, k_};
  ClipOptions c;
  c.clip_value = clip_value;
  c.clip_norm = clip_norm;
  c.global_clip_norm = global_clip_norm;
  c.compute_scales = false;
  switch (opt_) {
    case PlanOpt::sgd: {
      const SgdHyper hy{h[0], h[1], h[2], h[3], h[4] != 0, h[5] != 0};
      sgd_step<T>(param_, grad_, nullptr, state_[0], L, sumsq_, scales_, hy, c, st);
      break;
    }
    case PlanOpt::adam: {
      const AdamHyper hy{h[0], h[1], h[2], h[3], h[4], h[5] != 0, h[6], h[7]};
      adam_step<T>(param_, grad_, nullptr, state_[0], state_[1], state_[2], L, sumsq_, scales_, hy, c, st);
      break;
    }
    case PlanOpt::rmsprop: {
      const RmspropHyper hy{h[0], h[1], h[2], h[3], h[4]};
      rmsprop_step<T>(param_, grad_, nullptr, state_[0], state_[1], state_[2], L, sumsq_, scales_, hy, c, st);
      break;
    }
    case PlanOpt::adagrad: {
      const AdagradHyper hy{h[0], h[1], h[2]};
      adagrad_step<T>(param_, grad_, nullptr, state_[0], L, sumsq_, scales_, hy, c, st);
      break;
    }
    default:
      throw std::invalid_argument("Plan: set_optimizer was not called");
  }
  return r;
}

template class Plan<float>;
template class Plan<double>;

}  // namespace gc
