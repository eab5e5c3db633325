"""Augmented assignment on Tensor (``+=``, ``-=``, ``*=``, ``/=``, ``**=``) with torch's
semantics, and torch's ``dim=`` on concatenate / stack. Oracles: NumPy and PyTorch."""
import operator

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, nn

torch = pytest.importorskip("torch")

IOPS = {"+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
        "**=": operator.ipow}
NP_OPS = {"+=": np.add, "-=": np.subtract, "*=": np.multiply, "/=": np.divide, "**=": np.power}


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _net(rng):
    gradcore.manual_seed(3)
    return nn.Sequential(nn.Dense(4, 5, activation="tanh"), nn.Dense(5, 2))


def _loss(net, x, y):
    return ((net(Tensor(x)) - Tensor(y)) ** 2).mean()


# ---------------------------------------------------------------------- no_grad: in place
def test_sgd_loop_with_isub_updates_the_network(rng):
    """The classic manual SGD step writes into the parameters (views of the flat buffer)."""
    net = _net(rng)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32)
    before = {k: v.copy() for k, v in net.get_parameters().items()}
    flat_before = [b.data.copy() for b in net.flat_buffers()]
    _loss(net, x, y).backward()
    grads = {k: p.grad.copy() for k, p in net.named_parameters()}
    params = list(net.parameters())
    versions = [p._version for p in params]
    lr = 0.1
    with gradcore.no_grad():
        for p in net.parameters():
            p -= lr * p.grad
    assert all(a is b for a, b in zip(params, net.parameters()))  # same Tensor objects, not rebound
    after = net.get_parameters()
    for k in before:
        np.testing.assert_allclose(after[k], before[k] - np.float32(lr) * grads[k], rtol=1e-6, atol=1e-7)
        assert not np.array_equal(after[k], before[k])
        assert after[k].dtype == before[k].dtype
    for buf, old in zip(net.flat_buffers(), flat_before):  # the write landed in the flat buffer
        assert not np.array_equal(buf.data, old)
    assert [p._version for p in params] == [v + 1 for v in versions]
    # the network computes with the new weights (copies, so this does not read the buffer)
    F = gradcore.functional
    c = {k: Tensor(v.copy()) for k, v in after.items()}
    h = Tensor(np.tanh(F.linear(Tensor(x), c["0.weight"], c["0.bias"]).numpy()))
    np.testing.assert_allclose(net(Tensor(x)).numpy(), F.linear(h, c["1.weight"], c["1.bias"]).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sym", list(IOPS))
@pytest.mark.parametrize("kind", ["tensor", "array", "scalar"])
def test_inplace_values_match_torch(sym, kind, rng):
    a = (np.abs(rng.standard_normal((3, 4))) + 0.5).astype(np.float32)
    b = (np.abs(rng.standard_normal((4,))) + 0.5).astype(np.float32)
    rhs_np = {"tensor": b, "array": b, "scalar": 1.5}[kind]
    rhs = {"tensor": Tensor(b), "array": b, "scalar": 1.5}[kind]
    t = Tensor(a.copy())
    alias = t
    data = t.data
    t = IOPS[sym](t, rhs)
    ta = torch.tensor(a.copy())
    ta = IOPS[sym](ta, torch.tensor(rhs_np) if kind != "scalar" else rhs_np)
    assert t is alias and t.data is data  # in place: same object, same memory
    assert t.dtype == np.float32
    np.testing.assert_allclose(t.numpy(), ta.numpy(), rtol=1e-6)
    np.testing.assert_allclose(t.numpy(), NP_OPS[sym](a, rhs_np).astype(np.float32), rtol=1e-6)


def test_inplace_keeps_dtype_and_refuses_growing_shape(rng):
    t = Tensor(np.ones(3, dtype=np.float32))
    t += np.full(3, 0.25, dtype=np.float64)  # torch: float32 += float64 stays float32
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t.numpy(), np.full(3, 1.25, dtype=np.float32))
    d = Tensor(np.ones(3, dtype=np.float64))
    d *= Tensor(np.full(3, 2.0, dtype=np.float32))
    assert d.dtype == np.float64
    np.testing.assert_array_equal(d.numpy(), np.full(3, 2.0))
    tt = torch.ones(3)
    with pytest.raises(RuntimeError):
        tt += torch.ones(2, 3)
    with pytest.raises(RuntimeError, match=r"\(2, 3\)"):
        t += np.ones((2, 3))
    np.testing.assert_array_equal(t.numpy(), np.full(3, 1.25, dtype=np.float32))  # unchanged
    with pytest.raises(TypeError):
        t += np.array(["a", "b", "c"])


# ---------------------------------------------------------------------- grad mode: leaves
@pytest.mark.parametrize("sym", list(IOPS))
def test_leaf_requiring_grad_raises_like_torch(sym):
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    xt = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        IOPS[sym](xt, 2.0)
    with pytest.raises(RuntimeError, match="a leaf Tensor that requires grad is being used in an in-place operation"):
        IOPS[sym](x, 2.0)
    np.testing.assert_array_equal(x.numpy(), np.ones(3, dtype=np.float32))
    assert x._version == 0


def test_net_parameter_isub_outside_no_grad_raises_and_keeps_weights(rng):
    net = _net(rng)
    before = {k: v.copy() for k, v in net.get_parameters().items()}
    p = next(iter(net.parameters()))
    with pytest.raises(RuntimeError, match="leaf Tensor that requires grad"):
        p -= 0.1
    for k, v in net.get_parameters().items():
        np.testing.assert_array_equal(v, before[k])


