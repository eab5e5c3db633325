"""Shared setup of the monitor's fast-path tests (test_monitor_fastpath, test_monitor_lean,
test_monitor_compiled_cost): a monitor held to its general path, and the check that two
histories are the same rows bit for bit."""
import numpy as np


def general_path_only(mon) -> None:
    """Every recorded step of ``mon`` goes the general way: not the fast path, nor the
    one-call record from a layout another monitor made."""
    mon._record_fast = lambda *args: False
    mon._lean_for = lambda batch: None


def assert_same_history(h, g) -> None:
    """``h`` and ``g`` hold the same rows, NaN where NaN, bit for bit elsewhere."""
    assert len(h) == len(g) > 0
    np.testing.assert_array_equal(h.step, g.step)
    np.testing.assert_array_equal(h.layer, g.layer)
    np.testing.assert_array_equal(h.metric, g.metric)
    np.testing.assert_array_equal(h.value, g.value)
