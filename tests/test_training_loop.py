"""The training loop (gradcore/training.py): networks carry fit, train_step / test_step,
hook points and their logs, History / EarlyStopping (Keras 3), plateau schedules inside
wrappers, accumulation groups, drop_last, validation_split, skipped-step reporting,
output off a terminal, argument messages.

Oracles: NumPy gradients of an MSE linear model written here, fits on other batchings
that must give the same numbers (float64), and hand-computed EarlyStopping sequences.
"""
import io
import math
import sys
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import nn, optim
from gradcore.callbacks import Callback, EarlyStopping
from gradcore.optim import schedules


def linear_net(seed=3, d=4, k=2, l2=0.0):
    gradcore.manual_seed(seed)
    return nn.Sequential(nn.Dense(d, k, l2=l2, dtype=np.float64))


def regression(n=24, d=4, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal((n, k))


def in_layout(g_in_out, shape):
    """A (in, out) gradient in the layer's weight layout (either orientation)."""
    return g_in_out if g_in_out.shape == tuple(shape) else g_in_out.T


def mse_grads(net, X, Y):
    """NumPy gradients of mean((X W + b - Y)^2) for a one-Dense network: (dW (in, out), db)."""
    pred = net.predict(X)
    D = 2.0 * (pred - Y) / pred.size
    return X.T @ D, D.sum(0)


def state(net):
    return {k: v.copy() for k, v in net.state_dict().items()}


def assert_same_state(a, b, rtol=0.0):
    assert sorted(a) == sorted(b)
    for key in a:
        if rtol:
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-14, err_msg=key)
        else:
            assert a[key].tobytes() == b[key].tobytes(), key


# ---------------------------------------------------------------------- who carries fit
def test_layers_do_not_carry_fit_but_networks_and_model_subclasses_do():
    for layer in (nn.Dense(2, 3), nn.ReLU(), nn.BatchNorm(3), nn.Dropout(0.1)):
        for name in ("fit", "compile", "evaluate", "predict", "train_step"):
            assert not hasattr(layer, name), (type(layer).__name__, name)
    for net in (nn.Sequential(nn.Dense(2, 3)), nn.Residual([nn.Dense(3, 3)])):
        assert all(hasattr(net, n) for n in ("fit", "compile", "evaluate", "predict", "train_step", "test_step"))

    class Net(nn.Model):
        def __init__(self):
            super().__init__()
            self.dense = nn.Dense(4, 2, dtype=np.float64)

        def forward(self, x):
            return self.dense(x)

    X, Y = regression()
    gradcore.manual_seed(1)
    own = Net()
    ref = linear_net()
    ref.set_parameters({"0.weight": own.dense.weight.data, "0.bias": own.dense.bias.data})
    for net in (own, ref):
        net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
        net.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    np.testing.assert_allclose(own.dense.weight.data, ref[0].weight.data, rtol=1e-12)
    np.testing.assert_allclose(own.evaluate(X, Y, return_dict=True)["loss"], np.mean((own.predict(X) - Y) ** 2),
                               rtol=1e-12)


# ---------------------------------------------------------------------- train_step / test_step
def test_overridden_train_step_and_test_step_are_what_fit_and_evaluate_run():
    X, Y = regression(n=32)
    calls = {"train": 0, "test": 0}

    class Manual(nn.Sequential):
        def train_step(self, batch):
            # the Keras pattern: the step written out by hand
            calls["train"] += 1
            x, y = batch
            out = self(x)
            loss = self.compute_loss(x, y, out)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            return {"loss": float(loss.item()), "custom": 2.0}

        def test_step(self, batch):
            calls["test"] += 1
            logs = super().test_step(batch)
            logs["rows"] = float(len(batch[0]))
            return logs

    gradcore.manual_seed(3)
    manual = Manual(nn.Dense(4, 2, dtype=np.float64))
    default = linear_net()
    for net in (manual, default):
        net.compile(optim.SGD(net.parameters(), lr=0.05), "mse")
    h = manual.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0, validation_data=(X[:10], Y[:10]))
    default.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert calls == {"train": 8, "test": 2}
    assert h["custom"] == [2.0, 2.0] and h["val_rows"] == [10.0, 10.0]
    assert_same_state(state(manual), state(default))
    # batches of 10, 10, 10, 2
    assert manual.evaluate(X, Y, batch_size=10, return_dict=True)["rows"] == pytest.approx((3 * 10 * 10 + 2 * 2) / 32)


