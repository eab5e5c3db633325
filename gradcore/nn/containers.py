"""Containers: Sequential and Residual.

A container keeps the parameters of everything inside it in one flat buffer per dtype
(``gradcore.flat``), so an optimizer updates the whole network in one pass. Building a
container re-homes its children's parameters into its buffer (the outermost network owns
the buffer; every parameter stays a view of it). Once an optimizer holds the buffer,
changes that would re-home the parameters again (``append``, ``astype``, nesting the
network in another container) are refused with an error that says so.
"""
from __future__ import annotations

import math
import operator
from typing import Iterator, List, Optional, Tuple

import numpy as np

from .. import activations as _act
from .. import functional as F
from ..activations import FUSED_ACTIVATIONS
from ..flat import refuse_if_held
from ..tensor import Tensor, _structure_clock
from .layers import Dense
from .module import Model, Module, check_float_dtype, class_patched, class_verdicts


def _settle_dtype(container: Module, dtype, op: str) -> None:
    """Convert everything in ``container`` to ``dtype``, or to the one dtype its parameters
    and buffers already share, and build the flat buffer."""
    if dtype is None:
        found = {np.dtype(p.dtype) for _, p in container.named_parameters()}
        found |= {np.dtype(b.dtype) for _, b in container.named_buffers() if np.dtype(b.dtype).kind == "f"}
        if len(found) > 1:
            raise TypeError(f"{op}: the layers mix dtypes {sorted(str(d) for d in found)}; "
                            "pass dtype= to convert them all to one")
        dtype = found.pop() if found else np.dtype(np.float32)
    else:
        dtype = check_float_dtype(op, dtype)
    container.astype(dtype)


