"""gradcore.nn: layers and containers against NumPy references, finite differences and PyTorch;
names, flat buffers, state handling, dtype conversion, summary and input checks."""
import json

import numpy as np
import pytest

import gradcore
import gradcore.functional as F
from gradcore import Tensor, nn
from gradcore.flat import flatten_parameters

SELU_SCALE, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def np_bn_train(x, g, b, eps=1e-5):
    mu, var = x.mean(0), x.var(0)
    return (x - mu) / np.sqrt(var + eps) * g + b


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def example_net(dtype=np.float32):
    return nn.Sequential(
        nn.Dense(4, 5, activation="relu"), nn.BatchNorm(5), nn.PReLU(),
        nn.Residual(nn.Sequential(nn.Dense(5, 3), nn.ReLU())), nn.Dense(3, 2), dtype=dtype)


# ---------------------------------------------------------------------- names and structure
def test_parameter_and_buffer_names():
    gradcore.manual_seed(0)
    net = example_net()
    assert [n for n, _ in net.named_parameters()] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "2.weight",
        "3.block.0.weight", "3.block.0.bias", "3.projection.weight", "4.weight", "4.bias"]
    assert [n for n, _ in net.named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert list(net.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "2.weight",
        "3.block.0.weight", "3.block.0.bias", "3.projection.weight", "4.weight", "4.bias"]
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert shapes["0.weight"] == (5, 4) and shapes["0.bias"] == (5,) and shapes["2.weight"] == (1,)  # (out, in)
    assert shapes["3.projection.weight"] == (3, 5) and shapes["1.running_var"] == (5,)
    bn = net[1]
    np.testing.assert_array_equal(bn.weight.data, np.ones(5))
    np.testing.assert_array_equal(bn.bias.data, np.zeros(5))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(5))
    np.testing.assert_array_equal(bn.running_var, np.ones(5))
    np.testing.assert_array_equal(net[2].weight.data, [0.25])
    assert all(p.requires_grad for p in net.parameters()) and len(net.parameters()) == 10


def test_residual_without_width_change_has_no_projection():
    res = nn.Residual(nn.Dense(4, 4, activation="tanh"))
    assert res.projection is None
    assert [n for n, _ in res.named_parameters()] == ["block.weight", "block.bias"]


def test_user_module_registers_attributes():
    class Block(nn.Module):
        def __init__(self, width, scale=2.0):
            super().__init__()
            self.inner = nn.Dense(width, width)
            self.gain = Tensor(np.full(width, scale, dtype=np.float32), requires_grad=True)
            self.cache = Tensor(np.zeros(2))  # no grad: a plain attribute, not a parameter
            self.register_buffer("count", np.zeros(1, dtype=np.float32))

        def forward(self, x):
            return self.inner(x) * self.gain

    b = Block(3, scale=1.5)
    assert [n for n, _ in b.named_parameters()] == ["gain", "inner.weight", "inner.bias"]
    assert [n for n, _ in b.named_buffers()] == ["count"]
    assert b._init_args == ((3,), {"scale": 1.5})
    net = nn.Sequential(b, nn.Dense(3, 1))
    assert "0.inner.weight" in net.state_dict() and "0.count" in net.state_dict()
    assert net(np.ones((2, 3))).shape == (2, 1)


def test_sequential_list_behaviour():
    a, b, c = nn.Dense(3, 4), nn.ReLU(), nn.Dense(4, 2)
    net = nn.Sequential([a, b])
    assert len(net) == 2 and net[0] is a and net[-1] is b and list(net) == [a, b]
    buf = net.flat_buffers()[0]
    head = net[:1]
    assert isinstance(head, nn.Sequential) and len(head) == 1 and head[0] is a
    assert net.flat_buffers()[0] is buf and a.weight.data.base is not None  # slicing does not re-home
    net.append(c)
    assert len(net) == 3 and net[2] is c
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(net.flat_buffers()) == 1 and len(net.flat_buffers()[0]) == 4
    assert net(np.ones((5, 3))).shape == (5, 2)
    with pytest.raises(IndexError):
        net[3]
    with pytest.raises(TypeError, match="layer 1"):
        nn.Sequential(nn.ReLU(), "relu")


