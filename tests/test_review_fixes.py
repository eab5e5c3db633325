"""Regression tests for review findings A7 (Keras evaluate/predict), B3 (Keras initializer
class names), B4 (checkpoint running_var / checksum checks), B5 (.npz read errors) and
B8 (cross_entropy bool labels)."""
import json

import numpy as np
import pytest

import gradcore
from gradcore import functional as F
from gradcore import losses
from gradcore import nn
from gradcore import safetensors as st
from gradcore.nn import init
from gradcore.safetensors import CheckpointError


# ---------------------------------------------------------------------- A7
def _classifier(seed=0):
    gradcore.manual_seed(seed)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(70, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    net = nn.Sequential(nn.Dense(5, 8, activation="relu"), nn.Dense(8, 2))
    return net, X, y


def _np_cross_entropy(logits, labels):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def test_evaluate_returns_keras_list_loss_then_metrics():
    net, X, y = _classifier()
    net.compile("adam", loss="crossentropy", metrics=["accuracy"])
    net.fit(X, y, epochs=2, batch_size=16, verbose=0)
    test_loss, test_acc = net.evaluate(X, y, verbose=0)
    out = net.predict(X, verbose=0)
    assert test_loss == pytest.approx(_np_cross_entropy(out, y), rel=1e-5)
    assert test_acc == pytest.approx(np.mean(out.argmax(1) == y), abs=1e-12)
    # batch_size (Keras' argument) does not change the row-weighted result
    loss7, acc7 = net.evaluate(X, y, batch_size=7, verbose=0)
    assert loss7 == pytest.approx(test_loss, rel=1e-5) and acc7 == pytest.approx(test_acc, abs=1e-12)
    # return_dict=True gives the dict form with the same numbers
    d = net.evaluate(X, y, verbose=0, return_dict=True)
    assert set(d) == {"loss", "accuracy"}
    assert d["loss"] == pytest.approx(test_loss, rel=1e-12) and d["accuracy"] == test_acc
    np.testing.assert_allclose(net.predict(X, batch_size=9, verbose=0), out, rtol=1e-6, atol=1e-6)


def test_evaluate_without_metrics_returns_the_scalar_loss():
    net, X, y = _classifier(1)
    net.compile("sgd", loss="crossentropy")
    loss = net.evaluate(X, y, verbose=0)
    assert isinstance(loss, float)
    assert loss == pytest.approx(_np_cross_entropy(net.predict(X), y), rel=1e-5)


def test_evaluate_list_follows_compile_order():
    def zeta(pred, target):
        return float(np.mean(np.asarray(pred.data if hasattr(pred, "data") else pred)[:, 0]))

    def alpha(pred, target):
        return float(np.mean(np.asarray(target)))

    net, X, y = _classifier(2)
    net.compile("sgd", loss="crossentropy", metrics=[zeta, alpha])
    loss, z, a = net.evaluate(X, y, verbose=0)
    out = net.predict(X)
    assert loss == pytest.approx(_np_cross_entropy(out, y), rel=1e-5)
    assert z == pytest.approx(out[:, 0].mean(), rel=1e-5)
    assert a == pytest.approx(y.mean(), rel=1e-12)


def test_fit_validation_still_reports_val_metrics():
    net, X, y = _classifier(3)
    net.compile("sgd", loss="crossentropy", metrics=["accuracy"])
    hist = net.fit(X[:50], y[:50], epochs=1, batch_size=10, verbose=0, validation_data=(X[50:], y[50:]))
    val_loss, val_acc = net.evaluate(X[50:], y[50:], verbose=0)
    assert hist.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-12)
    assert hist.history["val_accuracy"][-1] == val_acc


def test_evaluate_verbose_is_validated_and_two_prints_one_line(capsys):
    net, X, y = _classifier(4)
    net.compile("sgd", loss="crossentropy")
    with pytest.raises(ValueError, match="evaluate: verbose"):
        net.evaluate(X, y, verbose=5)
    with pytest.raises(ValueError, match="predict: verbose"):
        net.predict(X, verbose="loud")
    capsys.readouterr()
    loss = net.evaluate(X, y, verbose=2)
    assert f"loss: {loss:.4f}" in capsys.readouterr().out


# ---------------------------------------------------------------------- B3
KERAS_CLASS_NAMES = {
    "Zeros": "zeros", "Ones": "ones", "Constant": "constant", "RandomNormal": "random_normal",
    "TruncatedNormal": "truncated_normal", "RandomUniform": "random_uniform", "VarianceScaling": "variance_scaling",
    "GlorotNormal": "glorot_normal", "GlorotUniform": "glorot_uniform", "HeNormal": "he_normal",
    "HeUniform": "he_uniform", "LecunNormal": "lecun_normal", "LecunUniform": "lecun_uniform",
}


