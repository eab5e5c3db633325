"""PyTorch layout and names (issue 6): Dense / Linear weight (out, in), torch state dicts,
BatchNorm's num_batches_tracked, Dropout(p), dim=, and initializers whose names decide
their semantics (torch: plain normal / uniform; Keras: truncated, RandomNormal 0.05)."""
import json
import math

import numpy as np
import pytest

import gradcore
import gradcore.functional as F
from gradcore import _C, nn
from gradcore.nn import init
from gradcore.tensor import Tensor

# Standard deviation of a standard normal cut at +-2 (scipy.stats.truncnorm(-2, 2).std()).
TRUNC_STD = 0.87962566103423978


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------- weight layout
def test_dense_weight_is_out_in_and_computes_x_wT_plus_b(rng):
    d = nn.Dense(5, 3, activation="tanh", dtype=np.float64)
    assert d.weight.shape == (3, 5) and d.bias.shape == (3,)
    x = rng.standard_normal((7, 5))
    np.testing.assert_allclose(d(x).data, np.tanh(x @ d.weight.data.T + d.bias.data), rtol=1e-12)


def test_linear_kernel_forward_and_every_gradient_match_torch(rng):
    torch = pytest.importorskip("torch")
    for dtype, tol in ((np.float64, dict(rtol=1e-12, atol=1e-12)), (np.float32, dict(rtol=2e-5, atol=2e-5))):
        x = Tensor(rng.standard_normal((9, 6)).astype(dtype), requires_grad=True)
        w = Tensor(rng.standard_normal((4, 6)).astype(dtype), requires_grad=True)  # (out, in)
        b = Tensor(rng.standard_normal(4).astype(dtype), requires_grad=True)
        g = rng.standard_normal((9, 4)).astype(dtype)
        out = F.linear(x, w, b)
        out.backward(g)
        tx, tw, tb = (torch.tensor(t.data, requires_grad=True) for t in (x, w, b))
        tout = torch.nn.functional.linear(tx, tw, tb)
        tout.backward(torch.from_numpy(g))
        np.testing.assert_allclose(out.data, tout.detach().numpy(), **tol)
        for ours, theirs in ((x, tx), (w, tw), (b, tb)):
            np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), **tol)


def test_dense_kernel_takes_out_in_weight_directly():
    X = np.arange(6, dtype=np.float64).reshape(2, 3)
    W = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0], [0.5, 0.0, 0.0]])  # (out=4, in=3)
    Y = np.empty((2, 4))
    _C.dense_forward(X, W, None, Y)
    np.testing.assert_array_equal(Y, X @ W.T)
    dY = np.ones((2, 4))
    dX, dW = np.empty_like(X), np.empty_like(W)
    _C.dense_backward(X, W, dY, dX, dW)
    np.testing.assert_array_equal(dX, dY @ W)
    np.testing.assert_array_equal(dW, dY.T @ X)
    with pytest.raises(ValueError, match=r"X has 3 features but W \(out, in\) has shape \(3, 4\)"):
        _C.dense_forward(X, np.ascontiguousarray(W.T), None, Y)


def test_linear_refuses_an_in_out_weight_naming_the_layout():
    with pytest.raises(ValueError, match=r"linear: .*\(8, 3\).*\(out_features, in_features\).*\(\.\.\., 3\)"):
        F.linear(np.ones((2, 8)), np.ones((8, 3)))


def test_residual_projection_is_out_in(rng):
    res = nn.Residual([nn.Dense(4, 6, activation="relu"), nn.Dense(6, 3)], dtype=np.float64)
    assert res.projection.weight.shape == (3, 4)
    x = rng.standard_normal((5, 4))
    d0, d1 = res.block[0], res.block[1]
    h = np.maximum(x @ d0.weight.data.T + d0.bias.data, 0) @ d1.weight.data.T + d1.bias.data
    np.testing.assert_allclose(res(x).data, h + x @ res.projection.weight.data.T, rtol=1e-12)


