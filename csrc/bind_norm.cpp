#include <cstdint>
#include <vector>

#include "bind_common.h"
#include "norm.h"

namespace gc {

namespace {

// Takes the arrays of a list (or tuple) without copying: each must be float32 or float64
// and C-contiguous. `keep` holds references so the buffers outlive the GIL release.
std::vector<GradView> collect_views(const std::string& op, const py::object& arrays, std::vector<py::array>& keep) {
  if (!py::isinstance<py::list>(arrays) && !py::isinstance<py::tuple>(arrays))
    fail(op, "arrays must be a list or tuple of float32/float64 arrays, got " +
                 py::str(py::type::of(arrays).attr("__name__")).cast<std::string>());
  const py::sequence seq = arrays.cast<py::sequence>();
  const size_t k = static_cast<size_t>(py::len(seq));
  keep.reserve(k);
  std::vector<GradView> views;
  views.reserve(k);
  for (size_t i = 0; i < k; ++i) {
    const py::object item = seq[i];
    const std::string name = "arrays[" + std::to_string(i) + "]";
    if (!py::isinstance<py::array>(item))
      fail(op, name + " must be a numpy array, got " + py::str(py::type::of(item).attr("__name__")).cast<std::string>());
    keep.push_back(py::reinterpret_borrow<py::array>(item));
    const py::array& a = keep.back();
    const bool is_double = dtype_of(op, name.c_str(), a) == DType::f64;
    const void* p = is_double ? static_cast<const void*>(in_ptr<double>(op, name.c_str(), a))
                              : static_cast<const void*>(in_ptr<float>(op, name.c_str(), a));
    views.push_back({p, static_cast<index_t>(a.size()), is_double});
  }
  return views;
}

py::array_t<double> stats_result(size_t k) {
  return py::array_t<double>({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(kStatCols)});
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def(
      "grad_stats",
      [](const py::object& arrays) {
        const std::string op = "grad_stats";
        std::vector<py::array> keep;
        const std::vector<GradView> views = collect_views(op, arrays, keep);
        py::array_t<double> out = stats_result(views.size());
        double* o = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          grad_stats(views.data(), static_cast<index_t>(views.size()), o);
        }
        return out;
      },
      py::arg("arrays"),
      "Statistics of each array in one pass: float64 (k, 6) with columns [sum_of_squares, l2_norm, max_abs, "
      "nonfinite_count, mean, std]. max_abs ignores NaN/Inf (they are counted); std is the population std.");

  m.def(
      "grad_stats_flat",
      [](const py::array& buffer, const py::array& offsets) {
        const std::string op = "grad_stats_flat";
        if (buffer.ndim() != 1) fail(op, "buffer must be 1-d, got shape " + shape_str(buffer));
        const std::int64_t* off = flat_offsets(op, offsets, buffer.size(), "buffer");
        const py::ssize_t k = offsets.size() - 1;
        py::array_t<double> out = stats_result(static_cast<size_t>(k));
        double* o = out.mutable_data();
        if (dtype_of(op, "buffer", buffer) == DType::f32) {
          const float* b = in_ptr<float>(op, "buffer", buffer);
          py::gil_scoped_release nogil;
          grad_stats_flat<float>(b, off, k, o);
        } else {
          const double* b = in_ptr<double>(op, "buffer", buffer);
          py::gil_scoped_release nogil;
          grad_stats_flat<double>(b, off, k, o);
        }
        return out;
      },
      py::arg("buffer"), py::arg("offsets"),
      "grad_stats over the segments buffer[offsets[i]:offsets[i+1]] of one 1-d buffer; offsets int64 (k+1,).");

  m.def(
      "global_norm",
      [](const py::object& arrays) {
        std::vector<py::array> keep;
        const std::vector<GradView> views = collect_views("global_norm", arrays, keep);
        py::gil_scoped_release nogil;
        return global_norm(views.data(), static_cast<index_t>(views.size()));
      },
      py::arg("arrays"), "sqrt of the total sum of squares of all arrays (float).");

  m.def(
      "sum_of_squares",
      [](const py::object& arrays) {
        std::vector<py::array> keep;
        const std::vector<GradView> views = collect_views("sum_of_squares", arrays, keep);
        py::array_t<double> out(static_cast<py::ssize_t>(views.size()));
        double* o = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          sum_of_squares(views.data(), static_cast<index_t>(views.size()), o);
        }
        return out;
      },
      py::arg("arrays"), "Sum of squares of each array: float64 (k,).");
}

}  // namespace gc
