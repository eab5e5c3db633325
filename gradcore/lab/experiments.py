"""The documents' experiments, each a function ``experiment(ctx) -> Section``.

Every network is built right after ``gradcore.manual_seed(ctx.seed)``, so two networks
of the same shape and initialisation start from the same weights (the clipping and
BatchNorm variants of a configuration differ only in what they add), and a run repeats
exactly for the same seed. Training is full-batch SGD, as in the documents.

The monitor, diagnosis, repair and plotting pieces of ``gradcore.monitor`` are looked up
when an experiment runs; one that this build does not have is named in the section's
``missing`` list and the experiment reports what it can without it.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import losses, monitor, optim
from .. import random as _random
from ..callbacks import Callback
from ..nn import Dense
from ._setup import COMPARE_DIMS, DEEP_DIMS, INIT_FORMULAS, Data, describe_network, mlp
from .report import Section, Table

BCE = "binary_crossentropy"  # Keras' binary cross-entropy of probabilities, the documents' cost
BATCH_ROWS = 100  # the documents analyse one batch of the first 100 training rows
LOSS_LEVEL = 0.6  # compare's convergence level (ln 2 = 0.693 is the loss of a coin flip)
DZ_NOTE = ("||dZ|| is the gradient of the loss gradcore minimises, the batch mean; the documents' dZ is "
           "for the summed loss (their dW divides by m, their dZ does not), so their number is ours times "
           "the batch size (the 'x batch' column).")


@dataclass
class Context:
    """What every experiment gets: the data, the seed, whether to run the quick version,
    and where (if anywhere) to write figures."""

    data: Data
    seed: int
    quick: bool
    out: Optional[str]
    plots: bool

    def epochs(self, full: int, quick: int) -> int:
        """``quick`` epochs in the quick version, ``full`` otherwise."""
        return quick if self.quick else full

    def network(self, dims, activation, init_type, **kw):
        """A fresh network drawn from the seeded stream (see the module docstring)."""
        _random.manual_seed(self.seed)
        return mlp(dims, activation, init_type, **kw)

    def plot(self, section: Section, name: str, caption: str, function: str, *args, **kwargs) -> None:
        """Draw ``gradcore.monitor.<function>(*args, path=<out>/<name>.png)`` and link it
        from the section; a plot that cannot be drawn is named in the section's notes."""
        if not self.plots or self.out is None:
            return
        fn = piece(section, function)
        if fn is None:
            return
        filename = f"{section.name}_{name}.png"
        try:
            fn(*args, path=os.path.join(self.out, filename), **kwargs)
        except ImportError as exc:
            section.notes.append(f"figure {filename} not drawn: {exc}")
            return
        except (ValueError, TypeError) as exc:  # e.g. nothing recorded to plot: say so, keep the lab going
            section.notes.append(f"figure {filename} not drawn: {type(exc).__name__}: {exc}")
            return
        section.plots.append({"file": filename, "title": caption})


def piece(section: Section, name: str):
    """``gradcore.monitor.<name>``, or None (named in ``section.missing``) when this build
    does not have it yet."""
    try:
        return getattr(monitor, name)
    except (ImportError, AttributeError) as exc:
        what = f"gradcore.monitor.{name} ({type(exc).__name__}: {exc})"
        if what not in section.missing:
            section.missing.append(what)
        return None


def _loss(name: str = BCE):
    return losses.get(name)


def _weighted_layers(net) -> List[str]:
    """Names of the Dense layers in forward order (the documents' W1, W2, ...)."""
    return [name for name, m in net.named_modules() if isinstance(m, Dense)]


def _label(names: Sequence[str], name: str) -> str:
    return f"{name} (W{names.index(name) + 1})"


def _norm(a) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64)))


# ---------------------------------------------------------------------------------------
# one forward and backward pass, measured per layer
# ---------------------------------------------------------------------------------------

