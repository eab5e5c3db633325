"""Activation kernels of gradcore._C: element-wise kinds, PReLU, softmax and log-softmax.

Oracles: NumPy/SciPy references written here, central finite differences of the kernel's
own forward (float64), and PyTorch (float64) when it is installed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from gradcore import _C

KINDS = ["identity", "relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh",
         "softplus"]
# alpha passed to the kernel per kind (leaky_relu: negative slope, elu: alpha; others ignore it).
ALPHA = {"leaky_relu": 0.07, "elu": 1.3}
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
GELU_K = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715


# ------------------------------------------------------------------ NumPy references

@np.errstate(over="ignore")
def ref_forward(kind, x, a):
    x = np.asarray(x, dtype=np.float64)
    if kind == "identity":
        return x.copy()
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "leaky_relu":
        return np.where(x > 0, x, a * x)
    if kind == "elu":
        return np.where(x > 0, x, a * np.expm1(x))
    if kind == "selu":
        return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x))
    if kind == "sigmoid":
        return special.expit(x)
    if kind == "tanh":
        return np.tanh(x)
    if kind == "silu":
        return x * special.expit(x)
    if kind == "gelu":
        return x * special.ndtr(x)
    if kind == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(GELU_K * (x + GELU_C * x ** 3)))
    if kind == "softplus":
        return np.where(x > 20, x, np.logaddexp(0.0, x))
    raise AssertionError(kind)


@np.errstate(over="ignore")
def ref_derivative(kind, x, a):
    x = np.asarray(x, dtype=np.float64)
    if kind == "identity":
        return np.ones_like(x)
    if kind == "relu":
        return (x > 0).astype(np.float64)
    if kind == "leaky_relu":
        return np.where(x > 0, 1.0, a)
    if kind == "elu":
        return np.where(x > 0, 1.0, a * np.exp(x))
    if kind == "selu":
        return SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(x))
    if kind == "sigmoid":
        s = special.expit(x)
        return s * (1 - s)
    if kind == "tanh":
        return 1 - np.tanh(x) ** 2
    if kind == "silu":
        s = special.expit(x)
        return s + x * s * (1 - s)
    if kind == "gelu":
        return special.ndtr(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    if kind == "gelu_tanh":
        t = np.tanh(GELU_K * (x + GELU_C * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * x * x)
    if kind == "softplus":
        return np.where(x > 20, 1.0, special.expit(x))
    raise AssertionError(kind)


def ref_softmax(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def ref_log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------ kernel wrappers

def fwd(kind, x, a=0.0):
    y = np.empty_like(x)
    _C.activation_forward(kind, x, y, a)
    return y


def bwd(kind, x, dy, a=0.0):
    y = fwd(kind, x, a)
    dx = np.empty_like(x)
    _C.activation_backward(kind, x, y, dy, dx, a)
    return dx


def call_rowwise(name, *arrays):
    out = np.empty_like(arrays[0])
    getattr(_C, name)(*arrays, out)
    return out


def sample(shape, seed=0, lo=-5.0, hi=5.0):
    """Random points kept away from the kinks at 0 (and from softplus' threshold at 20)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=shape)
    x = np.where(np.abs(x) < 0.05, x + np.copysign(0.1, x), x)
    return x


def points():
    """Random points plus moderately large magnitudes on both sides of softplus' threshold."""
    x = sample((6, 11))
    x[0, :8] = [-15.0, -8.0, 8.0, 15.0, 19.5, 21.0, 30.0, -30.0]
    return x


# ------------------------------------------------------------------ element-wise kinds

def test_activation_names_cover_the_kinds_and_aliases():
    names = list(_C.activation_names())
    assert names[: len(KINDS)] == KINDS
    assert set(names) == set(KINDS) | {"linear", "swish"}
    x = points()
    np.testing.assert_array_equal(fwd("linear", x), x)
    np.testing.assert_array_equal(fwd("swish", x), fwd("silu", x))


@pytest.mark.parametrize("kind", KINDS)
def test_forward_float64_matches_numpy(kind):
    a = ALPHA.get(kind, 0.0)
    x = points()
    np.testing.assert_allclose(fwd(kind, x, a), ref_forward(kind, x, a), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_float32_matches_numpy(kind):
    a = ALPHA.get(kind, 0.0)
    x = points().astype(np.float32)
    y = fwd(kind, x, a)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref_forward(kind, x, np.float32(a)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-11, 1e-14), (np.float32, 2e-5, 1e-6)])
