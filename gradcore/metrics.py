"""Metrics for ``net.compile(metrics=[...])``: ``metric(prediction, target) -> float``.

Standalone, ``accuracy`` / ``binary_accuracy`` (Keras names) read a single output column
as probabilities thresholded at ``threshold`` (0.5), as Keras' ``binary_accuracy`` does;
pass ``from_logits=True`` for raw scores (thresholded at 0). Under
``compile`` the metric follows the loss, as Keras picks: "accuracy" is binary accuracy
thresholded at 0 for a logits loss and at 0.5 for a probability loss (or a regression
loss such as MSE), and categorical (arg-max) accuracy for categorical / sparse losses.
A prediction holding NaN has accuracy NaN: its decisions are not decisions.
"""
from __future__ import annotations

import functools

import numpy as np


def _arrays(prediction, target):
    p = np.asarray(getattr(prediction, "data", prediction))
    t = np.asarray(getattr(target, "data", target))
    return p, t


def _same_rows(op: str, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """t reshaped to p's shape when they differ only by a trailing axis of 1."""
    if p.shape == t.shape:
        return t
    if p.size == t.size and p.ndim >= 1 and t.ndim >= 1 and p.shape[0] == t.shape[0] and p.size == p.shape[0]:
        return t.reshape(p.shape)
    raise ValueError(f"{op}: prediction has shape {p.shape} but target has shape {t.shape}")


def binary_accuracy(prediction, target, threshold: float = 0.5, from_logits: bool = False) -> float:
    """Fraction of matching 0/1 decisions; probabilities are thresholded at ``threshold``
    (Keras' default), logits (``from_logits=True``) at 0. Targets count as 1 above 0.5."""
    p, t = _arrays(prediction, target)
    t = _same_rows("binary_accuracy", p, t)
    if np.isnan(p).any():
        return float("nan")
    cut = 0.0 if from_logits else threshold
    return float(np.mean((p > cut) == (t > 0.5)))


def categorical_accuracy(prediction, target) -> float:
    """Fraction of rows (N, C) whose arg-max matches the label: integer labels (N,) or
    (N, 1), or one-hot (N, C) targets."""
    p, t = _arrays(prediction, target)
    if p.ndim != 2:
        raise ValueError(f"categorical_accuracy: prediction must be 2-d (batch, classes), got shape {p.shape}")
    if t.shape == p.shape:
        labels = t.argmax(axis=1)
    elif t.shape in ((p.shape[0],), (p.shape[0], 1)):
        labels = t.reshape(-1)
    else:
        raise ValueError(f"categorical_accuracy: target must be labels ({p.shape[0]},) or one-hot {p.shape}, "
                         f"got {t.shape}")
    if np.isnan(p).any():
        return float("nan")
    return float(np.mean(p.argmax(axis=1) == labels))


sparse_categorical_accuracy = categorical_accuracy


def accuracy(prediction, target, from_logits: bool = False) -> float:
    """Binary accuracy for one output column (``from_logits`` as in ``binary_accuracy``),
    categorical accuracy otherwise."""
    p, _ = _arrays(prediction, target)
    if p.ndim == 1 or p.shape[-1] == 1:
        return binary_accuracy(prediction, target, from_logits=from_logits)
    return categorical_accuracy(prediction, target)


_NAMED = {"accuracy": accuracy, "acc": accuracy, "binary_accuracy": binary_accuracy,
          "categorical_accuracy": categorical_accuracy, "sparse_categorical_accuracy": sparse_categorical_accuracy}


def get(metric, loss=None):
    """(name, fn) from a metric name or a callable.

    With ``loss`` (what ``compile`` passes), the accuracy names follow it: a loss with
    ``from_logits`` False or None (probabilities, regression) thresholds a single column
    at 0.5, a logits loss at 0; "accuracy" with a categorical loss is arg-max accuracy.
    """
    if isinstance(metric, str):
        key = metric.lower()
        if key not in _NAMED:
            raise ValueError(f"unknown metric {metric!r}; choose from {sorted(_NAMED)}")
        name = "accuracy" if key == "acc" else key
        return name, _for_loss(_NAMED[key], loss)
    if callable(metric):
        return getattr(metric, "__name__", type(metric).__name__), metric
    raise TypeError(f"metric must be a name or a callable, got {type(metric).__name__}")


def _for_loss(fn, loss):
    from .losses import Loss

    if not isinstance(loss, Loss) or fn is categorical_accuracy:
        return fn  # a user's own loss function: the standalone behaviour
    logits = loss.from_logits is True
    if fn is accuracy and loss.task == "categorical":
        return categorical_accuracy
    if fn is accuracy and loss.task == "binary":
        fn = binary_accuracy
    return functools.partial(fn, from_logits=logits)
