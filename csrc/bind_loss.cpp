#include "bind_common.h"

namespace gc {

void bind_loss(py::module_& m) { (void)m; }

}  // namespace gc
