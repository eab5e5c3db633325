"""Networks to and from checkpoints: architecture as JSON, values as safetensors.

The architecture is the tree of constructor calls: every Module records the arguments it
was built with (``Module._init_args``), and ``to_config`` writes them out recursively with
each class's qualified name (``"gradcore.nn.layers.Dense"``). Loading rebuilds only
gradcore's own layer classes by that name; a user's class (even one called ``Dense``) is
rebuilt only when passed explicitly, ``gradcore.load(path, custom_objects={"MyBlock":
MyBlock})``, as in Keras. Parameters, buffers and optimizer state travel as tensors in the
same file; nothing is pickled.

A checkpoint is validated completely before anything is built or written: format, class
names, nesting depth, a lower bound of the architecture's size (the projections Residual
blocks create included) against the values the file holds, tensor dtypes against the
architecture's, and the optimizer state (finite moments, non-negative second moments and
step counts). An optimizer over part of the network records the names of its parameters. Then the architecture is built
with the initializers switched off (``nn.init.skip_initialization``: no random draws, no
time spent on values about to be overwritten), its names / shapes / dtypes compared with
the file, and only then are values copied in.

Format history: "gradcore-1" (before issue 6) recorded bare class names; those files
still load, each bare name standing for gradcore's built-in class of that name, and Dense
weights saved as (in, out) are transposed when Dense now stores (out, in).
"""
from __future__ import annotations

import inspect
import json
import math
import sys
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from .optim._state import check_state_values, leaves as _leaves
from .safetensors import CheckpointError, load_file, save_file

FORMAT = "gradcore-2"
_READABLE_FORMATS = ("gradcore-1", FORMAT)
_OPT_PREFIX = "optimizer/"
# Deepest JSON nesting accepted in an architecture or optimizer tree (each module level
# takes about three: its dict, its argument list, the wrapper of the child module).
MAX_DEPTH = 200

