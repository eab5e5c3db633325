"""Differentiable operations backed by the C++ kernels (``import gradcore.functional as F``).

Names, defaults and layouts follow ``torch.nn.functional``: a linear weight is
(out_features, in_features), so ``linear(x, w, b) = x @ w.T + b``, and ``dim=`` names the
axis (``axis=`` is accepted too, NumPy's name for the same thing).
Each function validates its inputs here, in Python, and raises ValueError / TypeError
naming the op and the shapes before any kernel runs.
"""
from __future__ import annotations

import math
import sys
import threading
from typing import Optional, Sequence

import numpy as np

from . import _C
from . import _validate as _v
from . import activations as _act
from . import random as _random
from .tensor import Tensor, grad_destination, is_grad_enabled, make_result, tensor


# ---------------------------------------------------------------------- input handling
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _common_dtype(*ts: Optional[Tensor]) -> np.dtype:
    return np.dtype(np.float64) if any(t is not None and t.dtype == np.float64 for t in ts) else np.dtype(np.float32)


# ---------------------------------------------------------------------- work arrays
# Outputs and gradients of the ops are fresh arrays every step. Large ones go back to the C
# allocator when the step's graph is dropped, and glibc returns the top of its heap to the
# kernel once more than 128 KiB are free there (M_TRIM_THRESHOLD): the next step then
# page-faults the same memory in again, zero-filled (measured on the documents' net at
# batch 800: 180 faults and ~300 us per step in about half the runs, depending on the heap
# layout). So arrays of at least _POOL_BYTES are kept per thread, per (shape, dtype), and
# handed out again once nothing references them any more: CPython's reference count says
# so exactly (only the pool's list and this lookup hold it), so an array still saved by a
# graph, held by a Tensor, viewed, or kept by the caller is never reused. The values of a
# reused array are as undefined as np.empty's, which is all the ops ask for.
class _WorkArrays(threading.local):
    def __init__(self):
        self.lists = {}


_POOL_BYTES = 1 << 15
_POOL_DEPTH = 8  # arrays kept per (shape, dtype): the most one step has alive at once, and then some
_work = _WorkArrays()


def _free_refcount() -> int:
    # sys.getrefcount of an array only the pool holds, measured with the lookup's own code
    # shape (the count depends on the interpreter: a borrowed loop variable counts or not)
    arrays = [np.empty(0)]
    for a in arrays:
        return sys.getrefcount(a)
    return -1


# Only where reference counts are exact and immediate: CPython with the GIL.
_FREE_REFS = _free_refcount() if (sys.implementation.name == "cpython"
                                  and getattr(sys, "_is_gil_enabled", lambda: True)()) else -1


