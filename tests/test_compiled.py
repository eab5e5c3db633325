"""The compiled training step (gradcore.compiled): the same numbers as the eager step.

Oracle: the eager path, step for step (``opt.zero_grad(); net.compute_loss(...).backward();
opt.step()``, with fit's BatchNorm rollback on a skipped step), over 50 steps: float64 to
1e-12, float32 to 1e-5 (parameters, optimizer state, BatchNorm statistics, losses, the
optimizer's reports).
"""
import copy
import gc as _gc
import math
import resource
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import _C, callbacks, losses, nn, optim
from gradcore.compiled import UnsupportedError, compile_step

pytestmark = pytest.mark.skipif(not hasattr(_C, "Plan"), reason="the extension has no compiled plans")

TOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


# ---------------------------------------------------------------------- helpers
def _norm_buffers(net):
    return [b for m in net.modules() if isinstance(m, nn.BatchNorm) for b in m._buffers.values()]


def eager_step(net, opt, loss_fn, x, y):
    """The eager step the compiled one reproduces (fit's rollback of a skipped step included)."""
    saved = [(b, b.copy()) for b in _norm_buffers(net)]
    opt.zero_grad()
    out = net(x)
    loss = loss_fn(out, y)
    reg = net.regularization_loss()
    if reg is not None:
        loss = loss + reg
    loss.backward()
    try:
        opt.step()
    except FloatingPointError:
        for b, s in saved:
            b[...] = s
        raise
    if opt.last_skipped:
        for b, s in saved:
            b[...] = s
    return float(loss.item())


def state_of(net, opt):
    """Everything a step changes, as float64 arrays by name."""
    out = {f"param {n}": np.array(p.data, dtype=np.float64) for n, p in net.named_parameters()}
    out.update({f"buffer {n}": np.array(b, dtype=np.float64) for n, b in net.named_buffers()})
    for s in opt._slots:
        out.update({f"state {k}": np.array(v, dtype=np.float64) for k, v in s.state.items()})
        out["steps"] = s.steps.astype(np.float64)
    out["report"] = np.array([opt.last_grad_norm, opt.last_clip_coef, float(opt.last_skipped), opt.skipped_steps,
                              opt._step_calls], dtype=np.float64)
    return out


def assert_same_state(a, b, tol, where=""):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=tol, atol=tol, err_msg=f"{where}: {key}")


def twin(make, dtype, seed=0):
    """Two identical networks (same initial values)."""
    gradcore.manual_seed(seed)
    a = make(dtype)
    b = copy.deepcopy(a)
    return a, b


def run_parity(make, loss, opt_factory, dtype, X, Y, steps=50, batch=16, plant=None, seed=7):
    """Train two copies of ``make(dtype)`` for ``steps`` steps, one eagerly and one compiled,
    on the same batches and the same random stream; compare everything after each step."""
    a, b = twin(make, dtype)
    loss_fn = losses.get(loss)
    oa, ob = opt_factory(a), opt_factory(b)
    step = compile_step(b, loss_fn, ob)
    tol = TOL[dtype]
    rng = np.random.default_rng(seed)
    la, lb = [], []
    for i in range(steps):
        idx = rng.integers(0, len(X), size=batch)
        x, y = X[idx].copy(), Y[idx].copy()
        if plant is not None and i in plant:
            x[0, 0] = np.nan
        gradcore.manual_seed(1000 + i)
        la.append(eager_step(a, oa, loss_fn, x, y))
        gradcore.manual_seed(1000 + i)
        lb.append(step(x, y))
        assert_same_state(state_of(a, oa), state_of(b, ob), tol, f"step {i}")
    np.testing.assert_allclose(lb, la, rtol=tol, atol=tol)
    assert [p._version for p in b.parameters()] == [p._version for p in a.parameters()]  # bump_version per step
    return a, b, oa, ob, step


