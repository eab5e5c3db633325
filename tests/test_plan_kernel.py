"""gradcore._C.Plan, the compiled training step, checked directly against the eager path.

Each test builds a small network with gradcore.nn, deep-copies it, lowers the copy into a
Plan by hand (the harness below, which mirrors what gradcore.compiled does), and trains
both side by side: the eager network through gradcore.functional / losses and a
gradcore.optim optimizer, the copy through plan.step. The plan calls the same kernels in
the same order, so parameters, optimizer states, BatchNorm statistics, losses, norms and
clip coefficients must agree bit for bit (float32 and float64).
"""
import copy
import math

import numpy as np
import pytest

import gradcore as gc
import gradcore.functional as F
from gradcore import _C, losses as L, nn

BETAS = (0.9, 0.999)


# ---------------------------------------------------------------------- harness
def grad_view(flat, p):
    return flat.view(flat.grad, flat.index(p))


def lower(plan, m, src, flat):
    """Add module m's nodes to the plan after node src; returns the output node."""
    if isinstance(m, nn.Sequential):
        for layer in m:
            src = lower(plan, layer, src, flat)
        return src
    if isinstance(m, nn.Residual):
        h = lower(plan, m.block, src, flat)
        short = src if m.projection is None else lower(plan, m.projection, src, flat)
        return plan.add(h, short)
    if isinstance(m, nn.Dense):
        fused = m.activation if m.activation not in ("softmax", "log_softmax") else None
        b = None if m.bias is None else m.bias.data
        db = None if m.bias is None else grad_view(flat, m.bias)
        out = plan.dense(src, m.weight.data, b, grad_view(flat, m.weight), db, fused or "identity", m.alpha, m.l2)
        if m.activation in ("softmax", "log_softmax"):
            out = plan.softmax(out, m.activation == "log_softmax")
        return out
    if isinstance(m, nn.PReLU):
        return plan.prelu(src, m.weight.data, grad_view(flat, m.weight))
    if isinstance(m, nn.BatchNorm):
        return plan.batchnorm(src, m.weight.data, m.bias.data, grad_view(flat, m.weight), grad_view(flat, m.bias),
                              m.running_mean, m.running_var, m.num_batches_tracked, m.momentum, m.eps)
    if isinstance(m, nn.LayerNorm):
        if m.weight is None:
            return plan.layernorm(src, None, None, None, None, m.eps)
        return plan.layernorm(src, m.weight.data, m.bias.data, grad_view(flat, m.weight), grad_view(flat, m.bias),
                              m.eps)
    if isinstance(m, nn.Dropout):
        return plan.dropout(src, m.p)
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return plan.softmax(src, isinstance(m, nn.LogSoftmax))
    if isinstance(m, nn.Identity):
        return src
    return plan.activation(src, m.activation_name, m.alpha)


def optimizer_states(kind, opt):
    s = opt._slots[0]
    g = opt.param_groups[0]
    if kind == "adam":
        return (s.state_array("m"), s.state_array("v"), s.state_array("v_max") if g["amsgrad"] else None)
    if kind == "sgd":
        return (s.state_array("momentum_buffer") if g["momentum"] != 0 else None,)
    if kind == "rmsprop":
        return (s.state_array("square_avg"), s.state_array("grad_avg") if g["centered"] else None,
                s.state_array("momentum_buffer") if g["momentum"] > 0 else None)
    return (s.state_array("sum"),)


def hyper(kind, opt):
    """The hyper tuple of the next step, as the optimizer's _kernel computes it."""
    g = opt.param_groups[0]
    t = int(opt._slots[0].steps[0])
    if kind == "adam":
        b1, b2 = g["betas"]
        return (g["lr"], b1, b2, g["eps"], g["weight_decay"], float(opt._decoupled), 1.0 - b1 ** (t + 1),
                1.0 - b2 ** (t + 1))
    if kind == "sgd":
        return (g["lr"], g["momentum"], g["dampening"], g["weight_decay"], float(g["nesterov"]), float(t == 0))
    if kind == "rmsprop":
        return (g["lr"], g["alpha"], g["eps"], g["weight_decay"], g["momentum"])
    return (g["lr"] / (1.0 + t * g["lr_decay"]), g["eps"], g["weight_decay"])


OPTIMIZERS = {
    "adam": lambda p, **kw: gc.optim.Adam(p, lr=0.01, amsgrad=True, **kw),
    "adamw": lambda p, **kw: gc.optim.AdamW(p, lr=0.01, weight_decay=0.05, **kw),
    "sgd": lambda p, **kw: gc.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, **kw),
    "sgd_plain": lambda p, **kw: gc.optim.SGD(p, lr=0.05, **kw),
    "rmsprop": lambda p, **kw: gc.optim.RMSprop(p, lr=0.005, momentum=0.5, centered=True, **kw),
    "adagrad": lambda p, **kw: gc.optim.Adagrad(p, lr=0.05, lr_decay=0.01, weight_decay=1e-3, **kw),
}
KIND = {"adam": "adam", "adamw": "adam", "sgd": "sgd", "sgd_plain": "sgd", "rmsprop": "rmsprop", "adagrad": "adagrad"}


