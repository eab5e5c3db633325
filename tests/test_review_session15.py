"""Adversarial review of main as a newcomer meets it (session 15, review helper).

1. The README's two commands in a fresh clone and virtual environment, and the documents'
   own networks ported with their names: the Keras networks of document 001 (Dense +
   BatchNorm + Dropout, binary cross-entropy on integer labels of shape (N,), "accuracy")
   and the hand-written NumPy networks of document 004 (``DeepNeuralNetwork``'s forward /
   backward and ``diagnose_gradient_health``). Oracles: NumPy re-implementations written
   here, PyTorch (``importorskip``), Keras' documented rules.
2. Random small networks (Dense with every activation, BatchNorm, LayerNorm, PReLU; every
   optimizer; global / value clipping) trained eagerly, by ``fit`` and by a compiled step,
   against the same network in PyTorch; accumulating ``fit`` against a PyTorch loop.
3. Bad input: ``fit`` / ``compile_step`` refusals (nothing may change), damaged
   checkpoints, the lab's command line, copies and pickles of what a training script
   holds (monitor, History, compiled step), fine-tuning patterns (an optimizer over part
   of the network, frozen layers) through fit, the monitor and checkpoints.
4. The merges of the day: h-smallbw's small Dense kernels (forced on / off / automatic
   against torch), h-moneager's and h-moncomp's monitor statistics (NumPy rows, compiled
   vs eager histories and events, TensorBoard files read by protobuf), h-fixfit's schedules.

Tests marked ``xfail(strict=True)`` are findings still open on main; their reasons say what
goes wrong and how it was seen. The others are regression guards that pass.
"""
import copy
import os
import pickle
import re
import warnings

import numpy as np
import pytest

import gradcore
from gradcore import nn, optim
from gradcore.callbacks import Callback, EarlyStopping
from gradcore.compiled import compile_step
from gradcore.monitor import GradientMonitor, diagnose

from test_fit_checks import body_and_head  # (the body-and-head network of the partly trained tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(net):
    """Copies of everything training may change: parameters, buffers, optimizer state."""
    values = {k: np.array(v, copy=True) for k, v in net.state_dict().items()}
    opt = copy.deepcopy(net.optimizer.state_dict()) if net.optimizer is not None else None
    return values, opt


def _assert_unchanged(before, after):
    (v1, o1), (v2, o2) = before, after
    changed = [k for k in v1 if not np.array_equal(v1[k], v2[k])]
    assert not changed, f"changed by a refused call: {changed}"
    assert repr(o1) == repr(o2), "optimizer state changed by a refused call"


# ---------------------------------------------------------------------- 1. the README's commands
def test_the_readme_test_command_needs_nothing_the_test_extra_does_not_install():
    """README: ``pip install ".[test]" && pytest -q tests`` in a fresh venv. A test module
    that calls ``to_pandas()`` needs pandas, which the ``test`` extra does not list, unless
    the module skips without it."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    installed = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in extras.get("test", [])}
    missing = []
    for name in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(ROOT, "tests", name), encoding="utf-8") as f:
            text = f.read()
        if ".to_pandas(" in text and "pandas" not in installed and 'importorskip("pandas")' not in text:
            missing.append(name)
    assert not missing, f"these test files need pandas, which pip install '.[test]' does not install: {missing}"


# ---------------------------------------------------------------------- 1. document 001's Keras networks
def _doc001_data():
    X, y = gradcore.datasets.make_classification(n_samples=300, n_features=20, n_informative=15, n_redundant=5,
                                                 random_state=42)
    return gradcore.datasets.train_test_split(X, y, test_size=0.2, random_state=42)


def _doc001_models():
    return {
        "problematic": (lambda: nn.Sequential(nn.Dense(20, 128, "sigmoid"), nn.Dense(128, 64, "sigmoid"),
                                              nn.Dense(64, 32, "sigmoid"), nn.Dense(32, 1, "sigmoid")),
                        lambda p: optim.SGD(p, learning_rate=0.01)),
        "complete": (lambda: nn.Sequential(nn.Dense(20, 128, "relu", kernel_initializer="he_normal"), nn.BatchNorm(128),
                                           nn.Dropout(0.3), nn.Dense(128, 64, "relu", kernel_initializer="he_normal"),
                                           nn.BatchNorm(64), nn.Dropout(0.2), nn.Dense(64, 32, "relu"),
                                           nn.Dense(32, 1, "sigmoid")),
                     lambda p: optim.Adam(p, learning_rate=0.001, clipnorm=1.0)),
    }


@pytest.mark.parametrize("name", ["problematic", "complete"])
@pytest.mark.parametrize("compiled", [True, False])
def test_document_001_networks_evaluate_what_predict_gives(name, compiled):
    """model.compile(optimizer, loss='binary_crossentropy', metrics=['accuracy']) on integer
    labels of shape (N,) against a (N, 1) sigmoid output: evaluate's [loss, accuracy] are
    Keras' binary cross-entropy (probabilities clipped to [1e-7, 1 - 1e-7]) and binary
    accuracy at 0.5 of predict's output, and the History's val_* are the same of the
    held-out last 20 % (oracle: NumPy on predict)."""
    X_train, X_test, y_train, y_test = _doc001_data()
    build, make_opt = _doc001_models()[name]
    gradcore.manual_seed(0)
    net = build()
    net.compile(optimizer=make_opt(net.parameters()), loss="binary_crossentropy", metrics=["accuracy"])
    hist = net.fit(X_train, y_train, validation_split=0.2, epochs=2, batch_size=32, verbose=0, compiled=compiled)

    def keras_bce_acc(X, y):
        p = net.predict(X).astype(np.float64)
        assert p.shape == (len(X), 1)
        q = np.clip(p[:, 0], 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)), np.mean((p[:, 0] > 0.5) == (y == 1))

    test_loss, test_acc = net.evaluate(X_test, y_test, verbose=0)
    ref_loss, ref_acc = keras_bce_acc(X_test, y_test)
    assert test_loss == pytest.approx(ref_loss, rel=1e-6)
    assert test_acc == ref_acc
    cut = len(X_train) - len(X_train) // 5  # 240 rows: the split is exact here
    val_loss, val_acc = keras_bce_acc(X_train[cut:], y_train[cut:])
    assert hist.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)
    assert hist.history["val_accuracy"][-1] == val_acc


def test_document_001_complete_solution_compiled_and_eager_fit_agree():
    """The documents' complete solution (BatchNorm, Dropout, Adam with clipnorm) trained by
    the compiled plan and by the eager tape from one seed: the same weights and logs."""
    X_train, _, y_train, _ = _doc001_data()
    build, make_opt = _doc001_models()["complete"]
    out = []
    for compiled in (True, False):
        gradcore.manual_seed(0)
        net = build()
        net.compile(make_opt(net.parameters()), "binary_crossentropy", ["accuracy"])
        h = net.fit(X_train, y_train, epochs=2, batch_size=32, verbose=0, compiled=compiled)
        out.append((h.history, {k: np.array(v) for k, v in net.state_dict().items()}))
    (h1, s1), (h2, s2) = out
    for key in h1:
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-5, err_msg=key)
    for key in s1:
        np.testing.assert_allclose(s1[key], s2[key], rtol=1e-5, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------------- 1. document 004's NumPy networks
def _doc004_reference(Ws, X, Y, act):
    """Document 004's DeepNeuralNetwork in its own layout (features x samples, W (n_l,
    n_{l-1}), zero biases, sigmoid output, dA of the summed BCE, dW = dZ A_prev^T / m):
    the per-layer ||dW||, written here from the document's formulas."""
    def f(z, a):
        return 1 / (1 + np.exp(-z)) if a == "sigmoid" else (np.tanh(z) if a == "tanh" else np.maximum(z, 0))

    def df(z, a):
        if a == "sigmoid":
            s = f(z, a)
            return s * (1 - s)
        return 1 - np.tanh(z) ** 2 if a == "tanh" else (z > 0).astype(float)

    A, cache, Zs = X.T, [X.T], []
    acts = [act] * (len(Ws) - 1) + ["sigmoid"]
    for W, a in zip(Ws, acts):
        Z = W @ A
        A = f(Z, a)
        Zs.append(Z)
        cache.append(A)
    m, Yr = X.shape[0], Y.reshape(1, -1)
    dA = -(Yr / A - (1 - Yr) / (1 - A))
    norms = [0.0] * len(Ws)
    for l in reversed(range(len(Ws))):
        dZ = dA * df(Zs[l], acts[l])
        norms[l] = np.linalg.norm(dZ @ cache[l].T / m)
        dA = Ws[l].T @ dZ
    return np.array(norms)


