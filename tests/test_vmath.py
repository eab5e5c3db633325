"""gradcore's vector math (csrc/vmath.h) against libm: ulp distance over dense sweeps of
the whole range, special values, subnormal inputs and outputs, in place, both dispatch
paths (generic=True forces the portable baseline code), float32 and float64, bad input.

References: float32 results are compared with the float64 function rounded to float32;
float64 results with the x87 80-bit long double function rounded to float64 where NumPy
has one (exp, expm1, log1p, tanh; plain libm where long double is double), and with
libm's float64 erf / erfc (the math module) on a sample.
"""
import math

import numpy as np
import pytest

from gradcore import _C, set_num_threads, get_num_threads

special = pytest.importorskip("scipy.special")

NAMES = ["exp", "expm1", "log1p", "tanh", "erf", "erfc"]
REQUIRED_ULP = 4  # the bound, for every function, dtype and path
PATHS = [False, True]  # generic=False: the CPU's widest clone; True: the baseline code


def vm(name, x, generic=False):
    out = np.empty_like(x)
    _C.vmath(name, x, out, generic=generic)
    return out


def ordinal(a):
    """Integers in the order of the floats: adjacent floats differ by 1 (+0 and -0 by 0)."""
    a = np.asarray(a)
    itype = np.int32 if a.dtype == np.float32 else np.int64
    i = a.view(itype).astype(np.int64)
    return np.where(i < 0, np.int64(np.iinfo(itype).min) - i, i)


def ulp_distance(got, want):
    """ulps between got and want element-wise; NaN vs NaN is 0, NaN vs a number inf."""
    d = np.abs(ordinal(got) - ordinal(want)).astype(np.float64)
    gn, wn = np.isnan(got), np.isnan(want)
    d[gn & wn] = 0.0
    d[gn ^ wn] = np.inf
    return d


def _erf64(x):
    return np.array([math.erf(v) for v in x.tolist()])


def _erfc64(x):
    return np.array([math.erfc(v) for v in x.tolist()])


def ref32(name, x):
    """float64 function of float32 x, rounded to float32."""
    with np.errstate(all="ignore"):  # the sweep's signalling NaNs
        x64 = x.astype(np.float64)
        r = {"exp": np.exp, "expm1": np.expm1, "log1p": np.log1p, "tanh": np.tanh,
             "erf": special.erf, "erfc": special.erfc}[name](x64)
        return r.astype(np.float32)


def ref64(name, x):
    """The function of float64 x from long double (rounded) or libm."""
    if name == "erf":
        return _erf64(x)
    if name == "erfc":
        return _erfc64(x)
    with np.errstate(all="ignore"):
        return getattr(np, name)(x.astype(np.longdouble)).astype(np.float64)


def float32_sweep(stride=1009):
    """Every stride-th float32 bit pattern: all signs, exponents, subnormals, inf, NaN."""
    bits = np.arange(0, 2 ** 32, stride, dtype=np.uint64).astype(np.uint32)
    return bits.view(np.float32)


