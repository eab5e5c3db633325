"""A dense layer's two backward GEMMs side by side (csrc/blas.cpp, gemm_rowmajor_pair).

With set_num_threads(2) and both dX = dY W and dW = dY^T X above the BLAS policy's
threshold and large (batch * in * out >= 1e8), dense_backward runs them at the same time on two threads, one BLAS thread each.
These tests check the results against a float64 NumPy oracle, that they repeat bit for
bit, that accumulation, float64, odd shapes and a compiled step keep
working, and that OpenBLAS's count is back where the policy wants it for the next GEMM.
No timing: benchmarks/threads.py --pair measures it.
"""
import ctypes

import numpy as np
import pytest

import gradcore
from gradcore import _C, _blas

entry_points = _blas.thread_entry_points()
pytestmark = pytest.mark.skipif(entry_points is None or not _C.blas_thread_control(),
                                reason="SciPy's BLAS is not an OpenBLAS with a pthreads pool")

# (batch, in, out): both GEMMs above the pairing size (batch * in * out >= 1e8), odd sizes included
PAIRED = [(256, 1024, 512), (257, 641, 1031), (300, 1000, 401), (1100, 1500, 64)]


@pytest.fixture
def threads():
    saved = gradcore.get_num_threads()
    yield gradcore.set_num_threads
    _C.set_blas_policy(True)
    gradcore.set_num_threads(saved)


def openblas_threads() -> int:
    return int(ctypes.CFUNCTYPE(ctypes.c_int)(entry_points[1])())


def data(batch, inp, out, dtype, seed=0):
    rng = np.random.default_rng(seed + batch + 3 * inp + 7 * out)
    X = rng.standard_normal((batch, inp)).astype(dtype)
    W = rng.standard_normal((out, inp)).astype(dtype)
    dY = rng.standard_normal((batch, out)).astype(dtype)
    dW0 = rng.standard_normal((out, inp)).astype(dtype)
    return X, W, dY, dW0