@pytest.mark.parametrize("act, scale", [("sigmoid", lambda n: 0.01), ("relu", lambda n: np.sqrt(2 / n)),
                                        ("tanh", lambda n: np.sqrt(1 / n))])
def test_document_004_diagnosis_matches_the_documents_numpy_network(act, scale):
    """diagnose() on document 004's three test configurations ([20, 40, 30, 20, 10, 5, 1],
    first 100 rows, thresholds 0.01 / 100): per-layer ||dW||, flow ratio first / last and
    the vanishing / exploding / healthy lists equal the document's NumPy network's."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((100, 20))
    Y = (rng.random(100) > 0.5).astype(float)
    dims = [20, 40, 30, 20, 10, 5, 1]
    Ws = [rng.standard_normal((b, a)) * scale(a) for a, b in zip(dims[:-1], dims[1:])]
    ref = _doc004_reference(Ws, X, Y, act)
    net = nn.Sequential(*[nn.Dense(a, b, act if i < len(Ws) - 1 else "sigmoid")
                          for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))], dtype=np.float64)
    for layer, W in zip(net, Ws):
        layer.weight.data[...] = W
    d = diagnose(net, X, Y.reshape(-1, 1), loss="binary_crossentropy").to_dict()
    got = np.array([d["gradient_norms"][str(i)] for i in range(len(Ws))])
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    assert d["flow_ratio"] == pytest.approx(ref[0] / ref[-1], rel=1e-9)
    assert d["vanishing_layers"] == [str(i) for i in range(len(Ws)) if ref[i] < 0.01]
    assert d["exploding_layers"] == [str(i) for i in range(len(Ws)) if ref[i] > 100]
    assert d["healthy_layers"] == [str(i) for i in range(len(Ws)) if 0.01 <= ref[i] <= 100]


# ---------------------------------------------------------------------- 2. random networks against PyTorch
_ACTS = ["relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "silu", "gelu", "softplus", None]


def _torch_activation(torch, name, alpha):
    T = torch.nn
    return {"relu": T.ReLU(), "leaky_relu": T.LeakyReLU(alpha), "elu": T.ELU(alpha), "selu": T.SELU(),
            "sigmoid": T.Sigmoid(), "tanh": T.Tanh(), "silu": T.SiLU(), "gelu": T.GELU(), "softplus": T.Softplus(),
            None: T.Identity()}[name]


def _random_pair(torch, rng):
    """A random float64 gradcore Sequential and its PyTorch twin (same weights). No
    BatchNorm after a Dense with a bias: that bias' gradient is rounding noise, which
    Adam-like optimizers turn into steps of +-lr in either library."""
    T = torch.nn
    width = int(rng.integers(2, 40))
    din, g, t = width, [], []
    for _ in range(int(rng.integers(1, 4))):
        w, a = int(rng.integers(1, 70)), _ACTS[rng.integers(len(_ACTS))]
        alpha = float(rng.choice([0.1, 0.3])) if a in ("leaky_relu", "elu") else None
        dense = nn.Dense(din, w, a, alpha=alpha, dtype=np.float64)
        lin = T.Linear(din, w, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(dense.weight.data)))
            lin.bias.copy_(torch.from_numpy(np.array(dense.bias.data)))
        g.append(dense)
        t += [lin, _torch_activation(torch, a, alpha)]
        r = rng.random()
        if r < 0.15:
            g.append(nn.LayerNorm(w, dtype=np.float64))
            t.append(T.LayerNorm(w, dtype=torch.float64))
        elif r < 0.3:
            g.append(nn.PReLU(w, init=0.2, dtype=np.float64))
            t.append(T.PReLU(w, init=0.2, dtype=torch.float64))
        din = w
    return width, din, nn.Sequential(*g, dtype=np.float64), T.Sequential(*t)


@pytest.mark.parametrize("seed", range(12))
def test_random_networks_train_as_their_pytorch_twins(seed):
    """Eight steps of a random network (activations with their alphas, LayerNorm, PReLU),
    loss (MSE, BCE with logits, cross-entropy on labels), optimizer (SGD with momentum /
    Nesterov / weight decay, Adam / AMSGrad, AdamW, RMSprop centered / momentum, Adagrad with
    lr_decay) and clipping (global norm, value), run eagerly, by fit or by a compiled step,
    against torch.optim and torch.nn.utils.clip_grad_*_ (float64, 1e-9 of the largest value)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1000 + seed)
    width, out, gnet, tnet = _random_pair(torch, rng)
    loss_name = str(rng.choice(["mse", "bce_with_logits", "cross_entropy"] if out > 1 else ["mse", "bce_with_logits"]))
    kind = str(rng.choice(["sgd", "adam", "adamw", "rmsprop", "adagrad"]))
    clip = {}
    r = rng.random()
    if r < 0.3:
        clip["global_clip_norm"] = 0.5
    elif r < 0.5:
        clip["clip_value"] = 0.05
    if kind == "sgd":
        kw = dict(lr=0.05, momentum=float(rng.choice([0.0, 0.9])), weight_decay=float(rng.choice([0.0, 1e-2])))
        if kw["momentum"] and rng.random() < 0.5:
            kw["nesterov"] = True
    elif kind in ("adam", "adamw"):
        kw = dict(lr=0.01, amsgrad=bool(rng.random() < 0.5), weight_decay=float(rng.choice([0.0, 1e-2])))
    elif kind == "rmsprop":
        kw = dict(lr=0.005, centered=bool(rng.random() < 0.5), momentum=float(rng.choice([0.0, 0.5])))
    else:
        kw = dict(lr=0.05, lr_decay=float(rng.choice([0.0, 0.01])))
    names = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}
    gopt = getattr(optim, names[kind])(gnet.parameters(), **kw, **clip)
    topt = getattr(torch.optim, names[kind])(tnet.parameters(), **kw)
    tloss = {"mse": torch.nn.MSELoss(), "bce_with_logits": torch.nn.BCEWithLogitsLoss(),
             "cross_entropy": torch.nn.CrossEntropyLoss()}[loss_name]
    gnet.compile(gopt, loss_name)
    mode = ("compiled", "eager", "fit")[seed % 3]
    step = compile_step(gnet) if mode == "compiled" else None
    batch = int(rng.integers(2, 50))
    for _ in range(8):
        x = rng.standard_normal((batch, width))
        if loss_name == "mse":
            y = rng.standard_normal((batch, out))
        elif loss_name == "bce_with_logits":
            y = (rng.random((batch, out)) > 0.5).astype(float)
        else:
            y = rng.integers(0, out, batch)
        if mode == "compiled":
            step(x, y)
        elif mode == "fit":
            gnet.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        else:
            gopt.zero_grad()
            gnet.loss(gnet(x), y).backward()
            gopt.step()
        topt.zero_grad()
        tloss(tnet(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        if "global_clip_norm" in clip:
            torch.nn.utils.clip_grad_norm_(tnet.parameters(), clip["global_clip_norm"])
        if "clip_value" in clip:
            torch.nn.utils.clip_grad_value_(tnet.parameters(), clip["clip_value"])
        topt.step()
    got = np.concatenate([np.ravel(v) for v in gnet.state_dict().values()])
    want = np.concatenate([v.detach().numpy().ravel() for v in tnet.state_dict().values()])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()),
                               err_msg=f"{mode}, {loss_name}, {kind} {kw} {clip}, {[repr(m) for m in gnet]}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k, n, batch, bn, compiled, clip", [
    (2, 40, 8, False, True, None), (3, 37, 5, False, True, 0.3), (3, 37, 5, True, True, 0.3),
    (3, 37, 5, True, False, 0.3), (4, 50, 6, True, "auto", None), (10, 37, 5, True, True, 0.3),
    (10, 37, 5, False, False, None)])
