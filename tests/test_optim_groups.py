"""Issue 6: torch's param_groups (per-group hyper-parameters, add_param_group, state_dict
round trips, gradcore.save/load), per-group clipping against a NumPy reference, and
clip_grad_norm_ / clip_grad_value_ with torch's signature against torch.nn.utils."""
import math

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, nn
from gradcore.optim import SGD, Adam, Adagrad, RMSprop, clip_grad_norm_, clip_grad_value_
from test_optim_ownership import assert_close_to_torch, torch_setup, twins  # the torch-twin helpers, shared


def make_net():
    gradcore.manual_seed(1)
    return nn.Sequential(nn.Dense(4, 6, activation="relu", dtype=np.float64), nn.Dense(6, 5, dtype=np.float64),
                         nn.Dense(5, 2, dtype=np.float64), dtype=np.float64)


def give(params, tparams, rng):
    for p, tp in zip(params, tparams):
        g = rng.standard_normal(p.shape)
        p.grad = g.copy()
        tp.grad = None if tp is None else __import__("torch").tensor(g)


CASES = [
    (Adam, [dict(lr=1e-2, weight_decay=0.1), dict(betas=(0.8, 0.99), amsgrad=True)], dict(lr=1e-3)),
    (SGD, [dict(lr=0.05, momentum=0.9, nesterov=True), dict(weight_decay=0.01)], dict(lr=0.1)),
    (RMSprop, [dict(alpha=0.9, centered=True), dict(momentum=0.5)], dict(lr=0.01)),
    # torch takes initial_accumulator_value from the constructor only, so it is not set per group here
    (Adagrad, [dict(lr_decay=0.1), dict(eps=1e-6)], dict(lr=0.05, initial_accumulator_value=0.2)),
]


@pytest.mark.parametrize("cls,groups,defaults", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_param_groups_match_torch(cls, groups, defaults):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    net = make_net()
    layers = [net[0].parameters(), net[1].parameters(), net[2].parameters()]
    tlayers = [twins(torch, ps) for ps in layers]
    opt = cls([dict(g, params=ps) for g, ps in zip(groups, layers[:2])], **defaults)
    tcls = getattr(torch.optim, cls.__name__)
    topt = tcls([dict(g, params=ps) for g, ps in zip(groups, tlayers[:2])], **defaults, foreach=False)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == defaults["lr"]
    params, tparams = [p for ps in layers for p in ps], [p for ps in tlayers for p in ps]
    for step in range(8):
        if step == 3:  # torch's idiom for changing one group's rate
            opt.param_groups[0]["lr"] = topt.param_groups[0]["lr"] = 0.5 * topt.param_groups[0]["lr"]
        if step == 5:
            opt.add_param_group({"params": layers[2], "lr": 0.02})
            topt.add_param_group({"params": tlayers[2], "lr": 0.02})
        give(params, tparams, rng)
        opt.step()
        topt.step()
        assert_close_to_torch(params, tparams, rtol=1e-11, atol=1e-13)
    assert len(opt.flat_buffers) == 1  # every group addresses the network's one buffer


def test_add_param_group_refuses_duplicates_and_optimizer_wide_keys():
    net = make_net()
    opt = Adam(net[0].parameters())
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": net[0].weight})
    with pytest.raises(ValueError, match="'global_clip_norm' is a setting of the whole optimizer"):
        opt.add_param_group({"params": net[1].parameters(), "global_clip_norm": 1.0})
    with pytest.raises(ValueError, match="unknown key 'momentum'"):
        opt.add_param_group({"params": net[1].parameters(), "momentum": 0.9})
    with pytest.raises(ValueError, match="beta2 must be < 1"):
        opt.add_param_group({"params": net[1].parameters(), "betas": (0.9, 1.0)})
    strided = Tensor(np.ones((4, 3)).T, requires_grad=True)
    with pytest.raises(ValueError, match="not a writeable C-contiguous array"):
        opt.add_param_group({"params": [*net[1].parameters(), strided]})
    assert len(opt.param_groups) == 1 and len(opt.params) == 2 and len(opt.flat_buffers) == 1  # nothing added
    opt.param_groups[0]["lr"] = -1.0
    net[0].weight.grad = np.ones(net[0].weight.shape)
    before = net[0].weight.data.copy()
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        opt.step()
    assert np.array_equal(net[0].weight.data, before)


def ref_clip_adam(p, g, lr, clip_norm, coef):
    """Adam's first step on a gradient scaled by min(1, clip_norm / |g|) then by ``coef``."""
    n = np.linalg.norm(g)
    g = g * (min(1.0, clip_norm / n) if clip_norm else 1.0) * coef
    return p - lr * g / (np.abs(g) + 1e-8)


def test_per_group_clipping_matches_reference():
    rng = np.random.default_rng(1)
    net = make_net()
    opt = Adam([{"params": net[0].parameters(), "clip_norm": 0.5}, {"params": net[1].parameters()},
                {"params": net[2].parameters(), "clip_value": 0.1, "lr": 0.5}], lr=0.1, global_clip_norm=2.0)
    params = net.parameters()
    grads = [rng.standard_normal(p.shape) * 3 for p in params]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    before = [p.data.copy() for p in params]
    opt.step()
    clip_norms = [0.5, 0.5, None, None, None, None]
    clipped = [np.linalg.norm(g) * (min(1.0, c / np.linalg.norm(g)) if c else 1.0) for g, c in zip(grads, clip_norms)]
    total = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads))
    coef = min(1.0, 2.0 / (math.sqrt(sum(c ** 2 for c in clipped)) + 1e-6))
    assert opt.last_grad_norm == pytest.approx(total, rel=1e-12) and opt.last_clip_coef == pytest.approx(coef)
    for i, (p, g, b) in enumerate(zip(params, grads, before)):
        if i < 4:
            want = ref_clip_adam(b, g, 0.1, clip_norms[i], coef)
        else:  # clip_value after the scaling: Adam's first step is lr * sign for |g| >> eps
            gc = np.clip(g * coef, -0.1, 0.1)
            want = b - 0.5 * gc / (np.abs(gc) + 1e-8)
        np.testing.assert_allclose(p.data, want, rtol=1e-10, atol=1e-12)


