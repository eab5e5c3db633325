"""Adversarial review of main's changes of 2026-12-04 (session 14, review helper).

1. ``copy.deepcopy`` of networks together with their optimizers (FlatBuffer.__deepcopy__,
   Optimizer.__deepcopy__, Module.__deepcopy__). Oracle: an uncopied twin built from the
   same seed and stepped identically (PyTorch's behaviour for ``deepcopy((model, opt))``:
   the copy continues from a copy of the state, the original is untouched).
2. Module class attributes patched after first use (the metaclass' __setattr__ and
   ``class_verdicts``). Oracle: the network called layer by layer (each layer through its
   class's ``__call__``, as PyTorch's Sequential does), or a NumPy forward.
3. Accumulating compiled steps (fit with ``accumulate_steps > 1``; the plan's weight GEMM
   adding into the flat gradient buffer with beta = 1). Oracle: the eager fit, float64 to
   1e-12 and float32 to 1e-5 (relative, with an absolute floor of that times the largest
   value, as tests/test_dw_panel.py does).

Tests marked ``xfail(strict=True)`` are wrong results or crashes found by this review and
still open; their reasons say what goes wrong. The others are regression guards that pass
(among them the findings main mended the same day: deep copies of parameters / flat
buffers met in any order, a sub-module copied alone, a monitored network or a monitor
copied, patched Dense / lowered / Module classes, class attributes off the call path,
overridden check_input, a model copied during fit, pickling a network). One stays open: a
forward added to a plain mixin base after first use. Sections 4 and 5
guard the branches merged later that day (h-dxform's blocked dX, h-small's small Dense
forward).
"""
import copy
import gc
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, losses, nn, optim
from gradcore.callbacks import Callback
from gradcore.compiled import UnsupportedError, compile_step
from gradcore.monitor import GradientMonitor
from gradcore.nn.module import Module

RNG = np.random.default_rng(2026)
X = RNG.standard_normal((20, 6))
Y = RNG.standard_normal((20, 1))
MSE = losses.get("mse")


def _net(dtype=np.float64, seed=3):
    """Nested: a Residual around a Sequential, BatchNorm (running statistics), a Tanh layer."""
    gradcore.manual_seed(seed)
    return nn.Sequential(
        nn.Dense(6, 8, "relu"),
        nn.BatchNorm(8),
        nn.Residual([nn.Dense(8, 8, "tanh"), nn.Dense(8, 8)]),
        nn.Sequential(nn.Dense(8, 4, "relu"), nn.Tanh()),
        nn.Dense(4, 1),
        dtype=dtype,
    )


OPTIMIZERS = {
    "sgd_momentum": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=1e-2),
    "adamw": lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "amsgrad_clipped": lambda p: optim.Adam(p, lr=1e-2, amsgrad=True, global_clip_norm=0.5, clip_norm=0.3),
    "rmsprop_centered": lambda p: optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
    "adagrad": lambda p: optim.Adagrad(p, lr=0.1),
    "noise": lambda p: optim.Adam(p, lr=1e-2, grad_noise=(0.05, 0.55, 7)),
    "schedule": lambda p: optim.SGD(p, lr=optim.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5), momentum=0.9),
}


def _tol(dtype):
    return 1e-12 if dtype == np.float64 else 1e-5


def _step(net, opt, x=X, y=Y):
    opt.zero_grad()
    loss = MSE(net(Tensor(x)), Tensor(y))
    loss.backward()
    opt.step()
    return float(loss.data)


def _values(net):
    return [np.array(p.data) for p in net.parameters()] + [np.array(v) for v in net.state_dict().values()]


def _assert_same(a, b, tol):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        finite = np.abs(v[np.isfinite(v)])
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol * max(1.0, float(np.max(finite, initial=0))),
                                   err_msg=f"value {i}")


# ---------------------------------------------------------------------- 1. deepcopy
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("how", ["(net, opt)", "(opt, net)", "twice"])
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_deepcopy_pair_trains_like_an_uncopied_twin(kind, how, dtype):
    make = OPTIMIZERS[kind]
    net, twin = _net(dtype), _net(dtype)
    opt, otwin = make(net.parameters()), make(twin.parameters())
    for _ in range(2):
        _step(net, opt)
        _step(twin, otwin)
    before = _values(net)
    if how == "(opt, net)":
        opt2, net2 = copy.deepcopy((opt, net))
    else:
        net2, opt2 = copy.deepcopy((net, opt))
        if how == "twice":
            net2, opt2 = copy.deepcopy((net2, opt2))
    for _ in range(3):
        got, want = _step(net2, opt2), _step(twin, otwin)
        assert got == pytest.approx(want, rel=_tol(dtype), abs=1e-15)
    _assert_same(_values(net2), _values(twin), _tol(dtype))
    for a, b in zip(_values(net), before):  # the copy's steps never touch the original
        np.testing.assert_array_equal(a, b)
    # the copied optimizer's state is the twin's
    s2, st = opt2.state_dict(), otwin.state_dict()
    for b2, bt in zip(s2["buffers"], st["buffers"]):
        np.testing.assert_array_equal(b2["steps"], bt["steps"])
        assert sorted(b2["state"]) == sorted(bt["state"])
        for name in bt["state"]:
            _assert_same([b2["state"][name]], [bt["state"][name]], _tol(dtype))