def test_accumulating_fit_is_a_pytorch_accumulation_loop(dtype, k, n, batch, bn, compiled, clip):
    """fit(accumulate_steps=k) (the plan's dW GEMM adds into the flat gradient with beta = 1)
    against a torch loop: each micro-batch's loss weighted by its share of the group's rows
    (a short last group included), clip_grad_norm_, one Adam step per group; BatchNorm's
    statistics per micro-batch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, 7))
    y = rng.integers(0, 3, n)
    gradcore.manual_seed(0)
    net = nn.Sequential(*([nn.Dense(7, 16, "tanh")] + ([nn.BatchNorm(16)] if bn else []) + [nn.Dense(16, 3)]),
                        dtype=dtype)
    T = torch.nn
    t = T.Sequential(T.Linear(7, 16), T.Tanh(), *([T.BatchNorm1d(16)] if bn else []), T.Linear(16, 3)).double()
    with torch.no_grad():
        for a, b in zip([m for m in t if isinstance(m, T.Linear)], [m for m in net if isinstance(m, nn.Dense)]):
            a.weight.copy_(torch.tensor(np.array(b.weight.data, np.float64)))
            a.bias.copy_(torch.tensor(np.array(b.bias.data, np.float64)))
    net.compile(optim.Adam(net.parameters(), lr=0.01, global_clip_norm=clip), "cross_entropy")
    net.fit(X, y, epochs=2, batch_size=batch, accumulate_steps=k, shuffle=False, verbose=0, compiled=compiled,
            drop_last=False)
    topt = torch.optim.Adam(t.parameters(), lr=0.01)
    Xd = X.astype(dtype).astype(np.float64)
    steps = -(-n // batch)
    for _ in range(2):
        for first in range(0, steps, k):
            topt.zero_grad()
            groups = [np.arange(s * batch, min((s + 1) * batch, n)) for s in range(first, min(first + k, steps))]
            rows = sum(len(i) for i in groups)
            for idx in groups:
                loss = T.functional.cross_entropy(t(torch.tensor(Xd[idx])), torch.tensor(y[idx]))
                (loss * (len(idx) / rows)).backward()
            if clip:
                T.utils.clip_grad_norm_(t.parameters(), clip)
            topt.step()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for (key, got), (_, want) in zip(net.state_dict().items(), t.state_dict().items()):
        want = want.numpy()
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0,
                                   atol=tol * max(1.0, np.abs(want).max()), err_msg=key)


# ---------------------------------------------------------------------- 3. bad input: fit
def _bn_net(dtype=np.float32):
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 8, "relu"), nn.BatchNorm(8), nn.Dense(8, 3), dtype=dtype)
    net.compile(optim.Adam(net.parameters(), lr=0.1), "cross_entropy", ["accuracy"])
    return net


def _bn_setup():
    """16 rows of 5 features, their labels in 0..2 and a fresh ``_bn_net()``."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 5)), rng.integers(0, 3, 16), _bn_net()


def _late_bad_label():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5))
    y = rng.integers(0, 3, 40)
    y[35] = 7
    return X, y


@pytest.mark.parametrize("compiled", [True, "auto", False])
def test_fit_refusing_a_bad_label_changes_nothing(compiled):
    X, y = _late_bad_label()
    net = _bn_net()
    before = _state(net)
    with pytest.raises(ValueError, match="out of range"):
        net.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0, compiled=compiled)
    _assert_unchanged(before, _state(net))


