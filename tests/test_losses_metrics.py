"""Loss objects and metrics against NumPy references; runtime helpers."""
import numpy as np
import pytest

import gradcore
from gradcore import Tensor, gradcheck, losses, metrics


@pytest.fixture
def rng():
    return np.random.default_rng(21)


def test_mse_and_cross_entropy_objects(rng):
    p = Tensor(rng.standard_normal((6, 3)), requires_grad=True)
    t = rng.standard_normal((6, 3))
    assert losses.get("mse")(p, t).item() == pytest.approx(np.mean((p.data - t) ** 2))
    labels = rng.integers(0, 3, 6)
    logp = p.data - np.log(np.exp(p.data).sum(1, keepdims=True))
    assert losses.get("crossentropy")(p, labels).item() == pytest.approx(-logp[np.arange(6), labels].mean())
    # (N,) targets against an (N, 1) output are reshaped
    q = Tensor(rng.standard_normal((6, 1)))
    y = rng.standard_normal(6)
    assert losses.MSE()(q, y).item() == pytest.approx(np.mean((q.data[:, 0] - y) ** 2))


def test_binary_cross_entropy_from_probabilities(rng):
    probs = Tensor(rng.uniform(0.05, 0.95, (8, 1)), requires_grad=True)
    t = (rng.random((8, 1)) > 0.5).astype(float)
    ref = -np.mean(t * np.log(probs.data) + (1 - t) * np.log(1 - probs.data))
    loss = losses.BinaryCrossEntropy(from_logits=False)
    assert loss(probs, t).item() == pytest.approx(ref, rel=1e-12)
    assert gradcheck(lambda p: loss(p, t), [probs])
    # clipped at eps like Keras: a probability of exactly 0 or 1 gives a finite loss
    edge = Tensor(np.array([[0.0], [1.0]]))
    value = loss(edge, np.array([[1.0], [0.0]])).item()
    assert np.isfinite(value) and value == pytest.approx(-np.log(1e-7), rel=1e-6)
    logits = Tensor(rng.standard_normal((8, 1)))
    ref = np.mean(np.logaddexp(0, logits.data) - logits.data * t)
    assert losses.BinaryCrossEntropy(from_logits=True)(logits, t).item() == pytest.approx(ref, rel=1e-12)


def test_metrics(rng):
    scores = rng.standard_normal((10, 4))
    labels = rng.integers(0, 4, 10)
    expected = np.mean(scores.argmax(1) == labels)
    assert metrics.accuracy(scores, labels) == pytest.approx(expected)
    assert metrics.categorical_accuracy(scores, np.eye(4)[labels]) == pytest.approx(expected)
    logits = rng.standard_normal((10, 1))
    y01 = (rng.random(10) > 0.5).astype(float)
    assert metrics.accuracy(logits, y01, from_logits=True) == pytest.approx(np.mean((logits[:, 0] > 0) == (y01 > 0.5)))
    probs = 1 / (1 + np.exp(-logits))
    assert metrics.binary_accuracy(probs, y01) == pytest.approx(metrics.accuracy(logits, y01, from_logits=True))


def test_standalone_binary_accuracy_takes_probabilities_like_keras(rng):
    # Keras' binary_accuracy thresholds probabilities at 0.5; thresholding them at 0 (as
    # if they were logits) calls every row positive and reports the positive rate.
    probs = rng.random((200, 1))
    y01 = (rng.random(200) > 0.5).astype(float)
    expected = np.mean((probs[:, 0] > 0.5) == (y01 > 0.5))
    assert metrics.binary_accuracy(probs, y01) == pytest.approx(expected)
    assert metrics.accuracy(probs, y01) == pytest.approx(expected)
    assert metrics.binary_accuracy(probs, y01, threshold=0.3) == pytest.approx(np.mean((probs[:, 0] > 0.3) == (y01 > 0.5)))
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.get("f1")
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("hinge")


def test_threads_and_info():
    before = gradcore.get_num_threads()
    try:
        gradcore.set_num_threads(1)
        assert gradcore.get_num_threads() == 1
        from threadpoolctl import threadpool_info

        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
        with pytest.raises(ValueError):
            gradcore.set_num_threads(0)
    finally:
        gradcore.set_num_threads(before)
    info = gradcore.info()
    assert info["version"] == gradcore.__version__ and info["blas_ready"]
    assert {"blas", "threads", "simd", "openmp"} <= set(info)
    assert "relu" in gradcore.activation_names()


def test_source_checkout_finds_the_installed_extension(tmp_path, monkeypatch):
    import sys

    from gradcore._loader import installed_extension

    monkeypatch.setitem(sys.modules, "gradcore._C", sys.modules["gradcore._C"])  # restored after
    # any folder other than the real package stands for "the source checkout"
    module = installed_extension("gradcore", str(tmp_path))
    assert module is not None and hasattr(module, "dense_forward")
    assert installed_extension("no_such_package_here", str(tmp_path)) is None
