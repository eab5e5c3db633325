"""Module: the base class of layers and networks.

A Module owns parameters (Tensors; ``requires_grad=False`` freezes one), buffers (plain NumPy arrays
updated in place, such as BatchNorm's running statistics) and child modules, all found by
assigning attributes: ``self.weight = Tensor(..., requires_grad=True)`` registers a
parameter, ``self.block = Dense(...)`` a child, ``self.register_buffer("running_mean", a)``
a buffer. Names join with dots in registration order, like PyTorch ("0.weight",
"2.block.0.bias", "1.running_mean").

Every module records the arguments it was constructed with (``_init_args``) so
``gradcore.serialize`` can write the architecture as JSON.

Layers are plain Modules; networks are ``Model``s: a Module with the Keras-style
``compile / fit / evaluate / predict`` of ``gradcore.training``. Sequential and Residual
are Models; a user's own network gets them by subclassing ``gradcore.nn.Model`` instead
of ``Module``.
"""
from __future__ import annotations

import copy
import inspect
import weakref
from collections import OrderedDict, namedtuple
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from .._validate import float_dtype as check_float_dtype  # re-exported: layers and containers use it
from ..flat import FlatBuffer, own_parameters, refuse_if_held
from ..tensor import RemovableHandle, Tensor, _structure_clock, add_hook, bump_version, is_grad_enabled, make_result
from ..training import TrainingMixin

LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


def _host_array(value):
    """``value`` as something np.asarray reads without copying through Python: a gradcore
    Tensor's data, or a torch tensor detached and on the CPU (anything with ``.numpy()``)."""
    if isinstance(value, Tensor):
        return value.data
    if isinstance(value, np.ndarray):
        return value
    for step in ("detach", "cpu"):  # torch.Tensor: leave the graph, leave the device
        if callable(getattr(value, step, None)):
            value = getattr(value, step)()
    if callable(getattr(value, "numpy", None)):
        return value.numpy()
    return value


def _value_array(op: str, name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(_host_array(value))
    except TypeError as exc:
        # a torch dtype NumPy lacks (bfloat16): its values are exact in float32
        if not callable(getattr(value, "float", None)):
            raise TypeError(f"{op}: value for {name!r} cannot be read as an array ({exc})") from None
        try:
            arr = np.asarray(_host_array(value.float()))
        except TypeError:
            raise TypeError(f"{op}: value for {name!r} of dtype {getattr(value, 'dtype', '?')} cannot be read as "
                            f"an array ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{op}: value for {name!r} must be numeric, got dtype {arr.dtype}")
    return arr


class _OwnsParameters(type):
    """Metaclass of Module: once the outermost constructor has run, the module puts its
    parameters into its own flat buffer (a container thereby re-homes its children's), so
    the buffer exists before anyone can hold an optimizer or a ``get_parameters()`` view."""

    def __call__(cls, *args, **kwargs):
        module = super().__call__(*args, **kwargs)
        module.flatten()
        return module

    def __setattr__(cls, name, value):
        # a class attribute a layer's call runs through (forward, __call__, check_input...)
        # changed: every module of the class may now compute differently, so caches of the
        # structure and verdicts about classes start again. Other class attributes (a
        # counter, extra_repr) change no computation and are set as usual.
        if name not in CALL_PATH:
            return super().__setattr__(name, value)
        before = _class_originals(cls, name)
        super().__setattr__(name, value)
        _class_changed(cls, name, before)

    def __delattr__(cls, name):
        if name not in CALL_PATH:
            return super().__delattr__(name)
        before = _class_originals(cls, name)
        super().__delattr__(name)
        _class_changed(cls, name, before)

    @property
    def __signature__(cls):
        # inspect.signature(SomeLayer) would otherwise report __call__'s (*args, **kwargs)
        sig = inspect.signature(cls.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])


# Verdicts about module classes kept between steps (containers: which classes run exactly as
# Dense); emptied, and the structure clock advanced, whenever a module class is changed.
class_verdicts: dict = {}
# Module classes changed after their definition (Dense.forward or Module.__call__ patched):
# class -> {attribute: its value as defined, own or inherited (_ABSENT: none)} for those that differ
# now. Their layers, and their subclasses', run the eager way, which calls what was patched
# in; putting the defined value back (monkeypatch's undo) makes the class plain again.
_patched: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ABSENT = object()
# The methods and hook slots a layer's call goes through: what the eager Dense run
# (containers._plain_dense) and the compiled lowering (compiled._is_layer) rely on, and what
# an instance may override in its own __dict__ (then it runs the eager way too).
CALL_PATH = frozenset({"forward", "__call__", "check_input", "input_width", "_as_input", "own_regularization",
                       "regularization_loss", "_module_hooks", "_monitor_tap"})


