"""Differentiable operations backed by the C++ kernels (``import gradcore.functional as F``).

Names, defaults and layouts follow ``torch.nn.functional``: a linear weight is
(out_features, in_features), so ``linear(x, w, b) = x @ w.T + b``, and ``dim=`` names the
axis (``axis=`` is accepted too, NumPy's name for the same thing).
Each function validates its inputs here, in Python, and raises ValueError / TypeError
naming the op and the shapes before any kernel runs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import _C
from . import random as _random
from .tensor import Tensor, make_result, tensor

_ACTIVATIONS = {
    "identity", "linear", "relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh",
    "silu", "swish", "gelu", "gelu_tanh", "softplus",
}


# ---------------------------------------------------------------------- input handling
def _common_dtype(*ts: Optional[Tensor]) -> np.dtype:
    return np.dtype(np.float64) if any(t is not None and t.dtype == np.float64 for t in ts) else np.dtype(np.float32)


def _buf(x, dtype) -> np.ndarray:
    """Read-only kernel input: C-contiguous array of ``dtype`` (converted when needed)."""
    data = x.data if isinstance(x, Tensor) else x
    return np.ascontiguousarray(data, dtype=dtype)


def _state_buffer(op: str, name: str, arr, dtype, size: int) -> np.ndarray:
    """A buffer the kernel writes in place: refuse anything that would need a copy."""
    if isinstance(arr, Tensor):
        arr = arr.data
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{op}: {name} must be a NumPy array (it is updated in place), got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {dtype} to be updated in place, got {arr.dtype}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise TypeError(f"{op}: {name} must be a writeable C-contiguous array (it is updated in place)")
    if arr.size != size:
        raise ValueError(f"{op}: {name} must have {size} elements, got shape {arr.shape}")
    return arr


def _grad_in(g: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(g, dtype=dtype)


def _nonempty(op: str, x: Tensor) -> None:
    if x.size == 0:
        raise ValueError(f"{op}: empty input of shape {x.shape}")


# ---------------------------------------------------------------------- dense
def linear(x, weight, bias=None, activation: Optional[str] = None, alpha: float = 0.0) -> Tensor:
    """``act(x @ weight.T + bias)`` with x (..., in), weight (out, in), bias (out,).

    The layout is torch.nn.functional.linear's; the kernel takes the transpose through the
    BLAS flags, so nothing is copied. ``activation`` (a name from
    ``gradcore.activation_names()``) is fused into the kernel.
    """
    x, weight = tensor(x), tensor(weight)
    bias = None if bias is None else tensor(bias)
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-d (out_features, in_features), got shape {weight.shape}")
    n_out, n_in = weight.shape
    if x.ndim == 0 or x.shape[-1] != n_in:
        raise ValueError(
            f"linear: input of shape {x.shape} does not fit weight of shape {weight.shape} "
            f"(weight is (out_features, in_features); expected input (..., {n_in}))"
        )
    if bias is not None and bias.shape != (n_out,):
        raise ValueError(f"linear: bias must have shape ({n_out},), got {bias.shape}")
    act = activation or "identity"
    if act not in _ACTIVATIONS:
        raise ValueError(f"linear: unknown activation {act!r}; choose from {sorted(_ACTIVATIONS)}")
    lead = x.shape[:-1]
    batch = int(np.prod(lead)) if lead else 1
    if batch == 0:
        raise ValueError(f"linear: empty batch (input shape {x.shape})")
    dtype = _common_dtype(x, weight, bias)
    X = _buf(x, dtype).reshape(batch, n_in)
    W = _buf(weight, dtype)
    b = None if bias is None else _buf(bias, dtype)
    Y = np.empty((batch, n_out), dtype=dtype)
    fused = act not in ("identity", "linear")
    Z = np.empty_like(Y) if fused and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)) else None
    _C.dense_forward(X, W, b, Y, act, float(alpha), Z)

    def backward(g):
        G = _grad_in(g, dtype).reshape(batch, n_out)
        if fused:
            dZ = np.empty_like(G)
            _C.activation_backward(act, Z, Y, G, dZ, float(alpha))
            G = dZ
        dX = np.empty_like(X) if x.requires_grad else None
        dW = np.empty_like(W) if weight.requires_grad else None
        db = np.empty_like(b) if bias is not None and bias.requires_grad else None
        _C.dense_backward(X, W, G, dX, dW, db, False)
        return (None if dX is None else dX.reshape(x.shape), dW, db)

    inputs = (x, weight) if bias is None else (x, weight, bias)
    return make_result(Y.reshape(*lead, n_out), inputs, backward, "linear")


# ---------------------------------------------------------------------- activations
def _activation(kind: str, x, alpha: float = 0.0) -> Tensor:
    x = tensor(x)
    X = _buf(x, x.dtype)
    Y = np.empty_like(X)
    _C.activation_forward(kind, X, Y, float(alpha))

    def backward(g):
        dX = np.empty_like(X)
        _C.activation_backward(kind, X, Y, _grad_in(g, X.dtype), dX, float(alpha))
        return (dX,)

    return make_result(Y, (x,), backward, kind)


def relu(x) -> Tensor:
    return _activation("relu", x)


def leaky_relu(x, negative_slope: float = 0.01) -> Tensor:
    return _activation("leaky_relu", x, negative_slope)


def elu(x, alpha: float = 1.0) -> Tensor:
    return _activation("elu", x, alpha)


def selu(x) -> Tensor:
    return _activation("selu", x)


def sigmoid(x) -> Tensor:
    return _activation("sigmoid", x)


def tanh(x) -> Tensor:
    return _activation("tanh", x)


def silu(x) -> Tensor:
    return _activation("silu", x)


swish = silu


def gelu(x, approximate: str = "none") -> Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _activation("gelu" if approximate == "none" else "gelu_tanh", x)


def softplus(x) -> Tensor:
    return _activation("softplus", x)


def identity(x) -> Tensor:
    return tensor(x)


def prelu(x, weight) -> Tensor:
    """``x if x > 0 else weight * x`` with one learnable slope per unit of the last axis
    (weight of size 1 or x.shape[-1])."""
    x, weight = tensor(x), tensor(weight)
    units = x.shape[-1] if x.ndim else 1
    if weight.size not in (1, units):
        raise ValueError(f"prelu: weight must have 1 or {units} elements for input of shape {x.shape}, got {weight.shape}")
    dtype = _common_dtype(x, weight)
    X, A = _buf(x, dtype), _buf(weight, dtype).reshape(-1)
    Y = np.empty_like(X)
    _C.prelu_forward(X, A, Y)

    def backward(g):
        dX = np.empty_like(X) if x.requires_grad else None
        dA = np.empty_like(A) if weight.requires_grad else None
        _C.prelu_backward(X, A, _grad_in(g, dtype), dX, dA, False)
        return dX, (None if dA is None else dA.reshape(weight.shape))

    return make_result(Y, (x, weight), backward, "prelu")


def _rowwise(kind: str, x, axis: int) -> Tensor:
    x = tensor(x)
    if x.ndim == 0:
        raise ValueError(f"{kind}: needs at least one dimension")
    if not -x.ndim <= axis < x.ndim:
        raise IndexError(f"{kind}: dim {axis} is out of range for an input of {x.ndim} dimensions "
                         f"(expected -{x.ndim} <= dim < {x.ndim})")
    axis = axis % x.ndim
    moved = axis != x.ndim - 1
    X = _buf(np.moveaxis(x.data, axis, -1) if moved else x.data, x.dtype)
    Y = np.empty_like(X)
    getattr(_C, kind + "_forward")(X, Y)

    def backward(g):
        G = np.moveaxis(g, axis, -1) if moved else g
        dX = np.empty_like(X)
        getattr(_C, kind + "_backward")(Y, _grad_in(G, X.dtype), dX)
        return (np.moveaxis(dX, -1, axis) if moved else dX,)

    return make_result(np.moveaxis(Y, -1, axis) if moved else Y, (x,), backward, kind)


def _dim(op: str, dim, axis, default: int = -1) -> int:
    """The axis given as torch's ``dim`` or NumPy's ``axis`` (not both)."""
    if dim is not None and axis is not None:
        raise TypeError(f"{op}: pass dim or axis, not both (got dim={dim!r}, axis={axis!r})")
    value = dim if dim is not None else axis if axis is not None else default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: dim must be an int, got {type(value).__name__} ({value!r})")
    return int(value)


def softmax(x, dim: Optional[int] = None, *, axis: Optional[int] = None) -> Tensor:
    """exp(x) / sum(exp(x)) along ``dim`` (default -1, the last axis), computed stably."""
    return _rowwise("softmax", x, _dim("softmax", dim, axis))


def log_softmax(x, dim: Optional[int] = None, *, axis: Optional[int] = None) -> Tensor:
    """log(softmax(x)) along ``dim`` (default -1), computed stably."""
    return _rowwise("log_softmax", x, _dim("log_softmax", dim, axis))


# ---------------------------------------------------------------------- normalisation
def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation of x (N, C) over the batch axis (PyTorch BatchNorm1d semantics).

    Training uses the batch statistics (biased variance) and updates ``running_mean`` /
    ``running_var`` in place (unbiased variance); evaluation uses the running statistics.
    """
    x = tensor(x)
    weight = None if weight is None else tensor(weight)
    bias = None if bias is None else tensor(bias)
    if x.ndim != 2:
        raise ValueError(f"batch_norm: input must be 2-d (batch, features), got shape {x.shape}")
    n, c = x.shape
    if n == 0:
        raise ValueError(f"batch_norm: empty batch (input shape {x.shape})")
    if training and n == 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input of shape {x.shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},) for input {x.shape}, got {t.shape}")
    if eps <= 0:
        raise ValueError(f"batch_norm: eps must be > 0, got {eps}")
    dtype = _common_dtype(x, weight, bias)
    X = _buf(x, dtype)
    G = None if weight is None else _buf(weight, dtype)
    B = None if bias is None else _buf(bias, dtype)
    rm = None if running_mean is None else _state_buffer("batch_norm", "running_mean", running_mean, dtype, c)
    rv = None if running_var is None else _state_buffer("batch_norm", "running_var", running_var, dtype, c)
    Y = np.empty_like(X)
    if training:
        mean, invstd = np.empty(c, dtype), np.empty(c, dtype)
        _C.batch_norm_forward_train(X, G, B, rm, rv, float(momentum), float(eps), Y, mean, invstd)
    else:
        if rm is None or rv is None:
            raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
        _C.batch_norm_forward_eval(X, G, B, rm, rv, float(eps), Y)
        mean, invstd = rm.copy(), (1.0 / np.sqrt(rv.astype(np.float64) + eps)).astype(dtype)

    def backward(g):
        dX = np.empty_like(X) if x.requires_grad else None
        dG = np.empty_like(G) if weight is not None and weight.requires_grad else None
        dB = np.empty_like(B) if bias is not None and bias.requires_grad else None
        _C.batch_norm_backward(X, _grad_in(g, dtype), G, mean, invstd, dX, dG, dB, bool(training), False)
        return (dX, dG, dB)

    return make_result(Y, (x, *(t for t in (weight, bias) if t is not None)), _drop_missing(backward, weight, bias),
                       "batch_norm")