def gradient_flow(section: Section, net, X, y):
    """One training-mode forward and backward pass on (X, y), as the documents'
    ``visualize_gradient_flow``. Returns ({Dense layer: {metric: value}}, monitor or None):
    with the GradientMonitor the monitor's numbers (dW, db, dZ, activation statistics),
    without it ||dW|| and ||db|| read from the gradients."""
    GradientMonitor = piece(section, "GradientMonitor")
    names = _weighted_layers(net)
    mon = GradientMonitor(net, updates=False) if GradientMonitor is not None else None
    try:
        net.train()
        net.zero_grad()
        loss = _loss()(net(X), y)
        loss.backward()
        if mon is not None:
            mon.record(loss)
    finally:
        if mon is not None:
            mon.close()
    stats: Dict[str, Dict[str, float]] = {}
    if mon is not None:
        last = mon.history.at(-1)
        for name in names:
            stats[name] = {metric: value for (layer, metric), value in last.items() if layer == name}
        stats[""] = {metric: value for (layer, metric), value in last.items() if layer == ""}
    else:
        modules = dict(net.named_modules())
        for name in names:
            layer = modules[name]
            stats[name] = {"weight.grad_norm": _norm(layer.weight.grad)}
            if layer.bias is not None:
                stats[name]["bias.grad_norm"] = _norm(layer.bias.grad)
        stats[""] = {"loss": float(loss.item())}
    net.zero_grad()
    return stats, mon


def flow_table(title: str, names: Sequence[str], stats, batch: int) -> Table:
    """The documents' per-layer gradient numbers: ||dW||, ||db||, ||dZ|| (ours and the
    documents' scale), activation mean / std and the dead / saturated fraction."""
    table = Table(title, ["layer", "||dW||", "||db||", "||dZ||", "||dZ|| x batch", "act mean", "act std",
                          "dead / saturated frac"])
    for name in names:
        s = stats[name]
        dz = s.get("dz_norm")
        table.add(_label(names, name), s.get("weight.grad_norm"), s.get("bias.grad_norm"), dz,
                  None if dz is None else dz * batch, s.get("act_mean"), s.get("act_std"),
                  s.get("dead_frac", s.get("saturated_frac")))
    return table


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------

class _ValueClippedNorm(Callback):
    """Records, after each backward, the global norm the gradients have once clipped to
    [-clip_value, clip_value] (what value clipping hands the update; the documents'
    ``clipped_norm``)."""

    def __init__(self, clip_value: float):
        self.clip_value = clip_value
        self.norms: List[float] = []

    def on_after_backward(self, batch, logs=None):
        total = 0.0
        for p in self.model.parameters():
            if p.grad is not None:
                g = np.clip(np.asarray(p.grad, dtype=np.float64), -self.clip_value, self.clip_value)
                total += float(np.sum(g * g))
        self.norms.append(math.sqrt(total))


def train(net, data: Data, epochs: int, lr: float, *, loss_name: str = BCE, callbacks=(), dtype=np.float64,
          **clipping) -> Dict[str, List[float]]:
    """Full-batch SGD for ``epochs`` epochs with ``net.fit`` (rows in order, one step per
    epoch), evaluating on the test rows after each. Returns the per-epoch record: ``loss``
    and ``accuracy`` (training rows, from the forward pass of the step, before the
    update, as the documents compute them), ``test_loss``, ``test_accuracy`` (after the
    update) and ``grad_norm`` (global, before clipping); ``skipped`` steps (non-finite
    gradients) are counted. ``clipping``: the optimizer's global_clip_norm / clip_value."""
    net.compile(optim.SGD(net.parameters(), lr=lr, **clipping), loss=loss_name, metrics=["accuracy"])
    X, y = data.X_train.astype(dtype), data.y_train.astype(dtype)
    history = net.fit(X, y, epochs=epochs, batch_size=len(X), shuffle=False, verbose=0,
                      validation_data=(data.X_test.astype(dtype), data.y_test.astype(dtype)),
                      callbacks=list(callbacks))
    h = history.history
    return {"loss": list(h["loss"]), "accuracy": list(h["accuracy"]), "test_loss": list(h["val_loss"]),
            "test_accuracy": list(h["val_accuracy"]), "grad_norm": list(h["grad_norm"]),
            "skipped": int(sum(h.get("skipped", [0])))}


def _monitor_for(section: Section, net, **kw):
    """A GradientMonitor on ``net`` (keywords as GradientMonitor's), None without one."""
    GradientMonitor = piece(section, "GradientMonitor")
    return None if GradientMonitor is None else GradientMonitor(net, **kw)


def _watched_train(section: Section, net, data: Data, epochs: int, lr: float, monitor: Dict, *,
                   callbacks=(), **train_kw):
    """``train`` with a GradientMonitor (keywords ``monitor``, None without one) after
    ``callbacks``, closed when training ends. Returns (record, monitor)."""
    mon = _monitor_for(section, net, **monitor)
    record = train(net, data, epochs, lr, callbacks=[*callbacks, *([mon] if mon is not None else [])], **train_kw)
    if mon is not None:
        mon.close()
    return record, mon


