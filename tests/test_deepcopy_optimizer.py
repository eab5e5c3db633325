"""copy.deepcopy of a network together with its optimizer (PyTorch's behaviour): the copied
optimizer steps the copied parameters from a copy of the state, in whichever order the two
are copied, inside a checkpoint dict, or through a compiled network's ``net.optimizer``;
the originals are not touched. The oracle is a twin network built from the same seed and
stepped the same number of times without any copy."""
import copy

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, losses, nn, optim

RNG = np.random.default_rng(5)
X = RNG.standard_normal((16, 6))
Y = RNG.standard_normal((16, 1))
MSE = losses.get("mse")


def _net(dtype=np.float64):
    gradcore.manual_seed(3)
    return nn.Sequential(nn.Dense(6, 8, "relu"), nn.BatchNorm(8), nn.Dense(8, 1), dtype=dtype)


def _opt(net, kind):
    if kind == "adam":
        return optim.Adam(net.parameters(), lr=1e-2, amsgrad=True, global_clip_norm=1.0)
    return optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)


def _step(net, opt):
    opt.zero_grad()
    loss = MSE(net(Tensor(X)), Tensor(Y))
    loss.backward()
    opt.step()
    return float(loss.data)


def _copy(net, opt, how):
    if how == "net, opt":
        return copy.deepcopy((net, opt))
    if how == "opt, net":
        o, n = copy.deepcopy((opt, net))
        return n, o
    d = copy.deepcopy({"epoch": 2, "model": net, "optimizer": opt})
    return d["model"], d["optimizer"]


def _values(net):
    return [p.data.copy() for p in net.parameters()] + [np.array(v) for v in net.state_dict().values()]


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("how", ["net, opt", "opt, net", "checkpoint dict"])
def test_copied_pair_trains_like_the_uncopied_twin(kind, how):
    net, ref = _net(), _net()
    opt, oref = _opt(net, kind), _opt(ref, kind)
    for _ in range(2):
        _step(net, opt)
        _step(ref, oref)
    before = _values(net)
    net2, opt2 = _copy(net, opt, how)
    assert opt2 is not opt and all(p is not q for p, q in zip(net2.parameters(), net.parameters()))
    for _ in range(3):
        got = _step(net2, opt2)
        want = _step(ref, oref)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    for p, q in zip(net2.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-12, atol=1e-14)
    for a, b in zip(_values(net), before):  # the original network was not moved by the copy's steps
        np.testing.assert_array_equal(a, b)
    # the original pair still trains as the twin did from the same point
    _step(net, opt)


def test_copied_optimizer_holds_the_copied_buffer():
    net = _net()
    opt = _opt(net, "adam")
    _step(net, opt)
    net2, opt2 = copy.deepcopy((net, opt))
    (flat2,) = net2.flat_buffers()
    assert opt2._slots[0].flat is flat2
    assert opt2 in flat2.optimizers and opt not in flat2.optimizers
    with pytest.raises(RuntimeError, match="holds this network's parameters"):
        net2.astype(np.float32)  # re-homing is refused while the copied optimizer holds the copy


def test_deepcopy_of_a_compiled_network_fits_like_the_original():
    net = _net()
    net.compile(_opt(net, "adam"), loss="mse")
    net.fit(X, Y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    net2 = copy.deepcopy(net)
    assert net2.optimizer is not net.optimizer
    assert net2.optimizer._slots[0].flat is net2.flat_buffers()[0]
    net.fit(X, Y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    net2.fit(X, Y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    for p, q in zip(net2.parameters(), net.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-12, atol=1e-14)


def test_optimizer_copied_alone_steps_copies_of_the_parameters():
    net, ref = _net(), _net()
    opt, oref = _opt(net, "sgd"), _opt(ref, "sgd")
    _step(net, opt)
    _step(ref, oref)
    before = [p.data.copy() for p in net.parameters()]
    opt2 = copy.deepcopy(opt)
    copies = opt2.params
    assert all(c is not p for c, p in zip(copies, net.parameters()))
    for c, r in zip(copies, ref.parameters()):
        c.grad = np.ones_like(c.data)
        r.grad = np.ones_like(r.data)
    opt2.step()
    oref.step()  # the twin: momentum continues from the same buffer
    for c, r in zip(copies, ref.parameters()):
        np.testing.assert_allclose(c.data, r.data, rtol=1e-12, atol=1e-14)
    for p, b in zip(net.parameters(), before):
        np.testing.assert_array_equal(p.data, b)
