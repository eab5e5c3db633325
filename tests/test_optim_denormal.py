"""Denormals in the optimizers' update passes (csrc/optim.h, "Denormals").

Every optimizer step's update pass runs with denormals flushed to zero (x86 MXCSR FTZ |
DAZ): a denormal input is read as zero and every denormal result becomes zero. Oracle: the
step's formula in NumPy float32 with the same flush applied to every input and after every
operation (``fz``); the same formula without the flush (IEEE) must give other values, so
each test can tell a flushing kernel from one that does not flush. Normal-range results are
the existing parity tests' business (test_optim.py, test_compiled*.py).

Also checked: the MXCSR of the calling thread and of the OpenMP workers is put back (a
denormal product computed after a step is still denormal; clip_grads, which does not
flush, keeps denormal gradients), and the compiled step (the same kernels) equals the eager
step bit for bit on a state full of denormals.
"""
import math

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, _C, losses, nn, optim

pytestmark = pytest.mark.skipif(not getattr(_C, "OPTIM_FLUSHES_DENORMALS", False),
                                reason="this build's optimizers keep IEEE denormals (not x86-64)")

F = np.float32
TINY = np.finfo(np.float32).tiny  # smallest normal float32, 2^-126


def fz(x):
    """float32 with denormals replaced by zero (what FTZ / DAZ do)."""
    x = np.asarray(x, dtype=F)
    return np.where(np.abs(x) < TINY, F(0), x).astype(F)


def ieee(x):
    return np.asarray(x, dtype=F)


def denormal_count(a):
    a = np.asarray(a)
    return int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


# ---------------------------------------------------------------------- test data
KINDS = 9


def make_case(n, seed=0):
    """p, g and four state arrays whose elements cycle through the cases that matter:
    0 all normal; 1 g = 0 with denormal state (a dead unit's decayed moments); 2 the same
    with v_max denormal too; 3 denormal g; 4 denormal p; 5 g so small that g * g underflows;
    6 state at the bottom of the normal range, so decaying it underflows; 7 g = 0 and a
    normal state; 8 denormal p and state, g = 0 (a dead unit, with weight decay too)."""
    rng = np.random.default_rng(seed)
    kind = np.arange(n) % KINDS
    sign = lambda: np.where(rng.random(n) < 0.5, -1.0, 1.0)  # noqa: E731
    den = lambda: sign() * np.exp(rng.uniform(math.log(1e-44), math.log(1e-38), n))  # noqa: E731
    p = sign() * (1 + np.abs(rng.standard_normal(n)))  # |p| >= 1: no cancellation in p - update
    g = rng.standard_normal(n)
    s1 = 0.1 * rng.standard_normal(n)                  # signed state (m, grad_avg, momentum)
    s2 = 0.5 + np.abs(rng.standard_normal(n))          # positive state (v, square_avg, sum)
    s3 = s2 + np.abs(rng.standard_normal(n))           # v_max >= v
    m1, m2 = kind == 1, kind == 2
    g[m1 | m2 | (kind == 7)] = 0
    s1[m1 | m2] = den()[m1 | m2]
    s2[m1 | m2] = np.abs(den())[m1 | m2]
    s3[m2] = np.abs(den())[m2]
    s3[m1] = 1e-6
    g[kind == 3] = den()[kind == 3]
    p[kind == 4] = den()[kind == 4]
    k5 = kind == 5
    g[k5] = sign()[k5] * 1e-20 * (1 + rng.random(n))[k5]
    s1[k5] = 1e-20
    s2[k5] = np.abs(den())[k5]
    s3[k5] = np.abs(den())[k5]
    k8 = kind == 8
    g[k8] = 0
    p[k8] = den()[k8]
    s2[k8] = np.abs(den())[k8]
    s3[k8] = np.abs(den())[k8]
    k6 = kind == 6
    g[k6] = 0
    s1[k6] = sign()[k6] * 1.3e-38
    s2[k6] = 1.3e-38
    s3[k6] = 1.3e-38
    # signed state with the gradient's sign where g != 0: b * s + (1 - b) * g then never cancels,
    # so the float32 reference (two roundings) and the kernel (possibly one FMA) agree to 1e-6
    # (and p has it too, as weight decay adds wd * p to g; with g = 0, signed state takes p's)
    nz = g != 0
    p[nz] = np.abs(p[nz]) * np.sign(g[nz])
    s4 = s1[::-1].copy()
    for s in (s1, s4):
        s[nz] = np.abs(s[nz]) * np.sign(g[nz])
        s[~nz] = np.abs(s[~nz]) * np.sign(p[~nz])
    for s in (s1, s4):
        s[k8] = np.abs(den())[k8] * np.sign(p[k8])
    arrays = [x.astype(F) for x in (p, g, s1, s2, s3, s4)]
    assert all(denormal_count(a) > 0 for a in arrays[1:5])
    return arrays


