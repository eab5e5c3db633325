"""Adversarial checks of the per-step caches (review helper, 2026-12-04).

The eager caches keyed on the structure clock (Sequential's Dense-run decision,
regularization_loss's module list, the optimizer's group checks) and the compiled step's
re-lowering are driven through sequences of user actions; after each, the step must
compute what an uncached reference computes:
  * eager: the same network called layer by layer (``Module.__call__`` of each layer, which
    never consults Sequential's cache), or a fresh deep copy;
  * compiled: an eager twin stepped the same way (float64, 1e-12), or the layer-by-layer
    loss;
  * optimizer semantics: PyTorch's (``torch.optim.SGD`` over the same values) when it is
    installed, else the plain SGD formula p - lr * g written here.
All the wrong results found on 2026-12-04 are mended and their tests pass (a network and
its optimizer deep-copied together: also tests/test_deepcopy_optimizer.py).
"""
import copy

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, losses, nn, optim
from gradcore.compiled import UnsupportedError, compile_step

RNG = np.random.default_rng(11)
X = RNG.standard_normal((8, 6))
Y = RNG.standard_normal((8, 1))
MSE = losses.get("mse")


def _net(l2=0.0, dtype=np.float64, seed=0):
    gradcore.manual_seed(seed)
    return nn.Sequential(nn.Dense(6, 8, "relu", l2=l2), nn.Dense(8, 8, "tanh"), nn.Dense(8, 1), dtype=dtype)


def _layer_by_layer(net, x):
    h = Tensor(x)
    for layer in net:
        h = layer(h)
    return h


def _out_and_grads(net, forward, x=X, y=Y):
    net.zero_grad()
    out = forward(x)
    loss = MSE(out, y)
    reg = net.regularization_loss()
    if reg is not None:
        loss = loss + reg
    loss.backward()
    grads = [None if p.grad is None else p.grad.copy() for p in net.parameters()]
    net.zero_grad()
    return out.data.copy(), float(loss.data), grads


def _assert_matches_layer_by_layer(net):
    """Sequential's (cached) forward and backward == the layer-by-layer ones, twice (fill, hit)."""
    for _ in range(2):
        out, loss, grads = _out_and_grads(net, net)
        ref_out, ref_loss, ref_grads = _out_and_grads(net, lambda x: _layer_by_layer(net, x))
        np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-12)
        for g, r in zip(grads, ref_grads):
            assert (g is None) == (r is None)
            if g is not None:
                np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- eager guards (pass today)
def _toggle_frozen(net):
    net[1].weight.requires_grad_(False)


def _unfreeze_again(net):
    net[1].weight.requires_grad_(False)
    _assert_matches_layer_by_layer(net)
    net[1].weight.requires_grad_(True)


def _data_in_place(net):
    with gradcore.no_grad():
        net[1].weight.data[...] = 0.5 * net[1].weight.data[::-1]


def _activation_and_back(net):
    net[1].activation = "sigmoid"
    _assert_matches_layer_by_layer(net)
    net[1].activation = "tanh"


def _hook_then_remove(net):
    h = net[1].weight.register_hook(lambda g: g * 3.0)
    _assert_matches_layer_by_layer(net)
    h.remove()


def _eval_then_train(net):
    net.eval()
    _assert_matches_layer_by_layer(net)
    net.train()


def _swap_layers_through_modules(net):
    # two same-shaped layers exchanged in the registry directly
    a, b = nn.Dense(8, 8, "elu", dtype=np.float64), nn.Dense(8, 8, "gelu", dtype=np.float64)
    net._modules["1"] = a
    _assert_matches_layer_by_layer(net)
    net._modules["1"] = b


def _l2_on_then_off(net):
    net[2].l2 = 0.25
    _assert_matches_layer_by_layer(net)
    net[0].l2 = 0.0
    net[2].l2 = 0.0


def _deepcopy_mid_training(net):
    twin = copy.deepcopy(net)
    with gradcore.no_grad():
        for p in twin.parameters():
            p.data[...] = -p.data  # the copy's changes must not leak into the original (or its cache)
    _assert_matches_layer_by_layer(twin)


