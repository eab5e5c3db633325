"""gradcore.monitor.diagnose / diagnose_history against the documents' numbers.

The oracle for the documents' Part-9 networks is their own math, written here in NumPy:
W (out, in), Z = W A_prev + b, sigmoid / tanh / ReLU hidden layers, a sigmoid output, binary
cross-entropy dA_L = -(Y / A - (1 - Y) / (1 - A)) and dW = dZ A_prev^T / m (the gradient of the
mean loss, which is what gradcore minimises). The documents add 1e-8 to A and 1 - A in dA_L;
that moves their numbers by about 1e-8 / A relative and is left out here, since gradcore's
Keras-named loss only clips probabilities outside [1e-7, 1 - 1e-7] (none are, here).
"""
import json
import math

import numpy as np
import pytest

import gradcore
from gradcore import nn, optim
from gradcore.datasets import make_classification
from gradcore.monitor import Diagnosis, GradientMonitor, diagnose
from gradcore.monitor.diagnosis import DEFAULT_THRESHOLDS, diagnose_history

DIMS = [20, 40, 30, 20, 10, 5, 1]   # the documents' Part-9 networks

# The documents' initialisations, by gradcore.nn.init name:
#   'random': randn * 0.01                  -> "random" (N(0, 0.01), not truncated)
#   'he':     randn * sqrt(2 / fan_in)      -> kaiming_normal(nonlinearity="relu") (torch's, not truncated)
#   'xavier': randn * sqrt(1 / fan_in)      -> variance_scaling(1, "fan_in", "untruncated_normal"),
#             i.e. LeCun normal without truncation (not Glorot's sqrt(2 / (fan_in + fan_out)))
DOC_INITS = {
    "random": lambda: nn.init.get("random"),
    "he": lambda: nn.init.kaiming_normal(nonlinearity="relu"),
    "xavier": lambda: nn.init.variance_scaling(1.0, "fan_in", "untruncated_normal"),
}


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(1000, 20, n_informative=15, n_redundant=5, random_state=42, dtype=np.float64)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, y


def doc_network(activation, init, dtype, dims=DIMS, seed=0):
    gradcore.manual_seed(seed)
    layers = [nn.Dense(dims[i], dims[i + 1], activation=activation if i < len(dims) - 2 else "sigmoid",
                       kernel_initializer=DOC_INITS[init](), dtype=dtype) for i in range(len(dims) - 1)]
    return nn.Sequential(*layers)


def reference_norms(net, activation, X, y):
    """The documents' forward / backward propagation in float64: ||dW_l|| per layer."""
    Ws = [np.asarray(layer.weight.data, np.float64) for layer in net]
    bs = [np.asarray(layer.bias.data, np.float64)[:, None] for layer in net]
    act = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(0, z)}
    deriv = {"sigmoid": lambda z, a: a * (1 - a), "tanh": lambda z, a: 1 - a ** 2, "relu": lambda z, a: (z > 0) * 1.0}
    A, Y, m = X.T.astype(np.float64), y.reshape(1, -1).astype(np.float64), X.shape[0]
    cache = [(None, A)]
    L = len(Ws)
    for l in range(L):
        kind = "sigmoid" if l == L - 1 else activation
        Z = Ws[l] @ A + bs[l]
        A = act[kind](Z)
        cache.append((Z, A))
    dA = -(Y / A - (1 - Y) / (1 - A))
    norms = [0.0] * L
    for l in reversed(range(L)):
        kind = "sigmoid" if l == L - 1 else activation
        Z, A = cache[l + 1]
        dZ = dA * deriv[kind](Z, A)
        norms[l] = float(np.linalg.norm(dZ @ cache[l][1].T / m))
        dA = Ws[l].T @ dZ
    return norms


def classify(norms, vanishing=0.01, exploding=100.0):
    """The documents' diagnose_gradient_health rule."""
    out = {"healthy": [], "vanishing": [], "exploding": []}
    for i, n in enumerate(norms):
        out["vanishing" if n < vanishing else "exploding" if n > exploding else "healthy"].append(str(i))
    return out


RTOL = {np.float64: 1e-9, np.float32: 1e-5}   # float32: the network computes in float32, the reference in float64


# ---------------------------------------------------------------------- the documents' three networks
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("activation,init", [("sigmoid", "random"), ("relu", "he"), ("tanh", "xavier")])
def test_part9_networks_classified_as_the_reference(data, activation, init, dtype):
    X, y = data
    net = doc_network(activation, init, dtype)
    d = diagnose(net, X[:100], y[:100], loss="binary_crossentropy")
    ref = reference_norms(net, activation, X[:100], y[:100])
    expected = classify(ref)
    np.testing.assert_allclose([d.gradient_norms[str(i)] for i in range(6)], ref, rtol=RTOL[dtype])
    assert d.vanishing_layers == expected["vanishing"]
    assert d.healthy_layers == expected["healthy"]
    assert d.exploding_layers == expected["exploding"]
    np.testing.assert_allclose(d.flow_ratio, ref[0] / ref[-1], rtol=RTOL[dtype])
    if activation == "sigmoid":   # what the documents show: the first layers vanish, the output layer does not
        assert d.vanishing_layers == ["0", "1", "2", "3", "4"] and d.healthy_layers == ["5"]
        assert d.flow_ratio < 1e-3 and "vanishing_flow" in {f.kind for f in d.findings}
        assert not d.healthy
    else:
        assert d.healthy_layers == [str(i) for i in range(6)] and d.healthy
        assert [r.kind for r in d.recommendations] == ["none"]


def test_sigmoid_network_recommendations_name_the_layers(data):
    X, y = data
    net = doc_network("sigmoid", "random", np.float64)
    d = diagnose(net, X[:100], y[:100], loss="binary_crossentropy")
    by_kind = {r.kind: r for r in d.recommendations}
    act = by_kind["activation"]
    assert act.layers == ["0", "1", "2", "3", "4"]          # not the sigmoid output layer
    assert act.params["activation"] == "relu" and act.params["kernel_initializer"] == "he_normal"
    for name in act.layers:                                 # He std sqrt(2 / fan_in) per layer, and the measured std
        fan_in = net[int(name)].in_features
        assert act.params["target_std"][name] == pytest.approx(math.sqrt(2.0 / fan_in))
        assert act.params["weight_std"][name] == pytest.approx(float(np.std(net[int(name)].weight.data)))
    bn = by_kind["batchnorm"]
    assert bn.layers == ["0", "1", "2", "3", "4"]
    assert bn.params["features"] == {str(i): DIMS[i + 1] for i in range(5)}
    assert "residual" not in by_kind     # no two equal widths in [20, 40, 30, 20, 10, 5, 1]
    assert "clipping" not in by_kind
    rows = {line.split()[0]: line.split() for line in str(d).splitlines()[4:10]}   # the per-layer table
    for name in ("0", "1", "2", "3", "4"):
        assert rows[name] == [name, "Dense", "sigmoid", f"{d.gradient_norms[name]:.3e}",
                              f"{d.layer_stats[name]['dz_norm']:.3e}", "vanishing"]
    assert rows["5"][-1] == "healthy" and f"flow ratio (first / last): {d.flow_ratio:.3e}" in str(d)


