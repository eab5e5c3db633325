"""BLAS threads follow GEMM size (issue 8; csrc/blas.cpp, gradcore/_blas.py).

gradcore hands OpenBLAS's set / get-num-threads entry points to the compiled module, and
every GEMM then runs on one BLAS thread below the measured size and on
gradcore.set_num_threads' count above it. These tests check the rule, that GEMMs really
leave OpenBLAS at the count the rule gives, that the results are the same bits as with
OpenBLAS choosing its own threads (and right against a float64 NumPy oracle), and that
set_num_threads still governs everything. No timing: benchmarks/threads.py --gemm measures
the threshold.
"""
import ctypes

import numpy as np
import pytest

import gradcore
from gradcore import _C, _blas

entry_points = _blas.thread_entry_points()
pytestmark = pytest.mark.skipif(entry_points is None or not _C.blas_thread_control(),
                                reason="SciPy's BLAS is not an OpenBLAS with a pthreads pool")

# (m, n, k) of row-major C(m, n) = A(m, k) B(k, n) on each side of the threshold
SMALL = [(32, 50, 20), (800, 10, 20), (40, 50, 800), (128, 128, 64), (64, 64, 1024), (800, 40, 50)]
LARGE = [(800, 128, 64), (100, 100, 400), (128, 128, 256), (256, 2048, 1024), (10, 2048, 256), (256, 10, 2048)]


def openblas_threads() -> int:
    """SciPy's OpenBLAS's current count, read through the entry point gradcore was given."""
    get = ctypes.CFUNCTYPE(ctypes.c_int)(entry_points[1])
    return int(get())


@pytest.fixture
def threads():
    """Restores gradcore's thread count and the policy switch after the test."""
    saved = gradcore.get_num_threads()
    yield gradcore.set_num_threads
    _C.set_blas_policy(True)
    gradcore.set_num_threads(saved)


def forward(m, n, k, dtype, seed=0):
    """Y (m, n) = X W^T through dense_forward (the GEMM X W^T), with its inputs."""
    rng = np.random.default_rng(seed)
    X, W = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((n, k)).astype(dtype)
    Y = np.empty((m, n), dtype)
    _C.dense_forward(X, W, None, Y, "identity", 0.0, None)
    return Y, X, W


def test_entry_points_are_scipys_openblas():
    pool = _blas._scipy_pool()
    assert pool is not None and pool["internal_api"] == "openblas"
    set_addr, get_addr, count = entry_points
    assert set_addr and get_addr and set_addr != get_addr and count >= 1


@pytest.mark.parametrize("mnk", SMALL)
def test_small_gemm_gets_one_thread(threads, mnk):
    threads(2)
    assert _C.blas_threads_for(*mnk) == 1
    threads(3)  # any user count: below the threshold one thread
    assert _C.blas_threads_for(*mnk) == 1


@pytest.mark.parametrize("mnk", LARGE)
def test_large_gemm_gets_the_user_count(threads, mnk):
    for n in (2, 3, 1):
        threads(n)
        assert _C.blas_threads_for(*mnk) == n
        assert _C.blas_user_threads() == n


def test_rule_boundaries(threads):
    threads(2)
    # from m*n*k = 4e6 when C has 8192 values or more
    assert _C.blas_threads_for(100, 100, 400) == 2 and _C.blas_threads_for(64, 128, 488) == 1
    assert _C.blas_threads_for(800, 50, 99) == 1 and _C.blas_threads_for(800, 50, 100) == 2
    # ... or 256 rows or columns
    assert _C.blas_threads_for(64, 127, 1 << 20) == 1 and _C.blas_threads_for(255, 16, 1024) == 1
    assert _C.blas_threads_for(256, 16, 1024) == 2 and _C.blas_threads_for(16, 256, 1024) == 2
    # empty GEMMs and the policy switched off
    assert _C.blas_threads_for(0, 0, 0) == 1
    _C.set_blas_policy(False)
    assert not _C.blas_policy()
    assert _C.blas_threads_for(32, 50, 20) == 2


