#include "bind_common.h"
#include "dense.h"
#include "dense_small.h"

namespace gc {

namespace {

template <class T>
void forward_impl(const py::array& X, const py::array& W, const py::object& b, py::array& Y,
                  const std::string& activation, double alpha, const py::object& Z) {
  const std::string op = "dense_forward";
  if (X.ndim() != 2) fail(op, "X must be 2-d (batch, in), got shape " + shape_str(X));
  if (W.ndim() != 2) fail(op, "W must be 2-d (out, in), got shape " + shape_str(W));
  const auto batch = X.shape(0), in = X.shape(1), out = W.shape(0);
  if (W.shape(1) != in) fail(op, "X has " + std::to_string(in) + " features but W (out, in) has shape " + shape_str(W));
  const Act act = parse_activation(activation);
  const T* x = in_ptr<T>(op, "X", X);
  const T* w = in_ptr<T>(op, "W", W);
  py::array barr, zarr;
  const T* bp = optional_in<T>(op, "b", b, {out}, barr);
  expect_shape(op, "Y", Y, {batch, out});
  T* y = out_ptr<T>(op, "Y", Y);
  T* z = optional_out<T>(op, "Z", Z, {batch, out}, zarr);
  py::gil_scoped_release nogil;
  dense_forward<T>(x, w, bp, y, z, batch, in, out, act, alpha);
}

template <class T>
void backward_impl(const py::array& X, const py::array& W, const py::array& dY, const py::object& dX,
                   const py::object& dW, const py::object& db, bool accumulate) {
  const std::string op = "dense_backward";
  if (X.ndim() != 2) fail(op, "X must be 2-d (batch, in), got shape " + shape_str(X));
  if (W.ndim() != 2) fail(op, "W must be 2-d (out, in), got shape " + shape_str(W));
  const auto batch = X.shape(0), in = X.shape(1), out = W.shape(0);
  if (W.shape(1) != in) fail(op, "X has " + std::to_string(in) + " features but W (out, in) has shape " + shape_str(W));
  expect_shape(op, "dY", dY, {batch, out});
  const T* x = in_ptr<T>(op, "X", X);
  const T* w = in_ptr<T>(op, "W", W);
  const T* g = in_ptr<T>(op, "dY", dY);
  py::array a_dx, a_dw, a_db;
  T* dx = optional_out<T>(op, "dX", dX, {batch, in}, a_dx);
  T* dw = optional_out<T>(op, "dW", dW, {out, in}, a_dw);
  T* dbp = optional_out<T>(op, "db", db, {out}, a_db);
  py::gil_scoped_release nogil;
  dense_backward<T>(x, w, g, dx, dw, dbp, batch, in, out, accumulate);
}

}  // namespace

void bind_dense(py::module_& m) {
  m.def(
      "dense_forward",
      [](const py::array& X, const py::array& W, const py::object& b, py::array Y, const std::string& activation,
         double alpha, const py::object& Z) {
        if (dtype_of("dense_forward", "X", X) == DType::f32)
          forward_impl<float>(X, W, b, Y, activation, alpha, Z);
        else
          forward_impl<double>(X, W, b, Y, activation, alpha, Z);
      },
      py::arg("X"), py::arg("W"), py::arg("b"), py::arg("Y"), py::arg("activation") = "identity",
      py::arg("alpha") = 0.0, py::arg("Z") = py::none(),
      "Y = act(X @ W.T + b) in place with W (out, in); Z (optional) receives X @ W.T + b.");
  m.def(
      "dense_backward",
      [](const py::array& X, const py::array& W, const py::array& dY, const py::object& dX, const py::object& dW,
         const py::object& db, bool accumulate) {
        if (dtype_of("dense_backward", "X", X) == DType::f32)
          backward_impl<float>(X, W, dY, dX, dW, db, accumulate);
        else
          backward_impl<double>(X, W, dY, dX, dW, db, accumulate);
      },
      py::arg("X"), py::arg("W"), py::arg("dY"), py::arg("dX") = py::none(), py::arg("dW") = py::none(),
      py::arg("db") = py::none(), py::arg("accumulate") = false,
      "dX = dY @ W, dW (+)= dY.T @ X (out, in), db (+)= dY.sum(0), in place.");
  m.def(
      "set_dense_small",
      [](const std::string& mode) {
        static const char* names[] = {"off", "auto", "always"};
        const std::string was = names[static_cast<int>(dense_small_mode())];
        if (mode == "off") set_dense_small(SmallDense::off);
        else if (mode == "auto") set_dense_small(SmallDense::automatic);
        else if (mode == "always") set_dense_small(SmallDense::always);
        else throw py::value_error("set_dense_small: mode must be 'off', 'auto' or 'always', got '" + mode + "'");
        return was;
      },
      py::arg("mode"),
      "The small Dense layers' own kernels (csrc/dense_small.cpp): 'auto' (default: the shapes where they beat\n"
      "the BLAS), 'off' (the BLAS path, as on a CPU without AVX-512) or 'always' (every layer with in, out <= 64;\n"
      "for tests). Returns the previous mode.");
  m.def("dense_small_enabled", &dense_small_enabled,
        "True when the small Dense layers' own kernels are not switched off and the CPU has AVX-512F.");
}

}  // namespace gc
