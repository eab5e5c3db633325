"""gradcore.optim: every optimizer, flag and clipping mode against a NumPy reference of its
formula written here, PyTorch parity in float64 (skipped without torch), the non-finite
policies, state_dict round trips, the per-layer update_params style and the kernels' guards."""
import math
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, _C
from gradcore.flat import flatten_parameters
from gradcore.optim import (
    SGD, Adagrad, Adam, AdamW, GradNoise, RMSprop, clip_grad_norm_, clip_grad_value_,
)

# one tensor above the parallel grain and the 16K-element chunk, the rest small
SHAPES = [(7, 5), (13,), (3, 4, 2), (1,), (200, 201)]
STEPS = 50
TOL = {np.float64: dict(rtol=1e-11, atol=1e-13), np.float32: dict(rtol=2e-4, atol=2e-5)}


# ---------------------------------------------------------------------- NumPy references
def ref_clip(grads, clip_value=None, clip_norm=None, global_clip_norm=None):
    """Keras clipnorm per tensor, then PyTorch's clip_grad_norm_, then clip by value."""
    T = grads[0].dtype.type
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    if clip_norm is not None:
        out = []
        for g in grads:
            n = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
            out.append(g * T(clip_norm / max(n, clip_norm)))
        grads = out
    if global_clip_norm is not None:
        total = math.sqrt(sum(math.sqrt(float(np.sum(g.astype(np.float64) ** 2))) ** 2 for g in grads))
        coef = min(1.0, global_clip_norm / (total + 1e-6))
        grads = [g * T(coef) for g in grads]
    if clip_value is not None:
        grads = [np.clip(g, T(-clip_value), T(clip_value)) for g in grads]
    return grads, norm


class RefSGD:
    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        self.p = [x.copy() for x in params]
        self.lr, self.mom, self.damp, self.wd, self.nesterov = lr, momentum, dampening, weight_decay, nesterov
        self.buf = [None] * len(params)

    def update(self, i, g, t):
        p, T = self.p[i], self.p[i].dtype.type
        g = g + T(self.wd) * p
        if self.mom:
            if self.buf[i] is None:
                self.buf[i] = g.copy()
            else:
                self.buf[i] = T(self.mom) * self.buf[i] + T(1 - self.damp) * g
            g = g + T(self.mom) * self.buf[i] if self.nesterov else self.buf[i]
        self.p[i] = p - T(self.lr) * g

    def state(self):
        return {"momentum_buffer": self.buf} if self.mom else {}


class RefAdam:
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        self.p = [x.copy() for x in params]
        self.lr, (self.b1, self.b2), self.eps, self.wd, self.ams = lr, betas, eps, weight_decay, amsgrad
        self.m = [np.zeros_like(x) for x in params]
        self.v = [np.zeros_like(x) for x in params]
        self.vmax = [np.zeros_like(x) for x in params]

    def update(self, i, g, t):
        p, T = self.p[i], self.p[i].dtype.type
        if self.decoupled:
            p = p * T(1 - self.lr * self.wd)
        else:
            g = g + T(self.wd) * p
        self.m[i] = T(self.b1) * self.m[i] + T(1 - self.b1) * g
        self.v[i] = T(self.b2) * self.v[i] + T(1 - self.b2) * g * g
        vhat = self.v[i]
        if self.ams:
            self.vmax[i] = np.maximum(self.vmax[i], self.v[i])
            vhat = self.vmax[i]
        bc1, bc2 = 1 - self.b1 ** t, 1 - self.b2 ** t
        self.p[i] = p - T(self.lr / bc1) * (self.m[i] / (np.sqrt(vhat) / T(math.sqrt(bc2)) + T(self.eps)))

    def state(self):
        s = {"m": self.m, "v": self.v}
        if self.ams:
            s["v_max"] = self.vmax
        return s


class RefAdamW(RefAdam):
    decoupled = True

    def __init__(self, params, weight_decay=0.01, **kw):
        super().__init__(params, weight_decay=weight_decay, **kw)


