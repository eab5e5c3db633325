"""One activation registry, one validators module, one float-dtype tuple, and the
functional API checking its hyper-parameters as the layers do (issue 6)."""
import re

import numpy as np
import pytest

import gradcore
import gradcore.functional as F
from gradcore import Tensor, nn
from gradcore import _C


def _raises(exc, op, name, value):
    """pytest.raises whose message must start with "<op>: <name> must be" and show the value."""
    return pytest.raises(exc, match=rf"^{re.escape(op)}: {re.escape(name)} must be .*{re.escape(value)}")


def _linear_parts(rng, n_in=5, n_out=4, batch=16):
    """x, weight, bias of a Dense layer (shapes read from the layer, whatever its layout)."""
    layer = nn.Dense(n_in, n_out, dtype=np.float64)
    w = Tensor(rng.standard_normal(layer.weight.shape))
    b = Tensor(rng.standard_normal(layer.bias.shape))
    x = Tensor(rng.standard_normal((batch, n_in)))
    return x, w, b


# ---------------------------------------------------------------------- the registry
@pytest.mark.parametrize("name, oracle", [
    ("leaky_relu", lambda z: np.where(z > 0, z, 0.01 * z)),
    ("elu", lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0)))),
])
def test_linear_fused_activation_uses_the_default_alpha(name, oracle):
    # Regression: F.linear(..., activation="leaky_relu") used slope 0 (a plain ReLU).
    rng = np.random.default_rng(0)
    x, w, b = _linear_parts(rng)
    z = F.linear(x, w, b).data  # the pre-activation (identity is not fused)
    assert (z < 0).sum() > 10
    y = F.linear(x, w, b, activation=name)
    np.testing.assert_allclose(y.data, oracle(z), rtol=1e-12, atol=1e-12)


def test_linear_fused_leaky_relu_gradient_uses_the_default_slope():
    rng = np.random.default_rng(1)
    x, w, b = _linear_parts(rng)
    x.requires_grad = True
    z = F.linear(x, w, b).data
    F.linear(x, w, b, activation="leaky_relu").sum().backward()
    slope = np.where(z > 0, 1.0, 0.01)
    # d sum(act(x W' + b)) / dx = slope @ W' with the layer's orientation, read from a
    # linear map: the gradient of sum(slope * linear(x)) with the identity activation.
    x2 = Tensor(x.data.copy(), requires_grad=True)
    (F.linear(x2, w, b) * Tensor(slope)).sum().backward()
    np.testing.assert_allclose(x.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_every_spelling_of_leaky_relu_agrees():
    rng = np.random.default_rng(2)
    dense = nn.Dense(5, 4, activation="leaky_relu", dtype=np.float64)
    plain = nn.Dense(5, 4, dtype=np.float64)
    plain.set_parameters(dense.state_dict())
    x = rng.standard_normal((32, 5))
    z = plain(x).data
    expected = np.where(z > 0, z, 0.01 * z)
    for y in (dense(x), F.linear(Tensor(x), dense.weight, dense.bias, activation="leaky_relu"),
              F.leaky_relu(plain(x)), nn.LeakyReLU()(plain(x)), nn.Activation("leaky_relu")(plain(x))):
        np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)


def test_registry_defaults_match_torch():
    torch = pytest.importorskip("torch")
    from gradcore import activations as A

    assert A.DEFAULT_ALPHA == {"leaky_relu": torch.nn.LeakyReLU().negative_slope, "elu": torch.nn.ELU().alpha}
    assert A.ACTIVATIONS["prelu"].alpha == pytest.approx(float(torch.nn.PReLU().weight.item()))
    x = np.linspace(-3, 3, 61)
    tx = torch.tensor(x)
    np.testing.assert_allclose(F.leaky_relu(Tensor(x)).data, torch.nn.functional.leaky_relu(tx).numpy(), rtol=1e-12)
    np.testing.assert_allclose(F.elu(Tensor(x)).data, torch.nn.functional.elu(tx).numpy(), rtol=1e-12)


