"""repair(): remedies trained against a control on identical batches.

Oracles: a plain ``fit`` of the same network with the same seed (run here, independently of
repair), a NumPy float64 re-implementation of the documents' full-batch training of the
[20, 30, 20, 10, 1] sigmoid network, ``np.percentile`` of the norms a plain fit observes,
and NumPy forwards of the transformed networks.
"""
import hashlib
import importlib
import json

import numpy as np
import pytest

import gradcore
from gradcore import nn, optim
from gradcore.callbacks import Callback
from gradcore.datasets import make_classification
from gradcore.monitor import REMEDIES, repair

# The module, not the function of the same name that gradcore.monitor exports.
repair_module = importlib.import_module("gradcore.monitor._repair")

WIDTHS = [20, 30, 20, 10, 1]
N_TRAIN = 800  # of the 1000 rows, validation_split=0.2 holds out the last 200


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(1000, 20, n_informative=15, n_redundant=5, random_state=42)
    X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    return X, y


def documents_net(dtype=np.float32):
    """The documents' first configuration: sigmoid everywhere, weights N(0, 0.01)."""
    return nn.Sequential(*[nn.Dense(a, b, activation="sigmoid", kernel_initializer="random", dtype=dtype)
                           for a, b in zip(WIDTHS[:-1], WIDTHS[1:])])


def run(data, build=documents_net, **kwargs):
    X, y = data
    kwargs.setdefault("loss", "binary_crossentropy")
    kwargs.setdefault("lr", 0.1)
    kwargs.setdefault("epochs", 10)
    kwargs.setdefault("remedies", list(REMEDIES))
    return repair(build, X, y, **kwargs)


class InputDigest:
    """Forward pre-hook of the oracle runs: a digest of the training inputs."""

    def __init__(self):
        self.hash = hashlib.sha256()

    def __call__(self, module, args):
        if module.training:
            x = np.ascontiguousarray(args[0])
            self.hash.update(str((x.shape, x.dtype.str)).encode())
            self.hash.update(x.tobytes())


class Norms(Callback):
    def __init__(self):
        self.norms = []

    def on_after_step(self, batch, logs=None):
        self.norms.append(logs["grad_norm"])


def plain_fit(data, build=documents_net, lr=0.1, epochs=10, batch_size=None, seed=0, **opt_kwargs):
    """The user's own training of the control: seed, build, compile, seed, fit."""
    X, y = data
    Xt, yt, Xv, yv = X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]
    gradcore.manual_seed(seed)
    net = build()
    net.compile(optim.SGD(net.parameters(), lr=lr, **opt_kwargs), loss="binary_crossentropy", metrics=["accuracy"])
    digest, norms = InputDigest(), Norms()
    net.register_forward_pre_hook(digest)
    gradcore.manual_seed(seed)
    history = net.fit(Xt, yt, epochs=epochs, batch_size=batch_size or len(Xt), validation_data=(Xv, yv),
                      verbose=0, callbacks=[norms])
    return history, digest.hash.hexdigest(), np.array(norms.norms)


# ---------------------------------------------------------------------- identical batches
def test_control_and_every_remedy_train_on_the_batches_of_a_plain_fit(data):
    report = run(data, epochs=3, batch_size=128)
    _, expected, _ = plain_fit(data, epochs=3, batch_size=128)
    ran = [r for r in report.rows if r["applicable"]]
    assert [r["remedy"] for r in ran] == ["control", "activation", "batchnorm", "clipping", "lower_lr"]
    assert {r["batch_digest"] for r in ran} == {expected}
    assert {r["steps"] for r in ran} == {3 * 7}  # ceil(800 / 128) steps per epoch
    # the digest sees the order: another seed shuffles otherwise
    _, other, _ = plain_fit(data, epochs=3, batch_size=128, seed=1)
    assert other != expected


