// Python bindings of the fused optimizer steps (csrc/optim.h). Every array is a flat 1-D
// buffer of one dtype (the parameter's), written in place; offsets (int64, k + 1) mark the
// tensors; sumsq and scales (float64, k) receive the per-tensor sums of squares and clip
// scales. Each step returns (pre_clip_global_norm, bad_tensor): bad_tensor >= 0 means a
// gradient held NaN or Inf and nothing was written. stats (None or float64 (k, 5), or (k, 6)
// for the column param_sumsq_before too) turns on the step's statistics (optim.h).
#include <algorithm>
#include <utility>
#include <vector>

#include "bind_common.h"
#include "optim.h"

namespace gc {

namespace {

struct Layout {
  FlatLayout flat;
  double* sumsq;
  double* scales;
};

// Written buffers must not overlap, or one update would read another's output.
class WrittenSet {
 public:
  explicit WrittenSet(std::string op) : op_(std::move(op)) {}
  void add(const char* name, const py::array& a) {
    const char* lo = static_cast<const char*>(a.data());
    const char* hi = lo + a.nbytes();
    for (const auto& r : ranges_)
      if (lo < r.hi && r.lo < hi && a.nbytes() > 0)
        fail(op_, std::string(name) + " and " + r.name + " share memory; every written buffer must be its own array");
    ranges_.push_back({name, lo, hi});
  }