def test_registry_is_the_kernels_list_and_the_layers_list():
    from gradcore import activations as A

    # The dense kernel fuses exactly the names the registry marks as fused.
    assert set(A.FUSED_ACTIVATIONS) == set(_C.activation_names())
    assert gradcore.activation_names() == list(A.FUSED_ACTIVATIONS)
    assert nn.ACTIVATION_NAMES == A.ACTIVATION_NAMES
    assert set(A.ROWWISE_ACTIVATIONS) == {"softmax", "log_softmax"}
    # Aliases resolve to one spec.
    assert A.get("linear") is A.get("identity") and A.get("SWISH") is A.get("silu")
    # Every activation layer names an activation the registry knows, with a family.
    layers = [nn.Identity(), nn.ReLU(), nn.LeakyReLU(), nn.ELU(), nn.SELU(), nn.Sigmoid(), nn.Tanh(), nn.SiLU(),
              nn.GELU(), nn.GELU("tanh"), nn.Softplus(), nn.Softmax(), nn.LogSoftmax(), nn.PReLU()]
    layers += [nn.Activation(n) for n in A.ACTIVATION_NAMES]
    for layer in layers:
        assert A.family(layer.activation_name) in A.FAMILIES
    # PReLU is known (for its family) but cannot be chosen by name.
    assert A.family("prelu") == A.RELU_LIKE
    with pytest.raises(ValueError, match="Activation: unknown activation 'prelu'"):
        nn.Activation("prelu")


@pytest.mark.parametrize("name, family", [
    ("relu", "relu_like"), ("leaky_relu", "relu_like"), ("elu", "relu_like"), ("gelu", "relu_like"),
    ("sigmoid", "saturating"), ("tanh", "saturating"), ("softmax", "saturating"),
    ("identity", "linear"), ("linear", "linear"),
])
def test_activation_families(name, family):
    from gradcore import activations as A

    assert A.family(name) == family


def test_registry_drives_default_initializers():
    from gradcore import activations as A

    for name in A.ACTIVATION_NAMES:
        expected = nn.init.get(A.get(name).initializer)
        assert nn.Dense(3, 2, activation=name).kernel_initializer == expected
    assert nn.init.RELU_FAMILY == {"relu", "leaky_relu", "elu", "prelu"}


def test_activation_by_alias_computes_the_same_function():
    x = Tensor(np.linspace(-4, 4, 17))
    np.testing.assert_allclose(nn.Activation("swish")(x).data, F.silu(x).data, rtol=0, atol=0)
    np.testing.assert_allclose(nn.Activation("linear")(x).data, x.data, rtol=0, atol=0)
    np.testing.assert_allclose(nn.Activation("gelu_tanh")(x).data, F.gelu(x, approximate="tanh").data, rtol=0)


# ---------------------------------------------------------------------- one validators module, one dtype tuple
def test_one_definition_of_the_float_dtypes_and_the_checks():
    from gradcore import _validate, tensor
    from gradcore.nn import module
    from gradcore.optim import _checks

    assert tensor._FLOAT_DTYPES is _validate.FLOAT_DTYPES
    assert _validate.FLOAT_DTYPES == (np.dtype(np.float32), np.dtype(np.float64))
    assert module.check_float_dtype is _validate.float_dtype
    for name in ("real", "integer", "choice", "positive_or_none"):
        assert getattr(_checks, name) is getattr(_validate, name)
    # The dtype check reads as every other check.
    with _raises(TypeError, "Dense", "dtype", "float16"):
        nn.Dense(3, 2, dtype=np.float16)
    with _raises(TypeError, "glorot_uniform", "dtype", "int32"):
        nn.init.glorot_uniform()((2, 3), np.int32)


def test_validators_refuse_wrong_kinds_and_ranges():
    from gradcore import _validate as v

    assert v.real("op", "x", np.float32(0.5)) == 0.5
    assert v.real("op", "x", np.array(2.0)) == 2.0
    assert v.integer("op", "n", np.int64(3)) == 3
    with _raises(TypeError, "op", "x", "str ('0.1')"):
        v.real("op", "x", "0.1")
    with _raises(TypeError, "op", "x", "bool"):
        v.real("op", "x", True)
    with _raises(TypeError, "op", "n", "float (2.7)"):
        v.integer("op", "n", 2.7)
    with _raises(ValueError, "op", "p", "got 1.5"):
        v.probability("op", "p", 1.5)
    with _raises(ValueError, "op", "p", "got 1.0"):
        v.probability("op", "p", 1.0, one=False)
    with _raises(ValueError, "op", "eps", "got 0.0"):
        v.positive("op", "eps", 0)
    with _raises(ValueError, "op", "shape", "got ()"):
        v.dims("op", "shape", ())
    assert v.dims("op", "shape", np.int64(4)) == (4,)