@pytest.mark.parametrize("change", [_toggle_frozen, _unfreeze_again, _data_in_place, _activation_and_back,
                                    _hook_then_remove, _eval_then_train, _swap_layers_through_modules,
                                    _l2_on_then_off, _deepcopy_mid_training],
                         ids=lambda f: f.__name__.strip("_"))
def test_eager_step_after_change_matches_layer_by_layer(change):
    net = _net(l2=0.01)
    _assert_matches_layer_by_layer(net)
    change(net)
    _assert_matches_layer_by_layer(net)


def test_layer_shared_by_two_networks_trains_like_layer_by_layer():
    gradcore.manual_seed(0)
    shared = nn.Dense(8, 8, "tanh", dtype=np.float64)
    a = nn.Sequential(nn.Dense(6, 8, "relu"), shared, nn.Dense(8, 1), dtype=np.float64)
    b = nn.Sequential(nn.Dense(6, 8, "relu"), shared, nn.Dense(8, 1), dtype=np.float64)
    for net in (a, b, a, b):
        _assert_matches_layer_by_layer(net)
        shared.activation = "relu" if shared.activation == "tanh" else "tanh"


def test_regularization_follows_l2_edits_and_replaced_registry():
    net = _net(l2=0.01)
    want = lambda: sum(m.l2 * float(np.sum(m.weight.data ** 2)) for m in net if m.l2)  # noqa: E731
    np.testing.assert_allclose(net.regularization_loss().item(), want(), rtol=1e-12)
    net[2].l2 = 0.5
    np.testing.assert_allclose(net.regularization_loss().item(), want(), rtol=1e-12)
    net[0].l2 = 0.0
    net[2].l2 = 0.0
    assert net.regularization_loss() is None
    from collections import OrderedDict
    net._modules = OrderedDict(net._modules)  # a plain dict: its edits do not move the clock
    assert net.regularization_loss() is None
    net._modules["2"] = nn.Dense(8, 1, l2=0.5, dtype=np.float64)
    np.testing.assert_allclose(net.regularization_loss().item(), want(), rtol=1e-12)


# ---------------------------------------------------------------------- compiled guards (pass today)
def _eager_step(net, opt, x, y):
    opt.zero_grad()
    loss = MSE(net(x), y)
    reg = net.regularization_loss()
    if reg is not None:
        loss = loss + reg
    loss.backward()
    opt.step()
    return float(loss.data)


def _compiled_vs_eager(changes, steps=8):
    a = _net(l2=0.01)
    b = copy.deepcopy(a)
    oa, ob = optim.Adam(a.parameters(), lr=1e-2), optim.Adam(b.parameters(), lr=1e-2)
    step = compile_step(b, MSE, ob)
    for i in range(steps):
        if i in changes:
            changes[i](a, oa)
            changes[i](b, ob)
        la = _eager_step(a, oa, X, Y)
        lb = step(X, Y)
        np.testing.assert_allclose(lb, la, rtol=1e-12, atol=1e-12, err_msg=f"loss, step {i}")
        for p, q in zip(a.parameters(), b.parameters()):
            np.testing.assert_allclose(q.data, p.data, rtol=1e-12, atol=1e-12, err_msg=f"step {i}")
    return step


def _set_attr(i, name, value):
    return lambda net, opt: setattr(net[i], name, value)


def test_compiled_follows_settings_changed_back_and_forth():
    # A -> B -> A: the plan of A must be rebuilt (or kept) with A's settings each time
    _compiled_vs_eager({1: _set_attr(1, "activation", "sigmoid"), 2: _set_attr(1, "activation", "tanh"),
                        3: _set_attr(2, "l2", 0.3), 4: _set_attr(2, "l2", 0.0),
                        5: _set_attr(0, "activation", "leaky_relu"), 6: _set_attr(0, "alpha", 0.2),
                        7: _set_attr(0, "activation", "relu")})