@pytest.mark.parametrize("class_name,snake", sorted(KERAS_CLASS_NAMES.items()))
def test_keras_class_name_strings_are_the_snake_case_initializers(class_name, snake):
    a, b = init.get(class_name), init.get(snake)
    assert a == b
    np.testing.assert_array_equal(a((40, 30), rng=np.random.default_rng(5)), b((40, 30), rng=np.random.default_rng(5)))
    assert init.from_config({"name": class_name}) == b


def test_keras_class_names_have_keras_distributions():
    # HeNormal: truncated normal at 2 stddev with post-truncation std sqrt(2 / fan_in)
    w = init.get("HeNormal")((400, 500), dtype=np.float64, rng=np.random.default_rng(0))
    std = np.sqrt(2.0 / 500)
    assert w.std() == pytest.approx(std, rel=0.02)
    assert np.abs(w).max() <= 2 * std / init.TRUNCATED_STD_FACTOR + 1e-12
    # RandomNormal: Keras' stddev 0.05
    r = init.get("RandomNormal")((300, 300), dtype=np.float64, rng=np.random.default_rng(1))
    assert r.std() == pytest.approx(0.05, rel=0.02)
    layer = nn.Dense(6, 4, kernel_initializer="GlorotUniform")
    limit = np.sqrt(6.0 / (6 + 4))
    assert np.abs(layer.weight.numpy()).max() <= limit


# ---------------------------------------------------------------------- B4
def _bn_checkpoint(tmp_path, name="net.safetensors"):
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm(4))
    net.train()
    net(np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32))
    path = str(tmp_path / name)
    net.save(path)
    return net, path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -0.5])
def test_invalid_running_var_is_refused(tmp_path, bad):
    _, path = _bn_checkpoint(tmp_path)
    tensors, meta = st.load_file(path)
    tensors["1.running_var"] = tensors["1.running_var"].copy()
    tensors["1.running_var"][1] = bad
    st.save_file(tensors, path, meta)  # re-signed: only the value check can refuse it
    with pytest.raises(CheckpointError, match=r"'1\.running_var' holds a (negative|non-finite) variance"):
        gradcore.load(path)


def _edit_header(path, edit):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header["__metadata__"])
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("checksum"),
    lambda m: m.update({"checksum_": m.pop("checksum")}),
    lambda m: m.update({"Checksum": m.pop("checksum")}),
], ids=["removed", "renamed", "recased"])
def test_gradcore2_checkpoint_without_its_checksum_is_refused(tmp_path, edit):
    _, path = _bn_checkpoint(tmp_path)
    _edit_header(path, edit)
    with pytest.raises(CheckpointError, match="must carry its 'checksum'"):
        gradcore.load(path)


def test_safetensors_package_files_without_format_still_read(tmp_path):
    sn = pytest.importorskip("safetensors.numpy")
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], dtype=np.int64)}
    path = str(tmp_path / "plain.safetensors")
    sn.save_file(arrays, path)
    got, meta = st.load_file(path, signed_formats=("gradcore-2",))
    assert meta == {}
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)


# ---------------------------------------------------------------------- B5
def test_every_byte_flip_of_an_npz_checkpoint_loads_identically_or_is_refused(tmp_path):
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(2, 2))
    path = str(tmp_path / "net.npz")
    net.save(path)
    good = {k: v.copy() for k, v in net.state_dict().items()}
    raw = open(path, "rb").read()
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(0, len(raw), 7):
        flipped = bytearray(raw)
        flipped[i] ^= 0x55
        with open(path, "wb") as f:
            f.write(flipped)
        try:
            loaded = gradcore.load(path)
        except CheckpointError as exc:
            assert path in str(exc), f"byte {i}: the error does not name the file: {exc}"
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"byte {i} flipped: {type(exc).__name__}: {exc}")
        state = loaded.state_dict()
        assert set(state) == set(good), f"byte {i}"
        for k in good:
            np.testing.assert_array_equal(np.asarray(state[k]), good[k], err_msg=f"byte {i} flipped, tensor {k}")
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 0


# ---------------------------------------------------------------------- B8
def test_cross_entropy_refuses_bool_targets_like_torch():
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    labels = np.array([True, False, True])
    with pytest.raises(RuntimeError):
        torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    with pytest.raises(TypeError, match="cross_entropy.*bool"):
        F.cross_entropy(gradcore.Tensor(logits), labels)
    with pytest.raises(TypeError, match="cross_entropy.*bool"):
        F.cross_entropy(gradcore.Tensor(logits), np.eye(2, dtype=bool)[[0, 1, 0]])
    with pytest.raises(TypeError, match="cross_entropy.*bool"):
        losses.CrossEntropyLoss()(gradcore.Tensor(logits), labels)
    # the int64 form of the same labels still matches torch
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels.astype(np.int64))).item()
    got = F.cross_entropy(gradcore.Tensor(logits), labels.astype(np.int64)).item()
    assert got == pytest.approx(expected, rel=1e-6)
