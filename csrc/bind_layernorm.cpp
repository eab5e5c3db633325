#include "bind_common.h"
#include "layernorm.h"

namespace gc {

namespace {

std::pair<py::ssize_t, py::ssize_t> ln_shape(const std::string& op, const py::array& X) {
  if (X.ndim() != 2) fail(op, "X must be 2-d (rows, features), got shape " + shape_str(X));
  if (X.shape(0) == 0 || X.shape(1) == 0) fail(op, "empty input (X has shape " + shape_str(X) + ")");
  return {X.shape(0), X.shape(1)};
}

template <class T>
void forward_impl(const py::array& X, const py::object& g, const py::object& b, double eps, py::array& Y,
                  py::array& sm, py::array& si) {
  const std::string op = "layer_norm_forward";
  auto [rows, d] = ln_shape(op, X);
  py::array kg, kb;
  const T* x = in_ptr<T>(op, "X", X);
  const T* gp = optional_in<T>(op, "gamma", g, {d}, kg);
  const T* bp = optional_in<T>(op, "beta", b, {d}, kb);
  expect_shape(op, "Y", Y, {rows, d});
  expect_shape(op, "save_mean", sm, {rows});
  expect_shape(op, "save_invstd", si, {rows});
  T* y = out_ptr<T>(op, "Y", Y);
  T* smp = out_ptr<T>(op, "save_mean", sm);
  T* sip = out_ptr<T>(op, "save_invstd", si);
  py::gil_scoped_release nogil;
  layer_norm_forward<T>(x, gp, bp, eps, y, smp, sip, rows, d);
}

template <class T>
void backward_impl(const py::array& X, const py::array& dY, const py::object& g, const py::array& mean,
                   const py::array& invstd, const py::object& dX, const py::object& dg, const py::object& db,
                   bool accumulate) {
  const std::string op = "layer_norm_backward";
  auto [rows, d] = ln_shape(op, X);
  expect_shape(op, "dY", dY, {rows, d});
  expect_shape(op, "mean", mean, {rows});
  expect_shape(op, "invstd", invstd, {rows});
  py::array kg, kdx, kdg, kdb;
  const T* x = in_ptr<T>(op, "X", X);
  const T* gy = in_ptr<T>(op, "dY", dY);
  const T* gp = optional_in<T>(op, "gamma", g, {d}, kg);
  const T* mp = in_ptr<T>(op, "mean", mean);
  const T* sp = in_ptr<T>(op, "invstd", invstd);
  T* dxp = optional_out<T>(op, "dX", dX, {rows, d}, kdx);
  T* dgp = optional_out<T>(op, "dgamma", dg, {d}, kdg);
  T* dbp = optional_out<T>(op, "dbeta", db, {d}, kdb);
  py::gil_scoped_release nogil;
  layer_norm_backward<T>(x, gy, gp, mp, sp, dxp, dgp, dbp, rows, d, accumulate);
}

}  // namespace

void bind_layernorm(py::module_& m) {
  m.def(
      "layer_norm_forward",
      [](const py::array& X, const py::object& g, const py::object& b, double eps, py::array Y, py::array sm,
         py::array si) {
        if (dtype_of("layer_norm_forward", "X", X) == DType::f32) forward_impl<float>(X, g, b, eps, Y, sm, si);
        else forward_impl<double>(X, g, b, eps, Y, sm, si);
      },
      py::arg("X"), py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("Y"), py::arg("save_mean"),
      py::arg("save_invstd"));
  m.def(
      "layer_norm_backward",
      [](const py::array& X, const py::array& dY, const py::object& g, const py::array& mean, const py::array& invstd,
         const py::object& dX, const py::object& dg, const py::object& db, bool accumulate) {
        if (dtype_of("layer_norm_backward", "X", X) == DType::f32)
          backward_impl<float>(X, dY, g, mean, invstd, dX, dg, db, accumulate);
        else
          backward_impl<double>(X, dY, g, mean, invstd, dX, dg, db, accumulate);
      },
      py::arg("X"), py::arg("dY"), py::arg("gamma"), py::arg("mean"), py::arg("invstd"), py::arg("dX") = py::none(),
      py::arg("dgamma") = py::none(), py::arg("dbeta") = py::none(), py::arg("accumulate") = false);
}

}  // namespace gc
