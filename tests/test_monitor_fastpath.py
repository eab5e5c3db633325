"""The monitor's fast path for a compiled step's statistics (``_record_fast``) against its
general path (``_record_step`` / ``_finish_rows`` and the detectors) on the same training
run: the same rows in the same order, the same events, the same state afterwards. The
runs are chosen so that events start, go on and end (vanishing gradients that come and
go, dead units, saturated units, update ratios), so both the quiet branch and the
detectors' branch of each event group are taken."""
import math
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import nn, optim
from gradcore.monitor import GradientMonitor


def sigmoid_net(dtype):
    gradcore.manual_seed(0)
    dims = [20, 50, 40, 30, 20, 10, 1]
    net = nn.Sequential(*[nn.Dense(i, o, activation="sigmoid", dtype=dtype) for i, o in zip(dims[:-1], dims[1:])],
                        dtype=dtype)
    rng = np.random.default_rng(4)
    X = rng.standard_normal((32 * 12, 20)).astype(dtype)
    y = (X[:, :3].sum(1, keepdims=True) > 0).astype(dtype)
    return net, optim.SGD(net.parameters(), lr=0.5), "binary_cross_entropy", X, y, 32


def relu_bn_net(dtype):
    gradcore.manual_seed(1)
    net = nn.Sequential(nn.Dense(12, 24, dtype=dtype), nn.BatchNorm(24, dtype=dtype), nn.ReLU(),
                        nn.Dense(24, 16, activation="relu", dtype=dtype), nn.Dense(16, 8, activation="tanh", dtype=dtype),
                        nn.Dense(8, 4, dtype=dtype), dtype=dtype)
    net[3].bias.data[:13] = -20.0   # 13 of 16 units dead for every sample (81% > 70%)
    net[4].weight.data *= 30.0      # tanh pre-activations beyond +-5: saturated
    rng = np.random.default_rng(5)
    X = rng.standard_normal((16 * 12, 12)).astype(dtype)
    y = rng.integers(0, 4, size=len(X))
    return net, optim.Adam(net.parameters(), lr=0.05, global_clip_norm=1.0), "cross_entropy", X, y, 16


def train(make, dtype, fast, **monitor_args):
    net, opt, loss, X, y, batch = make(dtype)
    mon = GradientMonitor(net, **monitor_args)
    if not fast:
        mon._record_fast = lambda *args: False
    step = gradcore.compile_step(net, loss, opt, monitor=mon)
    yy = y if y.ndim == 2 else y.astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(3):
            for i in range(0, len(X), batch):
                step(np.ascontiguousarray(X[i:i + batch]), np.ascontiguousarray(yy[i:i + batch]))
    step.release_monitor()
    return mon


def events(mon):
    return [(e.kind, e.step, e.layer, e.tensor, e.value, e.threshold, e.message) for e in mon.events]


@pytest.mark.parametrize("make", [sigmoid_net, relu_bn_net])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("args", [{}, {"activations": False, "updates": False}, {"every": 2},
                                  {"flow_ratio": 0.5, "update_ratio": (3e-3, 3e-2), "exploding": 0.5}])
def test_fast_path_gives_the_general_paths_rows_and_events(make, dtype, args):
    fast = train(make, dtype, True, **args)
    slow = train(make, dtype, False, **args)
    h, g = fast.history, slow.history
    assert len(h) == len(g) > 0
    np.testing.assert_array_equal(h.step, g.step)
    np.testing.assert_array_equal(h.layer, g.layer)
    np.testing.assert_array_equal(h.metric, g.metric)
    np.testing.assert_array_equal(h.value, g.value)  # NaN where NaN, bit for bit elsewhere
    assert events(fast) == events(slow)
    assert len(events(fast)) > 0
    assert {k: set(v) for k, v in fast._active.items() if v} == {k: set(v) for k, v in slow._active.items() if v}
    assert [list(d) for d in fast._recent] == [list(d) for d in slow._recent]


def test_fast_path_is_taken_and_events_cover_the_groups():
    """The runs above exercise both branches: the fast path records the steps, and the
    events include gradient, unit and update conditions."""
    taken = []
    mon = train(relu_bn_net, np.float64, True)
    kinds = {e.kind for e in mon.events}
    assert {"dead_units", "saturated_units"} <= kinds
    mon2 = train(sigmoid_net, np.float32, True)
    assert "vanishing" in {e.kind for e in mon2.events}
    orig = GradientMonitor._record_fast

    def spy(self, *args):
        out = orig(self, *args)
        taken.append(out)
        return out

    GradientMonitor._record_fast = spy
    try:
        train(sigmoid_net, np.float32, True)
    finally:
        GradientMonitor._record_fast = orig
    assert sum(taken) > 0.9 * len(taken) > 0


def test_fast_path_leaves_a_non_finite_step_to_the_general_path():
    """A NaN planted in the input: the general path locates it (the fast path declines)."""
    net, opt, loss, X, y, batch = relu_bn_net(np.float64)
    mon = GradientMonitor(net)
    step = gradcore.compile_step(net, loss, opt, monitor=mon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t, i in enumerate(range(0, 8 * batch, batch)):
            x = np.ascontiguousarray(X[i:i + batch])
            if t == 3:
                x[1, 2] = np.nan
            step(x, np.ascontiguousarray(y[i:i + batch].astype(np.int64)))
    step.release_monitor()
    found = [e for e in mon.events if e.kind == "nonfinite"]
    assert found and found[0].step == 3 and found[0].layer == "0" and found[0].tensor == "output"
    assert not math.isnan(mon.history.last("0", "weight.grad_norm"))


def test_norms_only_compiled_step_locates_a_forward_nan_in_the_backward():
    """activations=False: the plan measures no layer output (no act_* rows), and a NaN
    planted in the input is located at the first dz holding it: the last layer's, the
    first the backward reaches; the step is skipped as without a monitor."""
    net, opt, loss, X, y, batch = relu_bn_net(np.float64)
    mon = GradientMonitor(net, activations=False, updates=False)
    step = gradcore.compile_step(net, loss, opt, monitor=mon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t, i in enumerate(range(0, 6 * batch, batch)):
            x = np.ascontiguousarray(X[i:i + batch])
            if t == 3:
                x[1, 2] = np.nan
            step(x, np.ascontiguousarray(y[i:i + batch].astype(np.int64)))
    step.release_monitor()
    assert not any(m.startswith("act_") for m in mon.history.metrics())
    assert np.isnan(mon._act_S[:, 7]).all()  # the plan wrote no activation row
    found = [e for e in mon.events if e.kind == "nonfinite"]
    assert [(e.step, e.layer, e.tensor, e.evidence["phase"]) for e in found] == [(3, "5", "dz", "backward")]
    assert mon.history.series("", "skipped")[1].tolist() == [0, 0, 0, 1, 0, 0]
