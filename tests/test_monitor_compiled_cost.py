"""What the cheaper compiled-step monitor computes, against NumPy.

- ``_C.magnitude_stats``: the plan's dz statistics (grad_stats' first four columns: sum of
  squares, its sqrt, max |g| over the finite values, NaN / Inf count), float32 squares
  summed in float lanes of 16 values then in double;
- the plan's dz rows (dz_out) hold those four columns and NaN for mean / std.
"""
import math
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import _C

DTYPES = [np.float32, np.float64]
# lane (32), flush (512 values), block (4096) and chunk (65536) boundaries
SIZES = [0, 1, 5, 31, 32, 33, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537, 128 * 512 + 7]


def magnitude_ref(g):
    g = np.asarray(g, np.float64).ravel()
    finite = g[np.isfinite(g)]
    with np.errstate(over="ignore", invalid="ignore"):
        sumsq = float(np.sum(g * g))
    return np.array([sumsq, math.sqrt(sumsq) if sumsq >= 0 else math.nan,
                     float(np.abs(finite).max()) if finite.size else 0.0, float(g.size - finite.size)])


def assert_magnitude(got, g):
    want = magnitude_ref(g)
    assert got.shape == (4,) and got.dtype == np.float64
    # float32: each float lane sums 16 squares (2^-20 of their sum at most) before double
    rtol = 2.0 ** -20 if np.asarray(g).dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got[:2], want[:2], rtol=rtol, atol=0)
    np.testing.assert_array_equal(got[2:], want[2:])  # max |g| and the count: exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_magnitude_stats_match_numpy(n, dtype):
    rng = np.random.default_rng(n)
    g = (rng.standard_normal(n) * 1e-3 + 2e-4).astype(dtype)
    assert_magnitude(_C.magnitude_stats(g), g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_magnitude_stats_any_shape(dtype):
    rng = np.random.default_rng(3)
    for shape in [(), (7,), (3, 5), (2, 3, 683), (128, 10)]:
        g = rng.standard_normal(shape).astype(dtype)
        assert_magnitude(_C.magnitude_stats(g), g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_magnitude_stats_nan_and_inf(dtype):
    rng = np.random.default_rng(5)
    n = 3 * 4096 + 700
    for where in ([0], [n - 1], [4095, 4096], [511, 512, 513], [2 * 4096 + 7]):
        for bad in (np.nan, np.inf, -np.inf):
            g = rng.standard_normal(n).astype(dtype)
            g[where] = bad
            got = _C.magnitude_stats(g)
            assert got[3] == len(where)
            assert got[2] == np.abs(g[np.isfinite(g)]).max()  # the finite max, the bad values ignored
            if np.isnan(bad):
                assert np.isnan(got[0]) and np.isnan(got[1])
            else:
                assert got[0] == np.inf and got[1] == np.inf
    only_bad = np.array([np.nan, np.inf, -np.inf], dtype)
    got = _C.magnitude_stats(only_bad)
    assert got[2] == 0 and got[3] == 3 and np.isnan(got[0])


def test_magnitude_stats_float32_extremes_are_summed_in_double():
    """float32 squares overflow float lanes from |g| ~ 1.8e19 and underflow below 1e-19:
    those blocks are summed again in double (no Inf, no lost digits)."""
    rng = np.random.default_rng(7)
    for scale in (1e30, 3e38, 1e-25, 1e-40):  # (1e-40: float32 denormals)
        g = np.clip(rng.standard_normal(5000), -1.1, 1.1) * scale
        g = g.astype(np.float32)  # (all finite: |g| <= 3.3e38)
        got = _C.magnitude_stats(g)
        want = magnitude_ref(g)
        assert np.isfinite(got[0]) and got[3] == 0
        np.testing.assert_allclose(got[:2], want[:2], rtol=1e-12)
        assert got[2] == want[2]
    zeros = np.zeros(4097, np.float32)
    zeros[::2] = -0.0
    assert _C.magnitude_stats(zeros).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_magnitude_stats_same_result_on_one_and_two_threads():
    rng = np.random.default_rng(9)
    g = rng.standard_normal(5_000_001).astype(np.float32)
    g[4_000_000] = np.nan
    before = gradcore.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            gradcore.set_num_threads(n)
            out.append(_C.magnitude_stats(g))
    finally:
        gradcore.set_num_threads(before)
    np.testing.assert_array_equal(out[0], out[1])
    assert out[0][3] == 1


def test_magnitude_stats_rejects_bad_input():
    with pytest.raises(ValueError, match=r"magnitude_stats: g must be float32 or float64, got int64"):
        _C.magnitude_stats(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match=r"magnitude_stats: g must be a numpy.ndarray, got list"):
        _C.magnitude_stats([1.0, 2.0])
    with pytest.raises(ValueError, match=r"magnitude_stats: g must be C-contiguous"):
        _C.magnitude_stats(np.zeros((4, 4), np.float32)[:, 1])


# ---------------------------------------------------------------------- shared layouts
from gradcore import nn, optim  # noqa: E402
from gradcore.monitor import GradientMonitor  # noqa: E402
from gradcore.monitor import _monitor  # noqa: E402
from monitor_helpers import assert_same_history  # noqa: E402


def small_net(dtype):
    gradcore.manual_seed(3)
    net = nn.Sequential(nn.Dense(9, 24, dtype=dtype), nn.BatchNorm(24, dtype=dtype), nn.ReLU(),
                        nn.Dense(24, 13, activation="tanh", dtype=dtype), nn.Dense(13, 3, dtype=dtype), dtype=dtype)
    return net, optim.Adam(net.parameters(), lr=0.05)


def epochs_with_fresh_monitors(dtype, general, epochs=3, bad=None, **args):
    """Epochs of a compiled step on one network, a fresh monitor each (as fit makes them);
    general: every record on the general path. Returns the monitors and, per monitor, how
    many steps the general path's _record_fast wrote."""
    net, opt = small_net(dtype)
    rng = np.random.default_rng(4)
    X = rng.standard_normal((96, 9)).astype(dtype)
    y = rng.integers(0, 3, size=96).astype(np.int64)
    mons, fast_calls = [], []
    for e in range(epochs):
        mon = GradientMonitor(net, **args)
        calls = []
        orig = mon._record_fast
        mon._record_fast = (lambda *a: False) if general else (lambda *a: calls.append(1) or orig(*a))
        if general:
            mon._lean_for = lambda batch: None
        step = gradcore.compile_step(net, "cross_entropy", opt, monitor=mon)
        for t, i in enumerate(range(0, 96, 16)):
            x = np.ascontiguousarray(X[i:i + 16])
            if (e, t) == bad:
                x[2, 3] = np.nan
            step(x, np.ascontiguousarray(y[i:i + 16]))
        step.release_monitor()
        mon.close()
        mons.append(mon)
        fast_calls.append(len(calls))
    return mons, fast_calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args", [{}, {"activations": False, "updates": False}])
@pytest.mark.parametrize("bad", [None, (1, 0), (2, 3)])
def test_a_fresh_monitor_records_from_the_shared_layout_with_the_general_paths_rows(dtype, args, bad):
    """The second and later monitors of a network take the one-call record from their first
    step (the layout the first one made): the same rows and events as the general path,
    a non-finite step included."""
    _monitor._SHARED.clear()
    fast, calls = epochs_with_fresh_monitors(dtype, False, bad=bad, **args)
    slow, _ = epochs_with_fresh_monitors(dtype, True, bad=bad, **args)
    assert calls[0] >= 1 and calls[1:] == [0, 0] if bad is None else calls[0] >= 1
    for f, s in zip(fast, slow):
        h, g = f.history, s.history
        assert_same_history(h, g)
        assert [str(e) for e in f.events] == [str(e) for e in s.events]
    if bad is not None:
        e, t = bad
        assert any(ev.kind == "nonfinite" and ev.step == t for ev in fast[e].events)


def test_shared_layouts_are_read_only_and_bounded():
    _monitor._SHARED.clear()
    for depth in range(1, 1 + _monitor._SHARED_MAX + 3):  # more structures than kept
        gradcore.manual_seed(0)
        net = nn.Sequential(*[nn.Dense(4, 4, activation="relu") for _ in range(depth)], nn.Dense(4, 2))
        mon = GradientMonitor(net)
        step = gradcore.compile_step(net, "cross_entropy", optim.SGD(net.parameters(), lr=0.1), monitor=mon)
        step(np.ones((5, 4)), np.zeros(5, np.int64))
        step.release_monitor()
        mon.close()
    assert len(_monitor._SHARED) == _monitor._SHARED_MAX
    entry = next(iter(_monitor._SHARED.values()))
    layout = next(v for k, v in entry.items() if k[0] == "layout")
    lc = layout[0]
    with pytest.raises(ValueError):
        lc[0] = 7


def test_networks_of_one_structure_and_other_widths_share_nothing_wrong():
    """Two tanh networks whose monitors have one signature (same layers, names, modes) but
    other widths: the saturated fraction is entries / (batch x units) of each."""
    _monitor._SHARED.clear()
    rng = np.random.default_rng(8)
    for width in (6, 11, 6):
        gradcore.manual_seed(1)
        net = nn.Sequential(nn.Dense(5, width, activation="tanh", kernel_initializer=nn.init.RandomNormal(0.0, 3.0)),
                            nn.Dense(width, 2))
        mon = GradientMonitor(net)
        step = gradcore.compile_step(net, "cross_entropy", optim.SGD(net.parameters(), lr=0.01), monitor=mon)
        x = rng.standard_normal((7, 5))
        z = x @ net[0].weight.data.T + net[0].bias.data  # the pre-activation of the step
        step(x, np.zeros(7, np.int64))
        step.release_monitor()
        got = mon.history.series("0", "saturated_frac")[1]
        assert got.tolist() == [np.count_nonzero(np.abs(z) > 5.0) / z.size]
        assert 0 < got[0] < 1


# ---------------------------------------------------------------------- weights from the plan
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("every", [1, 3])
def test_weights_measured_by_the_plans_forward_match_numpy(dtype, every):
    """A recorded step whose weights no earlier update measured (the first, and with every > 1
    each one) takes them from the plan's forward (stats=2): the weight norms of the history
    equal NumPy's norms of the weights before the step; the general pass is not run."""
    net, opt = small_net(dtype)
    mon = GradientMonitor(net, every=every)
    passes = []
    real = mon._segment_stats
    mon._segment_stats = lambda which: passes.append(which) or real(which)
    step = gradcore.compile_step(net, "cross_entropy", opt, monitor=mon)
    rng = np.random.default_rng(12)
    want = {}
    for t in range(7):
        want[t] = {name: float(np.linalg.norm(p.data.astype(np.float64))) for name, p in net.named_parameters()}
        step(rng.standard_normal((10, 9)).astype(dtype), rng.integers(0, 3, size=10).astype(np.int64))
    step.release_monitor()
    assert "data" not in passes
    rtol = 2.0 ** -20 if dtype == np.float32 else 1e-13
    recorded = sorted(set(mon.history.steps().tolist()))
    assert recorded == list(range(0, 7, every))
    for name in want[0]:
        layer, pname = name.split(".")
        steps, norms = mon.history.series(layer, f"{pname}.norm")
        np.testing.assert_allclose(norms, [want[t][name] for t in steps], rtol=rtol)


def test_plan_stats_two_needs_param_out():
    net, opt = small_net(np.float64)
    mon = GradientMonitor(net)
    step = gradcore.compile_step(net, "cross_entropy", opt, monitor=mon)
    step(np.ones((4, 9)), np.zeros(4, np.int64))
    plan = step._plan
    nodes = len(mon.layers)
    plan.set_stats([-1] * nodes, list(range(nodes)), ["none"] * nodes, 5.0, np.zeros((nodes, 8)), np.zeros((nodes, 6)),
                   None)
    with pytest.raises(ValueError, match="stats=2 but set_stats was given no param_out"):
        plan.forward_backward(np.ones((4, 9)), np.zeros(4, np.int64), None, 1.0, False, 2)
    with pytest.raises(ValueError, match="stats must be"):
        plan.forward_backward(np.ones((4, 9)), np.zeros(4, np.int64), None, 1.0, False, 3)
    with pytest.raises(ValueError, match="param_out"):
        plan.set_stats([-1] * nodes, list(range(nodes)), ["none"] * nodes, 5.0, np.zeros((nodes, 8)),
                       np.zeros((nodes, 6)), None, np.zeros((3, 6)))
    step.release_monitor()


# ---------------------------------------------------------------------- fused ReLU passes
def relu_net(dtype, width=64, bias=True):
    """Dense -> BatchNorm -> ReLU and Dense -> ReLU with widths that are multiples of 32:
    the plan's ReLU passes take their own and their source's statistics."""
    gradcore.manual_seed(6)
    net = nn.Sequential(nn.Dense(9, width, use_bias=bias, dtype=dtype), nn.BatchNorm(width, dtype=dtype), nn.ReLU(),
                        nn.Dense(width, 32, dtype=dtype), nn.ReLU(), nn.Dense(32, 3, dtype=dtype), dtype=dtype)
    net.compile(optim.Adam(net.parameters(), lr=0.03), "cross_entropy")
    return net


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nan_batch", [None, 2])
@pytest.mark.parametrize("args", [{}, {"activations": False, "updates": False}])
def test_fused_relu_statistics_equal_the_eager_taps(dtype, nan_batch, args):
    """The compiled fit's history (the ReLU layers' and their sources' rows from the fused
    passes) equals the eager fit's (each array measured on its own by the taps), a planted
    NaN included; float32 to the float lanes' rounding."""
    rng = np.random.default_rng(13)
    X = rng.standard_normal((96, 9)).astype(dtype)
    X[:, 0] += 2.0  # some units stay dead for a whole batch
    y = rng.integers(0, 3, size=96)
    if nan_batch is not None:
        X[nan_batch * 16 + 3, 4] = np.nan
    mons = []
    for compiled in (False, True):
        # no bias before BatchNorm: its gradient is 0 up to rounding, and Adam's first steps
        # scale that rounding noise (|g| ~ eps) to updates of ~lr, so eager and compiled (whose
        # dX products may round differently) would disagree there by design, not by a defect
        net = relu_net(dtype, bias=False)
        mon = GradientMonitor(net, **args)
        gradcore.manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            net.fit(X, y, epochs=2, batch_size=16, verbose=0, callbacks=[mon], compiled=compiled, shuffle=False)
        mons.append(mon)
    eager, comp = mons
    h, g = eager.history, comp.history
    np.testing.assert_array_equal(h.step, g.step)
    np.testing.assert_array_equal(h.layer, g.layer)
    np.testing.assert_array_equal(h.metric, g.metric)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(g.value, h.value, rtol=tol, atol=tol, equal_nan=True)
    if args and nan_batch is not None:  # (no output statistics: the compiled step locates the NaN at a dz)
        assert [e.kind for e in comp.events] == [e.kind for e in eager.events]
    else:
        assert [str(e) for e in comp.events] == [str(e) for e in eager.events]
    if not args:
        dead = g.series("2", "dead_frac")[1]
        assert 0 < dead.max() < 1 or dead.max() == 0  # measured (a number, not NaN)
        assert np.isfinite(g.series("2", "act_mean")[1][:2]).all()
    if nan_batch is not None:
        assert any(e.kind == "nonfinite" and e.step == nan_batch for e in comp.events)


def test_fused_relu_activation_rows_match_numpy():
    """One compiled step on a float64 Dense -> BatchNorm -> ReLU net: the BatchNorm and ReLU
    rows (mean, std, min, max, dead fraction) equal NumPy's forward."""
    net = relu_net(np.float64)
    mon = GradientMonitor(net)
    step = gradcore.compile_step(net, monitor=mon)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 9))
    x[:, 1] += 3.0
    P = {k: v.data.copy() for k, v in net.named_parameters()}
    step(x, rng.integers(0, 3, size=16).astype(np.int64))
    step.release_monitor()
    z0 = x @ P["0.weight"].T + P["0.bias"]
    bn = P["1.weight"] * (z0 - z0.mean(0)) / np.sqrt(z0.var(0) + 1e-5) + P["1.bias"]
    r = np.maximum(bn, 0)
    for layer, a in (("1", bn), ("2", r)):
        got = [mon.history.series(layer, m)[1][0] for m in ("act_mean", "act_std", "act_min", "act_max")]
        np.testing.assert_allclose(got, [a.mean(), a.std(), a.min(), a.max()], rtol=1e-9, atol=1e-12)
    dead = mon.history.series("2", "dead_frac")[1][0]
    assert dead == np.mean(np.all(bn <= 0, axis=0))
