// Python binding of the compiled training step (csrc/plan.h): gradcore._C.Plan.
//
// Building validates every array (dtype, shape, contiguity, writability) and keeps a
// reference to it, so the raw pointers the plan holds stay valid for its lifetime. Running
// validates x, y, seeds and the hyper-parameters before anything is touched, then releases
// the GIL for the whole step.
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <memory>
#include <string>
#include <vector>

#include "bind_common.h"
#include "norm.h"
#include "optim.h"
#include "plan.h"

namespace gc {

namespace {

std::string type_name(const py::handle& o) { return py::str(py::type::of(o).attr("__name__")).cast<std::string>(); }

[[noreturn]] void type_fail(const std::string& op, const std::string& msg) { throw py::type_error(op + ": " + msg); }

template <class T>
std::string tname() {
  return sizeof(T) == sizeof(double) ? "float64" : "float32";
}

// An array argument of the plan dtype (TypeError for another dtype / not an array).
template <class T>
py::array typed(const std::string& op, const char* name, const py::object& o, bool writable) {
  if (!py::isinstance<py::array>(o)) type_fail(op, std::string(name) + " must be a numpy.ndarray, got " + type_name(o));
  py::array a = py::reinterpret_borrow<py::array>(o);
  if (!has_dtype<T>(a))
    type_fail(op, std::string(name) + " must have the plan's dtype " + tname<T>() + ", got " + dtype_str(a));
  if (!(a.flags() & py::array::c_style)) fail(op, std::string(name) + " must be C-contiguous (a view the plan can bind)");
  if (writable && !a.writeable()) fail(op, std::string(name) + " is read-only but is written in place");
  return a;
}

double finite(const std::string& op, const char* name, double v) {
  if (!std::isfinite(v)) fail(op, std::string(name) + " must be finite, got " + std::to_string(v));
  return v;
}

// One run or rebuild at a time: a second thread calling into a running plan (the GIL is
// released) gets an error instead of a data race.
class Busy {
 public:
  Busy(std::atomic<bool>& flag, const char* op) : flag_(flag) {
    if (flag_.exchange(true))
      throw std::runtime_error(std::string("Plan.") + op + ": the plan is running in another thread");
  }
  ~Busy() { flag_.store(false); }

 private:
  std::atomic<bool>& flag_;
};

struct RunArgs {
  const void* x = nullptr;
  const void* y = nullptr;
  const std::uint64_t* seeds = nullptr;
};

class PyPlan {
 public:
  explicit PyPlan(const py::object& dtype) {
    py::dtype dt = py::dtype::from_args(dtype);
    if (dt.equal(py::dtype::of<float>())) {
      f32_ = true;
      pf_ = std::make_unique<Plan<float>>();
    } else if (dt.equal(py::dtype::of<double>())) {
      pd_ = std::make_unique<Plan<double>>();
    } else {
      type_fail("Plan", "dtype must be float32 or float64, got " + py::str(dt).cast<std::string>());
    }
  }

  template <class F>
  auto visit(F&& f) {
    if (f32_) return f(*pf_, float{});
    return f(*pd_, double{});
  }
  // visit while holding the plan (building and running)
  template <class F>
  auto locked(const char* op, F&& f) {
    Busy busy(busy_, op);
    return visit(std::forward<F>(f));
  }

  py::object dtype() const { return f32_ ? py::dtype::of<float>() : py::dtype::of<double>(); }

  void keep(const py::handle& o) {
    if (!o.is_none()) kept_.append(o);
  }

  // ------------------------------------------------------------------ nodes
  int dense(int src, const py::object& W, const py::object& b, const py::object& dW, const py::object& db,
            const std::string& act, double alpha, double l2) {
    return locked("dense", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      const std::string op = "Plan.dense";
      py::array w = typed<T>(op, "W", W, false);
      if (w.ndim() != 2) fail(op, "W must be 2-d (out, in), got shape " + shape_str(w));
      const auto out = w.shape(0), in = w.shape(1);
      if (out < 1 || in < 1) fail(op, "W must be non-empty, got shape " + shape_str(w));
      PlanNode<T> N;
      N.op = PlanOp::dense;
      N.src = src;
      N.width = out;
      N.in_width = in;
      N.W = static_cast<const T*>(w.data());
      if (!b.is_none()) {
        py::array ba = typed<T>(op, "b", b, false);
        expect_shape(op, "b", ba, {out});
        N.b = static_cast<const T*>(ba.data());
      }
      if (!dW.is_none()) {
        py::array a = typed<T>(op, "dW", dW, true);
        expect_shape(op, "dW", a, {out, in});
        N.dW = static_cast<T*>(a.mutable_data());
      }
      if (!db.is_none()) {
        if (b.is_none()) fail(op, "db is given but the layer has no bias (b is None)");
        py::array a = typed<T>(op, "db", db, true);
        expect_shape(op, "db", a, {out});
        N.db = static_cast<T*>(a.mutable_data());
      }
      N.act = parse_activation(act);
      N.alpha = finite(op, "alpha", alpha);
      if (!(l2 >= 0) || !std::isfinite(l2)) fail(op, "l2 must be a finite number >= 0, got " + std::to_string(l2));
      N.l2 = l2;
      const int id = plan.add_node(N);
      keep(W), keep(b), keep(dW), keep(db);
      return id;
    });
  }

