"""Issue 6, autograd: version counters, hooks, masks / axes / 0-d / comparisons / rpow.

Oracles: PyTorch (hook values, in-place semantics, dim aliases), NumPy references written
here, and finite differences in float64 (gradcheck).
"""
import numpy as np
import pytest

import gradcore as gc
from gradcore import Tensor, gradcheck, nn, no_grad
from gradcore.tensor import bump_version

RNG = np.random.default_rng(1234)


def randn(*shape):
    return RNG.standard_normal(shape)


def mlp(dtype=np.float64):
    """Linear-ReLU-Linear-ReLU-Linear with separate activation layers (so module outputs
    match torch's Linear outputs)."""
    gc.manual_seed(7)
    return nn.Sequential(nn.Dense(5, 6), nn.ReLU(), nn.Dense(6, 4), nn.ReLU(), nn.Dense(4, 3), dtype=dtype)


def torch_copy(net):
    """The same network in torch, float64; weights copied by reading the layer's shapes."""
    torch = pytest.importorskip("torch")
    mods = []
    for layer in net:
        if isinstance(layer, nn.Dense):
            lin = torch.nn.Linear(layer.in_features, layer.out_features).double()
            w = np.asarray(layer.weight.data, dtype=np.float64)
            if w.shape != (layer.out_features, layer.in_features):  # stored (in, out)
                w = w.T
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w.copy()))
                lin.bias.copy_(torch.from_numpy(np.asarray(layer.bias.data, dtype=np.float64).copy()))
            mods.append(lin)
        else:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


def weight_grad_as_torch(layer):
    g = np.asarray(layer.weight.grad)
    return g if g.shape == (layer.out_features, layer.in_features) else g.T


# ====================================================================== version counter
def forward_loss(net, x):
    out = net(x)
    return (out * out).sum()


def test_set_parameters_after_forward_makes_backward_raise():
    net = mlp()
    x = randn(8, 5)
    loss = forward_loss(net, x)
    w = net[2].weight
    before = w._version
    net.set_parameters({"2.weight": np.zeros(w.shape)})
    assert w._version == before + 1
    with pytest.raises(RuntimeError) as info:
        loss.backward()
    msg = str(info.value)
    assert "modified by an in-place operation" in msg
    assert "'linear'" in msg and str(tuple(w.shape)) in msg and "set_parameters" in msg


def test_load_state_dict_after_forward_makes_backward_raise():
    net = mlp()
    loss = forward_loss(net, randn(8, 5))
    state = net.state_dict()
    state["0.bias"] = state["0.bias"] + 1.0
    net.load_state_dict(state)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        loss.backward()
    # a fresh forward after the change is fine and uses the new values
    net.zero_grad()
    forward_loss(net, randn(8, 5)).backward()
    assert np.all(np.isfinite(net[0].bias.grad))


def test_bump_version_directly_and_fresh_graph_is_fine():
    a = Tensor(randn(3, 4), requires_grad=True)
    b = Tensor(randn(4, 2), requires_grad=True)
    y = (a @ b).sum()
    bump_version([b])
    with pytest.raises(RuntimeError, match=r"input 1 of 'matmul'.*\(4, 2\).*version 1, changed after"):
        y.backward()
    y2 = (a @ b).sum()  # recorded at the new version
    y2.backward()
    np.testing.assert_allclose(a.grad, np.ones((3, 2)) @ b.data.T)


def test_ops_that_do_not_read_a_value_ignore_its_version():
    # add's backward needs no values (as in torch), so changing b in place is harmless
    a = Tensor(randn(3), requires_grad=True)
    b = Tensor(randn(3), requires_grad=True)
    y = (a + b).sum()
    with no_grad():
        b.add_(1.0)
    y.backward()
    np.testing.assert_array_equal(a.grad, np.ones(3))
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_raw_data_writes_are_the_users_own():
    # like torch's .data: no version bump, the backward reads the new values
    a = Tensor(randn(3), requires_grad=True)
    b = Tensor(randn(3), requires_grad=True)
    y = (a * b).sum()
    b.data[...] = 2.0
    y.backward()
    np.testing.assert_array_equal(a.grad, np.full(3, 2.0))