def _work_array(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, reusing a large array of an earlier step nothing holds."""
    if math.prod(shape) * dtype.itemsize < _POOL_BYTES or _FREE_REFS < 0:
        return np.empty(shape, dtype)
    lists = _work.lists
    key = (shape, dtype)
    arrays = lists.get(key)
    if arrays is None:
        arrays = lists[key] = []
    for a in arrays:
        if sys.getrefcount(a) == _FREE_REFS:
            return a
    a = np.empty(shape, dtype)
    if len(arrays) < _POOL_DEPTH:
        arrays.append(a)
    return a


def release_work_arrays() -> None:
    """Drop this thread's kept work arrays (memory the next steps would have reused)."""
    _work.lists.clear()


def _buf(x, dtype) -> np.ndarray:
    """Read-only kernel input: C-contiguous array of ``dtype`` (converted when needed)."""
    data = x.data if isinstance(x, Tensor) else x
    return np.asarray(data, dtype=dtype, order="C")  # unlike ascontiguousarray, keeps 0-d as 0-d


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
    return np.asarray(g, dtype=dtype, order="C")


def _nonempty(op: str, x: Tensor) -> None:
    if x.size == 0:
        raise ValueError(f"{op}: empty input of shape {x.shape}")


# ---------------------------------------------------------------------- dense
# activation name (as given) -> its fused spec, filled by linear() from _act.get's answers
# (the table is constant, so a name once accepted is always the same spec)
_FUSED_SPECS: dict = {}


def linear(x, weight, bias=None, activation: Optional[str] = None, alpha: Optional[float] = None, *,
           _tap=None) -> Tensor:
    """``act(x @ weight.T + bias)`` with x (..., in), weight (out, in), bias (out,).

    The layout is torch.nn.functional.linear's; the kernel takes the transpose through the
    BLAS flags, so nothing is copied. ``activation`` (a name from
    ``gradcore.activation_names()``) is fused into the kernel; ``alpha`` is its parameter
    (leaky_relu's slope, default 0.01; elu's alpha, default 1.0).

    ``_tap`` is internal (``gradcore.monitor``'s view into a Dense layer, not an API):
    ``_tap.forward(z, y)`` gets the pre-activation (batch, out) and the output (batch, out)
    arrays (z is y without a fused activation, None when no input requires grad) and
    ``_tap.backward(dz)`` the gradient w.r.t. the pre-activation. None costs nothing.
    """
    # Per-step hot path of every Dense layer: the same checks and kernels as always, with
    # the attribute reads, conversions and reshapes that a 2-d float input does not need
    # skipped (np.prod and generator expressions cost more than the kernel on small layers).
    if not isinstance(x, Tensor):
        x = Tensor(x)
    if not isinstance(weight, Tensor):
        weight = Tensor(weight)
    if bias is not None and not isinstance(bias, Tensor):
        bias = Tensor(bias)
    xd, wd = x.data, weight.data
    if wd.ndim != 2:
        raise ValueError(f"linear: weight must be 2-d (out_features, in_features), got shape {wd.shape}")
    n_out, n_in = wd.shape
    xs = xd.shape
    if not xs or xs[-1] != n_in:
        raise ValueError(
            f"linear: input of shape {xs} does not fit weight of shape {wd.shape} "
            f"(weight is (out_features, in_features); expected input (..., {n_in}))"
        )
    bd = None if bias is None else bias.data
    if bd is not None and bd.shape != (n_out,):
        raise ValueError(f"linear: bias must have shape ({n_out},), got {bd.shape}")
    spec = _FUSED_SPECS.get(activation) if type(activation) is str or activation is None else None
    if spec is None:
        spec = _act.get(activation or "identity", "linear", fused_only=True)
        if type(activation) is str or activation is None:
            _FUSED_SPECS[activation] = spec
    act = spec.kernel
    if alpha is None:
        alpha = 0.0 if spec.alpha is None else float(spec.alpha)
    elif not (type(alpha) is float and math.isfinite(alpha)):  # the common float goes unchecked
        alpha = float(_act.resolve_alpha("linear", spec, alpha, "alpha"))
    two_d = len(xs) == 2
    batch = xs[0] if two_d else math.prod(xs[:-1])
    if batch == 0:
        raise ValueError(f"linear: empty batch (input shape {xs})")
    dtype = _F64 if (xd.dtype == _F64 or wd.dtype == _F64 or (bd is not None and bd.dtype == _F64)) else _F32
    X = np.asarray(xd, dtype=dtype, order="C")
    if not two_d:
        X = X.reshape(batch, n_in)
    W = np.asarray(wd, dtype=dtype, order="C")
    b = None if bd is None else np.asarray(bd, dtype=dtype, order="C")
    Y = _work_array((batch, n_out), dtype)
    fused = act != "identity"
    x_grad, w_grad = x.requires_grad, weight.requires_grad
    b_grad = bias is not None and bias.requires_grad
    Z = _work_array((batch, n_out), dtype) if fused and (x_grad or w_grad or b_grad) else None
    _C.dense_forward(X, W, b, Y, act, alpha, Z)
    if _tap is not None:
        _tap.forward(Z if fused else Y, Y)

    def backward(g):
        G = np.asarray(g, dtype=dtype, order="C")
        if G.shape != (batch, n_out):
            G = G.reshape(batch, n_out)
        dX, dW, db = _dense_grads(X, W, Y, Z, G, act, alpha, x_grad, weight if w_grad else None,
                                  bias if b_grad else None, _work_array, _tap)
        return (None if dX is None else (dX if two_d else dX.reshape(xs)), dW, db)

    inputs = (x, weight) if bias is None else (x, weight, bias)
    return make_result(Y if two_d else Y.reshape(*xs[:-1], n_out), inputs, backward, "linear")


def _dense_grads(X, W, Y, Z, G, act: str, alpha: float, x_grad: bool, weight: Optional[Tensor],
                 bias: Optional[Tensor], alloc, tap=None):
    """One Dense layer's backward (``linear``'s, and each layer's in ``_dense_chain``):
    (dX, dW, db) from G, the gradient at its output (batch, out) of the layer's dtype.
    G goes through the fused activation's backward (into a new array) and the tap; dX
    (when ``x_grad``) comes from ``alloc``; dW / db (when ``weight`` / ``bias`` is given: it
    needs its gradient) go straight into the flat gradient buffer when nothing else can be
    there (tensor.grad_destination, when that buffer has G's dtype), else into work arrays."""
    dtype = G.dtype
    batch, n_out = G.shape
    if act != "identity":
        dZ = alloc((batch, n_out), dtype)
        _C.activation_backward(act, Z, Y, G, dZ, alpha)
        G = dZ
    if tap is not None:
        tap.backward(G)
    dX = alloc((batch, W.shape[1]), dtype) if x_grad else None
    dW = db = None
    if weight is not None:
        dW = grad_destination(weight)
        if dW is None or dW.dtype is not dtype:  # (a flat buffer of another dtype: the usual way)
            dW = _work_array(W.shape, dtype)
    if bias is not None:
        db = grad_destination(bias)
        if db is None or db.dtype is not dtype:
            db = _work_array((n_out,), dtype)
    _C.dense_backward(X, W, G, dX, dW, db, False)
    return dX, dW, db


def _dense_chain(x: Tensor, layers: Sequence[tuple], contiguous: bool = False) -> Tensor:
    """``linear`` applied layer after layer, recorded as one node (internal: Sequential's
    per-step path for runs of plain Dense layers).

    ``layers``: (weight, bias or None, kernel, alpha) per layer, already checked by the
    caller to be what linear() accepts without a conversion: x a 2-d Tensor with rows,
    every array of x's dtype, each weight (out, in) fitting the width before it, fused
    activations and finite float alphas, no tensor twice, no tap. The same kernels run in
    the same order on the same arrays as one linear() per layer, so the values and the
    gradients are the same bits; what is shared is the bookkeeping of the tape (one node,
    one closure, one entry in backward's order instead of two per layer). The node checks
    in-place changes as the per-layer nodes would, in their order (``Node.groups``).
    ``contiguous``: the caller knows every weight's and bias's ``.data`` to be C-contiguous
    already (Sequential's cached run: the same array objects it checked), so they are
    passed as they are instead of through np.asarray (the kernels check it again).
    """
    enabled = is_grad_enabled()
    xd = x.data
    dtype = xd.dtype
    batch = xd.shape[0]
    # activations and their gradients: below _POOL_BYTES _work_array is np.empty, so call
    # that directly (the widest layer decides for all, which only affects where they come from)
    widest = max(max(w.data.shape) for w, _, _, _ in layers)
    alloc = _work_array if batch * widest * dtype.itemsize >= _POOL_BYTES else np.empty
    X = np.asarray(xd, dtype=dtype, order="C")
    x_grad = x.requires_grad
    steps = []
    inputs = [x]
    groups = []
    prev = x
    for weight, bias, act, alpha in layers:
        if contiguous:
            W = weight.data
            b = None if bias is None else bias.data
        else:
            W = np.asarray(weight.data, dtype=dtype, order="C")
            b = None if bias is None else np.asarray(bias.data, dtype=dtype, order="C")
        n_out = W.shape[0]
        w_grad = weight.requires_grad
        b_grad = bias is not None and bias.requires_grad
        fused = act != "identity"
        Y = alloc((batch, n_out), dtype)
        Z = alloc((batch, n_out), dtype) if fused and (x_grad or w_grad or b_grad) else None
        _C.dense_forward(X, W, b, Y, act, alpha, Z)
        records = enabled and (x_grad or w_grad or b_grad)  # this layer's own node would exist
        # (the parameters whose gradients this layer's backward makes, or None)
        steps.append((X, W, b, Y, Z, act, alpha, x_grad, weight if w_grad else None, bias if b_grad else None,
                      records, len(inputs)))
        inputs.append(weight)
        if bias is not None:
            inputs.append(bias)
        groups.append((prev, weight) if bias is None else (prev, weight, bias))
        prev = None  # the next layer's input is internal to this node
        x_grad = records
        X = Y
    groups.reverse()
    n_last = steps[-1][1].shape[0]

    def backward(g):
        G = np.asarray(g, dtype=dtype, order="C")
        if G.shape != (batch, n_last):
            G = G.reshape(batch, n_last)
        grads = [None] * len(inputs)
        for X, W, b, Y, Z, act, alpha, x_grad, weight, bias, records, at in reversed(steps):
            if not records:  # no gradient reaches this layer, nor the ones before it
                break
            dX, dW, db = _dense_grads(X, W, Y, Z, G, act, alpha, x_grad, weight, bias, alloc)
            grads[at] = dW
            if b is not None:
                grads[at + 1] = db
            G = dX
        grads[0] = G if steps[0][7] else None
        return grads

    out = make_result(Y, inputs, backward, "linear")
    if out._node is not None:
        out._node.groups = groups
    return out


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


def leaky_relu(x, negative_slope: float = _act.default_alpha("leaky_relu")) -> Tensor:
    return _activation("leaky_relu", x, _v.real("leaky_relu", "negative_slope", negative_slope))


def elu(x, alpha: float = _act.default_alpha("elu")) -> Tensor:
    return _activation("elu", x, _v.real("elu", "alpha", alpha))


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
    _v.choice("gelu", "approximate", approximate, ("none", "tanh"))
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
    return _v.integer(op, "dim", dim if dim is not None else axis if axis is not None else default, low=None)


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
    momentum = _v.probability("batch_norm", "momentum", momentum)
    eps = _v.positive("batch_norm", "eps", eps)
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
    normalized_shape = _v.dims("layer_norm", "normalized_shape", normalized_shape)
    eps = _v.positive("layer_norm", "eps", eps)
    k = len(normalized_shape)
    if x.shape[x.ndim - k:] != normalized_shape or x.ndim < k:
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
    p = _v.probability("dropout", "p", p)
    if seed is not None:
        seed = _v.seed("dropout", "seed", seed)
    if p == 1.0 and training:
        return x * 0.0
    if not training or p == 0.0:
        return x
    X = _buf(x, x.dtype)
    Y = np.empty_like(X)
    mask = np.empty(X.shape, dtype=np.uint8)
    _C.dropout_forward(X, Y, mask, float(p), _random.next_seed() if seed is None else seed, 0)

    def backward(g):
        dX = np.empty_like(X)
        _C.dropout_backward(_grad_in(g, X.dtype), mask, float(p), dX)
        return (dX,)

    return make_result(Y, (x,), backward, "dropout")


# ---------------------------------------------------------------------- losses
# Names and defaults follow torch.nn.functional: mse_loss, binary_cross_entropy (takes
# probabilities), binary_cross_entropy_with_logits and cross_entropy (take logits),
# nll_loss (takes log-probabilities). With every option at its default the fused kernels
# run; the options (reduction, weight, pos_weight, ignore_index, label_smoothing) go
# through one NumPy path that computes each loss term and its derivative in float64.
REDUCTIONS = ("mean", "sum", "none")


def _reduction(op: str, reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _loss(op: str, kernel, pred: Tensor, target: np.ndarray) -> Tensor:
    """The fused kernels: mean loss and its gradient in one pass."""
    dtype = pred.dtype
    P = _buf(pred, dtype)
    grad = np.empty_like(P) if pred.requires_grad else None
    value = kernel(P, target, grad)
    return make_result(np.asarray(value, dtype=dtype), (pred,), lambda g: (grad * g,), op)


def reduce_loss(op: str, pred: Tensor, values: np.ndarray, dvalues: np.ndarray, reduction: str,
                denominator: Optional[float] = None, touched: Optional[np.ndarray] = None) -> Tensor:
    """Wrap loss terms as a Tensor whose only input is ``pred``.

    ``values``: one loss term per element of pred, or per row (shape pred.shape[:k]);
    ``dvalues``: d(values)/d(pred), pred's shape (a row's term depends on its row only).
    'none' returns the terms, 'sum' their sum, 'mean' their sum over ``denominator``
    (default: the number of terms; torch's weighted means pass the sum of the weights).
    ``touched``: a bool mask (broadcastable to pred's shape) of the gradient entries the loss
    reaches; the others get an exact 0 even where the scale is not finite (torch leaves an
    ignored row's gradient 0 when 'mean' has nothing to average), None: all of them.
    """
    if touched is not None and touched.all():
        touched = None
    dtype = pred.dtype
    per_row = values.shape + (1,) * (dvalues.ndim - values.ndim)
    if reduction == "none":
        out = values

        def backward(g):
            d = np.asarray(g, dtype=np.float64).reshape(per_row) * dvalues
            if touched is not None:
                d = np.where(touched, d, 0.0)
            return (d.astype(dtype, copy=False),)
    else:
        total = values.sum()
        if reduction == "sum":
            scale = 1.0
        else:
            with np.errstate(divide="ignore", invalid="ignore"):  # torch: nothing to average -> nan
                scale = np.float64(1.0) / np.float64(values.size if denominator is None else denominator)
        with np.errstate(invalid="ignore"):
            out = total * scale

        def backward(g):
            with np.errstate(invalid="ignore"):
                d = dvalues * (float(g) * scale)
            if touched is not None:
                d = np.where(touched, d, 0.0)
            return (d.astype(dtype, copy=False),)

    return make_result(np.asarray(out, dtype=dtype), (pred,), backward, op)


def _target_like(op: str, pred: Tensor, target) -> np.ndarray:
    """The target as float64 of pred's shape. (N,) against (N, 1) (either way round) is the
    one broadcast accepted; anything else of another shape is refused, because reshaping
    or broadcasting (torch turns (N, 1) - (N,) into (N, N)) would silently pair the wrong
    elements."""
    T = np.asarray(target.data if isinstance(target, Tensor) else target)
    if T.shape != pred.shape:
        column = ((pred.ndim == 2 and pred.shape[1] == 1 and T.shape == pred.shape[:1])
                  or (T.ndim == 2 and T.shape[1] == 1 and pred.shape == T.shape[:1]))
        if not column:
            raise ValueError(f"{op}: input has shape {pred.shape} but target has shape {T.shape}; they must "
                             f"match ((N,) against (N, 1) is the one broadcast accepted)")
        T = T.reshape(pred.shape)
    if T.dtype.kind not in "biuf":
        raise TypeError(f"{op}: target must be numeric, got dtype {T.dtype}")
    return T


def _broadcast_weight(op: str, name: str, weight, shape) -> np.ndarray:
    w = np.asarray(weight.data if isinstance(weight, Tensor) else weight, dtype=np.float64)
    try:
        return np.broadcast_to(w, shape)
    except ValueError:
        raise ValueError(f"{op}: {name} of shape {w.shape} does not broadcast to the input's shape {shape}") from None


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    """(input - target)^2 reduced by ``reduction`` ('mean' | 'sum' | 'none').

    input and target have the same shape ((N,) against (N, 1) is accepted)."""
    pred = tensor(input)
    _nonempty("mse_loss", pred)
    reduction = _reduction("mse_loss", reduction)
    T = _target_like("mse_loss", pred, target)
    if reduction == "mean":
        return _loss("mse_loss", _C.mse_loss, pred, _buf(T, pred.dtype))
    d = pred.data.astype(np.float64) - T.astype(np.float64)
    return reduce_loss("mse_loss", pred, d * d, 2.0 * d, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """Binary cross-entropy of sigmoid(input) against targets in [0, 1], computed stably.

    input: logits of any shape; target: the same shape. ``weight`` (broadcast to the input)
    scales each term; ``pos_weight`` (broadcast, usually one per class of the last axis)
    scales the positive part: ``-w [pos_weight t log s(x) + (1 - t) log(1 - s(x))]``.
    """
    op = "binary_cross_entropy_with_logits"
    pred = tensor(input)
    _nonempty(op, pred)
    reduction = _reduction(op, reduction)
    T = _target_like(op, pred, target)
    if weight is None and pos_weight is None and reduction == "mean":
        return _loss(op, _C.bce_with_logits_loss, pred, _buf(T, pred.dtype))
    x, t = pred.data.astype(np.float64), T.astype(np.float64)
    # log(1 + exp(-x)) = -log sigmoid(x), and sigmoid(-x), both without overflow
    softplus_neg = np.logaddexp(0.0, -x)
    sig_neg = np.exp(-np.logaddexp(0.0, x))
    log_weight = 1.0
    if pos_weight is not None:
        log_weight = 1.0 + (_broadcast_weight(op, "pos_weight", pos_weight, x.shape) - 1.0) * t
    values = (1.0 - t) * x + log_weight * softplus_neg
    dvalues = (1.0 - t) - log_weight * sig_neg
    if weight is not None:
        w = _broadcast_weight(op, "weight", weight, x.shape)
        values, dvalues = values * w, dvalues * w
    return reduce_loss(op, pred, values, dvalues, reduction)


def _check_probabilities(op: str, p: np.ndarray, hint: str) -> None:
    """Refuse values outside [0, 1] (NaN passes through, to be reported as a NaN loss)."""
    if p.size and (np.any(p < 0.0) or np.any(p > 1.0)):
        raise ValueError(f"{op}: input must hold probabilities in [0, 1], got values from {np.nanmin(p):g} to "
                         f"{np.nanmax(p):g}; {hint}")


def binary_cross_entropy(input, target, weight=None, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of probabilities (torch's ``F.binary_cross_entropy``).

    input: probabilities in [0, 1] (refused otherwise, as torch does); each log is clamped
    at -100 like torch, so a probability of exactly 0 or 1 gives a finite loss.
    """
    op = "binary_cross_entropy"
    pred = tensor(input)
    _nonempty(op, pred)
    reduction = _reduction(op, reduction)
    T = _target_like(op, pred, target)
    p, t = pred.data.astype(np.float64), T.astype(np.float64)
    _check_probabilities(op, p, "for logits use binary_cross_entropy_with_logits")
    with np.errstate(divide="ignore"):
        values = -(t * np.maximum(np.log(p), -100.0) + (1.0 - t) * np.maximum(np.log1p(-p), -100.0))
    dvalues = (p - t) / np.maximum(p * (1.0 - p), 1e-12)  # torch's backward, same floor
    if weight is not None:
        w = _broadcast_weight(op, "weight", weight, p.shape)
        values, dvalues = values * w, dvalues * w
    return reduce_loss(op, pred, values, dvalues, reduction)


def class_labels(op: str, target, n: int, classes: int, ignore_index: Optional[int] = None) -> np.ndarray:
    """Integer class labels (n,) as int64, each in [0, classes) or equal to ``ignore_index``.

    Accepts integer, bool or whole-valued float arrays; the range is checked before any
    conversion, so a huge label (2**40, or a uint64 above int64's range) is reported as
    itself rather than wrapped.
    """
    T = np.asarray(target.data if isinstance(target, Tensor) else target)
    if T.shape != (n,):
        raise ValueError(f"{op}: labels must have shape ({n},), got {T.shape}")
    kind = T.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(T)) or np.any(T != np.round(T)):
            bad = int(np.flatnonzero(~np.isfinite(T) | (T != np.round(T)))[0])
            raise ValueError(f"{op}: float labels must hold whole class indices, got {T[bad].item()!r} at row {bad}")
    elif kind not in "iub":
        raise TypeError(f"{op}: labels must be integers, got dtype {T.dtype}")
    if kind == "b":
        T = T.astype(np.int64)
    out_of_range = T >= classes
    if kind != "u":  # (an unsigned array compared with a negative number would wrap)
        out_of_range |= T < 0
    if ignore_index is not None and (kind != "u" or ignore_index >= 0):
        out_of_range &= T != ignore_index
    if np.any(out_of_range):
        row = int(np.flatnonzero(out_of_range)[0])
        label = int(T[row])
        allowed = f"[0, {classes - 1}]" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        raise ValueError(f"{op}: label {label} at row {row} is out of range for {classes} classes "
                         f"(labels must be in {allowed})")
    return np.ascontiguousarray(T, dtype=np.int64)


def _class_weight(op: str, weight, classes: int) -> Optional[np.ndarray]:
    if weight is None:
        return None
    w = np.asarray(weight.data if isinstance(weight, Tensor) else weight, dtype=np.float64)
    if w.shape != (classes,):
        raise ValueError(f"{op}: weight must have one entry per class, shape ({classes},), got {w.shape}")
    return w


def _label_coefficients(labels: np.ndarray, classes: int, w: Optional[np.ndarray], ignore_index: Optional[int],
                        label_smoothing: float):
    """Per-row loss = -sum_c A[i, c] log p[i, c]; returns A and the weighted-mean denominator.

    torch's formula: (1 - s) w[y] at the label plus s / C * w[c] on every class; an
    ignored row is all zeros; 'mean' divides by the sum of w[y] over the kept rows.
    """
    n = labels.shape[0]
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(n, dtype=bool)
    safe = np.where(ignored, 0, labels)
    w_label = np.ones(n) if w is None else w[safe]
    w_label = np.where(ignored, 0.0, w_label)
    A = np.zeros((n, classes))
    A[np.arange(n), safe] = (1.0 - label_smoothing) * w_label
    if label_smoothing:
        A += (label_smoothing / classes) * (np.ones(classes) if w is None else w)[None, :] * (~ignored)[:, None]
    return A, w_label.sum()


def _label_smoothing(op: str, value) -> float:
    """``value`` as a float in [0, 1] (cross_entropy and the loss classes)."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {value}")
    return v


def _logits_2d(op: str, input) -> Tensor:
    logits = tensor(input)
    if logits.ndim != 2:
        raise ValueError(f"{op}: input must be 2-d (batch, classes), got shape {logits.shape}")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"{op}: empty input of shape {logits.shape}")
    return logits


def cross_entropy(input, target, weight=None, ignore_index: Optional[int] = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of logits (N, C), torch's ``F.cross_entropy``.

    target: integer labels (N,) in [0, C) (a label equal to ``ignore_index`` contributes
    nothing), or probabilities (N, C). ``weight`` (C,): class weights; with labels 'mean'
    divides by the sum of the labels' weights, with probabilities by N (as torch).
    ``label_smoothing`` s mixes the target with the uniform distribution:
    (1 - s) target + s / C. ``ignore_index=None`` ignores no label.
    """
    op = "cross_entropy"
    logits = _logits_2d(op, input)
    n, c = logits.shape
    reduction = _reduction(op, reduction)
    s = _label_smoothing(op, label_smoothing)
    w = _class_weight(op, weight, c)
    T = target.data if isinstance(target, Tensor) else np.asarray(target)
    if T.dtype.kind == "b":  # torch refuses bool targets in both forms rather than guess a meaning
        raise TypeError(f"{op}: target must be integer class labels or float probabilities, got dtype {T.dtype} "
                        f"(convert with .astype(np.int64) for labels)")
    plain = w is None and s == 0.0 and reduction == "mean"
    if T.shape == (n,):
        labels = class_labels(op, T, n, c, ignore_index)
        if plain and (ignore_index is None or not np.any(labels == ignore_index)):
            return _loss(op, _C.cross_entropy_loss, logits, labels)
        A, denominator = _label_coefficients(labels, c, w, ignore_index, s)
        touched = (labels != ignore_index)[:, None] if ignore_index is not None else np.ones((n, 1), dtype=bool)
    elif T.shape == (n, c):
        if T.dtype.kind not in "fiu":
            raise TypeError(f"{op}: probability targets must be numeric, got dtype {T.dtype}")
        if plain:
            return _loss(op, _C.cross_entropy_onehot_loss, logits, _buf(T, logits.dtype))
        A = T.astype(np.float64)
        if s:
            A = A * (1.0 - s) + s / c
        if w is not None:
            A = A * w[None, :]
        denominator = n
        touched = None
    else:
        raise ValueError(
            f"{op}: target must be labels of shape ({n},) or probabilities of shape ({n}, {c}), got {T.shape}")
    z = logits.data.astype(np.float64)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    values = -(A * log_p).sum(axis=1)
    dvalues = A.sum(axis=1, keepdims=True) * np.exp(log_p) - A
    if reduction == "mean" and denominator == 0 and touched is not None:
        # every kept label weighs 0: torch's gradient of the 0/0 mean is NaN in each kept row
        # (its log-softmax backward spreads the NaN across the row), 0 in an ignored row
        dvalues = np.where(touched, np.full(A.shape, np.nan), 0.0)
        values = np.full(n, np.nan)  # and its loss 0/0 + (smoothing)/0 = NaN, not inf
    return reduce_loss(op, logits, values, dvalues, reduction, denominator, touched)


def nll_loss(input, target, weight=None, ignore_index: Optional[int] = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities (N, C) (e.g. ``log_softmax``'s output)
    against integer labels (N,); ``weight``, ``ignore_index`` and ``reduction`` as in
    ``cross_entropy``."""
    op = "nll_loss"
    log_p = _logits_2d(op, input)
    n, c = log_p.shape
    reduction = _reduction(op, reduction)
    labels = class_labels(op, target, n, c, ignore_index)
    A, denominator = _label_coefficients(labels, c, _class_weight(op, weight, c), ignore_index, 0.0)
    values = -(A * log_p.data.astype(np.float64)).sum(axis=1)
    touched = np.zeros((n, c), dtype=bool)  # torch's nll_loss writes each kept row's label entry only
    kept = np.flatnonzero(labels != ignore_index) if ignore_index is not None else np.arange(n)
    touched[kept, labels[kept]] = True
    return reduce_loss(op, log_p, values, -A, reduction, denominator, touched)


__all__ = [
    "linear", "relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "silu", "swish", "gelu", "softplus",
    "identity", "prelu", "softmax", "log_softmax", "batch_norm", "layer_norm", "dropout", "mse_loss",
    "binary_cross_entropy_with_logits", "binary_cross_entropy", "cross_entropy", "nll_loss",
]