def test_blas_threads_for_rejects_negative_sizes():
    with pytest.raises(ValueError, match=r"blas_threads_for: dimensions must be >= 0, got \(-1, 2, 3\)"):
        _C.blas_threads_for(-1, 2, 3)


def test_set_blas_threading_rejects_half_a_pair():
    with pytest.raises(ValueError, match="both entry points or neither"):
        _C.set_blas_threading(entry_points[0], 0, 2)
    with pytest.raises(ValueError, match="default_threads must be >= 1, got 0"):
        _C.set_blas_threading(entry_points[0], entry_points[1], 0)
    assert _C.blas_thread_control()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_gemm_leaves_openblas_at_the_policys_count(threads, dtype):
    threads(2)
    for m, n, k in SMALL[:3] + LARGE[:3] + SMALL[3:] + LARGE[3:]:
        forward(m, n, k, dtype)
        assert openblas_threads() == _C.blas_threads_for(m, n, k), (m, n, k)


def test_backward_gemms_follow_their_own_shapes(threads):
    threads(2)
    rng = np.random.default_rng(1)
    batch, inp, out = 4096, 32, 64
    X, W = rng.standard_normal((batch, inp)).astype(np.float32), rng.standard_normal((out, inp)).astype(np.float32)
    dY, dX, dW = rng.standard_normal((batch, out)).astype(np.float32), np.empty_like(X), np.empty_like(W)
    _C.dense_backward(X, W, dY, dX, None, None, False)  # dX = dY W: (4096, 32, 64), 8.4M
    assert openblas_threads() == 2
    was = _C.set_dense_small("off")  # the BLAS's dW (a small layer's runs without it by default)
    try:
        _C.dense_backward(X, W, dY, None, dW, None, False)  # dW = dY^T X: (64, 32, 4096), a small C
    finally:
        _C.set_dense_small(was)
    assert openblas_threads() == 1
    np.testing.assert_allclose(dX, dY.astype(np.float64) @ W, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dW, dY.T.astype(np.float64) @ X, rtol=1e-4, atol=5e-3)


def test_set_num_threads_one_keeps_every_gemm_on_one_thread(threads):
    threads(1)
    from threadpoolctl import threadpool_info

    for m, n, k in LARGE[:4]:
        forward(m, n, k, np.float32)
        assert openblas_threads() == 1
    assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    assert gradcore.get_num_threads() == 1 and gradcore.info()["blas_threads"] == 1


def test_set_num_threads_sets_openblas_at_once(threads):
    threads(1)
    assert openblas_threads() == 1
    threads(2)
    assert openblas_threads() == 2 and gradcore.info()["blas_threads"] == 2


def test_a_count_changed_behind_gradcores_back_is_corrected(threads):
    """The count is read before each GEMM, not cached: threadpoolctl's change is seen."""
    from threadpoolctl import threadpool_limits

    threads(2)
    forward(256, 2048, 1024, np.float32)
    assert openblas_threads() == 2
    with threadpool_limits(limits=1, user_api="blas"):
        assert openblas_threads() == 1
        forward(256, 2048, 1024, np.float32)
        assert openblas_threads() == 2
        forward(32, 50, 20, np.float32)
        assert openblas_threads() == 1


def test_without_entry_points_openblas_is_left_alone(threads):
    threads(2)
    try:
        _C.set_blas_threading(0, 0, 1)
        assert not _C.blas_thread_control()
        forward(32, 50, 20, np.float32)
        assert openblas_threads() == 2  # not lowered for a small GEMM any more
        Y, X, W = forward(128, 64, 32, np.float64)
        np.testing.assert_allclose(Y, X @ W.T, rtol=1e-12, atol=1e-12)
    finally:
        _blas.install(_C)
    assert _C.blas_thread_control() and _C.blas_user_threads() == 2  # set_num_threads' count kept


SHAPES = SMALL + LARGE[:4] + [(10, 512, 600), (800, 64, 464)]