def _first_event(mon, kind: str):
    if mon is None:
        return None
    return next((e for e in mon.events if e.kind == kind), None)


def _event_text(event) -> Optional[str]:
    if event is None:
        return None
    where = f"layer {event.layer}" if event.layer else "network"
    phase = event.evidence.get("phase") if isinstance(event.evidence, dict) else None
    return f"step {event.step}, {where}, {event.tensor}" + (f" ({phase})" if phase else "")


# ---------------------------------------------------------------------------------------
# the experiments
# ---------------------------------------------------------------------------------------

VANISHING_CONFIGS = (("sigmoid + random", "sigmoid", "random"), ("relu + he", "relu", "he"),
                     ("tanh + xavier", "tanh", "xavier"))


def vanishing(ctx: Context) -> Section:
    """Lab 4.3 Parts 3 and 9: the deep network's gradient flow for three activation /
    initialisation pairs, and the diagnosis of each."""
    X, y = ctx.data.X_train[:BATCH_ROWS], ctx.data.y_train[:BATCH_ROWS]
    section = Section("vanishing", "Vanishing gradients: sigmoid + small random init vs ReLU + He vs tanh + Xavier",
                      f"The documents' deep network {list(DEEP_DIMS)} (sigmoid output, zero biases), one forward and "
                      f"backward pass of binary cross-entropy on the first {len(X)} training rows, for each of: "
                      + "; ".join(f"{a} hidden layers with {INIT_FORMULAS[i]}" for _, a, i in VANISHING_CONFIGS)
                      + ". Then `gradcore.monitor.diagnose` on the same rows (vanishing below ||dW|| 0.01, "
                        "exploding above 100, as the documents).")
    diagnose = piece(section, "diagnose")
    summary = Table("Summary: first and last layer, and the diagnosis",
                    ["network", "||dW|| first", "||dW|| last", "last / first", "vanishing layers",
                     "exploding layers", "flow ratio (first / last)", "healthy"])
    for label, activation, init_type in VANISHING_CONFIGS:
        net = ctx.network(DEEP_DIMS, activation, init_type)
        names = _weighted_layers(net)
        stats, mon = gradient_flow(section, net, X, y)
        section.tables.append(flow_table(f"{label}: per-layer gradient norms", names, stats, len(X)))
        first, last = stats[names[0]]["weight.grad_norm"], stats[names[-1]]["weight.grad_norm"]
        entry: Dict[str, Any] = {"layers": {n: stats[n] for n in names}, "loss": stats[""].get("loss"),
                                 "dW_first": first, "dW_last": last}
        d = diagnose(net, X, y, loss=_loss()) if diagnose is not None else None
        if d is not None:
            entry["diagnosis"] = d.to_dict()
            section.texts.append({"title": f"diagnosis of {label}", "text": str(d)})
        summary.add(label, first, last, last / first if first else math.inf,
                    ", ".join(d.vanishing_layers) or "none" if d is not None else None,
                    ", ".join(d.exploding_layers) or "none" if d is not None else None,
                    d.flow_ratio if d is not None else first / last if last else math.inf,
                    d.healthy if d is not None else None)
        section.data[label] = entry
        if mon is not None:
            ctx.plot(section, label.replace(" + ", "_"), f"gradient flow, {label}", "plot_gradient_flow", mon,
                     title=f"Gradient flow: {describe_network(DEEP_DIMS, activation, init_type)}")
    section.tables.insert(0, summary)
    section.notes.insert(0, DZ_NOTE)
    return section


EXPLODING_RUNS = (
    # label, activation, output, loss, dtype, global_clip_norm
    ("tanh, randn*10", "tanh", "sigmoid", BCE, np.float64, None),
    ("tanh, randn*10, clip 5", "tanh", "sigmoid", BCE, np.float64, 5.0),
    ("relu, randn*10, logits, float32", "relu", None, "bce_with_logits", np.float32, None),
    ("relu, randn*10, logits, float32, clip 5", "relu", None, "bce_with_logits", np.float32, 5.0),
)