def _drop_missing(backward, weight, bias):
    """Adapt a (dX, dweight, dbias) backward to the inputs actually recorded."""
    def adapted(g):
        dX, dG, dB = backward(g)
        out = [dX]
        if weight is not None:
            out.append(dG)
        if bias is not None:
            out.append(dB)
        return tuple(out)

    return adapted


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dimensions of x."""
    x = tensor(x)
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (int(normalized_shape),)
    normalized_shape = tuple(int(s) for s in normalized_shape)
    k = len(normalized_shape)
    if k == 0 or x.shape[x.ndim - k:] != normalized_shape or x.ndim < k:
        raise ValueError(f"layer_norm: input of shape {x.shape} does not end with normalized_shape {normalized_shape}")
    weight = None if weight is None else tensor(weight)
    bias = None if bias is None else tensor(bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != normalized_shape:
            raise ValueError(f"layer_norm: {name} must have shape {normalized_shape}, got {t.shape}")
    _nonempty("layer_norm", x)
    d = int(np.prod(normalized_shape))
    rows = x.size // d
    dtype = _common_dtype(x, weight, bias)
    X = _buf(x, dtype).reshape(rows, d)
    G = None if weight is None else _buf(weight, dtype).reshape(d)
    B = None if bias is None else _buf(bias, dtype).reshape(d)
    Y = np.empty_like(X)
    mean, invstd = np.empty(rows, dtype), np.empty(rows, dtype)
    _C.layer_norm_forward(X, G, B, float(eps), Y, mean, invstd)

    def backward(g):
        dX = np.empty_like(X) if x.requires_grad else None
        dG = np.empty_like(G) if weight is not None and weight.requires_grad else None
        dB = np.empty_like(B) if bias is not None and bias.requires_grad else None
        _C.layer_norm_backward(X, _grad_in(g, dtype).reshape(rows, d), G, mean, invstd, dX, dG, dB, False)
        return (None if dX is None else dX.reshape(x.shape),
                None if dG is None else dG.reshape(normalized_shape),
                None if dB is None else dB.reshape(normalized_shape))

    return make_result(Y.reshape(x.shape), (x, *(t for t in (weight, bias) if t is not None)),
                       _drop_missing(backward, weight, bias), "layer_norm")


# ---------------------------------------------------------------------- dropout
def dropout(x, p: float = 0.5, training: bool = True, seed: Optional[int] = None) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only).

    The mask comes from a counter-based generator: the same ``seed`` gives the same mask
    for any thread count; without one, the next seed of ``gradcore.manual_seed``'s stream.
    """
    x = tensor(x)
    if not 0.0 <= p < 1.0:
        if p == 1.0 and training:
            return x * 0.0
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    X = _buf(x, x.dtype)
    Y = np.empty_like(X)
    mask = np.empty(X.shape, dtype=np.uint8)
    _C.dropout_forward(X, Y, mask, float(p), int(_random.next_seed() if seed is None else seed), 0)

    def backward(g):
        dX = np.empty_like(X)
        _C.dropout_backward(_grad_in(g, X.dtype), mask, float(p), dX)
        return (dX,)

    return make_result(Y, (x,), backward, "dropout")


