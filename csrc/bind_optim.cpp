#include "bind_common.h"

namespace gc {

void bind_optim(py::module_& m) { (void)m; }

}  // namespace gc
