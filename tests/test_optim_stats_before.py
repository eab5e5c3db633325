"""The optimizers' statistics column of the weights before the update (``_record_before``:
the kernels' sixth column, ``STATS_BEFORE_COLUMN``) against NumPy sums of squares of snapshots
taken before each step, for every optimizer, dtype, clipping mode and weight decay, skipped
steps, parameter groups, a subset of the network, frozen parameters and per-layer
``update_params``; the other columns and the update unchanged by it; and the eager
GradientMonitor's weight-norm (and update-norm) rows, which now come from that column,
against a NumPy recomputation, with no weight pass of the monitor's own."""
import itertools

import numpy as np
import pytest

import gradcore
from gradcore import functional as F, nn, optim
from gradcore.monitor import GradientMonitor, _monitor
from gradcore.optim import SGD, Adam, RMSprop
from gradcore.optim.optimizer import STATS_BEFORE_COLUMN, STATS_COLUMNS, WITHOUT_AFTER

from test_optim_stats import CLIPS, OPTIMIZERS  # (the same optimizers and clipping modes)


def make_net(dtype, seed=0):
    gradcore.manual_seed(seed)
    return nn.Sequential(nn.Dense(7, 9, activation="relu", dtype=dtype), nn.BatchNorm(9, dtype=dtype),
                         nn.Dense(9, 3, dtype=dtype), dtype=dtype)


