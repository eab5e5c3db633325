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

__all__ = ["__version__", "get_num_threads", "info", "set_num_threads"]