def test_dense_initializer_fans_follow_the_out_in_layout():
    """fan_in is in_features whatever the layout: He normal on Dense(300, 500) has std
    sqrt(2 / 300) (not sqrt(2 / 500)), Glorot uniform the limit sqrt(6 / 800)."""
    gradcore.manual_seed(0)
    relu = nn.Dense(300, 500, activation="relu", dtype=np.float64)
    assert relu.weight.shape == (500, 300)
    assert relu.weight.data.std() == pytest.approx(math.sqrt(2.0 / 300), rel=0.01)
    lecun = nn.Dense(300, 500, kernel_initializer="lecun_uniform", dtype=np.float64)
    assert np.abs(lecun.weight.data).max() <= math.sqrt(3.0 / 300)
    assert np.abs(lecun.weight.data).max() > 0.999 * math.sqrt(3.0 / 300)
    fan_out = nn.Dense(300, 500, kernel_initializer=init.variance_scaling(1.0, "fan_out", "uniform"),
                       dtype=np.float64)
    assert np.abs(fan_out.weight.data).max() == pytest.approx(math.sqrt(3.0 / 500), rel=1e-3)
    assert init.compute_fans((500, 300)) == (300, 500)


# ---------------------------------------------------------------------- bias gradient precision
def test_bias_gradient_of_a_huge_float32_batch_keeps_float64_partials():
    """4M rows of ~0.1: a float32 running sum comes out about 4% low."""
    n = 4_000_000
    dY = (0.1 + 1e-3 * np.random.default_rng(0).standard_normal((n, 1))).astype(np.float32)
    want = dY.astype(np.float64).sum(axis=0)
    X, W = np.ones((n, 1), np.float32), np.ones((1, 1), np.float32)
    db = np.empty(1, np.float32)
    _C.dense_backward(X, W, dY, None, None, db)
    np.testing.assert_allclose(db, want, rtol=1e-6)
    db[:] = 1.0  # accumulate mode adds to what is there
    _C.dense_backward(X, W, dY, None, None, db, True)
    np.testing.assert_allclose(db, want + 1.0, rtol=1e-6)
    b = Tensor(np.zeros(1, np.float32), requires_grad=True)
    F.linear(Tensor(X), Tensor(W), b).backward(dY)
    np.testing.assert_allclose(b.grad, want, rtol=1e-6)


# ---------------------------------------------------------------------- torch state dicts
def _torch_mlp(torch, momentum=0.1):
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.BatchNorm1d(64, momentum=momentum),
                               torch.nn.ReLU(), torch.nn.Linear(64, 2))