def exploding(ctx: Context) -> Section:
    """Lab 4.3 Part 4: large initial weights. The gradient flow of one pass, then short
    full-batch trainings with and without clipping, watched by the GradientMonitor."""
    epochs = ctx.epochs(20, 5)
    lr = 0.1
    X, y = ctx.data.X_train[:BATCH_ROWS], ctx.data.y_train[:BATCH_ROWS]
    section = Section("exploding", "Exploding gradients: large initial weights, with and without clipping",
                      f"The documents' exploding network: {describe_network(DEEP_DIMS, 'tanh', 'large')}. First one "
                      f"pass on the first {len(X)} training rows (their Part 4), then {epochs} full-batch SGD steps "
                      f"at lr {lr} without and with global-norm clipping at 5. tanh bounds every activation, so the "
                      "documents' network cannot overflow; the same weights with ReLU layers, a logits output "
                      "(binary cross-entropy with logits) and float32 show an explosion that does: the monitor "
                      "locates its first non-finite value (layer, tensor, pass) and the step.")
    net = ctx.network(DEEP_DIMS, "tanh", "large")
    names = _weighted_layers(net)
    stats, mon = gradient_flow(section, net, X, y)
    section.tables.append(flow_table("tanh, randn*10: per-layer gradient norms of one pass", names, stats, len(X)))
    first, last = stats[names[0]]["weight.grad_norm"], stats[names[-1]]["weight.grad_norm"]
    section.data["one_pass"] = {"layers": {n: stats[n] for n in names}, "dW_first": first, "dW_last": last}
    section.notes.append(f"one pass: ||dW|| first / last layer = {first / last if last else math.inf:.4g} "
                         "(the documents' 'amplification ratio')")
    diagnose = piece(section, "diagnose")
    if diagnose is not None:
        d = diagnose(net, X, y, loss=_loss())
        section.data["one_pass"]["diagnosis"] = d.to_dict()
        section.notes.append(f"diagnosis of the one pass: exploding layers {', '.join(d.exploding_layers) or 'none'}, "
                             f"vanishing layers {', '.join(d.vanishing_layers) or 'none'}")
    if mon is not None:
        ctx.plot(section, "flow", "gradient flow, tanh + randn*10", "plot_gradient_flow", mon,
                 title="Gradient flow: tanh, randn * 10")

    runs = Table(f"{epochs} full-batch SGD steps at lr {lr}",
                 ["run", "max ||g||", "first ||g|| > 100", "first exploding event", "first non-finite",
                  "skipped steps", "final loss"])
    growth = None
    for label, activation, output, loss_name, dtype, clip in EXPLODING_RUNS:
        net = ctx.network(DEEP_DIMS, activation, "large", output=output, dtype=dtype)
        # activations on: a NaN / Inf born in a forward pass is located at the layer whose output it is
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the non-finite steps are reported below, not warned about
            record, mon = _watched_train(section, net, ctx.data, epochs, lr, {"on_nonfinite": "stop"},
                                         loss_name=loss_name, dtype=dtype, global_clip_norm=clip)
        norms = np.asarray(record["grad_norm"])
        over = np.flatnonzero(norms > 100.0)
        nonfinite = _first_event(mon, "nonfinite")
        if nonfinite is None and mon is None and (record["skipped"] or not np.all(np.isfinite(record["loss"]))):
            first_bad = "yes (layer unknown without the monitor)"
        else:
            first_bad = _event_text(nonfinite)
        runs.add(label, float(np.nanmax(norms)) if np.isfinite(norms).any() else math.nan,
                 f"step {over[0]}" if over.size else None, _event_text(_first_event(mon, "exploding")),
                 first_bad, record["skipped"], record["loss"][-1])
        section.data[label] = dict(record, nonfinite=nonfinite.to_dict() if nonfinite is not None else None,
                                   events=[e.to_dict() for e in mon.events] if mon is not None else None)
        if growth is None and activation == "relu":
            growth = Table(f"{label}: the explosion step by step", ["step", "loss", "||g|| before clipping"])
            for i, (loss, norm) in enumerate(zip(record["loss"], record["grad_norm"])):
                growth.add(i, loss, norm)
                if not math.isfinite(loss):
                    if i + 1 < len(record["loss"]):
                        growth.note = (f"steps {i + 1} to {len(record['loss']) - 1}: the loss stays non-finite and "
                                       "the optimizer skips every step")
                    break
            if nonfinite is not None:
                section.notes.append(f"{label}: first non-finite value: {nonfinite}")
                ctx.plot(section, "overflow_norms", f"per-layer gradient norms, {label}", "plot_norms", mon,
                         metric="grad_norm")
    section.tables.append(runs)
    if growth is not None:
        section.tables.append(growth)
    section.notes.insert(0, DZ_NOTE)
    section.notes.append("||g|| is the global gradient norm before clipping (fit's grad_norm; nan once the "
                         "gradients are not finite: the optimizer then skips the step and leaves the weights). "
                         "Steps count from 0, one full-batch step per epoch, as the monitor numbers them; with "
                         "on_nonfinite='stop' the monitor ends a run at its first non-finite value.")
    return section


