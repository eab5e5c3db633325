"""gradcore.monitor.plots: every figure renders with Agg, saves a readable PNG, and draws
exactly the recorded numbers (read back from the Axes), layers in forward order.

The sources here are small stand-ins written to the team contract of MonitorHistory /
GradientMonitor / Diagnosis, so the plots are checked independently of the monitor; the
tests at the end run the real monitor through a short fit.
"""
import math
import sys
from collections import namedtuple

import numpy as np
import pytest

from gradcore.monitor import plots


@pytest.fixture
def agg():
    """matplotlib with the Agg backend, or a skip when it is not installed."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    return matplotlib


uses_matplotlib = pytest.mark.usefixtures("agg")

LayerInfo = namedtuple("LayerInfo", "name index kind activation family params")


class FakeHistory:
    """A MonitorHistory by the contract: long-format rows (step, layer, metric, value)."""

    def __init__(self, rows, layer_order):
        self.step = np.array([r[0] for r in rows], dtype=np.int64)
        self.layer = np.array([r[1] for r in rows], dtype=object)
        self.metric = np.array([r[2] for r in rows], dtype=object)
        self.value = np.array([r[3] for r in rows], dtype=np.float64)
        self._order = list(layer_order)

    def __len__(self):
        return len(self.step)

    def steps(self):
        return np.unique(self.step)

    def layers(self):
        return [name for name in self._order if name in set(self.layer)]

    def metrics(self, layer=None):
        mask = np.ones(len(self), bool) if layer is None else self.layer == layer
        return list(dict.fromkeys(self.metric[mask]))

    def at(self, step=-1):
        if step == -1:
            step = int(self.step.max())
        mask = self.step == step
        return {(lay, met): float(v) for lay, met, v in zip(self.layer[mask], self.metric[mask], self.value[mask])}

    def series(self, layer, metric):
        mask = (self.layer == layer) & (self.metric == metric)
        return self.step[mask], self.value[mask]


class FakeMonitor:
    def __init__(self, history, layers, histograms=None):
        self.history = history
        self.layers = layers
        if histograms is not None:
            self.histograms = histograms


class FakeDiagnosis:
    def __init__(self, layer_stats, layer_info=None):
        self.layer_stats = layer_stats
        self.layer_info = layer_info or {}


# forward order on purpose not the sorted order of the names ("10" sorts before "2")
LAYERS = [LayerInfo("0", 0, "Dense", "sigmoid", None, ["weight", "bias"]),
          LayerInfo("2", 1, "Dense", "sigmoid", None, ["weight", "bias"]),
          LayerInfo("10", 2, "ReLU", "relu", None, []),
          LayerInfo("1", 3, "Dense", None, None, ["weight", "bias"])]
STEPS = [0, 3, 6, 9, 12]


def make_rows(seed=0, dead=True):
    """Per step and layer: norms spread over decades (vanishing towards the input), a ReLU
    module without weights, global loss / grad_norm / clip_coef."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in STEPS:
        rows += [(s, "", "loss", 1.0 / (1 + s)), (s, "", "grad_norm", 10.0 ** rng.uniform(-1, 2)),
                 (s, "", "clip_coef", min(1.0, rng.uniform(0.2, 1.5)))]
        for depth, info in enumerate(LAYERS):
            if info.params:
                rows.append((s, info.name, "weight.grad_norm", 10.0 ** (depth - 4 + rng.uniform(-0.3, 0.3))))
                rows.append((s, info.name, "grad_norm", 10.0 ** (depth - 3 + rng.uniform(-0.3, 0.3))))
            rows.append((s, info.name, "dz_norm", 10.0 ** (depth - 2 + rng.uniform(-0.3, 0.3))))
            rows.append((s, info.name, "act_mean", rng.normal()))
            rows.append((s, info.name, "act_std", rng.uniform(0.1, 2.0)))
            if dead and info.kind == "ReLU":
                rows.append((s, info.name, "dead_frac", rng.uniform(0, 1)))
    return rows


def fake_monitor(rows=None, histograms=None):
    rows = make_rows() if rows is None else rows
    return FakeMonitor(FakeHistory(rows, [""] + [i.name for i in LAYERS]), LAYERS, histograms)


def assert_png(path):
    import matplotlib.image
    assert path.exists() and path.stat().st_size > 0
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def bar_heights(ax):
    return np.array([p.get_height() for p in ax.patches])


def bar_centers(ax):
    return np.array([p.get_x() + p.get_width() / 2 for p in ax.patches])


def tick_names(ax):
    return [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]


def line_by_label(ax, label):
    (line,) = [ln for ln in ax.lines if ln.get_label() == label]
    return line


# ---------------------------------------------------------------------------------------
# plot_gradient_flow
# ---------------------------------------------------------------------------------------

