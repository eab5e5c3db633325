#include "batchnorm.h"
#include "bind_common.h"

namespace gc {

namespace {

std::pair<py::ssize_t, py::ssize_t> batch_shape(const std::string& op, const py::array& X) {
  if (X.ndim() != 2) fail(op, "X must be 2-d (batch, features), got shape " + shape_str(X));
  if (X.shape(0) == 0) fail(op, "empty batch (X has shape " + shape_str(X) + ")");
  return {X.shape(0), X.shape(1)};
}

template <class T>
void train_impl(const py::array& X, const py::object& g, const py::object& b, const py::object& rm,
                const py::object& rv, double momentum, double eps, py::array& Y, py::array& sm, py::array& si) {
  const std::string op = "batch_norm_forward_train";
  auto [n, c] = batch_shape(op, X);
  if (n < 2)
    fail("batch_norm", "expected more than 1 value per channel when training, got input of shape " + shape_str(X));
  py::array kg, kb, krm, krv;
  const T* x = in_ptr<T>(op, "X", X);
  const T* gp = optional_in<T>(op, "gamma", g, {c}, kg);
  const T* bp = optional_in<T>(op, "beta", b, {c}, kb);
  T* rmp = optional_out<T>(op, "running_mean", rm, {c}, krm);
  T* rvp = optional_out<T>(op, "running_var", rv, {c}, krv);
  expect_shape(op, "Y", Y, {n, c});
  expect_shape(op, "save_mean", sm, {c});
  expect_shape(op, "save_invstd", si, {c});
  T* y = out_ptr<T>(op, "Y", Y);
  T* smp = out_ptr<T>(op, "save_mean", sm);
  T* sip = out_ptr<T>(op, "save_invstd", si);
  py::gil_scoped_release nogil;
  batch_norm_forward_train<T>(x, gp, bp, rmp, rvp, momentum, eps, y, smp, sip, n, c);
}

template <class T>
void eval_impl(const py::array& X, const py::object& g, const py::object& b, const py::array& rm, const py::array& rv,
               double eps, py::array& Y) {
  const std::string op = "batch_norm_forward_eval";
  auto [n, c] = batch_shape(op, X);
  py::array kg, kb;
  const T* x = in_ptr<T>(op, "X", X);
  const T* gp = optional_in<T>(op, "gamma", g, {c}, kg);
  const T* bp = optional_in<T>(op, "beta", b, {c}, kb);
  expect_shape(op, "running_mean", rm, {c});
  expect_shape(op, "running_var", rv, {c});
  const T* rmp = in_ptr<T>(op, "running_mean", rm);
  const T* rvp = in_ptr<T>(op, "running_var", rv);
  expect_shape(op, "Y", Y, {n, c});
  T* y = out_ptr<T>(op, "Y", Y);
  py::gil_scoped_release nogil;
  batch_norm_forward_eval<T>(x, gp, bp, rmp, rvp, eps, y, n, c);
}

template <class T>
void backward_impl(const py::array& X, const py::array& dY, const py::object& g, const py::array& mean,
                   const py::array& invstd, const py::object& dX, const py::object& dg, const py::object& db,
                   bool training, bool accumulate) {
  const std::string op = "batch_norm_backward";
  auto [n, c] = batch_shape(op, X);
  expect_shape(op, "dY", dY, {n, c});
  expect_shape(op, "mean", mean, {c});
  expect_shape(op, "invstd", invstd, {c});
  py::array kg, kdx, kdg, kdb;
  const T* x = in_ptr<T>(op, "X", X);
  const T* gy = in_ptr<T>(op, "dY", dY);
  const T* gp = optional_in<T>(op, "gamma", g, {c}, kg);
  const T* mp = in_ptr<T>(op, "mean", mean);
  const T* sp = in_ptr<T>(op, "invstd", invstd);
  T* dxp = optional_out<T>(op, "dX", dX, {n, c}, kdx);
  T* dgp = optional_out<T>(op, "dgamma", dg, {c}, kdg);
  T* dbp = optional_out<T>(op, "dbeta", db, {c}, kdb);
  py::gil_scoped_release nogil;
  batch_norm_backward<T>(x, gy, gp, mp, sp, dxp, dgp, dbp, n, c, training, accumulate);
}

}  // namespace

void bind_batchnorm(py::module_& m) {
  m.def(
      "batch_norm_forward_train",
      [](const py::array& X, const py::object& g, const py::object& b, const py::object& rm, const py::object& rv,
         double momentum, double eps, py::array Y, py::array sm, py::array si) {
        if (dtype_of("batch_norm_forward_train", "X", X) == DType::f32)
          train_impl<float>(X, g, b, rm, rv, momentum, eps, Y, sm, si);
        else
          train_impl<double>(X, g, b, rm, rv, momentum, eps, Y, sm, si);
      },
      py::arg("X"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
      py::arg("momentum"), py::arg("eps"), py::arg("Y"), py::arg("save_mean"), py::arg("save_invstd"));
  m.def(
      "batch_norm_forward_eval",
      [](const py::array& X, const py::object& g, const py::object& b, const py::array& rm, const py::array& rv,
         double eps, py::array Y) {
        if (dtype_of("batch_norm_forward_eval", "X", X) == DType::f32) eval_impl<float>(X, g, b, rm, rv, eps, Y);
        else eval_impl<double>(X, g, b, rm, rv, eps, Y);
      },
      py::arg("X"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
      py::arg("eps"), py::arg("Y"));
  m.def(
      "batch_norm_backward",
      [](const py::array& X, const py::array& dY, const py::object& g, const py::array& mean, const py::array& invstd,
         const py::object& dX, const py::object& dg, const py::object& db, bool training, bool accumulate) {
        if (dtype_of("batch_norm_backward", "X", X) == DType::f32)
          backward_impl<float>(X, dY, g, mean, invstd, dX, dg, db, training, accumulate);
        else
          backward_impl<double>(X, dY, g, mean, invstd, dX, dg, db, training, accumulate);
      },
      py::arg("X"), py::arg("dY"), py::arg("gamma"), py::arg("mean"), py::arg("invstd"), py::arg("dX") = py::none(),
      py::arg("dgamma") = py::none(), py::arg("dbeta") = py::none(), py::arg("training") = true,
      py::arg("accumulate") = false);
}

}  // namespace gc
