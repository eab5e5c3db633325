"""Weight initializers, chosen by name or as objects.

Names decide semantics: the Keras names (``he_normal``, ``glorot_uniform``,
``RandomNormal``, ...) behave as in Keras, the torch names (``kaiming_normal``,
``xavier_uniform``, ...) as in ``torch.nn.init``.

An initializer is called as ``init(shape, dtype=np.float32, rng=None)`` and returns a new
NumPy array. Randomness comes from ``rng`` or else from gradcore's seeded stream
(``gradcore.manual_seed``), so seeding makes initialisation reproducible.

Fans follow the weight layout of gradcore's layers, which is torch's: a weight
(out, in) has fan_in = in and fan_out = out (for more dimensions the trailing ones form
the receptive field, as torch computes them); a vector (n,) has both equal to n. A Keras
name therefore gives a Dense layer the distribution Keras gives the same layer, whose
kernel Keras stores transposed.

Keras: ``variance_scaling(scale, mode, distribution)`` is the general form: with n the fan
of ``mode`` ("fan_in", "fan_out" or "fan_avg" = their mean),

- "truncated_normal" (alias "normal", as in Keras): a normal cut at two standard
  deviations and re-drawn there, with stddev sqrt(scale / n) / 0.87962566103423978 so
  that the standard deviation *after* truncation is sqrt(scale / n);
- "untruncated_normal": a plain normal with stddev sqrt(scale / n);
- "uniform": uniform on [-limit, limit] with limit = sqrt(3 * scale / n).

glorot_* = variance_scaling(1, "fan_avg", ...), he_* = variance_scaling(2, "fan_in", ...),
lecun_* = variance_scaling(1, "fan_in", ...), each in a "truncated_normal" (``*_normal``)
and a "uniform" (``*_uniform``) flavour. ``random_normal`` / ``truncated_normal`` /
``random_uniform`` default to Keras' stddev 0.05 and range [-0.05, 0.05].

torch: ``kaiming_normal(a, mode, nonlinearity)`` is a plain normal with std
gain / sqrt(fan), ``kaiming_uniform`` uniform with bound gain * sqrt(3 / fan) (gain from
``calculate_gain(nonlinearity, a)``, mode "fan_in" or "fan_out"); ``xavier_normal(gain)``
a plain normal with std gain * sqrt(2 / (fan_in + fan_out)), ``xavier_uniform(gain)``
uniform with bound gain * sqrt(6 / (fan_in + fan_out)). The in-place forms
``kaiming_normal_(tensor, ...)`` etc. fill an existing parameter like torch's.

``random`` is the documents' small random start: N(0, 0.01).

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
    """(fan_in, fan_out) of a weight of ``shape`` laid out (out, in, *receptive field), as
    torch.nn.Linear stores it and torch computes fans; a vector (n,) gives (n, n)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = float(np.prod(shape[2:])) if len(shape) > 2 else 1.0
    return shape[1] * receptive, shape[0] * receptive


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


def _one_of(op: str, keras_name: str, value, old_name: str, old_value, default: float):
    """(the keyword used, its value): Keras' argument name, or the older gradcore name for
    it (configs saved before), or the default. Validators then name what the caller wrote."""
    if value is not None and old_value is not None:
        raise TypeError(f"{op}: pass {keras_name} or {old_name}, not both")
    if old_value is not None:
        return old_name, old_value
    return keras_name, default if value is None else value


class _Normal(Initializer):
    """``mean`` and ``stddev`` (``std=`` accepted for it), shared by the normal initializers."""

    default_stddev = 0.05

    def __init__(self, mean: float = 0.0, stddev: Optional[float] = None, *, std: Optional[float] = None):
        self.mean = float(mean)
        self.stddev = _v.nonnegative(self.name, *_one_of(self.name, "stddev", stddev, "std", std, self.default_stddev))

    @property
    def std(self) -> float:
        return self.stddev

    def arguments(self):
        return {"mean": self.mean, "stddev": self.stddev}


class RandomNormal(_Normal):
    """Normal with ``mean`` and standard deviation ``stddev`` (Keras: default 0.05).
    ``std=`` is accepted for ``stddev``."""

    name = "random_normal"

    def sample(self, shape, rng):
        return self.mean + self.stddev * rng.standard_normal(shape)


class SmallRandomNormal(RandomNormal):
    """The documents' ``init_type='random'``: ``randn * 0.01`` (N(0, 0.01) by default)."""

    name = "random"
    default_stddev = 0.01


class TruncatedNormal(_Normal):
    """Normal(mean, stddev) with values more than two ``stddev`` from the mean re-drawn
    (Keras; default stddev 0.05). ``std=`` is accepted for ``stddev``."""

    name = "truncated_normal"

    def sample(self, shape, rng):
        return self.mean + self.stddev * _truncated_standard_normal(rng, shape)


