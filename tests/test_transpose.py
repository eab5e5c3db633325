"""The blocked transpose kernel (csrc/transpose.cpp, ``_C.transpose``) and the Dense
backward's dX that runs through it (csrc/dense.cpp: float32 layers with a weight of at
least 1M values, dX = dY W through blocks of W transposed into a buffer).

Oracles: NumPy's ``A.T`` compared bit for bit (the transpose is a copy: NaN payloads and
signed zeros included); dX against NumPy's product in float64 and against PyTorch's
autograd when it is installed; the compiled step against the eager one (float32 to 1e-5).
"""
import numpy as np
import pytest

import gradcore
from gradcore import _C, losses, nn, optim
from gradcore.compiled import compile_step

DTYPES = [np.float32, np.float64]
BITS = {np.float32: np.uint32, np.float64: np.uint64}


def _random_bits(shape, dtype, seed):
    """Values of every kind: random bit patterns (NaNs with payloads, infinities,
    subnormals, signed zeros) among ordinary numbers."""
    rng = np.random.default_rng(seed)
    ints = BITS[dtype]
    a = rng.standard_normal(shape).astype(dtype)
    raw = rng.integers(0, np.iinfo(ints).max, size=shape, dtype=ints, endpoint=True).view(dtype)
    pick = rng.random(shape) < 0.3
    a[pick] = raw[pick]
    a.flat[:: max(1, a.size // 7)] = -0.0
    return a


def _aligned_empty(shape, dtype, offset_bytes=0):
    """An uninitialised C-contiguous array starting `offset_bytes` past a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape))
    raw = np.empty(n * itemsize + 128 + offset_bytes, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + offset_bytes
    return raw[start:start + n * itemsize].view(dtype).reshape(shape)


def _same_bits(x, y):
    return np.array_equal(np.ascontiguousarray(x).view(BITS[x.dtype.type]),
                          np.ascontiguousarray(y).view(BITS[y.dtype.type]))


# ---------------------------------------------------------------------- the kernel
# tile sides are 16 (float32) and 8 (float64) values: shapes below, at, around and far
# from multiples of both, thin and wide
SHAPES = [(1, 1), (1, 7), (7, 1), (2, 3), (8, 8), (16, 16), (15, 17), (17, 15), (9, 33), (33, 9), (31, 64),
          (64, 31), (100, 37), (37, 100), (128, 128), (129, 127), (1, 300), (300, 1), (3, 1000), (1000, 3),
          (250, 260), (513, 47)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_transpose_is_numpy_transpose_bit_for_bit(shape, dtype):
    A = _random_bits(shape, dtype, seed=shape[0] * 1000 + shape[1])
    B = np.full(shape[::-1], 7, dtype=dtype)
    _C.transpose(A, B)
    assert _same_bits(B, A.T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 4, 8, 32])
def test_large_transpose_any_alignment(dtype, offset):
    """A destination beyond the streaming threshold (4 MB): 64-byte aligned rows take the
    non-temporal stores, the others the ordinary ones; both are the same copy."""
    rows, cols = (1040, 1100) if dtype is np.float32 else (700, 776)
    A = _random_bits((rows, cols), dtype, seed=offset)
    B = _aligned_empty((cols, rows), dtype, offset)
    B[...] = 3
    _C.transpose(A, B)
    assert _same_bits(B, A.T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_transpose_on_threads(dtype, threads):
    """Above the kernel's grain the strips are shared by the threads: the same result."""
    old = gradcore.get_num_threads()
    gradcore.set_num_threads(threads)
    try:
        A = _random_bits((2048 + 5, 2048 + 3), dtype, seed=threads)
        B = np.empty((2048 + 3, 2048 + 5), dtype=dtype)
        _C.transpose(A, B)
        assert _same_bits(B, A.T)
    finally:
        gradcore.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_strides(dtype):
    """A wider than the columns taken, B wider than the rows: B's other columns untouched."""
    A = _random_bits((37, 50), dtype, seed=1)
    B = np.full((41, 45), 5, dtype=dtype)  # cols 41 <= 50, rows 37 <= 45
    _C.transpose(A, B)
    assert _same_bits(B[:, :37], A[:, :41].T)
    assert np.all(B[:, 37:] == 5)


def test_transpose_refuses_bad_arguments():
    A = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="more rows than A"):
        _C.transpose(A, np.zeros((7, 4), np.float32))
    with pytest.raises(ValueError, match="has more rows than B"):
        _C.transpose(A, np.zeros((6, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        _C.transpose(A, np.zeros((6, 4), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.transpose(np.zeros((6, 4), np.float32).T, np.zeros((6, 4), np.float32))
    with pytest.raises(ValueError, match="2-d"):
        _C.transpose(np.zeros(6, np.float32), np.zeros((6, 1), np.float32))
    buf = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        _C.transpose(buf, buf)
    with pytest.raises(ValueError, match="read-only"):
        B = np.zeros((6, 4), np.float32)
        B.flags.writeable = False
        _C.transpose(A, B)


def test_transpose_empty():
    B = np.full((0, 3), 1.0)
    _C.transpose(np.zeros((3, 0)), B)
    B = np.full((4, 0), 1.0, np.float32)
    _C.transpose(np.zeros((0, 4), np.float32), B)


# ---------------------------------------------------------------------- Dense dX
# float32 weights of >= 1M values take the blocked dX (blocks of 128 rows of W): whole and
# partial last blocks, batches of one row and more, in / out not multiples of the tile
BLOCKED = [(1, 1024, 1024), (5, 1100, 1000), (64, 1000, 1049), (3, 2048, 513), (17, 520, 2050), (32, 1030, 1030)]


def _dense_problem(batch, n_in, n_out, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, n_in)).astype(dtype)
    W = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
    dY = rng.standard_normal((batch, n_out)).astype(dtype)
    return X, W, dY


def _check_dx(dX, dY, W, rtol):
    ref = dY.astype(np.float64) @ W.astype(np.float64)
    # float32 products summed over `out` terms: the error scales with the sum of |terms|
    scale = np.abs(dY).astype(np.float64) @ np.abs(W).astype(np.float64)
    assert np.all(np.abs(dX - ref) <= rtol * scale + 1e-30)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", BLOCKED)
def test_dense_backward_dx_through_blocks(shape, threads):
    old = gradcore.get_num_threads()
    gradcore.set_num_threads(threads)
    try:
        X, W, dY = _dense_problem(*shape, np.float32)
        dX = np.full((shape[0], shape[1]), np.nan, np.float32)
        dW = np.empty_like(W)
        db = np.empty(shape[2], np.float32)
        _C.dense_backward(X, W, dY, dX, dW, db, False)
        _check_dx(dX, dY, W, 1e-6)
        np.testing.assert_allclose(dW, dY.T.astype(np.float64) @ X.astype(np.float64), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(db, dY.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
        # dX alone gives the same bits as with dW and db
        dX2 = np.empty_like(dX)
        _C.dense_backward(X, W, dY, dX2)
        assert np.array_equal(dX, dX2)
    finally:
        gradcore.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_dx_small_and_float64(dtype):
    """Below the threshold, and float64 at any size: the plain GEMM (the same oracle)."""
    for shape in [(8, 300, 200), (4, 1024, 1024)]:
        X, W, dY = _dense_problem(*shape, dtype)
        dX = np.empty((shape[0], shape[1]), dtype)
        _C.dense_backward(X, W, dY, dX)
        _check_dx(dX, dY, W, 1e-6 if dtype is np.float32 else 1e-14)


def test_dense_backward_dx_nonfinite_propagates():
    """A NaN / Inf in W or dY reaches dX as it does through the plain GEMM."""
    X, W, dY = _dense_problem(4, 1024, 1024, np.float32)
    W[700, 3] = np.nan
    dY[2, 5] = np.inf
    dX = np.empty((4, 1024), np.float32)
    _C.dense_backward(X, W, dY, dX)
    assert np.isnan(dX[:, 3]).all()  # column 3: every row meets W's NaN
    assert not np.isfinite(dX[2]).any()  # row 2: inf times W's row 5 (no zero in it)
    clean = np.ones(1024, bool)
    clean[3] = False
    assert np.isfinite(dX[np.ix_([0, 1, 3], clean)]).all()


def test_linear_backward_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((48, 1100)).astype(np.float32)
    w = (rng.standard_normal((1050, 1100)) / 33).astype(np.float32)
    b = rng.standard_normal(1050).astype(np.float32)
    g = rng.standard_normal((48, 1050)).astype(np.float32)

    xg = gradcore.Tensor(x, requires_grad=True)
    wg = gradcore.Tensor(w, requires_grad=True)
    bg = gradcore.Tensor(b, requires_grad=True)
    out = gradcore.functional.linear(xg, wg, bg, "tanh")
    (out * gradcore.Tensor(g)).sum().backward()

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    (torch.tanh(torch.nn.functional.linear(xt, wt, bt)) * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(xg.grad, xt.grad.numpy(), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(wg.grad, wt.grad.numpy(), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(bg.grad, bt.grad.numpy(), rtol=2e-4, atol=2e-5)


# ---------------------------------------------------------------------- compiled step
def _big_net():
    gradcore.manual_seed(5)
    return nn.Sequential(nn.Dense(40, 1030, "relu"), nn.Dense(1030, 1040, "relu"), nn.Dense(1040, 3),
                         dtype=np.float32)


def test_compiled_blocked_dx_matches_eager_and_allocates_nothing_per_step():
    import copy

    a = _big_net()
    b = copy.deepcopy(a)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 40)).astype(np.float32)
    Y = rng.integers(0, 3, size=24)
    loss = losses.get("cross_entropy")
    oa = optim.Adam(a.parameters(), lr=1e-3, amsgrad=True, global_clip_norm=5.0)
    ob = optim.Adam(b.parameters(), lr=1e-3, amsgrad=True, global_clip_norm=5.0)
    step = compile_step(b, loss, ob)
    for i in range(4):
        oa.zero_grad()
        la = loss(a(X), Y)
        la.backward()
        oa.step()
        lb = step(X, Y)
        np.testing.assert_allclose(lb, float(la.item()), rtol=1e-5, atol=1e-5)
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            np.testing.assert_allclose(pb.data, pa.data, rtol=1e-5, atol=1e-5, err_msg=f"step {i}: {name}")
    # the blocked dX's buffer (1040 x 128 float32 for the middle layer) is in the plan's
    # bytes, made with the workspace: later steps allocate nothing
    assert step.nbytes >= 1030 * 128 * 4
    gradcore.reset_memory_stats()
    for _ in range(3):
        step(X, Y)
    assert gradcore.memory_stats()["plan_allocations"] == 0