class Pair:
    """An eager network + optimizer and its plan-driven twin."""

    def __init__(self, net, loss, loss_kind, opt="adam", clip=None, dtype=np.float64):
        self.net, self.loss, self.kind = net, loss, KIND[opt]
        self.twin = copy.deepcopy(net)
        clip = clip or {}
        self.clip = (clip.get("clip_value", 0.0), clip.get("clip_norm", 0.0), clip.get("global_clip_norm", 0.0))
        self.opt = OPTIMIZERS[opt](net.parameters(), **clip)
        self.opt2 = OPTIMIZERS[opt](self.twin.parameters(), **clip)
        self.flat = self.twin.flat_buffers()[0]
        self.plan = _C.Plan(dtype)
        out = lower(self.plan, self.twin, -1, self.flat)
        self.plan.set_loss(out, loss_kind)
        self.plan.set_grads(self.flat.grad, self.flat.offsets)
        s = self.opt2._slots[0]
        self.plan.set_optimizer(self.kind, self.flat.data, optimizer_states(self.kind, self.opt2), s.sumsq, s.scales)
        self.n_dropout = sum(isinstance(m, nn.Dropout) and 0 < m.p < 1 for m in net.modules())

    def seeds(self, seed):
        gc.manual_seed(seed)
        drawn = [gc.random.next_seed() for _ in range(self.n_dropout)]
        it = iter(drawn)
        per_node = [next(it) if 0 < m.p < 1 else 0 for m in self.twin.modules() if isinstance(m, nn.Dropout)]
        return np.array(per_node, dtype=np.uint64)

    def eager_loss(self, x, y, weight=1.0):
        out = self.net(x)
        loss = self.loss(out, y)
        reg = self.net.regularization_loss()
        if reg is not None:
            loss = loss + reg
        (loss * weight if weight != 1.0 else loss).backward()
        return float(loss.item()), out

    def step(self, x, y, seed=0):
        seeds = self.seeds(seed)
        r = self.plan.step(x, y, seeds, 1.0, False, hyper(self.kind, self.opt2), *self.clip)
        gc.manual_seed(seed)
        self.opt.zero_grad()
        value, _ = self.eager_loss(x, y)
        self.opt.step()
        if r[2] < 0:  # the optimizer's bookkeeping, as compiled.py does it
            self.opt2._slots[0].steps += 1
        return r, value

    def assert_same(self, exact=True):
        a, b = self.net.flat_buffers()[0], self.flat
        check = np.testing.assert_array_equal if exact else (
            lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12))
        check(b.data, a.data)
        for name, arr in self.opt._slots[0].state.items():
            check(self.opt2._slots[0].state[name], arr)
        for m1, m2 in zip(self.net.modules(), self.twin.modules()):
            if isinstance(m1, nn.BatchNorm):
                check(m2.running_mean, m1.running_mean)
                check(m2.running_var, m1.running_var)
                assert int(m2.num_batches_tracked) == int(m1.num_batches_tracked)


def data(rng, n, d, dtype):
    return rng.standard_normal((n, d)).astype(dtype)


# ---------------------------------------------------------------------- parity over many steps
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_mlp_steps_match_eager_bit_for_bit(dtype, opt):
    rng = np.random.default_rng(0)
    gc.manual_seed(1)
    net = nn.Sequential(nn.Dense(6, 16, activation="relu", dtype=dtype), nn.Dense(16, 8, activation="tanh", dtype=dtype),
                        nn.Dense(8, 3, dtype=dtype))
    pair = Pair(net, F.mse_loss, "mse", opt=opt, clip={"global_clip_norm": 0.5}, dtype=dtype)
    for t in range(50):
        x, y = data(rng, 16, 6, dtype), data(rng, 16, 3, dtype)
        (loss, norm, bad, coef), value = pair.step(x, y)
        assert bad == -1
        assert loss == value
        assert norm == pair.opt.last_grad_norm
        assert coef == pair.opt.last_clip_coef
    pair.assert_same()


@pytest.mark.parametrize("clip", [{"clip_value": 0.05}, {"clip_norm": 0.3}, {"clip_norm": 0.3, "global_clip_norm": 0.4},
                                  {"clip_value": 0.1, "global_clip_norm": 0.2}])
def test_clipping_modes_match_eager(clip):
    rng = np.random.default_rng(1)
    gc.manual_seed(2)
    net = nn.Sequential(nn.Dense(5, 12, activation="elu", alpha=0.7, dtype=np.float64), nn.Dense(12, 2, dtype=np.float64))
    pair = Pair(net, F.mse_loss, "mse", opt="adam", clip=clip)
    for t in range(30):
        (loss, norm, bad, coef), value = pair.step(data(rng, 9, 5, np.float64), 3 * data(rng, 9, 2, np.float64))
        assert (loss, norm, coef) == (value, pair.opt.last_grad_norm, pair.opt.last_clip_coef)
    pair.assert_same()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh",
                                 "softplus"])