@pytest.mark.parametrize("kind", ["sgd_momentum", "amsgrad_clipped", "noise"])
def test_original_pair_still_trains_like_its_twin_after_being_copied(kind):
    make = OPTIMIZERS[kind]
    net, twin = _net(), _net()
    opt, otwin = make(net.parameters()), make(twin.parameters())
    _step(net, opt)
    _step(twin, otwin)
    net2, opt2 = copy.deepcopy((net, opt))
    _step(net2, opt2)  # the copy trains in between
    for _ in range(3):
        assert _step(net, opt) == _step(twin, otwin)
    _assert_same(_values(net), _values(twin), 0)


def test_deepcopy_keeps_parameter_groups_and_frozen_parameters():
    def build():
        net = _net()
        net[0].bias.requires_grad = False
        net[4].weight.requires_grad = False
        opt = optim.Adam([{"params": net[0].parameters(), "lr": 5e-2},
                          {"params": list(net[2].parameters()) + list(net[4].parameters()), "lr": 1e-3,
                           "weight_decay": 0.1}], lr=1e-2)
        return net, opt

    (net, opt), (twin, otwin) = build(), build()
    _step(net, opt)
    _step(twin, otwin)
    net2, opt2 = copy.deepcopy((net, opt))
    frozen = [net2[0].bias.data.copy(), net2[4].weight.data.copy()]
    assert [g["lr"] for g in opt2.param_groups] == [5e-2, 1e-3]
    assert not net2[0].bias.requires_grad and not net2[4].weight.requires_grad
    for _ in range(3):
        assert _step(net2, opt2) == pytest.approx(_step(twin, otwin), rel=1e-12)
    np.testing.assert_array_equal(net2[0].bias.data, frozen[0])
    np.testing.assert_array_equal(net2[4].weight.data, frozen[1])
    _assert_same(_values(net2), _values(twin), 1e-12)
    # the copy's groups are its own: changing one leaves the original's alone
    opt2.param_groups[0]["lr"] = 0.0
    assert opt.param_groups[0]["lr"] == 5e-2


def test_deepcopy_of_a_lazy_optimizer_registers_the_copied_layers():
    def lazy_step(net, opt, layers):
        for p in net.parameters():
            p.grad = None
        MSE(net(Tensor(X)), Tensor(Y)).backward()
        for i in layers:
            opt.update_params(net[i])

    net, twin = _net(), _net()
    opt, otwin = optim.Adam(None, lr=1e-2), optim.Adam(None, lr=1e-2)
    lazy_step(net, opt, [0])
    lazy_step(twin, otwin, [0])
    net2, opt2 = copy.deepcopy((net, opt))
    for _ in range(2):  # net[4] is registered for the first time by the copy
        lazy_step(net2, opt2, [0, 4])
        lazy_step(twin, otwin, [0, 4])
    _assert_same(_values(net2), _values(twin), 1e-12)
    assert all(any(p is q for q in net2.parameters()) for p in opt2.params)


def test_deepcopy_of_a_sub_module_with_the_optimizer_steps_the_sub_module_copy():
    net, twin = _net(), _net()
    opt, otwin = optim.SGD(net.parameters(), lr=0.1, momentum=0.9), optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    _step(net, opt)
    _step(twin, otwin)
    try:
        sub2, opt2 = copy.deepcopy((net[2], opt))
    except RuntimeError as exc:  # the sub-module's copy owns its parameters: refusing clearly is right too
        assert "copy the whole network with its optimizer" in str(exc)
        return
    assert all(any(p is q for q in opt2.params) for p in sub2.parameters())
    for _ in range(2):
        otwin.zero_grad()
        MSE(twin(Tensor(X)), Tensor(Y)).backward()
        for c, t in zip(opt2.params, otwin.params):
            c.grad = t.grad.copy()
        opt2.step()
        otwin.step()
    _assert_same([p.data for p in sub2.parameters()], [p.data for p in twin[2].parameters()], 1e-12)


def test_copied_optimizer_state_loads_into_a_fresh_optimizer():
    net = _net()
    opt = OPTIMIZERS["amsgrad_clipped"](net.parameters())
    _step(net, opt)
    net2, opt2 = copy.deepcopy((net, opt))
    _step(net2, opt2)
    net3 = copy.deepcopy(net2)  # the network alone: no optimizer holds its copy
    opt3 = OPTIMIZERS["amsgrad_clipped"](net3.parameters())
    opt3.load_state_dict(opt2.state_dict())
    assert _step(net3, opt3) == _step(net2, opt2)
    _assert_same(_values(net3), _values(net2), 0)


