#include "bind_common.h"

namespace gc {

void bind_norm(py::module_& m) { (void)m; }

}  // namespace gc