class RefRMSprop:
    def __init__(self, params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        self.p = [x.copy() for x in params]
        self.lr, self.alpha, self.eps, self.wd, self.mom, self.centered = lr, alpha, eps, weight_decay, momentum, centered
        self.sq = [np.zeros_like(x) for x in params]
        self.ga = [np.zeros_like(x) for x in params]
        self.buf = [np.zeros_like(x) for x in params]

    def update(self, i, g, t):
        p, T = self.p[i], self.p[i].dtype.type
        g = g + T(self.wd) * p
        self.sq[i] = T(self.alpha) * self.sq[i] + T(1 - self.alpha) * g * g
        var = self.sq[i]
        if self.centered:
            self.ga[i] = T(self.alpha) * self.ga[i] + T(1 - self.alpha) * g
            var = np.maximum(var - self.ga[i] * self.ga[i], T(0))
        avg = np.sqrt(var) + T(self.eps)
        if self.mom:
            self.buf[i] = T(self.mom) * self.buf[i] + g / avg
            self.p[i] = p - T(self.lr) * self.buf[i]
        else:
            self.p[i] = p - T(self.lr) * (g / avg)

    def state(self):
        s = {"square_avg": self.sq}
        if self.centered:
            s["grad_avg"] = self.ga
        if self.mom:
            s["momentum_buffer"] = self.buf
        return s


class RefAdagrad:
    def __init__(self, params, lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        self.p = [x.copy() for x in params]
        self.lr, self.decay, self.wd, self.eps = lr, lr_decay, weight_decay, eps
        self.sum = [np.full_like(x, initial_accumulator_value) for x in params]

    def update(self, i, g, t):
        p, T = self.p[i], self.p[i].dtype.type
        g = g + T(self.wd) * p
        clr = self.lr / (1 + (t - 1) * self.decay)
        self.sum[i] = self.sum[i] + g * g
        self.p[i] = p - T(clr) * (g / (np.sqrt(self.sum[i]) + T(self.eps)))

    def state(self):
        return {"sum": self.sum}


REFS = {SGD: RefSGD, Adam: RefAdam, AdamW: RefAdamW, RMSprop: RefRMSprop, Adagrad: RefAdagrad}


def ref_step(ref, grads, t, clip):
    grads, norm = ref_clip(grads, **clip)
    for i, g in enumerate(grads):
        ref.update(i, g, t)
    return norm


# ---------------------------------------------------------------------- fixtures
def make_params(rng, dtype, shapes=SHAPES):
    return [Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


def grads_for_step(rng, params, step):
    # alternate small and large gradients so global clipping is sometimes off, sometimes on
    scale = 0.01 if step % 3 == 0 else 1.0
    return [(rng.standard_normal(p.shape) * scale * (1 + i)).astype(p.dtype) for i, p in enumerate(params)]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = g.copy()  # a loose parameter, not yet in a flat buffer
        else:
            p.grad[...] = g


def flat_state(opt, name):
    """Per-parameter views of a flat state buffer."""
    out = []
    for flat, slot in zip(opt.flat_buffers, opt._slots):
        out += [flat.view(slot.state[name], i) for i in range(len(flat))]
    return out


CONFIGS = [
    (SGD, dict(lr=0.05)),
    (SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.01, amsgrad=True)),
    (Adam, dict(lr=0.01, weight_decay=0.05)),
    (Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True)),
    (AdamW, dict(lr=0.01)),
    (AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (RMSprop, dict(lr=0.01)),
    (RMSprop, dict(lr=0.01, centered=True)),
    (RMSprop, dict(lr=0.01, momentum=0.9)),
    (RMSprop, dict(lr=0.005, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01)),
    (Adagrad, dict(lr=0.1)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
]

CLIPS = [
    dict(),
    dict(clip_value=0.5),
    dict(clip_norm=4.0),
    dict(global_clip_norm=10.0),
    dict(clip_value=0.7, clip_norm=4.0, global_clip_norm=10.0),
]


def run_against_reference(cls, kw, clip, dtype, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    params = make_params(rng, dtype)
    ref = REFS[cls]([p.data for p in params], **kw)
    opt = cls(params, **kw, **clip)
    for step in range(steps):
        grads = grads_for_step(rng, params, step)
        set_grads(params, grads)
        opt.step()
        norm = opt.last_grad_norm  # step() returns the closure's loss, like torch
        ref_norm = ref_step(ref, grads, step + 1, clip)
        assert norm == pytest.approx(ref_norm, rel=1e-12)
    for p, r in zip(params, ref.p):
        np.testing.assert_allclose(p.data, r, **TOL[dtype])
    for name, ref_arrays in ref.state().items():
        for got, want in zip(flat_state(opt, name), ref_arrays):
            np.testing.assert_allclose(got, want, **TOL[dtype])
    assert opt.iterations == steps and opt.skipped_steps == 0
    return opt, params


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls,kw", CONFIGS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CONFIGS)])
def test_optimizer_matches_reference(cls, kw, dtype):
    run_against_reference(cls, kw, {}, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("clip", CLIPS[1:], ids=["value", "norm", "global", "all"])
@pytest.mark.parametrize("cls,kw", [CONFIGS[1], CONFIGS[7], CONFIGS[9], CONFIGS[13], CONFIGS[15]],
                         ids=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_clipping_modes_match_reference(cls, kw, clip, dtype):
    run_against_reference(cls, kw, clip, dtype)


def test_clipping_actually_changes_the_update():
    # the same run without clipping must end elsewhere, or the clip tests prove nothing
    _, clipped = run_against_reference(Adam, dict(lr=0.01, amsgrad=True), dict(clip_value=0.5), np.float64, steps=5)
    _, free = run_against_reference(Adam, dict(lr=0.01, amsgrad=True), {}, np.float64, steps=5)
    assert not np.allclose(clipped[0].data, free[0].data)


# ---------------------------------------------------------------------- non-finite policies
def snapshot(opt):
    out = [s.flat.data.tobytes() for s in opt._slots] + [s.steps.tobytes() for s in opt._slots]
    for s in opt._slots:
        out += [s.state[k].tobytes() for k in sorted(s.state)]
    return out


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("cls,kw", [CONFIGS[3], CONFIGS[7], CONFIGS[9], CONFIGS[13], CONFIGS[15]],
                         ids=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_nonfinite_skip_leaves_everything_bit_identical(cls, kw, bad):
    rng = np.random.default_rng(3)
    params = make_params(rng, np.float64)
    ref = REFS[cls]([p.data for p in params], **kw)
    opt = cls(params, **kw, global_clip_norm=5.0)
    t = 0
    for step in range(6):
        grads = grads_for_step(rng, params, step)
        if step in (2, 4):
            grads[4 if step == 2 else 1].flat[7] = bad
        set_grads(params, grads)
        before = snapshot(opt)
        opt.step()
        norm = opt.last_grad_norm  # step() returns the closure's loss, like torch
        if step in (2, 4):
            assert not math.isfinite(norm)
            assert snapshot(opt) == before
        else:
            t += 1
            ref_step(ref, grads, t, dict(global_clip_norm=5.0))
    assert opt.skipped_steps == 2 and opt.iterations == 4
    for p, r in zip(params, ref.p):
        np.testing.assert_allclose(p.data, r, rtol=1e-12, atol=1e-14)


def test_nonfinite_raise_and_warn():
    rng = np.random.default_rng(4)
    for policy in ("raise", "warn"):
        params = make_params(rng, np.float32)
        opt = Adam(params, lr=0.1, amsgrad=True, nonfinite=policy)
        set_grads(params, grads_for_step(rng, params, 1))
        opt.step()
        params[2].grad[0, 1, 1] = np.nan
        before = snapshot(opt)
        if policy == "raise":
            with pytest.raises(FloatingPointError, match=r"parameter 2 of shape \(3, 4, 2\)"):
                opt.step()
        else:
            with pytest.warns(RuntimeWarning, match="non-finite gradient"):
                opt.step()
        assert snapshot(opt) == before and opt.skipped_steps == 1


def test_skip_is_silent():
    params = make_params(np.random.default_rng(5), np.float32)
    opt = SGD(params, lr=0.1)
    params[0].grad = np.full(params[0].shape, np.inf, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
        assert opt.last_grad_norm == math.inf and opt.last_skipped
    assert opt.skipped_steps == 1


def test_skip_with_noise_restores_the_noise_stream():
    # a run with a skipped NaN step in the middle ends exactly where the run without it does
    def run(with_nan):
        rng = np.random.default_rng(6)
        params = make_params(rng, np.float32)
        opt = Adam(params, lr=0.01, grad_noise=GradNoise(0.1, 0.55, seed=11), global_clip_norm=3.0)
        for step in range(5):
            set_grads(params, grads_for_step(rng, params, step))
            if with_nan and step == 2:
                keep = params[0].grad.copy()
                params[0].grad[0, 0] = np.nan
                opt.step()
                params[0].grad[...] = keep
            opt.step()
        return [p.data.copy() for p in params]

    for a, b in zip(run(True), run(False)):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------- gradient noise
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grad_noise_matches_reference(dtype):
    rng = np.random.default_rng(8)
    params = make_params(rng, dtype)
    kw = dict(lr=0.01, amsgrad=True)
    ref = RefAdam([p.data for p in params], **kw)
    opt = Adam(params, **kw, grad_noise=(0.3, 0.55, 123), clip_value=1.0)
    noise_rng = np.random.default_rng(123)
    sizes = [p.size for p in params]
    for step in range(20):
        grads = grads_for_step(rng, params, step)
        set_grads(params, grads)
        opt.step()
        z = noise_rng.standard_normal(sum(sizes), dtype=dtype) * dtype(0.3 / (1 + step) ** 0.55)
        parts = np.split(z, np.cumsum(sizes)[:-1])
        noisy = [g + n.reshape(g.shape) for g, n in zip(grads, parts)]
        ref_step(ref, noisy, step + 1, dict(clip_value=1.0))
        for p, g in zip(params, grads):
            assert np.array_equal(p.grad, g)  # the noise never lands in the gradient buffer
    for p, r in zip(params, ref.p):
        np.testing.assert_allclose(p.data, r, **TOL[dtype])


def test_grad_noise_follows_manual_seed():
    def run(seed):
        gradcore.manual_seed(seed)
        params = make_params(np.random.default_rng(0), np.float64, [(4, 3)])
        start = params[0].data.copy()
        opt = SGD(params, lr=0.1, grad_noise=0.5)
        params[0].grad = np.ones((4, 3))
        opt.step()
        return params[0].data.copy(), start - 0.1

    a, noiseless = run(42)
    b, _ = run(42)
    c, _ = run(43)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, noiseless)


# ---------------------------------------------------------------------- buffers and layouts
def test_mixed_dtypes_share_one_global_norm():
    rng = np.random.default_rng(9)
    params = make_params(rng, np.float64, SHAPES[:3]) + make_params(rng, np.float32, SHAPES[3:])
    opt = Adam(params, lr=0.01, global_clip_norm=2.0, clip_norm=3.0)
    assert len(opt.flat_buffers) == 5  # loose tensors are never moved: one buffer over each one's own array
    refs = [RefAdam([p.data for p in params[:3]], lr=0.01), RefAdam([p.data for p in params[3:]], lr=0.01)]
    for step in range(10):
        grads = grads_for_step(rng, params, step)
        set_grads(params, grads)
        opt.step()
        norm = opt.last_grad_norm  # step() returns the closure's loss, like torch
        # the reference clips across both dtypes at once, in float64, then casts
        clipped, ref_norm = ref_clip([g.astype(np.float64) for g in grads], clip_norm=3.0, global_clip_norm=2.0)
        assert norm == pytest.approx(ref_norm, rel=1e-12)
        for i, g in enumerate(clipped[:3]):
            refs[0].update(i, g, step + 1)
        for i, g in enumerate(clipped[3:]):
            refs[1].update(i, g.astype(np.float32), step + 1)
    for p, r in zip(params, refs[0].p + refs[1].p):
        np.testing.assert_allclose(p.data, r, **TOL[np.float32])


def test_results_do_not_depend_on_thread_count():
    def run(threads):
        old = gradcore.get_num_threads()
        gradcore.set_num_threads(threads)
        try:
            rng = np.random.default_rng(10)
            params = make_params(rng, np.float32, [(300, 400), (50,)])
            opt = Adam(params, lr=0.01, amsgrad=True, global_clip_norm=1.0)
            norms = []
            for step in range(3):
                set_grads(params, grads_for_step(rng, params, step))
                opt.step()
                norms.append(opt.last_grad_norm)
            return norms, [p.data.copy() for p in params]
        finally:
            gradcore.set_num_threads(old)

    n1, p1 = run(1)
    n2, p2 = run(2)
    assert n1 == n2
    assert all(np.array_equal(a, b) for a, b in zip(p1, p2))


def test_step_uses_existing_flat_buffer_and_backward_gradients():
    rng = np.random.default_rng(11)
    W = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    b = Tensor(np.zeros(3), requires_grad=True)
    flat = flatten_parameters([W, b])[0]
    opt = Adam([W, b], lr=0.05)
    assert opt.flat_buffers[0] is flat
    x, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 3))
    ref = RefAdam([W.data, b.data], lr=0.05)
    for step in range(5):
        opt.zero_grad()
        Xt = Tensor(x)
        loss = (((Xt @ W + b) - Tensor(y)) ** 2).mean()
        loss.backward()
        # analytic gradient of the mean squared error
        r = x @ ref.p[0] + ref.p[1] - y
        gW, gb = 2 * x.T @ r / r.size, 2 * r.sum(0) / r.size
        np.testing.assert_allclose(W.grad, gW, rtol=1e-10)
        opt.step()
        ref_step(ref, [gW, gb], step + 1, {})
    np.testing.assert_allclose(W.data, ref.p[0], rtol=1e-10)
    np.testing.assert_allclose(b.data, ref.p[1], rtol=1e-10, atol=1e-13)


def test_frozen_parameters_are_not_updated():
    rng = np.random.default_rng(12)
    a, frozen = make_params(rng, np.float64, [(3,), (2,)])
    frozen.requires_grad = False
    keep = frozen.data.copy()
    opt = SGD([a, frozen], lr=0.1, weight_decay=0.5)
    # torch.optim keeps a frozen parameter and skips it at step time (even with a gradient)
    assert [id(p) for p in opt.params] == [id(a), id(frozen)]
    a.grad = np.ones(3)
    frozen.grad = np.ones(2)
    opt.step()
    assert np.array_equal(frozen.data, keep)


# ---------------------------------------------------------------------- per-layer style
class Layer:
    def __init__(self, rng, n_in, n_out, dtype=np.float64):
        self.W = Tensor(rng.standard_normal((n_in, n_out)).astype(dtype), requires_grad=True)
        self.b = Tensor(rng.standard_normal(n_out).astype(dtype), requires_grad=True)

    def parameters(self):
        return [self.W, self.b]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_update_params_per_layer_matches_reference(dtype):
    rng = np.random.default_rng(13)
    layers = [Layer(rng, 6, 5, dtype), Layer(rng, 5, 4, dtype), Layer(rng, 4, 2, dtype)]
    opt = Adam(lr=0.02, amsgrad=True, global_clip_norm=2.0)  # registers layers lazily
    refs = [RefAdam([p.data for p in layer.parameters()], lr=0.02, amsgrad=True) for layer in layers]
    for step in range(STEPS):
        for layer, ref in zip(layers, refs):
            grads = grads_for_step(rng, layer.parameters(), step)
            set_grads(layer.parameters(), grads)
            norm = opt.update_params(layer)
            assert norm == pytest.approx(ref_step(ref, grads, step + 1, dict(global_clip_norm=2.0)), rel=1e-12)
    for layer, ref in zip(layers, refs):
        for p, r in zip(layer.parameters(), ref.p):
            np.testing.assert_allclose(p.data, r, **TOL[dtype])
    assert opt.iterations == STEPS


def test_update_params_on_a_shared_buffer_equals_step():
    # per-tensor math only (no global clip): updating layer by layer inside one network-wide
    # buffer gives bit-identical results to one step() over all parameters
    def build():
        rng = np.random.default_rng(14)
        layers = [Layer(rng, 6, 5), Layer(rng, 5, 4)]
        flatten_parameters([p for layer in layers for p in layer.parameters()])
        return layers

    a, b = build(), build()
    opt_a = RMSprop(lr=0.01, momentum=0.5, centered=True, clip_norm=1.0)
    opt_b = RMSprop([layer.parameters() for layer in b], lr=0.01, momentum=0.5, centered=True, clip_norm=1.0)
    rng = np.random.default_rng(15)
    for step in range(10):
        for la, lb in zip(a, b):
            grads = grads_for_step(rng, la.parameters(), step)
            set_grads(la.parameters(), grads)
            set_grads(lb.parameters(), grads)
        for la in a:
            opt_a.update_params(la)
        opt_b.step()
    assert len(opt_a.flat_buffers) == 1 and opt_a.flat_buffers[0] is a[0].W._flat
    for la, lb in zip(a, b):
        for pa, pb in zip(la.parameters(), lb.parameters()):
            assert np.array_equal(pa.data, pb.data)


def test_update_params_rejects_unmanaged_layer():
    rng = np.random.default_rng(16)
    opt = SGD(Layer(rng, 2, 2), lr=0.1)
    with pytest.raises(ValueError, match="not managed by this optimizer"):
        opt.update_params(Layer(rng, 2, 2))


# ---------------------------------------------------------------------- state_dict
@pytest.mark.parametrize("cls,kw", CONFIGS[1::2], ids=[c.__name__ for c, _ in CONFIGS[1::2]])
def test_state_dict_round_trip_is_bit_exact(cls, kw):
    rng = np.random.default_rng(17)
    params = make_params(rng, np.float32)
    opt = cls(params, **kw, global_clip_norm=5.0, grad_noise=(0.01, 0.5, 3))
    grads = [grads_for_step(rng, params, s) for s in range(12)]
    for g in grads[:6]:
        set_grads(params, g)
        opt.step()
    saved = opt.state_dict()
    copies = [Tensor(p.data.copy(), requires_grad=True) for p in params]
    opt2 = cls(copies, **kw)
    opt2.load_state_dict(saved)
    assert snapshot(opt2) == snapshot(opt)
    for g in grads[6:]:
        set_grads(params, g)
        set_grads(copies, g)
        opt.step()
        opt2.step()
    assert snapshot(opt2) == snapshot(opt)
    # the saved dict is a copy, not a view of the live state
    assert not np.array_equal(saved["buffers"][0]["steps"], opt._slots[0].steps)


def test_load_state_dict_rejects_other_layouts():
    rng = np.random.default_rng(18)
    params = make_params(rng, np.float64, [(3, 2)])
    saved = Adam(params, amsgrad=True).state_dict()
    plain = Adam(params)
    plain.load_state_dict(saved)  # torch's rule: the saved group values (amsgrad=True) replace the current ones
    assert plain.param_groups[0]["amsgrad"] is True
    with pytest.raises(ValueError, match="saved by 'Adam'"):
        SGD(params).load_state_dict(saved)
    with pytest.raises(ValueError, match="layout differs"):
        Adam(make_params(rng, np.float64, [(2, 2)]), amsgrad=True).load_state_dict(saved)


# ---------------------------------------------------------------------- standalone clipping
def test_clip_grad_norm_on_loose_and_flat_tensors():
    rng = np.random.default_rng(19)
    for flat in (False, True):
        params = make_params(rng, np.float64, SHAPES)
        grads = grads_for_step(rng, params, 1)
        if flat:
            flatten_parameters(params)
            set_grads(params, grads)
        else:
            for p, g in zip(params, grads):
                p.grad = g.copy()
        norm = clip_grad_norm_(params, 3.0)
        want, want_norm = ref_clip(grads, global_clip_norm=3.0)
        assert norm == pytest.approx(want_norm, rel=1e-12)
        for p, w in zip(params, want):
            np.testing.assert_allclose(p.grad, w, rtol=1e-13)


def test_clip_grad_norm_subset_of_flat_buffer():
    rng = np.random.default_rng(20)
    params = make_params(rng, np.float32, SHAPES)
    flatten_parameters(params)
    grads = grads_for_step(rng, params, 1)
    set_grads(params, grads)
    subset = [params[0], params[2], params[3]]  # two runs of the buffer
    norm = clip_grad_norm_(subset, 1.0)
    want, want_norm = ref_clip([grads[0], grads[2], grads[3]], global_clip_norm=1.0)
    assert norm == pytest.approx(want_norm, rel=1e-6)
    for p, w in zip(subset, want):
        np.testing.assert_allclose(p.grad, w, rtol=1e-6)
    assert np.array_equal(params[1].grad, grads[1]) and np.array_equal(params[4].grad, grads[4])


def test_clip_grad_norm_nonfinite():
    rng = np.random.default_rng(21)
    params = make_params(rng, np.float64, [(3,), (4,)])
    for p in params:
        p.grad = rng.standard_normal(p.shape)
    params[1].grad[2] = np.inf
    keep = [p.grad.copy() for p in params]
    assert clip_grad_norm_(params, 1.0) == math.inf
    assert all(np.array_equal(p.grad, k) for p, k in zip(params, keep))
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)


def test_clip_grad_value():
    rng = np.random.default_rng(22)
    params = make_params(rng, np.float32, SHAPES)
    flatten_parameters(params[:3])
    grads = grads_for_step(rng, params, 1)
    grads[1][3] = np.nan
    grads[4][0, 0] = -np.inf
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = g.copy()
        else:
            p.grad[...] = g
    clip_grad_value_(params, 0.25)
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad, np.clip(g, -0.25, 0.25))  # NaN stays NaN


# ---------------------------------------------------------------------- PyTorch parity
TORCH_CLIPS = [dict(), dict(clip_value=0.5), dict(global_clip_norm=10.0), dict(clip_value=0.7, global_clip_norm=10.0)]


def torch_optimizer(torch, cls, tparams, kw):
    name = {SGD: "SGD", Adam: "Adam", AdamW: "AdamW", RMSprop: "RMSprop", Adagrad: "Adagrad"}[cls]
    kw = dict(kw)
    if cls is AdamW:
        kw.setdefault("weight_decay", 0.01)
    return getattr(torch.optim, name)(tparams, **kw, foreach=False)


@pytest.mark.parametrize("clip", TORCH_CLIPS, ids=["none", "value", "global", "both"])
@pytest.mark.parametrize("cls,kw", CONFIGS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CONFIGS)])
def test_matches_torch_float64(cls, kw, clip):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(23)
    params = make_params(rng, np.float64, SHAPES[:4])
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = cls(params, **kw, **clip)
    topt = torch_optimizer(torch, cls, tparams, kw)
    for step in range(STEPS):
        grads = grads_for_step(rng, params, step)
        set_grads(params, grads)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        norm = opt.last_grad_norm  # step() returns the closure's loss, like torch
        if "global_clip_norm" in clip:
            tnorm = torch.nn.utils.clip_grad_norm_(tparams, clip["global_clip_norm"])
            assert norm == pytest.approx(float(tnorm), rel=1e-12)
        if "clip_value" in clip:
            torch.nn.utils.clip_grad_value_(tparams, clip["clip_value"])
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)
    torch_names = {"m": "exp_avg", "v": "exp_avg_sq", "v_max": "max_exp_avg_sq", "square_avg": "square_avg",
                   "grad_avg": "grad_avg", "momentum_buffer": "momentum_buffer", "sum": "sum"}
    for name in opt._slots[0].state:
        for got, tp in zip(flat_state(opt, name), tparams):
            want = topt.state[tp][torch_names[name]].numpy()
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_standalone_clipping_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(24)
    params = make_params(rng, np.float64, SHAPES)
    grads = grads_for_step(rng, params, 1)
    for p, g in zip(params, grads):
        p.grad = g.copy()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.tensor(g)
    norm = clip_grad_norm_(params, 2.5)
    assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(tparams, 2.5)), rel=1e-12)
    clip_grad_value_(params, 0.01)
    torch.nn.utils.clip_grad_value_(tparams, 0.01)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-13)


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("make,match", [
    (lambda p: SGD(p, lr=-1.0), "lr must be >= 0"),
    (lambda p: SGD(p, lr="fast"), "lr must be a real number"),
    (lambda p: SGD(p, nesterov=True), "nesterov needs momentum > 0"),
    (lambda p: SGD(p, momentum=0.9, dampening=0.1, nesterov=True), "dampening == 0"),
    (lambda p: SGD(p, momentum=-0.1), "momentum must be >= 0"),
    (lambda p: Adam(p, betas=(0.9, 1.0)), "beta2 must be < 1"),
    (lambda p: Adam(p, betas=(-0.1, 0.9)), "beta1 must be >= 0"),
    (lambda p: Adam(p, betas=0.9), "betas must be a pair"),
    (lambda p: Adam(p, eps=0.0), "eps must be > 0"),
    (lambda p: AdamW(p, weight_decay=-0.01), "weight_decay must be >= 0"),
    (lambda p: Adam(p, lr=float("nan")), "lr must be finite"),
    (lambda p: RMSprop(p, alpha=1.5), "alpha must be <= 1"),
    (lambda p: Adagrad(p, lr_decay=-1), "lr_decay must be >= 0"),
    (lambda p: Adam(p, nonfinite="ignore"), "nonfinite must be one of"),
    (lambda p: Adam(p, clip_value=0), "clip_value must be > 0"),
    (lambda p: Adam(p, clip_norm=-1), "clip_norm must be > 0"),
    (lambda p: Adam(p, global_clip_norm=float("nan")), "global_clip_norm must be finite"),
    (lambda p: Adam(p, grad_noise=(-1.0, 0.5)), "std must be >= 0"),
    (lambda p: Adam([]), "empty parameter list"),
    (lambda p: clip_grad_norm_(p, 0.0), "max_norm must be > 0"),
    (lambda p: clip_grad_value_(p, -1.0), "clip_value must be > 0"),
])
def test_bad_hyperparameters_raise(make, match):
    params = make_params(np.random.default_rng(25), np.float64, [(2, 2)])
    with pytest.raises((ValueError, TypeError), match=match):
        make(params)