def layout(n, pieces=(0.3, 0.7)):
    """Two tensors in one flat buffer (so chunks carry different tensors)."""
    cut = int(n * pieces[0])
    return np.array([0, cut, n], dtype=np.int64), np.zeros(2), np.zeros(2)


def check(got, want, other):
    """got equals the flushed reference (rtol 1e-6, zeros exactly: atol 0) and holds no
    denormal. (`other`, the IEEE reference, is compared by each test where it must differ.)"""
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert denormal_count(got) == 0


# ---------------------------------------------------------------------- references (kernel order)
def ref_adam(o, p, g, m, v, vmax, lr, b1, b2, eps, wd, decoupled, t, ams):
    p, g, m, v, vmax = (o(x) for x in (p, g, m, v, vmax))
    l2, decay = (F(0), F(1 - lr * wd)) if decoupled else (F(wd), F(1))
    g = o(g + o(l2 * p))
    m = o(o(F(b1) * m) + o(F(1 - b1) * g))
    v = o(o(F(b2) * v) + o(o(F(1 - b2) * g) * g))
    vhat = v
    if ams:
        vmax = np.maximum(vmax, v)
        vhat = vmax
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    denom = o(o(np.sqrt(vhat) / F(math.sqrt(bc2))) + F(eps))
    p = o(o(p * decay) - o(F(lr / bc1) * o(m / denom)))
    return p, m, v, vmax


def ref_sgd(o, p, g, buf, lr, mom, damp, wd, nesterov, init):
    p, g, buf = o(p), o(g), o(buf)
    g = o(g + o(F(wd) * p))
    if mom == 0:
        return o(p - o(F(lr) * g)), buf
    b = g if init else o(o(F(mom) * buf) + o(F(1 - damp) * g))
    d = o(g + o(F(mom) * b)) if nesterov else b
    return o(p - o(F(lr) * d)), b


def ref_rmsprop(o, p, g, sq, ga, buf, lr, alpha, eps, wd, mom, centered):
    p, g, sq, ga, buf = (o(x) for x in (p, g, sq, ga, buf))
    g = o(g + o(F(wd) * p))
    sq = o(o(F(alpha) * sq) + o(o(F(1 - alpha) * g) * g))
    var = sq
    if centered:
        ga = o(o(F(alpha) * ga) + o(F(1 - alpha) * g))
        var = np.maximum(o(var - o(ga * ga)), F(0))
    avg = o(np.sqrt(var) + F(eps))
    if mom:
        buf = o(o(F(mom) * buf) + o(g / avg))
        p = o(p - o(F(lr) * buf))
    else:
        p = o(p - o(F(lr) * o(g / avg)))
    return p, sq, ga, buf


def ref_adagrad(o, p, g, s, clr, eps, wd):
    p, g, s = o(p), o(g), o(s)
    g = o(g + o(F(wd) * p))
    s = o(s + o(g * g))
    return o(p - o(F(clr) * o(g / o(np.sqrt(s) + F(eps))))), s


# ---------------------------------------------------------------------- kernels
N = 40_000  # > 2 chunks of 16K in the second tensor