# ---------------------------------------------------------------------- hook points and logs
class Recorder(Callback):
    def __init__(self):
        self.events, self.grads, self.after_step = [], [], []

    def on_batch_begin(self, batch, logs=None):
        self.events.append(("begin", batch))

    def on_after_forward(self, batch, logs=None):
        self.events.append(("forward", batch, "loss" in logs))

    def on_after_backward(self, batch, logs=None):
        self.events.append(("backward", batch))
        self.grads.append({n: p.grad.copy() for n, p in self.model.named_parameters()})

    def on_after_step(self, batch, logs=None):
        self.events.append(("step", batch))
        self.after_step.append(dict(logs))

    def on_batch_end(self, batch, logs=None):
        self.events.append(("end", batch))


def test_hooks_run_in_order_with_complete_gradients_and_step_logs():
    X, Y = regression(n=16)
    net = linear_net()
    sched = schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    net.compile(optim.SGD(net.parameters(), lr=sched, global_clip_norm=0.05), "mse")
    rec = Recorder()
    expected, before = [], []

    class Before(Callback):  # the NumPy oracle, computed from the weights before each step
        def on_after_forward(self, batch, logs=None):
            sl = slice(batch * 8, batch * 8 + 8)
            expected.append(mse_grads(net, X[sl], Y[sl]))

    h = net.fit(X, Y, epochs=1, batch_size=8, shuffle=False, verbose=0, callbacks=[Before(), rec])
    assert rec.events == [("begin", 0), ("forward", 0, True), ("backward", 0), ("step", 0), ("end", 0),
                          ("begin", 1), ("forward", 1, True), ("backward", 1), ("step", 1), ("end", 1)]
    w_shape = net[0].weight.shape
    norms = []
    for t, ((gw, gb), grads, logs) in enumerate(zip(expected, rec.grads, rec.after_step)):
        # at on_after_backward the gradients are complete and not yet clipped
        np.testing.assert_allclose(grads["0.weight"], in_layout(gw, w_shape), rtol=1e-12)
        np.testing.assert_allclose(grads["0.bias"], gb, rtol=1e-12)
        norm = math.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2))
        norms.append(norm)
        assert logs["grad_norm"] == pytest.approx(norm, rel=1e-12)
        assert logs["clip_coef"] == pytest.approx(min(1.0, 0.05 / (norm + 1e-6)), rel=1e-9)
        assert logs["clip_coef"] < 1.0  # the clip is active, so the test can tell
        assert logs["lr"] == pytest.approx(0.1 * 0.5 ** t) and logs["skipped"] == 0
    assert h["lr"] == [pytest.approx(0.05)] and h["skipped"] == [0]
    assert h["grad_norm"] == [pytest.approx(np.mean(norms), rel=1e-12)]


def test_after_backward_sees_the_whole_accumulation_group():
    X, Y = regression(n=20)
    net = linear_net()
    net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
    rec = Recorder()
    groups = []

    class Before(Callback):
        def on_batch_begin(self, batch, logs=None):
            if batch % 2 == 0:  # groups of 2 batches of 4 rows: rows 0-7, 8-15, 16-19
                sl = slice(batch * 4, batch * 4 + 8)
                groups.append(mse_grads(net, X[sl], Y[sl]))

    h = net.fit(X, Y, epochs=1, batch_size=4, accumulate_steps=2, shuffle=False, verbose=0,
                callbacks=[Before(), rec])
    assert [e for e in rec.events if e[0] == "backward"] == [("backward", 1), ("backward", 3), ("backward", 4)]
    for (gw, gb), grads in zip(groups, rec.grads):
        np.testing.assert_allclose(grads["0.weight"], in_layout(gw, net[0].weight.shape), rtol=1e-12)
        np.testing.assert_allclose(grads["0.bias"], gb, rtol=1e-12)
    assert h["skipped"] == [0] and np.isfinite(h["grad_norm"][0])


