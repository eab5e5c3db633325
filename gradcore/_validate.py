"""Argument checks shared by every public entry point (functional ops, layers, initializers,
optimizers, schedules).

Each check returns the value in its canonical Python type or raises a TypeError (wrong
kind of value) / ValueError (right kind, out of range) whose message names the op, the
argument and what was given: ``"<op>: <name> must be ..., got <value>"``.

This module imports nothing from gradcore, so any module (``tensor`` included) can use it.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

# The floating-point dtypes gradcore computes in (the kernels are compiled for these two).
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Seeds of the counter-based generator (dropout) are unsigned 64-bit integers.
SEED_LIMIT = 2 ** 64


def _as_real(op: str, name: str, value) -> float:
    if type(value) is float:  # the common case, checked first (isinstance against numbers.Real is slow)
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()  # a 0-d array is as good as a scalar
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__} ({value!r})")
    return float(value)


def real(op: str, name: str, value, *, low: Optional[float] = None, low_open: bool = False,
         high: Optional[float] = None, high_open: bool = False, finite: bool = True) -> float:
    """``value`` as a float, or a TypeError / ValueError naming ``op`` and ``name``.

    ``low`` / ``high`` bound the value (closed unless ``low_open`` / ``high_open``); NaN is
    always refused, infinities unless ``finite=False``.
    """
    v = _as_real(op, name, value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{op}: {name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{op}: {name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{op}: {name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def positive(op: str, name: str, value) -> float:
    """A finite float > 0 (eps, scales)."""
    return real(op, name, value, low=0.0, low_open=True)


def nonnegative(op: str, name: str, value) -> float:
    """A finite float >= 0 (standard deviations, penalties)."""
    return real(op, name, value, low=0.0)


def probability(op: str, name: str, value, *, one: bool = True) -> float:
    """A float in [0, 1] (or [0, 1) with ``one=False``)."""
    return real(op, name, value, low=0.0, high=1.0, high_open=not one)


def positive_or_none(op: str, name: str, value) -> Optional[float]:
    """None (off) or a float > 0 (may be inf)."""
    if value is None:
        return None
    return real(op, name, value, low=0.0, low_open=True, finite=False)


def integer(op: str, name: str, value, *, low: Optional[int] = 0, high: Optional[int] = None) -> int:
    """``value`` as an int in [low, high] (either bound may be None); floats such as 2.0 or
    2.7 are refused rather than truncated."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {type(value).__name__} ({value!r})")
    v = int(value)
    if low is not None and v < low:
        raise ValueError(f"{op}: {name} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{op}: {name} must be <= {high}, got {v}")
    return v


def positive_int(op: str, name: str, value) -> int:
    """An int >= 1 (sizes, counts)."""
    return integer(op, name, value, low=1)


def dims(op: str, name: str, value) -> tuple:
    """A shape of sizes >= 1: an int, or a non-empty sequence of ints, as a tuple."""
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    try:
        sizes = tuple(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a sequence of ints, "
                        f"got {type(value).__name__} ({value!r})") from None
    if not sizes:
        raise ValueError(f"{op}: {name} must be a non-empty shape, got {value!r}")
    return tuple(positive_int(op, name, d) for d in sizes)


def seed(op: str, name: str, value) -> int:
    """A seed of the counter-based generator: an int in [0, 2**64)."""
    return integer(op, name, value, low=0, high=SEED_LIMIT - 1)


def choice(op: str, name: str, value, options):
    """``value`` if it is one of ``options``."""
    try:
        ok = value in options
    except (TypeError, ValueError):  # an unhashable or array-like value
        ok = False
    if not ok:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def float_dtype(op: str, dtype, name: str = "dtype") -> np.dtype:
    """``dtype`` as an np.dtype, which must be float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: {name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32 or float64, got {dt}")
    return dt


__all__ = [
    "FLOAT_DTYPES", "SEED_LIMIT", "real", "positive", "nonnegative", "probability", "positive_or_none",
    "integer", "positive_int", "dims", "seed", "choice", "float_dtype",
]
