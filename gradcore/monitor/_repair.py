"""Repair that is tested, not guessed: train candidate remedies against a control.

``repair(build, X, y, ...)`` builds the network (the control) and, for each remedy, a
variant of it; trains every one of them for the same number of steps on identical
batches from identical seeds; and returns a :class:`RepairReport` with one row per run
(final training loss, validation loss and accuracy, gradient health after training,
steps, wall time, divergence) and the best trained network::

    report = repair(build, X, y, loss="binary_crossentropy", lr=0.1, epochs=100)
    print(report)                        # the table, best remedy last
    net = report.best_network

Remedies (each changes one thing against the control):

- ``"activation"``: every saturating hidden activation (sigmoid, tanh) becomes ReLU and
  the Dense layer feeding it is drawn again with He normal initialisation; the output
  layer keeps its activation;
- ``"batchnorm"``: a BatchNorm after each hidden Dense, the Dense's activation moved after
  the BatchNorm (Dense -> BatchNorm -> activation); the Dense keeps its initial weights;
- ``"clipping"``: the same network, the optimizer clipping the global gradient norm at the
  ``clip_percentile`` percentile of the global norms observed on the control's run;
- ``"lower_lr"``: the same network at a tenth of the learning rate;
- ``"residual"``: each hidden Dense that maps a width to itself, together with the
  activation layers after it, wrapped in ``gradcore.nn.Residual`` (y = block(x) + x).

A remedy that does not apply to the network (no saturating activation to replace, no
equal-width layer for a shortcut...) gets a row saying why instead of a run. The layers a
remedy leaves alone start from exactly the control's initial values.

How the runs are made identical: before building each network ``gradcore.manual_seed(seed)``
is called, so the control and every variant draw the same initial values for the layers
they share; before each ``fit`` it is called again, so every run draws the same shuffling
order (and the same dropout masks). Every run records a digest of the input batches its
network trained on; ``repair`` checks that each run saw exactly the control's batches and
raises RuntimeError otherwise, so "identical batches" is verified, not assumed.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _validate
from .. import activations as _act
from .. import losses as _losses
from .. import nn
from .. import optim
from .. import random as _random
from .. import serialize
from ._monitor import GradientMonitor
from .diagnosis import json_safe, diagnose, _saturating_activation

REMEDIES = ("activation", "batchnorm", "clipping", "lower_lr", "residual")
CONTROL = "control"

# The "lower_lr" remedy trains at this fraction of the learning rate.
LOWER_LR_FACTOR = 0.1
# Replacement activation and initializer of the "activation" remedy.
REPLACEMENT_ACTIVATION = "relu"
REPLACEMENT_INITIALIZER = "he_normal"

# Recommendation kinds of a Diagnosis -> the remedy that tests them ("learning_rate" maps
# to "lower_lr" only when it recommends a lower rate, see _recommended).
_REMEDY_OF_RECOMMENDATION = {
    "activation": "activation",
    "initializer": "activation",
    "batchnorm": "batchnorm",
    "clipping": "clipping",
    "residual": "residual",
}


class _NotApplicable(Exception):
    """A remedy that does not apply to this network; the message says why."""


# ---------------------------------------------------------------------- the networks
class _Source:
    """Makes fresh copies of the control network, each after ``manual_seed(seed)``: by
    calling the user's ``build``, or by rebuilding a given Sequential from its layers'
    constructor arguments (its own parameters are never touched)."""

    def __init__(self, build, seed: int):
        self.seed = seed
        self.made: List[Any] = []  # every network made, kept so their modules' ids stay unique
        self.module_ids: set = set()
        if isinstance(build, nn.Sequential):
            self.template: Optional[nn.Sequential] = build
            self.build: Optional[Callable] = None
        elif isinstance(build, nn.Module):
            raise TypeError(f"repair: build must be a zero-argument function returning a fresh network, or a "
                            f"gradcore.nn.Sequential; got a {type(build).__name__}, which can be rebuilt only by "
                            "a build function (pass e.g. build=lambda: MyNet())")
        elif callable(build):
            self.template, self.build = None, build
        else:
            raise TypeError(f"repair: build must be a zero-argument function returning a fresh network, or a "
                            f"gradcore.nn.Sequential; got {type(build).__name__}")

    def fresh(self):
        """A new control network with initial values drawn after ``manual_seed(seed)``."""
        _random.manual_seed(self.seed)
        if self.template is not None:
            net = _rebuilt(self.template)
        else:
            net = self.build()
            if not isinstance(net, nn.Model):
                raise TypeError(f"repair: build() must return a gradcore network (a gradcore.nn.Sequential or "
                                f"another gradcore.nn.Model), got {type(net).__name__}")
            if any(id(m) in self.module_ids for m in net.modules()):
                raise ValueError("repair: build() returned a network sharing layers with one it returned before; "
                                 "it must build new layers on every call (the runs would otherwise train the same "
                                 "parameters in turn)")
        self.made.append(net)
        self.module_ids.update(id(m) for m in net.modules())
        return net


def _rebuilt(net: nn.Sequential) -> nn.Sequential:
    """A new Sequential built from the constructor arguments ``net``'s layers recorded, with
    fresh initial values (the way a checkpoint's architecture is rebuilt)."""
    classes = {serialize.qualified_name(type(m)): type(m) for m in net.modules()}
    try:
        return serialize.from_config(serialize.to_config(net), custom_objects=classes)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"repair: cannot rebuild the network from its layers' constructor arguments ({exc}); "
                        "pass a zero-argument build function instead") from None