def test_views_share_the_version_counter():
    w = Tensor(randn(4, 3), requires_grad=True)
    x = Tensor(randn(2, 3), requires_grad=True)
    y = (x @ w.T).sum()  # matmul saved the transpose (for x's gradient), a view of w
    with no_grad():
        w.mul_(2.0)
    with pytest.raises(RuntimeError, match="matmul"):
        y.backward()
    d = w.detach()
    z = (x @ w.T).sum()
    with no_grad():
        d[0].zero_()  # a view of a detached view: still w's storage
    assert w._version == d._version == 2
    with pytest.raises(RuntimeError, match="in-place"):
        z.backward()


def test_input_saved_by_an_op_is_checked_too():
    w = Tensor(randn(3, 2), requires_grad=True)
    x = Tensor(randn(4, 3))  # matmul reads x for w's gradient
    y = (x @ w).sum()
    x.sub_(1.0)  # allowed: x does not require grad
    with pytest.raises(RuntimeError, match="input 0 of 'matmul', a leaf tensor of shape \\(4, 3\\)"):
        y.backward()


def test_output_saved_by_an_op_is_checked():
    x = Tensor(randn(3), requires_grad=True)
    y = x.exp()  # exp's backward reads its output
    loss = (y * 1.0).sum()
    with no_grad():
        y.mul_(0.0)
    with pytest.raises(RuntimeError, match="output of 'exp'"):
        loss.backward()