def test_compiled_follows_lr_schedule_and_in_place_parameter_edit():
    def edit(net, opt):
        with gradcore.no_grad():
            net[1].weight.data[...] *= 0.5

    def schedule(net, opt):
        opt.lr = optim.ExponentialDecay(1e-2, decay_steps=2, decay_rate=0.5)

    _compiled_vs_eager({2: edit, 3: schedule, 5: lambda net, opt: setattr(opt, "lr", 3e-3)})


def test_compiled_deepcopy_mid_training_is_independent():
    step = _compiled_vs_eager({2: lambda net, opt: copy.deepcopy(net)}, steps=4)
    assert step.mode == "fused"


def test_compiled_refuses_a_frozen_parameter_then_runs_again_when_unfrozen():
    net = _net()
    opt = optim.SGD(net.parameters(), lr=0.1)
    step = compile_step(net, MSE, opt)
    step(X, Y)
    net[1].bias.requires_grad_(False)
    before = [p.data.copy() for p in net.parameters()]
    with pytest.raises(UnsupportedError, match="frozen"):
        step(X, Y)
    for p, old in zip(net.parameters(), before):
        np.testing.assert_array_equal(p.data, old)
    net[1].bias.requires_grad_(True)
    ref = copy.deepcopy(net)
    oref = optim.SGD(ref.parameters(), lr=0.1)
    np.testing.assert_allclose(step(X, Y), _eager_step(ref, oref, X, Y), rtol=1e-12)


# ---------------------------------------------------------------------- silent wrong results today
def test_instance_forward_override_is_honoured_eagerly():
    net = _net()
    net(X)  # the run is cached
    layer = net[1]
    original = layer.forward
    layer.forward = lambda x: original(x) * 0.5  # torch: module(x) calls the instance's forward
    _assert_matches_layer_by_layer(net)


def test_class_forward_patched_after_first_use_is_honoured_eagerly():
    class Scaled(nn.Dense):
        pass

    gradcore.manual_seed(0)
    net = nn.Sequential(Scaled(6, 8, "relu"), Scaled(8, 1), dtype=np.float64)
    net(X)
    base = nn.Dense.forward
    Scaled.forward = lambda self, x: base(self, x) * 2.0
    _assert_matches_layer_by_layer(net)


def _follows_or_refuses(step, net):
    """The compiled step's loss is the layer-by-layer forward's MSE now, or it refuses."""
    with gradcore.no_grad():
        want = float(np.mean((_layer_by_layer(net, X).data - Y) ** 2))
    try:
        got = step(X, Y)
    except UnsupportedError:
        return  # refusing is correct too
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_compiled_step_does_not_ignore_a_class_forward_patched_after_compiling():
    class Halved(nn.Dense):
        pass

    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(6, 8, "relu"), Halved(8, 1), dtype=np.float64)
    step = compile_step(net, MSE, optim.SGD(net.parameters(), lr=0.0))
    step(X, Y)
    base = nn.Dense.forward
    Halved.forward = lambda self, x: base(self, x) * 0.5
    _follows_or_refuses(step, net)


def test_compiled_step_does_not_ignore_an_instance_forward_override():
    net = _net()
    opt = optim.SGD(net.parameters(), lr=0.1)
    step = compile_step(net, MSE, opt)
    step(X, Y)
    layer = net[1]
    original = layer.forward
    layer.forward = lambda x: original(x) * 0.5
    _follows_or_refuses(step, net)


def test_compiled_step_follows_or_refuses_a_loss_option_changed_after_compiling():
    net = _net()
    loss_fn = losses.MSELoss()
    opt = optim.SGD(net.parameters(), lr=0.01)
    step = compile_step(net, loss_fn, opt)
    step(X, Y)
    loss_fn.reduction = "sum"
    with gradcore.no_grad():
        want = float(loss_fn(net(X), Y).data)
    np.testing.assert_allclose(want, float(np.sum((_layer_by_layer(net, X).data - Y) ** 2)), rtol=1e-12)
    try:
        got = step(X, Y)
    except UnsupportedError:
        return
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_instance_own_regularization_override_is_summed():
    net = _net()
    assert net.regularization_loss() is None
    net[1].own_regularization = lambda: Tensor(np.array(5.0))
    reg = net.regularization_loss()
    assert reg is not None and reg.item() == 5.0