def test_deepcopied_optimizer_accepts_a_new_parameter_group():
    net, twin = _net(), _net()
    extra, extra_twin = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    opt, otwin = optim.Adam(net.parameters(), lr=1e-2), optim.Adam(twin.parameters(), lr=1e-2)
    _step(net, opt)
    _step(twin, otwin)
    net2, opt2 = copy.deepcopy((net, opt))
    opt2.add_param_group({"params": [extra], "lr": 0.5})
    otwin.add_param_group({"params": [extra_twin], "lr": 0.5})
    for n, o, e in ((net2, opt2, extra), (twin, otwin, extra_twin)):
        o.zero_grad()
        (MSE(n(Tensor(X)), Tensor(Y)) + (e * e).sum()).backward()
        o.step()
    np.testing.assert_array_equal(extra.data, extra_twin.data)
    _assert_same(_values(net2), _values(twin), 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("kind", ["sgd_nesterov", "amsgrad_clipped", "rmsprop_centered", "adagrad", "noise"])
def test_deepcopy_of_a_compiled_network_fits_and_compiles_like_its_twin(kind, accumulate, dtype):
    make = OPTIMIZERS[kind]
    net, twin = _net(dtype), _net(dtype)
    net.compile(make(net.parameters()), loss="mse")
    twin.compile(make(twin.parameters()), loss="mse")
    fit = dict(epochs=2, batch_size=6, verbose=0, shuffle=False, accumulate_steps=accumulate, compiled="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 20 rows in batches of 6: the last row is left out (BatchNorm)
        net.fit(X, Y, **fit)
        twin.fit(X, Y, **fit)
        net2 = copy.deepcopy(net)
        assert net2.optimizer is not net.optimizer
        h2, ht = net2.fit(X, Y, **fit), twin.fit(X, Y, **fit)
    tol = _tol(dtype)
    np.testing.assert_allclose(h2.history["loss"], ht.history["loss"], rtol=tol)
    _assert_same(_values(net2), _values(twin), tol)
    # a compiled step of a copy of the copy against the twin's eager steps (training mode)
    net3, ref = copy.deepcopy(net2), copy.deepcopy(twin)
    ref.train()
    step = compile_step(net3)
    for _ in range(2):
        got = step(X[:7], Y[:7])
        ref.optimizer.zero_grad()
        loss = MSE(ref(Tensor(X[:7])), Tensor(Y[:7]))
        loss.backward()
        ref.optimizer.step()
        assert got == pytest.approx(float(loss.data), rel=tol)
    _assert_same([p.data for p in net3.parameters()], [p.data for p in ref.parameters()], tol)
    assert step.relowered == 0


def test_held_compiled_step_of_the_original_is_not_disturbed_by_a_deepcopy():
    net, twin = _net(), _net()
    net.compile(optim.Adam(net.parameters(), lr=1e-2), loss="mse")
    twin.compile(optim.Adam(twin.parameters(), lr=1e-2), loss="mse")
    s, st = compile_step(net), compile_step(twin)
    s(X, Y)
    st(X, Y)
    net2 = copy.deepcopy(net)
    compile_step(net2)(X, Y)
    for _ in range(3):
        assert s(X, Y) == st(X, Y)
    assert s.mode == "fused" and s.relowered == 0
    _assert_same(_values(net), _values(twin), 0)


def test_deepcopy_of_parameters_while_an_optimizer_holds_them():
    net = _net()
    opt = optim.Adam(net.parameters(), lr=1e-2)
    _step(net, opt)
    before = [p.data.copy() for p in net.parameters()]
    best = copy.deepcopy(list(net.parameters()))
    for b, p in zip(best, before):
        np.testing.assert_array_equal(b.data, p)
    w = copy.deepcopy(net[0].weight)
    np.testing.assert_array_equal(w.data, before[0])
    _step(net, opt)  # the original keeps training; the copies keep the old values
    for b, p in zip(best, before):
        np.testing.assert_array_equal(b.data, p)


def test_deepcopy_of_a_monitored_network_compiles_like_an_unmonitored_twin():
    net, twin = _net(), _net()
    net.compile(optim.Adam(net.parameters(), lr=1e-2), loss="mse")
    twin.compile(optim.Adam(twin.parameters(), lr=1e-2), loss="mse")
    mon = GradientMonitor(net, optimizer=net.optimizer)
    for n, m in ((net, mon), (twin, None)):
        n.optimizer.zero_grad()
        loss = MSE(n(Tensor(X)), Tensor(Y))
        loss.backward()
        if m is not None:
            m.record(loss)
        n.optimizer.step()
    net2 = copy.deepcopy(net)
    step, ref = compile_step(net2), compile_step(twin)
    assert step.mode == "fused"
    for _ in range(2):
        assert step(X, Y) == ref(X, Y)
    _assert_same(_values(net2), _values(twin), 0)


def test_deepcopy_of_a_checkpoint_dict_with_a_monitor_copies_or_refuses_clearly():
    net = _net()
    opt = optim.Adam(net.parameters(), lr=1e-2)
    mon = GradientMonitor(net, optimizer=opt)
    opt.zero_grad()
    loss = MSE(net(Tensor(X)), Tensor(Y))
    loss.backward()
    mon.record(loss)
    opt.step()
    try:
        copy.deepcopy({"model": net, "optimizer": opt, "monitor": mon})
    except TypeError as exc:
        assert "GradientMonitor" in str(exc)


def test_deepcopy_meeting_the_flat_buffer_before_the_network():
    net, twin = _net(), _net()
    d = copy.deepcopy({"buffers": net.flat_buffers(), "model": net})
    net2 = d["model"]
    (flat2,) = net2.flat_buffers()
    for i, p in enumerate(net2.parameters()):
        assert np.shares_memory(p.data, flat2.data), f"parameter {i} does not view the copy's flat buffer"
    for n in (net2, twin):
        n.compile(optim.Adam(n.parameters(), lr=1e-2), loss="mse")
    s2, st = compile_step(net2), compile_step(twin)
    for _ in range(2):
        assert s2(X, Y) == st(X, Y)
    _assert_same(_values(net2), _values(twin), 0)


def test_deepcopy_meeting_the_flat_buffer_after_the_network():
    net = _net()
    d = copy.deepcopy({"model": net, "buffers": net.flat_buffers()})
    assert d["buffers"][0] is not None
    assert d["buffers"][0] is d["model"].flat_buffers()[0]


def test_deepcopy_of_a_sub_module_alone_owns_its_parameters():
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Dense(6, 8, "relu"), nn.Dense(8, 4)), nn.Dense(4, 1000),
                        nn.Dense(1000, 1000), dtype=np.float64)
    enc, ref = copy.deepcopy(net[0]), copy.deepcopy(net[0])
    (flat,) = enc.flat_buffers()
    assert flat.size == sum(p.size for p in enc.parameters())
    y = np.ones((len(X), 4))
    for n in (enc, ref):
        n.compile(optim.Adam(n.parameters(), lr=1e-2), loss="mse")
    step = compile_step(enc)
    for _ in range(2):
        got = step(X, y)
        ref.optimizer.zero_grad()
        loss = MSE(ref(Tensor(X)), Tensor(y))
        loss.backward()
        ref.optimizer.step()
        assert got == pytest.approx(float(loss.data), rel=1e-12)
    _assert_same([p.data for p in enc.parameters()], [p.data for p in ref.parameters()], 1e-12)
    del step  # (the compiled step keeps the optimizer alive, and with it the optimizer's hold)
    enc.optimizer = None
    gc.collect()
    enc.astype(np.float32)
    assert all(p.dtype == np.float32 for p in enc.parameters())


