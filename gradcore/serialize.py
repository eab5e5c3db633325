"""Networks to and from checkpoints: architecture as JSON, values as safetensors.

The architecture is the tree of constructor calls: every Module records the arguments it
was built with (``Module._init_args``), and ``to_config`` writes them out recursively, so
any layer, including a user's own subclass, round-trips as long as its arguments are
plain values, dtypes, initializers or other modules. Parameters, buffers and optimizer
state travel as tensors in the same file; nothing is pickled.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import numpy as np

from .safetensors import CheckpointError, load_file, save_file

# gradcore-2: Dense weights (out, in) like torch.nn.Linear. gradcore-1 files hold them
# (in, out); read as they are, a square one would load silently transposed, so they are refused.
FORMAT = "gradcore-2"
_OLD_LAYOUT_FORMATS = ("gradcore-1",)
_OPT_PREFIX = "optimizer/"


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


def _decode(value: Any) -> Any:
    from .nn import init

    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__module__" in value:
            return from_config(value["__module__"])
        if "__initializer__" in value:
            return init.from_config(value["__initializer__"])
        if "__dtype__" in value:
            return np.dtype(value["__dtype__"])
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_decode(k): _decode(v) for k, v in value["__dict__"]}
        raise CheckpointError(f"unknown entry in architecture: {sorted(value)}")
    return value


def to_config(module) -> Dict[str, Any]:
    """{"class": name, "args": [...], "kwargs": {...}} describing how to rebuild ``module``."""
    args, kwargs = getattr(module, "_init_args", ((), {}))
    return {"class": type(module).__name__, "args": [_encode(a) for a in args],
            "kwargs": {k: _encode(v) for k, v in kwargs.items()},
            "dtype": np.dtype(module.dtype).name if getattr(module, "dtype", None) is not None else None}


def _module_classes() -> Dict[str, type]:
    from .nn import Module

    found, stack = {}, [Module]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.__name__, cls)
        stack.extend(cls.__subclasses__())
    return found


def from_config(config: Dict[str, Any]):
    """Rebuild a module from ``to_config``'s output (parameters freshly initialised)."""
    classes = _module_classes()
    name = config.get("class")
    if name not in classes:
        raise CheckpointError(f"unknown layer class {name!r} in checkpoint (import the module that defines it)")
    module = classes[name](*[_decode(a) for a in config.get("args", [])],
                           **{k: _decode(v) for k, v in config.get("kwargs", {}).items()})
    if config.get("dtype") and getattr(module, "dtype", None) is not None and np.dtype(module.dtype) != np.dtype(config["dtype"]):
        module.astype(np.dtype(config["dtype"]))
    return module


# ---------------------------------------------------------------------- optimizer state
def _flatten_state(state: Dict[str, Any], prefix: str, tensors: Dict[str, np.ndarray]) -> Any:
    """Arrays go to ``tensors`` under their path; everything else stays in the JSON tree."""
    if isinstance(state, dict):
        return {str(k): _flatten_state(v, f"{prefix}{k}/", tensors) for k, v in state.items()}
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
            if key not in tensors:
                raise CheckpointError(f"optimizer state tensor {key!r} is missing from the checkpoint")
            return tensors[key]
        return {k: _unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unflatten_state(v, tensors) for v in tree]
    return tree


# ---------------------------------------------------------------------- save / load
def save(net, path: str, include_optimizer: bool = True) -> None:
    """Write ``net``'s architecture, parameters, buffers and (optionally) optimizer state.

    ``.safetensors`` (or any other suffix) uses the safetensors format; ``.npz`` a NumPy
    archive (loaded with allow_pickle=False). Either way the file is written next to the
    target and renamed over it, so the previous checkpoint survives a crash mid-save.
    """
    tensors = {name: np.asarray(value) for name, value in net.state_dict().items()}
    meta = {"format": FORMAT, "architecture": json.dumps(to_config(net))}
    opt = getattr(net, "optimizer", None)
    if include_optimizer and opt is not None:
        opt_tensors: Dict[str, np.ndarray] = {}
        tree = _flatten_state(opt.state_dict(), _OPT_PREFIX, opt_tensors)
        tensors.update(opt_tensors)
        meta["optimizer"] = json.dumps({"class": type(opt).__name__, "config": _plain(opt.get_config()),
                                        "state": tree})
    if str(path).endswith(".npz"):
        _save_npz(tensors, meta, str(path))
    else:
        save_file(tensors, str(path), meta)


def _plain(config: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(config, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


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
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__metadata__"]))
            tensors = {k[2:]: z[k] for k in z.files if k.startswith("t:")}
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable gradcore .npz checkpoint ({exc})") from None
    return tensors, meta


def read_checkpoint(path: str):
    """(tensors, metadata) of a checkpoint, validated for format."""
    tensors, meta = _load_npz(str(path)) if str(path).endswith(".npz") else load_file(str(path))
    if meta.get("format") in _OLD_LAYOUT_FORMATS:
        raise CheckpointError(f"{path}: written by an older gradcore (format {meta.get('format')!r}) that stored "
                              "Dense weights (in, out); this version stores them (out, in) like torch.nn.Linear. "
                              "Load its tensors with gradcore.safetensors.load_file, transpose each Dense "
                              "'.weight', and load_state_dict them into the rebuilt network")
    if meta.get("format") != FORMAT or "architecture" not in meta:
        raise CheckpointError(f"{path}: not a gradcore checkpoint (format {meta.get('format')!r})")
    return tensors, meta


def load(path: str, compile_optimizer: bool = True):
    """Rebuild the network saved at ``path`` with its values (and optimizer, if saved)."""
    tensors, meta = read_checkpoint(path)
    try:
        net = from_config(json.loads(meta["architecture"]))
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: cannot rebuild the architecture ({exc})") from None
    model_state = {k: v for k, v in tensors.items() if not k.startswith(_OPT_PREFIX)}
    net.load_state_dict(model_state, strict=True)
    if compile_optimizer and "optimizer" in meta:
        from . import optim

        saved = json.loads(meta["optimizer"])
        opt = optim.from_config(saved["class"], saved["config"], net.parameters())
        opt.load_state_dict(_unflatten_state(saved["state"], tensors))
        net.optimizer = opt
    return net


def load_weights(net, path: str) -> None:
    """Load parameters and buffers from ``path`` into an existing ``net`` (validated first)."""
    tensors, _ = read_checkpoint(path)
    net.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(_OPT_PREFIX)}, strict=True)