def _our_mlp(momentum=0.1, dtype=np.float32):
    return nn.Sequential(nn.Linear(20, 64), nn.BatchNorm(64, momentum=momentum), nn.ReLU(), nn.Linear(64, 2),
                         dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_torch_state_dict_gives_identical_outputs_in_train_and_eval(rng, dtype):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = _torch_mlp(torch)
    if dtype == np.float64:
        ref = ref.double()
    with torch.no_grad():  # non-trivial BatchNorm affine parameters and statistics
        ref[1].weight.uniform_(0.5, 1.5)
        ref[1].bias.normal_()
        ref[1].running_mean.normal_()
        ref[1].running_var.uniform_(0.5, 2.0)
        ref[1].num_batches_tracked.fill_(7)
    net = _our_mlp(dtype=dtype)
    theirs = ref.state_dict()
    assert list(net.state_dict()) == list(theirs)  # same names, same order
    for k, v in net.state_dict().items():
        assert v.shape == tuple(theirs[k].shape), k
        assert v.dtype == theirs[k].numpy().dtype, k
    net.load_state_dict(theirs)
    assert int(net[1].num_batches_tracked) == 7
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for _ in range(3):  # training mode: batch statistics, running statistics updated alike
        x = rng.standard_normal((16, 20)).astype(dtype)
        np.testing.assert_allclose(net(x).data, ref(torch.from_numpy(x)).detach().numpy(), **tol)
    state = net.state_dict()
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(state[k], v.numpy(), **tol, err_msg=k)
    assert state["1.num_batches_tracked"].dtype == np.int64 and int(state["1.num_batches_tracked"]) == 10
    net.eval(), ref.eval()
    x = rng.standard_normal((5, 20)).astype(dtype)
    np.testing.assert_allclose(net(x).data, ref(torch.from_numpy(x)).detach().numpy(), **tol)


def test_gradcore_state_dict_loads_into_torch(rng):
    torch = pytest.importorskip("torch")
    net = _our_mlp(dtype=np.float64)
    net(rng.standard_normal((8, 20)))  # one training batch: statistics and counter move
    ref = _torch_mlp(torch).double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    net.eval(), ref.eval()
    x = rng.standard_normal((4, 20))
    np.testing.assert_allclose(net(x).data, ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    assert int(ref[1].num_batches_tracked) == 1


def test_torch_parameters_that_require_grad_are_detached_on_load():
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(3, 2)
    ours = nn.Linear(3, 2)
    ours.load_state_dict(dict(lin.named_parameters()))  # requires_grad=True tensors
    np.testing.assert_array_equal(ours.weight.data, lin.weight.detach().numpy())


def test_batchnorm_momentum_none_is_the_cumulative_average_like_torch(rng):
    torch = pytest.importorskip("torch")
    ours = nn.BatchNorm(3, momentum=None, dtype=np.float64)
    ref = torch.nn.BatchNorm1d(3, momentum=None).double()
    batches = [rng.standard_normal((6, 3)) * (i + 1) + i for i in range(4)]
    for x in batches:
        np.testing.assert_allclose(ours(x).data, ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=1e-12)
    # the cumulative average of the batch statistics, written out
    np.testing.assert_allclose(ours.running_mean, np.mean([x.mean(0) for x in batches], axis=0), rtol=1e-12)
    assert int(ours.num_batches_tracked) == 4


def test_num_batches_tracked_counts_training_batches_only_and_stays_int64(rng):
    net = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm(4))
    bn = net[1]
    assert bn.num_batches_tracked.shape == () and bn.num_batches_tracked.dtype == np.int64
    net(rng.standard_normal((5, 3)))
    net(rng.standard_normal((5, 3)))
    net.eval()
    net(rng.standard_normal((5, 3)))
    assert int(bn.num_batches_tracked) == 2
    net.astype(np.float64)
    assert bn.num_batches_tracked.dtype == np.int64 and int(bn.num_batches_tracked) == 2
    assert bn.running_mean.dtype == np.float64
    assert "Non-trainable params: 8" in net.summary(print_fn=None)  # a counter is not a weight


def test_load_state_dict_integer_buffer_and_old_state_dicts(rng):
    net = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm(4))
    state = net.state_dict()
    bad = dict(state, **{"1.num_batches_tracked": np.array(2.5)})
    before = {k: v.copy() for k, v in state.items()}
    with pytest.raises(ValueError, match=r"'1\.num_batches_tracked': integer buffer got fractional values"):
        net.load_state_dict(dict(bad, **{"0.bias": np.full(4, 9.0)}))
    for k, v in net.state_dict().items():  # nothing written
        np.testing.assert_array_equal(v, before[k])
    # a state dict saved before BatchNorm had the counter still loads (torch accepts it too)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    old["1.running_mean"] = np.full(4, 3.0, np.float32)
    result = net.load_state_dict(old)
    assert result.missing_keys == ["1.num_batches_tracked"]
    np.testing.assert_array_equal(net[1].running_mean, 3.0)


def test_checkpoint_keeps_the_zero_d_counter(tmp_path, rng):
    net = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm(4))
    net(rng.standard_normal((5, 3)))
    path = str(tmp_path / "m.safetensors")
    net.save(path)
    loaded = gradcore.load(path)
    assert loaded[1].num_batches_tracked.shape == () and int(loaded[1].num_batches_tracked) == 1


# ---------------------------------------------------------------------- torch names
def test_linear_has_torchs_signature_and_bias_false(rng):
    lin = nn.Linear(4, 3, False, dtype=np.float64)
    assert isinstance(lin, nn.Dense) and lin.bias is None and lin.weight.shape == (3, 4)
    assert list(lin.state_dict()) == ["weight"]
    x = rng.standard_normal((2, 4))
    np.testing.assert_allclose(lin(x).data, x @ lin.weight.data.T, rtol=1e-12)
    out = lin(Tensor(x))
    out.sum().backward()
    np.testing.assert_allclose(lin.weight.grad, np.ones((2, 3)).T @ x, rtol=1e-12)
    assert nn.Linear(4, 3, bias=True).bias.shape == (3,)
    assert nn.Linear(4, 3).dtype == np.float32