def test_activations_fused_and_standalone(dtype, act):
    rng = np.random.default_rng(3)
    gc.manual_seed(3)
    net = nn.Sequential(nn.Dense(4, 10, activation=act, dtype=dtype), nn.Dense(10, 10, dtype=dtype),
                        nn.Activation(act, alpha=0.3 if act in ("leaky_relu", "elu") else None),
                        nn.Dense(10, 2, l2=0.01, dtype=dtype))
    pair = Pair(net, F.mse_loss, "mse", opt="sgd", dtype=dtype)
    for t in range(10):
        pair.step(data(rng, 7, 4, dtype), data(rng, 7, 2, dtype))
    pair.assert_same()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_statistics_and_parameters(dtype, momentum):
    rng = np.random.default_rng(4)
    gc.manual_seed(4)
    net = nn.Sequential(nn.Dense(5, 12, dtype=dtype), nn.BatchNorm(12, momentum=momentum, dtype=dtype), nn.ReLU(),
                        nn.Dense(12, 3, dtype=dtype))
    pair = Pair(net, F.mse_loss, "mse", opt="adam", dtype=dtype)
    for t in range(30):
        pair.step(data(rng, 11, 5, dtype) + 2.0, data(rng, 11, 3, dtype))
    pair.assert_same()
    assert int(pair.twin[1].num_batches_tracked) == 30


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_and_prelu(dtype, affine):
    rng = np.random.default_rng(5)
    gc.manual_seed(5)
    net = nn.Sequential(nn.Dense(5, 9, dtype=dtype), nn.LayerNorm(9, elementwise_affine=affine, dtype=dtype),
                        nn.PReLU(9, dtype=dtype), nn.Dense(9, 6, dtype=dtype), nn.PReLU(1, init=0.1, dtype=dtype),
                        nn.Dense(6, 2, dtype=dtype))
    pair = Pair(net, F.mse_loss, "mse", opt="rmsprop", dtype=dtype)
    for t in range(25):
        pair.step(data(rng, 8, 5, dtype), data(rng, 8, 2, dtype))
    pair.assert_same()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dropout_masks_follow_the_seeds(dtype):
    rng = np.random.default_rng(6)
    gc.manual_seed(6)
    net = nn.Sequential(nn.Dense(5, 16, activation="relu", dtype=dtype), nn.Dropout(0.3), nn.Dense(16, 16, dtype=dtype),
                        nn.Dropout(0.0), nn.Dropout(0.6), nn.Dense(16, 2, dtype=dtype))
    pair = Pair(net, F.mse_loss, "mse", opt="adam", dtype=dtype)
    assert pair.plan.num_dropout == 3
    for t in range(20):
        pair.step(data(rng, 10, 5, dtype), data(rng, 10, 2, dtype), seed=100 + t)
    pair.assert_same()
    # the output is the eager network's for the same seeds (the mask is a function of the seed)
    x = data(rng, 10, 5, dtype)
    pair.plan.forward_backward(x, data(rng, 10, 2, dtype), pair.seeds(7), 1.0, False)
    gc.manual_seed(7)
    np.testing.assert_array_equal(pair.plan.output(10), pair.net(x).data)