 private:
  struct Range {
    const char* name;
    const char* lo;
    const char* hi;
  };
  std::string op_;
  std::vector<Range> ranges_;
};

// `buffer` names the flat buffer whose size the offsets must end at, in the messages.
FlatLayout take_offsets(const std::string& op, const py::array& offsets, py::ssize_t n, const char* buffer) {
  const std::int64_t* off = flat_offsets(op, offsets, n, buffer);
  return {off, static_cast<index_t>(offsets.size() - 1)};
}

double* take_per_tensor(const std::string& op, const char* name, py::array& a, index_t k, WrittenSet& written) {
  expect_size(op, name, a, k);
  double* p = out_ptr<double>(op, name, a);
  written.add(name, a);
  return p;
}

Layout take_layout(const std::string& op, const py::array& offsets, py::array& sumsq, py::array& scales, py::ssize_t n,
                   const char* buffer, WrittenSet& written) {
  const FlatLayout flat = take_offsets(op, offsets, n, buffer);
  double* ss = take_per_tensor(op, "sumsq", sumsq, flat.k, written);
  double* sc = take_per_tensor(op, "scales", scales, flat.k, written);
  return {flat, ss, sc};
}

ClipOptions clip_options(const std::string& op, double clip_value, double clip_norm, double global_clip_norm,
                         bool compute_scales) {
  if (clip_value < 0 || clip_norm < 0 || global_clip_norm < 0)
    fail(op, "clip_value, clip_norm and global_clip_norm must be >= 0 (0 turns them off)");
  ClipOptions c;
  c.clip_value = clip_value;
  c.clip_norm = clip_norm;
  c.global_clip_norm = global_clip_norm;
  c.compute_scales = compute_scales;
  return c;
}

template <class T>
T* state_ptr(const std::string& op, const char* name, py::array& a, py::ssize_t n, WrittenSet& written) {
  expect_size(op, name, a, n);
  T* p = out_ptr<T>(op, name, a);
  written.add(name, a);
  return p;
}

// Optional state buffer: None or an array of n elements.
template <class T>
T* opt_state_ptr(const std::string& op, const char* name, const py::object& o, py::array& keep, py::ssize_t n,
                 WrittenSet& written) {
  if (!present(o)) return nullptr;
  keep = as_ndarray(op, name, o, true);
  return state_ptr<T>(op, name, keep, n, written);
}

template <class T>
const T* noise_ptr(const std::string& op, const py::object& o, py::array& keep, py::ssize_t n) {
  if (!present(o)) return nullptr;
  keep = as_ndarray(op, "noise", o, true);
  expect_size(op, "noise", keep, n);
  return in_ptr<T>(op, "noise", keep);
}

// Optional statistics output: None or a writable C-contiguous float64 (k, kOptStatCols), or
// (k, kOptStatColsBefore) with the column param_sumsq_before too: the table and its width.
struct StatsOut {
  double* table = nullptr;
  index_t cols = kOptStatCols;
};

StatsOut stats_ptr(const std::string& op, const py::object& o, py::array& keep, index_t k, WrittenSet& written) {
  StatsOut out;
  if (!present(o)) return out;
  keep = as_ndarray(op, "stats", o, true);
  if (keep.ndim() != 2 || keep.shape(0) != k ||
      (keep.shape(1) != kOptStatCols && keep.shape(1) != kOptStatColsBefore))
    fail(op, "stats must be a float64 array of shape (" + std::to_string(k) + ", " + std::to_string(kOptStatCols) +
                 ") or (" + std::to_string(k) + ", " + std::to_string(kOptStatColsBefore) + "), got shape " +
                 shape_str(keep));
  out.table = out_ptr<double>(op, "stats", keep);
  out.cols = static_cast<index_t>(keep.shape(1));
  written.add("stats", keep);
  return out;
}

// stats_updates: 0 (False) the grad columns (and the column before), 1 (True) every column
// of the table, 2 update_sumsq and the column before without param_sumsq_after (optim.h).
void check_stats_updates(const std::string& op, int stats_updates) {
  if (stats_updates < 0 || stats_updates > 2)
    fail(op, "stats_updates must be False (0), True (1) or 2 (the update and the column before, not the "
             "parameters after), got " + std::to_string(stats_updates));
}

py::tuple result(const StepResult& r) { return py::make_tuple(r.norm, static_cast<long long>(r.bad_tensor)); }

// ---------------------------------------------------------------------- per-op implementations
template <class T>
py::tuple clip_impl(py::array& grad, const py::array& offsets, py::array& sumsq, py::array& scales, const ClipOptions& c) {
  const std::string op = "clip_grads";
  WrittenSet w(op);
  const py::ssize_t n = grad.size();
  T* g = state_ptr<T>(op, "grad", grad, n, w);
  Layout L = take_layout(op, offsets, sumsq, scales, n, "grad", w);
  StepResult r;
  {
    py::gil_scoped_release nogil;
    r = clip_grads<T>(g, L.flat, L.sumsq, L.scales, c);
  }
  return result(r);
}

template <class T>
py::tuple sgd_impl(py::array& param, const py::array& grad, const py::object& buf, const py::array& offsets,
                   py::array& sumsq, py::array& scales, const SgdHyper& h, const ClipOptions& c,
                   const py::object& noise, const py::object& stats,
                   int stats_updates) {
  const std::string op = "sgd_step";
  check_stats_updates(op, stats_updates);
  WrittenSet w(op);
  const py::ssize_t n = param.size();
  T* p = state_ptr<T>(op, "param", param, n, w);
  expect_size(op, "grad", grad, n);
  const T* g = in_ptr<T>(op, "grad", grad);
  py::array keep_buf, keep_noise;
  T* b = opt_state_ptr<T>(op, "momentum_buffer", buf, keep_buf, n, w);
  if (!b && h.momentum != 0) fail(op, "momentum != 0 needs a momentum_buffer array");
  const T* nz = noise_ptr<T>(op, noise, keep_noise, n);
  Layout L = take_layout(op, offsets, sumsq, scales, n, "param", w);
  py::array keep_stats;
  const StatsOut st = stats_ptr(op, stats, keep_stats, L.flat.k, w);
  StepResult r;
  {
    py::gil_scoped_release nogil;
    r = sgd_step<T>(p, g, nz, b, L.flat, L.sumsq, L.scales, h, c, st.table, stats_updates, st.cols);
  }
  return result(r);
}

template <class T>
py::tuple adam_impl(py::array& param, const py::array& grad, py::array& m, py::array& v, const py::object& vmax,
                    const py::array& offsets, py::array& sumsq, py::array& scales, const AdamHyper& h,
                    const ClipOptions& c, const py::object& noise, const py::object& stats,
                   int stats_updates) {
  const std::string op = "adam_step";
  check_stats_updates(op, stats_updates);
  WrittenSet w(op);
  const py::ssize_t n = param.size();
  T* p = state_ptr<T>(op, "param", param, n, w);
  expect_size(op, "grad", grad, n);
  const T* g = in_ptr<T>(op, "grad", grad);
  T* mp = state_ptr<T>(op, "m", m, n, w);
  T* vp = state_ptr<T>(op, "v", v, n, w);
  py::array keep_vmax, keep_noise;
  T* vm = opt_state_ptr<T>(op, "v_max", vmax, keep_vmax, n, w);
  const T* nz = noise_ptr<T>(op, noise, keep_noise, n);
  Layout L = take_layout(op, offsets, sumsq, scales, n, "param", w);
  if (!(h.bias_correction1 > 0 && h.bias_correction1 <= 1 && h.bias_correction2 > 0 && h.bias_correction2 <= 1))
    fail(op, "bias corrections must be in (0, 1], got " + std::to_string(h.bias_correction1) + " and " +
                 std::to_string(h.bias_correction2));
  py::array keep_stats;
  const StatsOut st = stats_ptr(op, stats, keep_stats, L.flat.k, w);
  StepResult r;
  {
    py::gil_scoped_release nogil;
    r = adam_step<T>(p, g, nz, mp, vp, vm, L.flat, L.sumsq, L.scales, h, c, st.table, stats_updates, st.cols);
  }
  return result(r);
}

template <class T>
py::tuple rmsprop_impl(py::array& param, const py::array& grad, py::array& square_avg, const py::object& grad_avg,
                       const py::object& buf, const py::array& offsets, py::array& sumsq, py::array& scales,
                       const RmspropHyper& h, const ClipOptions& c, const py::object& noise,
                       const py::object& stats, int stats_updates) {
  const std::string op = "rmsprop_step";
  check_stats_updates(op, stats_updates);
  WrittenSet w(op);
  const py::ssize_t n = param.size();
  T* p = state_ptr<T>(op, "param", param, n, w);
  expect_size(op, "grad", grad, n);
  const T* g = in_ptr<T>(op, "grad", grad);
  T* sq = state_ptr<T>(op, "square_avg", square_avg, n, w);
  py::array keep_ga, keep_buf, keep_noise;
  T* ga = opt_state_ptr<T>(op, "grad_avg", grad_avg, keep_ga, n, w);
  T* b = opt_state_ptr<T>(op, "momentum_buffer", buf, keep_buf, n, w);
  if (!b && h.momentum != 0) fail(op, "momentum != 0 needs a momentum_buffer array");
  const T* nz = noise_ptr<T>(op, noise, keep_noise, n);
  Layout L = take_layout(op, offsets, sumsq, scales, n, "param", w);
  py::array keep_stats;
  const StatsOut st = stats_ptr(op, stats, keep_stats, L.flat.k, w);
  StepResult r;
  {
    py::gil_scoped_release nogil;
    r = rmsprop_step<T>(p, g, nz, sq, ga, b, L.flat, L.sumsq, L.scales, h, c, st.table, stats_updates, st.cols);
  }
  return result(r);
}

template <class T>
py::tuple adagrad_impl(py::array& param, const py::array& grad, py::array& state_sum, const py::array& offsets,
                       py::array& sumsq, py::array& scales, const AdagradHyper& h, const ClipOptions& c,
                       const py::object& noise, const py::object& stats,
                   int stats_updates) {
  const std::string op = "adagrad_step";
  check_stats_updates(op, stats_updates);
  WrittenSet w(op);
  const py::ssize_t n = param.size();
  T* p = state_ptr<T>(op, "param", param, n, w);
  expect_size(op, "grad", grad, n);
  const T* g = in_ptr<T>(op, "grad", grad);
  T* s = state_ptr<T>(op, "state_sum", state_sum, n, w);
  py::array keep_noise;
  const T* nz = noise_ptr<T>(op, noise, keep_noise, n);
  Layout L = take_layout(op, offsets, sumsq, scales, n, "param", w);
  py::array keep_stats;
  const StatsOut st = stats_ptr(op, stats, keep_stats, L.flat.k, w);
  StepResult r;
  {
    py::gil_scoped_release nogil;
    r = adagrad_step<T>(p, g, nz, s, L.flat, L.sumsq, L.scales, h, c, st.table, stats_updates, st.cols);
  }
  return result(r);
}

template <class T>
long long sumsq_impl(const py::array& grad, const py::array& offsets, py::array& sumsq, const py::object& noise,
                     const py::object& stats) {
  const std::string op = "grad_sumsq";
  const py::ssize_t n = grad.size();
  const T* g = in_ptr<T>(op, "grad", grad);
  py::array keep_noise;
  const T* nz = noise_ptr<T>(op, noise, keep_noise, n);
  WrittenSet w(op);
  const FlatLayout flat = take_offsets(op, offsets, n, "grad");
  double* ss = take_per_tensor(op, "sumsq", sumsq, flat.k, w);
  py::array keep_stats;
  const StatsOut st = stats_ptr(op, stats, keep_stats, flat.k, w);
  std::int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = grad_sumsq<T>(g, nz, flat, ss, st.table, st.cols);
  }
  return static_cast<long long>(bad);
}

}  // namespace

