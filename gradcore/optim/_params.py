"""Collecting parameters and cutting flat buffers into runs the kernels can take whole."""
from __future__ import annotations

from typing import Iterable, List, Tuple

import numpy as np

from ..tensor import Tensor


def collect_parameters(params, op: str) -> List[Tensor]:
    """Tensors from a Tensor, an object with ``.parameters()``, or an iterable of either.

    Keeps the first occurrence of each tensor, frozen ones (``requires_grad=False``)
    included: like torch.optim, an optimizer holds them (and skips them at step time while
    they are frozen or have no gradient), so unfreezing a layer later trains it.
    """
    out: List[Tensor] = []
    seen = set()

    def visit(obj, depth):
        if isinstance(obj, Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                out.append(obj)
            return
        if depth > 4:
            raise TypeError(f"{op}: parameters nest too deeply")
        if hasattr(obj, "parameters") and callable(obj.parameters):
            for p in obj.parameters():
                visit(p, depth + 1)
            return
        if isinstance(obj, dict):
            raise TypeError(f"{op}: a parameter group (dict) cannot be mixed with tensors or layers; pass a list "
                            "of groups only ([{'params': ...}, ...]) or no groups at all")
        if isinstance(obj, (str, bytes)) or not isinstance(obj, Iterable):
            raise TypeError(
                f"{op}: expected gradcore Tensors, objects with .parameters(), or an iterable of them; "
                f"got {type(obj).__name__}"
            )
        for p in obj:
            visit(p, depth + 1)

    visit(params, 0)
    return out


def consecutive_runs(indices: Iterable[int]) -> List[Tuple[int, int]]:
    """Sorted unique indices as half-open runs [lo, hi) of consecutive integers."""
    runs: List[Tuple[int, int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def split_by_value(values: np.ndarray, lo: int, hi: int) -> List[Tuple[int, int]]:
    """[lo, hi) cut where ``values`` changes, as half-open runs of equal values."""
    # Equal values is the common case, tested every step: on a Python list it costs a
    # fraction of NumPy's compare + reduce for the few dozen tensors of a network.
    vals = values[lo:hi].tolist()
    if hi - lo <= 1 or vals.count(vals[0]) == len(vals):
        return [(lo, hi)]
    cuts = np.flatnonzero(np.diff(values[lo:hi])) + lo + 1
    bounds = [lo, *cuts.tolist(), hi]
    return list(zip(bounds[:-1], bounds[1:]))


class Run:
    """Tensors [lo, hi) of one flat buffer, as views the kernels take without a copy."""

    __slots__ = ("lo", "hi", "begin", "end", "offsets", "whole")

    def __init__(self, offsets: np.ndarray, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.begin, self.end = int(offsets[lo]), int(offsets[hi])
        self.whole = lo == 0 and hi == len(offsets) - 1
        self.offsets = offsets if self.whole else offsets[lo:hi + 1] - self.begin

    def view(self, buffer: np.ndarray) -> np.ndarray:
        return buffer if self.whole else buffer[self.begin:self.end]

    def per_tensor(self, buffer: np.ndarray) -> np.ndarray:
        return buffer if self.whole else buffer[self.lo:self.hi]
