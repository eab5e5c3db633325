"""Loss objects for ``net.compile(loss=...)``: callables ``loss(prediction, target) -> Tensor``.

Names decide what the prediction must be:

* PyTorch names take what torch's do: ``MSELoss`` / "mse"; ``BCEWithLogitsLoss`` /
  "bce_with_logits" and ``CrossEntropyLoss`` / "cross_entropy" take logits; ``BCELoss`` /
  "binary_cross_entropy" takes probabilities; ``NLLLoss`` / "nll_loss" log-probabilities.
* Keras names take what Keras' do: ``BinaryCrossentropy`` / "binary_crossentropy",
  ``CategoricalCrossentropy`` / "categorical_crossentropy" (one-hot targets) and
  ``SparseCategoricalCrossentropy`` / "sparse_categorical_crossentropy" (integer labels)
  take probabilities (clipped to [1e-7, 1 - 1e-7]) unless ``from_logits=True``.
* The older gradcore names: "crossentropy" and ``CrossEntropy`` always meant softmax
  cross-entropy of logits and still do (= ``CrossEntropyLoss``); "bce" is Keras' alias of
  binary_crossentropy (probabilities). ``BinaryCrossEntropy`` differs from Keras'
  ``BinaryCrossentropy`` only by one capital but used to default to logits, so it now
  needs an explicit ``from_logits``: no spelling silently picks the other meaning.

A probability loss refuses predictions outside [0, 1] (negative ones for categorical),
which is what logits fed to it look like. ``net.compile`` warns when a network ending in
a sigmoid / softmax feeds a logits loss, and the reverse.

Every loss rebuilds from ``get_config()`` through ``get()`` (JSON-safe dicts).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import functional as F
from .tensor import Tensor, _structure_clock, tensor

EPSILON = 1e-7  # Keras' backend.epsilon(): the probability clip


class Loss:
    """Base class. ``from_logits``: True if the prediction is logits, False if
    probabilities, None when the question does not apply (regression).
    ``task``: 'binary', 'categorical' or 'regression' (what "accuracy" means with it)."""

    name = "loss"
    from_logits: Optional[bool] = None
    task = "regression"

    def __call__(self, prediction, target) -> Tensor:
        raise NotImplementedError

    def __setattr__(self, name, value) -> None:
        _structure_clock[0] += 1  # a compiled step lowered with this loss checks its options again
        object.__setattr__(self, name, value)

    @property
    def expects(self) -> str:
        """'logits', 'probabilities' or 'values', for messages."""
        return {True: "logits", False: "probabilities"}.get(self.from_logits, "values")

    def arguments(self) -> dict:
        """Constructor arguments (JSON-safe), what ``get_config`` records."""
        return {}

    def get_config(self) -> dict:
        return {"class_name": type(self).__name__, "config": self.arguments()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"


def _json_array(value):
    """Class weights etc. as lists in configs; None stays None."""
    if value is None:
        return None
    return np.asarray(value.data if isinstance(value, Tensor) else value, dtype=np.float64).tolist()


# ---------------------------------------------------------------------- PyTorch names
class MSELoss(Loss):
    """Squared error; ``reduction`` 'mean' (default) | 'sum' | 'none'. Targets of the
    prediction's shape ((N,) against (N, 1) accepted)."""

    name = "mse"

    def __init__(self, reduction: str = "mean"):
        self.reduction = F._reduction("MSELoss", reduction)

    def __call__(self, prediction, target):
        return F.mse_loss(prediction, target, reduction=self.reduction)

    def arguments(self):
        return {"reduction": self.reduction}