def test_tanh_with_a_bad_init_keeps_tanh_and_fixes_the_init(data):
    """tanh + N(0, 0.01): the initialisation is 18x too small for Glorot; keep tanh."""
    X, y = data
    net = doc_network("tanh", "random", np.float64)
    d = diagnose(net, X[:100], y[:100], loss="binary_crossentropy")
    expected = classify(reference_norms(net, "tanh", X[:100], y[:100]))
    assert d.vanishing_layers == expected["vanishing"] and d.vanishing_layers[:3] == ["0", "1", "2"]
    kinds = [r.kind for r in d.recommendations]
    assert "activation" not in kinds
    rec = next(r for r in d.recommendations if r.kind == "initializer")
    hidden_vanishing = [n for n in d.vanishing_layers if n != "5"]
    assert rec.layers == hidden_vanishing and rec.params["kernel_initializer"] == "glorot_normal"
    for name in rec.layers:
        w = net[int(name)].weight
        glorot = math.sqrt(2.0 / (w.shape[0] + w.shape[1]))
        assert rec.params["target_std"][name] == pytest.approx(glorot)
        assert rec.params["ratio"][name] == pytest.approx(float(np.std(w.data)) / glorot)


def test_residual_recommended_where_widths_allow(data):
    X, y = data
    net = doc_network("sigmoid", "random", np.float64, dims=[20, 32, 32, 32, 32, 1])
    d = diagnose(net, X[:64], y[:64], loss="binary_crossentropy")
    rec = next(r for r in d.recommendations if r.kind == "residual")
    assert rec.layers == ["1", "2", "3"] and rec.params["width"] == {"1": 32, "2": 32, "3": 32}


def test_activation_layers_normalisation_and_dropout_between_dense_layers(data):
    """Separate activation layers, BatchNorm and Dropout: each Dense layer is named as in
    named_modules, gets the activation that follows it, and BatchNorm is proposed only
    where there is none yet. Works inside no_grad."""
    X, y = data
    gradcore.manual_seed(0)
    r = nn.init.get("random")
    net = nn.Sequential(nn.Dense(20, 16, kernel_initializer=r), nn.BatchNorm(16), nn.Sigmoid(), nn.Dropout(0.1),
                        nn.Dense(16, 16, kernel_initializer=r), nn.Sigmoid(),
                        nn.Dense(16, 16, kernel_initializer=r), nn.Activation("sigmoid"),
                        nn.Dense(16, 16, kernel_initializer=r), nn.Sigmoid(),
                        nn.Dense(16, 1, activation="sigmoid", kernel_initializer=r), dtype=np.float64)
    with gradcore.no_grad():
        d = diagnose(net, X[:100], y[:100], loss="binary_crossentropy")
    assert list(d.gradient_norms) == ["0", "4", "6", "8", "10"]
    assert all(d.layer_info[n]["activation"] == "sigmoid" for n in d.gradient_norms)
    assert d.vanishing_layers == [n for n, v in d.gradient_norms.items() if v < 0.01] == ["0", "4", "6", "8"]
    by_kind = {r.kind: r for r in d.recommendations}
    assert by_kind["activation"].layers == ["0", "4", "6", "8"]
    assert by_kind["batchnorm"].layers == ["4", "6", "8"]      # '0' already has one
    assert by_kind["residual"].layers == ["4", "6", "8"]       # the 16 -> 16 layers


def test_large_initial_weights_saturate_tanh(data):
    """The documents' large-weight network (randn * 10, tanh): the pre-activations sit in
    tanh's flat tails (|z| > 5, recomputed here) and the initializer, not the activation,
    is what to change."""
    X, y = data
    dims = [20, 50, 40, 30, 20, 10, 1]
    gradcore.manual_seed(0)
    net = nn.Sequential(*[nn.Dense(dims[i], dims[i + 1], activation="tanh" if i < 5 else "sigmoid",
                                   kernel_initializer=nn.init.random_normal(stddev=10.0)) for i in range(6)],
                        dtype=np.float32)
    d = diagnose(net, X[:100], y[:100], loss="binary_crossentropy")
    Z = X[:100].astype(np.float32) @ net[0].weight.data.T + net[0].bias.data
    sat = {f.layer: f for f in d.findings if f.kind == "saturated_units"}
    assert sat["0"].evidence["saturated_frac"] == pytest.approx(np.mean(np.abs(Z) > 5.0))
    assert set(sat) == {"0", "1", "2", "3", "4", "5"}
    rec = next(r for r in d.recommendations if r.kind == "initializer")
    assert rec.layers == ["0", "1", "2", "3", "4", "5"] and rec.params["kernel_initializer"] == "glorot_normal"
    assert rec.params["ratio"]["0"] == pytest.approx(float(np.std(net[0].weight.data, dtype=np.float64))
                                                     / math.sqrt(2 / 70))
    assert "activation" not in {r.kind for r in d.recommendations}


def test_residual_blocks_and_a_frozen_layer(data):
    """Layers inside Residual blocks are named as in named_modules (the projection too); a
    frozen layer has no gradient and is not classified; the norms equal each weight's
    own gradient from a plain backward."""
    X, y = data
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(20, 16, activation="tanh"),
                        nn.Residual([nn.Dense(16, 16, activation="relu"), nn.LayerNorm(16), nn.Dense(16, 16)]),
                        nn.Residual([nn.Dense(16, 12, activation="relu")]), nn.Dense(12, 1, activation="sigmoid"),
                        dtype=np.float64)
    net[0].requires_grad_(False)
    d = diagnose(net, X[:64], y[:64], loss="binary_crossentropy")
    names = ["1.block.0", "1.block.2", "2.block.0", "2.projection", "3"]
    assert list(d.gradient_norms) == names
    assert d.layer_info["1.block.0"]["activation"] == "relu" and d.layer_info["1.block.2"]["activation"] is None
    net.zero_grad()
    from gradcore.losses import BinaryCrossentropy

    BinaryCrossentropy()(net(X[:64]), y[:64]).backward()
    modules = dict(net.named_modules())
    np.testing.assert_allclose([d.gradient_norms[n] for n in names],
                               [np.linalg.norm(modules[n].weight.grad) for n in names], rtol=1e-12)
    assert d.flow_ratio == pytest.approx(d.gradient_norms["1.block.0"] / d.gradient_norms["3"])