def data(n=64, d=6, out=1, kind="regression", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if kind == "regression":
        Y = rng.normal(size=(n, out))
    elif kind == "binary":
        Y = (rng.random((n, out)) < 0.5).astype(np.float64)
    elif kind == "labels":
        Y = rng.integers(0, out, size=n)
    else:  # probabilities
        Y = rng.dirichlet(np.ones(out), size=n)
    return X, Y


def adam(net):
    return optim.Adam(net.parameters(), lr=1e-2)


# ---------------------------------------------------------------------- layers
ACTIVATIONS = ["relu", ("leaky_relu", 0.2), ("elu", 0.7), "selu", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh",
               "softplus", "swish", "linear"]


def _dense_acts(dtype):
    layers, width = [], 6
    for i, act in enumerate(ACTIVATIONS):
        name, alpha = act if isinstance(act, tuple) else (act, None)
        layers.append(nn.Dense(width, 5 + i % 3, name, alpha=alpha))
        width = 5 + i % 3
    layers.append(nn.Dense(width, 1))
    return nn.Sequential(*layers, dtype=dtype)


def _activation_layers(dtype):
    return nn.Sequential(nn.Dense(6, 8), nn.ReLU(), nn.Dense(8, 8), nn.LeakyReLU(0.3), nn.ELU(0.5), nn.SELU(),
                         nn.Sigmoid(), nn.Dense(8, 8), nn.Tanh(), nn.SiLU(), nn.GELU(), nn.GELU("tanh"),
                         nn.Softplus(), nn.Activation("leaky_relu", alpha=0.05), nn.Activation("linear"),
                         nn.Identity(), nn.Flatten(), nn.Dense(8, 8), nn.Activation("softmax"), nn.Dense(8, 8),
                         nn.Softmax(dim=1), nn.Dense(8, 8), nn.LogSoftmax(), nn.Activation("elu", alpha=0.3),
                         nn.Dense(8, 1), dtype=dtype)


def _prelu(dtype):
    return nn.Sequential(nn.Dense(6, 8), nn.PReLU(), nn.Dense(8, 8), nn.PReLU(8, init=0.1), nn.Dense(8, 1),
                         dtype=dtype)


def _batchnorm(dtype):
    return nn.Sequential(nn.Dense(6, 8), nn.BatchNorm(8), nn.ReLU(), nn.Dense(8, 8, "tanh"),
                         nn.BatchNorm1d(8, momentum=None), nn.Dense(8, 1), dtype=dtype)


def _layernorm(dtype):
    return nn.Sequential(nn.Dense(6, 8, "relu"), nn.LayerNorm(8), nn.Dense(8, 8),
                         nn.LayerNorm(8, elementwise_affine=False, eps=1e-3), nn.Dense(8, 1), dtype=dtype)


def _dropout(dtype):
    return nn.Sequential(nn.Dense(6, 16, "relu"), nn.Dropout(0.3), nn.Dense(16, 16, "relu"), nn.Dropout(0.0),
                         nn.Dropout(rate=0.5), nn.Dense(16, 16), nn.Residual([nn.Dropout(1.0)]), nn.Dense(16, 1),
                         dtype=dtype)


def _residual(dtype):
    return nn.Sequential(nn.Dense(6, 8, "relu"),
                         nn.Residual([nn.Dense(8, 8, "relu"), nn.Dense(8, 8)]),
                         nn.Residual([nn.Dense(8, 5, "tanh")]),  # a projection is made: widths differ
                         nn.Residual(nn.Sequential(nn.Dense(5, 5), nn.Residual([nn.Dense(5, 5, "gelu")]))),
                         nn.Dense(5, 1), dtype=dtype)


def _l2(dtype):
    return nn.Sequential(nn.Dense(6, 8, "relu", l2=1e-2), nn.Dense(8, 8, "tanh"), nn.Dense(8, 1, l2=3e-3),
                         dtype=dtype)


def _no_bias(dtype):
    return nn.Sequential(nn.Dense(6, 8, "relu", use_bias=False), nn.Linear(8, 8, bias=False), nn.Dense(8, 1),
                         dtype=dtype)


def _everything(dtype):
    return nn.Sequential(nn.Dense(6, 12, "relu"), nn.BatchNorm(12), nn.Dropout(0.2),
                         nn.Residual([nn.Dense(12, 12, "gelu"), nn.LayerNorm(12), nn.PReLU(12)]),
                         nn.Dense(12, 1, l2=1e-3), dtype=dtype)


def _width_learnt_later(dtype):
    # the input width is known only from the LayerNorm after three width-preserving layers
    return nn.Sequential(nn.Tanh(), nn.Dropout(0.2), nn.PReLU(), nn.LayerNorm(6, elementwise_affine=False),
                         nn.Dense(6, 4, "relu"), nn.Dense(4, 1), dtype=dtype)


LAYER_NETS = {"width_learnt_later": _width_learnt_later, "dense_activations": _dense_acts,
              "activation_layers": _activation_layers, "prelu": _prelu, "batchnorm": _batchnorm,
              "layernorm": _layernorm, "dropout": _dropout, "residual": _residual, "l2": _l2, "no_bias": _no_bias,
              "everything": _everything}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LAYER_NETS))
def test_layer_parity(name, dtype):
    X, Y = data()
    a, b, oa, ob, step = run_parity(LAYER_NETS[name], "mse", adam, dtype, X, Y)
    assert step.mode == "fused"


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_running_statistics_and_counter(dtype):
    X, Y = data()
    a, b, *_ = run_parity(_batchnorm, "mse", adam, dtype, X, Y, steps=20)
    for ma, mb in zip(a.modules(), b.modules()):
        if isinstance(ma, nn.BatchNorm):
            assert int(mb.num_batches_tracked) == int(ma.num_batches_tracked) == 20
            assert not np.allclose(mb.running_var, 1.0)  # they moved
            np.testing.assert_allclose(mb.running_mean, ma.running_mean, rtol=TOL[dtype], atol=TOL[dtype])


