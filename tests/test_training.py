"""compile / fit / evaluate / predict, callbacks, accumulation, save / load."""
import numpy as np
import pytest

import gradcore
import gradcore.functional as F
from gradcore import nn, optim
from gradcore.datasets import make_classification, train_test_split


def small_net(dtype=np.float64, seed=0, dropout=0.0):
    gradcore.manual_seed(seed)
    layers = [nn.Dense(6, 8, activation="relu", dtype=dtype), nn.BatchNorm(8, dtype=dtype)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Dense(8, 3, dtype=dtype)]
    return nn.Sequential(*layers)


def data(n=64, d=6, k=3, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, k, n)


def test_fit_matches_hand_written_tensor_training():
    """A Sequential trained by fit equals the same network written with Tensor / F
    (float64, 10 steps of 8 samples, to 1e-9)."""
    X, y = data(n=80)
    net = small_net()
    ref = {k: v.copy() for k, v in net.state_dict().items()}
    net.compile(optim.Adam(net.parameters(), lr=0.01, amsgrad=True, global_clip_norm=1.0), "crossentropy")
    net.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0)

    p = {k: gradcore.Tensor(v.copy(), requires_grad=not k.endswith(("running_mean", "running_var")))
         for k, v in ref.items() if not k.endswith("num_batches_tracked")}
    params = [p["0.weight"], p["0.bias"], p["1.weight"], p["1.bias"], p["2.weight"], p["2.bias"]]
    opt = optim.Adam(params, lr=0.01, amsgrad=True, global_clip_norm=1.0)
    bs = 8
    for start in range(0, 80, bs):
        xb, yb = X[start:start + bs], y[start:start + bs]
        h = F.linear(xb, p["0.weight"], p["0.bias"], activation="relu")
        h = F.batch_norm(h, p["1.running_mean"].data, p["1.running_var"].data, p["1.weight"], p["1.bias"],
                         training=True)
        loss = F.cross_entropy(F.linear(h, p["2.weight"], p["2.bias"]), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = net.state_dict()
    assert state.pop("1.num_batches_tracked") == 80 // bs
    for k, v in state.items():
        np.testing.assert_allclose(v, p[k].data, rtol=1e-9, atol=1e-12, err_msg=k)


def test_fit_reaches_90_percent_on_make_classification():
    # the documents' problem: make_classification(1000, 20, n_informative=15, n_redundant=5)
    X, y = make_classification(n_samples=1000, n_features=20, n_informative=15, n_redundant=5, random_state=42)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=42)
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(20, 64, activation="relu"), nn.BatchNorm(64), nn.Dropout(0.2),
                        nn.Dense(64, 2))
    net.compile(optim.Adam(net.parameters(), lr=3e-3, amsgrad=True, global_clip_norm=5.0), "crossentropy",
                metrics=["accuracy"])
    history = net.fit(X_tr, y_tr, epochs=15, batch_size=32, validation_split=0.1, verbose=0)
    assert history["loss"][-1] < history["loss"][0]
    assert "val_loss" in history.history and "val_accuracy" in history.history
    acc = net.evaluate(X_te, y_te, return_dict=True)["accuracy"]
    assert acc > 0.9, acc
    manual = np.mean(net.predict(X_te).argmax(1) == y_te)
    assert manual == pytest.approx(acc)


def test_accumulate_steps_equals_one_big_batch():
    X, y = data(n=32)
    # BatchNorm statistics depend on the batch size, so compare a net without it
    gradcore.manual_seed(5)
    lin_big = nn.Sequential(nn.Dense(6, 3, dtype=np.float64))
    gradcore.manual_seed(5)
    lin_acc = nn.Sequential(nn.Dense(6, 3, dtype=np.float64))
    lin_big.compile(optim.SGD(lin_big.parameters(), lr=0.1), "mse")
    lin_acc.compile(optim.SGD(lin_acc.parameters(), lr=0.1), "mse")
    Y = np.eye(3)[y]
    lin_big.fit(X, Y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    lin_acc.fit(X, Y, epochs=1, batch_size=8, accumulate_steps=4, shuffle=False, verbose=0)
    for k, v in lin_big.state_dict().items():
        np.testing.assert_allclose(lin_acc.state_dict()[k], v, rtol=1e-10, err_msg=k)


def test_nan_batch_is_skipped_and_leaves_network_unchanged():
    X, y = data()
    net = small_net()
    net.compile(optim.Adam(net.parameters(), lr=0.01, nonfinite="skip"), "crossentropy")
    before = {k: v.copy() for k, v in net.state_dict().items()}
    X_bad = X.copy()
    X_bad[3, 2] = np.nan
    with pytest.warns(RuntimeWarning, match="non-finite"):
        net.fit(X_bad, y, epochs=1, batch_size=64, verbose=0)
    assert net.optimizer.skipped_steps == 1
    for k, v in net.state_dict().items():
        assert v.tobytes() == before[k].tobytes(), k


def test_bad_input_errors():
    X, y = data()
    net = small_net()
    net.compile(optim.Adam(net.parameters()), "crossentropy")
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"6.*5|5.*6"):
        net.fit(X[:, :5], y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="out of range"):
        net.fit(X, y + 3, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="more than 1 value"):
        net.fit(X[:1], y[:1], epochs=1, batch_size=1, verbose=0)
    with pytest.raises(ValueError, match="samples"):
        net.fit(X, y[:10], epochs=1, verbose=0)
    for k, v in net.state_dict().items():
        assert v.tobytes() == before[k].tobytes(), k