def test_linear_initialises_like_torch():
    """weight and bias uniform on +-1/sqrt(in_features) (torch's reset_parameters)."""
    gradcore.manual_seed(0)
    lin = nn.Linear(400, 300, dtype=np.float64)
    bound = 1.0 / math.sqrt(400)
    w, b = lin.weight.data, lin.bias.data
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.01)
    assert np.abs(b).max() <= bound and b.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.1)


def test_dropout_takes_p_like_torch():
    assert nn.Dropout(0.3).p == 0.3 and nn.Dropout(p=0.3).p == 0.3 and nn.Dropout().p == 0.5
    assert nn.Dropout(rate=0.3).p == 0.3  # Keras' keyword still means the same
    with pytest.raises(TypeError, match="p or rate"):
        nn.Dropout(0.1, rate=0.2)
    layer = nn.Dropout(p=0.25)
    x = np.ones((400, 500))
    y = layer(x).data
    assert np.mean(y == 0) == pytest.approx(0.25, abs=0.005)
    np.testing.assert_allclose(y[y != 0], 1 / 0.75)


def test_dim_keyword_for_softmax_and_log_softmax(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 4, 5))
    tx = torch.from_numpy(x)
    for dim in (0, 1, -1):
        np.testing.assert_allclose(F.softmax(x, dim=dim).data, torch.softmax(tx, dim=dim).numpy(), rtol=1e-12)
        np.testing.assert_allclose(F.log_softmax(x, dim=dim).data, torch.log_softmax(tx, dim=dim).numpy(),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(nn.Softmax(dim=dim)(x).data, torch.nn.Softmax(dim=dim)(tx).numpy(), rtol=1e-12)
        np.testing.assert_allclose(nn.LogSoftmax(dim=dim)(x).data, torch.nn.LogSoftmax(dim=dim)(tx).numpy(),
                                   rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.softmax(x, 1).data, torch.softmax(tx, 1).numpy(), rtol=1e-12)  # positional
    np.testing.assert_allclose(F.softmax(x, axis=0).data, torch.softmax(tx, 0).numpy(), rtol=1e-12)  # NumPy's name
    assert nn.Softmax(dim=0).dim == 0 and nn.Softmax(axis=1).dim == 1


def test_dim_out_of_range_or_given_twice_is_refused():
    x = np.ones((2, 3))
    with pytest.raises(IndexError, match=r"softmax: dim 2 is out of range .*2 dimensions"):
        F.softmax(x, dim=2)
    with pytest.raises(IndexError, match="log_softmax: dim -3"):
        F.log_softmax(x, dim=-3)
    with pytest.raises(TypeError, match="dim or axis"):
        F.softmax(x, dim=0, axis=0)
    with pytest.raises(TypeError, match="dim must be an int"):
        nn.Softmax(dim=1.5)


# ---------------------------------------------------------------------- initializers
SHAPE = (500, 300)  # (out, in): fan_in 300, fan_out 500
FAN_IN, FAN_OUT = 300, 500


def draw(initializer, shape=SHAPE, seed=0):
    return initializer(shape, np.float64, rng=np.random.default_rng(seed))


def assert_plain_normal(w, std):
    assert w.std() == pytest.approx(std, rel=0.01)
    # about 4.55% of a normal lies beyond two standard deviations (0 for a truncated one)
    assert np.mean(np.abs(w) > 2 * std) == pytest.approx(0.0455, abs=0.004)


def assert_truncated(w, std):
    assert w.std() == pytest.approx(std, rel=0.01)
    assert np.abs(w).max() <= 2 * std / TRUNC_STD * (1 + 1e-12)


def assert_uniform(w, bound):
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.01)


@pytest.mark.parametrize("nonlinearity,param", [("relu", None), ("tanh", None), ("sigmoid", None), ("linear", None),
                                                ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None)])
def test_calculate_gain_matches_torch(nonlinearity, param):
    torch = pytest.importorskip("torch")
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(
        torch.nn.init.calculate_gain(nonlinearity, param), rel=1e-12)


