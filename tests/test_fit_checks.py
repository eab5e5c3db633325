"""fit's up-front label check, copies of callbacks, checkpoints of optimizers over part of a
network and fresh gradients of untrained layers (review session 15's findings, mended).
Oracles: the data rows placed by hand, NumPy norms of gradients recomputed per batch,
and the uncopied twin of a loaded network."""
import pickle

import numpy as np
import pytest

import gradcore
from gradcore import losses, nn, optim
from gradcore.callbacks import Callback, EarlyStopping, History


def _net(loss="cross_entropy", out=3):
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 8, "relu"), nn.BatchNorm(8), nn.Dense(8, out), dtype=np.float64)
    net.compile(optim.Adam(net.parameters(), lr=0.1), loss)
    return net


def _values(net):
    return {k: np.array(v) for k, v in net.state_dict().items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------------- labels checked before the first batch
@pytest.mark.parametrize("compiled", [True, "auto", False])
def test_a_bad_validation_label_is_refused_before_training(compiled):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    vy = rng.integers(0, 3, 6)
    vy[4] = -2
    net = _net()
    before = _values(net)
    with pytest.raises(ValueError, match=r"y_val .*label -2 at row 4\b"):
        net.fit(X, y, validation_data=(rng.standard_normal((6, 5)), vy), epochs=1, batch_size=4, verbose=0,
                compiled=compiled)
    _same(before, _values(net))


@pytest.mark.parametrize("shuffle", [True, False])
def test_the_row_named_is_the_data_row_with_validation_split_and_shuffling(shuffle):
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((30, 5)), rng.integers(0, 3, 30)
    y[27] = 3  # in the held-out rows of validation_split=0.2 (24 train rows)
    net = _net()
    before = _values(net)
    with pytest.raises(ValueError, match=r"label 3 at row 27\b"):
        net.fit(X, y, validation_split=0.2, epochs=1, batch_size=4, verbose=0, shuffle=shuffle, compiled=False)
    _same(before, _values(net))


def test_ignore_index_labels_pass_the_check_and_fractional_labels_do_not():
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    net = _net()
    y_ignored = y.copy()
    y_ignored[5] = -100  # CrossEntropyLoss' default ignore_index: that row is left out of the loss
    net.fit(X, y_ignored, epochs=1, batch_size=8, verbose=0, shuffle=False)
    net = _net()
    with pytest.raises(ValueError, match=r"whole class indices, got 1\.5 at row 9\b"):
        net.fit(X, np.where(np.arange(16) == 9, 1.5, y.astype(np.float64)), epochs=1, batch_size=8, verbose=0,
                compiled=False)


def test_sparse_categorical_labels_of_shape_n_1_are_checked():
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((12, 5)), rng.integers(0, 3, (12, 1))
    y[11, 0] = 3
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 3, "softmax"), dtype=np.float64)
    net.compile(optim.SGD(net.parameters(), lr=0.1), losses.SparseCategoricalCrossentropy())
    before = _values(net)
    with pytest.raises(ValueError, match=r"label 3 at row 11\b"):
        net.fit(X, y, epochs=1, batch_size=4, verbose=0, compiled=False)
    _same(before, _values(net))


# ---------------------------------------------------------------------- callbacks through pickle
def test_an_unpickled_early_stopping_is_detached_and_works_in_the_next_fit():
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    net = _net()
    es = EarlyStopping(monitor="loss", patience=0, restore_best_weights=True)
    hist = net.fit(X, y, epochs=3, batch_size=8, verbose=0, callbacks=[es])
    es2, hist2 = pickle.loads(pickle.dumps((es, hist)))
    assert es2.model is None and es2.optimizer is None and isinstance(hist2, History)
    assert hist2.history == hist.history and es2.best == es.best
    assert es.model is net  # the original keeps its network
    net.fit(X, y, epochs=2, batch_size=8, verbose=0, callbacks=[es2])
    assert es2.model is net


