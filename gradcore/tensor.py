"""Tensor and the define-by-run tape.

Every differentiable operation returns a Tensor whose ``_node`` remembers its inputs and a
closure mapping the output gradient to input gradients. ``backward()`` orders the nodes
topologically and walks them once in reverse, summing gradients per tensor, and finally
accumulates into the ``.grad`` of the leaves that require it.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ._validate import FLOAT_DTYPES as _FLOAT_DTYPES

_state = threading.local()


def is_grad_enabled() -> bool:
    """Whether operations are being recorded for backward."""
    return getattr(_state, "grad_enabled", True)


class no_grad(contextlib.ContextDecorator):
    """Context manager / decorator that stops recording operations (like torch.no_grad)."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.grad_enabled = False
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


class enable_grad(contextlib.ContextDecorator):
    """Re-enable recording inside a ``no_grad`` block."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.grad_enabled = True
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


def as_float_array(data, dtype=None) -> np.ndarray:
    """NumPy view of ``data`` as float32 / float64 (float32 unless already float64)."""
    if isinstance(data, Tensor):
        data = data.data
    arr = np.asarray(data)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"Tensor: dtype must be float32 or float64, got {dtype}")
        return arr.astype(dtype, copy=False)
    if arr.dtype in _FLOAT_DTYPES and isinstance(data, (np.ndarray, np.generic)):
        return arr  # a NumPy float64 array stays float64, like torch.from_numpy
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float32)
    raise TypeError(f"Tensor: cannot make a float tensor from an array of dtype {arr.dtype}")


class Node:
    """One recorded operation: its inputs and the closure computing their gradients."""

    __slots__ = ("inputs", "backward", "name")

    def __init__(self, inputs: Sequence["Tensor"], backward: Callable, name: str):
        self.inputs = tuple(inputs)
        self.backward = backward
        self.name = name


class Tensor:
    """An n-d float array that can record the operations applied to it.

    ``Tensor(data, requires_grad=False, dtype=None)``: data is anything NumPy can turn into
    an array; it is kept as float32 unless it already is a float64 NumPy array (or
    ``dtype`` says so). Python lists and scalars become float32, like torch.tensor.
    """

    __array_priority__ = 1000  # make ndarray (op) Tensor defer to Tensor's reflected op

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = as_float_array(data, dtype)
        self.requires_grad = bool(requires_grad)
        self.grad: Optional[np.ndarray] = None
        self._node: Optional[Node] = None
        self._flat = None  # set by gradcore.flat when the data lives in a flat buffer
        self._version = 0  # bumped by gradcore's own in-place writes (see bump_version)

    # ------------------------------------------------------------------ basics
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def T(self):
        return self.transpose()

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self._node is not None:
            extra += f", grad_fn={self._node.name}"
        return f"Tensor({np.array2string(self.data, precision=4, separator=', ')}, dtype={self.dtype}{extra})"

    def numpy(self) -> np.ndarray:
        """The underlying array (no copy)."""
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> "Tensor":
        """A tensor sharing the data but cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        """Reset the accumulated gradient (in place when it is a view of a flat buffer)."""
        if self.grad is not None and self._flat is not None:
            self.grad.fill(0)
        else:
            self.grad = None

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        self.requires_grad = bool(flag)
        return self

    def astype(self, dtype) -> "Tensor":
        return _cast(self, np.dtype(dtype))

    float = functools.partialmethod(astype, np.float32)
    double = functools.partialmethod(astype, np.float64)

    # ------------------------------------------------------------------ backward
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf requiring grad.

        ``grad`` is the gradient flowing into ``self``; it may be omitted only when self
        holds a single element. The graph is freed afterwards unless ``retain_graph``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no graph")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward: grad can be implicitly created only for a single-element tensor, "
                    f"got shape {self.shape}; pass grad= of that shape"
                )
            grad = np.ones_like(self.data)
        else:
            grad = as_float_array(grad, self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape} but the tensor has shape {self.shape}")
        run_backward(self, grad, retain_graph)

    # ------------------------------------------------------------------ operators
    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    def __rmul__(self, other):
        return mul(other, self)

    def __truediv__(self, other):
        return div(self, other)

    def __rtruediv__(self, other):
        return div(other, self)

    def __neg__(self):
        return neg(self)

    def __pow__(self, exponent):
        return power(self, exponent)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __getitem__(self, index):
        return getitem(self, index)

    def exp(self):
        return exp(self)

    def log(self):
        return log(self)

    def sqrt(self):
        return sqrt(self)

    def abs(self):
        return absolute(self)

    def clip(self, low, high):
        return clip(self, low, high)

    def sum(self, axis=None, keepdims=False):
        return sum_(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return max_(self, axis, keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return transpose(self, axes or None)

    def flatten(self):
        return reshape(self, (self.shape[0], -1) if self.ndim > 1 else (-1,))


# ---------------------------------------------------------------------- the tape
def bump_version(tensors: Iterable["Tensor"]) -> None:
    """Record that gradcore changed these tensors' values in place (an optimizer step,
    ``set_parameters``, ``load_state_dict``, an in-place op), so a graph that saved their
    old values refuses to backward. Writes through the raw ``.data`` array are not seen."""
    for t in tensors:
        t._version += 1


def make_result(data: np.ndarray, inputs: Sequence[Tensor], backward: Callable, name: str) -> Tensor:
    """Wrap ``data`` as the output of an op; record a node when any input needs grad.

    ``backward(g)`` returns one gradient (or None) per input, each of its input's shape.
    """
    out = Tensor.__new__(Tensor)
    out.data = data
    out.grad = None
    out._flat = None
    out._node = None
    out._version = 0
    out.requires_grad = False
    if is_grad_enabled() and any(t.requires_grad for t in inputs):
        out.requires_grad = True
        out._node = Node(inputs, backward, name)
    return out


def _topological_order(root: Tensor) -> list:
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            for parent in t._node.inputs:
                if parent.requires_grad and id(parent) not in seen:
                    stack.append((parent, False))
    return order  # parents before children


def accumulate_grad(leaf: Tensor, g: np.ndarray) -> None:
    """Add ``g`` into ``leaf.grad`` (in place, so flat-buffer views stay views)."""
    if g.dtype != leaf.dtype:
        g = g.astype(leaf.dtype)
    if leaf.grad is None and leaf._flat is not None:
        leaf.grad = leaf._flat.grad_view(leaf)  # keep gradients in the flat buffer
    if leaf.grad is None:
        leaf.grad = np.array(g, dtype=leaf.dtype, copy=True)
    else:
        np.add(leaf.grad, g, out=leaf.grad)


def run_backward(root: Tensor, grad: np.ndarray, retain_graph: bool) -> None:
    order = _topological_order(root)
    grads = {id(root): grad}
    for t in reversed(order):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        node = t._node
        if node is None:
            accumulate_grad(t, g)
            continue
        if node.backward is None:
            raise RuntimeError(
                f"backward: trying to backward through the graph a second time ({node.name}); "
                "pass retain_graph=True to the first backward call"
            )
        input_grads = node.backward(g)
        if not retain_graph:
            node.backward = None
        for parent, pg in zip(node.inputs, input_grads):
            if pg is None or not parent.requires_grad:
                continue
            prev = grads.get(id(parent))
            if prev is None:
                grads[id(parent)] = pg
            else:
                grads[id(parent)] = prev + pg


# ---------------------------------------------------------------------- helpers
def tensor(x, dtype=None) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x, dtype=dtype)


def _operands(a, b):
    """Two Tensors; a plain number or array takes the dtype of the Tensor operand."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a, b
    if isinstance(a, Tensor):
        return a, Tensor(np.asarray(b, dtype=a.dtype))
    return Tensor(np.asarray(a, dtype=b.dtype)), b


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` over the axes NumPy broadcasting added or stretched to reach its shape."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    return g.reshape(shape)


def _cast(x: Tensor, dtype: np.dtype) -> Tensor:
    if x.dtype == dtype:
        return x
    src = x.dtype
    return make_result(x.data.astype(dtype), (x,), lambda g: (g.astype(src),), "cast")


# ---------------------------------------------------------------------- elementwise
def add(a, b) -> Tensor:
    a, b = _operands(a, b)
    return make_result(a.data + b.data, (a, b),
                       lambda g: (unbroadcast(g, a.shape), unbroadcast(g, b.shape)), "add")


def sub(a, b) -> Tensor:
    a, b = _operands(a, b)
    return make_result(a.data - b.data, (a, b),
                       lambda g: (unbroadcast(g, a.shape), unbroadcast(-g, b.shape)), "sub")


def mul(a, b) -> Tensor:
    a, b = _operands(a, b)

    def backward(g):
        ga = unbroadcast(g * b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(g * a.data, b.shape) if b.requires_grad else None
        return ga, gb

    return make_result(a.data * b.data, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    a, b = _operands(a, b)
    out = a.data / b.data

    def backward(g):
        ga = unbroadcast(g / b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(-g * out / b.data, b.shape) if b.requires_grad else None
        return ga, gb

    return make_result(out, (a, b), backward, "div")


def neg(a: Tensor) -> Tensor:
    return make_result(-a.data, (a,), lambda g: (-g,), "neg")


def power(a: Tensor, exponent) -> Tensor:
    if isinstance(exponent, Tensor) or np.ndim(exponent) != 0:
        raise TypeError("pow: only a scalar exponent is supported")
    p = float(exponent)
    out = np.power(a.data, a.dtype.type(p))
    return make_result(out, (a,), lambda g: (g * a.dtype.type(p) * np.power(a.data, a.dtype.type(p - 1)),), "pow")


def exp(a: Tensor) -> Tensor:
    out = np.exp(a.data)
    return make_result(out, (a,), lambda g: (g * out,), "exp")


def log(a: Tensor) -> Tensor:
    return make_result(np.log(a.data), (a,), lambda g: (g / a.data,), "log")


def sqrt(a: Tensor) -> Tensor:
    out = np.sqrt(a.data)
    return make_result(out, (a,), lambda g: (g / (2 * out),), "sqrt")


def absolute(a: Tensor) -> Tensor:
    return make_result(np.abs(a.data), (a,), lambda g: (g * np.sign(a.data),), "abs")


def clip(a: Tensor, low: float, high: float) -> Tensor:
    """Limit values to [low, high]; the gradient is zero where a value was clipped."""
    inside = (a.data >= low) & (a.data <= high)
    return make_result(np.clip(a.data, low, high), (a,), lambda g: (g * inside,), "clip")


# ---------------------------------------------------------------------- reductions
def _norm_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    return tuple(int(ax) % ndim if ndim else 0 for ax in axes)


def _expand(g: np.ndarray, shape: tuple, axes: tuple, keepdims: bool) -> np.ndarray:
    if not keepdims:
        g = np.expand_dims(g, axes) if axes else g
    return np.broadcast_to(g, shape)


def sum_(a: Tensor, axis=None, keepdims=False) -> Tensor:
    axes = _norm_axis(axis, a.ndim)
    out = np.asarray(a.data.sum(axis=axes, keepdims=keepdims))
    return make_result(out, (a,), lambda g: (_expand(g, a.shape, axes, keepdims),), "sum")


def mean(a: Tensor, axis=None, keepdims=False) -> Tensor:
    axes = _norm_axis(axis, a.ndim)
    count = int(np.prod([a.shape[ax] for ax in axes])) if axes else 1
    out = np.asarray(a.data.mean(axis=axes, keepdims=keepdims))
    return make_result(out, (a,), lambda g: (_expand(g / count, a.shape, axes, keepdims),), "mean")


def max_(a: Tensor, axis=None, keepdims=False) -> Tensor:
    axes = _norm_axis(axis, a.ndim)
    if a.size == 0:
        raise ValueError(f"max: cannot reduce an empty tensor of shape {a.shape}")
    out_k = a.data.max(axis=axes, keepdims=True)

    def backward(g):
        # ties share the gradient equally, like PyTorch's amax backward
        hit = (a.data == out_k)
        share = hit / hit.sum(axis=axes, keepdims=True)
        return (_expand(g, a.shape, axes, keepdims) * share,)

    out = out_k if keepdims else np.squeeze(out_k, axis=axes)
    return make_result(np.asarray(out), (a,), backward, "max")


# ---------------------------------------------------------------------- shapes
def reshape(a: Tensor, shape) -> Tensor:
    shape = tuple(int(s) for s in shape)
    return make_result(a.data.reshape(shape), (a,), lambda g: (g.reshape(a.shape),), "reshape")


def transpose(a: Tensor, axes=None) -> Tensor:
    inverse = None if axes is None else tuple(np.argsort(axes))
    return make_result(np.transpose(a.data, axes), (a,), lambda g: (np.transpose(g, inverse),), "transpose")


def getitem(a: Tensor, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data.astype(np.intp)

    def backward(g):
        full = np.zeros_like(a.data)
        np.add.at(full, index, g)  # repeated indices add up
        return (full,)

    return make_result(np.asarray(a.data[index]), (a,), backward, "getitem")


def concatenate(tensors: Iterable[Tensor], axis: int = 0) -> Tensor:
    ts = [tensor(t) for t in tensors]
    if not ts:
        raise ValueError("concatenate: need at least one tensor")
    out = np.concatenate([t.data for t in ts], axis=axis)
    cuts = np.cumsum([t.shape[axis] for t in ts])[:-1]
    return make_result(out, ts, lambda g: tuple(np.split(g, cuts, axis=axis)), "concatenate")


def stack(tensors: Iterable[Tensor], axis: int = 0) -> Tensor:
    ts = [tensor(t) for t in tensors]
    if not ts:
        raise ValueError("stack: need at least one tensor")
    out = np.stack([t.data for t in ts], axis=axis)
    return make_result(out, ts, lambda g: tuple(np.moveaxis(g, axis, 0)), "stack")


# ---------------------------------------------------------------------- matmul
def matmul(a, b) -> Tensor:
    a, b = _operands(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: both operands need at least one dimension")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align ({ka} != {kb})")
    out = np.matmul(a.data, b.data)

    def backward(g):
        A = a.data[None, :] if a.ndim == 1 else a.data
        B = b.data[:, None] if b.ndim == 1 else b.data
        G = np.asarray(g)
        if b.ndim == 1:
            G = G[..., None]
        if a.ndim == 1:
            G = G[..., None, :]
        ga = gb = None
        if a.requires_grad:
            ga = np.matmul(G, np.swapaxes(B, -1, -2))
            ga = unbroadcast(ga, A.shape).reshape(a.shape)
        if b.requires_grad:
            gb = np.matmul(np.swapaxes(A, -1, -2), G)
            gb = unbroadcast(gb, B.shape).reshape(b.shape)
        return ga, gb

    return make_result(np.asarray(out), (a, b), backward, "matmul")