# ---------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("n", [40, 36])
def test_last_accumulation_group_is_weighted_by_its_real_size(n):
    """Groups of 3 batches of 8: the last group holds 16 (n=40) or 12 rows in batches of
    8 and 4 (n=36); each group's step must equal one batch of all its rows."""
    X, Y = regression(n=n)
    acc, big = linear_net(), linear_net()
    for net in (acc, big):
        net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
    acc.fit(X, Y, epochs=2, batch_size=8, accumulate_steps=3, shuffle=False, verbose=0)
    big.fit(X, Y, epochs=2, batch_size=24, shuffle=False, verbose=0)
    assert_same_state(state(acc), state(big), rtol=1e-12)


# ---------------------------------------------------------------------- skipped steps
def test_skipped_steps_are_counted_logged_and_warned_once_by_parameter_name(capsys):
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(4, 5, activation="relu", dtype=np.float64), nn.ReLU(),
                        nn.Dense(5, 2, dtype=np.float64))
    net.compile(optim.SGD(net.parameters(), lr=0.05), "mse")
    X, Y = regression(n=32)

    class Poison(Callback):  # a non-finite gradient in 2.weight only, at two steps
        def on_after_backward(self, batch, logs=None):
            if (self.epoch, batch) in ((0, 1), (1, 2)):
                self.model[2].weight.grad[0, 0] = np.nan

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    steps = []

    class Steps(Callback):
        def on_after_step(self, batch, logs=None):
            steps.append(logs["skipped"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = net.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=2, callbacks=[Poison(), Steps()])
    mine = [w for w in caught if "non-finite" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    msg = str(mine[0].message)
    assert "'2.weight'" in msg and "epoch 1/2, batch 2/4" in msg
    assert mine[0].filename == __file__
    assert steps == [0, 1, 0, 0, 0, 0, 1, 0]
    assert h["skipped"] == [1, 1]
    assert net.optimizer.skipped_steps == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("skipped: 1" in line for line in lines)


# ---------------------------------------------------------------------- History and EarlyStopping
class Inject(Callback):
    """Puts a hand-chosen val_loss into the epoch logs (runs before EarlyStopping)."""

    def __init__(self, values, key="val_loss"):
        self.values, self.key = values, key

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


def run_with(values, epochs=None, **kwargs):
    X, Y = regression(n=16)
    net = linear_net()
    net.compile(optim.SGD(net.parameters(), lr=0.01), "mse")
    stop = EarlyStopping(**kwargs)
    snapshots = []

    class Snap(Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(state(net))

    h = net.fit(X, Y, epochs=epochs or len(values), batch_size=8, verbose=0,
                callbacks=[Inject(values), stop, Snap()])
    return h, stop, net, snapshots


def test_history_runs_last_and_records_keys_other_callbacks_add():
    h, _, _, _ = run_with([3.0, 2.0, 1.0], monitor="val_loss", patience=5)
    assert h["val_loss"] == [3.0, 2.0, 1.0]


@pytest.mark.parametrize("values, kwargs, stopped", [
    # wait counts every epoch and resets on improvement; stop when wait >= patience
    ([1.0, 0.9, 0.95, 0.93, 0.5, 0.4], dict(patience=2), 3),
    ([1.0, 1.0, 0.5], dict(patience=1), 1),
    ([1.0, 2.0, 3.0], dict(patience=0), 1),
    # min_delta: 0.95 is not better than 1.0 by more than 0.1
    ([1.0, 0.95, 0.9, 0.8], dict(patience=1, min_delta=0.1), 1),
    # mode max
    ([0.5, 0.6, 0.55, 0.58, 0.9], dict(patience=2, mode="max"), 3),
    # baseline 0.5 never beaten: improving epochs do not reset wait, a worse one stops at wait >= 3
    ([0.9, 0.8, 0.85, 0.7], dict(patience=3, baseline=0.5), 2),
    # without the baseline the same sequence runs to the end
    ([0.9, 0.8, 0.85, 0.7], dict(patience=3), None),
    # the first two epochs are not watched
    ([5.0, 5.0, 1.0, 1.0, 0.5], dict(patience=1, start_from_epoch=2), 3),
])
def test_early_stopping_follows_keras3(values, kwargs, stopped):
    h, stop, _, _ = run_with(values, **kwargs)
    if stopped is None:
        assert stop.stopped_epoch == 0 and len(h["loss"]) == len(values)
    else:
        assert stop.stopped_epoch == stopped and len(h["loss"]) == stopped + 1


def test_restore_best_weights_also_when_the_epochs_run_out():
    h, stop, net, snaps = run_with([1.0, 0.5, 0.7, 0.6], patience=10, restore_best_weights=True)
    assert stop.stopped_epoch == 0 and len(h["loss"]) == 4 and stop.best_epoch == 1
    assert_same_state(state(net), snaps[1])
    # and when it stops: the best epoch's weights, not the last ones
    h, stop, net, snaps = run_with([1.0, 0.5, 0.7, 0.8, 0.3], patience=2, restore_best_weights=True)
    assert stop.stopped_epoch == 3 and len(snaps) == 4
    assert_same_state(state(net), snaps[1])


# ---------------------------------------------------------------------- plateau inside a warmup
def test_reduce_lr_on_plateau_wrapped_in_warmup_is_stepped():
    X, Y = regression(n=16)
    for make in (lambda p: schedules.LinearWarmup(p, warmup_steps=1),
                 lambda p: schedules.LinearWarmup(p, 1).with_warmup(1)):
        net = linear_net()
        plateau = optim.ReduceLROnPlateau(1e-12, patience=0, factor=0.5, eps=0.0)
        net.compile(optim.SGD(net.parameters(), lr=make(plateau)), "mse")
        h = net.fit(X, Y, epochs=3, batch_size=16, shuffle=False, verbose=0)
        # epoch 0 sets the best, epochs 1 and 2 cannot improve by the relative threshold
        assert plateau.scale == pytest.approx(0.25)
        assert h["lr"][-1] == pytest.approx(1e-12 * 0.5)  # the rate the last step used


# ---------------------------------------------------------------------- validation and regularisation
def test_val_loss_includes_regularisation_like_keras():
    X, Y = regression(n=30)
    net = linear_net(l2=0.3)
    net.compile(optim.SGD(net.parameters(), lr=0.01), "mse")
    h = net.fit(X[:20], Y[:20], epochs=1, batch_size=10, verbose=0, validation_data=(X[20:], Y[20:]))
    w = net[0].weight.data
    expected = np.mean((net.predict(X[20:]) - Y[20:]) ** 2) + 0.3 * np.sum(w ** 2)
    assert h["val_loss"][0] == pytest.approx(expected, rel=1e-12)
    assert net.evaluate(X[20:], Y[20:], batch_size=3, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("split", [1e-17, 0.95])  # Keras' cut floor(5 * (1 - split)): 5 (1 - 1e-17 == 1.0), 0
def test_validation_split_leaving_no_rows_is_refused_before_training(split):
    X, Y = regression(n=5)
    net = linear_net()
    net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
    before = state(net)
    with pytest.raises(ValueError, match="validation_split"):
        net.fit(X, Y, epochs=1, validation_split=split, verbose=0)
    assert_same_state(state(net), before)


# ---------------------------------------------------------------------- a last batch of one under BatchNorm
def bn_net():
    gradcore.manual_seed(2)
    return nn.Sequential(nn.Dense(4, 6, dtype=np.float64), nn.BatchNorm(6, dtype=np.float64),
                         nn.Dense(6, 2, dtype=np.float64))


def test_last_batch_of_one_under_batchnorm_is_dropped_with_a_note_or_refused():
    X, Y = regression(n=33)
    a, b = bn_net(), bn_net()
    for net in (a, b):
        net.compile(optim.SGD(net.parameters(), lr=0.05), "mse")
    with pytest.warns(UserWarning, match="1 row") as rec:
        a.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert rec[0].filename == __file__
    b.fit(X[:32], Y[:32], epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert_same_state(state(a), state(b))

    c = bn_net()
    c.compile(optim.SGD(c.parameters(), lr=0.05), "mse")
    before = state(c)
    with pytest.raises(ValueError, match="drop_last"):
        c.fit(X, Y, epochs=1, batch_size=8, shuffle=False, verbose=0, drop_last=False)
    assert_same_state(state(c), before)  # refused before the first batch


def test_drop_last_true_drops_the_incomplete_batch():
    X, Y = regression(n=20)
    a, b = linear_net(), linear_net()
    for net in (a, b):
        net.compile(optim.SGD(net.parameters(), lr=0.05), "mse")
    a.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0, drop_last=True)
    b.fit(X[:16], Y[:16], epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert_same_state(state(a), state(b))


# ---------------------------------------------------------------------- output
def test_off_a_terminal_fit_prints_one_line_per_epoch(capsys):
    X, Y = regression(n=64)
    net = linear_net()
    net.compile(optim.SGD(net.parameters(), lr=0.01), "mse")
    for verbose in (1, 2):
        net.fit(X, Y, epochs=3, batch_size=4, verbose=verbose)
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
        assert "\r" not in out and err == ""
        assert all("loss: " in line and "lr: " in line and "skipped: 0" in line for line in lines)
    net.fit(X, Y, epochs=2, batch_size=4, verbose=0)
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_verbose_1_draws_a_progress_bar(monkeypatch, capsys):
    pytest.importorskip("tqdm")

    class TTY(io.StringIO):
        def isatty(self):
            return True

    tty = TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    X, Y = regression(n=16)
    net = linear_net()
    net.compile(optim.SGD(net.parameters(), lr=0.01), "mse")
    net.fit(X, Y, epochs=1, batch_size=4, verbose=1)
    assert "Epoch 1/1" in tty.getvalue() and capsys.readouterr().out == ""


# ---------------------------------------------------------------------- argument messages
@pytest.mark.parametrize("call, exc, pattern", [
    (lambda n, X, Y: n.fit(X, Y, batch_size=2.7, verbose=0), TypeError, r"batch_size.*float.*2\.7"),
    (lambda n, X, Y: n.fit(X, Y, batch_size=0, verbose=0), ValueError, r"batch_size.*>= 1.*0"),
    (lambda n, X, Y: n.fit(X, Y, epochs=-1, verbose=0), ValueError, r"epochs.*>= 0.*-1"),
    (lambda n, X, Y: n.fit(X, Y, epochs=2.0, verbose=0), TypeError, r"epochs.*float.*2\.0"),
    (lambda n, X, Y: n.fit(X, Y, accumulate_steps=0, verbose=0), ValueError, r"accumulate_steps.*>= 1.*0"),
    (lambda n, X, Y: n.fit(X, Y, verbose=3), ValueError, r"verbose.*3"),
    (lambda n, X, Y: n.fit(X, Y, validation_split=1.5, verbose=0), ValueError, r"validation_split.*1\.5"),
    (lambda n, X, Y: n.fit(X, Y, callbacks=[print], verbose=0), TypeError, r"callbacks\[0\]"),
    (lambda n, X, Y: n.fit(X, Y, validation_split="0.2", verbose=0), TypeError, r"validation_split.*str"),
    (lambda n, X, Y: n.predict(X, batch_size=0), ValueError, r"predict.*batch_size.*0"),
    (lambda n, X, Y: n.predict(X, batch_size=1.5), TypeError, r"predict.*batch_size.*float.*1\.5"),
    (lambda n, X, Y: n.evaluate(X, Y, batch_size=-2), ValueError, r"evaluate.*batch_size.*-2"),
    (lambda n, X, Y: n.evaluate(X, Y, batch_size="8"), TypeError, r"evaluate.*batch_size.*str"),
])
def test_bad_arguments_say_what_is_wrong(call, exc, pattern):
    X, Y = regression(n=16)
    net = linear_net()
    net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
    before = state(net)
    with pytest.raises(exc, match=pattern):
        call(net, X, Y)
    assert_same_state(state(net), before)


def test_a_train_step_that_returns_no_dict_is_named():
    class Bad(nn.Sequential):
        def train_step(self, batch):
            return 0.5

    X, Y = regression(n=8)
    gradcore.manual_seed(0)
    net = Bad(nn.Dense(4, 2, dtype=np.float64))
    net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
    with pytest.raises(TypeError, match="train_step must return a dict.*float"):
        net.fit(X, Y, verbose=0)


@pytest.mark.parametrize("kwargs, exc", [(dict(patience=1.5), TypeError), (dict(patience=-1), ValueError),
                                         (dict(start_from_epoch=-2), ValueError), (dict(mode="up"), ValueError)])
def test_early_stopping_refuses_bad_arguments(kwargs, exc):
    with pytest.raises(exc, match="EarlyStopping: " + next(iter(kwargs))):
        EarlyStopping(**kwargs)