class _Keeper(Callback):
    """Keeps a deep copy of the model at each epoch end (the 'best model' idiom)."""

    def __init__(self):
        self.copies = []
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        self.copies.append(copy.deepcopy(self.model))
        self.values.append([p.data.copy() for p in self.model.parameters()])


class _Counter(Callback):
    def __init__(self):
        self.n = 0

    def on_after_backward(self, batch, logs=None):
        self.n += 1


def _fit_net():
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(6, 8, "relu"), nn.BatchNorm(8), nn.Dense(8, 1), dtype=np.float64)
    net.compile(optim.Adam(net.parameters(), lr=1e-2), loss="mse")
    return net


@pytest.mark.parametrize("compiled", ["auto", False])
def test_model_deep_copied_by_a_callback_during_fit(compiled):
    """The copies hold the epoch's values; the fit trains exactly as without the callback;
    a copy then fits like a copy of the finished network (no shuffling: one RNG stream)."""
    net, twin, keeper = _fit_net(), _fit_net(), _Keeper()
    fit = dict(epochs=3, batch_size=8, verbose=0, shuffle=False, compiled=compiled)
    net.fit(X, Y, callbacks=[keeper], **fit)
    twin.fit(X, Y, **fit)
    _assert_same(_values(net), _values(twin), 0)
    for c, vals in zip(keeper.copies, keeper.values):
        _assert_same([p.data for p in c.parameters()], vals, 0)
    last, again = keeper.copies[-1], copy.deepcopy(net)
    h1, h2 = last.fit(X, Y, **dict(fit, epochs=1)), again.fit(X, Y, **dict(fit, epochs=1))
    assert h1.history["loss"] == h2.history["loss"]


def test_model_deep_copied_during_fit_is_not_in_a_fit():
    net, keeper, counter = _fit_net(), _Keeper(), _Counter()
    net.fit(X, Y, epochs=2, batch_size=8, verbose=0, shuffle=False, compiled=False, callbacks=[keeper, counter])
    c = keeper.copies[-1]
    fired = []
    for cb in getattr(c.__dict__.get("_fit_loop"), "callbacks", ()):
        if isinstance(cb, _Counter):
            fired.append(cb)
    before = [cb.n for cb in fired]
    c.train()
    c.train_step((Tensor(X[:8]), Tensor(Y[:8])))
    assert [cb.n for cb in fired] == before, "a callback of the original fit fired on the copy's own step"
    assert c.__dict__.get("_fit_loop") is None


def test_model_deep_copied_during_an_eager_monitored_fit():
    net, twin, keeper = _fit_net(), _fit_net(), _Keeper()
    fit = dict(epochs=2, batch_size=8, verbose=0, shuffle=False, compiled=False)
    net.fit(X, Y, callbacks=[keeper, GradientMonitor(net)], **fit)
    twin.fit(X, Y, callbacks=[GradientMonitor(twin)], **fit)
    _assert_same(_values(net), _values(twin), 0)
    _assert_same([p.data for p in keeper.copies[-1].parameters()], keeper.values[-1], 0)


# ---------------------------------------------------------------------- 2. patched classes
def _plain_net(cls=nn.Dense):
    gradcore.manual_seed(0)
    return nn.Sequential(cls(6, 8, "relu"), cls(8, 4), nn.Dense(4, 1), dtype=np.float64)


def _by_layer(net, x):
    h = Tensor(x)
    for layer in net:
        h = layer(h)
    return h.data


def _numpy_forward(net, x, halve):
    """NumPy forward of _plain_net, each layer's output times 0.5 where halve(layer)."""
    h = np.asarray(x, np.float64)
    for layer in net:
        h = h @ layer.weight.data.T + layer.bias.data
        if layer.activation == "relu":
            h = np.maximum(h, 0.0)
        if halve(layer):
            h = h * 0.5
    return h


def _check_patched(net, step, halve):
    """The eager Sequential and the compiled step (compiled before the patch) against NumPy."""
    want = _numpy_forward(net, X[:8], halve)
    np.testing.assert_allclose(_by_layer(net, X[:8]), want, rtol=1e-12)  # the oracle itself
    with gradcore.no_grad():
        np.testing.assert_allclose(net(Tensor(X[:8])).data, want, rtol=1e-12, err_msg="eager Sequential")
    try:
        got = step(X[:8], Y[:8])
    except UnsupportedError:
        return  # refusing is correct too
    assert got == pytest.approx(float(np.mean((want - Y[:8]) ** 2)), rel=1e-12), "compiled step"


