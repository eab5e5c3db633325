#include "bind_common.h"

namespace gc {

void bind_dropout(py::module_& m) { (void)m; }

}  // namespace gc
