#include <cstdint>

#include "bind_common.h"
#include "loss.h"

namespace gc {

namespace {

template <class T>
T* optional_grad(const std::string& op, const py::object& grad, const py::array& like, py::array& keep) {
  if (!present(grad)) return nullptr;
  keep = as_ndarray(op, "grad", grad, true);
  if (keep.ndim() != like.ndim() || keep.size() != like.size())
    fail(op, "grad must have the input's shape " + shape_str(like) + ", got " + shape_str(keep));
  return out_ptr<T>(op, "grad", keep);
}

void expect_same_shape(const std::string& op, const py::array& a, const py::array& b) {
  if (!same_shape(a, b)) fail(op, "input has shape " + shape_str(a) + " but target has shape " + shape_str(b));
  if (a.size() == 0) fail(op, "empty input of shape " + shape_str(a));
}

template <class T>
double elementwise(const char* name, double (*kernel)(const T*, const T*, T*, index_t), const py::array& P,
                   const py::array& Tg, const py::object& grad) {
  const std::string op = name;
  expect_same_shape(op, P, Tg);
  const T* p = in_ptr<T>(op, "input", P);
  const T* t = in_ptr<T>(op, "target", Tg);
  py::array keep;
  T* g = optional_grad<T>(op, grad, P, keep);
  const index_t n = P.size();
  py::gil_scoped_release nogil;
  return kernel(p, t, g, n);
}

std::pair<py::ssize_t, py::ssize_t> logits_shape(const std::string& op, const py::array& Z) {
  if (Z.ndim() != 2) fail(op, "logits must be 2-d (batch, classes), got shape " + shape_str(Z));
  if (Z.shape(0) == 0 || Z.shape(1) == 0) fail(op, "empty logits of shape " + shape_str(Z));
  return {Z.shape(0), Z.shape(1)};
}

template <class T>
double ce_labels(const py::array& Z, const py::array& labels, const py::object& grad) {
  const std::string op = "cross_entropy";
  auto [rows, classes] = logits_shape(op, Z);
  if (!has_dtype<std::int64_t>(labels))
    fail(op, "labels must be int64, got " + dtype_str(labels));
  expect_shape(op, "labels", labels, {rows});
  if (!(labels.flags() & py::array::c_style)) fail(op, "labels must be C-contiguous");
  const T* z = in_ptr<T>(op, "logits", Z);
  const auto* lab = static_cast<const std::int64_t*>(labels.data());
  py::array keep;
  T* g = optional_grad<T>(op, grad, Z, keep);
  index_t bad = -1;
  double loss;
  {
    py::gil_scoped_release nogil;
    loss = cross_entropy_loss<T>(z, lab, g, rows, classes, &bad);
  }
  if (bad >= 0)
    fail(op, "label " + std::to_string(lab[bad]) + " at row " + std::to_string(bad) + " is out of range for " +
                 std::to_string(classes) + " classes");
  return loss;
}

template <class T>
double ce_onehot(const py::array& Z, const py::array& Tg, const py::object& grad) {
  const std::string op = "cross_entropy";
  auto [rows, classes] = logits_shape(op, Z);
  expect_same_shape(op, Z, Tg);
  const T* z = in_ptr<T>(op, "logits", Z);
  const T* t = in_ptr<T>(op, "target", Tg);
  py::array keep;
  T* g = optional_grad<T>(op, grad, Z, keep);
  py::gil_scoped_release nogil;
  return cross_entropy_onehot_loss<T>(z, t, g, rows, classes);
}

}  // namespace

void bind_loss(py::module_& m) {
  m.def(
      "mse_loss",
      [](const py::array& P, const py::array& Tg, const py::object& grad) {
        if (dtype_of("mse_loss", "input", P) == DType::f32) return elementwise<float>("mse_loss", &mse_loss<float>, P, Tg, grad);
        return elementwise<double>("mse_loss", &mse_loss<double>, P, Tg, grad);
      },
      py::arg("pred"), py::arg("target"), py::arg("grad") = py::none(), "mean((pred - target)^2); grad written.");
  m.def(
      "bce_with_logits_loss",
      [](const py::array& P, const py::array& Tg, const py::object& grad) {
        if (dtype_of("bce_with_logits_loss", "input", P) == DType::f32)
          return elementwise<float>("bce_with_logits_loss", &bce_with_logits_loss<float>, P, Tg, grad);
        return elementwise<double>("bce_with_logits_loss", &bce_with_logits_loss<double>, P, Tg, grad);
      },
      py::arg("logits"), py::arg("target"), py::arg("grad") = py::none());
  m.def(
      "cross_entropy_loss",
      [](const py::array& Z, const py::array& labels, const py::object& grad) {
        if (dtype_of("cross_entropy", "logits", Z) == DType::f32) return ce_labels<float>(Z, labels, grad);
        return ce_labels<double>(Z, labels, grad);
      },
      py::arg("logits"), py::arg("labels"), py::arg("grad") = py::none());
  m.def(
      "cross_entropy_onehot_loss",
      [](const py::array& Z, const py::array& Tg, const py::object& grad) {
        if (dtype_of("cross_entropy", "logits", Z) == DType::f32) return ce_onehot<float>(Z, Tg, grad);
        return ce_onehot<double>(Z, Tg, grad);
      },
      py::arg("logits"), py::arg("target"), py::arg("grad") = py::none());
}

}  // namespace gc
