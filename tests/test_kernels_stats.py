"""Gradient statistics kernels (grad_stats, grad_stats_flat, global_norm, sum_of_squares) vs NumPy."""
import numpy as np
import pytest

import gradcore
from gradcore import _C

COLS = ["sum_of_squares", "l2_norm", "max_abs", "nonfinite", "mean", "std"]


def stats_ref(x):
    """The six columns computed by NumPy in float64, one quantity at a time."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        return np.zeros(6)
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore", over="ignore"):
        ss = np.sum(x * x)
        return np.array([ss, np.sqrt(ss), np.abs(x[finite]).max(initial=0.0), np.count_nonzero(~finite),
                         x.mean(), x.std()])


def rtol_for(a):
    return 3e-6 if a.dtype == np.float32 else 1e-12


def assert_stats(got, arrays):
    assert got.shape == (len(arrays), 6) and got.dtype == np.float64
    for i, a in enumerate(arrays):
        want = stats_ref(a)
        for c, name in enumerate(COLS):
            # std is relative to the spread; allow for the cancellation E[x^2] - E[x]^2 would do
            atol = 1e-12 if name != "std" else 1e-6 * abs(want[4]) + 1e-300
            np.testing.assert_allclose(got[i, c], want[c], rtol=rtol_for(a), atol=atol,
                                       err_msg=f"array {i} ({a.dtype}, size {a.size}) column {name}")


def mixed_arrays(rng, plant=False):
    shapes = [(0,), (1,), (3, 0), (7,), (33, 17), (4096,), (4097,), (5, 4, 3), (70001,), (2, 65537)]
    arrays = []
    for k, shape in enumerate(shapes):
        dtype = np.float32 if k % 2 == 0 else np.float64
        a = (rng.standard_normal(shape) * rng.uniform(0.01, 10) + rng.uniform(-1, 1)).astype(dtype)
        if plant and a.size > 1:
            flat = a.reshape(-1)
            idx = rng.choice(flat.size, size=min(flat.size, 5), replace=False)
            flat[idx[0]] = np.nan
            flat[idx[1:3]] = np.inf
            flat[idx[3:]] = -np.inf
        arrays.append(a)
    return arrays


def test_grad_stats_matches_numpy_on_mixed_sizes_and_dtypes():
    arrays = mixed_arrays(np.random.default_rng(0))
    assert_stats(_C.grad_stats(arrays), arrays)


def test_grad_stats_with_nan_and_inf_planted():
    rng = np.random.default_rng(1)
    arrays = mixed_arrays(rng, plant=True)
    got = _C.grad_stats(arrays)
    for i, a in enumerate(arrays):
        want = stats_ref(a)
        assert got[i, 3] == np.count_nonzero(~np.isfinite(a))  # exact count
        assert got[i, 2] == want[2]  # max over finite values only, exactly
        if a.size > 1:
            assert got[i, 3] == min(a.size, 5) and np.isnan(got[i, 0]) and np.isnan(got[i, 4])
    # only +Inf: the sums are +Inf, max_abs still the largest finite |x|
    a = np.array([1.0, -3.0, np.inf, 2.0], np.float32)
    row = _C.grad_stats([a])[0]
    assert row[0] == np.inf and row[1] == np.inf and row[2] == 3.0 and row[3] == 1 and row[4] == np.inf
    # all non-finite: max_abs 0
    row = _C.grad_stats([np.array([np.nan, -np.inf])])[0]
    assert row[2] == 0.0 and row[3] == 2


def test_nonfinite_count_exact_in_large_array():
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        a = rng.standard_normal(300_001).astype(dtype)
        idx = rng.choice(a.size, 1234, replace=False)
        a[idx[:400]] = np.nan
        a[idx[400:800]] = np.inf
        a[idx[800:]] = -np.inf
        a[idx[0] ^ 1] = 1e30 if dtype == np.float32 else 1e300  # the largest finite value
        row = _C.grad_stats([a])[0]
        assert row[3] == 1234
        assert row[2] == np.abs(a[np.isfinite(a)]).max()


def test_empty_list_and_empty_arrays():
    assert _C.grad_stats([]).shape == (0, 6)
    assert _C.global_norm([]) == 0.0
    assert _C.sum_of_squares([]).shape == (0,)
    got = _C.grad_stats([np.zeros(0, np.float32), np.zeros((0, 5))])
    np.testing.assert_array_equal(got, np.zeros((2, 6)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mean, spread", [(1e-3, 1e-7), (-5.0, 1e-4), (3.0, 1.0), (1.0, 0.0)])
def test_mean_and_std_stable_when_mean_dominates(dtype, mean, spread):
    # E[x^2] - E[x]^2 cancels here; std must still match NumPy's two-pass value
    rng = np.random.default_rng(3)
    a = (mean + spread * rng.standard_normal(200_003)).astype(dtype)
    ref = a.astype(np.float64)
    row = _C.grad_stats([a, a[:5]])
    np.testing.assert_allclose(row[:, 4], [ref.mean(), ref[:5].mean()], rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(row[:, 5], [ref.std(), ref[:5].std()], rtol=1e-5 if dtype == np.float32 else 1e-10,
                               atol=1e-7 * abs(mean) if spread == 0 else 0)
    if spread == 0:
        assert row[0, 5] == 0.0


@pytest.mark.parametrize("scale", [1e20, 1e-25, 1e-40])
def test_float32_extreme_magnitudes_do_not_overflow_or_underflow(scale):
    # squares of 1e20 overflow float32 and squares of 1e-25 underflow it; the kernels must
    # still report the float64 values (exploding / vanishing gradients are what they watch)
    a = (np.random.default_rng(4).standard_normal(20_000) * scale).astype(np.float32)
    ref = a.astype(np.float64)
    row = _C.grad_stats([a])[0]
    np.testing.assert_allclose(row[0], ref @ ref, rtol=1e-5)
    np.testing.assert_allclose(row[5], ref.std(), rtol=1e-5)
    np.testing.assert_allclose(_C.sum_of_squares([a])[0], ref @ ref, rtol=1e-5)
    np.testing.assert_allclose(_C.global_norm([a]), np.sqrt(ref @ ref), rtol=1e-5)


def test_sum_of_squares_and_global_norm():
    rng = np.random.default_rng(5)
    arrays = mixed_arrays(rng)
    want = np.array([float(np.sum(a.astype(np.float64) ** 2)) for a in arrays])
    got = _C.sum_of_squares(arrays)
    assert got.dtype == np.float64 and got.shape == (len(arrays),)
    for a, g, w in zip(arrays, got, want):
        np.testing.assert_allclose(g, w, rtol=rtol_for(a))
    norm = _C.global_norm(arrays)
    assert isinstance(norm, float)
    np.testing.assert_allclose(norm, np.sqrt(want.sum()), rtol=3e-6)
    # grad_stats' sum of squares is the very same number (same lanes, same order), so a
    # norm derived from the statistics equals global_norm exactly
    stats_ss = _C.grad_stats(arrays)[:, 0]
    np.testing.assert_array_equal(stats_ss, got)
    acc = 0.0
    for v in stats_ss:
        acc += v
    assert norm == np.sqrt(acc)
    # NaN or Inf anywhere makes the norm non-finite (clipping must see it)
    bad = [arrays[4], np.array([1.0, np.nan])]
    assert np.isnan(_C.global_norm(bad))
    assert _C.global_norm([np.array([np.inf], np.float32)]) == np.inf


def test_accepts_tuple():
    a = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(_C.grad_stats((a,)), _C.grad_stats([a]))
    assert _C.global_norm((a, a)) == pytest.approx(np.sqrt(2 * 30.0))


def test_grad_stats_flat_matches_numpy_per_segment():
    rng = np.random.default_rng(6)
    sizes = [0, 1, 5, 0, 4096, 70000, 3, 131073]
    for dtype in (np.float32, np.float64):
        buf = (rng.standard_normal(sum(sizes)) * 2 + 0.5).astype(dtype)
        buf[[10, 80000]] = [np.nan, -np.inf]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        got = _C.grad_stats_flat(buf, offsets)
        segs = [buf[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
        assert got.shape == (len(sizes), 6)
        for i, s in enumerate(segs):
            want = stats_ref(s)
            assert got[i, 3] == want[3] and got[i, 2] == want[2]
            np.testing.assert_allclose(got[i], want, rtol=rtol_for(s), atol=1e-12)
    assert _C.grad_stats_flat(np.zeros(0), np.zeros(1, np.int64)).shape == (0, 6)


def test_grad_stats_flat_rejects_bad_offsets():
    buf = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=r"grad_stats_flat: offsets\[0\] must be 0"):
        _C.grad_stats_flat(buf, np.array([1, 10], np.int64))
    with pytest.raises(ValueError, match=r"grad_stats_flat: offsets\[-1\] must equal buffer.size = 10, got 9"):
        _C.grad_stats_flat(buf, np.array([0, 4, 9], np.int64))
    with pytest.raises(ValueError, match=r"grad_stats_flat: offsets must be non-decreasing"):
        _C.grad_stats_flat(buf, np.array([0, 6, 4, 10], np.int64))
    with pytest.raises(ValueError, match=r"grad_stats_flat: offsets must have dtype int64, got int32"):
        _C.grad_stats_flat(buf, np.array([0, 10], np.int32))
    with pytest.raises(ValueError, match=r"grad_stats_flat: offsets must be 1-d"):
        _C.grad_stats_flat(buf, np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"grad_stats_flat: buffer must be 1-d, got shape \(2, 5\)"):
        _C.grad_stats_flat(buf.reshape(2, 5), np.array([0, 10], np.int64))
    with pytest.raises(ValueError, match=r"grad_stats_flat: buffer must be float32 or float64, got int64"):
        _C.grad_stats_flat(np.zeros(10, np.int64), np.array([0, 10], np.int64))


@pytest.mark.parametrize("fn", [_C.grad_stats, _C.global_norm, _C.sum_of_squares])
def test_bad_inputs_raise_with_op_name(fn):
    op = fn.__name__
    with pytest.raises(ValueError, match=rf"{op}: arrays must be a list or tuple"):
        fn(np.zeros(3))
    with pytest.raises(ValueError, match=rf"{op}: arrays\[1\] must be a numpy array, got list"):
        fn([np.zeros(3), [1.0, 2.0]])
    with pytest.raises(ValueError, match=rf"{op}: arrays\[0\] must be float32 or float64, got int32"):
        fn([np.zeros(3, np.int32)])
    with pytest.raises(ValueError, match=rf"{op}: arrays\[1\] must be C-contiguous"):
        fn([np.zeros(3), np.zeros((4, 4))[:, 1]])


def test_results_identical_for_one_and_two_threads():
    rng = np.random.default_rng(7)
    big32 = rng.standard_normal(3_000_000).astype(np.float32) * 0.1 + 0.01
    big64 = rng.standard_normal(3_000_000) * 3
    big32[12345] = np.inf
    shifted = (rng.standard_normal(2_000_000) * 1e-3 + 5).astype(np.float32)  # std by the second pass
    arrays = [big32, big64, rng.standard_normal(1000).astype(np.float32), shifted]
    offsets = np.array([0, 1_000_000, 2_999_999, 3_000_000], np.int64)
    before = _C.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            _C.set_num_threads(n)
            results.append((_C.grad_stats(arrays), _C.grad_stats_flat(big64, offsets), _C.sum_of_squares(arrays),
                            _C.global_norm(arrays[1:])))
    finally:
        _C.set_num_threads(before)
    (s1, f1, q1, n1), (s2, f2, q2, n2) = results
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(q1, q2)
    assert n1 == n2
    assert_stats(np.delete(s1, 0, axis=0), arrays[1:])
    assert s1[0, 3] == 1 and s1[0, 2] == np.abs(big32[np.isfinite(big32)]).max()
