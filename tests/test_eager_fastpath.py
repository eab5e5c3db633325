"""The eager per-step fast paths give the same numbers and the same errors as the plain tape.

* Sequential runs consecutive plain Dense layers as one node (``F._dense_chain``): its
  outputs and gradients must be the same bits as one ``F.linear`` per layer (the oracle
  here: the same layers called one by one, and a NumPy reference of the math), and an
  in-place change must be reported as the per-layer nodes would report it.
* Large work arrays are reused between steps only when nothing references them.
"""
import numpy as np
import pytest

import gradcore
from gradcore import Tensor, functional as F, nn, optim


def _net(dtype=np.float32, acts=("relu", "tanh", None), widths=(7, 9, 8, 3), seed=0):
    rng = np.random.default_rng(seed)
    layers = [nn.Dense(widths[i], widths[i + 1], activation=acts[i], dtype=dtype) for i in range(len(acts))]
    net = nn.Sequential(*layers)
    with gradcore.no_grad():
        for p in net.parameters():
            p.data[...] = rng.standard_normal(p.shape).astype(dtype)
    return net


def _layer_by_layer(net, x):
    """The per-layer tape: each layer called on its own (one linear node per layer)."""
    h = Tensor(x)
    for layer in net:
        h = layer(h)
    return h


