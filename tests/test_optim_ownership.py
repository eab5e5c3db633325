"""Issue 6, parameters and optimizers: one owner per flat buffer, parameters without a
gradient left alone, zero_grad(set_to_none), step(closure), the step attributes and
bump_version. Oracles: torch.optim (float64), NumPy formulas written here."""
import math

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, nn
from gradcore.optim import SGD, Adam, AdamW, RMSprop


def make_net(dtype=np.float64):
    gradcore.manual_seed(0)
    return nn.Sequential(nn.Dense(4, 5, activation="tanh", dtype=dtype), nn.Dense(5, 3, dtype=dtype), dtype=dtype)


def backward(net, rng):
    x = rng.standard_normal((6, net[0].in_features))
    loss = (net(x) ** 2).mean()
    loss.backward()
    return loss


def give_grads(params, rng):
    grads = [rng.standard_normal(p.shape) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.astype(p.dtype)
    return grads


def twins(torch, params):
    return [torch.tensor(p.data.copy(), requires_grad=True) for p in params]


def torch_setup(seed, make):
    """(torch, rng, net, its parameters, their torch twins); skipped without torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    net = make()
    params = net.parameters()
    return torch, rng, net, params, twins(torch, params)


def assert_close_to_torch(params, tparams, rtol=1e-12, atol=1e-14):
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------- one owner
def test_optimizer_over_a_subset_then_over_the_whole_network():
    # today: the second optimizer raises "no longer views its flat buffer"
    rng = np.random.default_rng(0)
    net = make_net()
    flat = net.flat_buffers()[0]
    head = Adam(net[1].parameters(), lr=0.01)
    whole = SGD(net.parameters(), lr=0.1)
    assert head.flat_buffers == [flat] and whole.flat_buffers == [flat]
    assert all(np.shares_memory(p.data, flat.data) for p in net.parameters())
    before = {k: v.copy() for k, v in net.state_dict().items()}
    net.zero_grad()
    backward(net, rng)
    grads = {k: p.grad.copy() for k, p in net.named_parameters()}
    head.step()
    for k, p in net.named_parameters():
        if k.startswith("1."):  # Adam's first step: p -= lr * g / (|g| + eps)
            want = before[k] - 0.01 * grads[k] / (np.abs(grads[k]) + 1e-8)
            np.testing.assert_allclose(p.data, want, rtol=1e-12, atol=1e-15)
        else:
            assert np.array_equal(p.data, before[k])
    mid = {k: p.data.copy() for k, p in net.named_parameters()}
    whole.step()
    for k, p in net.named_parameters():
        np.testing.assert_allclose(p.data, mid[k] - 0.1 * grads[k], rtol=1e-12, atol=1e-15)


def test_get_parameters_stay_live_through_an_optimizer_on_a_standalone_layer():
    # today: building the optimizer re-homes the Dense's parameters and the views go stale
    rng = np.random.default_rng(1)
    layer = nn.Dense(3, 2, dtype=np.float64)
    views = layer.get_parameters()
    opt = Adam(layer.parameters(), lr=0.1)
    layer(rng.standard_normal((5, 3))).sum().backward()
    grads = {k: p.grad.copy() for k, p in layer.named_parameters()}
    before = {k: v.copy() for k, v in views.items()}
    opt.step()
    for k, v in views.items():
        np.testing.assert_allclose(v, before[k] - 0.1 * grads[k] / (np.abs(grads[k]) + 1e-8), rtol=1e-12)
        assert v is layer.get_parameters()[k] or np.shares_memory(v, getattr(layer, k).data)


def test_loose_tensors_are_never_moved():
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    a, b = (Tensor(x, requires_grad=True) for x in arrays)
    keep, start = [a.data, b.data], [x.copy() for x in arrays]
    opt = SGD([a, b], lr=0.5, momentum=0.9)
    grads = give_grads([a, b], rng)
    opt.step()
    assert a.data is keep[0] and b.data is keep[1]  # the very same arrays, updated in place
    for x, x0, g in zip(keep, start, grads):
        np.testing.assert_allclose(x, x0 - 0.5 * g, rtol=1e-14)
    assert np.shares_memory(arrays[0], a.data)  # the caller's own array is the parameter


@pytest.mark.parametrize("change", ["astype", "append"])
def test_changing_a_network_an_optimizer_holds_is_refused(change):
    net = make_net(np.float32)
    opt = Adam(net.parameters())
    before = {k: v.copy() for k, v in net.state_dict().items()}
    flat = net.flat_buffers()[0]
    with pytest.raises(RuntimeError, match=rf"Sequential\.{change}: an optimizer \(Adam\) holds this network's "
                                           r"parameters.*Create the optimizer after changing the network"):
        if change == "astype":
            net.astype(np.float64)
        else:
            net.append(nn.Dense(3, 2))
    assert len(net) == 2 and net.dtype == np.float32  # nothing changed
    assert net.flat_buffers() == [flat] and all(np.shares_memory(p.data, flat.data) for p in net.parameters())
    for k, v in net.state_dict().items():
        assert np.array_equal(v, before[k]) and v.dtype == before[k].dtype
    with pytest.raises(RuntimeError, match=r"Sequential: an optimizer \(Adam\) holds"):
        nn.Sequential(net, nn.Dense(3, 1))  # nesting would re-home the parameters too
    del opt  # without an optimizer the change is allowed
    net.astype(np.float64) if change == "astype" else net.append(nn.Dense(3, 2))


def test_astype_of_a_layer_inside_a_network_is_refused():
    net = make_net(np.float32)
    with pytest.raises(RuntimeError, match="Call astype on the outermost network"):
        net[0].astype(np.float64)
    assert net[0].weight.dtype == np.float32 and np.shares_memory(net[0].weight.data, net.flat_buffers()[0].data)


# ---------------------------------------------------------------------- no gradient, no change
def test_parameter_without_gradient_is_not_touched_like_torch():
    # today: Adam([a, b]) with b.grad = None moves b (0.9 -> 0.833)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    params = [Tensor(rng.standard_normal(s), requires_grad=True) for s in [(3, 2), (4,), (2, 2)]]
    tparams = twins(torch, params)
    kw = dict(lr=0.05, weight_decay=0.1, amsgrad=True)
    opt, topt = Adam(params, **kw), torch.optim.Adam(tparams, **kw, foreach=False)
    has_grad = [[1, 0, 1], [1, 0, 0], [1, 1, 1], [0, 1, 1], [1, 1, 0]]
    for step, mask in enumerate(has_grad):
        opt.zero_grad()
        topt.zero_grad()
        for p, tp, m in zip(params, tparams, mask):
            if m:
                g = rng.standard_normal(p.shape)
                p.grad, tp.grad = g.copy(), torch.tensor(g)
        untouched = {i: (params[i].data.copy(), params[i]._version) for i, m in enumerate(mask) if not m}
        opt.step()
        topt.step()
        for i, (data, version) in untouched.items():
            assert np.array_equal(params[i].data, data) and params[i]._version == version
        assert_close_to_torch(params, tparams)


def test_frozen_layer_is_not_decayed_and_keeps_its_momentum_like_torch():
    # today: freezing a layer with requires_grad_(False) still decays it
    torch, rng, net, params, tparams = torch_setup(4, make_net)
    opt = SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.9, weight_decay=0.05, foreach=False)
    frozen = {0, 1}  # net[0].weight and net[0].bias
    for step in range(6):
        freeze = 2 <= step < 4
        for i in frozen:
            params[i].requires_grad_(not freeze)
        opt.zero_grad()
        topt.zero_grad()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            g = rng.standard_normal(p.shape)
            tp.grad = None if (freeze and i in frozen) else torch.tensor(g)
            if not (freeze and i in frozen):
                p.grad = g.copy()
        keep = [params[i].data.copy() for i in sorted(frozen)]
        opt.step()
        topt.step()
        if freeze:
            assert all(np.array_equal(params[i].data, k) for i, k in zip(sorted(frozen), keep))
        assert_close_to_torch(params, tparams)


def test_stale_gradient_on_a_frozen_parameter_is_ignored():
    rng = np.random.default_rng(5)
    a, b = (Tensor(rng.standard_normal(3), requires_grad=True) for _ in range(2))
    opt = AdamW([a, b], lr=0.1)
    give_grads([a, b], rng)
    b.requires_grad_(False)  # frozen after its gradient was computed
    keep = b.data.copy()
    opt.step()
    assert np.array_equal(b.data, keep) and b._version == 0 and a._version == 1


@pytest.mark.parametrize("owner", ["optimizer", "module"])
def test_zero_grad_set_to_none_and_next_backward_refills_the_buffer(owner):
    rng = np.random.default_rng(6)
    net = make_net()
    opt = SGD(net.parameters(), lr=0.1)
    backward(net, rng)
    zero = opt.zero_grad if owner == "optimizer" else net.zero_grad
    zero()  # torch's default: set_to_none=True
    assert all(p.grad is None for p in net.parameters())
    backward(net, rng)
    flat = net.flat_buffers()[0]
    for i, p in enumerate(net.parameters()):
        assert np.shares_memory(p.grad, flat.grad) and np.array_equal(p.grad.reshape(-1), flat.grad[
            flat.offsets[i]:flat.offsets[i + 1]])
    grads = [p.grad for p in net.parameters()]
    zero(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(net.parameters(), grads))


# ---------------------------------------------------------------------- step attributes and closure
def test_step_with_closure_returns_its_loss_like_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    W = Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    tW = torch.tensor(W.data.copy(), requires_grad=True)
    x = rng.standard_normal((5, 3))
    opt, topt = RMSprop([W], lr=0.01, momentum=0.5), torch.optim.RMSprop([tW], lr=0.01, momentum=0.5)

    def closure():
        opt.zero_grad()
        loss = ((Tensor(x) @ W) ** 2).mean()
        loss.backward()
        return loss

    def tclosure():
        topt.zero_grad()
        loss = ((torch.tensor(x) @ tW) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(3):
        with gradcore.no_grad():  # the closure runs with gradients enabled, as torch's does
            loss = opt.step(closure)
        with torch.no_grad():
            tloss = topt.step(tclosure)
        assert isinstance(loss, Tensor) and loss.item() == pytest.approx(tloss.item(), rel=1e-12)
    assert_close_to_torch([W], [tW])
    assert opt.step() is None


def test_step_attributes_after_clip_skip_and_success():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    params = [Tensor(rng.standard_normal(s), requires_grad=True) for s in [(4, 3), (3,)]]
    opt = SGD(params, lr=0.1, global_clip_norm=1.0)
    grads = give_grads(params, rng)
    tgrads = [torch.tensor(g) for g in grads]
    tp = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(tp, tgrads):
        t.grad = g.clone()
    total = float(torch.nn.utils.clip_grad_norm_(tp, 1.0))
    opt.step()
    assert opt.last_grad_norm == pytest.approx(total, rel=1e-12)
    assert opt.last_clip_coef == pytest.approx(1.0 / (total + 1e-6), rel=1e-12) and opt.last_clip_coef < 1
    assert opt.last_skipped is False and opt.last_nonfinite_param is None and opt.skipped_steps == 0
    give_grads(params, rng)
    params[1].grad[2] = np.nan
    versions = [p._version for p in params]
    opt.step()
    assert opt.last_skipped is True and opt.skipped_steps == 1 and opt.last_nonfinite_param is params[1]
    assert math.isnan(opt.last_grad_norm) and [p._version for p in params] == versions  # nothing written
    give_grads(params, rng)
    opt.step()
    assert opt.last_skipped is False and opt.last_nonfinite_param is None and opt.skipped_steps == 1
    opt2 = Adam(params)  # no global clip: the coefficient is 1
    opt2.step()
    assert opt2.last_clip_coef == 1.0 and opt2.last_grad_norm > 0


def test_step_bumps_the_version_of_the_parameters_it_changed():
    rng = np.random.default_rng(9)
    net = make_net()
    opt = Adam(net.parameters(), lr=0.01)
    params = net.parameters()
    backward(net, rng)
    params[3].grad = None  # the last bias gets no update
    opt.step()
    assert [p._version for p in params] == [1, 1, 1, 0]
    opt.update_params(net[0])
    assert [p._version for p in params] == [2, 2, 1, 0]


def test_a_strided_loose_tensor_is_refused_not_copied():
    base = np.ones((4, 3))
    t = Tensor(base.T, requires_grad=True)  # a view with strides: it cannot be updated as a flat array
    with pytest.raises(ValueError, match=r"SGD: a parameter of shape \(3, 4\) is not a writeable C-contiguous array"):
        SGD([t], lr=0.1)
    assert np.shares_memory(t.data, base) and t._flat is None


def test_a_network_step_is_one_fused_call_over_the_whole_buffer(monkeypatch):
    # DESIGN.md decision 1: with every parameter holding a gradient, one kernel call per dtype
    from gradcore import _C
    rng = np.random.default_rng(10)
    net = nn.Sequential(nn.Dense(4, 8, activation="relu", dtype=np.float64), nn.BatchNorm(8, dtype=np.float64),
                        nn.Dense(8, 2, dtype=np.float64))
    opt = Adam(net.parameters(), lr=0.01, global_clip_norm=1.0)
    seen = []
    real = _C.adam_step

    def spy(param, grad, *args, **kwargs):
        seen.append((param, grad))
        return real(param, grad, *args, **kwargs)

    monkeypatch.setattr(_C, "adam_step", spy)
    backward(net, rng)
    opt.step()
    flat = net.flat_buffers()[0]
    assert len(seen) == 1 and seen[0][0] is flat.data and seen[0][1] is flat.grad
    net[1].bias.grad = None  # a hole: the runs on either side, still no copy
    seen.clear()
    opt.step()
    k = flat.offsets
    assert [(p.size, np.shares_memory(p, flat.data)) for p, _ in seen] == [(int(k[3]), True), (int(k[6] - k[4]), True)]


def test_a_deep_copy_owns_a_buffer_of_its_own():
    import copy

    rng = np.random.default_rng(11)
    net = make_net()
    Adam(net.parameters())  # an optimizer over the original does not follow the copy
    twin = copy.deepcopy(net)
    flat = twin.flat_buffers()[0]
    assert flat is not net.flat_buffers()[0] and not flat.optimizers
    assert all(np.shares_memory(p.data, flat.data) and not np.shares_memory(p.data, net.flat_buffers()[0].data)
               for p in twin.parameters())
    views, before = twin.get_parameters(), {k: v.copy() for k, v in net.get_parameters().items()}
    opt = SGD(twin.parameters(), lr=0.1)
    backward(twin, rng)
    grads = {k: p.grad.copy() for k, p in twin.named_parameters()}
    opt.step()
    for k, v in views.items():
        np.testing.assert_allclose(v, before[k] - 0.1 * grads[k], rtol=1e-12, atol=1e-15)
        assert np.array_equal(net.get_parameters()[k], before[k])  # the original is untouched


def test_layers_regrouped_after_one_moved_into_a_residual_get_one_new_buffer():
    """b leaves the first network's buffer for the Residual's; a network of a and the
    Residual must build a new buffer instead of reusing the first one (whose view of b is
    stale) -- and the values must be the layers' current ones."""
    a, b = nn.Dense(4, 4), nn.Dense(4, 4)
    (old,) = nn.Sequential(a, b).flat_buffers()
    r = nn.Residual([b])
    net = nn.Sequential(a, r)
    (flat,) = net.flat_buffers()
    assert flat is not old
    assert all(p._flat is flat for p in net.parameters())
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    ya = np.maximum(x @ a.weight.data.T + a.bias.data, 0) if a.activation == "relu" else x @ a.weight.data.T + a.bias.data
    want = ya + (ya @ b.weight.data.T + b.bias.data)
    np.testing.assert_allclose(net(x).data, want, rtol=1e-6)
