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
from gradcore.lab.report import markdown_text

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
    results = run(out=str(out), quick=True, seed=SEED, plots=False, print_fn=None)  # figures: tested below
    return out, results


def test_quick_run_writes_report_and_results(quick):
    out, results = quick
    assert (out / "report.md").is_file() and (out / "results.json").is_file()
    saved = _strict_json(out / "results.json")
    assert list(saved["experiments"]) == list(EXPERIMENTS)
    assert saved["seed"] == SEED and saved["quick"] is True
    assert saved["gradcore"]["version"] == gradcore.__version__
    # strict JSON: the overflowing run's NaN losses are written as the string "nan"
    assert "nan" in saved["experiments"]["exploding"]["data"]["relu, randn*10, logits, float32"]["loss"]
    report = (out / "report.md").read_text()
    for name, section in saved["experiments"].items():
        assert f"## {name}: {section['title']}" in report
        for table in section["tables"]:
            assert f"**{markdown_text(table['title'])}**" in report
            assert all(len(row) == len(table["columns"]) for row in table["rows"])
        assert section["plots"] == []
    assert not list(out.glob("*.png"))


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
    located = exploding["relu, randn*10, logits, float32"]["nonfinite"]
    if located is not None:  # the GradientMonitor's event: at the step whose loss is the first non-finite one
        losses = exploding["relu, randn*10, logits, float32"]["loss"]
        assert located["step"] == next(i for i, v in enumerate(losses) if not math.isfinite(v))


# ------------------------------------------------------------------ the oracle
ACTIVATIONS = {  # activation, its derivative from (Z, A)
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(np.float64)),
    "sigmoid": (lambda z: 1.0 / (1.0 + np.exp(-z)), lambda z, a: a * (1.0 - a)),
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
}
SCALES = {"random": lambda fan_in: 0.01, "he": lambda fan_in: math.sqrt(2.0 / fan_in),
          "xavier": lambda fan_in: math.sqrt(1.0 / fan_in)}


def _documents_data(seed, n_samples):
    """make_classification as the lab asks for it, split 80/20, standardised (train stats)."""
    X, y = make_classification(n_samples=n_samples, n_features=20, n_informative=15, n_redundant=5,
                               random_state=seed, dtype=np.float64)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed)
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0)
    return (Xtr - mu) / sd, ytr.reshape(-1, 1).astype(np.float64), (Xte - mu) / sd, yte.reshape(-1, 1).astype(float)


class DocumentsNet:
    """The documents' DeepNeuralNetwork in NumPy float64: weights randn(out, in) *
    scale(fan_in) drawn in layer order from the seeded stream, zero biases, ``activation``
    in the hidden layers, a sigmoid output, binary cross-entropy averaged over the batch
    (probabilities clipped to [1e-7, 1 - 1e-7] as Keras does)."""

    def __init__(self, dims, activation, init, seed):
        rng = np.random.default_rng(seed)
        self.W = [rng.standard_normal((o, i)) * SCALES[init](i) for i, o in zip(dims[:-1], dims[1:])]
        self.b = [np.zeros(o) for o in dims[1:]]
        self.act, self.dact = ACTIVATIONS[activation]

    def forward(self, X):
        self.Z, self.A = [], [X]
        for k, (W, b) in enumerate(zip(self.W, self.b)):
            Z = self.A[-1] @ W.T + b
            self.Z.append(Z)
            self.A.append(ACTIVATIONS["sigmoid"][0](Z) if k == len(self.W) - 1 else self.act(Z))
        return self.A[-1]

    @staticmethod
    def cost(p, t):
        """(mean binary cross-entropy, accuracy at 0.5)."""
        q = np.clip(p, 1e-7, 1 - 1e-7)
        return float(np.mean(-(t * np.log(q) + (1 - t) * np.log(1 - q)))), float(np.mean((p > 0.5) == (t > 0.5)))

    def backward(self, y):
        """[(dW, db, dZ)] per layer after ``forward``; dZ of the batch-mean loss."""
        dZ = (self.A[-1] - y) / len(y)
        out = []
        for k in reversed(range(len(self.W))):
            out.append((dZ.T @ self.A[k], dZ.sum(axis=0), dZ))
            if k:
                dZ = (dZ @ self.W[k]) * self.dact(self.Z[k - 1], self.A[k])
        return out[::-1]


def _documents_training(activation, init, lr, epochs, seed, n_samples):
    """The documents' train_network: full-batch gradient descent. Per epoch: training loss
    / accuracy of the forward pass before the update, the global gradient norm, test loss
    / accuracy after the update."""
    Xtr, ytr, Xte, yte = _documents_data(seed, n_samples)
    net = DocumentsNet([20, 30, 20, 10, 1], activation, init, seed)
    rec = {k: [] for k in ("loss", "accuracy", "grad_norm", "test_loss", "test_accuracy")}
    for _ in range(epochs):
        loss, acc = net.cost(net.forward(Xtr), ytr)
        grads = net.backward(ytr)
        norm = math.sqrt(sum(float(np.sum(gw * gw) + np.sum(gb * gb)) for gw, gb, _ in grads))
        for k, (gw, gb, _) in enumerate(grads):
            net.W[k] -= lr * gw
            net.b[k] -= lr * gb
        test_loss, test_acc = net.cost(net.forward(Xte), yte)
        for key, value in zip(rec, (loss, acc, norm, test_loss, test_acc)):
            rec[key].append(value)
    return rec