# ---------------------------------------------------------------------- grad mode: graph
@pytest.mark.parametrize("sym", list(IOPS))
@pytest.mark.parametrize("kind", ["scalar", "array", "tensor_nograd", "tensor_grad"])
def test_nonleaf_augmented_matches_torch_inplace(sym, kind, rng):
    """y = x * 2; y <op>= rhs; loss -> the same values and gradients as torch's in-place op."""
    xa = (np.abs(rng.standard_normal((3, 4))) + 0.5)
    ba = (np.abs(rng.standard_normal((4,))) + 0.5)
    w = rng.standard_normal((3, 4))

    def run(lib):
        T = (lambda a, g=False: Tensor(a, requires_grad=g)) if lib == "gc" else \
            (lambda a, g=False: torch.tensor(a, requires_grad=g))
        x = T(xa, True)
        b = T(ba, kind == "tensor_grad")
        rhs = {"scalar": 1.5, "array": ba if lib == "gc" else torch.tensor(ba),
               "tensor_nograd": b, "tensor_grad": b}[kind]
        y = x * 2
        y = IOPS[sym](y, rhs)
        (y * T(w)).sum().backward()
        return y, x, b

    y, x, b = run("gc")
    yt, xt, bt = run("torch")
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-10)
    if kind == "tensor_grad":
        np.testing.assert_allclose(b.grad, bt.grad.numpy(), rtol=1e-10)


def test_readme_pattern_y_plus_equal_one():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = x * 2
    y += 1
    y.sum().backward()
    xt = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    yt = xt * 2
    yt += 1
    yt.sum().backward()
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy())
    np.testing.assert_allclose(x.grad, xt.grad.numpy())


def test_nongrad_tensor_with_grad_operand_builds_graph_like_torch(rng):
    """acc = zeros; acc += x * w (torch makes acc part of the graph): same values and grads."""
    xa = rng.standard_normal((2, 3))
    x = Tensor(xa, requires_grad=True)
    acc = Tensor(np.zeros((2, 3)))
    for k in range(3):
        acc += x * float(k + 1)
    acc.sum().backward()
    xt = torch.tensor(xa, requires_grad=True)
    acct = torch.zeros(2, 3, dtype=torch.float64)
    for k in range(3):
        acct += xt * float(k + 1)
    acct.sum().backward()
    assert acc.requires_grad
    np.testing.assert_allclose(acc.numpy(), acct.detach().numpy())
    np.testing.assert_allclose(x.grad, xt.grad.numpy())


def test_view_of_graph_tensor_is_refused_not_silently_diverging():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2
    v = y[0]
    with pytest.raises(RuntimeError, match="view"):
        v += 1
    np.testing.assert_array_equal(y.numpy(), np.full((2, 3), 2.0))


def test_inplace_under_no_grad_on_saved_value_is_caught_by_backward():
    """torch: changing a value the graph saved, inside no_grad, makes backward raise."""
    x = Tensor(np.array([0.5, 1.0]), requires_grad=True)
    y = x.exp()
    with gradcore.no_grad():
        y += 1
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        y.sum().backward()


# ---------------------------------------------------------------------- B2: dim= on concatenate / stack
def test_concatenate_and_stack_accept_dim(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
    w1, w2 = rng.standard_normal((2, 5)), rng.standard_normal((2, 3, 2))
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    c = gradcore.concatenate([ta, tb], dim=1)
    s = gradcore.stack([ta, ta], dim=-1)
    (c * Tensor(w1)).sum().backward()
    (s * Tensor(w2)).sum().backward()
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ct, st = torch.cat([at, bt], dim=1), torch.stack([at, at], dim=-1)
    (ct * torch.tensor(w1)).sum().backward()
    (st * torch.tensor(w2)).sum().backward()
    np.testing.assert_allclose(c.numpy(), ct.detach().numpy())
    np.testing.assert_allclose(s.numpy(), st.detach().numpy())
    np.testing.assert_allclose(ta.grad, at.grad.numpy())
    np.testing.assert_allclose(tb.grad, bt.grad.numpy())
    # axis= still works, positionally and by name, and agrees with NumPy
    np.testing.assert_array_equal(gradcore.concatenate([a, a], 1).numpy(), np.concatenate([a, a], 1))
    np.testing.assert_array_equal(gradcore.stack([a, a], axis=1).numpy(), np.stack([a, a], axis=1))
    np.testing.assert_array_equal(gradcore.stack([a, a], dim=2).numpy(), np.stack([a, a], axis=2))


def test_concatenate_stack_refuse_axis_and_dim_and_out_of_range():
    a = np.ones((2, 3))
    with pytest.raises(TypeError, match="concatenate.*axis or dim"):
        gradcore.concatenate([a, a], axis=0, dim=1)
    with pytest.raises(TypeError, match="stack.*axis or dim"):
        gradcore.stack([a, a], axis=0, dim=1)
    for bad in (2, -3):
        with pytest.raises(np.exceptions.AxisError):
            np.concatenate([a, a], axis=bad)
        with pytest.raises(np.exceptions.AxisError, match="concatenate"):
            gradcore.concatenate([a, a], dim=bad)
    for bad in (3, -4):
        with pytest.raises(np.exceptions.AxisError):
            np.stack([a, a], axis=bad)
        with pytest.raises(np.exceptions.AxisError, match="stack"):
            gradcore.stack([a, a], axis=bad)