def test_exploding_network_matches_numpy_and_falls_back_to_the_threshold(data):
    """Large weights on a ReLU network with a mean-squared-error loss: every norm is far
    above 100, so the clipping threshold falls back to the exploding threshold itself."""
    X, y = data
    gradcore.manual_seed(3)
    big = nn.init.random_normal(stddev=2.0)
    net = nn.Sequential(nn.Dense(20, 64, activation="relu", kernel_initializer=big),
                        nn.Dense(64, 64, activation="relu", kernel_initializer=big),
                        nn.Dense(64, 1, kernel_initializer=big), dtype=np.float64)
    net.compile(optim.SGD(net.parameters(), lr=0.1), loss="mse")
    d = diagnose(net, X[:128], y[:128])      # the compiled loss
    # oracle: the mean squared error's dW, in NumPy (biases are zero)
    W = [np.asarray(layer.weight.data) for layer in net]
    A0 = X[:128]
    Z1 = A0 @ W[0].T
    Z2 = np.maximum(Z1, 0) @ W[1].T
    out = np.maximum(Z2, 0) @ W[2].T
    dout = 2 * (out - y[:128, None]) / 128
    dZ2 = (dout @ W[2]) * (Z2 > 0)
    dZ1 = (dZ2 @ W[1]) * (Z1 > 0)
    ref = [np.linalg.norm(g) for g in (dZ1.T @ A0, dZ2.T @ np.maximum(Z1, 0), dout.T @ np.maximum(Z2, 0))]
    np.testing.assert_allclose(list(d.gradient_norms.values()), ref, rtol=RTOL[np.float64])
    assert d.exploding_layers == ["0", "1", "2"] == classify(ref)["exploding"]
    clip = next(r for r in d.recommendations if r.kind == "clipping")
    assert min(ref) > 100 and clip.params["percentile"] is None and clip.params["clip_norm"] == 100.0
    assert clip.layers == ["0", "1", "2"] and "clip_norm=100" in clip.message and "clipnorm=100" in clip.message
    lr = next(r for r in d.recommendations if r.kind == "learning_rate")
    assert lr.params["lr"] == pytest.approx(0.1) and lr.params["suggested_lr"] == pytest.approx(0.01)


def test_clipping_threshold_is_the_stated_percentile_of_the_observed_norms(data):
    """12 He-initialised ReLU layers, the exploding threshold set between the two largest
    norms: the 90th percentile of the 12 per-layer norms is below it and is the threshold."""
    X, y = data
    dims = [20] + [24] * 11 + [1]
    net = doc_network("relu", "he", np.float64, dims=dims, seed=5)
    base = diagnose(net, X[:100], y[:100], loss="binary_crossentropy")
    norms = np.array(list(base.gradient_norms.values()))
    np.testing.assert_allclose(norms, reference_norms(net, "relu", X[:100], y[:100]), rtol=RTOL[np.float64])
    top2 = np.sort(norms)[-2:]
    d = diagnose(net, X[:100], y[:100], loss="binary_crossentropy", exploding=float(top2.mean()),
                 vanishing=float(norms.min()) / 2)
    assert d.exploding_layers == [str(int(np.argmax(norms)))]
    clip = next(r for r in d.recommendations if r.kind == "clipping")
    assert clip.params["percentile"] == 90.0 and clip.params["observed"] == 12
    assert clip.params["clip_norm"] == pytest.approx(np.percentile(norms, 90))
    assert not d.vanishing_layers and "residual" not in {r.kind for r in d.recommendations}   # nothing fades


def test_clip_threshold_rule():
    from gradcore.monitor.diagnosis import clip_threshold

    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
    assert clip_threshold(v, 100.0, 90.0)[:2] == (np.percentile(v, 90), 90.0)
    v2 = np.append(v, [1e6] * 3)                                # explosions beyond the 90th percentile
    assert clip_threshold(v2, 100.0, 90.0)[:2] == (np.percentile(v2, 50), 50.0)
    assert clip_threshold([np.nan, 1e5, np.inf], 100.0, 90.0) == (100.0, None)
    assert clip_threshold([], 7.0, 90.0) == (7.0, None)
    assert clip_threshold([0.0, 0.0, 3.0, 0.0], 7.0, 90.0) == (3.0, 90.0)   # zero norms are steps without gradient


@pytest.mark.parametrize("initializer", [
    nn.init.get("random"), nn.init.random_normal(stddev=0.3), nn.init.truncated_normal(stddev=0.3),
    nn.init.random_uniform(-0.2, 0.6), nn.init.he_normal(), nn.init.glorot_uniform(), nn.init.lecun_normal(),
    nn.init.kaiming_normal(nonlinearity="relu"), nn.init.xavier_normal(), nn.init.kaiming_uniform(a=math.sqrt(5.0)),
    nn.init.variance_scaling(1.0, "fan_in", "untruncated_normal"), nn.init.zeros()])
def test_initializer_std_matches_its_draws(initializer):
    from gradcore.monitor.diagnosis import initializer_std

    shape = (300, 400)
    draws = initializer(shape, np.float64, rng=np.random.default_rng(0))
    assert initializer_std(initializer, shape) == pytest.approx(draws.std(), rel=0.01, abs=1e-12)


def test_bad_initializer_is_told_from_weights_that_drifted(data):
    """Weights 20x the He std: from a bad initializer -> an initializer recommendation;
    from a right (He) initializer, scaled afterwards -> no initializer recommendation."""
    X, y = data
    big = [nn.Dense(20, 32, activation="relu", kernel_initializer=nn.init.random_normal(stddev=5.0)),
           nn.Dense(32, 32, activation="relu", kernel_initializer=nn.init.random_normal(stddev=5.0)),
           nn.Dense(32, 1, activation="sigmoid")]
    gradcore.manual_seed(0)
    bad = nn.Sequential(*big, dtype=np.float64)
    gradcore.manual_seed(0)
    drifted = nn.Sequential(nn.Dense(20, 32, activation="relu"), nn.Dense(32, 32, activation="relu"),
                            nn.Dense(32, 1, activation="sigmoid"), dtype=np.float64)
    drifted.set_parameters(bad.get_parameters())
    # a low exploding threshold makes these ordinary norms "explosions", which asks for an init check
    d_bad = diagnose(bad, X[:64], y[:64], loss="binary_crossentropy", exploding=0.5)
    d_drift = diagnose(drifted, X[:64], y[:64], loss="binary_crossentropy", exploding=0.5)
    assert d_bad.gradient_norms == d_drift.gradient_norms            # same weights, same gradients
    assert d_bad.exploding_layers[:2] == ["0", "1"]
    rec = next(r for r in d_bad.recommendations if r.kind == "initializer")
    assert rec.layers == ["0", "1"] and rec.params["kernel_initializer"] == "he_normal"
    assert rec.params["target_std"] == {"0": pytest.approx(math.sqrt(2 / 20)), "1": pytest.approx(math.sqrt(2 / 32))}
    # drifted from a right init: no other initializer is proposed; the weights are reported as far too large
    # (std / He std measured here) and the advice is to re-initialise them as they are configured
    drift = [r for r in d_drift.recommendations if r.kind == "initializer"]
    assert len(drift) == 1 and "far too large" in drift[0].message and "kernel_initializer" not in drift[0].params
    he = {"0": math.sqrt(2 / 20), "1": math.sqrt(2 / 32)}
    for name in ("0", "1"):
        ratio = drifted[int(name)].weight.data.std() / he[name]
        assert drift[0].params["ratio"][name] == pytest.approx(ratio)