  int activation(int src, const std::string& act, double alpha) {
    return locked("activation", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      PlanNode<T> N;
      N.op = PlanOp::activation;
      N.src = src;
      N.act = parse_activation(act);
      N.alpha = finite("Plan.activation", "alpha", alpha);
      return plan.add_node(N);
    });
  }

  int softmax(int src, bool log) {
    return locked("softmax", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      PlanNode<T> N;
      N.op = PlanOp::softmax;
      N.src = src;
      N.log = log;
      return plan.add_node(N);
    });
  }

  int prelu(int src, const py::object& a, const py::object& da) {
    return locked("prelu", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      const std::string op = "Plan.prelu";
      py::array aa = typed<T>(op, "a", a, false);
      if (aa.size() < 1) fail(op, "a must have at least one element");
      PlanNode<T> N;
      N.op = PlanOp::prelu;
      N.src = src;
      N.W = static_cast<const T*>(aa.data());
      N.a_size = aa.size();
      N.in_width = aa.size() > 1 ? aa.size() : -1;
      if (!da.is_none()) {
        py::array g = typed<T>(op, "da", da, true);
        if (g.size() != aa.size()) fail(op, "da must have " + std::to_string(aa.size()) + " elements like a, got shape " + shape_str(g));
        N.dW = static_cast<T*>(g.mutable_data());
      }
      const int id = plan.add_node(N);
      keep(a), keep(da);
      return id;
    });
  }

  int batchnorm(int src, const py::object& gamma, const py::object& beta, const py::object& dgamma,
                const py::object& dbeta, const py::object& running_mean, const py::object& running_var,
                const py::object& num_batches_tracked, const py::object& momentum, double eps) {
    return locked("batchnorm", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      const std::string op = "Plan.batchnorm";
      py::array rm = typed<T>(op, "running_mean", running_mean, true);
      if (rm.ndim() != 1 || rm.size() < 1) fail(op, "running_mean must be 1-d (features,), got shape " + shape_str(rm));
      const auto c = rm.shape(0);
      py::array rv = typed<T>(op, "running_var", running_var, true);
      expect_shape(op, "running_var", rv, {c});
      PlanNode<T> N;
      N.op = PlanOp::batchnorm;
      N.src = src;
      N.in_width = c;
      N.width = c;
      N.running_mean = static_cast<T*>(rm.mutable_data());
      N.running_var = static_cast<T*>(rv.mutable_data());
      auto param = [&](const py::object& o, const char* name, bool w) -> T* {
        if (o.is_none()) return nullptr;
        py::array a = typed<T>(op, name, o, w);
        expect_shape(op, name, a, {c});
        return static_cast<T*>(a.mutable_data());
      };
      N.W = param(gamma, "gamma", false);
      N.b = param(beta, "beta", false);
      N.dW = param(dgamma, "dgamma", true);
      N.db = param(dbeta, "dbeta", true);
      if ((dgamma.is_none() ? false : gamma.is_none()) || (dbeta.is_none() ? false : beta.is_none()))
        fail(op, "a gradient is given for a missing affine parameter");
      if (!py::isinstance<py::array>(num_batches_tracked))
        type_fail(op, "num_batches_tracked must be a 0-d int64 numpy.ndarray, got " + type_name(num_batches_tracked));
      py::array nbt = py::reinterpret_borrow<py::array>(num_batches_tracked);
      if (!has_dtype<std::int64_t>(nbt)) type_fail(op, "num_batches_tracked must have dtype int64, got " + dtype_str(nbt));
      if (nbt.size() != 1 || !nbt.writeable())
        fail(op, "num_batches_tracked must be a writeable one-element int64 array, got shape " + shape_str(nbt));
      N.num_batches_tracked = static_cast<std::int64_t*>(nbt.mutable_data());
      if (momentum.is_none()) {
        N.cumulative = true;
      } else {
        const double m = momentum.cast<double>();
        if (!(m >= 0 && m <= 1)) fail(op, "momentum must be in [0, 1] or None, got " + std::to_string(m));
        N.momentum = m;
      }
      if (!(eps > 0) || !std::isfinite(eps)) fail(op, "eps must be > 0, got " + std::to_string(eps));
      N.eps = eps;
      const int id = plan.add_node(N);
      keep(gamma), keep(beta), keep(dgamma), keep(dbeta), keep(running_mean), keep(running_var),
          keep(num_batches_tracked);
      return id;
    });
  }

  int layernorm(int src, const py::object& gamma, const py::object& beta, const py::object& dgamma,
                const py::object& dbeta, double eps) {
    return locked("layernorm", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      const std::string op = "Plan.layernorm";
      PlanNode<T> N;
      N.op = PlanOp::layernorm;
      N.src = src;
      py::ssize_t d = -1;
      for (const py::object* o : {&gamma, &beta}) {
        if (o->is_none()) continue;
        py::array a = typed<T>(op, o == &gamma ? "gamma" : "beta", *o, false);
        if (d >= 0 && a.size() != d) fail(op, "gamma and beta must have the same size");
        d = a.size();
      }
      auto param = [&](const py::object& o, const char* name, bool w) -> T* {
        if (o.is_none()) return nullptr;
        py::array a = typed<T>(op, name, o, w);
        if (a.size() != d) fail(op, std::string(name) + " must have " + std::to_string(d) + " elements, got shape " + shape_str(a));
        return static_cast<T*>(a.mutable_data());
      };
      N.W = param(gamma, "gamma", false);
      N.b = param(beta, "beta", false);
      if (!dgamma.is_none() && gamma.is_none()) fail(op, "dgamma is given without gamma");
      if (!dbeta.is_none() && beta.is_none()) fail(op, "dbeta is given without beta");
      N.dW = param(dgamma, "dgamma", true);
      N.db = param(dbeta, "dbeta", true);
      N.in_width = d;
      if (!(eps > 0) || !std::isfinite(eps)) fail(op, "eps must be > 0, got " + std::to_string(eps));
      N.eps = eps;
      const int id = plan.add_node(N);
      keep(gamma), keep(beta), keep(dgamma), keep(dbeta);
      return id;
    });
  }

  int dropout(int src, double p) {
    return locked("dropout", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      if (!(p >= 0 && p <= 1)) fail("Plan.dropout", "p must be in [0, 1], got " + std::to_string(p));
      PlanNode<T> N;
      N.op = PlanOp::dropout;
      N.src = src;
      N.p = p;
      return plan.add_node(N);
    });
  }

  int add(int a, int b) {
    return locked("add", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      PlanNode<T> N;
      N.op = PlanOp::add;
      N.src = a;
      N.src2 = b;
      return plan.add_node(N);
    });
  }

  // ------------------------------------------------------------------ loss, buffers, optimizer
  void set_loss(int src, const std::string& kind, double eps) {
    const PlanLoss k = parse_plan_loss(kind);
    locked("set_loss", [&](auto& plan, auto) { plan.set_loss(src, k, eps); return 0; });
  }

  void set_grads(const py::object& grad_flat, const py::object& offsets) {
    locked("set_grads", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      const std::string op = "Plan.set_grads";
      py::array g = typed<T>(op, "grad_flat", grad_flat, true);
      py::array off = as_ndarray(op, "offsets", offsets);
      const std::int64_t* o = flat_offsets(op, off, g.size(), "grad_flat");
      plan.set_grads(static_cast<T*>(g.mutable_data()), o, static_cast<index_t>(off.size() - 1));
      grad_ = grad_flat;
      offsets_ = offsets;
      opt_keep_ = py::make_tuple(py::none(), py::tuple(), py::none(), py::none());  // unbound (plan.h)
      return 0;
    });
  }

  void set_optimizer(const std::string& kind, const py::object& param_flat, const py::tuple& states,
                     const py::object& sumsq, const py::object& scales) {
    const PlanOpt k = parse_plan_optimizer(kind);
    locked("set_optimizer", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      const std::string op = "Plan.set_optimizer";
      if (!plan.has_grads()) fail(op, "call set_grads first");
      const py::ssize_t n = py::reinterpret_borrow<py::array>(grad_).size();
      const index_t kt = plan.num_tensors();
      py::array p = typed<T>(op, "param_flat", param_flat, true);
      if (p.size() != n) fail(op, "param_flat must have " + std::to_string(n) + " elements like grad_flat, got shape " + shape_str(p));
      static const char* names[4][3] = {{"buf", "", ""},
                                        {"m", "v", "vmax"},
                                        {"square_avg", "grad_avg", "buf"},
                                        {"sum", "", ""}};
      static const bool required[4][3] = {{false}, {true, true, false}, {true, false, false}, {true}};
      const int ki = static_cast<int>(k) - 1;
      const size_t want = (k == PlanOpt::sgd || k == PlanOpt::adagrad) ? 1 : 3;
      if (states.size() != want)
        fail(op, kind + " takes " + std::to_string(want) + " state arrays, got " + std::to_string(states.size()));
      T* s[3] = {nullptr, nullptr, nullptr};
      std::vector<std::pair<const char*, py::array>> written{{"param_flat", p},
                                                             {"grad_flat", py::reinterpret_borrow<py::array>(grad_)}};
      for (size_t i = 0; i < want; ++i) {
        py::object o = states[i];
        if (o.is_none()) {
          if (required[ki][i]) fail(op, kind + " state " + names[ki][i] + " is required, got None");
          continue;
        }
        py::array a = typed<T>(op, names[ki][i], o, true);
        if (a.size() != n) fail(op, std::string(names[ki][i]) + " must have " + std::to_string(n) + " elements, got shape " + shape_str(a));
        s[i] = static_cast<T*>(a.mutable_data());
        written.emplace_back(names[ki][i], a);
      }
      auto per_tensor = [&](const py::object& o, const char* name) {
        if (!py::isinstance<py::array>(o)) type_fail(op, std::string(name) + " must be a float64 numpy.ndarray");
        py::array a = py::reinterpret_borrow<py::array>(o);
        if (!has_dtype<double>(a)) type_fail(op, std::string(name) + " must have dtype float64, got " + dtype_str(a));
        expect_size(op, name, a, kt);
        double* ptr = out_ptr<double>(op, name, a);
        written.emplace_back(name, a);
        return ptr;
      };
      double* ss = per_tensor(sumsq, "sumsq");
      double* sc = per_tensor(scales, "scales");
      for (size_t i = 0; i < written.size(); ++i)
        for (size_t j = i + 1; j < written.size(); ++j) {
          const char* a0 = static_cast<const char*>(written[i].second.data());
          const char* b0 = static_cast<const char*>(written[j].second.data());
          if (a0 < b0 + written[j].second.nbytes() && b0 < a0 + written[i].second.nbytes())
            fail(op, std::string(written[i].first) + " and " + written[j].first + " share memory");
        }
      plan.set_optimizer(k, static_cast<T*>(p.mutable_data()), s[0], s[1], s[2], ss, sc);
      opt_keep_ = py::make_tuple(param_flat, states, sumsq, scales);
      return 0;
    });
  }

  // ------------------------------------------------------------------ monitor statistics
  void set_stats(const py::sequence& act_seq, const py::sequence& dz_seq, const py::sequence& mode_seq,
                 double threshold, const py::object& act_out, const py::object& dz_out, const py::object& opt_out,
                 const py::object& param_out) {
    visit([&](auto& plan, auto) {
      const std::string op = "Plan.set_stats";
      if (!plan.has_grads()) fail(op, "call set_grads first");
      auto ints = [&](const py::sequence& seq, const char* name) {
        std::vector<int> v;
        for (const py::handle h : seq) {
          if (!py::isinstance<py::int_>(h)) type_fail(op, std::string(name) + " must hold node ids (int), got " + type_name(h));
          v.push_back(h.cast<int>());
        }
        return v;
      };
      const std::vector<int> act_nodes = ints(act_seq, "act_nodes"), dz_nodes = ints(dz_seq, "dz_nodes");
      std::vector<std::string> modes;
      for (const py::handle h : mode_seq) {
        if (!py::isinstance<py::str>(h)) type_fail(op, "modes must hold strings, got " + type_name(h));
        modes.push_back(h.cast<std::string>());
      }
      const auto rows = static_cast<py::ssize_t>(modes.size());
      if (static_cast<py::ssize_t>(act_nodes.size()) != rows || static_cast<py::ssize_t>(dz_nodes.size()) != rows)
        fail(op, "act_nodes, dz_nodes and modes must have the same length (one per monitored layer), got " +
                     std::to_string(act_nodes.size()) + ", " + std::to_string(dz_nodes.size()) + " and " +
                     std::to_string(modes.size()));
      std::vector<StatsMode> m;
      for (const auto& s : modes) {
        if (s == "none") m.push_back(StatsMode::none);
        else if (s == "dead") m.push_back(StatsMode::dead);
        else if (s == "saturated") m.push_back(StatsMode::saturated);
        else fail(op, "mode must be 'none', 'dead' or 'saturated', got '" + s + "'");
      }
      auto table = [&](const py::object& o, const char* name, py::ssize_t r, py::ssize_t c) -> double* {
        if (!py::isinstance<py::array>(o)) type_fail(op, std::string(name) + " must be a float64 numpy.ndarray, got " + type_name(o));
        py::array a = py::reinterpret_borrow<py::array>(o);
        if (!has_dtype<double>(a)) type_fail(op, std::string(name) + " must have dtype float64, got " + dtype_str(a));
        if (!(a.flags() & py::array::c_style)) fail(op, std::string(name) + " must be C-contiguous");
        if (!a.writeable()) fail(op, std::string(name) + " is read-only but is written in place");
        expect_shape(op, name, a, {r, c});
        return static_cast<double*>(a.mutable_data());
      };
      double* ao = table(act_out, "act_out", rows, kActStatCols);
      double* dzo = table(dz_out, "dz_out", rows, kStatCols);
      double* oo = opt_out.is_none() ? nullptr : table(opt_out, "opt_out", plan.num_tensors(), kOptStatCols);
      double* po = param_out.is_none() ? nullptr : table(param_out, "param_out", plan.num_tensors(), kStatCols);
      if (!(threshold > 0) || !std::isfinite(threshold))
        fail(op, "threshold must be a finite number > 0, got " + std::to_string(threshold));
      try {
        plan.set_stats(act_nodes, dz_nodes, m, threshold, ao, dzo, oo, po);
      } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
      }
      stats_keep_ = py::make_tuple(act_out, dz_out, opt_out, param_out);
      return 0;
    });
  }

  void clear_stats() {
    visit([&](auto& plan, auto) { plan.clear_stats(); return 0; });
    stats_keep_ = py::tuple();
  }

  // stats: 0 none, 1 the set_stats statistics, 2 also the parameters' (param_out)
  template <class T>
  void want_stats(Plan<T>& plan, const char* op, int stats) {
    if (stats < 0 || stats > 2) fail(op, "stats must be 0 / False, 1 / True or 2 (also the parameters), got " + std::to_string(stats));
    if (stats && !plan.has_stats()) fail(op, "stats=True but set_stats was not called");
    if (stats == 2 && !plan.has_param_stats()) fail(op, "stats=2 but set_stats was given no param_out");
    plan.enable_stats(stats != 0, stats == 2);
  }

  // ------------------------------------------------------------------ running
  // Validates everything a run reads; returns the batch size.
  template <class T>
  py::ssize_t check_run(Plan<T>& plan, const char* op, const py::object& x, const py::object& y,
                        const py::object& seeds, double scale, RunArgs& out) {
    if (!plan.has_loss()) fail(op, "set_loss was not called");
    if (!plan.has_grads()) fail(op, "set_grads was not called");
    if (!py::isinstance<py::array>(x)) type_fail(op, "x must be a numpy.ndarray, got " + type_name(x));
    // borrowed views of the arguments (the caller holds them for the call); a default
    // constructed py::array would allocate an empty array on every step
    const py::array xa = py::reinterpret_borrow<py::array>(x);
    if (!has_dtype<T>(xa)) type_fail(op, "x must have the plan's dtype " + tname<T>() + ", got " + dtype_str(xa));
    if (xa.ndim() != 2) fail(op, "x must be 2-d (batch, features), got shape " + shape_str(xa));
    if (!(xa.flags() & py::array::c_style)) fail(op, "x must be C-contiguous");
    const py::ssize_t B = xa.shape(0);
    if (B < 1) fail(op, "x has an empty batch (shape " + shape_str(xa) + ")");
    bool guessed = false;
    if (plan.input_width() < 0) {
      plan.finalize();  // infers the width from the nodes when it can
      if (plan.input_width() < 0) {
        plan.set_input_width(xa.shape(1));  // no node fixes it: x's, if the graph accepts it
        guessed = true;
      }
    }
    if (xa.shape(1) != plan.input_width())
      fail(op, "x must have shape (batch, " + std::to_string(plan.input_width()) + "), got " + shape_str(xa));
    index_t C;
    try {
      C = plan.output_width();  // finalizes (graph errors are raised here)
    } catch (...) {
      if (guessed) plan.set_input_width(-1);
      throw;
    }
    if (plan.has_batchnorm() && B < 2)
      fail(op, "batchnorm: expected more than 1 value per channel when training, got input of shape " + shape_str(xa));
    // y
    const PlanLoss k = plan.loss_kind();
    if (!py::isinstance<py::array>(y)) type_fail(op, "y must be a numpy.ndarray, got " + type_name(y));
    const py::array ya = py::reinterpret_borrow<py::array>(y);
    if (!(ya.flags() & py::array::c_style)) fail(op, "y must be C-contiguous");
    if (plan_loss_labels(k)) {
      if (!has_dtype<std::int64_t>(ya)) type_fail(op, "y must be int64 class labels, got dtype " + dtype_str(ya));
      if (!(ya.ndim() == 1 && ya.shape(0) == B) && !(ya.ndim() == 2 && ya.shape(0) == B && ya.shape(1) == 1))
        fail(op, "y must be labels of shape (" + std::to_string(B) + ",), got " + shape_str(ya));
      const auto* lab = static_cast<const std::int64_t*>(ya.data());
      for (py::ssize_t r = 0; r < B; ++r)
        if (lab[r] < 0 || lab[r] >= C)
          fail(op, "label " + std::to_string(lab[r]) + " at row " + std::to_string(r) + " is out of range for " +
                       std::to_string(C) + " classes (labels must be in [0, " + std::to_string(C - 1) + "])");
    } else {
      const bool f64 = plan_loss_float64_target(k);
      if (f64 ? !has_dtype<double>(ya) : !has_dtype<T>(ya))
        type_fail(op, std::string("y must have dtype ") + (f64 ? "float64" : tname<T>()) + " for this loss, got " +
                          dtype_str(ya));
      const bool ok = (ya.ndim() == 2 && ya.shape(0) == B && ya.shape(1) == C) ||
                      (C == 1 && ya.ndim() == 1 && ya.shape(0) == B);
      if (!ok)
        fail(op, "y must have shape (" + std::to_string(B) + ", " + std::to_string(C) + ")" +
                     (C == 1 ? " or (" + std::to_string(B) + ",)" : "") + " like the output, got " + shape_str(ya));
    }
    // seeds
    const int nd = plan.dropout_count();
    if (seeds.is_none()) {
      if (nd > 0) fail(op, "seeds must hold one uint64 seed per dropout node (" + std::to_string(nd) + "), got None");
    } else {
      if (!py::isinstance<py::array>(seeds)) type_fail(op, "seeds must be a uint64 numpy.ndarray, got " + type_name(seeds));
      const py::array sa = py::reinterpret_borrow<py::array>(seeds);
      if (!has_dtype<std::uint64_t>(sa)) type_fail(op, "seeds must have dtype uint64, got " + dtype_str(sa));
      if (sa.ndim() != 1 || sa.shape(0) != nd || !(sa.flags() & py::array::c_style))
        fail(op, "seeds must have shape (" + std::to_string(nd) + ",) (one per dropout node), got " + shape_str(sa));
      out.seeds = static_cast<const std::uint64_t*>(sa.data());
    }
    if (!std::isfinite(scale)) fail(op, "scale must be finite, got " + std::to_string(scale));
    out.x = xa.data();
    out.y = ya.data();
    return B;
  }

  template <class T>
  void check_hyper(Plan<T>& plan, const char* op, const py::tuple& hyper, double* h, double clip_value,
                   double clip_norm, double global_clip_norm) {
    if (plan.optimizer() == PlanOpt::none)
      fail(op, "set_optimizer was not called (set_grads unbinds the optimizer: call set_optimizer after it)");
    const int want = plan_hyper_count(plan.optimizer());
    if (static_cast<int>(hyper.size()) != want)
      fail(op, "hyper must hold " + std::to_string(want) + " numbers for this optimizer, got " + std::to_string(hyper.size()));
    for (int i = 0; i < want; ++i) {
      try {
        h[i] = hyper[static_cast<size_t>(i)].cast<double>();
      } catch (const py::cast_error&) {
        type_fail(op, "hyper[" + std::to_string(i) + "] must be a number, got " + type_name(hyper[static_cast<size_t>(i)]));
      }
      if (!std::isfinite(h[i])) fail(op, "hyper[" + std::to_string(i) + "] must be finite, got " + std::to_string(h[i]));
    }
    if (!(clip_value >= 0 && clip_norm >= 0 && global_clip_norm >= 0))
      fail(op, "clip_value, clip_norm and global_clip_norm must be >= 0 (0 turns them off)");
    auto opt = opt_keep_[1].cast<py::tuple>();
    switch (plan.optimizer()) {
      case PlanOpt::sgd:
        if (h[1] != 0 && opt[0].is_none()) fail(op, "sgd momentum != 0 needs the momentum buffer state (got None)");
        break;
      case PlanOpt::adam:
        if (!(h[6] > 0 && h[6] <= 1 && h[7] > 0 && h[7] <= 1))
          fail(op, "adam bias corrections must be in (0, 1], got " + std::to_string(h[6]) + " and " + std::to_string(h[7]));
        break;
      case PlanOpt::rmsprop:
        if (h[4] != 0 && opt[2].is_none()) fail(op, "rmsprop momentum != 0 needs the momentum buffer state (got None)");
        break;
      default:
        break;
    }
  }

  double forward_backward(const py::object& x, const py::object& y, const py::object& seeds, double scale,
                          bool accumulate, int stats) {
    return locked("forward_backward", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      const char* op = "Plan.forward_backward";  // no std::string on the hot path
      RunArgs a;
      const py::ssize_t B = check_run(plan, op, x, y, seeds, scale, a);
      want_stats(plan, op, stats);
      const T* xp = static_cast<const T*>(a.x);
      const void* yp = a.y;
      const std::uint64_t* sp = a.seeds;
      double v;
      {
        py::gil_scoped_release nogil;
        v = plan.forward_backward(xp, yp, B, sp, scale, accumulate);
      }
      return v;
    });
  }

  py::tuple step(const py::object& x, const py::object& y, const py::object& seeds, double scale, bool accumulate,
                 const py::tuple& hyper, double clip_value, double clip_norm, double global_clip_norm, int stats) {
    return locked("step", [&](auto& plan, auto tag) {
      using T = decltype(tag);
      const char* op = "Plan.step";  // no std::string on the hot path
      double h[8];
      check_hyper(plan, op, hyper, h, clip_value, clip_norm, global_clip_norm);
      RunArgs a;
      const py::ssize_t B = check_run(plan, op, x, y, seeds, scale, a);
      want_stats(plan, op, stats);
      const T* xp = static_cast<const T*>(a.x);
      const void* yp = a.y;
      const std::uint64_t* sp = a.seeds;
      PlanStepResult r;
      {
        py::gil_scoped_release nogil;
        const double v = plan.forward_backward(xp, yp, B, sp, scale, accumulate);
        r = plan.apply_update(h, clip_value, clip_norm, global_clip_norm);
        r.loss = v;
      }
      return py::make_tuple(r.loss, r.norm, static_cast<long long>(r.bad_tensor), r.clip_coef);
    });
  }

  py::tuple apply_update(const py::tuple& hyper, double clip_value, double clip_norm, double global_clip_norm,
                         bool stats) {
    return locked("apply_update", [&](auto& plan, auto) {
      const char* op = "Plan.apply_update";  // no std::string on the hot path
      double h[8];
      check_hyper(plan, op, hyper, h, clip_value, clip_norm, global_clip_norm);
      want_stats(plan, op, stats);
      PlanStepResult r;
      {
        py::gil_scoped_release nogil;
        r = plan.apply_update(h, clip_value, clip_norm, global_clip_norm);
      }
      return py::make_tuple(r.norm, static_cast<long long>(r.bad_tensor), r.clip_coef);
    });
  }

  py::object grad_ = py::none(), offsets_ = py::none();
  py::tuple opt_keep_ = py::make_tuple(py::none(), py::tuple(), py::none(), py::none());
  py::list kept_;
  py::tuple stats_keep_;
  bool f32_ = false;
  std::atomic<bool> busy_{false};
  std::unique_ptr<Plan<float>> pf_;
  std::unique_ptr<Plan<double>> pd_;
};

}  // namespace

