"""gradcore.functional: gradients by finite differences, values by NumPy and PyTorch."""
import numpy as np
import pytest

import gradcore
import gradcore.functional as F
from gradcore import Tensor, gradcheck


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def param(rng, *shape, scale=1.0, offset=0.0):
    return Tensor(rng.standard_normal(shape) * scale + offset, requires_grad=True)


ACTIVATIONS = {
    "relu": (F.relu, lambda x: np.maximum(x, 0)),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    "elu": (lambda x: F.elu(x, 0.7), lambda x: np.where(x > 0, x, 0.7 * np.expm1(x))),
    "selu": (F.selu, lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x))),
    "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (F.tanh, np.tanh),
    "silu": (F.silu, lambda x: x / (1 + np.exp(-x))),
    "gelu": (F.gelu, None),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    "softplus": (F.softplus, lambda x: np.logaddexp(0, x)),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_gradcheck_and_reference(rng, name):
    fn, ref = ACTIVATIONS[name]
    # keep points away from the kink at 0 where finite differences are not defined
    x = rng.standard_normal((4, 5))
    x = Tensor(np.where(np.abs(x) < 0.05, 0.3, x), requires_grad=True)
    if ref is not None:
        np.testing.assert_allclose(fn(x).data, ref(x.data), rtol=1e-10, atol=1e-12)
    assert gradcheck(fn, [x])


def test_gelu_reference(rng):
    from scipy.special import erf

    x = rng.standard_normal(50)
    np.testing.assert_allclose(F.gelu(Tensor(x)).data, 0.5 * x * (1 + erf(x / np.sqrt(2))), rtol=1e-10)


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid", "elu", "selu", "softplus", "leaky_relu"])
def test_linear(rng, activation):
    x, w, b = param(rng, 6, 4), param(rng, 3, 4), param(rng, 3)  # weight (out, in)
    out = F.linear(x, w, b, activation=activation, alpha=0.2)
    pre = x.data @ w.data.T + b.data
    if activation in (None, "identity"):
        np.testing.assert_allclose(out.data, pre, rtol=1e-12)
    elif activation == "relu":
        np.testing.assert_allclose(out.data, np.maximum(pre, 0), rtol=1e-12)
    elif activation == "tanh":
        np.testing.assert_allclose(out.data, np.tanh(pre), rtol=1e-12)
    assert gradcheck(lambda x, w, b: F.linear(x, w, b, activation=activation, alpha=0.2), [x, w, b])
    assert gradcheck(lambda x, w: F.linear(x, w), [x, w])


def test_linear_batched_input(rng):
    x, w = param(rng, 2, 3, 4), param(rng, 5, 4)
    np.testing.assert_allclose(F.linear(x, w).data, x.data @ w.data.T, rtol=1e-12)
    assert gradcheck(lambda x, w: F.linear(x, w), [x, w])


def test_prelu(rng):
    x = param(rng, 5, 4)
    for a in (param(rng, 4, scale=0.3), param(rng, 1, scale=0.3)):
        ref = np.where(x.data > 0, x.data, a.data * x.data)
        np.testing.assert_allclose(F.prelu(x, a).data, ref, rtol=1e-12)
        assert gradcheck(F.prelu, [x, a])


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_family(rng, axis):
    x = param(rng, 4, 6)
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    ref = e / e.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(F.softmax(x, axis).data, ref, rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(x, axis).data, np.log(ref), rtol=1e-12)
    assert gradcheck(lambda t: F.softmax(t, axis), [x])
    assert gradcheck(lambda t: F.log_softmax(t, axis), [x])


def test_batch_norm_train_and_eval(rng):
    x, g, b = param(rng, 8, 3, offset=2.0), param(rng, 3, offset=1.0), param(rng, 3)
    rm, rv = np.zeros(3), np.ones(3)
    out = F.batch_norm(x, rm, rv, g, b, training=True, momentum=0.1, eps=1e-5)
    mu, var = x.data.mean(0), x.data.var(0)
    np.testing.assert_allclose(out.data, (x.data - mu) / np.sqrt(var + 1e-5) * g.data + b.data, rtol=1e-10)
    np.testing.assert_allclose(rm, 0.1 * mu, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.data.var(0, ddof=1), rtol=1e-12)
    ev = F.batch_norm(x, rm, rv, g, b, training=False, eps=1e-5)
    np.testing.assert_allclose(ev.data, (x.data - rm) / np.sqrt(rv + 1e-5) * g.data + b.data, rtol=1e-10)
    assert gradcheck(lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True), [x, g, b])
    assert gradcheck(lambda x, g, b: F.batch_norm(x, rm, rv, g, b, training=False), [x, g, b])
    assert gradcheck(lambda x: F.batch_norm(x, None, None, training=True), [x])