def clipping(ctx: Context) -> Section:
    """Lab 4.3 Part 5: no clipping vs norm clipping (5.0) vs value clipping (1.0) on the
    exploding network, over a short training."""
    epochs = ctx.epochs(20, 5)
    lr = 0.1
    section = Section("clipping", "Gradient clipping: none vs norm (5.0) vs value (1.0)",
                      f"The exploding network ({describe_network(DEEP_DIMS, 'tanh', 'large')}), {epochs} full-batch "
                      f"SGD steps at lr {lr} from the same initial weights: without clipping, with the global norm "
                      "clipped to 5 (`global_clip_norm=5.0`: every gradient scaled by min(1, 5 / ||g||)) and with "
                      "every gradient value clipped to [-1, 1] (`clip_value=1.0`). The first step's numbers are the "
                      "documents' clip comparison; clip ratio = ||clipped g|| / ||g||.")
    table = Table("Clipping methods", ["method", "first ||g||", "first clipped ||g||", "first clip ratio",
                                       "mean ||g||", "max ||g||", "final loss", "final train acc",
                                       "final test acc"])
    records = {}
    for label, kw in (("none", {}), ("norm 5.0", {"global_clip_norm": 5.0}), ("value 1.0", {"clip_value": 1.0})):
        net = ctx.network(DEEP_DIMS, "tanh", "large")
        value_clipped = _ValueClippedNorm(kw["clip_value"]) if "clip_value" in kw else None
        record, mon = _watched_train(section, net, ctx.data, epochs, lr, {"activations": False},
                                     callbacks=[value_clipped] if value_clipped is not None else [], **kw)
        # the norm each update was computed from: min(||g||, 5) for norm clipping
        if value_clipped is not None:
            record["clipped_grad_norm"] = value_clipped.norms
        else:
            record["clipped_grad_norm"] = [min(n, kw.get("global_clip_norm", math.inf)) for n in record["grad_norm"]]
        norms = np.asarray(record["grad_norm"])
        first, first_clipped = norms[0], record["clipped_grad_norm"][0]
        table.add(label, first, first_clipped, first_clipped / first, float(np.mean(norms)), float(np.max(norms)),
                  record["loss"][-1], record["accuracy"][-1], record["test_accuracy"][-1])
        records[label] = record
        if mon is not None and "global_clip_norm" in kw:
            ctx.plot(section, "clip_coef", "clip coefficient and norm, norm clipping at 5", "plot_clip_coef", mon)
    steps = Table("Loss and gradient norm (before clipping) at each step",
                  ["step"] + [f"loss, {m}" for m in records] + [f"||g||, {m}" for m in records])
    for i in range(epochs):
        steps.add(i, *(r["loss"][i] for r in records.values()), *(r["grad_norm"][i] for r in records.values()))
    section.tables += [table, steps]
    section.data.update(records)
    ctx.plot(section, "training", "training with each clipping method", "plot_training_comparison", records)
    return section