def _activation_of(layer) -> Optional[str]:
    """The canonical name of the activation ``layer`` applies (a Dense's fused one or an
    activation layer's), None when it applies none."""
    name = layer.activation if isinstance(layer, nn.Dense) else getattr(layer, "activation_name", None)
    return None if name is None else _act.canonical(name)


def _output_index(layers: Sequence) -> int:
    """Index of the output layer: the last Dense at the top level of the layer list."""
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Dense)]
    if not dense:
        raise _NotApplicable("the network has no Dense layer at the top level of its layer list")
    return dense[-1]


def _dense_like(layer: nn.Dense, activation: Optional[str], kernel_initializer) -> nn.Dense:
    """A Dense of ``layer``'s shape, bias, penalty and dtype with another activation and
    kernel initializer (fresh values drawn from the seeded stream)."""
    alpha = layer.alpha if activation in _act.DEFAULT_ALPHA else None
    return nn.Dense(layer.in_features, layer.out_features, activation=activation, use_bias=layer.use_bias,
                    kernel_initializer=kernel_initializer, bias_initializer=layer.bias_initializer, l2=layer.l2,
                    dtype=layer.dtype, alpha=alpha)


def _names(indices) -> str:
    return ", ".join(str(i) for i in indices)


def _with_relu(layers: List, origin: Dict[int, str]) -> Tuple[List, str]:
    """The "activation" remedy: every saturating hidden activation -> ReLU (the layers the
    diagnosis's activation recommendation names), and the Dense layers feeding them drawn
    again with He normal initialisation. ``origin`` gets {id(new module): the user's layer
    name it replaces}."""
    out = _output_index(layers)
    new, replaced, redrawn = list(layers), set(), []
    feeding = None  # index of the last Dense seen: the layer an activation layer acts on
    for i, layer in enumerate(layers[:out]):
        name = _activation_of(layer)
        if isinstance(layer, nn.Dense):
            feeding = i
            if _saturating_activation(name):
                new[i] = _dense_like(layer, REPLACEMENT_ACTIVATION, REPLACEMENT_INITIALIZER)
                replaced.add(name)
                redrawn.append(i)
                origin[id(new[i])] = str(i)
        elif _saturating_activation(name):
            new[i] = nn.ReLU()
            origin[id(new[i])] = str(i)
            replaced.add(name)
            if feeding is not None and feeding not in redrawn:
                new[feeding] = _dense_like(layers[feeding], _activation_of(layers[feeding]), REPLACEMENT_INITIALIZER)
                origin[id(new[feeding])] = str(feeding)
                redrawn.append(feeding)
    if not replaced:
        raise _NotApplicable("no saturating hidden activation (sigmoid, tanh) to replace")
    return new, (f"{', '.join(sorted(replaced))} -> {REPLACEMENT_ACTIVATION}, {REPLACEMENT_INITIALIZER} init "
                 f"in Dense {_names(sorted(redrawn))} (every saturating hidden layer: its derivative bounds the "
                 f"gradient; the output layer keeps its activation)")