def test_batch_norm_errors(rng):
    x = Tensor(rng.standard_normal((1, 3)))
    with pytest.raises(ValueError, match="more than 1 value"):
        F.batch_norm(x, np.zeros(3), np.ones(3), training=True)
    with pytest.raises(ValueError, match="empty"):
        F.batch_norm(Tensor(np.zeros((0, 3))), np.zeros(3), np.ones(3), training=True)
    with pytest.raises(TypeError, match="running_mean.*float64"):
        F.batch_norm(Tensor(rng.standard_normal((4, 3))), np.zeros(3, np.float32), np.ones(3), training=True)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        F.batch_norm(Tensor(rng.standard_normal((4, 3))), None, None, Tensor(np.ones(4)), training=True)


def test_layer_norm(rng):
    x, g, b = param(rng, 2, 3, 4), param(rng, 4, offset=1.0), param(rng, 4)
    mu, var = x.data.mean(-1, keepdims=True), x.data.var(-1, keepdims=True)
    ref = (x.data - mu) / np.sqrt(var + 1e-5) * g.data + b.data
    np.testing.assert_allclose(F.layer_norm(x, 4, g, b).data, ref, rtol=1e-10)
    assert gradcheck(lambda x, g, b: F.layer_norm(x, (4,), g, b), [x, g, b])
    x2 = param(rng, 3, 2, 5)
    assert gradcheck(lambda x: F.layer_norm(x, (2, 5)), [x2])


def test_dropout(rng):
    x = param(rng, 200, 50)
    gradcore.manual_seed(3)
    y1 = F.dropout(x, 0.3, training=True)
    gradcore.manual_seed(3)
    y2 = F.dropout(x, 0.3, training=True)
    np.testing.assert_array_equal(y1.data, y2.data)
    kept = y1.data != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y1.data[kept], x.data[kept] / 0.7, rtol=1e-12)
    y1.backward(np.ones(x.shape))
    np.testing.assert_allclose(x.grad, kept / 0.7)
    assert F.dropout(x, 0.3, training=False) is x
    assert gradcheck(lambda t: F.dropout(t, 0.5, seed=11), [param(rng, 4, 5)])


def test_losses(rng):
    p, t = param(rng, 5, 3), rng.standard_normal((5, 3))
    np.testing.assert_allclose(F.mse_loss(p, t).item(), np.mean((p.data - t) ** 2), rtol=1e-12)
    assert gradcheck(lambda p: F.mse_loss(p, t), [p])
    y01 = (rng.random((5, 3)) > 0.5).astype(float)
    ref = np.mean(np.logaddexp(0, p.data) - p.data * y01)
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(p, y01).item(), ref, rtol=1e-12)
    assert gradcheck(lambda p: F.binary_cross_entropy_with_logits(p, y01), [p])
    labels = np.array([0, 2, 1, 1, 0])
    logp = p.data - np.log(np.exp(p.data).sum(1, keepdims=True))
    np.testing.assert_allclose(F.cross_entropy(p, labels).item(), -logp[np.arange(5), labels].mean(), rtol=1e-12)
    assert gradcheck(lambda p: F.cross_entropy(p, labels), [p])
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(F.cross_entropy(p, onehot).item(), F.cross_entropy(p, labels).item(), rtol=1e-12)
    assert gradcheck(lambda p: F.cross_entropy(p, onehot * 0.8 + 0.2 / 3), [p])


def test_loss_scaled_by_upstream_gradient(rng):
    p = param(rng, 4, 3)
    (F.mse_loss(p, np.zeros((4, 3))) * 3.0).backward()
    np.testing.assert_allclose(p.grad, 3.0 * 2 * p.data / 12, rtol=1e-12)