def batchnorm(ctx: Context) -> Section:
    """Lab 4.3 Part 6: the deep ReLU + He network with and without BatchNorm; the spread
    of the weight-gradient norms across layers after one pass and after a short training."""
    epochs = ctx.epochs(30, 5)
    lr = 0.01
    X, y = ctx.data.X_train[:BATCH_ROWS], ctx.data.y_train[:BATCH_ROWS]
    section = Section("batchnorm", "BatchNorm: spread of the weight-gradient norms across layers",
                      f"{describe_network(DEEP_DIMS, 'relu', 'he')} without and with BatchNorm (Dense -> BatchNorm -> "
                      f"ReLU on the hidden layers, gradcore's BatchNorm: eps 1e-5, running statistics for "
                      f"evaluation). One pass on the first {len(X)} training rows (the documents' comparison), then "
                      f"{epochs} full-batch SGD steps at lr {lr}. Spread = variance of the Dense layers' ||dW|| "
                      "(the documents' 'gradient variance') and the ratio of the largest to the smallest.")
    per_layer = Table("||dW|| per Dense layer, one pass", ["layer", "plain", "BatchNorm"])
    spread = Table("Spread of ||dW|| across the Dense layers",
                   ["network", "variance (one pass)", "max / min (one pass)", "variance (last step)",
                    "max / min (last step)", "final loss", "final test acc"])
    columns = {}
    for label, bn in (("plain", False), ("BatchNorm", True)):
        net = ctx.network(DEEP_DIMS, "relu", "he", batchnorm=bn)
        names = _weighted_layers(net)
        stats, _ = gradient_flow(section, net, X, y)
        one_pass = np.array([stats[n]["weight.grad_norm"] for n in names])
        net = ctx.network(DEEP_DIMS, "relu", "he", batchnorm=bn)  # the same weights, BatchNorm statistics unused
        record, mon = _watched_train(section, net, ctx.data, epochs, lr, {"activations": False, "updates": False})
        if mon is not None:
            final = np.array([mon.history.last(n, "weight.grad_norm") for n in names])
        else:
            final = np.full(len(names), math.nan)
        spread.add(label, float(np.var(one_pass)), float(one_pass.max() / one_pass.min()), float(np.var(final)),
                   float(final.max() / final.min()), record["loss"][-1], record["test_accuracy"][-1])
        columns[label] = one_pass
        section.data[label] = dict(record, dW_one_pass=dict(zip(names, one_pass)), dW_last_step=dict(zip(names, final)))
        if mon is not None:
            ctx.plot(section, f"norms_{label.lower()}", f"||dW|| per layer over training, {label}", "plot_norms", mon,
                     layers=names)
    for i in range(len(DEEP_DIMS) - 1):
        per_layer.add(f"W{i + 1}", columns["plain"][i], columns["BatchNorm"][i])
    section.tables += [per_layer, spread]
    return section


COMPARE_CONFIGS = (
    # label, activation, init, lr, global_clip_norm, batchnorm
    ("baseline: sigmoid + random", "sigmoid", "random", 0.1, None, False),
    ("relu + he", "relu", "he", 0.01, None, False),
    ("relu + he + clip 5", "relu", "he", 0.01, 5.0, False),
    ("relu + he + batchnorm", "relu", "he", 0.01, None, True),
)


def convergence(losses_: Sequence[float], level: float = LOSS_LEVEL):
    """(first epoch with training loss below ``level``, first epoch with 90% of the
    loss's total decrease done); epochs count from 1, None when never."""
    loss = np.asarray(losses_, dtype=np.float64)
    below = np.flatnonzero(loss < level)
    target = loss[0] - 0.9 * (loss[0] - loss[-1])
    done = np.flatnonzero(loss <= target) if loss[-1] < loss[0] else np.array([], dtype=int)
    return (int(below[0]) + 1 if below.size else None), (int(done[0]) + 1 if done.size else None)


