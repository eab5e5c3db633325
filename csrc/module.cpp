// gradcore._C: the compiled kernels. Only the bind_* functions see pybind11.
#include <pybind11/pybind11.h>

#ifndef GC_VERSION
#error "GC_VERSION (the package version) must be defined by the build (CMakeLists.txt)"
#endif

namespace gc {
namespace py = pybind11;
void bind_runtime(py::module_& m);
void bind_dense(py::module_& m);
void bind_activation(py::module_& m);
void bind_batchnorm(py::module_& m);
void bind_layernorm(py::module_& m);
void bind_loss(py::module_& m);
void bind_norm(py::module_& m);
void bind_dropout(py::module_& m);
void bind_optim(py::module_& m);
void bind_stats(py::module_& m);
void bind_vmath(py::module_& m);
void bind_checksum(py::module_& m);
void bind_plan(py::module_& m);
void bind_transpose(py::module_& m);
}  // namespace gc

PYBIND11_MODULE(_C, m) {
  m.doc() = "gradcore compiled kernels (float32 / float64, in place on NumPy buffers, GIL released)";
  // gradcore/__init__.py refuses an extension whose version is not the package's.
  m.attr("__version__") = GC_VERSION;
  gc::bind_runtime(m);
  gc::bind_dense(m);
  gc::bind_activation(m);
  gc::bind_batchnorm(m);
  gc::bind_layernorm(m);
  gc::bind_loss(m);
  gc::bind_norm(m);
  gc::bind_dropout(m);
  gc::bind_optim(m);
  gc::bind_stats(m);
  gc::bind_vmath(m);
  gc::bind_checksum(m);
  gc::bind_plan(m);
  gc::bind_transpose(m);
}
