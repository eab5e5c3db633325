"""Flat parameter buffers (DESIGN.md, decision 1).

All parameters of one dtype live in one contiguous 1-D array and every parameter's
``.data`` is a reshaped view into it; gradients live in a second array of the same layout.
So the global norm, clipping and an optimizer update are each one pass over one array,
and a checkpoint of the weights is one array.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence

import numpy as np

from .tensor import Tensor


class FlatBuffer:
    """One dtype's parameters packed end to end.

    Attributes: ``data`` and ``grad`` (1-D arrays), ``offsets`` (int64, k+1: parameter i is
    ``data[offsets[i]:offsets[i+1]]``), ``shapes``, ``params`` (the Tensors), ``dtype``.
    """

    def __init__(self, params: Sequence[Tensor]):
        if not params:
            raise ValueError("FlatBuffer: no parameters")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"FlatBuffer: parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = params[0].dtype
        self.params: List[Tensor] = list(params)
        self.shapes = [p.shape for p in params]
        sizes = [p.size for p in params]
        self.offsets = np.zeros(len(params) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        total = int(self.offsets[-1])
        self.data = np.empty(total, dtype=self.dtype)
        self.grad = np.zeros(total, dtype=self.dtype)
        for i, p in enumerate(params):
            view = self.view(self.data, i)
            view[...] = p.data
            gview = self.view(self.grad, i)
            if p.grad is not None:
                gview[...] = p.grad
            p.data = view
            p.grad = gview
            p._flat = self
            p._flat_index = i

    def __len__(self) -> int:
        return len(self.params)

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def view(self, buffer: np.ndarray, i: int) -> np.ndarray:
        """Parameter i's slice of a flat ``buffer`` of this layout, in its own shape."""
        return buffer[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def owns(self, params: Sequence[Tensor]) -> bool:
        """True when ``params`` are exactly this buffer's tensors, in order."""
        return len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params))

    def check_views(self) -> None:
        """Make every parameter's data and grad views of this buffer again.

        A parameter whose ``.data`` was replaced (instead of written in place) is an error;
        a ``.grad`` that was replaced or set to None is copied back (or zeroed) in place.
        """
        for i, p in enumerate(self.params):
            if not _views(p.data, self.view(self.data, i)):
                raise RuntimeError(
                    f"parameter {i} of shape {self.shapes[i]} no longer views its flat buffer; "
                    "assign into it with p.data[...] = value instead of replacing p.data"
                )
            view = self.view(self.grad, i)
            if p.grad is None or not _views(p.grad, view):
                view[...] = 0 if p.grad is None else p.grad
                p.grad = view

    def grad_view(self, p: Tensor) -> np.ndarray:
        """``p``'s slice of the gradient buffer, zeroed (for a first backward after grad=None)."""
        view = self.view(self.grad, p._flat_index)
        view.fill(0)
        return view


def _views(a: np.ndarray, b: np.ndarray) -> bool:
    """Same memory, shape and dtype (works for zero-size arrays too)."""
    return (isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def flatten_parameters(params: Iterable[Tensor]) -> List[FlatBuffer]:
    """Group ``params`` by dtype into FlatBuffers, reusing buffers they already live in.

    Parameters that already form a whole FlatBuffer (in order) keep it; any other
    parameter is re-homed: its values are copied into a new buffer and its ``.data`` /
    ``.grad`` become views of it.
    """
    params = _unique(params)
    out: List[FlatBuffer] = []
    for dtype in sorted({p.dtype for p in params}, key=str):
        group = [p for p in params if p.dtype == dtype]
        flat = group[0]._flat
        if flat is not None and flat.owns(group):
            flat.check_views()
            out.append(flat)
        else:
            out.append(FlatBuffer(group))
    return out


def _unique(params: Iterable[Tensor]) -> List[Tensor]:
    seen, out = set(), []
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected gradcore.Tensor parameters, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