@pytest.mark.parametrize("compiled", [True, "auto", False])
def test_fit_names_the_data_row_of_a_bad_label(compiled):
    X, y = _late_bad_label()
    net = _bn_net()
    with pytest.raises(ValueError, match=r"label 7 at row 35\b"):
        net.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0, compiled=compiled)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_step_refusals_change_nothing(dtype):
    """compile_step's refusals (label out of range or negative, through the plan's own check
    too; ignore_index labels; wrong input width; wrong target rows or width; a batch of one
    under BatchNorm; fractional float labels) leave parameters, buffers and optimizer state
    as they were, in fused and split mode."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 5)).astype(dtype)
    y = rng.integers(0, 3, 16)
    bad = {
        "label out of range": (X, np.where(np.arange(16) == 5, 3, y).astype(np.int64)),
        "negative label": (X, np.where(np.arange(16) == 5, -1, y).astype(np.int64)),
        "ignore_index": (X, np.where(np.arange(16) == 5, -100, y).astype(np.int64)),
        "input width": (X[:, :4], y),
        "target rows": (X, y[:15]),
        "one row under BatchNorm": (X[:1], y[:1]),
        "fractional label": (X, y + 0.5),
        "target width": (X, np.eye(3)[y][:, :2]),
    }
    for record_stats in (False, True):
        net = _bn_net(dtype)
        net.optimizer.record_stats = record_stats  # statistics on: the split mode
        step = compile_step(net)
        step(X, y)
        assert step.mode == ("split" if record_stats else "fused")
        for name, (xb, yb) in bad.items():
            before = _state(net)
            with pytest.raises((ValueError, TypeError, NotImplementedError)):
                step(xb, yb)
            _assert_unchanged(before, _state(net))


@pytest.mark.parametrize("n, split", [(10, 0.25), (5, 0.5), (9, 0.5)])
def test_validation_split_holds_out_the_rows_keras_holds_out(n, split):
    import math

    class Rows(Callback):
        def __init__(self):
            self.rows = 0

        def on_batch_begin(self, batch, logs=None):
            self.rows += logs["size"]

    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(3, 1), dtype=np.float64)
    net.compile(optim.SGD(net.parameters(), lr=0.01), "mse")
    counter = Rows()
    rng = np.random.default_rng(0)
    net.fit(rng.standard_normal((n, 3)), rng.standard_normal((n, 1)), epochs=1, batch_size=1,
            validation_split=split, verbose=0, callbacks=[counter])
    assert counter.rows == int(math.floor(n * (1.0 - split)))


def test_train_test_split_sizes_are_scikit_learns():
    sk = pytest.importorskip("sklearn.model_selection")
    for n, size in [(10, 0.25), (1000, 0.2), (7, 0.5), (21, 0.1)]:
        X, y = np.zeros((n, 2)), np.zeros(n)
        got = gradcore.datasets.train_test_split(X, y, test_size=size, random_state=0)
        want = sk.train_test_split(X, y, test_size=size, random_state=0)
        assert [len(a) for a in got] == [len(a) for a in want], (n, size)


# ---------------------------------------------------------------------- 3. bad input: checkpoints
@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_damaged_checkpoints_are_refused_and_never_load_other_values(ext, tmp_path):
    """Every truncation (about 150 lengths) and 300 single-bit flips of a saved network with
    an AMSGrad optimizer: gradcore.load raises CheckpointError, or (a flip in bytes no value
    depends on, e.g. zip metadata) loads the very same values."""
    net = _bn_net()
    rng = np.random.default_rng(0)
    net.fit(rng.standard_normal((20, 5)), np.arange(20) % 3, epochs=1, batch_size=5, verbose=0)
    ref = {k: np.array(v) for k, v in net.state_dict().items()}
    path = str(tmp_path / ("ck" + ext))
    net.save(path)
    with open(path, "rb") as f:
        raw = f.read()
    cases = [raw[:i] for i in range(0, len(raw), max(1, len(raw) // 150))]
    for i in rng.integers(0, len(raw), 300):
        i = int(i)
        cases.append(raw[:i] + bytes([raw[i] ^ (1 << int(rng.integers(8)))]) + raw[i + 1:])
    bad = str(tmp_path / ("bad" + ext))
    for data in cases:
        with open(bad, "wb") as f:
            f.write(data)
        try:
            loaded = gradcore.load(bad)
        except gradcore.CheckpointError:
            continue
        for k, v in loaded.state_dict().items():
            np.testing.assert_array_equal(np.asarray(v), ref[k], err_msg=f"{k}: a damaged file loaded other values")


# ---------------------------------------------------------------------- 3. bad input: the lab's command line
def _lab_main(args, tmp_path):
    from gradcore.lab.runner import main

    return main(list(args) + ["--quick", "--no-plots"] + ([] if "--out" in args else ["--out", str(tmp_path / "lab")]))


def test_lab_refuses_too_many_threads_as_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        _lab_main(["vanishing", "--threads", "2000"], tmp_path)
    assert exc.value.code == 2


def test_lab_seed_is_refused_up_front_or_accepted_by_every_experiment(tmp_path):
    try:
        assert _lab_main(["repair", "--seed", str(2 ** 64)], tmp_path) == 0
    except SystemExit as exc:
        assert exc.code == 2


def test_lab_refuses_an_out_that_is_a_file_as_a_usage_error(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(SystemExit) as exc:
        _lab_main(["vanishing", "--out", str(target)], tmp_path)
    assert exc.value.code == 2


def test_lab_refuses_bad_arguments_it_checks(tmp_path, capsys):
    """Guards: the checks main() has (unknown experiment, negative seed, --threads 0, a
    non-integer) exit with status 2 before running anything."""
    for args in (["nosuch"], ["--seed", "-1"], ["--threads", "0"], ["--threads", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            _lab_main(args, tmp_path)
        assert exc.value.code == 2, args
    assert not (tmp_path / "lab").exists()


# ---------------------------------------------------------------------- 3. copies and pickles of what a script holds
def _trained_with(callback_factory):
    X, y, net = _bn_setup()
    cb = callback_factory(net)
    hist = net.fit(X, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb] if cb is not None else None)
    return net, cb, hist


def _pickles_or_refuses_by_name(obj, names):
    try:
        data = pickle.dumps(obj)
    except TypeError as exc:
        assert any(n in str(exc) for n in names), f"unclear refusal: {exc}"
        return None
    return pickle.loads(data)


def test_fit_history_and_callbacks_pickle_or_refuse_by_name():
    _, es, hist = _trained_with(lambda net: EarlyStopping(monitor="loss", restore_best_weights=True))
    loaded = _pickles_or_refuses_by_name(hist, ("History",))
    if loaded is not None:
        assert loaded.history == hist.history
    _pickles_or_refuses_by_name(es, ("EarlyStopping",))


# mended: GradientMonitor.__getstate__ leaves fit's weak references and the per-batch captures behind; __setstate__ installs the taps on the copied network
@pytest.mark.parametrize("how", ["fit", "compile_step"])
def test_a_used_monitor_pickles_or_refuses_by_name(how):
    X, y, net = _bn_setup()
    mon = GradientMonitor(net)
    if how == "fit":
        net.fit(X, y, epochs=1, batch_size=8, verbose=0, callbacks=[mon])
    else:
        step = compile_step(net, monitor=mon)
        step(X, y)
        step(X, y)
    loaded = _pickles_or_refuses_by_name(mon, ("GradientMonitor",))
    if loaded is not None:
        a, b = mon.history.to_dict(), loaded.history.to_dict()
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# mended: CompiledStep.__reduce__ compiles again over the copies of its network, loss and optimizer
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_compiled_step_copies_with_its_network_or_refuses_by_name(how):
    X, y, net = _bn_setup()
    step = compile_step(net)
    step(X, y)
    try:
        twin_net, _, twin_step = (copy.deepcopy if how == "deepcopy" else
                                  (lambda o: pickle.loads(pickle.dumps(o))))((net, net.optimizer, step))
    except TypeError as exc:
        assert "CompiledStep" in str(exc) or "compile_step" in str(exc), f"unclear refusal: {exc}"
        return
    before = _state(net)
    gradcore.manual_seed(1)
    twin_step(X, y)
    _assert_unchanged(before, _state(net))  # the copy steps its own network
    assert twin_step.net is twin_net
    gradcore.manual_seed(1)
    step(X, y)
    for (k, a), b in zip(net.state_dict().items(), twin_net.state_dict().values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=k)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_compiled_step_with_a_monitor_refuses_copy_by_name(how):
    """A step holding a monitor is not copied (its monitor's taps are off the network while
    the step holds it): a TypeError naming the compiled step, and the original steps on."""
    X, y, net = _bn_setup()
    mon = GradientMonitor(net)
    step = compile_step(net, monitor=mon)
    step(X, y)
    with pytest.raises(TypeError, match="CompiledStep"):
        copy.deepcopy(step) if how == "deepcopy" else pickle.dumps(step)
    before = len(mon.history.to_dict()["step"])
    step(X, y)
    assert len(mon.history.to_dict()["step"]) > before


# mended: GradientMonitor.__getstate__ leaves fit's weak references and the per-batch captures behind; __setstate__ installs the taps on the copied network
@pytest.mark.parametrize("compiled", [False, True])
def test_a_deep_copied_monitor_watches_the_copied_network_like_a_new_one(compiled):
    """Copying a monitor with its network must give a monitor that records what a new
    GradientMonitor of the copy records (or refuse the copy with a TypeError naming it);
    the original's history is untouched."""
    X, y, net = _bn_setup()
    mon = GradientMonitor(net)
    net.fit(X, y, epochs=1, batch_size=8, verbose=0, callbacks=[mon])
    rows = len(mon.history.to_dict()["step"])
    try:
        net2, mon2 = copy.deepcopy((net, mon))
    except TypeError as exc:
        assert "GradientMonitor" in str(exc)
        return
    net3 = copy.deepcopy(net)
    mon3 = GradientMonitor(net3)
    recorded = []
    for n, m in ((net2, mon2), (net3, mon3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n.fit(X, y, epochs=1, batch_size=8, verbose=0, callbacks=[m], compiled=compiled)
        d = {k: np.asarray(v) for k, v in m.history.to_dict().items()}
        last = d["step"] == d["step"].max()
        recorded.append(sorted(set(zip(d["layer"][last].tolist(), d["metric"][last].tolist()))))
    assert recorded[0] == recorded[1]
    assert len(mon.history.to_dict()["step"]) == rows


# ---------------------------------------------------------------------- 2. the monitor's numbers
def _monitor_reference(W, b, X, Y, lr):
    """One SGD step of Dense(relu) -> Dense(tanh) -> Dense on the mean squared error, in
    NumPy float64: the GradientMonitor's per-layer metrics of that step (the documents'
    dW / db / dZ norms of the mean loss, activation statistics with np.std, dead units =
    pre-activation <= 0 over the whole batch, saturated entries = |z| > 5)."""
    acts = ["relu", "tanh", None]
    h, zs, hs = X, [], []
    for w, c, a in zip(W, b, acts):
        z = h @ w.T + c
        h = np.maximum(z, 0) if a == "relu" else (np.tanh(z) if a == "tanh" else z)
        zs.append(z)
        hs.append(h)
    loss = np.mean((h - Y) ** 2)
    g = 2 * (h - Y) / h.size
    out, inputs = {}, [X] + hs[:-1]
    total = 0.0
    for i in reversed(range(3)):
        a = acts[i]
        dz = g * (zs[i] > 0) if a == "relu" else (g * (1 - hs[i] ** 2) if a == "tanh" else g)
        dw, db = dz.T @ inputs[i], dz.sum(0)
        total += np.sum(dw ** 2) + np.sum(db ** 2)
        L = str(i)
        out.update({(L, "weight.grad_norm"): np.linalg.norm(dw), (L, "bias.grad_norm"): np.linalg.norm(db),
                    (L, "weight.grad_max"): np.abs(dw).max(), (L, "bias.grad_max"): np.abs(db).max(),
                    (L, "grad_norm"): np.sqrt(np.sum(dw ** 2) + np.sum(db ** 2)),
                    (L, "dz_norm"): np.linalg.norm(dz), (L, "dz_max"): np.abs(dz).max(),
                    (L, "weight.norm"): np.linalg.norm(W[i]), (L, "bias.norm"): np.linalg.norm(b[i]),
                    (L, "act_mean"): hs[i].mean(), (L, "act_std"): hs[i].std(), (L, "act_min"): hs[i].min(),
                    (L, "act_max"): hs[i].max(), (L, "weight.update_norm"): lr * np.linalg.norm(dw),
                    (L, "bias.update_norm"): lr * np.linalg.norm(db),
                    (L, "weight.update_ratio"): lr * np.linalg.norm(dw) / np.linalg.norm(W[i])})
        if a == "relu":
            out[(L, "dead_frac")] = np.mean(np.all(zs[i] <= 0, axis=0))
        if a == "tanh":
            out[(L, "saturated_frac")] = np.mean(np.abs(zs[i]) > 5.0)
        g = dz @ W[i]
    out.update({("", "loss"): loss, ("", "grad_norm"): np.sqrt(total), ("", "clip_coef"): 1.0, ("", "skipped"): 0.0,
                ("", "lr"): lr})
    return out


@pytest.mark.parametrize("how", ["eager fit", "compiled fit", "compile_step"])
def test_monitor_rows_of_a_step_are_the_numpy_numbers(how):
    """The GradientMonitor's rows of the first recorded step (eager fit, compiled fit, a
    compiled step given the monitor) against the NumPy reference above, float64 to 1e-12."""
    X, Y, net, W, b, mon, d = _monitored(how, 1)
    got = {(l, m): v for s, l, m, v in zip(d["step"], d["layer"], d["metric"], d["value"]) if s == 0}
    want = _monitor_reference(W, b, X, Y, 0.1)
    missing = sorted(set(want) - set(got))
    assert not missing, f"{how}: not recorded: {missing}"
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), f"{how}: {key}"


def test_monitor_histories_of_eager_and_compiled_training_agree():
    """Four steps recorded by an eager fit, a compiled fit and a compiled step: the same
    (step, layer, metric) rows, values to 1e-12 (float64)."""
    runs = [_monitored(how, 4)[-1] for how in ("eager fit", "compiled fit", "compile_step")]
    keys = [list(zip(d["step"].tolist(), d["layer"].tolist(), d["metric"].tolist())) for d in runs]
    for other, d in zip(keys[1:], runs[1:]):
        assert sorted(other) == sorted(keys[0])
        ref = dict(zip(keys[0], runs[0]["value"]))
        for key, value in zip(other, d["value"]):
            assert value == pytest.approx(ref[key], rel=1e-12, abs=1e-15, nan_ok=True), key


def _monitored(how, steps):
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((8, 4)), rng.standard_normal((8, 2))
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(4, 6, "relu", bias_initializer="random_normal"),
                        nn.Dense(6, 5, "tanh", kernel_initializer=nn.init.random_normal(stddev=2.0)),
                        nn.Dense(5, 2), dtype=np.float64)
    W = [np.array(layer.weight.data) for layer in net]
    b = [np.array(layer.bias.data) for layer in net]
    net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
    mon = GradientMonitor(net)
    if how == "compile_step":
        step = compile_step(net, monitor=mon)
        for _ in range(steps):
            step(X, Y)
    else:
        net.fit(X, Y, epochs=steps, batch_size=8, verbose=0, callbacks=[mon], compiled=(how == "compiled fit"),
                shuffle=False)
    d = {k: np.asarray(v) for k, v in mon.history.to_dict().items()}
    return X, Y, net, W, b, mon, d