def test_dropout_masks_follow_the_seed():
    """The same gradcore seed gives the same masks (parity above); another seed other ones."""
    X, Y = data()
    gradcore.manual_seed(0)
    net = _dropout(np.float64)
    twin_net = copy.deepcopy(net)
    s1 = compile_step(net, "mse", adam(net))
    s2 = compile_step(twin_net, "mse", adam(twin_net))
    gradcore.manual_seed(1)
    l1 = s1(X[:16], Y[:16])
    gradcore.manual_seed(2)
    l2 = s2(X[:16], Y[:16])
    assert l1 != l2


# ---------------------------------------------------------------------- losses
def _head(act, width):
    def make(dtype):
        return nn.Sequential(nn.Dense(6, 8, "tanh"), nn.Dense(8, width, act), dtype=dtype)
    return make


def _head_layer(layer_cls, width):
    def make(dtype):
        return nn.Sequential(nn.Dense(6, 8, "tanh"), nn.Dense(8, width), layer_cls(), dtype=dtype)
    return make


LOSS_CASES = {
    "mse": ("mse", _head(None, 2), "regression", 2),
    "mse_column": (losses.MSELoss(), _head(None, 1), "regression", 1),
    "bce_with_logits": ("bce_with_logits", _head(None, 2), "binary", 2),
    "keras_bce_logits": (losses.BinaryCrossentropy(from_logits=True), _head(None, 1), "binary", 1),
    "torch_bce_probs": ("binary_cross_entropy", _head("sigmoid", 2), "binary", 2),
    "keras_bce_probs": ("binary_crossentropy", _head_layer(nn.Sigmoid, 1), "binary", 1),
    "ce_labels": ("cross_entropy", _head(None, 4), "labels", 4),
    "ce_probabilities": ("cross_entropy", _head(None, 4), "probabilities", 4),
    "keras_cce_logits": (losses.CategoricalCrossentropy(from_logits=True), _head(None, 4), "probabilities", 4),
    "keras_cce_probs": ("categorical_crossentropy", _head("softmax", 4), "probabilities", 4),
    "keras_sparse_logits": (losses.SparseCategoricalCrossentropy(from_logits=True), _head(None, 4), "labels", 4),
    "keras_sparse_probs": ("sparse_categorical_crossentropy", _head_layer(nn.Softmax, 4), "labels", 4),
    "log_softmax_head": ("mse", _head("log_softmax", 3), "regression", 3),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_loss_parity(case, dtype):
    loss, make, kind, width = LOSS_CASES[case]
    X, Y = data(out=width, kind=kind)
    run_parity(make, loss, adam, dtype, X, Y)


def test_sparse_labels_as_a_column_and_float_labels():
    X, Y = data(out=4, kind="labels")
    run_parity(_head_layer(nn.Softmax, 4), "sparse_categorical_crossentropy", adam, np.float64, X,
               Y.reshape(-1, 1), steps=5)
    run_parity(_head(None, 4), "cross_entropy", adam, np.float64, X, Y.astype(np.float64), steps=5)


# ---------------------------------------------------------------------- optimizers and clipping
OPTIMIZERS = {
    "sgd": lambda n: optim.SGD(n.parameters(), lr=0.05),
    "sgd_momentum": lambda n: optim.SGD(n.parameters(), lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "sgd_nesterov": lambda n: optim.SGD(n.parameters(), lr=0.05, momentum=0.8, nesterov=True),
    "adam": lambda n: optim.Adam(n.parameters(), lr=1e-2, weight_decay=1e-3),
    "amsgrad": lambda n: optim.Adam(n.parameters(), lr=1e-2, betas=(0.8, 0.99), amsgrad=True),
    "adamw": lambda n: optim.AdamW(n.parameters(), lr=1e-2, weight_decay=0.05),
    "rmsprop": lambda n: optim.RMSprop(n.parameters(), lr=1e-3),
    "rmsprop_centered": lambda n: optim.RMSprop(n.parameters(), lr=1e-3, centered=True, momentum=0.5,
                                                weight_decay=1e-3),
    "adagrad": lambda n: optim.Adagrad(n.parameters(), lr=0.05, lr_decay=1e-2, initial_accumulator_value=0.1),
    "adam_schedule": lambda n: optim.Adam(n.parameters(), lr=optim.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.5)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_parity(name, dtype):
    X, Y = data()
    *_, step = run_parity(_everything, "mse", OPTIMIZERS[name], dtype, X, Y)
    assert step.mode == "fused"


CLIPS = {
    "clip_value": dict(clip_value=0.05),
    "clip_norm": dict(clip_norm=0.1),
    "global_clip_norm": dict(global_clip_norm=0.2),
    "clip_norm_and_global": dict(clip_norm=0.3, global_clip_norm=0.2),
    "all_three": dict(clip_value=0.02, clip_norm=0.3, global_clip_norm=0.5),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_clipping_parity(name, dtype):
    X, Y = data()
    X = X * 10  # large gradients, so every clip bites
    a, b, oa, ob, step = run_parity(_batchnorm, "mse", lambda n: optim.Adam(n.parameters(), lr=1e-2, **CLIPS[name]),
                                    dtype, X, Y)
    if "global_clip_norm" in CLIPS[name]:
        assert ob.last_clip_coef < 1.0


# ---------------------------------------------------------------------- skipped steps
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_planted_steps_are_skipped_and_batchnorm_rolled_back(dtype):
    X, Y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default policy skips silently
        a, b, oa, ob, step = run_parity(_everything, "mse", adam, dtype, X, Y, steps=30, plant={3, 4, 17})
    assert ob.skipped_steps == oa.skipped_steps == 3
    assert ob.iterations == 27
    bn = b[1]
    assert int(bn.num_batches_tracked) == 27  # the skipped steps' counts were rolled back too


def test_skip_reports_like_step():
    X, Y = data()
    gradcore.manual_seed(0)
    net = _batchnorm(np.float64)
    opt = adam(net)
    step = compile_step(net, "mse", opt)
    x = X[:8].copy()
    step(x, Y[:8])
    before = state_of(net, opt)
    x[2, 1] = np.inf
    loss = step(x, Y[:8])
    assert math.isnan(loss) or math.isinf(loss) or loss >= 0
    assert opt.last_skipped is True and opt.skipped_steps == 1
    assert opt.last_nonfinite_param is net[0].weight
    assert not math.isfinite(opt.last_grad_norm)
    after = state_of(net, opt)
    for key in before:
        if key != "report":
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_nonfinite_policies():
    X, Y = data()
    x = X[:8].copy()
    x[0, 0] = np.nan
    for policy in ("warn", "raise"):
        gradcore.manual_seed(0)
        net = _batchnorm(np.float64)
        opt = optim.Adam(net.parameters(), lr=1e-2, nonfinite=policy)
        step = compile_step(net, "mse", opt)
        step(X[:8], Y[:8])
        before = state_of(net, opt)
        if policy == "warn":
            with pytest.warns(RuntimeWarning, match=r"non-finite gradient .* parameter 0 of shape \(8, 6\)"):
                step(x, Y[:8])
        else:
            with pytest.raises(FloatingPointError, match="the step was skipped"):
                step(x, Y[:8])
        assert opt.skipped_steps == 1
        after = state_of(net, opt)
        for key in before:
            if key != "report":
                np.testing.assert_array_equal(after[key], before[key], err_msg=f"{policy}: {key}")
        step(X[8:16], Y[8:16])  # and it trains on afterwards
        assert opt.iterations == 2


# ---------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulation_parity(dtype):
    """forward_backward(scale, accumulate) x k + apply_update == eager (loss * w).backward() x k + step()."""
    X, Y = data(n=80)
    a, b = twin(_everything, dtype)
    oa, ob = adam(a), adam(b)
    loss_fn = losses.get("mse")
    step = compile_step(b, loss_fn, ob)
    tol = TOL[dtype]
    sizes = [16, 16, 8]  # a group of three batches with a short last one
    for group in range(6):
        rows = np.random.default_rng(group).permutation(80)
        at = 0
        saved = [(buf, buf.copy()) for buf in _norm_buffers(a)]
        oa.zero_grad()
        plant = group == 3
        for j, n in enumerate(sizes):
            idx = rows[at:at + n]
            at += n
            x, y = X[idx].copy(), Y[idx]
            if plant and j == 1:
                x[3, 2] = np.nan
            w = n / sum(sizes)
            gradcore.manual_seed(50 * group + j)
            out = a(x)
            la = loss_fn(out, y) + a.regularization_loss()
            (la * w).backward()
            gradcore.manual_seed(50 * group + j)
            lb = step.forward_backward(x, y, scale=w, accumulate=j > 0)
            if not plant:
                np.testing.assert_allclose(lb, float(la.item()), rtol=tol, atol=tol)
        oa.step()
        if oa.last_skipped:
            for buf, s in saved:
                buf[...] = s
        norm = step.apply_update()
        assert (norm == oa.last_grad_norm) or math.isnan(norm) or abs(norm - oa.last_grad_norm) <= tol * (1 + norm)
        assert_same_state(state_of(a, oa), state_of(b, ob), tol, f"group {group}")
    assert ob.skipped_steps == 1


# ---------------------------------------------------------------------- fit
def _fit_net(dtype, metrics=("accuracy",), opt=None):
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(6, 16, "relu"), nn.BatchNorm(16), nn.Dropout(0.2), nn.Dense(16, 3), dtype=dtype)
    net.compile(opt(net) if opt else optim.Adam(net.parameters(), lr=1e-2, global_clip_norm=1.0), "cross_entropy",
                metrics=list(metrics))
    return net


def _fit_both(dtype, X, Y, **kw):
    out = []
    for compiled in (False, True):
        net = _fit_net(dtype, **kw.pop("net_kw", {}))
        gradcore.manual_seed(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            h = net.fit(X, Y, verbose=0, compiled=compiled, **kw)
        out.append((net, h, [str(w.message) for w in caught]))
    return out


def _assert_same_history(ha, hb, tol):
    assert ha.history.keys() == hb.history.keys()
    assert ha.epoch == hb.epoch
    for key in ha.history:
        np.testing.assert_allclose(hb.history[key], ha.history[key], rtol=tol, atol=tol, err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3])
def test_fit_compiled_matches_eager(dtype, k):
    X, Y = data(n=150, out=3, kind="labels")
    X[40, 2] = np.nan  # one batch of the first epoch is skipped
    (na, ha, wa), (nb, hb, wb) = _fit_both(dtype, X, Y, epochs=3, batch_size=16, validation_split=0.2,
                                          accumulate_steps=k)
    _assert_same_history(ha, hb, TOL[dtype])
    assert ha.history["skipped"][0] == 1 and hb.history["skipped"][0] == 1
    assert wa == wb and any("skipped a step" in w for w in wb)
    assert_same_state(state_of(na, na.optimizer), state_of(nb, nb.optimizer), TOL[dtype])
    assert all(p.grad is None for p in nb.parameters())


def test_fit_uses_the_plan_and_falls_back():
    X, Y = data(n=64, out=3, kind="labels")
    calls = []

    class Spy(callbacks.Callback):
        def on_after_step(self, batch, logs=None):
            calls.append(sorted(logs))

    net = _fit_net(np.float64)
    from gradcore import compiled as C

    seen = []
    original = C._FitRunner.train_batch

    def counting(self, idx, loop):
        seen.append(len(idx))
        return original(self, idx, loop)

    C._FitRunner.train_batch = counting
    try:
        net.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[Spy()])
        assert seen == [16] * 4
        assert calls[0] == ["accuracy", "clip_coef", "grad_norm", "loss", "lr", "skipped"]
        seen.clear()
        net.fit(X, Y, epochs=1, batch_size=16, verbose=0, compiled=False)
        assert seen == []

        class Grads(callbacks.Callback):
            norms = []

            def on_after_backward(self, batch, logs=None):
                self.norms.append(sum(float(np.sum(p.grad ** 2)) for p in self.model.parameters()))

        net.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[Grads()])  # auto: eager
        assert seen == [] and len(Grads.norms) == 4
        net.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[Grads()], compiled=True)  # split
        assert seen == [16] * 4 and len(Grads.norms) == 8 and all(n > 0 for n in Grads.norms)
    finally:
        C._FitRunner.train_batch = original


