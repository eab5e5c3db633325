"""Learning-rate schedules.

A schedule maps the step index ``t`` (0 for the first update, i.e. the number of updates
already applied) to a learning rate: ``schedule(t) -> float``. Pass one as an optimizer's
``lr`` and the optimizer evaluates it at every step; skipped (non-finite) steps do not
advance it. ``LinearWarmup`` composes a warmup with any schedule, and
``ReduceLROnPlateau`` scales any schedule down when a watched metric stops improving.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np

from ._checks import choice, integer, positive, real

__all__ = [
    "Schedule", "Constant", "ExponentialDecay", "InverseTimeDecay", "StepDecay", "CosineDecay", "LinearWarmup",
    "ReduceLROnPlateau", "as_schedule", "to_config", "from_config", "walk", "plateaus",
]


class Schedule:
    """Base class: subclasses implement ``__call__(t) -> lr``."""

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def with_warmup(self, warmup_steps: int, start_lr: float = 0.0) -> "LinearWarmup":
        """This schedule preceded by a linear warmup (see ``LinearWarmup``)."""
        return LinearWarmup(self, warmup_steps, start_lr)

    def get_config(self) -> dict:
        """Constructor arguments as plain values (``schedules.from_config`` rebuilds it)."""
        raise TypeError(f"{type(self).__name__} cannot be described by plain values")

    def children(self) -> list:
        """The schedules this one wraps (``base`` of LinearWarmup / ReduceLROnPlateau), else []."""
        base = getattr(self, "base", None)
        return [base] if isinstance(base, Schedule) else []

    def state_dict(self) -> dict:
        """Mutable state (empty for the closed-form schedules)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Function(Schedule):
    """Wraps a plain callable ``t -> lr``."""

    def __init__(self, fn: Callable[[int], float]):
        self.fn = fn

    def __call__(self, t: int) -> float:
        return float(self.fn(t))

    def get_config(self) -> dict:
        raise TypeError("a plain callable learning rate cannot be saved; use a gradcore.optim.schedules Schedule")


def as_schedule(lr: Union[float, Schedule, Callable[[int], float]], op: str = "schedule") -> Schedule:
    """A Schedule from a float (constant), a Schedule, or a callable ``t -> lr``."""
    if isinstance(lr, Schedule):
        return lr
    if callable(lr):
        return _Function(lr)
    return Constant(lr, op=op)


def _step(t) -> int:
    return integer("schedule", "t", t)


def _decay_steps(op: str, value) -> Union[int, float]:
    """Keras' decay_steps: a positive integer or float (an integer stays one)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return integer(op, "decay_steps", value, low=1)
    return positive(op, "decay_steps", value)


class Constant(Schedule):
    """lr at every step."""

    def __init__(self, lr: float, *, op: str = "Constant"):
        self.lr = real(op, "lr", lr, low=0.0)

    def __call__(self, t: int) -> float:
        _step(t)
        return self.lr

    def get_config(self) -> dict:
        return {"lr": self.lr}

    def __repr__(self):
        return f"Constant({self.lr})"


def _keras_name(op: str, name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{op}: name must be a string, got {type(name).__name__}")
    return name


class _KerasDecay(Schedule):
    """ExponentialDecay and InverseTimeDecay: Keras' arguments (initial_learning_rate,
    decay_steps, decay_rate, staircase, name), checked alike, and the progress
    t / decay_steps (floored with ``staircase``). ``_op``: the class's name in messages."""

    _op = ""
    _rate_low_open = False  # whether decay_rate must be > 0 (else >= 0)

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase, name):
        op = self._op
        self.initial_learning_rate = real(op, "initial_learning_rate", initial_learning_rate, low=0.0)
        self.decay_steps = _decay_steps(op, decay_steps)
        self.decay_rate = real(op, "decay_rate", decay_rate, low=0.0, low_open=self._rate_low_open)
        self.staircase = bool(staircase)
        self.name = _keras_name(op, name)

    def _progress(self, t) -> float:
        p = _step(t) / self.decay_steps
        return math.floor(p) if self.staircase else p

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}

    def __repr__(self):
        return (f"{self._op}({self.initial_learning_rate}, decay_steps={self.decay_steps}, "
                f"decay_rate={self.decay_rate}" + (", staircase=True)" if self.staircase else ")"))


class ExponentialDecay(_KerasDecay):
    """Keras' ``ExponentialDecay(initial_learning_rate, decay_steps, decay_rate,
    staircase=False)``: initial_learning_rate * decay_rate ** (t / decay_steps); with
    ``staircase`` the exponent is floored (t // decay_steps)."""

    _op = "ExponentialDecay"
    _rate_low_open = True

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False,
                 name: str = "ExponentialDecay"):
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, t: int) -> float:
        return self.initial_learning_rate * self.decay_rate ** self._progress(t)