def _class_originals(cls, name: str) -> dict:
    """cls's record of changed attributes, with ``name``'s defined value noted if new."""
    changed = _patched.get(cls)
    if changed is None:
        changed = _patched[cls] = {}
    if name not in changed:
        changed[name] = inspect.getattr_static(cls, name, _ABSENT)
    return changed


def _class_changed(cls, name: str, changed: dict) -> None:
    if inspect.getattr_static(cls, name, _ABSENT) is changed[name]:
        del changed[name]  # back to what it was defined as (its own or inherited)
        if not changed:
            del _patched[cls]
    class_verdicts.clear()
    _structure_clock[0] += 1


def class_patched(kind) -> bool:
    """Whether ``kind`` or a class it inherits from differs from its definition now."""
    return bool(_patched) and any(c in _patched for c in kind.__mro__)


def _is_float_array(arr) -> bool:
    return arr is not None and np.dtype(arr.dtype).kind == "f"


# Attributes a module keeps for itself (never copied: they describe this object): caches
# between steps, and the fit running on it (a copy made during fit is not in that fit)
_PER_OBJECT_CACHES = frozenset({"_dense_run_cache", "_regularizer_cache", "_fit_loop"})


_COPYING = object()  # its id in a deep copy's memo: a module is being copied


class _StructureDict(OrderedDict):
    """A module's ``_parameters`` / ``_modules``: an OrderedDict whose every change advances
    the structure clock (tensor.py), also when written directly (``net._modules[k] = m``,
    as some torch code does), so per-step caches of the structure see it."""

    __slots__ = ()

    def __setitem__(self, key, value):
        _structure_clock[0] += 1
        OrderedDict.__setitem__(self, key, value)

    def __delitem__(self, key):
        _structure_clock[0] += 1
        OrderedDict.__delitem__(self, key)

    def pop(self, *args):
        _structure_clock[0] += 1
        return OrderedDict.pop(self, *args)

    def popitem(self, last=True):
        _structure_clock[0] += 1
        return OrderedDict.popitem(self, last)

    def setdefault(self, key, default=None):
        _structure_clock[0] += 1
        return OrderedDict.setdefault(self, key, default)

    def update(self, *args, **kwargs):
        _structure_clock[0] += 1
        OrderedDict.update(self, *args, **kwargs)

    def clear(self):
        _structure_clock[0] += 1
        OrderedDict.clear(self)

    def move_to_end(self, key, last=True):
        _structure_clock[0] += 1
        OrderedDict.move_to_end(self, key, last)

    def __ior__(self, other):
        self.update(other)
        return self


