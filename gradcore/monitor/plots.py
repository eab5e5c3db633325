"""Figures of what a GradientMonitor recorded: the documents' gradient-flow figure, norms
and activation statistics over the steps, activation histograms, the clip coefficient, and
the documents' comparison of training configurations.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global
figure state, nothing is shown) and saves it when ``path`` is given: a file name, whose
extension picks the format, or a binary file object (then PNG). matplotlib is imported
when a function is called, so ``gradcore.monitor`` itself works without it.

A log axis cannot show zeros, negative values, NaN or Inf, and a linear axis cannot show
Inf: such points are left out (a gap in a line, no bar), each marked on the axis with its
value, and counted in the panel's title, so a broken training run still gets its figure.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _validate

# What a MonitorHistory offers (the contract the plots read through).
_HISTORY_METHODS = ("at", "series", "layers", "metrics", "steps")
# Metrics of the gradient-flow figure (names as the monitor records them).
_FLOW_METRICS = ("weight.grad_norm", "dz_norm", "act_mean", "act_std")
# Activation statistics over time, in panel order (the fractions only when recorded).
_ACTIVATION_METRICS = (("act_mean", "activation mean"), ("act_std", "activation std"),
                       ("dead_frac", "dead-unit fraction (ReLU family)"),
                       ("saturated_frac", "saturated fraction (sigmoid / tanh)"))
_HISTOGRAM_KINDS = ("activation", "weight", "grad")
# plot_training_comparison: panel -> accepted keys of a history, first match wins.
_COMPARISON_KEYS = {"loss": ("loss",), "accuracy": ("test_accuracy", "val_accuracy"),
                    "grad_norm": ("grad_norm",)}


# ---------------------------------------------------------------------------------------
# matplotlib and the figure
# ---------------------------------------------------------------------------------------

def _new_figure(op: str, figsize: Tuple[float, float]):
    """A fresh pyplot-free Figure, or an ImportError telling how to get matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"{op} needs matplotlib: pip install 'gradcore[plot]' "
                          "(or pip install matplotlib)") from exc
    return Figure(figsize=figsize, layout="constrained")


