#include "bind_common.h"

namespace gc {

void bind_batchnorm(py::module_& m) { (void)m; }

}  // namespace gc
