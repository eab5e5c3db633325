// Python bindings of the monitor's statistics kernels (see stats.h for the math).
//
// Arrays are taken as they are (float32 or float64, C-contiguous, never copied); a
// non-ndarray argument is a TypeError, any other bad input a ValueError naming the
// argument, before the GIL is released and the kernel runs.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "bind_common.h"
#include "stats.h"

namespace gc {

namespace {

StatsMode parse_mode(const std::string& op, const std::string& mode) {
  if (mode == "none") return StatsMode::none;
  if (mode == "dead") return StatsMode::dead;
  if (mode == "saturated") return StatsMode::saturated;
  fail(op, "mode must be 'none', 'dead' or 'saturated', got '" + mode + "'");
}

std::string number_str(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// (rows, units) of an activation: the last axis holds the units, a 1-d array of n values
// is n rows of one unit (and a 0-d array one row of one unit).
std::pair<index_t, index_t> rows_units(const py::array& a) {
  if (a.ndim() <= 1) return {static_cast<index_t>(a.size()), 1};
  const auto rc = rows_cols(a);
  return {static_cast<index_t>(rc.first), static_cast<index_t>(rc.second)};
}

template <class T>
py::array_t<double> activation_stats_impl(const py::array& A, const py::object& Z, StatsMode mode, double threshold) {
  const std::string op = "activation_stats";
  const T* a = in_ptr<T>(op, "A", A);
  py::array keep;
  const T* z = nullptr;
  if (present(Z)) {
    keep = as_ndarray(op, "Z", Z, true);
    if (!same_shape(A, keep)) fail(op, "Z must have the shape of A " + shape_str(A) + ", got " + shape_str(keep));
    if (!has_dtype<T>(keep)) fail(op, "Z must have the dtype of A (" + dtype_str(A) + "), got " + dtype_str(keep));
    z = in_ptr<T>(op, "Z", keep);
  }
  if (mode == StatsMode::saturated && !z)
    fail(op, "mode 'saturated' counts entries with |Z| > threshold and needs Z (the pre-activation), got None");
  const auto ru = rows_units(A);
  py::array_t<double> out(static_cast<py::ssize_t>(kActStatCols));
  double* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    activation_stats<T>(a, z, ru.first, ru.second, mode, threshold, o);
  }
  return out;
}

template <class T>
py::array_t<double> diff_sumsq_impl(const py::array& a, const py::array& b, const py::array& offsets) {
  const std::string op = "diff_sumsq_flat";
  const T* pa = in_ptr<T>(op, "a", a);
  if (!has_dtype<T>(b)) fail(op, "b must have the dtype of a (" + dtype_str(a) + "), got " + dtype_str(b));
  const T* pb = in_ptr<T>(op, "b", b);
  const std::int64_t* off = flat_offsets(op, offsets, a.size(), "a");
  const index_t k = static_cast<index_t>(offsets.size() - 1);
  py::array_t<double> out(static_cast<py::ssize_t>(k));
  double* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    diff_sumsq_flat<T>(pa, pb, off, k, o);
  }
  return out;
}

// A C-contiguous float64 array of `rows` x `cols` (cols 0: 1-d of rows), else ValueError.
const double* f64_table(const std::string& op, const char* name, const py::array& a, py::ssize_t rows,
                        py::ssize_t cols, bool writable = false) {
  const bool shape_ok = cols == 0 ? (a.ndim() == 1 && a.shape(0) == rows)
                                  : (a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == cols);
  if (!shape_ok || !has_dtype<double>(a) || !(a.flags() & py::array::c_style))
    fail(op, std::string(name) + " must be a C-contiguous float64 array of shape (" + std::to_string(rows) +
                 (cols ? ", " + std::to_string(cols) : std::string(",")) + "), got " + dtype_str(a) + " " +
                 shape_str(a));
  if (writable && !a.writeable()) fail(op, std::string(name) + " must be writable");
  return static_cast<const double*>(a.data());
}

// The monitor's layout spec (stats.h monitor_rows): an int64 header of 8 counts, then as
// many indices as it asks for, each a layer (a parameter's may be -1: of no monitored
// layer) or, for the last nkern, a parameter. Its data on success; ValueError otherwise.
const std::int64_t* checked_spec(const std::string& op, const py::array& spec) {
  if (spec.ndim() != 1 || !has_dtype<std::int64_t>(spec) || !(spec.flags() & py::array::c_style) || spec.size() < 8)
    fail(op, "spec must be a C-contiguous int64 array of at least 8 entries, got " + dtype_str(spec) + " " +
                 shape_str(spec));
  const std::int64_t* sp = static_cast<const std::int64_t*>(spec.data());
  for (int i = 0; i < 8; ++i)
    if (sp[i] < 0) fail(op, "spec[" + std::to_string(i) + "] is negative");
  const std::int64_t k = sp[0], L = sp[1], nkern = sp[7];
  const std::int64_t want = 8 + k + sp[2] + sp[3] + sp[4] + sp[5] + sp[6] + nkern;
  if (spec.size() != want)
    fail(op, "spec has " + std::to_string(spec.size()) + " entries, its header asks for " + std::to_string(want));
  for (std::int64_t i = 8; i < spec.size(); ++i) {
    const bool is_kern = i >= spec.size() - nkern, is_param_layer = i < 8 + k;
    const std::int64_t hi = is_kern ? k : L, lo = is_param_layer ? -1 : 0;
    if (sp[i] < lo || sp[i] >= hi)
      fail(op, "spec[" + std::to_string(i) + "] = " + std::to_string(sp[i]) + " is out of range");
  }
  return sp;
}

template <class T>
T* typed_vector(const std::string& op, const char* name, const py::array& a, py::ssize_t size, bool writable) {
  if (a.ndim() != 1 || a.shape(0) != size || !has_dtype<T>(a) || !(a.flags() & py::array::c_style) ||
      (writable && !a.writeable()))
    fail(op, std::string(name) + " must be a " + (writable ? "writable " : "") + "C-contiguous " +
                 dtype_str(py::array_t<T>(0)) + " array of shape (" + std::to_string(size) + ",), got " +
                 dtype_str(a) + " " + shape_str(a));
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// The sizes of monitor_rows' vals and mask for the layout spec (checked_spec).
py::ssize_t vals_size(const std::int64_t* sp, bool updates) {
  const std::int64_t k = sp[0], ng = sp[2], ndz = sp[3], nact = sp[4], ndead = sp[5], nsat = sp[6];
  return 3 * k + ng + k + 3 * ndz + 5 * nact + ndead + nsat + 5 + (updates ? 2 * k : 0);
}

py::ssize_t mask_size(const std::int64_t* sp) { return sp[2] + 3 * sp[7] + 1 + sp[5] + sp[6]; }

int monitor_rows_impl(const py::array& R, const py::array& W, const py::array& D, const py::array& S,
                      const py::array& spec, const py::array& sat_size, const py::array& limits, double loss,
                      const py::array& glob, bool updates, py::array vals, py::array mask, const py::object& w_next) {
  const std::string op = "monitor_rows";
  const std::int64_t* sp = checked_spec(op, spec);
  const std::int64_t k = sp[0], L = sp[1], nsat = sp[6];
  const double* r = f64_table(op, "R", R, k, 5);
  if (W.ndim() != 2 || W.shape(1) < 2) fail(op, "W must be 2-d with at least 2 columns, got " + shape_str(W));
  const double* w = f64_table(op, "W", W, k, W.shape(1));
  const double* d = f64_table(op, "D", D, L, 6);
  const double* s = f64_table(op, "S", S, L, kActStatCols);
  const double* ss = f64_table(op, "sat_size", sat_size, nsat, 0);
  const double* lim = f64_table(op, "limits", limits, 7, 0);
  const double* g = f64_table(op, "glob", glob, 4, 0);
  f64_table(op, "vals", vals, vals_size(sp, updates), 0, true);
  double* v = static_cast<double*>(vals.mutable_data());
  std::uint8_t* mk = typed_vector<std::uint8_t>(op, "mask", mask, mask_size(sp), true);
  double* wn = nullptr;
  py::array keep;
  if (!w_next.is_none()) {
    if (!py::isinstance<py::array>(w_next))
      throw py::type_error(op + ": w_next must be a numpy.ndarray or None, got " +
                           std::string(py::str(py::type::of(w_next).attr("__name__"))));
    keep = py::reinterpret_borrow<py::array>(w_next);
    f64_table(op, "w_next", keep, k, 4, true);
    wn = static_cast<double*>(keep.mutable_data());
  }
  return monitor_rows(r, w, static_cast<index_t>(W.shape(1)), d, s, sp, ss, lim, loss, g, updates, v,
                      mk, wn);
}

// GradientMonitor's bound fast path of a compiled step (stats.h MonitorStep): the arrays of
// one layout, checked once; each recorded step is then one run() call.
class PyMonitorStep {
 public:
  PyMonitorStep(py::array R, py::array D, py::array S, py::array spec, py::array sat_size, py::array vals,
                py::array mask, py::array act_nan, py::array dz_nan, py::array lc, py::array mc, py::array w0,
                py::array w1, py::array recent, py::array recent_n, py::array recent_head, index_t min_count,
                index_t o_ln, bool updates)
      : keep_{R, D, S, spec, sat_size, vals, mask, act_nan, dz_nan, lc, mc, w0, w1, recent, recent_n, recent_head} {
    const std::string op = "MonitorStep";
    const std::int64_t* sp = checked_spec(op, spec);
    const std::int64_t k = sp[0], L = sp[1], ng = sp[2], nsat = sp[6];
    MonitorStep& m = m_;
    m.R = f64_table(op, "R", R, k, 5);
    m.D = f64_table(op, "D", D, L, 6);
    m.S = f64_table(op, "S", S, L, kActStatCols);
    m.spec = sp;
    m.sat_size = f64_table(op, "sat_size", sat_size, nsat, 0);
    const py::ssize_t nv = vals_size(sp, updates);
    m.vals = const_cast<double*>(f64_table(op, "vals", vals, nv, 0, true));
    m.mask_size = mask_size(sp);
    m.mask = typed_vector<std::uint8_t>(op, "mask", mask, m.mask_size, true);
    m.act_nan = typed_vector<std::uint8_t>(op, "act_nan", act_nan, L, false);
    m.dz_nan = typed_vector<std::uint8_t>(op, "dz_nan", dz_nan, L, false);
    m.lc = typed_vector<std::int32_t>(op, "lc", lc, nv, false);
    m.mc = typed_vector<std::int32_t>(op, "mc", mc, nv, false);
    m.w0 = const_cast<double*>(f64_table(op, "w0", w0, k, 4, true));
    m.w1 = const_cast<double*>(f64_table(op, "w1", w1, k, 4, true));
    if (recent.ndim() != 2 || recent.shape(0) != L || recent.shape(1) < 1)
      fail(op, "recent must be 2-d with one row per layer");
    m.window = static_cast<index_t>(recent.shape(1));
    m.recent = const_cast<double*>(f64_table(op, "recent", recent, L, m.window, true));
    m.recent_n = typed_vector<std::int64_t>(op, "recent_n", recent_n, L, true);
    m.recent_head = typed_vector<std::int64_t>(op, "recent_head", recent_head, L, true);
    if (o_ln < 0 || o_ln + ng > nv) fail(op, "o_ln is out of range");
    m.rows = static_cast<index_t>(nv);
    m.L = L;
    m.k = k;
    m.ng = ng;
    m.o_ln = o_ln;
    m.min_count = min_count;
    m.updates = updates;
  }

  void set_limits(const py::sequence& limits) {
    if (py::len(limits) != 8) fail("MonitorStep", "limits must have 8 entries (7 thresholds and growth)");
    for (int i = 0; i < 7; ++i) limits_[i] = limits[static_cast<size_t>(i)].cast<double>();
    growth_ = limits[7].cast<double>();
  }

  void bind_history(py::array step, py::array lc, py::array mc, py::array val) {
    const std::string op = "MonitorStep.bind_history";
    const py::ssize_t cap = val.ndim() == 1 ? val.shape(0) : -1;
    hist_step_ = typed_vector<std::int64_t>(op, "step", step, cap, true);
    hist_lc_ = typed_vector<std::int32_t>(op, "lc", lc, cap, true);
    hist_mc_ = typed_vector<std::int32_t>(op, "mc", mc, cap, true);
    hist_val_ = typed_vector<double>(op, "val", val, cap, true);
    hist_keep_ = {step, lc, mc, val};
    cap_ = static_cast<index_t>(cap);
  }

  int run(const py::array& W, double loss, double grad_norm, double clip_coef, double skipped, double lr,
          std::int64_t step, index_t at, const py::object& prev) {
    const std::string op = "MonitorStep.run";
    if (!hist_val_ || at < 0 || at + m_.rows > cap_) return 0;  // the caller grows and binds the history first
    if (W.ndim() != 2 || W.shape(1) < 2) fail(op, "W must be 2-d with at least 2 columns, got " + shape_str(W));
    const double* w = f64_table(op, "W", W, m_.k, W.shape(1));
    const std::uint8_t* pv = nullptr;
    if (PyBytes_Check(prev.ptr()) && PyBytes_GET_SIZE(prev.ptr()) == m_.mask_size)
      pv = reinterpret_cast<const std::uint8_t*>(PyBytes_AS_STRING(prev.ptr()));
    const double glob[4] = {grad_norm, clip_coef, skipped, lr};
    return monitor_step(m_, w, static_cast<index_t>(W.shape(1)), limits_, growth_, loss, glob, step, hist_step_ + at,
                        hist_lc_ + at, hist_mc_ + at, hist_val_ + at, pv);
  }

  py::bytes signature() const {
    return py::bytes(reinterpret_cast<const char*>(m_.mask), static_cast<size_t>(m_.mask_size));
  }

  index_t rows() const { return m_.rows; }

 private:
  std::vector<py::array> keep_;
  std::vector<py::array> hist_keep_;
  MonitorStep m_{};
  double limits_[7] = {};
  double growth_ = 0;
  std::int64_t* hist_step_ = nullptr;
  std::int32_t *hist_lc_ = nullptr, *hist_mc_ = nullptr;
  double* hist_val_ = nullptr;
  index_t cap_ = 0;
};

}  // namespace

void bind_stats(py::module_& m) {
  py::class_<PyMonitorStep>(m, "MonitorStep",
                            "GradientMonitor's bound fast path of a compiled step (internal; stats.h MonitorStep).")
      .def(py::init<py::array, py::array, py::array, py::array, py::array, py::array, py::array, py::array, py::array,
                    py::array, py::array, py::array, py::array, py::array, py::array, py::array, index_t, index_t,
                    bool>(),
           py::arg("R"), py::arg("D"), py::arg("S"), py::arg("spec"), py::arg("sat_size"), py::arg("vals"),
           py::arg("mask"), py::arg("act_nan"), py::arg("dz_nan"), py::arg("lc"), py::arg("mc"), py::arg("w0"),
           py::arg("w1"), py::arg("recent"), py::arg("recent_n"), py::arg("recent_head"), py::arg("min_count"),
           py::arg("o_ln"), py::arg("updates"))
      .def("set_limits", &PyMonitorStep::set_limits)
      .def("bind_history", &PyMonitorStep::bind_history)
      .def("run", &PyMonitorStep::run)
      .def("signature", &PyMonitorStep::signature)
      .def_property_readonly("rows", &PyMonitorStep::rows);

  // the windows' arrays, graded and vals[offset:] checked (the three bindings below)
  struct Windows {
    double* buf;
    std::int64_t *n, *head;
    index_t window;
    const std::int64_t* graded;
    index_t ng;
    const double* ln;
  };
  static auto windows = [](const std::string& op, py::array& recent, py::array& recent_n, py::array& recent_head,
                           const py::array& graded, const py::array& vals, index_t offset) {
    if (recent.ndim() != 2 || recent.shape(1) < 1) fail(op, "recent must be 2-d");
    const py::ssize_t L = recent.shape(0), window = recent.shape(1);
    Windows w;
    w.buf = const_cast<double*>(f64_table(op, "recent", recent, L, window, true));
    w.n = typed_vector<std::int64_t>(op, "recent_n", recent_n, L, true);
    w.head = typed_vector<std::int64_t>(op, "recent_head", recent_head, L, true);
    w.window = static_cast<index_t>(window);
    const py::ssize_t ng = graded.ndim() == 1 ? graded.shape(0) : -1;
    w.graded = typed_vector<std::int64_t>(op, "graded", graded, ng, false);
    w.ng = static_cast<index_t>(ng);
    for (py::ssize_t i = 0; i < ng; ++i)
      if (w.graded[i] < 0 || w.graded[i] >= L) fail(op, "graded holds a layer out of range");
    if (vals.ndim() != 1 || offset < 0 || offset + ng > vals.shape(0)) fail(op, "offset is out of range");
    w.ln = f64_table(op, "vals", vals, vals.shape(0), 0) + offset;
    return w;
  };
  m.def(
      "monitor_recent_candidates",
      [](py::array recent, py::array recent_n, py::array recent_head, const py::array& graded, const py::array& vals,
         index_t offset, index_t min_count, double vanishing, double growth) {
        const Windows w = windows("monitor_recent_candidates", recent, recent_n, recent_head, graded, vals, offset);
        std::vector<std::int64_t> out(static_cast<size_t>(w.ng));
        const index_t found = recent_candidates(w.buf, w.n, w.window, min_count, w.graded, w.ng, w.ln, vanishing,
                                                growth, out.data());
        py::list result;
        for (index_t j = 0; j < found; ++j) result.append(out[static_cast<size_t>(j)]);
        return result;
      },
      py::arg("recent"), py::arg("recent_n"), py::arg("recent_head"), py::arg("graded"), py::arg("vals"),
      py::arg("offset"), py::arg("min_count"), py::arg("vanishing"), py::arg("growth"),
      "GradientMonitor's growth candidates (internal; csrc/stats.h recent_candidates): the positions g of "
      "graded whose norm vals[offset + g] is a candidate against its layer's window.");
  m.def(
      "monitor_recent_push",
      [](py::array recent, py::array recent_n, py::array recent_head, const py::array& graded, const py::array& vals,
         index_t offset) {
        const Windows w = windows("monitor_recent_push", recent, recent_n, recent_head, graded, vals, offset);
        recent_push(w.buf, w.n, w.head, w.window, w.graded, w.ng, w.ln);
      },
      py::arg("recent"), py::arg("recent_n"), py::arg("recent_head"), py::arg("graded"), py::arg("vals"),
      py::arg("offset"),
      "GradientMonitor's windows (internal; csrc/stats.h recent_push): each vals[offset + g] joins the window of "
      "layer graded[g].");
  m.def(
      "monitor_recent_quiet",
      [](py::array recent, py::array recent_n, py::array recent_head, const py::array& graded, const py::array& vals,
         index_t offset, index_t min_count, double vanishing, double growth) {
        const Windows w = windows("monitor_recent_quiet", recent, recent_n, recent_head, graded, vals, offset);
        return recent_quiet_push(w.buf, w.n, w.head, w.window, min_count, w.graded, w.ng, w.ln, vanishing, growth);
      },
      py::arg("recent"), py::arg("recent_n"), py::arg("recent_head"), py::arg("graded"), py::arg("vals"),
      py::arg("offset"), py::arg("min_count"), py::arg("vanishing"), py::arg("growth"),
      "GradientMonitor's quiet growth check (internal; csrc/stats.h recent_quiet_push): True and the norms "
      "vals[offset:offset + len(graded)] joined their layers' windows when no layer is a growth candidate.");

  m.def("monitor_rows", &monitor_rows_impl, py::arg("R"), py::arg("W"), py::arg("D"), py::arg("S"), py::arg("spec"),
        py::arg("sat_size"), py::arg("limits"), py::arg("loss"), py::arg("glob"), py::arg("updates"),
        py::arg("vals"), py::arg("mask"), py::arg("w_next") = py::none(),
        "GradientMonitor's fast path (internal; csrc/stats.h monitor_rows): writes one recorded step's history "
        "values into vals and its event conditions into mask; 0 (nothing written) when the step holds a "
        "non-finite value, else 1 | 2 (updates: an update norm is not 0) | 4 (w_next, float64 (k, 4) or None, "
        "received the next step's weight statistics from R's column 3: their sum is finite).");

  m.def(
      "activation_stats",
      [](const py::object& A_obj, const py::object& Z, const std::string& mode_name, double threshold) {
        const std::string op = "activation_stats";
        const py::array A = as_ndarray(op, "A", A_obj);
        const StatsMode mode = parse_mode(op, mode_name);
        if (!std::isfinite(threshold) || threshold < 0)
          fail(op, "threshold must be finite and >= 0, got " + number_str(threshold));
        return dtype_of(op, "A", A) == DType::f32 ? activation_stats_impl<float>(A, Z, mode, threshold)
                                                  : activation_stats_impl<double>(A, Z, mode, threshold);
      },
      py::arg("A"), py::arg("Z") = py::none(), py::arg("mode") = "none", py::arg("threshold") = 5.0,
      "Statistics of an activation A (float32/float64, C-contiguous; units = A.shape[-1], rows = the other axes, a "
      "1-d A is n rows of one unit) with its pre-activation Z (None, or the shape and dtype of A): float64 (8,) "
      "[mean, std, min, max, nonfinite, dead_units, saturated_entries, units]. mean / std (population) over all "
      "entries, NaN / Inf propagate; min / max over the finite entries (nan when none); nonfinite counts NaN / Inf "
      "in A. mode 'dead': units whose value (Z if given, else A) is <= 0 in every row; mode 'saturated' (Z "
      "required): entries with |Z| > threshold. Counts of the other mode are 0.");

  m.def(
      "magnitude_stats",
      [](const py::object& g_obj) {
        const std::string op = "magnitude_stats";
        const py::array g = as_ndarray(op, "g", g_obj);
        py::array_t<double> out(static_cast<py::ssize_t>(kMagCols));
        double* o = out.mutable_data();
        const index_t n = static_cast<index_t>(g.size());
        if (dtype_of(op, "g", g) == DType::f32) {
          const float* p = in_ptr<float>(op, "g", g);
          py::gil_scoped_release nogil;
          magnitude_stats<float>(p, n, o);
        } else {
          const double* p = in_ptr<double>(op, "g", g);
          py::gil_scoped_release nogil;
          magnitude_stats<double>(p, n, o);
        }
        return out;
      },
      py::arg("g"),
      "The size of a gradient g (float32/float64, C-contiguous, any shape), as the compiled plan measures a "
      "monitored layer's dz: float64 (4,) [sum of squares, its sqrt, max |g| over the finite values, count of NaN / "
      "Inf] (grad_stats' first four columns).");

  m.def(
      "diff_sumsq_flat",
      [](const py::object& a_obj, const py::object& b_obj, const py::array& offsets) {
        const std::string op = "diff_sumsq_flat";
        const py::array a = as_ndarray(op, "a", a_obj), b = as_ndarray(op, "b", b_obj);
        if (a.ndim() != 1) fail(op, "a must be 1-d, got shape " + shape_str(a));
        if (b.ndim() != 1 || b.size() != a.size())
          fail(op, "b must be 1-d of the size of a (" + std::to_string(a.size()) + "), got shape " + shape_str(b));
        return dtype_of(op, "a", a) == DType::f32 ? diff_sumsq_impl<float>(a, b, offsets)
                                                  : diff_sumsq_impl<double>(a, b, offsets);
      },
      py::arg("a"), py::arg("b"), py::arg("offsets"),
      "Sum of (a - b)^2 over each segment [offsets[i], offsets[i+1]) of two 1-d buffers of one size and dtype, "
      "accumulated in double: float64 (k,). offsets int64 (k+1,), from 0 to a.size, non-decreasing.");
}

}  // namespace gc