def _grads_of(net):
    net.zero_grad()
    MSE(net(X), Y).backward()


_EDITS = {
    "pop": lambda ps, extra: ps.pop(),
    "append": lambda ps, extra: ps.append(extra),
    "extend": lambda ps, extra: ps.extend([extra]),
    "del": lambda ps, extra: ps.__delitem__(0),
    "setitem": lambda ps, extra: ps.__setitem__(0, extra),
    "reassigned": None,  # group["params"] = a shorter new list
}


# Editing a group's params list in place: torch steps exactly the edited list, but this
# optimizer's state lives in slots registered with the group, so it refuses the step with a
# clear ValueError before writing anything (it used to step the popped tensors and skip
# the added ones without a word).
@pytest.mark.parametrize("path", ["eager", "compiled"])
@pytest.mark.parametrize("edit", sorted(_EDITS))
def test_param_group_list_edited_in_place_is_refused(edit, path):
    net = _net()
    params = net.parameters()
    extra = Tensor(np.zeros(3), requires_grad=True)
    opt = optim.SGD(params, lr=0.1)
    step = compile_step(net, MSE, opt) if path == "compiled" else None
    if step is not None:
        step(X, Y)  # bound, fused
    group = opt.param_groups[0]
    if edit == "reassigned":
        group["params"] = list(params[:-1])
    else:
        _EDITS[edit](group["params"], extra)
    _grads_of(net)
    before = [p.data.copy() for p in params]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\] was changed"):
        opt.step() if step is None else step(X, Y)
    for p, old in zip(params, before):
        np.testing.assert_array_equal(p.data, old)
    # the list put back as registered: the step runs again, p - lr * g (plain SGD)
    group["params"] = list(params)
    _grads_of(net)
    values, grads = [p.data.copy() for p in params], [p.grad.copy() for p in params]
    if step is None:
        opt.step()
        for p, v, g in zip(params, values, grads):
            np.testing.assert_allclose(p.data, v - 0.1 * g, rtol=1e-12, atol=1e-15)
    else:
        step(X, Y)
        assert not all(np.array_equal(p.data, v) for p, v in zip(params, values))


@pytest.mark.parametrize("path", ["eager", "compiled"])
@pytest.mark.parametrize("which", [0, 1])
def test_popped_param_group_is_refused(which, path):
    net = _net()
    params = net.parameters()
    first = net[0].parameters()
    opt = optim.SGD([{"params": first, "lr": 1.0}, {"params": params[len(first):]}], lr=0.1)
    step = compile_step(net, MSE, opt) if path == "compiled" else None
    _grads_of(net)
    before = [p.data.copy() for p in params]
    opt.param_groups.pop(which)
    with pytest.raises(ValueError, match="param_groups changed after the groups were added"):
        opt.step() if step is None else step(X, Y)
    for p, old in zip(params, before):
        np.testing.assert_array_equal(p.data, old)


# ---------------------------------------------------------------------- more compiled guards (pass today)
def _bn_net():
    gradcore.manual_seed(0)
    return nn.Sequential(nn.Dense(6, 8, "relu", l2=0.01), nn.BatchNorm(8), nn.Dense(8, 8, "tanh"), nn.Dense(8, 1),
                         dtype=np.float64)


def _assert_twins(a, b, oa, ob):
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(q.data, p.data, rtol=1e-12, atol=1e-12)
    for x, y in zip(a.buffers(), b.buffers()):
        np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-12)
    for sa, sb in zip(oa._slots, ob._slots):
        assert sa.state.keys() == sb.state.keys()
        np.testing.assert_array_equal(sa.steps, sb.steps)
        for k in sa.state:
            np.testing.assert_allclose(sb.state[k], sa.state[k], rtol=1e-12, atol=1e-12)


