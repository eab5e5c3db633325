"""gradcore: a CPU autograd engine for dense networks with compiled C++ kernels."""
from __future__ import annotations

__version__ = "0.1.0"

import os as _os

# libgomp's threads spin for a while after each parallel region; on a small machine they
# then steal the cores OpenBLAS's own pool needs for the next GEMM (measured: dense
# forward+backward at 256 x 1024->2048 took 35 ms instead of 14 ms). Sleeping waits cost
# a few microseconds per region, and gradcore only forks for large loops. Must be set
# before the extension (and so libgomp) is loaded; a user's own setting wins.
# When PyTorch was imported first, its OpenMP runtime is already running with its own
# settings and also hosts gradcore's loops; say so once instead of running slowly.
if "torch" in __import__("sys").modules and "OMP_WAIT_POLICY" not in _os.environ:
    import warnings as _warnings

    _warnings.warn(
        "gradcore was imported after torch: both now share PyTorch's OpenMP runtime, whose spinning "
        "threads slow OpenBLAS down (up to 2.5x on dense layers on 2 cores). Import gradcore first "
        "or set OMP_WAIT_POLICY=PASSIVE.",
        RuntimeWarning,
        stacklevel=2,
    )
_OMP_WAIT_POLICY_FROM_USER = "OMP_WAIT_POLICY" in _os.environ
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _blas  # noqa: E402  (raises a clear ImportError without SciPy)

try:
    from . import _C
except ImportError as exc:
    # Run from a source checkout (``python -m gradcore`` in the repository puts the
    # uncompiled source folder first on sys.path): use the installed copy's extension.
    from ._loader import installed_extension

    _C = installed_extension(__name__, __path__[0])
    if _C is None:
        raise ImportError(
            "gradcore's compiled extension gradcore._C is missing or broken; "
            "install the package with `pip install .` (or build in place with tools/build_inplace.sh)"
        ) from exc

from ._loader import check_extension_version as _check_extension_version  # noqa: E402

_check_extension_version(_C, __version__)

_blas.install(_C)

from ._runtime import get_num_threads, info, set_num_threads  # noqa: E402
from .tensor import Tensor, no_grad, enable_grad, is_grad_enabled  # noqa: E402
from .tensor import concatenate, stack  # noqa: E402
from .random import manual_seed  # noqa: E402
from .gradcheck import gradcheck, GradcheckError  # noqa: E402
from . import activations, functional  # noqa: E402
from . import optim  # noqa: E402
from .optim import clip_grad_norm_, clip_grad_value_  # noqa: E402
from . import nn, losses, metrics, callbacks, datasets  # noqa: E402
from .serialize import load, load_weights, save  # noqa: E402
from .safetensors import CheckpointError  # noqa: E402
from . import compiled  # noqa: E402
from .compiled import compile_step, memory_stats, reset_memory_stats  # noqa: E402


def activation_names():
    """Names accepted wherever an activation is chosen by name (``F.linear``'s fused ones;
    ``Dense`` and ``nn.Activation`` also take ``nn.ACTIVATION_NAMES``' softmax / log_softmax)."""
    return list(activations.FUSED_ACTIVATIONS)


__all__ = [
    "__version__", "get_num_threads", "info", "set_num_threads", "Tensor", "no_grad", "enable_grad",
    "is_grad_enabled", "concatenate", "stack", "manual_seed", "gradcheck", "GradcheckError", "functional",
    "activations",
    "activation_names", "optim", "clip_grad_norm_", "clip_grad_value_", "nn", "losses", "metrics",
    "callbacks", "datasets", "load", "load_weights", "save", "CheckpointError", "compiled", "compile_step",
    "memory_stats", "reset_memory_stats",
]