def test_with_dropout_and_float64_every_run_sees_the_batches_and_masks_of_a_plain_fit(data):
    def build():
        return nn.Sequential(nn.Dense(20, 30, activation="sigmoid", kernel_initializer="random"), nn.Dropout(0.3),
                             nn.Dense(30, 20, activation="tanh"), nn.Dense(20, 1, activation="sigmoid"),
                             dtype=np.float64)

    report = run(data, build=build, epochs=3, batch_size=100)
    history, expected, _ = plain_fit(data, build=build, epochs=3, batch_size=100)
    ran = [r for r in report.rows if r["applicable"]]
    assert len(ran) == 5 and {r["batch_digest"] for r in ran} == {expected}
    # same dropout masks too: the control's numbers are the plain fit's
    assert report.row("control")["loss"] == history["loss"][-1]
    assert all(net.dtype == np.float64 for net in report.networks.values())
    assert [type(m).__name__ for m in report.networks["batchnorm"]] == [
        "Dense", "BatchNorm", "Activation", "Dropout", "Dense", "BatchNorm", "Activation", "Dense"]
    assert [getattr(m, "activation", None) for m in report.networks["activation"]] == ["relu", None, "relu",
                                                                                       "sigmoid"]


def test_a_run_on_other_batches_is_refused(data, monkeypatch):
    # a candidate whose batches differ from the control's must raise, not be compared
    original = repair_module._BatchDigest.__call__
    calls = {"n": 0}

    def skewed(self, module, args):
        calls["n"] += 1
        if calls["n"] > 3:  # every run after the control's three steps
            args = (np.asarray(args[0]) + 1.0,)
        return original(self, module, args)

    monkeypatch.setattr(repair_module._BatchDigest, "__call__", skewed)
    with pytest.raises(RuntimeError, match="'lower_lr' run trained on other batches"):
        run(data, epochs=3, remedies=["lower_lr"])


def test_same_seed_gives_the_same_numbers_and_another_seed_does_not(data):
    def numbers(report):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in report.rows]

    first, again = run(data, batch_size=200), run(data, batch_size=200)
    assert numbers(first) == numbers(again)
    assert first.best == again.best
    other = run(data, batch_size=200, seed=3)
    assert other.row("control")["loss"] != first.row("control")["loss"]


# ---------------------------------------------------------------------- numbers against oracles
def test_control_equals_a_plain_fit_with_the_same_seed(data):
    report = run(data, epochs=12, batch_size=100, remedies=["lower_lr"])
    history, _, _ = plain_fit(data, epochs=12, batch_size=100)
    control = report.row("control")
    assert control["loss"] == history["loss"][-1]
    assert control["val_loss"] == history["val_loss"][-1]
    assert control["val_accuracy"] == history["val_accuracy"][-1]
    lower, _, _ = plain_fit(data, lr=0.01, epochs=12, batch_size=100)
    assert report.row("lower_lr")["loss"] == lower["loss"][-1]
    assert report.row("lower_lr")["lr"] == pytest.approx(0.01)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _numpy_training(params, X, y, lr, epochs, clip=None):
    """The documents' train_network in float64: full-batch gradient descent on the mean
    binary cross-entropy of a sigmoid network, optionally clipping the global norm.
    Returns the loss of each epoch (before its update), the weight-gradient norm of each
    layer at each step (steps, layers) and the final parameters."""
    params = [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]
    y = y.reshape(-1, 1).astype(np.float64)
    m, losses, dW_norms = len(X), [], []
    for _ in range(epochs):
        acts = [X.astype(np.float64)]
        for W, b in params:
            acts.append(_sigmoid(acts[-1] @ W.T + b))
        p = acts[-1]
        losses.append(float(np.mean(-(y * np.log(p) + (1 - y) * np.log1p(-p)))))
        dZ = (p - y) / m
        grads = []
        for k in range(len(params) - 1, -1, -1):
            W, _ = params[k]
            grads.append((dZ.T @ acts[k], dZ.sum(axis=0)))
            if k:
                dZ = (dZ @ W) * acts[k] * (1 - acts[k])
        grads.reverse()
        dW_norms.append([np.linalg.norm(dW) for dW, _ in grads])
        scale = 1.0
        if clip is not None:
            total = np.sqrt(sum((g ** 2).sum() for pair in grads for g in pair))
            scale = min(1.0, clip / (total + 1e-6))
        params = [(W - lr * scale * dW, b - lr * scale * db) for (W, b), (dW, db) in zip(params, grads)]
    return losses, np.array(dW_norms), params