def test_backward_matches_numpy_derivative(kind, dtype, rtol, atol):
    a = ALPHA.get(kind, 0.0)
    x = points().astype(dtype)
    dy = np.random.default_rng(1).normal(size=x.shape).astype(dtype)
    dx = bwd(kind, x, dy, a)
    assert dx.dtype == dtype
    want = ref_derivative(kind, x, np.asarray(a, dtype)) * dy.astype(np.float64)
    np.testing.assert_allclose(dx, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_finite_differences_of_the_kernel(kind):
    a = ALPHA.get(kind, 0.0)
    x = points()
    h = 1e-6
    fd = (fwd(kind, x + h, a) - fwd(kind, x - h, a)) / (2 * h)
    np.testing.assert_allclose(bwd(kind, x, np.ones_like(x), a), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_in_place_aliases(kind):
    a = ALPHA.get(kind, 0.0)
    x = points()
    want_y = fwd(kind, x, a)
    dy = np.random.default_rng(2).normal(size=x.shape)
    want_dx = bwd(kind, x, dy, a)
    y_in_place = x.copy()
    _C.activation_forward(kind, y_in_place, y_in_place, a)
    np.testing.assert_array_equal(y_in_place, want_y)
    g = dy.copy()
    _C.activation_backward(kind, x, want_y, g, g, a)
    np.testing.assert_array_equal(g, want_dx)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (7,), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_any_shape_including_scalar_and_empty(shape, dtype):
    x = sample(shape, seed=3).astype(dtype)
    for kind in ("relu", "gelu", "sigmoid"):
        y = fwd(kind, x)
        assert y.shape == shape
        np.testing.assert_allclose(y, ref_forward(kind, x, 0.0), rtol=1e-5, atol=1e-6)
        dx = bwd(kind, x, np.ones_like(x))
        np.testing.assert_allclose(dx, ref_derivative(kind, x, 0.0), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_sizes_match_numpy_and_one_thread(dtype):
    """Above the parallel grain (2**15 elements) the chunked path must give the serial result."""
    x = sample((100_003,), seed=4).astype(dtype)
    dy = np.random.default_rng(5).normal(size=x.shape).astype(dtype)
    tol = dict(rtol=1e-11, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-6)
    before = _C.get_num_threads()
    try:
        for kind in KINDS:
            a = ALPHA.get(kind, 0.0)
            _C.set_num_threads(max(2, before))
            y, dx = fwd(kind, x, a), bwd(kind, x, dy, a)
            _C.set_num_threads(1)
            np.testing.assert_array_equal(fwd(kind, x, a), y)
            np.testing.assert_array_equal(bwd(kind, x, dy, a), dx)
            np.testing.assert_allclose(y, ref_forward(kind, x, np.asarray(a, dtype)), **tol)
            np.testing.assert_allclose(dx, ref_derivative(kind, x, np.asarray(a, dtype)) * dy, **tol)
    finally:
        _C.set_num_threads(before)


# ------------------------------------------------------------------ stability and NaN

# f'(x) for x -> -inf and x -> +inf
LIMIT_SLOPES = {
    "identity": lambda a: [1.0, 1.0], "relu": lambda a: [0.0, 1.0], "leaky_relu": lambda a: [a, 1.0],
    "elu": lambda a: [0.0, 1.0], "selu": lambda a: [0.0, SELU_SCALE], "sigmoid": lambda a: [0.0, 0.0],
    "tanh": lambda a: [0.0, 0.0], "silu": lambda a: [0.0, 1.0], "gelu": lambda a: [0.0, 1.0],
    "gelu_tanh": lambda a: [0.0, 1.0], "softplus": lambda a: [0.0, 1.0],
}


@pytest.mark.parametrize("dtype, big", [(np.float64, 1e300), (np.float32, 1e30)])
def test_large_inputs_stay_finite(dtype, big):
    x = np.array([-big, -1000.0, -80.0, 80.0, 1000.0, big], dtype=dtype)
    sig = fwd("sigmoid", x)
    np.testing.assert_array_equal(sig[[0, 1]], [0.0, 0.0])
    np.testing.assert_array_equal(sig[[4, 5]], [1.0, 1.0])
    np.testing.assert_allclose(sig, special.expit(x.astype(np.float64)), rtol=1e-5, atol=0)
    sp = fwd("softplus", x)
    np.testing.assert_array_equal(sp[[0, 1]], [0.0, 0.0])
    np.testing.assert_array_equal(sp[3:], x[3:])  # above the threshold softplus is x
    np.testing.assert_allclose(sp[2], math.exp(-80.0), rtol=1e-5)
    for kind in KINDS:
        a = ALPHA.get(kind, 0.0)
        y = fwd(kind, x, a)
        dx = bwd(kind, x, np.ones_like(x), a)
        assert not np.isnan(y).any(), (kind, y)
        assert np.isfinite(dx).all(), (kind, dx)
        np.testing.assert_allclose(dx[1:5], ref_derivative(kind, x[1:5].astype(np.float64), a), rtol=1e-5,
                                   atol=1e-30, err_msg=kind)
        # at +-big the naive references overflow; the derivative is at its limit
        np.testing.assert_allclose(dx[[0, 5]], LIMIT_SLOPES[kind](a), rtol=1e-6, atol=0, err_msg=kind)
    # The smooth kinds go to 0 on the left and to x on the right.
    for kind in ("silu", "gelu", "gelu_tanh", "softplus"):
        y = fwd(kind, x)
        assert abs(y[0]) == 0.0 and abs(y[1]) == 0.0, kind
        np.testing.assert_array_equal(y[4:], x[4:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_of_large_logits(dtype):
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0], [0.0, 0.0, 3000.0]], dtype=dtype)
    shifted = x - x.max(axis=1, keepdims=True)
    y = call_rowwise("softmax_forward", x)
    np.testing.assert_allclose(y, ref_softmax(shifted.astype(np.float64)), rtol=1e-6)
    np.testing.assert_array_equal(y[2], [0.0, 0.0, 1.0])
    ly = call_rowwise("log_softmax_forward", x)
    assert np.isfinite(ly[:2]).all()
    np.testing.assert_allclose(ly[:2], ref_log_softmax(shifted[:2].astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(ly[2], [-3000.0, -3000.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates(kind, dtype):
    a = ALPHA.get(kind, 0.0)
    x = np.array([-1.5, np.nan, 0.5, 2.0], dtype=dtype)
    y = fwd(kind, x, a)
    assert np.isnan(y[1])
    keep = [0, 2, 3]
    np.testing.assert_allclose(y[keep], ref_forward(kind, x[keep], a), rtol=1e-5, atol=1e-7)
    dx = bwd(kind, x, np.ones_like(x), a)
    np.testing.assert_allclose(dx[keep], ref_derivative(kind, x[keep], a), rtol=2e-5, atol=1e-7)


def test_nan_in_softmax_row_stays_in_that_row():
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]])
    for fwd_name, bwd_name, ref in [("softmax_forward", "softmax_backward", ref_softmax),
                                    ("log_softmax_forward", "log_softmax_backward", ref_log_softmax)]:
        y = call_rowwise(fwd_name, x)
        assert np.isnan(y[0]).all()
        np.testing.assert_allclose(y[1], ref(x[1]), rtol=1e-12)
        dx = call_rowwise(bwd_name, y, np.ones_like(x))
        assert np.isfinite(dx[1]).all()


# ------------------------------------------------------------------ PReLU

def ref_prelu(x, a):
    return np.where(x > 0, x, a * x)


def ref_prelu_grads(x, a, dy):
    dx = np.where(x > 0, dy, a * dy)
    contrib = np.where(x > 0, 0.0, dy * x)
    if np.size(a) == 1:
        da = np.array([contrib.sum()])
    else:
        da = contrib.reshape(-1, x.shape[-1]).sum(axis=0)
    return dx, da


@pytest.mark.parametrize("dtype, tol", [(np.float64, dict(rtol=1e-12, atol=1e-13)),
                                        (np.float32, dict(rtol=2e-5, atol=1e-5))])
@pytest.mark.parametrize("shape, a_size", [((5, 7), 7), ((5, 7), 1), ((2, 3, 4), 4), ((9,), 9), ((), 1),
                                           ((4, 1), 1), ((0, 3), 3)])
def test_prelu_forward_and_backward_match_numpy(dtype, tol, shape, a_size):
    rng = np.random.default_rng(6)
    x = sample(shape, seed=7).astype(dtype)
    a = rng.uniform(-0.5, 0.5, size=a_size).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    y = np.empty_like(x)
    _C.prelu_forward(x, a, y)
    np.testing.assert_allclose(y, ref_prelu(x.astype(np.float64), a.astype(np.float64)), **tol)

    want_dx, want_da = ref_prelu_grads(x.astype(np.float64), a.astype(np.float64), dy.astype(np.float64))
    dx, da = np.empty_like(x), np.full_like(a, np.nan)
    _C.prelu_backward(x, a, dy, dx, da)
    np.testing.assert_allclose(dx, want_dx, **tol)
    np.testing.assert_allclose(da, want_da, **tol)

    # accumulate adds onto what dalpha holds; dX=None leaves dalpha unchanged in meaning
    da_acc = np.arange(a_size, dtype=dtype)
    _C.prelu_backward(x, a, dy, None, da_acc, accumulate=True)
    np.testing.assert_allclose(da_acc, np.arange(a_size) + want_da, **tol)
    # dalpha=None: only dX
    dx2 = np.empty_like(x)
    _C.prelu_backward(x, a, dy, dx2, None)
    np.testing.assert_array_equal(dx2, dx)
    _C.prelu_backward(x, a, dy, None, None)  # nothing requested: a no-op


@pytest.mark.parametrize("a_size", [1, 3])
def test_prelu_gradients_match_finite_differences_of_the_kernel(a_size):
    rng = np.random.default_rng(8)
    x = sample((4, 3), seed=9)
    a = rng.uniform(0.05, 0.4, size=a_size)
    w = rng.normal(size=x.shape)

    def loss(xx, aa):
        y = np.empty_like(xx)
        _C.prelu_forward(xx, aa, y)
        return float((w * y).sum())

    dx, da = np.empty_like(x), np.empty_like(a)
    _C.prelu_backward(x, a, w, dx, da)
    h = 1e-6
    fd_x = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        fd_x[idx] = (loss(x + e, a) - loss(x - e, a)) / (2 * h)
    fd_a = np.zeros_like(a)
    for k in range(a_size):
        e = np.zeros_like(a)
        e[k] = h
        fd_a[k] = (loss(x, a + e) - loss(x, a - e)) / (2 * h)
    np.testing.assert_allclose(dx, fd_x, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(da, fd_a, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape, a_size", [((40_000, 3), 3), ((300, 600), 600), ((120_000,), 1),
                                           ((50_000, 2), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prelu_parallel_paths(shape, a_size, dtype):
    """Row chunks, column blocks and the flat reduction above the grain, vs NumPy and one thread."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=shape).astype(dtype)
    a = rng.uniform(-0.5, 0.5, size=a_size).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    before = _C.get_num_threads()
    results = []
    try:
        for threads in (max(2, before), 1):
            _C.set_num_threads(threads)
            y, dx, da = np.empty_like(x), np.empty_like(x), np.empty_like(a)
            _C.prelu_forward(x, a, y)
            _C.prelu_backward(x, a, dy, dx, da)
            results.append((y, dx, da))
    finally:
        _C.set_num_threads(before)
    (y, dx, da), (y1, dx1, da1) = results
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(dx, dx1)
    x64, a64, dy64 = (v.astype(np.float64) for v in (x, a, dy))
    want_dx, want_da = ref_prelu_grads(x64, a64, dy64)
    np.testing.assert_allclose(y, ref_prelu(x64, a64), rtol=1e-6 if dtype == np.float32 else 1e-15)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6 if dtype == np.float32 else 1e-15)
    # dalpha sums are accumulated in double, so float32 is close to the float64 sum
    np.testing.assert_allclose(da, want_da, rtol=1e-5, atol=1e-4 if dtype == np.float32 else 1e-9)
    np.testing.assert_allclose(da1, want_da, rtol=1e-5, atol=1e-4 if dtype == np.float32 else 1e-9)


def test_prelu_nan_propagates():
    x = np.array([[np.nan, -1.0], [2.0, -3.0]])
    a = np.array([0.25])
    y = np.empty_like(x)
    _C.prelu_forward(x, a, y)
    assert np.isnan(y[0, 0])
    np.testing.assert_array_equal(y[0, 1:], [-0.25])
    np.testing.assert_array_equal(y[1], [2.0, -0.75])
    da = np.empty_like(a)
    _C.prelu_backward(x, a, np.ones_like(x), None, da)
    assert np.isnan(da[0])


# ------------------------------------------------------------------ softmax family

ROWWISE = [("softmax_forward", "softmax_backward", ref_softmax),
           ("log_softmax_forward", "log_softmax_backward", ref_log_softmax)]


@pytest.mark.parametrize("fwd_name, bwd_name, ref", ROWWISE)
@pytest.mark.parametrize("shape", [(4, 9), (2, 3, 5), (6,), (1, 1), (), (0, 4), (3, 0)])
@pytest.mark.parametrize("dtype, tol", [(np.float64, dict(rtol=1e-12, atol=1e-15)),
                                        (np.float32, dict(rtol=1e-5, atol=1e-6))])
def test_rowwise_forward_and_backward_match_numpy(fwd_name, bwd_name, ref, shape, dtype, tol):
    x = sample(shape, seed=11).astype(dtype)
    dy = np.random.default_rng(12).normal(size=shape).astype(dtype)
    y = call_rowwise(fwd_name, x)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    if x.size == 0:
        want = x64.copy()
    else:
        want = ref(x64[..., None])[..., 0] if x.ndim == 0 else ref(x64)
    np.testing.assert_allclose(y, want, **tol)
    dx = call_rowwise(bwd_name, y, dy)
    y64 = want
    if fwd_name == "softmax_forward":
        want_dx = y64 * (dy64 - (dy64 * y64).sum(axis=-1, keepdims=True))
    else:
        want_dx = dy64 - np.exp(y64) * dy64.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(dx, want_dx, **tol)


@pytest.mark.parametrize("fwd_name, bwd_name, ref", ROWWISE)
def test_rowwise_backward_matches_finite_differences_of_the_kernel(fwd_name, bwd_name, ref):
    x = sample((3, 5), seed=13)
    w = np.random.default_rng(14).normal(size=x.shape)

    def loss(xx):
        return float((w * call_rowwise(fwd_name, xx)).sum())

    dx = call_rowwise(bwd_name, call_rowwise(fwd_name, x), w)
    h = 1e-6
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        fd[idx] = (loss(x + e) - loss(x - e)) / (2 * h)
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("fwd_name, bwd_name, ref", ROWWISE)
def test_rowwise_in_place_and_parallel(fwd_name, bwd_name, ref):
    x = sample((2_000, 50), seed=15)
    dy = np.random.default_rng(16).normal(size=x.shape)
    y = call_rowwise(fwd_name, x)
    np.testing.assert_allclose(y, ref(x), rtol=1e-12, atol=1e-15)
    inplace = x.copy()
    getattr(_C, fwd_name)(inplace, inplace)
    np.testing.assert_array_equal(inplace, y)
    dx = call_rowwise(bwd_name, y, dy)
    g = dy.copy()
    getattr(_C, bwd_name)(y, g, g)
    np.testing.assert_array_equal(g, dx)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        np.testing.assert_array_equal(call_rowwise(fwd_name, x), y)
        np.testing.assert_array_equal(call_rowwise(bwd_name, y, dy), dx)
    finally:
        _C.set_num_threads(before)


# ------------------------------------------------------------------ bad input

def _x(dtype=np.float64, shape=(3, 4)):
    return np.zeros(shape, dtype=dtype)


def _calls(x=None, y=None, a=None, kind="relu"):
    """Every entry point, called with X/Y replaced as given (the rest well-formed float64)."""
    x = _x() if x is None else x
    y = _x() if y is None else y
    a = np.ones(4) if a is None else a
    return {
        "activation_forward": lambda: _C.activation_forward(kind, x, y),
        "activation_backward": lambda: _C.activation_backward(kind, x, _x(), _x(), y),
        "prelu_forward": lambda: _C.prelu_forward(x, a, y),
        "prelu_backward": lambda: _C.prelu_backward(x, a, _x(), y, None),
        "softmax_forward": lambda: _C.softmax_forward(x, y),
        "softmax_backward": lambda: _C.softmax_backward(x, _x(), y),
        "log_softmax_forward": lambda: _C.log_softmax_forward(x, y),
        "log_softmax_backward": lambda: _C.log_softmax_backward(x, _x(), y),
    }


OPS = list(_calls())


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad_dtype", [np.float16, np.int64, np.int32, np.complex128])
def test_wrong_dtype_of_the_dispatch_array(op, bad_dtype):
    with pytest.raises(ValueError, match=f"^{op}: .*float32 or float64"):
        _calls(x=_x(bad_dtype))[op]()


@pytest.mark.parametrize("op", OPS)
def test_mixed_dtypes(op):
    with pytest.raises(ValueError, match=f"^{op}: .*float64.*float32"):
        _calls(y=_x(np.float32))[op]()


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous(op):
    with pytest.raises(ValueError, match=f"^{op}: (X|Y) must be C-contiguous"):
        _calls(x=np.zeros((3, 8))[:, ::2])[op]()
    with pytest.raises(ValueError, match=f"^{op}: .*C-contiguous"):
        _calls(y=np.zeros((4, 3)).T)[op]()


@pytest.mark.parametrize("op", OPS)
def test_size_mismatch(op):
    with pytest.raises(ValueError, match=rf"^{op}: .*must have 12 elements, got shape \(3, 5\)"):
        _calls(y=_x(shape=(3, 5)))[op]()


@pytest.mark.parametrize("op", OPS)
def test_read_only_output(op):
    y = _x()
    y.setflags(write=False)
    with pytest.raises(ValueError, match=f"^{op}: .*read-only"):
        _calls(y=y)[op]()


@pytest.mark.parametrize("op", OPS)
def test_non_array_is_refused_not_copied(op):
    with pytest.raises(TypeError):
        _calls(y=[[0.0] * 4] * 3)[op]()


@pytest.mark.parametrize("op", ["activation_forward", "activation_backward"])
def test_unknown_kind(op):
    with pytest.raises(ValueError, match=f"^{op}: unknown activation 'relu6'.*gelu_tanh.*softplus"):
        _calls(kind="relu6")[op]()
    with pytest.raises(ValueError, match=f"^{op}: unknown activation ''"):
        _calls(kind="")[op]()


def test_prelu_bad_slopes():
    x, y = _x(), _x()
    with pytest.raises(ValueError, match=r"^prelu_forward: alpha must have 1 or 4 elements.*got shape \(3,\)"):
        _C.prelu_forward(x, np.ones(3), y)
    with pytest.raises(ValueError, match="^prelu_backward: alpha must have 1 or 4"):
        _C.prelu_backward(x, np.ones(2), _x(), None, np.ones(2))
    with pytest.raises(ValueError, match="^prelu_forward: alpha must have dtype float64"):
        _C.prelu_forward(x, np.ones(4, dtype=np.float32), y)
    with pytest.raises(ValueError, match="^prelu_backward: dalpha must have 4 elements"):
        _C.prelu_backward(x, np.ones(4), _x(), None, np.ones(1))
    with pytest.raises(ValueError, match="^prelu_backward: dY must have 12 elements"):
        _C.prelu_backward(x, np.ones(4), np.zeros(5), None, None)
    with pytest.raises(TypeError, match="^prelu_backward: dalpha must be a numpy.ndarray or None"):
        _C.prelu_backward(x, np.ones(4), _x(), None, [0.0] * 4)
    with pytest.raises(TypeError, match="^prelu_backward: dX must be a numpy.ndarray or None"):
        _C.prelu_backward(x, np.ones(4), _x(), 3.0, None)


# ------------------------------------------------------------------ PyTorch parity

def _torch_functions():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    return torch, {
        "identity": lambda t, a: t * 1,
        "relu": lambda t, a: F.relu(t),
        "leaky_relu": lambda t, a: F.leaky_relu(t, a),
        "elu": lambda t, a: F.elu(t, a),
        "selu": lambda t, a: F.selu(t),
        "sigmoid": lambda t, a: torch.sigmoid(t),
        "tanh": lambda t, a: torch.tanh(t),
        "silu": lambda t, a: F.silu(t),
        "gelu": lambda t, a: F.gelu(t),
        "gelu_tanh": lambda t, a: F.gelu(t, approximate="tanh"),
        "softplus": lambda t, a: F.softplus(t),
    }


def test_torch_parity_elementwise():
    torch, fns = _torch_functions()
    x = points()
    x[1, :4] = [-40.0, 40.0, -200.0, 200.0]
    dy = np.random.default_rng(17).normal(size=x.shape)
    for kind in KINDS:
        a = ALPHA.get(kind, 0.0)
        t = torch.tensor(x, requires_grad=True)
        out = fns[kind](t, a)
        out.backward(torch.tensor(dy))
        np.testing.assert_allclose(fwd(kind, x, a), out.detach().numpy(), rtol=1e-12, atol=1e-15,
                                   err_msg=kind)
        np.testing.assert_allclose(bwd(kind, x, dy, a), t.grad.numpy(), rtol=1e-11, atol=1e-15, err_msg=kind)


@pytest.mark.parametrize("a_size", [1, 5])
def test_torch_parity_prelu(a_size):
    torch, _ = _torch_functions()
    rng = np.random.default_rng(18)
    x = rng.normal(size=(7, 5))
    a = rng.uniform(-0.3, 0.6, size=a_size)
    dy = rng.normal(size=x.shape)
    tx, ta = torch.tensor(x, requires_grad=True), torch.tensor(a, requires_grad=True)
    out = torch.nn.functional.prelu(tx, ta)
    out.backward(torch.tensor(dy))
    y, dx, da = np.empty_like(x), np.empty_like(x), np.empty_like(a)
    _C.prelu_forward(x, a, y)
    _C.prelu_backward(x, a, dy, dx, da)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(da, ta.grad.numpy(), rtol=1e-12)


def test_torch_parity_softmax_family():
    torch, _ = _torch_functions()
    x = sample((4, 3, 6), seed=19) * 10
    dy = np.random.default_rng(20).normal(size=x.shape)
    for fwd_name, bwd_name, fn in [("softmax_forward", "softmax_backward", torch.softmax),
                                   ("log_softmax_forward", "log_softmax_backward", torch.log_softmax)]:
        t = torch.tensor(x, requires_grad=True)
        out = fn(t, dim=-1)
        out.backward(torch.tensor(dy))
        y = call_rowwise(fwd_name, x)
        np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(call_rowwise(bwd_name, y, dy), t.grad.numpy(), rtol=1e-11, atol=1e-14)
