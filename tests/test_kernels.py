"""The compiled kernels called directly: NumPy references, hypothesis shapes, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcore
from gradcore import _C

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}


def rand(rng, shape, dtype, scale=1.0, offset=0.0):
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


# ---------------------------------------------------------------------- dense
def dense_reference(X, W, b, dY):
    """W is (out, in), as torch.nn.Linear stores it."""
    return X @ W.T + (0 if b is None else b), dY @ W, dY.T @ X, dY.sum(0)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(batch=st.integers(1, 40), n_in=st.integers(1, 70), n_out=st.integers(1, 70), bias=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_dense_against_numpy(batch, n_in, n_out, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    X, W, dY = rand(rng, (batch, n_in), dtype), rand(rng, (n_out, n_in), dtype), rand(rng, (batch, n_out), dtype)
    b = rand(rng, n_out, dtype) if bias else None
    Y, dX, dW, db = np.empty((batch, n_out), dtype), np.empty_like(X), np.empty_like(W), np.empty(n_out, dtype)
    _C.dense_forward(X, W, b, Y)
    _C.dense_backward(X, W, dY, dX, dW, db)
    ref = dense_reference(X.astype(np.float64), W.astype(np.float64), None if b is None else b.astype(np.float64),
                          dY.astype(np.float64))
    for got, want in zip((Y, dX, dW, db), ref):
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_accumulate_and_fused_activation(dtype):
    rng = np.random.default_rng(0)
    X, W, b, dY = rand(rng, (5, 4), dtype), rand(rng, (3, 4), dtype), rand(rng, 3, dtype), rand(rng, (5, 3), dtype)
    dW, db = np.ones_like(W), np.ones_like(b)
    _C.dense_backward(X, W, dY, None, dW, db, True)
    np.testing.assert_allclose(dW, 1 + dY.T @ X, **TOL[dtype])
    np.testing.assert_allclose(db, 1 + dY.sum(0), **TOL[dtype])
    Y, Z = np.empty((5, 3), dtype), np.empty((5, 3), dtype)
    _C.dense_forward(X, W, b, Y, "tanh", 0.0, Z)
    np.testing.assert_allclose(Z, X @ W.T + b, **TOL[dtype])
    np.testing.assert_allclose(Y, np.tanh(X @ W.T + b), **TOL[dtype])


def test_dense_bad_input_is_refused():
    X, W = np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)  # W (out, in)
    with pytest.raises(ValueError, match=r"dense_forward: X has 3 features but W \(out, in\) has shape \(3, 2\)"):
        _C.dense_forward(X, np.ones((3, 2), np.float32), None, np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"dense_backward: dW must have shape \(2, 3\)"):
        _C.dense_backward(X, W, np.ones((4, 2), np.float32), None, np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="dtype float32, got float64"):
        _C.dense_forward(X, W.astype(np.float64), None, np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.dense_forward(X, W, None, np.empty((2, 4), np.float32).T)
    with pytest.raises(ValueError, match="read-only"):
        Y = np.empty((4, 2), np.float32)
        Y.flags.writeable = False
        _C.dense_forward(X, W, None, Y)
    with pytest.raises(ValueError, match="float32 or float64"):
        _C.dense_forward(X.astype(np.int64), W, None, np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"Y must have shape \(4, 2\)"):
        _C.dense_forward(X, W, None, np.empty((4, 3), np.float32))


# ---------------------------------------------------------------------- batch norm
def bn_reference(X, g, b, dY, eps=1e-5):
    n = X.shape[0]
    mu, var = X.mean(0), X.var(0)
    inv = 1 / np.sqrt(var + eps)
    xhat = (X - mu) * inv
    Y = xhat * g + b
    dg, db = (dY * xhat).sum(0), dY.sum(0)
    dX = g * inv / n * (n * dY - db - xhat * dg)
    return Y, dX, dg, db, mu, X.var(0, ddof=1)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(n=st.integers(2, 64), c=st.integers(1, 700), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_batch_norm_against_numpy(n, c, dtype, seed):
    rng = np.random.default_rng(seed)
    # a large mean makes x - mean cancel; float32 then loses digits as it does in PyTorch,
    # so the offset is exercised in float64 and float32 checks accuracy on centred data
    X = rand(rng, (n, c), dtype, scale=3.0, offset=5.0 if dtype == np.float64 else 0.0)
    g, b, dY = rand(rng, c, dtype), rand(rng, c, dtype), rand(rng, (n, c), dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    Y, mean, inv = np.empty_like(X), np.empty(c, dtype), np.empty(c, dtype)
    _C.batch_norm_forward_train(X, g, b, rm, rv, 0.1, 1e-5, Y, mean, inv)
    dX, dg, db = np.empty_like(X), np.empty(c, dtype), np.empty(c, dtype)
    _C.batch_norm_backward(X, dY, g, mean, inv, dX, dg, db, True, False)
    rY, rdX, rdg, rdb, mu, uvar = bn_reference(*(a.astype(np.float64) for a in (X, g, b, dY)))
    tol = dict(rtol=5e-3, atol=5e-3) if dtype == np.float32 else dict(rtol=1e-8, atol=1e-9)
    for got, want in ((Y, rY), (dX, rdX), (dg, rdg), (db, rdb), (rm, 0.1 * mu), (rv, 0.9 + 0.1 * uvar)):
        np.testing.assert_allclose(got, want, **tol)


def test_batch_norm_eval_backward_and_accumulate():
    rng = np.random.default_rng(3)
    X, dY = rand(rng, (6, 4), np.float64), rand(rng, (6, 4), np.float64)
    g, rm, rv = rand(rng, 4, np.float64), rand(rng, 4, np.float64), np.abs(rand(rng, 4, np.float64)) + 0.5
    Y = np.empty_like(X)
    _C.batch_norm_forward_eval(X, g, None, rm, rv, 1e-5, Y)
    inv = 1 / np.sqrt(rv + 1e-5)
    np.testing.assert_allclose(Y, (X - rm) * inv * g, rtol=1e-12)
    dX, dg, db = np.empty_like(X), np.ones(4), np.ones(4)
    _C.batch_norm_backward(X, dY, g, rm, inv, dX, dg, db, False, True)
    np.testing.assert_allclose(dX, dY * g * inv, rtol=1e-12)
    np.testing.assert_allclose(dg, 1 + (dY * (X - rm) * inv).sum(0), rtol=1e-12)
    np.testing.assert_allclose(db, 1 + dY.sum(0), rtol=1e-12)


def test_batch_norm_errors():
    c = 3
    args = lambda X: (X, None, None, None, None, 0.1, 1e-5, np.empty_like(X), np.empty(c), np.empty(c))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        _C.batch_norm_forward_train(*args(np.ones((1, c))))
    with pytest.raises(ValueError, match="empty batch"):
        _C.batch_norm_forward_train(*args(np.ones((0, c))))
    with pytest.raises(ValueError, match="2-d"):
        _C.batch_norm_forward_train(*args(np.ones(c)))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(rows=st.integers(1, 50), d=st.integers(1, 300), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_layer_norm_against_numpy(rows, d, dtype, seed):
    rng = np.random.default_rng(seed)
    X, g, b, dY = rand(rng, (rows, d), dtype, 2, 1), rand(rng, d, dtype), rand(rng, d, dtype), rand(rng, (rows, d), dtype)
    Y, mean, inv = np.empty_like(X), np.empty(rows, dtype), np.empty(rows, dtype)
    _C.layer_norm_forward(X, g, b, 1e-5, Y, mean, inv)
    dX, dg, db = np.empty_like(X), np.empty(d, dtype), np.empty(d, dtype)
    _C.layer_norm_backward(X, dY, g, mean, inv, dX, dg, db, False)
    X64, g64, dY64 = X.astype(np.float64), g.astype(np.float64), dY.astype(np.float64)
    mu, var = X64.mean(1, keepdims=True), X64.var(1, keepdims=True)
    xhat = (X64 - mu) / np.sqrt(var + 1e-5)
    G = dY64 * g64
    rdX = (G - G.mean(1, keepdims=True) - xhat * (G * xhat).mean(1, keepdims=True)) / np.sqrt(var + 1e-5)
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == np.float32 else dict(rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(Y, xhat * g64 + b, **tol)
    np.testing.assert_allclose(dX, rdX, **tol)
    np.testing.assert_allclose(dg, (dY64 * xhat).sum(0), **tol)
    np.testing.assert_allclose(db, dY64.sum(0), **tol)


# ---------------------------------------------------------------------- losses
@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_are_stable_for_huge_logits(dtype):
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]], dtype)
    g = np.empty_like(z)
    loss = _C.cross_entropy_loss(z, np.array([0, 2], np.int64), g)
    assert np.isfinite(loss) and abs(loss - 0.5 * (0 + (1 + np.log1p(np.exp(-1))))) < 1e-3
    assert np.isfinite(g).all()
    t = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype)
    loss = _C.bce_with_logits_loss(z, t, g)
    ref = np.mean(np.maximum(z.astype(np.float64), 0) - z * t + np.log1p(np.exp(-np.abs(z.astype(np.float64)))))
    assert loss == pytest.approx(ref, rel=1e-6)
    sig = 1 / (1 + np.exp(-np.clip(z.astype(np.float64), -500, 500)))
    np.testing.assert_allclose(g, (sig - t) / z.size, atol=1e-7)


def test_loss_kernel_errors():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match="label 4 at row 1 is out of range for 4 classes"):
        _C.cross_entropy_loss(z, np.array([0, 4, 1], np.int64), np.empty_like(z))
    with pytest.raises(ValueError, match="int64"):
        _C.cross_entropy_loss(z, np.array([0, 1, 1], np.int32))
    with pytest.raises(ValueError, match=r"mse_loss: input has shape \(3, 4\) but target has shape \(4, 3\)"):
        _C.mse_loss(z, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="empty"):
        _C.cross_entropy_loss(np.zeros((0, 4)), np.zeros(0, np.int64))


# ---------------------------------------------------------------------- gradient statistics
def stats_reference(a):
    a64 = a.astype(np.float64).ravel()
    finite = np.isfinite(a64)
    return [np.sum(a64 ** 2), np.sqrt(np.sum(a64 ** 2)), np.abs(a64[finite]).max() if finite.any() else 0.0,
            np.count_nonzero(~finite), a64.mean() if a64.size else 0.0, a64.std() if a64.size else 0.0]


def test_grad_stats_against_numpy():
    rng = np.random.default_rng(11)
    arrays = [rand(rng, (300, 70), np.float32), rand(rng, 1, np.float64), np.zeros(0, np.float32),
              rand(rng, (5, 4, 3), np.float64, 10), rand(rng, 200_001, np.float32, 0.01, 0.3)]
    table = _C.grad_stats(arrays)
    assert table.shape == (5, 6)
    for row, a in zip(table, arrays):
        np.testing.assert_allclose(row, stats_reference(a), rtol=1e-5, atol=1e-9)
    # float32 partial sums in a different order: agree to float32 rounding
    np.testing.assert_allclose(_C.sum_of_squares(arrays), table[:, 0], rtol=1e-6)
    assert _C.global_norm(arrays) == pytest.approx(np.sqrt(table[:, 0].sum()), rel=1e-6)


def test_grad_stats_count_nonfinite_and_ignore_them_in_max():
    a = np.linspace(-2, 3, 1000).astype(np.float32)
    a[[5, 600]] = np.nan
    a[7] = np.inf
    a[900] = -np.inf
    row = _C.grad_stats([a])[0]
    assert row[3] == 4
    assert row[2] == pytest.approx(np.abs(a[np.isfinite(a)]).max())
    assert np.isnan(row[0])


def test_grad_stats_flat_matches_per_array():
    rng = np.random.default_rng(2)
    parts = [rand(rng, n, np.float64) for n in (10, 0, 1000, 3)]
    flat = np.concatenate(parts)
    offsets = np.concatenate([[0], np.cumsum([p.size for p in parts])]).astype(np.int64)
    np.testing.assert_allclose(_C.grad_stats_flat(flat, offsets), _C.grad_stats(parts), rtol=1e-12)
    with pytest.raises(ValueError, match="offsets"):
        _C.grad_stats_flat(flat, offsets[:-1])


def test_stats_and_dropout_do_not_depend_on_thread_count():
    rng = np.random.default_rng(5)
    a = rand(rng, 3_000_000, np.float32)
    before = gradcore.get_num_threads()
    try:
        results = []
        for t in (1, 2):
            gradcore.set_num_threads(t)
            mask = np.empty(a.shape, np.uint8)
            y = np.empty_like(a)
            _C.dropout_forward(a, y, mask, 0.3, 1234, 0)
            results.append((_C.grad_stats([a]), mask, y))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        np.testing.assert_array_equal(results[0][2], results[1][2])
    finally:
        gradcore.set_num_threads(before)


# ---------------------------------------------------------------------- dropout
def test_dropout_mask_statistics_and_seeds():
    x = np.ones(1_000_000, np.float32)
    y, m1, m2 = np.empty_like(x), np.empty(x.shape, np.uint8), np.empty(x.shape, np.uint8)
    p = 0.3
    _C.dropout_forward(x, y, m1, p, 42, 0)
    kept = m1.mean()
    assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / x.size)
    np.testing.assert_allclose(y, m1 / (1 - p), rtol=1e-6)
    _C.dropout_forward(x, y, m2, p, 42, 0)
    np.testing.assert_array_equal(m1, m2)
    _C.dropout_forward(x, y, m2, p, 43, 0)
    assert (m1 != m2).mean() > 0.3
    _C.dropout_forward(x[:1000], y[:1000], m2[:1000], p, 42, 500)
    np.testing.assert_array_equal(m2[:500], m1[500:1000])
    dY, dX = np.full_like(x, 2.0), np.empty_like(x)
    _C.dropout_backward(dY, m1, p, dX)
    np.testing.assert_allclose(dX, 2.0 * m1 / (1 - p), rtol=1e-6)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="p must be"):
            _C.dropout_forward(x, y, m1, bad, 0, 0)
