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
from monitor_helpers import assert_same_history, general_path_only


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
        general_path_only(mon)
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
                                  {"flow_ratio": 0.5, "update_ratio": (3e-3, 3e-2), "exploding": 0.5},
                                  {"growth": 1.2, "vanishing": 1e-6}, {"growth": 2.0, "vanishing": 1e-6}])
def test_fast_path_gives_the_general_paths_rows_and_events(make, dtype, args):
    fast = train(make, dtype, True, **args)
    slow = train(make, dtype, False, **args)
    h, g = fast.history, slow.history
    assert_same_history(h, g)
    assert events(fast) == events(slow)
    assert len(events(fast)) > 0
    if "growth" in args and args["growth"] < 1.5:  # growth candidates that are growth, and that are not
        assert "exploding_growth" in {e.kind for e in fast.events}
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
    from gradcore.monitor import _monitor
    _monitor._SHARED.clear()  # (else the layout mon2 made sends every step to the one-call record)
    try:
        train(sigmoid_net, np.float32, True)
    finally:
        GradientMonitor._record_fast = orig
    assert sum(taken) > 0.9 * len(taken) > 0


def run_with_input_nan(steps, **monitor_args):
    """A compiled float64 BatchNorm net with a monitor for `steps` steps; a NaN is
    planted in the input of step 3. Returns the released monitor."""
    net, opt, loss, X, y, batch = relu_bn_net(np.float64)
    mon = GradientMonitor(net, **monitor_args)
    step = gradcore.compile_step(net, loss, opt, monitor=mon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t, i in enumerate(range(0, steps * batch, batch)):
            x = np.ascontiguousarray(X[i:i + batch])
            if t == 3:
                x[1, 2] = np.nan
            step(x, np.ascontiguousarray(y[i:i + batch].astype(np.int64)))
    step.release_monitor()
    return mon


def test_fast_path_leaves_a_non_finite_step_to_the_general_path():
    """A NaN planted in the input: the general path locates it (the fast path declines)."""
    mon = run_with_input_nan(8)
    found = [e for e in mon.events if e.kind == "nonfinite"]
    assert found and found[0].step == 3 and found[0].layer == "0" and found[0].tensor == "output"
    assert not math.isnan(mon.history.last("0", "weight.grad_norm"))


def test_norms_only_compiled_step_locates_a_forward_nan_in_the_backward():
    """activations=False: the plan measures no layer output (no act_* rows), and a NaN
    planted in the input is located at the first dz holding it: the last layer's, the
    first the backward reaches; the step is skipped as without a monitor."""
    mon = run_with_input_nan(6, activations=False, updates=False)
    assert not any(m.startswith("act_") for m in mon.history.metrics())
    assert np.isnan(mon._act_S[:, 7]).all()  # the plan wrote no activation row
    found = [e for e in mon.events if e.kind == "nonfinite"]
    assert [(e.step, e.layer, e.tensor, e.evidence["phase"]) for e in found] == [(3, "5", "dz", "backward")]
    assert mon.history.series("", "skipped")[1].tolist() == [0, 0, 0, 1, 0, 0]


def test_monitor_rows_rejects_bad_input_with_value_errors():
    """The internal kernel checks every array and index before it runs (no crash)."""
    from gradcore import _C
    k, L = 2, 2
    spec = np.array([k, L, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=np.int64)
    R, W, D, S = np.ones((k, 5)), np.ones((k, 4)), np.ones((L, 6)), np.zeros((L, 8))
    args = dict(R=R, W=W, D=D, S=S, spec=spec, sat_size=np.zeros(0), limits=np.ones(7), loss=0.5, glob=np.ones(4),
                updates=True, vals=np.empty(3 * k + 1 + k + 3 + 5 + 5 + 2 * k), mask=np.empty(1 + 3 + 1, np.uint8))
    assert _C.monitor_rows(**args)
    # layer 0 holds both parameters: norm sqrt(2) > 1 (exploding); gradient norm 1 is not < 1, nor the ratio 1
    np.testing.assert_array_equal(args["mask"], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(args["vals"], [1, 1, 1, 1, 1, 1, math.sqrt(2), 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
                                                 0.5, 1, 1, 1, 1, 1, 1, 1, 1])
    for name, bad in (("R", np.ones((k, 4))), ("W", np.ones((k, 1))), ("D", np.ones((L, 6), np.float32)),
                      ("S", np.ones((L + 1, 8))), ("spec", spec[:-1]), ("spec", np.where(np.arange(14) == 13, 9, spec)),
                      ("limits", np.ones(6)), ("vals", np.empty(3)), ("mask", np.empty(5)),
                      ("w_next", np.empty((k, 3))), ("w_next", np.empty((k, 4), np.float32))):
        with pytest.raises(ValueError, match=name):
            _C.monitor_rows(**dict(args, **{name: bad}))
    with pytest.raises(TypeError, match="w_next"):
        _C.monitor_rows(**dict(args, w_next=[[0.0] * 4] * k))
    R[1, 0] = np.nan  # a non-finite gradient: nothing written, the general path takes the step
    vals = args["vals"].copy()
    w_next = np.full((k, 4), 7.0)
    assert _C.monitor_rows(**args, w_next=w_next) == 0
    np.testing.assert_array_equal(args["vals"], vals)
    np.testing.assert_array_equal(w_next, 7.0)


def monitor_rows_reference(R, W, D, S, param_layer, graded, dz, act, dead, sat, kern, sat_size, limits, loss, glob,
                           updates):
    """csrc/stats.h monitor_rows in NumPy: the values and the conditions."""
    ex, van, flow_ratio, dead_lim, sat_lim, low, high = limits
    g = np.sqrt(R[:, 0])
    ln = [np.sqrt(sum(R[j, 0] for j in range(len(R)) if param_layer[j] == i)) for i in graded]
    dead_f = [S[i, 5] / S[i, 7] for i in dead]
    sat_f = [S[i, 6] / n for i, n in zip(sat, sat_size)]
    vals = list(np.stack([g, R[:, 1], R[:, 2]], 1).ravel()) + ln + list(W[:, 1])
    vals += [D[i, c] for i in dz for c in (1, 2, 3)] + [S[i, c] for i in act for c in range(5)]
    vals += dead_f + sat_f + [loss] + list(glob)
    ratio = None
    if updates:
        u = np.sqrt(R[:, 4])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = u / W[:, 1]
        vals += list(u) + list(ratio)
    first, last = g[kern[0]], g[kern[-1]]
    flow = len(kern) >= 2 and (first / last if last > 0 else np.inf) < flow_ratio
    mask = [v > ex for v in ln] + [g[j] < van for j in kern] + [flow] + [v > dead_lim for v in dead_f]
    mask += [v > sat_lim for v in sat_f] + [updates and ratio[j] > high for j in kern]
    mask += [updates and ratio[j] < low for j in kern]
    return np.array(vals), np.array(mask, np.uint8)


@pytest.mark.parametrize("updates", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_monitor_rows_match_numpy(seed, updates):
    from gradcore import _C
    rng = np.random.default_rng(seed)
    L, k = 6, 9
    param_layer = [0, 0, 1, 1, 3, 3, 4, 5, -1]
    graded, dz, act, dead, sat = [0, 1, 3, 4, 5], [5, 4, 3, 1, 0], [0, 1, 2, 3, 4, 5], [1, 2], [3, 4]
    kern = [0, 2, 4, 6]
    R = rng.random((k, 5)) * rng.choice([1e-6, 1e-2, 1.0, 1e4], size=(k, 1))
    R[rng.integers(k), 4] = 0.0
    W = rng.random((k, 6)) + 0.01
    W[rng.integers(k), 1] = 0.0  # a zero weight norm: ratio inf or nan
    D = rng.random((L, 6))
    S = rng.random((L, 8))
    S[:, 4] = 0
    S[:, 7] = rng.integers(1, 20, size=L)
    S[:, 5] = np.floor(S[:, 7] * rng.random(L))
    sat_size = rng.integers(10, 40, size=len(sat)).astype(float)
    S[[3, 4], 6] = np.floor(sat_size * rng.random(2))
    limits = np.array([rng.choice([0.5, 2.0]), 0.3, rng.choice([0.1, 10.0]), 0.4, 0.5, 0.05, 0.5])
    glob = np.array([1.5, 0.9, 0.0, 0.01])
    spec = np.array([k, L, len(graded), len(dz), len(act), len(dead), len(sat), len(kern)] + param_layer + graded + dz +
                    act + dead + sat + kern, dtype=np.int64)
    want_vals, want_mask = monitor_rows_reference(R, W, D, S, param_layer, graded, dz, act, dead, sat, kern, sat_size,
                                                  limits, 0.75, glob, updates)
    vals, mask = np.empty(len(want_vals)), np.empty(len(want_mask), np.uint8)
    w_next = np.full((k, 4), 7.0)
    if seed % 3 == 2:
        R[seed % k, 3] = np.inf  # the weights after the update are not finite: w_next is not written
    with np.errstate(divide="ignore", invalid="ignore"):
        code = _C.monitor_rows(R, W, D, S, spec, sat_size, limits, 0.75, glob, updates, vals, mask, w_next)
    np.testing.assert_array_equal(vals, want_vals)
    np.testing.assert_array_equal(mask, want_mask)
    assert 0 < mask.sum() < len(mask)
    # 1: written; 2: updates and an update norm is not 0; 4: w_next written
    moved = updates and bool(np.any(R[:, 4] != 0))
    finite = np.isfinite(R[:, 3].sum())
    assert code == 1 + 2 * moved + 4 * finite
    want_next = np.stack([R[:, 3], np.sqrt(R[:, 3]), np.full(k, np.nan), np.zeros(k)], axis=1) if finite else 7.0
    np.testing.assert_array_equal(w_next, want_next)
    R[:, 4] = 0.0  # nothing moved
    assert _C.monitor_rows(R, W, D, S, spec, sat_size, limits, 0.75, glob, updates, vals, mask) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_sees_thresholds_changed_between_steps(dtype):
    """The fast path keeps its thresholds' array between steps: a threshold set on the
    monitor between two steps applies from the next step, as on the general path. The
    run starts with thresholds nothing reaches (every step takes the quiet branch)."""
    quiet = dict(exploding=1e9, vanishing=1e-12, flow_ratio=1e-12, dead=1.0, saturated=1.0, update_ratio=(1e-12, 1e12))
    runs = []
    for fast in (True, False):
        net, opt, loss, X, y, batch = sigmoid_net(dtype)
        mon = GradientMonitor(net, **quiet)
        if not fast:
            general_path_only(mon)
        step = gradcore.compile_step(net, loss, opt, monitor=mon)
        for t, i in enumerate(range(0, len(X), batch)):
            if t == 4:
                mon.exploding = 1e-3
            if t == 8:
                mon.update_ratio = (1e-12, 1e-4)
            step(np.ascontiguousarray(X[i:i + batch]), np.ascontiguousarray(y[i:i + batch]))
        step.release_monitor()
        runs.append(mon)
    fast, slow = runs
    assert events(fast) == events(slow)
    kinds = {(e.kind, e.step) for e in fast.events}
    assert ("exploding", 4) in kinds and ("update_ratio_high", 8) in kinds
    np.testing.assert_array_equal(fast.history.value, slow.history.value)


def train_eager(make, dtype, fast, **monitor_args):
    net, opt, loss, X, y, batch = make(dtype)
    net.compile(opt, loss=loss)
    mon = GradientMonitor(net, **monitor_args)
    if not fast:
        general_path_only(mon)
    taken = []
    orig = mon._record_fast
    mon._record_fast = lambda *args: taken.append(orig(*args)) or taken[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        net.fit(X, y if y.ndim == 2 else y.astype(np.int64), epochs=3, batch_size=batch, verbose=0, callbacks=[mon],
                compiled=False, shuffle=False)
    return mon, taken


@pytest.mark.parametrize("make", [sigmoid_net, relu_bn_net])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("args", [{}, {"activations": False, "updates": False}, {"every": 2},
                                  {"flow_ratio": 0.5, "update_ratio": (3e-3, 3e-2), "exploding": 0.5},
                                  {"growth": 1.2, "vanishing": 1e-6}])
def test_eager_fit_fast_path_gives_the_general_paths_rows_and_events(make, dtype, args, monkeypatch):
    """An eager fit that records with the optimizer's statistics (any network size here)
    writes its steps through the same fast path (rows and event conditions in C++) as a
    compiled step, with the same rows, events and state as the general path."""
    from gradcore.monitor import _monitor
    monkeypatch.setattr(_monitor, "_STATS_MIN_VALUES", 0)
    (fast, taken), (slow, _) = train_eager(make, dtype, True, **args), train_eager(make, dtype, False, **args)
    assert sum(taken) > 0.9 * len(taken) > 0  # the fast path wrote the steps
    h, g = fast.history, slow.history
    assert_same_history(h, g)
    assert events(fast) == events(slow)
    assert {k: set(v) for k, v in fast._active.items() if v} == {k: set(v) for k, v in slow._active.items() if v}
    assert [list(d) for d in fast._recent] == [list(d) for d in slow._recent]


@pytest.mark.parametrize("compiled", [True, False])
def test_fast_path_gives_no_update_verdict_when_nothing_moved(compiled, monkeypatch):
    """At learning rate 0 no update moves a parameter: no update-ratio event (the general
    path's rule), on the fast path as on the general path."""
    from gradcore.monitor import _monitor
    monkeypatch.setattr(_monitor, "_STATS_MIN_VALUES", 0)

    def zero_lr(dtype):
        net, opt, loss, X, y, batch = relu_bn_net(dtype)
        return net, optim.Adam(net.parameters(), lr=0.0), loss, X, y, batch

    runs = [(train if compiled else train_eager)(zero_lr, np.float64, fast) for fast in (True, False)]
    fast, slow = [r if compiled else r[0] for r in runs]
    assert events(fast) == events(slow)
    assert not [e for e in fast.events if e.kind.startswith("update_ratio")]
    assert {e.kind for e in fast.events} >= {"dead_units"}  # the other groups still report
    np.testing.assert_array_equal(fast.history.value, slow.history.value)