def test_bad_parameter_containers_raise():
    with pytest.raises(TypeError, match="expected gradcore Tensors"):
        SGD([np.zeros(3)])
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([{"params": []}])


def test_kernel_guards():
    n = 10
    p, g, m, v = (np.zeros(n) for _ in range(4))
    off = np.array([0, 4, n], dtype=np.int64)
    ss, sc = np.zeros(2), np.zeros(2)
    kw = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, bias_correction1=0.1, bias_correction2=0.001)
    _C.adam_step(p, g, m, v, None, off, ss, sc, **kw)
    with pytest.raises(ValueError, match="m must have dtype float64"):
        _C.adam_step(p, g, m.astype(np.float32), v, None, off, ss, sc, **kw)
    with pytest.raises(ValueError, match="v must have 10 elements"):
        _C.adam_step(p, g, m, np.zeros(9), None, off, ss, sc, **kw)
    with pytest.raises(ValueError, match="share memory"):
        _C.adam_step(p, g, m, m, None, off, ss, sc, **kw)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.adam_step(np.zeros(2 * n)[::2], g, m, v, None, off, ss, sc, **kw)
    with pytest.raises(ValueError, match=r"offsets\[-1\]"):
        _C.adam_step(p, g, m, v, None, np.array([0, 4, 9], dtype=np.int64), ss, sc, **kw)
    with pytest.raises(ValueError, match="non-decreasing"):
        _C.adam_step(p, g, m, v, None, np.array([0, 6, 4, n], dtype=np.int64), np.zeros(3), np.zeros(3), **kw)
    with pytest.raises(ValueError, match="offsets must have dtype int64"):
        _C.adam_step(p, g, m, v, None, off.astype(np.int32), ss, sc, **kw)
    with pytest.raises(TypeError, match="v_max must be a numpy.ndarray or None, got list"):
        _C.adam_step(p, g, m, v, [0.0] * n, off, ss, sc, **kw)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros(n)
        ro.flags.writeable = False
        _C.adam_step(ro, g, m, v, None, off, ss, sc, **kw)
    with pytest.raises(ValueError, match="bias corrections"):
        _C.adam_step(p, g, m, v, None, off, ss, sc, **dict(kw, bias_correction1=0.0))
    with pytest.raises(ValueError, match="momentum_buffer"):
        _C.sgd_step(p, g, None, off, ss, sc, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="float32 or float64"):
        _C.adagrad_step(p.astype(np.int64), g, m, off, ss, sc, lr=0.1, eps=1e-10)


