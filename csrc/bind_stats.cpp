// Python bindings of the monitor's statistics kernels (see stats.h for the math).
//
// Arrays are taken as they are (float32 or float64, C-contiguous, never copied); a
// non-ndarray argument is a TypeError, any other bad input a ValueError naming the
// argument, before the GIL is released and the kernel runs.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

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

}  // namespace

void bind_stats(py::module_& m) {
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
