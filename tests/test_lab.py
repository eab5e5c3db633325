"""The lab (``python -m gradcore.lab``): runs end to end in its quick form, its compare
table agrees with a NumPy re-run of the documents' training loop, a seed repeats its
numbers, figures follow --no-plots / matplotlib, and bad arguments are usage errors."""
import importlib
import json
import math
import os
import runpy
import sys

import numpy as np
import pytest

import gradcore
from gradcore.datasets import make_classification, train_test_split
from gradcore.lab import EXPERIMENTS, main, run

SEED = 7
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"results.json holds the non-JSON constant {token}")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    results = run(out=str(out), quick=True, seed=SEED, print_fn=None)
    return out, results


def test_quick_run_writes_report_and_results(quick):
    out, results = quick
    assert (out / "report.md").is_file() and (out / "results.json").is_file()
    saved = _strict_json(out / "results.json")
    assert list(saved["experiments"]) == list(EXPERIMENTS)
    assert saved["seed"] == SEED and saved["quick"] is True
    assert saved["gradcore"]["version"] == gradcore.__version__
    report = (out / "report.md").read_text()
    for name, section in saved["experiments"].items():
        assert f"## {name}: {section['title']}" in report
        for table in section["tables"]:
            assert f"**{table['title']}**" in report
            assert all(len(row) == len(table["columns"]) for row in table["rows"])
        for plot in section["plots"]:  # every figure linked is written, every one written is linked
            assert (out / plot["file"]).is_file()
            assert f"]({plot['file']})" in report
    linked = {p["file"] for s in saved["experiments"].values() for p in s["plots"]}
    assert {p.name for p in out.glob("*.png")} == linked


def test_quick_run_tables_hold_the_documents_findings(quick):
    _, results = quick
    vanishing = results["experiments"]["vanishing"]["data"]
    # sigmoid + randn*0.01: the first layer's gradient is orders of magnitude below the last's
    sigmoid = vanishing["sigmoid + random"]
    assert sigmoid["dW_first"] < 1e-4 * sigmoid["dW_last"]
    relu = vanishing["relu + he"]
    assert 1e-2 < relu["dW_first"] / relu["dW_last"] < 1e2
    # the float32 ReLU network with randn*10 weights overflows without clipping, not with it
    exploding = results["experiments"]["exploding"]["data"]
    assert not all(math.isfinite(v) for v in exploding["relu, randn*10, logits, float32"]["loss"])
    assert all(math.isfinite(v) for v in exploding["relu, randn*10, logits, float32, clip 5"]["loss"])


# ------------------------------------------------------------------ the oracle
def _documents_training(activation, scale, lr, epochs, seed, n_samples):
    """The documents' train_network in NumPy float64: full-batch gradient descent on the
    mean binary cross-entropy (probabilities clipped to [1e-7, 1 - 1e-7] as Keras does),
    weights drawn in layer order from the seeded stream as randn(out, in) * scale(fan_in),
    zero biases. Per epoch: training loss / accuracy of the forward pass before the update,
    the global gradient norm, test loss / accuracy after the update."""
    X, y = make_classification(n_samples=n_samples, n_features=20, n_informative=15, n_redundant=5,
                               random_state=seed, dtype=np.float64)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed)
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0)
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    ytr, yte = ytr.reshape(-1, 1).astype(np.float64), yte.reshape(-1, 1).astype(np.float64)
    dims = [20, 30, 20, 10, 1]
    rng = np.random.default_rng(seed)
    W = [rng.standard_normal((o, i)) * scale(i) for i, o in zip(dims[:-1], dims[1:])]
    b = [np.zeros(o) for o in dims[1:]]
    act = {"relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(np.float64)),
           "sigmoid": (lambda z: 1.0 / (1.0 + np.exp(-z)), lambda z, a: a * (1.0 - a))}[activation]

    def forward(A):
        Zs, As = [], [A]
        for k in range(len(W)):
            Z = As[-1] @ W[k].T + b[k]
            Zs.append(Z)
            As.append(1.0 / (1.0 + np.exp(-Z)) if k == len(W) - 1 else act[0](Z))
        return Zs, As

    def cost(p, t):
        q = np.clip(p, 1e-7, 1 - 1e-7)
        return float(np.mean(-(t * np.log(q) + (1 - t) * np.log(1 - q)))), float(np.mean((p > 0.5) == (t > 0.5)))

    rec = {k: [] for k in ("loss", "accuracy", "grad_norm", "test_loss", "test_accuracy")}
    for _ in range(epochs):
        Zs, As = forward(Xtr)
        loss, acc = cost(As[-1], ytr)
        dZ = (As[-1] - ytr) / len(Xtr)
        grads = []
        for k in reversed(range(len(W))):
            grads.append((dZ.T @ As[k], dZ.sum(axis=0)))
            if k:
                dZ = (dZ @ W[k]) * act[1](Zs[k - 1], As[k])
        grads.reverse()
        norm = math.sqrt(sum(float(np.sum(gw * gw) + np.sum(gb * gb)) for gw, gb in grads))
        for k, (gw, gb) in enumerate(grads):
            W[k] -= lr * gw
            b[k] -= lr * gb
        test_loss, test_acc = cost(forward(Xte)[1][-1], yte)
        for key, value in zip(rec, (loss, acc, norm, test_loss, test_acc)):
            rec[key].append(value)
    return rec