ADAM = [
    dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False, ams=False),
    dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False, ams=True),
    dict(lr=1e-2, b1=0.8, b2=0.99, eps=1e-6, wd=0.05, decoupled=False, ams=True),
    dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, wd=0.1, decoupled=True, ams=False),
]


@pytest.mark.parametrize("h", ADAM, ids=["adam", "amsgrad", "adam-l2-amsgrad", "adamw"])
def test_adam_flushes_denormals(h):
    p, g, m, v, vmax, _ = make_case(N)
    t = 3
    want = ref_adam(fz, p, g, m, v, vmax, h["lr"], h["b1"], h["b2"], h["eps"], h["wd"], h["decoupled"], t, h["ams"])
    other = ref_adam(ieee, p, g, m, v, vmax, h["lr"], h["b1"], h["b2"], h["eps"], h["wd"], h["decoupled"], t,
                     h["ams"])
    offsets, sumsq, scales = layout(N)
    _C.adam_step(p, g, m, v, vmax if h["ams"] else None, offsets, sumsq, scales, lr=h["lr"], beta1=h["b1"],
                 beta2=h["b2"], eps=h["eps"], weight_decay=h["wd"], decoupled=h["decoupled"],
                 bias_correction1=1 - h["b1"] ** t, bias_correction2=1 - h["b2"] ** t)
    for got, w, ie in zip((p, m, v), want, other):
        check(got, w, ie)
    if h["ams"]:
        check(vmax, want[3], other[3])
    # the state's denormals are what made the IEEE result differ
    assert np.any(other[1] != want[1]) and np.any(other[2] != want[2])


SGD = [
    dict(lr=0.05, mom=0.0, damp=0.0, wd=0.0, nesterov=False, init=False),
    dict(lr=0.05, mom=0.9, damp=0.0, wd=0.0, nesterov=False, init=False),
    dict(lr=0.05, mom=0.9, damp=0.3, wd=0.01, nesterov=False, init=True),
    dict(lr=0.05, mom=0.8, damp=0.0, wd=0.02, nesterov=True, init=False),
]


@pytest.mark.parametrize("h", SGD, ids=["plain", "momentum", "momentum-init", "nesterov"])
def test_sgd_flushes_denormals(h):
    p, g, buf, _, _, _ = make_case(N, seed=1)
    args = (h["lr"], h["mom"], h["damp"], h["wd"], h["nesterov"], h["init"])
    want, other = ref_sgd(fz, p, g, buf, *args), ref_sgd(ieee, p, g, buf, *args)
    offsets, sumsq, scales = layout(N)
    _C.sgd_step(p, g, buf, offsets, sumsq, scales, lr=h["lr"], momentum=h["mom"], dampening=h["damp"],
                weight_decay=h["wd"], nesterov=h["nesterov"], init_buffer=h["init"])
    check(p, want[0], other[0])
    if h["mom"]:
        check(buf, want[1], other[1])
        if not h["init"]:
            assert np.any(other[1] != want[1])
    else:
        assert np.any(other[0] != want[0])  # p denormal (kind 4) and g denormal (kind 3)


RMSPROP = [
    dict(lr=0.01, alpha=0.99, eps=1e-8, wd=0.0, mom=0.0, centered=False),
    dict(lr=0.01, alpha=0.99, eps=1e-8, wd=0.0, mom=0.0, centered=True),
    dict(lr=0.01, alpha=0.99, eps=1e-8, wd=0.0, mom=0.9, centered=False),
    dict(lr=0.005, alpha=0.9, eps=1e-8, wd=0.01, mom=0.5, centered=True),
]