def test_dropout_of_one_zeroes_everything():
    rng = np.random.default_rng(7)
    net = nn.Sequential(nn.Dense(3, 4, dtype=np.float64), nn.Dropout(1.0), nn.Dense(4, 2, dtype=np.float64))
    pair = Pair(net, F.mse_loss, "mse", opt="sgd_plain")
    for t in range(3):
        pair.step(data(rng, 5, 3, np.float64), data(rng, 5, 2, np.float64))
    pair.assert_same()
    assert np.all(grad_view(pair.flat, pair.twin[0].weight) == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_residual_blocks_sum_their_gradients(dtype):
    rng = np.random.default_rng(8)
    gc.manual_seed(8)
    net = nn.Sequential(
        nn.Dense(6, 10, activation="relu", dtype=dtype),
        nn.Residual([nn.Dense(10, 10, activation="relu", dtype=dtype), nn.Dense(10, 10, dtype=dtype)]),
        nn.Residual([nn.LayerNorm(10, dtype=dtype), nn.Dense(10, 7, activation="gelu", dtype=dtype)]),  # projection
        nn.Dense(7, 2, dtype=dtype))
    assert net[2].projection is not None
    pair = Pair(net, F.mse_loss, "mse", opt="adamw", dtype=dtype)
    for t in range(25):
        pair.step(data(rng, 12, 6, dtype), data(rng, 12, 2, dtype))
    pair.assert_same()


def test_residual_on_the_input():
    rng = np.random.default_rng(9)
    net = nn.Sequential(nn.Residual([nn.Dense(4, 4, activation="tanh", dtype=np.float64)]), nn.Dense(4, 1, dtype=np.float64))
    pair = Pair(net, F.mse_loss, "mse", opt="sgd")
    for t in range(10):
        pair.step(data(rng, 6, 4, np.float64), data(rng, 6, 1, np.float64))
    pair.assert_same()


# ---------------------------------------------------------------------- losses
def targets(kind, rng, n, c, dtype):
    if kind in ("ce_labels", "sce_probs_keras"):
        return rng.integers(0, c, n).astype(np.int64)
    if kind in ("ce_probs", "cce_probs_keras"):
        t = rng.dirichlet(np.ones(c), n)
        return t.astype(dtype if kind == "ce_probs" else np.float64)
    t = (rng.random((n, c)) > 0.5).astype(np.float64)
    if kind in ("bce_probs_keras", "bce_probs_torch"):
        t[0, 0] = 0.3  # a soft target too
        return t
    return t.astype(dtype) if kind == "bce_logits" else rng.standard_normal((n, c)).astype(dtype)


LOSSES = {
    # kind: (eager loss, last activation of the net, classes)
    "mse": (F.mse_loss, None, 3),
    "bce_logits": (L.BCEWithLogitsLoss(), None, 2),
    "bce_probs_keras": (L.BinaryCrossentropy(), "sigmoid", 3),
    "bce_probs_torch": (L.BCELoss(), "sigmoid", 3),
    "ce_labels": (L.CrossEntropyLoss(), None, 4),
    "ce_probs": (L.CrossEntropyLoss(), None, 4),
    "cce_probs_keras": (L.CategoricalCrossentropy(), "softmax", 4),
    "sce_probs_keras": (L.SparseCategoricalCrossentropy(), "softmax", 4),
}


def assert_loss(kind, value, eager, dtype):
    """The fused kernels' losses are bit-identical. The probability losses take logs in C++
    (glibc) where the eager path uses NumPy's, whose SIMD log / log1p (AVX-512 builds) may
    differ in the last bit: their values agree to rounding; their gradients (no log) exactly."""
    if kind in ("bce_probs_keras", "bce_probs_torch", "cce_probs_keras", "sce_probs_keras"):
        assert value == pytest.approx(eager, rel=1e-13 if dtype == np.float64 else 2e-7)
    else:
        assert value == eager


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", list(LOSSES))
def test_every_loss_kind_matches_eager(kind, dtype):
    rng = np.random.default_rng(10)
    gc.manual_seed(10)
    loss, last, c = LOSSES[kind]
    net = nn.Sequential(nn.Dense(5, 8, activation="tanh", dtype=dtype), nn.Dense(8, c, activation=last, dtype=dtype))
    pair = Pair(net, loss, kind, opt="adam", dtype=dtype)
    for t in range(30):
        x = data(rng, 9, 5, dtype) * 3  # saturates some probabilities: the clipped branches run
        (value, *_), eager = pair.step(x, targets(kind, rng, 9, c, dtype))
        assert_loss(kind, value, eager, dtype)
    pair.assert_same()


@pytest.mark.parametrize("kind", ["bce_probs_keras", "bce_probs_torch", "cce_probs_keras"])
def test_probability_losses_at_the_clip_edges(kind):
    """Probabilities of exactly 0 and 1 (and within eps of them) reach the clipped branches."""
    loss, last, c = LOSSES[kind]
    net = nn.Sequential(nn.Dense(2, c, dtype=np.float64), nn.Activation("relu"))
    pair = Pair(net, loss, kind, opt="sgd_plain")
    x = np.array([[0.0, 0.0], [1.0, 0.5], [0.2, 0.1], [1.0 - 1e-8, 0.0]])
    w = pair.twin[0].weight.data
    for W in (pair.twin[0].weight.data, pair.net[0].weight.data):
        W[...] = 0.0
        W[0, 0] = 1.0 if kind != "cce_probs_keras" else 0.5
        W[-1, 1] = 1e-9
    for b in (pair.twin[0].bias.data, pair.net[0].bias.data):
        b[...] = 0.0 if kind != "cce_probs_keras" else 0.1
    assert w.max() == (1.0 if kind != "cce_probs_keras" else 0.5)
    y = targets(kind, np.random.default_rng(11), 4, c, np.float64)
    (value, *_), eager = pair.step(x, y)
    assert_loss(kind, value, eager, np.float64)
    pair.assert_same()


def test_probabilities_out_of_range_raise_like_eager_and_roll_back_batchnorm():
    net = nn.Sequential(nn.Dense(3, 4, dtype=np.float64), nn.BatchNorm(4, dtype=np.float64), nn.Dense(4, 2, dtype=np.float64))
    pair = Pair(net, L.BCELoss(), "bce_probs_torch", opt="sgd_plain")
    bn = pair.twin[1]
    before = bn.running_mean.copy(), bn.running_var.copy(), int(bn.num_batches_tracked)
    params = pair.flat.data.copy()
    x = np.random.default_rng(0).standard_normal((6, 3)) * 5
    y = np.zeros((6, 2))
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input must hold probabilities in \[0, 1\]"):
        pair.plan.step(x, y, None, 1.0, False, hyper("sgd", pair.opt2))
    with pytest.raises(ValueError, match="in .0, 1."):
        pair.eager_loss(x, y)
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    np.testing.assert_array_equal(pair.flat.data, params)


# ---------------------------------------------------------------------- gradients, statistics, accumulation
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_backward_gradients_and_sumsq(dtype):
    rng = np.random.default_rng(12)
    net = nn.Sequential(nn.Dense(5, 70, activation="silu", dtype=dtype), nn.BatchNorm(70, dtype=dtype),
                        nn.Dense(70, 500, activation="relu", dtype=dtype),  # 35000 values: measured at once
                        nn.Dense(500, 3, l2=0.02, dtype=dtype))
    pair = Pair(net, F.mse_loss, "mse", opt="adam", dtype=dtype)
    x, y = data(rng, 10, 5, dtype), data(rng, 10, 3, dtype)
    value = pair.plan.forward_backward(x, y, None, 1.0, False)
    eager, out = pair.eager_loss(x, y)
    assert value == eager
    np.testing.assert_array_equal(pair.plan.output(10), out.data)
    eflat = pair.net.flat_buffers()[0]
    np.testing.assert_array_equal(pair.flat.grad, eflat.grad)
    expect = np.empty(len(pair.flat))
    assert _C.grad_sumsq(eflat.grad, eflat.offsets, expect) == -1
    np.testing.assert_array_equal(pair.opt2._slots[0].sumsq, expect)
    # NumPy oracle for the first layer's weight gradient through BatchNorm's statistics would
    # duplicate the eager graph; the eager path is the oracle here. The sum of squares is NumPy's:
    np.testing.assert_allclose(expect, [np.sum(g.astype(np.float64) ** 2) for g in pair.flat.grad_views], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_accumulation_adds_like_eager(dtype):
    rng = np.random.default_rng(13)
    net = nn.Sequential(nn.Dense(4, 6, activation="relu", dtype=dtype), nn.PReLU(6, dtype=dtype),
                        nn.LayerNorm(6, dtype=dtype), nn.Dense(6, 2, l2=0.01, dtype=dtype))
    pair = Pair(net, F.mse_loss, "mse", opt="adam", dtype=dtype)
    batches = [(data(rng, 5, 4, dtype), data(rng, 5, 2, dtype)) for _ in range(3)]
    weights = (0.3, 0.5, 0.2)
    pair.opt.zero_grad()
    for i, ((x, y), w) in enumerate(zip(batches, weights)):
        pair.plan.forward_backward(x, y, None, w, i > 0)
        pair.eager_loss(x, y, weight=w)
    eflat = pair.net.flat_buffers()[0]
    np.testing.assert_array_equal(pair.flat.grad, eflat.grad)
    norm, bad, coef = pair.plan.apply_update(hyper("adam", pair.opt2), 0.0, 0.0, 0.0)
    pair.opt.step()
    assert (bad, norm, coef) == (-1, pair.opt.last_grad_norm, 1.0)
    pair.assert_same()


def test_step_equals_forward_backward_then_apply_update():
    rng = np.random.default_rng(14)
    net = nn.Sequential(nn.Dense(4, 6, activation="relu", dtype=np.float32), nn.Dense(6, 2, dtype=np.float32))
    a = Pair(net, F.mse_loss, "mse", opt="adam", clip={"global_clip_norm": 0.1}, dtype=np.float32)
    b = Pair(net, F.mse_loss, "mse", opt="adam", clip={"global_clip_norm": 0.1}, dtype=np.float32)
    for t in range(5):
        x, y = data(rng, 8, 4, np.float32), data(rng, 8, 2, np.float32)
        r1 = a.plan.step(x, y, None, 1.0, False, hyper("adam", a.opt2), 0.0, 0.0, 0.1)
        loss = b.plan.forward_backward(x, y, None, 1.0, False)
        r2 = b.plan.apply_update(hyper("adam", b.opt2), 0.0, 0.0, 0.1)
        assert r1 == (loss,) + r2
        a.opt2._slots[0].steps += 1
        b.opt2._slots[0].steps += 1
    np.testing.assert_array_equal(a.flat.data, b.flat.data)


def test_nonfinite_gradient_skips_the_step_and_restores_batchnorm():
    rng = np.random.default_rng(15)
    net = nn.Sequential(nn.Dense(4, 6, dtype=np.float64), nn.BatchNorm(6, dtype=np.float64), nn.Dense(6, 2, dtype=np.float64))
    pair = Pair(net, F.mse_loss, "mse", opt="adam")
    pair.step(data(rng, 8, 4, np.float64), data(rng, 8, 2, np.float64))
    bn = pair.twin[1]
    saved = (pair.flat.data.copy(), {k: v.copy() for k, v in pair.opt2._slots[0].state.items()},
             bn.running_mean.copy(), bn.running_var.copy(), int(bn.num_batches_tracked))
    x, y = data(rng, 8, 4, np.float64), data(rng, 8, 2, np.float64)
    y[3, 1] = np.inf  # an infinite target: every gradient is non-finite, the first tensor is reported
    loss, norm, bad, coef = pair.plan.step(x, y, None, 1.0, False, hyper("adam", pair.opt2))
    assert bad == 0 and pair.plan.sumsq_bad == 0
    assert not math.isfinite(norm)
    np.testing.assert_array_equal(pair.flat.data, saved[0])
    for k, v in saved[1].items():
        np.testing.assert_array_equal(pair.opt2._slots[0].state[k], v)
    np.testing.assert_array_equal(bn.running_mean, saved[2])
    np.testing.assert_array_equal(bn.running_var, saved[3])
    assert int(bn.num_batches_tracked) == saved[4]
    # and the eager optimizer skips the same step
    pair.opt.zero_grad()
    pair.eager_loss(x, y)
    pair.opt.step()
    assert pair.opt.last_skipped and pair.opt.last_nonfinite_param is pair.net[0].weight
    assert (norm != norm and pair.opt.last_grad_norm != pair.opt.last_grad_norm) or norm == pair.opt.last_grad_norm


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(16)
    net = nn.Sequential(nn.Dense(64, 256, activation="relu", dtype=np.float32), nn.BatchNorm(256, dtype=np.float32),
                        nn.Dense(256, 10, dtype=np.float32))
    x, y = data(rng, 512, 64, np.float32), rng.integers(0, 10, 512)
    results = []
    before = gc.get_num_threads()
    try:
        for threads in (1, 2):
            gc.set_num_threads(threads)
            pair = Pair(net, L.CrossEntropyLoss(), "ce_labels", opt="adam", dtype=np.float32)
            for t in range(3):
                pair.plan.step(x, y, None, 1.0, False, hyper("adam", pair.opt2), 0.0, 0.0, 1.0)
                pair.opt2._slots[0].steps += 1
            results.append(pair.flat.data.copy())
    finally:
        gc.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


# ---------------------------------------------------------------------- memory
def test_workspace_is_allocated_once_per_batch_size():
    rng = np.random.default_rng(17)
    net = nn.Sequential(nn.Dense(8, 32, activation="relu", dtype=np.float32), nn.Dropout(0.2),
                        nn.BatchNorm(32, dtype=np.float32), nn.Dense(32, 4, dtype=np.float32))
    pair = Pair(net, L.CrossEntropyLoss(), "ce_labels", opt="adam", dtype=np.float32)
    x, y = data(rng, 16, 8, np.float32), rng.integers(0, 4, 16)
    h = hyper("adam", pair.opt2)
    seeds = np.array([5], dtype=np.uint64)
    pair.plan.step(x, y, seeds, 1.0, False, h, 0.0, 0.0, 1.0)
    first = pair.plan.nbytes
    assert first >= 16 * (32 * 4 + 4 * 2) * 4  # activations and gradients at least
    live, _ = _C.plan_memory_stats()
    _C.reset_plan_memory_stats()
    for t in range(200):
        pair.plan.step(x, y, seeds, 1.0, t % 2 == 1, h, 0.0, 0.0, 1.0)
    assert _C.plan_memory_stats() == (live, 0)
    pair.plan.step(x[:5], y[:5], seeds, 1.0, False, h)  # a new batch size: one more workspace
    live2, allocs = _C.plan_memory_stats()
    assert allocs >= 1 and live2 > live and pair.plan.nbytes > first
    _C.reset_plan_memory_stats()
    for t in range(20):
        pair.plan.step(x[:5], y[:5], seeds, 1.0, False, h)
        pair.plan.step(x, y, seeds, 1.0, False, h)
    assert _C.plan_memory_stats() == (live2, 0)
    del pair
    assert _C.plan_memory_stats()[0] < live2


# ---------------------------------------------------------------------- bad input
def make_simple(dtype=np.float64, loss="mse", c=2):
    net = nn.Sequential(nn.Dense(3, 4, activation="relu", dtype=dtype), nn.BatchNorm(4, dtype=dtype),
                        nn.Dropout(0.5), nn.Dense(4, c, dtype=dtype))
    return Pair(net, F.mse_loss if loss == "mse" else L.CrossEntropyLoss(), loss, opt="adam", dtype=dtype)


@pytest.mark.parametrize("call, error, match", [
    (lambda p, x, y, s: p.plan.step(x.astype(np.float32), y, s, 1.0, False, hyper("adam", p.opt2)), TypeError,
     "x must have the plan's dtype float64, got float32"),
    (lambda p, x, y, s: p.plan.step(np.ascontiguousarray(x[:, :2]), y, s, 1.0, False, hyper("adam", p.opt2)), ValueError,
     r"x must have shape \(batch, 3\), got \(6, 2\)"),
    (lambda p, x, y, s: p.plan.step(x, y[:4], s, 1.0, False, hyper("adam", p.opt2)), ValueError,
     r"y must have shape \(6, 2\)"),
    (lambda p, x, y, s: p.plan.step(x, y.astype(np.float32), s, 1.0, False, hyper("adam", p.opt2)), TypeError,
     "y must have dtype float64"),
    (lambda p, x, y, s: p.plan.step(x, y, None, 1.0, False, hyper("adam", p.opt2)), ValueError,
     "one uint64 seed per dropout node"),
    (lambda p, x, y, s: p.plan.step(x, y, s.astype(np.int64), 1.0, False, hyper("adam", p.opt2)), TypeError,
     "seeds must have dtype uint64"),
    (lambda p, x, y, s: p.plan.step(x, y, np.zeros(2, np.uint64), 1.0, False, hyper("adam", p.opt2)), ValueError,
     r"seeds must have shape \(1,\)"),
    (lambda p, x, y, s: p.plan.step(x, y, s, 1.0, False, (0.1, 0.9)), ValueError, "hyper must hold 8 numbers"),
    (lambda p, x, y, s: p.plan.step(x, y, s, 1.0, False, hyper("adam", p.opt2)[:6] + (0.0, 0.5)), ValueError,
     "bias corrections"),
    (lambda p, x, y, s: p.plan.step(x, y, s, 1.0, False, hyper("adam", p.opt2), -1.0), ValueError, "must be >= 0"),
    (lambda p, x, y, s: p.plan.step(x[:1], y[:1], s, 1.0, False, hyper("adam", p.opt2)), ValueError,
     "more than 1 value per channel"),
    (lambda p, x, y, s: p.plan.step(x.tolist(), y, s, 1.0, False, hyper("adam", p.opt2)), TypeError,
     "x must be a numpy.ndarray, got list"),
    (lambda p, x, y, s: p.plan.step(np.asfortranarray(x), y, s, 1.0, False, hyper("adam", p.opt2)), ValueError,
     "C-contiguous"),
    (lambda p, x, y, s: p.plan.step(x, y, s, math.nan, False, hyper("adam", p.opt2)), ValueError, "scale must be finite"),
])
def test_bad_input_raises_and_changes_nothing(call, error, match):
    pair = make_simple()
    rng = np.random.default_rng(18)
    x, y, s = data(rng, 6, 3, np.float64), data(rng, 6, 2, np.float64), np.array([1], dtype=np.uint64)
    bn = pair.twin[1]
    before = (pair.flat.data.copy(), pair.flat.grad.copy(), bn.running_mean.copy(), int(bn.num_batches_tracked),
              {k: v.copy() for k, v in pair.opt2._slots[0].state.items()})
    with pytest.raises(error, match=match):
        call(pair, x, y, s)
    np.testing.assert_array_equal(pair.flat.data, before[0])
    np.testing.assert_array_equal(pair.flat.grad, before[1])
    np.testing.assert_array_equal(bn.running_mean, before[2])
    assert int(bn.num_batches_tracked) == before[3]
    for k, v in before[4].items():
        np.testing.assert_array_equal(pair.opt2._slots[0].state[k], v)


def test_labels_are_checked_before_running():
    pair = make_simple(loss="ce_labels", c=3)
    x = np.ones((4, 3))
    s = np.array([1], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"label 3 at row 2 is out of range for 3 classes"):
        pair.plan.forward_backward(x, np.array([0, 1, 3, 2]), s, 1.0, False)
    with pytest.raises(TypeError, match="y must be int64 class labels"):
        pair.plan.forward_backward(x, np.array([0.0, 1, 2, 2]), s, 1.0, False)
    with pytest.raises(ValueError, match=r"labels of shape \(4,\)"):
        pair.plan.forward_backward(x, np.array([0, 1, 2]), s, 1.0, False)
    assert int(pair.twin[1].num_batches_tracked) == 0


def test_building_errors_name_the_problem():
    p = _C.Plan(np.float32)
    W, b = np.zeros((4, 3), np.float32), np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="plan's dtype float32, got float64"):
        p.dense(-1, W.astype(np.float64), None, None, None)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\), got \(3,\)"):
        p.dense(-1, W, b[:3], None, None)
    with pytest.raises(ValueError, match="unknown activation 'relu6'"):
        p.dense(-1, W, b, None, None, "relu6")
    with pytest.raises(ValueError, match="src 3 is not an existing node"):
        p.activation(3, "relu")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        _C.Plan(np.int32)
    with pytest.raises(ValueError, match="unknown loss kind 'hinge'"):
        p.set_loss(-1, "hinge")
    with pytest.raises(ValueError, match="not the input"):
        p.set_loss(-1, "mse")
    a = p.dense(-1, W, b, None, None)
    d = p.dense(a, np.zeros((2, 5), np.float32), None, None, None)
    p.set_loss(d, "mse")
    grad = np.zeros(4, np.float32)
    p.set_grads(grad, np.array([0, 4], np.int64))
    with pytest.raises(ValueError, match=r"node 1 \(dense\) expects width 5 but its source 0 has width 4"):
        p.forward_backward(np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32))
    q = _C.Plan(np.float64)
    q.dense(-1, np.zeros((2, 3)), None, np.zeros((2, 3)), None)
    q.set_loss(0, "mse")
    q.set_grads(np.zeros(6), np.array([0, 6], np.int64))
    with pytest.raises(ValueError, match="not a view of the flat gradient buffer"):
        q.forward_backward(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="set_optimizer was not called"):
        q.step(np.zeros((2, 3)), np.zeros((2, 2)), None, 1.0, False, (0.1,) * 6)
    r = _C.Plan(np.float64)
    with pytest.raises(ValueError, match="set_loss was not called"):
        r.forward_backward(np.zeros((2, 3)), np.zeros((2, 2)))


