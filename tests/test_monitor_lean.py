"""The compiled step's one-call record (``GradientMonitor._record_compiled`` through
``_C.MonitorStep``) and the growth windows it shares with Python (``_Recent``,
``_C.monitor_recent_quiet``): against NumPy / deque oracles, and against the general path
on training runs that change the batch size, skip steps and grow the history."""
import collections
import math
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import _C, nn, optim
from gradcore.monitor import GradientMonitor
from gradcore.monitor import _monitor
from monitor_helpers import assert_same_history, general_path_only


def test_recent_window_is_a_deque_with_maxlen():
    rng = np.random.default_rng(0)
    W = _monitor._GROWTH_WINDOW
    buf, n, head = np.zeros((3, W)), np.zeros(3, np.int64), np.zeros(3, np.int64)
    rec = [_monitor._Recent(buf, n, head, i) for i in range(3)]
    ref = [collections.deque(maxlen=W) for _ in range(3)]
    for t in range(40):
        i = int(rng.integers(3))
        v = float(rng.standard_normal())
        rec[i].append(v)
        ref[i].append(v)
        for a, b in zip(rec, ref):
            assert len(a) == len(b)
            assert list(a) == list(b)
            if b:
                assert min(a) == min(b)
                assert _monitor._median(a) == _monitor._median(b)


def quiet_reference(windows, graded, ln, min_count, vanishing, growth):
    """monitor_recent_quiet on deques: True and the norms appended when no candidate."""
    for i, v in zip(graded, ln):
        w = windows[i]
        if len(w) >= min_count and v > vanishing and v > growth * min(w):
            return False
    for i, v in zip(graded, ln):
        windows[i].append(v)
    return True


@pytest.mark.parametrize("seed", range(5))
def test_monitor_recent_quiet_matches_deques(seed):
    rng = np.random.default_rng(seed)
    L, W = 5, _monitor._GROWTH_WINDOW
    buf, n, head = np.zeros((L, W)), np.zeros(L, np.int64), np.zeros(L, np.int64)
    rec = [_monitor._Recent(buf, n, head, i) for i in range(L)]
    ref = [collections.deque(maxlen=W) for _ in range(L)]
    graded = np.array([0, 2, 3, 4], dtype=np.int64)
    outcomes = []
    for t in range(60):
        ln = rng.random(len(graded)) * rng.choice([1.0, 1.0, 1.0, 30.0], size=len(graded)) + 1e-3
        if t % 7 == 0:
            ln[0] = 1e-6  # below vanishing: never a candidate
        vals = np.concatenate([rng.random(3), ln, rng.random(2)])
        want_cands = [g for g, (i, v) in enumerate(zip(graded.tolist(), ln.tolist()))
                      if len(ref[i]) >= 5 and v > 1e-4 and v > 4.0 * min(ref[i])]
        assert _C.monitor_recent_candidates(buf, n, head, graded, vals, 3, 5, 1e-4, 4.0) == want_cands
        got = _C.monitor_recent_quiet(buf, n, head, graded, vals, 3, 5, 1e-4, 4.0)
        want = quiet_reference(ref, graded.tolist(), ln.tolist(), 5, 1e-4, 4.0)
        assert got == want
        outcomes.append(got)
        if not got:  # the general path appends (here: as the detector would, or in one call)
            for i, v in zip(graded.tolist(), ln.tolist()):
                ref[i].append(v)
                if t % 2:
                    rec[i].append(v)
            if not t % 2:
                _C.monitor_recent_push(buf, n, head, graded, vals, 3)
        assert [list(r) for r in rec] == [list(d) for d in ref]
    assert 0 < sum(outcomes) < len(outcomes)  # both outcomes were exercised
    with pytest.raises(ValueError, match="graded"):
        _C.monitor_recent_quiet(buf, n, head, np.array([5], np.int64), vals, 0, 5, 0.0, 2.0)
    with pytest.raises(ValueError, match="offset"):
        _C.monitor_recent_quiet(buf, n, head, graded, vals, len(vals) - 2, 5, 0.0, 2.0)