@pytest.mark.parametrize("label, activation, scale, lr", [
    ("baseline: sigmoid + random", "sigmoid", lambda fan_in: 0.01, 0.1),
    ("relu + he", "relu", lambda fan_in: math.sqrt(2.0 / fan_in), 0.01),
])
def test_compare_agrees_with_a_numpy_rerun_of_the_configuration(quick, label, activation, scale, lr):
    _, results = quick
    section = results["experiments"]["compare"]
    record = section["data"][label]
    epochs = len(record["loss"])
    assert epochs == 15
    oracle = _documents_training(activation, scale, lr, epochs, SEED, n_samples=400)
    for key in ("loss", "grad_norm", "test_loss"):
        np.testing.assert_allclose(record[key], oracle[key], rtol=1e-8, err_msg=key)
    for key in ("accuracy", "test_accuracy"):
        np.testing.assert_array_equal(record[key], oracle[key], err_msg=key)
    # the table's row is that run's final numbers
    table = section["tables"][0]
    row = dict(zip(table["columns"], next(r for r in table["rows"] if r[0] == label)))
    assert row["final train acc"] == oracle["accuracy"][-1]
    assert row["final test acc"] == oracle["test_accuracy"][-1]
    assert row["final train loss"] == pytest.approx(oracle["loss"][-1], rel=1e-8)
    assert row["final test loss"] == pytest.approx(oracle["test_loss"][-1], rel=1e-8)
    assert row["avg ||g||"] == pytest.approx(np.mean(oracle["grad_norm"]), rel=1e-8)


def test_clipping_at_5_leaves_the_relu_run_unchanged_when_norms_stay_below(quick):
    """The documents' + clipping configuration: its norms never reach 5, so it must
    repeat relu + he exactly (same weights from the same seed)."""
    data = quick[1]["experiments"]["compare"]["data"]
    assert max(data["relu + he"]["grad_norm"]) < 5.0
    assert data["relu + he + clip 5"]["loss"] == data["relu + he"]["loss"]


# ------------------------------------------------------------------ seeds
def test_same_seed_repeats_the_results_and_another_seed_does_not(tmp_path):
    names = ["exploding", "clipping", "compare"]
    texts = []
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        run(names, out=str(tmp_path / folder), quick=True, seed=seed, plots=False, print_fn=None)
        texts.append((tmp_path / folder / "results.json").read_text())
    assert texts[0] == texts[1]
    first, other = json.loads(texts[0]), json.loads(texts[2])
    assert first["experiments"]["compare"]["data"] != other["experiments"]["compare"]["data"]


# ------------------------------------------------------------------ figures
def test_no_plots_writes_no_png(tmp_path, capsys):
    assert main(["compare", "--quick", "--no-plots", "--out", str(tmp_path), "--seed", "1"]) == 0
    assert not list(tmp_path.glob("*.png"))
    assert "![" not in (tmp_path / "report.md").read_text()
    assert _strict_json(tmp_path / "results.json")["experiments"]["compare"]["plots"] == []


def test_without_matplotlib_no_png_and_the_run_says_so(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    printed = []
    run(["compare"], out=str(tmp_path), quick=True, seed=1, print_fn=printed.append)
    assert not list(tmp_path.glob("*.png"))
    assert any("matplotlib is not installed" in text for text in printed)


def test_figures_are_written_when_matplotlib_and_the_plots_are_there(quick):
    pytest.importorskip("matplotlib")
    out, results = quick
    section = results["experiments"]["compare"]
    if any("plot_training_comparison" in m for m in section["missing"]):
        pytest.skip("gradcore.monitor.plots is not in this build")
    assert (out / "compare_training.png").is_file()
    assert (out / "compare_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ command line
def test_main_prints_the_build_info_first(tmp_path, capsys):
    main(["compare", "--quick", "--no-plots", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"gradcore {gradcore.__version__}"
    assert any(line.startswith("== compare:") for line in lines)
    assert any(line.startswith("relu + he + batchnorm") for line in lines)  # the table, as it goes


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "unknown experiment 'nosuch'"),
    (["--seed", "x"], "invalid int value"),
    (["--seed", "-1"], "--seed must be a non-negative integer"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--out"], "expected one argument"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m gradcore.lab") and message in err


def test_run_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown experiment.*'vanish'"):
        run(["vanish"], out=None)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        run(["compare"], out=None, seed=-3)


def test_python_m_gradcore_lab_runs_main(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gradcore.lab", "compare", "--quick", "--no-plots", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("gradcore.lab", run_name="__main__")
    assert exc.value.code == 0
    assert (tmp_path / "results.json").is_file()


def test_console_script_entry_point_resolves():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    module, _, attr = scripts["gradcore-lab"].partition(":")
    assert getattr(importlib.import_module(module), attr) is main
