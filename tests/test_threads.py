"""Thread settings do not change results (DESIGN.md decision 8, the threads helper's item).

Reductions whose partial sums used to be cut one per thread (layer_norm's dgamma / dbeta,
PReLU's slope gradient) now cut them from the size alone, so 1 and 2 threads give the
same bits. Each case is large enough to run in parallel (above its kernel's grain) and
is checked against a float64 NumPy oracle as well. No timing here: benchmarks/threads.py
measures the grains.
"""
import numpy as np
import pytest

import gradcore
from gradcore import _C

# float64: the partial sums are kept in double, so a different cut shows in the last bits
# (float32 outputs would round the difference away).
DTYPE = np.float64

pytestmark = pytest.mark.skipif(not _C.have_openmp(), reason="built without OpenMP: one thread only")


@pytest.fixture
def threads():
    """Runs the body under a given thread count; restores the setting afterwards."""
    saved = gradcore.get_num_threads()

    def run(n, fn):
        gradcore.set_num_threads(n)
        try:
            return fn()
        finally:
            gradcore.set_num_threads(saved)

    return run


def layer_norm_grads(X, dY, gamma):
    rows, d = X.shape
    Y, mean, invstd = np.empty_like(X), np.empty(rows, X.dtype), np.empty(rows, X.dtype)
    _C.layer_norm_forward(X, gamma, np.zeros(d, X.dtype), 1e-5, Y, mean, invstd)
    dX, dg, db = np.empty_like(X), np.empty(d, X.dtype), np.empty(d, X.dtype)
    _C.layer_norm_backward(X, dY, gamma, mean, invstd, dX, dg, db)
    return dX, dg, db


def test_layer_norm_backward_same_bits_on_1_and_2_threads(threads):
    rng = np.random.default_rng(0)
    rows, d = 4096, 512  # 2M values: above the backward's grain, two row runs
    X = rng.standard_normal((rows, d)).astype(DTYPE)
    dY = rng.standard_normal((rows, d)).astype(DTYPE)
    gamma = rng.standard_normal(d).astype(DTYPE)
    one = threads(1, lambda: layer_norm_grads(X, dY, gamma))
    two = threads(2, lambda: layer_norm_grads(X, dY, gamma))
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    # and the sums are right: dbeta = column sums of dY, dgamma = column sums of dY * xhat
    x64 = X.astype(np.float64)
    xhat = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(one[2], dY.astype(np.float64).sum(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(one[1], (dY * xhat).sum(0), rtol=1e-6, atol=1e-6)


def prelu_grads(X, a, dY):
    dX, da = np.empty_like(X), np.zeros(a.shape, X.dtype)
    _C.prelu_backward(X, a, dY, dX, da)
    return dX, da


@pytest.mark.parametrize("shape, slopes", [((2 << 20,), 1), ((1 << 20, 2), 2)], ids=["one slope", "per column"])
def test_prelu_slope_gradient_same_bits_on_1_and_2_threads(threads, shape, slopes):
    rng = np.random.default_rng(1)
    X = rng.standard_normal(shape).astype(DTYPE)
    dY = rng.standard_normal(shape).astype(DTYPE)
    a = np.full(slopes, 0.25, DTYPE)
    one = threads(1, lambda: prelu_grads(X, a, dY))
    two = threads(2, lambda: prelu_grads(X, a, dY))
    for u, v in zip(one, two):
        np.testing.assert_array_equal(u, v)
    neg = np.where(X <= 0, X.astype(np.float64) * dY, 0.0)
    want = neg.sum() if slopes == 1 else neg.sum(0)
    np.testing.assert_allclose(one[1], np.atleast_1d(want), rtol=1e-9)