class RandomUniform(Initializer):
    """Uniform on [minval, maxval) (Keras: default [-0.05, 0.05)). ``low=`` / ``high=``
    are accepted for ``minval`` / ``maxval``."""

    name = "random_uniform"

    def __init__(self, minval: Optional[float] = None, maxval: Optional[float] = None, *,
                 low: Optional[float] = None, high: Optional[float] = None):
        self.minval = _v.real(self.name, *_one_of(self.name, "minval", minval, "low", low, -0.05))
        self.maxval = _v.real(self.name, *_one_of(self.name, "maxval", maxval, "high", high, 0.05))
        if self.minval > self.maxval:
            raise ValueError(f"random_uniform: need minval <= maxval, got minval={self.minval}, "
                             f"maxval={self.maxval}")

    @property
    def low(self) -> float:
        return self.minval

    @property
    def high(self) -> float:
        return self.maxval

    def sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, size=shape)

    def arguments(self):
        return {"minval": self.minval, "maxval": self.maxval}


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


# ---------------------------------------------------------------------- torch.nn.init
_LINEAR_GAIN = ("linear", "identity", "sigmoid", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                "conv_transpose2d", "conv_transpose3d")


def calculate_gain(nonlinearity: str, param: Optional[float] = None) -> float:
    """torch.nn.init.calculate_gain: the std gain recommended for ``nonlinearity``
    (linear / sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + slope^2)) with
    slope ``param`` (default 0.01), selu 3/4)."""
    if nonlinearity in _LINEAR_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, bool) or not isinstance(param, (int, float, np.integer, np.floating)):
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        else:
            slope = float(param)
        return math.sqrt(2.0 / (1.0 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _torch_fan(op: str, shape, mode: str) -> float:
    if len(shape) < 2:
        raise ValueError(f"{op}: fan in and fan out cannot be computed for a tensor with fewer than 2 "
                         f"dimensions (shape {shape})")
    fan_in, fan_out = compute_fans(shape)
    return max(1.0, fan_in if mode == "fan_in" else fan_out)


class KaimingNormal(Initializer):
    """torch.nn.init.kaiming_normal_: plain normal, std = gain / sqrt(fan) with
    gain = calculate_gain(nonlinearity, a) and fan = the ``mode`` fan ("fan_in" / "fan_out")."""

    name = "kaiming_normal"

    def __init__(self, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"{self.name}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
        self.a, self.mode, self.nonlinearity = _v.real(self.name, "a", a), mode, nonlinearity
        self.gain = calculate_gain(nonlinearity, self.a)

    def std(self, shape) -> float:
        return self.gain / math.sqrt(_torch_fan(self.name, shape, self.mode))

    def sample(self, shape, rng):
        return self.std(shape) * rng.standard_normal(shape)

    def arguments(self):
        return {"a": self.a, "mode": self.mode, "nonlinearity": self.nonlinearity}


class KaimingUniform(KaimingNormal):
    """torch.nn.init.kaiming_uniform_: uniform on [-bound, bound], bound = gain * sqrt(3 / fan)."""

    name = "kaiming_uniform"

    def sample(self, shape, rng):
        bound = math.sqrt(3.0) * self.std(shape)
        return rng.uniform(-bound, bound, size=shape)


class XavierNormal(Initializer):
    """torch.nn.init.xavier_normal_: plain normal, std = gain * sqrt(2 / (fan_in + fan_out))."""

    name = "xavier_normal"

    def __init__(self, gain: float = 1.0):
        self.gain = _v.nonnegative(self.name, "gain", gain)

    def std(self, shape) -> float:
        _torch_fan(self.name, shape, "fan_in")  # refuses vectors, as torch does
        fan_in, fan_out = compute_fans(shape)
        return self.gain * math.sqrt(2.0 / max(1.0, fan_in + fan_out))

    def sample(self, shape, rng):
        return self.std(shape) * rng.standard_normal(shape)

    def arguments(self):
        return {"gain": self.gain}


class XavierUniform(XavierNormal):
    """torch.nn.init.xavier_uniform_: uniform on [-bound, bound],
    bound = gain * sqrt(6 / (fan_in + fan_out))."""

    name = "xavier_uniform"

    def sample(self, shape, rng):
        bound = math.sqrt(3.0) * self.std(shape)
        return rng.uniform(-bound, bound, size=shape)


_REGISTRY: Dict[str, type] = {
    cls.name: cls for cls in (Zeros, Ones, Constant, RandomNormal, SmallRandomNormal, TruncatedNormal, RandomUniform,
                              VarianceScaling, GlorotNormal, GlorotUniform, HeNormal, HeUniform, LecunNormal,
                              LecunUniform, KaimingNormal, KaimingUniform, XavierNormal, XavierUniform)
}
_ALIASES = {
    "zero": "zeros", "one": "ones", "normal": "random_normal", "uniform": "random_uniform",
}
# Keras also takes its class names as strings ("RandomNormal", "HeNormal", ...); they mean the
# same Keras-semantics initializer as the snake_case name. Matched case-insensitively like
# the other names. (The torch-named classes are not Keras names and are not listed.)
_KERAS_CLASS_NAMES = {
    cls.__name__.lower(): cls.name for cls in (Zeros, Ones, Constant, RandomNormal, TruncatedNormal, RandomUniform,
                                               VarianceScaling, GlorotNormal, GlorotUniform, HeNormal, HeUniform,
                                               LecunNormal, LecunUniform)
}
_ALIASES.update(_KERAS_CLASS_NAMES)


def names():
    """Every name ``get`` accepts (matched case-insensitively; Keras class names such as
    "HeNormal" are accepted too)."""
    return sorted(set(_REGISTRY) | (set(_ALIASES) - set(_KERAS_CLASS_NAMES)))


def _registered(name: str) -> Optional[str]:
    """The registry key for an initializer name, or None when there is none."""
    key = name.lower() if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    return key if key in _REGISTRY else None


def from_config(config: Dict[str, Any]) -> Initializer:
    """Rebuild an initializer from ``get_config()``'s output."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"initializer config must be a dict with a 'name', got {config!r}")
    name = _registered(config["name"])
    if name is None:
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
        key = _registered(identifier)
        if key is None:
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


def random_normal(mean: float = 0.0, stddev: Optional[float] = None, *, std: Optional[float] = None) -> Initializer:
    return RandomNormal(mean, stddev, std=std)


def truncated_normal(mean: float = 0.0, stddev: Optional[float] = None, *, std: Optional[float] = None) -> Initializer:
    return TruncatedNormal(mean, stddev, std=std)


def random_uniform(minval: Optional[float] = None, maxval: Optional[float] = None, *,
                   low: Optional[float] = None, high: Optional[float] = None) -> Initializer:
    return RandomUniform(minval, maxval, low=low, high=high)


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


def kaiming_normal(a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> Initializer:
    return KaimingNormal(a, mode, nonlinearity)


def kaiming_uniform(a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> Initializer:
    return KaimingUniform(a, mode, nonlinearity)


def xavier_normal(gain: float = 1.0) -> Initializer:
    return XavierNormal(gain)


def xavier_uniform(gain: float = 1.0) -> Initializer:
    return XavierUniform(gain)


# ---------------------------------------------------------------------- torch's in-place forms
def _fill_(tensor, initializer: Initializer):
    """Overwrite ``tensor`` (a gradcore Tensor or a NumPy array) in place with a draw of
    ``initializer``; returns it, like torch.nn.init's ``*_`` functions."""
    from ..tensor import Tensor, bump_version

    data = tensor.data if isinstance(tensor, Tensor) else tensor
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{initializer.name}_: expected a gradcore Tensor or a NumPy array, "
                        f"got {type(tensor).__name__}")
    data[...] = initializer(data.shape, data.dtype if data.dtype.kind == "f" else np.float64)
    if isinstance(tensor, Tensor):
        bump_version([tensor])
    return tensor


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    return _fill_(tensor, KaimingNormal(a, mode, nonlinearity))


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    return _fill_(tensor, KaimingUniform(a, mode, nonlinearity))


def xavier_normal_(tensor, gain: float = 1.0):
    return _fill_(tensor, XavierNormal(gain))


def xavier_uniform_(tensor, gain: float = 1.0):
    return _fill_(tensor, XavierUniform(gain))


# Activations whose Dense layers default to He initialisation (from gradcore.activations).
RELU_FAMILY = frozenset(name for name, spec in _act.ACTIVATIONS.items() if spec.initializer == "he_normal")


def default_kernel_initializer(activation: Optional[str]) -> Initializer:
    """The initializer ``gradcore.activations`` lists for ``activation``: He normal for the
    ReLU family, LeCun normal for SELU, Glorot uniform otherwise (and for None)."""
    spec = _act.ACTIVATIONS.get(_act.canonical(activation)) if activation else None
    return get(spec.initializer if spec is not None else "glorot_uniform")


__all__ = [
    "skip_initialization", "initialization_skipped",
    "Initializer", "Zeros", "Ones", "Constant", "RandomNormal", "SmallRandomNormal", "TruncatedNormal",
    "RandomUniform", "VarianceScaling", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "LecunNormal",
    "LecunUniform", "KaimingNormal", "KaimingUniform", "XavierNormal", "XavierUniform", "calculate_gain",
    "compute_fans", "get", "from_config", "names", "default_kernel_initializer",
    "zeros", "ones", "constant", "random_normal", "truncated_normal", "random_uniform", "variance_scaling",
    "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform",
    "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform",
    "kaiming_normal_", "kaiming_uniform_", "xavier_normal_", "xavier_uniform_", "TRUNCATED_STD_FACTOR",
    "RELU_FAMILY",
]