@uses_matplotlib
@pytest.mark.parametrize("step", [6, -1])
def test_gradient_flow_plots_the_step_of_the_history(tmp_path, step):
    mon = fake_monitor()
    fig = plots.plot_gradient_flow(mon, step=step, path=tmp_path / "flow.png" if step != -1 else None)
    from matplotlib.figure import Figure
    assert isinstance(fig, Figure)
    if step != -1:
        assert_png(tmp_path / "flow.png")
    at = mon.history.at(STEPS[-1] if step == -1 else step)
    order = ["0", "2", "10", "1"]
    with_weight = ["0", "2", "1"]
    ax_dw, ax_dz, ax_act, ax_ratio = fig.axes
    assert tick_names(ax_ratio) == order
    assert ax_ratio.get_xticklabels()[2].get_text() == "10\nReLU"
    dw = np.array([at[(name, "weight.grad_norm")] for name in with_weight])
    np.testing.assert_allclose(bar_heights(ax_dw), dw, rtol=1e-12)
    np.testing.assert_allclose(bar_centers(ax_dw), [0, 1, 3])  # the ReLU module has no dW
    np.testing.assert_allclose(bar_heights(ax_dz), [at[(n, "dz_norm")] for n in order], rtol=1e-12)
    assert ax_dw.get_yscale() == ax_dz.get_yscale() == ax_ratio.get_yscale() == "log"
    means = ax_act.lines[0].get_ydata()
    np.testing.assert_allclose(means, [at[(n, "act_mean")] for n in order], rtol=1e-12)
    # the error bars span mean - std .. mean + std
    segments = ax_act.collections[0].get_segments()
    stds = np.array([at[(n, "act_std")] for n in order])
    np.testing.assert_allclose([s[:, 1].min() for s in segments], means - stds, rtol=1e-12)
    np.testing.assert_allclose([s[:, 1].max() for s in segments], means + stds, rtol=1e-12)
    ratio = ax_ratio.lines[0]
    np.testing.assert_allclose(ratio.get_xdata(), [0, 1, 3])
    np.testing.assert_allclose(ratio.get_ydata(), dw / dw[0], rtol=1e-12)
    assert f"step {STEPS[-1] if step == -1 else step}" in fig.get_suptitle()


@uses_matplotlib
def test_gradient_flow_from_a_diagnosis_keeps_its_layer_order(tmp_path):
    stats = {"3": {"weight.grad_norm": 2.0, "dz_norm": 5.0, "act_mean": 0.5, "act_std": 0.1},
             "1": {"weight.grad_norm": 0.02, "dz_norm": 0.5, "act_mean": 0.4, "act_std": 0.2},
             "0": {"weight.grad_norm": 1e-5, "dz_norm": 1e-3, "act_mean": 0.5, "act_std": 0.01}}
    stats[""] = {"loss": 0.7}  # the network-wide row is not a layer
    info = {"3": {"kind": "Dense", "activation": "sigmoid"}, "1": {"kind": "Dense", "activation": "sigmoid"}}
    fig = plots.plot_gradient_flow(FakeDiagnosis(stats, info), path=tmp_path / "d.png", title="sigmoid net")
    assert_png(tmp_path / "d.png")
    assert fig.get_suptitle() == "sigmoid net"
    ax_dw, ax_dz, _, ax_ratio = fig.axes
    assert [t.get_text() for t in ax_ratio.get_xticklabels()] == ["3\nDense", "1\nDense", "0"]
    np.testing.assert_allclose(bar_heights(ax_dw), [2.0, 0.02, 1e-5])
    np.testing.assert_allclose(ax_ratio.lines[0].get_ydata(), [1.0, 0.01, 5e-6])
    with pytest.raises(ValueError, match="Diagnosis holds one pass"):
        plots.plot_gradient_flow(FakeDiagnosis(stats), step=3)


@uses_matplotlib
def test_gradient_flow_layers_argument_selects_in_forward_order():
    fig = plots.plot_gradient_flow(fake_monitor(), layers=["1", "0"])
    assert tick_names(fig.axes[3]) == ["0", "1"]
    assert len(fig.axes[0].patches) == 2
    with pytest.raises(ValueError, match="unknown layer '7'"):
        plots.plot_gradient_flow(fake_monitor(), layers=["7"])
    with pytest.raises(TypeError, match="layer names"):
        plots.plot_gradient_flow(fake_monitor(), layers=[0])
    with pytest.raises(TypeError, match="list of layer names"):
        plots.plot_gradient_flow(fake_monitor(), layers="0")