# ---------------------------------------------------------------------- the functional API checks its arguments
@pytest.mark.parametrize("momentum, shown", [(1.5, "1.5"), (-0.1, "-0.1"), (float("nan"), "nan"),
                                             (float("inf"), "inf")])
def test_batch_norm_refuses_bad_momentum_before_touching_running_stats(momentum, shown):
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((8, 3)))
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    rm0, rv0 = rm.copy(), rv.copy()
    with _raises(ValueError, "batch_norm", "momentum", f"got {shown}"):
        F.batch_norm(x, rm, rv, training=True, momentum=momentum)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    with pytest.raises(TypeError, match="^batch_norm: momentum must be a real number, got NoneType"):
        F.batch_norm(x, rm, rv, training=True, momentum=None)


@pytest.mark.parametrize("eps, shown", [(0.0, "0.0"), (-1e-5, "-1e-05"), (float("nan"), "nan"), (float("inf"), "inf")])
def test_batch_norm_and_layer_norm_refuse_bad_eps(eps, shown):
    rng = np.random.default_rng(4)
    x = Tensor(rng.standard_normal((8, 3)))
    for training in (True, False):
        with _raises(ValueError, "batch_norm", "eps", f"got {shown}"):
            F.batch_norm(x, np.zeros(3), np.ones(3), training=training, eps=eps)
    with _raises(ValueError, "layer_norm", "eps", f"got {shown}"):
        F.layer_norm(x, 3, eps=eps)