# ---------------------------------------------------------------------- losses
def _loss(op: str, kernel, pred: Tensor, target: np.ndarray) -> Tensor:
    dtype = pred.dtype
    P = _buf(pred, dtype)
    grad = np.empty_like(P) if pred.requires_grad else None
    value = kernel(P, target, grad)
    return make_result(np.asarray(value, dtype=dtype), (pred,), lambda g: (grad * g,), op)


def _same_shape(op: str, pred: Tensor, target) -> np.ndarray:
    T = target.data if isinstance(target, Tensor) else np.asarray(target)
    if T.shape != pred.shape:
        raise ValueError(f"{op}: input has shape {pred.shape} but target has shape {T.shape}")
    return T


def mse_loss(input, target) -> Tensor:
    """Mean of (input - target)^2 over all elements."""
    pred = tensor(input)
    _nonempty("mse_loss", pred)
    T = _buf(_same_shape("mse_loss", pred, target), pred.dtype)
    return _loss("mse_loss", _C.mse_loss, pred, T)


def binary_cross_entropy_with_logits(input, target) -> Tensor:
    """Mean binary cross-entropy of sigmoid(input) against targets in [0, 1], computed stably."""
    pred = tensor(input)
    _nonempty("binary_cross_entropy_with_logits", pred)
    T = _buf(_same_shape("binary_cross_entropy_with_logits", pred, target), pred.dtype)
    return _loss("binary_cross_entropy_with_logits", _C.bce_with_logits_loss, pred, T)


