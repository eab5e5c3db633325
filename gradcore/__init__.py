"""gradcore: a CPU autograd engine for dense networks with compiled C++ kernels."""
from __future__ import annotations

__version__ = "0.1.0"

from . import _blas  # raises a clear ImportError without SciPy

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - only when the extension is missing
    raise ImportError(
        "gradcore's compiled extension gradcore._C is missing or broken; "
        "install the package with `pip install .` (or build in place with tools/build_inplace.sh)"
    ) from exc

_blas.install(_C)

from ._runtime import get_num_threads, info, set_num_threads  # noqa: E402
from .tensor import Tensor, no_grad, enable_grad, is_grad_enabled  # noqa: E402
from .tensor import concatenate, stack  # noqa: E402
from .random import manual_seed  # noqa: E402
from .gradcheck import gradcheck, GradcheckError  # noqa: E402
from . import functional  # noqa: E402


def activation_names():
    """Names accepted wherever an activation is chosen by name."""
    return list(_C.activation_names())


__all__ = [
    "__version__", "get_num_threads", "info", "set_num_threads", "Tensor", "no_grad", "enable_grad",
    "is_grad_enabled", "concatenate", "stack", "manual_seed", "gradcheck", "GradcheckError", "functional",
    "activation_names",
]