def test_inplace_ops_match_torch():
    torch = pytest.importorskip("torch")
    base = randn(3, 4)
    other = randn(4)
    cases = [
        ("add_", (other,), {"alpha": 2.0}), ("sub_", (other,), {"alpha": 0.5}), ("mul_", (other,), {}),
        ("div_", (other,), {}), ("zero_", (), {}), ("fill_", (1.5,), {}), ("copy_", (other,), {}),
        ("clamp_", (), {"min": -0.3, "max": 0.4}), ("clamp_", (), {"max": 0.1}),
    ]
    for name, args, kwargs in cases:
        t = Tensor(base.copy())
        ref = torch.from_numpy(base.copy())
        out = getattr(t, name)(*(Tensor(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs)
        getattr(ref, name)(*(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs)
        assert out is t and t._version == 1, name
        np.testing.assert_allclose(t.data, ref.numpy(), rtol=1e-12, err_msg=name)


def test_setitem_with_mask_is_an_inplace_write():
    base = randn(3, 2)
    t = Tensor(base.copy())
    t[Tensor(np.array([True, False, True]))] = 0.0
    expect = base.copy()
    expect[[0, 2]] = 0.0
    np.testing.assert_array_equal(t.data, expect)
    assert t._version == 1
    w = Tensor(randn(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="__setitem__: a leaf tensor that requires grad"):
        w[0] = 1.0
    x = Tensor(base[:, 0])  # saved by mul for w's gradient
    y = (w * x).sum()
    x[w.data > 0] = 5.0
    with pytest.raises(RuntimeError, match="input 1 of 'mul'"):
        y.backward()


def test_inplace_on_leaf_requiring_grad_refused_unless_no_grad():
    torch = pytest.importorskip("torch")
    w = Tensor(randn(3), requires_grad=True)
    with pytest.raises(RuntimeError):  # torch refuses too
        torch.ones(3, requires_grad=True).add_(1)
    with pytest.raises(RuntimeError, match="add_: a leaf tensor that requires grad.*no_grad"):
        w.add_(1.0)
    assert w._version == 0
    before = w.data.copy()
    with no_grad():
        w.add_(1.0)
    np.testing.assert_array_equal(w.data, before + 1.0)
    assert w._version == 1


def test_inplace_refusals_are_clear():
    w = Tensor(randn(3), requires_grad=True)
    y = w * 2.0
    with pytest.raises(RuntimeError, match="mul_: gradcore does not record in-place"):
        y.mul_(2.0)
    buf = Tensor(np.zeros(3))
    with pytest.raises(RuntimeError, match="operand requires grad"):
        buf.add_(w)
    with pytest.raises(RuntimeError, match=r"operand of shape \(2, 3\) does not broadcast.*\(3,\)"):
        buf.add_(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="fill_"):
        buf.fill_(np.ones(2))
    assert buf._version == 0


def test_version_check_in_float64_graph_still_gradchecks():
    # the new bookkeeping must not change any gradient
    gradcheck(lambda a, b: ((a @ b).exp() / (1.0 + b.sum())).max(axis=1), [Tensor(randn(3, 4) * 0.3, requires_grad=True),
                                                                         Tensor(randn(4, 2) * 0.3, requires_grad=True)])


# ====================================================================== tensor hooks
def test_register_hook_values_and_replacement_match_torch():
    torch = pytest.importorskip("torch")
    a0, b0 = randn(3, 4), randn(4, 2)

    def run(make):
        seen = {}

        def on_h(g):
            seen["h"] = np.array(g.numpy() if hasattr(g, "numpy") else g)
            return g * 3  # replacement flows on to a and b

        def on_b(g):
            seen["b"] = np.array(g.numpy() if hasattr(g, "numpy") else g)  # None: keep the gradient

        a, b = make(a0), make(b0)
        h = a @ b
        h.register_hook(on_h)
        b.register_hook(on_b)
        (h * h).sum().backward()
        return a, b, seen

    a, b, seen = run(lambda v: Tensor(v, requires_grad=True))
    ta, tb, tseen = run(lambda v: torch.tensor(v, requires_grad=True))
    for k in ("h", "b"):
        np.testing.assert_allclose(seen[k], tseen[k], rtol=1e-12)
    np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(b.grad, tb.grad.numpy(), rtol=1e-12)


def test_hook_on_leaf_replaces_what_accumulates_and_handle_removes():
    w = Tensor(np.ones(3), requires_grad=True)
    handle = w.register_hook(lambda g: g * 3)
    (w * 2.0).sum().backward()
    np.testing.assert_array_equal(w.grad, np.full(3, 6.0))
    handle.remove()
    (w * 2.0).sum().backward()
    np.testing.assert_array_equal(w.grad, np.full(3, 8.0))
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).register_hook(lambda g: None)
    with pytest.raises(RuntimeError, match=r"shape \(2,\) for a tensor of shape \(3,\)"):
        w.register_hook(lambda g: np.ones(2))
        (w * 2.0).sum().backward()


def test_retain_grad_matches_torch_and_accumulates():
    torch = pytest.importorskip("torch")
    x0 = randn(4)

    def run(make):
        x = make(x0)
        y = x * 2.0
        y.retain_grad()
        y.register_hook(lambda g: g * 10)  # retained grads are taken after hooks (torch)
        for _ in range(2):
            (y * y).sum().backward(retain_graph=True)
        return x, y

    x, y = run(lambda v: Tensor(v, requires_grad=True))
    tx, ty = run(lambda v: torch.tensor(v, requires_grad=True))
    assert y.retains_grad and ty.retains_grad
    np.testing.assert_allclose(y.grad, ty.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)
    leaf = Tensor(x0, requires_grad=True)
    leaf.retain_grad()  # no-op on a leaf
    assert not leaf.retains_grad


# ====================================================================== module hooks
def test_forward_pre_hook_and_forward_hook_replace_and_remove():
    net = mlp()
    x = randn(2, 5)
    calls = []
    pre = net[0].register_forward_pre_hook(lambda m, args: (args[0] * 0.0,))
    post = net[4].register_forward_hook(lambda m, args, out: calls.append((m, args[0].shape)) or out + 1.0)
    out = net(x)
    bias = net[4].bias.data
    expect = np.maximum(np.maximum(net[0].bias.data, 0) @ _w_io(net[2]) + net[2].bias.data, 0) @ _w_io(net[4]) + bias
    np.testing.assert_allclose(out.data, np.broadcast_to(expect + 1.0, (2, 3)), rtol=1e-12)
    assert calls == [(net[4], (2, 4))]
    pre.remove()
    post.remove()
    plain = net(x).data
    h = x
    for layer in (net[0], net[2], net[4]):
        h = h @ _w_io(layer) + layer.bias.data
        h = np.maximum(h, 0) if layer is not net[4] else h
    np.testing.assert_allclose(plain, h, rtol=1e-12)


def _w_io(layer):
    """The Dense weight as (in, out) whatever its storage."""
    w = np.asarray(layer.weight.data)
    return w if w.shape == (layer.in_features, layer.out_features) else w.T


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_full_backward_hook_values_match_torch():
    torch = pytest.importorskip("torch")
    net = mlp()
    tnet = torch_copy(net)
    x0 = randn(7, 5)
    got, want = {}, {}
    for i in (0, 1, 2, 4):
        net[i].register_full_backward_hook(
            lambda m, gi, go, i=i: got.setdefault(i, []).append((gi, go)))
        tnet[i].register_full_backward_hook(
            lambda m, gi, go, i=i: want.setdefault(i, []).append((gi, go)))
    for requires in (False, True):  # the first layer's input without / with grad
        got.clear()
        want.clear()
        x = Tensor(x0, requires_grad=requires)
        tx = torch.tensor(x0, requires_grad=requires)
        out = net(x)
        (out * out).sum().backward()
        tout = tnet(tx)
        (tout * tout).sum().backward()
        for i in (0, 1, 2, 4):
            assert len(got[i]) == 1, i
            (gi, go), (tgi, tgo) = got[i][0], want[i][0]
            assert len(gi) == len(tgi) and len(go) == len(tgo)
            for a, b in zip(gi + go, tgi + tgo):
                if b is None:
                    assert a is None, i
                else:
                    np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
        if requires:
            np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(weight_grad_as_torch(net[0]), tnet[0].weight.grad.numpy(), rtol=1e-10)
        net.zero_grad()
        tnet.zero_grad()


def test_full_backward_hook_replaces_grad_input_like_torch():
    torch = pytest.importorskip("torch")
    net = mlp()
    tnet = torch_copy(net)
    x0 = randn(4, 5)
    h = net[2].register_full_backward_hook(lambda m, gi, go: (gi[0] * 0.5,))
    tnet[2].register_full_backward_hook(lambda m, gi, go: (gi[0] * 0.5,))
    x = Tensor(x0, requires_grad=True)
    tx = torch.tensor(x0, requires_grad=True)
    net(x).sum().backward()
    tnet(tx).sum().backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(weight_grad_as_torch(net[0]), tnet[0].weight.grad.numpy(), rtol=1e-10)
    # after remove() the gradient is the plain one again
    h.remove()
    x.grad = None
    net(x).sum().backward()
    tx2 = torch.tensor(x0, requires_grad=True)
    torch_copy(net)(tx2).sum().backward()
    np.testing.assert_allclose(x.grad, tx2.grad.numpy(), rtol=1e-10)


def test_full_backward_pre_hook_sees_and_replaces_output_gradient_like_torch():
    torch = pytest.importorskip("torch")
    net = mlp()
    tnet = torch_copy(net)
    x0 = randn(4, 5)

    def run(model, x, to_np):
        seen = {}

        def pre(m, grad_output):
            seen["pre"] = to_np(grad_output[0])
            return (grad_output[0] * 2.0,)

        def full(m, grad_input, grad_output):
            seen["full_out"] = to_np(grad_output[0])
            seen["full_in"] = to_np(grad_input[0])

        model[2].register_full_backward_pre_hook(pre)
        model[2].register_full_backward_hook(full)
        out = model(x)
        (out * out).sum().backward()
        return seen

    x = Tensor(x0, requires_grad=True)
    tx = torch.tensor(x0, requires_grad=True)
    seen = run(net, x, np.asarray)
    tseen = run(tnet, tx, lambda t: t.detach().numpy())
    for k in ("pre", "full_out", "full_in"):
        np.testing.assert_allclose(seen[k], tseen[k], rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(weight_grad_as_torch(net[2]), tnet[2].weight.grad.numpy(), rtol=1e-10)


def test_backward_hook_on_whole_network_and_gradcheck_through_gates():
    net = mlp()
    seen = []
    net.register_full_backward_hook(lambda m, gi, go: seen.append((gi[0].shape, go[0].shape)))
    x = Tensor(randn(3, 5), requires_grad=True)
    gradcheck(lambda v: net(v), [x])
    assert seen and seen[0] == ((3, 5), (3, 3))


def test_module_hook_errors():
    net = mlp()
    with pytest.raises(TypeError, match="callable"):
        net.register_forward_hook(42)
    net[2].register_full_backward_hook(lambda m, gi, go: (gi[0], gi[0]))
    with pytest.raises(RuntimeError, match="returned 2 gradients, expected 1"):
        net(Tensor(randn(2, 5), requires_grad=True)).sum().backward()


# ====================================================================== indexing
@pytest.mark.parametrize("make_mask", [
    lambda m: Tensor(m), lambda m: m, lambda m: list(m), lambda m: Tensor(list(m)),
], ids=["bool-tensor", "numpy-bool", "list-of-bools", "tensor-from-list"])
def test_boolean_masks_select_and_scatter(make_mask):
    base = randn(3, 2)
    mask = np.array([True, False, True])
    t = Tensor(base, requires_grad=True)
    out = t[make_mask(mask)]
    np.testing.assert_array_equal(out.data, base[mask])
    w = randn(2, 2)
    (out * Tensor(w)).sum().backward()
    expect = np.zeros((3, 2))
    expect[mask] = w
    np.testing.assert_array_equal(t.grad, expect)
    gradcheck(lambda v: v[make_mask(mask)], [Tensor(base, requires_grad=True)])
    # a boolean tensor passed to gradcheck stays a mask
    shapes = []
    gradcheck(lambda v, m: shapes.append(v[m].shape) or v[m] * 2.0, [Tensor(base, requires_grad=True), Tensor(mask)])
    assert set(shapes) == {(2, 2)}


def test_mask_inside_tuple_and_integer_tensor_index():
    base = randn(2, 3)
    cols = Tensor(np.array([False, True, True]))
    gradcheck(lambda v: v[:, cols], [Tensor(base, requires_grad=True)])
    t = Tensor(base, requires_grad=True)
    t[Tensor([1.0, 1.0, 0.0])].sum().backward()  # a float tensor of positions: repeats add up
    np.testing.assert_array_equal(t.grad, np.array([[1.0] * 3, [2.0] * 3]))
    with pytest.raises(IndexError, match="whole numbers or booleans"):
        t[Tensor([0.5])]


# ====================================================================== axes, 0-d
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_out_of_range_axis_raises_like_numpy(op):
    t = Tensor(randn(2, 3))
    with pytest.raises(np.exceptions.AxisError):
        getattr(np.ones((2, 3)), op)(axis=2)
    for bad in (2, -3, (0, 5)):
        with pytest.raises(np.exceptions.AxisError, match=op):
            getattr(t, op)(axis=bad)
    with pytest.raises(ValueError, match="repeated axis"):
        getattr(t, op)(axis=(1, -1))
    np.testing.assert_allclose(getattr(t, op)(axis=-1).data, getattr(t.data, op)(axis=-1))


def test_zero_dim_stays_zero_dim():
    a = Tensor(np.array(1.5), requires_grad=True)
    b = Tensor(np.array(-0.5), requires_grad=True)
    outs = [a + b, a - b, a * b, a / b, -a, a ** 2, 2 ** a, a.exp(), a.abs(), a.sum(), a.mean(), a.max(),
            a.reshape(()), (a * b).exp().sqrt()]
    for out in outs:
        assert isinstance(out.data, np.ndarray) and out.data.shape == (), out
    (a * b + a.exp()).backward()
    assert isinstance(a.grad, np.ndarray) and a.grad.shape == ()
    np.testing.assert_allclose(a.grad, -0.5 + np.exp(1.5))
    gradcheck(lambda u, v: (u * v).exp() / v + u ** v, [a, Tensor(np.array(0.7), requires_grad=True)])


# ====================================================================== comparisons, rpow
def test_comparisons_return_numpy_bool_arrays_and_tensors_stay_hashable():
    a0, b0 = randn(3, 4), randn(3, 4)
    a, b = Tensor(a0, requires_grad=True), Tensor(b0)
    pairs = [(a > b, a0 > b0), (a < b, a0 < b0), (a >= b, a0 >= b0), (a <= b, a0 <= b0),
             (a == a, a0 == a0), (a != b, a0 != b0), (a > 0.1, a0 > 0.1), (a <= b0, a0 <= b0),
             (b0 > a, b0 > a0), (0.1 == a, 0.1 == a0)]
    for got, want in pairs:
        assert isinstance(got, np.ndarray) and got.dtype == np.bool_
        np.testing.assert_array_equal(got, want)
    assert (a == None) is False and (a != None) is True  # noqa: E711
    d = {a: 1, b: 2}
    assert d[a] == 1 and b in {a, b}
    m = Tensor(a > 0)  # a comparison result is a mask
    np.testing.assert_array_equal(a[m].data, a0[a0 > 0])


def test_rpow_and_tensor_exponent_gradients():
    torch = pytest.importorskip("torch")
    x0 = randn(3, 2)
    x = Tensor(x0, requires_grad=True)
    (2 ** x).sum().backward()
    tx = torch.tensor(x0, requires_grad=True)
    (2 ** tx).sum().backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose((np.array([1.5, 3.0]) ** Tensor(np.array([2.0, 0.5]))).data, [2.25, np.sqrt(3.0)])
    gradcheck(lambda v: 3.0 ** v, [Tensor(x0, requires_grad=True)])
    gradcheck(lambda u, v: u ** v, [Tensor(np.abs(x0) + 0.5, requires_grad=True),
                                    Tensor(randn(2), requires_grad=True)])
    # 0 ** b: torch takes d/db as 0 for b >= 0
    base = Tensor(np.array([0.0, 2.0]), requires_grad=True)
    e = Tensor(np.array([1.0, 1.0]), requires_grad=True)
    (base ** e).sum().backward()
    tb = torch.tensor([0.0, 2.0], dtype=torch.float64, requires_grad=True)
    te = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    (tb ** te).sum().backward()
    np.testing.assert_allclose(e.grad, te.grad.numpy())
    np.testing.assert_allclose(base.grad, tb.grad.numpy())


def test_dim_and_keepdim_aliases_match_torch():
    torch = pytest.importorskip("torch")
    x0 = randn(3, 4, 2)
    x, tx = Tensor(x0), torch.from_numpy(x0)
    np.testing.assert_allclose(x.sum(dim=1, keepdim=True).data, tx.sum(dim=1, keepdim=True).numpy())
    np.testing.assert_allclose(x.mean(dim=(0, 2)).data, tx.mean(dim=(0, 2)).numpy())
    np.testing.assert_allclose(x.amax(dim=-1).data, tx.amax(dim=-1).numpy())
    values, indices = x.max(dim=1, keepdim=True)
    tv, ti = tx.max(dim=1, keepdim=True)
    np.testing.assert_allclose(values.data, tv.numpy())
    np.testing.assert_array_equal(indices, ti.numpy())
    np.testing.assert_allclose(x.max(axis=1).data, x0.max(axis=1))  # NumPy's name: values
    with pytest.raises(TypeError, match="either axis or dim"):
        x.sum(axis=0, dim=1)
    gradcheck(lambda v: v.max(dim=2).values * v.mean(dim=2, keepdim=False), [Tensor(x0, requires_grad=True)])