def _finish(fig, path):
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _grid(fig, panels: int, max_cols: int, cell: Tuple[float, float]):
    """``panels`` axes in a grid of at most ``max_cols`` columns (extra cells hidden), the
    figure sized to ``cell`` inches (width, height) per cell."""
    cols = min(max_cols, panels)
    rows = -(-panels // cols)
    fig.set_size_inches(cell[0] * cols, cell[1] * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return list(axes[:panels])


def _layer_colors(n: int) -> List:
    """One colour per layer, shallow to deep along a colormap, so depth reads at a glance."""
    from matplotlib import colormaps
    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


# ---------------------------------------------------------------------------------------
# values an axis cannot show
# ---------------------------------------------------------------------------------------

def _showable(values, log: bool) -> Tuple[np.ndarray, np.ndarray]:
    """``values`` as float64 with the points the axis cannot show replaced by NaN, and the
    mask of those points (non-finite ones, and those <= 0 on a log axis). A NaN input is
    counted as hidden too: it is a value the run produced, not a gap in the record."""
    v = np.asarray(values, dtype=np.float64)
    hidden = ~np.isfinite(v)
    if log:
        hidden |= ~hidden & (v <= 0)
    return np.where(hidden, np.nan, v), hidden


def _mark_hidden(ax, x, values, reach=None) -> None:
    """Write the hidden values ("0", "nan", "inf", "-0.3") at their x, at the axis' foot
    (those of several series at one x as one label), and widen the x range to take in
    ``x`` and ``reach`` (every hidden x: a run that ended in NaN ends there, not at its
    last finite point)."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    labels: Dict[float, set] = {}
    for xi, vi in zip(x, np.atleast_1d(values)):
        labels.setdefault(float(xi), set()).add(f"{vi:.2g}")
    for xi, texts in labels.items():
        ax.text(xi, 0.02, ", ".join(sorted(texts)), transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize="small", color="crimson")
    extent = np.concatenate([x, np.atleast_1d(np.asarray(reach if reach is not None else [], dtype=np.float64))])
    if extent.size:
        ax.dataLim.update_from_data_x(extent, ignore=False)  # read when the axes autoscale, at draw


class _Breakdowns:
    """The first hidden point of each series (where it breaks down) and every hidden x,
    gathered over the series of one panel, then marked at once."""

    def __init__(self):
        self.x, self.values, self.reach = [], [], []

    def add(self, x, values, hidden) -> None:
        x, values = np.asarray(x, dtype=np.float64), np.asarray(values, dtype=np.float64)
        first = np.flatnonzero(hidden)[:1]
        self.x.append(x[first])
        self.values.append(values[first])
        self.reach.append(x[hidden])

    def mark(self, ax) -> None:
        if self.x:
            _mark_hidden(ax, np.concatenate(self.x), np.concatenate(self.values), np.concatenate(self.reach))


def _title(ax, title: str, hidden: int, log: bool) -> None:
    if hidden:
        what = "zero, negative or non-finite" if log else "non-finite"
        title = f"{title}\n({hidden} {what} value{'s' if hidden > 1 else ''} not shown)"
    ax.set_title(title, fontsize="medium")


def _integer_x(ax, label: str) -> None:
    """Label the x axis (steps or epochs) and keep its ticks on whole numbers."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="gray")


# ---------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------

def _is_history(obj) -> bool:
    return all(callable(getattr(obj, name, None)) for name in _HISTORY_METHODS)


def _history(op: str, source):
    """The MonitorHistory of ``source`` (a GradientMonitor or a MonitorHistory), which must
    hold at least one recorded step."""
    if _is_history(source):
        history = source
    elif _is_history(getattr(source, "history", None)):
        history = source.history
    else:
        raise TypeError(f"{op}: source must be a GradientMonitor or a MonitorHistory, "
                        f"got {type(source).__name__}")
    if len(history.steps()) == 0:
        raise ValueError(f"{op}: the monitor has recorded no step yet (pass it to fit(callbacks=[...]) "
                         "or call record(loss) after backward; only training-mode forwards are recorded)")
    return history


def _resolve_step(op: str, history, step) -> int:
    """``step`` as a recorded step of ``history`` (-1: the last one)."""
    step = _validate.integer(op, "step", step, low=-1)
    steps = np.asarray(history.steps())
    if step == -1:
        return int(steps[-1])
    if step not in steps:
        raise ValueError(f"{op}: step {step} was not recorded; recorded steps run from "
                         f"{int(steps[0])} to {int(steps[-1])} ({len(steps)} steps)")
    return step


def _kinds(source) -> Dict[str, str]:
    """Layer name -> class name, from a monitor's ``layers`` (LayerInfo list) or a
    Diagnosis' ``layer_info`` ({layer: {"kind": ...}}); empty for a bare history."""
    infos = getattr(source, "layers", None)
    if isinstance(infos, (list, tuple)):
        return {info.name: info.kind for info in infos if hasattr(info, "name") and hasattr(info, "kind")}
    infos = getattr(source, "layer_info", None)
    if isinstance(infos, Mapping):
        return {name: info["kind"] for name, info in infos.items() if isinstance(info, Mapping) and info.get("kind")}
    return {}


def _tick(name: str, kinds: Dict[str, str]) -> str:
    if name == "":
        return "global"
    return f"{name}\n{kinds[name]}" if name in kinds else name


def _check_layers(op: str, layers, known: Sequence[str]) -> List[str]:
    """The requested layer names (a list of str, each one the history knows)."""
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
        raise TypeError(f"{op}: layers must be a list of layer names, got {type(layers).__name__} ({layers!r})")
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"{op}: layers must hold layer names (str, as in named_modules), "
                            f"got {type(name).__name__} ({name!r})")
        if name not in known:
            raise ValueError(f"{op}: unknown layer {name!r}; recorded layers: "
                             f"{', '.join(repr(k) for k in known)}")
    return list(layers)


def _flow_stats(op: str, source, step) -> Tuple[List[Tuple[str, Dict[str, float]]], str]:
    """[(layer, {metric: value})] in forward order, and what the numbers are of."""
    stats = getattr(source, "layer_stats", None)
    if isinstance(stats, Mapping):  # a Diagnosis: one forward and backward pass
        if step != -1:
            raise ValueError(f"{op}: a Diagnosis holds one pass, so step must be -1, got {step!r}")
        rows = [(str(layer), dict(metrics)) for layer, metrics in stats.items() if layer != ""]
        return rows, "diagnosis pass"
    history = _history(op, source)
    step = _resolve_step(op, history, step)
    rows = {layer: {} for layer in history.layers() if layer != ""}
    for (layer, metric), value in history.at(step).items():  # one pass over the step's values
        if layer in rows:
            rows[layer][metric] = value
    return list(rows.items()), f"step {step}"


# ---------------------------------------------------------------------------------------
# the plots
# ---------------------------------------------------------------------------------------

def plot_gradient_flow(source, step: int = -1, path=None, title: Optional[str] = None,
                       layers: Optional[Sequence[str]] = None):
    """The documents' gradient-flow figure at one step, layers in forward order.

    Four panels: the weight-gradient norm ||dW|| per layer (metric ``weight.grad_norm``,
    log scale); the norm of the gradient w.r.t. each layer's output before its activation,
    ||dZ|| (``dz_norm``, log scale; the gradient of the batch-mean loss, so the documents'
    summed-loss dZ is this times the batch size); the activation mean ± std per layer
    (``act_mean``, ``act_std``); and ||dW|| relative to the first layer's (log scale).

    ``source``: a GradientMonitor or MonitorHistory (``step``: a recorded step, -1 the
    last) or a Diagnosis (its ``layer_stats``; ``step`` must stay -1). ``layers``: names
    to show (default: every layer that recorded one of these metrics). A layer without a
    metric (a ReLU module has no dW) has no point in that panel. Returns the Figure.
    """
    op = "plot_gradient_flow"
    fig = _new_figure(op, (13, 9))
    rows, of_what = _flow_stats(op, source, step)
    if layers is not None:
        wanted = _check_layers(op, layers, [name for name, _ in rows])
        rows = [row for row in rows if row[0] in wanted]
    else:
        rows = [row for row in rows if any(m in row[1] for m in _FLOW_METRICS)]
    if not rows:
        raise ValueError(f"{op}: no layer recorded any of {', '.join(_FLOW_METRICS)} at {of_what}")
    kinds = _kinds(source)
    names = [name for name, _ in rows]
    x = np.arange(len(rows))

    def column(metric):
        """Positions of the layers that recorded ``metric``, and their values."""
        have = [i for i, (_, stats) in enumerate(rows) if metric in stats]
        return x[have], np.array([rows[i][1][metric] for i in have], dtype=np.float64)

    (ax_dw, ax_dz), (ax_act, ax_ratio) = fig.subplots(2, 2, sharex=True)
    for ax, metric, color, label in ((ax_dw, "weight.grad_norm", "tab:blue", "weight-gradient norm ||dW||"),
                                     (ax_dz, "dz_norm", "tab:green", "pre-activation gradient norm ||dZ||")):
        pos, values = column(metric)
        shown, hidden = _showable(values, log=True)
        ax.bar(pos[~hidden], shown[~hidden], color=color, alpha=0.75)
        ax.set_yscale("log")
        _mark_hidden(ax, pos[hidden], values[hidden])
        if len(pos) == 0:
            _no_data(ax, f"no {metric} recorded")
        _title(ax, f"{label} per layer", int(hidden.sum()), log=True)
        ax.set_ylabel("norm")

    pos, means = column("act_mean")  # positions are the rows' indices
    stds = np.array([rows[i][1].get("act_std", np.nan) for i in pos], dtype=np.float64)
    shown, hidden = _showable(means, log=False)
    spread, no_spread = _showable(stds, log=False)
    if len(pos):
        ax_act.errorbar(pos, shown, yerr=spread, marker="o", capsize=4, color="tab:purple")
    else:
        _no_data(ax_act, "no activation statistics recorded")
    _mark_hidden(ax_act, pos[hidden], means[hidden])
    _title(ax_act, "activation mean ± std per layer", int(hidden.sum() + (no_spread & ~hidden).sum()), log=False)
    ax_act.set_ylabel("activation")

    pos, dw = column("weight.grad_norm")
    if len(pos):
        # Relative to the first layer's norm, as the documents; a first norm of 0 or nan
        # makes every ratio undefined rather than silently picking another reference.
        ratio = dw / dw[0] if np.isfinite(dw[0]) and dw[0] > 0 else np.full_like(dw, np.nan)
        shown, hidden = _showable(ratio, log=True)
        ax_ratio.plot(pos, shown, marker="s", color="tab:red", linewidth=2)
        _mark_hidden(ax_ratio, pos[hidden], ratio[hidden])
        ax_ratio.set_yscale("log")
        _title(ax_ratio, f"||dW|| relative to the first layer ({names[pos[0]]!r})", int(hidden.sum()), log=True)
    else:
        _no_data(ax_ratio, "no weight.grad_norm recorded")
        _title(ax_ratio, "||dW|| relative to the first layer", 0, log=True)
    ax_ratio.set_ylabel("ratio")

    for ax in (ax_dw, ax_dz, ax_act, ax_ratio):
        ax.grid(True, alpha=0.3)
    ax_ratio.set_xlim(-0.5, len(rows) - 0.5)  # every layer keeps its slot, drawn or not
    for ax in (ax_act, ax_ratio):
        ax.set_xticks(x, [_tick(n, kinds) for n in names], fontsize="small")
        ax.set_xlabel("layer (forward order)")
    fig.suptitle(title if title is not None else f"Gradient flow ({of_what})", fontweight="bold")
    return _finish(fig, path)


def _plot_over_steps(ax, history, layers: Sequence[str], metric: str, kinds, log: bool) -> int:
    """One line per layer of ``metric`` against the step, each layer in the colour of its
    depth among all recorded layers (the same in every panel); returns the hidden count."""
    every = [name for name in history.layers() if name != ""]
    depth_color = dict(zip(every, _layer_colors(len(every))))
    hidden_total, marks = 0, _Breakdowns()
    for name in layers:
        color = depth_color.get(name, "black")  # the global row, layer ""
        steps, values = history.series(name, metric)
        values = np.asarray(values, dtype=np.float64)
        shown, hidden = _showable(values, log)
        # small markers: a finite point between non-finite ones has no segment to draw
        ax.plot(np.asarray(steps), shown, color=color, marker=".", markersize=3,
                label=_tick(name, kinds).replace("\n", " "))
        marks.add(steps, values, hidden)
        hidden_total += int(hidden.sum())
    marks.mark(ax)
    if log:
        ax.set_yscale("log")
    _integer_x(ax, "step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=max(1, len(layers) // 10))
    return hidden_total


def plot_norms(source, metric: str = "weight.grad_norm", layers: Optional[Sequence[str]] = None,
               path=None, logy: bool = True):
    """``metric`` against the step, one line per layer (forward order, shallow to deep
    along the colormap): ``weight.grad_norm`` (default), ``grad_norm``, ``dz_norm``,
    ``weight.update_ratio``, ... as the monitor records them.

    ``source``: a GradientMonitor or MonitorHistory. ``layers``: names to show (default:
    every layer that recorded ``metric``; the global row, layer "", only when named).
    ``logy``: log scale (zeros and non-finite values are left out and counted). Returns
    the Figure.
    """
    op = "plot_norms"
    if not isinstance(metric, str):
        raise TypeError(f"{op}: metric must be a metric name (str), got {type(metric).__name__} ({metric!r})")
    fig = _new_figure(op, (10, 6))
    history = _history(op, source)
    known = list(history.layers())
    if layers is None:
        chosen = [name for name in known if name != "" and metric in history.metrics(name)]
        if not chosen:
            hint = (" (it is a global metric: pass layers=[''])" if "" in known and metric in history.metrics("")
                    else "")
            raise ValueError(f"{op}: no layer recorded metric {metric!r}{hint}; recorded metrics: "
                             f"{', '.join(sorted(history.metrics()))}")
    else:
        wanted = _check_layers(op, layers, known)
        for name in wanted:
            if metric not in history.metrics(name):
                raise ValueError(f"{op}: layer {name!r} did not record metric {metric!r}; it recorded "
                                 f"{', '.join(sorted(history.metrics(name)))}")
        chosen = [name for name in known if name in wanted]
    ax = fig.subplots()
    hidden = _plot_over_steps(ax, history, chosen, metric, _kinds(source), bool(logy))
    ax.set_ylabel(metric)
    _title(ax, f"{metric} per layer", hidden, bool(logy))
    return _finish(fig, path)


def plot_activation_stats(source, path=None):
    """Activation mean and std of each layer's output against the step, and the dead-unit
    fraction (ReLU family) and saturated fraction (sigmoid / tanh) when recorded; one
    line per layer, forward order. ``source``: a GradientMonitor or MonitorHistory
    (recorded with ``activations=True``). Returns the Figure.
    """
    op = "plot_activation_stats"
    fig = _new_figure(op, (13, 8))
    history = _history(op, source)
    layers = [name for name in history.layers() if name != ""]
    panels = [(metric, label, [n for n in layers if metric in history.metrics(n)])
              for metric, label in _ACTIVATION_METRICS]
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        raise ValueError(f"{op}: the monitor recorded no activation statistics "
                         "(create it with GradientMonitor(net, activations=True))")
    kinds = _kinds(source)
    for ax, (metric, label, names) in zip(_grid(fig, len(panels), max_cols=2, cell=(6.5, 4.0)), panels):
        hidden = _plot_over_steps(ax, history, names, metric, kinds, log=False)
        ax.set_ylabel(metric)
        _title(ax, label, hidden, log=False)
    fig.suptitle("Activation statistics", fontweight="bold")
    return _finish(fig, path)


def plot_activation_histograms(source, step: int = -1, path=None, kind: str = "activation"):
    """Histograms (30 bins, as the monitor records them) of each layer's activations,
    weights or gradients at one step, one panel per layer in forward order.

    ``source``: a GradientMonitor created with ``histograms=True`` (its ``histograms``:
    {layer: [(step, kind, counts, edges), ...]}). ``step``: a step with histograms
    (-1: the last). ``kind``: "activation", "weight" or "grad". Returns the Figure.
    """
    op = "plot_activation_histograms"
    kind = _validate.choice(op, "kind", kind, _HISTOGRAM_KINDS)
    step = _validate.integer(op, "step", step, low=-1)
    fig = _new_figure(op, (13, 8))
    records = getattr(source, "histograms", None)
    if not isinstance(records, Mapping):
        raise TypeError(f"{op}: source must be a GradientMonitor (created with histograms=True), "
                        f"got {type(source).__name__}")
    entries = {layer: [e for e in items if e[1] == kind] for layer, items in records.items()}
    steps = sorted({int(e[0]) for items in entries.values() for e in items})
    if not steps:
        raise ValueError(f"{op}: the monitor recorded no {kind!r} histograms "
                         "(create it with GradientMonitor(net, histograms=True) and train at least one step)")
    if step == -1:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"{op}: no {kind!r} histograms at step {step}; they were recorded at steps "
                         f"{steps[0]} to {steps[-1]} ({len(steps)} steps)")
    kinds = _kinds(source)
    order = [name for name in kinds if name in entries] + [name for name in entries if name not in kinds]
    panels = []
    for layer in order:
        at_step = [e for e in entries[layer] if int(e[0]) == step]
        if at_step:
            counts = np.asarray(at_step[-1][2], dtype=np.float64)
            edges = np.asarray(at_step[-1][3], dtype=np.float64)
            if counts.ndim != 1 or edges.shape != (counts.size + 1,):
                raise ValueError(f"{op}: layer {layer!r} {kind} histogram at step {step} has counts of shape "
                                 f"{counts.shape} and edges of shape {edges.shape} (expected (n,) and (n + 1,))")
            panels.append((layer, counts, edges))
    for ax, (layer, counts, edges) in zip(_grid(fig, len(panels), max_cols=4, cell=(3.5, 3.0)), panels):
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue",
               alpha=0.75, edgecolor="white", linewidth=0.3)
        ax.set_title(_tick(layer, kinds).replace("\n", " "), fontsize="medium")
        ax.set_xlabel(kind)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{kind} histograms (step {step})", fontweight="bold")
    return _finish(fig, path)