@pytest.mark.parametrize("h", RMSPROP, ids=["plain", "centered", "momentum", "all"])
def test_rmsprop_flushes_denormals(h):
    p, g, ga, sq, _, buf = make_case(N, seed=2)
    args = (h["lr"], h["alpha"], h["eps"], h["wd"], h["mom"], h["centered"])
    want, other = ref_rmsprop(fz, p, g, sq, ga, buf, *args), ref_rmsprop(ieee, p, g, sq, ga, buf, *args)
    offsets, sumsq, scales = layout(N)
    _C.rmsprop_step(p, g, sq, ga if h["centered"] else None, buf if h["mom"] else None, offsets, sumsq, scales,
                    lr=h["lr"], alpha=h["alpha"], eps=h["eps"], weight_decay=h["wd"], momentum=h["mom"])
    check(p, want[0], other[0])
    check(sq, want[1], other[1])
    assert np.any(other[1] != want[1])
    if h["centered"]:
        check(ga, want[2], other[2])
    if h["mom"]:
        check(buf, want[3], other[3])


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adagrad_flushes_denormals(wd):
    p, g, _, s, _, _ = make_case(N, seed=3)
    clr, eps = 0.1 / (1 + 2 * 0.01), 1e-10
    want, other = ref_adagrad(fz, p, g, s, clr, eps, wd), ref_adagrad(ieee, p, g, s, clr, eps, wd)
    offsets, sumsq, scales = layout(N)
    _C.adagrad_step(p, g, s, offsets, sumsq, scales, lr=clr, eps=eps, weight_decay=wd)
    check(p, want[0], other[0])
    check(s, want[1], other[1])
    assert np.any(other[1] != want[1])


def test_float64_state_below_dbl_min_is_flushed_too():
    tiny64 = np.finfo(np.float64).tiny
    n = 1000
    p = np.ones(n)
    g = np.zeros(n)
    m = np.full(n, 3e-310)   # denormal float64
    v = np.full(n, 1e-300)   # normal, decays to 0.999e-300: normal
    offsets, sumsq, scales = np.array([0, n], dtype=np.int64), np.zeros(1), np.zeros(1)
    _C.adam_step(p, g, m, v, None, offsets, sumsq, scales, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                 bias_correction1=0.1, bias_correction2=0.001)
    assert np.all(m == 0) and np.all(v == 0.999 * 1e-300) and np.all(p == 1.0)
    assert 0.9 * 3e-310 < tiny64  # IEEE would have kept a denormal m


def test_statistics_of_a_flushed_step_describe_the_stored_values():
    p, g, m, v, vmax, _ = make_case(N, seed=4)
    offsets, sumsq, scales = layout(N)
    stats = np.zeros((2, 5))
    _C.adam_step(p, g, m, v, vmax, offsets, sumsq, scales, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                 bias_correction1=0.1, bias_correction2=0.001, stats=stats)
    for i in range(2):
        seg = p[offsets[i]:offsets[i + 1]].astype(np.float64)
        assert stats[i, 3] == pytest.approx(float(np.sum(seg * seg)), rel=1e-12)
        # raw gradient statistics (pass 1, IEEE): the denormal gradients are counted as they are
        gseg = g[offsets[i]:offsets[i + 1]].astype(np.float64)
        assert stats[i, 0] == pytest.approx(float(np.sum(gseg * gseg)), rel=1e-12)


# ---------------------------------------------------------------------- MXCSR is put back
def test_calling_thread_keeps_ieee_denormals_after_a_step():
    p, g, m, v, vmax, _ = make_case(1000)
    offsets, sumsq, scales = layout(1000)
    _C.adam_step(p, g, m, v, vmax, offsets, sumsq, scales, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                 bias_correction1=0.1, bias_correction2=0.001)
    a = np.full(8, F(2.0 ** -126))
    half = a * F(0.5)                     # NumPy on this thread: a denormal product (no FTZ)
    assert np.all(half == F(2.0 ** -127)) and denormal_count(half) == 8
    assert np.all(half * F(2) == a)       # a denormal input read as itself (no DAZ)