def small_data(seed):
    """32 rows of 7 features and their labels in 0..2 (the monitor tests' data)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((32, 7)), rng.integers(0, 3, size=32)


def sumsq(a):
    a = np.asarray(a, dtype=np.float64).ravel()
    return float(np.dot(a, a))


def rtol_for(dtype, mode):
    # "grad" and WITHOUT_AFTER sum p_old itself; True takes p_old as p_new - (p_new - p_old)
    # in the dtype (exact where that difference is, else within half an ulp of it: optim.h)
    return 1e-12 if dtype == np.float64 or mode != True else 2e-6  # noqa: E712


def test_the_column_is_named_after_the_five():
    assert STATS_BEFORE_COLUMN == "param_sumsq_before" and len(STATS_COLUMNS) == 5


@pytest.mark.parametrize("name,dtype,clip,wd,mode", list(itertools.product(
    OPTIMIZERS, (np.float32, np.float64), CLIPS, (0.0, 0.01), (True, "grad", WITHOUT_AFTER))))
def test_column_before_matches_numpy_and_changes_nothing_else(name, dtype, clip, wd, mode):
    """mode: record_stats True / "grad" with the column before, or True with the column before
    in place of param_sumsq after (WITHOUT_AFTER: that column NaN, the others the same)."""
    rng = np.random.default_rng(3)
    nets = [make_net(dtype), make_net(dtype)]
    opts = [OPTIMIZERS[name](n.parameters(), weight_decay=wd, **CLIPS[clip]) for n in nets]
    for opt in opts:
        opt.record_stats = True if mode == WITHOUT_AFTER else mode
    opts[0]._record_before = WITHOUT_AFTER if mode == WITHOUT_AFTER else True
    for step in range(4):
        grads = [(rng.standard_normal(p.shape) * 3).astype(dtype) for p in nets[0].parameters()]
        if step == 2:
            grads[1][0] = np.nan  # a skipped step: nothing written, the weights as they were
        before = [p.data.copy() for p in nets[0].parameters()]
        calls = opts[0]._step_calls
        for net, opt in zip(nets, opts):
            for p, g in zip(net.parameters(), grads):
                p.grad = g.copy()
            opt.step()
        rows = opts[0]._stats_since(calls)
        assert rows.shape == (len(before), 6)
        np.testing.assert_allclose(rows[:, 5], [sumsq(b) for b in before], rtol=rtol_for(dtype, mode), atol=0)
        # last_stats keeps its five columns, equal bit for bit to the optimizer without the column
        assert opts[0].last_stats.shape == opts[1].last_stats.shape == (len(before), 5)
        keep = [0, 1, 2, 4] if mode == WITHOUT_AFTER else [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(opts[0].last_stats[:, keep], opts[1].last_stats[:, keep])
        np.testing.assert_array_equal(rows[:, keep], opts[1].last_stats[:, keep])
        if mode == WITHOUT_AFTER:
            assert np.isnan(rows[:, 3]).all() and np.isnan(opts[0].last_stats[:, 3]).all()
        assert opts[0].last_skipped == (step == 2)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_subsets_and_frozen_parameters(dtype):
    """Two groups (their runs are separate kernel calls: the multi-run path), an optimizer over
    part of the network, a frozen tensor and one without a gradient: rows of the tensors a
    step did not update are NaN; the others are the weights before the step."""
    rng = np.random.default_rng(5)
    net = make_net(dtype)
    params = net.parameters()
    opt = Adam([{"params": params[:2], "lr": 0.02}, {"params": params[2:4]}, {"params": params[4:], "lr": 0.0}],
               lr=0.01, weight_decay=0.01, global_clip_norm=0.5)
    sub = SGD(params[:2], lr=0.1, clip_value=0.1)
    for o in (opt, sub):
        o.record_stats, o._record_before = True, True
    params[3].requires_grad = False  # frozen (BatchNorm beta)
    for step in range(3):
        for p in params:
            p.grad = (rng.standard_normal(p.shape)).astype(dtype)
        params[5].grad = None  # no gradient this step
        before = [p.data.copy() for p in params]
        calls = opt._step_calls
        opt.step()
        rows = opt._stats_since(calls)
        stepped = [i != 3 and i != 5 for i in range(len(params))]
        for i, (row, b) in enumerate(zip(rows, before)):
            if stepped[i]:
                np.testing.assert_allclose(row[5], sumsq(b), rtol=rtol_for(dtype, True))
                np.testing.assert_allclose(row[3], sumsq(params[i].data), rtol=1e-12)
            else:
                assert np.isnan(row).all()
                np.testing.assert_array_equal(params[i].data, b)
        sub_before = [p.data.copy() for p in params[:2]]
        calls = sub._step_calls
        sub.step()
        rows = sub._stats_since(calls)
        np.testing.assert_allclose(rows[:, 5], [sumsq(b) for b in sub_before], rtol=rtol_for(dtype, True))


def test_skipped_step_over_several_runs_fills_the_column():
    """The multi-run path's skipped step (two groups, one gradient non-finite) measures the
    parameters as they are, for the column before too, in every mode."""
    rng = np.random.default_rng(2)
    for mode in (True, "grad", WITHOUT_AFTER):
        net = make_net(np.float64)
        params = net.parameters()
        opt = RMSprop([{"params": params[:3]}, {"params": params[3:], "lr": 0.1}], lr=0.01)
        opt.record_stats = True if mode == WITHOUT_AFTER else mode
        opt._record_before = WITHOUT_AFTER if mode == WITHOUT_AFTER else True
        for p in params:
            p.grad = rng.standard_normal(p.shape)
        params[4].grad[0, 0] = np.inf
        before = [p.data.copy() for p in params]
        opt.step()
        assert opt.last_skipped
        rows = opt._stats_since(0)
        np.testing.assert_allclose(rows[:, 5], [sumsq(b) for b in before], rtol=1e-12)
        if mode is True:
            np.testing.assert_array_equal(rows[:, 3], rows[:, 5])
            np.testing.assert_array_equal(rows[:, 4], 0.0)
        elif mode == WITHOUT_AFTER:
            assert np.isnan(rows[:, 3]).all()
            np.testing.assert_array_equal(rows[:, 4], 0.0)
        else:
            assert np.isnan(rows[:, 3:5]).all()


def test_update_params_layer_by_layer_keeps_every_layers_rows():
    """The documents' style, one update_params call per layer: last_stats holds the last
    call's rows only, _stats_since every layer's since a given call."""
    rng = np.random.default_rng(1)
    net = make_net(np.float32)
    opt = Adam(net.parameters(), lr=0.05)
    opt.record_stats, opt._record_before = True, True
    for p in net.parameters():
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    before = [p.data.copy() for p in net.parameters()]
    calls = opt._step_calls
    for layer in (net[0], net[1], net[2]):
        opt.update_params(layer)
    rows = opt._stats_since(calls)
    np.testing.assert_allclose(rows[:, 5], [sumsq(b) for b in before], rtol=2e-6)
    upd = [sumsq((p.data - b).astype(np.float64)) for p, b in zip(net.parameters(), before)]
    np.testing.assert_allclose(rows[:, 4], upd, rtol=1e-12)
    assert np.isnan(opt.last_stats[:4]).all() and not np.isnan(opt.last_stats[4:]).any()
    assert opt._stats_since(opt._step_calls) is None  # no call since


def test_kernel_takes_a_table_of_six_columns():
    p = np.array([1.0, -2.0, 3.0, 0.5, 0.25, -4.0], np.float32)
    g = np.ones(6, np.float32)
    off = np.array([0, 2, 6], np.int64)
    stats = np.full((2, 6), np.nan)
    gradcore._C.sgd_step(p.copy(), g, None, off, np.zeros(2), np.zeros(2), lr=0.1, stats=stats,
                         stats_updates=False)
    np.testing.assert_array_equal(stats[:, 5], [5.0, 9.0 + 0.0625 + 0.25 + 16.0])
    assert np.isnan(stats[:, 3:5]).all()  # not measured without updates
    np.testing.assert_array_equal(stats[:, 0], [2.0, 4.0])
    stats = np.full((2, 6), np.nan)
    q = p.copy()
    gradcore._C.sgd_step(q, g, None, off, np.zeros(2), np.zeros(2), lr=0.1, stats=stats, stats_updates=2)
    np.testing.assert_array_equal(stats[:, 5], [5.0, 9.0 + 0.0625 + 0.25 + 16.0])
    assert np.isnan(stats[:, 3]).all()  # param_sumsq after: not measured with stats_updates 2
    d = (q - p).astype(np.float64)
    np.testing.assert_allclose(stats[:, 4], [np.sum(d[:2] ** 2), np.sum(d[2:] ** 2)], rtol=1e-12)
    with pytest.raises(ValueError, match=r"stats must be a float64 array of shape \(2, 5\) or \(2, 6\)"):
        gradcore._C.sgd_step(p, g, None, off, np.zeros(2), np.zeros(2), lr=0.1, stats=np.zeros((2, 7)))
    with pytest.raises(ValueError, match="stats_updates must be False"):
        gradcore._C.sgd_step(p, g, None, off, np.zeros(2), np.zeros(2), lr=0.1, stats=stats, stats_updates=3)
    np.testing.assert_array_equal(p, [1.0, -2.0, 3.0, 0.5, 0.25, -4.0])  # refused before anything was written


# ---------------------------------------------------------------------- the eager monitor
@pytest.fixture
def stats_for_small_networks(monkeypatch):
    monkeypatch.setattr(_monitor, "_STATS_MIN_VALUES", 0)


def count_weight_passes(monkeypatch, mon):
    calls = []
    real = mon._segment_stats

    def counted(which):
        calls.append(which)
        return real(which)

    monkeypatch.setattr(mon, "_segment_stats", counted)
    return calls


@pytest.mark.parametrize("dtype,updates", list(itertools.product((np.float32, np.float64), (True, False))))
def test_eager_monitor_weight_norms_match_numpy(monkeypatch, stats_for_small_networks, dtype, updates):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 7)).astype(dtype)
    y = rng.integers(0, 3, size=64)
    net = make_net(dtype)
    opt = optim.Adam(net.parameters(), lr=0.05, weight_decay=0.01, global_clip_norm=1.0)
    mon = GradientMonitor(net, optimizer=opt, activations=False, updates=updates)
    assert mon._stats_opt is opt and opt._record_before
    passes = count_weight_passes(monkeypatch, mon)
    names = [(n, p) for n, m in net.named_children() for p in ("weight", "bias")]
    expect_w, expect_u = [], []
    for step in range(4):
        xb, yb = X[step * 16:(step + 1) * 16], y[step * 16:(step + 1) * 16]
        opt.zero_grad()
        loss = F.cross_entropy(net(gradcore.Tensor(xb)), yb)
        loss.backward()
        mon.record(loss)
        before = {(n, p): getattr(net[int(n)], p).data.copy() for n, p in names}
        opt.step()
        expect_w.append({k: np.sqrt(sumsq(v)) for k, v in before.items()})
        expect_u.append({(n, p): np.sqrt(sumsq((getattr(net[int(n)], p).data - v).astype(np.float64)))
                         for (n, p), v in before.items()})
    rtol = 2e-6 if dtype == np.float32 and updates else 1e-12
    for (n, p) in names:
        steps, values = mon.history.series(n, f"{p}.norm")
        assert list(steps) == [0, 1, 2, 3]
        np.testing.assert_allclose(values, [e[(n, p)] for e in expect_w], rtol=rtol)
        if updates:
            _, upd = mon.history.series(n, f"{p}.update_norm")
            np.testing.assert_allclose(upd, [e[(n, p)] for e in expect_u], rtol=1e-12)
    assert "data" not in passes  # the weights came from the optimizer's pass
    mon.close()
    assert opt._record_before is False and opt.record_stats is False


def test_eager_monitor_with_update_params_per_layer(stats_for_small_networks):
    """One record, then one update_params call per layer: every layer's update and weight
    norms (the rows of earlier calls were lost to the last call's last_stats before)."""
    X, y = small_data(4)
    net = make_net(np.float64)
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    mon = GradientMonitor(net, optimizer=opt)
    expect = []
    for step in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(net(gradcore.Tensor(X)), y)
        loss.backward()
        mon.record(loss)
        before = [net[i].weight.data.copy() for i in range(3)]
        for layer in net:
            opt.update_params(layer)
        expect.append([(np.sqrt(sumsq(b)), np.sqrt(sumsq(net[i].weight.data - b))) for i, b in enumerate(before)])
    for i in range(3):
        _, w = mon.history.series(str(i), "weight.norm")
        _, u = mon.history.series(str(i), "weight.update_norm")
        np.testing.assert_allclose(w, [e[i][0] for e in expect], rtol=1e-12)
        np.testing.assert_allclose(u, [e[i][1] for e in expect], rtol=1e-12)
        assert (u > 0).all()


def test_eager_monitor_frozen_layer_and_nonfinite_weights(stats_for_small_networks):
    """A frozen tensor (not updated: measured as it is) and a NaN put into a weight between two
    steps (the step is skipped: located at the parameter with the count the monitor's own
    passes give)."""
    X, y = small_data(6)
    mons = []
    for own in (False, True):
        net = make_net(np.float64)
        net[2].bias.requires_grad = False
        opt = optim.Adam(net.parameters(), lr=0.05)
        mon = GradientMonitor(net, optimizer=opt, on_nonfinite="warn")
        if own:
            mon._release_optimizer()
            mon._stats_optimizer = lambda optimizer: None
        with pytest.warns(RuntimeWarning, match="NaN/Inf"):
            for step in range(4):
                if step == 2:
                    net[0].weight.data[1, 2] = np.nan
                    net[0].weight.data[3, 4] = np.inf
                opt.zero_grad()
                loss = F.cross_entropy(net(gradcore.Tensor(X)), y)
                loss.backward()
                mon.record(loss)
                opt.step()
                if step == 2:
                    assert opt.last_skipped
                    mon.events  # (the step's rows are written: a weight holding NaN is measured after the step)
                    net[0].weight.data[1, 2] = 0.0
                    net[0].weight.data[3, 4] = 0.0
            assert (mon._stats_opt is None) == own
            mon.close()
        mons.append(mon)
    a, b = mons[0].history, mons[1].history
    for layer, metric in (("2", "bias.norm"), ("0", "weight.norm"), ("2", "weight.norm")):
        sa, va = a.series(layer, metric)
        sb, vb = b.series(layer, metric)
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_allclose(va, vb, rtol=1e-12, equal_nan=True)
    events = [str(e) for e in mons[0].events]
    assert events == [str(e) for e in mons[1].events]
    assert any("parameter weight already holds 2 NaN/Inf" in e for e in events)



def test_second_monitor_after_the_first_closed(stats_for_small_networks):
    """Two monitors over one optimizer: the first one's close() puts the optimizer's settings
    back; the second takes them again at its next record (its update sizes were 0 before: the
    steps reported no statistics), and gives what the monitor's own passes give."""
    X, y = small_data(8)
    mons = []
    for own in (False, True):
        net = make_net(np.float64)
        opt = optim.Adam(net.parameters(), lr=0.05)
        first = GradientMonitor(net, optimizer=opt)
        mon = GradientMonitor(net, optimizer=opt)
        if own:
            mon._release_optimizer()
            mon._stats_optimizer = lambda optimizer: None
        first.close()
        assert opt._record_before is False  # put back by the first monitor
        for step in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(net(gradcore.Tensor(X)), y)
            loss.backward()
            mon.record(loss)
            opt.step()
        assert opt._record_before is not own and opt.record_stats is not own
        mon.close()
        assert opt._record_before is False and opt.record_stats is False
        mons.append(mon)
    a, b = mons[0].history, mons[1].history
    for metric in ("weight.norm", "weight.update_norm", "bias.norm"):
        sa, va = a.series("0", metric)
        sb, vb = b.series("0", metric)
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_allclose(va, vb, rtol=1e-12)
        assert metric == "bias.norm" or (va > 0).all()