MSE = MSELoss
MeanSquaredError = MSELoss  # Keras' mean over the last axis then the batch is the same mean


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy of logits (torch semantics): ``weight`` rescales each term,
    ``pos_weight`` the positive part; ``reduction`` 'mean' | 'sum' | 'none'."""

    name = "bce_with_logits"
    from_logits = True
    task = "binary"

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        self.weight = weight
        self.reduction = F._reduction("BCEWithLogitsLoss", reduction)
        self.pos_weight = pos_weight

    def __call__(self, prediction, target):
        return F.binary_cross_entropy_with_logits(prediction, target, weight=self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight)

    def arguments(self):
        return {"weight": _json_array(self.weight), "reduction": self.reduction,
                "pos_weight": _json_array(self.pos_weight)}


class BCELoss(Loss):
    """Binary cross-entropy of probabilities (torch semantics: values outside [0, 1] are
    refused, logs clamped at -100)."""

    name = "binary_cross_entropy"
    from_logits = False
    task = "binary"

    def __init__(self, weight=None, reduction: str = "mean"):
        self.weight = weight
        self.reduction = F._reduction("BCELoss", reduction)

    def __call__(self, prediction, target):
        return F.binary_cross_entropy(prediction, target, weight=self.weight, reduction=self.reduction)

    def arguments(self):
        return {"weight": _json_array(self.weight), "reduction": self.reduction}


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy of logits (N, C) against labels (N,) or probabilities (N, C),
    with torch's ``weight``, ``ignore_index``, ``reduction`` and ``label_smoothing``."""

    name = "cross_entropy"
    from_logits = True
    task = "categorical"

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        self.weight = weight
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.reduction = F._reduction("CrossEntropyLoss", reduction)
        self.label_smoothing = F._label_smoothing("CrossEntropyLoss", label_smoothing)

    def __call__(self, prediction, target):
        return F.cross_entropy(prediction, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)

    def arguments(self):
        return {"weight": _json_array(self.weight), "ignore_index": self.ignore_index,
                "reduction": self.reduction, "label_smoothing": self.label_smoothing}


class CrossEntropy(CrossEntropyLoss):
    """gradcore's original name for ``CrossEntropyLoss`` (logits), kept with that meaning."""

    name = "crossentropy"


class NLLLoss(Loss):
    """Negative log-likelihood of log-probabilities (N, C) against labels (N,) (torch)."""

    name = "nll_loss"
    from_logits = None  # log-probabilities: neither
    task = "categorical"

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean"):
        self.weight = weight
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.reduction = F._reduction("NLLLoss", reduction)

    @property
    def expects(self):
        return "log-probabilities"

    def __call__(self, prediction, target):
        return F.nll_loss(prediction, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)

    def arguments(self):
        return {"weight": _json_array(self.weight), "ignore_index": self.ignore_index, "reduction": self.reduction}


# ---------------------------------------------------------------------- Keras names
# Keras reduces each sample first (mean over the last axis for binary, sum over classes
# for categorical), then the batch: "sum_over_batch_size" (default) divides the sum of
# the per-sample losses by their count, "sum" adds them, "none" returns them.
_KERAS_REDUCTIONS = {"sum_over_batch_size": "mean", "mean": "mean", "sum": "sum", "none": "none", None: "none"}


def _keras_reduction(op: str, reduction) -> str:
    if reduction not in _KERAS_REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of 'sum_over_batch_size', 'sum', 'none', got {reduction!r}")
    return _KERAS_REDUCTIONS[reduction]


class _KerasLoss(Loss):
    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0,
                 reduction: Optional[str] = "sum_over_batch_size"):
        op = type(self).__name__
        self.from_logits = bool(from_logits)
        self.label_smoothing = F._label_smoothing(op, label_smoothing)
        self._reduction = _keras_reduction(op, reduction)
        self.reduction = reduction

    def arguments(self):
        return {"from_logits": self.from_logits, "label_smoothing": self.label_smoothing,
                "reduction": self.reduction}