def _bce_and_accuracy(params, X, y):
    a = X.astype(np.float64)
    for W, b in params:
        a = _sigmoid(a @ W.T + b)
    p, t = a.ravel(), y.astype(np.float64)
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log1p(-p)))), float(np.mean((p > 0.5) == (t > 0.5))), p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_control_lower_lr_and_clipping_equal_the_documents_training_in_numpy(data, dtype):
    X, y = data
    epochs = 15
    report = run(data, build=lambda: documents_net(dtype), epochs=epochs, remedies=["clipping", "lower_lr"],
                 clip_percentile=50)
    gradcore.manual_seed(0)
    initial = [(layer.weight.data.copy(), layer.bias.data.copy()) for layer in documents_net(dtype)]
    rtol = 1e-4 if dtype == np.float32 else 1e-9
    Xt, yt, Xv, yv = X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]
    clip = report.row("clipping")["clip_norm"]
    for remedy, lr, c in [("control", 0.1, None), ("lower_lr", 0.01, None), ("clipping", 0.1, clip)]:
        losses, dW_norms, final = _numpy_training(initial, Xt, yt, lr, epochs, clip=c)
        val_loss, val_acc, p = _bce_and_accuracy(final, Xv, yv)
        row = report.row(remedy)
        assert report.histories[remedy]["loss"] == pytest.approx(losses, rel=rtol)
        assert row["val_loss"] == pytest.approx(val_loss, rel=rtol)
        if np.min(np.abs(p - 0.5)) > 1e-5:  # no decision within rounding of the threshold
            assert row["val_accuracy"] == val_acc
        assert report.networks[remedy].dtype == dtype
        # health after: a layer vanishes when its median weight-gradient norm is below 0.01
        vanishing = [str(k) for k in np.flatnonzero(np.median(dW_norms, axis=0) < 0.01)]
        assert vanishing[:2] == ["0", "1"]
        assert row["health"].startswith(f"vanishing in {', '.join(vanishing)}")
        np.testing.assert_allclose(report.monitors[remedy].history.series("0", "weight.grad_norm")[1],
                                   dW_norms[:, 0], rtol=1e-3 if dtype == np.float32 else 1e-8)
    # clipping at the median norm really clipped: half the steps were scaled down
    assert report.row("clipping")["loss"] != report.row("control")["loss"]


def test_clipping_threshold_is_the_percentile_of_the_controls_observed_norms(data):
    for q in (90, 25):
        report = run(data, epochs=8, batch_size=160, remedies=["clipping"], clip_percentile=q)
        _, _, norms = plain_fit(data, epochs=8, batch_size=160)
        assert len(norms) == 8 * 5
        assert report.row("clipping")["clip_norm"] == pytest.approx(np.percentile(norms, q), rel=1e-12)
        assert report.networks["clipping"].optimizer.global_clip_norm == report.row("clipping")["clip_norm"]
        assert report.networks["control"].optimizer.global_clip_norm is None
        # the monitor that watched the control saw the same norms
        np.testing.assert_array_equal(report.monitors["control"].history.series("", "grad_norm")[1], norms)


# ---------------------------------------------------------------------- the transformations
def _fresh(build=documents_net, seed=0):
    gradcore.manual_seed(seed)
    return build()


def test_activation_remedy_is_relu_with_he_normal_and_keeps_the_output_layer():
    control = _fresh()
    net, description = repair_module._candidate("activation", _fresh())
    assert [type(layer) for layer in net] == [nn.Dense] * 4
    assert [layer.activation for layer in net] == ["relu", "relu", "relu", "sigmoid"]
    for layer in list(net)[:3]:
        assert isinstance(layer.kernel_initializer, nn.init.HeNormal)
        # Keras' he_normal: standard deviation sqrt(2 / fan_in) after truncation at 2 sigma
        std = np.sqrt(2.0 / layer.in_features)
        assert layer.weight.data.std() == pytest.approx(std, rel=0.2)
        assert np.abs(layer.weight.data).max() <= 2 * std / nn.init.TRUNCATED_STD_FACTOR + 1e-6
    # the output layer starts where the control's does (values drawn N(0, 0.01))
    np.testing.assert_array_equal(net[3].weight.data, control[3].weight.data)
    assert control[0].weight.data.std() == pytest.approx(0.01, rel=0.2)
    assert description == "sigmoid -> relu, he_normal init in Dense 0, 1, 2"