def float64_points(name, n):
    """Random float64 bit patterns plus dense uniform ranges where each function turns."""
    rng = np.random.default_rng(8)
    parts = [rng.integers(0, 2 ** 64, n, dtype=np.uint64).view(np.float64),
             rng.uniform(-1, 1, n), rng.uniform(-5, 5, n), np.linspace(-1e-3, 1e-3, n // 4)]
    extra = {"exp": [rng.uniform(-746, 710, n)], "expm1": [rng.uniform(-45, 45, n)],
             "log1p": [rng.uniform(-1, 0, n), np.exp(rng.uniform(-40, 700, n))],
             "tanh": [rng.uniform(-25, 25, n)], "erf": [rng.uniform(-7, 7, n)],
             "erfc": [rng.uniform(-7, 28, n)]}[name]
    return np.concatenate(parts + extra)


# ------------------------------------------------------------------ dense sweeps

@pytest.mark.parametrize("generic", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_float32_every_1009th_bit_pattern_within_4_ulp(name, generic):
    x = float32_sweep()
    d = ulp_distance(vm(name, x, generic), ref32(name, x))
    worst = int(np.argmax(d))
    assert d[worst] <= REQUIRED_ULP, f"{name}({x[worst]!r}): {d[worst]} ulp"


@pytest.mark.parametrize("generic", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_float64_within_4_ulp(name, generic):
    x = float64_points(name, 6000 if name.startswith("erf") else 100_000)
    d = ulp_distance(vm(name, x, generic), ref64(name, x))
    worst = int(np.argmax(d))
    assert d[worst] <= REQUIRED_ULP, f"{name}({x[worst]!r}): {d[worst]} ulp"


# ------------------------------------------------------------------ special values

INF, NAN = np.inf, np.nan
# name -> [(x, expected)], expected exactly (sign of zero included), in both dtypes
SPECIAL = {
    "exp": [(NAN, NAN), (INF, INF), (-INF, 0.0), (0.0, 1.0), (-0.0, 1.0), (1e4, INF), (-1e4, 0.0)],
    "expm1": [(NAN, NAN), (INF, INF), (-INF, -1.0), (0.0, 0.0), (-0.0, -0.0), (1e4, INF), (-1e4, -1.0)],
    "log1p": [(NAN, NAN), (INF, INF), (-INF, NAN), (0.0, 0.0), (-0.0, -0.0), (-1.0, -INF), (-1.5, NAN),
              (-2.0, NAN)],
    "tanh": [(NAN, NAN), (INF, 1.0), (-INF, -1.0), (0.0, 0.0), (-0.0, -0.0), (50.0, 1.0), (-50.0, -1.0),
             (1e30, 1.0), (-1e30, -1.0)],
    "erf": [(NAN, NAN), (INF, 1.0), (-INF, -1.0), (0.0, 0.0), (-0.0, -0.0), (10.0, 1.0), (-10.0, -1.0)],
    "erfc": [(NAN, NAN), (INF, 0.0), (-INF, 2.0), (0.0, 1.0), (-0.0, 1.0), (30.0, 0.0), (-30.0, 2.0)],
}


@pytest.mark.parametrize("generic", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_special_values_exact(name, dtype, generic):
    x = np.array([p[0] for p in SPECIAL[name]], dtype)
    want = np.array([p[1] for p in SPECIAL[name]], dtype)
    got = vm(name, x, generic)
    for xi, g, w in zip(x, got, want):
        assert (np.isnan(g) and np.isnan(w)) or (g == w and np.signbit(g) == np.signbit(w)), \
            f"{name}({xi!r}) = {g!r}, want {w!r}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_finite_and_overflow_thresholds(dtype):
    fi = np.finfo(dtype)
    x = np.array([fi.max, -fi.max], dtype)
    np.testing.assert_array_equal(vm("log1p", x[:1]), np.log1p(x[:1]))
    np.testing.assert_array_equal(vm("tanh", x), [1, -1])
    np.testing.assert_array_equal(vm("erf", x), [1, -1])
    # the last finite exp and the first overflowing one
    top = np.log(np.array(fi.max, np.float64))
    below = np.nextafter(dtype(top), dtype(0))
    above = np.nextafter(dtype(top), dtype(np.inf))
    got = vm("exp", np.array([below, above], dtype))
    assert np.isfinite(got[0]) and got[1] == np.inf


# ------------------------------------------------------------------ subnormals

@pytest.mark.parametrize("generic", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_inputs(dtype, generic):
    tiny = np.finfo(dtype).smallest_subnormal
    normal = np.finfo(dtype).smallest_normal
    x = np.concatenate([np.geomspace(tiny, normal, 500), -np.geomspace(tiny, normal, 500)]).astype(dtype)
    for name in ("expm1", "log1p", "tanh"):  # f(x) rounds to x
        np.testing.assert_array_equal(vm(name, x, generic), x, err_msg=name)
    # erf(x) = 2/sqrt(pi) x: a subnormal result, rounded once or twice
    want = (x.astype(np.float64) * (2 / math.sqrt(math.pi))).astype(dtype)
    assert ulp_distance(vm("erf", x, generic), want).max() <= 1
    np.testing.assert_array_equal(vm("exp", x, generic), np.ones_like(x))
    np.testing.assert_array_equal(vm("erfc", x, generic), np.ones_like(x))


@pytest.mark.parametrize("generic", PATHS)
@pytest.mark.parametrize("dtype, exp_range, erfc_range", [
    (np.float32, (-104.0, -87.0), (9.0, 10.1)),
    (np.float64, (-746.0, -707.0), (26.0, 27.5)),
])
def test_subnormal_outputs(dtype, exp_range, erfc_range, generic):
    ref = ref32 if dtype == np.float32 else ref64
    for name, (lo, hi) in (("exp", exp_range), ("erfc", erfc_range)):
        x = np.linspace(lo, hi, 4001).astype(dtype)
        want = ref(name, x)
        assert (want[want > 0] < np.finfo(dtype).smallest_normal).any()  # the sweep reaches them
        d = ulp_distance(vm(name, x, generic), want)
        assert d.max() <= REQUIRED_ULP, f"{name}({x[np.argmax(d)]!r}): {d.max()} ulp"


# ------------------------------------------------------------------ layout, threads

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_in_place_and_any_shape(name, dtype):
    x = np.random.default_rng(1).normal(0, 3, (7, 9, 5)).astype(dtype)
    if name == "log1p":
        x = np.abs(x)
    want = vm(name, x)
    assert want.shape == x.shape
    _C.vmath(name, x, x)
    np.testing.assert_array_equal(x, want)


def test_threads_give_the_same_bits():
    x = np.random.default_rng(2).normal(0, 4, 1 << 20)
    before = get_num_threads()
    try:
        set_num_threads(1)
        one = vm("erfc", x)
        set_num_threads(2)
        two = vm("erfc", x)
    finally:
        set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_empty_arrays():
    for dtype in (np.float32, np.float64):
        x = np.empty((0, 3), dtype)
        assert vm("exp", x).shape == (0, 3)


# ------------------------------------------------------------------ bad input

def test_bad_input_errors():
    x = np.ones(4)
    with pytest.raises(ValueError, match="vmath: unknown function 'sin'; valid names: exp, expm1, log1p"):
        _C.vmath("sin", x, np.empty_like(x))
    with pytest.raises(ValueError, match="x must be float32 or float64, got int64"):
        _C.vmath("exp", np.ones(4, np.int64), np.empty(4, np.int64))
    with pytest.raises(ValueError, match="out must have dtype float64, got float32"):
        _C.vmath("exp", x, np.empty(4, np.float32))
    with pytest.raises(ValueError, match=r"out must have the shape of x \(4,\), got \(2, 2\)"):
        _C.vmath("exp", x, np.empty((2, 2)))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _C.vmath("exp", np.ones(8)[::2], np.empty(4))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        _C.vmath("exp", x, np.empty(8)[::2])
    ro = np.empty(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        _C.vmath("exp", x, ro)
    with pytest.raises(TypeError):
        _C.vmath("exp", [1.0, 2.0], np.empty(2))
    buf = np.ones(8)
    with pytest.raises(ValueError, match="out overlaps x"):
        _C.vmath("exp", buf[:6], buf[2:])
