"""Hyper-parameter checks shared by the optimizers, clipping and schedules."""
from __future__ import annotations

import math
import numbers
from typing import Optional


def real(op: str, name: str, value, *, low: Optional[float] = None, low_open: bool = False,
         high: Optional[float] = None, high_open: bool = False, finite: bool = True) -> float:
    """``value`` as a float, or a TypeError / ValueError naming ``op`` and ``name``.

    ``low`` / ``high`` bound the value (closed unless ``low_open`` / ``high_open``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{op}: {name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{op}: {name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{op}: {name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def positive_or_none(op: str, name: str, value) -> Optional[float]:
    """None (off) or a float > 0 (may be inf)."""
    if value is None:
        return None
    return real(op, name, value, low=0.0, low_open=True, finite=False)


def integer(op: str, name: str, value, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if v < low:
        raise ValueError(f"{op}: {name} must be >= {low}, got {v}")
    return v


def choice(op: str, name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value
