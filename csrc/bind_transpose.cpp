// gradcore._C.transpose: the blocked transpose kernel (transpose.h), for its tests.
#include "bind_common.h"
#include "transpose.h"

namespace gc {

namespace {

// A (rows, lda) and B (cols, ldb): B[:, :rows] = A[:, :cols].T, cols = B.shape[0].
template <class T>
void transpose_impl(const py::array& A, py::array& B) {
  const std::string op = "transpose";
  if (A.ndim() != 2) fail(op, "A must be 2-d, got shape " + shape_str(A));
  if (B.ndim() != 2) fail(op, "B must be 2-d, got shape " + shape_str(B));
  const auto rows = A.shape(0), lda = A.shape(1), cols = B.shape(0), ldb = B.shape(1);
  if (cols > lda) fail(op, "B " + shape_str(B) + " has more rows than A " + shape_str(A) + " has columns");
  if (rows > ldb) fail(op, "A " + shape_str(A) + " has more rows than B " + shape_str(B) + " has columns");
  const T* a = in_ptr<T>(op, "A", A);
  T* b = out_ptr<T>(op, "B", B);
  const auto* lo = static_cast<const char*>(A.data());
  const auto* bo = static_cast<const char*>(B.data());
  if (lo < bo + B.nbytes() && bo < lo + A.nbytes()) fail(op, "A and B overlap");
  py::gil_scoped_release nogil;
  transpose<T>(a, b, rows, cols, lda, ldb);
}

}  // namespace

void bind_transpose(py::module_& m) {
  m.def(
      "transpose",
      [](const py::array& A, py::array B) {
        if (dtype_of("transpose", "A", A) == DType::f32)
          transpose_impl<float>(A, B);
        else
          transpose_impl<double>(A, B);
      },
      py::arg("A"), py::arg("B"),
      "B[:, :A.shape[0]] = A[:, :B.shape[0]].T in place (A (rows, lda), B (cols, ldb), C-contiguous).");
}

}  // namespace gc