# ---------------------------------------------------------------------- 1. PyTorch names at their edges
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_of_an_all_ignored_batch_has_torchs_zero_gradient(dtype):
    torch = pytest.importorskip("torch")
    x = np.array([[2.0, -1.0, 0.0], [0.0, 3.0, -3.0]], dtype=dtype)
    y = np.array([1, 1])
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(xt, torch.tensor(y), ignore_index=1).backward()
    xg = gradcore.Tensor(x, requires_grad=True)
    loss = gradcore.functional.cross_entropy(xg, y, ignore_index=1)
    assert np.isnan(float(loss.data))
    loss.backward()
    np.testing.assert_array_equal(np.asarray(xg.grad), xt.grad.numpy())


# ---------------------------------------------------------------------- 1. Tensor methods with NumPy / PyTorch names
def test_tensor_flatten_is_numpys_and_torchs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for shape in [(5, 1), (3, 4), (2, 3, 4)]:
        a = rng.standard_normal(shape)
        assert gradcore.Tensor(a).flatten().shape == a.flatten().shape == tuple(torch.tensor(a).flatten().shape)
    pred, y = rng.standard_normal((5, 1)), rng.standard_normal(5)
    p = gradcore.Tensor(pred, requires_grad=True)
    loss = ((p.flatten() - gradcore.Tensor(y)) ** 2).mean()
    tp = torch.tensor(pred, requires_grad=True)
    tloss = ((tp.flatten() - torch.tensor(y)) ** 2).mean()
    tloss.backward()
    loss.backward()
    assert float(loss.data) == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(np.asarray(p.grad), tp.grad.numpy(), rtol=1e-12)


def test_tensor_max_with_dim_routes_the_gradient_to_its_indices_like_torch():
    torch = pytest.importorskip("torch")
    x = np.array([[1.0, 3.0], [3.0, 3.0], [0.0, 0.0]])
    g = gradcore.Tensor(x.copy(), requires_grad=True)
    result = g.max(dim=0)
    result.values.sum().backward()
    t = torch.tensor(x, requires_grad=True)
    tresult = t.max(dim=0)
    tresult.values.sum().backward()
    np.testing.assert_array_equal(np.asarray(result.indices), tresult.indices.numpy())
    np.testing.assert_array_equal(np.asarray(g.grad), t.grad.numpy())


def test_builtin_abs_of_a_tensor():
    x = np.array([-2.0, 0.5, 3.0])
    t = gradcore.Tensor(x, requires_grad=True)
    out = abs(t)
    out.sum().backward()
    np.testing.assert_array_equal(np.asarray(out.data), np.abs(x))
    np.testing.assert_array_equal(np.asarray(t.grad), np.sign(x))


def test_a_one_row_batch_under_batchnorm_names_the_layer():
    net = nn.Sequential(nn.Dense(5, 8), nn.BatchNorm(8))
    net.train()
    before = {k: np.array(v) for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"BatchNorm layer 1|layer '1'"):
        net(np.ones((1, 5)))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), before[k], err_msg=k)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_info_reports_the_widest_simd_the_kernels_use():
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    simd = gradcore.info()["simd"]
    if "avx512f" in flags:
        assert "512" in simd or "v4" in simd, simd
    elif "avx2" in flags and "fma" in flags:
        assert "avx2" in simd, simd


# ---------------------------------------------------------------------- 1. Keras-named learning-rate schedules
def _keras_exponential(t):
    return 0.1 * 0.96 ** (t / 100)


def _keras_inverse_time(t):
    return 0.1 / (1 + 2.0 * t / 10)


def _keras_cosine(t):
    t = min(t, 1000)
    return 0.1 * ((1 - 0.01) * 0.5 * (1 + np.cos(np.pi * t / 1000)) + 0.01)


@pytest.mark.parametrize("make, keras", [
    (lambda S: S.ExponentialDecay(0.1, 100, 0.96), _keras_exponential),
    (lambda S: S.InverseTimeDecay(0.1, 10, 2), _keras_inverse_time),
    (lambda S: S.CosineDecay(0.1, 1000, 0.01), _keras_cosine),
], ids=["ExponentialDecay", "InverseTimeDecay", "CosineDecay"])
def test_keras_named_schedules_take_keras_arguments(make, keras):
    from gradcore.optim import schedules

    schedule = make(schedules)
    for t in (0, 1, 10, 100, 500, 1000, 2000):
        assert schedule(t) == pytest.approx(keras(t), rel=1e-12), t