def test_replaced_gradients_are_taken_into_the_buffer():
    rng = np.random.default_rng(26)
    params = make_params(rng, np.float64, [(3, 2), (4,), (2,)])
    ref = RefSGD([p.data for p in params], lr=0.1, momentum=0.5)
    opt = SGD(params, lr=0.1, momentum=0.5)
    g0, g1 = rng.standard_normal((3, 2)), rng.standard_normal(4)
    params[0].grad = g0.copy()        # replaced by a new array
    params[1].grad = None             # torch's set_to_none habit, then a backward:
    (Tensor(g1) * params[1]).sum().backward()
    params[2].grad = None             # no gradient at all: not touched (torch)
    opt.step()
    for i, g in enumerate([g0, g1]):
        ref.update(i, g, 1)
    for p, r in zip(params, ref.p):
        np.testing.assert_allclose(p.data, r, rtol=1e-14)
    for p in params[:2]:
        assert np.shares_memory(p.grad, p._flat.grad)
    params[0].data = params[0].data * 2.0  # leaves the buffer: the update could not reach it
    with pytest.raises(RuntimeError, match="no longer views its flat buffer"):
        opt.step()


def test_get_and_config_round_trip():
    import json

    from gradcore import optim
    from gradcore.optim.schedules import LinearWarmup, ReduceLROnPlateau, StepDecay

    rng = np.random.default_rng(27)
    params = make_params(rng, np.float64, [(3, 2)])
    assert isinstance(optim.get("AdamW", params), AdamW)
    opt = Adam(params)
    assert optim.get(opt) is opt
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'"):
        optim.get("adamax", params)
    sched = ReduceLROnPlateau(LinearWarmup(StepDecay(0.1, 5, 0.5), 3), patience=2)
    opt = RMSprop(params, lr=sched, momentum=0.5, centered=True, clip_value=2.0, nonfinite="warn",
                  grad_noise=(0.1, 0.3, 5))
    config = json.loads(json.dumps(opt.get_config()))  # plain values only
    again = optim.from_config("RMSprop", config, make_params(rng, np.float64, [(3, 2)]))
    assert again.get_config() == opt.get_config()
    assert [again.lr_at(t) for t in range(12)] == [opt.lr_at(t) for t in range(12)]
    with pytest.raises(TypeError, match="plain callable"):
        SGD(params, lr=lambda t: 0.1).get_config()