def test_callbacks_early_stopping_and_terminate_on_nan():
    X, y = data(n=128)
    net = small_net()
    net.compile(optim.SGD(net.parameters(), lr=0.0), "crossentropy")  # lr 0: the loss cannot improve
    stop = gradcore.callbacks.EarlyStopping(monitor="loss", patience=1)
    seen = []

    class Record(gradcore.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, self.model is net, self.optimizer is net.optimizer, sorted(logs)))

    hist = net.fit(X, y, epochs=10, batch_size=32, shuffle=False, verbose=0, callbacks=[stop, Record()])
    # Keras 3: epoch 0 sets the best, epoch 1 does not improve and wait (1) >= patience (1)
    assert len(hist["loss"]) == 2 and stop.stopped_epoch == 1
    assert all(s[1] and s[2] for s in seen) and seen[0][3] == ["grad_norm", "loss", "lr", "skipped"]

    net2 = small_net()
    net2.compile(optim.SGD(net2.parameters(), lr=1e30, nonfinite="warn"), "mse")
    term = gradcore.callbacks.TerminateOnNaN()
    with pytest.warns(Warning):
        net2.fit(X, np.eye(3)[y] * 1e30, epochs=5, batch_size=16, verbose=0, callbacks=[term])
    assert term.terminated_at is not None


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_load_round_trip_is_bit_exact(tmp_path, suffix):
    X, y = data()
    net = small_net(dropout=0.1)
    net.compile(optim.Adam(net.parameters(), lr=0.01, amsgrad=True, clip_norm=1.0), "crossentropy")
    net.fit(X, y, epochs=2, batch_size=16, verbose=0)
    path = str(tmp_path / f"net{suffix}")
    net.save(path)
    loaded = gradcore.load(path)
    for k, v in net.state_dict().items():
        assert loaded.state_dict()[k].tobytes() == v.tobytes(), k
    a, b = net.optimizer.state_dict(), loaded.optimizer.state_dict()
    _assert_same_state(a, b)
    np.testing.assert_array_equal(net.predict(X), loaded.predict(X))
    # training continues identically from the checkpoint
    loaded.compile(loaded.optimizer, "crossentropy")
    gradcore.manual_seed(9)
    net.fit(X, y, epochs=1, batch_size=16, verbose=0)
    gradcore.manual_seed(9)
    loaded.fit(X, y, epochs=1, batch_size=16, verbose=0)
    for k, v in net.state_dict().items():
        assert loaded.state_dict()[k].tobytes() == v.tobytes(), k


def _assert_same_state(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_state(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    else:
        assert a == b


def test_truncated_checkpoint_is_refused_without_touching_the_network(tmp_path):
    net = small_net()
    path = str(tmp_path / "net.safetensors")
    net.save(path)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) - 17])
    other = small_net(seed=3)
    before = {k: v.copy() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError):
        gradcore.load(path)
    with pytest.raises(ValueError):
        other.load_weights(path)
    for k, v in other.state_dict().items():
        assert v.tobytes() == before[k].tobytes()


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path):
    small_net().save(str(tmp_path / "a.safetensors"))
    gradcore.manual_seed(0)
    wider = nn.Sequential(nn.Dense(6, 9, activation="relu", dtype=np.float64), nn.BatchNorm(9, dtype=np.float64),
                          nn.Dense(9, 3, dtype=np.float64))
    before = {k: v.copy() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        wider.load_weights(str(tmp_path / "a.safetensors"))
    for k, v in wider.state_dict().items():
        assert v.tobytes() == before[k].tobytes()


def test_reduce_lr_on_plateau_is_stepped_each_epoch():
    X, y = data(n=32)
    net = small_net()
    # a learning rate so small that the loss cannot improve by the relative threshold
    plateau = optim.ReduceLROnPlateau(1e-12, patience=0, factor=0.5, eps=0.0)
    net.compile(optim.SGD(net.parameters(), lr=plateau), "crossentropy")
    net.fit(X, y, epochs=3, batch_size=32, shuffle=False, verbose=0)
    assert plateau.scale == pytest.approx(0.25)