def test_setting_an_attribute_sets_every_group():
    net = make_net()
    opt = SGD([{"params": net[0].parameters(), "lr": 0.5}, {"params": net[1].parameters()}], lr=0.1)
    opt.lr = 0.2
    opt.momentum = 0.9
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2]
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9]
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        opt.momentum = -1
    assert opt.momentum == 0.9


def test_state_dict_round_trip_with_groups_is_bit_exact():
    rng = np.random.default_rng(2)

    def build(net):
        return Adam([{"params": net[0].parameters(), "lr": 0.02, "amsgrad": True},
                     {"params": net[2].parameters(), "weight_decay": 0.1}], lr=0.01)

    a, b = make_net(), make_net()
    opt_a = build(a)
    grads = [[rng.standard_normal(p.shape) for p in a.parameters()] for _ in range(6)]
    for gs in grads[:3]:
        for p, g in zip(a.parameters(), gs):
            p.grad = g.copy()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = build(b)
    opt_b.param_groups[0]["lr"] = 1.0  # overwritten by the saved value, as torch does
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.param_groups[0]["lr"] == 0.02
    for gs in grads[3:]:
        for net in (a, b):
            for p, g in zip(net.parameters(), gs):
                p.grad = g.copy()
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert np.array_equal(pa.data, pb.data)
    with pytest.raises(ValueError, match="parameter group"):
        Adam([{"params": b[0].parameters()}, {"params": b[1].parameters()}, {"params": b[2].parameters()}]
             ).load_state_dict(opt_a.state_dict())


def test_save_and_load_keep_the_groups(tmp_path):
    rng = np.random.default_rng(3)
    net = make_net()
    opt = SGD([{"params": net[0].parameters(), "lr": 0.3, "momentum": 0.9},
               {"params": net[1].parameters() + net[2].parameters()}], lr=0.05)
    net.compile(opt, loss="mse")
    for _ in range(2):
        for p in net.parameters():
            p.grad = rng.standard_normal(p.shape)
        opt.step()
    gradcore.save(net, str(tmp_path / "ck.safetensors"))
    again = gradcore.load(str(tmp_path / "ck.safetensors"))
    groups = again.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.3, 0.05] and [g["momentum"] for g in groups] == [0.9, 0.0]
    assert [len(g["params"]) for g in groups] == [2, 4]
    grads = [rng.standard_normal(p.shape) for p in net.parameters()]
    for n, o in ((net, opt), (again, again.optimizer)):
        for p, g in zip(n.parameters(), grads):
            p.grad = g.copy()
        o.step()
    for p, q in zip(net.parameters(), again.parameters()):
        assert np.array_equal(p.data, q.data)