@uses_matplotlib
def test_gradient_flow_masks_zero_and_nan_on_log_axes(tmp_path):
    stats = {"0": {"weight.grad_norm": 0.0, "dz_norm": math.nan, "act_mean": math.inf, "act_std": 1.0},
             "1": {"weight.grad_norm": math.nan, "dz_norm": 0.3, "act_mean": 0.2, "act_std": 0.1},
             "2": {"weight.grad_norm": 1e-3, "dz_norm": 0.0, "act_mean": 0.1, "act_std": 0.1}}
    fig = plots.plot_gradient_flow(FakeDiagnosis(stats), path=tmp_path / "masked.png")
    assert_png(tmp_path / "masked.png")
    ax_dw, ax_dz, ax_act, ax_ratio = fig.axes
    np.testing.assert_allclose(bar_heights(ax_dw), [1e-3])
    np.testing.assert_allclose(bar_centers(ax_dw), [2])
    assert "2 zero, negative or non-finite values not shown" in ax_dw.get_title()
    assert sorted(t.get_text() for t in ax_dw.texts) == ["0", "nan"]
    np.testing.assert_allclose(bar_heights(ax_dz), [0.3])
    assert "2 zero" in ax_dz.get_title()
    assert "1 non-finite value not shown" in ax_act.get_title()
    assert np.isnan(ax_act.lines[0].get_ydata()[0])
    # the first layer's norm is 0: every ratio is undefined, none is invented
    assert np.isnan(ax_ratio.lines[0].get_ydata()).all()
    assert "3 zero" in ax_ratio.get_title()


@uses_matplotlib
def test_gradient_flow_bad_sources():
    with pytest.raises(TypeError, match="GradientMonitor or a MonitorHistory, got dict"):
        plots.plot_gradient_flow({"0": 1.0})
    empty = FakeHistory([], ["", "0"])
    with pytest.raises(ValueError, match="recorded no step"):
        plots.plot_gradient_flow(empty)
    with pytest.raises(ValueError, match="step 5 was not recorded; recorded steps run from 0 to 12"):
        plots.plot_gradient_flow(fake_monitor(), step=5)
    with pytest.raises(TypeError, match="step must be an integer"):
        plots.plot_gradient_flow(fake_monitor(), step=2.0)
    only_loss = FakeHistory([(0, "", "loss", 1.0), (0, "0", "weight.norm", 1.0)], ["", "0"])
    with pytest.raises(ValueError, match="no layer recorded any of weight.grad_norm"):
        plots.plot_gradient_flow(only_loss)


@uses_matplotlib
def test_history_without_the_monitor_is_accepted():
    mon = fake_monitor()
    fig = plots.plot_gradient_flow(mon.history)  # no LayerInfo: plain names as ticks
    assert [t.get_text() for t in fig.axes[3].get_xticklabels()] == ["0", "2", "10", "1"]


# ---------------------------------------------------------------------------------------
# plot_norms, plot_activation_stats, plot_clip_coef
# ---------------------------------------------------------------------------------------

@uses_matplotlib
def test_norms_plot_each_layers_series(tmp_path):
    mon = fake_monitor()
    fig = plots.plot_norms(mon, path=tmp_path / "norms.png")
    assert_png(tmp_path / "norms.png")
    (ax,) = fig.axes
    assert [ln.get_label() for ln in ax.lines] == ["0 Dense", "2 Dense", "1 Dense"]
    for line, name in zip(ax.lines, ["0", "2", "1"]):
        steps, values = mon.history.series(name, "weight.grad_norm")
        np.testing.assert_array_equal(line.get_xdata(), steps)
        np.testing.assert_array_equal(line.get_ydata(), values)
    assert ax.get_yscale() == "log"
    # dz_norm on a linear axis, two layers, still in forward order
    fig = plots.plot_norms(mon, metric="dz_norm", layers=["1", "10"], logy=False)
    (ax,) = fig.axes
    assert [ln.get_label() for ln in ax.lines] == ["10 ReLU", "1 Dense"]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), mon.history.series("1", "dz_norm")[1])
    assert ax.get_yscale() == "linear"


@uses_matplotlib
def test_norms_global_row_only_when_named():
    mon = fake_monitor()
    (ax,) = plots.plot_norms(mon, metric="grad_norm").axes
    assert [ln.get_label() for ln in ax.lines] == ["0 Dense", "2 Dense", "1 Dense"]
    (ax,) = plots.plot_norms(mon, metric="grad_norm", layers=["", "0"]).axes
    assert [ln.get_label() for ln in ax.lines] == ["global", "0 Dense"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), mon.history.series("", "grad_norm")[1])


