"""Finite-difference check of backward(), for users and for the test suite."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised by gradcheck with the worst-matching element."""


def _float64_copy(t: Tensor) -> Tensor:
    """A float64 leaf copy of ``t``; a boolean tensor stays a mask."""
    out = Tensor(np.array(t.data, dtype=np.float64), requires_grad=t.requires_grad)
    out._is_bool = t._is_bool
    return out


def gradcheck(fn: Callable, inputs: Sequence, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-4,
              seed: int = 0) -> bool:
    """Compare backward() of ``fn(*inputs)`` with central finite differences in float64.

    Every input Tensor that requires grad is checked element by element. A non-scalar
    output is reduced with fixed random weights, so every output element is exercised.
    Returns True, or raises GradcheckError naming the input, the element and both values.
    """
    args = [_float64_copy(t) if isinstance(t, Tensor) else t for t in inputs]
    checked = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input Tensor has requires_grad=True")

    out = fn(*args)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    weights = np.random.default_rng(seed).standard_normal(out.shape)

    def objective() -> float:
        with no_grad():
            return float(np.sum(np.asarray(fn(*args).data, dtype=np.float64) * weights))

    for i in checked:
        args[i].grad = None
    out.backward(np.asarray(weights, dtype=out.dtype))

    for i in checked:
        x = args[i]
        analytic = np.zeros(x.shape) if x.grad is None else np.asarray(x.grad, dtype=np.float64)
        numeric = np.empty(x.shape)
        flat = x.data.reshape(-1)
        for j in range(flat.size):
            orig = flat[j]
            flat[j] = orig + eps
            f_plus = objective()
            flat[j] = orig - eps
            f_minus = objective()
            flat[j] = orig
            numeric.reshape(-1)[j] = (f_plus - f_minus) / (2 * eps)
        err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if err.size and (np.nanmax(err) > 0 or np.isnan(err).any()):
            j = int(np.nanargmax(np.where(np.isnan(err), np.inf, err)))
            idx = np.unravel_index(j, x.shape) if x.ndim else ()
            raise GradcheckError(
                f"gradcheck: input {i} (shape {x.shape}) element {tuple(int(k) for k in idx)}: "
                f"backward gives {analytic.reshape(-1)[j]:.10g}, finite differences give {numeric.reshape(-1)[j]:.10g}"
            )
    return True