def test_output_view_is_read_only_and_outlives_nothing():
    pair = make_simple()
    x, y = np.ones((4, 3)), np.zeros((4, 2))
    with pytest.raises(ValueError, match="no run with batch size 4"):
        pair.plan.output(4)
    pair.plan.forward_backward(x, y, np.array([3], np.uint64), 1.0, False)
    out = pair.plan.output(4)
    assert out.shape == (4, 2) and not out.flags.writeable
    assert out.base is not None


def test_the_graph_is_frozen_once_the_plan_has_run():
    pair = make_simple()
    x, y, s = np.ones((4, 3)), np.zeros((4, 2)), np.array([3], np.uint64)
    pair.plan.forward_backward(x, y, s, 1.0, False)
    out = pair.plan.output(4).copy()
    with pytest.raises(ValueError, match="already run"):
        pair.plan.activation(0, "relu")
    with pytest.raises(ValueError, match="already run"):
        pair.plan.set_loss(0, "mse")
    np.testing.assert_array_equal(pair.plan.output(4), out)


def test_set_grads_unbinds_the_optimizer_and_apply_update_needs_a_gradient():
    pair = make_simple()
    h = hyper("adam", pair.opt2)
    with pytest.raises(ValueError, match="no complete forward_backward"):
        pair.plan.apply_update(h)
    pair.plan.set_grads(pair.flat.grad, pair.flat.offsets)
    rng = np.random.default_rng(19)
    x, y, s = data(rng, 4, 3, np.float64), data(rng, 4, 2, np.float64), np.array([3], np.uint64)
    with pytest.raises(ValueError, match="set_optimizer was not called"):
        pair.plan.step(x, y, s, 1.0, False, h)
    # forward_backward alone works without an optimizer (split mode)
    pair.plan.forward_backward(x, y, s, 1.0, False)
    slot = pair.opt2._slots[0]
    pair.plan.set_optimizer("adam", pair.flat.data, optimizer_states("adam", pair.opt2), slot.sumsq, slot.scales)
    params = pair.flat.data.copy()
    pair.plan.step(x, y, s, 1.0, False, h)
    assert not np.array_equal(pair.flat.data, params)