def test_train_and_eval_are_recursive():
    net = example_net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_repr_and_describe():
    d = nn.Dense(20, 64)
    assert repr(d) == "Dense(20 -> 64)"
    assert repr(nn.Dense(3, 2, activation="leaky_relu", alpha=0.2, use_bias=False, l2=0.01)) == \
        "Dense(3 -> 2, activation=leaky_relu, alpha=0.2, use_bias=False, l2=0.01)"
    text = repr(nn.Sequential(d, nn.ReLU()))
    assert "(0): Dense(20 -> 64)" in text and "(1): ReLU()" in text


# ---------------------------------------------------------------------- flat buffers
def test_parameters_are_views_of_one_flat_buffer():
    net = example_net()
    flats = net.flat_buffers()
    assert len(flats) == 1
    flat = flats[0]
    params = net.parameters()
    assert flat.params == params
    assert flat.size == sum(p.size for p in params)
    for i, p in enumerate(params):
        assert p._flat is flat
        assert np.shares_memory(p.data, flat.data) and p.grad is None  # no gradient before a backward (torch)
        np.testing.assert_array_equal(p.data.reshape(-1), flat.data[flat.offsets[i]:flat.offsets[i + 1]])
    # an optimizer collecting the parameters finds the same buffer instead of copying
    assert flatten_parameters(net.parameters())[0] is flat
    # buffers are separate arrays
    assert not any(np.shares_memory(b, flat.data) for b in net.buffers())


def test_nesting_rehomes_into_the_outer_buffer():
    inner = nn.Sequential(nn.Dense(3, 4), nn.Tanh())
    inner_w = inner[0].weight.data.copy()
    outer = nn.Sequential(nn.Dense(2, 3), inner)
    flat = outer.flat_buffers()
    assert len(flat) == 1 and len(flat[0]) == 4
    np.testing.assert_array_equal(inner[0].weight.data, inner_w)  # values kept
    assert inner.flat_buffers()[0] is flat[0]  # the inner network reports the outer buffer
    flat[0].data[...] = 0.5
    assert np.all(inner[0].weight.data == 0.5)


def test_backward_fills_the_flat_gradient(rng):
    net = nn.Sequential(nn.Dense(3, 4, activation="tanh"), nn.Dense(4, 2))
    net(rng.standard_normal((6, 3))).sum().backward()
    flat = net.flat_buffers()[0]
    assert np.any(flat.grad != 0)
    for p in net.parameters():
        assert np.shares_memory(p.grad, flat.grad)
    net.zero_grad(set_to_none=False)
    assert np.all(flat.grad == 0)
    net.zero_grad()  # torch's default: set_to_none=True
    assert all(p.grad is None for p in net.parameters())


def test_get_parameters_returns_live_views(rng):
    net = nn.Sequential(nn.Dense(3, 4, activation="relu"), nn.BatchNorm(4), nn.Dense(4, 2))
    params = net.get_parameters()
    assert list(params) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    flat = net.flat_buffers()[0]
    before = {k: v.copy() for k, v in params.items()}
    flat.data += 1.0  # in-place update, as the optimizers do
    for k, v in params.items():
        np.testing.assert_array_equal(v, before[k] + np.float32(1.0))
    # and after a real optimizer step
    opt = gradcore.optim.SGD(net.parameters(), lr=0.1)
    loss = (net(rng.standard_normal((8, 3))) ** 2).mean()
    loss.backward()
    grads = {k: p.grad.copy() for k, p in net.named_parameters()}
    snapshot = {k: v.copy() for k, v in params.items()}
    opt.step()
    for k, v in params.items():
        np.testing.assert_allclose(v, snapshot[k] - np.float32(0.1) * grads[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(v, net.get_parameters()[k])


# ---------------------------------------------------------------------- setting values
def test_set_parameters_copies_in_place():
    net = nn.Sequential(nn.Dense(2, 3), nn.Dense(3, 1))
    views = net.get_parameters()
    w = np.arange(6, dtype=np.float64).reshape(3, 2)  # (out, in)
    net.set_parameters({"0.weight": w, "1.bias": Tensor(np.array([7.0]))})
    np.testing.assert_array_equal(views["0.weight"], w)
    np.testing.assert_array_equal(views["1.bias"], [7.0])
    assert views["0.weight"].dtype == np.float32
    assert np.shares_memory(net[0].weight.data, net.flat_buffers()[0].data)


@pytest.mark.parametrize("bad,match", [
    ({"0.weight": np.zeros((3, 2)), "9.weight": np.zeros(1)}, r"unknown parameter '9\.weight'"),
    ({"0.weight": np.zeros((3, 2)), "1.weight": np.zeros((3, 1))}, r"'1\.weight' expects shape \(1, 3\), got \(3, 1\)"),
    ({"0.weight": np.zeros((3, 2)), "1.running_mean": np.zeros(1)}, "unknown parameter"),
])
def test_set_parameters_refuses_bad_entries_without_changing_anything(bad, match):
    net = nn.Sequential(nn.Dense(2, 3), nn.Dense(3, 1))
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        net.set_parameters(bad)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match="numeric"):
        net.set_parameters({"0.weight": np.full((3, 2), "x")})


def test_state_dict_round_trip(rng):
    gradcore.manual_seed(1)
    a = example_net()
    a(rng.standard_normal((8, 4)))  # moves the running statistics
    gradcore.manual_seed(2)
    b = example_net()
    state = a.state_dict()
    state["0.weight"][...] = 0.0  # a copy: the network is not affected
    assert not np.all(a[0].weight.data == 0)
    state = a.state_dict()
    result = b.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    x = rng.standard_normal((5, 4))
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).data, b(x).data)
    # values are written in place: flat views and buffer identities survive
    assert all(np.shares_memory(p.data, b.flat_buffers()[0].data) for p in b.parameters())