class Sequential(Model):
    """Layers applied one after another: ``Sequential(Dense(20, 64, "relu"), Dense(64, 1))``
    (or a list of layers). Indexing, ``len``, iteration and ``append`` work like a list.

    ``dtype``: when given, every layer is converted to it; otherwise the layers must share
    one. The input is converted to the network's dtype, and each layer's expected input
    width is checked with an error naming the layer by index.
    """

    def __init__(self, *layers, dtype=None):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be a gradcore.nn.Module, got {type(layer).__name__}")
            self._modules[str(i)] = layer
        object.__setattr__(self, "_dense_run_cache", None)  # _cached_dense_run's (a key of its own from the start)
        _settle_dtype(self, dtype, "Sequential")

    # ------------------------------------------------------------------ list behaviour
    @property
    def layers(self) -> List[Module]:
        return list(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def __getitem__(self, index):
        layers = self.layers
        if isinstance(index, slice):
            return _view(layers[index], self)
        if isinstance(index, (int, np.integer)):
            if not -len(layers) <= index < len(layers):
                raise IndexError(f"Sequential: index {index} out of range for {len(layers)} layers")
            return layers[index]
        raise TypeError(f"Sequential indices must be integers or slices, got {type(index).__name__}")

    def append(self, layer: Module) -> "Sequential":
        """Add ``layer`` at the end (converted to the network's dtype); returns self."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append: expected a gradcore.nn.Module, got {type(layer).__name__}")
        refuse_if_held(self.flat_buffers() + layer.flat_buffers(), "Sequential.append",
                       f"appending {type(layer).__name__} rebuilds the network's flat buffer")
        _structure_clock[0] += 1
        self._modules[str(len(self._modules))] = layer
        layer.train(self.training)
        args, kwargs = self._init_args
        object.__setattr__(self, "_init_args", (tuple(self.layers), kwargs))
        self.astype(self._dtype)
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x) -> Tensor:
        x = self._as_input(x)
        layers = list(self._modules.values())
        i, n = 0, len(layers)
        # a patched F.linear (a spy, a quantised stand-in) must see every Dense, as torch's
        # nn.Linear.forward calls F.linear: the fused chain runs only with the original
        chain = n > 1 and F.linear is _ORIGINAL_LINEAR
        while i < n:
            run = _cached_dense_run(self, layers, i, x) if chain and n - i > 1 else None
            if run is not None:
                x = F._dense_chain(x, run, type(run) is _ContiguousRun)
                i += len(run)
                continue
            layer = layers[i]
            # Module.check_input's test first, so that its label is built only for the error
            if type(layer).check_input is not _module_check_input or not layer._input_fits(x):
                layer.check_input(x, where=f"{type(layer).__name__} layer {i}")
            x = layer(x)
            i += 1
        return x

    def _first_checked(self):
        for i, layer in enumerate(self._modules.values()):
            if layer.input_width() is not None:
                return i, layer
            if not layer.preserves_shape:
                return None
        return None

    def check_input(self, x, where: Optional[str] = None) -> None:
        first = self._first_checked()
        if first is not None:
            i, layer = first
            label = f"{type(layer).__name__} layer {i}"
            layer.check_input(x, where=f"{where}, {label}" if where else label)

    # ------------------------------------------------------------------ shapes
    @property
    def preserves_shape(self) -> bool:
        return all(layer.preserves_shape for layer in self._modules.values())

    def input_width(self) -> Optional[int]:
        first = self._first_checked()
        return None if first is None else first[1].input_width()

    def output_shape(self, input_shape):
        shape = input_shape
        for layer in self._modules.values():
            shape = layer.output_shape(shape)
        return shape

    def summary_layers(self, input_shape):
        rows, shape = [], input_shape
        for name, layer in self._modules.items():
            shape = layer.output_shape(shape)
            rows.append((name, layer, shape))
        return rows


_module_check_input = Module.check_input
_ORIGINAL_LINEAR = F.linear  # Sequential.forward's _dense_chain stands for exactly this function
# Dense.activation (None or a fused name) -> the kernel F.linear runs for it
_KERNELS = {None: "identity", **{name: _act.get(name).kernel for name in FUSED_ACTIVATIONS}}


def _plain_dense(cls) -> bool:
    """Whether layers of class ``cls`` are Dense as it is (a subclass that only changes the
    constructor, like Linear, is): called, checked and run exactly as Dense."""
    ok = class_verdicts.get(cls)
    if ok is None:
        ok = class_verdicts[cls] = (issubclass(cls, Dense) and cls.forward is Dense.forward
                                         and cls._module_hooks is None and cls._monitor_tap is None
                                         and cls.__call__ is Module.__call__
                                         and cls.check_input is _module_check_input
                                         and cls.input_width is Dense.input_width
                                         and cls._as_input is Module._as_input and not class_patched(cls))
    return ok


def _cached_dense_run(seq: "Sequential", layers: List[Module], start: int, x) -> Optional[list]:
    """``_dense_run(layers, start, x)``, remembered per Sequential between steps.

    An entry holds for one structure clock (tensor.py: every module attribute, child,
    parameter, buffer, dtype and hook change advances it) and one list of layers, and for
    x's dtype and width. What can change without advancing the clock is checked on every
    use: each examined layer's monitor tap and module hooks (a monitor sets and deletes
    them in the module's __dict__) and its weight's and bias's ``.data`` arrays (assigned
    directly; the same array object means the same shape and dtype). The layer that ended
    the run is examined as well, so a run that could now be longer is recomputed."""
    if not isinstance(x, Tensor):
        return None
    xd = x.data
    shape = xd.shape
    if len(shape) != 2 or shape[0] == 0:
        return None
    cache = seq.__dict__.get("_dense_run_cache")
    clock = _structure_clock[0]
    if cache is None or cache[0] != clock or len(cache[1]) != len(layers) \
            or not all(map(operator.is_, cache[1], layers)):
        cache = (clock, layers, {})
        object.__setattr__(seq, "_dense_run_cache", cache)
    entries = cache[2]
    entry = entries.get(start)
    if entry is not None and entry[0] is xd.dtype and entry[1] == shape[1]:
        for d, tap, hooks, w, wd, b, bd in entry[3]:
            if d.get("_monitor_tap") is not tap or d.get("_module_hooks") is not hooks or w.data is not wd \
                    or (b is not None and b.data is not bd):
                break
        else:
            return entry[2]
    run, stop = _dense_run_scan(layers, start, x)
    if run is not None and all(t.data.flags.c_contiguous for w, b, _, _ in run for t in (w, b) if t is not None):
        run = _ContiguousRun(run)  # the same arrays stay C-contiguous: _dense_chain may skip np.asarray
    checks = []
    for layer in layers[start:stop + 1]:  # the run's layers and the one that ended it
        d = layer.__dict__
        params = d.get("_parameters")
        params = params if isinstance(params, dict) else {}
        w, b = params.get("weight"), params.get("bias")
        w = w if isinstance(w, Tensor) else _NO_TENSOR
        b = b if isinstance(b, Tensor) else None
        checks.append((d, d.get("_monitor_tap"), d.get("_module_hooks"), w, w.data, b,
                       None if b is None else b.data))
    entries[start] = (xd.dtype, shape[1], run, tuple(checks))
    return run


class _ContiguousRun(list):
    """A cached run whose weights' and biases' arrays are C-contiguous (checked when cached;
    the per-use checks make sure they are still the same arrays)."""

    __slots__ = ()


class _NoTensor:
    """Stands in for an absent weight in a cached run's checks (its data never changes)."""

    __slots__ = ()
    data = None


_NO_TENSOR = _NoTensor()


def _dense_run(layers: List[Module], start: int, x) -> Optional[list]:
    """The (weight, bias, kernel, alpha) of the plain Dense layers from ``start`` on that
    ``F._dense_chain`` can run as one node on ``x`` (at least two), or None.

    A layer qualifies when calling it one by one would pass every check without a
    conversion and do nothing but its linear(): no hooks, no monitor tap, a fused (or no)
    activation with a finite float alpha, parameters of x's dtype whose shapes fit, no
    tensor hooks on them and no tensor used twice (so the gradients sum in the same order).
    Anything else ends the run there, and that layer goes the per-layer way (which raises
    the errors a bad layer deserves)."""
    if not isinstance(x, Tensor) or x.data.ndim != 2 or x.data.shape[0] == 0:
        return None
    return _dense_run_scan(layers, start, x)[0]


