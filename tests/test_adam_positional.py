"""adam_step takes its arguments positionally (the eager Adam's call) or by keyword: the
same update either way, and Adam's result against a NumPy reference of torch's formula."""
import numpy as np
import pytest

from gradcore import _C, Tensor, optim

NAMES = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled", "bias_correction1", "bias_correction2",
         "clip_value", "clip_norm", "global_clip_norm", "noise", "compute_scales", "stats", "stats_updates")


def _buffers(dtype, seed):
    rng = np.random.default_rng(seed)
    n = 11
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m, v = (rng.standard_normal(n) * 0.1).astype(dtype), (rng.random(n) * 0.1).astype(dtype)
    vmax = v + dtype(0.01)
    return [p, g, m, v, vmax, np.array([0, 4, 11], np.int64), np.zeros(2), np.ones(2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ams,wd,dec,cv,cn,gcn", [(True, 0.0, False, 0.0, 0.0, 5.0), (False, 0.1, True, 0.3, 0.0, 0.0),
                                                  (True, 0.01, False, 0.0, 0.7, 1.0)])
def test_positional_equals_keywords(dtype, ams, wd, dec, cv, cn, gcn):
    values = (1e-2, 0.9, 0.99, 1e-8, wd, dec, 0.19, 0.0199, cv, cn, gcn, None, True, None, True)
    a, b = _buffers(dtype, 0), _buffers(dtype, 0)
    if not ams:
        a[4] = b[4] = None
    ra = _C.adam_step(*a, *values)
    rb = _C.adam_step(*b, **dict(zip(NAMES, values)))
    assert ra == rb
    for x, y in zip(a, b):
        if x is not None:
            np.testing.assert_array_equal(x, y)


def test_eager_adam_matches_numpy_reference():
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(3)]
    w = Tensor(w0.copy(), requires_grad=True)
    opt = optim.Adam([w], lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, amsgrad=True, global_clip_norm=1.5)
    p, m, v, vmax = w0.copy(), np.zeros_like(w0), np.zeros_like(w0), np.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        w.grad = g.copy()
        opt.step()
        gc = g * min(1.0, 1.5 / (np.sqrt(np.sum(g * g)) + 1e-6)) + 0.1 * p
        m = 0.8 * m + 0.2 * gc
        v = 0.95 * v + 0.05 * gc * gc
        vmax = np.maximum(vmax, v)
        p = p - 0.05 / (1 - 0.8 ** t) * m / (np.sqrt(vmax) / np.sqrt(1 - 0.95 ** t) + 1e-6)
        np.testing.assert_allclose(w.data, p, rtol=1e-12, atol=1e-12)


SGD_NAMES = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "init_buffer", "clip_value", "clip_norm",
             "global_clip_norm", "noise", "compute_scales", "stats", "stats_updates")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mom,damp,wd,nest,init,cv,cn,gcn", [(0.0, 0.0, 0.0, False, False, 0.0, 0.0, 5.0),
                                                             (0.9, 0.1, 0.01, False, True, 0.2, 0.0, 0.0),
                                                             (0.8, 0.0, 0.0, True, False, 0.0, 0.5, 1.0)])
def test_sgd_positional_equals_keywords(dtype, mom, damp, wd, nest, init, cv, cn, gcn):
    values = (0.05, mom, damp, wd, nest, init, cv, cn, gcn, None, True, None, True)
    a, b = _buffers(dtype, 1), _buffers(dtype, 1)
    a, b = [a[0], a[1], a[2]] + a[5:], [b[0], b[1], b[2]] + b[5:]  # param, grad, momentum_buffer, layout
    ra = _C.sgd_step(*a, *values)
    rb = _C.sgd_step(*b, **dict(zip(SGD_NAMES, values)))
    assert ra == rb
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