def test_load_state_dict_validates_everything_first():
    net = nn.Sequential(nn.Dense(2, 3), nn.BatchNorm(3))
    before = {k: v.copy() for k, v in net.state_dict().items()}
    good = {k: v + 1 for k, v in before.items()}

    def unchanged():
        for k, v in net.state_dict().items():
            np.testing.assert_array_equal(v, before[k])

    missing = dict(good)
    del missing["1.running_var"]
    with pytest.raises(ValueError, match=r"missing keys \['1\.running_var'\]"):
        net.load_state_dict(missing)
    unchanged()
    extra = dict(good, **{"2.weight": np.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['2\.weight'\]"):
        net.load_state_dict(extra)
    unchanged()
    wrong = dict(good, **{"1.running_mean": np.zeros(4)})
    with pytest.raises(ValueError, match=r"'1\.running_mean': expected shape \(3,\), got \(4,\)"):
        net.load_state_dict(wrong)
    unchanged()
    with pytest.raises(ValueError, match="shape"):
        net.load_state_dict(wrong, strict=False)
    unchanged()
    result = net.load_state_dict(dict(missing, **{"zzz": np.ones(2)}), strict=False)
    assert result.missing_keys == ["1.running_var"] and result.unexpected_keys == ["zzz"]
    np.testing.assert_array_equal(net[1].running_mean, before["1.running_mean"] + 1)
    np.testing.assert_array_equal(net[1].running_var, before["1.running_var"])


# ---------------------------------------------------------------------- forward vs NumPy
def test_sequential_forward_matches_numpy(rng):
    net = nn.Sequential(nn.Dense(6, 8, activation="relu"), nn.BatchNorm(8), nn.Dense(8, 5, activation="tanh"),
                        nn.LayerNorm(5), nn.Dense(5, 3), nn.Softmax(), dtype=np.float64)
    p = {k: v.copy() for k, v in net.state_dict().items()}
    p["1.weight"] = rng.standard_normal(8)
    p["1.bias"] = rng.standard_normal(8)
    p["3.weight"] = rng.standard_normal(5)
    p["3.bias"] = rng.standard_normal(5)
    net.load_state_dict(p)
    x = rng.standard_normal((10, 6))
    h = np.maximum(x @ p["0.weight"].T + p["0.bias"], 0)
    h = np_bn_train(h, p["1.weight"], p["1.bias"])
    h = np.tanh(h @ p["2.weight"].T + p["2.bias"])
    mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-5) * p["3.weight"] + p["3.bias"]
    z = h @ p["4.weight"].T + p["4.bias"]
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    out = net(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.data, ref, rtol=1e-10, atol=1e-12)


ACTIVATION_LAYERS = [
    (nn.Identity(), lambda x: x),
    (nn.ReLU(), lambda x: np.maximum(x, 0)),
    (nn.LeakyReLU(), lambda x: np.where(x > 0, x, 0.01 * x)),
    (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    (nn.ELU(), lambda x: np.where(x > 0, x, np.expm1(x))),
    (nn.ELU(0.5), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
    (nn.SELU(), lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x))),
    (nn.Sigmoid(), sigmoid),
    (nn.Tanh(), np.tanh),
    (nn.SiLU(), lambda x: x * sigmoid(x)),
    (nn.Swish(), lambda x: x * sigmoid(x)),
    (nn.GELU(approximate="tanh"),
     lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    (nn.Softplus(), lambda x: np.logaddexp(0, x)),
    (nn.Softmax(axis=0), lambda x: np.exp(x) / np.exp(x).sum(0, keepdims=True)),
    (nn.LogSoftmax(), lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
]


@pytest.mark.parametrize("layer,ref", ACTIVATION_LAYERS, ids=lambda v: repr(v) if isinstance(v, nn.Module) else "")
def test_activation_layers_match_numpy(rng, layer, ref):
    x = rng.standard_normal((4, 7))
    out = layer(x)
    assert out.dtype == np.float64 and out.shape == x.shape
    np.testing.assert_allclose(out.data, ref(x), rtol=1e-10, atol=1e-12)


def test_gelu_exact_matches_erf(rng):
    from scipy.special import erf

    x = rng.standard_normal((3, 5))
    np.testing.assert_allclose(nn.GELU()(x).data, 0.5 * x * (1 + erf(x / np.sqrt(2))), rtol=1e-10)


@pytest.mark.parametrize("name", nn.ACTIVATION_NAMES)
def test_activation_by_name_and_dense_fusion_agree(rng, name):
    x = rng.standard_normal((5, 4))
    dense = nn.Dense(4, 3, activation=name, dtype=np.float64)
    z = x @ dense.weight.data.T + dense.bias.data
    expected = nn.Activation(name)(z).data
    np.testing.assert_allclose(dense(x).data, expected, rtol=1e-10, atol=1e-12)
    # and the generic layer agrees with the dedicated one
    dedicated = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(), "elu": nn.ELU(), "selu": nn.SELU(),
                 "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "silu": nn.SiLU(), "swish": nn.SiLU(),
                 "gelu": nn.GELU(), "gelu_tanh": nn.GELU("tanh"), "softplus": nn.Softplus(),
                 "softmax": nn.Softmax(), "log_softmax": nn.LogSoftmax(), "identity": nn.Identity(),
                 "linear": nn.Identity()}[name]
    np.testing.assert_allclose(expected, dedicated(z).data, rtol=1e-12, atol=1e-14)


def test_activation_alpha(rng):
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(nn.Activation("leaky_relu", alpha=0.3)(x).data, np.where(x > 0, x, 0.3 * x))
    d = nn.Dense(4, 4, activation="elu", alpha=0.4, dtype=np.float64)
    z = x @ d.weight.data.T + d.bias.data
    np.testing.assert_allclose(d(x).data, np.where(z > 0, z, 0.4 * np.expm1(z)), rtol=1e-10, atol=1e-12)


def test_prelu_layer(rng):
    x = rng.standard_normal((6, 3))
    shared = nn.PReLU(dtype=np.float64)
    np.testing.assert_allclose(shared(x).data, np.where(x > 0, x, 0.25 * x))
    per_unit = nn.PReLU(3, init=0.1, dtype=np.float64)
    per_unit.set_parameters({"weight": np.array([0.1, 0.2, 0.3])})
    np.testing.assert_allclose(per_unit(x).data, np.where(x > 0, x, np.array([0.1, 0.2, 0.3]) * x))
    with pytest.raises(ValueError, match="expected input with 3 features"):
        per_unit(np.ones((2, 4)))


def test_flatten(rng):
    x = rng.standard_normal((2, 3, 4))
    out = nn.Flatten()(x)
    np.testing.assert_array_equal(out.data, x.reshape(2, 12))
    assert nn.Flatten().output_shape((None, 3, 4)) == (None, 12)


# ---------------------------------------------------------------------- gradients
def numeric_grad(loss_fn, p, eps=1e-6):
    """Central differences of loss_fn() with respect to p.data, perturbed in place."""
    out = np.empty(p.shape)
    flat = p.data.reshape(-1)
    for j in range(flat.size):
        orig = flat[j]
        flat[j] = orig + eps
        up = loss_fn()
        flat[j] = orig - eps
        down = loss_fn()
        flat[j] = orig
        out.reshape(-1)[j] = (up - down) / (2 * eps)
    return out


def test_network_gradients_match_finite_differences(rng):
    gradcore.manual_seed(3)
    net = nn.Sequential(
        nn.Dense(4, 6, activation="tanh", l2=0.01), nn.BatchNorm(6), nn.PReLU(6, init=0.3), nn.LayerNorm(6),
        nn.Residual([nn.Dense(6, 3, activation="softplus"), nn.SELU()]), nn.Dense(3, 3, activation="sigmoid"),
        nn.LogSoftmax(), dtype=np.float64)
    x = rng.standard_normal((7, 4))
    weights = rng.standard_normal((7, 3))
    saved = [b.copy() for b in net.buffers()]

    def loss_value():
        for b, s in zip(net.buffers(), saved):
            b[...] = s
        with gradcore.no_grad():
            return float((net(x).data * weights).sum() + net.regularization_loss().item())

    net.zero_grad()
    loss = (net(x) * Tensor(weights)).sum() + net.regularization_loss()
    loss.backward()
    analytic = {name: p.grad.copy() for name, p in net.named_parameters()}
    for name, p in net.named_parameters():
        np.testing.assert_allclose(analytic[name], numeric_grad(loss_value, p), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    # and with respect to the input
    for b, s in zip(net.buffers(), saved):
        b[...] = s
    assert gradcore.gradcheck(lambda t: net(t), [Tensor(x, requires_grad=True)])


def test_eval_mode_gradients_match_finite_differences(rng):
    net = nn.Sequential(nn.Dense(3, 4, activation="gelu"), nn.BatchNorm(4), nn.Dense(4, 2), dtype=np.float64)
    net[1].running_mean[...] = rng.standard_normal(4)
    net[1].running_var[...] = rng.uniform(0.5, 2.0, 4)
    net.eval()
    x = Tensor(rng.standard_normal((5, 3)), requires_grad=True)
    assert gradcore.gradcheck(lambda t: net(t), [x])
    net.zero_grad()
    net(x).sum().backward()
    for name, p in net.named_parameters():
        def f():
            with gradcore.no_grad():
                return float(net(x).data.sum())
        np.testing.assert_allclose(p.grad, numeric_grad(f, p), rtol=1e-5, atol=1e-7, err_msg=name)


def test_regularization_loss(rng):
    a = nn.Dense(3, 4, l2=0.1, dtype=np.float64)
    b = nn.Dense(4, 2, dtype=np.float64)
    c = nn.Dense(2, 2, l2=0.5, dtype=np.float64)
    assert b.regularization_loss() is None
    np.testing.assert_allclose(a.regularization_loss().item(), 0.1 * np.sum(a.weight.data ** 2))
    net = nn.Sequential(a, b, nn.Residual(c))
    expected = 0.1 * np.sum(a.weight.data ** 2) + 0.5 * np.sum(c.weight.data ** 2)
    reg = net.regularization_loss()
    np.testing.assert_allclose(reg.item(), expected, rtol=1e-12)
    reg.backward()
    np.testing.assert_allclose(a.weight.grad, 0.2 * a.weight.data, rtol=1e-12)
    np.testing.assert_allclose(c.weight.grad, 1.0 * c.weight.data, rtol=1e-12)
    assert b.weight.grad is None and a.bias.grad is None  # not in the graph: no gradient (torch)
    assert nn.Sequential(nn.Dense(2, 2)).regularization_loss() is None


# ---------------------------------------------------------------------- BatchNorm / Dropout modes
def test_batchnorm_train_and_eval(rng):
    bn = nn.BatchNorm(3, momentum=0.2, dtype=np.float64)
    bn.set_parameters({"weight": np.array([1.0, 2.0, 0.5]), "bias": np.array([0.0, -1.0, 3.0])})
    x1 = rng.standard_normal((8, 3)) * 2 + 1
    out = bn(x1)
    np.testing.assert_allclose(out.data, np_bn_train(x1, bn.weight.data, bn.bias.data), rtol=1e-10, atol=1e-12)
    rm = 0.2 * x1.mean(0)
    rv = 0.8 * 1.0 + 0.2 * x1.var(0, ddof=1)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    x2 = rng.standard_normal((8, 3))
    bn(x2)
    rm = 0.8 * rm + 0.2 * x2.mean(0)
    rv = 0.8 * rv + 0.2 * x2.var(0, ddof=1)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    bn.eval()
    x3 = rng.standard_normal((4, 3))
    expected = (x3 - rm) / np.sqrt(rv + 1e-5) * bn.weight.data + bn.bias.data
    np.testing.assert_allclose(bn(x3).data, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)  # eval does not update
    single = bn(x3[:1])  # a batch of one is fine in evaluation mode
    np.testing.assert_allclose(single.data, expected[:1], rtol=1e-10)
    bn.train()
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(x3[:1])


def require_kernel(name):
    """Fail (not skip) while a C++ kernel this test needs has not been merged."""
    if not hasattr(gradcore._C, name):
        pytest.fail(f"needs the C++ kernel gradcore._C.{name}, which is not in this build yet")


def test_dropout_train_and_eval():
    require_kernel("dropout_forward")
    x = np.ones((200, 50))
    layer = nn.Dropout(0.3)
    gradcore.manual_seed(5)
    out = layer(x).data
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(out[kept], 1 / 0.7)
    gradcore.manual_seed(5)
    np.testing.assert_array_equal(layer(x).data, out)  # reproducible from the seed
    assert not np.array_equal(layer(x).data, out)  # the next call draws a new mask
    layer.eval()
    np.testing.assert_array_equal(layer(x).data, x)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x).data, x)


# ---------------------------------------------------------------------- residual
def test_residual_identity_and_projection(rng):
    x = rng.standard_normal((5, 4))
    same = nn.Residual(nn.Dense(4, 4, activation="tanh", dtype=np.float64))
    d = same.block
    np.testing.assert_allclose(same(x).data, x + np.tanh(x @ d.weight.data.T + d.bias.data), rtol=1e-12)

    auto = nn.Residual(nn.Sequential(nn.Dense(4, 6, activation="relu"), nn.Dense(6, 2)), dtype=np.float64)
    proj = auto.projection
    assert isinstance(proj, nn.Dense) and (proj.in_features, proj.out_features) == (4, 2) and proj.bias is None
    d0, d1 = auto.block[0], auto.block[1]
    h = np.maximum(x @ d0.weight.data.T + d0.bias.data, 0) @ d1.weight.data.T + d1.bias.data
    np.testing.assert_allclose(auto(x).data, h + x @ proj.weight.data.T, rtol=1e-10, atol=1e-12)

    given = nn.Residual(nn.Dense(4, 3, dtype=np.float64), projection=nn.Dense(4, 3, dtype=np.float64))
    b, p = given.block, given.projection
    np.testing.assert_allclose(given(x).data, x @ b.weight.data.T + b.bias.data + x @ p.weight.data.T + p.bias.data,
                               rtol=1e-12)


def test_residual_with_unknown_widths_reports_mismatch(rng):
    class FirstTwo(nn.Module):
        def forward(self, x):
            return x[:, :2]

    res = nn.Residual(FirstTwo())
    assert res.projection is None
    with pytest.raises(ValueError, match="projection"):
        res(rng.standard_normal((3, 5)))
    with pytest.raises(TypeError, match="projection"):
        nn.Residual(nn.ReLU(), projection="dense")


# ---------------------------------------------------------------------- summary
def test_summary_counts():
    net = nn.Sequential(nn.Dense(20, 64, activation="relu"), nn.BatchNorm(64), nn.Dropout(0.1),
                        nn.Residual(nn.Dense(64, 32, activation="relu")), nn.Dense(32, 3))
    printed = []
    text = net.summary(print_fn=printed.append)
    assert printed == [text]
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:1].isdigit()}
    dense0 = 20 * 64 + 64
    bn = 4 * 64
    res = 64 * 32 + 32 + 64 * 32
    dense4 = 32 * 3 + 3
    assert rows["0"][1:] == ["(Dense)", "(None,", "64)", f"{dense0:,}"]
    assert rows["1"][1:] == ["(BatchNorm)", "(None,", "64)", f"{bn:,}"]
    assert rows["2"][1:] == ["(Dropout)", "(None,", "64)", "0"]
    assert rows["3"][1:] == ["(Residual)", "(None,", "32)", f"{res:,}"]
    assert rows["4"][1:] == ["(Dense)", "(None,", "3)", f"{dense4:,}"]
    total = dense0 + bn + res + dense4
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {total - 2 * 64:,}" in text
    assert f"Non-trainable params: {2 * 64:,}" in text
    assert net.count_params() == total  # Keras' count_params: trainable and not


