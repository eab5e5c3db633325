"""The monitor's statistics kernels (_C.activation_stats, _C.diff_sumsq_flat) vs NumPy.

Edge cases, as the kernels define them (csrc/stats.h):
- no entries (0 rows, or a last axis of 0): mean, std, min, max are NaN, the counts 0,
  units = A.shape[-1]; with no rows no unit is dead (there is no evidence);
- a 1-d A of n values is n rows of one unit; a 0-d A is one row of one unit;
- a NaN is not <= 0, so it keeps its unit alive; a NaN is not > threshold (not
  saturated), an Inf is;
- diff_sumsq_flat of an empty segment is 0.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradcore
from gradcore import _C

DTYPES = [np.float32, np.float64]
MEAN, STD, MIN, MAX, NONFINITE, DEAD, SATURATED, UNITS = range(8)


def rows_units(shape):
    """(rows, units) of an activation of this shape: the last axis holds the units."""
    if len(shape) <= 1:
        return (int(np.prod(shape)), 1)
    units = shape[-1]
    return (int(np.prod(shape[:-1])), units)


def std_ref(a):
    """Population std of float64 values, scaled by a power of two (exact) so that no
    square overflows or underflows, as np.std alone would for |x| ~ 1e200 or 1e-200."""
    finite = a[np.isfinite(a)]
    if finite.size < a.size or not finite.any():
        return a.std()
    scale = 2.0 ** np.floor(np.log2(np.abs(finite).max()))
    return (a / scale).std() * scale


def activation_ref(A, Z=None, mode="none", threshold=5.0):
    """The 8 statistics by NumPy in float64, one at a time."""
    a = np.asarray(A, np.float64).ravel()
    rows, units = rows_units(np.shape(A))
    finite = a[np.isfinite(a)]
    with np.errstate(invalid="ignore", over="ignore"):
        mean = a.mean() if a.size else math.nan
        std = std_ref(a) if a.size else math.nan
    out = [mean, std, finite.min() if finite.size else math.nan, finite.max() if finite.size else math.nan,
           np.count_nonzero(~np.isfinite(a)), 0, 0, units]
    if mode == "dead" and rows * units > 0:
        v = np.asarray(A if Z is None else Z, np.float64).reshape(rows, units)
        out[DEAD] = np.count_nonzero(np.all(v <= 0, axis=0))
    if mode == "saturated":
        # |Z| > threshold decided exactly, in float64 (not with the threshold rounded to float32)
        out[SATURATED] = np.count_nonzero(np.abs(np.asarray(Z, np.float64)) > threshold)
    return np.array(out, np.float64)


def assert_matches(got, A, Z=None, mode="none", threshold=5.0):
    want = activation_ref(A, Z, mode, threshold)
    assert got.shape == (8,) and got.dtype == np.float64
    a = np.asarray(A, np.float64)
    finite = a[np.isfinite(a)]
    scale = float(np.abs(finite).mean()) if finite.size else 0.0
    # mean: error relative to the mean |x| (the sum can cancel); std: relative, or relative
    # to the mean |x| when the values are (nearly) equal: for nine 2.0s the kernel's std is
    # exactly 0 and np.std's is 2.2e-16, the rounding of its mean.
    # float32 sums run in float lanes of at most 16 values each before they reach double
    # (csrc/stats.cpp, moments_block_f32): the sum is off by at most 16 * 2^-24 = 2^-20 of
    # the sum of |x|, and the variance by 2^-20 of E[x^2], at most 16 times the variance
    # (below that the second, double pass runs): std within 2^-17 relative. (Measured on
    # random activations: ~2e-8 for the mean, ~3e-8 for the std.) float64: double lanes.
    f32 = np.asarray(A).dtype == np.float32
    mean_tol, std_tol = (2.0 ** -20, 2.0 ** -17) if f32 else (1e-13, 1e-10)
    np.testing.assert_allclose(got[MEAN], want[MEAN], rtol=1e-12, atol=mean_tol * scale, err_msg="mean")
    np.testing.assert_allclose(got[STD], want[STD], rtol=std_tol, atol=max(1e-300, 1e-13 * scale), err_msg="std")
    # min, max (exact: they are values of A), the counts and units: exact
    np.testing.assert_array_equal(got[MIN:], want[MIN:])


def random_activation(rng, shape, dtype, loc=0.0, scale=1.0):
    return (rng.standard_normal(shape) * scale + loc).astype(dtype)


# Shapes across the kernels' lane (16), block (4096) and chunk (65536) boundaries.
SHAPES = [(1,), (7,), (1, 1), (5, 1), (1, 7), (3, 4, 5), (33, 17), (128, 512), (4097,), (2, 3, 683),
          (65537,), (300, 257)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_activation_stats_match_numpy(shape, dtype):
    rng = np.random.default_rng(hash(shape) % 2**32)
    Z = random_activation(rng, shape, dtype, loc=0.3)
    A = np.maximum(Z, 0)
    assert_matches(_C.activation_stats(A), A)
    assert_matches(_C.activation_stats(A, Z, "dead"), A, Z, "dead")
    assert_matches(_C.activation_stats(A, None, "dead"), A, None, "dead")
    S = random_activation(rng, shape, dtype, scale=4.0)
    assert_matches(_C.activation_stats(np.tanh(S), S, "saturated", 5.0), np.tanh(S), S, "saturated", 5.0)
    # a mode's count is 0 in the other modes, Z or not
    got = _C.activation_stats(A, Z, "none")
    assert got[DEAD] == 0 and got[SATURATED] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_placement(dtype):
    rng = np.random.default_rng(3)
    n = 7 * 1759  # 3 blocks of 4096 and a tail of 25
    for where in ([0], [n - 1], [4095, 4096], [2 * 4096 + 7], [n - 5, n - 3]):  # first, last, block edge, tail
        for bad in (np.nan, np.inf, -np.inf):
            A = random_activation(rng, (n // 7, 7), dtype)
            A.reshape(-1)[where] = bad
            got = _C.activation_stats(A)
            assert_matches(got, A)
            assert got[NONFINITE] == len(where)
            assert np.isfinite(got[MIN]) and np.isfinite(got[MAX])  # the bad values are ignored
            if np.isnan(bad):
                assert np.isnan(got[MEAN]) and np.isnan(got[STD])
            else:
                assert got[MEAN] == bad and np.isnan(got[STD])  # as NumPy: inf - inf in the variance
    # +Inf and -Inf together: the mean is NaN
    A = random_activation(rng, (64, 8), dtype)
    A[3, 3], A[60, 1] = np.inf, -np.inf
    got = _C.activation_stats(A)
    assert np.isnan(got[MEAN]) and got[NONFINITE] == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_finite_value_gives_nan_min_max(dtype):
    A = np.array([[np.nan, np.inf], [-np.inf, np.nan]], dtype)
    got = _C.activation_stats(A)
    assert np.isnan(got[MIN]) and np.isnan(got[MAX]) and np.isnan(got[MEAN]) and got[NONFINITE] == 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_float64_overflow_of_squares_is_not_counted_as_nonfinite(dtype):
    """A float64 block whose squares overflow is rescanned; no NaN / Inf is invented."""
    big = 1e200 if dtype == np.float64 else 3e38
    A = np.array([[big, -big / 2], [big / 4, 1.0]], dtype)
    got = _C.activation_stats(A)
    assert_matches(got, A)
    assert got[NONFINITE] == 0 and np.isfinite(got[STD])


_ORDINARY = [(0.5, 1e-4), (1000.0, 1e-3), (-3.0, 1e-6)]
_FLOAT64_ONLY = [(1e150, 1e147), (1e-200, 1e-203)]  # not float32 numbers


@pytest.mark.parametrize("dtype,loc,spread", [(d, *c) for d in DTYPES for c in _ORDINARY]
                         + [(np.float64, *c) for c in _FLOAT64_ONLY])
def test_std_of_nearly_constant_and_extreme_activations(loc, spread, dtype):
    """Cancellation in E[x^2] - E[x]^2 (a saturated sigmoid layer sits at ~0.5) and float64
    magnitudes whose squares overflow or underflow take the second, scaled pass."""
    rng = np.random.default_rng(5)
    A = random_activation(rng, (50, 40), dtype, loc=loc, scale=spread)
    got = _C.activation_stats(A)
    want = activation_ref(A)
    np.testing.assert_allclose(got[STD], want[STD], rtol=1e-9)
    np.testing.assert_allclose(got[MEAN], want[MEAN], rtol=1e-13)
    assert 0.5 * spread < got[STD] < 2 * spread


@pytest.mark.parametrize("dtype", DTYPES)
def test_dead_units_all_none_and_some(dtype):
    rng = np.random.default_rng(11)
    rows, units = 37, 50  # rows past the early-exit checks (every 16 rows), not a multiple of 4
    Z = -np.abs(random_activation(rng, (rows, units), dtype))  # all dead
    assert _C.activation_stats(np.maximum(Z, 0), Z, "dead")[DEAD] == units
    assert _C.activation_stats(np.maximum(Z, 0), None, "dead")[DEAD] == units  # relu output: all 0
    Z = np.abs(random_activation(rng, (rows, units), dtype)) + 0.1  # none dead
    assert _C.activation_stats(Z, Z, "dead")[DEAD] == 0
    # some dead; a few units come alive only in the very last row, one only in row 20
    Z = -np.abs(random_activation(rng, (rows, units), dtype))
    alive = rng.choice(units, size=30, replace=False)
    Z[rng.integers(0, rows, size=26), alive[4:]] = 0.5
    Z[-1, alive[:3]] = 1.0
    Z[20, alive[3]] = 1e-30
    got = _C.activation_stats(np.maximum(Z, 0), Z, "dead")
    assert got[DEAD] == units - 30 == activation_ref(Z, Z, "dead")[DEAD]
    assert got[UNITS] == units


@pytest.mark.parametrize("dtype", DTYPES)
def test_dead_counts_zero_and_negative_zero_but_nan_keeps_a_unit_alive(dtype):
    Z = np.zeros((6, 5), dtype)  # rows 0-3 take the four-row sweep, rows 4-5 the one-row tail
    Z[:, 1] = -0.0
    Z[2, 2] = np.nan
    Z[5, 3] = np.nan
    Z[:, 4] = -1.0
    Z[5, 4] = np.finfo(dtype).tiny  # the smallest positive normal: alive
    got = _C.activation_stats(Z, Z, "dead")
    assert got[DEAD] == 2  # units 0 (all +0) and 1 (all -0)
    assert got[DEAD] == activation_ref(Z, Z, "dead")[DEAD]


def test_dead_on_a_1d_activation_is_one_unit():
    assert _C.activation_stats(np.array([-1.0, 0.0, -2.0]), None, "dead")[[DEAD, UNITS]].tolist() == [1, 1]
    assert _C.activation_stats(np.array([-1.0, 0.5, -2.0]), None, "dead")[[DEAD, UNITS]].tolist() == [0, 1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_counts_strictly_above_the_threshold(dtype):
    t = dtype(5.0)
    above = np.nextafter(t, dtype(np.inf))
    below = np.nextafter(t, dtype(0))
    Z = np.array([[t, -t, above, -above], [below, -below, np.inf, -np.inf], [np.nan, 0.0, 100.0, -100.0]], dtype)
    got = _C.activation_stats(np.tanh(Z), Z, "saturated", 5.0)
    assert got[SATURATED] == 6  # +-above, +-inf, +-100; not +-5 exactly, not NaN
    assert got[SATURATED] == activation_ref(np.tanh(Z), Z, "saturated", 5.0)[SATURATED]
    assert _C.activation_stats(Z, Z, "saturated", 0.0)[SATURATED] == 10  # every nonzero non-NaN entry
    assert _C.activation_stats(Z, Z, "saturated", 1e300)[SATURATED] == 2  # only the infinities


def test_saturated_threshold_not_representable_in_float32_is_exact():
    """|z| > 0.1 is decided against 0.1 itself, not float32(0.1) (which is above 0.1)."""
    f = np.float32(0.1)  # 0.100000001490116...
    Z = np.array([f, np.nextafter(f, np.float32(0)), -f], np.float32)
    assert _C.activation_stats(Z, Z, "saturated", 0.1)[SATURATED] == 2
    assert _C.activation_stats(Z, Z, "saturated", float(f))[SATURATED] == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (0, 5), (4, 0), (2, 0, 3)])
def test_empty_activations(shape, dtype):
    A = np.zeros(shape, dtype)
    for mode, Z in (("none", None), ("dead", None), ("saturated", A)):
        got = _C.activation_stats(A, Z, mode)
        assert np.isnan(got[[MEAN, STD, MIN, MAX]]).all()
        assert got[[NONFINITE, DEAD, SATURATED]].tolist() == [0, 0, 0]
        assert got[UNITS] == (shape[-1] if len(shape) > 1 else 1)


def test_zero_dim_activation_is_one_value():
    got = _C.activation_stats(np.array(-2.5), np.array(-7.0), "dead")
    assert got.tolist() == [-2.5, 0.0, -2.5, -2.5, 0, 1, 0, 1]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), mode=st.sampled_from(["none", "dead", "saturated"]))
def test_special_values_property(data, dtype, mode):
    """Small activations built from the values where the rules bend: +-0, +-threshold and
    their neighbours, NaN, +-Inf, ordinary numbers."""
    t = 2.0
    specials = [0.0, -0.0, t, -t, float(np.nextafter(dtype(t), dtype(9))), float(np.nextafter(dtype(t), dtype(0))),
                math.nan, math.inf, -math.inf, 0.5, -0.5, 3.0, -1e-30]
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    elements = st.sampled_from(specials)
    A = data.draw(hnp.arrays(dtype, shape, elements=elements))
    Z = data.draw(hnp.arrays(dtype, shape, elements=elements))
    assert_matches(_C.activation_stats(A, Z, mode, t), A, Z, mode, t)


def test_large_input_same_result_on_one_and_two_threads():
    """Above the grain (2 threads from 4M values) the chunks are fixed: bit-identical results."""
    rng = np.random.default_rng(17)
    Z32 = random_activation(rng, (8200, 520), np.float32, loc=0.1)
    Z32[:, 7] = -1.0  # a dead unit
    Z32[4000, 3] = np.nan
    A32 = np.maximum(Z32, 0)
    Z64 = random_activation(rng, (2100, 2048), np.float64, loc=0.5, scale=1e-3)  # std by the second pass
    a = rng.standard_normal(4_500_001).astype(np.float32)
    b = a + rng.standard_normal(a.size).astype(np.float32) * np.float32(1e-3)
    offsets = np.array([0, 17, 3_000_000, 3_000_000, a.size], np.int64)
    before = gradcore.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            gradcore.set_num_threads(n)
            results.append([_C.activation_stats(A32, Z32, "dead"), _C.activation_stats(Z32, Z32, "saturated", 2.0),
                            _C.activation_stats(Z64, None, "dead"), _C.diff_sumsq_flat(a, b, offsets)])
    finally:
        gradcore.set_num_threads(before)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
    assert_matches(results[0][0], A32, Z32, "dead")
    assert results[0][0][DEAD] == 1
    assert_matches(results[0][1], Z32, Z32, "saturated", 2.0)
    assert_matches(results[0][2], Z64, None, "dead")
    np.testing.assert_allclose(results[0][3], diff_ref(a, b, offsets), rtol=1e-6)  # float32 differences


# ------------------------------------------------------------------------ diff_sumsq_flat

def diff_ref(a, b, offsets):
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.array([np.sum(d[offsets[i]:offsets[i + 1]] ** 2) for i in range(len(offsets) - 1)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_diff_sumsq_flat_matches_numpy(dtype):
    rng = np.random.default_rng(23)
    sizes = [0, 1, 15, 16, 17, 4096, 70001, 0, 300]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    a = random_activation(rng, offsets[-1], dtype)
    b = a - random_activation(rng, offsets[-1], dtype, scale=1e-3)  # a parameter and its update
    got = _C.diff_sumsq_flat(a, b, offsets)
    assert got.shape == (len(sizes),) and got.dtype == np.float64
    np.testing.assert_allclose(got, diff_ref(a, b, offsets), rtol=1e-12 if dtype == np.float64 else 1e-6)
    assert got[0] == 0 and got[7] == 0
    assert _C.diff_sumsq_flat(a, a, offsets).tolist() == [0.0] * len(sizes)
    whole = _C.diff_sumsq_flat(a, b, np.array([0, a.size], np.int64))
    np.testing.assert_allclose(whole, [diff_ref(a, b, offsets).sum()], rtol=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_diff_sumsq_flat_nonfinite_stays_in_its_segment(dtype):
    a = np.ones(30, dtype)
    b = np.zeros(30, dtype)
    a[12] = np.nan
    b[25] = np.inf
    got = _C.diff_sumsq_flat(a, b, np.array([0, 10, 20, 30], np.int64))
    assert got[0] == 10 and np.isnan(got[1]) and got[2] == np.inf


def test_diff_sumsq_flat_empty():
    assert _C.diff_sumsq_flat(np.zeros(0), np.zeros(0), np.zeros(1, np.int64)).shape == (0,)


# ---------------------------------------------------------------------------- bad input

def test_activation_stats_rejects_bad_input():
    A = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"activation_stats: A must be float32 or float64, got int64"):
        _C.activation_stats(np.zeros((4, 3), np.int64))
    with pytest.raises(TypeError, match=r"activation_stats: A must be a numpy.ndarray, got list"):
        _C.activation_stats([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"activation_stats: Z must be a numpy.ndarray or None, got list"):
        _C.activation_stats(A, [[0.0] * 3] * 4, "dead")
    with pytest.raises(ValueError, match=r"activation_stats: Z must have the dtype of A \(float32\), got float64"):
        _C.activation_stats(A, np.zeros((4, 3)), "dead")
    with pytest.raises(ValueError, match=r"activation_stats: Z must have the shape of A \(4, 3\), got \(3, 4\)"):
        _C.activation_stats(A, np.zeros((3, 4), np.float32), "dead")
    with pytest.raises(ValueError, match=r"activation_stats: Z must have the shape of A \(4, 3\), got \(12,\)"):
        _C.activation_stats(A, np.zeros(12, np.float32))
    with pytest.raises(ValueError, match=r"activation_stats: A must be C-contiguous"):
        _C.activation_stats(np.zeros((4, 6), np.float32)[:, ::2])
    with pytest.raises(ValueError, match=r"activation_stats: Z must be C-contiguous"):
        _C.activation_stats(A, np.zeros((3, 4), np.float32).T, "dead")
    with pytest.raises(ValueError, match=r"activation_stats: mode must be 'none', 'dead' or 'saturated', got 'Dead'"):
        _C.activation_stats(A, mode="Dead")
    with pytest.raises(TypeError):
        _C.activation_stats(A, mode=None)
    with pytest.raises(ValueError, match=r"activation_stats: mode 'saturated' .* needs Z \(the pre-activation\)"):
        _C.activation_stats(A, None, "saturated")
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"activation_stats: threshold must be finite and >= 0, got"):
            _C.activation_stats(A, A, "saturated", bad)


def test_diff_sumsq_flat_rejects_bad_input():
    a = np.zeros(10, np.float32)
    off = np.array([0, 4, 10], np.int64)
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: a must be float32 or float64, got int32"):
        _C.diff_sumsq_flat(np.zeros(10, np.int32), a, off)
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: b must have the dtype of a \(float32\), got float64"):
        _C.diff_sumsq_flat(a, np.zeros(10), off)
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: b must be 1-d of the size of a \(10\), got shape \(9,\)"):
        _C.diff_sumsq_flat(a, np.zeros(9, np.float32), off)
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: a must be 1-d, got shape \(2, 5\)"):
        _C.diff_sumsq_flat(a.reshape(2, 5), a.reshape(2, 5), off)
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: b must be C-contiguous"):
        _C.diff_sumsq_flat(a, np.zeros(20, np.float32)[::2], off)
    with pytest.raises(TypeError, match=r"diff_sumsq_flat: b must be a numpy.ndarray, got list"):
        _C.diff_sumsq_flat(a, [0.0] * 10, off)
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: offsets\[0\] must be 0, got 1"):
        _C.diff_sumsq_flat(a, a, np.array([1, 10], np.int64))
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: offsets\[-1\] must equal a.size = 10, got 9"):
        _C.diff_sumsq_flat(a, a, np.array([0, 4, 9], np.int64))
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: offsets must be non-decreasing, got offsets\[1\] = 6 > "):
        _C.diff_sumsq_flat(a, a, np.array([0, 6, 4, 10], np.int64))
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: offsets must have dtype int64, got int32"):
        _C.diff_sumsq_flat(a, a, np.array([0, 10], np.int32))
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: offsets must be 1-d"):
        _C.diff_sumsq_flat(a, a, np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"diff_sumsq_flat: offsets must be C-contiguous"):
        _C.diff_sumsq_flat(a, a, np.array([0, 0, 5, 5, 10, 10], np.int64)[::2])