def compare(ctx: Context) -> Section:
    """Lab 4.3 Parts 7 and 8: the four configurations trained for 100 full-batch epochs."""
    epochs = ctx.epochs(100, 15)
    section = Section("compare", "Four configurations, trained",
                      f"Network {list(COMPARE_DIMS)} (sigmoid output), {epochs} full-batch epochs of plain SGD on "
                      "binary cross-entropy: " + "; ".join(
                          f"{label} (lr {lr}{', global-norm clipping at ' + str(clip) if clip else ''})"
                          for label, _, _, lr, clip, _ in COMPARE_CONFIGS)
                      + ". The three ReLU networks start from the same weights. Convergence: the first epoch whose "
                        f"training loss is below {LOSS_LEVEL} (ln 2 = 0.693 is a coin flip), and the first epoch "
                        "by which 90% of the loss's total decrease over the run is done.")
    table = Table("Performance summary", ["configuration", "lr", "final train acc", "final test acc",
                                          "final train loss", "final test loss", "avg ||g||",
                                          f"loss < {LOSS_LEVEL} at epoch", "90% of decrease at epoch"])
    records = {}
    for label, activation, init_type, lr, clip, bn in COMPARE_CONFIGS:
        net = ctx.network(COMPARE_DIMS, activation, init_type, batchnorm=bn)
        record, mon = _watched_train(section, net, ctx.data, epochs, lr, {"activations": False, "updates": False},
                                     global_clip_norm=clip)
        if mon is not None:
            coef = mon.history.series("", "clip_coef")[1]
            record["clip_coef_min"] = float(np.min(coef)) if len(coef) else None
            names = _weighted_layers(net)
            first, last = (np.asarray(mon.history.series(n, "weight.grad_norm")[1]) for n in (names[0], names[-1]))
            record["dW_first_over_last_mean"] = float(np.mean(first / last))
        level, ninety = convergence(record["loss"])
        record.update(lr=lr, global_clip_norm=clip, converged_below_level=level, ninety_percent_epoch=ninety)
        table.add(label, lr, record["accuracy"][-1], record["test_accuracy"][-1], record["loss"][-1],
                  record["test_loss"][-1], float(np.mean(record["grad_norm"])), level, ninety)
        records[label] = record
        if mon is not None and label.startswith("baseline"):
            ctx.plot(section, "baseline_norms", "||dW|| per layer over training, baseline", "plot_norms", mon,
                     layers=names)
    best = max(records, key=lambda k: records[k]["test_accuracy"][-1])
    section.tables.append(table)
    section.notes.append(f"best final test accuracy: {best} ({records[best]['test_accuracy'][-1]:.4f})")
    clip_run = records["relu + he + clip 5"]
    if "clip_coef_min" in clip_run:
        section.notes.append(f"relu + he + clip 5: smallest clip coefficient applied {clip_run['clip_coef_min']:.4g} "
                             "(1 means clipping never acted: the run is then identical to relu + he)")
    section.notes.append("avg ||g||: the mean over the epochs of the global gradient norm before clipping "
                         "(weights, biases and BatchNorm gamma / beta), the documents' 'Avg Gradient Norm'.")
    section.notes.append("The documents' BatchNorm network back-propagates as if there were no normalisation (its "
                         "backward pass is the plain network's: no gradient through the batch statistics, no "
                         "dgamma / dbeta, so gamma and beta never train) and normalises the test rows with their "
                         "own batch statistics; gradcore trains it with the exact gradient and evaluates with the "
                         "running statistics, so that row is not expected to match theirs.")
    section.data.update(records)
    ctx.plot(section, "training", "training comparison", "plot_training_comparison", records)
    return section


def repair(ctx: Context) -> Section:
    """``gradcore.monitor.repair`` on the documents' baseline: each remedy and the
    unchanged network trained on identical batches, compared on the test rows."""
    epochs = ctx.epochs(100, 10)
    lr = 0.1
    section = Section("repair", "Repair of the baseline, tested against a control",
                      f"`gradcore.monitor.repair` on compare's baseline "
                      f"({describe_network(COMPARE_DIMS, 'sigmoid', 'random')}): SGD at lr {lr}, {epochs} full-batch "
                      "epochs per candidate, the unchanged network as the control, validated on the test rows.")
    repair_fn = piece(section, "repair")
    if repair_fn is None:
        return section

    def build():  # repair seeds every build itself (seed=)
        return mlp(COMPARE_DIMS, "sigmoid", "random")

    report = repair_fn(build, ctx.data.X_train, ctx.data.y_train, loss=_loss(), optimizer="sgd", lr=lr,
                       epochs=epochs, batch_size=None, validation_data=(ctx.data.X_test, ctx.data.y_test),
                       seed=ctx.seed)
    columns = ["remedy", "description", "loss", "val_loss", "val_accuracy", "health", "diverged"]
    table = Table("Remedies against the control (identical batches)", columns + ["best"])
    # wall times are left out: results.json repeats exactly for a seed
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in report.rows]
    for row in rows:
        table.add(*(row.get(c) for c in columns), row.get("remedy") == report.best)
    section.tables.append(table)
    section.notes.append(f"best remedy: {report.best}")
    diagnosis = report.control_diagnosis
    if diagnosis is not None:
        section.texts.append({"title": "diagnosis of the control before training", "text": str(diagnosis)})
    section.data.update(rows=rows, best=report.best, histories=report.histories,
                        control_diagnosis=diagnosis.to_dict() if diagnosis is not None else None)
    if report.histories:
        ctx.plot(section, "training", "control and remedies", "plot_training_comparison",
                 {remedy: h for remedy, h in report.histories.items() if h})
    return section


EXPERIMENTS: Dict[str, Callable[[Context], Section]] = {
    "vanishing": vanishing, "exploding": exploding, "clipping": clipping, "batchnorm": batchnorm,
    "compare": compare, "repair": repair,
}
