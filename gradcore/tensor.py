"""Tensor and the define-by-run tape.

Every differentiable operation returns a Tensor whose ``_node`` remembers its inputs and a
closure mapping the output gradient to input gradients. ``backward()`` orders the nodes
topologically and walks them once in reverse, summing gradients per tensor, and finally
accumulates into the ``.grad`` of the leaves that require it.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import threading
from collections import namedtuple
from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from ._validate import FLOAT_DTYPES as _FLOAT_DTYPES

class _GradMode(threading.local):
    # the class attribute is every thread's default (reading it needs no getattr fallback)
    grad_enabled = True


_state = _GradMode()


def is_grad_enabled() -> bool:
    """Whether operations are being recorded for backward."""
    return _state.grad_enabled


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


# Version counters. A tensor's ``_vc`` is a two-element list ``[version, written_at]``:
# how many times gradcore changed its values in place, and the value of the global write
# clock at the last change. Lists are the cheapest mutable cells to create, which every op
# does. A counter is shared by a tensor and the views made from it (reshape, transpose,
# basic slicing, detach), as in torch, so changing either side is seen by a graph that
# saved the other. A node records only the clock when it was made; backward compares it
# with the clock (usually unchanged: a cheap test) and, only if something was written
# since, with each saved tensor's ``written_at``.
_write_clock = [0]

# Structure clock: advanced whenever gradcore changes what a network is made of or how it is
# called (a module attribute, child, parameter or buffer set or deleted, a dtype change, a
# module or tensor hook added or removed). Per-step caches of decisions derived from that
# structure (Sequential's Dense runs, regularization_loss's module list) are valid only at
# the clock value they were made at; what can change behind gradcore's back (a tensor's
# ``.data`` replaced, a monitor's tap set in a module's __dict__) they check themselves.
_structure_clock = [0]


def _mark_written(vc: list) -> None:
    _write_clock[0] += 1
    vc[0] += 1
    vc[1] = _write_clock[0]


def _is_bool_source(data) -> bool:
    """Whether ``data`` holds booleans (so a Tensor made from it acts as a mask)."""
    if isinstance(data, Tensor):
        return data._is_bool
    if isinstance(data, (np.ndarray, np.generic)):
        return data.dtype == np.bool_
    if isinstance(data, bool):
        return True
    if isinstance(data, (list, tuple)):
        return len(data) > 0 and np.asarray(data).dtype == np.bool_
    return False


class Node:
    """One recorded operation: its inputs, the closure computing their gradients, and what
    the closure reads: ``saved`` (the inputs whose values it uses; all inputs when None is
    given) and ``out_version`` (the output's version counter when it uses the output's
    values, else None); ``stamp``: the write clock when it was recorded. ``groups``: None,
    or for a node that runs several ops of one kind in a row (``functional._dense_chain``)
    the inputs of each op in its own order, last op first (None for a value internal to the
    node), so that a changed value is reported as the ops one by one would have reported it."""

    __slots__ = ("inputs", "backward", "name", "saved", "out_version", "stamp", "groups")

    def __init__(self, inputs: Sequence["Tensor"], backward: Callable, name: str,
                 saved: Optional[Sequence["Tensor"]] = None, out_version: Optional[list] = None):
        self.inputs = inputs = tuple(inputs)
        self.backward = backward
        self.name = name
        self.saved = inputs if saved is None else saved
        self.out_version = out_version
        self.stamp = _write_clock[0]
        self.groups = None


class RemovableHandle:
    """Returned by every ``register_*hook``: ``handle.remove()`` unregisters the hook
    (also usable as a context manager)."""

    _ids = itertools.count()

    def __init__(self, hooks: Dict[int, Callable]):
        self.id = next(RemovableHandle._ids)
        self._hooks = hooks

    def remove(self) -> None:
        _structure_clock[0] += 1
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def add_hook(hooks: Dict[int, Callable], fn: Callable, where: str) -> RemovableHandle:
    """Append ``fn`` to an ordered hook dict; the handle removes it again."""
    if not callable(fn):
        raise TypeError(f"{where}: the hook must be callable, got {type(fn).__name__}")
    handle = RemovableHandle(hooks)
    _structure_clock[0] += 1
    hooks[handle.id] = fn
    return handle


class _FlatViewMark:
    """Copied / pickled in place of a tensor's data / grad that view its flat buffer's arrays."""

    def __reduce__(self):
        return (_flat_view_mark, ())


def _flat_view_mark():
    return _FLAT_VIEW


_FLAT_VIEW = _FlatViewMark()


def _views(a: np.ndarray, b: np.ndarray) -> bool:
    """Same memory, shape and dtype (works for zero-size arrays too)."""
    return (isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


class Tensor:
    """An n-d float array that can record the operations applied to it.

    ``Tensor(data, requires_grad=False, dtype=None)``: data is anything NumPy can turn into
    an array; it is kept as float32 unless it already is a float64 NumPy array (or
    ``dtype`` says so). Python lists and scalars become float32, like torch.tensor.
    """

    __array_priority__ = 1000  # make ndarray (op) Tensor defer to Tensor's reflected op
    # Comparisons return arrays, which would make Tensor unhashable; gradcore keys dicts
    # and sets by tensor identity, so keep the identity hash.
    __hash__ = object.__hash__
    # Class-level defaults, so the common case (no hooks, not built from bools) costs no
    # per-instance attribute: ``_hooks`` is an ordered dict once a hook or retain_grad is
    # registered; ``_is_bool`` marks a tensor built from booleans (a mask when indexing).
    _hooks = None
    _retains_grad = False
    _is_bool = False

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = as_float_array(data, dtype)
        if dtype is None and _is_bool_source(data):
            self._is_bool = True
        self.requires_grad = bool(requires_grad)
        self.grad: Optional[np.ndarray] = None
        self._node: Optional[Node] = None
        self._flat = None  # set by gradcore.flat when the data lives in a flat buffer
        self._vc = [0, 0]  # version counter (see above Node): bumped by gradcore's in-place writes

    def __getstate__(self):
        # (copy.deepcopy, pickle) a tensor living in a flat buffer keeps no arrays of its own:
        # its data and gradient are views of the buffer's, made again once both are restored
        # (_link_flat; FlatBuffer.__setstate__)
        state = self.__dict__.copy()
        flat = state.get("_flat")
        i = flat.index(self) if flat is not None else -1
        if i >= 0:
            if _views(state.get("data"), flat.view(flat.data, i)):
                state["data"] = _FLAT_VIEW
            if _views(state.get("grad"), flat.grad_views[i]):
                state["grad"] = _FLAT_VIEW
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        flat = state.get("_flat")
        if flat is not None and "data" in flat.__dict__:  # the buffer is loaded already
            self._link_flat()

    def _link_flat(self) -> None:
        """Once restored: data and grad as views of the flat buffer's arrays."""
        flat = self._flat
        i = self._flat_index
        d = self.__dict__
        if d.get("data") is _FLAT_VIEW:
            d["data"] = flat.view(flat.data, i)
        if d.get("grad") is _FLAT_VIEW:
            d["grad"] = flat.grad_views[i]

    @property
    def _version(self) -> int:
        """How many times gradcore changed this tensor's values in place (see bump_version)."""
        return self._vc[0]

    @_version.setter
    def _version(self, value: int) -> None:
        _mark_written(self._vc)
        self._vc[0] = int(value)

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

    # Python scalars of a one-element tensor, as torch's (without __bool__, truth fell back on
    # __len__: bool(Tensor([0.0])) was True where torch's and NumPy's are False).
    def __bool__(self):
        size = self.data.size
        if size != 1:
            raise RuntimeError(f"Boolean value of Tensor with {'no values' if size == 0 else 'more than one value'} "
                               f"is ambiguous (shape {self.shape}): use .any() / .all() on .data")
        return bool(self.data.reshape(()))

    def __float__(self):
        return float(self._one_value("float"))

    def __int__(self):
        return int(self._one_value("int"))

    def _one_value(self, op: str):
        if self.data.size != 1:
            raise ValueError(f"{op}(): only a tensor of one element can be converted to a Python scalar, "
                               f"got shape {self.shape}")
        return self.data.reshape(()).item()

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
        """A tensor sharing the data (and the version counter, as in torch) but cut from the graph."""
        out = Tensor(self.data)
        out._vc = self._vc
        return out

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

    # ------------------------------------------------------------------ hooks
    def register_hook(self, fn: Callable) -> RemovableHandle:
        """Call ``fn(grad)`` each time the gradient w.r.t. this tensor is computed in backward
        (``grad``: a NumPy array of this tensor's shape, summed over all its uses; do not
        modify it in place). ``fn`` returns None or a replacement gradient of the same shape,
        which is what flows on (and, on a leaf, what accumulates into ``.grad``). Hooks run in
        registration order. Returns a handle with ``.remove()``. As in torch."""
        if not self.requires_grad:
            raise RuntimeError(f"register_hook: cannot register a hook on a tensor (shape {self.shape}) "
                               "that does not require grad")
        return add_hook(self._hook_dict(), fn, "register_hook")

    def retain_grad(self) -> None:
        """Keep the gradient of this non-leaf tensor in ``.grad`` after backward (it
        accumulates over backward calls, like a leaf's; after this tensor's hooks ran).
        A no-op on a leaf. As in torch."""
        if not self.requires_grad:
            raise RuntimeError(f"retain_grad: cannot retain the gradient of a tensor (shape {self.shape}) "
                               "that does not require grad")
        if self._node is None:
            return
        self._hook_dict()
        self._retains_grad = True

    @property
    def retains_grad(self) -> bool:
        """Whether ``retain_grad()`` was called on this non-leaf tensor."""
        return self._retains_grad

    def _hook_dict(self) -> Dict[int, Callable]:
        if self._hooks is None:
            self._hooks = {}
        return self._hooks

    # ------------------------------------------------------------------ in-place ops
    def _inplace(self, op: str, other=None) -> np.ndarray:
        """Refuse an in-place op autograd cannot record; return ``other`` as an array that
        broadcasts to this tensor's shape."""
        if is_grad_enabled():
            if self.requires_grad and self._node is None:
                raise RuntimeError(
                    f"{op}: a leaf tensor that requires grad (shape {self.shape}) cannot be changed in place "
                    "while gradients are recorded (as in torch); edit weights inside `with gradcore.no_grad():`"
                )
            if self.requires_grad:
                raise RuntimeError(
                    f"{op}: gradcore does not record in-place operations on a tensor that is part of a graph "
                    f"(shape {self.shape}, grad_fn={self._node.name}); use the out-of-place operation instead"
                )
            if isinstance(other, Tensor) and other.requires_grad:
                raise RuntimeError(
                    f"{op}: the operand requires grad, but gradcore does not record in-place operations; "
                    "use the out-of-place operation or detach() the operand"
                )
        if other is None:
            return None
        arr = other.data if isinstance(other, Tensor) else np.asarray(other)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{op}: operand must be numeric, got dtype {arr.dtype}")
        try:
            shape = np.broadcast_shapes(self.shape, arr.shape)
        except ValueError:
            shape = None
        if shape != self.shape:
            raise RuntimeError(f"{op}: operand of shape {arr.shape} does not broadcast to this tensor's "
                               f"shape {self.shape}")
        return arr

    def _written(self) -> "Tensor":
        _mark_written(self._vc)
        return self

    def _apply_(self, op: str, ufunc: np.ufunc, other, alpha=1) -> "Tensor":
        """``self = ufunc(self, alpha * other)`` written into ``self.data`` (so a view of a
        flat parameter buffer updates the buffer), in this tensor's dtype; bumps the version."""
        arr = self._inplace(op, other)
        ufunc(self.data, arr if alpha == 1 else arr * alpha, out=self.data, casting="unsafe")
        return self._written()

    def add_(self, other, alpha=1) -> "Tensor":
        """In place ``self += alpha * other`` (torch.Tensor.add_); bumps the version."""
        return self._apply_("add_", np.add, other, alpha)

    def sub_(self, other, alpha=1) -> "Tensor":
        """In place ``self -= alpha * other`` (torch.Tensor.sub_); bumps the version."""
        return self._apply_("sub_", np.subtract, other, alpha)

    def mul_(self, other) -> "Tensor":
        """In place ``self *= other`` (torch.Tensor.mul_); bumps the version."""
        return self._apply_("mul_", np.multiply, other)

    def div_(self, other) -> "Tensor":
        """In place ``self /= other`` (torch.Tensor.div_); bumps the version."""
        return self._apply_("div_", np.divide, other)

    def pow_(self, exponent) -> "Tensor":
        """In place ``self **= exponent`` (torch.Tensor.pow_); bumps the version."""
        return self._apply_("pow_", np.power, exponent)

    def zero_(self) -> "Tensor":
        """Fill with zeros in place (torch.Tensor.zero_); bumps the version."""
        self._inplace("zero_")
        self.data[...] = 0
        return self._written()

    def fill_(self, value) -> "Tensor":
        """Fill with ``value`` (a number or a one-element tensor) in place; bumps the version."""
        self._inplace("fill_", value if isinstance(value, Tensor) else None)
        arr = np.asarray(_plain(value))
        if arr.size != 1 or arr.dtype.kind not in "biuf":
            raise RuntimeError(f"fill_: value must be a number or a one-element tensor, got {arr.dtype} of shape {arr.shape}")
        self.data[...] = arr.reshape(())
        return self._written()

    def copy_(self, src) -> "Tensor":
        """Copy ``src`` (broadcast to this shape) into this tensor in place; bumps the version."""
        self.data[...] = self._inplace("copy_", src)
        return self._written()

    def __setitem__(self, index, value) -> None:
        """``t[index] = value`` in place (masks and index tensors as in ``t[index]``); the
        same rules as the other in-place ops, and it bumps the version."""
        self._inplace("__setitem__", value if isinstance(value, Tensor) else None)
        self.data[_index(index)] = _plain(value)
        self._written()

    def clamp_(self, min=None, max=None) -> "Tensor":
        """Limit values to [min, max] in place (torch.Tensor.clamp_); bumps the version."""
        if min is None and max is None:
            raise RuntimeError("clamp_: at least one of min and max must be given")
        self._inplace("clamp_")
        np.clip(self.data, min, max, out=self.data)
        return self._written()

    # ------------------------------------------------------------------ augmented assignment
    def _augmented(self, symbol: str, other) -> "Tensor":
        """``self <symbol> other`` (``+=``, ``-=``, ``*=``, ``/=``, ``**=``) as in torch, as far
        as a tape without in-place nodes allows. ``other``: a Tensor, NumPy array or number
        that broadcasts to ``self.shape`` (the shape and dtype of ``self`` never change).

        - Nothing to record (inside ``no_grad()``, or neither operand requires grad): write
          into ``self.data`` in place like ``add_`` (bumping the version) and return self, so
          ``with no_grad(): p -= lr * p.grad`` updates a network's parameters.
        - A leaf that requires grad, while grad mode is on: RuntimeError, as in torch.
        - Otherwise (``self`` is the output of a recorded op, or only ``other`` requires grad):
          return the out-of-place result as a new Tensor, which has torch's values and
          gradients; the name is rebound, so other references to the old tensor keep its old
          values (torch would change them too). A view of another tensor in the graph
          (``v = y[0]; v += 1``) is refused rather than silently leaving ``y`` unchanged.
        """
        ufunc, out_of_place, name = _AUGMENTED[symbol]
        needs_graph = self.requires_grad or (isinstance(other, Tensor) and other.requires_grad)
        if not (is_grad_enabled() and needs_graph):
            return self._apply_(f"{name} ({symbol})", ufunc, other)
        if self._node is None and self.requires_grad:
            raise RuntimeError(
                f"{name} ({symbol}): a leaf Tensor that requires grad is being used in an in-place operation "
                f"(shape {self.shape}), as in torch; update parameters inside `with gradcore.no_grad():`, "
                f"or write `x = x {symbol[:-1]} other` for a new tensor"
            )
        with no_grad():  # only the operand checks (shape, dtype kind) of the in-place path
            self._inplace(f"{name} ({symbol})", other)
        if self._node is not None and any(np.may_share_memory(self.data, t.data) for t in self._node.inputs):
            raise RuntimeError(
                f"{name} ({symbol}): this tensor (shape {self.shape}) is a view of another tensor in the graph "
                f"(made by {self._node.name}); gradcore cannot change both in place while recording, so "
                f"write `v = v {symbol[:-1]} other` (the viewed tensor keeps its values)"
            )
        return _cast(out_of_place(self, other), self.dtype)

    def __iadd__(self, other):
        return self._augmented("+=", other)

    def __isub__(self, other):
        return self._augmented("-=", other)

    def __imul__(self, other):
        return self._augmented("*=", other)

    def __itruediv__(self, other):
        return self._augmented("/=", other)

    def __ipow__(self, other):
        return self._augmented("**=", other)

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
            grad = np.ones(self.data.shape, self.data.dtype)
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

    def __rpow__(self, base):
        return power(base, self)

    # Elementwise comparisons: NumPy bool arrays, outside the graph (like torch, no grad).
    def __lt__(self, other):
        return self.data < _plain(other)

    def __le__(self, other):
        return self.data <= _plain(other)

    def __gt__(self, other):
        return self.data > _plain(other)

    def __ge__(self, other):
        return self.data >= _plain(other)

    def __eq__(self, other):
        if other is None:
            return False
        return self.data == _plain(other)

    def __ne__(self, other):
        if other is None:
            return True
        return self.data != _plain(other)

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

    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """Sum over ``axis`` (``dim`` is torch's name for it, ``keepdim`` for keepdims)."""
        axis, keepdims = _axis_args("sum", axis, keepdims, dim, keepdim)
        return sum_(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """Mean over ``axis`` (``dim`` / ``keepdim``: torch's names)."""
        axis, keepdims = _axis_args("mean", axis, keepdims, dim, keepdim)
        return mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """Maximum over ``axis`` (NumPy's ``max``: the values; tied maxima share the gradient
        equally, as torch's ``max()`` without ``dim``). With torch's ``dim=`` (an int) it
        follows torch.Tensor.max(dim): a ``(values, indices)`` named tuple, indices an int64
        NumPy array without gradient (the first maximum), and the gradient goes to those
        indices only."""
        return _extreme_method(self, "max", axis, keepdims, dim, keepdim)

    def min(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """Minimum: as :meth:`max` (NumPy's ``min``; torch's ``min(dim)`` with ``dim=``)."""
        return _extreme_method(self, "min", axis, keepdims, dim, keepdim)

    def amax(self, dim=None, keepdim=False):
        """Maximum values over ``dim`` (torch.Tensor.amax; ties share the gradient)."""
        return max_(self, dim, bool(keepdim))

    def amin(self, dim=None, keepdim=False):
        """Minimum values over ``dim`` (torch.Tensor.amin; ties share the gradient)."""
        return min_(self, dim, bool(keepdim))

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return transpose(self, axes or None)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        """torch.Tensor.flatten: axes ``start_dim`` .. ``end_dim`` (inclusive) joined into one;
        by default every element in one axis, as NumPy's ``ndarray.flatten()`` (a 0-d tensor
        becomes shape (1,)). ``nn.Flatten`` keeps the batch axis (torch's start_dim=1)."""
        if self.ndim == 0:
            if start_dim not in (0, -1) or end_dim not in (0, -1):
                raise IndexError(f"flatten: dimension out of range (expected to be in range of [-1, 0], "
                                 f"got start_dim={start_dim}, end_dim={end_dim})")
            return reshape(self, (1,))
        start = normalize_axis_tuple(int(start_dim), self.ndim, "flatten start_dim")[0]
        end = normalize_axis_tuple(int(end_dim), self.ndim, "flatten end_dim")[0]
        if start > end:
            raise ValueError(f"flatten: start_dim ({start_dim}) cannot come after end_dim ({end_dim}) "
                             f"for a tensor of shape {self.shape}")
        shape = self.shape
        joined = int(np.prod(shape[start:end + 1], dtype=np.int64))
        return reshape(self, shape[:start] + (joined,) + shape[end + 1:])

    def __abs__(self):
        return absolute(self)

    def __pos__(self):
        return self  # torch's +t (torch.positive) is the tensor itself


MaxResult = namedtuple("MaxResult", ["values", "indices"])


def _axis_args(op: str, axis, keepdims, dim, keepdim):
    """Merge torch's ``dim`` / ``keepdim`` into NumPy's ``axis`` / ``keepdims``."""
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{op}: give either axis or dim, not both")
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    return axis, bool(keepdims)


def _plain(x):
    return x.data if isinstance(x, Tensor) else x


# ---------------------------------------------------------------------- the tape
def bump_version(tensors: Iterable["Tensor"]) -> None:
    """Record that gradcore changed these tensors' values in place (an optimizer step,
    ``set_parameters``, ``load_state_dict``, an in-place op), so a graph that saved their
    old values refuses to backward. Writes through the raw ``.data`` array are not seen."""
    now = _write_clock[0]
    for t in tensors:  # _mark_written inlined: an optimizer step bumps every parameter
        now += 1
        vc = t._vc
        vc[0] += 1
        vc[1] = now
    _write_clock[0] = now  # the same values as one _mark_written per tensor


def make_result(data: np.ndarray, inputs: Sequence[Tensor], backward: Callable, name: str,
                saved: Optional[Sequence[Tensor]] = None, saves_output: bool = True) -> Tensor:
    """Wrap ``data`` as the output of an op; record a node when any input needs grad.

    ``backward(g)`` returns one gradient (or None) per input, each of its input's shape.
    ``saved``: the inputs whose values ``backward`` reads (all of them by default);
    ``saves_output``: whether it reads the output's values. Changing any of those in place
    before backward makes backward raise instead of using the new values.
    """
    out = Tensor.__new__(Tensor)
    out.data = data if type(data) is np.ndarray else np.asarray(data)  # 0-d results stay arrays
    out.grad = None
    out._flat = None
    out._node = None
    out._vc = vc = [0, 0]
    out.requires_grad = False
    if _state.grad_enabled:
        for t in inputs:  # a loop, not any(generator): this runs for every op
            if t.requires_grad:
                out.requires_grad = True
                out._node = Node(inputs, backward, name, saved, vc if saves_output else None)
                break
    return out


def _share_version(out: Tensor, a: Tensor) -> Tensor:
    """Give a view op's result its input's version counter when it shares its memory."""
    if np.may_share_memory(out.data, a.data):
        out._vc = a._vc
        if out._node is not None:
            out._node.out_version = None
    return out


def _check_versions(node: Node) -> None:
    """Raise when a value ``node``'s backward reads was changed in place after it was recorded."""
    if node.groups is None:
        _check_saved(node, node.saved, node.inputs)
        _check_output(node)
        return
    for j, group in enumerate(node.groups):  # last op first, as their own nodes would be checked
        _check_saved(node, [t for t in group if t is not None], group)
        if j == 0:
            _check_output(node)


def _check_saved(node: Node, saved: Sequence["Tensor"], inputs: Sequence["Tensor"]) -> None:
    for t in saved:
        if t._vc[1] > node.stamp:
            i = next(k for k, x in enumerate(inputs) if x is t)
            kind = "a leaf tensor that requires grad (a parameter)" if t.requires_grad and t._node is None else \
                ("a leaf tensor" if t._node is None else f"the output of {t._node.name}")
            raise RuntimeError(
                f"backward: one of the tensors needed for gradient computation has been modified by an in-place "
                f"operation: input {i} of {node.name!r}, {kind} of shape {t.shape}, is at version {t._vc[0]}, "
                f"changed after {node.name!r} saved it. Its values were changed in place after the forward pass "
                "(an optimizer step, set_parameters, load_state_dict or an in-place op such as add_), so the "
                "gradient would use the new values; run the forward pass again after changing them"
            )


def _check_output(node: Node) -> None:
    if node.out_version is not None and node.out_version[1] > node.stamp:
        raise RuntimeError(
            f"backward: one of the tensors needed for gradient computation has been modified by an in-place "
            f"operation: the output of {node.name!r} is at version {node.out_version[0]}, changed after it was "
            "computed; its backward reads it, so the gradient would use the new values"
        )


_POST = object()  # marks, on _topological_order's stack, that the tensor below it is complete


def _topological_order(root: Tensor) -> list:
    """The tensors requiring grad reachable from ``root``, parents before children: a
    depth-first post-order, inputs pushed in order (so the last input is explored first)."""
    order, seen = [], set()
    append, mark, stack = order.append, seen.add, [root]
    push, pop = stack.append, stack.pop
    while stack:
        t = pop()
        if t is _POST:
            append(pop())
            continue
        key = id(t)
        if key in seen:
            continue
        mark(key)
        node = t._node
        if node is None:  # a leaf: complete as soon as it is reached
            append(t)
            continue
        push(t)
        push(_POST)
        for parent in node.inputs:
            if parent.requires_grad and id(parent) not in seen:
                push(parent)
    return order  # parents before children


# The flat-buffer gradient views handed out by grad_destination during the running backward
# (a stack of sets: a hook may run a backward of its own).
_claims: list = []


def grad_destination(leaf: Tensor) -> Optional[np.ndarray]:
    """The view of the flat gradient buffer an op's backward may write ``leaf``'s gradient
    into directly, or None (then it allocates as usual).

    Only during a backward, for a parameter whose ``.grad`` is None (so the view holds
    nothing anyone reads), without tensor hooks (they see the gradient before it lands),
    and only once per backward: a second contribution to the same tensor gets an array of
    its own, so backward sums ``view + other`` in the usual order and accumulate_grad then
    stores the sum. accumulate_grad recognises the view and skips the copy.
    """
    if not _claims or leaf.grad is not None or leaf._flat is None or leaf._hooks is not None \
            or leaf._node is not None:
        return None
    claimed = _claims[-1]
    key = id(leaf)
    if key in claimed:
        return None
    claimed.add(key)
    return leaf._flat.grad_views[leaf._flat_index]


def accumulate_grad(leaf: Tensor, g: np.ndarray) -> None:
    """Add ``g`` into ``leaf.grad`` (in place, so flat-buffer views stay views)."""
    gd, ld = g.dtype, leaf.data.dtype
    if gd is not ld and gd != ld:  # identity first: numpy's dtype == only when they differ
        g = g.astype(ld)
    if leaf.grad is None and leaf._flat is not None:
        # the first gradient since grad=None (zero_grad's default) goes straight into the flat
        # buffer's view: one pass, no zeroing first
        view = leaf._flat.grad_views[leaf._flat_index]
        if g is not view:  # grad_destination's view already holds it
            np.copyto(view, g)
        leaf.grad = view
        return
    if leaf.grad is None:
        leaf.grad = np.array(g, dtype=leaf.dtype, copy=True)
    else:
        np.add(leaf.grad, g, out=leaf.grad)


def _run_tensor_hooks(t: Tensor, g: np.ndarray) -> np.ndarray:
    """Apply ``t``'s hooks in order (each may replace the gradient), then retain it."""
    for fn in list(t._hooks.values()):
        new = fn(g)
        if new is not None:
            new = np.asarray(new.data if isinstance(new, Tensor) else new)
            if new.shape != t.shape:
                raise RuntimeError(f"hook {getattr(fn, '__name__', fn)!r} returned a gradient of shape "
                                   f"{new.shape} for a tensor of shape {t.shape}")
            g = new.astype(t.dtype, copy=False)
    if t._retains_grad:
        accumulate_grad(t, g)
    return g


def run_backward(root: Tensor, grad: np.ndarray, retain_graph: bool) -> None:
    order = _topological_order(root)
    _claims.append(set())
    try:
        _run_nodes(order, root, grad, retain_graph)
    finally:
        _claims.pop()


def _run_nodes(order: list, root: Tensor, grad: np.ndarray, retain_graph: bool) -> None:
    grads = {id(root): grad}
    take, get, clock = grads.pop, grads.get, _write_clock
    for t in reversed(order):
        g = take(id(t), None)
        if g is None:
            continue
        if t._hooks is not None:
            g = _run_tensor_hooks(t, g)
        node = t._node
        if node is None:
            accumulate_grad(t, g)
            continue
        backward = node.backward
        if backward is None:
            raise RuntimeError(
                f"backward: trying to backward through the graph a second time ({node.name}); "
                "pass retain_graph=True to the first backward call"
            )
        if node.stamp != clock[0]:  # something was written in place since it was recorded
            _check_versions(node)
        input_grads = backward(g)
        if not retain_graph:
            node.backward = None
        for parent, pg in zip(node.inputs, input_grads):
            if pg is None or not parent.requires_grad:
                continue
            key = id(parent)
            prev = get(key)
            grads[key] = pg if prev is None else prev + pg


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
    return make_result(x.data.astype(dtype), (x,), lambda g: (g.astype(src),), "cast", (), False)


# ---------------------------------------------------------------------- elementwise
# The ``saved`` / ``saves_output`` arguments of make_result name exactly the values each
# backward reads, so only changing those in place makes backward refuse (as in torch).
def add(a, b) -> Tensor:
    a, b = _operands(a, b)
    return make_result(a.data + b.data, (a, b),
                       lambda g: (unbroadcast(g, a.shape), unbroadcast(g, b.shape)), "add", (), False)


def sub(a, b) -> Tensor:
    a, b = _operands(a, b)
    return make_result(a.data - b.data, (a, b),
                       lambda g: (unbroadcast(g, a.shape), unbroadcast(-g, b.shape)), "sub", (), False)


def mul(a, b) -> Tensor:
    a, b = _operands(a, b)

    def backward(g):
        ga = unbroadcast(g * b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(g * a.data, b.shape) if b.requires_grad else None
        return ga, gb

    saved = ((b,) if a.requires_grad else ()) + ((a,) if b.requires_grad else ())
    return make_result(a.data * b.data, (a, b), backward, "mul", saved, False)


def div(a, b) -> Tensor:
    a, b = _operands(a, b)
    out = a.data / b.data

    def backward(g):
        ga = unbroadcast(g / b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(-g * out / b.data, b.shape) if b.requires_grad else None
        return ga, gb

    return make_result(out, (a, b), backward, "div", (b,), b.requires_grad)


def neg(a: Tensor) -> Tensor:
    return make_result(-a.data, (a,), lambda g: (-g,), "neg", (), False)


def power(a, exponent) -> Tensor:
    """``a ** exponent``; either may be a Tensor (``2 ** t`` is ``power(2, t)``)."""
    if not isinstance(exponent, Tensor) and np.ndim(exponent) == 0:
        a = tensor(a)
        p = a.dtype.type(exponent)
        out = np.power(a.data, p)
        return make_result(out, (a,), lambda g: (g * p * np.power(a.data, p - 1),), "pow", (a,), False)
    a, b = _operands(a, exponent)
    out = np.power(a.data, b.data)

    def backward(g):
        ga = gb = None
        if a.requires_grad:
            ga = unbroadcast(g * b.data * np.power(a.data, b.data - 1), a.shape)
        if b.requires_grad:
            # d(a^b)/db = a^b log(a); torch takes it as 0 where a == 0 and b >= 0
            with np.errstate(divide="ignore", invalid="ignore"):
                d = out * np.log(a.data)
            d = np.where((a.data == 0) & (b.data >= 0), 0, d)
            gb = unbroadcast(g * d, b.shape)
        return ga, gb

    return make_result(out, (a, b), backward, "pow", (a, b), b.requires_grad)


def exp(a: Tensor) -> Tensor:
    out = np.exp(a.data)
    return make_result(out, (a,), lambda g: (g * out,), "exp", (), True)


def log(a: Tensor) -> Tensor:
    return make_result(np.log(a.data), (a,), lambda g: (g / a.data,), "log", (a,), False)


def sqrt(a: Tensor) -> Tensor:
    out = np.sqrt(a.data)
    return make_result(out, (a,), lambda g: (g / (2 * out),), "sqrt", (), True)


def absolute(a: Tensor) -> Tensor:
    return make_result(np.abs(a.data), (a,), lambda g: (g * np.sign(a.data),), "abs", (a,), False)


def clip(a: Tensor, low: float, high: float) -> Tensor:
    """Limit values to [low, high]; the gradient is zero where a value was clipped."""
    inside = (a.data >= low) & (a.data <= high)
    return make_result(np.clip(a.data, low, high), (a,), lambda g: (g * inside,), "clip", (), False)


# ---------------------------------------------------------------------- reductions
def _norm_axis(op: str, axis, ndim):
    """``axis`` as a tuple of non-negative axes; out of range or repeated raises like NumPy
    (numpy.exceptions.AxisError, a ValueError and IndexError)."""
    if axis is None:
        return tuple(range(ndim))
    return normalize_axis_tuple(axis, ndim, op)


def _expand(g: np.ndarray, shape: tuple, axes: tuple, keepdims: bool) -> np.ndarray:
    if not keepdims:
        g = np.expand_dims(g, axes) if axes else g
    return np.broadcast_to(g, shape)


def sum_(a: Tensor, axis=None, keepdims=False) -> Tensor:
    axes = _norm_axis("sum", axis, a.ndim)
    out = np.asarray(a.data.sum(axis=axes, keepdims=keepdims))
    return make_result(out, (a,), lambda g: (_expand(g, a.shape, axes, keepdims),), "sum", (), False)


def mean(a: Tensor, axis=None, keepdims=False) -> Tensor:
    axes = _norm_axis("mean", axis, a.ndim)
    count = int(np.prod([a.shape[ax] for ax in axes])) if axes else 1
    out = np.asarray(a.data.mean(axis=axes, keepdims=keepdims))
    return make_result(out, (a,), lambda g: (_expand(g / count, a.shape, axes, keepdims),), "mean", (), False)


def _extreme(op: str, a: Tensor, axis, keepdims: bool, nan_shares: bool = False) -> Tensor:
    """``max`` / ``min`` values over ``axis``; tied extremes share the gradient equally
    (torch's amax / amin, and max() / min() without dim). ``nan_shares``: a NaN result sends
    the gradient to the NaN elements (torch's max() / min() of the whole tensor) instead of
    making every gradient NaN (torch's amax / amin)."""
    if a.ndim == 0 and axis is not None:  # torch takes dim 0 / -1 of a 0-d tensor
        normalize_axis_tuple(axis, 1, op)
        axes = ()
    else:
        axes = _norm_axis(op, axis, a.ndim)
    if a.size == 0:
        raise ValueError(f"{op}: cannot reduce an empty tensor of shape {a.shape}")
    out_k = a.data.max(axis=axes, keepdims=True) if op == "max" else a.data.min(axis=axes, keepdims=True)

    def backward(g):
        hit = (a.data == out_k)
        if nan_shares and np.isnan(out_k).any():
            hit = np.isnan(a.data)
        share = hit / hit.sum(axis=axes, keepdims=True)
        return (_expand(g, a.shape, axes, keepdims) * share,)

    out = out_k if keepdims else np.squeeze(out_k, axis=axes)
    return make_result(np.asarray(out), (a,), backward, op, (a,), True)


def max_(a: Tensor, axis=None, keepdims=False) -> Tensor:
    return _extreme("max", a, axis, keepdims)


def min_(a: Tensor, axis=None, keepdims=False) -> Tensor:
    return _extreme("min", a, axis, keepdims)


def _extreme_at(op: str, a: Tensor, dim: int, keepdim: bool):
    """torch.Tensor.max(dim) / min(dim): ``(values, indices)``, the first extreme along
    ``dim`` (a NaN counts as the extreme, as in torch and np.argmax); the gradient goes to
    the returned index only."""
    ax = normalize_axis_tuple(int(dim), max(a.ndim, 1), op)[0]
    data = a.data if a.ndim else a.data.reshape(1)
    if data.shape[ax] == 0:
        raise IndexError(f"{op}(dim={dim}): cannot reduce an empty dimension of a tensor of shape {a.shape}")
    idx = (np.argmax if op == "max" else np.argmin)(data, axis=ax, keepdims=True)
    values_k = np.take_along_axis(data, idx, axis=ax)
    keep = keepdim and a.ndim > 0

    def backward(g):
        gk = np.asarray(g) if keep else np.expand_dims(np.asarray(g), ax)
        full = np.zeros(data.shape, dtype=np.result_type(gk.dtype, a.data.dtype))
        np.put_along_axis(full, idx, gk.reshape(idx.shape), axis=ax)
        return (full.reshape(a.shape),)

    if a.ndim == 0:
        values, indices = values_k.reshape(()), idx.reshape(())
    elif keep:
        values, indices = values_k, idx
    else:
        values, indices = np.squeeze(values_k, axis=ax), np.squeeze(idx, axis=ax)
    out = make_result(np.asarray(values), (a,), backward, op, (), False)
    return MaxResult(out, np.asarray(indices, dtype=np.int64))


def _extreme_method(a: Tensor, op: str, axis, keepdims, dim, keepdim):
    if dim is not None and not isinstance(dim, (tuple, list)):
        if axis is not None:
            raise TypeError(f"{op}: give either axis or dim, not both")
        return _extreme_at(op, a, dim, bool(keepdims if keepdim is None else keepdim))
    axis, keepdims = _axis_args(op, axis, keepdims, dim, keepdim)
    return _extreme(op, a, axis, keepdims, nan_shares=axis is None)


# ---------------------------------------------------------------------- shapes
def reshape(a: Tensor, shape) -> Tensor:
    shape = tuple(int(s) for s in shape)
    out = make_result(a.data.reshape(shape), (a,), lambda g: (g.reshape(a.shape),), "reshape", (), False)
    return _share_version(out, a)


def transpose(a: Tensor, axes=None) -> Tensor:
    inverse = None if axes is None else tuple(np.argsort(axes))
    out = make_result(np.transpose(a.data, axes), (a,), lambda g: (np.transpose(g, inverse),), "transpose", (), False)
    return _share_version(out, a)


def _index_part(part):
    """One index component as NumPy takes it: a bool Tensor / bool list is a mask, another
    Tensor integer positions (its values must be whole numbers)."""
    if isinstance(part, Tensor):
        if part._is_bool:
            return part.data.astype(bool)
        arr = part.data
        if arr.size and not np.array_equal(arr, np.trunc(arr)):
            raise IndexError(f"getitem: an index tensor must hold whole numbers or booleans, got {arr.ravel()[:3]}...")
        return arr.astype(np.intp)
    if isinstance(part, list):
        arr = np.asarray(part)
        return arr if arr.dtype == np.bool_ or arr.dtype.kind in "iu" else part
    return part


def _index(index):
    if isinstance(index, tuple):
        return tuple(_index_part(p) for p in index)
    return _index_part(index)


def _has_int_array(index) -> bool:
    """Whether an index gathers with integer arrays (which may repeat positions)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (np.ndarray, list)) and np.asarray(p).dtype != np.bool_ for p in parts)


def getitem(a: Tensor, index) -> Tensor:
    index = _index(index)
    repeats = _has_int_array(index)

    def backward(g):
        full = np.zeros_like(a.data)
        if repeats:
            np.add.at(full, index, g)  # repeated indices add up
        else:
            full[index] = g  # slices and masks pick each element at most once
        return (full,)

    out = make_result(np.asarray(a.data[index]), (a,), backward, "getitem", (), False)
    return _share_version(out, a)


def _join_axis(op: str, axis, dim, ndim: int) -> int:
    """The axis of concatenate / stack as a non-negative int: torch's ``dim`` is an alias of
    ``axis`` (default 0); out of range raises numpy.exceptions.AxisError like NumPy."""
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{op}: give either axis or dim, not both")
        axis = dim
    return normalize_axis_index(operator.index(0 if axis is None else axis), ndim, op)


def concatenate(tensors: Iterable[Tensor], axis: Optional[int] = None, *, dim: Optional[int] = None) -> Tensor:
    """Join tensors of equal shape except along ``axis`` (or ``dim``, torch.cat's name; 0 by
    default) into one of the summed length there; the gradient is split back."""
    ts = [tensor(t) for t in tensors]
    if not ts:
        raise ValueError("concatenate: need at least one tensor")
    if ts[0].ndim == 0:
        raise ValueError("concatenate: zero-dimensional tensors cannot be concatenated")
    axis = _join_axis("concatenate", axis, dim, ts[0].ndim)
    out = np.concatenate([t.data for t in ts], axis=axis)
    cuts = np.cumsum([t.shape[axis] for t in ts])[:-1]
    return make_result(out, ts, lambda g: tuple(np.split(g, cuts, axis=axis)), "concatenate", (), False)


def stack(tensors: Iterable[Tensor], axis: Optional[int] = None, *, dim: Optional[int] = None) -> Tensor:
    """Stack tensors of one shape along a new ``axis`` (or ``dim``, torch.stack's name; 0 by
    default), which may be ``-1 .. ndim`` of the inputs as in NumPy."""
    ts = [tensor(t) for t in tensors]
    if not ts:
        raise ValueError("stack: need at least one tensor")
    axis = _join_axis("stack", axis, dim, ts[0].ndim + 1)
    out = np.stack([t.data for t in ts], axis=axis)
    return make_result(out, ts, lambda g: tuple(np.moveaxis(g, axis, 0)), "stack", (), False)


# symbol of an augmented assignment -> (in-place ufunc, out-of-place op, name for messages)
_AUGMENTED = {
    "+=": (np.add, add, "__iadd__"),
    "-=": (np.subtract, sub, "__isub__"),
    "*=": (np.multiply, mul, "__imul__"),
    "/=": (np.divide, div, "__itruediv__"),
    "**=": (np.power, power, "__ipow__"),
}


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

    saved = ((b,) if a.requires_grad else ()) + ((a,) if b.requires_grad else ())
    return make_result(np.asarray(out), (a, b), backward, "matmul", saved, False)