@uses_matplotlib
def test_norms_mask_zeros_and_nonfinite():
    rows = [(s, "0", "weight.grad_norm", v) for s, v in enumerate([1.0, 0.0, math.nan, math.inf, 1e-6])]
    h = FakeHistory(rows, ["", "0"])
    (ax,) = plots.plot_norms(h).axes
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [1.0, np.nan, np.nan, np.nan, 1e-6])
    assert "3 zero, negative or non-finite values not shown" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["0"]  # where the series first breaks down
    (ax,) = plots.plot_norms(h, logy=False).axes
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [1.0, 0.0, np.nan, np.nan, 1e-6])
    assert "2 non-finite values" in ax.get_title()


@uses_matplotlib
def test_norms_errors_name_the_problem():
    mon = fake_monitor()
    with pytest.raises(ValueError, match="no layer recorded metric 'bias.grad_norm'; recorded metrics: .*dz_norm"):
        plots.plot_norms(mon, metric="bias.grad_norm")
    with pytest.raises(ValueError, match=r"no layer recorded metric 'loss' \(it is a global metric: pass layers=\[''\]\)"):
        plots.plot_norms(mon, metric="loss")
    with pytest.raises(ValueError, match="layer '10' did not record metric 'weight.grad_norm'"):
        plots.plot_norms(mon, layers=["10"])
    with pytest.raises(TypeError, match="metric must be a metric name"):
        plots.plot_norms(mon, metric=None)
    with pytest.raises(TypeError, match="GradientMonitor or a MonitorHistory, got Diagnosis|got FakeDiagnosis"):
        plots.plot_norms(FakeDiagnosis({"0": {"weight.grad_norm": 1.0}}))


@uses_matplotlib
def test_activation_stats_panels_and_numbers(tmp_path):
    mon = fake_monitor()
    fig = plots.plot_activation_stats(mon, path=tmp_path / "act.png")
    assert_png(tmp_path / "act.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in visible] == ["act_mean", "act_std", "dead_frac"]
    for ax in visible:
        metric = ax.get_ylabel()
        names = [n for n in ["0", "2", "10", "1"] if metric in mon.history.metrics(n)]
        assert [ln.get_label().split()[0] for ln in ax.lines] == names
        for line, name in zip(ax.lines, names):
            np.testing.assert_array_equal(line.get_ydata(), mon.history.series(name, metric)[1])
    # a layer keeps its colour in every panel
    relu_lines = [ln for ax in visible for ln in ax.lines if ln.get_label() == "10 ReLU"]
    assert len(relu_lines) == 3 and len({ln.get_color() for ln in relu_lines}) == 1
    # without the fractions: two panels
    fig = plots.plot_activation_stats(fake_monitor(make_rows(dead=False)))
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_visible()] == ["act_mean", "act_std"]
    norms_only = FakeHistory([(0, "0", "weight.grad_norm", 1.0)], ["", "0"])
    with pytest.raises(ValueError, match="no activation statistics .*activations=True"):
        plots.plot_activation_stats(norms_only)


@uses_matplotlib
def test_clip_coef_plots_the_global_rows(tmp_path):
    rows = make_rows()
    rows.append((15, "", "clip_coef", math.nan))  # a skipped step
    rows.append((15, "", "grad_norm", math.inf))
    mon = fake_monitor(rows)
    fig = plots.plot_clip_coef(mon, path=tmp_path / "clip.png")
    assert_png(tmp_path / "clip.png")
    ax_coef, ax_norm = fig.axes
    steps, coef = mon.history.series("", "clip_coef")
    np.testing.assert_array_equal(ax_coef.lines[0].get_xdata(), steps)
    np.testing.assert_array_equal(ax_coef.lines[0].get_ydata(), coef)
    norms = mon.history.series("", "grad_norm")[1]
    np.testing.assert_array_equal(ax_norm.lines[0].get_ydata(), np.where(np.isinf(norms), np.nan, norms))
    assert ax_norm.get_yscale() == "log" and ax_coef.get_yscale() == "linear"
    assert "1 non-finite value" in ax_coef.get_title() and "1 zero" in ax_norm.get_title()
    assert [t.get_text() for t in ax_norm.texts] == ["inf"]
    assert ax_norm.get_xlim()[1] >= 15  # the axis reaches the step where the norm broke down


@uses_matplotlib
def test_series_breaking_down_at_one_step_share_one_mark():
    rows = []
    for layer, bad in (("0", math.nan), ("1", math.inf), ("2", math.nan)):
        rows += [(s, layer, "grad_norm", v) for s, v in enumerate([1.0, 2.0, bad, bad, bad])]
    (ax,) = plots.plot_norms(FakeHistory(rows, ["", "0", "1", "2"]), metric="grad_norm").axes
    assert [t.get_text() for t in ax.texts] == ["inf, nan"]
    assert "9 zero, negative or non-finite values" in ax.get_title()
    assert ax.get_xlim()[1] >= 4  # the axis runs on to the last (non-finite) step
    no_clip = FakeHistory([(0, "", "loss", 1.0), (0, "", "grad_norm", 1.0)], ["", "0"])
    with pytest.raises(ValueError, match="no global clip_coef"):
        plots.plot_clip_coef(no_clip)