# ---------------------------------------------------------------------- the network is left as it was
def _hooks(m):
    """A module's registered hooks: {kind: {id: fn}} (no hooks object = none registered)."""
    h = m._module_hooks
    kinds = ("pre", "forward", "backward", "backward_pre")
    return {k: ({} if h is None else dict(getattr(h, k))) for k in kinds}


def _state(net):
    params = [(p, p.data.copy(), p.grad, None if p.grad is None else p.grad.copy()) for _, p in net.named_parameters()]
    flat = [(f, f.grad.copy()) for f in net.flat_buffers()]
    buffers = [(name, b, b.copy()) for name, b in net.named_buffers()]
    modes = [(m, m.training) for m in net.modules()]
    hooks = [(m, _hooks(m), set(m.__dict__)) for m in net.modules()]   # hooks, and attributes such as taps
    return params, flat, buffers, modes, hooks, gradcore.random.generator().bit_generator.state


def _assert_same(net, before):
    params, flat, buffers, modes, hooks, rng = before
    for (p, data, grad, values) in params:
        np.testing.assert_array_equal(p.data, data)
        assert p.grad is grad                                  # the same array object (or None)
        if grad is not None:
            np.testing.assert_array_equal(p.grad, values)
    for f, g in flat:
        np.testing.assert_array_equal(f.grad, g)
    now = dict(net.named_buffers())
    for name, b, values in buffers:
        assert now[name] is b
        np.testing.assert_array_equal(b, values)
    for m, mode in modes:
        assert m.training is mode
    for m, h, attributes in hooks:
        assert _hooks(m) == h and set(m.__dict__) == attributes
    assert gradcore.random.generator().bit_generator.state == rng


