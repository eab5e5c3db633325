// Python binding of the vector math functions (vmath.h), for tests and benchmarks.
#include <string>

#include "bind_common.h"
#include "vmath.h"

namespace gc {

namespace {

// x and out must be the same array or not share a byte: a partial overlap would read
// values already overwritten (in an order that depends on the vector width and threads).
void check_overlap(const std::string& op, const py::array& X, const py::array& Y) {
  const char* x0 = static_cast<const char*>(X.data());
  const char* y0 = static_cast<const char*>(Y.data());
  const py::ssize_t bytes = X.nbytes();
  if (x0 == y0 || bytes == 0) return;
  if (x0 < y0 + bytes && y0 < x0 + bytes)
    fail(op, "out overlaps x without being the same array (pass out=x to work in place)");
}

template <class T>
void apply_impl(VFn fn, const py::array& X, py::array& Y, bool generic) {
  const std::string op = "vmath";
  const T* x = in_ptr<T>(op, "x", X);
  T* y = out_ptr<T>(op, "out", Y);
  if (!same_shape(X, Y)) fail(op, "out must have the shape of x " + shape_str(X) + ", got " + shape_str(Y));
  check_overlap(op, X, Y);
  const index_t n = X.size();
  py::gil_scoped_release nogil;
  vmath_apply<T>(fn, x, y, n, generic);
}

}  // namespace

void bind_vmath(py::module_& m) {
  m.def(
      "vmath",
      [](const std::string& name, const py::array& x, py::array out, bool generic) {
        VFn fn;
        try {
          fn = parse_vfn(name);
        } catch (const std::invalid_argument& e) {
          fail("vmath", e.what());
        }
        if (dtype_of("vmath", "x", x) == DType::f32) apply_impl<float>(fn, x, out, generic);
        else apply_impl<double>(fn, x, out, generic);
      },
      py::arg("name"), py::arg("x").noconvert(), py::arg("out").noconvert(), py::arg("generic") = false,
      "out = name(x) element-wise with gradcore's vector math (name: exp, expm1, log1p, tanh,\n"
      "erf, erfc). x and out: float32 or float64 arrays of one dtype and shape, C-contiguous; out\n"
      "may be x. generic=True runs the portable baseline code even on an AVX2+FMA CPU (for\n"
      "tests that check both paths).");
}

}  // namespace gc
