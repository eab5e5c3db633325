"""GradientMonitor: the recorded numbers against NumPy recomputations (and finite
differences of the loss for dz), in a hand-written loop and in fit, float32 and float64."""
import copy
import math

import numpy as np
import pytest

from gradcore import Tensor, no_grad
from gradcore import nn, optim
from gradcore.callbacks import Callback
from gradcore.monitor import GradientMonitor, LayerInfo, MonitorHistory

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)


def make_net(dtype, activation="relu", fused=True, seed=0):
    rng = np.random.default_rng(seed)
    if fused:
        net = nn.Sequential(nn.Dense(6, 8, activation=activation, dtype=dtype), nn.Dense(8, 5, dtype=dtype),
                            nn.BatchNorm(5, dtype=dtype), nn.Dense(5, 2, dtype=dtype))
    else:
        act = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[activation]
        net = nn.Sequential(nn.Dense(6, 8, dtype=dtype), act, nn.Dense(8, 5, dtype=dtype),
                            nn.BatchNorm(5, dtype=dtype), nn.Dense(5, 2, dtype=dtype))
    for _, p in net.named_parameters():
        p.data[...] = rng.normal(0, 0.7, p.shape)
    return net


def data(dtype, n=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(dtype), rng.normal(size=(n, 2)).astype(dtype)


def mse(out, y):
    d = out - Tensor(y)
    return (d * d).mean()


# ---------------------------------------------------------------------- hand loop
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_weight_and_update_norms_match_numpy(dtype):
    net = make_net(dtype)
    X, y = data(dtype)
    opt = optim.SGD(net.parameters(), lr=0.1)
    mon = GradientMonitor(net, optimizer=opt)
    for step in range(3):
        opt.zero_grad()
        loss = mse(net(X), y)
        loss.backward()
        grads = {n: p.grad.astype(np.float64) for n, p in net.named_parameters()}
        before = {n: p.data.astype(np.float64) for n, p in net.named_parameters()}
        mon.record(loss)
        opt.step()
        after = {n: p.data.astype(np.float64) for n, p in net.named_parameters()}
        h = mon.history
        for name, g in grads.items():
            layer, pname = name.rsplit(".", 1)
            np.testing.assert_allclose(h.last(layer, f"{pname}.grad_norm"), np.linalg.norm(g), **tol(dtype))
            np.testing.assert_allclose(h.last(layer, f"{pname}.grad_max"), np.abs(g).max(), **tol(dtype))
            assert h.last(layer, f"{pname}.grad_nonfinite") == 0
            np.testing.assert_allclose(h.last(layer, f"{pname}.norm"), np.linalg.norm(before[name]), **tol(dtype))
            update = np.linalg.norm(after[name] - before[name])
            np.testing.assert_allclose(h.last(layer, f"{pname}.update_norm"), update, rtol=1e-4 if dtype == np.float32
                                       else 1e-10, atol=1e-7)
            np.testing.assert_allclose(h.last(layer, f"{pname}.update_ratio"), update / np.linalg.norm(before[name]),
                                       rtol=1e-4 if dtype == np.float32 else 1e-10)
        for layer in ("0", "1", "2", "3"):
            total = math.sqrt(sum(np.sum(g ** 2) for n, g in grads.items() if n.rsplit(".", 1)[0] == layer))
            np.testing.assert_allclose(h.last(layer, "grad_norm"), total, **tol(dtype))
        total = math.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
        np.testing.assert_allclose(h.last("", "grad_norm"), total, **tol(dtype))
        np.testing.assert_allclose(h.last("", "grad_norm"), opt.last_grad_norm, rtol=1e-6)
        assert h.last("", "loss") == pytest.approx(float(loss.item()))
        assert h.last("", "lr") == pytest.approx(0.1)
        assert h.last("", "clip_coef") == 1.0 and h.last("", "skipped") == 0
        assert list(h.steps()) == list(range(step + 1))


def test_without_optimizer_global_norm_is_computed_and_clip_is_nan():
    net = make_net(np.float64)
    X, y = data(np.float64)
    mon = GradientMonitor(net)
    loss = mse(net(X), y)
    loss.backward()
    total = math.sqrt(sum(np.sum(p.grad ** 2) for p in net.parameters()))
    mon.record(loss)
    assert mon.history.last("", "grad_norm") == pytest.approx(total, rel=1e-12)
    assert math.isnan(mon.history.last("", "clip_coef")) and math.isnan(mon.history.last("", "lr"))
    assert mon.history.last("0", "weight.update_norm") == 0.0  # nothing stepped


def test_frozen_layer_has_no_gradient_rows():
    net = make_net(np.float64)
    net[0].requires_grad_(False)
    X, y = data(np.float64)
    mon = GradientMonitor(net)
    loss = mse(net(X), y)
    loss.backward()
    mon.record(loss)
    assert "weight.grad_norm" not in mon.history.metrics("0") and "grad_norm" not in mon.history.metrics("0")
    assert "weight.norm" in mon.history.metrics("0")  # its weights are still measured
    total = math.sqrt(sum(np.sum(p.grad ** 2) for p in net.parameters() if p.grad is not None))
    assert mon.history.last("", "grad_norm") == pytest.approx(total, rel=1e-12)
    assert mon.history.last("1", "weight.grad_norm") == pytest.approx(np.linalg.norm(net[1].weight.grad), rel=1e-12)


def numpy_forward(net, X, activation):
    """Pre-activations, activations and (for an MSE loss on y) the gradient of the mean loss
    w.r.t. each Dense layer's pre-activation, for make_net's fused architecture."""
    W = [np.asarray(m.weight.data, np.float64) for m in (net[0], net[1], net[3])]
    b = [np.asarray(m.bias.data, np.float64) for m in (net[0], net[1], net[3])]
    f = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[activation]
    df = {"relu": lambda z: (z > 0).astype(float), "tanh": lambda z: 1 - np.tanh(z) ** 2,
          "sigmoid": lambda z: f(z) * (1 - f(z))}[activation]
    bn = net[2]
    X = X.astype(np.float64)
    z0 = X @ W[0].T + b[0]
    a0 = f(z0)
    z1 = a0 @ W[1].T + b[1]
    mu, var = z1.mean(0), z1.var(0)
    xhat = (z1 - mu) / np.sqrt(var + bn.eps)
    a2 = xhat * np.asarray(bn.weight.data, np.float64) + np.asarray(bn.bias.data, np.float64)
    z3 = a2 @ W[2].T + b[2]
    return dict(z0=z0, a0=a0, z1=z1, a2=a2, z3=z3, df=df)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_dz_of_fused_equals_unfused_and_numpy(dtype, activation):
    fused = make_net(dtype, activation, fused=True)
    unfused = make_net(dtype, activation, fused=False)
    pairs = [(fused[0], unfused[0]), (fused[1], unfused[2]), (fused[2], unfused[3]), (fused[3], unfused[4])]
    for a, b in pairs:
        b.weight.data[...] = a.weight.data
        b.bias.data[...] = a.bias.data
    X, y = data(dtype)
    records = {}
    for key, net in (("fused", fused), ("unfused", unfused)):
        mon = GradientMonitor(net, updates=False)
        loss = mse(net(X), y)
        loss.backward()
        mon.record(loss)
        records[key] = mon.history
    ref = numpy_forward(fused, X, activation)
    g3 = 2 * (ref["z3"] - y.astype(np.float64)) / y.size  # d mean-loss / d output
    # backward through layer 3 and BatchNorm to z1, then through Dense 1 to a0
    W3 = fused[3].weight.data.astype(np.float64)
    dA2 = g3 @ W3
    gamma = fused[2].weight.data.astype(np.float64)
    var = ref["z1"].var(0) + fused[2].eps
    xhat = (ref["z1"] - ref["z1"].mean(0)) / np.sqrt(var)
    dxhat = dA2 * gamma
    dz1 = (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0)) / np.sqrt(var)
    dA0 = dz1 @ fused[1].weight.data.astype(np.float64)
    dz0 = dA0 * ref["df"](ref["z0"])
    h_f, h_u = records["fused"], records["unfused"]
    t = dict(rtol=3e-4, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(h_f.last("0", "dz_norm"), np.linalg.norm(dz0), **t)
    np.testing.assert_allclose(h_f.last("0", "dz_max"), np.abs(dz0).max(), **t)
    np.testing.assert_allclose(h_f.last("1", "dz_norm"), np.linalg.norm(dz1), **t)
    np.testing.assert_allclose(h_f.last("3", "dz_norm"), np.linalg.norm(g3), **t)
    # the unfused network: Dense "0"'s output is the pre-activation, so its dz is the same
    np.testing.assert_allclose(h_u.last("0", "dz_norm"), h_f.last("0", "dz_norm"), **t)
    np.testing.assert_allclose(h_u.last("2", "dz_norm"), h_f.last("1", "dz_norm"), **t)
    # the activation layer's dz is the gradient w.r.t. its output (dA0)
    np.testing.assert_allclose(h_u.last("1", "dz_norm"), np.linalg.norm(dA0), **t)


def test_dz_by_finite_differences_float64():
    """dz of layer 0 is d(mean loss)/d(pre-activation): perturb the bias of one unit, which
    moves that unit's pre-activation in every row; the sum over rows of dz is its slope."""
    net = make_net(np.float64, "tanh")
    X, y = data(np.float64)
    mon = GradientMonitor(net, updates=False)
    loss = mse(net(X), y)
    loss.backward()
    dz0 = np.array(mon._dz[0], copy=True)
    mon.record(loss)
    np.testing.assert_allclose(mon.history.last("0", "dz_norm"), np.linalg.norm(dz0), rtol=1e-12)
    eps = 1e-6
    for unit in range(3):
        with no_grad():
            net[0].bias.data[unit] += eps
            up = float(mse(net(X), y).item())
            net[0].bias.data[unit] -= 2 * eps
            down = float(mse(net(X), y).item())
            net[0].bias.data[unit] += eps
        assert dz0[:, unit].sum() == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_dense_dz_is_the_gradient_before_softmax(dtype):
    rng = np.random.default_rng(3)
    net = nn.Sequential(nn.Dense(4, 6, activation="relu", dtype=dtype),
                        nn.Dense(6, 3, activation="softmax", dtype=dtype))
    X = rng.normal(size=(10, 4)).astype(dtype)
    target = rng.normal(size=(10, 3)).astype(dtype)
    mon = GradientMonitor(net, updates=False)
    out = net(X)
    loss = mse(out, target)
    loss.backward()
    mon.record(loss)
    a = np.maximum(X.astype(np.float64) @ net[0].weight.data.T.astype(np.float64) + net[0].bias.data, 0)
    z = a @ net[1].weight.data.T.astype(np.float64) + net[1].bias.data
    s = np.exp(z - z.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    g = 2 * (s - target) / target.size
    dz = s * (g - (g * s).sum(1, keepdims=True))
    t = dict(rtol=1e-4) if dtype == np.float32 else dict(rtol=1e-10)
    np.testing.assert_allclose(mon.history.last("1", "dz_norm"), np.linalg.norm(dz), **t)
    np.testing.assert_allclose(mon.history.last("1", "act_mean"), s.mean(), **t)
    np.testing.assert_allclose(mon.history.last("1", "act_max"), s.max(), **t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_statistics_and_dead_units_match_numpy(dtype):
    net = make_net(dtype, "relu")
    net[0].bias.data[:3] = -50.0  # three units dead for every sample
    X, y = data(dtype)
    mon = GradientMonitor(net)
    ref = numpy_forward(net, X, "relu")
    loss = mse(net(X), y)
    loss.backward()
    mon.record(loss)
    h = mon.history
    t = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    a0 = ref["a0"]
    np.testing.assert_allclose(h.last("0", "act_mean"), a0.mean(), **t)
    np.testing.assert_allclose(h.last("0", "act_std"), a0.std(), **t)
    np.testing.assert_allclose(h.last("0", "act_min"), a0.min(), **t)
    np.testing.assert_allclose(h.last("0", "act_max"), a0.max(), **t)
    dead = np.count_nonzero((ref["z0"] <= 0).all(axis=0))
    assert dead >= 3
    assert h.last("0", "dead_frac") == pytest.approx(dead / 8)
    np.testing.assert_allclose(h.last("2", "act_mean"), ref["a2"].mean(), **t)  # BatchNorm output
    np.testing.assert_allclose(h.last("2", "act_std"), ref["a2"].std(), **t)
    assert h.last("0", "act_nonfinite") == 0
    assert math.isnan(h.last("2", "dead_frac"))  # not a ReLU-family layer: no dead count
    assert "dead_frac" not in h.metrics("1")


@pytest.mark.parametrize("fused", [True, False])
def test_saturated_fraction_matches_numpy(fused):
    net = make_net(np.float64, "tanh", fused=fused)
    net[0].weight.data[...] *= 6
    X, y = data(np.float64)
    mon = GradientMonitor(net, saturation=2.0)
    z0 = X @ net[0].weight.data.T + net[0].bias.data
    loss = mse(net(X), y)
    loss.backward()
    mon.record(loss)
    layer = "0" if fused else "1"
    expected = np.count_nonzero(np.abs(z0) > 2.0) / z0.size
    assert 0 < expected < 1
    assert mon.history.last(layer, "saturated_frac") == pytest.approx(expected)


def test_eval_mode_and_no_grad_forwards_are_not_recorded():
    net = make_net(np.float64)
    X, y = data(np.float64)
    X2 = X * 3 + 1
    mon = GradientMonitor(net)
    ref = numpy_forward(net, X, "relu")
    loss = mse(net(X), y)
    loss.backward()
    with no_grad():
        net(X2)
    net.eval()
    net(X2)
    net.train()
    mon.record(loss)
    assert mon.history.last("0", "act_mean") == pytest.approx(ref["a0"].mean(), rel=1e-12)


def test_every_k_records_every_kth_step_only():
    net = make_net(np.float64)
    X, y = data(np.float64)
    opt = optim.SGD(net.parameters(), lr=0.01)
    mon = GradientMonitor(net, every=3, optimizer=opt)
    for _ in range(7):
        opt.zero_grad()
        loss = mse(net(X), y)
        loss.backward()
        if mon.step % 3:
            assert all(o is None for o in mon._out)  # unrecorded steps keep nothing
        mon.record(loss)
        opt.step()
    assert list(mon.history.steps()) == [0, 3, 6]
    assert mon.step == 7


def test_update_norm_with_every_k_covers_one_step():
    """The update of a recorded step is measured at the next training forward, before the
    unrecorded steps move the weights again."""
    net = make_net(np.float64)
    X, y = data(np.float64)
    opt = optim.SGD(net.parameters(), lr=0.05)
    mon = GradientMonitor(net, every=2, optimizer=opt)
    updates = []
    for _ in range(4):
        opt.zero_grad()
        loss = mse(net(X), y)
        loss.backward()
        before = net[0].weight.data.copy()
        mon.record(loss)
        opt.step()
        updates.append(np.linalg.norm(net[0].weight.data - before))
    steps, values = mon.history.series("0", "weight.update_norm")
    assert list(steps) == [0, 2]
    np.testing.assert_allclose(values, [updates[0], updates[2]], rtol=1e-10)


# ---------------------------------------------------------------------- fit
class GradCapture(Callback):
    """Copies the gradients at on_after_backward and the step logs at on_after_step."""

    def __init__(self):
        self.grads, self.logs = [], []

    def on_after_backward(self, batch, logs=None):
        self.grads.append({n: p.grad.astype(np.float64).copy() for n, p in self.model.named_parameters()
                           if p.grad is not None})

    def on_after_step(self, batch, logs=None):
        self.logs.append(dict(logs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [1, 2])
def test_fit_records_one_row_set_per_optimizer_step(dtype, accumulate):
    net = make_net(dtype)
    X, y = data(dtype, n=64)
    net.compile(optim.SGD(net.parameters(), lr=0.05, global_clip_norm=0.5), "mse")
    cap = GradCapture()
    mon = GradientMonitor(net)
    net.fit(X, y, epochs=2, batch_size=16, callbacks=[cap, mon], verbose=0, shuffle=False,
            accumulate_steps=accumulate)
    steps = 2 * 4 // accumulate
    assert list(mon.history.steps()) == list(range(steps))
    assert len(cap.grads) == steps
    for s in range(steps):
        at = mon.history.at(s)
        for name, g in cap.grads[s].items():
            layer, pname = name.rsplit(".", 1)
            np.testing.assert_allclose(at[(layer, f"{pname}.grad_norm")], np.linalg.norm(g), **tol(dtype))
        logs = cap.logs[s]
        for key in ("grad_norm", "clip_coef", "skipped", "lr"):
            assert at[("", key)] == pytest.approx(logs[key], rel=1e-12)
        assert at[("", "clip_coef")] < 1.0  # the clipping actually applied
    assert mon.step == steps


def test_fit_with_every_and_residual_names():
    net = nn.Sequential(nn.Dense(6, 8, activation="relu"), nn.Residual([nn.Dense(8, 8), nn.PReLU(8)]),
                        nn.LayerNorm(8), nn.Dropout(0.1), nn.Dense(8, 2))
    X, y = data(np.float32, n=40)
    net.compile("adam", "mse")
    mon = GradientMonitor(net, every=2)
    assert [l.name for l in mon.layers] == ["0", "1.block.0", "1.block.1", "2", "4"]
    assert mon.layers[2] == LayerInfo("1.block.1", 2, "PReLU", "prelu", "relu_like", ["weight"])
    assert mon.layers[0].family == "relu_like" and mon.layers[3].activation is None
    net.fit(X, y, epochs=2, batch_size=10, callbacks=[mon], verbose=0)
    assert list(mon.history.steps()) == [0, 2, 4, 6]
    assert mon.history.layers() == ["", "0", "1.block.0", "1.block.1", "2", "4"]
    assert "dead_frac" in mon.history.metrics("1.block.1")
    assert mon.history.last("1.block.1", "weight.grad_norm") > 0
    assert mon.history.last("1.block.0", "dz_norm") > 0


def test_fit_refuses_a_network_that_does_not_contain_the_monitored_one():
    net, other = make_net(np.float32), make_net(np.float32)
    other.compile("sgd", "mse")
    X, y = data(np.float32)
    with pytest.raises(ValueError, match="does not contain"):
        other.fit(X, y, callbacks=[GradientMonitor(net)], verbose=0)


# ---------------------------------------------------------------------- history, summary, lifetime
def test_history_queries_csv_round_trip_and_pandas(tmp_path):
    net = make_net(np.float64)
    net.compile("sgd", "mse")
    X, y = data(np.float64, n=32)
    mon = GradientMonitor(net)
    net.fit(X, y, epochs=1, batch_size=8, callbacks=[mon], verbose=0)
    h = mon.history
    assert h.step.dtype == np.int64 and h.value.dtype == np.float64 and h.layer.dtype == object
    assert len(h) == len(h.step) == len(h.metric)
    steps, values = h.series("0", "weight.grad_norm")
    assert list(steps) == [0, 1, 2, 3]
    rows = (h.layer == "0") & (h.metric == "weight.grad_norm")
    np.testing.assert_array_equal(values, h.value[rows])
    assert h.last("0", "weight.grad_norm") == values[-1]
    assert h.at(-1) == h.at(3) and h.at(3)[("0", "weight.grad_norm")] == values[-1]
    assert math.isnan(h.last("0", "no_such_metric")) and h.last("0", "no_such_metric", default=-1.0) == -1.0
    with pytest.raises(ValueError, match="unknown layer"):
        h.series("nope", "grad_norm")
    with pytest.raises(ValueError, match="no metric"):
        h.series("0", "nope")
    path = tmp_path / "history.csv"
    mon.to_csv(path)
    assert path.read_text().splitlines()[0] == "step,layer,metric,value"
    back = MonitorHistory.from_csv(path)
    np.testing.assert_array_equal(back.step, h.step)
    np.testing.assert_array_equal(back.layer, h.layer)
    np.testing.assert_array_equal(back.metric, h.metric)
    np.testing.assert_array_equal(back.value, h.value)  # repr round-trips floats exactly
    d = h.to_dict()
    assert set(d) == {"step", "layer", "metric", "value"} and len(d["value"]) == len(h)
    pd = pytest.importorskip("pandas")
    df = mon.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["step", "layer", "metric", "value"]
    assert df.shape[0] == len(h)
    assert df[(df.layer == "0") & (df.metric == "weight.grad_norm")]["value"].tolist() == values.tolist()


def test_to_pandas_without_pandas_gives_advice(monkeypatch):
    import sys

    net = make_net(np.float32)
    mon = GradientMonitor(net)
    monkeypatch.setitem(sys.modules, "pandas", None)  # "import pandas" raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        mon.to_pandas()


def test_summary_names_every_layer():
    net = make_net(np.float32)
    X, y = data(np.float32)
    mon = GradientMonitor(net)
    assert "nothing recorded" in mon.summary(print_fn=None)
    loss = mse(net(X), y)
    loss.backward()
    mon.record(loss)
    printed = []
    text = mon.summary(print_fn=printed.append)
    assert printed == [text]
    lines = text.splitlines()
    for info in mon.layers:
        assert any(line.split()[:1] == [info.name] and info.kind in line for line in lines)
    assert f"{mon.history.last('0', 'grad_norm'):.4g}" in text and "loss" in text


def test_close_removes_hooks_and_history_stays():
    net = make_net(np.float32)
    X, y = data(np.float32)
    with GradientMonitor(net) as mon:
        loss = mse(net(X), y)
        loss.backward()
        mon.record(loss)
    rows = len(mon.history)
    assert all("_monitor_tap" not in m.__dict__ and "_module_hooks" not in m.__dict__ for m in net.modules())
    loss = mse(net(X), y)
    loss.backward()
    assert len(mon.history) == rows and all(o is None for o in mon._out)
    with pytest.raises(RuntimeError, match="closed"):
        mon.record(loss)
    GradientMonitor(net).close()  # the layers can be watched again
    calls = []
    net[2].register_forward_hook(lambda m, args, out: calls.append(out.shape))
    GradientMonitor(net).close()
    net(X)
    assert calls == [(16, 5)]  # the user's own hook stays


def test_two_monitors_on_one_network_record_the_same_numbers():
    net = make_net(np.float64)
    X, y = data(np.float64)
    first, second, third = GradientMonitor(net), GradientMonitor(net, every=2), GradientMonitor(net)
    for _ in range(2):
        net.zero_grad()
        loss = mse(net(X), y)
        loss.backward()
        for mon in (first, second, third):
            mon.record(loss)
    assert first.history.at(0) == pytest.approx(second.history.at(0), rel=0, abs=0, nan_ok=True)
    assert list(second.history.steps()) == [0]
    second.close()
    third.close()
    assert net[0]._monitor_tap is first._handles[0]  # back to a single tap
    net.zero_grad()
    loss = mse(net(X), y)
    loss.backward()
    first.record(loss)
    assert list(first.history.steps()) == [0, 1, 2]
    np.testing.assert_array_equal(first.history.series("0", "act_mean")[1][:2], third.history.series("0", "act_mean")[1])
    first.close()
    assert "_monitor_tap" not in net[0].__dict__


def test_copy_of_a_monitored_network_is_not_monitored():
    net = make_net(np.float64)
    X, y = data(np.float64)
    mon = GradientMonitor(net)
    twin = copy.deepcopy(net)
    loss = mse(twin(X), y)
    loss.backward()
    assert all(o is None for o in mon._out)
    np.testing.assert_array_equal(twin(X).data, net(X).data)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(every=0), ValueError, "every"),
    (dict(every=1.5), TypeError, "every"),
    (dict(activations="yes"), TypeError, "activations"),
    (dict(on_nonfinite="ignore"), ValueError, "on_nonfinite"),
    (dict(update_ratio=(0.1, 0.01)), ValueError, "update_ratio"),
    (dict(update_ratio=0.1), TypeError, "update_ratio"),
    (dict(growth=1.0), ValueError, "growth"),
    (dict(dead=1.5), ValueError, "dead"),
    (dict(exploding=-1), ValueError, "exploding"),
    (dict(on_event=3), TypeError, "on_event"),
    (dict(loggers=object()), TypeError, "loggers"),
    (dict(loggers=[object()]), TypeError, r"loggers\[0\]"),
    (dict(optimizer="sgd"), TypeError, "optimizer"),
])
def test_bad_arguments_give_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        GradientMonitor(make_net(np.float32), **kwargs)


def test_bad_networks_and_losses():
    with pytest.raises(TypeError, match="Module"):
        GradientMonitor([nn.Dense(2, 2)])
    with pytest.raises(ValueError, match="single layer"):
        GradientMonitor(nn.Dense(2, 2))
    with pytest.raises(ValueError, match="no layer to monitor"):
        GradientMonitor(nn.Sequential(nn.Dropout(0.1), nn.Flatten()))
    net = make_net(np.float32)
    mon = GradientMonitor(net)
    with pytest.raises(TypeError, match="loss"):
        mon.record("0.5")
    with pytest.raises(ValueError, match="scalar"):
        mon.record(Tensor(np.ones(3)))
