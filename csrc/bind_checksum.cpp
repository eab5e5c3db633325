#include <cstdint>

#include "bind_common.h"
#include "checksum.h"

namespace gc {

void bind_checksum(py::module_& m) {
  m.def(
      "crc32c",
      [](const py::buffer& data, std::uint32_t crc) {
        const py::buffer_info info = data.request();
        py::ssize_t expected = info.itemsize;  // C order: each axis steps over the ones after it
        for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
          const auto axis = static_cast<size_t>(i);
          if (info.shape[axis] != 1 && info.strides[axis] != expected)
            fail("crc32c", "data must be a contiguous bytes-like object");
          expected *= info.shape[axis];
        }
        const auto* p = static_cast<const unsigned char*>(info.ptr);
        const std::size_t n = static_cast<std::size_t>(info.size * info.itemsize);
        py::gil_scoped_release nogil;
        return crc32c(p, n, crc);
      },
      py::arg("data"), py::arg("crc") = 0,
      "CRC-32C (Castagnoli) of a bytes-like object, continuing from crc (0: a fresh checksum).");
}

}  // namespace gc