def _with_batchnorm(layers: List, origin: Dict[int, str]) -> Tuple[List, str]:
    """The "batchnorm" remedy: Dense -> BatchNorm -> activation for every hidden Dense not
    already followed by a normalisation; the Dense keeps the control's initial values."""
    out = _output_index(layers)
    new, normalised = [], []
    for i, layer in enumerate(layers):
        following = layers[i + 1] if i + 1 < len(layers) else None
        if i >= out or not isinstance(layer, nn.Dense) or isinstance(following, (nn.BatchNorm, nn.LayerNorm)):
            new.append(layer)
            continue
        normalised.append(i)
        name = layer.activation
        norm = nn.BatchNorm(layer.out_features, dtype=layer.dtype)
        origin[id(norm)] = f"BatchNorm added after {i}"
        if name is None:
            new += [layer, norm]
            continue
        linear = _dense_like(layer, None, layer.kernel_initializer)
        for mine, theirs in zip(linear.parameters(), layer.parameters()):
            mine.data[...] = theirs.data
        alpha = layer.alpha if name in _act.DEFAULT_ALPHA else None
        act = nn.Activation(name, alpha=alpha)
        origin[id(linear)], origin[id(act)] = str(i), f"{i}'s {name} (moved after the BatchNorm)"
        new += [linear, norm, act]
    if not normalised:
        raise _NotApplicable("every hidden Dense is already followed by a normalisation layer")
    return new, f"BatchNorm after Dense {_names(normalised)} (before the activation)"


def _with_shortcuts(layers: List, origin: Dict[int, str]) -> Tuple[List, str]:
    """The "residual" remedy: each hidden Dense mapping width w to w, with the layers after
    it up to the next Dense, becomes Residual(block): y = block(x) + x."""
    out = _output_index(layers)
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Dense)]
    new, wrapped, i = [], [], 0
    while i < len(layers):
        layer = layers[i]
        if i < out and isinstance(layer, nn.Dense) and layer.in_features == layer.out_features:
            end = next(j for j in dense if j > i)
            new.append(nn.Residual(list(layers[i:end])))
            wrapped.append(i)
            i = end
            continue
        new.append(layer)
        i += 1
    if not wrapped:
        widths = " -> ".join([str(layers[dense[0]].in_features)]
                             + [str(layers[j].out_features) for j in dense])
        raise _NotApplicable(f"no hidden Dense maps a width to itself (widths {widths}); an identity shortcut "
                             "needs equal input and output widths")
    return new, f"identity shortcut around Dense {_names(wrapped)}"


_STRUCTURAL = {"activation": _with_relu, "batchnorm": _with_batchnorm, "residual": _with_shortcuts}


def _candidate(remedy: str, base) -> Tuple[nn.Sequential, str, Dict[str, str]]:
    """The network of a structural ``remedy`` built from the layers of ``base`` (a fresh
    control network): a new Sequential, a description of the change, and {name of a layer
    in the new network: the user's layer it stands for} (added layers say so)."""
    if not isinstance(base, nn.Sequential):
        raise _NotApplicable(f"the network is a {type(base).__name__}, not a Sequential, so its layer list "
                             "cannot be changed")
    # Copies of the layers (same values), so the candidate owns its parameters outright
    # instead of re-homing them out of ``base``'s flat buffer piece by piece.
    copies = [copy.deepcopy(layer) for layer in base.layers]
    origin = {id(layer): str(i) for i, layer in enumerate(copies)}
    layers, description = _STRUCTURAL[remedy](copies, origin)
    net = nn.Sequential(*layers)
    labels = {name: origin.get(id(m), f"{name} ({type(m).__name__}, in the remedy's network)")
              for name, m in net.named_modules() if name}
    return net, description, labels


# ---------------------------------------------------------------------- one run
class _BatchDigest:
    """A forward pre-hook on the network: digests the inputs of every training batch, in
    order, so runs can be proven to have trained on identical batches."""

    def __init__(self):
        self.hash = hashlib.sha256()

    def __call__(self, module, args):
        if module.training:
            x = np.ascontiguousarray(getattr(args[0], "data", args[0]))
            self.hash.update(str((x.shape, x.dtype.str)).encode())
            self.hash.update(x.tobytes())

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