def test_activation_remedy_replaces_activation_layers_and_redraws_the_dense_feeding_them():
    def build():
        return nn.Sequential(nn.Dense(8, 6, kernel_initializer="random"), nn.Tanh(),
                             nn.Dense(6, 6, activation="relu"), nn.Dense(6, 1), nn.Sigmoid())

    base = _fresh(build)
    kept = base[2].weight.data.copy()
    net, _ = repair_module._candidate("activation", base)
    assert [type(layer).__name__ for layer in net] == ["Dense", "ReLU", "Dense", "Dense", "Sigmoid"]
    assert net[0].activation is None and isinstance(net[0].kernel_initializer, nn.init.HeNormal)
    np.testing.assert_array_equal(net[2].weight.data, kept)  # not saturating: untouched


def test_batchnorm_remedy_puts_batchnorm_between_dense_and_activation_with_the_controls_weights():
    control = _fresh()
    net, description = repair_module._candidate("batchnorm", _fresh())
    kinds = [type(layer).__name__ for layer in net]
    assert kinds == ["Dense", "BatchNorm", "Activation"] * 3 + ["Dense"]
    for k, width in enumerate(WIDTHS[1:-1]):
        dense, bn, act = net[3 * k], net[3 * k + 1], net[3 * k + 2]
        assert dense.activation is None and bn.features == width and act.activation_name == "sigmoid"
        np.testing.assert_array_equal(dense.weight.data, control[k].weight.data)
        np.testing.assert_array_equal(dense.bias.data, control[k].bias.data)
    assert net[9].activation == "sigmoid"
    assert description == "BatchNorm after Dense 0, 1, 2 (before the activation)"
    # an already normalised network has nothing to gain
    with pytest.raises(repair_module._NotApplicable, match="already followed by a normalisation"):
        repair_module._candidate("batchnorm", net)


def test_residual_remedy_wraps_equal_width_layers_and_computes_block_plus_input():
    def build():
        return nn.Sequential(nn.Dense(5, 4, activation="tanh"), nn.Dense(4, 4), nn.ReLU(),
                             nn.Dense(4, 4, activation="tanh"), nn.Dense(4, 1))

    base = _fresh(build)
    weights = [(layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64))
               for layer in base if isinstance(layer, nn.Dense)]
    net, description = repair_module._candidate("residual", base)
    assert [type(layer).__name__ for layer in net] == ["Dense", "Residual", "Residual", "Dense"]
    assert [type(layer).__name__ for layer in net[1].block] == ["Dense", "ReLU"]
    assert net[1].projection is None and net[2].projection is None
    assert description == "identity shortcut around Dense 1, 3"
    x = np.random.default_rng(0).standard_normal((7, 5))
    (W0, b0), (W1, b1), (W2, b2), (W3, b3) = weights
    h = np.tanh(x @ W0.T + b0)
    h = np.maximum(h @ W1.T + b1, 0) + h
    h = np.tanh(h @ W2.T + b2) + h
    expected = h @ W3.T + b3
    np.testing.assert_allclose(net.predict(x.astype(np.float32)), expected, rtol=1e-5, atol=1e-6)


def test_residual_is_not_applicable_to_the_documents_widths(data):
    report = run(data, epochs=2, remedies=["residual"])
    row = report.row("residual")
    assert not row["applicable"] and row["steps"] == 0 and "residual" not in report.networks
    assert "20 -> 30 -> 20 -> 10 -> 1" in row["description"]
    assert "not applicable" in report.table()