@pytest.mark.skipif(not gradcore.info().get("openmp", True), reason="no OpenMP")
def test_worker_threads_flush_their_chunks_and_restore_their_mxcsr():
    saved = gradcore.get_num_threads()
    try:
        gradcore.set_num_threads(2)
        # Adam forks from 2 x 512K values: the second half of the chunks runs on a worker
        n = (1 << 20) + 4096
        p, g, m, v, vmax, _ = make_case(n, seed=5)
        want = ref_adam(fz, p, g, m, v, vmax, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 3, True)
        offsets, sumsq, scales = layout(n, pieces=(0.1, 0.9))
        _C.adam_step(p, g, m, v, vmax, offsets, sumsq, scales, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                     bias_correction1=1 - 0.9 ** 3, bias_correction2=1 - 0.999 ** 3)
        for got, w in zip((p, m, v, vmax), want):
            np.testing.assert_allclose(got, w, rtol=1e-6, atol=0)
            assert denormal_count(got) == 0
        # clip_grads does not flush, on 2 threads too (forks from 2 x 2M values): the workers'
        # MXCSR was put back after the Adam step, so denormal gradients survive a scale of 1
        n2 = (1 << 22) + 4096
        grad = np.full(n2, F(1e-39))
        grad[::2] = F(-3e-40)
        before = grad.copy()
        off2, ss2, sc2 = np.array([0, n2 // 2, n2], dtype=np.int64), np.zeros(2), np.zeros(2)
        _C.clip_grads(grad, off2, ss2, sc2, global_clip_norm=1.0)
        np.testing.assert_array_equal(grad, before)
        assert denormal_count(grad) == n2
    finally:
        gradcore.set_num_threads(saved)


# ---------------------------------------------------------------------- eager optimizer and compiled step
def _net(seed):
    rng = np.random.default_rng(seed)
    net = nn.Sequential(nn.Dense(6, 5, activation="relu"), nn.Dense(5, 1))
    for prm in net.parameters():
        prm.data[...] = (rng.standard_normal(prm.data.shape) * 0.5).astype(F)
    return net


def _denormal_state(opt, seed):
    """Overwrite every Adam state value with a denormal of random sign / size (v, v_max positive)."""
    rng = np.random.default_rng(seed)
    for slot in opt._slots:
        for name, arr in slot.state.items():
            vals = np.exp(rng.uniform(math.log(1e-44), math.log(1e-38), arr.shape))
            if name == "m":
                vals *= np.where(rng.random(arr.shape) < 0.5, -1, 1)
            arr[...] = vals.astype(arr.dtype)


@pytest.mark.skipif(not hasattr(_C, "Plan"), reason="the extension has no compiled plans")
def test_compiled_and_eager_steps_flush_the_same_way():
    from gradcore.compiled import compile_step

    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 6)).astype(F)
    x[:, [1, 4]] = 0  # the first layer's weights of these inputs get a zero gradient
    y = (rng.random((16, 1)) < 0.5).astype(F)
    loss = losses.get("bce_with_logits")
    runs = []
    for compiled in (False, True):
        net = _net(3)
        opt = optim.Adam(net.parameters(), lr=1e-3, amsgrad=True, global_clip_norm=5.0)
        net.compile(opt, loss=loss)
        net.train()
        step = compile_step(net, loss, opt) if compiled else None
        # one step to create the state, then a state full of denormals and three more steps
        for k in range(4):
            if k == 1:
                _denormal_state(opt, 11)
            if compiled:
                step(x, y)
            else:
                opt.zero_grad()
                loss(net(x), y).backward()
                opt.step()
        state = {n: np.array(a) for s in opt._slots for n, a in s.state.items()}
        params = [np.array(p.data) for p in net.parameters()]
        runs.append((state, params))
    (s_eager, p_eager), (s_comp, p_comp) = runs
    for name in s_eager:
        np.testing.assert_array_equal(s_comp[name], s_eager[name])
        assert denormal_count(s_eager[name]) == 0
    for a, b in zip(p_eager, p_comp):
        np.testing.assert_array_equal(a, b)
    # the zero-gradient weights' moments (inputs 1 and 4, 5 units each) were denormal: now 0
    assert np.count_nonzero(s_eager["m"] == 0) >= 2 * 5