# ---------------------------------------------------------------------- class names
def qualified_name(cls: type) -> str:
    """``module.qualname`` of a class: what a checkpoint records for a layer."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolves_to(cls: type) -> bool:
    """True when ``cls`` is reachable under its qualified name (not a local or replaced class)."""
    obj = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def builtin_classes() -> Dict[str, type]:
    """qualified name -> class for gradcore's own Module subclasses (the ones load rebuilds
    without being told)."""
    from .nn import Module

    found, stack = {}, [Module]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] == "gradcore" and _resolves_to(cls):
            found[qualified_name(cls)] = cls
    return found


def _resolve_class(name: Any, custom_objects: Mapping[str, Any], builtins: Dict[str, type], legacy: bool) -> type:
    """The class a checkpoint's ``name`` stands for, or CheckpointError.

    Order: an exact entry of ``custom_objects``; gradcore's built-in class of that qualified
    name; the class's short name in ``custom_objects`` (Keras' convention). In a gradcore-1
    file a bare name means the built-in class of that name.
    """
    from .nn import Module

    if not isinstance(name, str) or not name:
        raise CheckpointError(f"malformed layer class {name!r} in the architecture")
    short = name.rsplit(".", 1)[-1]
    if name in custom_objects:
        cls = custom_objects[name]
    elif name in builtins:
        cls = builtins[name]
    elif short in custom_objects:
        cls = custom_objects[short]
    elif legacy and "." not in name and any(q.rsplit(".", 1)[-1] == name for q in builtins):
        cls = next(c for q, c in sorted(builtins.items()) if q.rsplit(".", 1)[-1] == name)
    else:
        raise CheckpointError(
            f"unknown layer class {name!r} in the checkpoint: only gradcore's own layers are rebuilt by name; "
            f"for your own class pass it explicitly, gradcore.load(path, custom_objects={{{short!r}: {short}}})")
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise CheckpointError(f"custom_objects[{short!r}] must be a gradcore.nn.Module subclass, got {cls!r}")
    return cls


# ---------------------------------------------------------------------- architecture
def _encode(value: Any) -> Any:
    from .nn import Module
    from .nn.init import Initializer

    if isinstance(value, Module):
        return {"__module__": to_config(value)}
    if isinstance(value, Initializer):
        return {"__initializer__": value.get_config()}
    if isinstance(value, (np.dtype, type)) and np.dtype(value).kind == "f":
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save an argument of type {type(value).__name__} ({value!r}) in an architecture")


def _decode(value: Any, resolve) -> Any:
    from .nn import init

    if isinstance(value, list):
        return [_decode(v, resolve) for v in value]
    if isinstance(value, dict):
        if "__module__" in value:
            return _build(value["__module__"], resolve)
        if "__initializer__" in value:
            return init.from_config(value["__initializer__"])
        if "__dtype__" in value:
            return np.dtype(value["__dtype__"])
        if "__tuple__" in value:
            return tuple(_decode(v, resolve) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_decode(k, resolve): _decode(v, resolve) for k, v in value["__dict__"]}
        raise CheckpointError(f"unknown entry in architecture: {sorted(value)}")
    return value


def to_config(module) -> Dict[str, Any]:
    """{"class": qualified name, "args": [...], "kwargs": {...}, "dtype"} describing how to
    rebuild ``module``."""
    args, kwargs = getattr(module, "_init_args", ((), {}))
    return {"class": qualified_name(type(module)), "args": [_encode(a) for a in args],
            "kwargs": {k: _encode(v) for k, v in kwargs.items()},
            "dtype": np.dtype(module.dtype).name if getattr(module, "dtype", None) is not None else None}


def _build(config: Any, resolve):
    if not isinstance(config, dict):
        raise CheckpointError(f"malformed module entry in the architecture: {type(config).__name__}")
    cls = resolve(config.get("class"))
    args, kwargs = config.get("args", []), config.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise CheckpointError(f"malformed arguments for {config.get('class')!r} in the architecture")
    module = cls(*[_decode(a, resolve) for a in args], **{k: _decode(v, resolve) for k, v in kwargs.items()})
    dtype = config.get("dtype")
    if dtype and getattr(module, "dtype", None) is not None and np.dtype(module.dtype) != np.dtype(dtype):
        module.astype(np.dtype(dtype))
    return module


def from_config(config: Dict[str, Any], custom_objects: Optional[Mapping[str, Any]] = None):
    """Rebuild a module from ``to_config``'s output (parameters freshly initialised).

    Class names are resolved as ``gradcore.load`` does (built-ins, then ``custom_objects``);
    unknown classes and nesting deeper than ``MAX_DEPTH`` raise CheckpointError.
    """
    _check_depth(config, "architecture")
    builtins, custom = builtin_classes(), dict(custom_objects or {})
    return _build(config, lambda name: _resolve_class(name, custom, builtins, legacy=False))


def _check_depth(tree: Any, what: str, limit: int = MAX_DEPTH) -> None:
    """CheckpointError when ``tree`` (parsed JSON) nests deeper than ``limit`` (iterative,
    so a hostile file cannot exhaust the stack here)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise CheckpointError(f"the {what} nests deeper than {limit} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _module_configs(config: Any) -> Iterator[Dict[str, Any]]:
    """Every module entry of an architecture tree (the root and all nested ones)."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class" in node and "args" in node:
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _plain_arg(value: Any) -> Any:
    """A JSON argument with tuples restored and nested entries (modules...) left opaque."""
    if isinstance(value, list):
        return [_plain_arg(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value and isinstance(value["__tuple__"], list):
            return tuple(_plain_arg(v) for v in value["__tuple__"])
        return None
    return value


def _count(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _own_sizes() -> Dict[type, Any]:
    """Built-in layer -> function(bound arguments) giving the number of values (parameters
    and buffers) it will hold at least, from its constructor arguments alone."""
    from . import nn

    def dense(a):
        n_in, n_out = _count(a.get("in_features")), _count(a.get("out_features"))
        if n_in is None or n_out is None:
            return 0
        has_bias = a.get("use_bias", a.get("bias", True))  # Dense's use_bias, Linear's (torch's) bias
        return n_in * n_out + (n_out if has_bias else 0)

    def batch_norm(a):
        return 4 * (_count(a.get("features", a.get("num_features"))) or 0)  # weight, bias, running mean and variance

    def layer_norm(a):
        shape = a.get("normalized_shape")
        dims = [shape] if _count(shape) is not None else list(shape) if isinstance(shape, (list, tuple)) else []
        if not dims or any(_count(d) is None for d in dims):
            return 0
        return 2 * math.prod(dims) if a.get("elementwise_affine", True) else 0

    def prelu(a):
        return _count(a.get("num_parameters", 1)) or 0

    return {nn.Dense: dense, nn.BatchNorm: batch_norm, nn.LayerNorm: layer_norm, nn.PReLU: prelu}


_SAME = "same"  # a layer whose output has its input's width


def _bound(cls: type, entry: Dict[str, Any], plain: bool = True) -> Optional[Dict[str, Any]]:
    """The constructor arguments of a module entry by parameter name (None when they do not
    bind: the constructor itself will say what is wrong)."""
    conv = _plain_arg if plain else (lambda v: v)
    try:
        return inspect.signature(cls).bind_partial(
            *[conv(a) for a in entry.get("args", [])],
            **{k: conv(v) for k, v in entry.get("kwargs", {}).items()}).arguments
    except (TypeError, ValueError):
        return None


def _widths(value: Any, resolve, depth: int = 0) -> Optional[Tuple[Optional[int], Any]]:
    """(input width or None, output width or _SAME) of an encoded module argument (a module
    entry, or a list of them: a Sequential), as the built module's ``input_width()`` and
    ``output_shape`` will give them; None when any part is not one of gradcore's layers
    whose widths follow from its arguments (the caller then counts nothing)."""
    from . import nn
    from .nn.layers import _Elementwise

    if depth > MAX_DEPTH:
        return None
    if isinstance(value, list):
        return _sequence_widths([_widths(v, resolve, depth + 1) for v in value])
    if not isinstance(value, dict) or not isinstance(value.get("__module__"), dict):
        return None
    entry = value["__module__"]
    try:
        cls = resolve(entry.get("class"))
    except CheckpointError:
        return None
    if not cls.__module__.startswith("gradcore."):
        return None
    if cls is nn.Sequential:
        args = entry.get("args", [])
        layers = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        return _sequence_widths([_widths(v, resolve, depth + 1) for v in layers])
    if cls is nn.Residual:
        a = _bound(cls, entry, plain=False)
        return None if a is None or "block" not in a else _widths(a["block"], resolve, depth + 1)
    a = _bound(cls, entry)
    if a is None:
        return None
    if issubclass(cls, nn.Dense):
        n_in, n_out = _count(a.get("in_features")), _count(a.get("out_features"))
        return None if n_in is None or n_out is None else (n_in, n_out)
    if issubclass(cls, (_Elementwise, nn.Dropout)):
        return None, _SAME
    if issubclass(cls, nn.BatchNorm):
        n = _count(a.get("features", a.get("num_features")))
        return None if n is None else (n, _SAME)
    if issubclass(cls, nn.PReLU):
        n = _count(a.get("num_parameters", 1))
        return None if n is None else ((n if n > 1 else None), _SAME)
    if issubclass(cls, nn.LayerNorm):
        shape = a.get("normalized_shape")
        last = shape if _count(shape) is not None else shape[-1] if isinstance(shape, (list, tuple)) and shape else None
        return None if _count(last) is None else (last, _SAME)
    return None


def _sequence_widths(parts: list) -> Optional[Tuple[Optional[int], Any]]:
    """Sequential's widths from its layers': the input width of the first layer that has
    one, looking no further than the first layer that changes the width; the output width
    of the last layer that sets one."""
    if any(p is None for p in parts):
        return None
    width_in = None
    for n_in, out in parts:
        if n_in is not None:
            width_in = n_in
            break
        if out is not _SAME:
            break
    width_out = _SAME
    for _, out in parts:
        if out is not _SAME:
            width_out = out
    return width_in, width_out


def _projection_size(entry: Dict[str, Any], resolve) -> int:
    """Values of the bias-free Dense(in, out) projection a Residual entry without one will
    create when its block changes the width (0 when it will not, or cannot be told)."""
    a = _bound(resolve(entry.get("class")), entry, plain=False)
    if a is None or a.get("projection") is not None or "block" not in a:
        return 0
    widths = _widths(a["block"], resolve)
    if widths is None:
        return 0
    width_in, width_out = widths
    if width_in is None or width_out is _SAME or width_out == width_in:
        return 0
    return width_in * width_out


def minimum_size(config: Dict[str, Any], resolve) -> int:
    """A lower bound of the values (parameter and buffer elements) the architecture holds
    (a Residual's own projection included), computed from the constructor arguments
    without building anything (exact Python integers, so absurd or overflowing sizes show
    up as such)."""
    from .nn import Residual

    sizes = _own_sizes()
    total = 0
    for entry in _module_configs(config):
        cls = resolve(entry.get("class"))
        if cls is Residual:  # the projection it makes itself is in no entry of the file
            total += _projection_size(entry, resolve)
        size_of = next((fn for base, fn in sizes.items() if issubclass(cls, base)), None)
        if size_of is None:
            continue
        try:
            bound = inspect.signature(cls).bind_partial(
                *[_plain_arg(a) for a in entry.get("args", [])],
                **{k: _plain_arg(v) for k, v in entry.get("kwargs", {}).items()})
        except TypeError:
            continue  # the constructor itself will say what is wrong
        total += size_of(bound.arguments)
    return total


# ---------------------------------------------------------------------- optimizer state
def _flatten_state(state: Any, prefix: str, tensors: Dict[str, np.ndarray]) -> Any:
    """Arrays go to ``tensors`` under their path; everything else stays in the JSON tree.
    A dict with keys other than strings (torch-style ``{0: {...}}`` per parameter) is kept
    as ``{"__items__": [[key, value], ...]}`` so its keys come back with their type."""
    if isinstance(state, dict):
        if all(isinstance(k, str) for k in state):
            return {k: _flatten_state(v, f"{prefix}{k}/", tensors) for k, v in state.items()}
        return {"__items__": [[_flatten_state(k, "", {}), _flatten_state(v, f"{prefix}{k}/", tensors)]
                              for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return [_flatten_state(v, f"{prefix}{i}/", tensors) for i, v in enumerate(state)]
    if isinstance(state, np.ndarray):
        key = prefix.rstrip("/")
        tensors[key] = state
        return {"__tensor__": key}
    if isinstance(state, (np.integer, np.floating, np.bool_)):
        return state.item()
    return state


def _unflatten_state(tree: Any, tensors: Dict[str, np.ndarray]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            key = tree["__tensor__"]
            if not isinstance(key, str) or key not in tensors:
                raise CheckpointError(f"optimizer state tensor {key!r} is missing from the checkpoint")
            return tensors[key]
        if "__items__" in tree:
            items = tree["__items__"]
            if not isinstance(items, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in items):
                raise CheckpointError("malformed optimizer state (__items__)")
            try:
                return {k: _unflatten_state(v, tensors) for k, v in items}
            except TypeError:  # a list as a key
                raise CheckpointError("malformed optimizer state (unhashable key)") from None
        return {k: _unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unflatten_state(v, tensors) for v in tree]
    return tree


def check_optimizer_state(state: Any) -> None:
    """CheckpointError unless every value of an optimizer ``state_dict()`` tree is sane (see
    ``gradcore.optim._state.check_state_values``, which ``Optimizer.load_state_dict`` uses too)."""
    check_state_values(state, CheckpointError)


def _check_like(saved: Any, fresh: Any) -> None:
    """Tensors the fresh optimizer has at a path must come with the same shape and dtype."""
    have = dict(_leaves(saved))
    for path, value in _leaves(fresh):
        if isinstance(value, np.ndarray) and path in have:
            other = have[path]
            if not isinstance(other, np.ndarray) or other.shape != value.shape or other.dtype != value.dtype:
                got = f"{other.shape} {other.dtype}" if isinstance(other, np.ndarray) else type(other).__name__
                raise CheckpointError(f"optimizer state {'/'.join(path)!r}: expected {value.shape} {value.dtype}, "
                                      f"the file holds {got}")


# ---------------------------------------------------------------------- model state
def check_model_state(tensors: Mapping[str, np.ndarray], dtype: Optional[np.dtype]) -> None:
    """CheckpointError for a floating tensor not of the architecture's ``dtype``, a
    ``running_var`` that is not a finite number >= 0 (negative, NaN or Inf would make every
    evaluation-mode output NaN or 0) or a negative ``num_batches_tracked``."""
    for name, arr in tensors.items():
        if dtype is not None and arr.dtype.kind == "f" and arr.dtype != dtype:
            raise CheckpointError(f"tensor {name!r} is {arr.dtype} but the architecture is {dtype}; "
                                  "convert the network before saving instead of loading across dtypes")
        # "not (x >= 0)" rather than "x < 0": NaN compares False both ways
        if name.endswith("running_var") and not (np.isfinite(arr) & (arr >= 0)).all():
            bad = arr[~(np.isfinite(arr) & (arr >= 0))].reshape(-1)[0]
            what = "a negative" if bad < 0 and np.isfinite(bad) else "a non-finite"
            raise CheckpointError(f"tensor {name!r} holds {what} variance ({bad}); expected finite values >= 0")
        if name.endswith("num_batches_tracked") and not (arr >= 0).all():
            raise CheckpointError(f"tensor {name!r} holds a negative count ({np.min(arr)}) or a non-number")


def _match_network(net, tensors: Mapping[str, np.ndarray], path: str) -> None:
    """CheckpointError unless ``tensors`` has exactly ``net``'s names, shapes and dtypes."""
    from .tensor import Tensor

    targets = {name: (value.data if isinstance(value, Tensor) else value) for _, name, value in net._named_state()}
    missing = [k for k in targets if k not in tensors]
    unexpected = [k for k in tensors if k not in targets]
    if missing or unexpected:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {unexpected}"] if unexpected else [])
        raise CheckpointError(f"{path}: the checkpoint does not fit the network: {' and '.join(parts)}")
    for name, target in targets.items():
        arr = tensors[name]
        if arr.shape != target.shape:
            raise CheckpointError(f"{path}: tensor {name!r}: expected shape {target.shape}, got {arr.shape}")
        if arr.dtype != target.dtype:
            raise CheckpointError(f"{path}: tensor {name!r}: expected dtype {target.dtype}, got {arr.dtype}")


# ---------------------------------------------------------------------- compile configuration
def _plain(value: Any, what: str) -> Any:
    """``value`` as plain JSON data (NumPy scalars unwrapped), or TypeError naming ``what``."""
    def default(o):
        if isinstance(o, (np.integer, np.floating, np.bool_)):
            return o.item()
        if isinstance(o, (tuple, np.ndarray)):  # e.g. a loss's per-class weights
            return o.tolist() if isinstance(o, np.ndarray) else list(o)
        raise TypeError(f"save: the {what} holds a value of type {type(o).__name__} ({o!r}) that cannot be "
                        "written to a checkpoint")
    return json.loads(json.dumps(value, default=default, allow_nan=True))


def optimizer_params(net, opt) -> Optional[list]:
    """The names (``net.named_parameters()``) of the parameters ``opt`` holds, in its
    ``params`` order; None when that is every parameter of ``net`` in order (what ``load``
    builds without being told). ValueError, before anything is written, when the optimizer
    holds a tensor that is not a parameter of ``net``, or when its state is laid out over a
    flat buffer that is not ``net``'s own (a slice ``net[:2]`` of a larger network shares
    the parent's buffer): a file of either could not be loaded."""
    name_of = {id(p): n for n, p in net.named_parameters()}
    held = list(getattr(opt, "params", None) or [])
    outside = [p for p in held if id(p) not in name_of]
    if outside:
        raise ValueError(f"save: the optimizer holds {len(outside)} tensor(s) that are not parameters of this "
                         f"{type(net).__name__} (the first of shape {tuple(outside[0].shape)}); a checkpoint of it "
                         "could not be loaded. Save with include_optimizer=False, or compile the network with an "
                         "optimizer over its own parameters")
    for flat in getattr(opt, "flat_buffers", None) or []:
        if any(id(p) not in name_of for p in flat.params):
            raise ValueError(
                f"save: this {type(net).__name__}'s parameters live in the flat buffer of a larger network (e.g. a "
                "slice net[:2], which shares its parent's buffer), and the optimizer's state is laid out over that "
                "buffer, so a checkpoint of it could not be loaded into the network gradcore.load rebuilds. Save "
                "the whole network, train a copy of the slice (copy.deepcopy(net[:2]) owns its own buffer), or "
                "save with include_optimizer=False")
    return _held_names(net, opt)  # (every held tensor is named: nothing left out)


def compile_config(net) -> Optional[Dict[str, Any]]:
    """What ``compile`` was given (``net.compile_config``) as JSON data, with the optimizer
    as {"class", "config"}; None for a network that was never compiled. A loss of the
    user's own (a plain function) is recorded by name, to be found again in
    ``custom_objects`` when loading."""
    given = getattr(net, "compile_config", None)
    if given is None:
        return None
    loss = given.get("loss")
    if loss is None:
        fn = getattr(net, "loss", None)
        loss = {"name": getattr(fn, "__name__", type(fn).__name__)}
    config = {"loss": loss, "metrics": list(given.get("metrics") or [])}
    opt = getattr(net, "optimizer", None)
    if opt is not None:
        config["optimizer"] = {"class": type(opt).__name__, "config": opt.get_config()}
        names = _held_names(net, opt)
        if names is not None:
            config["optimizer"]["params"] = names
    return _plain(config, "compile configuration")


def _held_names(net, opt) -> Optional[list]:
    """The names of the held parameters that are the network's, in the optimizer's order,
    None for all of them in order (the compile entry, which carries no state, uses it as
    it is; ``optimizer_params`` after its refusals)."""
    named = list(net.named_parameters())
    name_of = {id(p): n for n, p in named}
    names = [name_of[id(p)] for p in getattr(opt, "params", None) or [] if id(p) in name_of]
    return None if names == [n for n, _ in named] else names


def _rebuild_loss(config: Any, custom_objects: Mapping[str, Any]):
    """The loss of a saved compile configuration: ``custom_objects[name]`` (a function, or a
    Loss class built with the saved arguments) or ``losses.get(config)``."""
    from . import losses

    name = (config.get("class_name") or config.get("name")) if isinstance(config, dict) else config
    if isinstance(name, str) and name in custom_objects:
        obj = custom_objects[name]
        return obj(**(config.get("config") or {})) if isinstance(obj, type) else obj
    return losses.get(config)


def _compile_arguments(config: Dict[str, Any], custom_objects: Mapping[str, Any], path: str):
    """(loss, metrics) for ``net.compile`` from a saved compile configuration."""
    loss_config = config.get("loss")
    try:
        loss = _rebuild_loss(loss_config, custom_objects)
        metrics = [custom_objects.get(m, m) if isinstance(m, str) else m for m in config.get("metrics") or []]
        from . import metrics as _metrics

        for m in metrics:
            _metrics.get(m)  # unknown names fail here, before anything is built
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: cannot restore the compile configuration (loss {loss_config!r}, metrics "
            f"{config.get('metrics')}): {exc}. Pass your own loss / metrics as custom_objects={{name: fn}}, "
            "or load with compile=False and compile again") from None
    return loss, metrics


# ---------------------------------------------------------------------- save / load
def save(net, path: str, include_optimizer: bool = True) -> None:
    """Write ``net``'s architecture, parameters, buffers, compile configuration (loss,
    metrics) and (optionally) optimizer state.

    ``.safetensors`` (or any other suffix) uses the safetensors format; ``.npz`` a NumPy
    archive (loaded with allow_pickle=False). Everything is encoded before the file is
    opened, and the file is written next to the target and renamed over it, so a failed or
    interrupted save leaves the previous checkpoint intact.
    """
    architecture = json.dumps(to_config(net))
    _check_depth(json.loads(architecture), "architecture")
    tensors = {name: np.asarray(value) for name, value in net.state_dict().items()}
    meta = {"format": FORMAT, "architecture": architecture}
    compiled = compile_config(net)
    if compiled is not None:
        meta["compile"] = json.dumps(compiled)
    opt = getattr(net, "optimizer", None)
    if include_optimizer and opt is not None:
        held = optimizer_params(net, opt)
        opt_tensors: Dict[str, np.ndarray] = {}
        tree = _flatten_state(opt.state_dict(), _OPT_PREFIX, opt_tensors)
        tensors.update(opt_tensors)
        entry = {"class": type(opt).__name__, "config": opt.get_config(), "state": tree}
        if held is not None:
            entry["params"] = held  # an optimizer over part of the network (a head, all but frozen layers)
        meta["optimizer"] = json.dumps(_plain(entry, "optimizer state"))
    if str(path).endswith(".npz"):
        _save_npz(tensors, meta, str(path))
    else:
        save_file(tensors, str(path), meta)


def _save_npz(tensors: Dict[str, np.ndarray], meta: Dict[str, str], path: str) -> None:
    import io
    import os
    import tempfile

    buf = io.BytesIO()
    np.savez(buf, __metadata__=np.array(json.dumps(meta)), **{f"t:{k}": v for k, v in tensors.items()})
    fd, tmp = tempfile.mkstemp(prefix=".gradcore-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__metadata__"]))
            tensors = {k[2:]: z[k] for k in z.files if k.startswith("t:")}
    except Exception as exc:  # noqa: BLE001 - see below
        # zip members carry a CRC-32, so flipped data bytes surface here as "Bad CRC-32"; a
        # flip in the zip or .npy headers can raise nearly anything from zipfile, zlib,
        # tokenize (npy header parsing), NotImplementedError (an unknown compression
        # method), ValueError, MemoryError ... all of them mean an unreadable file.
        raise CheckpointError(f"{path}: not a readable gradcore .npz checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: malformed metadata in the .npz checkpoint")
    return tensors, meta