class Module(metaclass=_OwnsParameters):
    """Base class of every layer and network (see the module docstring)."""

    # True for layers whose output has the shape of their input (activations, norms, dropout).
    preserves_shape = False
    # None until a hook is registered, then a _ModuleHooks; a class default, so calling a
    # module without hooks costs one attribute lookup.
    _module_hooks = None

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        set_ = object.__setattr__
        set_(self, "_init_args", (args, dict(kwargs)))
        set_(self, "_parameters", _StructureDict())
        set_(self, "_buffers", OrderedDict())
        set_(self, "_modules", _StructureDict())
        set_(self, "training", True)
        set_(self, "_dtype", np.dtype(np.float32))
        set_(self, "_regularizer_cache", None)  # regularization_loss's
        return self

    def __init__(self):
        pass

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name: str, value: Any) -> None:
        _structure_clock[0] += 1  # per-step caches of the structure are stale (tensor.py)
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        elif isinstance(value, Tensor) and (name in params or (value.requires_grad and value.is_leaf)):
            modules.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif name in buffers and (value is None or isinstance(value, np.ndarray)):
            buffers[name] = value
        else:
            for d in (params, buffers, modules):
                d.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # only called when normal lookup fails
        for registry in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(registry)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        _structure_clock[0] += 1
        for d in (self._parameters, self._buffers, self._modules):
            if name in d:
                del d[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, tensor: Optional[Tensor]) -> None:
        """Register ``tensor`` (a leaf Tensor, or None for an absent parameter) under ``name``."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_parameter: {name!r} must be a gradcore.Tensor or None, got {type(tensor).__name__}")
        _structure_clock[0] += 1
        self.__dict__.pop(name, None)
        self._buffers.pop(name, None)
        self._modules.pop(name, None)
        self._parameters[name] = tensor

    def register_buffer(self, name: str, array: Optional[np.ndarray]) -> None:
        """Register a non-trainable array (saved in state_dict, converted by astype)."""
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"register_buffer: {name!r} must be a NumPy array or None, got {type(array).__name__}")
        _structure_clock[0] += 1
        self.__dict__.pop(name, None)
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = array

    def add_module(self, name: str, module: Optional["Module"]) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module, got {type(module).__name__}")
        if module is None:
            _structure_clock[0] += 1
            self._modules.pop(name, None)
        else:
            setattr(self, name, module)

    # ------------------------------------------------------------------ traversal
    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        """(dotted name, module) for this module ("" by default) and every descendant, once each."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{k}" if name else k, c) for k, c in m.named_children()]
            stack.extend(reversed(kids))

    def modules(self) -> Iterator["Module"]:
        cls = type(self)
        if cls.named_modules is not Module.named_modules or cls.named_children is not Module.named_children:
            for _, m in self.named_modules():
                yield m
            return
        yield from self._walk_modules()

    def _module_list(self) -> List["Module"]:
        """``list(self.modules())`` without a generator (the per-step callers)."""
        cls = type(self)
        if cls.modules is not Module.modules or cls.named_modules is not Module.named_modules \
                or cls.named_children is not Module.named_children:
            return list(self.modules())
        return self._walk_modules()

    def _walk_modules(self) -> List["Module"]:
        """named_modules' order without building the dotted names (called every step, e.g.
        by regularization_loss); a child that overrides named_children is asked for its own."""
        base = Module.named_children
        out, seen, stack = [], set(), [self]
        pop, push, add, emit = stack.pop, stack.extend, seen.add, out.append
        while stack:
            m = pop()
            i = id(m)
            if i in seen:
                continue
            add(i)
            emit(m)
            if type(m).named_children is base:
                mods = m._modules
                if not mods:
                    continue  # a leaf (most modules): nothing to visit
                kids = [c for c in mods.values() if c is not None]
            else:
                kids = [c for _, c in m.named_children()]
            kids.reverse()
            push(kids)
        return out

    def _named_state(self) -> Iterator[Tuple[str, str, Any]]:
        """("param" | "buffer", dotted name, value) in state_dict order: per module, its
        parameters then its buffers; each tensor / array appears once."""
        seen = set()
        for prefix, m in self.named_modules():
            for kind, d in (("param", m._parameters), ("buffer", m._buffers)):
                for name, value in d.items():
                    if value is None or id(value) in seen:
                        continue
                    seen.add(id(value))
                    yield kind, (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self) -> Iterator[Tuple[str, Tensor]]:
        """(name, Tensor) of every parameter, trainable or frozen, in a fixed order."""
        for kind, name, value in self._named_state():
            if kind == "param":
                yield name, value

    def parameters(self) -> List[Tensor]:
        """Every parameter, trainable or frozen, in the order of named_parameters (as
        torch.nn.Module.parameters: an optimizer built from it holds the frozen ones too and
        skips them while ``requires_grad`` is False, so unfreezing later just works). Filter
        with ``[p for p in net.parameters() if p.requires_grad]`` for the trainable ones."""
        return [p for _, p in self.named_parameters()]

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Set ``requires_grad`` on every parameter (freeze with False), like torch's
        ``Module.requires_grad_``; returns self."""
        if not isinstance(requires_grad, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}.requires_grad_: requires_grad must be a bool, got "
                            f"{type(requires_grad).__name__}")
        for _, p in self.named_parameters():
            p.requires_grad_(bool(requires_grad))
        return self

    def named_buffers(self) -> Iterator[Tuple[str, np.ndarray]]:
        for kind, name, value in self._named_state():
            if kind == "buffer":
                yield name, value

    def buffers(self) -> List[np.ndarray]:
        return [b for _, b in self.named_buffers()]

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Module":
        """Set training mode (BatchNorm uses batch statistics, Dropout drops) recursively."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        """Set evaluation mode recursively (same as ``train(False)``)."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter, like torch.nn.Module.zero_grad.

        ``set_to_none=True`` (the default, as in torch): every ``.grad`` becomes None, so an
        optimizer leaves the parameter alone until a backward gives it a gradient again (the
        next backward writes it into the flat buffer's view). ``False``: existing gradients
        are zeroed in place. Either way the gradient arrays are views of the network's flat
        gradient buffer, which every backward reuses: copy a ``.grad`` to keep it.
        """
        for _, p in self.named_parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.fill(0)

    # ------------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args, **kwargs):
        hooks = self._module_hooks
        if hooks is None:
            return self.forward(*args, **kwargs)
        return hooks.call(self, args, kwargs)

    # ------------------------------------------------------------------ hooks (torch's semantics)
    def _hooks(self) -> "_ModuleHooks":
        if self._module_hooks is None:
            object.__setattr__(self, "_module_hooks", _ModuleHooks())
        return self._module_hooks

    def register_forward_pre_hook(self, hook) -> RemovableHandle:
        """Call ``hook(module, args)`` before each forward; ``args`` is the tuple of positional
        inputs. It returns None or replacement inputs (a tuple, or one value for a single
        input). Returns a handle with ``.remove()``."""
        return add_hook(self._hooks().pre, hook, "register_forward_pre_hook")

    def register_forward_hook(self, hook) -> RemovableHandle:
        """Call ``hook(module, args, output)`` after each forward; it returns None or a
        replacement output. Returns a handle with ``.remove()``."""
        return add_hook(self._hooks().forward, hook, "register_forward_hook")

    def register_full_backward_hook(self, hook) -> RemovableHandle:
        """Call ``hook(module, grad_input, grad_output)`` once per backward, when the
        gradients w.r.t. this module's inputs are computed (torch's full backward hook).

        ``grad_output``: tuple of the gradients w.r.t. the module's output (one per Tensor
        output); ``grad_input``: tuple with one entry per positional input, the gradient
        w.r.t. it, or None when it is not a Tensor requiring grad (when no input requires
        grad the hook runs as soon as ``grad_output`` is known). Gradients are NumPy arrays;
        do not modify them in place. The hook returns None or a replacement ``grad_input``
        tuple, which is what flows on to the inputs. Recorded only while grad mode is on.
        Returns a handle with ``.remove()``."""
        return add_hook(self._hooks().backward, hook, "register_full_backward_hook")

    def register_full_backward_pre_hook(self, hook) -> RemovableHandle:
        """Call ``hook(module, grad_output)`` once per backward, as soon as the gradient
        w.r.t. this module's output is known (torch's backward pre-hook); ``grad_output`` is
        a tuple with one NumPy array per Tensor output. The hook returns None or a
        replacement ``grad_output`` tuple, which is what flows into the module (and what the
        full backward hooks see). Returns a handle with ``.remove()``."""
        return add_hook(self._hooks().backward_pre, hook, "register_full_backward_pre_hook")

    def _as_input(self, x) -> Tensor:
        """``x`` as a Tensor of this module's dtype (a differentiable cast for Tensors)."""
        if isinstance(x, Tensor):
            return x if x.data.dtype == self._dtype else x.astype(self._dtype)
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{self.describe()}: input must be numeric, got dtype {arr.dtype}")
        return Tensor(arr, dtype=self._dtype)

    # ------------------------------------------------------------------ shapes (for checks and summary)
    def input_width(self) -> Optional[int]:
        """Features this module expects on the last input axis, or None when it does not care."""
        return None

    def output_shape(self, input_shape: Optional[tuple]) -> Optional[tuple]:
        """Output shape for ``input_shape`` (None for the batch axis); None when unknown."""
        return input_shape if self.preserves_shape else None

    def check_input(self, x, where: Optional[str] = None) -> None:
        """Raise ValueError when ``x``'s last axis does not have ``input_width()`` features."""
        if self._input_fits(x):
            return
        data = x.data if isinstance(x, Tensor) else x
        label = where or type(self).__name__
        raise ValueError(f"{label} ({self.describe()}): expected input with {self.input_width()} features, got "
                         f"shape {tuple(np.shape(data))}")

    def _input_fits(self, x) -> bool:
        """Whether ``x``'s last axis has ``input_width()`` features (or the module does not
        care): check_input's test, which callers run first to build its label only for the
        error (Sequential.forward, every layer of every step)."""
        width = self.input_width()
        if width is None:
            return True
        data = x.data if isinstance(x, Tensor) else x
        shape = data.shape if type(data) is np.ndarray else np.shape(data)
        return len(shape) != 0 and shape[-1] == width

    # ------------------------------------------------------------------ dtype and flat buffers
    @property
    def dtype(self) -> np.dtype:
        """The floating dtype of this module's parameters and buffers (and of its inputs)."""
        return self._dtype

    def astype(self, dtype) -> "Module":
        """Convert every parameter and float buffer to ``dtype`` (float32 / float64); returns
        self. Integer buffers (counters such as ``num_batches_tracked``) keep their dtype.

        The parameters move to a new flat buffer of this module. Gradients are dropped. Call it
        on the outermost network, and before creating an optimizer: converting a layer nested
        in a network, or a network an optimizer holds, is refused (RuntimeError) because the
        network's buffer or the optimizer would keep the old arrays.
        """
        op = f"{type(self).__name__}.astype"
        dtype = check_float_dtype(op, dtype)
        changing = [p for _, p in self.named_parameters() if p.dtype != dtype]
        if changing:
            mine = {id(p) for _, p in self.named_parameters()}
            buffers = {id(p._flat): p._flat for p in changing if p._flat is not None}
            for flat in buffers.values():
                if any(id(q) not in mine for q in flat.params):
                    raise RuntimeError(
                        f"{op}: this module's parameters live in the flat buffer of an enclosing network; converting "
                        f"them alone to {dtype} would split that buffer. Call astype on the outermost network"
                    )
            refuse_if_held(buffers.values(), op, f"converting to {dtype} moves them into a new flat buffer")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p.dtype != dtype:
                    p.data = p.data.astype(dtype)
                    p.grad = None
                    p._flat = None
            for name, b in list(m._buffers.items()):
                # integer buffers (BatchNorm's num_batches_tracked) are counters, not values
                if _is_float_array(b) and b.dtype != dtype:
                    m._buffers[name] = b.astype(dtype)
            object.__setattr__(m, "_dtype", dtype)
        _structure_clock[0] += 1
        self.flatten()
        return self

    def float(self) -> "Module":
        return self.astype(np.float32)

    def double(self) -> "Module":
        return self.astype(np.float64)

    def flatten(self) -> List[FlatBuffer]:
        """Make this module the owner of its parameters (trainable and frozen): one flat buffer
        per dtype, each parameter a view of it, values kept. Buffers they already fill exactly
        are reused; otherwise re-homing is refused while an optimizer holds the old buffer."""
        params = [p for _, p in self.named_parameters()]
        return own_parameters(params, f"{type(self).__name__}") if params else []

    def __getstate__(self):
        """What a copy (pickle, copy.copy, and ``__deepcopy__`` below) starts from: the
        per-object caches and the running fit empty (they describe this object; a network
        pickled by a callback during fit is not in that fit when loaded, as its deep copy is not)."""
        state = self.__dict__.copy()
        for key in _PER_OBJECT_CACHES.intersection(state):
            state[key] = None
        return state

    def __deepcopy__(self, memo):
        """A deep copy whose parameters view one flat buffer: the copy of the buffer they
        live in (FlatBuffer.__getstate__ / __setstate__, shared with an optimizer copied
        alongside; a sub-module's copy keeps its network's whole buffer), else a new one of its own."""
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        outermost = id(_COPYING) not in memo  # (the modules inside are copied as part of this one)
        memo[id(_COPYING)] = True
        try:
            for key, value in self.__getstate__().items():  # (the per-object caches as None)
                object.__setattr__(new, key, copy.deepcopy(value, memo))
        finally:
            if outermost:
                del memo[id(_COPYING)]
        if not outermost:
            return new  # the outermost module copied decides where the parameters live
        copies = [q for _, q in new.named_parameters()]
        flat = copies[0]._flat if copies else None
        if flat is not None and all(q._flat is flat for q in copies) and (flat.owns(copies) or len(flat.optimizers)):
            return new  # the copy of their buffer, which an optimizer's copy may hold too
        # a sub-module copied alone: its parameters leave the copy of the whole network's buffer
        for q in copies:
            if q._flat is None and hasattr(q, "_flat_index"):
                del q._flat_index
        new.flatten()
        return new

    def flat_buffers(self) -> List[FlatBuffer]:
        """The flat buffers the parameters currently live in (the outer network's when nested)."""
        out, seen = [], set()
        for _, p in self.named_parameters():
            if p._flat is not None and id(p._flat) not in seen:
                seen.add(id(p._flat))
                out.append(p._flat)
        return out

    # ------------------------------------------------------------------ values
    def get_parameters(self) -> "OrderedDict[str, np.ndarray]":
        """name -> the parameter's live array (a view: it changes when training updates it)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def set_parameters(self, values: Mapping[str, Any]) -> None:
        """Copy ``values`` (name -> array) into the parameters in place.

        Every entry is checked first (known name, same shape, numeric); when one is bad a
        ValueError / TypeError names it and no parameter is changed. Names not given keep
        their values.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"set_parameters: expected a mapping name -> array, got {type(values).__name__}")
        params = OrderedDict(self.named_parameters())
        staged = []
        for name, value in values.items():
            if name not in params:
                raise ValueError(f"set_parameters: unknown parameter {name!r}; known: {list(params)}")
            arr = _value_array("set_parameters", name, value)
            target = params[name].data
            if arr.shape != target.shape:
                raise ValueError(f"set_parameters: {name!r} expects shape {target.shape}, got {arr.shape}")
            staged.append((target, arr))
        for target, arr in staged:
            target[...] = arr
        bump_version(params[name] for name in values)  # graphs that saved the old values refuse to backward

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """name -> a copy of every parameter and buffer (PyTorch's naming and order)."""
        return OrderedDict((name, np.array(value.data if isinstance(value, Tensor) else value, copy=True))
                           for _, name, value in self._named_state())

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy ``state`` into the parameters and buffers in place.

        Values may be NumPy arrays, gradcore Tensors or torch tensors (detached and moved to
        the CPU here), so ``net.load_state_dict(torch_net.state_dict())`` works for the same
        architecture. Everything is validated before anything is written: with ``strict`` a
        missing or unexpected name is an error, and a value of the wrong shape always is
        (the message names the key, the expected and the given shape), as is a fractional
        value for an integer buffer. A missing ``num_batches_tracked`` (a state dict from
        before BatchNorm had one) is tolerated and leaves the counter as it is, as torch
        does. Returns (missing_keys, unexpected_keys).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping name -> array, got {type(state).__name__}")
        targets = OrderedDict((name, value.data if isinstance(value, Tensor) else value)
                              for _, name, value in self._named_state())
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        fatal_missing = [k for k in missing if k.rsplit(".", 1)[-1] != "num_batches_tracked"]
        if strict and (fatal_missing or unexpected):
            parts = []
            if fatal_missing:
                parts.append(f"missing keys {fatal_missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError(f"load_state_dict: {' and '.join(parts)}")
        staged, bad = [], []
        for name, target in targets.items():
            if name not in state:
                continue
            arr = _value_array("load_state_dict", name, state[name])
            if arr.shape != target.shape:
                bad.append(f"{name!r}: expected shape {target.shape}, got {arr.shape}")
            elif target.dtype.kind in "iu" and arr.dtype.kind not in "biu" and not np.all(arr == np.round(arr)):
                bad.append(f"{name!r}: integer buffer got fractional values")
            staged.append((target, arr))
        if bad:
            raise ValueError("load_state_dict: wrong values for " + "; ".join(bad))
        for target, arr in staged:
            target[...] = arr
        bump_version(value for kind, name, value in self._named_state() if kind == "param" and name in state)
        return LoadResult(missing, unexpected)

    def save(self, path: str, include_optimizer: bool = True) -> None:
        """Write architecture, parameters, buffers (and optimizer state): ``gradcore.serialize.save``."""
        from .. import serialize

        serialize.save(self, path, include_optimizer=include_optimizer)

    def load_weights(self, path: str) -> None:
        """Load parameters and buffers saved at ``path`` (validated before anything is written)."""
        from .. import serialize

        serialize.load_weights(self, path)

    # ------------------------------------------------------------------ regularisation
    def own_regularization(self) -> Optional[Tensor]:
        """This module's own penalty (not its children's); None when it has none."""
        return None

    def regularization_loss(self) -> Optional[Tensor]:
        """Sum of the penalties (e.g. Dense l2) of this module and all sub-modules, as a
        differentiable scalar Tensor; None when no module has one."""
        cache = self.__dict__.get("_regularizer_cache")
        if cache is not None and cache[0] == _structure_clock[0]:
            penalised = cache[1]
        else:
            penalised = self._penalised_modules()
        total = None
        for m in penalised:
            term = m.own_regularization()
            if term is not None:
                total = term if total is None else total + term
        return total

    def _penalised_modules(self) -> List["Module"]:
        """The modules, in ``modules()`` order, whose ``own_regularization`` may give a term
        (a Dense with ``l2`` exactly 0.0 and Dense's own method gives none). Remembered for
        the structure clock (tensor.py: any attribute, child or parameter change advances
        it) when every module lists its children the base way, so the walk is the same
        until the clock moves; a module listing them otherwise is asked every time."""
        from .layers import Dense

        walked = self._module_list()
        base = Module.named_children
        cls = type(self)
        static = cls.modules is Module.modules and cls.named_modules is Module.named_modules
        out = []
        for m in walked:
            kind, own = type(m), m.__dict__
            if kind.named_children is not base:
                static = False
            if "own_regularization" in own:
                pass  # an instance's own method (set as an attribute: the clock moved)
            elif kind.own_regularization is Module.own_regularization:
                continue  # the base class's: no penalty
            elif kind.own_regularization is Dense.own_regularization and type(own.get("l2")) is float \
                    and own["l2"] == 0.0:
                continue
            out.append(m)
        if static:
            object.__setattr__(self, "_regularizer_cache", (_structure_clock[0], out))
        return out

    # ------------------------------------------------------------------ description
    def extra_repr(self) -> str:
        return ""

    def describe(self) -> str:
        """One-line description (for error messages): ``Dense(20 -> 64)``."""
        if self._modules and not self.extra_repr():
            return f"{type(self).__name__}(...)"
        return f"{type(self).__name__}({self.extra_repr()})"

    def __repr__(self):
        extra = self.extra_repr()
        kids = list(self.named_children())
        if not kids:
            return f"{type(self).__name__}({extra})"
        lines = [extra] if extra else []
        for name, child in kids:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def count_params(self) -> int:
        """Keras' ``count_params()``: every scalar of the weights, trainable and not (frozen
        parameters and running statistics, as ``summary()``'s "Total params")."""
        return sum(_count(self))

    def summary_layers(self, input_shape: Optional[tuple]) -> List[Tuple[str, "Module", Optional[tuple]]]:
        """Rows of ``summary()``: (name, module, output shape or None) for each child, or for
        this module itself when it has none."""
        kids = list(self.named_children())
        if not kids:
            return [("", self, self.output_shape(input_shape))]
        return [(name, child, None) for name, child in kids]

    def summary(self, input_shape=None, print_fn=print) -> str:
        """A Keras-like table of the layers: name (type), output shape, parameter count, and
        the totals (running statistics count as non-trainable, like Keras). ``input_shape``:
        the feature width or a shape; by default the first layer's width. Printed with
        ``print_fn`` (None to only return the string)."""
        text = _summary_table(self, input_shape)
        if print_fn is not None:
            print_fn(text)
        return text


class Model(TrainingMixin, Module):
    """A network that trains itself: a Module plus ``compile / fit / evaluate / predict``
    (``gradcore.training.TrainingMixin``; override ``train_step`` / ``test_step`` to change
    what one batch does). Subclass it for your own network::

        class Net(nn.Model):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Dense(20, 64, activation="relu"), nn.Dense(64, 2))
            def forward(self, x):
                return self.body(x)
    """


# ---------------------------------------------------------------------- hooks
class _ModuleHooks:
    """One module's hooks (ordered dicts id -> fn) and the call that runs them, in torch's
    order: pre-hooks, input gates (backward hooks), forward, forward hooks, output gates."""

    __slots__ = ("pre", "forward", "backward", "backward_pre")

    def __init__(self):
        self.pre, self.forward, self.backward, self.backward_pre = {}, {}, {}, {}

    def __reduce__(self):
        # (copy.deepcopy, pickle) a hook that copies as None (a GradientMonitor's: it belongs
        # to the original only) stays behind
        return (_module_hooks_from, tuple(getattr(self, kind) for kind in self.__slots__))

    def call(self, module: Module, args: tuple, kwargs: dict):
        for fn in list(self.pre.values()):
            new = fn(module, args)
            if new is not None:
                args = new if isinstance(new, tuple) else (new,)
        call = None
        if (self.backward or self.backward_pre) and is_grad_enabled():
            call = _BackwardHookCall(module, self.backward, self.backward_pre, args)
            args = call.gate_inputs(args)
        out = module.forward(*args, **kwargs)
        for fn in list(self.forward.values()):
            new = fn(module, args, out)
            if new is not None:
                out = new
        if call is not None:
            out = call.gate_outputs(out)
        return out


def _module_hooks_from(*dicts) -> "Optional[_ModuleHooks]":
    """A copied / loaded _ModuleHooks without the hooks that came as None (None when none is left)."""
    new = _ModuleHooks()
    for kind, hooks in zip(_ModuleHooks.__slots__, dicts):
        getattr(new, kind).update((k, fn) for k, fn in hooks.items() if fn is not None)
    return new if (new.pre or new.forward or new.backward or new.backward_pre) else None


class _PackedGrads:
    """Gradients of several gated tensors travelling together to their shared hub node
    (run_backward sums the gradients reaching one tensor with ``+``)."""

    __slots__ = ("grads",)

    def __init__(self, grads: dict):
        self.grads = grads

    def __add__(self, other: "_PackedGrads") -> "_PackedGrads":
        merged = dict(self.grads)
        for k, g in other.grads.items():
            merged[k] = g if k not in merged else merged[k] + g
        return _PackedGrads(merged)


def _gate(tensors: Dict[int, Tensor], on_grads, name: str) -> Dict[int, Tensor]:
    """Route ``tensors`` (position -> Tensor requiring grad) through one hub node: returns
    identity copies (same data and version counter) whose gradients, once all computed,
    reach ``on_grads(position -> gradient)``, which returns the gradients passed on."""
    order = list(tensors)

    def hub_backward(packed: _PackedGrads):
        passed = on_grads(packed.grads)
        return tuple(passed.get(k) for k in order)

    hub = make_result(np.empty(0), [tensors[k] for k in order], hub_backward, name, (), False)
    gated = {}
    for k, t in tensors.items():
        g_t = make_result(t.data, (hub,), lambda g, k=k: (_PackedGrads({k: g}),), name, (), False)
        g_t._vc = t._vc
        gated[k] = g_t
    return gated


class _BackwardHookCall:
    """The backward-hook bookkeeping of one module call: the output gate runs the pre-hooks
    on grad_output (which may replace it) and records it; the input gate calls the full
    hooks with grad_input once it is complete (which may replace it)."""

    def __init__(self, module: Module, hooks: dict, pre_hooks: dict, args: tuple):
        self.module, self.hooks, self.pre_hooks, self.n_args = module, hooks, pre_hooks, len(args)
        self.grad_output = None
        self.n_outputs = 0
        self.inputs_gated = False

    def gate_inputs(self, args: tuple) -> tuple:
        needing = {i: a for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad}
        if not needing or not self.hooks:
            return args
        self.inputs_gated = True
        gated = _gate(needing, self._on_input_grads, "BackwardHookFunction")
        return tuple(gated.get(i, a) for i, a in enumerate(args))

    def gate_outputs(self, out):
        outs = out if isinstance(out, tuple) else (out,)
        self.n_outputs = len(outs)
        needing = {i: o for i, o in enumerate(outs) if isinstance(o, Tensor) and o.requires_grad}
        if not needing:
            return out
        gated = _gate(needing, self._on_output_grads, "BackwardHookFunction")
        new = tuple(gated.get(i, o) for i, o in enumerate(outs))
        return new if isinstance(out, tuple) else new[0]

    def _on_output_grads(self, grads: dict) -> dict:
        grad_output = tuple(grads.get(i) for i in range(self.n_outputs))
        for fn in list(self.pre_hooks.values()):
            grad_output = self._replaced("backward pre-hook", "grad_output", grad_output, fn(self.module, grad_output))
        self.grad_output = grad_output
        if self.hooks and not self.inputs_gated:  # no input needs a gradient: torch calls the hook now
            self._run(tuple(None for _ in range(self.n_args)))
        return {i: grad_output[i] for i in grads}

    def _on_input_grads(self, grads: dict) -> dict:
        grad_input = self._run(tuple(grads.get(i) for i in range(self.n_args)))
        return {i: grad_input[i] for i in grads}

    def _run(self, grad_input: tuple) -> tuple:
        grad_output = self.grad_output if self.grad_output is not None else tuple(None for _ in range(self.n_outputs))
        for fn in list(self.hooks.values()):
            grad_input = self._replaced("backward hook", "grad_input", grad_input, fn(self.module, grad_input, grad_output))
        return grad_input

    def _replaced(self, kind: str, what: str, grads: tuple, new) -> tuple:
        """``grads`` after a hook returned ``new`` (None: unchanged; else a tuple of the same
        length whose arrays have the old shapes, cast to the old dtypes)."""
        if new is None:
            return grads
        new = tuple(new) if isinstance(new, (tuple, list)) else (new,)
        if len(new) != len(grads):
            raise RuntimeError(f"{kind} of {self.module.describe()}: returned {len(new)} gradients, "
                               f"expected {len(grads)} (one per {'positional input' if what == 'grad_input' else 'output'})")
        out = []
        for i, (old, g) in enumerate(zip(grads, new)):
            if old is None or g is None:  # no gradient flows here, or the hook dropped it
                out.append(None)
                continue
            g = np.asarray(g.data if isinstance(g, Tensor) else g, dtype=old.dtype)
            if g.shape != old.shape:
                raise RuntimeError(f"{kind} of {self.module.describe()}: {what}[{i}] has shape {g.shape}, "
                                   f"expected {old.shape}")
            out.append(g)
        return tuple(out)


# ---------------------------------------------------------------------- summary
def _normalise_shape(module: Module, input_shape) -> Optional[tuple]:
    if input_shape is None:
        width = module.input_width()
        return None if width is None else (None, width)
    if isinstance(input_shape, (int, np.integer)):
        return (None, int(input_shape))
    shape = tuple(None if s is None else int(s) for s in input_shape)
    if len(shape) == 1:
        return (None,) + shape
    return (None,) + shape[1:]


def _count(module: Module) -> Tuple[int, int]:
    """(trainable, non-trainable) element counts; buffers and frozen parameters are non-trainable."""
    trainable = frozen = 0
    for kind, _, value in module._named_state():
        if kind == "buffer" and not _is_float_array(value):
            continue  # counters (num_batches_tracked) are not weights
        n = int(np.size(value.data if isinstance(value, Tensor) else value))
        if kind == "param" and value.requires_grad:
            trainable += n
        else:
            frozen += n
    return trainable, frozen


def _format_shape(shape: Optional[tuple]) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _summary_table(module: Module, input_shape) -> str:
    shape = _normalise_shape(module, input_shape)
    rows = []
    for name, layer, out in module.summary_layers(shape):
        label = f"{name} ({type(layer).__name__})" if name else type(layer).__name__
        rows.append((label, _format_shape(out), f"{sum(_count(layer)):,}"))
    header = ("Layer (type)", "Output Shape", "Param #")
    widths = [max(len(r[i]) for r in rows + [header]) + 3 for i in range(3)]
    width = sum(widths)

    def line(cells):
        return "".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    trainable, frozen = _count(module)
    out = [f'Model: "{type(module).__name__}"', "_" * width, line(header), "=" * width]
    for i, r in enumerate(rows):
        out.append(line(r))
        out.append("_" * width if i < len(rows) - 1 else "=" * width)
    out += [f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {frozen:,}", "_" * width]
    return "\n".join(out)


__all__ = ["Module", "Model", "LoadResult", "check_float_dtype"]
