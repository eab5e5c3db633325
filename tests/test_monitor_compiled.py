"""GradientMonitor fed by statistics computed elsewhere (the compiled step's path,
``_arrays_begin`` / ``_record_arrays``) against the monitor's taps on the same training run.

The arrays are computed here by a NumPy forward / backward of the network (the oracle:
pre-activations, outputs and the gradient w.r.t. each monitored layer's output before its
activation, as the taps define them) reduced by ``_C.activation_stats`` / ``_C.grad_stats``,
plus the optimizer's own ``last_stats``: what a compiled plan hands to the monitor. The
same network trained twice on identical batches, once watched through the taps and once
through the arrays, must give the same history and events, including a NaN planted in the
input, a NaN planted in a weight, dead and saturated units."""
import math
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import _C, functional as F, nn, optim
from gradcore.monitor import GradientMonitor, _monitor
from gradcore.training import _current_lr

EPS = 1e-5          # BatchNorm's default
SATURATION = 5.0    # the monitor's default
NAN_X_STEP, NAN_W_STEP = 4, 8


def make_net(dtype):
    gradcore.manual_seed(3)
    net = nn.Sequential(nn.Dense(6, 16, kernel_initializer="he_normal", dtype=dtype), nn.BatchNorm(16, dtype=dtype),
                        nn.ReLU(), nn.Dense(16, 8, activation="tanh", dtype=dtype), nn.Dense(8, 3, dtype=dtype),
                        dtype=dtype)
    net[1].bias.data[:12] = -10.0   # 12 of 16 units below zero for every sample: dead (75% > 70%)
    net[3].weight.data *= 40.0       # tanh pre-activations far beyond +-5: saturated
    return net


def batches(dtype, steps, n=24):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((n, 6)).astype(dtype), rng.integers(0, 3, size=n)) for _ in range(steps)]


def oracle_arrays(net, x, y, dtype):
    """(act_S, dz_S) of the monitored layers "0".."4" from a float64 NumPy forward /
    backward with the network's current parameters (mean cross-entropy)."""
    P = {name: p.data.astype(np.float64) for name, p in net.named_parameters()}
    x = x.astype(np.float64)
    B = len(x)
    z0 = x @ P["0.weight"].T + P["0.bias"]
    mu, var = z0.mean(0), z0.var(0)
    rstd = 1.0 / np.sqrt(var + EPS)
    xhat = (z0 - mu) * rstd
    a1 = P["1.weight"] * xhat + P["1.bias"]
    a2 = np.maximum(a1, 0.0)
    z3 = a2 @ P["3.weight"].T + P["3.bias"]
    a3 = np.tanh(z3)
    z4 = a3 @ P["4.weight"].T + P["4.bias"]
    e = np.exp(z4 - z4.max(1, keepdims=True))
    g4 = e / e.sum(1, keepdims=True)
    g4[np.arange(B), y] -= 1.0
    g4 /= B                                   # d(mean loss) / d logits
    da3 = g4 @ P["4.weight"]
    dz3 = da3 * (1.0 - a3 * a3)               # at layer 3's pre-activation (tanh fused into Dense)
    da2 = dz3 @ P["3.weight"]                 # at the ReLU layer's output (its output tensor's hook)
    da1 = np.where(a1 > 0, da2, 0.0)          # at the BatchNorm's output (relu' of a NaN is 0, as the kernel's)
    dxhat = da1 * P["1.weight"]
    dz0 = rstd * (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0))

    def act(A, Z, mode):
        A = np.ascontiguousarray(A, dtype=dtype)
        Z = None if Z is None else np.ascontiguousarray(Z, dtype=dtype)
        return _C.activation_stats(A, Z, mode, SATURATION)

    act_S = np.stack([act(z0, None, "none"), act(a1, None, "none"), act(a2, a1, "dead"), act(a3, z3, "saturated"),
                      act(z4, None, "none")])
    dz_S = _C.grad_stats([np.ascontiguousarray(d, dtype=dtype) for d in (dz0, da1, da2, dz3, g4)])
    return act_S, dz_S