def read_checkpoint(path: str):
    """(tensors, metadata) of a checkpoint, validated for format."""
    if str(path).endswith(".npz"):
        tensors, meta = _load_npz(str(path))
    else:  # a file gradcore wrote in the current format must carry its checksum
        tensors, meta = load_file(str(path), signed_formats=(FORMAT,))
    if meta.get("format") not in _READABLE_FORMATS or "architecture" not in meta:
        raise CheckpointError(f"{path}: not a gradcore checkpoint (format {meta.get('format')!r}; "
                              f"this version reads {', '.join(_READABLE_FORMATS)})")
    return tensors, meta


def _json_entry(meta: Mapping[str, str], key: str, path: str) -> Any:
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: malformed {key} entry ({str(exc)[:200]})") from None
    _check_depth(value, f"{key} entry")
    return value


def _split(tensors: Mapping[str, np.ndarray]):
    model = {k: v for k, v in tensors.items() if not k.startswith(_OPT_PREFIX)}
    return model, {k: v for k, v in tensors.items() if k.startswith(_OPT_PREFIX)}


def _dense_transposes(net, model: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], bool]:
    """Bring a gradcore-1 file's values to today's layout: its Dense weights were stored
    (in, out), so transpose them for a Dense that now stores (out, in) (square ones too: the
    format, not the shape, says the layout); BatchNorm had no ``num_batches_tracked``, so it
    starts at 0 (as torch does for old state dicts). Returns the values and whether any
    weight was transposed."""
    from .nn import BatchNorm, Dense

    out, changed = dict(model), False
    for prefix, m in net.named_modules():
        key = (lambda name: f"{prefix}.{name}" if prefix else name)
        if isinstance(m, Dense):
            arr = out.get(key("weight"))
            if arr is not None and arr.shape == (m.in_features, m.out_features) \
                    and tuple(m.weight.shape) == (m.out_features, m.in_features):
                out[key("weight")], changed = np.ascontiguousarray(arr.T), True
        elif isinstance(m, BatchNorm) and getattr(m, "num_batches_tracked", None) is not None:
            out.setdefault(key("num_batches_tracked"), np.zeros((), np.int64))
    return out, changed