def test_structural_remedies_need_a_sequential(data):
    class Net(nn.Model):
        def __init__(self):
            super().__init__()
            self.body = documents_net()

        def forward(self, x):
            return self.body(x)

    report = run(data, build=Net, epochs=2, remedies=["activation", "lower_lr"])
    assert "not a Sequential" in report.row("activation")["description"]
    assert report.row("lower_lr")["applicable"]


# ---------------------------------------------------------------------- the user's network
def test_a_given_sequential_is_rebuilt_from_its_layers_and_left_untouched(data):
    gradcore.manual_seed(0)
    user = documents_net()
    user.compile(optim.SGD(user.parameters(), lr=0.1), loss="binary_crossentropy")
    X, y = data
    user.fit(X[:64], y[:64], epochs=1, batch_size=64, verbose=0)
    user.train()
    user(X[:8]).sum().backward()  # gradients present
    before = user.state_dict()
    grads = [p.grad.copy() for p in user.parameters()]
    flat = user.flat_buffers()[0].data.copy()

    from_net = repair(user, X, y, lr=0.1, epochs=4, remedies=["activation", "batchnorm"])  # loss: user's compiled one
    assert all(np.array_equal(before[k], v) for k, v in user.state_dict().items())
    assert all(np.array_equal(g, p.grad) for g, p in zip(grads, user.parameters()))
    np.testing.assert_array_equal(flat, user.flat_buffers()[0].data)
    assert user.training and user.optimizer.param_groups[0]["lr"] == 0.1
    assert all(net is not user and all(a is not b for a in net.modules() for b in user.modules())
               for net in from_net.networks.values())
    # rebuilt from the layer list after manual_seed(seed): the same runs as a build function
    from_build = run(data, epochs=4, remedies=["activation", "batchnorm"])
    strip = ("seconds",)
    assert ([{k: v for k, v in r.items() if k not in strip} for r in from_net.rows]
            == [{k: v for k, v in r.items() if k not in strip} for r in from_build.rows])


# ---------------------------------------------------------------------- the report
def test_best_is_by_validation_accuracy_then_loss_and_never_a_diverged_run():
    def row(remedy, acc, loss, diverged=False, applicable=True):
        return {"remedy": remedy, "val_accuracy": acc, "val_loss": loss, "diverged": diverged,
                "applicable": applicable}

    best = repair_module._best
    assert best([row("control", 0.5, 0.7), row("activation", 0.8, 0.5)]) == "activation"
    assert best([row("control", 0.8, 0.4), row("batchnorm", 0.8, 0.3)]) == "batchnorm"
    assert best([row("control", 0.8, 0.3), row("batchnorm", 0.8, 0.3)]) == "control"
    assert best([row("control", 0.5, 0.7), row("lower_lr", 0.9, 0.1, diverged=True)]) == "control"
    assert best([row("control", 0.5, 0.7, diverged=True), row("residual", None, None, applicable=False)]) is None


def test_a_diverging_run_is_reported_and_never_best(data):
    # regression at a learning rate that overflows within five full-batch steps
    def build():
        return nn.Sequential(nn.Dense(20, 30, activation="relu"), nn.Dense(30, 30, activation="relu"), nn.Dense(30, 1))

    X, y = data
    report = run((X, y.astype(np.float32)), build=build, loss="mse", lr=1.0, epochs=5,
                 remedies=["clipping", "lower_lr"])
    control = report.row("control")
    assert control["diverged"] and control["health"].startswith("diverged")
    assert not np.isfinite(control["loss"]) and control["val_accuracy"] is None
    assert not report.row("lower_lr")["diverged"]
    assert report.best == "lower_lr"
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["rows"][0]["loss"] in ("inf", "nan")


def test_report_table_str_and_json(data):
    report = run(data, epochs=5)
    table = report.table().splitlines()
    header = table[0]
    column = header.index("health")
    for line, row in zip(table[2:], report.rows):
        assert line.startswith(row["remedy"])
        if row["applicable"]:
            assert line[column:].startswith(row["health"])
            assert f"{row['val_loss']:.4f}" in line
    text = str(report)
    assert report.table() in text and f"best: {report.best}" in text
    out = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert [r["remedy"] for r in out["rows"]] == ["control", *REMEDIES]
    assert out["best"] == report.best and out["settings"]["steps_per_epoch"] == 1
    assert report.best_network is report.networks[report.best]