def plot_clip_coef(source, path=None):
    """The clip coefficient actually applied (1: no clipping) and the global pre-clip
    gradient norm (log scale) against the step: the monitor's global metrics
    ``clip_coef`` and ``grad_norm`` of layer "". Returns the Figure.
    """
    op = "plot_clip_coef"
    fig = _new_figure(op, (10, 7))
    history = _history(op, source)
    recorded = history.metrics("") if "" in history.layers() else []
    missing = [m for m in ("clip_coef", "grad_norm") if m not in recorded]
    if missing:
        raise ValueError(f"{op}: the monitor recorded no global {' / '.join(missing)} "
                         "(they come from the optimizer's step; record after backward with the optimizer known)")
    ax_coef, ax_norm = fig.subplots(2, 1, sharex=True)
    for ax, metric, label, log, color in ((ax_coef, "clip_coef", "clip coefficient applied", False, "tab:orange"),
                                          (ax_norm, "grad_norm", "global gradient norm before clipping", True,
                                           "tab:blue")):
        steps, values = history.series("", metric)
        values = np.asarray(values, dtype=np.float64)
        shown, hidden = _showable(values, log)
        ax.plot(np.asarray(steps), shown, color=color, marker=".", markersize=3)
        marks = _Breakdowns()
        marks.add(steps, values, hidden)
        marks.mark(ax)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        _title(ax, label, int(hidden.sum()), log)
    _integer_x(ax_norm, "step")
    return _finish(fig, path)