def run(dtype, every, arrays, steps=12, own_passes=True):
    """Train on identical batches with a NaN in the input at NAN_X_STEP and in a weight at
    NAN_W_STEP; watched by the taps, or by arrays (the oracle's + the optimizer's stats)."""
    net = make_net(dtype)
    opt = optim.Adam(net.parameters(), lr=0.02, global_clip_norm=0.5)
    mon = GradientMonitor(net, every=every, optimizer=opt)
    if arrays:
        mon._use_arrays()
        assert opt.record_stats is False  # the monitor took nothing of the optimizer's
        opt.record_stats = True           # the statistics a compiled step's update pass gives
    elif own_passes:
        mon._release_optimizer()
        mon._stats_optimizer = lambda optimizer: None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t, (x, y) in enumerate(batches(dtype, steps)):
            if t == NAN_X_STEP:
                x = x.copy()
                x[2, 1] = np.nan
            if t == NAN_W_STEP:
                net[3].weight.data[1, 2] = np.nan
            recorded = mon._arrays_begin() if arrays else None
            if arrays and recorded:
                act_S, dz_S = oracle_arrays(net, x, y, dtype)
                lr = _current_lr(opt)
            loss = F.cross_entropy(net(gradcore.Tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            if not arrays:
                mon.record(loss)
            opt.step()
            if not arrays:
                mon.events  # reading results completes the step (its update is measured now, before the plant below)
            if arrays:
                if recorded:
                    assert opt.last_stats_step == t + 1
                    mon._record_arrays(float(loss.item()), act_S, dz_S, opt.last_stats, lr, opt.last_grad_norm,
                                       opt.last_clip_coef, opt.last_skipped, len(x))
                else:
                    mon._record_arrays(float(loss.item()), None, None, None, math.nan, opt.last_grad_norm,
                                       opt.last_clip_coef, opt.last_skipped, len(x))
            if t == NAN_W_STEP:
                assert opt.last_skipped
                net[3].weight.data[1, 2] = 0.25
    mon.close()
    return net, mon


def rows(mon):
    h = mon.history
    order = np.lexsort((h.metric.astype(str), h.layer.astype(str), h.step))
    return h.step[order], h.layer[order].astype(str), h.metric[order].astype(str), h.value[order]


ORACLE_METRICS = ("act_mean", "act_std", "act_min", "act_max", "dz_norm", "dz_max")


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_arrays_path_gives_the_taps_history(dtype, every):
    net_t, tap = run(dtype, every, arrays=False)
    net_a, arr = run(dtype, every, arrays=True)
    for a, b in zip(net_t.parameters(), net_a.parameters()):
        np.testing.assert_array_equal(a.data, b.data)  # the same training run
    st, lt, mt, vt = rows(tap)
    sa, la, ma, va = rows(arr)
    np.testing.assert_array_equal(st, sa)
    np.testing.assert_array_equal(lt, la)
    np.testing.assert_array_equal(mt, ma)
    # the optimizer / gradient / weight / update statistics and the global rows come from the
    # same kernels on the same values: tight; outputs and dz from the float64 oracle: its rounding
    oracle = np.isin(mt, ORACLE_METRICS)
    tight = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(va[~oracle], vt[~oracle], rtol=tight, atol=0, equal_nan=True)
    loose = (1e-9, 1e-13) if dtype == np.float64 else (2e-4, 1e-6)
    np.testing.assert_allclose(va[oracle], vt[oracle], rtol=loose[0], atol=loose[1], equal_nan=True)
    assert [str(e) for e in arr.events] == [str(e) for e in tap.events]
    # what the run must have covered
    kinds = {(e.kind, e.layer, e.tensor, e.step) for e in tap.events}
    assert ("nonfinite", "0", "output", NAN_X_STEP) in kinds
    assert ("nonfinite", "3", "weight", NAN_W_STEP) in kinds
    assert any(k[0] == "dead_units" and k[1] == "2" for k in kinds)
    assert any(k[0] == "saturated_units" and k[1] == "3" for k in kinds)
    dead = arr.history.series("2", "dead_frac")[1]
    assert dead[0] == 0.75
    sat = arr.history.series("3", "saturated_frac")[1]
    net0 = make_net(dtype)  # step 0 again in NumPy: entries of layer 3 with |pre-activation| > 5
    x0 = batches(dtype, 1)[0][0].astype(np.float64)
    P = {name: p.data.astype(np.float64) for name, p in net0.named_parameters()}
    z0 = x0 @ P["0.weight"].T + P["0.bias"]
    a1 = P["1.weight"] * (z0 - z0.mean(0)) / np.sqrt(z0.var(0) + EPS) + P["1.bias"]
    z3 = np.maximum(a1, 0) @ P["3.weight"].T + P["3.bias"]
    assert sat[0] == np.mean(np.abs(z3) > SATURATION) and 0.5 < sat[0] < 1.0
    assert tap.history.series("3", "saturated_frac")[1][0] == sat[0]
    recorded = sorted(set(sa.tolist()))
    expected = sorted(set(range(0, 12, every)) | {NAN_X_STEP + 1, NAN_W_STEP + 1}) if every > 1 else list(range(12))
    assert recorded == expected  # after a non-finite gradient norm, the next step is recorded too


def test_arrays_path_against_the_optimizer_stats_tap_path(monkeypatch):
    """The taps' optimizer-statistics path (DESIGN.md decision 7) gives the same history too."""
    monkeypatch.setattr(_monitor, "_STATS_MIN_VALUES", 0)
    _, tap = run(np.float64, 1, arrays=False, own_passes=False)
    _, arr = run(np.float64, 1, arrays=True)
    assert tap._stats_opt is None  # closed; it was used: its rows came at the optimizer step
    st, lt, mt, vt = rows(tap)
    sa, la, ma, va = rows(arr)
    np.testing.assert_array_equal(mt, ma)
    np.testing.assert_allclose(va, vt, rtol=1e-9, atol=1e-13, equal_nan=True)
    assert [str(e) for e in arr.events] == [str(e) for e in tap.events]


def test_weights_come_from_the_previous_update_when_it_measured_them():
    """Every step recorded: only the first step measures the weights itself; later steps
    take the previous update's param_sumsq (no pass of their own)."""
    net = make_net(np.float64)
    opt = optim.SGD(net.parameters(), lr=0.01)
    opt.record_stats = True
    mon = GradientMonitor(net)
    mon._use_arrays()
    measured = []
    real = mon._segment_stats

    def spy(which):
        measured.append(which)
        return real(which)

    mon._segment_stats = spy
    for t, (x, y) in enumerate(batches(np.float64, 3)):
        assert mon._arrays_begin()
        act_S, dz_S = oracle_arrays(net, x, y, np.float64)
        before = real("data")
        loss = F.cross_entropy(net(gradcore.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon._record_arrays(loss.item(), act_S, dz_S, opt.last_stats, 0.01, opt.last_grad_norm, 1.0, False, len(x))
        got = mon.history.series("0", "weight.norm")[1][-1]
        assert got == pytest.approx(before[0, 1], rel=1e-14)
    assert measured == ["data"]


def test_arrays_path_refuses_bad_input_and_record():
    net = make_net(np.float64)
    mon = GradientMonitor(net)
    mon._use_arrays()
    with pytest.raises(RuntimeError, match="compiled step"):
        mon.record(1.0)
    assert mon._arrays_begin()
    good_act, good_dz = np.zeros((5, 8)), np.zeros((5, 6))
    with pytest.raises(ValueError, match=r"opt_stats must have shape \(8, 5\)"):
        mon._record_arrays(1.0, good_act, good_dz, np.zeros((7, 5)), 0.1, 1.0, 1.0, False, 4)
    assert mon._arrays_begin()
    with pytest.raises(ValueError, match=r"act_S must have shape \(5, 8\)"):
        mon._record_arrays(1.0, np.zeros((4, 8)), good_dz, np.zeros((8, 5)), 0.1, 1.0, 1.0, False, 4)
    with pytest.raises(ValueError, match="histograms"):
        GradientMonitor(net, histograms=True)._use_arrays()
    mon._use_arrays(False)
    assert mon.record(1.0) is None  # the taps' path again


# ---------------------------------------------------------------------- the compiled step
# The monitor on gradcore.compile_step / fit's compiled path: the plan computes the
# statistics (activations after each node's forward, dz after its backward, the optimizer's
# per-tensor sums), the same history and events as the eager taps on the same training.
plan_only = pytest.mark.skipif(not hasattr(_C, "Plan") or "set_stats" not in dir(getattr(_C, "Plan", object)),
                               reason="the extension has no compiled plans with statistics")
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def net_relu_bn(dtype):
    """make_net's layers (dead units in "2", saturated ones in "3"), compiled with Adam + clipping."""
    net = make_net(dtype)
    net.compile(optim.Adam(net.parameters(), lr=0.02, global_clip_norm=0.5), "cross_entropy")
    return net


def net_mixed(dtype):
    """Every kind of monitored layer the plan lowers: fused Dense activations, an activation
    layer, Dropout (not monitored), a Residual block with LayerNorm, PReLU, a softmax output
    with a probability loss; RMSprop with per-tensor clipping."""
    gradcore.manual_seed(5)
    net = nn.Sequential(nn.Dense(6, 12, activation="relu", dtype=dtype), nn.Dropout(0.25),
                        nn.Residual(nn.Sequential(nn.Dense(12, 12, dtype=dtype), nn.Sigmoid(),
                                                  nn.LayerNorm(12, dtype=dtype))),
                        nn.PReLU(dtype=dtype), nn.Dense(12, 3, activation="softmax", dtype=dtype), dtype=dtype)
    net.compile(optim.RMSprop(net.parameters(), lr=0.01, clip_norm=0.5), "sparse_categorical_crossentropy")
    return net


def net_sgd_tanh(dtype):
    """The documents' style: tanh layers, SGD with momentum, MSE."""
    gradcore.manual_seed(9)
    net = nn.Sequential(nn.Dense(6, 10, activation="tanh", dtype=dtype), nn.Dense(10, 8, activation="elu", dtype=dtype),
                        nn.Dense(8, 3, dtype=dtype), dtype=dtype)
    net.compile(optim.SGD(net.parameters(), lr=0.05, momentum=0.9), "mse")
    return net


def net_documents_sigmoid(dtype):
    """The documents' deep sigmoid network (vanishing gradients), binary cross-entropy on a
    sigmoid output, plain SGD."""
    gradcore.manual_seed(4)
    dims = [6, 20, 16, 12, 8, 1]
    net = nn.Sequential(*[nn.Dense(i, o, activation="sigmoid", kernel_initializer=nn.init.RandomNormal(0.0, 0.5),
                                   dtype=dtype) for i, o in zip(dims[:-1], dims[1:])], dtype=dtype)
    net.compile(optim.SGD(net.parameters(), lr=0.5), "binary_cross_entropy")
    return net


def fit_data(make, dtype, n=80):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((n, 6)).astype(dtype)
    if make is net_sgd_tanh:
        return X, rng.standard_normal((n, 3)).astype(dtype)
    if make is net_documents_sigmoid:
        return X, (X[:, :1] > 0).astype(dtype)
    return X, rng.integers(0, 3, size=n)


def same_history(a, b, tol):
    sa, la, ma, va = rows(a)
    sb, lb, mb, vb = rows(b)
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_allclose(va, vb, rtol=tol, atol=tol, equal_nan=True)
    assert [str(e) for e in a.events] == [str(e) for e in b.events]


def fit_twice(make, dtype, X, Y, mon_kw=None, **fit_kw):
    """(eager monitor, compiled monitor, eager net, compiled net) of the same fit."""
    out = []
    for compiled in (False, True):
        net = make(dtype)
        mon = GradientMonitor(net, **(mon_kw or {}))
        gradcore.manual_seed(11)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            net.fit(X, Y, epochs=2, batch_size=16, verbose=0, callbacks=[mon], compiled=compiled, **fit_kw)
        out.append((mon, net))
    (me, ne), (mc, nc) = out
    return me, mc, ne, nc


@plan_only
@pytest.mark.parametrize("make", [net_relu_bn, net_mixed, net_sgd_tanh, net_documents_sigmoid])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fit_compiled_monitor_history_equals_eager(make, dtype):
    X, Y = fit_data(make, dtype)
    me, mc, ne, nc = fit_twice(make, dtype, X, Y)
    assert mc._arrays_mode is False and me._arrays_mode is False  # handed back to the taps after fit
    assert len(mc.history) > 0
    same_history(me, mc, TOL[dtype])
    for a, b in zip(ne.parameters(), nc.parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=TOL[dtype], atol=TOL[dtype])
    metrics = set(mc.history.metrics())
    assert {"act_mean", "dz_norm", "weight.update_ratio", "grad_norm", "loss"} <= metrics
    kinds = {e.kind for e in mc.events}
    if make is net_relu_bn:
        assert {"dead_units", "saturated_units"} <= kinds
    if make is net_documents_sigmoid:
        assert {"vanishing", "update_ratio_high"} <= kinds


@plan_only
def test_fit_compiled_monitor_really_runs_the_plan(monkeypatch):
    """The compiled fit with a monitor goes through CompiledStep with statistics (not eager)."""
    from gradcore import compiled as C

    calls = []
    real = C.CompiledStep._monitor_record

    def spy(self):
        calls.append(bool(self._rec))  # (2: recorded, the plan measuring the weights too)
        return real(self)

    monkeypatch.setattr(C.CompiledStep, "_monitor_record", spy)
    X, Y = fit_data(net_relu_bn, np.float64)
    net = net_relu_bn(np.float64)
    mon = GradientMonitor(net, every=2)
    net.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[mon])  # compiled="auto"
    assert calls == [True, False, True, False, True]
    assert sorted(set(mon.history.steps().tolist())) == [0, 2, 4]


@plan_only
@pytest.mark.parametrize("every", [1, 3])
def test_fit_compiled_monitor_nan_planted_and_every(every):
    """A NaN in one batch's input: located at layer "0"'s output on both paths, the step
    skipped, BatchNorm rolled back; every > 1 records the same steps (and the step after
    the non-finite one)."""
    dtype = np.float64
    X, Y = fit_data(net_relu_bn, dtype)
    X = X.copy()
    X[35, 2] = np.nan  # batch 2 of epoch 1 (no shuffling)
    me, mc, ne, nc = fit_twice(net_relu_bn, dtype, X, Y, mon_kw={"every": every}, shuffle=False)
    same_history(me, mc, TOL[dtype])
    bad = [e for e in mc.events if e.kind == "nonfinite"]
    if every == 1:
        assert (bad[0].layer, bad[0].tensor, bad[0].step) == ("0", "output", 2)
        assert mc.history.series("", "skipped")[1][2] == 1
    else:  # step 2 is not recorded: reported from the step's global norm, and step 3 is recorded
        assert (bad[0].layer, bad[0].tensor, bad[0].step) == ("", "grad_norm", 2)
        assert 3 in mc.history.steps().tolist()


@plan_only
def test_fit_compiled_monitor_with_accumulation():
    dtype = np.float64
    X, Y = fit_data(net_relu_bn, dtype, n=96)
    me, mc, _, _ = fit_twice(net_relu_bn, dtype, X, Y, accumulate_steps=2)
    same_history(me, mc, TOL[dtype])
    assert len(mc.history.steps()) == 6  # one record per optimizer step (12 batches / 2)


@plan_only
def test_fit_compiled_monitor_split_mode():
    """Two parameter groups: the plan's forward / backward, optimizer.step() in Python; the
    update statistics then come from the optimizer's own step statistics."""
    dtype = np.float64

    def make(dt):
        net = make_net(dt)
        net.compile(optim.Adam([{"params": net[0].parameters(), "lr": 0.01},
                                {"params": list(net.parameters())[2:]}], lr=0.02), "cross_entropy")
        return net

    X, Y = fit_data(net_relu_bn, dtype)
    me, mc, _, nc = fit_twice(make, dtype, X, Y)
    same_history(me, mc, TOL[dtype])
    assert nc.optimizer.record_stats is False  # turned on for the recorded steps only


@plan_only
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compile_step_with_monitor_in_a_hand_loop(dtype):
    """compile_step(net, monitor=mon); step(x, y) against the eager loop with mon.record."""
    batches_ = batches(dtype, 10, n=16)
    mons, nets = [], []
    for compiled in (False, True):
        net = net_relu_bn(dtype)
        mon = GradientMonitor(net, optimizer=net.optimizer if not compiled else None)
        if compiled:
            step = gradcore.compile_step(net, monitor=mon)
            for x, y in batches_:
                step(x, y)
        else:
            for x, y in batches_:
                net.optimizer.zero_grad()
                loss = F.cross_entropy(net(gradcore.Tensor(x)), y)
                loss.backward()
                mon.record(loss)
                net.optimizer.step()
        mons.append(mon)
        nets.append(net)
    same_history(mons[0], mons[1], TOL[dtype])
    assert mons[1]._arrays_mode
    with pytest.raises(RuntimeError, match="compiled step"):
        mons[1].record(1.0)
    step.release_monitor()
    assert not mons[1]._arrays_mode and nets[1][0]._monitor_tap is not None  # the taps are back


@plan_only
def test_compile_step_with_monitor_accumulation_halves():
    """forward_backward twice then apply_update: the statistics of the last batch, the
    update of the group, as fit's eager accumulation records them."""
    dtype = np.float64
    X, Y = fit_data(net_relu_bn, dtype, n=64)
    me, _, _, _ = fit_twice(net_relu_bn, dtype, X, Y, accumulate_steps=2, shuffle=False)
    net = net_relu_bn(dtype)
    mon = GradientMonitor(net)
    step = gradcore.compile_step(net, monitor=mon)
    gradcore.manual_seed(11)
    for epoch in range(2):
        net.train()
        for g in range(2):
            lo = 32 * g
            step.forward_backward(X[lo:lo + 16], Y[lo:lo + 16], 0.5, False)
            step.forward_backward(X[lo + 16:lo + 32], Y[lo + 16:lo + 32], 0.5, True)
            step.apply_update()
    same_history(me, mon, TOL[dtype])


@plan_only
def test_recorded_compiled_steps_allocate_nothing():
    net = net_relu_bn(np.float32)
    mon = GradientMonitor(net)
    step = gradcore.compile_step(net, monitor=mon)
    x, y = batches(np.float32, 1, n=32)[0]
    for _ in range(3):
        step(x, y)
    gradcore.reset_memory_stats()
    for _ in range(20):
        step(x, y)
    assert gradcore.memory_stats()["plan_allocations"] == 0
    assert len(mon.history.steps()) == 23


@plan_only
def test_compile_step_monitor_refusals():
    net = net_relu_bn(np.float64)
    other = net_relu_bn(np.float64)
    with pytest.raises(ValueError, match="not the compiled network"):
        gradcore.compile_step(net, monitor=GradientMonitor(other))
    with pytest.raises(TypeError, match="GradientMonitor"):
        gradcore.compile_step(net, monitor="mon")
    hist = GradientMonitor(net, histograms=True)
    from gradcore.compiled import UnsupportedError

    with pytest.raises(UnsupportedError, match="histograms"):
        gradcore.compile_step(net, monitor=hist)
    assert net[0]._monitor_tap is not None and not hist._arrays_mode  # left as it was
    X, Y = fit_data(net_relu_bn, np.float64, n=32)
    with pytest.raises(UnsupportedError, match="histograms"):
        net.fit(X, Y, epochs=1, verbose=0, callbacks=[hist], compiled=True)
    hist.close()
    # a layer that lowers to nothing of its own (an identity activation layer) cannot be watched
    net2 = nn.Sequential(nn.Dense(6, 4, dtype=np.float64), nn.Activation("identity"), nn.Dense(4, 3, dtype=np.float64),
                         dtype=np.float64)
    net2.compile(optim.SGD(net2.parameters(), lr=0.1), "cross_entropy")
    mon2 = GradientMonitor(net2)
    with pytest.raises(UnsupportedError, match="no operation of its own"):
        gradcore.compile_step(net2, monitor=mon2)
    assert not mon2._arrays_mode  # back to the taps
    net2.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[mon2])  # auto: eager
    assert len(mon2.history.steps()) == 2


@plan_only
def test_two_compiled_steps_share_a_monitor_and_a_closed_monitor_stops_recording():
    net = net_relu_bn(np.float64)
    mon = GradientMonitor(net)
    x, y = batches(np.float64, 1, n=16)[0]
    step = gradcore.compile_step(net, monitor=mon)
    X, Y = fit_data(net_relu_bn, np.float64, n=32)
    net.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[mon], compiled=True)
    assert mon._arrays_mode  # fit let go, the hand-made step still holds it
    step(x, y)
    assert mon.history.steps().tolist() == [0, 1, 2]
    step.release_monitor()
    assert not mon._arrays_mode and net[0]._monitor_tap is not None
    again = gradcore.compile_step(net, monitor=mon)
    mon.close()
    again(x, y)  # records nothing, raises nothing
    assert mon.history.steps().tolist() == [0, 1, 2] and net[0]._monitor_tap is None