def test_kaiming_and_xavier_are_torchs_plain_normal_and_uniform():
    assert_plain_normal(draw(init.get("kaiming_normal")), math.sqrt(2.0) / math.sqrt(FAN_IN))
    assert_plain_normal(draw(init.kaiming_normal(mode="fan_out", nonlinearity="relu")),
                        math.sqrt(2.0) / math.sqrt(FAN_OUT))
    assert_plain_normal(draw(init.kaiming_normal(a=0.5)), math.sqrt(2.0 / 1.25) / math.sqrt(FAN_IN))
    assert_plain_normal(draw(init.KaimingNormal(nonlinearity="tanh")), (5.0 / 3.0) / math.sqrt(FAN_IN))
    assert_uniform(draw(init.get("kaiming_uniform")), math.sqrt(2.0) * math.sqrt(3.0 / FAN_IN))
    assert_uniform(draw(init.kaiming_uniform(a=math.sqrt(5))), 1.0 / math.sqrt(FAN_IN))
    assert_uniform(draw(init.kaiming_uniform(mode="fan_out", nonlinearity="relu")),
                   math.sqrt(2.0) * math.sqrt(3.0 / FAN_OUT))
    assert_plain_normal(draw(init.get("xavier_normal")), math.sqrt(2.0 / (FAN_IN + FAN_OUT)))
    assert_plain_normal(draw(init.xavier_normal(gain=2.0)), 2.0 * math.sqrt(2.0 / (FAN_IN + FAN_OUT)))
    assert_uniform(draw(init.get("xavier_uniform")), math.sqrt(6.0 / (FAN_IN + FAN_OUT)))
    assert_uniform(draw(init.xavier_uniform(gain=5.0 / 3.0)), 5.0 / 3.0 * math.sqrt(6.0 / (FAN_IN + FAN_OUT)))
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_normal(mode="fan_avg")
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform()((5,))


def test_torch_initializers_agree_with_torchs_own_draws():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cases = [(init.kaiming_normal(), torch.nn.init.kaiming_normal_),
             (init.kaiming_uniform(a=1.0, mode="fan_out"), lambda t: torch.nn.init.kaiming_uniform_(t, 1.0, "fan_out")),
             (init.xavier_normal(gain=0.5), lambda t: torch.nn.init.xavier_normal_(t, 0.5)),
             (init.xavier_uniform(), torch.nn.init.xavier_uniform_)]
    for ours, theirs in cases:
        t = theirs(torch.empty(SHAPE, dtype=torch.float64)).numpy()
        w = draw(ours)
        assert w.std() == pytest.approx(t.std(), rel=0.02)
        assert np.abs(w).max() == pytest.approx(np.abs(t).max(), rel=0.15)


def test_in_place_torch_initializers_fill_a_parameter():
    gradcore.manual_seed(3)
    d = nn.Dense(300, 500, dtype=np.float64)
    version = d.weight._version
    assert init.kaiming_normal_(d.weight, nonlinearity="relu") is d.weight
    assert_plain_normal(d.weight.data, math.sqrt(2.0 / 300))
    assert d.weight._version > version
    init.xavier_uniform_(d.weight)
    assert_uniform(d.weight.data, math.sqrt(6.0 / 800))


@pytest.mark.parametrize("name,std", [
    ("he_normal", math.sqrt(2.0 / FAN_IN)), ("glorot_normal", math.sqrt(2.0 / (FAN_IN + FAN_OUT))),
    ("lecun_normal", math.sqrt(1.0 / FAN_IN)),
])
def test_keras_normal_names_are_truncated_with_the_std_correction(name, std):
    w = draw(init.get(name))
    assert_truncated(w, std)
    assert np.abs(w).max() > 0.99 * 2 * std / TRUNC_STD  # cut at two *underlying* standard deviations


def test_keras_random_normal_truncated_normal_and_uniform_defaults():
    assert draw(init.RandomNormal()).std() == pytest.approx(0.05, rel=0.01)
    assert draw(init.get("random_normal")).std() == pytest.approx(0.05, rel=0.01)
    w = draw(init.RandomNormal(mean=1.0, stddev=0.2))
    assert w.mean() == pytest.approx(1.0, abs=0.002) and w.std() == pytest.approx(0.2, rel=0.01)
    t = draw(init.TruncatedNormal())  # Keras: stddev 0.05 before truncation, cut at 2 stddev
    assert np.abs(t).max() <= 0.1 and t.std() == pytest.approx(0.05 * TRUNC_STD, rel=0.01)
    u = draw(init.RandomUniform(minval=-0.2, maxval=0.1))
    assert u.min() >= -0.2 and u.max() < 0.1 and u.mean() == pytest.approx(-0.05, abs=0.002)
    assert init.RandomNormal(stddev=0.3).get_config() == {"name": "random_normal", "mean": 0.0, "stddev": 0.3}
    assert draw(init.get("random")).std() == pytest.approx(0.01, rel=0.01)  # the documents' randn * 0.01