def test_summary_frozen_parameters_and_input_shape():
    net = nn.Sequential(nn.Flatten(), nn.Dense(12, 2))
    net[1].bias.requires_grad_(False)
    text = net.summary(input_shape=(None, 3, 4), print_fn=None)
    assert "(None, 12)" in text and "(None, 2)" in text
    assert "Trainable params: 24" in text and "Non-trainable params: 2" in text and "Total params: 26" in text
    assert "?" in net.summary(print_fn=None)  # no input width known before Flatten


# ---------------------------------------------------------------------- dtype
def test_astype_float64_converts_everything(rng):
    net = example_net()
    x = rng.standard_normal((6, 4)).astype(np.float32)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    assert net.astype(np.float64) is net
    assert net.dtype == np.float64 and all(m.dtype == np.float64 for m in net.modules())
    for k, v in net.state_dict().items():
        # the counter num_batches_tracked stays int64, as in torch
        assert v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float64), k
        np.testing.assert_array_equal(v, before[k].astype(v.dtype))
    flats = net.flat_buffers()
    assert len(flats) == 1 and flats[0].dtype == np.float64
    assert all(np.shares_memory(p.data, flats[0].data) for p in net.parameters())
    out = net(x)  # float32 input is converted to the network's dtype
    assert out.dtype == np.float64
    out.sum().backward()
    assert all(p.grad.dtype == np.float64 for p in net.parameters())


