#include <Python.h>

#include <cstdint>
#include <string>

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
  m.def(
      "set_blas_threading",
      [](std::uintptr_t set, std::uintptr_t get, int default_threads) {
        if ((set == 0) != (get == 0)) throw py::value_error("set_blas_threading: give both entry points or neither (0, 0)");
        if (default_threads < 1)
          throw py::value_error("set_blas_threading: default_threads must be >= 1, got " + std::to_string(default_threads));
        set_blas_threading(reinterpret_cast<blas_set_threads_t>(set), reinterpret_cast<blas_get_threads_t>(get),
                           default_threads);
      },
      py::arg("set_num_threads"), py::arg("get_num_threads"), py::arg("default_threads"),
      "Install OpenBLAS's openblas_set_num_threads / openblas_get_num_threads (addresses; 0, 0 uninstalls)\n"
      "so that each GEMM runs on the BLAS threads its size repays.");
  m.def("blas_thread_control", &blas_thread_control,
        "True when gradcore sets the BLAS thread count per GEMM (the entry points were found).");
  m.def(
      "blas_threads_for",
      [](std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k) {
        if (m < 0 || n < 0 || k < 0)
          throw py::value_error("blas_threads_for: dimensions must be >= 0, got (" + std::to_string(m) + ", " +
                                std::to_string(n) + ", " + std::to_string(k) + ")");
        return blas_threads_for(m, n, k);
      },
      py::arg("m"), py::arg("n"), py::arg("k"),
      "BLAS threads the policy gives a GEMM C(m, n) = A(m, k) B(k, n) (when blas_thread_control()).");
  m.def("blas_user_threads", &blas_user_threads, "BLAS threads for GEMMs above the threshold.");
  m.def("set_blas_policy", &set_blas_policy, py::arg("on"),
        "False: every GEMM on blas_user_threads() (no per-size choice; for benchmarks).");
  m.def("blas_policy", &blas_policy);
  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Threads for gradcore's own OpenMP loops.");
  m.def("get_num_threads", &get_num_threads);
  m.def("have_openmp", &have_openmp);
  m.def("simd_level", []() { return std::string(simd_level()); });
}

}  // namespace gc
