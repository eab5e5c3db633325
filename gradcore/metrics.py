"""Metrics for ``net.compile(metrics=[...])``: ``metric(prediction, target) -> float``."""
from __future__ import annotations

import numpy as np


def _arrays(prediction, target):
    p = np.asarray(getattr(prediction, "data", prediction))
    t = np.asarray(getattr(target, "data", target))
    return p, t


def binary_accuracy(prediction, target, threshold: float = 0.5, from_logits: bool = True) -> float:
    """Fraction of matching 0/1 decisions; logits are thresholded at 0, probabilities at 0.5."""
    p, t = _arrays(prediction, target)
    cut = 0.0 if from_logits else threshold
    return float(np.mean((p.reshape(t.shape) > cut) == (t > 0.5)))


def categorical_accuracy(prediction, target) -> float:
    """Fraction of rows whose arg-max matches the label (integer or one-hot)."""
    p, t = _arrays(prediction, target)
    labels = t.argmax(axis=1) if t.ndim == 2 else t
    return float(np.mean(p.argmax(axis=1) == labels))


def accuracy(prediction, target) -> float:
    """Binary accuracy for one output column, categorical accuracy otherwise."""
    p, _ = _arrays(prediction, target)
    if p.ndim == 1 or p.shape[-1] == 1:
        return binary_accuracy(prediction, target)
    return categorical_accuracy(prediction, target)


_NAMED = {"accuracy": accuracy, "acc": accuracy, "binary_accuracy": binary_accuracy,
          "categorical_accuracy": categorical_accuracy}


def get(metric):
    """(name, fn) from a metric name or a callable."""
    if isinstance(metric, str):
        key = metric.lower()
        if key not in _NAMED:
            raise ValueError(f"unknown metric {metric!r}; choose from {sorted(_NAMED)}")
        return ("accuracy" if key == "acc" else key), _NAMED[key]
    if callable(metric):
        return getattr(metric, "__name__", type(metric).__name__), metric
    raise TypeError(f"metric must be a name or a callable, got {type(metric).__name__}")