# ---------------------------------------------------------------------- 2. every optimizer option against torch.optim
_OPTIMIZER_CASES = {
    "rmsprop wd alpha eps": ("RMSprop", dict(lr=0.01, weight_decay=0.1, alpha=0.9, eps=1e-6)),
    "rmsprop centered momentum wd": ("RMSprop", dict(lr=0.01, weight_decay=0.1, centered=True, momentum=0.9)),
    "adagrad every option": ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.3,
                                             eps=1e-6)),
    "sgd dampening wd": ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    "amsgrad betas eps wd": ("Adam", dict(lr=0.02, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.05, amsgrad=True)),
    "adamw defaults": ("AdamW", dict(lr=0.02)),
    "adamw amsgrad wd": ("AdamW", dict(lr=0.02, amsgrad=True, weight_decay=0.3)),
}


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("case", sorted(_OPTIMIZER_CASES))
def test_optimizer_options_and_groups_step_as_torch_optim(case, mode, groups):
    """Six steps with each optimizer's less common options, one group or two groups (the
    first with its own lr and weight_decay: the compiled step's split mode), eager and
    compiled, against torch.optim (float64, 1e-14)."""
    torch = pytest.importorskip("torch")
    name, kw = _OPTIMIZER_CASES[case]
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((30, 5)), rng.standard_normal((30, 2))
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 7, "tanh"), nn.Dense(7, 2), dtype=np.float64)
    t = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).double()
    with torch.no_grad():
        for a, b in zip([t[0], t[2]], net):
            a.weight.copy_(torch.tensor(np.array(b.weight.data)))
            a.bias.copy_(torch.tensor(np.array(b.bias.data)))
    if groups:
        gparams = [{"params": net[0].parameters(), "lr": 0.03, "weight_decay": 0.1}, {"params": net[1].parameters()}]
        tparams = [{"params": t[0].parameters(), "lr": 0.03, "weight_decay": 0.1}, {"params": t[2].parameters()}]
    else:
        gparams, tparams = net.parameters(), t.parameters()
    gopt, topt = getattr(optim, name)(gparams, **kw), getattr(torch.optim, name)(tparams, **kw)
    net.compile(gopt, "mse")
    step = compile_step(net) if mode == "compiled" else None
    for s in range(6):
        x, y = X[5 * s:5 * s + 5], Y[5 * s:5 * s + 5]
        if step is not None:
            step(x, y)
        else:
            gopt.zero_grad()
            net.loss(net(x), y).backward()
            gopt.step()
        topt.zero_grad()
        torch.nn.functional.mse_loss(t(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    for (key, got), want in zip(net.state_dict().items(), t.state_dict().values()):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-14, err_msg=key)


def test_a_patched_functional_linear_reaches_every_dense_layer(monkeypatch):
    from gradcore import functional as F

    calls = []
    original = F.linear

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    net = nn.Sequential(nn.Dense(4, 3, "relu"), nn.Dense(3, 2), dtype=np.float64)
    x = gradcore.Tensor(np.ones((2, 4)))
    net(x)  # first use, before the patch
    monkeypatch.setattr(F, "linear", spy)
    net(x)
    assert len(calls) == 2


@pytest.mark.parametrize("every", [1, 2])
def test_monitor_events_and_rows_of_a_non_finite_batch_agree_compiled_and_eager(every):
    """An Inf in the input of the 4th batch (of 6, two epochs): the compiled and the eager
    fit skip the same steps and their monitors (every=1 / every=2) record the same rows
    and events; with every=1 the non-finite event is located at layer '0''s output on
    steps 3 and 9 (the batch's two visits), where the Inf enters."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((48, 5)), rng.integers(0, 3, 48)
    X[27, 2] = np.inf
    runs = []
    for compiled in (True, False):
        gradcore.manual_seed(0)
        net = nn.Sequential(nn.Dense(5, 8, "relu"), nn.BatchNorm(8), nn.Dense(8, 8, "tanh"), nn.Dense(8, 3))
        net.compile(optim.Adam(net.parameters(), lr=0.1), "cross_entropy", ["accuracy"])
        mon = GradientMonitor(net, every=every)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hist = net.fit(X, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[mon], compiled=compiled)
        d = mon.history.to_dict()
        rows = {(s, l, m): v for s, l, m, v in zip(d["step"], d["layer"], d["metric"], d["value"])}
        runs.append((hist.history["skipped"], [(e.kind, e.step, e.layer, e.tensor) for e in mon.events], rows,
                     {k: np.array(v) for k, v in net.state_dict().items()}))
    (sk1, ev1, rows1, s1), (sk2, ev2, rows2, s2) = runs
    assert sk1 == sk2 == [1, 1]
    assert ev1 == ev2
    nonfinite = [e for e in ev1 if e[0] == "nonfinite"]
    assert [e[1] for e in nonfinite] == [3, 9]
    if every == 1:
        assert all(e[2:] == ("0", "output") for e in nonfinite), nonfinite
    assert rows1.keys() == rows2.keys()
    for key in rows1:
        assert rows1[key] == pytest.approx(rows2[key], rel=1e-5, abs=1e-7, nan_ok=True), key
    for key in s1:
        np.testing.assert_allclose(s1[key], s2[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_load_refuses_before_building_a_residual_projection_the_file_cannot_hold(tmp_path):
    from gradcore.safetensors import load_file, save_file

    net = nn.Sequential(nn.Residual([nn.Dense(1000, 1), nn.Dense(1, 999)]))
    assert "0.projection.weight" in net.state_dict()  # made by Residual itself, not in the architecture
    good, bad = str(tmp_path / "res.safetensors"), str(tmp_path / "res_edited.safetensors")
    net.save(good)
    tensors, meta = load_file(good)
    save_file({k: v for k, v in tensors.items() if "projection" not in k}, bad, meta)  # checksummed again
    with pytest.raises(gradcore.CheckpointError, match="needs at least"):
        gradcore.load(bad)


@pytest.mark.parametrize("width", [5, 300])  # 300: above the size where the optimizer's statistics replace the monitor's passes
def test_monitor_of_a_per_layer_update_params_loop_records_the_true_updates(width):
    """Document 000's style: ``opt = Adam(None, amsgrad=True, clip_norm=5.0)``, after backward
    ``mon.record(loss)`` then ``opt.update_params(layer)`` for each layer. The monitor's
    weight norms and update norms of every step are the norms of the weights before the
    step and of the change the steps made (NumPy on copies taken around the loop)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((16, width)), rng.standard_normal((16, 2))
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(width, width, "relu"), nn.Dense(width, 2), dtype=np.float64)
    opt = optim.Adam(None, lr=0.1, amsgrad=True, clip_norm=5.0)
    mon = GradientMonitor(net, optimizer=opt)
    names = [(layer, pname) for layer in ("0", "1") for pname in ("weight", "bias")]
    truth = []
    for _ in range(3):
        before = [np.array(p.data) for p in net.parameters()]
        net.zero_grad()
        loss = ((net(gradcore.Tensor(X)) - gradcore.Tensor(Y)) ** 2).mean()
        loss.backward()
        mon.record(loss)
        for layer in net:
            opt.update_params(layer)
        after = [np.array(p.data) for p in net.parameters()]
        truth.append([(np.linalg.norm(b), np.linalg.norm(a - b)) for a, b in zip(after, before)])
    d = mon.history.to_dict()
    rows = {(s, l, m): v for s, l, m, v in zip(d["step"], d["layer"], d["metric"], d["value"])}
    for step, values in enumerate(truth):
        for (layer, pname), (norm, update) in zip(names, values):
            assert rows[(step, layer, f"{pname}.norm")] == pytest.approx(norm, rel=1e-12), (step, layer, pname)
            assert rows[(step, layer, f"{pname}.update_norm")] == pytest.approx(update, rel=1e-9, abs=1e-15), \
                (step, layer, pname)