def test_compiled_and_eager_steps_interleaved_on_one_optimizer():
    a = _bn_net()
    b = copy.deepcopy(a)
    oa = optim.Adam(a.parameters(), lr=1e-2, amsgrad=True)
    ob = optim.Adam(b.parameters(), lr=1e-2, amsgrad=True)
    step = compile_step(b, MSE, ob)
    for i in range(6):
        _eager_step(a, oa, X, Y)
        if i % 2:
            _eager_step(b, ob, X, Y)  # the fused plan's bookkeeping (update counts) must be picked up
        else:
            step(X, Y)
        _assert_twins(a, b, oa, ob)


def test_compiled_accumulation_across_a_structure_change():
    a = _bn_net()
    b = copy.deepcopy(a)
    oa, ob = optim.SGD(a.parameters(), lr=0.1), optim.SGD(b.parameters(), lr=0.1)
    step = compile_step(b, MSE, ob)
    halves = [(X[:4], Y[:4]), (X[4:], Y[4:])]
    oa.zero_grad()
    for i, (x, y) in enumerate(halves):
        if i == 1:
            a[2].activation = "sigmoid"
        (MSE(a(x), y) * 0.5 + a.regularization_loss() * 0.5).backward()
    oa.step()
    for i, (x, y) in enumerate(halves):
        if i == 1:
            b[2].activation = "sigmoid"  # the second half runs the new plan, into the same gradient buffer
        step.forward_backward(x, y, 0.5, i == 1)
    step.apply_update()
    _assert_twins(a, b, oa, ob)


def test_default_fit_honours_a_parameter_tensor_hook_like_eager_fit():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((32, 6)), rng.standard_normal((32, 1))
    gradcore.manual_seed(0)
    a = nn.Sequential(nn.Dense(6, 8, "relu"), nn.Dense(8, 1), dtype=np.float64)
    b = copy.deepcopy(a)
    for net in (a, b):
        net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
        net[0].weight.register_hook(lambda g: g * 0.0)
    start = a[0].weight.data.copy()
    a.fit(x, y, epochs=1, batch_size=8, shuffle=False, compiled=False, verbose=0)
    np.testing.assert_array_equal(a[0].weight.data, start)  # the hook zeroes its gradient: plain SGD keeps it
    b.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(q.data, p.data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_eager_regularization_refuses_an_invalid_l2_set_later(value):
    net = _net(l2=0.01)
    with pytest.raises(ValueError, match="l2"):
        nn.Dense(6, 8, l2=value)  # the constructor's answer
    opt = optim.SGD(net.parameters(), lr=0.1)
    net[0].l2 = value
    before = [p.data.copy() for p in net.parameters()]
    with pytest.raises(ValueError, match="l2"):
        _eager_step(net, opt, X, Y)
    for p, old in zip(net.parameters(), before):
        np.testing.assert_array_equal(p.data, old)


def test_deepcopy_of_network_and_optimizer_together_trains_the_copy_or_refuses_clearly():
    net = _net()
    opt = optim.Adam(net.parameters(), lr=1e-2)
    _eager_step(net, opt, X, Y)
    ref = _net()
    oref = optim.Adam(ref.parameters(), lr=1e-2)
    _eager_step(ref, oref, X, Y)
    try:
        net2, opt2 = copy.deepcopy((net, opt))  # e.g. a checkpoint dict {"model": net, "opt": opt}
        for _ in range(3):
            _eager_step(net2, opt2, X, Y)
    except (RuntimeError, ValueError, TypeError) as exc:
        assert "optimizer" in str(exc).lower()  # a clear refusal is acceptable
        return
    for _ in range(3):
        _eager_step(ref, oref, X, Y)
    for p, q in zip(net2.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- Dense.activation set after construction
def test_dense_activation_set_later_is_checked_and_spelled_like_the_constructor():
    # an unknown name ran as the identity without a word (eager), before and after the
    # Dense-run cache; now the constructor's ValueError, and "ReLU" means "relu" as there
    net = _net()
    want = _layer_by_layer(net, X).data.copy()
    net[1].activation = "Tanh"
    np.testing.assert_array_equal(net(X).data, want)
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        nn.Dense(6, 8, "nope")
    net[1].activation = "nope"
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        net(X)
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        net[1](Tensor(np.ones((2, 8))))
