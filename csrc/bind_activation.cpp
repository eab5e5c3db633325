#include "bind_common.h"

namespace gc {

void bind_activation(py::module_& m) { (void)m; }

}  // namespace gc
