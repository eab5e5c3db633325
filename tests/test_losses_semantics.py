"""Loss names carry their framework's semantics; torch options match torch; metrics follow
the loss; compile warns on an output/loss mismatch and records its configuration."""
import json
import warnings

import numpy as np
import pytest

import gradcore
import gradcore.functional as F
from gradcore import Tensor, gradcheck, losses, metrics, nn
from gradcore.datasets import make_classification, train_test_split

EPS = 1e-7  # Keras' probability clip


@pytest.fixture
def rng():
    return np.random.default_rng(6)


# ---------------------------------------------------------------------- NumPy references
def keras_bce(p, t, eps=EPS):
    q = np.clip(p, eps, 1 - eps)
    return -np.mean(t * np.log(q) + (1 - t) * np.log(1 - q))


def keras_cce(p, onehot, eps=EPS):
    q = np.clip(p / p.sum(axis=1, keepdims=True), eps, 1 - eps)
    return -np.mean((onehot * np.log(q)).sum(axis=1))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------- the documents' network
def test_documents_keras_network_reports_the_accuracy_of_its_predictions():
    # the documents (seed 001): Dense(.., 1, activation="sigmoid") + "binary_crossentropy" +
    # ["accuracy"]. Before, the sigmoid output was read as logits: the loss trained on the
    # wrong function and "accuracy" thresholded probabilities at 0 (0.525 = share of 1s).
    X, y = make_classification(1000, 20, n_informative=15, n_redundant=5, random_state=42)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(20, 64, activation="relu"), nn.Dense(64, 32, activation="relu"),
                        nn.Dense(32, 1, activation="sigmoid"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right pairing draws no warning
        net.compile("adam", loss="binary_crossentropy", metrics=["accuracy"])
    history = net.fit(X_train, y_train, epochs=8, batch_size=32, verbose=0)
    result = net.evaluate(X_test, y_test, return_dict=True)
    p = net.predict(X_test)[:, 0].astype(np.float64)
    truth = np.mean((p > 0.5) == (y_test == 1))
    assert result["accuracy"] == pytest.approx(truth, abs=1e-12)
    assert result["loss"] == pytest.approx(keras_bce(p, y_test), rel=1e-5)
    assert truth > 0.75  # trained on the right loss (chance is ~0.5)
    # the per-batch metric was the probability one too: last epoch's training accuracy
    p_train = net.predict(X_train)[:, 0]
    assert history.history["accuracy"][-1] > 0.75
    assert abs(history.history["accuracy"][-1] - np.mean((p_train > 0.5) == (y_train == 1))) < 0.1


# ---------------------------------------------------------------------- names -> semantics
def test_keras_names_take_probabilities_and_torch_names_logits(rng):
    z = rng.standard_normal((12, 1))
    probs = 1 / (1 + np.exp(-z))
    t = (rng.random((12, 1)) > 0.5).astype(float)
    logit_ref = np.mean(np.logaddexp(0, z) - z * t)
    for name in ("binary_crossentropy", "bce"):
        assert losses.get(name)(Tensor(probs), t).item() == pytest.approx(keras_bce(probs, t), rel=1e-12)
    assert losses.get("binary_cross_entropy")(Tensor(probs), t).item() == pytest.approx(keras_bce(probs, t), rel=1e-12)
    for name in ("bce_with_logits", "binary_cross_entropy_with_logits"):
        assert losses.get(name)(Tensor(z), t).item() == pytest.approx(logit_ref, rel=1e-12)
    assert losses.BinaryCrossentropy(from_logits=True)(Tensor(z), t).item() == pytest.approx(logit_ref, rel=1e-12)
    assert losses.BinaryCrossEntropy(from_logits=True)(Tensor(z), t).item() == pytest.approx(logit_ref, rel=1e-12)
    assert losses.BinaryCrossEntropy(from_logits=False)(Tensor(probs), t).item() == pytest.approx(
        keras_bce(probs, t), rel=1e-12)

    Z = rng.standard_normal((10, 4))
    labels = rng.integers(0, 4, 10)
    onehot = np.eye(4)[labels]
    P = softmax(Z)
    ce_ref = -np.mean(np.log(P[np.arange(10), labels]))
    for name in ("cross_entropy", "crossentropy"):
        assert losses.get(name)(Tensor(Z), labels).item() == pytest.approx(ce_ref, rel=1e-12)
    assert losses.CrossEntropyLoss()(Tensor(Z), labels).item() == pytest.approx(ce_ref, rel=1e-12)
    assert losses.get("categorical_crossentropy")(Tensor(P), onehot).item() == pytest.approx(ce_ref, rel=1e-10)
    assert losses.get("sparse_categorical_crossentropy")(Tensor(P), labels).item() == pytest.approx(ce_ref, rel=1e-10)
    assert losses.SparseCategoricalCrossentropy(from_logits=True)(Tensor(Z), labels).item() == pytest.approx(
        ce_ref, rel=1e-12)
    assert losses.CategoricalCrossentropy(from_logits=True)(Tensor(Z), onehot).item() == pytest.approx(
        ce_ref, rel=1e-12)
    # the torch-style class names
    assert losses.get("mse") is not losses.get("mse") and isinstance(losses.get("mse"), losses.MSELoss)
    assert losses.BCELoss()(Tensor(probs), t).item() == pytest.approx(keras_bce(probs, t), rel=1e-12)
    assert losses.BCEWithLogitsLoss()(Tensor(z), t).item() == pytest.approx(logit_ref, rel=1e-12)


def test_the_ambiguous_class_needs_an_explicit_from_logits():
    with pytest.raises(TypeError, match="from_logits"):
        losses.BinaryCrossEntropy()


def test_keras_probability_losses_match_keras_formulas_and_gradients(rng):
    p = Tensor(rng.uniform(0.02, 0.98, (7, 3)), requires_grad=True)
    t = (rng.random((7, 3)) > 0.5).astype(float)
    bce = losses.BinaryCrossentropy()
    assert bce(p, t).item() == pytest.approx(keras_bce(p.data, t), rel=1e-12)
    assert gradcheck(lambda q: bce(q, t), [p])
    smooth = losses.BinaryCrossentropy(label_smoothing=0.2)
    assert smooth(p, t).item() == pytest.approx(keras_bce(p.data, t * 0.8 + 0.1), rel=1e-12)
    # reduction: per sample is the mean over the last axis
    per_sample = losses.BinaryCrossentropy(reduction="none")(p, t).data
    q = p.data
    np.testing.assert_allclose(per_sample, -np.mean(t * np.log(q) + (1 - t) * np.log(1 - q), axis=1), rtol=1e-12)
    assert losses.BinaryCrossentropy(reduction="sum")(p, t).item() == pytest.approx(per_sample.sum(), rel=1e-12)
    z = Tensor(rng.standard_normal((7, 3)), requires_grad=True)
    assert gradcheck(lambda x: losses.BinaryCrossentropy(from_logits=True, reduction="sum")(x, t), [z])
    # probabilities of exactly 0 or 1 are clipped, like Keras: finite loss
    edge = losses.BinaryCrossentropy()(Tensor(np.array([[0.0], [1.0]])), np.array([[1.0], [0.0]])).item()
    assert edge == pytest.approx(-np.log(EPS), rel=1e-9)

    # categorical: rows scaled to sum 1, then clipped
    raw = Tensor(rng.uniform(0.1, 2.0, (6, 4)), requires_grad=True)
    labels = rng.integers(0, 4, 6)
    onehot = np.eye(4)[labels]
    cce = losses.CategoricalCrossentropy()
    assert cce(raw, onehot).item() == pytest.approx(keras_cce(raw.data, onehot), rel=1e-12)
    assert gradcheck(lambda q: cce(q, onehot), [raw])
    sparse = losses.SparseCategoricalCrossentropy()
    assert sparse(raw, labels).item() == pytest.approx(keras_cce(raw.data, onehot), rel=1e-12)
    assert sparse(raw, labels.reshape(6, 1)).item() == pytest.approx(keras_cce(raw.data, onehot), rel=1e-12)
    assert gradcheck(lambda q: sparse(q, labels), [raw])
    smooth_c = losses.CategoricalCrossentropy(label_smoothing=0.1)
    assert smooth_c(raw, onehot).item() == pytest.approx(keras_cce(raw.data, onehot * 0.9 + 0.1 / 4), rel=1e-12)
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        cce(raw, labels)


def test_probability_losses_refuse_logits(rng):
    z = rng.standard_normal((8, 1)) * 3
    t = (rng.random((8, 1)) > 0.5).astype(float)
    for loss in (losses.get("binary_crossentropy"), losses.BCELoss()):
        with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
            loss(Tensor(z), t)
    with pytest.raises(ValueError, match="from_logits=True"):
        losses.get("sparse_categorical_crossentropy")(Tensor(rng.standard_normal((5, 3))), [0, 1, 2, 0, 1])


# ---------------------------------------------------------------------- compile: warning, metrics, config
def test_compile_warns_when_probabilities_feed_a_logits_loss():
    net = nn.Sequential(nn.Dense(4, 32, activation="relu"), nn.Dense(32, 32, activation="relu"),
                        nn.Dense(32, 32, activation="relu"), nn.Dense(32, 1, activation="sigmoid"))
    with pytest.warns(UserWarning, match=r"layer '3' \(Dense\(32 -> 1, activation=sigmoid\)\) outputs "
                                         r"probabilities but loss 'bce_with_logits' expects logits") as record:
        net.compile("adam", loss="bce_with_logits")
    assert record[0].filename == __file__  # points at the user's line
    nested = nn.Sequential(nn.Dense(4, 3), nn.Sequential(nn.Dense(3, 3), nn.Softmax()))
    with pytest.warns(UserWarning, match=r"layer '1\.1' \(Softmax.*\) outputs probabilities but loss "
                                         r"'cross_entropy' expects logits"):
        nested.compile("sgd", loss=losses.CrossEntropyLoss())
    with pytest.warns(UserWarning, match=r"layer '0' \(Dense\(4 -> 3\)\) outputs logits.*expects probabilities"):
        nn.Sequential(nn.Dense(4, 3)).compile("sgd", loss="categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.Sequential(nn.Dense(4, 3)).compile("sgd", loss="crossentropy")
        nn.Sequential(nn.Dense(4, 3, activation="softmax")).compile("sgd", loss="sparse_categorical_crossentropy")
        nn.Sequential(nn.Dense(4, 1), nn.Sigmoid()).compile("sgd", loss=losses.BCELoss())
        nn.Sequential(nn.Dense(4, 1)).compile("sgd", loss="mse")


def _fixed_net(activation=None, width=1):
    """A network whose output is act(x) for x of one feature (weight 1, bias 0)."""
    layer = nn.Dense(1, width, activation=activation, dtype=np.float64)
    layer.weight.data[...] = 1.0
    layer.bias.data[...] = 0.0
    return nn.Sequential(layer)


def test_accuracy_follows_the_loss():
    x = np.linspace(-1.0, 1.5, 11).reshape(-1, 1)
    y = np.array([0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1])
    # a logits loss thresholds the output at 0
    net = _fixed_net()
    net.compile("sgd", loss="bce_with_logits", metrics=["accuracy", "binary_accuracy"])
    r = net.evaluate(x, y, return_dict=True)
    assert r["accuracy"] == r["binary_accuracy"] == pytest.approx(np.mean((x[:, 0] > 0) == (y == 1)))
    # a probability loss thresholds at 0.5
    net = _fixed_net("sigmoid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.compile("sgd", loss="binary_crossentropy", metrics=["accuracy", "acc", "binary_accuracy"])
    r = net.evaluate(x, y, return_dict=True)
    p = 1 / (1 + np.exp(-x[:, 0]))
    expected = np.mean((p > 0.5) == (y == 1))
    assert r["accuracy"] == r["binary_accuracy"] == pytest.approx(expected)
    # a regression loss on 0/1 targets: 0.5 (Keras' choice), here on the raw outputs
    net = _fixed_net()
    net.compile("sgd", loss="mse", metrics=["accuracy"])
    assert net.evaluate(x, y, return_dict=True)["accuracy"] == pytest.approx(np.mean((x[:, 0] > 0.5) == (y == 1)))
    # categorical losses: arg-max
    net = _fixed_net("softmax", width=3)
    net[0].bias.data[...] = [0.3, 0.0, -0.2]
    labels = np.array([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 0])
    net.compile("sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    out = net.predict(x)
    assert net.evaluate(x, labels, return_dict=True)["accuracy"] == pytest.approx(np.mean(out.argmax(1) == labels))


def test_accuracy_of_nan_outputs_is_nan():
    y = np.array([0, 1, 1])
    col = np.array([[np.nan], [2.0], [3.0]])
    assert np.isnan(metrics.accuracy(col, y))
    assert np.isnan(metrics.binary_accuracy(col, y, from_logits=True))
    rows = np.array([[0.1, 0.9], [np.nan, 0.2], [0.3, 0.4]])
    assert np.isnan(metrics.accuracy(rows, y))
    assert np.isnan(metrics.categorical_accuracy(rows, np.eye(2)[y]))
    assert metrics.accuracy(np.array([[-1.0], [2.0], [-3.0]]), y, from_logits=True) == pytest.approx(2 / 3)


_CONFIG_CASES = {
    "names": lambda: ["binary_crossentropy", "bce_with_logits", "mse", "cross_entropy", "crossentropy", "nll_loss"],
    "ce": lambda: losses.CrossEntropyLoss(weight=[1.0, 2.0, 0.5], ignore_index=1, reduction="sum", label_smoothing=0.1),
    "bcel": lambda: losses.BCEWithLogitsLoss(weight=np.array([2.0]), pos_weight=np.array([3.0]), reduction="none"),
    "bce": lambda: losses.BCELoss(weight=[0.5], reduction="sum"),
    "mse": lambda: losses.MSELoss(reduction="sum"),
    "keras_b": lambda: losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1, reduction="sum"),
    "keras_c": lambda: losses.CategoricalCrossentropy(label_smoothing=0.2),
    "keras_s": lambda: losses.SparseCategoricalCrossentropy(from_logits=True),
    "legacy": lambda: losses.BinaryCrossEntropy(from_logits=False),
    "nll": lambda: losses.NLLLoss(weight=[1.0, 1.0, 3.0]),
}


@pytest.mark.parametrize("case", sorted(_CONFIG_CASES))
def test_compile_config_rebuilds_the_loss(case, rng):
    made = _CONFIG_CASES[case]()
    for loss in made if isinstance(made, list) else [made]:
        _check_config_round_trip(loss, rng)
    with pytest.raises(ValueError, match="unknown loss config"):
        losses.get({"class_name": "Hinge", "config": {}})


def _check_config_round_trip(loss, rng):
    net = nn.Sequential(nn.Dense(4, 3, dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some pairings are deliberately odd here
        net.compile("adam", loss=loss, metrics=["accuracy"])
    config = json.loads(json.dumps(net.compile_config))  # JSON-safe
    assert config["optimizer"] == "Adam" and config["metrics"] == ["accuracy"]
    rebuilt = losses.get(config["loss"])
    assert type(rebuilt) is type(net.loss) and rebuilt.get_config() == net.loss.get_config()
    # and computes the same thing
    if net.loss.task == "binary" or net.loss.name == "mse":
        pred, target = rng.uniform(0.1, 0.9, (5, 1)), (rng.random((5, 1)) > 0.5).astype(float)
    else:
        pred, target = rng.uniform(0.1, 0.9, (5, 3)), rng.integers(0, 3, 5)
        if net.loss.name == "categorical_crossentropy":
            target = np.eye(3)[target]
    np.testing.assert_array_equal(rebuilt(Tensor(pred), target).data, net.loss(Tensor(pred), target).data)


# ---------------------------------------------------------------------- torch parity
def _parity(torch, ours, theirs, x, upstream_shape_rng):
    """Values and input gradients of ours(Tensor) and theirs(torch tensor), float64."""
    xg = Tensor(x.copy(), requires_grad=True)
    out = ours(xg)
    xt = torch.tensor(x, requires_grad=True)
    ref = theirs(xt)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    up = upstream_shape_rng.standard_normal(ref.shape)
    (ref * torch.tensor(up)).sum().backward()
    (out * up).sum().backward() if out.ndim else (out * float(up)).backward()
    np.testing.assert_allclose(xg.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_cross_entropy_labels_match_torch(reduction, weighted, ignore, smoothing, rng):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((9, 4)) * 2
    labels = rng.integers(0, 4, 9)
    if ignore:
        labels[[1, 5]] = -100
    w = rng.uniform(0.2, 2.0, 4) if weighted else None
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    tw = None if w is None else torch.tensor(w)
    _parity(torch, lambda x: F.cross_entropy(x, labels, weight=w, **kw),
            lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(labels), weight=tw, **kw), z, rng)
    loss = losses.CrossEntropyLoss(weight=w, **kw)
    ref = torch.nn.CrossEntropyLoss(weight=tw, **kw)(torch.tensor(z), torch.tensor(labels))
    np.testing.assert_allclose(loss(Tensor(z), labels).data, ref.numpy(), rtol=1e-10)


def test_cross_entropy_custom_ignore_index_and_nll_match_torch(rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    z = rng.standard_normal((8, 3))
    labels = rng.integers(0, 3, 8)
    w = rng.uniform(0.5, 2.0, 3)
    _parity(torch, lambda x: F.cross_entropy(x, labels, weight=w, ignore_index=2),
            lambda x: tf.cross_entropy(x, torch.tensor(labels), weight=torch.tensor(w), ignore_index=2), z, rng)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    labels[3] = -100
    for reduction in ("mean", "sum", "none"):
        _parity(torch, lambda x: F.nll_loss(x, labels, weight=w, reduction=reduction),
                lambda x: tf.nll_loss(x, torch.tensor(labels), weight=torch.tensor(w), reduction=reduction), logp, rng)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_probability_targets_match_torch(reduction, weighted, smoothing, rng):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((7, 5))
    target = softmax(rng.standard_normal((7, 5)))
    w = rng.uniform(0.2, 2.0, 5) if weighted else None
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    _parity(torch, lambda x: F.cross_entropy(x, target, weight=w, **kw),
            lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(target),
                                                        weight=None if w is None else torch.tensor(w), **kw), z, rng)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos", [False, True])
def test_bce_with_logits_options_match_torch(reduction, weighted, pos, rng):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((6, 3)) * 4
    t = rng.random((6, 3))
    w = rng.uniform(0.2, 2.0, (6, 1)) if weighted else None
    pw = rng.uniform(0.5, 3.0, 3) if pos else None
    T = lambda a: None if a is None else torch.tensor(a)  # noqa: E731
    _parity(torch, lambda x: F.binary_cross_entropy_with_logits(x, t, weight=w, reduction=reduction, pos_weight=pw),
            lambda x: torch.nn.functional.binary_cross_entropy_with_logits(
                x, torch.tensor(t), weight=T(w), reduction=reduction, pos_weight=T(pw)), z, rng)
    theirs = torch.nn.BCEWithLogitsLoss(weight=T(w), reduction=reduction, pos_weight=T(pw))
    ours = losses.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)
    np.testing.assert_allclose(ours(Tensor(z), t).data, theirs(torch.tensor(z), torch.tensor(t)).numpy(), rtol=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_and_mse_options_match_torch(reduction, rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    p = rng.uniform(0.01, 0.99, (5, 2))
    t = (rng.random((5, 2)) > 0.5).astype(float)
    w = rng.uniform(0.5, 2.0, 2)
    _parity(torch, lambda x: F.binary_cross_entropy(x, t, weight=w, reduction=reduction),
            lambda x: tf.binary_cross_entropy(x, torch.tensor(t), weight=torch.tensor(w), reduction=reduction), p, rng)
    _parity(torch, lambda x: F.mse_loss(x, t, reduction=reduction),
            lambda x: tf.mse_loss(x, torch.tensor(t), reduction=reduction), p, rng)
    # torch clamps each log at -100: exact 0 / 1 probabilities give 100 per wrong term
    edge = np.array([0.0, 1.0, 1.0])
    target = np.array([1.0, 0.0, 1.0])
    ref = tf.binary_cross_entropy(torch.tensor(edge), torch.tensor(target), reduction=reduction)
    np.testing.assert_allclose(F.binary_cross_entropy(edge, target, reduction=reduction).data, ref.numpy())


def test_options_gradcheck(rng):
    z = Tensor(rng.standard_normal((5, 4)), requires_grad=True)
    labels = np.array([0, 3, -100, 2, 1])
    w = rng.uniform(0.5, 2.0, 4)
    assert gradcheck(lambda x: F.cross_entropy(x, labels, weight=w, label_smoothing=0.1), [z])
    soft = softmax(rng.standard_normal((5, 4)))
    assert gradcheck(lambda x: F.cross_entropy(x, soft, weight=w, reduction="sum", label_smoothing=0.3), [z])
    t = rng.random((5, 4))
    assert gradcheck(lambda x: F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=2 * w), [z])
    p = Tensor(rng.uniform(0.05, 0.95, (5, 4)), requires_grad=True)
    assert gradcheck(lambda x: F.binary_cross_entropy(x, t, weight=w, reduction="sum"), [p])


def test_no_option_keeps_the_fused_kernels(monkeypatch, rng):
    calls = []
    for name in ("cross_entropy_loss", "cross_entropy_onehot_loss", "bce_with_logits_loss", "mse_loss"):
        kernel = getattr(gradcore._C, name)
        monkeypatch.setattr(gradcore._C, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    z = rng.standard_normal((4, 3))
    F.cross_entropy(z, np.array([0, 1, 2, 0]))
    F.cross_entropy(z, softmax(z))
    F.binary_cross_entropy_with_logits(z, rng.random((4, 3)))
    F.mse_loss(z, z * 0)
    assert calls == ["cross_entropy_loss", "cross_entropy_onehot_loss", "bce_with_logits_loss", "mse_loss"]
    calls.clear()
    F.cross_entropy(z, np.array([0, 1, 2, 0]), label_smoothing=0.1)
    F.cross_entropy(z, np.array([0, -100, 2, 0]))
    F.mse_loss(z, z * 0, reduction="sum")
    assert calls == []


# ---------------------------------------------------------------------- refusals
def test_mse_and_bce_refuse_targets_of_another_shape(rng):
    p = Tensor(rng.standard_normal((3, 4)))
    for loss in (losses.MSE(), losses.get("bce_with_logits"), losses.BinaryCrossEntropy(from_logits=True)):
        with pytest.raises(ValueError, match=r"input has shape \(3, 4\) but target has shape \(4, 3\)"):
            loss(p, p.data.T)  # same size: used to be reshaped (MSE returned 3.5 for arange)
        with pytest.raises(ValueError, match="target has shape"):
            loss(p, np.zeros(12))
    q = Tensor(rng.uniform(0.1, 0.9, (3, 4)))
    for loss in (losses.get("binary_crossentropy"), losses.BCELoss()):
        with pytest.raises(ValueError, match="target has shape"):
            loss(q, q.data.T)
    with pytest.raises(ValueError, match="target has shape"):
        F.mse_loss(np.zeros((6, 1)), np.zeros((1, 6)))
    # (N,) against (N, 1), either way round, is the accepted broadcast
    col = rng.standard_normal((6, 1))
    y = rng.standard_normal(6)
    ref = np.mean((col[:, 0] - y) ** 2)
    assert losses.MSE()(Tensor(col), y).item() == pytest.approx(ref, rel=1e-12)
    assert losses.MSE()(Tensor(col[:, 0]), y.reshape(6, 1)).item() == pytest.approx(ref, rel=1e-12)
    t01 = (y > 0).astype(float)
    assert losses.BCEWithLogitsLoss()(Tensor(col), t01).item() == pytest.approx(
        np.mean(np.logaddexp(0, col[:, 0]) - col[:, 0] * t01), rel=1e-12)


@pytest.mark.parametrize("label", [3, -1, 2 ** 40, -(2 ** 40), 1e20])
def test_labels_out_of_range_name_the_label_and_the_class_count(label, rng):
    z = Tensor(rng.standard_normal((4, 3)))
    labels = np.array([0, 1, label, 2], dtype=np.float64 if isinstance(label, float) else np.int64)
    shown = str(int(label))
    for loss in (losses.get("cross_entropy"), losses.get("crossentropy"),
                 losses.SparseCategoricalCrossentropy(from_logits=True), losses.SparseCategoricalCrossentropy(),
                 losses.NLLLoss(), losses.CrossEntropyLoss(label_smoothing=0.1)):
        pred = Tensor(softmax(z.data)) if loss.from_logits is False else z
        with pytest.raises(ValueError, match=rf"label {shown} at row 2 is out of range for 3 classes"):
            loss(pred, labels)


def test_unsigned_labels_beyond_int64_are_reported_unwrapped(rng):
    labels = np.array([0, 2 ** 63 + 5, 1], dtype=np.uint64)
    with pytest.raises(ValueError, match=rf"label {2 ** 63 + 5} at row 1 is out of range for 3 classes"):
        F.cross_entropy(rng.standard_normal((3, 3)), labels)
    # np.longlong is int64 by value even when it is not the same dtype object
    value = F.cross_entropy(np.zeros((2, 3)), np.array([0, 2], dtype=np.longlong)).item()
    assert value == pytest.approx(np.log(3.0))