def test_set_optimizer_validates_its_buffers():
    pair = make_simple()
    slot = pair.opt2._slots[0]
    m, v, vmax = optimizer_states("adam", pair.opt2)
    with pytest.raises(ValueError, match="adam takes 3 state arrays, got 2"):
        pair.plan.set_optimizer("adam", pair.flat.data, (m, v), slot.sumsq, slot.scales)
    with pytest.raises(ValueError, match="state m is required"):
        pair.plan.set_optimizer("adam", pair.flat.data, (None, v, None), slot.sumsq, slot.scales)
    with pytest.raises(ValueError, match="v must have"):
        pair.plan.set_optimizer("adam", pair.flat.data, (m, v[:3], None), slot.sumsq, slot.scales)
    with pytest.raises(ValueError, match="m and v share memory"):
        pair.plan.set_optimizer("adam", pair.flat.data, (m, m, None), slot.sumsq, slot.scales)
    with pytest.raises(TypeError, match="sumsq must have dtype float64"):
        pair.plan.set_optimizer("adam", pair.flat.data, (m, v, None), slot.sumsq.astype(np.float32), slot.scales)
    with pytest.raises(ValueError, match="unknown optimizer kind 'lion'"):
        pair.plan.set_optimizer("lion", pair.flat.data, (m,), slot.sumsq, slot.scales)