def test_sequential_dtype_argument_and_input_conversion():
    net = nn.Sequential(nn.Dense(3, 2), nn.BatchNorm(2), dtype=np.float64)
    assert all(v.dtype == np.float64 for k, v in net.state_dict().items() if k != "1.num_batches_tracked")
    net32 = nn.Sequential(nn.Dense(3, 2))
    assert net32(np.ones((2, 3), dtype=np.float64)).dtype == np.float32
    assert net32(np.ones((2, 3), dtype=np.int64)).dtype == np.float32
    with pytest.raises(TypeError, match="mix dtypes"):
        nn.Sequential(nn.Dense(3, 2), nn.Dense(2, 1, dtype=np.float64))
    with pytest.raises(TypeError, match="numeric"):
        net32(np.array([["a", "b", "c"]]))
    with pytest.raises(TypeError, match="float32 or float64"):
        net32.astype(np.int32)


# ---------------------------------------------------------------------- input checks
def test_wrong_input_width_names_the_first_layer():
    net = nn.Sequential(nn.Dense(20, 64), nn.ReLU(), nn.Dense(64, 3))
    with pytest.raises(ValueError) as err:
        net(np.zeros((32, 19)))
    assert str(err.value) == "Dense layer 0 (Dense(20 -> 64)): expected input with 20 features, got shape (32, 19)"
    net2 = nn.Sequential(nn.Tanh(), nn.BatchNorm(8), nn.Dense(8, 2))
    with pytest.raises(ValueError, match=r"^BatchNorm layer 1 \(BatchNorm\(8\)\): expected input with 8 features"):
        net2(np.zeros((4, 7)))
    outer = nn.Sequential(nn.Sequential(nn.Dense(5, 3)), nn.Dense(3, 1))
    with pytest.raises(ValueError, match=r"^Sequential layer 0, Dense layer 0 \(Dense\(5 -> 3\)\)"):
        outer(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"Dense\(5 -> 3\)\): expected input with 5 features, got shape \(\)"):
        nn.Dense(5, 3)(np.float32(1.0))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="in_features"):
        nn.Dense(0, 3)
    with pytest.raises(TypeError, match="out_features"):
        nn.Dense(3, 2.5)
    with pytest.raises(ValueError, match="unknown activation"):
        nn.Dense(3, 2, activation="rectifier")
    with pytest.raises(ValueError, match="l2"):
        nn.Dense(3, 2, l2=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        nn.Dense(3, 2, dtype=np.float16)
    with pytest.raises(ValueError, match=r"Dropout: p must be .*1\.5"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="eps"):
        nn.BatchNorm(3, eps=0.0)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm(3, momentum=2.0)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("erf")
    with pytest.raises(ValueError, match="unknown activation"):
        nn.Activation("prelu")
    with pytest.raises(ValueError, match="LayerNorm"):
        nn.LayerNorm(4)(np.ones((2, 5)))


# ---------------------------------------------------------------------- architecture config
def test_architecture_round_trips_through_json():
    from gradcore import serialize

    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(4, 6, activation="leaky_relu", alpha=0.2, kernel_initializer=nn.init.he_uniform()),
                        nn.BatchNorm(6), nn.Residual([nn.Dense(6, 3), nn.GELU("tanh")]), nn.LayerNorm(3),
                        nn.PReLU(3), nn.Dropout(0.25), nn.Dense(3, 2, l2=0.01), dtype=np.float64)
    config = json.loads(json.dumps(serialize.to_config(net)))
    rebuilt = serialize.from_config(config)
    assert repr(rebuilt) == repr(net)
    assert {k: (v.shape, v.dtype) for k, v in rebuilt.state_dict().items()} == \
        {k: (v.shape, v.dtype) for k, v in net.state_dict().items()}
    rebuilt.load_state_dict(net.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 4))
    net.eval(), rebuilt.eval()
    np.testing.assert_array_equal(rebuilt(x).data, net(x).data)