@pytest.mark.parametrize("frozen", [0, 1])
def test_monitor_of_a_partly_frozen_network_records_a_non_finite_step(frozen):
    """Regression guard (found by this review, mended by h-moneager's 6b9248b, merged at
    8dd9c1a): an eager monitored fit of a network with a frozen layer crashed at the first
    NaN gradient (ValueError in MonitorHistory.append, the cached row layout)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((16, 5)), rng.standard_normal((16, 2))
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 5, "relu"), nn.Dense(5, 8, "tanh"), nn.Dense(8, 2), dtype=np.float64)
    net[frozen].requires_grad_(False)
    net.compile(optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01), "mse")
    frozen_values = [np.array(p.data) for p in net[frozen].parameters()]
    mon = GradientMonitor(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(4):
            x = X.copy()
            if step == 2:
                x[3, 1] = np.nan
            net.fit(x, Y, epochs=1, batch_size=16, verbose=0, callbacks=[mon])
    assert [e.step for e in mon.events if e.kind == "nonfinite"] == [2]
    d = mon.history.to_dict()
    assert sorted(set(d["step"])) == [0, 1, 2, 3]
    for p, v in zip(net[frozen].parameters(), frozen_values):
        np.testing.assert_array_equal(p.data, v)


# mended: the split step's rows of tensors the optimizer does not train come from the plan's gradient, with an update of 0
@pytest.mark.parametrize("part", ["head", "body"])
def test_monitored_fit_of_an_optimizer_over_part_of_the_network(part):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((24, 6)), rng.integers(0, 3, 24)
    runs = []
    for compiled in ("auto", False):
        net = body_and_head()
        params = net[2].parameters() if part == "head" else net[0].parameters() + net[1].parameters()
        net.compile(optim.Adam(params, lr=0.05), "cross_entropy")
        mon = GradientMonitor(net)
        net.fit(X, y, epochs=2, batch_size=8, verbose=0, shuffle=False, callbacks=[mon], compiled=compiled)
        d = mon.history.to_dict()
        runs.append(({(s, l, m): v for s, l, m, v in zip(d["step"], d["layer"], d["metric"], d["value"])},
                     {k: np.array(v) for k, v in net.state_dict().items()}))
    (rows1, s1), (rows2, s2) = runs
    assert rows1.keys() == rows2.keys()
    # the layers the optimizer trains and the global rows (the eager fit lets the other
    # layers' gradients add up over batches: test_eager_fit_gives_each_batch_fresh_gradients...)
    trained = {"", "2"} if part == "head" else {"", "0", "1"}
    for key in rows1:
        if key[1] in trained:
            assert rows1[key] == pytest.approx(rows2[key], rel=1e-9, abs=1e-12, nan_ok=True), key
    for key in s1:
        np.testing.assert_allclose(s1[key], s2[key], rtol=1e-12, atol=1e-14, err_msg=key)


def test_a_saved_slice_of_a_network_loads_or_is_refused_at_save(tmp_path):
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((16, 5)), rng.standard_normal((16, 8))
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 8, "relu"), nn.BatchNorm(8), nn.Dense(8, 3), dtype=np.float64)
    sub = net[:2]
    sub.compile(optim.Adam(sub.parameters(), lr=0.1), "mse")
    sub.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "sub.safetensors")
    try:
        sub.save(path)
    except (ValueError, TypeError, RuntimeError):
        return  # refused at save: acceptable
    loaded = gradcore.load(path)
    for (k, a), b in zip(sub.state_dict().items(), loaded.state_dict().values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=k)


@pytest.mark.parametrize("part", ["head", "frozen"])
def test_a_checkpoint_of_a_partly_trained_network_loads_and_resumes(part, tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 8, "relu"), nn.BatchNorm(8), nn.Dense(8, 3), dtype=np.float64)
    if part == "frozen":
        net[0].requires_grad_(False)
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        params = net[2].parameters()
    net.compile(optim.Adam(params, lr=0.1), "cross_entropy")
    net.fit(X, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    path = str(tmp_path / "ck.safetensors")
    net.save(path)
    loaded = gradcore.load(path)
    if part == "frozen":
        loaded[0].requires_grad_(False)  # requires_grad is not part of a checkpoint (as in torch)
    for n in (net, loaded):
        n.fit(X, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=k)


class _ReplaceGradients(Callback):
    """The documents' manual clipping written as a hook: new gradient arrays assigned to
    ``p.grad`` (eager code and torch.optim step with the assigned arrays)."""

    def on_after_backward(self, batch, logs=None):
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad = np.clip(p.grad, -0.01, 0.01)


class _ScaleGradientsInPlace(Callback):
    def on_after_backward(self, batch, logs=None):
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad *= 0.5


@pytest.mark.parametrize("callback", [
    _ScaleGradientsInPlace,
    _ReplaceGradients,  # mended: _FitRunner's hook path steps with the gradients the hook left
])
@pytest.mark.parametrize("k", [1, 2])
def test_gradients_set_by_an_after_backward_callback_are_used_by_the_compiled_fit(callback, k):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 5)), rng.integers(0, 3, 32)
    runs = []
    for compiled in (True, False):
        gradcore.manual_seed(0)
        net = nn.Sequential(nn.Dense(5, 8, "relu"), nn.BatchNorm(8), nn.Dropout(0.2), nn.Dense(8, 3), dtype=np.float64)
        net.compile(optim.Adam(net.parameters(), lr=0.1), "cross_entropy", ["accuracy"])
        hist = net.fit(X, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback()], compiled=compiled,
                       accumulate_steps=k)
        runs.append((hist.history, {key: np.array(v) for key, v in net.state_dict().items()}))
    (h1, s1), (h2, s2) = runs
    for key in s1:
        np.testing.assert_allclose(s1[key], s2[key], rtol=1e-12, atol=1e-14, err_msg=key)
    assert h1.keys() == h2.keys()
    for key in h1:
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-12, err_msg=key)


# ---------------------------------------------------------------------- after merging h-smallbw (main 61868d1)
@pytest.mark.parametrize("small", ["always", "off", "auto"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [3, 32, 600])
def test_documents_network_trains_as_torch_with_the_small_dense_kernels(small, dtype, batch):
    """The documents' [20, 50, 40, 30, 20, 10, 1] ReLU network (BCE with logits, Adam), 12
    steps compiled and 12 eager from one start, with the small Dense kernels forced on,
    off and automatic (dW over batches < 4 and >= 512 in one FMA chain per value, dX, the
    forward), against torch in float64: float64 to 1e-10, float32 to 2e-4 of the largest
    weight; compiled and eager agree to 1e-12 / 1e-5."""
    torch = pytest.importorskip("torch")
    C = gradcore._C
    if not hasattr(C, "set_dense_small"):
        pytest.skip("no set_dense_small in this build")
    dims = [20, 50, 40, 30, 20, 10, 1]
    rng = np.random.default_rng(11)
    X = rng.standard_normal((12, batch, 20))
    Y = (rng.random((12, batch, 1)) > 0.5).astype(np.float64)
    previous = C.set_dense_small(small)
    try:
        finals = []
        for compiled in (True, False):
            gradcore.manual_seed(0)
            net = nn.Sequential(*[nn.Dense(a, b, "relu" if i < len(dims) - 2 else None)
                                  for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))], dtype=dtype)
            start = {k: np.array(v, np.float64) for k, v in net.state_dict().items()}
            net.compile(optim.Adam(net.parameters(), lr=1e-3), "bce_with_logits")
            step = compile_step(net) if compiled else None
            for x, y in zip(X, Y):
                if step is not None:
                    step(x, y)
                else:
                    net.optimizer.zero_grad()
                    net.loss(net(x), y).backward()
                    net.optimizer.step()
            finals.append({k: np.array(v, np.float64) for k, v in net.state_dict().items()})
    finally:
        C.set_dense_small(previous)
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        lin = torch.nn.Linear(a, b, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(start[f"{i}.weight"]))
            lin.bias.copy_(torch.tensor(start[f"{i}.bias"]))
        layers += [lin] + ([torch.nn.ReLU()] if i < len(dims) - 2 else [])
    t = torch.nn.Sequential(*layers)
    topt = torch.optim.Adam(t.parameters(), lr=1e-3)
    for x, y in zip(X, Y):
        topt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(t(torch.tensor(x.astype(dtype).astype(np.float64))),
                                                             torch.tensor(y)).backward()
        topt.step()
    want = {f"{i // 2}.{'weight' if i % 2 == 0 else 'bias'}": v.detach().numpy()
            for i, v in enumerate(p for p in t.parameters())}
    tol, pair = (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 1e-5)
    for key, ref in want.items():
        scale = max(1.0, np.abs(ref).max())
        np.testing.assert_allclose(finals[0][key], finals[1][key], rtol=0, atol=pair * scale, err_msg=f"{key} compiled/eager")
        np.testing.assert_allclose(finals[0][key], ref, rtol=0, atol=tol * scale, err_msg=f"{key} vs torch")


# mended: the split step's rows of tensors the optimizer does not train come from the plan's gradient, with an update of 0
def test_compiled_step_with_a_monitor_and_a_head_only_optimizer_records_like_the_eager_loop():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)
    histories = []
    for compiled in (True, False):
        net = body_and_head()
        opt = optim.Adam(net[2].parameters(), lr=0.05)
        net.compile(opt, "cross_entropy")
        mon = GradientMonitor(net, optimizer=opt)
        step = compile_step(net, monitor=mon) if compiled else None
        for _ in range(3):
            if step is not None:
                step(X, y)
            else:
                net.zero_grad()  # the body's gradients too (the optimizer zeroes only its own)
                loss = net.loss(net(X), y)
                loss.backward()
                mon.record(loss)
                opt.step()
        d = mon.history.to_dict()
        histories.append({(s, l, m): v for s, l, m, v in zip(d["step"], d["layer"], d["metric"], d["value"])})
    assert histories[0].keys() == histories[1].keys()
    for key in histories[0]:
        assert histories[0][key] == pytest.approx(histories[1][key], rel=1e-9, abs=1e-12, nan_ok=True), key


def test_eager_fit_gives_each_batch_fresh_gradients_of_layers_outside_the_optimizer():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((24, 6)), rng.integers(0, 3, 24)
    net = body_and_head()
    net.compile(optim.Adam(net[2].parameters(), lr=0.0), "cross_entropy")  # lr 0: the weights stay as they are
    mon = GradientMonitor(net)
    net.fit(X, y, epochs=1, batch_size=8, verbose=0, shuffle=False, callbacks=[mon], compiled=False)
    d = mon.history.to_dict()
    got = [v for l, m, v in zip(d["layer"], d["metric"], d["value"]) if l == "0" and m == "weight.grad_norm"]
    want = []
    net.train()
    for i in range(3):
        for p in net.parameters():
            p.grad = None
        net.loss(net(X[8 * i:8 * i + 8]), y[8 * i:8 * i + 8]).backward()
        want.append(float(np.linalg.norm(net[0].weight.grad)))
    np.testing.assert_allclose(got, want, rtol=1e-12)


# ---------------------------------------------------------------------- the TensorBoard files, read by protobuf
def _protobuf_event_class():
    """TensorBoard's Event / Summary / HistogramProto messages (their field numbers and
    types), built as protobuf descriptors: an independent decoder of gradcore's files."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="review_session15_events.proto", package="review15", syntax="proto3")
    h = f.message_type.add(name="HistogramProto")
    for number, name in enumerate(["min", "max", "num", "sum", "sum_squares"], 1):
        h.field.add(name=name, number=number, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    for number, name in ((6, "bucket_limit"), (7, "bucket")):
        h.field.add(name=name, number=number, type=F.TYPE_DOUBLE, label=F.LABEL_REPEATED).options.packed = True
    s = f.message_type.add(name="Summary")
    v = s.nested_type.add(name="Value")
    v.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    v.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    v.field.add(name="histo", number=5, type=F.TYPE_MESSAGE, type_name=".review15.HistogramProto",
                label=F.LABEL_OPTIONAL)
    s.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".review15.Summary.Value", label=F.LABEL_REPEATED)
    e = f.message_type.add(name="Event")
    e.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    e.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    e.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    e.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".review15.Summary", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("review15.Event"))


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@pytest.mark.parametrize("compiled, histograms", [(True, False), (False, True)])  # histograms: eager only
def test_tensorboard_files_are_what_protobuf_and_the_tfrecord_rules_read(compiled, histograms, tmp_path):
    """A monitored fit with histograms logged to TensorBoard: every TFRecord's two CRCs are
    the masked CRC-32C (bitwise reference here), the first event is the file version, and
    protobuf (TensorBoard's message layout, built here) reads each history row as a
    float32 scalar tagged '<layer>/<metric>' and each histogram with counts summing to num."""
    import glob
    import struct

    Event = _protobuf_event_class()
    from gradcore.monitor import TensorBoardLogger

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    gradcore.manual_seed(0)
    net = nn.Sequential(nn.Dense(5, 8, "relu"), nn.Dense(8, 3))
    net.compile(optim.Adam(net.parameters(), lr=0.1), "cross_entropy")
    mon = GradientMonitor(net, histograms=histograms,
                          loggers=[TensorBoardLogger(str(tmp_path / "tb"), histograms=histograms)])
    net.fit(X, y, epochs=2, batch_size=8, verbose=0, callbacks=[mon], compiled=compiled)
    (path,) = glob.glob(str(tmp_path / "tb" / "events*"))
    with open(path, "rb") as f:
        data = f.read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == _masked(_crc32c_bitwise(header))
        payload = data[pos + 12:pos + 12 + n]
        assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == _masked(_crc32c_bitwise(payload))
        event = Event()
        event.ParseFromString(payload)
        events.append(event)
        pos += 16 + n
    assert events[0].file_version == "brain.Event:2"
    scalars = {(e.step, v.tag): v.simple_value for e in events for v in e.summary.value if not v.HasField("histo")}
    d = mon.history.to_dict()
    layer_rows = [(s, l, m, v) for s, l, m, v in zip(d["step"], d["layer"], d["metric"], d["value"]) if l]
    assert layer_rows
    for s, l, m, v in layer_rows:
        got = scalars[(s, f"{l}/{m}")]
        assert got == np.float32(v) or (np.isnan(got) and np.isnan(v)), (s, l, m)
    histos = [v.histo for e in events for v in e.summary.value if v.HasField("histo")]
    assert bool(histos) == histograms
    for h in histos:
        assert sum(h.bucket) == h.num and len(h.bucket) == len(h.bucket_limit)
        assert h.min <= h.max