class _Setup:
    """What every run shares: data, loss, metrics, optimizer class and settings, epochs,
    batches, seed."""

    def __init__(self, X, y, validation, loss, metrics, optimizer_cls, optimizer_kwargs, epochs, batch_size, seed):
        self.X, self.y, self.validation = X, y, validation
        self.loss, self.metrics = loss, metrics
        self.optimizer_cls, self.optimizer_kwargs = optimizer_cls, optimizer_kwargs
        self.epochs, self.seed = epochs, seed
        self.batch_size = len(X) if batch_size is None else min(batch_size, len(X))
        # A last batch of one row cannot pass BatchNorm in training mode, so it is dropped
        # for every run alike (fit would otherwise drop it only for the BatchNorm variant).
        self.drop_last = len(X) % self.batch_size == 1
        self.steps_per_epoch = len(X) // self.batch_size + (len(X) % self.batch_size > 1)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _compile(net, setup: _Setup, lr: float, clip_norm: Optional[float] = None):
    """Compile ``net`` with the run's loss, metrics and a new optimizer of its own
    (learning rate ``lr``, the global gradient norm clipped at ``clip_norm`` or not)."""
    kwargs = dict(setup.optimizer_kwargs)
    if clip_norm is not None:
        kwargs["global_clip_norm"] = clip_norm
    net.compile(setup.optimizer_cls(net.parameters(), lr=lr, **kwargs), loss=setup.loss, metrics=setup.metrics)


def _health(diagnosis, diverged: bool, labels: Optional[Dict[str, str]] = None) -> str:
    """One line of gradient health from a history's Diagnosis: "healthy", or what was
    found and where, e.g. "vanishing in 0, 1; saturated units in 0". ``labels`` maps a
    remedy network's layer names to the user's layers they stand for."""
    labels = labels or {}
    layers: Dict[str, List[str]] = {}
    for finding in diagnosis.findings:
        if finding.severity != "info":
            names = layers.setdefault(finding.kind.replace("_", " "), [])
            name = labels.get(finding.layer, finding.layer)
            if name and name not in names:
                names.append(name)
    parts = ["diverged"] if diverged else []
    parts += [f"{kind} in {', '.join(names)}" if names else kind for kind, names in layers.items()]
    return "; ".join(parts) if parts else "healthy"


class _Run:
    """One trained network: its report row, its (closed) GradientMonitor, the Diagnosis
    of the monitor's history and the per-epoch logs of ``fit``."""

    def __init__(self, row, monitor, diagnosis, epochs):
        self.row, self.monitor, self.diagnosis, self.epochs = row, monitor, diagnosis, epochs

    @property
    def grad_norms(self) -> np.ndarray:
        """The global gradient norm (before clipping) of every step."""
        return self.monitor.history.series("", "grad_norm")[1]


def _train(net, remedy: str, description: str, setup: _Setup, labels: Optional[Dict[str, str]] = None) -> _Run:
    """Train the compiled ``net`` as every run is trained, watched by a GradientMonitor and
    a batch digest. Warnings raised while it trains go into the row, not to the screen."""
    digest = _BatchDigest()
    handle = net.register_forward_pre_hook(digest)
    monitor = GradientMonitor(net)
    _random.manual_seed(setup.seed)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = net.fit(setup.X, setup.y, epochs=setup.epochs, batch_size=setup.batch_size,
                              validation_data=setup.validation, shuffle=True, verbose=0, callbacks=[monitor],
                              drop_last=setup.drop_last)
    finally:
        handle.remove()
        monitor.close()
    seconds = time.perf_counter() - start
    epochs = {key: list(values) for key, values in history.history.items()}
    last = {key: values[-1] for key, values in epochs.items()}
    diverged = (not all(_finite(v) for v in epochs.get("loss", [])) or not _finite(last.get("val_loss"))
                or sum(epochs.get("skipped", [0])) > 0 or any(e.kind == "nonfinite" for e in monitor.events))
    diagnosis = monitor.diagnose()
    row = {
        "remedy": remedy,
        "description": description,
        "applicable": True,
        "loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "val_accuracy": last.get("val_accuracy"),
        "health": _health(diagnosis, diverged, labels),
        "diverged": diverged,
        "steps": monitor.step,
        "seconds": seconds,
        "lr": net.optimizer.param_groups[0]["lr"],
        "clip_norm": net.optimizer.global_clip_norm,
        "batch_digest": digest.hexdigest(),
        "warnings": [str(w.message) for w in caught],
    }
    return _Run(row, monitor, diagnosis, epochs)


