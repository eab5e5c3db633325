#include <Python.h>

#include "bind_common.h"
#include "blas.h"
#include "parallel.h"
#include "simd.h"

namespace gc {

namespace {
void* capsule_pointer(const py::capsule& c) {
  const char* name = PyCapsule_GetName(c.ptr());
  void* p = PyCapsule_GetPointer(c.ptr(), name);
  if (!p) throw py::error_already_set();
  return p;
}
}  // namespace

void bind_runtime(py::module_& m) {
  m.def(
      "set_blas",
      [](const py::capsule& sgemm, const py::capsule& dgemm) {
        set_blas(reinterpret_cast<sgemm_t>(capsule_pointer(sgemm)), reinterpret_cast<dgemm_t>(capsule_pointer(dgemm)));
      },
      py::arg("sgemm"), py::arg("dgemm"), "Install the Fortran sgemm / dgemm entry points (PyCapsules).");
  m.def("blas_ready", &blas_ready);
  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Threads for gradcore's own OpenMP loops.");
  m.def("get_num_threads", &get_num_threads);
  m.def("have_openmp", &have_openmp);
  m.def("simd_level", []() { return std::string(simd_level()); });
}

}  // namespace gc