def make_step_ctx(rng, updates=True):
    """A hand-made layout (as test_monitor_fastpath's monitor_rows tests) bound in a MonitorStep."""
    L, k = 6, 9
    param_layer = [0, 0, 1, 1, 3, 3, 4, 5, -1]
    graded, dz, act, dead, sat = [0, 1, 3, 4, 5], [5, 4, 3, 1, 0], [0, 1, 2, 3, 4, 5], [1, 2], [3, 4]
    kern = [0, 2, 4, 6]
    spec = np.array([k, L, len(graded), len(dz), len(act), len(dead), len(sat), len(kern)] + param_layer + graded +
                    dz + act + dead + sat + kern, dtype=np.int64)
    R = rng.random((k, 5)) + 0.01
    D = rng.random((L, 6))
    D[2] = np.nan  # layer 2 has no dz row
    S = rng.random((L, 8))
    S[:, 4] = 0
    S[:, 7] = rng.integers(1, 20, size=L)
    S[:, 5] = np.floor(S[:, 7] * rng.random(L))
    sat_size = rng.integers(10, 40, size=len(sat)).astype(float)
    nv = 3 * k + len(graded) + k + 3 * len(dz) + 5 * len(act) + len(dead) + len(sat) + 5 + (2 * k if updates else 0)
    nm = len(graded) + 3 * len(kern) + 1 + len(dead) + len(sat)
    vals, mask = np.empty(nv), np.empty(nm, np.uint8)
    lc = rng.integers(0, 7, size=nv).astype(np.int32)
    mc = rng.integers(0, 30, size=nv).astype(np.int32)
    w0, w1 = np.full((k, 4), 5.0), np.full((k, 4), 6.0)
    Wn = _monitor._GROWTH_WINDOW
    recent, rn, rh = np.zeros((L, Wn)), np.zeros(L, np.int64), np.zeros(L, np.int64)
    o_ln = 3 * k
    ctx = _C.MonitorStep(R, D, S, spec, sat_size, vals, mask, np.isnan(S[:, 7]).astype(np.uint8),
                         np.isnan(D[:, 3]).astype(np.uint8), lc, mc, w0, w1, recent, rn, rh, 5, o_ln, updates)
    limits = (2.0, 0.3, 0.1, 0.4, 0.5, 0.05, 0.5)
    ctx.set_limits(limits + (3.0,))
    return dict(ctx=ctx, R=R, D=D, S=S, spec=spec, sat_size=sat_size, vals=vals, mask=mask, lc=lc, mc=mc, w0=w0,
                w1=w1, recent=recent, rn=rn, rh=rh, limits=np.array(limits), graded=graded, o_ln=o_ln, k=k)


@pytest.mark.parametrize("updates", [True, False])
def test_monitor_step_writes_monitor_rows_into_the_history(updates):
    rng = np.random.default_rng(3)
    c = make_step_ctx(rng, updates)
    ctx, k = c["ctx"], c["k"]
    cap = 3 * len(c["vals"]) + 4
    hs, hl, hm, hv = np.zeros(cap, np.int64), np.zeros(cap, np.int32), np.zeros(cap, np.int32), np.zeros(cap)
    assert ctx.run(c["w0"], 0.5, 1.5, 0.9, 0.0, 0.01, 7, 0, None) == 0  # no history bound yet: nothing
    ctx.bind_history(hs, hl, hm, hv)
    W = rng.random((k, 6)) + 0.01
    glob = np.array([1.5, 0.9, 0.0, 0.01])
    want_vals, want_mask = np.empty_like(c["vals"]), np.empty_like(c["mask"])
    want_next = np.full((k, 4), 9.0)
    want_code = _C.monitor_rows(c["R"], W, c["D"], c["S"], c["spec"], c["sat_size"], c["limits"], 0.5, glob, updates,
                                want_vals, want_mask, want_next)
    rows = ctx.rows
    assert rows == len(want_vals)
    code = ctx.run(W, 0.5, 1.5, 0.9, 0.0, 0.01, 7, 2, None)
    assert code == want_code  # W is neither buffer: w_next went to w0, no quiet check without prev
    np.testing.assert_array_equal(c["vals"], want_vals)
    np.testing.assert_array_equal(c["mask"], want_mask)
    np.testing.assert_array_equal(hv[2:2 + rows], want_vals)
    np.testing.assert_array_equal(hs[2:2 + rows], 7)
    np.testing.assert_array_equal(hl[2:2 + rows], c["lc"])
    np.testing.assert_array_equal(hm[2:2 + rows], c["mc"])
    assert not hv[:2].any() and not hv[2 + rows:].any()
    np.testing.assert_array_equal(c["w0"], want_next)
    np.testing.assert_array_equal(c["w1"], 6.0)
    assert ctx.signature() == want_mask.tobytes()
    # the next step reads w0: w_next goes to w1; the same conditions and no candidate (the
    # windows hold one norm): quiet, the graded norms joined their windows
    mask2 = np.empty_like(want_mask)
    _C.monitor_rows(c["R"], c["w0"].copy(), c["D"], c["S"], c["spec"], c["sat_size"], c["limits"], 0.5, glob, updates,
                    np.empty_like(want_vals), mask2)
    code2 = ctx.run(c["w0"], 0.5, 1.5, 0.9, 0.0, 0.01, 8, 2 + rows, mask2.tobytes())
    in_sync = not updates or bool(code2 & 2)
    assert code2 & 8 and bool(code2 & 16) == in_sync
    ln = c["vals"][c["o_ln"]:c["o_ln"] + len(c["graded"])]
    if in_sync:
        np.testing.assert_array_equal(c["rn"][c["graded"]], 1)
        np.testing.assert_array_equal(c["recent"][c["graded"], 0], ln)
    np.testing.assert_array_equal(hs[2 + rows:2 + 2 * rows], 8)
    # another signature: not quiet, the windows unchanged
    before = c["recent"].copy()
    code3 = ctx.run(c["w1"], 0.5, 1.5, 0.9, 0.0, 0.01, 9, 2 * rows + 2, b"\x07" * len(want_mask))
    assert not code3 & 16 and not code3 & 8  # W was w1: w_next went to w0
    np.testing.assert_array_equal(c["recent"], before)
    # no room left in the bound history: nothing written
    assert ctx.run(c["w1"], 0.5, 1.5, 0.9, 0.0, 0.01, 10, cap - rows + 1, None) == 0


