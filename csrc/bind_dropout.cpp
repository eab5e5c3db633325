#include <cstdint>

#include "bind_common.h"
#include "dropout.h"

namespace gc {

namespace {

void check_p(const std::string& op, double p) {
  if (!(p >= 0.0 && p < 1.0)) fail(op, "p must be in [0, 1), got " + std::to_string(p));
}

std::uint8_t* mask_ptr(const std::string& op, py::array& mask, py::ssize_t n, bool writable) {
  if (!has_dtype<std::uint8_t>(mask)) fail(op, "mask must be uint8, got " + dtype_str(mask));
  if (!(mask.flags() & py::array::c_style)) fail(op, "mask must be C-contiguous");
  expect_size(op, "mask", mask, n);
  if (writable && !mask.writeable()) fail(op, "mask is read-only but is written in place");
  return static_cast<std::uint8_t*>(writable ? mask.mutable_data() : const_cast<void*>(mask.data()));
}

template <class T>
void forward_impl(const py::array& X, py::array& Y, py::array& mask, double p, std::uint64_t seed, std::uint64_t offset) {
  const std::string op = "dropout_forward";
  check_p(op, p);
  expect_size(op, "Y", Y, X.size());
  const T* x = in_ptr<T>(op, "X", X);
  T* y = out_ptr<T>(op, "Y", Y);
  std::uint8_t* m = mask_ptr(op, mask, X.size(), true);
  const index_t n = X.size();
  py::gil_scoped_release nogil;
  dropout_forward<T>(x, y, m, n, p, seed, offset);
}

template <class T>
void backward_impl(const py::array& dY, py::array& mask, double p, py::array& dX) {
  const std::string op = "dropout_backward";
  check_p(op, p);
  expect_size(op, "dX", dX, dY.size());
  const T* g = in_ptr<T>(op, "dY", dY);
  T* dx = out_ptr<T>(op, "dX", dX);
  const std::uint8_t* m = mask_ptr(op, mask, dY.size(), false);
  const index_t n = dY.size();
  py::gil_scoped_release nogil;
  dropout_backward<T>(g, m, dx, n, p);
}

}  // namespace

void bind_dropout(py::module_& m) {
  m.def(
      "dropout_forward",
      [](const py::array& X, py::array Y, py::array mask, double p, std::uint64_t seed, std::uint64_t offset) {
        if (dtype_of("dropout_forward", "X", X) == DType::f32) forward_impl<float>(X, Y, mask, p, seed, offset);
        else forward_impl<double>(X, Y, mask, p, seed, offset);
      },
      py::arg("X"), py::arg("Y"), py::arg("mask"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0,
      "Y = X * mask / (1 - p) with mask from the counter-based generator of (seed, offset + i).");
  m.def(
      "dropout_backward",
      [](const py::array& dY, py::array mask, double p, py::array dX) {
        if (dtype_of("dropout_backward", "dY", dY) == DType::f32) backward_impl<float>(dY, mask, p, dX);
        else backward_impl<double>(dY, mask, p, dX);
      },
      py::arg("dY"), py::arg("mask"), py::arg("p"), py::arg("dX"));
}

}  // namespace gc
