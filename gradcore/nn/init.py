"""Weight initializers, chosen by name or as objects (Keras semantics).

An initializer is called as ``init(shape, dtype=np.float32, rng=None)`` and returns a new
NumPy array. Randomness comes from ``rng`` or else from gradcore's seeded stream
(``gradcore.manual_seed``), so seeding makes initialisation reproducible.

Fans follow Keras: a weight (in, out) has fan_in = in and fan_out = out; a vector (n,)
has both equal to n; for more dimensions the leading ones form the receptive field.

``variance_scaling(scale, mode, distribution)`` is the general form: with n the fan of
``mode`` ("fan_in", "fan_out" or "fan_avg" = their mean),

- "truncated_normal" (alias "normal", as in Keras): a normal cut at two standard
  deviations and re-drawn there, with stddev sqrt(scale / n) / 0.87962566103423978 so
  that the standard deviation *after* truncation is sqrt(scale / n);
- "untruncated_normal": a plain normal with stddev sqrt(scale / n);
- "uniform": uniform on [-limit, limit] with limit = sqrt(3 * scale / n).

glorot_* = variance_scaling(1, "fan_avg", ...), he_* = variance_scaling(2, "fan_in", ...),
lecun_* = variance_scaling(1, "fan_in", ...), each in a "truncated_normal" (``*_normal``)
and a "uniform" (``*_uniform``) flavour.

Every initializer serialises with ``get_config()`` ({"name": ..., args...}) and is rebuilt
by ``from_config(config)``, so architectures can be written as JSON.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from .. import _validate as _v
from .. import activations as _act
from .. import random as _random

# Standard deviation of a standard normal truncated to [-2, 2] (Keras' correction factor).
TRUNCATED_STD_FACTOR = 0.87962566103423978

_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


# True while a checkpoint is being loaded: the values the initializers would draw are about
# to be overwritten, so they return zeros (lazily allocated pages) without touching the
# random stream. A ContextVar keeps the switch local to the thread / task that loads.
_SKIP_INIT = contextvars.ContextVar("gradcore_skip_initialization", default=False)


@contextlib.contextmanager
def skip_initialization() -> Iterator[None]:
    """Inside this block every initializer returns zeros and draws no random numbers.

    ``gradcore.load`` builds the saved architecture inside it: the parameters are
    overwritten by the checkpoint's values right after, so drawing them would only cost
    time (large layers) and advance gradcore's seeded stream (so a resumed run would
    shuffle differently from an uninterrupted one).
    """
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def initialization_skipped() -> bool:
    """True inside ``skip_initialization()``."""
    return _SKIP_INIT.get()


def compute_fans(shape) -> Tuple[float, float]:
    """(fan_in, fan_out) of a weight of ``shape`` (Keras' convention)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = float(np.prod(shape[:-2])) if len(shape) > 2 else 1.0
    return shape[-2] * receptive, shape[-1] * receptive


def _check_shape(shape) -> Tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"initializer: shape must be a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"initializer: shape must not have negative sizes, got {shape}")
    return shape


def _truncated_standard_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal samples with every value beyond two standard deviations re-drawn."""
    out = rng.standard_normal(shape)
    flat = out.reshape(-1)
    bad = np.flatnonzero(np.abs(flat) > 2.0)
    while bad.size:
        flat[bad] = rng.standard_normal(bad.size)
        bad = bad[np.abs(flat[bad]) > 2.0]
    return out


class Initializer:
    """Base class: subclasses implement ``sample(shape, rng) -> float64 array``."""

    name = "initializer"

    def __call__(self, shape, dtype=np.float32, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        shape = _check_shape(shape)
        dtype = _v.float_dtype(self.name, dtype)
        if _SKIP_INIT.get():
            return np.zeros(shape, dtype=dtype)
        values = self.sample(shape, _random.generator() if rng is None else rng)
        return np.ascontiguousarray(values, dtype=dtype)

    def sample(self, shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def arguments(self) -> Dict[str, Any]:
        """The constructor arguments (what get_config records besides the name)."""
        return {}

    def get_config(self) -> Dict[str, Any]:
        return {"name": self.name, **self.arguments()}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Initializer":
        args = {k: v for k, v in config.items() if k != "name"}
        return cls(**args)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.arguments().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    name = "zeros"

    def sample(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    name = "ones"

    def sample(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    """Every element equal to ``value``."""

    name = "constant"

    def __init__(self, value: float = 0.0):
        self.value = float(value)

    def sample(self, shape, rng):
        return np.full(shape, self.value)

    def arguments(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    """Normal with ``mean`` and standard deviation ``std`` (default 0.01)."""

    name = "random_normal"

    def __init__(self, mean: float = 0.0, std: float = 0.01):
        self.mean = float(mean)
        self.std = _v.nonnegative(self.name, "std", std)

    def sample(self, shape, rng):
        return self.mean + self.std * rng.standard_normal(shape)

    def arguments(self):
        return {"mean": self.mean, "std": self.std}


class TruncatedNormal(Initializer):
    """Normal(mean, std) with values more than two ``std`` from the mean re-drawn (Keras)."""

    name = "truncated_normal"

    def __init__(self, mean: float = 0.0, std: float = 0.05):
        self.mean = float(mean)
        self.std = _v.nonnegative(self.name, "std", std)

    def sample(self, shape, rng):
        return self.mean + self.std * _truncated_standard_normal(rng, shape)

    def arguments(self):
        return {"mean": self.mean, "std": self.std}


class RandomUniform(Initializer):
    """Uniform on [low, high) (default [-0.05, 0.05))."""

    name = "random_uniform"

    def __init__(self, low: float = -0.05, high: float = 0.05):
        self.low, self.high = float(low), float(high)
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"random_uniform: need finite low <= high, got low={low}, high={high}")

    def sample(self, shape, rng):
        return rng.uniform(self.low, self.high, size=shape)

    def arguments(self):
        return {"low": self.low, "high": self.high}


class VarianceScaling(Initializer):
    """Scale the spread to the weight's fans (see the module docstring for the formulas)."""

    name = "variance_scaling"

    def __init__(self, scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal"):
        scale = _v.positive("variance_scaling", "scale", scale)
        _v.choice("variance_scaling", "mode", mode, _MODES)
        if distribution == "normal":  # Keras keeps "normal" as the old name of the truncated one
            distribution = "truncated_normal"
        if distribution not in _DISTRIBUTIONS:
            raise ValueError(f"variance_scaling: distribution must be one of {_DISTRIBUTIONS} or 'normal', "
                             f"got {distribution!r}")
        self.scale, self.mode, self.distribution = scale, mode, distribution

    def fan(self, shape) -> float:
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        return max(1.0, n)

    def std(self, shape) -> float:
        """Standard deviation of the values this initializer draws for ``shape``."""
        return math.sqrt(self.scale / self.fan(shape))

    def limit(self, shape) -> float:
        """Bound of the uniform distribution for ``shape``."""
        return math.sqrt(3.0 * self.scale / self.fan(shape))

    def sample(self, shape, rng):
        if self.distribution == "uniform":
            limit = self.limit(shape)
            return rng.uniform(-limit, limit, size=shape)
        if self.distribution == "untruncated_normal":
            return self.std(shape) * rng.standard_normal(shape)
        return (self.std(shape) / TRUNCATED_STD_FACTOR) * _truncated_standard_normal(rng, shape)

    def arguments(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution}


class _Preset(VarianceScaling):
    """A named variance scaling whose arguments are fixed."""

    preset: Tuple[float, str, str] = (1.0, "fan_in", "truncated_normal")

    def __init__(self):
        super().__init__(*self.preset)

    def arguments(self):
        return {}


class GlorotNormal(_Preset):
    name = "glorot_normal"
    preset = (1.0, "fan_avg", "truncated_normal")


class GlorotUniform(_Preset):
    name = "glorot_uniform"
    preset = (1.0, "fan_avg", "uniform")


class HeNormal(_Preset):
    name = "he_normal"
    preset = (2.0, "fan_in", "truncated_normal")


class HeUniform(_Preset):
    name = "he_uniform"
    preset = (2.0, "fan_in", "uniform")


class LecunNormal(_Preset):
    name = "lecun_normal"
    preset = (1.0, "fan_in", "truncated_normal")


class LecunUniform(_Preset):
    name = "lecun_uniform"
    preset = (1.0, "fan_in", "uniform")


XavierNormal, XavierUniform = GlorotNormal, GlorotUniform

_REGISTRY: Dict[str, type] = {
    cls.name: cls for cls in (Zeros, Ones, Constant, RandomNormal, TruncatedNormal, RandomUniform, VarianceScaling,
                              GlorotNormal, GlorotUniform, HeNormal, HeUniform, LecunNormal, LecunUniform)
}
_ALIASES = {
    "zero": "zeros", "one": "ones", "normal": "random_normal", "random": "random_normal",
    "uniform": "random_uniform", "xavier_normal": "glorot_normal", "xavier_uniform": "glorot_uniform",
    "kaiming_normal": "he_normal", "kaiming_uniform": "he_uniform",
}


def names():
    """Every name ``get`` accepts."""
    return sorted(set(_REGISTRY) | set(_ALIASES))


def from_config(config: Dict[str, Any]) -> Initializer:
    """Rebuild an initializer from ``get_config()``'s output."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"initializer config must be a dict with a 'name', got {config!r}")
    name = _ALIASES.get(config["name"], config["name"])
    if name not in _REGISTRY:
        raise ValueError(f"unknown initializer {config['name']!r}; choose from {names()}")
    try:
        return _REGISTRY[name].from_config(config)
    except TypeError as exc:
        raise ValueError(f"initializer {name!r}: bad arguments in {config!r} ({exc})") from None


def get(identifier) -> Initializer:
    """An Initializer from a name ("he_normal"), a config dict, an Initializer or a callable
    ``fn(shape, dtype, rng) -> array``."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        key = _ALIASES.get(key, key)
        if key not in _REGISTRY:
            raise ValueError(f"unknown initializer {identifier!r}; choose from {names()}")
        return _REGISTRY[key]()
    if isinstance(identifier, dict):
        return from_config(identifier)
    if callable(identifier):
        return _FromCallable(identifier)
    raise TypeError(f"initializer must be a name, a config dict, an Initializer or a callable, "
                    f"got {type(identifier).__name__}")


class _FromCallable(Initializer):
    """Adapter for a plain function (cannot be serialised)."""

    name = "callable"

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, shape, dtype=np.float32, rng=None):
        shape = _check_shape(shape)
        dtype = _v.float_dtype("initializer", dtype)
        if _SKIP_INIT.get():
            return np.zeros(shape, dtype=dtype)
        out = np.asarray(self.fn(shape, dtype, _random.generator() if rng is None else rng))
        if out.shape != shape:
            raise ValueError(f"initializer {self.fn!r} returned shape {out.shape}, expected {shape}")
        return np.ascontiguousarray(out, dtype=dtype)

    def get_config(self):
        raise TypeError(f"initializer {self.fn!r} is a plain callable and cannot be serialised; "
                        "subclass gradcore.nn.init.Initializer instead")

    def __repr__(self):
        return f"Initializer({self.fn!r})"


# ---------------------------------------------------------------------- short forms
def zeros() -> Initializer:
    return Zeros()


def ones() -> Initializer:
    return Ones()


def constant(value: float = 0.0) -> Initializer:
    return Constant(value)


def random_normal(mean: float = 0.0, std: float = 0.01) -> Initializer:
    return RandomNormal(mean, std)


def truncated_normal(mean: float = 0.0, std: float = 0.05) -> Initializer:
    return TruncatedNormal(mean, std)


def random_uniform(low: float = -0.05, high: float = 0.05) -> Initializer:
    return RandomUniform(low, high)


def variance_scaling(scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal") -> Initializer:
    return VarianceScaling(scale, mode, distribution)


def glorot_normal() -> Initializer:
    return GlorotNormal()


def glorot_uniform() -> Initializer:
    return GlorotUniform()


def he_normal() -> Initializer:
    return HeNormal()


def he_uniform() -> Initializer:
    return HeUniform()


def lecun_normal() -> Initializer:
    return LecunNormal()


def lecun_uniform() -> Initializer:
    return LecunUniform()


xavier_normal, xavier_uniform = glorot_normal, glorot_uniform
kaiming_normal, kaiming_uniform = he_normal, he_uniform

# Activations whose Dense layers default to He initialisation (from gradcore.activations).
RELU_FAMILY = frozenset(name for name, spec in _act.ACTIVATIONS.items() if spec.initializer == "he_normal")


def default_kernel_initializer(activation: Optional[str]) -> Initializer:
    """The initializer ``gradcore.activations`` lists for ``activation``: He normal for the
    ReLU family, LeCun normal for SELU, Glorot uniform otherwise (and for None)."""
    spec = _act.ACTIVATIONS.get(_act.canonical(activation)) if activation else None
    return get(spec.initializer if spec is not None else "glorot_uniform")


__all__ = [
    "skip_initialization", "initialization_skipped",
    "Initializer", "Zeros", "Ones", "Constant", "RandomNormal", "TruncatedNormal", "RandomUniform",
    "VarianceScaling", "GlorotNormal", "GlorotUniform", "XavierNormal", "XavierUniform", "HeNormal", "HeUniform",
    "LecunNormal", "LecunUniform", "compute_fans", "get", "from_config", "names", "default_kernel_initializer",
    "zeros", "ones", "constant", "random_normal", "truncated_normal", "random_uniform", "variance_scaling",
    "glorot_normal", "glorot_uniform", "xavier_normal", "xavier_uniform", "he_normal", "he_uniform",
    "kaiming_normal", "kaiming_uniform", "lecun_normal", "lecun_uniform", "TRUNCATED_STD_FACTOR", "RELU_FAMILY",
]