def _comparison_curves(op: str, label, entry) -> Dict[str, Tuple[str, np.ndarray]]:
    """{panel: (key used, values)} of one configuration's history."""
    logs = entry
    if not isinstance(entry, Mapping) and isinstance(getattr(entry, "history", None), Mapping):
        logs = entry.history  # a gradcore / Keras History
    if not isinstance(logs, Mapping):
        raise TypeError(f"{op}: histories[{label!r}] must be a dict of lists or a History, "
                        f"got {type(entry).__name__}")
    curves = {}
    for panel, keys in _COMPARISON_KEYS.items():
        key = next((k for k in keys if k in logs), None)
        if key is None:
            continue
        try:
            values = np.asarray(logs[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{op}: histories[{label!r}][{key!r}] must be a list of numbers") from None
        if values.ndim != 1:
            raise ValueError(f"{op}: histories[{label!r}][{key!r}] must be a 1-d list (one value per "
                             f"epoch), got shape {values.shape}")
        curves[panel] = (key, values)
    if not curves:
        accepted = sorted({k for keys in _COMPARISON_KEYS.values() for k in keys})
        raise ValueError(f"{op}: histories[{label!r}] has none of {', '.join(accepted)}; "
                         f"its keys: {', '.join(map(str, logs))}")
    return curves


def plot_training_comparison(histories, path=None):
    """The documents' comparison of training configurations, one colour per label:
    training loss, test accuracy and gradient norm (log scale) against the epoch, and
    the final test accuracy of each as bars.

    ``histories``: {label: history}, each history a dict of per-epoch lists (keys
    ``loss``; ``test_accuracy`` or else ``val_accuracy``; ``grad_norm``) or a History
    (its ``.history``), e.g. what ``net.fit`` returns. A configuration missing a key is
    left out of that panel. Returns the Figure.
    """
    op = "plot_training_comparison"
    if not isinstance(histories, Mapping) or not histories:
        raise TypeError(f"{op}: histories must be a non-empty dict label -> history, got "
                        f"{type(histories).__name__}" + (" (empty)" if isinstance(histories, Mapping) else ""))
    fig = _new_figure(op, (14, 9))
    curves = {label: _comparison_curves(op, label, entry) for label, entry in histories.items()}
    colors = {label: f"C{i % 10}" for i, label in enumerate(curves)}
    acc_keys = {c["accuracy"][0] for c in curves.values() if "accuracy" in c}
    acc_name = {"test_accuracy": "test accuracy", "val_accuracy": "validation accuracy"}.get(
        next(iter(acc_keys)) if len(acc_keys) == 1 else None, "test / validation accuracy")

    (ax_loss, ax_acc), (ax_norm, ax_bar) = fig.subplots(2, 2)
    for ax, panel, label, log in ((ax_loss, "loss", "training loss", False),
                                  (ax_acc, "accuracy", acc_name, False),
                                  (ax_norm, "grad_norm", "gradient norm", True)):
        hidden, marks = 0, _Breakdowns()
        for name, c in curves.items():
            if panel in c:
                values = c[panel][1]
                shown, mask = _showable(values, log)
                epochs = np.arange(1, values.size + 1)
                ax.plot(epochs, shown, label=str(name), color=colors[name], linewidth=2, marker=".", markersize=3)
                marks.add(epochs, values, mask)
                hidden += int(mask.sum())
        marks.mark(ax)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            _no_data(ax, f"no {label} recorded")
        if log:
            ax.set_yscale("log")
        _integer_x(ax, "epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        _title(ax, f"{label} over time", hidden, log)

    finals = [(name, c["accuracy"][1][-1]) for name, c in curves.items()
              if "accuracy" in c and c["accuracy"][1].size]
    pos = np.arange(len(finals))
    values = np.array([v for _, v in finals], dtype=np.float64)
    shown, hidden = _showable(values, log=False)
    bars = ax_bar.bar(pos[~hidden], shown[~hidden], color=[colors[n] for (n, _), h in zip(finals, hidden) if not h],
                      alpha=0.75)
    for bar in bars:
        ax_bar.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{bar.get_height():.4g}",
                    ha="center", va="bottom")
    _mark_hidden(ax_bar, pos[hidden], values[hidden])
    if finals:
        ax_bar.set_xticks(pos, [str(n) for n, _ in finals])
        ax_bar.set_xlim(-0.5, len(finals) - 0.5)
    else:
        _no_data(ax_bar, f"no {acc_name} recorded")
    ax_bar.set_ylim(bottom=0)
    ax_bar.set_ylabel(acc_name)
    ax_bar.grid(True, alpha=0.3, axis="y")
    _title(ax_bar, f"final {acc_name}", int(hidden.sum()), log=False)
    fig.suptitle("Training configurations compared", fontweight="bold")
    return _finish(fig, path)


__all__ = ["plot_gradient_flow", "plot_norms", "plot_activation_stats", "plot_activation_histograms",
           "plot_clip_coef", "plot_training_comparison"]
