"""gradcore.nn.init: statistics against the Keras formulas, reproducibility, configs, defaults.

(The torch-named initializers are tested in test_layout.py.)
"""
import json
import math

import numpy as np
import pytest

import gradcore
from gradcore import nn
from gradcore.nn import init

FAN_IN, FAN_OUT = 300, 500  # distinct, so fan_in / fan_out / fan_avg give different spreads
SHAPE = (FAN_OUT, FAN_IN)  # a weight (out, in), as Dense stores it


def draw(initializer, shape=SHAPE, seed=0, dtype=np.float64):
    return initializer(shape, dtype, rng=np.random.default_rng(seed))


def test_truncation_factor_is_the_std_of_a_standard_normal_cut_at_two():
    from scipy.stats import truncnorm

    assert init.TRUNCATED_STD_FACTOR == pytest.approx(truncnorm(-2, 2).std(), rel=1e-12)


def test_compute_fans():
    assert init.compute_fans((3, 7)) == (7, 3)  # (out, in)
    assert init.compute_fans((5,)) == (5, 5)
    assert init.compute_fans(()) == (1, 1)
    assert init.compute_fans((2, 3, 4, 5)) == (3 * 20, 2 * 20)  # (out, in, ...) with receptive field 4*5


# The textbook formulas for a weight (fan_in, fan_out), written out independently of
# variance_scaling: (initializer, kind, std or limit).
NAMED = [
    ("glorot_uniform", "uniform", math.sqrt(6.0 / (FAN_IN + FAN_OUT))),
    ("glorot_normal", "truncated", math.sqrt(2.0 / (FAN_IN + FAN_OUT))),
    ("he_uniform", "uniform", math.sqrt(6.0 / FAN_IN)),
    ("he_normal", "truncated", math.sqrt(2.0 / FAN_IN)),
    ("lecun_uniform", "uniform", math.sqrt(3.0 / FAN_IN)),
    ("lecun_normal", "truncated", math.sqrt(1.0 / FAN_IN)),
]


def check_uniform(w, limit):
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.999 * limit  # the whole range is used
    assert w.std() == pytest.approx(limit / math.sqrt(3.0), rel=0.01)
    assert abs(w.mean()) < 0.01 * limit


def check_truncated(w, std):
    """Std after truncation equals ``std``; nothing beyond 2 std of the underlying normal."""
    bound = 2.0 * std / init.TRUNCATED_STD_FACTOR
    assert np.abs(w).max() <= bound * (1 + 1e-12)
    assert np.abs(w).max() > 0.99 * bound
    assert w.std() == pytest.approx(std, rel=0.01)
    assert abs(w.mean()) < 0.01 * std


def check_normal(w, std):
    assert w.std() == pytest.approx(std, rel=0.01)
    # about 4.55% of a normal lies beyond two standard deviations
    assert np.mean(np.abs(w) > 2 * std) == pytest.approx(0.0455, abs=0.004)


@pytest.mark.parametrize("name,kind,spread", NAMED)
def test_named_initializers_match_the_formulas(name, kind, spread):
    w = draw(init.get(name))
    assert w.shape == SHAPE and w.dtype == np.float64
    (check_uniform if kind == "uniform" else check_truncated)(w, spread)


@pytest.mark.parametrize("mode,n", [("fan_in", FAN_IN), ("fan_out", FAN_OUT), ("fan_avg", (FAN_IN + FAN_OUT) / 2)])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_variance_scaling_every_distribution(mode, n, scale):
    check_truncated(draw(init.variance_scaling(scale, mode, "truncated_normal")), math.sqrt(scale / n))
    check_truncated(draw(init.variance_scaling(scale, mode, "normal")), math.sqrt(scale / n))
    check_normal(draw(init.variance_scaling(scale, mode, "untruncated_normal")), math.sqrt(scale / n))
    check_uniform(draw(init.variance_scaling(scale, mode, "uniform")), math.sqrt(3.0 * scale / n))


def test_normal_is_keras_alias_of_truncated_normal():
    vs = init.VarianceScaling(1.0, "fan_in", "normal")
    assert vs.distribution == "truncated_normal"
    np.testing.assert_array_equal(draw(vs), draw(init.VarianceScaling(1.0, "fan_in", "truncated_normal")))


def test_simple_initializers():
    assert np.all(draw(init.zeros()) == 0) and np.all(draw(init.ones()) == 1)
    assert np.all(draw(init.constant(0.3)) == 0.3)
    w = draw(init.random_normal())  # Keras' RandomNormal: stddev 0.05
    assert w.std() == pytest.approx(0.05, rel=0.01) and abs(w.mean()) < 5e-4
    w = draw(init.get("random"))  # the documents' "random": N(0, 0.01)
    assert w.std() == pytest.approx(0.01, rel=0.01)
    w = draw(init.random_normal(mean=2.0, std=0.5))
    assert w.mean() == pytest.approx(2.0, abs=0.005) and w.std() == pytest.approx(0.5, rel=0.01)
    w = draw(init.random_uniform())
    assert w.min() >= -0.05 and w.max() < 0.05 and w.max() > 0.0499 and w.min() < -0.0499
    w = draw(init.random_uniform(1.0, 3.0))
    assert w.min() >= 1.0 and w.max() < 3.0 and w.mean() == pytest.approx(2.0, abs=0.01)
    w = draw(init.truncated_normal(1.0, 0.2))
    assert np.abs(w - 1.0).max() <= 0.4 and w.std() == pytest.approx(0.2 * init.TRUNCATED_STD_FACTOR, rel=0.01)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_and_shape(dtype):
    w = init.he_normal()((4, 6), dtype)
    assert w.dtype == dtype and w.shape == (4, 6) and w.flags.c_contiguous
    assert init.zeros()((3,), dtype).dtype == dtype


