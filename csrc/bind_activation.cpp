// Python bindings of the activation family (see activation.h for the math).
//
// Every array is taken as-is: exact dtype (float32 or float64, chosen by the first array),
// C-contiguous, never copied. A py::array parameter never converts its argument (a list is
// refused with a TypeError by pybind11; noconvert only says so explicitly), and the
// optional outputs go through as_ndarray, so nothing is silently copied into a temporary
// whose writes would be lost.
#include <string>
#include <vector>

#include "activation.h"
#include "bind_common.h"

namespace gc {

namespace {

Act parse_for(const std::string& op, const std::string& kind) {
  try {
    return parse_activation(kind);
  } catch (const std::invalid_argument& e) {
    fail(op, e.what());
  }
}

template <class T>
void forward_impl(const std::string& kind, const py::array& X, py::array& Y, double alpha) {
  const std::string op = "activation_forward";
  const Act act = parse_for(op, kind);
  const T* x = in_ptr<T>(op, "X", X);
  expect_size(op, "Y", Y, X.size());
  T* y = out_ptr<T>(op, "Y", Y);
  const index_t n = X.size();
  py::gil_scoped_release nogil;
  activation_forward<T>(act, x, y, n, alpha);
}

template <class T>
void backward_impl(const std::string& kind, const py::array& X, const py::array& Y, const py::array& dY,
                   py::array& dX, double alpha) {
  const std::string op = "activation_backward";
  const Act act = parse_for(op, kind);
  const T* x = in_ptr<T>(op, "X", X);
  expect_size(op, "Y", Y, X.size());
  const T* y = in_ptr<T>(op, "Y", Y);
  expect_size(op, "dY", dY, X.size());
  const T* g = in_ptr<T>(op, "dY", dY);
  expect_size(op, "dX", dX, X.size());
  T* dx = out_ptr<T>(op, "dX", dX);
  const index_t n = X.size();
  py::gil_scoped_release nogil;
  activation_backward<T>(act, x, y, g, dx, n, alpha);
}

// Slopes must number 1 or the width of the last axis.
void check_slopes(const std::string& op, const py::array& X, const py::array& A, py::ssize_t cols) {
  if (A.size() != 1 && A.size() != cols)
    fail(op, "alpha must have 1 or " + std::to_string(cols) + " elements (last axis of X, shape " + shape_str(X) +
                 "), got shape " + shape_str(A));
}

template <class T>
void prelu_forward_impl(const py::array& X, const py::array& A, py::array& Y) {
  const std::string op = "prelu_forward";
  const auto rc = rows_cols(X);
  check_slopes(op, X, A, rc.second);
  const T* x = in_ptr<T>(op, "X", X);
  const T* a = in_ptr<T>(op, "alpha", A);
  expect_size(op, "Y", Y, X.size());
  T* y = out_ptr<T>(op, "Y", Y);
  const index_t a_size = A.size();
  py::gil_scoped_release nogil;
  prelu_forward<T>(x, a, y, rc.first, rc.second, a_size);
}

template <class T>
void prelu_backward_impl(const py::array& X, const py::array& A, const py::array& dY, const py::object& dX,
                         const py::object& dA, bool accumulate) {
  const std::string op = "prelu_backward";
  const auto rc = rows_cols(X);
  check_slopes(op, X, A, rc.second);
  const T* x = in_ptr<T>(op, "X", X);
  const T* a = in_ptr<T>(op, "alpha", A);
  expect_size(op, "dY", dY, X.size());
  const T* g = in_ptr<T>(op, "dY", dY);
  py::array a_dx, a_da;
  T *dx = nullptr, *da = nullptr;
  if (present(dX)) {
    a_dx = as_ndarray(op, "dX", dX, true);
    expect_size(op, "dX", a_dx, X.size());
    dx = out_ptr<T>(op, "dX", a_dx);
  }
  if (present(dA)) {
    a_da = as_ndarray(op, "dalpha", dA, true);
    expect_size(op, "dalpha", a_da, A.size());
    da = out_ptr<T>(op, "dalpha", a_da);
  }
  const index_t a_size = A.size();
  py::gil_scoped_release nogil;
  prelu_backward<T>(x, a, g, dx, da, rc.first, rc.second, a_size, accumulate);
}

template <class T>
void rowwise_forward_impl(const std::string& op, const py::array& X, py::array& Y) {
  const auto rc = rows_cols(X);
  const T* x = in_ptr<T>(op, "X", X);
  expect_size(op, "Y", Y, X.size());
  T* y = out_ptr<T>(op, "Y", Y);
  py::gil_scoped_release nogil;
  if (op == "softmax_forward") softmax_forward<T>(x, y, rc.first, rc.second);
  else log_softmax_forward<T>(x, y, rc.first, rc.second);
}

template <class T>
void rowwise_backward_impl(const std::string& op, const py::array& Y, const py::array& dY, py::array& dX) {
  const auto rc = rows_cols(Y);
  const T* y = in_ptr<T>(op, "Y", Y);
  expect_size(op, "dY", dY, Y.size());
  const T* g = in_ptr<T>(op, "dY", dY);
  expect_size(op, "dX", dX, Y.size());
  T* dx = out_ptr<T>(op, "dX", dX);
  py::gil_scoped_release nogil;
  if (op == "softmax_backward") softmax_backward<T>(y, g, dx, rc.first, rc.second);
  else log_softmax_backward<T>(y, g, dx, rc.first, rc.second);
}

void def_rowwise(py::module_& m, const char* fwd, const char* bwd, const char* fwd_doc, const char* bwd_doc) {
  const std::string f = fwd, b = bwd;
  m.def(
      fwd,
      [f](const py::array& X, py::array Y) {
        if (dtype_of(f, "X", X) == DType::f32) rowwise_forward_impl<float>(f, X, Y);
        else rowwise_forward_impl<double>(f, X, Y);
      },
      py::arg("X").noconvert(), py::arg("Y").noconvert(), fwd_doc);
  m.def(
      bwd,
      [b](const py::array& Y, const py::array& dY, py::array dX) {
        if (dtype_of(b, "Y", Y) == DType::f32) rowwise_backward_impl<float>(b, Y, dY, dX);
        else rowwise_backward_impl<double>(b, Y, dY, dX);
      },
      py::arg("Y").noconvert(), py::arg("dY").noconvert(), py::arg("dX").noconvert(), bwd_doc);
}

}  // namespace

void bind_activation(py::module_& m) {
  m.def(
      "activation_forward",
      [](const std::string& kind, const py::array& X, py::array Y, double alpha) {
        if (dtype_of("activation_forward", "X", X) == DType::f32) forward_impl<float>(kind, X, Y, alpha);
        else forward_impl<double>(kind, X, Y, alpha);
      },
      py::arg("kind"), py::arg("X").noconvert(), py::arg("Y").noconvert(), py::arg("alpha") = 0.0,
      "Y = f(X) element-wise, in place (any shape, Y.size == X.size, Y may be X). alpha is the\n"
      "negative slope of leaky_relu and the alpha of elu; other kinds ignore it.");
  m.def(
      "activation_backward",
      [](const std::string& kind, const py::array& X, const py::array& Y, const py::array& dY, py::array dX,
         double alpha) {
        if (dtype_of("activation_backward", "X", X) == DType::f32)
          backward_impl<float>(kind, X, Y, dY, dX, alpha);
        else
          backward_impl<double>(kind, X, Y, dY, dX, alpha);
      },
      py::arg("kind"), py::arg("X").noconvert(), py::arg("Y").noconvert(), py::arg("dY").noconvert(),
      py::arg("dX").noconvert(), py::arg("alpha") = 0.0,
      "dX = f'(X) * dY in place; X is the forward input and Y its output (sigmoid and tanh\n"
      "read Y, the other kinds X). dX may be dY.");
  m.def(
      "prelu_forward",
      [](const py::array& X, const py::array& alpha, py::array Y) {
        if (dtype_of("prelu_forward", "X", X) == DType::f32) prelu_forward_impl<float>(X, alpha, Y);
        else prelu_forward_impl<double>(X, alpha, Y);
      },
      py::arg("X").noconvert(), py::arg("alpha").noconvert(), py::arg("Y").noconvert(),
      "Y = X if X > 0 else alpha[j] * X, with j the index on the last axis; alpha has 1 or\n"
      "X.shape[-1] elements.");
  m.def(
      "prelu_backward",
      [](const py::array& X, const py::array& alpha, const py::array& dY, const py::object& dX,
         const py::object& dalpha, bool accumulate) {
        if (dtype_of("prelu_backward", "X", X) == DType::f32)
          prelu_backward_impl<float>(X, alpha, dY, dX, dalpha, accumulate);
        else
          prelu_backward_impl<double>(X, alpha, dY, dX, dalpha, accumulate);
      },
      py::arg("X").noconvert(), py::arg("alpha").noconvert(), py::arg("dY").noconvert(),
      py::arg("dX") = py::none(), py::arg("dalpha") = py::none(), py::arg("accumulate") = false,
      "dX = dY * slope; dalpha (+)= sum over rows of dY * X where X <= 0 (summed over\n"
      "everything when alpha has one element). dX and dalpha may each be None.");
  def_rowwise(m, "softmax_forward", "softmax_backward",
              "Y = softmax(X) over the last axis, in place (Y may be X).",
              "dX = Y * (dY - sum(dY * Y, last axis)) in place, Y the softmax output.");
  def_rowwise(m, "log_softmax_forward", "log_softmax_backward",
              "Y = log_softmax(X) over the last axis, in place (Y may be X).",
              "dX = dY - exp(Y) * sum(dY, last axis) in place, Y the log_softmax output.");
  m.def(
      "activation_names",
      [] {
        py::list names;
        for (const auto& n : activation_name_list()) names.append(py::str(n));
        return names;
      },
      "Every kind name accepted by activation_forward/backward (canonical names, then the\n"
      "aliases 'linear' = identity and 'swish' = silu).");
}

}  // namespace gc