def _not_applicable(remedy: str, reason: str) -> Dict[str, Any]:
    return {"remedy": remedy, "description": f"not applicable: {reason}", "applicable": False, "loss": None,
            "val_loss": None, "val_accuracy": None, "health": None, "diverged": False, "steps": 0,
            "seconds": 0.0, "lr": None, "clip_norm": None, "batch_digest": None, "warnings": []}


# ---------------------------------------------------------------------- arguments
def _data(X, y, validation_data, validation_split):
    """(X_train, y_train, (X_val, y_val)) checked; without validation_data the last
    ``validation_split`` fraction of the rows is held out (before shuffling, as Keras)."""
    X, y = np.asarray(getattr(X, "data", X)), np.asarray(getattr(y, "data", y))
    if X.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise TypeError(f"repair: X and y must be numeric arrays, got dtypes {X.dtype} and {y.dtype}")
    if X.ndim < 2:
        raise ValueError(f"repair: X must have shape (samples, features, ...), got shape {X.shape}")
    if y.ndim == 0 or len(X) != len(y):
        raise ValueError(f"repair: X and y must have as many rows, got X {X.shape} and y {y.shape}")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("repair: validation_data must be a pair (X_val, y_val)")
        Xv, yv = (np.asarray(getattr(a, "data", a)) for a in validation_data)
        if Xv.shape[1:] != X.shape[1:] or yv.shape[1:] != y.shape[1:] or len(Xv) != len(yv) or len(Xv) == 0:
            raise ValueError(f"repair: validation_data must be rows shaped like X and y, got X_val {Xv.shape} and "
                             f"y_val {yv.shape} for X {X.shape} and y {y.shape}")
        return X, y, (Xv, yv)
    if validation_split is None:
        raise ValueError("repair: pass validation_data=(X_val, y_val) or a validation_split; the remedies are "
                         "compared on held-out rows")
    split = _validate.real("repair", "validation_split", validation_split, low=0.0, low_open=True, high=1.0,
                           high_open=True)
    cut = len(X) - int(round(len(X) * split))
    if cut <= 0 or cut >= len(X):
        raise ValueError(f"repair: validation_split={split} of {len(X)} rows leaves {cut} training and "
                         f"{len(X) - cut} validation rows; both need at least one")
    return X[:cut], y[:cut], (X[cut:], y[cut:])


def _optimizer_class(optimizer):
    """The Optimizer class every run instantiates: given, or by name ("sgd", "adam"...)."""
    names = ", ".join(sorted(optim.OPTIMIZERS))
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in optim.OPTIMIZERS:
            raise ValueError(f"repair: unknown optimizer {optimizer!r}; choose from {names}")
        return optim.OPTIMIZERS[key]
    if isinstance(optimizer, type) and issubclass(optimizer, optim.Optimizer):
        return optimizer
    raise TypeError(f"repair: optimizer must be a name ({names}) or an Optimizer "
                    f"class, got {type(optimizer).__name__}; every run builds its own optimizer over its own "
                    "network's parameters")


def _requested(remedies) -> Optional[List[str]]:
    """The remedies asked for in the canonical order (None for "auto")."""
    if isinstance(remedies, str):
        if remedies == "auto":
            return None
        remedies = [remedies]
    try:
        names = list(remedies)
    except TypeError:
        raise TypeError(f"repair: remedies must be 'auto' or a list of names from {list(REMEDIES)}, got "
                        f"{type(remedies).__name__}") from None
    unknown = [r for r in names if r not in REMEDIES]
    if unknown:
        raise ValueError(f"repair: unknown remedy {unknown[0]!r}; choose from {', '.join(REMEDIES)} "
                         "(or remedies='auto')")
    return [r for r in REMEDIES if r in names]