class InverseTimeDecay(_KerasDecay):
    """Keras' ``InverseTimeDecay(initial_learning_rate, decay_steps, decay_rate,
    staircase=False)``: initial_learning_rate / (1 + decay_rate * t / decay_steps); with
    ``staircase`` the ratio t / decay_steps is floored."""

    _op = "InverseTimeDecay"

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False,
                 name: str = "InverseTimeDecay"):
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, t: int) -> float:
        return self.initial_learning_rate / (1.0 + self.decay_rate * self._progress(t))


class StepDecay(Schedule):
    """lr * gamma ** (t // step_size) (PyTorch's StepLR)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr = real("StepDecay", "lr", lr, low=0.0)
        self.step_size = integer("StepDecay", "step_size", step_size, low=1)
        self.gamma = real("StepDecay", "gamma", gamma, low=0.0)

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma ** (_step(t) // self.step_size)

    def get_config(self) -> dict:
        return {"lr": self.lr, "step_size": self.step_size, "gamma": self.gamma}

    def __repr__(self):
        return f"StepDecay({self.lr}, step_size={self.step_size}, gamma={self.gamma})"


class CosineDecay(Schedule):
    """Keras' ``CosineDecay(initial_learning_rate, decay_steps, alpha=0.0,
    warmup_target=None, warmup_steps=0)``.

    Without warmup: initial_learning_rate * ((1 - alpha) * (1 + cos(pi * t' / decay_steps))
    / 2 + alpha) with t' = min(t, decay_steps), so the rate ends at alpha *
    initial_learning_rate (``alpha`` is a fraction of the initial rate, not a rate).
    With ``warmup_target``: a linear ramp from initial_learning_rate to warmup_target over
    ``warmup_steps`` steps, then the same cosine from warmup_target over decay_steps
    (t' = min(t, warmup_steps + decay_steps) - warmup_steps), ending at alpha * warmup_target.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0,
                 name: str = "CosineDecay", warmup_target=None, warmup_steps: int = 0):
        op = "CosineDecay"
        self.initial_learning_rate = real(op, "initial_learning_rate", initial_learning_rate, low=0.0)
        self.decay_steps = _decay_steps(op, decay_steps)
        self.alpha = real(op, "alpha", alpha, low=0.0)
        self.name = _keras_name(op, name)
        self.warmup_target = None if warmup_target is None else real(op, "warmup_target", warmup_target, low=0.0)
        self.warmup_steps = integer(op, "warmup_steps", warmup_steps, low=0)

    def _cosine(self, t: int, start: float) -> float:
        decayed = 0.5 * (1.0 + math.cos(math.pi * t / self.decay_steps))
        return start * ((1.0 - self.alpha) * decayed + self.alpha)

    def __call__(self, t: int) -> float:
        t = _step(t)
        if self.warmup_target is None:
            return self._cosine(min(t, self.decay_steps), self.initial_learning_rate)
        t = min(t, self.decay_steps + self.warmup_steps)
        if t < self.warmup_steps:
            start = self.initial_learning_rate
            return (self.warmup_target - start) * (t / self.warmup_steps) + start
        return self._cosine(t - self.warmup_steps, self.warmup_target)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}

    def __repr__(self):
        s = f"CosineDecay({self.initial_learning_rate}, decay_steps={self.decay_steps}, alpha={self.alpha}"
        if self.warmup_target is not None:
            s += f", warmup_target={self.warmup_target}, warmup_steps={self.warmup_steps}"
        return s + ")"


class LinearWarmup(Schedule):
    """Linear ramp from ``start_lr`` to ``base(0)`` over ``warmup_steps``, then ``base(t - warmup_steps)``.

    ``base`` is any schedule (or a float for a constant). For t < warmup_steps the rate is
    start_lr + (base(0) - start_lr) * t / warmup_steps.
    """

    def __init__(self, base, warmup_steps: int, start_lr: float = 0.0):
        self.base = as_schedule(base, "LinearWarmup")
        self.warmup_steps = integer("LinearWarmup", "warmup_steps", warmup_steps, low=0)
        self.start_lr = real("LinearWarmup", "start_lr", start_lr, low=0.0)

    def __call__(self, t: int) -> float:
        t = _step(t)
        if t < self.warmup_steps:
            target = self.base(0)
            return self.start_lr + (target - self.start_lr) * t / self.warmup_steps
        return self.base(t - self.warmup_steps)

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state.get("base", {}))

    def get_config(self) -> dict:
        return {"base": to_config(self.base), "warmup_steps": self.warmup_steps, "start_lr": self.start_lr}

    def __repr__(self):
        return f"LinearWarmup({self.base!r}, warmup_steps={self.warmup_steps}, start_lr={self.start_lr})"