def test_a_second_thread_is_refused_while_the_plan_runs():
    import threading

    rng = np.random.default_rng(20)
    net = nn.Sequential(nn.Dense(64, 256, activation="relu", dtype=np.float32), nn.Dense(256, 1, dtype=np.float32))
    pair = Pair(net, F.mse_loss, "mse", opt="sgd_plain", dtype=np.float32)
    x, y = data(rng, 2048, 64, np.float32), data(rng, 2048, 1, np.float32)
    h = hyper("sgd", pair.opt2)
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            pair.plan.step(x, y, None, 1.0, False, h)

    t = threading.Thread(target=worker)
    t.start()
    refused = 0
    try:
        for _ in range(200):
            try:
                pair.plan.forward_backward(x, y, None, 1.0, False)
            except RuntimeError as e:
                assert "running in another thread" in str(e)
                refused += 1
                if refused >= 3:
                    break
    finally:
        stop.set()
        t.join()
    assert refused >= 3
    assert np.all(np.isfinite(pair.flat.data))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_and_log_softmax_nodes(dtype):
    rng = np.random.default_rng(21)
    gc.manual_seed(21)
    net = nn.Sequential(nn.Dense(5, 6, activation="log_softmax", dtype=dtype), nn.Dense(6, 4, dtype=dtype),
                        nn.Softmax(), nn.Dense(4, 4, dtype=dtype), nn.LogSoftmax())
    pair = Pair(net, F.mse_loss, "mse", opt="adam", dtype=dtype)
    assert pair.plan.num_nodes == 6
    for t in range(20):
        pair.step(data(rng, 7, 5, dtype), data(rng, 7, 4, dtype) - 1.5)
    pair.assert_same()