def test_monitor_step_leaves_other_steps_to_the_general_path():
    """0 and nothing written: a non-finite loss, a NaN update sum with updates, a NaN row
    pattern other than the layout's, a non-finite gradient sum (monitor_rows' own test)."""
    rng = np.random.default_rng(4)
    c = make_step_ctx(rng, True)
    ctx, k = c["ctx"], c["k"]
    cap = 2 * len(c["vals"])
    hv = np.full(cap, 3.0)
    ctx.bind_history(np.zeros(cap, np.int64), np.zeros(cap, np.int32), np.zeros(cap, np.int32), hv)
    W = rng.random((k, 4)) + 0.01
    vals0, w0 = c["vals"].copy(), c["w0"].copy()

    def unchanged():
        np.testing.assert_array_equal(hv, 3.0)
        np.testing.assert_array_equal(c["w0"], w0)
        np.testing.assert_array_equal(c["vals"], vals0)

    assert ctx.run(W, math.nan, 1.5, 1.0, 0.0, 0.01, 1, 0, None) == 0
    assert ctx.run(W, math.inf, 1.5, 1.0, 0.0, 0.01, 1, 0, None) == 0
    unchanged()
    for table, row, col in ((c["R"], 3, 4), (c["S"], 2, 7), (c["D"], 2, 3), (c["D"], 0, 3), (c["R"], 1, 0)):
        saved = table[row, col]
        table[row, col] = 1.0 if np.isnan(saved) else np.nan
        assert ctx.run(W, 0.5, 1.5, 1.0, 0.0, 0.01, 1, 0, None) == 0
        unchanged()
        table[row, col] = saved
    assert ctx.run(W, 0.5, 1.5, 1.0, 0.0, 0.01, 1, 0, None) & 1
    with pytest.raises(ValueError, match="W"):
        ctx.run(np.ones((k + 1, 4)), 0.5, 1.5, 1.0, 0.0, 0.01, 1, 0, None)
    with pytest.raises(ValueError, match="limits"):
        ctx.set_limits((1.0, 2.0))
    with pytest.raises(ValueError, match="vals"):
        _C.MonitorStep(c["R"], c["D"], c["S"], c["spec"], c["sat_size"], np.empty(3), c["mask"],
                       np.zeros(6, np.uint8), np.zeros(6, np.uint8), c["lc"], c["mc"], c["w0"], c["w1"], c["recent"],
                       c["rn"], c["rh"], 5, 0, True)


def bn_net(dtype, lr=0.05):
    gradcore.manual_seed(2)
    net = nn.Sequential(nn.Dense(10, 32, dtype=dtype), nn.BatchNorm(32, dtype=dtype), nn.ReLU(),
                        nn.Dense(32, 16, activation="tanh", dtype=dtype), nn.Dense(16, 3, dtype=dtype), dtype=dtype)
    rng = np.random.default_rng(6)
    X = rng.standard_normal((400, 10)).astype(dtype)
    y = rng.integers(0, 3, size=len(X)).astype(np.int64)
    return net, optim.Adam(net.parameters(), lr=lr), X, y


