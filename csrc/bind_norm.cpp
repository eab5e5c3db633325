#include <cmath>
#include <cstdint>

#include "bind_common.h"
#include "norm.h"

namespace gc {

namespace {

Segment segment_of(const std::string& op, const py::array& a, std::size_t i) {
  const std::string name = "arrays[" + std::to_string(i) + "]";
  const bool is_double = dtype_of(op, name.c_str(), a) == DType::f64;
  if (!(a.flags() & py::array::c_style)) fail(op, name + " must be C-contiguous");
  return {a.data(), static_cast<index_t>(a.size()), is_double};
}

std::vector<Segment> segments_of(const std::string& op, const py::list& arrays, std::vector<py::array>& keep) {
  std::vector<Segment> segs;
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    if (!py::isinstance<py::array>(arrays[i]))
      fail(op, "arrays[" + std::to_string(i) + "] is not a NumPy array");
    keep.push_back(arrays[i].cast<py::array>());
    segs.push_back(segment_of(op, keep.back(), i));
  }
  return segs;
}

py::array_t<double> stats_table(const std::vector<Segment>& segs) {
  std::vector<SegmentStats> st;
  {
    py::gil_scoped_release nogil;
    st = segment_stats(segs, false);
  }
  py::array_t<double> out({static_cast<py::ssize_t>(segs.size()), py::ssize_t(6)});
  auto r = out.mutable_unchecked<2>();
  for (std::size_t i = 0; i < segs.size(); ++i) {
    const double n = double(segs[i].size);
    const double shifted_mean = n > 0 ? st[i].sum / n : 0.0;
    const double mean = n > 0 ? segment_shift(segs[i]) + shifted_mean : 0.0;
    double var = n > 0 ? st[i].sumsq_shifted / n - shifted_mean * shifted_mean : 0.0;
    if (var < 0 || std::isnan(var)) var = std::isnan(var) ? var : 0.0;
    r(i, 0) = st[i].sumsq;
    r(i, 1) = std::sqrt(st[i].sumsq);
    r(i, 2) = st[i].maxabs;
    r(i, 3) = double(st[i].nonfinite);
    r(i, 4) = mean;
    r(i, 5) = std::sqrt(var);
  }
  return out;
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def(
      "grad_stats",
      [](const py::list& arrays) {
        std::vector<py::array> keep;
        return stats_table(segments_of("grad_stats", arrays, keep));
      },
      py::arg("arrays"),
      "(k, 6) float64: sum of squares, L2 norm, max |x| over finite values, non-finite count, mean, std.");
  m.def(
      "grad_stats_flat",
      [](const py::array& buffer, const py::array& offsets) {
        const std::string op = "grad_stats_flat";
        if (buffer.ndim() != 1) fail(op, "buffer must be 1-d, got shape " + shape_str(buffer));
        const Segment whole = segment_of(op, buffer, 0);
        if (!offsets.dtype().is(py::dtype::of<std::int64_t>()) || offsets.ndim() != 1 || offsets.size() < 1 ||
            !(offsets.flags() & py::array::c_style))
          fail(op, "offsets must be a 1-d int64 array of k + 1 boundaries");
        const auto* off = static_cast<const std::int64_t*>(offsets.data());
        const py::ssize_t k = offsets.size() - 1;
        if (off[0] != 0 || off[k] != buffer.size())
          fail(op, "offsets must start at 0 and end at the buffer size " + std::to_string(buffer.size()));
        std::vector<Segment> segs;
        const std::size_t item = whole.is_double ? sizeof(double) : sizeof(float);
        for (py::ssize_t i = 0; i < k; ++i) {
          if (off[i + 1] < off[i]) fail(op, "offsets must not decrease");
          segs.push_back({static_cast<const char*>(whole.data) + off[i] * item, static_cast<index_t>(off[i + 1] - off[i]),
                          whole.is_double});
        }
        return stats_table(segs);
      },
      py::arg("buffer"), py::arg("offsets"));
  m.def(
      "sum_of_squares",
      [](const py::list& arrays) {
        std::vector<py::array> keep;
        auto segs = segments_of("sum_of_squares", arrays, keep);
        std::vector<SegmentStats> st;
        {
          py::gil_scoped_release nogil;
          st = segment_stats(segs, true);
        }
        py::array_t<double> out(static_cast<py::ssize_t>(segs.size()));
        for (std::size_t i = 0; i < segs.size(); ++i) out.mutable_at(i) = st[i].sumsq;
        return out;
      },
      py::arg("arrays"));
  m.def(
      "global_norm",
      [](const py::list& arrays) {
        std::vector<py::array> keep;
        auto segs = segments_of("global_norm", arrays, keep);
        py::gil_scoped_release nogil;
        double total = 0.0;
        for (const auto& s : segment_stats(segs, true)) total += s.sumsq;
        return std::sqrt(total);
      },
      py::arg("arrays"), "sqrt of the total sum of squares of all arrays.");
}

}  // namespace gc