class BinaryCrossentropy(_KerasLoss):
    """Keras' binary cross-entropy: probabilities (clipped to [1e-7, 1 - 1e-7]) unless
    ``from_logits=True``; ``label_smoothing`` s uses t (1 - s) + s / 2."""

    name = "binary_crossentropy"
    task = "binary"

    def __call__(self, prediction, target):
        pred = tensor(prediction)
        F._nonempty(self.name, pred)
        T = F._target_like(self.name, pred, target).astype(np.float64)
        if self.label_smoothing:
            T = T * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        if self.from_logits:
            if self._reduction == "mean":  # the fused kernel's mean is Keras' for every shape
                return F.binary_cross_entropy_with_logits(pred, T)
            x = pred.data.astype(np.float64)
            values = np.logaddexp(0.0, x) - x * T
            dvalues = np.exp(-np.logaddexp(0.0, -x)) - T  # sigmoid(x) - t
        else:
            p = pred.data.astype(np.float64)
            F._check_probabilities(self.name, p, "pass from_logits=True if the network outputs logits")
            q = np.clip(p, EPSILON, 1.0 - EPSILON)
            values = -(T * np.log(q) + (1.0 - T) * np.log1p(-q))
            inside = (p > EPSILON) & (p < 1.0 - EPSILON)  # the clip passes no gradient outside
            dvalues = np.where(inside, (q - T) / (q * (1.0 - q)), 0.0)
        return _keras_per_sample(self.name, pred, values, dvalues, self._reduction, mean_last=True)


def _keras_per_sample(op, pred, values, dvalues, reduction, mean_last: bool) -> Tensor:
    """Reduce element terms to one loss per sample (mean or sum over the last axis when the
    prediction has one beyond the batch), then over the batch."""
    if pred.ndim >= 2:
        k = values.shape[-1]
        values = values.mean(axis=-1) if mean_last else values.sum(axis=-1)
        if mean_last:
            dvalues = dvalues / k
    return F.reduce_loss(op, pred, values, dvalues, reduction)


def _categorical_probabilities(op: str, pred: Tensor, T: np.ndarray, reduction: str) -> Tensor:
    """Keras: scale each row to sum 1, clip to [eps, 1 - eps], loss -sum_c t_c log q_c."""
    p = pred.data.astype(np.float64)
    if np.any(p < 0.0):
        raise ValueError(f"{op}: input must hold probabilities (non-negative), got a minimum of {np.nanmin(p):g}; "
                         f"pass from_logits=True if the network outputs logits")
    s = p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = p / s
    qc = np.clip(q, EPSILON, 1.0 - EPSILON)
    values = -(T * np.log(qc)).sum(axis=-1)
    # d/dq_c = -t_c / q_c where the clip is inactive; through q = p / s:
    # d/dp_k = (r_k - sum_c r_c q_c) / s
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((q > EPSILON) & (q < 1.0 - EPSILON), -T / qc, 0.0)
        dvalues = (r - (r * q).sum(axis=-1, keepdims=True)) / s
    return F.reduce_loss(op, pred, values, dvalues, reduction)


class CategoricalCrossentropy(_KerasLoss):
    """Keras' categorical cross-entropy against one-hot (or soft) targets (N, C):
    probabilities unless ``from_logits=True``; ``label_smoothing`` s uses t (1 - s) + s / C.
    Integer labels belong to SparseCategoricalCrossentropy and are refused here."""

    name = "categorical_crossentropy"
    task = "categorical"

    def __call__(self, prediction, target):
        pred = F._logits_2d(self.name, prediction)
        T = np.asarray(target.data if isinstance(target, Tensor) else target)
        if T.shape != pred.shape:
            hint = (" (integer labels: use 'sparse_categorical_crossentropy')"
                    if T.shape in ((pred.shape[0],), (pred.shape[0], 1)) else "")
            raise ValueError(f"{self.name}: target must be one-hot of the input's shape {pred.shape}, "
                             f"got {T.shape}{hint}")
        T = T.astype(np.float64)
        if self.from_logits:
            return F.cross_entropy(pred, T, reduction=self._reduction, label_smoothing=self.label_smoothing)
        if self.label_smoothing:
            T = T * (1.0 - self.label_smoothing) + self.label_smoothing / pred.shape[1]
        return _categorical_probabilities(self.name, pred, T, self._reduction)