def test_gradcore1_checkpoint_square_weights_and_batchnorm_load_in_the_new_layout(tmp_path, rng):
    """A gradcore-1 file holds Dense weights (in, out) and no num_batches_tracked: a square
    weight must be transposed too (its shape cannot tell), and the counter starts at 0."""
    from gradcore import serialize
    from gradcore.safetensors import save_file

    net = nn.Sequential(nn.Dense(4, 4, activation="tanh"), nn.BatchNorm(4), nn.Dense(4, 2), dtype=np.float64)
    net(rng.standard_normal((8, 4)))  # move the running statistics
    net.eval()
    x = rng.standard_normal((5, 4))
    want = net(x).data
    old = {k: (v.T.copy() if k.endswith("weight") and v.ndim == 2 else v)
           for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    arch = json.loads(json.dumps(serialize.to_config(net)))

    def bare(config):  # gradcore-1 recorded bare class names
        if isinstance(config, dict):
            return {k: (v.rsplit(".", 1)[-1] if k == "class" and isinstance(v, str) else bare(v))
                    for k, v in config.items()}
        return [bare(v) for v in config] if isinstance(config, list) else config

    path = str(tmp_path / "old.safetensors")
    save_file(old, path, {"format": "gradcore-1", "architecture": json.dumps(bare(arch))})
    loaded = gradcore.load(path)
    loaded.eval()
    np.testing.assert_allclose(loaded(x).data, want, rtol=1e-12, atol=1e-12)
    assert int(loaded[1].num_batches_tracked) == 0
    other = nn.Sequential(nn.Dense(4, 4, activation="tanh"), nn.BatchNorm(4), nn.Dense(4, 2), dtype=np.float64)
    other.load_weights(path)
    other.eval()
    np.testing.assert_allclose(other(x).data, want, rtol=1e-12, atol=1e-12)


def test_linear_networks_round_trip_through_a_checkpoint(tmp_path, rng):
    """Linear(bias=False) is sized from torch's ``bias`` argument, not Dense's use_bias."""
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm(4), nn.Linear(4, 2, False), dtype=np.float64)
    net(rng.standard_normal((6, 3)))
    path = str(tmp_path / "lin.safetensors")
    net.save(path)
    loaded = gradcore.load(path)
    assert type(loaded[0]) is nn.Linear and loaded[0].bias is None
    net.eval(), loaded.eval()
    x = rng.standard_normal((5, 3))
    np.testing.assert_array_equal(loaded(x).data, net(x).data)


def test_batchnorm1d_takes_torchs_argument_order_and_state(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    # positional (num_features, eps, momentum): swapping them, as an alias of BatchNorm
    # (features, momentum, eps) would, gives other running statistics and outputs
    tnet = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5, 1e-3, 0.3), torch.nn.ReLU(),
                               torch.nn.Linear(5, 2)).double()
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5, 1e-3, 0.3), nn.ReLU(), nn.Linear(5, 2), dtype=np.float64)
    assert list(net.state_dict()) == list(tnet.state_dict())
    net.load_state_dict(tnet.state_dict())
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal((7, 6)) * 3 + 1
        out = net(x).data
        ref = tnet(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    for key, value in tnet.state_dict().items():
        np.testing.assert_allclose(net.state_dict()[key], value.numpy(), rtol=1e-12, atol=1e-14)
    net.eval(); tnet.eval()
    x = rng.standard_normal((4, 6))
    np.testing.assert_allclose(net(x).data, tnet(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    path = str(tmp_path / "bn1d.safetensors")
    net.save(path)
    same = gradcore.load(path)
    np.testing.assert_array_equal(same.predict(x), net.predict(x))
    assert isinstance(same[1], nn.BatchNorm1d) and same[1].eps == 1e-3 and same[1].momentum == 0.3
    with pytest.raises(ValueError, match="affine"):
        nn.BatchNorm1d(5, affine=False)