def test_batch_norm_valid_momentum_still_matches_numpy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 3))
    rm, rv = np.zeros(3), np.ones(3)
    F.batch_norm(Tensor(x), rm, rv, training=True, momentum=np.float32(0.25))
    np.testing.assert_allclose(rm, 0.25 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * x.var(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("shape, exc, shown", [
    ((2.7,), TypeError, "float (2.7)"), ((0,), ValueError, "got 0"), ((-3,), ValueError, "got -3"),
    ((), ValueError, "got ()"), ("ab", TypeError, "str ('a')"), (None, TypeError, "NoneType"),
])
def test_layer_norm_refuses_bad_normalized_shape(shape, exc, shown):
    x = Tensor(np.ones((2, 3)))
    with _raises(exc, "layer_norm", "normalized_shape", shown):
        F.layer_norm(x, shape)


def test_layer_norm_accepts_numpy_sizes():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3))
    y = F.layer_norm(Tensor(x), (np.int64(3),), eps=1e-5).data
    expected = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("call, op, name", [
    (lambda x, a: F.leaky_relu(x, a), "leaky_relu", "negative_slope"),
    (lambda x, a: F.elu(x, a), "elu", "alpha"),
    (lambda x, a: F.linear(x, Tensor(np.ones((3, 3))), activation="leaky_relu", alpha=a), "linear", "alpha"),
    (lambda x, a: nn.LeakyReLU(a), "LeakyReLU", "negative_slope"),
    (lambda x, a: nn.ELU(a), "ELU", "alpha"),
    (lambda x, a: nn.Activation("elu", alpha=a), "Activation", "alpha"),
    (lambda x, a: nn.Dense(3, 3, activation="leaky_relu", alpha=a), "Dense", "alpha"),
])
def test_alphas_must_be_finite(call, op, name):
    x = Tensor(np.linspace(-1, 1, 6).reshape(2, 3))
    for bad, shown in ((float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")):
        with _raises(ValueError, op, name, f"got {shown}"):
            call(x, bad)
    with _raises(TypeError, op, name, "str"):
        call(x, "0.1")


@pytest.mark.parametrize("p, shown", [(-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan")])
def test_dropout_refuses_bad_p(p, shown):
    x = Tensor(np.ones((4, 4)))
    for training in (True, False):
        with _raises(ValueError, "dropout", "p", f"got {shown}"):
            F.dropout(x, p, training=training)


@pytest.mark.parametrize("seed, exc, shown", [
    (-1, ValueError, "must be >= 0, got -1"),
    (2 ** 64, ValueError, f"must be <= {2 ** 64 - 1}, got {2 ** 64}"),
    (2.5, TypeError, "must be an integer, got float (2.5)"),
    ("7", TypeError, "must be an integer, got str"),
])
def test_dropout_refuses_seeds_outside_the_generator_range(seed, exc, shown):
    # Regression: these reached pybind11 and failed with "incompatible function arguments"
    # (or, for 2.5, were silently truncated to seed 2).
    x = Tensor(np.ones((4, 4)))
    with pytest.raises(exc, match=rf"^dropout: seed {re.escape(shown)}"):
        F.dropout(x, 0.5, seed=seed)


def test_dropout_accepts_the_whole_seed_range():
    x = Tensor(np.ones((64, 64)))
    for seed in (0, 2 ** 63, 2 ** 64 - 1, np.uint64(2 ** 64 - 1)):
        a = F.dropout(x, 0.5, seed=seed).data
        b = F.dropout(x, 0.5, seed=seed).data
        np.testing.assert_array_equal(a, b)
        assert set(np.unique(a)) <= {0.0, 2.0} and 0.3 < (a == 0).mean() < 0.7
    # p = 1 drops everything, as torch.nn.functional.dropout does.
    np.testing.assert_array_equal(F.dropout(x, 1.0).data, np.zeros((64, 64)))


def test_other_functional_choices_are_checked():
    x = Tensor(np.ones((2, 3)))
    with _raises(ValueError, "gelu", "approximate", "'erf'"):
        F.gelu(x, approximate="erf")
    with pytest.raises(TypeError, match=r"^linear: activation must be a name .* got int"):
        F.linear(x, Tensor(np.ones((3, 3))), activation=3)
    with pytest.raises(ValueError, match=r"^linear: unknown activation 'softmax'"):
        F.linear(x, Tensor(np.ones((3, 3))), activation="softmax")


# ---------------------------------------------------------------------- layers and initializers use the same checks
def test_layers_report_like_the_functional_api():
    with _raises(ValueError, "BatchNorm", "momentum", "got 1.5"):
        nn.BatchNorm(3, momentum=1.5)
    with _raises(ValueError, "BatchNorm", "eps", "got 0.0"):
        nn.BatchNorm(3, eps=0.0)
    with _raises(ValueError, "LayerNorm", "eps", "got nan"):
        nn.LayerNorm(3, eps=float("nan"))
    with _raises(ValueError, "LayerNorm", "normalized_shape", "got ()"):
        nn.LayerNorm(())
    with _raises(TypeError, "Dense", "out_features", "float (2.0)"):
        nn.Dense(3, 2.0)
    with _raises(ValueError, "Dense", "in_features", "got 0"):
        nn.Dense(0, 3)
    with _raises(ValueError, "Dense", "l2", "got -1.0"):
        nn.Dense(3, 2, l2=-1)
    with _raises(ValueError, "Dropout", "p", "got nan"):  # torch's name for the first argument
        nn.Dropout(float("nan"))
    with _raises(ValueError, "random_normal", "std", "got -1.0"):
        nn.init.random_normal(std=-1.0)
    with _raises(TypeError, "truncated_normal", "std", "str"):
        nn.init.truncated_normal(std="wide")
    with _raises(ValueError, "variance_scaling", "scale", "got nan"):
        nn.init.variance_scaling(float("nan"))
    with _raises(ValueError, "variance_scaling", "mode", "'fan_sum'"):
        nn.init.variance_scaling(1.0, "fan_sum")


def test_set_num_threads_refuses_absurd_counts():
    before = gradcore.get_num_threads()
    try:
        # Regression: a million was accepted (and 2.7 truncated to 2).
        with _raises(ValueError, "set_num_threads", "n", f"got {10 ** 6}"):
            gradcore.set_num_threads(10 ** 6)
        with _raises(ValueError, "set_num_threads", "n", "got 0"):
            gradcore.set_num_threads(0)
        with _raises(TypeError, "set_num_threads", "n", "float (2.7)"):
            gradcore.set_num_threads(2.7)
        assert gradcore.get_num_threads() == before
        from gradcore._runtime import MAX_THREADS

        gradcore.set_num_threads(MAX_THREADS)  # the documented maximum itself is accepted
        assert gradcore.get_num_threads() == MAX_THREADS
    finally:
        gradcore.set_num_threads(before)
