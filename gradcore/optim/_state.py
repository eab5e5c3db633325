"""Sanity checks of an optimizer ``state_dict()`` tree, shared by ``Optimizer.load_state_dict``
(ValueError) and ``gradcore.load`` (CheckpointError, for a file)."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional, Tuple, Type

import numpy as np

# Optimizer state names (gradcore's and torch's) that hold squares or sums of squares:
# a negative value there is impossible and would make sqrt() produce NaN.
NONNEGATIVE_STATE = frozenset({"v", "v_max", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta"})
# Counters: a negative value would restart bias corrections and schedules wrongly.
STEP_COUNTS = frozenset({"step", "steps", "skipped_steps", "iterations", "num_bad_epochs", "cooldown_counter",
                         "last_t"})


def leaves(tree: Any, path: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], Any]]:
    """(path, value) of every leaf of a state tree (tensors are leaves)."""
    stack = [(path, tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((path + (str(k),), v) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((path + (str(i),), v) for i, v in enumerate(node))
        else:
            yield path, node


def _step_name(path: Tuple[str, ...]) -> Optional[str]:
    """The STEP_COUNTS name a leaf belongs to (its own key, or its list's key)."""
    for key in reversed(path[-2:]):
        if key in STEP_COUNTS:
            return key
    return None


def check_state_values(state: Any, error: Type[Exception] = ValueError, op: str = "",
                       describe: Optional[Callable[[Tuple[str, ...], int], str]] = None) -> None:
    """Raise ``error`` unless every value of an optimizer ``state_dict()`` tree is sane:
    tensors finite, second moments / accumulators (``NONNEGATIVE_STATE``) >= 0, integer
    tensors and step counts (``STEP_COUNTS``) >= 0. Driven by the names in the tree, so it
    holds for every optimizer's layout (gradcore's flat buffers and torch's per-parameter
    dicts). The message names the state's path and the first bad value; ``describe(path,
    flat_index)`` may add which tensor that element belongs to; ``op`` prefixes it."""
    prefix = f"{op}: " if op else ""

    def fail(where, path, arr, bad, what):
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        extra = describe(path, i) if describe is not None else ""
        raise error(f"{prefix}optimizer state {where!r} holds {what}, e.g. {arr.reshape(-1)[i]} at index {i}"
                    + (f" ({extra})" if extra else ""))

    for path, value in leaves(state):
        where = "/".join(path)
        name = path[-1] if path else ""
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise error(f"{prefix}optimizer state {where!r} has unsupported dtype {value.dtype}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                fail(where, path, value, ~np.isfinite(value), "non-finite values")
            # written as "not >= 0" so that a NaN (which compares False) is refused too
            if value.dtype.kind in "if" and not (value >= 0).all():
                if name in NONNEGATIVE_STATE:
                    fail(where, path, value, ~(value >= 0),
                         "negative values (a sum of squares cannot be negative)")
                if value.dtype.kind == "i" or name in STEP_COUNTS:  # step counts (torch keeps them as floats)
                    fail(where, path, value, ~(value >= 0), "negative counts")
            continue
        step = _step_name(path)
        if step is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
            if not (math.isfinite(value) and value >= 0):
                raise error(f"{prefix}optimizer state {where!r} is a step count and must be >= 0, got {value}")