def test_fit_with_hooks_compiled_true_matches_eager():
    class Grads(callbacks.Callback):
        def __init__(self):
            self.seen = []

        def on_after_backward(self, batch, logs=None):
            self.seen.append(np.concatenate([p.grad.ravel() for p in self.model.parameters()]))

    X, Y = data(n=96, out=3, kind="labels")
    results = []
    for compiled in (False, True):
        net = _fit_net(np.float64)
        cb = Grads()
        gradcore.manual_seed(3)
        h = net.fit(X, Y, epochs=2, batch_size=16, verbose=0, callbacks=[cb], compiled=compiled, accumulate_steps=2)
        results.append((h, cb.seen))
    _assert_same_history(results[0][0], results[1][0], 1e-12)
    for ga, gb in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(gb, ga, rtol=1e-12, atol=1e-12)


def test_fit_compiled_true_refuses_what_it_cannot_run(tmp_path):
    X, Y = data(n=32, out=3, kind="labels")
    from gradcore.monitor import CSVLogger, GradientMonitor

    net = _fit_net(np.float64)
    # (a GradientMonitor's statistics are computed by the plan, tests/test_monitor_compiled.py;
    # one keeping histograms needs the eager arrays)
    monitor = GradientMonitor(net, histograms=True)
    with pytest.raises(UnsupportedError, match=r"GradientMonitor: histograms=True"):
        net.fit(X, Y, epochs=1, verbose=0, callbacks=[monitor], compiled=True)
    h = net.fit(X, Y, epochs=1, verbose=0, callbacks=[monitor])  # auto: eager, works
    assert len(h.history["loss"]) == 1 and monitor.step == 1
    monitor.close()  # takes its taps off the layers
    logged = net.fit(X, Y, epochs=1, verbose=0, callbacks=[CSVLogger(str(tmp_path / "log.csv"))], compiled=True)
    assert len(logged.history["loss"]) == 1  # a logger alone does not keep fit eager
    odd = nn.Sequential(nn.Dense(6, 3), nn.LayerNorm((3,)), dtype=np.float64)
    odd.compile("adam", losses.CrossEntropyLoss(label_smoothing=0.1))
    with pytest.raises(UnsupportedError, match="label_smoothing=0.1"):
        odd.fit(X, Y, epochs=1, verbose=0, compiled=True)
    assert len(odd.fit(X, Y, epochs=1, verbose=0).history["loss"]) == 1
    with pytest.raises(ValueError, match="compiled must be"):
        odd.fit(X, Y, compiled="yes")
    flat_first = nn.Sequential(nn.Flatten(), nn.Dense(6, 3), dtype=np.float64)
    flat_first.compile("adam", "cross_entropy")
    with pytest.raises(UnsupportedError, match=r"shape \(32, 2, 3\); the plan takes 2-d input"):
        flat_first.fit(X.reshape(32, 2, 3), Y, epochs=1, verbose=0, compiled=True)
    assert len(flat_first.fit(X.reshape(32, 2, 3), Y, epochs=1, verbose=0).history["loss"]) == 1