def _recommended(diagnosis) -> List[str]:
    """The remedies that test ``diagnosis``'s recommendations, in the canonical order: a
    new activation or initializer -> "activation"; a lower learning rate (``params``
    "factor" below 1) -> "lower_lr"; "batchnorm", "clipping", "residual" as named."""
    chosen = set()
    for rec in diagnosis.recommendations:
        if rec.kind == "learning_rate":
            factor = rec.params.get("factor")
            if factor is not None and factor < 1:
                chosen.add("lower_lr")
        elif rec.kind in _REMEDY_OF_RECOMMENDATION:
            chosen.add(_REMEDY_OF_RECOMMENDATION[rec.kind])
    return [r for r in REMEDIES if r in chosen]


# ---------------------------------------------------------------------- the report
def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, fmt)


class RepairReport:
    """What ``repair`` found.

    - ``rows``: one dict per run, the control first: ``remedy``, ``description``,
      ``applicable``, ``loss`` (training loss of the last epoch), ``val_loss``,
      ``val_accuracy`` (None for a regression loss), ``health`` (the gradient health after
      training, e.g. "healthy" or "vanishing in 0, 1"), ``diverged`` (a non-finite loss or a
      skipped step), ``steps``, ``seconds`` (wall time of training), ``lr``, ``clip_norm``,
      ``batch_digest`` (SHA-256 of the training inputs the run saw), ``warnings``;
    - ``best``: the remedy with the highest validation accuracy (ties: the lower validation
      loss, then the earlier row; a diverged run never wins), None when every run diverged;
    - ``best_network``: that run's trained network; ``networks``: every trained network by
      remedy;
    - per run, by remedy: ``histories`` (``fit``'s per-epoch logs: ``loss``, ``val_loss``,
      ``val_accuracy``, ``grad_norm``...), ``monitors`` (the closed GradientMonitor that
      watched it: ``monitors[r].history`` has every step's per-layer numbers) and
      ``diagnoses`` (the Diagnosis of that history, which ``health`` summarises);
    - ``control_diagnosis``: ``gradcore.monitor.diagnose`` of the untrained control (what
      "auto" chooses the remedies from);
    - ``settings``: epochs, batch size, steps, optimizer, learning rate, seed, percentile.
    """

    def __init__(self, rows, best, networks, runs, control_diagnosis, settings):
        self.rows: List[Dict[str, Any]] = rows
        self.best: Optional[str] = best
        self.networks: Dict[str, Any] = networks
        self.histories: Dict[str, Dict[str, list]] = {name: run.epochs for name, run in runs.items()}
        self.monitors: Dict[str, GradientMonitor] = {name: run.monitor for name, run in runs.items()}
        self.diagnoses = {name: run.diagnosis for name, run in runs.items()}
        self.control_diagnosis = control_diagnosis
        self.settings: Dict[str, Any] = settings

    @property
    def best_network(self):
        return None if self.best is None else self.networks[self.best]

    def row(self, remedy: str) -> Dict[str, Any]:
        """The row of ``remedy`` ("control", "activation", ...)."""
        for row in self.rows:
            if row["remedy"] == remedy:
                return row
        raise KeyError(f"RepairReport: no row for {remedy!r}; rows: {[r['remedy'] for r in self.rows]}")

    def table(self) -> str:
        """The rows as aligned text: remedy, loss, validation loss and accuracy, health,
        steps, seconds, and what the remedy changed."""
        header = ("remedy", "loss", "val_loss", "val_acc", "health", "steps", "time", "change")
        lines = []
        for r in self.rows:
            if not r["applicable"]:
                lines.append((r["remedy"], "-", "-", "-", "-", "-", "-", r["description"]))
                continue
            lines.append((r["remedy"] + (" *" if r["remedy"] == self.best else ""), _cell(r["loss"], ".4f"),
                          _cell(r["val_loss"], ".4f"), _cell(r["val_accuracy"], ".3f"), r["health"] or "-",
                          str(r["steps"]), f"{r['seconds']:.2f}s", r["description"]))
        widths = [max(len(cells[i]) for cells in [header] + lines) for i in range(len(header))]
        numeric = {1, 2, 3, 5, 6}

        def line(cells):
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(c) for c in lines])

    def __str__(self) -> str:
        s = self.settings
        head = (f"repair: {s['epochs']} epochs x {s['steps_per_epoch']} steps (batch {s['batch_size']}), "
                f"{s['optimizer']} lr {s['lr']:g}, seed {s['seed']}; identical batches for every run")
        note = []
        if s.get("remedies") == "auto" and len(self.rows) == 1:
            kinds = sorted({r.kind for r in self.control_diagnosis.recommendations} - {"none"})
            why = (f"its recommendations ({', '.join(kinds)}) are not changes repair can train"
                   if kinds else "it recommends no change")
            note = [f"auto: nothing to try, only the control was trained: the control's diagnosis found no remedy "
                    f"to test ({why}); pass remedies=[...] from {', '.join(REMEDIES)} to test one anyway"]
        if self.best is None:
            tail = "best: none (every run diverged)"
        else:
            b = self.row(self.best)
            tail = f"best: {self.best} (* above): {b['description']}"
        return "\n".join([head, self.table(), tail] + note)

    def __repr__(self) -> str:
        return f"RepairReport(best={self.best!r}, rows={[r['remedy'] for r in self.rows]})"

    def to_dict(self) -> Dict[str, Any]:
        """Rows, best remedy, settings and the control's diagnosis as plain JSON values
        (non-finite numbers written as "nan" / "inf" / "-inf", as ``Diagnosis.to_dict``)."""
        out = {
            "rows": json_safe(self.rows),
            "best": self.best,
            "settings": json_safe(self.settings),
            "control_diagnosis": None if self.control_diagnosis is None else self.control_diagnosis.to_dict(),
        }
        return out