@pytest.mark.parametrize("label, activation, init", [("sigmoid + random", "sigmoid", "random"),
                                                     ("relu + he", "relu", "he"),
                                                     ("tanh + xavier", "tanh", "xavier")])
def test_vanishing_norms_agree_with_a_numpy_pass(quick, label, activation, init):
    entry = quick[1]["experiments"]["vanishing"]["data"][label]
    Xtr, ytr, _, _ = _documents_data(SEED, 400)
    net = DocumentsNet([20, 50, 40, 30, 20, 10, 1], activation, init, SEED)
    net.forward(Xtr[:100])
    grads = net.backward(ytr[:100])
    assert len(entry["layers"]) == len(grads) == 6
    for (dW, db, dZ), stats in zip(grads, entry["layers"].values()):
        assert stats["weight.grad_norm"] == pytest.approx(np.linalg.norm(dW), rel=1e-7)
        assert stats["bias.grad_norm"] == pytest.approx(np.linalg.norm(db), rel=1e-7)
        if "dz_norm" in stats:  # recorded by the GradientMonitor
            assert stats["dz_norm"] == pytest.approx(np.linalg.norm(dZ), rel=1e-7)


@pytest.mark.parametrize("label, activation, init, lr", [
    ("baseline: sigmoid + random", "sigmoid", "random", 0.1),
    ("relu + he", "relu", "he", 0.01),
])
def test_compare_agrees_with_a_numpy_rerun_of_the_configuration(quick, label, activation, init, lr):
    _, results = quick
    section = results["experiments"]["compare"]
    record = section["data"][label]
    epochs = len(record["loss"])
    assert epochs == 15
    oracle = _documents_training(activation, init, lr, epochs, SEED, n_samples=400)
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
    texts = []
    for folder, seed, names in (("a", 3, None), ("b", 3, None), ("c", 4, ["compare"])):
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


def test_figures_are_written_and_linked_when_matplotlib_and_the_plots_are_there(tmp_path):
    pytest.importorskip("matplotlib")
    section = run(["compare"], out=str(tmp_path), quick=True, seed=SEED, print_fn=None)["experiments"]["compare"]
    if any("plot_training_comparison" in m for m in section["missing"]):
        pytest.skip("gradcore.monitor.plots is not in this build")
    report = (tmp_path / "report.md").read_text()
    for plot in section["plots"]:
        assert (tmp_path / plot["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot['file']})" in report
    assert {p.name for p in tmp_path.glob("*.png")} == {p["file"] for p in section["plots"]}
    assert "compare_training.png" in {p["file"] for p in section["plots"]}


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
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--threads", "1025"], "--threads must be a positive integer (at most 1024)"),
    (["--seed", str(2 ** 64)], "--seed must be a non-negative integer below 2**64"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m gradcore.lab") and message in err


def test_table_rows_must_fill_every_column():
    from gradcore.lab.report import Table

    table = Table("t", ["a", "b"])
    table.add("x", 1.5)
    with pytest.raises(ValueError, match="a row needs 2 cells, got 3"):
        table.add("x", 1.5, 2)


def test_run_uses_its_threads_and_restores_the_callers():
    before = gradcore.get_num_threads()
    results = run(["compare"], out=None, quick=True, print_fn=None, threads=1)
    assert results["gradcore"]["info"]["threads"] == 1
    assert gradcore.get_num_threads() == before


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


def test_an_out_that_is_a_file_or_under_one_is_a_usage_error(tmp_path, capsys):
    """--out naming an existing file, or a folder below a file, exits with status 2 and a
    message naming --out before anything runs (nothing printed to stdout)."""
    target = tmp_path / "a_file"
    target.write_text("x")
    for out in (target, target / "below"):
        with pytest.raises(SystemExit) as exc:
            main(["vanishing", "--quick", "--no-plots", "--out", str(out)])
        assert exc.value.code == 2
        captured = capsys.readouterr()
        assert "--out" in captured.err and captured.out == ""
    assert target.read_text() == "x"


def test_run_refuses_a_seed_or_thread_count_out_of_range_before_writing(tmp_path):
    out = tmp_path / "lab"
    with pytest.raises(ValueError, match="below 2\\*\\*64"):
        run(["repair"], out=str(out), quick=True, seed=2 ** 64, plots=False, print_fn=None)
    with pytest.raises(ValueError, match="threads must be"):
        run(["repair"], out=str(out), quick=True, threads=2000, plots=False, print_fn=None)
    assert not out.exists()