def test_fit_raise_policy_leaves_the_same_state():
    X, Y = data(n=64, out=3, kind="labels")
    X[20, 0] = np.nan
    states = []
    for compiled in (False, True):
        net = _fit_net(np.float64, opt=lambda n: optim.Adam(n.parameters(), lr=1e-2, nonfinite="raise"))
        gradcore.manual_seed(3)
        with pytest.raises(FloatingPointError, match="non-finite gradient"):
            net.fit(X, Y, epochs=2, batch_size=16, verbose=0, compiled=compiled)
        states.append(state_of(net, net.optimizer))
        assert all(p.grad is None for p in net.parameters())
    assert_same_state(states[0], states[1], 0.0)


# ---------------------------------------------------------------------- split mode and rebinding
SPLIT_CASES = {
    "record_stats": lambda n: _with(optim.Adam(n.parameters(), lr=1e-2), record_stats=True),
    "grad_noise": lambda n: optim.SGD(n.parameters(), lr=0.05, grad_noise=(0.01, 0.55, 3)),
    "two_groups": lambda n: optim.Adam([{"params": n[0].parameters(), "lr": 1e-3},
                                        {"params": list(n.parameters())[2:]}], lr=1e-2),
}


def _with(obj, **attrs):
    for k, v in attrs.items():
        setattr(obj, k, v)
    return obj


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_split_mode_parity(case):
    X, Y = data()
    *_, ob, step = run_parity(_batchnorm, "mse", SPLIT_CASES[case], np.float64, X, Y, steps=20, plant={6})
    assert step.mode == "split"
    assert {"record_stats": "record_stats", "grad_noise": "grad_noise", "two_groups": "2 parameter groups"}[case] \
        in step.split_reason