def test_float32_matches_float64(rng):
    x64, w64, b64 = rng.standard_normal((16, 8)), rng.standard_normal((4, 8)), rng.standard_normal(4)
    labels = rng.integers(0, 4, 16)
    results = {}
    for dt in (np.float32, np.float64):
        x, w, b = (Tensor(a.astype(dt), requires_grad=True) for a in (x64, w64, b64))
        h = F.layer_norm(F.linear(x, w, b, activation="gelu"), 4)
        loss = F.cross_entropy(F.batch_norm(h, None, None, training=True), labels)
        loss.backward()
        results[dt] = (loss.item(), w.grad, x.grad)
    np.testing.assert_allclose(results[np.float32][0], results[np.float64][0], rtol=1e-5)
    np.testing.assert_allclose(results[np.float32][1], results[np.float64][1], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(results[np.float32][2], results[np.float64][2], rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------- bad input
def test_linear_shape_errors_name_op_and_shapes():
    x = Tensor(np.ones((32, 19), np.float32))
    w = Tensor(np.ones((50, 20), np.float32))  # (out, in)
    with pytest.raises(ValueError, match=r"linear.*\(32, 19\).*\(50, 20\).*\(\.\.\., 20\)"):
        F.linear(x, w)
    with pytest.raises(ValueError, match=r"bias must have shape \(50,\)"):
        F.linear(Tensor(np.ones((2, 20))), w, Tensor(np.ones(49)))
    with pytest.raises(ValueError, match="empty batch"):
        F.linear(Tensor(np.ones((0, 20))), w)
    with pytest.raises(ValueError, match="unknown activation"):
        F.linear(Tensor(np.ones((2, 20))), w, activation="relu6")


def test_integer_and_noncontiguous_inputs_work(rng):
    w = Tensor(rng.standard_normal((3, 6)))
    xi = np.arange(24).reshape(4, 6)
    np.testing.assert_allclose(F.linear(xi, w).data, xi @ w.data.T, rtol=1e-12)
    xs = rng.standard_normal((6, 4)).T  # Fortran-ordered view
    np.testing.assert_allclose(F.linear(Tensor(xs), w).data, xs @ w.data.T, rtol=1e-12)
    wt = Tensor(rng.standard_normal((6, 3)).T)  # a transposed (non-contiguous) weight
    np.testing.assert_allclose(F.linear(xi, wt).data, xi @ wt.data.T, rtol=1e-12)
    np.testing.assert_allclose(F.relu(Tensor(xs[:, ::2])).data, np.maximum(xs[:, ::2], 0))


def test_labels_out_of_range_and_wrong_type(rng):
    logits = Tensor(rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match="out of range"):
        F.cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="out of range"):
        F.cross_entropy(logits, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="whole class"):
        F.cross_entropy(logits, np.array([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"target"):
        F.cross_entropy(logits, np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"mse_loss.*\(3, 4\).*\(4, 3\)"):
        F.mse_loss(logits, np.zeros((4, 3)))


def test_nan_propagates_without_crash(rng):
    x = rng.standard_normal((4, 3))
    x[1, 2] = np.nan
    x = Tensor(x, requires_grad=True)
    w = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    out = F.softmax(F.layer_norm(F.linear(x, w, activation="tanh"), 2), -1)
    assert np.isnan(out.data[1]).all() and np.isfinite(out.data[[0, 2, 3]]).all()
    loss = F.cross_entropy(F.linear(x, w), np.array([0, 1, 0, 1]))
    assert np.isnan(loss.item())
    loss.backward()
    assert np.isnan(w.grad).any()


# ---------------------------------------------------------------------- PyTorch parity
def _torch_parity(fn_gc, fn_torch, arrays, rng, grad_inputs=None):
    torch = pytest.importorskip("torch")
    gts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    tts = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    out_gc, out_t = fn_gc(*gts), fn_torch(*tts)
    np.testing.assert_allclose(out_gc.data, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(out_gc.shape)
    out_gc.backward(g)
    out_t.backward(torch.tensor(g))
    for a, b in zip(gts, tts):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-9, atol=1e-11)


TORCH_UNARY = {
    "relu": (F.relu, "relu", {}), "leaky_relu": (lambda x: F.leaky_relu(x, 0.05), "leaky_relu", {"negative_slope": 0.05}),
    "elu": (lambda x: F.elu(x, 1.3), "elu", {"alpha": 1.3}), "selu": (F.selu, "selu", {}),
    "sigmoid": (F.sigmoid, "sigmoid", {}), "tanh": (F.tanh, "tanh", {}), "silu": (F.silu, "silu", {}),
    "gelu": (F.gelu, "gelu", {}), "gelu_tanh": (lambda x: F.gelu(x, "tanh"), "gelu", {"approximate": "tanh"}),
    "softplus": (F.softplus, "softplus", {}),
    "softmax": (F.softmax, "softmax", {"dim": -1}), "log_softmax": (F.log_softmax, "log_softmax", {"dim": -1}),
}


@pytest.mark.parametrize("name", sorted(TORCH_UNARY))
def test_torch_parity_activations(rng, name):
    torch = pytest.importorskip("torch")
    fn, tname, kw = TORCH_UNARY[name]
    x = rng.standard_normal((6, 7)) * 3
    _torch_parity(fn, lambda t: getattr(torch.nn.functional, tname)(t, **kw), [x], rng)


def test_torch_parity_linear_prelu_norms(rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x, w, b = rng.standard_normal((9, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    _torch_parity(F.linear, tf.linear, [x, w, b], rng)  # the same (out, in) weight layout
    a = np.abs(rng.standard_normal(5)) * 0.2
    _torch_parity(F.prelu, tf.prelu, [x, a], rng)
    g, bb = rng.standard_normal(5), rng.standard_normal(5)
    _torch_parity(lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True),
                  lambda x, g, b: tf.batch_norm(x, None, None, g, b, training=True), [x, g, bb], rng)
    rm, rv = rng.standard_normal(5), np.abs(rng.standard_normal(5)) + 0.5
    _torch_parity(lambda x, g, b: F.batch_norm(x, rm.copy(), rv.copy(), g, b, training=False),
                  lambda x, g, b: tf.batch_norm(x, torch.tensor(rm), torch.tensor(rv), g, b, training=False),
                  [x, g, bb], rng)
    _torch_parity(lambda x, g, b: F.layer_norm(x, 5, g, b), lambda x, g, b: tf.layer_norm(x, (5,), g, b),
                  [x, g, bb], rng)


def test_torch_parity_running_stats(rng):
    torch = pytest.importorskip("torch")
    rm, rv = np.zeros(4), np.ones(4)
    trm, trv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for _ in range(3):
        x = rng.standard_normal((10, 4)) * 2 + 1
        F.batch_norm(Tensor(x), rm, rv, training=True, momentum=0.2)
        torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, training=True, momentum=0.2)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)


def test_torch_parity_losses(rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    p, t = rng.standard_normal((6, 3)) * 4, rng.standard_normal((6, 3))
    labels = np.array([2, 0, 1, 1, 2, 0])
    probs = rng.dirichlet(np.ones(3), size=6)
    y01 = rng.random((6, 3))
    cases = [
        (lambda p: F.mse_loss(p, t), lambda p: tf.mse_loss(p, torch.tensor(t))),
        (lambda p: F.binary_cross_entropy_with_logits(p, y01),
         lambda p: tf.binary_cross_entropy_with_logits(p, torch.tensor(y01))),
        (lambda p: F.cross_entropy(p, labels), lambda p: tf.cross_entropy(p, torch.tensor(labels))),
        (lambda p: F.cross_entropy(p, probs), lambda p: tf.cross_entropy(p, torch.tensor(probs))),
    ]
    for fgc, ft in cases:
        _torch_parity(fgc, ft, [p], rng)


@pytest.mark.parametrize("name, ref, dref", [
    ("relu", lambda x: max(x, 0.0), lambda x: float(x > 0)),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    ("tanh", np.tanh, lambda x: 1 - np.tanh(x) ** 2),
])
def test_zero_d_input_stays_zero_d_through_activations(name, ref, dref):
    x = gradcore.Tensor(np.float64(0.7), requires_grad=True)
    y = getattr(F, name)(x)
    assert y.shape == ()
    np.testing.assert_allclose(y.data, ref(0.7), rtol=1e-14)
    y.backward()
    assert x.grad.shape == ()
    np.testing.assert_allclose(x.grad, dref(0.7), rtol=1e-12)