# ---------------------------------------------------------------------------------------
# plot_activation_histograms
# ---------------------------------------------------------------------------------------

def make_histograms(rng):
    """{layer: [(step, kind, counts, edges)]} for three steps and three kinds, built with
    np.histogram of random samples."""
    out = {}
    for info in reversed(LAYERS):  # dict order differs from the forward order
        entries = []
        for s in (0, 5, 10):
            for kind in ("activation", "weight", "grad"):
                if kind != "activation" and not info.params:
                    continue
                counts, edges = np.histogram(rng.normal(s, 1 + s, size=200), bins=30)
                entries.append((s, kind, counts, edges))
        out[info.name] = entries
    return out


@uses_matplotlib
def test_histograms_panels_in_forward_order_with_the_counts(tmp_path):
    hist = make_histograms(np.random.default_rng(1))
    mon = fake_monitor(histograms=hist)
    fig = plots.plot_activation_histograms(mon, path=tmp_path / "hist.png")
    assert_png(tmp_path / "hist.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["0 Dense", "2 Dense", "10 ReLU", "1 Dense"]
    assert "step 10" in fig.get_suptitle()
    for ax, name in zip(panels, ["0", "2", "10", "1"]):
        (_, _, counts, edges), = [e for e in hist[name] if e[0] == 10 and e[1] == "activation"]
        np.testing.assert_array_equal(bar_heights(ax), counts)
        np.testing.assert_allclose([p.get_x() for p in ax.patches], edges[:-1])
        np.testing.assert_allclose([p.get_width() for p in ax.patches], np.diff(edges))
    fig = plots.plot_activation_histograms(mon, step=5, kind="grad")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["0 Dense", "2 Dense", "1 Dense"]
    (_, _, counts, _), = [e for e in hist["2"] if e[0] == 5 and e[1] == "grad"]
    np.testing.assert_array_equal(bar_heights(panels[1]), counts)


@uses_matplotlib
def test_histograms_errors():
    mon = fake_monitor(histograms=make_histograms(np.random.default_rng(2)))
    with pytest.raises(ValueError, match="no 'activation' histograms at step 3; .*steps 0 to 10"):
        plots.plot_activation_histograms(mon, step=3)
    with pytest.raises(ValueError, match="kind must be one of"):
        plots.plot_activation_histograms(mon, kind="bias")
    with pytest.raises(ValueError, match=r"recorded no 'activation' histograms \(create it with .*histograms=True"):
        plots.plot_activation_histograms(fake_monitor(histograms={}))
    with pytest.raises(TypeError, match="histograms=True"):
        plots.plot_activation_histograms(fake_monitor())  # a monitor without histograms
    with pytest.raises(TypeError, match="got FakeHistory"):
        plots.plot_activation_histograms(fake_monitor().history)
    broken = {"0": [(0, "activation", np.ones(30), np.linspace(0, 1, 30))]}
    with pytest.raises(ValueError, match=r"layer '0' activation histogram at step 0 has counts of shape \(30,\) "
                                         r"and edges of shape \(30,\)"):
        plots.plot_activation_histograms(fake_monitor(histograms=broken))


# ---------------------------------------------------------------------------------------
# plot_training_comparison
# ---------------------------------------------------------------------------------------

@uses_matplotlib
def test_training_comparison_plots_every_configuration(tmp_path):
    from gradcore.callbacks import History
    rng = np.random.default_rng(3)
    epochs = 12
    runs = {}
    for label in ("Baseline", "Better Init", "Gradient Clipping"):
        runs[label] = {"loss": list(np.exp(-rng.uniform(0, 0.3) * np.arange(epochs))),
                       "test_accuracy": list(rng.uniform(0.4, 0.95, epochs)),
                       "grad_norm": list(10.0 ** rng.uniform(-3, 1, epochs))}
    keras_like = History()
    for e in range(epochs):
        keras_like.on_epoch_end(e, {"loss": 1.0 / (e + 1), "val_accuracy": 0.5 + e / 40, "grad_norm": 0.0 if e == 3 else 1.0})
    runs["Batch Norm"] = keras_like
    fig = plots.plot_training_comparison(runs, path=tmp_path / "cmp.png")
    assert_png(tmp_path / "cmp.png")
    ax_loss, ax_acc, ax_norm, ax_bar = fig.axes
    logs = {k: (v.history if isinstance(v, History) else v) for k, v in runs.items()}
    acc_key = {k: ("val_accuracy" if k == "Batch Norm" else "test_accuracy") for k in runs}
    for ax, key in ((ax_loss, "loss"), (ax_norm, "grad_norm")):
        for label in runs:
            line = line_by_label(ax, label)
            np.testing.assert_array_equal(line.get_xdata(), np.arange(1, epochs + 1))
            expected = np.array(logs[label][key], dtype=float)
            if key == "grad_norm":
                expected[expected <= 0] = np.nan
            np.testing.assert_array_equal(line.get_ydata(), expected)
    for label in runs:
        np.testing.assert_array_equal(line_by_label(ax_acc, label).get_ydata(), logs[label][acc_key[label]])
    assert "1 zero, negative or non-finite value not shown" in ax_norm.get_title()
    assert ax_norm.get_yscale() == "log"
    assert ax_acc.get_ylabel() == "test / validation accuracy"
    np.testing.assert_allclose(bar_heights(ax_bar), [logs[k][acc_key[k]][-1] for k in runs])
    assert [t.get_text() for t in ax_bar.get_xticklabels()] == list(runs)
    # each configuration keeps its colour across panels
    assert line_by_label(ax_loss, "Better Init").get_color() == line_by_label(ax_norm, "Better Init").get_color()


@uses_matplotlib
def test_training_comparison_copes_with_a_diverged_run():
    runs = {"ok": {"loss": [1.0, 0.5], "test_accuracy": [0.5, 0.8], "grad_norm": [1.0, 0.5]},
            "diverged": {"loss": [1.0, math.inf], "test_accuracy": [0.5, math.nan], "grad_norm": [1e3, math.nan]},
            "loss only": {"loss": [2.0, 1.0]}}
    fig = plots.plot_training_comparison(runs)
    ax_loss, ax_acc, ax_norm, ax_bar = fig.axes
    np.testing.assert_array_equal(line_by_label(ax_loss, "diverged").get_ydata(), [1.0, np.nan])
    assert ax_acc.get_ylabel() == "test accuracy"
    assert [ln.get_label() for ln in ax_acc.lines] == ["ok", "diverged"]
    np.testing.assert_allclose(bar_heights(ax_bar), [0.8])
    assert [t.get_text() for t in ax_bar.get_xticklabels()] == ["ok", "diverged"]
    assert [t.get_text() for t in ax_bar.texts if t.get_text() == "nan"] == ["nan"]


@uses_matplotlib
def test_training_comparison_errors():
    with pytest.raises(TypeError, match="non-empty dict"):
        plots.plot_training_comparison([{"loss": [1.0]}])
    with pytest.raises(TypeError, match="empty"):
        plots.plot_training_comparison({})
    with pytest.raises(TypeError, match=r"histories\['a'\] must be a dict of lists or a History, got int"):
        plots.plot_training_comparison({"a": 3})
    with pytest.raises(ValueError, match=r"histories\['a'\] has none of .*test_accuracy.*its keys: train_costs"):
        plots.plot_training_comparison({"a": {"train_costs": [1.0]}})
    with pytest.raises(TypeError, match=r"histories\['a'\]\['loss'\] must be a list of numbers"):
        plots.plot_training_comparison({"a": {"loss": ["x", None, {}]}})
    with pytest.raises(ValueError, match="1-d list"):
        plots.plot_training_comparison({"a": {"loss": [[1.0, 2.0]]}})


# ---------------------------------------------------------------------------------------
# matplotlib: no global state, and a clear error without it
# ---------------------------------------------------------------------------------------

@uses_matplotlib
def test_no_pyplot_figures_are_left_open():
    plots.plot_gradient_flow(fake_monitor())
    plots.plot_training_comparison({"a": {"loss": [1.0, 0.5]}})
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


@uses_matplotlib
def test_saving_to_a_file_object(tmp_path):
    import io
    buffer = io.BytesIO()
    plots.plot_norms(fake_monitor(), path=buffer)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_module_imports_and_calls_explain(monkeypatch):
    import importlib
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    import gradcore.monitor
    monkeypatch.delitem(sys.modules, "gradcore.monitor.plots")
    monkeypatch.setattr(gradcore.monitor, "plots", plots)  # put back after the test
    fresh = importlib.import_module("gradcore.monitor.plots")
    with pytest.raises(ImportError, match=r"pip install 'gradcore\[plot\]'"):
        fresh.plot_gradient_flow(fake_monitor())
    with pytest.raises(ImportError, match=r"plot_training_comparison needs matplotlib"):
        fresh.plot_training_comparison({"a": {"loss": [1.0]}})


# ---------------------------------------------------------------------------------------
# the real GradientMonitor
# ---------------------------------------------------------------------------------------

def small_network(dtype):
    """Sigmoid fused into Dense, an unfused ReLU module, BatchNorm: every kind of row."""
    import gradcore
    from gradcore import nn
    gradcore.manual_seed(0)
    return nn.Sequential(nn.Dense(6, 8, activation="sigmoid", dtype=dtype), nn.Dense(8, 8, dtype=dtype),
                         nn.ReLU(), nn.BatchNorm(8, dtype=dtype), nn.Dense(8, 2, dtype=dtype))


def classification(dtype, n=96):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 6)).astype(dtype)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def fitted(dtype, **monitor_kw):
    from gradcore import optim
    from gradcore.monitor import GradientMonitor
    net = small_network(dtype)
    X, y = classification(dtype)
    net.compile(optim.SGD(net.parameters(), lr=0.1, global_clip_norm=0.5), loss="crossentropy", metrics=["accuracy"])
    mon = GradientMonitor(net, **monitor_kw)
    history = net.fit(X, y, epochs=2, batch_size=32, validation_split=0.25, callbacks=[mon], verbose=0)
    return mon, history