def test_rebinds_when_the_optimizer_changes():
    X, Y = data()
    a, b = twin(_everything, np.float64)
    oa, ob = adam(a), adam(b)
    step = compile_step(b, "mse", ob)
    loss_fn = losses.get("mse")
    saved = None
    for i in range(24):
        x, y = X[i % 4 * 16:(i % 4 + 1) * 16], Y[i % 4 * 16:(i % 4 + 1) * 16]
        if i == 5:
            saved = (copy.deepcopy(oa.state_dict()), copy.deepcopy(ob.state_dict()))
        if i == 9:  # back to step 5's state: new state arrays, new step counts
            oa.load_state_dict(saved[0])
            ob.load_state_dict(saved[1])
        if i == 12:
            for o in (oa, ob):
                o.param_groups[0]["betas"] = (0.5, 0.9)
                o.lr = 3e-3
        if i == 15:
            for o in (oa, ob):
                o.record_stats = True
        if i == 18:
            for o in (oa, ob):
                o.record_stats = False
        if i == 20:  # an eager step in between
            gradcore.manual_seed(i)
            eager_step(b, ob, loss_fn, x, y)
            gradcore.manual_seed(i)
            eager_step(a, oa, loss_fn, x, y)
        gradcore.manual_seed(100 + i)
        eager_step(a, oa, loss_fn, x, y)
        gradcore.manual_seed(100 + i)
        step(x, y)
        assert step.mode == ("split" if 15 <= i < 18 else "fused"), i
        assert_same_state(state_of(a, oa), state_of(b, ob), 1e-12, f"step {i}")


def test_replaced_parameter_array_is_refused():
    X, Y = data()
    gradcore.manual_seed(0)
    net = _l2(np.float64)
    step = compile_step(net, "mse", adam(net))
    step(X[:8], Y[:8])
    net[0].weight.data = net[0].weight.data.copy()
    with pytest.raises(RuntimeError, match="no longer views"):
        step(X[:8], Y[:8])