def _assert_equal_nested(a, b):
    """Equal dicts / lists / arrays / scalars, arrays compared element by element."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal_nested(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_equal_nested(u, v)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_network_left_exactly_as_it_was(data, dtype):
    X, y = data
    gradcore.manual_seed(1)
    net = nn.Sequential(nn.Dense(20, 16, dtype=dtype), nn.BatchNorm(16, dtype=dtype), nn.ReLU(), nn.Dropout(0.2),
                        nn.Dense(16, 8, activation="tanh", dtype=dtype), nn.Dense(8, 1, activation="sigmoid",
                                                                                  dtype=dtype))
    net.compile(optim.Adam(net.parameters(), lr=1e-3), loss="binary_crossentropy")
    net.fit(X[:64], y[:64], epochs=1, batch_size=32, verbose=0)   # BatchNorm statistics and a counter that moved
    out = net(X[:32])                                              # gradients that exist, with values ...
    net.loss(out, y[:32]).backward()
    net[5].bias.grad = None                                        # ... and one that does not
    net.eval()
    net[1].train()                                                 # mixed modes
    before = _state(net)
    opt_state = net.optimizer.state_dict()
    d1 = diagnose(net, X, y, sample=100, seed=2)
    _assert_same(net, before)
    d2 = diagnose(net, gradcore.Tensor(X), gradcore.Tensor(y.astype(np.float64)), sample=100, seed=2)
    _assert_same(net, before)
    _assert_equal_nested(net.optimizer.state_dict(), opt_state)
    assert d1.gradient_norms == d2.gradient_norms                  # the old gradients took no part
    assert d1.samples == 100


def test_network_restored_when_the_loss_fails(data):
    X, y = data
    net = doc_network("relu", "he", np.float64)
    net.eval()
    before = _state(net)

    def broken(prediction, target):
        raise RuntimeError("broken loss")

    with pytest.raises(RuntimeError, match="broken loss"):
        diagnose(net, X[:20], y[:20], loss=broken)
    _assert_same(net, before)


def test_sample_rows_are_the_documented_draw(data):
    X, y = data
    net = doc_network("tanh", "xavier", np.float64)
    d = diagnose(net, X, y, loss="binary_crossentropy", sample=50, seed=7)
    rows = np.sort(np.random.default_rng(7).choice(len(X), 50, replace=False))
    np.testing.assert_allclose(list(d.gradient_norms.values()), reference_norms(net, "tanh", X[rows], y[rows]),
                               rtol=RTOL[np.float64])


# ---------------------------------------------------------------------- results
def test_to_dict_is_json_safe_and_round_trips(data):
    X, y = data
    gradcore.manual_seed(0)
    # every unit of the hidden layer is dead: both layers' dW are 0, so flow_ratio = 0 / 0 = nan (undefined)
    net = nn.Sequential(nn.Dense(20, 8, activation="relu"), nn.Dense(8, 1, activation="sigmoid"), dtype=np.float64)
    net[0].bias.data[...] = -1e3
    d = diagnose(net, X[:50], y[:50], loss="binary_crossentropy")
    assert math.isnan(d.flow_ratio) and d.gradient_norms == {"0": 0.0, "1": 0.0}
    assert "dead_units" in {f.kind for f in d.findings}
    out = d.to_dict()
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back == out
    assert back["flow_ratio"] == "nan" and math.isnan(float(back["flow_ratio"]))
    assert back["gradient_norms"] == {"0": 0.0, "1": 0.0} and isinstance(back["gradient_norms"]["0"], float)
    assert back["healthy"] is False and back["vanishing_layers"] == ["0", "1"]
    for f in back["findings"]:
        assert set(f) == {"kind", "layer", "step", "severity", "evidence", "message"}
    for r in back["recommendations"]:
        assert set(r) == {"kind", "layers", "message", "params"}
    assert isinstance(d, Diagnosis) and "flow ratio (first / last): nan" in str(d)


def test_errors_name_the_argument(data):
    X, y = data
    net = doc_network("relu", "he", np.float64)
    with pytest.raises(ValueError, match="loss="):
        diagnose(net, X, y)                                  # not compiled, no loss given
    with pytest.raises(ValueError, match="X has 10 rows but y has 9"):
        diagnose(net, X[:10], y[:9], loss="mse")
    with pytest.raises(ValueError, match="vanishing"):
        diagnose(net, X, y, loss="mse", vanishing=200.0)
    with pytest.raises(TypeError, match="unknown threshold"):
        diagnose(net, X, y, loss="mse", vanishin=0.1)
    with pytest.raises(TypeError, match="net must be"):
        diagnose(lambda x: x, X, y, loss="mse")
    with pytest.raises(ValueError, match="sample"):
        diagnose(net, X, y, loss="mse", sample=0)


# ---------------------------------------------------------------------- over a monitor's history
def _fit_with_monitor(data, lr, epochs, activation="relu", init="he", dims=(20, 30, 20, 10, 1), opt=optim.SGD,
                      batch_size=None, dtype=np.float64):
    X, y = data
    X, y = X[:200], y[:200]
    net = doc_network(activation, init, dtype, dims=list(dims))
    net.compile(opt(net.parameters(), lr=lr), loss="binary_crossentropy")
    mon = GradientMonitor(net)
    net.fit(X, y, epochs=epochs, batch_size=batch_size or len(X), shuffle=False, verbose=0, callbacks=[mon])
    return net, mon


def test_history_zero_learning_rate_is_a_flat_loss(data):
    net, mon = _fit_with_monitor(data, lr=0.0, epochs=12)
    d = diagnose_history(mon)
    flat = next(f for f in d.findings if f.kind == "flat_loss")
    _, loss = mon.history.series("", "loss")
    tail = loss[len(loss) // 2:]
    assert flat.evidence["relative_range"] == pytest.approx((tail.max() - tail.min()) / np.abs(tail).mean(), abs=1e-12)
    rec = next(r for r in d.recommendations if r.kind == "learning_rate")
    assert rec.params["lr"] == 0.0 and rec.params["suggested_lr"] > 0
    assert d.source == "history" and d.steps == 12 and not d.healthy


def test_history_learning_rate_far_too_high(data):
    """SGD at lr 50 throws the network where every gradient is zero: the loss jumps and
    stays; the diagnosis calls it diverging and lowers the rate 10x."""
    net, mon = _fit_with_monitor(data, lr=50.0, epochs=12)
    d = diagnose_history(mon)
    f = next(f for f in d.findings if f.kind == "diverging_loss")
    _, loss = mon.history.series("", "loss")
    assert f.evidence["first"] == loss[0] and f.evidence["late_mean"] == pytest.approx(loss[-4:].mean())
    assert f.evidence["late_mean"] > 2 * loss[0]
    assert "flat_loss" not in {g.kind for g in d.findings}   # flat, but because it diverged
    rec = next(r for r in d.recommendations if r.kind == "learning_rate")
    assert rec.params["lr"] == 50.0 and rec.params["suggested_lr"] == pytest.approx(5.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_history_norms_are_medians_and_persistent_vanishing(data, dtype):
    net, mon = _fit_with_monitor(data, lr=0.1, epochs=8, activation="sigmoid", init="random",
                                 dims=(20, 30, 20, 10, 1), dtype=dtype)
    d = mon.diagnose()
    for name, value in d.gradient_norms.items():
        _, series = mon.history.series(name, "weight.grad_norm")
        assert value == pytest.approx(float(np.median(series)))
    expected = [n for n, v in d.gradient_norms.items() if v < 0.01]
    assert d.vanishing_layers == expected and d.vanishing_layers[:2] == ["0", "1"]
    assert next(f for f in d.findings if f.kind == "vanishing" and f.layer == "0").evidence[
        "fraction_of_steps_below"] == 1.0


def test_history_clipping_threshold_from_global_norms(data):
    """The global-norm clipping threshold is the stated percentile of the recorded pre-clip
    global norms: the 90th when it is below the exploding threshold, else the median. (Low
    exploding thresholds make the early, larger norms of this run "explosions".)"""
    net, mon = _fit_with_monitor(data, lr=0.5, epochs=10, activation="relu", init="he", batch_size=50,
                                 dims=(20, 64, 64, 1))
    _, norms = mon.history.series("", "grad_norm")
    assert len(norms) == 40 and np.all(np.isfinite(norms))
    p90, median = np.percentile(norms, 90), np.median(norms)
    for exploding, q, expected in ((1.05 * p90, 90.0, p90), (0.95 * p90, 50.0, median)):
        d = diagnose_history(mon, exploding=exploding)
        assert d.exploding_layers                    # some layer's norm went above it at some step
        clip = next(r for r in d.recommendations if r.kind == "clipping")
        assert clip.params["percentile"] == q and clip.params["global_clip_norm"] == pytest.approx(expected)
        assert clip.params["scope"] == "global" and clip.params["observed"] == 40
        assert f"global_clip_norm={expected:.3g}" in clip.message and "clip_grad_norm_" in clip.message


# ---------------------------------------------------------------------- constructed histories
def _constructed(net, rows, events=()):
    """A monitor of ``net`` whose history holds ``rows``: {(layer, metric): one value per step}."""
    from types import SimpleNamespace

    from gradcore.monitor import MonitorHistory

    with GradientMonitor(net) as mon:
        infos = mon.layers
    h = MonitorHistory([info.name for info in infos])
    for (layer, metric), values in rows.items():
        for step, v in enumerate(values):
            h.append(step, h.layer_code(layer), h.metric_code(metric), [v])
    return SimpleNamespace(net=net, layers=infos, history=h, events=list(events), optimizer=None)


def _small_relu_net():
    return doc_network("relu", "he", np.float64, dims=[20, 16, 16, 1])


def _healthy_norms(steps):
    return {(name, "weight.grad_norm"): [0.5] * steps for name in ("0", "1", "2")}


def test_constructed_oscillating_loss():
    loss = 1.0 + 0.3 * (-1.0) ** np.arange(12)
    rows = {("", "loss"): loss, ("", "lr"): [0.1] * 12, **_healthy_norms(12)}
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    f = next(f for f in d.findings if f.kind == "oscillating_loss")
    diffs = np.diff(loss)
    assert f.evidence["sign_changes"] == np.count_nonzero(np.sign(diffs[1:]) != np.sign(diffs[:-1])) == 10
    assert f.evidence["sign_change_frac"] == 1.0
    rec = next(r for r in d.recommendations if r.kind == "learning_rate")
    assert rec.params["lr"] == 0.1 and rec.params["suggested_lr"] == pytest.approx(0.01)
    assert d.healthy_layers == ["0", "1", "2"] and not d.healthy


def test_constructed_noisy_but_decreasing_loss_is_fine():
    rng = np.random.default_rng(0)
    loss = np.linspace(1.0, 0.3, 30) + 0.05 * rng.standard_normal(30)   # direction changes, but progress
    rows = {("", "loss"): loss, **_healthy_norms(30)}
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    assert not {f.kind for f in d.findings} & {"oscillating_loss", "flat_loss", "diverging_loss"}
    assert d.healthy and [r.kind for r in d.recommendations] == ["none"]


def test_constructed_persistent_vanishing_is_the_majority_of_steps():
    """Layer '0' below 0.01 at 7 of 10 steps: vanishing; layer '1' at 4 of 10: healthy."""
    norms0 = [0.001] * 7 + [0.5] * 3
    norms1 = [0.001] * 4 + [0.5] * 6
    rows = {("", "loss"): np.linspace(1, 0.5, 10), ("0", "weight.grad_norm"): norms0,
            ("1", "weight.grad_norm"): norms1, ("2", "weight.grad_norm"): [0.5] * 10}
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    assert d.vanishing_layers == ["0"] and d.healthy_layers == ["1", "2"]
    assert d.gradient_norms == {"0": np.median(norms0), "1": np.median(norms1), "2": 0.5}
    f = next(f for f in d.findings if f.kind == "vanishing")
    assert f.layer == "0" and f.evidence["fraction_of_steps_below"] == 0.7
    assert d.flow_ratio == pytest.approx(np.median(norms0) / 0.5)


def test_constructed_explosion_at_one_step_and_global_clipping():
    global_norms = [1.0, 1.2, 0.9, 1.1, 250.0, 1.0, 0.8, 1.3, 1.1, 1.0]
    rows = {("", "loss"): np.linspace(1, 0.5, 10), ("", "grad_norm"): global_norms, **_healthy_norms(10)}
    rows[("1", "weight.grad_norm")] = [0.5] * 4 + [240.0] + [0.5] * 5
    rows[("2", "weight.grad_norm")] = [0.5] * 6 + [np.nan] + [0.5] * 3
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    assert d.exploding_layers == ["1", "2"] and d.gradient_norms["1"] == 0.5   # the median is ordinary
    f = {f.layer: f for f in d.findings if f.kind == "exploding"}
    assert f["1"].step == 4 and f["1"].evidence["max_weight_grad_norm"] == 240.0
    assert f["1"].evidence["steps_above"] == 1 and f["1"].evidence["nonfinite_steps"] == 0
    assert f["2"].step == 6 and f["2"].evidence["nonfinite_steps"] == 1 and math.isnan(
        f["2"].evidence["max_weight_grad_norm"])
    clip = next(r for r in d.recommendations if r.kind == "clipping")
    assert clip.params["percentile"] == 90.0 and clip.params["scope"] == "global"
    assert clip.params["global_clip_norm"] == pytest.approx(np.percentile(global_norms, 90))
    assert "global_clipnorm=" in clip.message and "torch.nn.utils.clip_grad_norm_" in clip.message


def test_constructed_dying_units_recommend_leaky_relu():
    rows = {("", "loss"): np.linspace(1, 0.5, 8), **_healthy_norms(8),
            ("0", "dead_frac"): np.linspace(0.1, 0.5, 8), ("1", "dead_frac"): [0.8] * 8}
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    dead = {f.layer: f for f in d.findings if f.kind == "dead_units"}
    assert set(dead) == {"0", "1"}                # '0' rising by 0.4, '1' above 0.7
    assert dead["0"].evidence["first"] == 0.1 and dead["0"].evidence["dead_frac"] == 0.5
    rec = next(r for r in d.recommendations if r.kind == "activation")
    assert rec.layers == ["0", "1"] and rec.params["activation"] == "leaky_relu"


def test_history_needs_a_recorded_step():
    with GradientMonitor(_small_relu_net()) as mon:
        with pytest.raises(ValueError, match="recorded no step"):
            mon.diagnose()


def test_constructed_thresholds_come_from_the_monitor_and_keywords():
    rows = {("", "loss"): np.linspace(1, 0.5, 8), **_healthy_norms(8)}
    mon = _constructed(_small_relu_net(), rows)
    assert diagnose_history(mon).healthy
    mon.vanishing = 1.0                            # the monitor's own threshold is used ...
    assert diagnose_history(mon).vanishing_layers == ["0", "1", "2"]
    assert diagnose_history(mon, vanishing=0.1).healthy   # ... unless a keyword overrides it
    assert diagnose_history(mon).thresholds["vanishing"] == 1.0


def test_nan_weight_is_located_and_is_not_an_explosion(data):
    """A NaN planted in layer 1's weight: the finding names parameter '1.weight' (the
    origin, not the loss); every layer whose weight-gradient norm is NaN is "nonfinite"
    (not exploding: no clipping, no lower learning rate), the advice is to reload or
    re-initialise that parameter, and to_dict writes "nan"."""
    import warnings

    X, y = data
    net = doc_network("relu", "he", np.float64)
    net[1].weight.data[0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # the monitor also warns, naming the layer
        d = diagnose(net, X[:50], y[:50], loss="binary_crossentropy")
    origin = next(f for f in d.findings if f.kind == "nonfinite")
    assert origin.layer == "1" and origin.severity == "error" and origin.evidence["parameter"] == "1.weight"
    nan_layers = [n for n, v in d.gradient_norms.items() if math.isnan(v)]
    assert "0" in nan_layers and d.nonfinite_layers == nan_layers and d.exploding_layers == []
    assert all(d.status(n) == "nonfinite" for n in nan_layers)
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert out["gradient_norms"]["0"] == "nan" and out["flow_ratio"] == "nan"
    kinds = [r.kind for r in d.recommendations]
    assert kinds == ["parameter"] and "'1.weight' holds NaN" in d.recommendations[0].message
    assert "re-initialise" in d.recommendations[0].message and "clip" not in str(d)


def test_constructed_converged_flat_loss_is_only_information():
    loss = np.concatenate([np.linspace(0.7, 0.2, 10), np.full(10, 0.2)])
    rows = {("", "loss"): loss, ("", "lr"): [0.1] * 20, **_healthy_norms(20)}
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    flat = next(f for f in d.findings if f.kind == "flat_loss")
    assert flat.severity == "info" and flat.evidence["settled"] and flat.evidence["relative_range"] == 0.0
    assert d.healthy and [r.kind for r in d.recommendations] == ["none"]
    stuck = dict(rows)
    stuck[("", "loss")] = np.full(20, 0.693)     # flat without having fallen: raise the rate
    d = diagnose_history(_constructed(_small_relu_net(), stuck))
    assert next(f for f in d.findings if f.kind == "flat_loss").severity == "warning"
    rec = next(r for r in d.recommendations if r.kind == "learning_rate")
    assert rec.params["lr"] == 0.1 and rec.params["suggested_lr"] == pytest.approx(1.0)


def test_constructed_skipped_steps_and_a_nonfinite_event():
    from gradcore.monitor import Event

    skipped = [0, 0, 1, 0, 1, 0, 0, 0]
    event = Event("nonfinite", 2, "1", "dz", math.nan, 0.0, "dz holds 3 NaN/Inf value(s)",
                  {"phase": "backward", "count": 3})
    rows = {("", "loss"): np.linspace(1, 0.5, 8), ("", "skipped"): skipped, ("", "lr"): [0.01] * 8,
            **_healthy_norms(8)}
    d = diagnose_history(_constructed(_small_relu_net(), rows, events=[event]))
    f = next(f for f in d.findings if f.kind == "skipped_steps")
    assert f.evidence == {"count": 2, "first": 2} and f.step == 2
    origin = next(f for f in d.findings if f.kind == "nonfinite")
    assert (origin.layer, origin.step, origin.evidence["tensor"], origin.evidence["phase"]) == ("1", 2, "dz", "backward")
    kinds = {r.kind for r in d.recommendations}
    assert {"clipping", "learning_rate"} <= kinds
    assert next(r for r in d.recommendations if r.kind == "learning_rate").params["suggested_lr"] == pytest.approx(1e-3)
    json.dumps(d.to_dict(), allow_nan=False)


def test_constructed_small_batch_noise_around_a_level_is_flat_not_oscillating():
    """The documents' sigmoid network on mini-batches: the loss jitters by ~0.3% around
    0.693 without falling. That is a stalled loss; calling it oscillation would suggest a
    lower learning rate and clipping, the opposite of what it needs."""
    rng = np.random.default_rng(1)
    loss = 0.693 + 0.002 * rng.standard_normal(30)
    amplitude = np.median(np.abs(np.diff(loss))) / np.abs(loss[15:]).mean()
    assert amplitude < 0.05
    rows = {("", "loss"): loss, ("", "lr"): [0.1] * 30, **_healthy_norms(30)}
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    kinds = {f.kind for f in d.findings}
    assert "flat_loss" in kinds and "oscillating_loss" not in kinds
    f = next(f for f in d.findings if f.kind == "flat_loss")
    assert f.severity == "warning" and f.evidence["relative_amplitude"] == pytest.approx(amplitude)
    assert not any(r.kind == "clipping" for r in d.recommendations)


# ---------------------------------------------------------------------- advice follows the cause (review fixes)
def _no_healthy_next_to_problems(d):
    """Every warning / error finding has a specific recommendation; '[none] ... healthy'
    never stands next to one."""
    problems = [f for f in d.findings if f.severity != "info"]
    if problems:
        assert d.recommendations and all(r.kind != "none" for r in d.recommendations)
        assert "looks healthy" not in str(d)


def _small_data(rows=64, features=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    return X, (X[:, :1] > 0).astype(np.float64)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "selu", "silu"])
def test_dead_unit_advice_depends_on_the_layers_activation(activation):
    """7 of 8 units biased to -50: dead for every sample (Z <= 0 recomputed here). A plain
    ReLU layer is told LeakyReLU; a layer that already has a non-zero negative slope is
    told its units sit in the negative regime (biases / init / lr / BatchNorm), never to
    use the activation it has."""
    X, y = _small_data()
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(10, 8, activation=activation), nn.Dense(8, 1, activation="sigmoid"),
                        dtype=np.float64)
    net[0].bias.data[:7] = -50.0
    Z = X @ net[0].weight.data.T + net[0].bias.data
    expected = np.mean((Z <= 0).all(axis=0))
    d = diagnose(net, X, y, loss="binary_crossentropy")
    dead = next(f for f in d.findings if f.kind == "dead_units")
    assert dead.layer == "0" and dead.evidence["dead_frac"] == pytest.approx(expected) and expected == 7 / 8
    _no_healthy_next_to_problems(d)
    about = [r for r in d.recommendations if "0" in r.layers and r.kind in ("activation", "initializer")]
    if activation == "relu":
        assert about[0].kind == "activation" and about[0].params["activation"] == "leaky_relu"
        assert "ELU" in about[0].message and "bias" in about[0].message
    else:
        assert [r.kind for r in about] == ["initializer"]
        rec = about[0]
        assert "negative regime" in rec.message and f"already use {activation}" in rec.message
        assert rec.params["bias_mean"]["0"] == pytest.approx(net[0].bias.data.mean())
        assert not any(r.params.get("activation") == activation for r in d.recommendations if r.kind == "activation")
        assert "use LeakyReLU" not in str(d)


def test_dead_leaky_units_over_a_monitored_fit():
    """The review's repro: Dense(10, 8, leaky_relu) with 7 biases at -50, a few monitored steps."""
    X, y = _small_data()
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(10, 8, activation="leaky_relu"), nn.Dense(8, 1, activation="sigmoid"),
                        dtype=np.float64)
    net[0].bias.data[:7] = -50.0
    net.compile(optim.SGD(net.parameters(), lr=0.1), loss="binary_crossentropy")
    with GradientMonitor(net) as mon:
        net.fit(X, y, epochs=2, batch_size=32, verbose=0, callbacks=[mon])
    d = mon.diagnose()
    assert next(f for f in d.findings if f.kind == "dead_units").evidence["dead_frac"] == pytest.approx(7 / 8)
    assert "use LeakyReLU" not in str(d) and "negative regime" in str(d)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_in_the_input_is_data_advice_not_an_explosion(dtype):
    X, y = _small_data()
    X = X.astype(dtype)
    X[[3, 7, 40], 2] = np.nan
    X[11, 0] = np.inf
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(10, 8, activation="relu"), nn.Dense(8, 1, activation="sigmoid"), dtype=dtype)
    with pytest.warns(RuntimeWarning, match="layer '0', output"):     # the monitor's own warning
        d = diagnose(net, X, y, loss="binary_crossentropy")
    origin = [f for f in d.findings if f.kind == "nonfinite"]
    assert len(origin) == 1 and origin[0].evidence["source"] == "data" and origin[0].evidence["data"] == "X"
    assert origin[0].evidence["rows"] == bad.tolist() and origin[0].evidence["count"] == 4
    assert "input X holds NaN / Inf in 4 of 64 row(s) (rows 3, 7, 11, 40)" in origin[0].message
    nan_layers = [n for n, v in d.gradient_norms.items() if not math.isfinite(v)]
    assert nan_layers and d.nonfinite_layers == nan_layers and d.exploding_layers == []
    assert [r.kind for r in d.recommendations] == ["data"]
    assert "clip" not in str(d) and "BatchNorm" not in str(d) and "exploding" not in {f.kind for f in d.findings}
    # labels: y holds a NaN
    X2, y2 = _small_data()
    y2[5, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        d = diagnose(net, X2, y2, loss="binary_crossentropy")
    origin = next(f for f in d.findings if f.kind == "nonfinite")
    assert origin.evidence["data"] == "y" and origin.evidence["rows"] == [5] and "target y" in origin.message


def test_nan_in_the_input_over_a_history_names_the_data():
    X, y = _small_data()
    X[[3, 7]] = np.nan
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(10, 8, activation="relu"), nn.Dense(8, 1, activation="sigmoid"), dtype=np.float64)
    net.compile(optim.SGD(net.parameters(), lr=0.1), loss="binary_crossentropy")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with GradientMonitor(net) as mon:
            net.fit(X, y, epochs=2, batch_size=64, verbose=0, callbacks=[mon])
    d = mon.diagnose()
    origin = next(f for f in d.findings if f.kind == "nonfinite")
    assert origin.evidence["source"] == "data" and origin.layer == "0" and "input X" in origin.message
    assert d.exploding_layers == [] and set(d.nonfinite_layers) == {"0", "1"}
    assert {r.kind for r in d.recommendations} == {"data"}


