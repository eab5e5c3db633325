"""Flat parameter buffers (DESIGN.md, decision 1).

All parameters of one dtype of a network live in one contiguous 1-D array and every
parameter's ``.data`` is a reshaped view into it; gradients live in a second array of the
same layout. So the global norm, clipping and an optimizer update are each one pass over
one array, and a checkpoint of the weights is one array.

One owner per buffer: the outermost network. A module builds its buffer when it is
constructed (a container re-homes its children's parameters then, before anyone can hold
an optimizer over them), and nothing else ever moves a parameter: an optimizer over some
of a network's parameters addresses runs of the network's buffer, and a loose Tensor given
to an optimizer is wrapped in a one-tensor buffer over its own array (no copy). Each buffer
knows the optimizers that hold it (weakly), so a change that would re-home its parameters
(``astype``, ``Sequential.append``, nesting the network in a container) is refused while
one exists instead of leaving the optimizer updating stale arrays.
"""
from __future__ import annotations

import weakref
from typing import Iterable, List, Sequence

import numpy as np

from .tensor import Tensor, _views


class FlatBuffer:
    """One dtype's parameters packed end to end.

    Attributes: ``data`` and ``grad`` (1-D arrays), ``offsets`` (int64, k+1: parameter i is
    ``data[offsets[i]:offsets[i+1]]``), ``shapes``, ``params`` (the Tensors), ``dtype``,
    ``optimizers`` (a WeakSet of the optimizers holding this buffer).

    ``FlatBuffer(params)`` copies the values into a new array and makes every ``.data`` a
    view of it (what an owning module does); ``FlatBuffer.wrap(tensor)`` builds a buffer
    over one tensor's own array without copying. A gradient that exists is copied into the
    gradient buffer; a ``None`` gradient stays None until a backward fills the view.
    """

    def __init__(self, params: Sequence[Tensor], *, _wrap: bool = False):
        if not params:
            raise ValueError("FlatBuffer: no parameters")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"FlatBuffer: parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = params[0].dtype
        self.params: List[Tensor] = list(params)
        self.shapes = [p.shape for p in params]
        self.offsets = np.zeros(len(params) + 1, dtype=np.int64)
        np.cumsum([p.size for p in params], out=self.offsets[1:])
        self.optimizers: "weakref.WeakSet" = weakref.WeakSet()
        total = int(self.offsets[-1])
        if _wrap:
            self.data = params[0].data.reshape(-1)  # a view: checked by wrap()
        else:
            self.data = np.empty(total, dtype=self.dtype)
        self.grad = np.zeros(total, dtype=self.dtype)
        # one grad view object per parameter, reused, so an optimizer recognises it by identity
        self._derive()
        for i, p in enumerate(params):
            if not _wrap:
                view = self.view(self.data, i)
                view[...] = p.data
                p.data = view
            if p.grad is not None:
                gview = self.grad_views[i]
                gview[...] = p.grad
                p.grad = gview
            p._flat = self
            p._flat_index = i

    @classmethod
    def wrap(cls, tensor: Tensor, op: str) -> "FlatBuffer":
        """A one-tensor buffer over ``tensor``'s own array (its ``.data`` is not replaced)."""
        d = tensor.data
        if not (isinstance(d, np.ndarray) and d.flags.c_contiguous and d.flags.writeable):
            raise ValueError(
                f"{op}: a parameter of shape {np.shape(d)} is not a writeable C-contiguous array, so it cannot be "
                "updated in place; give it its own array first (p.data = np.ascontiguousarray(p.data))"
            )
        return cls([tensor], _wrap=True)

    # Copies (copy.deepcopy) and pickles go through these two: the buffer's arrays travel,
    # its tensors' data and grad are made views of them again (Tensor.__getstate__), the
    # optimizers holding it register again as they are copied or loaded
    # (Optimizer.__setstate__). A network, its optimizer, a parameter or the buffer met
    # first: all reach one consistent copy.
    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("optimizers", "grad_views", "_index"):  # derived, or keyed by this process's ids
            del state[key]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("optimizers", weakref.WeakSet())
        self._derive()
        for p in self.params:
            if "_flat" in p.__dict__:  # restored already (the rest link themselves: Tensor.__setstate__)
                p._link_flat()

    def _derive(self) -> None:
        """The state that follows from params and grad: the index by identity, the views."""
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.grad_views = [self.view(self.grad, i) for i in range(len(self.params))]

    def __len__(self) -> int:
        return len(self.params)

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def index(self, p: Tensor) -> int:
        """Position of ``p`` in this buffer, or -1 (checked by identity: a deep copy of the
        buffer keeps the original tensors' ids as keys)."""
        i = self._index.get(id(p), -1)
        return i if i >= 0 and self.params[i] is p else -1

    def view(self, buffer: np.ndarray, i: int) -> np.ndarray:
        """Parameter i's slice of a flat ``buffer`` of this layout, in its own shape."""
        return buffer[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def owns(self, params: Sequence[Tensor]) -> bool:
        """True when ``params`` are exactly this buffer's tensors, in order, and each still
        lives in it (a tensor re-homed into another network's buffer since is not owned)."""
        return len(params) == len(self.params) and all(a is b and a._flat is self for a, b in zip(params, self.params))

    def check_views(self) -> None:
        """Raise RuntimeError if a parameter's ``.data`` was replaced instead of written in place."""
        for i, p in enumerate(self.params):
            if not _views(p.data, self.view(self.data, i)):
                raise RuntimeError(
                    f"parameter {i} of shape {self.shapes[i]} no longer views its flat buffer; "
                    "assign into it with p.data[...] = value instead of replacing p.data"
                )


def holders(buffers: Iterable[FlatBuffer]) -> List[str]:
    """Class names of the live optimizers holding any of ``buffers`` (sorted, unique)."""
    return sorted({type(opt).__name__ for flat in buffers if flat is not None for opt in list(flat.optimizers)})


def refuse_if_held(buffers: Iterable[FlatBuffer], op: str, change: str) -> None:
    """RuntimeError when an optimizer holds one of ``buffers``: ``change`` (what the call
    would do to the parameters) would leave it updating arrays the network no longer uses."""
    names = holders(buffers)
    if names:
        raise RuntimeError(
            f"{op}: an optimizer ({', '.join(names)}) holds this network's parameters; {change}, and the "
            "optimizer would keep updating the old arrays. Create the optimizer after changing the network "
            "(drop the old optimizer first, e.g. net.optimizer = None)"
        )


def own_parameters(params: Iterable[Tensor], op: str = "flatten") -> List[FlatBuffer]:
    """Make ``params`` (deduplicated) the whole of one FlatBuffer per dtype, in order.

    Parameters that already form exactly one buffer keep it; otherwise their values are
    copied into a new buffer (refused while an optimizer holds a buffer they live in).
    """
    params = _unique(params)
    out: List[FlatBuffer] = []
    for dtype in sorted({p.dtype for p in params}, key=str):
        group = [p for p in params if p.dtype == dtype]
        flat = group[0]._flat
        if flat is not None and flat.owns(group):
            flat.check_views()
            out.append(flat)
            continue
        refuse_if_held({id(p._flat): p._flat for p in group if p._flat is not None}.values(), op,
                       "this would move them into a new flat buffer")
        out.append(FlatBuffer(group))
    return out


# Kept under its old name: building a buffer by hand is what an owning module does.
flatten_parameters = own_parameters


def _unique(params: Iterable[Tensor]) -> List[Tensor]:
    seen, out = set(), []
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected gradcore.Tensor parameters, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
