"""pickle of networks and optimizers (torch.save / joblib / multiprocessing style): a loaded
pair trains on exactly as the original would. Oracle: a twin built from the same seed and
stepped the same way without pickling."""
import pickle

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, losses, nn, optim
from gradcore.compiled import compile_step
from gradcore.monitor import GradientMonitor

RNG = np.random.default_rng(9)
X = RNG.standard_normal((32, 6)).astype(np.float32)
Y = RNG.standard_normal((32, 1)).astype(np.float32)
MSE = losses.get("mse")


def _net(dtype=np.float32):
    gradcore.manual_seed(4)
    net = nn.Sequential(nn.Dense(6, 8, "relu"), nn.BatchNorm(8), nn.ReLU(), nn.Dense(8, 1), dtype=dtype)
    net.compile(optim.Adam(net.parameters(), lr=1e-2, amsgrad=True, global_clip_norm=1.0), loss="mse")
    return net


def _fit(net, **kw):
    return net.fit(X, Y, epochs=2, batch_size=8, verbose=0, shuffle=False, **kw)


def _assert_same(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(u, v, err_msg=k)


@pytest.mark.parametrize("compiled", [True, False])
def test_loaded_compiled_network_fits_like_its_twin(compiled):
    net, twin = _net(), _net()
    _fit(net, compiled=compiled)
    _fit(twin, compiled=compiled)
    net2 = pickle.loads(pickle.dumps(net))
    (flat,) = net2.flat_buffers()
    assert all(np.shares_memory(p.data, flat.data) for p in net2.parameters())
    assert net2.optimizer._slots[0].flat is flat and net2.optimizer in flat.optimizers
    _fit(net2, compiled=compiled)  # compiled=True: refused (UnsupportedError) if the copy could not be lowered
    _fit(twin, compiled=compiled)
    _assert_same(net2, twin)


def test_loaded_pair_steps_like_its_twin_and_leaves_the_original():
    net, twin = _net(np.float64), _net(np.float64)
    opt, otwin = net.optimizer, twin.optimizer
    for n, o in ((net, opt), (twin, otwin)):
        o.zero_grad()
        MSE(n(Tensor(X.astype(np.float64))), Tensor(Y.astype(np.float64))).backward()
        o.step()
    before = [p.data.copy() for p in net.parameters()]
    net2, opt2 = pickle.loads(pickle.dumps((net, opt)))
    for _ in range(3):
        for n, o in ((net2, opt2), (twin, otwin)):
            o.zero_grad()
            MSE(n(Tensor(X.astype(np.float64))), Tensor(Y.astype(np.float64))).backward()
            o.step()
    _assert_same(net2, twin)
    for p, b in zip(net.parameters(), before):
        np.testing.assert_array_equal(p.data, b)
    with pytest.raises(RuntimeError, match="holds this network's parameters"):
        net2.astype(np.float32)  # the loaded optimizer holds the loaded buffer


def test_a_monitored_network_loads_without_its_monitor_and_compiles():
    net, twin = _net(), _net()
    mon = GradientMonitor(net)
    _fit(net, callbacks=[mon], compiled=False)
    _fit(twin, compiled=False)
    net2 = pickle.loads(pickle.dumps(net))
    assert all(m._module_hooks is None and m.__dict__.get("_monitor_tap") is None for m in net2.modules())
    step, tstep = compile_step(net2), compile_step(twin)
    for _ in range(3):
        assert step(X[:8], Y[:8]) == tstep(X[:8], Y[:8])
    _assert_same(net2, twin)


def test_a_network_pickled_during_fit_is_not_in_that_fit():
    """As its deep copy: a checkpoint pickled by a callback carries no fit loop (nor the
    per-object caches), and the loaded network trains as its twin."""
    net, twin = _net(), _net()
    saved = []

    class Save(gradcore.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved.append(pickle.dumps(self.model))

    _fit(net, callbacks=[Save()], compiled=False)
    _fit(twin, compiled=False)
    assert net.__dict__.get("_fit_loop") is None
    net2 = pickle.loads(saved[-1])
    assert all(net2.__dict__.get(k) is None for k in ("_fit_loop", "_dense_run_cache", "_regularizer_cache"))
    _assert_same(net2, twin)
    _fit(net2, compiled=False)
    _fit(twin, compiled=False)
    _assert_same(net2, twin)