def _compiled_first_use(net):
    net(Tensor(X[:8]))  # the eager caches decide now
    step = compile_step(net, MSE, optim.SGD(net.parameters(), lr=0.0))
    step(X[:8], Y[:8])
    return step


def test_forward_patched_on_a_dense_subclass_after_first_use(monkeypatch):
    class Sub(nn.Dense):
        pass

    net = _plain_net(Sub)
    step = _compiled_first_use(net)
    base = nn.Dense.forward
    monkeypatch.setattr(Sub, "forward", lambda self, x: base(self, x) * 0.5)
    _check_patched(net, step, lambda layer: isinstance(layer, Sub))
    monkeypatch.undo()  # and back: the plain forward again, the same numbers as NumPy
    _check_patched(net, step, lambda layer: False)


def test_call_patched_on_a_dense_subclass_after_first_use(monkeypatch):
    class Sub(nn.Dense):
        pass

    net = _plain_net(Sub)
    step = _compiled_first_use(net)
    base = Module.__call__
    monkeypatch.setattr(Sub, "__call__", lambda self, *a, **k: base(self, *a, **k) * 0.5)
    _check_patched(net, step, lambda layer: isinstance(layer, Sub))


@pytest.mark.parametrize("attr", ["forward", "__call__"])
def test_fit_auto_after_a_subclass_patch_matches_eager_fit(attr, monkeypatch):
    """fit(compiled='auto'), the Dense subclass patched between two fits, against the same
    sequence with compiled=False (which runs the patched layer through Module.__call__)."""
    class Sub(nn.Dense):
        pass

    base = nn.Dense.forward if attr == "forward" else Module.__call__
    patched = ((lambda self, x: base(self, x) * 0.5) if attr == "forward"
               else (lambda self, *a, **k: base(self, *a, **k) * 0.5))
    nets = []
    for compiled in ("auto", False):
        monkeypatch.undo()
        net = _plain_net(Sub)
        net.compile(optim.Adam(net.parameters(), lr=1e-2), loss="mse")
        fit = dict(epochs=2, batch_size=5, verbose=0, shuffle=False, compiled=compiled)
        net.fit(X, Y, **fit)
        monkeypatch.setattr(Sub, attr, patched)
        hist = net.fit(X, Y, **fit)
        nets.append((net, hist))
    (a, ha), (b, hb) = nets
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-12)
    _assert_same(_values(a), _values(b), 1e-12)


def test_forward_patched_on_dense_itself(monkeypatch):
    net = _plain_net()
    step = _compiled_first_use(net)
    base = nn.Dense.forward
    monkeypatch.setattr(nn.Dense, "forward", lambda self, x: base(self, x) * 0.5)
    _check_patched(net, step, lambda layer: True)


@pytest.mark.parametrize("cls", ["ReLU", "BatchNorm", "Dropout", "Residual", "Sequential"])
def test_compiled_step_sees_a_lowered_class_forward_patched(cls, monkeypatch):
    kind = getattr(nn, cls)
    gradcore.manual_seed(0)
    mid = {"BatchNorm": lambda: kind(8), "Dropout": lambda: kind(0.0),
           "Residual": lambda: kind([nn.Dense(8, 8, "tanh")]),
           "Sequential": lambda: kind(nn.Dense(8, 8, "tanh"))}.get(cls, kind)()
    net = nn.Sequential(nn.Dense(6, 8), mid, nn.Dense(8, 1), dtype=np.float64)
    step = compile_step(net, MSE, optim.SGD(net.parameters(), lr=0.0))
    step(X, Y)
    base = kind.forward
    monkeypatch.setattr(kind, "forward", lambda self, x: base(self, x) * 0.5)
    with gradcore.no_grad():
        want = float(MSE(net(Tensor(X)), Tensor(Y)).data)  # the eager forward runs the patched class
    before = float(MSE(Tensor(_numpy_plain(net, X)), Tensor(Y)).data) if cls == "ReLU" else None
    assert before is None or want != pytest.approx(before)
    try:
        got = step(X, Y)
    except UnsupportedError:
        return
    assert got == pytest.approx(want, rel=1e-12)


def _numpy_plain(net, x):
    """NumPy forward of Dense -> ReLU -> Dense (unpatched)."""
    h = np.maximum(x @ net[0].weight.data.T + net[0].bias.data, 0.0)
    return h @ net[2].weight.data.T + net[2].bias.data


def test_call_patched_on_module(monkeypatch):
    net = _plain_net()
    step = _compiled_first_use(net)
    base = Module.__call__

    def halving(self, *a, **k):
        out = base(self, *a, **k)
        return out * 0.5 if isinstance(self, nn.Dense) else out

    monkeypatch.setattr(Module, "__call__", halving)
    _check_patched(net, step, lambda layer: True)


@pytest.mark.xfail(strict=True, reason=(
    "a forward added after first use to a plain (non-Module) mixin base of a Dense subclass "
    "(class Sub(Mixin, nn.Dense)): the mixin's class is not made by the Module metaclass, so setting "
    "Mixin.forward neither clears class_verdicts nor moves the structure clock; the eager Sequential keeps "
    "Sub as plain Dense and the compiled step keeps its plan (relowered stays 0)"))
def test_forward_added_to_a_mixin_base_after_first_use(monkeypatch):
    class Mixin:
        pass

    class Sub(Mixin, nn.Dense):
        pass

    net = _plain_net(Sub)
    step = _compiled_first_use(net)
    monkeypatch.setattr(Mixin, "forward", lambda self, x: nn.Dense.forward(self, x) * 0.5, raising=False)
    _check_patched(net, step, lambda layer: isinstance(layer, Sub))


