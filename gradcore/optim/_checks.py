"""Hyper-parameter checks of the optimizers, clipping and schedules: the shared ones of
``gradcore._validate`` (re-exported here so the optimizer modules keep ``_checks.real``)."""
from __future__ import annotations

from .._validate import (  # noqa: F401  (re-exports)
    FLOAT_DTYPES, choice, integer, nonnegative, positive, positive_int, positive_or_none, probability, real, seed,
)