def test_genuine_overflow_stays_exploding():
    """Finite data and weights, norms growing to inf, the first NaN in a backward dz: an
    explosion, with a clipping threshold from the finite norms only."""
    from gradcore.monitor import Event

    norms = [0.5, 2.0, 50.0, 3e3, np.inf, np.nan]
    rows = {("", "loss"): [0.7, 0.8, 2.0, 9.0, np.inf, np.nan], ("", "lr"): [0.1] * 6, ("", "grad_norm"): norms,
            **{(n, "weight.grad_norm"): norms for n in ("0", "1", "2")}}
    event = Event("nonfinite", 4, "2", "dz", math.nan, 0.0, "dz holds NaN", {"phase": "backward"})
    d = diagnose_history(_constructed(_small_relu_net(), rows, events=[event]))
    assert d.exploding_layers == ["0", "1", "2"] and d.nonfinite_layers == []
    clip = next(r for r in d.recommendations if r.kind == "clipping")
    finite = np.array([0.5, 2.0, 50.0, 3e3])
    assert clip.params["global_clip_norm"] == pytest.approx(np.percentile(finite, 50.0))   # p90 is above 100
    assert math.isfinite(clip.params["global_clip_norm"])


def test_saturated_sigmoid_output_gets_specific_advice():
    """Output bias +20: every output pre-activation beyond 5 (recomputed here); the advice is
    about huge logits and a logits loss, never '[none] ... healthy'."""
    X, y = _small_data()
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(10, 8, activation="relu"), nn.Dense(8, 1, activation="sigmoid"), dtype=np.float64)
    net[1].bias.data[...] = 20.0
    A = np.maximum(X @ net[0].weight.data.T + net[0].bias.data, 0)
    Z = A @ net[1].weight.data.T + net[1].bias.data
    frac = np.mean(np.abs(Z) > 5.0)
    d = diagnose(net, X, y, loss="binary_crossentropy")
    sat = next(f for f in d.findings if f.kind == "saturated_units")
    assert sat.layer == "1" and sat.evidence["saturated_frac"] == pytest.approx(frac) and frac == 1.0
    _no_healthy_next_to_problems(d)
    rec = next(r for r in d.recommendations if r.kind == "initializer" and r.layers == ["1"])
    assert "logits are huge" in rec.message and "from_logits=True" in rec.message and "(100% of" in rec.message
    assert rec.params["bias_mean"] == 20.0 and "reset the bias" in rec.message   # the weights are right-sized
    assert "binary_cross_entropy_with_logits" in rec.message and rec.params["from_logits"] is True
    glorot = math.sqrt(2 / (8 + 1))
    assert rec.params["ratio"] == pytest.approx(net[1].weight.data.std() / glorot)
    assert any(r.kind == "learning_rate" and r.params["factor"] < 1 for r in d.recommendations)