# ---------------------------------------------------------------------- memory
def _rss_kb():
    """Resident set size now (kB); 0 where /proc is missing (the RSS check then passes)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() // 1024
    except OSError:
        return 0


def test_200_steps_allocate_nothing_after_the_first():
    X, Y = data(n=800, d=20)
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(20, 50, "relu"), nn.BatchNorm(50), nn.Dropout(0.1), nn.Dense(50, 40, "tanh"),
                        nn.Dense(40, 1), dtype=np.float32)
    opt = optim.Adam(net.parameters(), lr=1e-3, amsgrad=True, global_clip_norm=5.0)
    step = compile_step(net, "mse", opt)
    x, y = X[:32].astype(np.float32), Y[:32].astype(np.float32)
    for _ in range(5):
        step(x, y)
    _gc.collect()
    gradcore.reset_memory_stats()
    rss0 = _rss_kb()
    for _ in range(200):
        step(x, y)
    stats = gradcore.memory_stats()
    assert stats["plan_allocations"] == 0
    assert stats["plan_bytes"] >= step.nbytes > 0
    assert _rss_kb() - rss0 < 512  # kB: flat, give or take the allocator's pages
    step(X[:64].astype(np.float32), Y[:64].astype(np.float32))  # a new batch size: its workspace
    assert gradcore.memory_stats()["plan_allocations"] > 0


# ---------------------------------------------------------------------- bad input
def test_bad_input_raises_and_changes_nothing():
    X, Y = data(out=3, kind="labels")
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(6, 8, "relu"), nn.BatchNorm(8), nn.Dense(8, 3), dtype=np.float64)
    opt = adam(net)
    step = compile_step(net, "cross_entropy", opt)
    step(X[:8], Y[:8])
    before = state_of(net, opt)
    bad = [
        ((X[:8, :5], Y[:8]), ValueError, r"Dense layer 0 .* expected input with 6 features, got shape \(8, 5\)"),
        ((X[:8].astype(str), Y[:8]), TypeError, "must be numeric"),
        ((X[:8], Y[:7]), ValueError, r"target has shape \(7,\)"),
        ((X[:8], Y[:8].astype(np.int32) + 3), ValueError, "out of range"),
        ((X[:8], np.full(8, -1.0)), ValueError, "out of range"),
        ((X[:1], Y[:1]), ValueError, "more than 1 value per channel"),
        ((X[:8, None], Y[:8]), ValueError, r"expected input \(batch, 6\)"),
        ((X[:0], Y[:0]), ValueError, "empty batch"),
    ]
    for (x, y), exc, match in bad:
        with pytest.raises(exc, match=match):
            step(x, y)
        with pytest.raises(exc, match=match):
            step.forward_backward(x, y)
    after = state_of(net, opt)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    # the fast path (arrays already in the plan's form) is guarded by the plan itself
    with pytest.raises(ValueError, match="label 7 at row 0 is out of range for 3 classes"):
        step(X[:8], np.full(8, 7, dtype=np.int64))
    ignored = Y[:8].copy()
    ignored[3] = -100  # CrossEntropyLoss's ignore_index: the eager loss leaves the row out
    for labels in (ignored, ignored.astype(np.int32)):
        with pytest.raises(UnsupportedError, match="ignore_index=-100"):
            step(X[:8], labels)
        with pytest.raises(UnsupportedError, match="ignore_index=-100"):
            step.forward_backward(X[:8], labels)
    after = state_of(net, opt)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_unsupported_networks_name_the_layer():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    class MyDense(nn.Dense):
        def forward(self, x):
            return super().forward(x) * 2

    cases = [
        (nn.Sequential(nn.Dense(4, 3), Custom()), "mse", r"layer '1' \(Custom\): this layer is not lowered"),
        (nn.Sequential(nn.Dense(4, 3), MyDense(3, 2)), "mse", r"layer '1' \(MyDense\)"),
        (nn.Sequential(nn.Dense(4, 3), nn.Softmax(dim=0)), "mse", "dim=0"),
        (nn.Sequential(nn.Dense(4, 3)), losses.CrossEntropyLoss(weight=[1, 2, 3]), "weight"),
        (nn.Sequential(nn.Dense(4, 3)), losses.MSELoss(reduction="sum"), "reduction='sum'"),
        (nn.Sequential(nn.Dense(4, 3)), "nll_loss", "NLLLoss"),
        (nn.Sequential(nn.Dense(4, 1)), "binary_crossentropy", "not a sigmoid"),
    ]
    for net, loss, match in cases:
        with pytest.raises(UnsupportedError, match=match):
            compile_step(net, loss, optim.SGD(net.parameters()))
    frozen = nn.Sequential(nn.Dense(4, 3), nn.Dense(3, 1))
    frozen[0].weight.requires_grad = False
    with pytest.raises(UnsupportedError, match=r"layer '0' \(Dense\): weight is frozen"):
        compile_step(frozen, "mse", optim.SGD(frozen.parameters()))
    outer = nn.Sequential(nn.Dense(4, 4), nn.Sequential(nn.Dense(4, 1)))
    with pytest.raises(UnsupportedError, match="not the whole of one flat buffer"):
        compile_step(outer[1], "mse", optim.SGD(outer.parameters()))
    class OwnLoss(nn.Sequential):
        def compute_loss(self, x=None, y=None, y_pred=None):
            return super().compute_loss(x, y, y_pred) * 2

    own = OwnLoss(nn.Dense(4, 1))
    with pytest.raises(UnsupportedError, match="OwnLoss overrides compute_loss"):
        compile_step(own, "mse", optim.SGD(own.parameters()))
    hooked = nn.Sequential(nn.Dense(4, 1))
    hooked[0].register_forward_hook(lambda m, a, o: None)
    with pytest.raises(UnsupportedError, match="hooks"):
        compile_step(hooked, "mse", optim.SGD(hooked.parameters()))


def test_compile_step_defaults_to_the_compiled_loss_and_optimizer():
    X, Y = data()
    gradcore.manual_seed(0)
    net = _l2(np.float32)
    net.compile(optim.SGD(net.parameters(), lr=0.01), "mse")
    step = gradcore.compile_step(net)
    assert step.loss is net.loss and step.optimizer is net.optimizer and step.mode == "fused"
    loss = step(X[:16], Y[:16])  # float64 input: converted, as the eager network converts it
    assert isinstance(loss, float) and loss == float(np.float32(loss))
    assert step.output().shape == (16, 1) and step.output().dtype == np.float32
    with pytest.raises(ValueError, match="no loss given"):
        compile_step(nn.Sequential(nn.Dense(2, 1)))


def test_fit_with_an_optimizer_of_the_users_runs_split():
    """Any object with step() / zero_grad() works (split mode), logged as eager logs it."""
    class Plain:
        def __init__(self, params, lr):
            self.params, self.lr = list(params), lr

        def step(self):
            for p in self.params:
                if p.grad is not None:
                    p.data -= self.lr * p.grad

        def zero_grad(self):
            for p in self.params:
                p.grad = None

    X, Y = data(n=64, out=3, kind="labels")
    hist = []
    for compiled in (False, True):
        net = _fit_net(np.float64, opt=lambda n: Plain(n.parameters(), 0.05))
        gradcore.manual_seed(3)
        hist.append(net.fit(X, Y, epochs=2, batch_size=16, verbose=0, compiled=compiled))
    _assert_same_history(hist[0], hist[1], 1e-12)


def test_fit_auto_goes_on_eagerly_when_a_callback_freezes_a_layer():
    class Freeze(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model[0].weight.requires_grad = False

    X, Y = data(n=64, out=3, kind="labels")
    hist, weights = [], []
    for compiled in (False, "auto"):
        net = _fit_net(np.float64)
        gradcore.manual_seed(3)
        hist.append(net.fit(X, Y, epochs=3, batch_size=16, verbose=0, callbacks=[Freeze()], compiled=compiled))
        weights.append(net[0].weight.data.copy())
    _assert_same_history(hist[0], hist[1], 1e-12)
    np.testing.assert_array_equal(weights[1], weights[0])
    net = _fit_net(np.float64)
    with pytest.raises(UnsupportedError, match="frozen"):
        net.fit(X, Y, epochs=2, batch_size=16, verbose=0, callbacks=[Freeze()], compiled=True)


def test_fit_error_in_a_callback_leaves_the_same_state():
    """An exception from on_after_step rolls fit's buffers back to the same point both ways."""
    class Boom(callbacks.Callback):
        def on_after_step(self, batch, logs=None):
            if batch == 2:
                raise KeyError("boom")

    X, Y = data(n=64, out=3, kind="labels")
    states = []
    for compiled in (False, True):
        net = _fit_net(np.float64)
        gradcore.manual_seed(3)
        with pytest.raises(KeyError, match="boom"):
            net.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[Boom()], compiled=compiled)
        states.append(state_of(net, net.optimizer))
    assert states[1]["buffer 1.num_batches_tracked"] == 3
    assert_same_state(states[0], states[1], 0.0)


def test_an_optimizer_subclass_with_its_own_kernel_runs_split():
    class Halved(optim.SGD):
        def _kernel(self, call, lr, clip):
            return super()._kernel(call, lr / 2, clip)

    X, Y = data()
    *_, step = run_parity(_l2, "mse", lambda n: Halved(n.parameters(), lr=0.1), np.float64, X, Y, steps=5)
    assert step.mode == "split" and "Halved has no kernel the plan runs" in step.split_reason
    *_, step = run_parity(_l2, "mse", lambda n: optim.AdamW(n.parameters()), np.float64, X, Y, steps=5)
    assert step.mode == "fused"


def test_a_graph_recorded_before_a_step_refuses_to_backward_after_it():
    """The step changes the parameters in place, and says so (as optimizer.step() does)."""
    X, Y = data()
    gradcore.manual_seed(0)
    net = _l2(np.float64)
    step = compile_step(net, "mse", adam(net))
    loss = losses.get("mse")(net(X[:8]), Y[:8])
    step(X[:8], Y[:8])
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        loss.backward()