def test_update_params_per_layer_on_a_network():
    # the documents' style: one optimizer, layers registered lazily, each updated on its own
    rng = np.random.default_rng(4)
    net, ref = make_net(), make_net()
    opt = Adam(lr=0.01)
    ref_opt = Adam(ref.parameters(), lr=0.01)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape) for p in net.parameters()]
        for n in (net, ref):
            for p, g in zip(n.parameters(), grads):
                p.grad = g.copy()
        for layer in (net[0], net[1], net[2]):
            opt.update_params(layer)
        ref_opt.step()
    assert opt.flat_buffers == net.flat_buffers()  # the network's buffer, not a copy
    for p, q in zip(net.parameters(), ref.parameters()):
        assert np.array_equal(p.data, q.data)


# ---------------------------------------------------------------------- standalone clipping
@pytest.mark.parametrize("norm_type", [2.0, float("inf"), "inf", 1.0, 3.0])
@pytest.mark.parametrize("loose", [True, False])
def test_clip_grad_norm_matches_torch(norm_type, loose):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    net = make_net()
    params = [Tensor(p.data.copy(), requires_grad=True) for p in net.parameters()] if loose else net.parameters()
    tparams = twins(torch, params)
    give(params, tparams, rng)
    params[1].grad = None  # no gradient: ignored by both
    tparams[1].grad = None
    norm = clip_grad_norm_(params, 0.7, norm_type)  # positional, in torch's order
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, 0.7, norm_type)
    assert norm == pytest.approx(float(tnorm), rel=1e-12) and norm.item() == float(norm)
    for p, tp in zip(params, tparams):
        if tp.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_error_if_nonfinite_is_the_fourth_argument():
    rng = np.random.default_rng(6)
    params = [Tensor(rng.standard_normal(3), requires_grad=True)]
    params[0].grad = np.array([1.0, np.inf, 0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(params, 1.0, 2.0, True)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        clip_grad_norm_(params, 1.0, -1.0)
    assert math.isinf(clip_grad_norm_(params, 1.0, float("inf")))


def test_clip_grad_value_matches_torch_and_skips_missing_gradients():
    torch, rng, net, params, tparams = torch_setup(7, make_net)
    give(params, tparams, rng)
    params[0].grad, tparams[0].grad = None, None
    clip_grad_value_(params, 0.3)
    torch.nn.utils.clip_grad_value_(tparams, 0.3)
    assert params[0].grad is None
    for p, tp in zip(params[1:], tparams[1:]):
        np.testing.assert_array_equal(p.grad, tp.grad.numpy())


def test_a_state_dict_from_before_groups_still_loads():
    # the layout gradcore wrote before param_groups: one buffer over all tensors, no groups
    rng = np.random.default_rng(8)
    a, b = Tensor(rng.standard_normal((3, 2)), requires_grad=True), Tensor(rng.standard_normal(4), requires_grad=True)
    m, v = rng.standard_normal(10) * 0.1, rng.random(10) * 0.01
    old = {"optimizer": "Adam", "hyperparameters": {"betas": [0.8, 0.99], "eps": 1e-8, "weight_decay": 0.0,
                                                    "amsgrad": False},
           "lr": 0.05, "lr_schedule": None, "clip": {"clip_value": None, "clip_norm": None, "global_clip_norm": None},
           "nonfinite": "skip", "skipped_steps": 1, "grad_noise": None,
           "buffers": [{"dtype": "float64", "offsets": np.array([0, 6, 10]), "steps": np.array([3, 3]),
                        "state": {"m": m.copy(), "v": v.copy()}}]}
    opt = Adam([a, b])
    opt.load_state_dict(old)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert opt.skipped_steps == 1 and opt.iterations == 3
    start = np.concatenate([a.data.ravel(), b.data.ravel()])
    g = rng.standard_normal(10)
    a.grad, b.grad = g[:6].reshape(3, 2).copy(), g[6:].copy()
    opt.step()
    m1, v1 = 0.8 * m + 0.2 * g, 0.99 * v + 0.01 * g * g  # the fourth Adam update, from the loaded moments
    want = start - 0.05 / (1 - 0.8 ** 4) * m1 / (np.sqrt(v1) / math.sqrt(1 - 0.99 ** 4) + 1e-8)
    np.testing.assert_allclose(np.concatenate([a.data.ravel(), b.data.ravel()]), want, rtol=1e-12)