@pytest.mark.parametrize("first", [lambda: nn.Dropout(0.25), lambda: nn.Tanh(), lambda: nn.PReLU(1, dtype=np.float64),
                                   lambda: nn.LayerNorm(5, elementwise_affine=False, dtype=np.float64)])
def test_input_width_is_inferred_through_width_preserving_layers(first):
    rng = np.random.default_rng(22)
    net = nn.Sequential(first(), nn.Dense(5, 3, activation="relu", dtype=np.float64), nn.Dense(3, 1, dtype=np.float64))
    pair = Pair(net, F.mse_loss, "mse", opt="sgd")
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 5\), got \(4, 6\)"):
        pair.plan.forward_backward(data(rng, 4, 6, np.float64), data(rng, 4, 1, np.float64), pair.seeds(0), 1.0, False)
    for t in range(5):
        pair.step(data(rng, 4, 5, np.float64), data(rng, 4, 1, np.float64), seed=t)
    pair.assert_same()


def test_input_width_from_x_when_no_layer_fixes_it():
    plan = _C.Plan(np.float64)
    a = plan.activation(-1, "tanh")
    n = plan.layernorm(a, None, None, None, None, 1e-5)
    plan.set_loss(n, "mse")
    plan.set_grads(np.zeros(0), np.array([0], np.int64))
    x = np.random.default_rng(23).standard_normal((3, 4))
    loss = plan.forward_backward(x, np.zeros((3, 4)), None, 1.0, False)
    expect = F.mse_loss(F.layer_norm(F.tanh(x), (4,)), np.zeros((3, 4)))
    assert loss == float(expect.item())
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\)"):
        plan.forward_backward(x[:, :3].copy(), np.zeros((3, 3)), None, 1.0, False)


def test_a_failing_run_undoes_only_its_own_batchnorm_update():
    net = nn.Sequential(nn.Dense(3, 4, dtype=np.float64), nn.BatchNorm(4, dtype=np.float64),
                        nn.Dense(4, 2, activation="sigmoid", dtype=np.float64), nn.Dense(2, 2, dtype=np.float64))
    pair = Pair(net, L.BCELoss(), "bce_probs_torch", opt="sgd_plain")
    bn = pair.twin[1]
    rng = np.random.default_rng(24)
    x = data(rng, 6, 3, np.float64)
    y = np.zeros((6, 2))
    with pytest.raises(ValueError, match="probabilities"):
        pair.plan.forward_backward(x * 50, y, None, 1.0, False)
    assert int(bn.num_batches_tracked) == 0
    # an accumulation group: the first batch's update stays when the second batch fails
    pair.twin[3].weight.data[...] = 0.0
    pair.twin[3].bias.data[...] = 0.5
    pair.plan.forward_backward(x, y, None, 0.5, False)
    after_first = bn.running_mean.copy(), bn.running_var.copy()
    assert int(bn.num_batches_tracked) == 1
    pair.twin[3].bias.data[...] = 2.0  # outputs of 2: not probabilities
    with pytest.raises(ValueError, match="probabilities"):
        pair.plan.forward_backward(x, y, None, 0.5, True)
    np.testing.assert_array_equal(bn.running_mean, after_first[0])
    np.testing.assert_array_equal(bn.running_var, after_first[1])
    assert int(bn.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="no complete forward_backward"):
        pair.plan.apply_update(hyper("sgd", pair.opt2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sumsq_and_the_first_bad_tensor_cover_the_whole_buffer(dtype):
    """A tensor no node writes (here a spare one) is zeroed on '=' and measured; with '+=' a
    NaN already in the buffer is found, and the lowest bad tensor index is reported, whether
    the tensor is measured right after its node (large) or with the others at the end (small)."""
    rng = np.random.default_rng(25)
    W1, b1 = rng.standard_normal((200, 4)).astype(dtype), np.zeros(200, dtype)
    W2 = (rng.standard_normal((200, 200)) * 0.05).astype(dtype)
    off = np.array([0, 800, 1000, 41000, 41005], np.int64)
    grad = np.zeros(41005, dtype)
    plan = _C.Plan(dtype)
    h = plan.dense(-1, W1, b1, grad[0:800].reshape(200, 4), grad[800:1000], "tanh")
    o = plan.dense(h, W2, None, grad[1000:41000].reshape(200, 200), None)
    plan.set_loss(o, "mse")
    plan.set_grads(grad, off)
    x, y = data(rng, 5, 4, dtype), data(rng, 5, 200, dtype)
    grad[41000:] = np.nan
    plan.forward_backward(x, y, None, 1.0, False)
    assert plan.sumsq_bad == -1 and np.all(grad[41000:] == 0)  # the spare tensor is zeroed
    grad[41002] = np.nan
    plan.forward_backward(x, y, None, 1.0, True)
    assert plan.sumsq_bad == 3
    grad[5000] = np.inf  # the large second weight (measured at once)
    plan.forward_backward(x, y, None, 1.0, True)
    assert plan.sumsq_bad == 2
    grad[900] = np.inf  # the first bias (measured at the end with the small ones)
    plan.forward_backward(x, y, None, 1.0, True)
    assert plan.sumsq_bad == 1
    expect = np.empty(4)
    assert _C.grad_sumsq(grad, off, expect) == 1