@uses_matplotlib
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_real_monitor_gradient_flow_shows_numpy_norms(tmp_path, dtype):
    """A hand-written loop: the plotted ||dW|| are the NumPy norms of the gradients the
    step used, the first layer's activation mean is NumPy's sigmoid(X W^T + b).mean()."""
    import gradcore.functional as F
    from gradcore import Tensor, optim
    from gradcore.monitor import GradientMonitor
    net = small_network(dtype)
    X, y = classification(dtype, n=32)
    opt = optim.SGD(net.parameters(), lr=0.1)
    mon = GradientMonitor(net, optimizer=opt)
    for _ in range(3):
        opt.zero_grad()
        W0, b0 = (net[0].weight.data.astype(np.float64), net[0].bias.data.astype(np.float64))
        loss = F.cross_entropy(net(Tensor(X)), y)
        loss.backward()
        dw = {name: np.linalg.norm(net[int(name)].weight.grad.astype(np.float64)) for name in ("0", "1", "3", "4")}
        mon.record(loss)
        opt.step()
    fig = plots.plot_gradient_flow(mon, path=tmp_path / "flow.png" if dtype == np.float32 else None)
    if dtype == np.float32:
        assert_png(tmp_path / "flow.png")
    ax_dw, ax_dz, ax_act, ax_ratio = fig.axes
    assert [t.get_text() for t in ax_ratio.get_xticklabels()] == [
        "0\nDense", "1\nDense", "2\nReLU", "3\nBatchNorm", "4\nDense"]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    expected = np.array([dw[n] for n in ("0", "1", "3", "4")])
    np.testing.assert_allclose(bar_heights(ax_dw), expected, rtol=rtol)
    np.testing.assert_allclose(bar_centers(ax_dw), [0, 1, 3, 4])
    np.testing.assert_allclose(ax_ratio.lines[0].get_ydata(), expected / expected[0], rtol=rtol)
    assert len(ax_dz.patches) == 5  # every monitored layer has a dZ row
    sigmoid = 1 / (1 + np.exp(-(X.astype(np.float64) @ W0.T + b0)))
    assert ax_act.lines[0].get_ydata()[0] == pytest.approx(sigmoid.mean(), rel=rtol)
    mon.close()


