"""Loss objects for ``net.compile(loss=...)``: callables ``loss(prediction, target) -> Tensor``.

All reduce by the mean, like Keras' and PyTorch's defaults, and use the fused kernels.
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from .tensor import Tensor, clip, tensor


class Loss:
    name = "loss"

    def __call__(self, prediction: Tensor, target) -> Tensor:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"name": self.name}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class MSE(Loss):
    """Mean squared error."""

    name = "mse"

    def __call__(self, prediction, target):
        prediction = tensor(prediction)
        target = _as_target(target, prediction)
        return F.mse_loss(prediction, target)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy against 0/1 (or soft) targets.

    ``from_logits=True`` (default) expects raw scores and uses the stable fused kernel;
    ``from_logits=False`` expects probabilities, clipped to [eps, 1 - eps] like Keras.
    """

    name = "binary_crossentropy"

    def __init__(self, from_logits: bool = True, eps: float = 1e-7):
        self.from_logits = bool(from_logits)
        self.eps = float(eps)

    def __call__(self, prediction, target):
        prediction = tensor(prediction)
        target = _as_target(target, prediction)
        if self.from_logits:
            return F.binary_cross_entropy_with_logits(prediction, target)
        p = clip(prediction, self.eps, 1.0 - self.eps)
        return -(target * p.log() + (1.0 - target) * (1.0 - p).log()).mean()

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits, "eps": self.eps}


class CrossEntropy(Loss):
    """Softmax cross-entropy of logits against integer labels or one-hot / soft targets."""

    name = "crossentropy"

    def __call__(self, prediction, target):
        return F.cross_entropy(prediction, target.data if isinstance(target, Tensor) else target)


def _as_target(target, prediction: Tensor) -> np.ndarray:
    T = np.asarray(target.data if isinstance(target, Tensor) else target, dtype=prediction.dtype)
    if T.shape != prediction.shape and T.size == prediction.size:
        T = T.reshape(prediction.shape)  # (N,) labels against (N, 1) outputs
    return T


_ALIASES = {
    "mse": MSE, "mean_squared_error": MSE,
    "binary_crossentropy": BinaryCrossEntropy, "bce": BinaryCrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
    "crossentropy": CrossEntropy, "cross_entropy": CrossEntropy, "categorical_crossentropy": CrossEntropy,
    "sparse_categorical_crossentropy": CrossEntropy,
}


def get(loss) -> Loss:
    """A Loss from a name, a Loss, or any callable(prediction, target) -> Tensor."""
    if isinstance(loss, str):
        key = loss.lower()
        if key not in _ALIASES:
            raise ValueError(f"unknown loss {loss!r}; choose from {sorted(_ALIASES)}")
        return _ALIASES[key]()
    if callable(loss):
        return loss
    raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__}")
