"""One seeded stream for everything random in gradcore (initialisation, shuffling, dropout).

``manual_seed(s)`` restarts the stream, so a run seeded the same way repeats exactly.
"""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Make initialisation, shuffling and dropout reproducible from ``seed``."""
    global _generator
    _generator = np.random.default_rng(int(seed))


def generator() -> np.random.Generator:
    """The current NumPy Generator of the stream."""
    return _generator


def next_seed() -> int:
    """A fresh 63-bit seed drawn from the stream (for the counter-based dropout RNG)."""
    return int(_generator.integers(0, 2**63 - 1))