def _best(rows) -> Optional[str]:
    """The winning remedy: highest validation accuracy, then lowest validation loss, then
    the earliest row (the control wins a complete tie); never a diverged or skipped run."""
    def key(item):
        index, row = item
        acc = row["val_accuracy"]
        return (-(acc if _finite(acc) else -math.inf), row["val_loss"], index)

    eligible = [(i, r) for i, r in enumerate(rows) if r["applicable"] and not r["diverged"]]
    return min(eligible, key=key)[1]["remedy"] if eligible else None


# ---------------------------------------------------------------------- repair
def repair(build, X, y, *, loss=None, optimizer="sgd", lr: float = 0.1, epochs: int = 100,
           batch_size: Optional[int] = None, validation_data=None, validation_split: Optional[float] = 0.2,
           remedies: Union[str, Sequence[str]] = "auto", seed: int = 0, clip_percentile: float = 90.0,
           optimizer_kwargs: Optional[Dict[str, Any]] = None) -> RepairReport:
    """Train the control network and candidate remedies on identical batches; compare them.

    ``build``: a zero-argument function returning a fresh gradcore network, or a
    ``gradcore.nn.Sequential`` whose layer list defines the architecture (it is rebuilt
    from its layers' constructor arguments with fresh initial values; the given network
    itself is never touched). Structural remedies need a Sequential.
    ``X`` (N, features...), ``y`` (N, ...): the training rows. ``validation_data=(X_val,
    y_val)``, or else the last ``validation_split`` fraction of the rows is held out.
    ``loss``: a name or Loss (default: the loss the built network was compiled with).
    ``optimizer``: a name ("sgd", "adam", ...) or an Optimizer class, built for each run
    with ``lr`` and ``optimizer_kwargs`` (e.g. ``{"momentum": 0.9}``).
    ``epochs`` passes of ``batch_size`` rows (None: the whole training set, one step per
    epoch). ``remedies``: "auto" (those a diagnosis of the control recommends) or a list
    from ``REMEDIES``. ``clip_percentile``: the "clipping" remedy's threshold is this
    percentile of the global gradient norms of the control's steps. ``seed``: the seed
    of every build and every run.

    Every network is built before any is trained, and each run is watched by its own
    ``GradientMonitor``; warnings raised while a run trains (a skipped step, a non-finite
    value) are kept in its row's ``warnings`` instead of being shown. Raises RuntimeError
    if a run did not train on exactly the control's batches.
    Returns a :class:`RepairReport`.
    """
    seed = _validate.seed("repair", "seed", seed)
    lr = _validate.positive("repair", "lr", lr)
    epochs = _validate.positive_int("repair", "epochs", epochs)
    if batch_size is not None:
        batch_size = _validate.positive_int("repair", "batch_size", batch_size)
    clip_percentile = _validate.real("repair", "clip_percentile", clip_percentile, low=0.0, low_open=True, high=100.0)
    requested = _requested(remedies)
    optimizer_cls = _optimizer_class(optimizer)
    optimizer_kwargs = dict(optimizer_kwargs or {})
    if "lr" in optimizer_kwargs:
        raise ValueError("repair: pass the learning rate as lr=, not in optimizer_kwargs")
    X, y, validation = _data(X, y, validation_data, validation_split)

    source = _Source(build, seed)
    control = source.fresh()
    if loss is None:
        loss = getattr(control, "loss", None) if source.template is None else source.template.loss
        if loss is None:
            raise ValueError("repair: pass loss= (e.g. 'binary_crossentropy'); the network is not compiled")
    loss = _losses.get(loss)
    metrics = ["accuracy"] if getattr(loss, "task", None) in ("binary", "categorical") else []
    setup = _Setup(X, y, validation, loss, metrics, optimizer_cls, optimizer_kwargs, epochs, batch_size, seed)

    _compile(control, setup, lr)  # the diagnosis then knows the optimizer and learning rate
    control_diagnosis = diagnose(control, X, y, seed=seed)

    # Every network is built before any is trained, so a build() that does not return new
    # layers is refused before it could train (and change) anything.
    chosen = requested if requested is not None else _recommended(control_diagnosis)
    # (remedy, network or None, description or reason, {its layer names: the user's})
    candidates: List[Tuple[str, Any, str, Dict[str, str]]] = []
    for remedy in chosen:
        try:
            if remedy in _STRUCTURAL:
                net, description, labels = _candidate(remedy, source.fresh())
            else:
                net, description, labels = source.fresh(), "", {}
            candidates.append((remedy, net, description, labels))
        except _NotApplicable as exc:
            candidates.append((remedy, None, str(exc), {}))

    runs = {CONTROL: _train(control, CONTROL, "unchanged network", setup)}
    rows, networks = [runs[CONTROL].row], {CONTROL: control}
    control_norms = runs[CONTROL].grad_norms
    finite_norms = control_norms[np.isfinite(control_norms)]
    for remedy, net, description, labels in candidates:
        run_lr, clip_norm = lr, None
        if remedy == "clipping" and net is not None:
            clip_norm = float(np.percentile(finite_norms, clip_percentile)) if finite_norms.size else 0.0
            if not clip_norm > 0:
                net, description = None, (f"the {clip_percentile:g}th percentile of the control's finite gradient "
                                          "norms is 0; there is nothing to clip")
            else:
                description = (f"global norm clipped at {clip_norm:.4g} ({clip_percentile:g}th percentile of the "
                               "control's norms)")
        elif remedy == "lower_lr":
            run_lr = lr * LOWER_LR_FACTOR
            description = f"learning rate {lr:g} -> {run_lr:g}"
        if net is None:
            rows.append(_not_applicable(remedy, description))
            continue
        _compile(net, setup, run_lr, clip_norm)
        runs[remedy] = _train(net, remedy, description, setup, labels)
        row = runs[remedy].row
        if row["batch_digest"] != rows[0]["batch_digest"] or row["steps"] != rows[0]["steps"]:
            raise RuntimeError(f"repair: the '{remedy}' run trained on other batches than the control "
                               f"({row['steps']} steps against {rows[0]['steps']}); something in the network draws "
                               "from gradcore's random stream differently from the control")
        rows.append(row)
        networks[remedy] = net

    settings = {"epochs": epochs, "batch_size": setup.batch_size, "steps_per_epoch": setup.steps_per_epoch,
                "optimizer": optimizer_cls.__name__, "optimizer_kwargs": optimizer_kwargs, "lr": lr, "seed": seed,
                "clip_percentile": clip_percentile, "loss": getattr(loss, "name", repr(loss)),
                "train_rows": len(X), "validation_rows": len(validation[0]),
                "remedies": "auto" if requested is None else list(requested)}
    return RepairReport(rows, _best(rows), networks, runs, control_diagnosis, settings)


__all__ = ["repair", "RepairReport", "REMEDIES"]