# ---------------------------------------------------------------------- PyTorch parity
def test_pytorch_parity_dense_batchnorm_relu(rng):
    torch = pytest.importorskip("torch")
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 8), nn.BatchNorm(8), nn.ReLU(), nn.Dense(8, 3, activation="relu"),
                        nn.BatchNorm(3, momentum=0.3), dtype=np.float64)
    p = net.state_dict()
    p["1.weight"] = rng.uniform(0.5, 1.5, 8)
    p["1.bias"] = rng.standard_normal(8)
    net.load_state_dict(p)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3), torch.nn.ReLU(), torch.nn.BatchNorm1d(3, momentum=0.3)).double()
    with torch.no_grad():
        for ours, theirs in (("0", ref[0]), ("3", ref[3])):
            theirs.weight.copy_(torch.from_numpy(p[f"{ours}.weight"]))
            theirs.bias.copy_(torch.from_numpy(p[f"{ours}.bias"]))
        ref[1].weight.copy_(torch.from_numpy(p["1.weight"]))
        ref[1].bias.copy_(torch.from_numpy(p["1.bias"]))

    for step in range(2):
        x = rng.standard_normal((9, 5))
        g = rng.standard_normal((9, 3))
        net.zero_grad()
        ref.zero_grad()
        out = net(x)
        out.backward(g)
        xt = torch.from_numpy(x)
        tout = ref(xt)
        tout.backward(torch.from_numpy(g))
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
        pairs = {"0.weight": ref[0].weight.grad.numpy(), "0.bias": ref[0].bias.grad.numpy(),
                 "1.weight": ref[1].weight.grad.numpy(), "1.bias": ref[1].bias.grad.numpy(),
                 "3.weight": ref[3].weight.grad.numpy(), "3.bias": ref[3].bias.grad.numpy(),
                 "4.weight": ref[5].weight.grad.numpy(), "4.bias": ref[5].bias.grad.numpy()}
        grads = {k: p.grad for k, p in net.named_parameters()}
        for k, v in pairs.items():
            np.testing.assert_allclose(grads[k], v, rtol=1e-9, atol=1e-11, err_msg=k)
        for ours, theirs in (("1", ref[1]), ("4", ref[5])):
            np.testing.assert_allclose(net.state_dict()[f"{ours}.running_mean"], theirs.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(net.state_dict()[f"{ours}.running_var"], theirs.running_var.numpy(), rtol=1e-12)

    net.eval()
    ref.eval()
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(net(x).data, ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