void bind_optim(py::module_& m) {
  using py::arg;

  // Whether the optimizer steps' update passes flush denormals to zero (optim.h): x86-64.
  m.attr("OPTIM_FLUSHES_DENORMALS") = py::bool_(optim_flushes_denormals());

  m.def(
      "grad_sumsq",
      [](const py::array& grad, const py::array& offsets, py::array sumsq, const py::object& noise,
         const py::object& stats) {
        if (dtype_of("grad_sumsq", "grad", grad) == DType::f32)
          return sumsq_impl<float>(grad, offsets, sumsq, noise, stats);
        return sumsq_impl<double>(grad, offsets, sumsq, noise, stats);
      },
      arg("grad"), arg("offsets"), arg("sumsq"), arg("noise") = py::none(), arg("stats") = py::none(),
      "Per-tensor sums of squares of grad (+ noise) into sumsq (float64, k), accumulated in double.\n"
      "stats (float64 (k, 5) or (k, 6), or None): columns 0-2 receive grad's own [sum of squares, max |g| over the\n"
      "finite values, non-finite count] (without the noise). Returns the index of the first tensor\n"
      "holding a NaN or Inf, or -1.");

  m.def(
      "clip_scales",
      [](py::array sumsq, py::array scales, double clip_norm, double global_clip_norm) {
        const std::string op = "clip_scales";
        const double* ss = in_ptr<double>(op, "sumsq", sumsq);
        expect_size(op, "scales", scales, sumsq.size());
        double* sc = out_ptr<double>(op, "scales", scales);
        if (clip_norm < 0 || global_clip_norm < 0) fail(op, "clip_norm and global_clip_norm must be >= 0");
        return clip_scales(ss, static_cast<index_t>(sumsq.size()), clip_norm, global_clip_norm, sc);
      },
      arg("sumsq"), arg("scales"), arg("clip_norm") = 0.0, arg("global_clip_norm") = 0.0,
      "Per-tensor gradient scales from per-tensor sums of squares: clip_norm / max(norm_i, clip_norm) when\n"
      "clip_norm > 0, times min(1, global_clip_norm / (total + 1e-6)) with total the norm of the clipped\n"
      "per-tensor norms. Returns the pre-clip global norm.");

  m.def(
      "clip_grads",
      [](py::array grad, const py::array& offsets, py::array sumsq, py::array scales, double clip_value,
         double clip_norm, double global_clip_norm, bool compute_scales) {
        const ClipOptions c = clip_options("clip_grads", clip_value, clip_norm, global_clip_norm, compute_scales);
        if (dtype_of("clip_grads", "grad", grad) == DType::f32) return clip_impl<float>(grad, offsets, sumsq, scales, c);
        return clip_impl<double>(grad, offsets, sumsq, scales, c);
      },
      arg("grad"), arg("offsets"), arg("sumsq"), arg("scales"), py::kw_only(), arg("clip_value") = 0.0,
      arg("clip_norm") = 0.0, arg("global_clip_norm") = 0.0, arg("compute_scales") = true,
      "In place: grad = clamp(grad * scale_i, -clip_value, clip_value). Returns (pre_clip_norm, bad_tensor).");

  m.def(
      "sgd_step",
      [](py::array param, const py::array& grad, const py::object& momentum_buffer, const py::array& offsets,
         py::array sumsq, py::array scales, double lr, double momentum, double dampening, double weight_decay,
         bool nesterov, bool init_buffer, double clip_value, double clip_norm, double global_clip_norm,
         const py::object& noise, bool compute_scales, const py::object& stats,
         int stats_updates) {
        const ClipOptions c = clip_options("sgd_step", clip_value, clip_norm, global_clip_norm, compute_scales);
        const SgdHyper h{lr, momentum, dampening, weight_decay, nesterov, init_buffer};
        if (dtype_of("sgd_step", "param", param) == DType::f32)
          return sgd_impl<float>(param, grad, momentum_buffer, offsets, sumsq, scales, h, c, noise, stats,
                                 stats_updates);
        return sgd_impl<double>(param, grad, momentum_buffer, offsets, sumsq, scales, h, c, noise, stats,
                                stats_updates);
      },
      // positional or keyword, as adam_step (the eager SGD passes every argument positionally)
      arg("param"), arg("grad"), arg("momentum_buffer"), arg("offsets"), arg("sumsq"), arg("scales"),
      arg("lr"), arg("momentum") = 0.0, arg("dampening") = 0.0, arg("weight_decay") = 0.0, arg("nesterov") = false,
      arg("init_buffer") = false, arg("clip_value") = 0.0, arg("clip_norm") = 0.0, arg("global_clip_norm") = 0.0,
      arg("noise") = py::none(), arg("compute_scales") = true,
      arg("stats") = py::none(), arg("stats_updates") = 1,
      "Fused SGD step (PyTorch's torch.optim.SGD formula) in place. Returns (pre_clip_norm, bad_tensor).");

  m.def(
      "adam_step",
      [](py::array param, const py::array& grad, py::array m_, py::array v, const py::object& v_max,
         const py::array& offsets, py::array sumsq, py::array scales, double lr, double beta1, double beta2, double eps,
         double weight_decay, bool decoupled, double bias_correction1, double bias_correction2, double clip_value,
         double clip_norm, double global_clip_norm, const py::object& noise, bool compute_scales,
         const py::object& stats,
         int stats_updates) {
        const ClipOptions c = clip_options("adam_step", clip_value, clip_norm, global_clip_norm, compute_scales);
        const AdamHyper h{lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2};
        if (dtype_of("adam_step", "param", param) == DType::f32)
          return adam_impl<float>(param, grad, m_, v, v_max, offsets, sumsq, scales, h, c, noise, stats, stats_updates);
        return adam_impl<double>(param, grad, m_, v, v_max, offsets, sumsq, scales, h, c, noise, stats, stats_updates);
      },
      // positional or keyword: the eager Adam passes every argument positionally, in this
      // order (pybind11 matches keywords by name one at a time: ~2 us a call for all of them)
      arg("param"), arg("grad"), arg("m"), arg("v"), arg("v_max"), arg("offsets"), arg("sumsq"), arg("scales"),
      arg("lr"), arg("beta1"), arg("beta2"), arg("eps"), arg("weight_decay") = 0.0,
      arg("decoupled") = false, arg("bias_correction1"), arg("bias_correction2"), arg("clip_value") = 0.0,
      arg("clip_norm") = 0.0, arg("global_clip_norm") = 0.0, arg("noise") = py::none(), arg("compute_scales") = true,
      arg("stats") = py::none(), arg("stats_updates") = 1,
      "Fused Adam / AdamW / AMSGrad step (PyTorch's form; v_max None turns AMSGrad off) in place.\n"
      "Returns (pre_clip_norm, bad_tensor).");

  m.def(
      "rmsprop_step",
      [](py::array param, const py::array& grad, py::array square_avg, const py::object& grad_avg,
         const py::object& momentum_buffer, const py::array& offsets, py::array sumsq, py::array scales, double lr,
         double alpha, double eps, double weight_decay, double momentum, double clip_value, double clip_norm,
         double global_clip_norm, const py::object& noise, bool compute_scales, const py::object& stats,
         int stats_updates) {
        const ClipOptions c = clip_options("rmsprop_step", clip_value, clip_norm, global_clip_norm, compute_scales);
        const RmspropHyper h{lr, alpha, eps, weight_decay, momentum};
        if (dtype_of("rmsprop_step", "param", param) == DType::f32)
          return rmsprop_impl<float>(param, grad, square_avg, grad_avg, momentum_buffer, offsets, sumsq, scales, h, c,
                                     noise, stats, stats_updates);
        return rmsprop_impl<double>(param, grad, square_avg, grad_avg, momentum_buffer, offsets, sumsq, scales, h, c,
                                    noise, stats, stats_updates);
      },
      arg("param"), arg("grad"), arg("square_avg"), arg("grad_avg"), arg("momentum_buffer"), arg("offsets"),
      arg("sumsq"), arg("scales"), py::kw_only(), arg("lr"), arg("alpha"), arg("eps"), arg("weight_decay") = 0.0,
      arg("momentum") = 0.0, arg("clip_value") = 0.0, arg("clip_norm") = 0.0, arg("global_clip_norm") = 0.0,
      arg("noise") = py::none(), arg("compute_scales") = true,
      arg("stats") = py::none(), arg("stats_updates") = 1,
      "Fused RMSprop step (PyTorch's formula; grad_avg None: not centered) in place.\n"
      "Returns (pre_clip_norm, bad_tensor).");

  m.def(
      "adagrad_step",
      [](py::array param, const py::array& grad, py::array state_sum, const py::array& offsets, py::array sumsq,
         py::array scales, double lr, double eps, double weight_decay, double clip_value, double clip_norm,
         double global_clip_norm, const py::object& noise, bool compute_scales, const py::object& stats,
         int stats_updates) {
        const ClipOptions c = clip_options("adagrad_step", clip_value, clip_norm, global_clip_norm, compute_scales);
        const AdagradHyper h{lr, eps, weight_decay};
        if (dtype_of("adagrad_step", "param", param) == DType::f32)
          return adagrad_impl<float>(param, grad, state_sum, offsets, sumsq, scales, h, c, noise, stats, stats_updates);
        return adagrad_impl<double>(param, grad, state_sum, offsets, sumsq, scales, h, c, noise, stats, stats_updates);
      },
      arg("param"), arg("grad"), arg("state_sum"), arg("offsets"), arg("sumsq"), arg("scales"), py::kw_only(),
      arg("lr"), arg("eps"), arg("weight_decay") = 0.0, arg("clip_value") = 0.0, arg("clip_norm") = 0.0,
      arg("global_clip_norm") = 0.0, arg("noise") = py::none(), arg("compute_scales") = true,
      arg("stats") = py::none(), arg("stats_updates") = 1,
      "Fused Adagrad step in place; lr is the decayed rate lr / (1 + (t - 1) * lr_decay).\n"
      "Returns (pre_clip_norm, bad_tensor).");
}

}  // namespace gc