def train_mixed(fast, dtype, bad_step=None, **args):
    """A compiled run whose batch size changes (16, 16, 7, 16, 24, ...) with an optional
    NaN input (a skipped step); the fast path on or off."""
    net, opt, X, y = bn_net(dtype)
    mon = GradientMonitor(net, **args)
    if not fast:
        general_path_only(mon)
    taken = []
    orig = mon._lean_rows
    mon._lean_rows = lambda *a: taken.append(1) or orig(*a)
    step = gradcore.compile_step(net, "cross_entropy", opt, monitor=mon)
    sizes = [16, 16, 7, 16, 16, 16, 24, 24, 16, 16, 16, 7, 7, 16, 16, 16]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        i = 0
        for t, b in enumerate(sizes * 2):
            x = np.ascontiguousarray(X[i:i + b])
            if t == bad_step:
                x[0, 0] = np.nan
            step(x, np.ascontiguousarray(y[i:i + b]))
            i = (i + b) % (len(X) - 32)
    step.release_monitor()
    return mon, len(taken)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("args", [{}, {"activations": False, "updates": False}, {"every": 3},
                                  {"growth": 1.2, "vanishing": 1e-6}])
@pytest.mark.parametrize("bad_step", [None, 9])
def test_one_call_record_gives_the_general_paths_rows_and_events(dtype, args, bad_step):
    fast, taken = train_mixed(True, dtype, bad_step, **args)
    slow, none = train_mixed(False, dtype, bad_step, **args)
    assert taken >= (1 if "every" in args else 5) and none == 0
    h, g = fast.history, slow.history
    assert_same_history(h, g)
    assert [(e.kind, e.step, e.layer, e.tensor, e.value, e.message) for e in fast.events] == \
        [(e.kind, e.step, e.layer, e.tensor, e.value, e.message) for e in slow.events]
    assert {k: set(v) for k, v in fast._active.items() if v} == {k: set(v) for k, v in slow._active.items() if v}
    assert [list(d) for d in fast._recent] == [list(d) for d in slow._recent]
    if bad_step is not None:
        assert any(e.kind == "nonfinite" for e in fast.events)


def test_one_call_record_feeds_loggers_the_same_rows():
    class Logger:
        def __init__(self):
            self.steps = []

        def write_step(self, monitor, step, rows):
            self.steps.append((step, rows))

        def close(self):
            pass

    logs = []
    for fast in (True, False):
        net, opt, X, y = bn_net(np.float64)
        logger = Logger()
        mon = GradientMonitor(net, loggers=[logger])
        if not fast:
            general_path_only(mon)
        step = gradcore.compile_step(net, "cross_entropy", opt, monitor=mon)
        for i in range(0, 160, 16):
            step(np.ascontiguousarray(X[i:i + 16]), np.ascontiguousarray(y[i:i + 16]))
        step.release_monitor()
        logs.append(logger.steps)
    assert len(logs[0]) == 10
    assert logs[0] == logs[1]


def test_monitor_rows_declines_an_unmeasured_update_only_with_updates():
    """A NaN update sum (a tensor the optimizer did not step) sends the step to the general
    path when the monitor records updates (the eager fast path relies on it), and is
    ignored without updates."""
    rng = np.random.default_rng(7)
    c = make_step_ctx(rng, True)
    k = c["k"]
    W = rng.random((k, 4)) + 0.01
    glob = np.array([1.5, 0.9, 0.0, 0.01])
    c["R"][4, 4] = np.nan
    vals = np.full(len(c["vals"]), 2.0)
    assert _C.monitor_rows(c["R"], W, c["D"], c["S"], c["spec"], c["sat_size"], c["limits"], 0.5, glob, True, vals,
                           np.empty_like(c["mask"])) == 0
    np.testing.assert_array_equal(vals, 2.0)
    n_plain = len(c["vals"]) - 2 * k
    assert _C.monitor_rows(c["R"], W, c["D"], c["S"], c["spec"], c["sat_size"], c["limits"], 0.5, glob, False,
                           np.empty(n_plain), np.empty_like(c["mask"])) & 1


def test_a_monitor_with_a_bound_record_can_be_deep_copied():
    """The C++ binding is not copied: the copy has the history and binds its own later."""
    import copy
    net, opt, X, y = bn_net(np.float64)
    mon = GradientMonitor(net)
    step = gradcore.compile_step(net, "cross_entropy", opt, monitor=mon)
    for i in range(0, 64, 16):
        step(np.ascontiguousarray(X[i:i + 16]), np.ascontiguousarray(y[i:i + 16]))
    assert mon._lean is not None
    twin = copy.deepcopy(mon)
    assert twin._lean is None and mon._lean is not None
    assert twin._fast == {} and mon._fast  # (keyed by the original's captures' ids: made again)
    np.testing.assert_array_equal(twin.history.value, mon.history.value)
    assert [list(d) for d in twin._recent] == [list(d) for d in mon._recent]
    twin._recent[0].append(123.0)  # its own windows
    assert 123.0 not in list(mon._recent[0])
    step.release_monitor()