def backward(X, W, dY, dW0, accumulate):
    dX = np.full((X.shape[0], X.shape[1]), np.nan, X.dtype)
    dW = dW0.copy() if accumulate else np.full_like(dW0, np.nan)
    db = np.zeros(dY.shape[1], X.dtype) if accumulate else np.full(dY.shape[1], np.nan, X.dtype)
    _C.dense_backward(X, W, dY, dX, dW, db, accumulate)
    return dX, dW, db


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("shape", PAIRED)
def test_paired_backward_matches_numpy_and_repeats_its_bits(threads, dtype, accumulate, shape):
    """The oracle, and the same bits on every call (the column split is a function of the
    shape only). dW is one whole GEMM on one thread: the one-thread bits. dX is cut in two
    column ranges, which OpenBLAS may round differently from one whole GEMM for some
    float64 shapes (a last bit), so dX is held to the oracle only."""
    batch, inp, out = shape
    threads(2)
    assert _C.blas_threads_for(batch, inp, out) == 2 and _C.blas_threads_for(out, inp, batch) == 2
    assert batch * inp * out >= 1e8
    X, W, dY, dW0 = data(batch, inp, out, dtype)
    two = backward(X, W, dY, dW0, accumulate)
    again = backward(X, W, dY, dW0, accumulate)
    for a, b in zip(two, again):
        assert np.array_equal(a, b)
    threads(1)
    one = backward(X, W, dY, dW0, accumulate)
    assert np.array_equal(two[1], one[1]) and np.array_equal(two[2], one[2])
    X64, W64, dY64 = X.astype(np.float64), W.astype(np.float64), dY.astype(np.float64)
    want_dW = dY64.T @ X64 + (dW0.astype(np.float64) if accumulate else 0)
    tol = 2e-4 if dtype == np.float32 else 1e-11
    scale = np.sqrt(max(batch, inp, out))
    np.testing.assert_allclose(two[0], dY64 @ W64, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(two[1], want_dW, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(two[2], dY64.sum(axis=0), rtol=tol, atol=tol * scale)


def test_only_one_of_the_two_is_not_paired_and_still_right(threads):
    """dX only, dW only, a pair below the pairing size and one with a GEMM below the
    policy's threshold (run in order)."""
    threads(2)
    X, W, dY, dW0 = data(256, 512, 256, np.float32)
    dX = np.empty_like(X)
    _C.dense_backward(X, W, dY, dX, None, None, False)
    np.testing.assert_allclose(dX, dY.astype(np.float64) @ W, rtol=2e-4, atol=5e-3)
    dW = np.empty_like(W)
    _C.dense_backward(X, W, dY, None, dW, None, False)
    np.testing.assert_allclose(dW, dY.T.astype(np.float64) @ X, rtol=2e-4, atol=5e-3)
    # 512 -> 10 at batch 600: dX (600, 512, 10) is below the threshold, dW is not paired
    X, W, dY, dW0 = data(600, 512, 10, np.float32)
    assert _C.blas_threads_for(600, 512, 10) == 1
    got = backward(X, W, dY, dW0, False)
    threads(1)
    assert all(np.array_equal(a, b) for a, b in zip(got, backward(X, W, dY, dW0, False)))


def test_openblas_count_follows_the_policy_after_a_pair(threads):
    threads(2)
    X, W, dY, dW0 = data(256, 1024, 512, np.float32)
    backward(X, W, dY, dW0, False)
    assert openblas_threads() == 1  # the pair ran, holding OpenBLAS at one thread
    Xs, Ws, dYs, dW0s = data(128, 512, 256, np.float32)  # above the threshold, below the pairing size
    backward(Xs, Ws, dYs, dW0s, False)
    assert openblas_threads() == 2  # in turn, each GEMM on 2 OpenBLAS threads
    backward(X, W, dY, dW0, False)
    Y = np.empty((256, 512), np.float32)
    _C.dense_forward(X, W, None, Y, "identity", 0.0, None)  # (256, 512, 1024): two threads
    assert openblas_threads() == 2
    np.testing.assert_allclose(Y, X.astype(np.float64) @ W.T, rtol=2e-4, atol=5e-3)


def test_policy_off_leaves_the_pair_to_openblas(threads):
    """With the policy switched off every GEMM runs as before on OpenBLAS's threads."""
    threads(2)
    X, W, dY, dW0 = data(256, 1024, 512, np.float32)
    _C.set_blas_policy(False)
    got = backward(X, W, dY, dW0, True)
    assert openblas_threads() == 2
    np.testing.assert_allclose(got[1], dY.T.astype(np.float64) @ X + dW0, rtol=2e-4, atol=5e-3)


def test_compiled_step_on_two_threads_matches_one_thread(threads):
    """A network whose middle layer's backward is paired: a few compiled Adam steps on 2
    threads give the parameters of the same steps on 1 thread (float32, widths multiples
    of 64: the same bits here; held to 1e-6 so a last-bit difference of a split GEMM on
    another BLAS build does not fail it)."""
    from gradcore import losses, nn, optim

    def train(n):
        threads(n)
        gradcore.manual_seed(11)
        net = nn.Sequential(nn.Dense(256, 1024, activation="relu"), nn.Dense(1024, 512, activation="relu"),
                            nn.Dense(512, 10))
        opt = optim.Adam(net.parameters(), lr=1e-3, amsgrad=True, global_clip_norm=5.0)
        step = gradcore.compile_step(net, losses.CrossEntropyLoss(), opt)
        rng = np.random.default_rng(2)
        x = rng.standard_normal((256, 256)).astype(np.float32)
        y = rng.integers(0, 10, 256)
        for _ in range(3):
            step(x, y)
        return [p.data.copy() for p in net.parameters()]

    assert _C.blas_threads_for(256, 1024, 512) == 2 and _C.blas_threads_for(512, 1024, 256) == 2
    two, one = train(2), train(1)
    for a, b in zip(two, one):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eager_and_compiled_agree_with_a_paired_layer(threads, dtype):
    """Eager and compiled steps on 2 threads, both through the paired dense_backward
    (batch 256, a 1024 -> 512 layer): test_compiled's parity check, a few steps."""
    from test_compiled import run_parity

    from gradcore import nn, optim

    threads(2)

    def make(dt):
        return nn.Sequential(nn.Dense(32, 1024, "relu"), nn.Dense(1024, 512, "tanh"), nn.Dense(512, 1), dtype=dt)

    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(512, 32)), rng.normal(size=(512, 1))
    assert _C.blas_threads_for(256, 1024, 512) == 2 and 256 * 1024 * 512 >= 1e8
    run_parity(make, "mse", lambda net: optim.Adam(net.parameters(), lr=1e-3), dtype, X, Y, steps=3, batch=256)
