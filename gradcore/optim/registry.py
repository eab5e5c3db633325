"""Optimizers by name (``net.compile("adam")``) and from saved configs (checkpoints)."""
from __future__ import annotations

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def _lookup(name: str, op: str):
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(f"{op}: unknown optimizer {name!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name.lower()]


def get(identifier, params=None) -> Optimizer:
    """An optimizer instance (returned as is) or a name ('adam', 'sgd', 'adamw', 'rmsprop',
    'adagrad', any case) built with its defaults over ``params``."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        return _lookup(identifier, "optim.get")(params)
    raise TypeError(f"optim.get: expected an Optimizer or a name, got {type(identifier).__name__}")


def from_config(name: str, config: dict, params=None) -> Optimizer:
    """Rebuild ``type(opt).__name__`` with ``opt.get_config()`` over ``params``."""
    return _lookup(name, "optim.from_config")(params, **config)
