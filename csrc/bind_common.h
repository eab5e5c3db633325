// Helpers for the bind_*.cpp files: the only place that sees pybind11 and NumPy arrays.
//
// The Python layer converts and validates; these checks are the last guard so that no
// input can crash the process. Every array must already have the kernel's dtype and be
// C-contiguous: nothing is copied here, because a silent copy of a buffer written in
// place would silently drop the write.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace gc {
namespace py = pybind11;

enum class DType { f32, f64 };

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

[[noreturn]] inline void fail(const std::string& op, const std::string& msg) {
  throw std::invalid_argument(op + ": " + msg);
}

// dtype equality, not identity: NumPy has distinct dtype objects that are the same type
// (np.longlong and np.int64 on Linux), and both must be accepted.
template <class T>
bool has_dtype(const py::array& a) {
  return a.dtype().equal(py::dtype::of<T>());
}

// dtype of the array that decides which instantiation runs.
inline DType dtype_of(const std::string& op, const char* name, const py::array& a) {
  if (has_dtype<float>(a)) return DType::f32;
  if (has_dtype<double>(a)) return DType::f64;
  fail(op, std::string(name) + " must be float32 or float64, got " + dtype_str(a));
}

// An argument taken as a Python object that must be an ndarray. Anything else (a list, a
// tuple) is refused with a TypeError: converting it would write into a temporary copy
// and silently drop the result.
inline py::array as_ndarray(const std::string& op, const char* name, const py::object& o, bool optional = false) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(op + ": " + name + (optional ? " must be a numpy.ndarray or None, got " : " must be a numpy.ndarray, got ") +
                         py::str(py::type::of(o).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(o);
}

template <class T>
void check_array(const std::string& op, const char* name, const py::array& a, bool writable) {
  if (!has_dtype<T>(a))
    fail(op, std::string(name) + " must have dtype " + py::str(py::dtype::of<T>()).cast<std::string>() +
                 ", got " + dtype_str(a));
  if (!(a.flags() & py::array::c_style))
    fail(op, std::string(name) + " must be C-contiguous");
  if (writable && !a.writeable()) fail(op, std::string(name) + " is read-only but is written in place");
}

// Read-only view of an input array.
template <class T>
const T* in_ptr(const std::string& op, const char* name, const py::array& a) {
  check_array<T>(op, name, a, false);
  return static_cast<const T*>(a.data());
}

// Writable view of an output array.
template <class T>
T* out_ptr(const std::string& op, const char* name, py::array& a) {
  check_array<T>(op, name, a, true);
  return static_cast<T*>(a.mutable_data());
}

// Optional arrays come in as None or an ndarray (as_ndarray refuses anything else).
inline bool present(const py::object& o) { return !o.is_none(); }

inline void expect_size(const std::string& op, const char* name, const py::array& a, py::ssize_t n) {
  if (a.size() != n)
    fail(op, std::string(name) + " must have " + std::to_string(n) + " elements, got shape " + shape_str(a));
}

inline bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) != b.shape(i)) return false;
  return true;
}

inline void expect_shape(const std::string& op, const char* name, const py::array& a,
                         std::initializer_list<py::ssize_t> shape) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  py::ssize_t i = 0;
  for (auto s : shape) {
    if (!ok) break;
    ok = a.shape(i++) == s;
  }
  if (!ok) {
    std::string want = "(";
    i = 0;
    for (auto s : shape) want += (i++ ? ", " : "") + std::to_string(s);
    if (shape.size() == 1) want += ",";
    fail(op, std::string(name) + " must have shape " + want + "), got " + shape_str(a));
  }
}

// Optional arrays of a given shape: null for None. `keep` holds the array while its
// pointer is in use.
template <class T>
const T* optional_in(const std::string& op, const char* name, const py::object& o,
                     std::initializer_list<py::ssize_t> shape, py::array& keep) {
  if (!present(o)) return nullptr;
  keep = as_ndarray(op, name, o, true);
  expect_shape(op, name, keep, shape);
  return in_ptr<T>(op, name, keep);
}

template <class T>
T* optional_out(const std::string& op, const char* name, const py::object& o,
                std::initializer_list<py::ssize_t> shape, py::array& keep) {
  if (!present(o)) return nullptr;
  keep = as_ndarray(op, name, o, true);
  expect_shape(op, name, keep, shape);
  return out_ptr<T>(op, name, keep);
}

// The int64 offsets (k+1,) of k segments of a flat buffer of n values, validated so that
// the kernels can trust them: offsets[0] == 0, non-decreasing, offsets[k] == n (`buffer`
// names the buffer in the messages). The segments are [offsets[i], offsets[i+1]).
inline const std::int64_t* flat_offsets(const std::string& op, const py::array& offsets, py::ssize_t n,
                                        const char* buffer) {
  if (!has_dtype<std::int64_t>(offsets)) fail(op, "offsets must have dtype int64, got " + dtype_str(offsets));
  if (offsets.ndim() != 1 || offsets.size() < 1)
    fail(op, "offsets must be 1-d with k+1 >= 1 entries, got shape " + shape_str(offsets));
  if (!(offsets.flags() & py::array::c_style)) fail(op, "offsets must be C-contiguous");
  const auto* off = static_cast<const std::int64_t*>(offsets.data());
  const py::ssize_t k = offsets.size() - 1;
  if (off[0] != 0) fail(op, "offsets[0] must be 0, got " + std::to_string(off[0]));
  for (py::ssize_t i = 0; i < k; ++i)
    if (off[i + 1] < off[i])
      fail(op, "offsets must be non-decreasing, got offsets[" + std::to_string(i) + "] = " + std::to_string(off[i]) +
                   " > offsets[" + std::to_string(i + 1) + "] = " + std::to_string(off[i + 1]));
  if (off[k] != n)
    fail(op, "offsets[-1] must equal " + std::string(buffer) + ".size = " + std::to_string(n) + ", got " +
                 std::to_string(off[k]));
  return off;
}

// Treat an array as (rows, last-axis) for row-wise kernels.
inline std::pair<py::ssize_t, py::ssize_t> rows_cols(const py::array& a) {
  if (a.ndim() == 0) return {1, 1};
  py::ssize_t cols = a.shape(a.ndim() - 1);
  py::ssize_t rows = cols == 0 ? 0 : a.size() / cols;
  return {rows, cols};
}

}  // namespace gc