@uses_matplotlib
def test_real_monitor_over_steps_and_histograms(tmp_path):
    mon, _ = fitted(np.float32, histograms=True)
    h = mon.history
    (ax,) = plots.plot_norms(mon, path=tmp_path / "norms.png").axes
    assert_png(tmp_path / "norms.png")
    assert [ln.get_label() for ln in ax.lines] == ["0 Dense", "1 Dense", "3 BatchNorm", "4 Dense"]
    for line, name in zip(ax.lines, ["0", "1", "3", "4"]):
        np.testing.assert_array_equal(line.get_xdata(), h.series(name, "weight.grad_norm")[0])
        np.testing.assert_array_equal(line.get_ydata(), h.series(name, "weight.grad_norm")[1])

    fig = plots.plot_activation_stats(mon, path=tmp_path / "act.png")
    assert_png(tmp_path / "act.png")
    panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_visible()}
    assert list(panels) == ["act_mean", "act_std", "dead_frac", "saturated_frac"]
    np.testing.assert_array_equal(panels["dead_frac"].lines[0].get_ydata(), h.series("2", "dead_frac")[1])
    np.testing.assert_array_equal(panels["saturated_frac"].lines[0].get_ydata(), h.series("0", "saturated_frac")[1])

    fig = plots.plot_clip_coef(mon, path=tmp_path / "clip.png")
    assert_png(tmp_path / "clip.png")
    coef = h.series("", "clip_coef")[1]
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), coef)
    assert coef.min() < 1.0  # clipping at 0.5 did act

    # a Diagnosis over the history draws its last recorded step, as the monitor does
    at = h.at(-1)
    ax_dw = plots.plot_gradient_flow(mon.diagnose()).axes[0]
    np.testing.assert_array_equal(bar_heights(ax_dw), [at[(n, "weight.grad_norm")] for n in ("0", "1", "3", "4")])

    # a Diagnosis over the history draws its last recorded step, as the monitor does
    at = h.at(-1)
    ax_dw = plots.plot_gradient_flow(mon.diagnose()).axes[0]
    np.testing.assert_array_equal(bar_heights(ax_dw), [at[(n, "weight.grad_norm")] for n in ("0", "1", "3", "4")])

    fig = plots.plot_activation_histograms(mon, path=tmp_path / "hist.png")
    assert_png(tmp_path / "hist.png")
    last = int(h.steps()[-1])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["0 Dense", "1 Dense", "2 ReLU", "3 BatchNorm", "4 Dense"]
    for ax, info in zip(panels, mon.layers):
        (_, _, counts, edges), = [e for e in mon.histograms[info.name] if e[0] == last and e[1] == "activation"]
        np.testing.assert_array_equal(bar_heights(ax), counts)
        np.testing.assert_allclose([p.get_x() for p in ax.patches], edges[:-1])