@pytest.mark.parametrize("change", ["Dense.extra_repr", "Module attribute", "Sequential subclass counter"])
def test_class_attribute_that_does_not_change_the_computation_keeps_compiling(change, monkeypatch):
    class Counted(nn.Sequential):
        made = 0

        def __init__(self, *layers, **kw):
            super().__init__(*layers, **kw)
            type(self).made += 1  # a class-level counter, set through the metaclass

    if change == "Dense.extra_repr":
        monkeypatch.setattr(nn.Dense, "extra_repr", lambda self: "a shorter repr")
    elif change == "Module attribute":
        monkeypatch.setattr(Module, "verbose_repr", True, raising=False)
    kind = Counted if change == "Sequential subclass counter" else nn.Sequential
    nets = []
    for _ in range(2):
        gradcore.manual_seed(0)
        net = kind(nn.Dense(6, 8, "relu"), nn.Dense(8, 1), dtype=np.float64)
        net.compile(optim.Adam(net.parameters(), lr=1e-2), loss="mse")
        nets.append(net)
    step = compile_step(nets[0])
    assert step.mode == "fused"
    for _ in range(2):
        got = step(X, Y)
        nets[1].optimizer.zero_grad()
        loss = MSE(nets[1](Tensor(X)), Tensor(Y))
        loss.backward()
        nets[1].optimizer.step()
        assert got == pytest.approx(float(loss.data), rel=1e-12)


class _Guarded(nn.Dense):
    """A Dense whose check_input refuses inputs outside [-100, 100] (a user's range guard)."""

    def check_input(self, x, where=None):
        super().check_input(x, where)
        data = x.data if isinstance(x, Tensor) else np.asarray(x)
        if np.max(np.abs(data)) > 100:
            raise ValueError(f"{where or 'Guarded'}: input outside [-100, 100]")


def test_check_input_override_is_honoured_eagerly():
    gradcore.manual_seed(0)
    net = nn.Sequential(_Guarded(6, 8, "relu"), nn.Dense(8, 1), dtype=np.float64)
    with pytest.raises(ValueError, match="outside"):
        net(Tensor(X * 1e3))


def test_check_input_override_is_honoured_by_the_compiled_step():
    gradcore.manual_seed(0)
    net = nn.Sequential(_Guarded(6, 8, "relu"), nn.Dense(8, 1), dtype=np.float64)
    net.compile(optim.SGD(net.parameters(), lr=0.1), loss="mse")
    with pytest.raises(ValueError, match="outside"):
        net.fit(X * 1e3, Y, epochs=1, batch_size=10, verbose=0, compiled=False)
    before = [p.data.copy() for p in net.parameters()]
    with pytest.raises((ValueError, UnsupportedError)):
        compile_step(net)(X * 1e3, Y)
    with pytest.raises(ValueError, match="outside"):
        net.fit(X * 1e3, Y, epochs=1, batch_size=10, verbose=0, compiled="auto")
    for p, b in zip(net.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("where", ["eager Sequential", "compiled step"])
def test_instance_check_input_override_is_honoured(where):
    net = _plain_net()

    def guard(x, where=None):
        raise ValueError("this layer refuses every input")

    net[0].check_input = guard
    with pytest.raises(ValueError, match="refuses"):
        net[0](Tensor(X))  # the layer alone
    with pytest.raises((ValueError, UnsupportedError)):
        if where == "eager Sequential":
            net(Tensor(X))
        else:
            compile_step(net, MSE, optim.SGD(net.parameters(), lr=0.1))(X, Y)


def test_check_input_patched_after_first_use_is_honoured_eagerly(monkeypatch):
    class Sub(nn.Dense):
        pass

    net = _plain_net(Sub)
    net(Tensor(X))

    def refuse(self, x, where=None):
        raise ValueError("Sub refuses every input")

    monkeypatch.setattr(Sub, "check_input", refuse)
    with pytest.raises(ValueError, match="refuses"):
        net(Tensor(X))


def test_normal_training_does_not_relower(monkeypatch):
    """No structure change, no new lowering: 40 compiled steps and a 4-epoch fit (with
    accumulation and a monitor) lower the network a bounded number of times (not per step)."""
    from gradcore import compiled

    count = [0]
    real = compiled._Lowering.__init__

    def counting(self, *a, **k):
        count[0] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(compiled._Lowering, "__init__", counting)
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(6, 8, "relu"), nn.BatchNorm(8), nn.Dropout(0.1), nn.Dense(8, 1), dtype=np.float64)
    net.compile(optim.Adam(net.parameters(), lr=1e-3), loss="mse")
    step = compile_step(net)
    count[0] = 0
    for _ in range(40):
        step(X[:10], Y[:10])
    assert count[0] == 0 and step.relowered == 0
    for kw in (dict(), dict(accumulate_steps=2), "monitor"):
        if kw == "monitor":  # (its taps go on the layers now: made before the other fits, it would keep them eager)
            kw = dict(callbacks=[GradientMonitor(net)])
        count[0] = 0
        net.fit(X, Y, epochs=4, batch_size=4, verbose=0, compiled=True, **kw)
        assert count[0] <= 2, kw  # the runner's lowering (and at most one more), not one per step