def gemms(m, n, k, dtype):
    """A zero-argument run of the three dense GEMMs with C (m, n) and inner size k:
    Y = X W^T, dX = dY W and dW = dY^T X (the last with its inner size m)."""
    rng = np.random.default_rng(m * 7 + n * 3 + k)
    X, W = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((n, k)).astype(dtype)
    dY = rng.standard_normal((m, n)).astype(dtype)

    def run():
        Y, dX, dW = np.empty((m, n), dtype), np.empty((m, k), dtype), np.empty((n, k), dtype)
        _C.dense_forward(X, W, None, Y, "identity", 0.0, None)
        _C.dense_backward(X, W, dY, dX, dW, None, False)
        return Y, dX, dW

    return run, (X, W, dY)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_the_bits_of_the_thread_count_the_policy_picks(threads, dtype):
    """The policy only chooses the thread count. OpenBLAS itself gives different bits on 1
    and 2 threads for some inner sizes (k = 600, 464: its threaded driver cuts k otherwise),
    so each GEMM must give exactly what OpenBLAS deciding alone gives on the count the
    policy picked: the previous behaviour's bits (policy off, 2 threads) when that is 2,
    the one-thread bits when it is 1; and all match float64 NumPy."""
    tol = 2e-4 if dtype == np.float32 else 1e-11
    thread_dependent = 0
    for m, n, k in SHAPES:
        run, (X, W, dY) = gemms(m, n, k, dtype)
        threads(2)
        with_policy = run()
        _C.set_blas_policy(False)
        previous = run()
        threads(1)
        one_thread = run()
        _C.set_blas_policy(True)
        threads(2)
        picks = (_C.blas_threads_for(m, n, k), _C.blas_threads_for(m, k, n), _C.blas_threads_for(n, k, m))
        for got, prev, one, t in zip(with_policy, previous, one_thread, picks):
            assert np.array_equal(got, prev if t == 2 else one), (m, n, k, t)
            thread_dependent += not np.array_equal(prev, one)
        X64, W64, dY64 = X.astype(np.float64), W.astype(np.float64), dY.astype(np.float64)
        for got, want in zip(with_policy, (X64 @ W64.T, dY64 @ W64, dY64.T @ X64)):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(max(m, n, k)))
    if entry_points[2] > 1:  # the shapes above include OpenBLAS's thread-dependent cases
        assert thread_dependent >= 2


def test_below_the_threshold_results_no_longer_depend_on_set_num_threads(threads):
    """dW = dY^T X of a 512 -> 10 layer at batch 600: OpenBLAS on 2 threads gives other bits
    than on 1; the policy runs it on one thread whatever set_num_threads says."""
    run, _ = gemms(600, 10, 512, np.float32)  # dW (10, 512), inner size 600
    assert _C.blas_threads_for(10, 512, 600) == 1
    threads(2)
    two = run()[2]
    threads(1)
    one = run()[2]
    assert np.array_equal(two, one)


def test_a_training_step_gives_the_same_bits_with_and_without_the_policy(threads):
    """Three eager Adam steps of a network whose GEMMs fall on both sides of the
    threshold, policy on against off (OpenBLAS choosing). Batch 512 and widths that are
    multiples of 32 or below 400: inner sizes for which OpenBLAS gives the same bits on 1
    and 2 threads (see the test above for one where it does not)."""
    from gradcore import losses, nn, optim

    def train(policy: bool):
        _C.set_blas_policy(policy)
        gradcore.manual_seed(3)
        net = nn.Sequential(nn.Dense(64, 256, activation="relu"), nn.Dense(256, 512, activation="tanh"),
                            nn.Dense(512, 10))
        opt = optim.Adam(net.parameters(), lr=1e-3)
        rng = np.random.default_rng(5)
        x, y = gradcore.Tensor(rng.standard_normal((512, 64)).astype(np.float32)), rng.integers(0, 10, 512)
        for _ in range(3):
            opt.zero_grad()
            losses.CrossEntropyLoss()(net(x), y).backward()
            opt.step()
        return [p.data.copy() for p in net.parameters()]

    threads(2)
    assert _C.blas_threads_for(10, 512, 512) == 1 and _C.blas_threads_for(512, 512, 256) == 2
    on, off = train(True), train(False)
    assert len(on) == 6
    for a, b in zip(on, off):
        assert np.array_equal(a, b)