@uses_matplotlib
def test_real_monitor_without_histograms_or_activations_says_so():
    mon, _ = fitted(np.float64, activations=False)
    with pytest.raises(ValueError, match="histograms=True"):
        plots.plot_activation_histograms(mon)
    with pytest.raises(ValueError, match="activations=True"):
        plots.plot_activation_stats(mon)


@uses_matplotlib
def test_training_comparison_of_fit_histories():
    runs = {f"{np.dtype(dt).name}": fitted(dt)[1] for dt in (np.float32, np.float64)}
    fig = plots.plot_training_comparison(runs)
    ax_loss, ax_acc, ax_norm, ax_bar = fig.axes
    assert ax_acc.get_ylabel() == "validation accuracy"
    for label, history in runs.items():
        np.testing.assert_array_equal(line_by_label(ax_loss, label).get_ydata(), history.history["loss"])
        np.testing.assert_array_equal(line_by_label(ax_acc, label).get_ydata(), history.history["val_accuracy"])
        np.testing.assert_array_equal(line_by_label(ax_norm, label).get_ydata(), history.history["grad_norm"])
    np.testing.assert_allclose(bar_heights(ax_bar), [h.history["val_accuracy"][-1] for h in runs.values()])


@uses_matplotlib
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_real_diagnosis_of_the_documents_sigmoid_network(dtype):
    """The documents' vanishing network (sigmoid, N(0, 0.01) weights): the plotted ||dW||
    are the documents' dW = dZ A_prev^T / m norms recomputed here in float64 NumPy, and
    they shrink layer after layer towards the input."""
    import gradcore
    from gradcore import nn
    from gradcore.monitor import diagnose
    dims = [20, 40, 30, 20, 10, 5, 1]
    gradcore.manual_seed(0)
    net = nn.Sequential(*[nn.Dense(a, b, activation="sigmoid", kernel_initializer=nn.init.get("random"), dtype=dtype)
                          for a, b in zip(dims[:-1], dims[1:])])
    rng = np.random.default_rng(4)
    X = rng.normal(size=(100, 20)).astype(dtype)
    y = (X[:, :3].sum(axis=1) > 0).astype(dtype)
    d = diagnose(net, X, y, loss="binary_crossentropy")

    # the documents' backward pass, columns are samples
    A = [X.T.astype(np.float64)]
    for layer in net:
        W, b = layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64)
        A.append(1 / (1 + np.exp(-(W @ A[-1] + b[:, None]))))
    Y = y.astype(np.float64)[None, :]
    dA = -(Y / A[-1] - (1 - Y) / (1 - A[-1]))
    norms = []
    for l in reversed(range(len(net))):
        dZ = dA * A[l + 1] * (1 - A[l + 1])
        norms.insert(0, np.linalg.norm(dZ @ A[l].T / X.shape[0]))
        dA = net[l].weight.data.astype(np.float64).T @ dZ
    norms = np.array(norms)

    fig = plots.plot_gradient_flow(d)
    ax_dw, _, _, ax_ratio = fig.axes
    assert [t.get_text() for t in ax_ratio.get_xticklabels()] == [f"{i}\nDense" for i in range(6)]
    np.testing.assert_allclose(bar_heights(ax_dw), norms, rtol=1e-4 if dtype == np.float32 else 1e-9)
    np.testing.assert_allclose(ax_ratio.lines[0].get_ydata(), norms / norms[0], rtol=1e-4 if dtype == np.float32 else 1e-9)
    assert np.all(np.diff(bar_heights(ax_dw)) > 0)
