"""What the cheaper compiled-step monitor computes, against NumPy.

- ``_C.magnitude_stats``: the plan's dz statistics (grad_stats' first four columns: sum of
  squares, its sqrt, max |g| over the finite values, NaN / Inf count), float32 squares
  summed in float lanes of 16 values then in double;
- the plan's dz rows (dz_out) hold those four columns and NaN for mean / std.
"""
import math

import numpy as np
import pytest

import gradcore
from gradcore import _C

DTYPES = [np.float32, np.float64]
# lane (32), flush (512 values), block (4096) and chunk (65536) boundaries
SIZES = [0, 1, 5, 31, 32, 33, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537, 128 * 512 + 7]


def magnitude_ref(g):
    g = np.asarray(g, np.float64).ravel()
    finite = g[np.isfinite(g)]
    with np.errstate(over="ignore", invalid="ignore"):
        sumsq = float(np.sum(g * g))
    return np.array([sumsq, math.sqrt(sumsq) if sumsq >= 0 else math.nan,
                     float(np.abs(finite).max()) if finite.size else 0.0, float(g.size - finite.size)])


def assert_magnitude(got, g):
    want = magnitude_ref(g)
    assert got.shape == (4,) and got.dtype == np.float64
    # float32: each float lane sums 16 squares (2^-20 of their sum at most) before double
    rtol = 2.0 ** -20 if np.asarray(g).dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got[:2], want[:2], rtol=rtol, atol=0)
    np.testing.assert_array_equal(got[2:], want[2:])  # max |g| and the count: exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_magnitude_stats_match_numpy(n, dtype):
    rng = np.random.default_rng(n)
    g = (rng.standard_normal(n) * 1e-3 + 2e-4).astype(dtype)
    assert_magnitude(_C.magnitude_stats(g), g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_magnitude_stats_any_shape(dtype):
    rng = np.random.default_rng(3)
    for shape in [(), (7,), (3, 5), (2, 3, 683), (128, 10)]:
        g = rng.standard_normal(shape).astype(dtype)
        assert_magnitude(_C.magnitude_stats(g), g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_magnitude_stats_nan_and_inf(dtype):
    rng = np.random.default_rng(5)
    n = 3 * 4096 + 700
    for where in ([0], [n - 1], [4095, 4096], [511, 512, 513], [2 * 4096 + 7]):
        for bad in (np.nan, np.inf, -np.inf):
            g = rng.standard_normal(n).astype(dtype)
            g[where] = bad
            got = _C.magnitude_stats(g)
            assert got[3] == len(where)
            assert got[2] == np.abs(g[np.isfinite(g)]).max()  # the finite max, the bad values ignored
            if np.isnan(bad):
                assert np.isnan(got[0]) and np.isnan(got[1])
            else:
                assert got[0] == np.inf and got[1] == np.inf
    only_bad = np.array([np.nan, np.inf, -np.inf], dtype)
    got = _C.magnitude_stats(only_bad)
    assert got[2] == 0 and got[3] == 3 and np.isnan(got[0])


def test_magnitude_stats_float32_extremes_are_summed_in_double():
    """float32 squares overflow float lanes from |g| ~ 1.8e19 and underflow below 1e-19:
    those blocks are summed again in double (no Inf, no lost digits)."""
    rng = np.random.default_rng(7)
    for scale in (1e30, 3e38, 1e-25, 1e-40):  # (1e-40: float32 denormals)
        g = np.clip(rng.standard_normal(5000), -1.1, 1.1) * scale
        g = g.astype(np.float32)  # (all finite: |g| <= 3.3e38)
        got = _C.magnitude_stats(g)
        want = magnitude_ref(g)
        assert np.isfinite(got[0]) and got[3] == 0
        np.testing.assert_allclose(got[:2], want[:2], rtol=1e-12)
        assert got[2] == want[2]
    zeros = np.zeros(4097, np.float32)
    zeros[::2] = -0.0
    assert _C.magnitude_stats(zeros).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_magnitude_stats_same_result_on_one_and_two_threads():
    rng = np.random.default_rng(9)
    g = rng.standard_normal(5_000_001).astype(np.float32)
    g[4_000_000] = np.nan
    before = gradcore.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            gradcore.set_num_threads(n)
            out.append(_C.magnitude_stats(g))
    finally:
        gradcore.set_num_threads(before)
    np.testing.assert_array_equal(out[0], out[1])
    assert out[0][3] == 1


def test_magnitude_stats_rejects_bad_input():
    with pytest.raises(ValueError, match=r"magnitude_stats: g must be float32 or float64, got int64"):
        _C.magnitude_stats(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match=r"magnitude_stats: g must be a numpy.ndarray, got list"):
        _C.magnitude_stats([1.0, 2.0])
    with pytest.raises(ValueError, match=r"magnitude_stats: g must be C-contiguous"):
        _C.magnitude_stats(np.zeros((4, 4), np.float32)[:, 1])