def _grads(net):
    return [None if p.grad is None else p.grad.copy() for p in net.parameters()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chain_is_bit_identical_to_layer_by_layer(dtype):
    net = _net(dtype)
    x = np.random.default_rng(1).standard_normal((5, 7)).astype(dtype)
    out = net(x)
    assert out._node is not None and out._node.groups is not None  # the chain ran
    (out * out).sum().backward()
    chained = _grads(net)
    net.zero_grad()
    ref = _layer_by_layer(net, x)
    assert ref._node.groups is None
    (ref * ref).sum().backward()
    np.testing.assert_array_equal(out.data, ref.data)
    for a, b in zip(chained, _grads(net)):
        np.testing.assert_array_equal(a, b)


def test_chain_matches_numpy_reference():
    net = _net(np.float64)
    x = np.random.default_rng(2).standard_normal((4, 7))
    out = net(x)
    out.sum().backward()
    (w0, b0), (w1, b1), (w2, b2) = [(l.weight.data, l.bias.data) for l in net]
    z0 = x @ w0.T + b0
    h0 = np.maximum(z0, 0)
    z1 = h0 @ w1.T + b1
    h1 = np.tanh(z1)
    y = h1 @ w2.T + b2
    np.testing.assert_allclose(out.data, y, rtol=1e-12, atol=1e-12)
    g1 = np.ones_like(y) @ w2 * (1 - h1 ** 2)
    g0 = g1 @ w1 * (z0 > 0)
    np.testing.assert_allclose(net[0].weight.grad, g0.T @ x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(net[1].bias.grad, g1.sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(net[2].weight.grad, np.ones_like(y).T @ h1, rtol=1e-10, atol=1e-12)


def test_chain_input_gradient_and_frozen_layers():
    net = _net(np.float64)
    net[0].requires_grad_(False)
    x = np.random.default_rng(3).standard_normal((6, 7))
    xt = Tensor(x.copy(), requires_grad=True)
    out = net(xt)
    (out ** 2).sum().backward()
    got = (xt.grad.copy(), _grads(net))
    assert net[0].weight.grad is None and net[0].bias.grad is None
    net.zero_grad()
    xr = Tensor(x.copy(), requires_grad=True)
    ref = _layer_by_layer(net, xr.data)  # not the same input tensor: rebuild with grad on it
    h = xr
    for layer in net:
        h = layer(h)
    (h ** 2).sum().backward()
    np.testing.assert_array_equal(got[0], xr.grad)
    for a, b in zip(got[1], _grads(net)):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ref.data, out.data)


def test_chain_without_grad_mode_records_nothing():
    net = _net()
    x = np.ones((3, 7), np.float32)
    with gradcore.no_grad():
        out = net(x)
    assert out._node is None and not out.requires_grad
    np.testing.assert_array_equal(out.data, _layer_by_layer(net, x).data)


def test_chain_reports_an_in_place_change_like_the_per_layer_nodes():
    x = np.ones((3, 7), np.float32)
    messages = []
    for chained in (True, False):
        net = _net()
        out = net(x) if chained else _layer_by_layer(net, x)
        assert (out._node.groups is not None) == chained
        opt = optim.SGD(net.parameters(), lr=0.1)
        out.sum().backward(retain_graph=True)
        opt.step()  # changes every parameter in place
        with pytest.raises(RuntimeError, match="modified by an in-place operation") as err:
            out.sum().backward()
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "input 1 of 'linear'" in messages[0] and "(3, 8)" in messages[0]  # the last layer's weight first


def test_hooks_taps_and_shared_layers_take_the_per_layer_path():
    net = _net()
    x = np.ones((2, 7), np.float32)
    seen = []
    handle = net[1].register_forward_hook(lambda m, args, out: seen.append(out.shape))
    out = net(x)
    assert seen == [(2, 8)]  # the hook saw its layer's own call
    assert out._node.groups is None or len(out._node.inputs) < 7
    handle.remove()
    d = nn.Dense(4, 4, activation="relu")
    shared = nn.Sequential(d, d)
    y = shared(np.ones((2, 4), np.float32))
    assert y._node.groups is None  # a tensor used twice: per layer, so its gradient sums in the same order


def test_bad_layer_after_a_good_run_raises_the_per_layer_message():
    net = _net()
    with gradcore.no_grad():
        net[2].weight = Tensor(np.ones((3, 5), np.float32), requires_grad=True)  # does not fit 8 features
    with pytest.raises(ValueError, match="linear: input of shape"):
        net(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match=r"Dense layer 0 \(Dense\(7 -> 9"):
        net(np.ones((2, 6), np.float32))


def test_work_arrays_are_not_reused_while_referenced():
    shape = (64, 256)  # 64 KiB of float32: pooled
    dtype = np.dtype(np.float32)
    a = F._work_array(shape, dtype)
    a[...] = 1.0
    b = F._work_array(shape, dtype)
    assert b is not a  # a is still held here
    view = a[:2]
    del a
    c = F._work_array(shape, dtype)
    assert c is not view.base  # a view keeps its base in use
    del view, c
    d = F._work_array(shape, dtype)
    e = F._work_array(shape, dtype)
    assert d is not e


def test_pooled_outputs_survive_the_next_step_while_held():
    net = nn.Sequential(nn.Dense(8, 300, activation="relu"), nn.Dense(300, 300), nn.Dense(300, 2))
    x = np.random.default_rng(4).standard_normal((64, 8)).astype(np.float32)
    kept = net(x)
    before = kept.data.copy()
    for _ in range(3):
        net(x * 2).sum().backward()
    np.testing.assert_array_equal(kept.data, before)


def _force_per_layer(net):
    """A forward hook on every layer makes Sequential call them one by one (no chain)."""
    for layer in net:
        layer.register_forward_hook(lambda m, a, o: None)
    return net


@pytest.mark.parametrize("case", ["siamese", "l2", "twice"])
def test_gradients_written_into_the_flat_buffer_sum_like_the_tape(case):
    xa = np.random.default_rng(5).standard_normal((4, 7)).astype(np.float32)
    xb = np.random.default_rng(6).standard_normal((4, 7)).astype(np.float32)
    results = []
    for per_layer in (False, True):
        net = _net(np.float32)  # the same parameters both times (seeded)
        if per_layer:
            _force_per_layer(net)
        if case == "l2":
            net[0].l2 = 0.3
            net[2].l2 = 0.1
        out = net(xa)
        assert (out._node.groups is None) == per_layer
        if case == "siamese":  # the same chain three times in one graph: only one may write in place
            loss = (out * net(xb)).sum() + net(xa).sum()
        else:
            loss = (out * out).sum()
            reg = net.regularization_loss()
            loss = loss if reg is None else loss + reg
        loss.backward()
        if case == "twice":  # a second batch adds into the gradients already there
            (net(xb) ** 2).sum().backward()
        results.append(_grads(net))
        assert net[0].weight.grad.base is not None  # the flat buffer's view, as always
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