def test_saturated_hidden_sigmoid_gets_a_non_saturating_activation():
    X, y = _small_data()
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(10, 8, activation="sigmoid"), nn.Dense(8, 1, activation="sigmoid"), dtype=np.float64)
    net[0].bias.data[...] = 20.0
    d = diagnose(net, X, y, loss="binary_crossentropy")
    assert next(f for f in d.findings if f.kind == "saturated_units").layer == "0"
    _no_healthy_next_to_problems(d)
    rec = next(r for r in d.recommendations if r.kind == "activation")
    assert rec.layers == ["0"] and rec.params["saturated"] == ["0"] and "saturate" in rec.message


def test_huge_weights_are_named_not_called_vanishing_for_batchnorm():
    """P['0.weight'] *= 1e20 in a ReLU -> sigmoid net: every dW is 0 (the output saturates),
    the flow ratio 0 / 0 is nan, and the advice is that layer 0's weights are far too large."""
    X, y = _small_data()
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(10, 8, activation="relu"), nn.Dense(8, 1, activation="sigmoid"), dtype=np.float64)
    net[0].weight.data[...] *= 1e20
    d = diagnose(net, X, y, loss="binary_crossentropy")
    assert d.gradient_norms == {"0": 0.0, "1": 0.0} and math.isnan(d.flow_ratio)
    large = next(f for f in d.findings if f.kind == "large_weights")
    he = math.sqrt(2 / 10)
    assert large.layer == "0" and large.evidence["ratio"] == pytest.approx(net[0].weight.data.std() / he)
    kinds = [r.kind for r in d.recommendations]
    assert kinds[0] == "initializer" and "far too large" in d.recommendations[0].message
    assert "batchnorm" not in kinds and "activation" not in kinds
    assert "flow ratio (first / last): nan" in str(d)


