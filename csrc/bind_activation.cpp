#include "activation.h"
#include <pybind11/stl.h>

#include "bind_common.h"

namespace gc {

namespace {

template <class T>
void act_forward(const std::string& kind, const py::array& X, py::array& Y, double alpha) {
  const std::string op = "activation_forward(" + kind + ")";
  const Act k = parse_activation(kind);
  expect_size(op, "Y", Y, X.size());
  const T* x = in_ptr<T>(op, "X", X);
  T* y = out_ptr<T>(op, "Y", Y);
  const index_t n = X.size();
  py::gil_scoped_release nogil;
  activation_forward<T>(k, x, y, n, alpha);
}

template <class T>
void act_backward(const std::string& kind, const py::array& X, const py::array& Y, const py::array& dY, py::array& dX,
                  double alpha) {
  const std::string op = "activation_backward(" + kind + ")";
  const Act k = parse_activation(kind);
  for (auto* a : {&Y, &dY}) expect_size(op, a == &Y ? "Y" : "dY", *a, X.size());
  expect_size(op, "dX", dX, X.size());
  const T* x = in_ptr<T>(op, "X", X);
  const T* y = in_ptr<T>(op, "Y", Y);
  const T* g = in_ptr<T>(op, "dY", dY);
  T* dx = out_ptr<T>(op, "dX", dX);
  const index_t n = X.size();
  py::gil_scoped_release nogil;
  activation_backward<T>(k, x, y, g, dx, n, alpha);
}

index_t slope_count(const std::string& op, const py::array& X, const py::array& A) {
  const index_t cols = rows_cols(X).second;
  if (A.size() != 1 && A.size() != cols)
    fail(op, "alpha must have 1 or " + std::to_string(cols) + " elements for X of shape " + shape_str(X) +
                 ", got shape " + shape_str(A));
  return A.size();
}

template <class T>
void prelu_fwd(const py::array& X, const py::array& A, py::array& Y) {
  const std::string op = "prelu_forward";
  const auto rc = rows_cols(X);
  const index_t na = slope_count(op, X, A);
  expect_size(op, "Y", Y, X.size());
  const T* x = in_ptr<T>(op, "X", X);
  const T* a = in_ptr<T>(op, "alpha", A);
  T* y = out_ptr<T>(op, "Y", Y);
  py::gil_scoped_release nogil;
  prelu_forward<T>(x, a, y, rc.first, rc.second, na);
}

template <class T>
void prelu_bwd(const py::array& X, const py::array& A, const py::array& dY, const py::object& dX, const py::object& dA,
               bool accumulate) {
  const std::string op = "prelu_backward";
  const auto rc = rows_cols(X);
  const index_t na = slope_count(op, X, A);
  expect_size(op, "dY", dY, X.size());
  const T* x = in_ptr<T>(op, "X", X);
  const T* a = in_ptr<T>(op, "alpha", A);
  const T* g = in_ptr<T>(op, "dY", dY);
  py::array adx, ada;
  T *dx = nullptr, *da = nullptr;
  if (present(dX)) {
    adx = dX.cast<py::array>();
    expect_size(op, "dX", adx, X.size());
    dx = out_ptr<T>(op, "dX", adx);
  }
  if (present(dA)) {
    ada = dA.cast<py::array>();
    expect_size(op, "dalpha", ada, na);
    da = out_ptr<T>(op, "dalpha", ada);
  }
  py::gil_scoped_release nogil;
  prelu_backward<T>(x, a, g, dx, da, rc.first, rc.second, na, accumulate);
}

template <class T>
void rowwise(const char* name, void (*kernel)(const T*, T*, index_t, index_t), const py::array& X, py::array& Y) {
  const std::string op = name;
  const auto rc = rows_cols(X);
  expect_size(op, "Y", Y, X.size());
  if (X.ndim() == 0) fail(op, "X must have at least one dimension");
  const T* x = in_ptr<T>(op, "X", X);
  T* y = out_ptr<T>(op, "Y", Y);
  if (rc.second == 0) return;
  py::gil_scoped_release nogil;
  kernel(x, y, rc.first, rc.second);
}

template <class T>
void rowwise_bwd(const char* name, void (*kernel)(const T*, const T*, T*, index_t, index_t), const py::array& Y,
                 const py::array& dY, py::array& dX) {
  const std::string op = name;
  const auto rc = rows_cols(Y);
  expect_size(op, "dY", dY, Y.size());
  expect_size(op, "dX", dX, Y.size());
  if (Y.ndim() == 0) fail(op, "Y must have at least one dimension");
  const T* y = in_ptr<T>(op, "Y", Y);
  const T* g = in_ptr<T>(op, "dY", dY);
  T* dx = out_ptr<T>(op, "dX", dX);
  if (rc.second == 0) return;
  py::gil_scoped_release nogil;
  kernel(y, g, dx, rc.first, rc.second);
}

}  // namespace

void bind_activation(py::module_& m) {
  m.def(
      "activation_forward",
      [](const std::string& kind, const py::array& X, py::array Y, double alpha) {
        if (dtype_of("activation_forward", "X", X) == DType::f32) act_forward<float>(kind, X, Y, alpha);
        else act_forward<double>(kind, X, Y, alpha);
      },
      py::arg("kind"), py::arg("X"), py::arg("Y"), py::arg("alpha") = 0.0, "Y = f(X) element-wise (Y may be X).");
  m.def(
      "activation_backward",
      [](const std::string& kind, const py::array& X, const py::array& Y, const py::array& dY, py::array dX,
         double alpha) {
        if (dtype_of("activation_backward", "X", X) == DType::f32) act_backward<float>(kind, X, Y, dY, dX, alpha);
        else act_backward<double>(kind, X, Y, dY, dX, alpha);
      },
      py::arg("kind"), py::arg("X"), py::arg("Y"), py::arg("dY"), py::arg("dX"), py::arg("alpha") = 0.0,
      "dX = f'(X) * dY, with Y = f(X) from the forward pass.");
  m.def(
      "prelu_forward",
      [](const py::array& X, const py::array& A, py::array Y) {
        if (dtype_of("prelu_forward", "X", X) == DType::f32) prelu_fwd<float>(X, A, Y);
        else prelu_fwd<double>(X, A, Y);
      },
      py::arg("X"), py::arg("alpha"), py::arg("Y"));
  m.def(
      "prelu_backward",
      [](const py::array& X, const py::array& A, const py::array& dY, const py::object& dX, const py::object& dA,
         bool accumulate) {
        if (dtype_of("prelu_backward", "X", X) == DType::f32) prelu_bwd<float>(X, A, dY, dX, dA, accumulate);
        else prelu_bwd<double>(X, A, dY, dX, dA, accumulate);
      },
      py::arg("X"), py::arg("alpha"), py::arg("dY"), py::arg("dX") = py::none(), py::arg("dalpha") = py::none(),
      py::arg("accumulate") = false);
#define GC_ROWWISE(name)                                                                                        \
  m.def(                                                                                                        \
      #name "_forward",                                                                                         \
      [](const py::array& X, py::array Y) {                                                                     \
        if (dtype_of(#name "_forward", "X", X) == DType::f32) rowwise<float>(#name "_forward", &name##_forward<float>, X, Y); \
        else rowwise<double>(#name "_forward", &name##_forward<double>, X, Y);                                 \
      },                                                                                                        \
      py::arg("X"), py::arg("Y"));                                                                              \
  m.def(                                                                                                        \
      #name "_backward",                                                                                        \
      [](const py::array& Y, const py::array& dY, py::array dX) {                                               \
        if (dtype_of(#name "_backward", "Y", Y) == DType::f32) rowwise_bwd<float>(#name "_backward", &name##_backward<float>, Y, dY, dX); \
        else rowwise_bwd<double>(#name "_backward", &name##_backward<double>, Y, dY, dX);                      \
      },                                                                                                        \
      py::arg("Y"), py::arg("dY"), py::arg("dX"));
  GC_ROWWISE(softmax)
  GC_ROWWISE(log_softmax)
#undef GC_ROWWISE
  m.def("activation_names", []() {
    return std::vector<std::string>{"identity", "linear", "relu", "leaky_relu", "elu", "selu", "sigmoid",
                                    "tanh", "silu", "swish", "gelu", "gelu_tanh", "softplus"};
  });
}

}  // namespace gc