# ---------------------------------------------------------------------- checkpoints
def test_a_head_only_checkpoint_without_optimizer_state_builds_the_optimizer_over_the_head(tmp_path):
    net = _net()
    net.compile(optim.Adam(net[2].parameters(), lr=0.1), "cross_entropy")
    path = str(tmp_path / "head.safetensors")
    net.save(path, include_optimizer=False)
    loaded = gradcore.load(path)
    held = {id(p) for p in loaded.optimizer.params}
    assert held == {id(p) for p in loaded[2].parameters()}


def test_saving_an_optimizer_over_another_networks_parameters_is_refused(tmp_path):
    net, other = _net(), _net()
    net.compile(optim.Adam(other.parameters(), lr=0.1), "cross_entropy")
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="not parameters of this Sequential"):
        net.save(str(path))
    assert not path.exists()


def test_residual_checkpoints_with_and_without_a_projection_still_load(tmp_path):
    gradcore.manual_seed(0)
    nets = [nn.Sequential(nn.Residual([nn.Dense(6, 4, "relu"), nn.BatchNorm(4), nn.Dense(4, 9)]), nn.Dense(9, 2)),
            nn.Sequential(nn.Residual(nn.Sequential(nn.LayerNorm(6), nn.Dense(6, 6, "tanh"), nn.Dropout(0.1))))]
    assert "0.projection.weight" in nets[0].state_dict() and "0.projection.weight" not in nets[1].state_dict()
    for i, net in enumerate(nets):
        path = str(tmp_path / f"r{i}.safetensors")
        net.save(path)
        _same(_values(net), _values(gradcore.load(path)))


def test_a_nested_residual_projection_is_counted_before_building(tmp_path):
    from gradcore.safetensors import load_file, save_file

    net = nn.Sequential(nn.Dense(3, 400), nn.Residual(nn.Sequential(nn.BatchNorm(400), nn.Dense(400, 300, "relu"))))
    good, bad = str(tmp_path / "g.safetensors"), str(tmp_path / "b.safetensors")
    net.save(good)
    tensors, meta = load_file(good)
    save_file({k: v for k, v in tensors.items() if "projection" not in k}, bad, meta)
    with pytest.raises(gradcore.CheckpointError, match="needs at least"):
        gradcore.load(bad)


# ---------------------------------------------------------------------- fresh gradients of untrained layers
def body_and_head():
    """Dense 6-8-8-3 (relu) in float64 from manual_seed(0): a body and a head (net[2]) that
    an optimizer may train alone."""
    gradcore.manual_seed(0)
    return nn.Sequential(nn.Dense(6, 8, "relu"), nn.Dense(8, 8, "relu"), nn.Dense(8, 3), dtype=np.float64)


class _BodyGradNorms(Callback):
    def __init__(self):
        self.norms = []

    def on_after_backward(self, batch, logs=None):
        self.norms.append(float(np.linalg.norm(self.model[0].weight.grad)))


@pytest.mark.parametrize("k", [1, 2])
def test_compiled_and_eager_fit_give_a_head_only_optimizer_the_same_fresh_body_gradients(k):
    """The body's gradient each step is that of its accumulation group alone (NumPy norm of
    a recomputation from zero), eagerly and through the plan (compiled=True runs the hook)."""
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((24, 6)), rng.integers(0, 3, 24)
    runs = []
    for compiled in (True, False):
        net = body_and_head()
        net.compile(optim.Adam(net[2].parameters(), lr=0.0), "cross_entropy")
        rec = _BodyGradNorms()
        net.fit(X, y, epochs=2, batch_size=4, verbose=0, shuffle=False, callbacks=[rec], compiled=compiled,
                accumulate_steps=k)
        runs.append(rec.norms)
    want = []
    for first in range(0, 24, 4 * k):
        for p in net.parameters():
            p.grad = None
        net.loss(net(X[first:first + 4 * k]), y[first:first + 4 * k]).backward()
        want.append(float(np.linalg.norm(net[0].weight.grad)))
    np.testing.assert_allclose(runs[0], want * 2, rtol=1e-12)
    np.testing.assert_allclose(runs[1], want * 2, rtol=1e-12)