# ---------------------------------------------------------------------- the lab's compare against document 004's loop
def _document_004_train(W, b, activation, lr, epochs, data, clip=None):
    """Document 004's train_network in its own layout (features x samples): full-batch
    forward, cost with +1e-8 inside the logs, backward of DeepNeuralNetwork, the global
    gradient norm, clip_gradients(norm) with total + 1e-8, the SGD update, then the test
    accuracy after the update (written here from the document's formulas)."""
    X, Y, Xt, Yt = data.X_train.T, data.y_train.T, data.X_test.T, data.y_test.T
    W = [w.copy() for w in W]
    b = [c.reshape(-1, 1).copy() for c in b]
    n = len(W)

    def forward(A):
        cache, zs = [A], []
        for l in range(n):
            Z = W[l] @ A + b[l]
            zs.append(Z)
            A = 1 / (1 + np.exp(-Z)) if (l == n - 1 or activation == "sigmoid") else np.maximum(Z, 0)
            cache.append(A)
        return A, cache, zs

    def cost(A, Y):
        return -np.mean(Y * np.log(A + 1e-8) + (1 - Y) * np.log(1 - A + 1e-8))

    out = {"loss": [], "accuracy": [], "test_loss": [], "test_accuracy": [], "grad_norm": []}
    for _ in range(epochs):
        AL, cache, zs = forward(X)
        m = X.shape[1]
        out["loss"].append(cost(AL, Y))
        out["accuracy"].append(np.mean((AL > 0.5) == Y))
        dA = -(Y / (AL + 1e-8) - (1 - Y) / (1 - AL + 1e-8))
        grads = {}
        for l in reversed(range(n)):
            if l == n - 1 or activation == "sigmoid":
                s = 1 / (1 + np.exp(-zs[l]))
                dZ = dA * s * (1 - s)
            else:
                dZ = dA * (zs[l] > 0)
            grads[l] = (dZ @ cache[l].T / m, dZ.sum(1, keepdims=True) / m)
            dA = W[l].T @ dZ
        norm = np.sqrt(sum(np.sum(g * g) + np.sum(h * h) for g, h in grads.values()))
        out["grad_norm"].append(norm)
        coef = min(1.0, clip / (norm + 1e-8)) if clip else 1.0
        for l in range(n):
            W[l] -= lr * coef * grads[l][0]
            b[l] -= lr * coef * grads[l][1]
        At, _, _ = forward(Xt)
        out["test_loss"].append(cost(At, Yt))
        out["test_accuracy"].append(np.mean((At > 0.5) == Yt))
    return out


def test_lab_compare_reproduces_document_004s_training_loop():
    """gradcore.lab.run(['compare'], quick=True): the baseline, ReLU + He and clipped runs'
    per-epoch training loss and accuracy (before the update), test loss and accuracy (after
    it) and pre-clip gradient norms are document 004's NumPy loop's from the same weights."""
    from gradcore.lab import run
    from gradcore.lab._setup import COMPARE_DIMS, load_data, mlp

    seed = 3
    records = run(["compare"], out=None, quick=True, seed=seed, plots=False, print_fn=None)["experiments"]["compare"]["data"]
    data = load_data(seed, 400)
    for label, activation, init_type, lr, clip in [("baseline: sigmoid + random", "sigmoid", "random", 0.1, None),
                                                  ("relu + he", "relu", "he", 0.01, None),
                                                  ("relu + he + clip 5", "relu", "he", 0.01, 5.0)]:
        gradcore.manual_seed(seed)  # the lab draws each network from the reseeded stream
        net = mlp(COMPARE_DIMS, activation, init_type)
        ref = _document_004_train([np.array(layer.weight.data) for layer in net],
                                  [np.array(layer.bias.data) for layer in net], activation, lr,
                                  len(records[label]["loss"]), data, clip)
        got = records[label]
        for key in ("accuracy", "test_accuracy"):
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{label}: {key}")
        for key in ("loss", "test_loss"):  # the document's +1e-8 in the logs against Keras' clip at 1e-7
            np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-6, err_msg=f"{label}: {key}")
        np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=1e-5, err_msg=f"{label}: grad_norm")


# ---------------------------------------------------------------------- after merging h-fixfit (main 8a6631c)
# mended: decay_steps takes a positive float as Keras documents
def test_keras_documented_schedule_examples_run_with_float_decay_steps():
    from gradcore.optim import schedules

    inverse = schedules.InverseTimeDecay(initial_learning_rate=0.1, decay_steps=1.0, decay_rate=0.5)
    exponential = schedules.ExponentialDecay(0.1, decay_steps=10.0, decay_rate=0.96, staircase=True)
    cosine = schedules.CosineDecay(0.1, decay_steps=100.0, alpha=0.1)
    for t in (0, 1, 5, 37, 200):
        assert inverse(t) == pytest.approx(0.1 / (1 + 0.5 * t / 1.0), rel=1e-12)
        assert exponential(t) == pytest.approx(0.1 * 0.96 ** np.floor(t / 10.0), rel=1e-12)
        s = min(t, 100)
        assert cosine(t) == pytest.approx(0.1 * (0.9 * 0.5 * (1 + np.cos(np.pi * s / 100.0)) + 0.1), rel=1e-12)