def _dense_run_scan(layers: List[Module], start: int, x) -> Tuple[Optional[list], int]:
    """``_dense_run``'s answer for a 2-d Tensor x with rows, and the index of the layer
    that ended the run (``len(layers)`` when none did)."""
    xd = x.data
    dtype = xd.dtype
    width = xd.shape[1]
    run, seen = [], set()
    types = class_verdicts
    # (dtype comparisons test identity first: the same answer, without numpy's == in the
    # common case; this loop runs for every layer of every step)
    stop = start
    for layer in layers[start:]:
        ok = types.get(type(layer))
        if not (ok or (ok is None and _plain_dense(type(layer)))):
            break
        d = layer.__dict__
        if d.get("_module_hooks") is not None or d.get("_monitor_tap") is not None or "forward" in d \
                or "check_input" in d:
            break  # (an instance's own forward or check: module(x) calls it, as torch does)
        kernel, alpha = _KERNELS.get(d.get("activation", 0)), d.get("alpha")
        if kernel is None or type(alpha) is not float or not math.isfinite(alpha):
            break
        ld = d.get("_dtype")
        if (ld is not dtype and ld != dtype) or d.get("in_features") != width:
            break
        params = d["_parameters"]
        weight, bias = params.get("weight"), params.get("bias", 0)
        if not isinstance(weight, Tensor) or not (bias is None or isinstance(bias, Tensor)):
            break
        w = weight.data
        ws, wd = w.shape, w.dtype
        if len(ws) != 2 or ws[1] != width or (wd is not dtype and wd != dtype) or weight._hooks is not None:
            break
        if bias is not None:
            b = bias.data
            bd = b.dtype
            if b.shape != (ws[0],) or (bd is not dtype and bd != dtype) or bias._hooks is not None \
                    or id(bias) in seen:
                break
            seen.add(id(bias))
        if id(weight) in seen:
            break
        seen.add(id(weight))
        run.append((weight, bias, kernel, alpha))
        width = ws[0]
        stop += 1
    return (run if len(run) > 1 else None), stop


def _view(layers: List[Module], parent: Sequential) -> Sequential:
    """A Sequential over some of ``parent``'s layers that leaves the parameters where they are."""
    sub = Sequential.__new__(Sequential, *layers)
    for i, layer in enumerate(layers):
        sub._modules[str(i)] = layer
    object.__setattr__(sub, "_dtype", parent._dtype)
    object.__setattr__(sub, "training", parent.training)
    return sub


class Residual(Model):
    """``y = block(x) + shortcut(x)``; the shortcut is the identity, or ``projection(x)``.

    When no projection is given and the block changes the width (both widths known from
    its layers), a bias-free ``Dense(in, out)`` projection is created. ``block`` may be a
    module or a list of layers (made a Sequential).
    """

    def __init__(self, block, projection: Optional[Module] = None, dtype=None):
        super().__init__()
        if isinstance(block, (list, tuple)):
            block = Sequential(*block)
        if not isinstance(block, Module):
            raise TypeError(f"Residual: block must be a gradcore.nn.Module or a list of them, got {type(block).__name__}")
        self.block = block
        if projection is None:
            width_in = block.input_width()
            out = block.output_shape((None, width_in)) if width_in is not None else None
            width_out = out[-1] if out else None
            if width_in is not None and width_out is not None and width_in != width_out:
                projection = Dense(width_in, width_out, use_bias=False, dtype=block.dtype)
        elif not isinstance(projection, Module):
            raise TypeError(f"Residual: projection must be a gradcore.nn.Module or None, got {type(projection).__name__}")
        if projection is not None:
            self.projection = projection
        else:
            self._modules["projection"] = None
        _settle_dtype(self, dtype, "Residual")

    def forward(self, x) -> Tensor:
        x = self._as_input(x)
        h = self.block(x)
        shortcut = x if self.projection is None else self.projection(x)
        if h.shape != shortcut.shape:
            raise ValueError(
                f"Residual: the block maps input {x.shape} to {h.shape} but the shortcut gives {shortcut.shape}; "
                "pass a projection module that maps the input to the block's output shape"
            )
        return h + shortcut

    def check_input(self, x, where: Optional[str] = None) -> None:
        self.block.check_input(x, where=f"{where or 'Residual'} block")

    @property
    def preserves_shape(self) -> bool:
        return self.block.preserves_shape

    def input_width(self) -> Optional[int]:
        return self.block.input_width()

    def output_shape(self, input_shape):
        return self.block.output_shape(input_shape)

    def summary_layers(self, input_shape):
        rows = [("block", self.block, self.block.output_shape(input_shape))]
        if self.projection is not None:
            rows.append(("projection", self.projection, self.projection.output_shape(input_shape)))
        return rows


__all__ = ["Sequential", "Residual"]