def load(path: str, compile_optimizer: bool = True, custom_objects: Optional[Mapping[str, Any]] = None,
         compile: bool = True):
    """Rebuild the network saved at ``path`` with its values, its optimizer (state
    included, when saved and ``compile_optimizer``) and its compile configuration (loss and
    metrics, when ``compile``), ready to ``fit`` on from where it stopped.

    ``custom_objects``: name -> your own Module subclass, loss or metric (the short name,
    e.g. ``{"MyBlock": MyBlock}``, or the qualified name the file records). Any problem
    with the file raises CheckpointError before the network is built.
    """
    from . import optim
    from .nn import init

    custom = dict(custom_objects or {})
    tensors, meta = read_checkpoint(path)
    legacy = meta["format"] == "gradcore-1"
    architecture = _json_entry(meta, "architecture", path)
    if not isinstance(architecture, dict):
        raise CheckpointError(f"{path}: malformed architecture entry")
    builtins = builtin_classes()

    def resolve(name):
        return _resolve_class(name, custom, builtins, legacy)

    # ---- validation of everything the file holds; nothing is built yet
    model, _ = _split(tensors)
    try:
        dtype = None if architecture.get("dtype") is None else np.dtype(architecture["dtype"])
    except TypeError:
        raise CheckpointError(f"{path}: malformed architecture dtype {architecture.get('dtype')!r}") from None
    if resolve(architecture.get("class")) not in builtins.values():
        dtype = None  # a user's outer module need not hold one dtype; compared exactly after building
    check_model_state(model, dtype)
    held = sum(int(v.size) for v in model.values())
    needed = minimum_size(architecture, resolve)
    if needed > held:
        raise CheckpointError(f"{path}: the architecture needs at least {needed} values but the file holds {held}; "
                              "refusing to build it")
    saved_opt = None
    if compile_optimizer and "optimizer" in meta:
        saved_opt = _json_entry(meta, "optimizer", path)
        if not isinstance(saved_opt, dict) or not isinstance(saved_opt.get("config"), dict):
            raise CheckpointError(f"{path}: malformed optimizer entry")
        saved_opt["state"] = _unflatten_state(saved_opt.get("state"), tensors)
        check_optimizer_state(saved_opt["state"])
    compiled = _json_entry(meta, "compile", path) if compile and "compile" in meta else None
    if compiled is not None and not isinstance(compiled, dict):
        raise CheckpointError(f"{path}: malformed compile entry")
    compile_args = _compile_arguments(compiled, custom, path) if compiled is not None else None
    for entry in (saved_opt, (compiled or {}).get("optimizer")):
        name = entry.get("class") if isinstance(entry, dict) else None
        if entry is not None and (not isinstance(name, str) or name.lower() not in optim.OPTIMIZERS):
            raise CheckpointError(f"{path}: unknown optimizer {name!r} in the checkpoint "
                                  f"(known: {', '.join(sorted(optim.OPTIMIZERS))})")

    # ---- build (no random draws), compare with the file, then copy the values in
    try:
        with init.skip_initialization():
            net = _build(architecture, resolve)
        model, transposed = _dense_transposes(net, model) if legacy else (model, False)
        _match_network(net, model, path)
        opt = None
        if saved_opt is not None:
            opt = optim.from_config(saved_opt.get("class"), saved_opt["config"], _saved_params(net, saved_opt, path))
            _check_like(saved_opt["state"], opt.state_dict())
            if transposed:
                from ._warnings import warn

                warn(f"{path}: a gradcore-1 checkpoint stores Dense weights as (in, out); they were transposed, "
                     "but the optimizer's moments follow the old layout and are not restored (it starts fresh)")
            else:
                opt.load_state_dict(saved_opt["state"])
        elif compiled is not None and isinstance(compiled.get("optimizer"), dict):
            saved = compiled["optimizer"]  # saved without its state: a fresh one, as compiled
            opt = optim.from_config(saved.get("class"), saved.get("config", {}), _saved_params(net, saved, path))
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the network ({type(exc).__name__}: {exc})") from None
    net.load_state_dict(model, strict=True)
    if compile_args is not None:
        net.compile(opt, *compile_args)
    elif opt is not None:
        net.optimizer = opt
    return net


def _saved_params(net, entry: Dict[str, Any], path: str) -> list:
    """The parameters of the rebuilt ``net`` a saved optimizer entry holds: those its
    ``params`` names (an optimizer over part of the network), else every parameter."""
    names = entry.get("params")
    if names is None:
        return net.parameters()
    by_name = dict(net.named_parameters())
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != len(names):
        raise CheckpointError(f"{path}: malformed optimizer parameter list {str(names)[:200]}")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise CheckpointError(f"{path}: the optimizer holds parameters {unknown[:5]} the network does not have")
    return [by_name[n] for n in names]


def load_weights(net, path: str) -> None:
    """Load parameters and buffers from ``path`` into an existing ``net``: names, shapes and
    dtypes must match exactly, checked before anything is written."""
    tensors, meta = read_checkpoint(path)
    model, _ = _split(tensors)
    check_model_state(model, None)
    if meta["format"] == "gradcore-1":
        model, _ = _dense_transposes(net, model)
    _match_network(net, model, path)
    net.load_state_dict(model, strict=True)