class ReduceLROnPlateau(Schedule):
    """Scale a schedule down by ``factor`` when a metric stops improving (PyTorch's rules).

    Call ``step(metric)`` once per evaluation (e.g. per epoch). The metric improves when it
    beats the best so far by ``threshold`` (relative: best * (1 -/+ threshold), absolute:
    best -/+ threshold, for mode 'min' / 'max'). After more than ``patience`` evaluations
    without improvement the scale is multiplied by ``factor`` (unless that changes the
    rate by no more than ``eps``), then ``cooldown`` evaluations are ignored. The rate is
    max(base(t) * scale, min_lr).
    """

    def __init__(self, base, mode: str = "min", factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8):
        op = "ReduceLROnPlateau"
        self.base = as_schedule(base, op)
        self.mode = choice(op, "mode", mode, ("min", "max"))
        self.factor = real(op, "factor", factor, low=0.0, high=1.0, high_open=True)
        self.patience = integer(op, "patience", patience, low=0)
        self.threshold = real(op, "threshold", threshold, low=0.0)
        self.threshold_mode = choice(op, "threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = integer(op, "cooldown", cooldown, low=0)
        self.min_lr = real(op, "min_lr", min_lr, low=0.0)
        self.eps = real(op, "eps", eps, low=0.0)
        self.scale = 1.0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_t = 0

    def __call__(self, t: int) -> float:
        self.last_t = _step(t)
        return max(self.base(t) * self.scale, self.min_lr)

    def _is_better(self, a: float) -> bool:
        if self.mode == "min":
            bound = self.best * (1.0 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold
            return a < bound
        bound = self.best * (1.0 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold
        return a > bound

    def step(self, metric) -> bool:
        """Record one evaluation of the metric; returns True when the rate was reduced."""
        current = float(metric)
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.num_bad_epochs = 0
            self.cooldown_counter = self.cooldown
            return self._reduce()
        return False

    def _reduce(self) -> bool:
        base = self.base(self.last_t)
        old = max(base * self.scale, self.min_lr)
        new = max(base * self.scale * self.factor, self.min_lr)
        if old - new > self.eps:
            self.scale *= self.factor
            return True
        return False

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "last_t": self.last_t, "base": self.base.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_t = int(state["last_t"])
        self.base.load_state_dict(state.get("base", {}))

    def get_config(self) -> dict:
        return {"base": to_config(self.base), "mode": self.mode, "factor": self.factor, "patience": self.patience,
                "threshold": self.threshold, "threshold_mode": self.threshold_mode, "cooldown": self.cooldown,
                "min_lr": self.min_lr, "eps": self.eps}

    def __repr__(self):
        return f"ReduceLROnPlateau({self.base!r}, mode={self.mode!r}, factor={self.factor}, patience={self.patience})"


_CLASSES = {c.__name__: c for c in (Constant, ExponentialDecay, InverseTimeDecay, StepDecay, CosineDecay, LinearWarmup,
                                    ReduceLROnPlateau)}


def walk(schedule):
    """``schedule`` and every schedule nested in it (depth first, outermost first)."""
    stack = [schedule] if isinstance(schedule, Schedule) else []
    while stack:
        s = stack.pop()
        yield s
        stack.extend(reversed(s.children()))


def plateaus(schedule) -> list:
    """Every ReduceLROnPlateau in a composition, however deep it is wrapped: ``fit`` steps them
    all once per epoch (``LinearWarmup(ReduceLROnPlateau(...), 100)`` included)."""
    return [s for s in walk(schedule) if isinstance(s, ReduceLROnPlateau)]


def to_config(schedule: Schedule) -> dict:
    """{'schedule': class name, 'config': constructor arguments} of a schedule."""
    return {"schedule": type(schedule).__name__, "config": schedule.get_config()}


def _keras_config(name: str, kwargs: dict) -> dict:
    """A config written before ExponentialDecay / InverseTimeDecay / CosineDecay took Keras'
    arguments (their keys were lr, rate / decay, min_lr) in today's keys, same rates."""
    if "lr" not in kwargs or name not in ("ExponentialDecay", "InverseTimeDecay", "CosineDecay"):
        return kwargs
    out = {"initial_learning_rate": kwargs["lr"], "decay_steps": kwargs.get("decay_steps", 1)}
    if name == "CosineDecay":
        lr, min_lr = kwargs["lr"], kwargs.get("min_lr", 0.0)
        if min_lr and not lr:
            raise ValueError(f"schedules.from_config: a saved CosineDecay(lr=0, min_lr={min_lr}) has no Keras form")
        out["alpha"] = min_lr / lr if lr else 0.0
        return out
    out["decay_rate"] = kwargs["rate"] if name == "ExponentialDecay" else kwargs["decay"]
    out["staircase"] = kwargs.get("staircase", False)
    return out


def from_config(config: dict) -> Schedule:
    """Rebuild a schedule from ``to_config`` output."""
    name = config.get("schedule") if isinstance(config, dict) else None
    if name not in _CLASSES:
        raise ValueError(f"schedules.from_config: unknown schedule {name!r} (known: {', '.join(sorted(_CLASSES))})")
    kwargs = _keras_config(name, dict(config.get("config", {})))
    if "base" in kwargs:
        base = kwargs["base"]
        kwargs["base"] = from_config(base) if isinstance(base, dict) else base
    return _CLASSES[name](**kwargs)