# ---------------------------------------------------------------------- 3. accumulating compiled fit
def _acc_net(dtype, l2=0.0, bn=False, wide=16, din=10):
    gradcore.manual_seed(1)
    layers = [nn.Dense(din, wide, "relu", l2=l2)]
    if bn:
        layers.append(nn.BatchNorm(wide))
    layers += [nn.Dense(wide, 8, "tanh", l2=l2 / 2), nn.Dense(8, 3)]
    return nn.Sequential(*layers, dtype=dtype)


ACC_CASES = {
    # name: (rows, batch_size, accumulate_steps, l2, batchnorm, clip_norm, global_clip_norm, monitor, wide, din)
    "odd": (61, 7, 3, 0.0, False, None, None, False, 16, 10),
    "l2": (61, 7, 3, 1e-2, False, None, None, False, 16, 10),
    "batchnorm": (61, 7, 2, 0.0, True, None, None, False, 16, 10),
    "clipped": (61, 7, 2, 0.0, False, 0.05, 0.1, False, 16, 10),
    "monitor": (61, 7, 2, 0.0, False, None, 0.5, True, 16, 10),
    "long batches": (1100, 500, 2, 1e-3, True, None, 1.0, True, 96, 40),  # > 448 rows: several k blocks
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(ACC_CASES))
def test_accumulating_compiled_fit_matches_eager(case, dtype):
    n, bs, acc, l2, bn, clip, gcn, monitored, wide, din = ACC_CASES[case]
    runs = []
    for compiled in (True, False):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((n, din)).astype(dtype)
        y = rng.integers(0, 3, n)
        net = _acc_net(dtype, l2, bn, wide, din)
        net.compile(optim.Adam(net.parameters(), lr=1e-2, amsgrad=True, clip_norm=clip, global_clip_norm=gcn),
                    loss="cross_entropy")
        mons = [GradientMonitor(net)] if monitored else []
        hist = net.fit(x, y, epochs=2, batch_size=bs, verbose=0, shuffle=True, accumulate_steps=acc,
                       compiled=compiled, callbacks=mons)
        runs.append((net, hist, mons))
    (a, ha, ma), (b, hb, mb) = runs
    tol = _tol(dtype)
    for key in sorted(set(ha.history) & {"loss", "grad_norm", "clip_coef", "lr"}):
        np.testing.assert_allclose(ha.history[key], hb.history[key], rtol=tol, err_msg=key)
    _assert_same(_values(a), _values(b), tol)
    if monitored:
        # the history's own NumPy columns (to_pandas would need pandas, which the test extra leaves out)
        ta, tb = ma[0].history, mb[0].history
        assert len(ta) == len(tb)
        for column in ("step", "layer", "metric"):
            np.testing.assert_array_equal(getattr(ta, column), getattr(tb, column), err_msg=column)
        num_a, num_b = ta.value.astype(np.float64), tb.value.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(num_a), np.isnan(num_b))
        fin = ~np.isnan(num_b)
        np.testing.assert_allclose(num_a[fin], num_b[fin], rtol=10 * tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["frozen", "dropout", "residual", "prelu_layernorm"])
def test_accumulating_fit_matches_eager_for_other_layers(variant, dtype):
    """fit(accumulate_steps=3) on 61 rows in batches of 7, compiled (or, with a frozen
    parameter, 'auto', which trains eagerly) against compiled=False."""
    nets = []
    for compiled in ("auto" if variant == "frozen" else True, False):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((61, 10)).astype(dtype)
        y = rng.integers(0, 3, 61)
        gradcore.manual_seed(1)
        if variant == "frozen":
            net = nn.Sequential(nn.Dense(10, 16, "relu"), nn.Dense(16, 3), dtype=dtype)
            net[0].weight.requires_grad = False
        elif variant == "dropout":
            net = nn.Sequential(nn.Dense(10, 16, "relu"), nn.Dropout(0.3), nn.Dense(16, 3), dtype=dtype)
        elif variant == "residual":
            net = nn.Sequential(nn.Dense(10, 16, "relu"), nn.Residual([nn.Dense(16, 16, "tanh"), nn.Dense(16, 16)]),
                                nn.Dense(16, 3), dtype=dtype)
        else:
            net = nn.Sequential(nn.Dense(10, 16), nn.PReLU(), nn.LayerNorm(16), nn.Dense(16, 3), dtype=dtype)
        frozen = net[0].weight.data.copy()
        net.compile(optim.Adam(net.parameters(), lr=1e-2), loss="cross_entropy")
        net.fit(x, y, epochs=2, batch_size=7, verbose=0, accumulate_steps=3, compiled=compiled, shuffle=False)
        if variant == "frozen":
            np.testing.assert_array_equal(net[0].weight.data, frozen)
        nets.append(net)
    _assert_same(_values(nets[0]), _values(nets[1]), _tol(dtype))


@pytest.mark.parametrize("dtype, big", [(np.float64, 1e300), (np.float32, 1e30)])
@pytest.mark.parametrize("bn", [False, True])
def test_accumulating_fit_with_a_non_finite_micro_batch_matches_eager(dtype, big, bn):
    """One row overflows: its group is skipped (without BatchNorm) the same way, the
    parameters, running statistics and skip counts equal eager's."""
    runs = []
    for compiled in (True, False):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((60, 10)).astype(dtype)
        y = rng.standard_normal((60, 1)).astype(dtype)
        x[9, 3] = big
        gradcore.manual_seed(1)
        layers = [nn.Dense(10, 16, "relu")] + ([nn.BatchNorm(16)] if bn else []) + [nn.Dense(16, 1)]
        net = nn.Sequential(*layers, dtype=dtype)
        net.compile(optim.Adam(net.parameters(), lr=1e-2, global_clip_norm=1.0), loss="mse")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hist = net.fit(x, y, epochs=2, batch_size=6, verbose=0, accumulate_steps=2, compiled=compiled,
                           shuffle=False)
        runs.append((net, hist))
    (a, ha), (b, hb) = runs
    assert ha.history["skipped"] == hb.history["skipped"]
    assert a.optimizer.skipped_steps == b.optimizer.skipped_steps == (0 if bn else 2)
    _assert_same([p.data for p in a.parameters()], [p.data for p in b.parameters()], _tol(dtype))
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=k)