def test_output_only_high_update_ratio_in_a_vanishing_network_is_information():
    rows = {("", "loss"): [0.69] * 8, ("", "lr"): [0.1] * 8,
            ("0", "weight.grad_norm"): [1e-5] * 8, ("1", "weight.grad_norm"): [1e-4] * 8,
            ("2", "weight.grad_norm"): [0.3] * 8,
            ("0", "weight.update_ratio"): [1e-4] * 8, ("1", "weight.update_ratio"): [1e-3] * 8,
            ("2", "weight.update_ratio"): [0.5] * 8}
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    high = next(f for f in d.findings if f.kind == "update_ratio_high")
    assert high.layer == "2" and high.severity == "info" and "not what to lower" in high.message
    assert not any(r.kind == "learning_rate" and (r.params.get("factor") or 1) < 1 for r in d.recommendations)
    # a healthy network with the same output update ratio is still told to lower the rate
    rows.update({("0", "weight.grad_norm"): [0.3] * 8, ("1", "weight.grad_norm"): [0.3] * 8})
    d = diagnose_history(_constructed(_small_relu_net(), rows))
    assert next(f for f in d.findings if f.kind == "update_ratio_high").severity == "warning"
    assert any(r.kind == "learning_rate" and r.params["factor"] < 1 for r in d.recommendations)


def test_deep_sigmoid_activation_advice_names_every_saturating_hidden_layer(data):
    """10-layer sigmoid net: the activation recommendation names every hidden sigmoid layer
    (the set repair's "activation" remedy changes), and the residual example uses the
    recommended ReLU, saying so."""
    X, y = data
    dims = [20] + [16] * 9 + [1]
    net = doc_network("sigmoid", "xavier", np.float64, dims=dims)
    d = diagnose(net, X[:100], y[:100], loss="binary_crossentropy")
    rec = next(r for r in d.recommendations if r.kind == "activation")
    assert rec.layers == [str(i) for i in range(9)]
    assert set(rec.params["vanishing"]) < set(rec.layers)
    res = next(r for r in d.recommendations if r.kind == "residual")
    assert "activation='relu'" in res.message and "as the activation recommendation above says" in res.message
    # without a swap (linear equal-width layers) the example keeps the network's own activation
    gradcore.manual_seed(0)
    lin = nn.Sequential(*[nn.Dense(16, 16, activation="tanh", kernel_initializer=nn.init.random_normal(stddev=0.01))
                          for _ in range(5)], nn.Dense(16, 1, activation="sigmoid"), dtype=np.float64)
    d = diagnose(lin, X[:100, :16], y[:100], loss="binary_crossentropy")
    res = next(r for r in d.recommendations if r.kind == "residual")
    assert res.params["activation"] == "tanh" and "activation='tanh'" in res.message


def test_diagnose_history_accepts_the_monitors_own_update_ratio_with_the_low_check_off():
    """GradientMonitor(update_ratio=(0, hi)) turns the low check off; its diagnosis takes
    the monitor's thresholds and must accept them too (it refused a low bound of 0)."""
    net = _small_relu_net()
    rows = {("", "loss"): np.linspace(1.0, 0.3, 12), **_healthy_norms(12)}
    mon = _constructed(net, rows)
    mon.update_ratio = (0.0, 0.1)
    d = diagnose_history(mon)
    assert d.healthy_layers == ["0", "1", "2"]
    with GradientMonitor(net, update_ratio=(0.0, 0.1)) as real:
        assert real.update_ratio == (0.0, 0.1)