class SparseCategoricalCrossentropy(_KerasLoss):
    """Keras' sparse categorical cross-entropy against integer labels (N,) or (N, 1):
    probabilities (N, C) unless ``from_logits=True``. Every label must be in [0, C)."""

    name = "sparse_categorical_crossentropy"
    task = "categorical"

    def __init__(self, from_logits: bool = False, reduction: Optional[str] = "sum_over_batch_size"):
        super().__init__(from_logits=from_logits, reduction=reduction)

    def arguments(self):
        return {"from_logits": self.from_logits, "reduction": self.reduction}

    def __call__(self, prediction, target):
        pred = F._logits_2d(self.name, prediction)
        n, c = pred.shape
        T = np.asarray(target.data if isinstance(target, Tensor) else target)
        if T.shape == (n, 1):
            T = T.reshape(n)
        labels = F.class_labels(self.name, T, n, c)
        if self.from_logits:
            return F.cross_entropy(pred, labels, ignore_index=None, reduction=self._reduction)
        return _categorical_probabilities(self.name, pred, np.eye(c)[labels], self._reduction)


class BinaryCrossEntropy(Loss):
    """gradcore's original binary cross-entropy, whose default was logits while Keras'
    ``BinaryCrossentropy`` (one capital apart) defaults to probabilities. It now needs an
    explicit ``from_logits``: True behaves as ``BCEWithLogitsLoss``, False as Keras'
    ``BinaryCrossentropy``."""

    name = "binary_crossentropy"
    task = "binary"

    def __init__(self, from_logits: Optional[bool] = None):
        if from_logits is None:
            raise TypeError("BinaryCrossEntropy: pass from_logits=True (the prediction is logits) or "
                            "from_logits=False (probabilities); or use BCEWithLogitsLoss (torch, logits) / "
                            "BinaryCrossentropy (Keras, probabilities by default)")
        self.from_logits = bool(from_logits)
        self._impl = BCEWithLogitsLoss() if self.from_logits else BinaryCrossentropy()
        self.name = self._impl.name  # messages name the semantics in use

    def __call__(self, prediction, target):
        return self._impl(prediction, target)

    def arguments(self):
        return {"from_logits": self.from_logits}


# ---------------------------------------------------------------------- lookup
_CLASSES = {cls.__name__: cls for cls in (
    MSELoss, BCEWithLogitsLoss, BCELoss, CrossEntropyLoss, CrossEntropy, NLLLoss, BinaryCrossentropy,
    CategoricalCrossentropy, SparseCategoricalCrossentropy, BinaryCrossEntropy)}
_CLASSES.update({"MSE": MSELoss, "MeanSquaredError": MSELoss})

_ALIASES = {
    "mse": MSELoss, "mean_squared_error": MSELoss, "mse_loss": MSELoss,
    "bce_with_logits": BCEWithLogitsLoss, "binary_cross_entropy_with_logits": BCEWithLogitsLoss,
    "binary_cross_entropy": BCELoss,
    "cross_entropy": CrossEntropyLoss, "crossentropy": CrossEntropy,
    "nll_loss": NLLLoss, "nll": NLLLoss,
    "binary_crossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}


def get(loss) -> Loss:
    """A Loss from a name, a ``get_config()`` dict, a Loss, or any callable
    ``(prediction, target) -> Tensor``."""
    if isinstance(loss, str):
        key = loss.lower()
        if key not in _ALIASES:
            raise ValueError(f"unknown loss {loss!r}; choose from {sorted(_ALIASES)}")
        return _ALIASES[key]()
    if isinstance(loss, dict):
        cls = _CLASSES.get(loss.get("class_name"))
        if cls is None:
            raise ValueError(f"unknown loss config {loss!r}; class_name must be one of {sorted(_CLASSES)}")
        return cls(**dict(loss.get("config") or {}))
    if callable(loss):
        return loss
    raise TypeError(f"loss must be a name, a config dict or a callable, got {type(loss).__name__}")


def serialize(loss) -> Optional[dict]:
    """``loss.get_config()`` for a gradcore Loss; None for any other callable (which
    cannot be rebuilt from a file)."""
    return loss.get_config() if isinstance(loss, Loss) else None