def test_pickle_round_trip_of_a_network_and_its_optimizer():
    import pickle

    net, twin = _net(), _net()
    opt, otwin = optim.Adam(net.parameters(), lr=1e-2), optim.Adam(twin.parameters(), lr=1e-2)
    _step(net, opt)
    _step(twin, otwin)
    net2, opt2 = pickle.loads(pickle.dumps((net, opt)))
    for _ in range(2):
        assert _step(net2, opt2) == _step(twin, otwin)
    _assert_same(_values(net2), _values(twin), 0)


# ---------------------------------------------------------------------- 4. h-dxform (merged at 01693eb)
def _dx_reference(net, x, y):
    """float64 NumPy gradients of Dense(relu) -> Dense(tanh) -> Dense, MSE, parameter order."""
    W = [np.asarray(layer.weight.data, np.float64) for layer in net]
    b = [np.asarray(layer.bias.data, np.float64) for layer in net]
    h0 = np.asarray(x, np.float64)
    z1 = h0 @ W[0].T + b[0]
    h1 = np.maximum(z1, 0.0)
    h2 = np.tanh(h1 @ W[1].T + b[1])
    out = h2 @ W[2].T + b[2]
    g = 2.0 * (out - y) / out.size
    g2 = (g @ W[2]) * (1.0 - h2 ** 2)
    g1 = (g2 @ W[1]) * (z1 > 0)  # the middle layer's dX: through W's transposed blocks when blocked
    return [g1.T @ h0, g1.sum(0), g2.T @ h1, g2.sum(0), g.T @ h2, g.sum(0)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("h1, h2, batch", [(8200, 130, 3), (1030, 1030, 1), (1030, 1030, 257), (128, 8200, 5),
                                          (2048, 513, 33)])
def test_blocked_dx_of_odd_large_layers_matches_eager_and_numpy(h1, h2, batch, threads):
    """float32 middle layers of >= 1M weights, widths not multiples of the 128-row block,
    batches of 1 / odd: compiled == eager bit for bit, both to NumPy float64 within float32
    rounding (relative to the largest gradient of each tensor)."""
    was = gradcore.get_num_threads()
    gradcore.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, 16)).astype(np.float32)
        y = rng.standard_normal((batch, 1)).astype(np.float32)
        gradcore.manual_seed(1)
        net = nn.Sequential(nn.Dense(16, h1, "relu"), nn.Dense(h1, h2, "tanh"), nn.Dense(h2, 1), dtype=np.float32)
        step = compile_step(net, MSE, optim.SGD(net.parameters(), lr=0.0))
        step.forward_backward(x, y, 1.0, False)
        compiled = [np.array(v, np.float64) for _, v in step._grad_pairs]
        for p in net.parameters():
            p.grad = None
        MSE(net(Tensor(x)), Tensor(y)).backward()
        eager = [np.array(p.grad, np.float64) for p in net.parameters()]
        ref = _dx_reference(net, x, y)
    finally:
        gradcore.set_num_threads(was)
    for i, (c, e, r) in enumerate(zip(compiled, eager, ref)):
        np.testing.assert_array_equal(c, e, err_msg=f"tensor {i}: compiled vs eager")
        np.testing.assert_allclose(c, r, rtol=0, atol=2e-5 * np.abs(r).max(), err_msg=f"tensor {i}: vs NumPy")


# ---------------------------------------------------------------------- 5. h-small (merged at 7fb52ea)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_small_dense_forward_is_the_eager_forward(dtype, bias):
    """The plan's AVX-512 small Dense forward (in, out <= 64) against the eager (BLAS)
    forward, NaN / Inf positions included, on shapes at
    the edges of its rule (in around 32, out * rows around 1200, rows 8 / 16 / 32)."""
    rng = np.random.default_rng(7)
    for i, o, r in [(3, 1, 1), (31, 40, 30), (32, 40, 30), (32, 40, 31), (33, 37, 32), (64, 64, 8), (64, 64, 16),
                    (17, 64, 19), (48, 9, 150), (64, 33, 37), (7, 63, 64)]:
        x = rng.standard_normal((r, i)).astype(dtype)
        x[0, 0] = np.inf
        x[-1, -1] = np.nan if r > 1 else x[-1, -1]
        gradcore.manual_seed(1)
        net = nn.Sequential(nn.Dense(i, o, "tanh", use_bias=bias), dtype=dtype)
        net[0].weight.data[0, 0] = 0.0
        step = compile_step(net, MSE, optim.SGD(net.parameters(), lr=0.0))
        step.forward_backward(x, np.zeros((r, o), dtype), 1.0, False)
        got = step.output().copy()
        with gradcore.no_grad():
            want = net(Tensor(x)).data
        # bit for bit on the OpenBLAS measured here (0.3.30); another BLAS build may round a
        # last bit differently, so: the compiled step's tolerance, NaN / Inf where eager has them
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=f"in {i}, out {o}, rows {r}")