def test_float32_values_are_the_rounded_float64_ones():
    w64 = draw(init.glorot_uniform(), dtype=np.float64)
    w32 = draw(init.glorot_uniform(), dtype=np.float32)
    np.testing.assert_array_equal(w32, w64.astype(np.float32))


def test_manual_seed_makes_initialisation_reproducible():
    gradcore.manual_seed(42)
    a = init.he_normal()((20, 30))
    b = init.glorot_uniform()((20, 30))
    gradcore.manual_seed(42)
    np.testing.assert_array_equal(init.he_normal()((20, 30)), a)
    np.testing.assert_array_equal(init.glorot_uniform()((20, 30)), b)
    gradcore.manual_seed(43)
    assert not np.array_equal(init.he_normal()((20, 30)), a)


def test_manual_seed_makes_networks_reproducible():
    def build():
        return nn.Sequential(nn.Dense(5, 8, activation="relu"), nn.Dense(8, 3, activation="tanh"),
                             nn.Dense(3, 2, kernel_initializer="random_uniform", bias_initializer="random_normal"))

    gradcore.manual_seed(7)
    a = build().state_dict()
    gradcore.manual_seed(7)
    b = build().state_dict()
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    gradcore.manual_seed(8)
    assert not np.array_equal(build().state_dict()["0.weight"], a["0.weight"])


@pytest.mark.parametrize("activation,expected", [
    ("relu", init.HeNormal), ("leaky_relu", init.HeNormal), ("elu", init.HeNormal), ("prelu", init.HeNormal),
    ("selu", init.LecunNormal), ("tanh", init.GlorotUniform), ("sigmoid", init.GlorotUniform),
    (None, init.GlorotUniform), ("softmax", init.GlorotUniform), ("gelu", init.GlorotUniform),
])
def test_default_kernel_initializer_follows_activation(activation, expected):
    assert type(init.default_kernel_initializer(activation)) is expected


def test_dense_default_init_statistics():
    gradcore.manual_seed(0)
    relu = nn.Dense(FAN_IN, FAN_OUT, activation="relu", dtype=np.float64)
    check_truncated(relu.weight.data, math.sqrt(2.0 / FAN_IN))
    selu = nn.Dense(FAN_IN, FAN_OUT, activation="selu", dtype=np.float64)
    check_truncated(selu.weight.data, math.sqrt(1.0 / FAN_IN))
    tanh = nn.Dense(FAN_IN, FAN_OUT, activation="tanh", dtype=np.float64)
    check_uniform(tanh.weight.data, math.sqrt(6.0 / (FAN_IN + FAN_OUT)))
    for layer in (relu, selu, tanh):
        assert np.all(layer.bias.data == 0)
    chosen = nn.Dense(FAN_IN, FAN_OUT, activation="relu", kernel_initializer="lecun_uniform", dtype=np.float64)
    check_uniform(chosen.weight.data, math.sqrt(3.0 / FAN_IN))
    obj = nn.Dense(FAN_IN, FAN_OUT, kernel_initializer=init.variance_scaling(3.0, "fan_out", "uniform"),
                   bias_initializer=init.constant(0.1), dtype=np.float64)
    check_uniform(obj.weight.data, math.sqrt(9.0 / FAN_OUT))
    assert np.all(obj.bias.data == np.float64(0.1))


@pytest.mark.parametrize("name", init.names())
def test_config_round_trip_through_json(name):
    original = init.get(name)
    config = json.loads(json.dumps(original.get_config()))
    rebuilt = init.from_config(config)
    assert rebuilt == original and type(rebuilt) is type(original)
    np.testing.assert_array_equal(draw(rebuilt, (6, 4)), draw(original, (6, 4)))


def test_config_keeps_arguments():
    vs = init.variance_scaling(0.3, "fan_avg", "uniform")
    assert vs.get_config() == {"name": "variance_scaling", "scale": 0.3, "mode": "fan_avg", "distribution": "uniform"}
    assert init.get(vs.get_config()) == vs
    assert init.from_config({"name": "random_normal", "mean": 1.0, "std": 2.0}) == init.random_normal(1.0, 2.0)
    assert init.get("he_normal").get_config() == {"name": "he_normal"}
    assert init.get("Glorot_Uniform") == init.glorot_uniform()


def test_callable_initializer():
    fn = init.get(lambda shape, dtype, rng: np.full(shape, 2.0))
    assert np.all(fn((2, 3)) == 2.0)
    with pytest.raises(TypeError, match="cannot be serialised"):
        fn.get_config()
    bad = init.get(lambda shape, dtype, rng: np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        bad((2, 3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown initializer"):
        init.get("glorot")
    with pytest.raises(ValueError, match="scale"):
        init.variance_scaling(0.0)
    with pytest.raises(ValueError, match="mode"):
        init.variance_scaling(1.0, "fan_sum")
    with pytest.raises(ValueError, match="distribution"):
        init.variance_scaling(1.0, "fan_in", "cauchy")
    with pytest.raises(ValueError, match="std"):
        init.random_normal(std=-1.0)
    with pytest.raises(ValueError, match="minval <= maxval"):
        init.random_uniform(1.0, 0.0)
    with pytest.raises(TypeError, match="dtype"):
        init.zeros()((2,), np.int32)
    with pytest.raises(ValueError, match="negative"):
        init.ones()((2, -1))
    with pytest.raises(TypeError):
        init.get(3.5)
    with pytest.raises(ValueError, match="unknown initializer"):
        init.from_config({"name": "nope"})
    with pytest.raises(ValueError, match="bad arguments"):
        init.from_config({"name": "constant", "colour": 1})