void bind_plan(py::module_& m) {
  using py::arg;
  py::class_<PyPlan>(m, "Plan",
                     "A compiled training step over a network's flat parameter / gradient buffers (csrc/plan.h).\n"
                     "Built once with dense / activation / softmax / prelu / batchnorm / layernorm / dropout / add\n"
                     "(each returns the node id; -1 is the input), set_loss, set_grads, set_optimizer; then\n"
                     "forward_backward / step / apply_update run with the GIL released.")
      .def(py::init<const py::object&>(), arg("dtype"))
      .def_property_readonly("dtype", &PyPlan::dtype)
      .def("dense", &PyPlan::dense, arg("src"), arg("W"), arg("b"), arg("dW"), arg("db"), arg("act") = "identity",
           arg("alpha") = 0.0, arg("l2") = 0.0,
           "act(src @ W.T + b); W (out, in), b (out,) or None: parameter views; dW, db: gradient views or None.")
      .def("activation", &PyPlan::activation, arg("src"), arg("act"), arg("alpha") = 0.0)
      .def("softmax", &PyPlan::softmax, arg("src"), arg("log") = false)
      .def("prelu", &PyPlan::prelu, arg("src"), arg("a"), arg("da"))
      .def("batchnorm", &PyPlan::batchnorm, arg("src"), arg("gamma"), arg("beta"), arg("dgamma"), arg("dbeta"),
           arg("running_mean"), arg("running_var"), arg("num_batches_tracked"), arg("momentum"), arg("eps"))
      .def("layernorm", &PyPlan::layernorm, arg("src"), arg("gamma"), arg("beta"), arg("dgamma"), arg("dbeta"),
           arg("eps"))
      .def("dropout", &PyPlan::dropout, arg("src"), arg("p"))
      .def("add", &PyPlan::add, arg("a"), arg("b"))
      .def("set_loss", &PyPlan::set_loss, arg("src"), arg("kind"), arg("eps") = 1e-7)
      .def("set_grads", &PyPlan::set_grads, arg("grad_flat"), arg("offsets"))
      .def("set_optimizer", &PyPlan::set_optimizer, arg("kind"), arg("param_flat"), arg("states"), arg("sumsq"),
           arg("scales"))
      .def("forward_backward", &PyPlan::forward_backward, arg("x"), arg("y"), arg("seeds") = py::none(),
           arg("scale") = 1.0, arg("accumulate") = false, arg("stats") = false,
           "Forward, loss, backward into the flat gradient buffer (= or += with accumulate), per-tensor\n"
           "sums of squares into sumsq. Returns the loss. stats: also the set_stats statistics (2: and\n"
           "the parameters' into param_out).")
      .def("step", &PyPlan::step, arg("x"), arg("y"), arg("seeds") = py::none(), arg("scale") = 1.0,
           arg("accumulate") = false, arg("hyper") = py::tuple(), arg("clip_value") = 0.0, arg("clip_norm") = 0.0,
           arg("global_clip_norm") = 0.0, arg("stats") = false,
           "forward_backward then apply_update. Returns (loss, pre_clip_norm, bad_tensor, clip_coef).")
      .def("apply_update", &PyPlan::apply_update, arg("hyper"), arg("clip_value") = 0.0, arg("clip_norm") = 0.0,
           arg("global_clip_norm") = 0.0, arg("stats") = false,
           "The optimizer half of step. Returns (pre_clip_norm, bad_tensor, clip_coef).")
      .def("set_stats", &PyPlan::set_stats, arg("act_nodes"), arg("dz_nodes"), arg("modes"), arg("threshold"),
           arg("act_out"), arg("dz_out"), arg("opt_out"), arg("param_out") = py::none(),
           "Statistics for gradcore.monitor, written by runs with stats=True (csrc/plan.h, set_stats):\n"
           "per row r, activation_stats of node act_nodes[r]'s output (mode 'none' / 'dead' /\n"
           "'saturated', threshold the saturation bound) into act_out (rows, 8), grad_stats' first\n"
           "four columns of the gradient at node dz_nodes[r]'s output into dz_out (rows, 6; mean\n"
           "and std NaN) (-1: none); opt_out\n"
           "(num_tensors, 5) or None: the optimizer's per-tensor statistics (optim.STATS_COLUMNS);\n"
           "param_out (num_tensors, 6) or None: on runs with stats=2, each parameter tensor's\n"
           "grad_stats' first four columns (mean, std NaN) as the forward used it.")
      .def("clear_stats", &PyPlan::clear_stats, "Forget set_stats.")
      .def(
          "output",
          [](py::object self, py::ssize_t batch) {
            PyPlan& p = self.cast<PyPlan&>();
            return p.locked("output", [&](auto& plan, auto tag) -> py::object {
              using T = decltype(tag);
              const T* ptr = plan.output(batch);
              if (!ptr)
                fail("Plan.output", "no run with batch size " + std::to_string(batch) + " has completed");
              const py::ssize_t w = plan.output_width();
              py::array a(py::dtype::of<T>(), {batch, w}, {static_cast<py::ssize_t>(sizeof(T)) * w,
                                                           static_cast<py::ssize_t>(sizeof(T))},
                          ptr, self);
              a.attr("setflags")(py::arg("write") = false);
              return std::move(a);
            });
          },
          arg("batch"), "The output node's values of the last run with this batch size (a read-only view).")
      .def_property_readonly("nbytes", [](PyPlan& p) { return p.visit([](auto& plan, auto) { return plan.nbytes(); }); })
      .def_property_readonly("num_nodes", [](PyPlan& p) { return p.visit([](auto& plan, auto) { return plan.num_nodes(); }); })
      .def_property_readonly("num_dropout",
                             [](PyPlan& p) { return p.visit([](auto& plan, auto) { return plan.dropout_count(); }); })
      .def_property_readonly("input_width",
                             [](PyPlan& p) { return p.visit([](auto& plan, auto) { return static_cast<long long>(plan.input_width()); }); })
      .def_property_readonly("sumsq_bad",
                             [](PyPlan& p) { return p.visit([](auto& plan, auto) { return static_cast<long long>(plan.last_bad()); }); },
                             "First tensor with a non-finite gradient after the last forward_backward (-1: none).");

  m.def(
      "plan_memory_stats",
      []() {
        const PlanMemoryStats s = plan_memory_stats();
        return py::make_tuple(static_cast<long long>(s.bytes_live), static_cast<long long>(s.allocations));
      },
      "(bytes_live, allocations_since_reset) of every Plan's heap memory.");
  m.def("reset_plan_memory_stats", &reset_plan_memory_stats, "Zero the plans' allocation count.");
}

}  // namespace gc