def cross_entropy(input, target) -> Tensor:
    """Softmax cross-entropy of logits (N, C) against integer labels (N,) or probabilities (N, C)."""
    logits = tensor(input)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be 2-d (batch, classes), got shape {logits.shape}")
    n, c = logits.shape
    if n == 0:
        raise ValueError(f"cross_entropy: empty batch (logits shape {logits.shape})")
    T = target.data if isinstance(target, Tensor) else np.asarray(target)
    if T.shape == (n,):
        if T.dtype.kind == "f":
            if not np.all(np.isfinite(T)) or np.any(T != np.round(T)):
                raise ValueError("cross_entropy: float labels of shape (N,) must hold whole class indices")
        elif T.dtype.kind not in "iub":
            raise TypeError(f"cross_entropy: labels must be integers, got dtype {T.dtype}")
        labels = np.ascontiguousarray(T, dtype=np.int64)
        return _loss("cross_entropy", _C.cross_entropy_loss, logits, labels)
    if T.shape == (n, c):
        return _loss("cross_entropy", _C.cross_entropy_onehot_loss, logits, _buf(T, logits.dtype))
    raise ValueError(
        f"cross_entropy: target must be labels of shape ({n},) or probabilities of shape ({n}, {c}), got {T.shape}"
    )


__all__ = [
    "linear", "relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "silu", "swish", "gelu", "softplus",
    "identity", "prelu", "softmax", "log_softmax", "batch_norm", "layer_norm", "dropout", "mse_loss",
    "binary_cross_entropy_with_logits", "cross_entropy",
]
