"""GradientMonitor over the optimizer's step statistics (record_stats) against the monitor's own
passes (snapshot, difference, gradient statistics): the same network trained twice, once per
path, gives the same history, events and parameters."""
import numpy as np
import pytest

import gradcore
from gradcore import functional as F, nn, optim
from gradcore.monitor import GradientMonitor, _monitor


@pytest.fixture(autouse=True)
def stats_for_small_networks(monkeypatch):
    """The networks here are small: let them use the optimizer's statistics anyway."""
    monkeypatch.setattr(_monitor, "_STATS_MIN_VALUES", 0)


def make_net(dtype, seed=0):
    gradcore.manual_seed(seed)
    return nn.Sequential(nn.Dense(6, 16, kernel_initializer="he_normal", dtype=dtype), nn.BatchNorm(16, dtype=dtype),
                         nn.ReLU(), nn.Dense(16, 8, activation="tanh", dtype=dtype), nn.Dense(8, 3, dtype=dtype),
                         dtype=dtype)


def data(dtype, n=96):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6)).astype(dtype), rng.integers(0, 3, size=n)


def own_passes(mon):
    """Make ``mon`` use its own passes whatever the optimizer (the fallback path)."""
    mon._release_optimizer()
    mon._stats_optimizer = lambda optimizer: None
    return mon


def rows(mon):
    h = mon.history
    order = np.lexsort((h.metric.astype(str), h.layer.astype(str), h.step))
    return h.step[order], h.layer[order].astype(str), h.metric[order].astype(str), h.value[order]


def assert_same_history(a, b, rtol):
    sa, la, ma, va = rows(a)
    sb, lb, mb, vb = rows(b)
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_allclose(va, vb, rtol=rtol, atol=0, equal_nan=True)
    assert [str(e) for e in a.events] == [str(e) for e in b.events]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_fit_with_optimizer_stats_matches_the_monitors_own_passes(dtype, rtol):
    X, y = data(dtype)
    nets, mons = [], []
    for use_stats in (True, False):
        net = make_net(dtype)
        net.compile(optim.Adam(net.parameters(), lr=0.05, weight_decay=0.01, global_clip_norm=0.5),
                    loss="cross_entropy")
        mon = GradientMonitor(net, update_ratio=(1e-3, 1e-2))
        if not use_stats:
            own_passes(mon)
        net.fit(X, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[mon])
        nets.append(net)
        mons.append(mon)
    assert mons[0]._stats_opt is nets[0].optimizer and mons[1]._stats_opt is None
    assert mons[0]._snapshots == []  # no copy of the parameters was taken
    assert_same_history(mons[0], mons[1], rtol)
    assert mons[0].history.metrics("0") == mons[1].history.metrics("0")
    assert len(mons[0].history.series("0", "weight.update_norm")[0]) == 12
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)  # the statistics change no update


@pytest.mark.parametrize("every", [1, 3])
def test_hand_loop_with_optimizer_matches_the_monitors_own_passes(every):
    X, y = data(np.float64)
    mons, nets = [], []
    for use_stats in (True, False):
        net = make_net(np.float64)
        opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, clip_norm=0.3)
        mon = GradientMonitor(net, every=every, optimizer=opt)
        if not use_stats:
            own_passes(mon)
        for i in range(7):
            opt.zero_grad()
            loss = F.cross_entropy(net(gradcore.Tensor(X[i * 8:(i + 1) * 8])), y[i * 8:(i + 1) * 8])
            loss.backward()
            mon.record(loss)
            opt.step()
        mons.append(mon)
        nets.append(net)
    assert mons[0]._stats_opt is not None
    assert_same_history(mons[0], mons[1], 1e-12)
    assert list(mons[0].history.steps()) == list(range(0, 7, every))
    # reading before the last step's optimizer step: no update yet on either path
    for mon, net in zip(mons, nets):
        loss = F.cross_entropy(net(gradcore.Tensor(X[:8])), y[:8])
        loss.backward()
        mon.record(loss)
    assert_same_history(mons[0], mons[1], 1e-12)


def test_optimizer_over_part_of_the_network_keeps_the_monitors_passes():
    net = make_net(np.float64)
    opt = optim.SGD(net[0].parameters(), lr=0.1)
    mon = GradientMonitor(net, optimizer=opt)
    assert mon._stats_opt is None and opt.record_stats is False


def test_close_turns_record_stats_off_again_and_keeps_a_users_setting():
    net = make_net(np.float64)
    opt = optim.Adam(net.parameters())
    with GradientMonitor(net, optimizer=opt) as mon:
        assert opt.record_stats is True and mon._stats_opt is opt
    assert opt.record_stats is False
    opt.record_stats = True
    GradientMonitor(net, optimizer=opt).close()
    assert opt.record_stats is True


def test_norms_only_monitor_asks_for_the_gradient_statistics_only():
    X, y = data(np.float64)
    mons = []
    for use_stats in (True, False):
        net = make_net(np.float64)
        opt = optim.Adam(net.parameters(), lr=0.01)
        net.compile(opt, loss="cross_entropy")
        mon = GradientMonitor(net, activations=False, updates=False, optimizer=opt)
        if use_stats:
            assert opt.record_stats == "grad"
        else:
            own_passes(mon)
        net.fit(X, y, epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=[mon])
        mons.append(mon)
    assert_same_history(mons[0], mons[1], 1e-12)
    assert "weight.update_norm" not in mons[0].history.metrics("0")


def test_a_small_network_keeps_the_monitors_own_passes(monkeypatch):
    monkeypatch.setattr(_monitor, "_STATS_MIN_VALUES", 1 << 16)
    net = make_net(np.float64)
    opt = optim.Adam(net.parameters())
    mon = GradientMonitor(net, optimizer=opt)
    assert mon._stats_opt is None and opt.record_stats is False
    monkeypatch.setattr(_monitor, "_STATS_MIN_VALUES", sum(p.size for p in net.parameters()))
    assert GradientMonitor(net, optimizer=opt)._stats_opt is opt