# ---------------------------------------------------------------------- auto
def test_auto_tests_what_the_diagnosis_of_the_control_recommends(data):
    from gradcore.monitor import diagnose

    report = run(data, remedies="auto", epochs=30)
    gradcore.manual_seed(0)
    control = documents_net()
    control.compile(optim.SGD(control.parameters(), lr=0.1), loss="binary_crossentropy")
    X, y = data
    expected = diagnose(control, X[:N_TRAIN], y[:N_TRAIN])
    assert report.control_diagnosis.vanishing_layers == expected.vanishing_layers == ["0", "1", "2"]
    kinds = {r.kind for r in expected.recommendations}
    assert {"activation", "batchnorm"} <= kinds
    ran = [r["remedy"] for r in report.rows]
    assert ran[0] == "control" and "activation" in ran and "batchnorm" in ran
    assert ran[1:] == repair_module._recommended(expected)
    assert report.settings["remedies"] == "auto"
    # on the documents' network the new activation wins, and its gradients are healthy
    assert report.best == "activation" and report.row("activation")["health"] == "healthy"
    assert report.row("activation")["val_accuracy"] > report.row("control")["val_accuracy"] + 0.1


def test_recommendations_map_to_remedies():
    from gradcore.monitor.diagnosis import Recommendation

    class Found:
        def __init__(self, *recs):
            self.recommendations = list(recs)

    def rec(kind, **params):
        return Recommendation(kind, [], "", params)

    mapped = repair_module._recommended
    assert mapped(Found(rec("residual"), rec("initializer"), rec("clipping"))) == ["activation", "clipping",
                                                                                    "residual"]
    assert mapped(Found(rec("learning_rate", factor=0.1))) == ["lower_lr"]
    assert mapped(Found(rec("learning_rate", factor=10.0), rec("none"))) == []


def test_trained_networks_carry_no_hooks_of_repair_or_its_monitors(data):
    report = run(data, epochs=3)
    for net in report.networks.values():
        for m in net.modules():
            hooks = m._module_hooks
            assert hooks is None or not (hooks.pre or hooks.forward or hooks.backward or hooks.backward_pre)
            assert "_monitor_tap" not in m.__dict__


# ---------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(data):
    X, y = data
    with pytest.raises(ValueError, match="as many rows"):
        repair(documents_net, X, y[:-1], loss="binary_crossentropy")
    with pytest.raises(ValueError, match="unknown remedy 'dropout'"):
        repair(documents_net, X, y, loss="binary_crossentropy", remedies=["clipping", "dropout"])
    with pytest.raises(TypeError, match="build function"):
        repair(nn.Dense(20, 1), X, y, loss="binary_crossentropy")
    unbuildable = nn.Sequential(nn.Dense(20, 1, kernel_initializer=lambda shape, dtype, rng: np.zeros(shape)))
    with pytest.raises(TypeError, match="pass a zero-argument build function instead"):
        repair(unbuildable, X, y, loss="binary_crossentropy")
    with pytest.raises(TypeError, match="zero-argument function"):
        repair("net", X, y, loss="binary_crossentropy")
    shared = documents_net()
    with pytest.raises(ValueError, match="sharing layers"):
        repair(lambda: shared, X, y, loss="binary_crossentropy", epochs=1, remedies=["lower_lr"])
    with pytest.raises(ValueError, match="pass loss="):
        repair(documents_net, X, y)
    with pytest.raises(TypeError, match="own optimizer"):
        repair(documents_net, X, y, loss="binary_crossentropy", optimizer=optim.SGD(shared.parameters()))
    with pytest.raises(ValueError, match="validation"):
        repair(documents_net, X, y, loss="binary_crossentropy", validation_split=None)
    with pytest.raises(ValueError, match="clip_percentile"):
        repair(documents_net, X, y, loss="binary_crossentropy", clip_percentile=0)
    with pytest.raises(ValueError, match="X must have shape"):
        repair(documents_net, X[:, 0], y, loss="binary_crossentropy")
