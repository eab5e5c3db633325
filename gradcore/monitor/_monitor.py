"""GradientMonitor: every layer's gradients, weights, updates and activations while training.

Per recorded step the monitor reads

- the flat gradient buffer of the network (one ``_C.grad_stats_flat`` call per buffer):
  per parameter the gradient L2 norm, max |g| and non-finite count, per layer the norm
  over all its parameters, and the global norm;
- for each monitored layer the gradient w.r.t. its output before the activation (dz) and
  its output (activations), captured during forward / backward: a Dense layer through the
  internal tap of ``F.linear`` (which sees the pre-activation also when the activation is
  fused into the dense kernel), other layers through a forward hook and a hook on their
  output tensor; statistics by ``_C.grad_stats`` / ``_C.activation_stats``;
- after the optimizer step, the weight norms (``_C.grad_stats_flat`` over the parameter
  buffer) and the update norms (``_C.diff_sumsq_flat`` against a copy of the buffer taken
  before the step).

Rows go to a MonitorHistory; the conditions of ``_events`` are checked as rows arrive.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _C, _validate, _warnings
from .. import activations as _act
from ..callbacks import Callback
from ..nn.layers import Dense, Dropout, Flatten, Identity
from ..nn.module import Module
from ..tensor import Tensor, is_grad_enabled
from ..training import _current_lr
from ._events import Event, NonFiniteError, _fmt
from ._history import MonitorHistory

# Leaf modules that only move or drop values: nothing of their own to watch.
_UNMONITORED = (Dropout, Flatten, Identity)
_NONFINITE_POLICIES = ("warn", "stop", "raise")
_HIST_BINS = 30
_GROWTH_WINDOW = 10   # recorded steps a layer's gradient norm is compared against
_GROWTH_MIN = 3       # fewer earlier steps than this: no growth check yet


def _numpy_activation_stats(A: np.ndarray, Z: Optional[np.ndarray] = None, mode: str = "none",
                            threshold: float = 5.0) -> np.ndarray:
    """Stand-in for ``_C.activation_stats`` (same signature and result) until it is built."""
    a = A.reshape(-1, A.shape[-1]) if A.ndim >= 2 else A.reshape(-1, 1)
    out = np.zeros(8)
    with np.errstate(all="ignore"):
        out[0] = a.mean(dtype=np.float64)
        out[1] = a.std(dtype=np.float64)
    finite = np.isfinite(a)
    out[2], out[3] = (a[finite].min(), a[finite].max()) if finite.any() else (math.nan, math.nan)
    out[4] = a.size - np.count_nonzero(finite)
    v = a if Z is None else Z.reshape(a.shape)
    if mode == "dead":
        out[5] = np.count_nonzero((v <= 0).all(axis=0))
    elif mode == "saturated":
        if Z is None:
            raise ValueError("activation_stats: mode 'saturated' needs Z")
        out[6] = np.count_nonzero(np.abs(v) > threshold)
    out[7] = a.shape[1]
    return out


def _numpy_diff_sumsq_flat(a: np.ndarray, b: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Stand-in for ``_C.diff_sumsq_flat`` until it is built."""
    d = np.square(a.astype(np.float64) - b)
    return np.array([d[offsets[i]:offsets[i + 1]].sum() for i in range(len(offsets) - 1)])


_activation_stats = getattr(_C, "activation_stats", None) or _numpy_activation_stats
_diff_sumsq_flat = getattr(_C, "diff_sumsq_flat", None) or _numpy_diff_sumsq_flat


@dataclass
class LayerInfo:
    """A monitored layer: ``name`` (as in ``named_modules``), ``index`` (position in
    forward order), ``kind`` (class name), ``activation`` (name or None), ``family``
    (``activations.RELU_LIKE`` / ``SATURATING`` / ``LINEAR`` or None) and ``params`` (the
    short names of its parameters, e.g. ["weight", "bias"])."""

    name: str
    index: int
    kind: str
    activation: Optional[str]
    family: Optional[str]
    params: List[str] = field(default_factory=list)


def _activation_of(module: Module) -> Optional[str]:
    if isinstance(module, Dense):
        return module.activation
    name = getattr(module, "activation_name", None)
    return _act.canonical(name) if isinstance(name, str) else None


def _inert_hook(module, args, output):
    """What a copied network keeps of a monitor's forward hook: nothing to do."""
    return None


class _LayerTap:
    """One monitored layer's channel into its monitor: Dense calls ``forward`` / ``output``
    / ``backward`` (F.linear's tap); other layers reach ``forward`` through a forward hook
    and ``backward`` through a hook on their output tensor."""

    __slots__ = ("monitor", "index", "module")

    def __init__(self, monitor: "GradientMonitor", index: int, module: Module):
        self.monitor, self.index, self.module = monitor, index, module

    def forward(self, z, y) -> bool:
        return self.monitor._on_forward(self.index, self.module, z, y)

    def output(self, y) -> None:
        self.monitor._on_output(self.index, y)

    def backward(self, dz) -> None:
        self.monitor._on_backward(self.index, dz)

    def __deepcopy__(self, memo):
        return None  # a copy of the network is not monitored


class _ForwardHook:
    """The forward hook of a non-Dense layer: its output (and, for an activation layer,
    its input: the pre-activation) go to the tap, and a hook on the output tensor catches
    the gradient w.r.t. it."""

    __slots__ = ("tap", "input_is_z")

    def __init__(self, tap: _LayerTap, input_is_z: bool):
        self.tap, self.input_is_z = tap, input_is_z

    def __call__(self, module, args, out):
        if not isinstance(out, Tensor):
            return None
        z = None
        if self.input_is_z and args and isinstance(args[0], Tensor):
            z = args[0].data
        if self.tap.forward(z, out.data) and out.requires_grad:
            out.register_hook(self.tap.backward)
        return None

    def __deepcopy__(self, memo):
        return _inert_hook


@dataclass
class _Param:
    """A monitored parameter: where its statistics sit (row of the stacked per-segment
    statistics), its layer and name."""

    row: int
    layer: int
    name: str
    tensor: Tensor
    kernel: bool  # a weight matrix (>= 2-d): the documents' W, checked for vanishing / update ratio


class _Pending:
    """A recorded step waiting for its optimizer step (update sizes, weight norms)."""

    __slots__ = ("step", "lr", "grad_norm", "row_start")

    def __init__(self, step: int, lr: float, grad_norm: float, row_start: int):
        self.step, self.lr, self.grad_norm, self.row_start = step, lr, grad_norm, row_start


class GradientMonitor(Callback):
    """Watch every layer's gradients, weights, updates and activations while training.

    ``GradientMonitor(net, every=1, activations=True, updates=True, optimizer=None, ...)``
    installs its hooks on ``net`` at once (``close()`` removes them; also a context
    manager). Use it as a callback, ``net.fit(X, y, callbacks=[mon])``, or in a
    hand-written loop::

        loss.backward(); mon.record(loss); opt.step()

    (the update sizes of a step are filled in after the step: at the next training forward,
    the next ``record`` or when results are read). Only training-mode forwards with grad
    enabled are recorded, and only steps with ``step % every == 0`` (the others cost
    almost nothing; after a non-finite gradient norm every step is recorded until it is
    finite again). Monitored layers: every leaf module except Dropout, Flatten, Identity,
    in forward order (``mon.layers``: LayerInfo).

    Per recorded step and layer (``mon.history``, a MonitorHistory), metrics:
    ``grad_norm`` (all the layer's parameter gradients), ``<p>.grad_norm``,
    ``<p>.grad_max``, ``<p>.grad_nonfinite``, ``<p>.norm`` (after the step) and, with
    ``updates``, ``<p>.update_norm`` and ``<p>.update_ratio`` (update / norm) for each
    parameter p ("weight", "bias"); ``dz_norm``, ``dz_max``, ``dz_nonfinite`` (gradient of
    the loss, the batch mean, w.r.t. the layer's output before its activation; the
    documents' dZ of the summed loss is this times the batch size); with ``activations``:
    ``act_mean``, ``act_std``, ``act_min``, ``act_max``, ``act_nonfinite`` of the output,
    ``dead_frac`` (ReLU family: units with pre-activation <= 0 for the whole batch) and
    ``saturated_frac`` (sigmoid / tanh: entries with |pre-activation| > ``saturation``).
    Layer "": ``loss``, ``grad_norm`` (global, before clipping), ``clip_coef``, ``skipped``,
    ``lr`` (from fit's logs or ``optimizer``'s ``last_*`` attributes; without an optimizer
    the global norm is computed here and the others are nan).

    Events (``mon.events``; each also passed to ``on_event``) fire at the onset of a
    condition: a layer's gradient norm above ``exploding`` or ``growth`` times its recent
    median; a weight-gradient norm below ``vanishing``; first / last weight-gradient norm
    below ``flow_ratio``; ``dead_frac`` above ``dead``; ``saturated_frac`` above
    ``saturated``; a weight's update ratio outside ``update_ratio``; NaN / Inf, located at
    the first layer and tensor where it appeared (``on_nonfinite``: "warn", "stop" sets
    ``net.stop_training``, "raise" raises NonFiniteError).

    ``histograms=True`` keeps 30-bin histograms of each layer's output, weight and weight
    gradient per recorded step in ``mon.histograms``. ``loggers``: objects with
    ``write_step(monitor, step, rows)`` and ``close()``, called after each recorded step.
    """

    _in_fit = False  # inside net.fit: the step's lr / grad_norm / clip_coef / skipped come from its logs

    def __init__(self, net: Module, every: int = 1, activations: bool = True, updates: bool = True,
                 optimizer=None, exploding: float = 100.0, vanishing: float = 0.01, flow_ratio: float = 1e-3,
                 growth: float = 10.0, dead: float = 0.7, saturated: float = 0.5,
                 update_ratio: Tuple[float, float] = (1e-5, 1e-1), saturation: float = 5.0,
                 on_nonfinite: str = "warn", on_event: Optional[Callable[[Event], None]] = None,
                 histograms: bool = False, loggers: Sequence = ()):
        op = "GradientMonitor"
        if not isinstance(net, Module):
            raise TypeError(f"{op}: net must be a gradcore.nn.Module (a network), got {type(net).__name__}")
        self.every = _validate.positive_int(op, "every", every)
        self.activations = _flag(op, "activations", activations)
        self.updates = _flag(op, "updates", updates)
        self.histograms_enabled = _flag(op, "histograms", histograms)
        if optimizer is not None and not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"{op}: optimizer must be an optimizer (with a step() method) or None, got "
                            f"{type(optimizer).__name__}")
        self.exploding = _validate.positive(op, "exploding", exploding)
        self.vanishing = _validate.nonnegative(op, "vanishing", vanishing)
        self.flow_ratio = _validate.nonnegative(op, "flow_ratio", flow_ratio)
        self.growth = _validate.real(op, "growth", growth, low=1.0, low_open=True)
        self.dead = _validate.probability(op, "dead", dead)
        self.saturated = _validate.probability(op, "saturated", saturated)
        self.update_ratio = _interval(op, update_ratio)
        self.saturation = _validate.positive(op, "saturation", saturation)
        self.on_nonfinite = _validate.choice(op, "on_nonfinite", on_nonfinite, _NONFINITE_POLICIES)
        if on_event is not None and not callable(on_event):
            raise TypeError(f"{op}: on_event must be callable (it receives each Event) or None, got "
                            f"{type(on_event).__name__}")
        self.on_event = on_event
        if isinstance(loggers, (str, bytes)) or not isinstance(loggers, (list, tuple)):
            raise TypeError(f"{op}: loggers must be a list or tuple of loggers, got {type(loggers).__name__}")
        for i, logger in enumerate(loggers):
            for method in ("write_step", "close"):
                if not callable(getattr(logger, method, None)):
                    raise TypeError(f"{op}: loggers[{i}] ({type(logger).__name__}) has no {method}() method; a "
                                    "logger needs write_step(monitor, step, rows) and close()")
        self._loggers = list(loggers)

        self.net = net
        self.optimizer = optimizer
        self.layers: List[LayerInfo] = []
        self._modules: List[Module] = []
        self._collect_layers(op)
        self.history = MonitorHistory([info.name for info in self.layers])
        self.history._before_read = self._settle
        self.events: List[Event] = []
        self.histograms: Dict[str, list] = {info.name: [] for info in self.layers} if self.histograms_enabled else {}

        self._step = 0               # index of the optimizer step in progress
        self._force = False          # record every step (a non-finite norm was seen)
        self._armed = True           # the step in progress is recorded (step 0 is)
        self._pending: Optional[_Pending] = None
        self._closed = False
        self._active: Dict[str, set] = {}  # kind -> keys true at the last recorded step (onset-only events)
        self._growth_ring = np.full((len(self.layers), _GROWTH_WINDOW), math.nan)
        self._growth_count = 0
        self._clear_captures()
        self._codes()
        self._map_parameters()
        self._handles: list = []
        self._install()

    # ------------------------------------------------------------------ construction
    def _collect_layers(self, op: str) -> None:
        for name, module in self.net.named_modules():
            if next(module.named_children(), None) is not None or isinstance(module, _UNMONITORED):
                continue
            if name == "":
                raise ValueError(f"{op}: net is a single layer ({module.describe()}); monitor a network, e.g. "
                                 "GradientMonitor(Sequential(layer))")
            activation = _activation_of(module)
            family = _act.family(activation) if activation else (_act.LINEAR if isinstance(module, Dense) else None)
            params = [p for p, t in module._parameters.items() if t is not None]
            self.layers.append(LayerInfo(name, len(self.layers), type(module).__name__, activation, family, params))
            self._modules.append(module)
        if not self.layers:
            raise ValueError(f"{op}: {self.net.describe()} has no layer to monitor (every leaf module is Dropout, "
                             "Flatten or Identity)")
        # statistics mode of each layer's output: dead units for the ReLU family, saturation for sigmoid / tanh
        self._mode = []
        for info in self.layers:
            if info.family == _act.RELU_LIKE:
                self._mode.append("dead")
            elif info.activation in ("sigmoid", "tanh"):
                self._mode.append("saturated")
            else:
                self._mode.append("none")

    def _codes(self) -> None:
        h = self.history
        self._lcode = np.arange(1, len(self.layers) + 1, dtype=np.int32)  # layer index -> history code
        self._mc = {name: h.metric_code(name) for name in (
            "loss", "grad_norm", "clip_coef", "skipped", "lr", "dz_norm", "dz_max", "dz_nonfinite",
            "act_mean", "act_std", "act_min", "act_max", "act_nonfinite", "dead_frac", "saturated_frac")}
        self._mc_global = np.array([self._mc[k] for k in ("loss", "grad_norm", "clip_coef", "skipped", "lr")],
                                   dtype=np.int32)
        self._mc_dz = np.array([self._mc[k] for k in ("dz_norm", "dz_max", "dz_nonfinite")], dtype=np.int32)
        self._mc_act = np.array([self._mc[k] for k in ("act_mean", "act_std", "act_min", "act_max",
                                                       "act_nonfinite")], dtype=np.int32)

    def _map_parameters(self) -> None:
        """Map the segments of the network's flat buffers to (layer, parameter name), once."""
        self._flats = self.net.flat_buffers()
        owner = {}
        for i, module in enumerate(self._modules):
            for pname, t in module._parameters.items():
                if t is not None:
                    owner.setdefault(id(t), (i, pname))
        net_params = {id(p) for p in self.net.parameters()}
        self._params: List[_Param] = []
        self._row_tensors: List[Tensor] = []
        net_rows = []
        base = 0
        for flat in self._flats:
            for j, t in enumerate(flat.params):
                self._row_tensors.append(t)
                if id(t) in net_params:
                    net_rows.append(base + j)
                if id(t) in owner:
                    i, pname = owner[id(t)]
                    self._params.append(_Param(base + j, i, pname, t, pname == "weight" and t.ndim >= 2))
            base += len(flat.params)
        self._params.sort(key=lambda p: (p.layer, self.layers[p.layer].params.index(p.name)))
        self._net_rows = np.array(net_rows, dtype=np.intp)
        h = self.history
        rows = np.array([p.row for p in self._params], dtype=np.intp)
        layer = np.array([p.layer for p in self._params], dtype=np.intp)
        self._p_rows, self._p_layer = rows, layer
        self._p_lc = self._lcode[layer] if len(layer) else np.empty(0, np.int32)
        self._p_lc3 = np.repeat(self._p_lc, 3)
        self._p_mc3 = np.array([h.metric_code(f"{p.name}.{m}") for p in self._params
                                for m in ("grad_norm", "grad_max", "grad_nonfinite")], dtype=np.int32)
        self._p_mc_norm = np.array([h.metric_code(f"{p.name}.norm") for p in self._params], dtype=np.int32)
        if self.updates:
            self._p_mc_update = np.array([h.metric_code(f"{p.name}.update_norm") for p in self._params], np.int32)
            self._p_mc_ratio = np.array([h.metric_code(f"{p.name}.update_ratio") for p in self._params], np.int32)
        self._p_kernel = np.array([p.kernel for p in self._params], dtype=bool)
        self._grad_layers = np.unique(layer)  # layers with parameters: they get a grad_norm row
        self._snapshots = [np.empty_like(flat.data) for flat in self._flats] if self.updates else []

    def _install(self) -> None:
        for i, module in enumerate(self._modules):
            tap = _LayerTap(self, i, module)
            if isinstance(module, Dense) and type(module).forward is Dense.forward:
                if module.__dict__.get("_monitor_tap") is not None:
                    raise ValueError(f"GradientMonitor: layer '{self.layers[i].name}' ({module.describe()}) is "
                                     "already watched by another GradientMonitor; close() that one first")
                object.__setattr__(module, "_monitor_tap", tap)
                self._handles.append(module)
            else:
                # an activation layer's input is its pre-activation (a Dense's own forward is not tapped here)
                input_is_z = self.layers[i].activation is not None and not isinstance(module, Dense)
                hook = _ForwardHook(tap, input_is_z)
                self._handles.append(module.register_forward_hook(hook))

    def _clear_captures(self) -> None:
        n = len(self.layers)
        self._out: List[Optional[np.ndarray]] = [None] * n
        self._z: List[Optional[np.ndarray]] = [None] * n
        self._dz: List[Optional[np.ndarray]] = [None] * n
        self._fwd_order: List[int] = []
        self._bwd_order: List[int] = []

    # ------------------------------------------------------------------ capture (hot path)
    def _on_forward(self, i: int, module: Module, z, y) -> bool:
        if not (module.training and is_grad_enabled()):
            return False
        if self._pending is not None:  # a training forward after a recorded step: its optimizer step is done
            self._finish()
        if not self._armed:
            return False
        self._out[i] = y
        self._z[i] = z
        self._fwd_order.append(i)
        return True

    def _on_output(self, i: int, y) -> None:
        if self._armed and self._out[i] is not None:
            self._out[i] = y

    def _on_backward(self, i: int, dz) -> None:
        if self._armed and self._out[i] is not None:
            self._dz[i] = dz
            self._bwd_order.append(i)

    # ------------------------------------------------------------------ recording
    @property
    def step(self) -> int:
        """Index of the optimizer step in progress (the number of steps seen so far)."""
        return self._step

    def record(self, loss=None) -> None:
        """Record the step whose gradients are complete: call after ``loss.backward()`` and
        before ``optimizer.step()``. ``loss``: the step's loss (a 0-d Tensor or a number;
        None records nan). Steps with ``step % every != 0`` only advance the step count."""
        self._check_open("record")
        value = _loss_value(loss)
        if self._pending is not None:
            self._finish()
        self._record(value)

    def _record(self, loss: float) -> None:
        step = self._step
        self._step += 1
        if not self._armed:
            self._armed = self._force or self._step % self.every == 0
            if not math.isfinite(loss):
                self._global_nonfinite(step, "loss", loss)
            return
        try:
            self._record_step(step, loss)
        finally:
            self._clear_captures()
            self._armed = self._force or self._step % self.every == 0

    def _record_step(self, step: int, loss: float) -> None:
        if any(flat.params[0]._flat is not flat for flat in self._flats):
            self._map_parameters()  # the network re-homed its parameters (astype, a new layer)
        h = self.history
        row_start = h._n
        lcs, mcs, vals = [], [], []
        # gradients, per parameter and per layer
        G = self._segment_stats("grad")
        has = np.fromiter((t.grad is not None for t in self._row_tensors), dtype=bool, count=len(self._row_tensors))
        p_has = has[self._p_rows]
        pG = G[self._p_rows]
        if p_has.all():
            lcs.append(self._p_lc3)
            mcs.append(self._p_mc3)
            vals.append(pG[:, 1:4].ravel())
        else:
            keep = np.repeat(p_has, 3)
            lcs.append(self._p_lc3[keep])
            mcs.append(self._p_mc3[keep])
            vals.append(pG[:, 1:4].ravel()[keep])
        sumsq = np.where(p_has, pG[:, 0], 0.0)
        layer_sumsq = np.bincount(self._p_layer, weights=sumsq, minlength=len(self.layers))
        layer_has = np.bincount(self._p_layer, weights=p_has, minlength=len(self.layers)) > 0
        layer_norm = np.where(layer_has, np.sqrt(layer_sumsq), math.nan)
        gl = self._grad_layers[layer_has[self._grad_layers]]
        lcs.append(self._lcode[gl])
        mcs.append(np.full(len(gl), self._mc["grad_norm"], dtype=np.int32))
        vals.append(layer_norm[gl])
        net_has = has[self._net_rows]
        grad_norm = math.sqrt(float(G[self._net_rows[net_has], 0].sum()))
        grad_nonfinite = bool(G[self._net_rows[net_has], 3].any())
        # dz of every layer that got one
        dz_layers = [i for i in range(len(self.layers)) if self._dz[i] is not None]
        dz_nonfinite = False
        if dz_layers:
            D = _C.grad_stats([np.ascontiguousarray(self._dz[i]) for i in dz_layers])
            lcs.append(np.repeat(self._lcode[dz_layers], 3))
            mcs.append(np.tile(self._mc_dz, len(dz_layers)))
            vals.append(D[:, 1:4].ravel())
            dz_nonfinite = bool(D[:, 3].any())
        # activations
        act_layers = [i for i in range(len(self.layers)) if self._out[i] is not None]
        frac = {"dead": np.full(len(self.layers), math.nan), "saturated": np.full(len(self.layers), math.nan)}
        act_nonfinite = False
        if self.activations and act_layers:
            S = np.empty((len(act_layers), 8))
            for k, i in enumerate(act_layers):
                S[k] = self._act_stats(i)
            lcs.append(np.repeat(self._lcode[act_layers], 5))
            mcs.append(np.tile(self._mc_act, len(act_layers)))
            vals.append(S[:, :5].ravel())
            act_nonfinite = bool(S[:, 4].any())
            for mode, col, metric in (("dead", 5, "dead_frac"), ("saturated", 6, "saturated_frac")):
                ks = [k for k, i in enumerate(act_layers) if self._mode[i] == mode and
                      (mode == "dead" or self._z[i] is not None)]
                if not ks:
                    continue
                denom = S[ks, 7] if mode == "dead" else np.array([self._out[act_layers[k]].size for k in ks])
                f = S[ks, col] / denom
                idx = [act_layers[k] for k in ks]
                frac[mode][idx] = f
                lcs.append(self._lcode[idx])
                mcs.append(np.full(len(ks), self._mc[metric], dtype=np.int32))
                vals.append(f)
        lr = math.nan
        if self.optimizer is not None and not self._in_fit:
            lr = _current_lr(self.optimizer)
        h.append(step, np.concatenate(lcs), np.concatenate(mcs), np.concatenate(vals))
        h.append(step, 0, self._mc["loss"], [loss])
        if self.histograms_enabled:
            self._add_histograms(step, act_layers)
        if self.updates:
            for flat, snap in zip(self._flats, self._snapshots):
                np.copyto(snap, flat.data)
        self._pending = _Pending(step, lr, grad_norm, row_start)
        # events of the step's gradients and activations
        if not math.isfinite(loss) or grad_nonfinite or dz_nonfinite or act_nonfinite or not math.isfinite(grad_norm):
            self._locate_nonfinite(step, loss, G, has)
        else:
            self._onset("nonfinite", {}, step)
        self._detect_gradients(step, layer_norm, pG, p_has)
        if self.activations:
            self._detect_units(step, frac)

    def _segment_stats(self, which: str) -> np.ndarray:
        """grad_stats_flat of every flat buffer's ``which`` ("grad" / "data") array, stacked (k, 6)."""
        parts = [_C.grad_stats_flat(getattr(flat, which), flat.offsets) for flat in self._flats]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _act_stats(self, i: int) -> np.ndarray:
        A = np.ascontiguousarray(self._out[i])
        Z = self._z[i]
        mode = self._mode[i]
        if Z is not None:
            Z = np.ascontiguousarray(Z, dtype=A.dtype).reshape(A.shape) if Z.shape != A.shape or Z.dtype != A.dtype \
                else np.ascontiguousarray(Z)
        elif mode == "saturated":
            mode = "none"
        return _activation_stats(A, Z if mode != "none" else None, mode, self.saturation)

    def _add_histograms(self, step: int, act_layers: List[int]) -> None:
        for i in act_layers:
            self._histogram(i, step, "activation", self._out[i])
        for p in self._params:
            if p.name == "weight":
                self._histogram(p.layer, step, "weight", p.tensor.data)
                if p.tensor.grad is not None:
                    self._histogram(p.layer, step, "grad", p.tensor.grad)

    def _histogram(self, i: int, step: int, kind: str, values: np.ndarray) -> None:
        v = np.asarray(values).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        counts, edges = np.histogram(v, bins=_HIST_BINS)
        self.histograms[self.layers[i].name].append((step, kind, counts, edges))

    def _finish(self, logs: Optional[Dict] = None) -> None:
        """Complete the pending recorded step after its optimizer step: global step rows,
        weight norms, update sizes and their events, then the loggers."""
        p = self._pending
        self._pending = None
        h = self.history
        opt = self.optimizer
        if logs is not None:
            values = [logs.get("grad_norm", math.nan), logs.get("clip_coef", math.nan), logs.get("skipped", math.nan),
                      logs.get("lr", math.nan)]
        elif opt is not None:
            values = [getattr(opt, "last_grad_norm", math.nan), getattr(opt, "last_clip_coef", math.nan),
                      getattr(opt, "last_skipped", math.nan), p.lr]
        else:
            values = [p.grad_norm, math.nan, math.nan, math.nan]
        values = [math.nan if v is None else float(v) for v in values]
        h.append(p.step, 0, self._mc_global[1:], values)
        W = self._segment_stats("data")
        norms = W[self._p_rows, 1]
        h.append(p.step, self._p_lc, self._p_mc_norm, norms)
        if self.updates:
            D = [_diff_sumsq_flat(flat.data, snap, flat.offsets) for flat, snap in zip(self._flats, self._snapshots)]
            D = D[0] if len(D) == 1 else np.concatenate(D)
            update = np.sqrt(D[self._p_rows])
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = update / norms
            h.append(p.step, self._p_lc, self._p_mc_update, update)
            h.append(p.step, self._p_lc, self._p_mc_ratio, ratio)
            if values[2] != 1.0:  # a skipped step moved nothing: no update-ratio verdict
                self._detect_updates(p.step, ratio, update, norms)
        if self._force and math.isfinite(values[0]):
            self._force = False
            self._armed = self._step % self.every == 0
        if self._loggers:
            rows = list(zip(h._string_columns()[0][p.row_start:].tolist(),
                            h._string_columns()[1][p.row_start:].tolist(), h._val[p.row_start:h._n].tolist()))
            for logger in self._loggers:
                logger.write_step(self, p.step, rows)

    def _settle(self) -> None:
        """Before results are read: complete a pending step (its optimizer step is taken
        to have happened)."""
        if self._pending is not None:
            self._finish()

    # ------------------------------------------------------------------ events
    def _emit(self, event: Event) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        if event.kind != "nonfinite":
            return
        if self.on_nonfinite == "raise":
            raise NonFiniteError(event)
        if self.on_nonfinite == "stop":
            for net in {id(n): n for n in (self.net, self.model) if n is not None}.values():
                net.stop_training = True
            _warnings.warn(f"GradientMonitor: {event}; stopping training (net.stop_training = True)", RuntimeWarning)
        else:
            _warnings.warn(f"GradientMonitor: {event}", RuntimeWarning)

    def _onset(self, kind: str, found: Dict[tuple, Event], step: int) -> None:
        """Emit the events of ``found`` (key -> Event) whose condition was not true at the
        previous recorded step; remember the keys for the next one."""
        before = self._active.get(kind, set())
        self._active[kind] = set(found)
        for key, event in found.items():
            if key not in before:
                self._emit(event)

    def _global_nonfinite(self, step: int, tensor: str, value: float) -> None:
        """A non-finite loss or global norm at a step that was not recorded: report it and
        record every step until the norm is finite again."""
        self._force = True
        self._armed = True
        event = Event("nonfinite", step, "", tensor, float(value), math.nan,
                      f"{tensor} is {value} at a step that was not recorded (every={self.every}); recording every "
                      "step until it is finite again to locate the origin",
                      {"phase": "backward" if tensor == "grad_norm" else "forward"})
        self._onset("nonfinite", {("", tensor): event}, step)

    def _locate_nonfinite(self, step: int, loss: float, G: np.ndarray, has: np.ndarray) -> None:
        """The first tensor of the step holding NaN / Inf, in the order the values arose:
        parameters (their values before the step), forward outputs in forward order, dz in
        backward order, parameter gradients in backward order."""
        self._force = True
        origin = None
        W = self._segment_stats("data")
        fwd = list(dict.fromkeys(self._fwd_order)) + [i for i in range(len(self.layers)) if i not in self._fwd_order]
        by_layer: Dict[int, List[_Param]] = {}
        for p in self._params:
            by_layer.setdefault(p.layer, []).append(p)
        for i in fwd:
            bad = [p for p in by_layer.get(i, ()) if W[p.row, 3] > 0]
            if bad:
                origin = (i, bad[0].name, "parameter", W[bad[0].row, 3])
                break
        if origin is None:
            for i in dict.fromkeys(self._fwd_order):
                count = np.size(self._out[i]) - np.count_nonzero(np.isfinite(self._out[i]))
                if count:
                    origin = (i, "output", "forward", count)
                    break
        bwd = list(dict.fromkeys(self._bwd_order))
        if origin is None:
            for i in bwd:
                count = np.size(self._dz[i]) - np.count_nonzero(np.isfinite(self._dz[i]))
                if count:
                    origin = (i, "dz", "backward", count)
                    break
        if origin is None:
            for i in bwd + [i for i in reversed(fwd) if i not in bwd]:
                bad = [p for p in by_layer.get(i, ()) if has[p.row] and G[p.row, 3] > 0]
                if bad:
                    origin = (i, f"{bad[0].name}.grad", "backward", G[bad[0].row, 3])
                    break
        if origin is None:
            layer, tensor, phase, count = "", "loss", "forward", 1
        else:
            layer, tensor, phase, count = self.layers[origin[0]].name, origin[1], origin[2], origin[3]
        what = {"parameter": f"parameter {tensor} already holds", "forward": "the forward output first holds",
                "backward": f"{tensor} first holds" if tensor != "dz" else "the gradient dz first holds"}[phase]
        message = f"{what} {int(count)} NaN/Inf value(s) (loss {loss:.4g})"
        event = Event("nonfinite", step, layer, tensor, float(count), 0.0, message,
                      {"phase": phase, "nonfinite": int(count), "loss": loss})
        self._onset("nonfinite", {(layer, tensor): event}, step)

    def _detect_gradients(self, step: int, layer_norm: np.ndarray, pG: np.ndarray, p_has: np.ndarray) -> None:
        names = [info.name for info in self.layers]
        found = {}
        for i in np.flatnonzero(layer_norm > self.exploding):
            v = float(layer_norm[i])
            found[(names[i], "grad")] = Event(
                "exploding", step, names[i], "grad", v, self.exploding,
                f"gradient norm {_fmt(v)} is above {_fmt(self.exploding)}", {"grad_norm": v})
        self._onset("exploding", found, step)
        # growth against the layer's median over its last recorded steps
        ring = self._growth_ring
        found = {}
        if self._growth_count >= _GROWTH_MIN:
            window = ring[:, :min(self._growth_count, _GROWTH_WINDOW)]
            with np.errstate(invalid="ignore"):
                candidates = np.flatnonzero(layer_norm > self.growth * window.min(axis=1))
            for i in candidates:
                median = float(np.median(window[i]))
                v = float(layer_norm[i])
                if v > self.growth * median:
                    found[(names[i], "grad")] = Event(
                        "exploding_growth", step, names[i], "grad", v, self.growth * median,
                        f"gradient norm {_fmt(v)} is {v / median:.3g}x its median {_fmt(median)} over the last "
                        f"{window.shape[1]} recorded steps (limit {self.growth:g}x)",
                        {"grad_norm": v, "median": median, "window": int(window.shape[1]), "growth": v / median})
        self._onset("exploding_growth", found, step)
        ring[:, self._growth_count % _GROWTH_WINDOW] = layer_norm
        self._growth_count += 1
        # vanishing: the weight matrices' gradient norms, and first / last
        kernel = self._p_kernel & p_has
        found = {}
        wnorm = pG[:, 1]
        for k in np.flatnonzero(kernel & (wnorm < self.vanishing)):
            i = int(self._p_layer[k])
            v = float(wnorm[k])
            found[(names[i], "weight.grad")] = Event(
                "vanishing", step, names[i], "weight.grad", v, self.vanishing,
                f"weight-gradient norm {_fmt(v)} is below {_fmt(self.vanishing)}", {"grad_norm": v})
        self._onset("vanishing", found, step)
        ks = np.flatnonzero(kernel)
        found = {}
        if len(ks) >= 2:
            first, last = ks[0], ks[-1]
            a, b = float(wnorm[first]), float(wnorm[last])
            ratio = a / b if b > 0 else math.inf
            if ratio < self.flow_ratio:
                la, lb = names[self._p_layer[first]], names[self._p_layer[last]]
                found[(la, "weight.grad")] = Event(
                    "vanishing_flow", step, la, "weight.grad", ratio, self.flow_ratio,
                    f"first/last weight-gradient norm ratio {_fmt(ratio)} is below {_fmt(self.flow_ratio)} (layer "
                    f"'{la}': {_fmt(a)}, layer '{lb}': {_fmt(b)})",
                    {"first_layer": la, "last_layer": lb, "first_grad_norm": a, "last_grad_norm": b, "ratio": ratio})
        self._onset("vanishing_flow", found, step)

    def _detect_units(self, step: int, frac: Dict[str, np.ndarray]) -> None:
        names = [info.name for info in self.layers]
        for mode, kind, limit in (("dead", "dead_units", self.dead), ("saturated", "saturated_units", self.saturated)):
            found = {}
            for i in np.flatnonzero(frac[mode] > limit):
                v = float(frac[mode][i])
                what = ("of the units are dead (pre-activation <= 0 for the whole batch)" if mode == "dead" else
                        f"of the pre-activations are beyond +-{self.saturation:g} (saturated)")
                found[(names[i], "output")] = Event(
                    kind, step, names[i], "output", v, limit, f"{v:.0%} {what}, above {limit:.0%}",
                    {f"{mode}_frac": v})
            self._onset(kind, found, step)

    def _detect_updates(self, step: int, ratio: np.ndarray, update: np.ndarray, norms: np.ndarray) -> None:
        low, high = self.update_ratio
        for kind, mask, limit, word in (("update_ratio_high", ratio > high, high, "above"),
                                        ("update_ratio_low", ratio < low, low, "below")):
            found = {}
            for k in np.flatnonzero(mask & self._p_kernel):
                name = self.layers[self._p_layer[k]].name
                v = float(ratio[k])
                found[(name, "weight.update")] = Event(
                    kind, step, name, "weight.update", v, limit,
                    f"update/weight norm ratio {_fmt(v)} is {word} {_fmt(limit)} (update {_fmt(update[k])}, weight "
                    f"{_fmt(norms[k])})", {"update_norm": float(update[k]), "norm": float(norms[k]), "ratio": v})
            self._onset(kind, found, step)

    # ------------------------------------------------------------------ fit callback
    def set_context(self, model, optimizer) -> None:
        self._check_open("fit")
        if model is not self.net and all(m is not self.net for m in model.modules()):
            raise ValueError(f"GradientMonitor: it watches {self.net.describe()}, but fit trains "
                             f"{model.describe()}, which does not contain it")
        super().set_context(model, optimizer)

    def on_train_begin(self, logs=None) -> None:
        self._in_fit = True

    def on_after_backward(self, batch, logs=None) -> None:
        logs = logs or {}
        if self._pending is not None:
            self._finish()
        self._record(_loss_value(logs.get("loss")))

    def on_after_step(self, batch, logs=None) -> None:
        logs = logs or {}
        if self._pending is not None:
            self._finish(logs)
            return
        norm = logs.get("grad_norm")
        if norm is not None and not math.isfinite(norm):
            self._global_nonfinite(self._step - 1, "grad_norm", norm)

    def on_train_end(self, logs=None) -> None:
        self._in_fit = False
        self._settle()
        self._close_loggers()

    # ------------------------------------------------------------------ results
    def summary(self, print_fn=print) -> str:
        """A table of the last recorded step, one line per layer (gradient, weight, update
        and dz norms, activation statistics); printed with ``print_fn`` (None: only returned)."""
        values = self.history.at(-1)
        if not values:
            text = "GradientMonitor: nothing recorded yet"
        else:
            step = int(self.history.steps()[-1])
            cols = (("grad_norm", "grad_norm"), ("weight.grad_norm", "dW_norm"), ("weight.norm", "W_norm"),
                    ("weight.update_ratio", "upd/W"), ("dz_norm", "dZ_norm"), ("act_mean", "act_mean"),
                    ("act_std", "act_std"), ("dead_frac", "dead"), ("saturated_frac", "saturated"))
            header = ["layer", "kind"] + [c[1] for c in cols]
            rows = []
            for info in self.layers:
                kind = info.kind + (f"({info.activation})" if info.activation and info.kind == "Dense" else "")
                cells = [info.name, kind]
                for metric, _ in cols:
                    v = values.get((info.name, metric))
                    cells.append("-" if v is None else _fmt(v))
                rows.append(cells)
            widths = [max(len(r[k]) for r in rows + [header]) for k in range(len(header))]
            lines = [f"GradientMonitor: step {step}"]
            lines.append("  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip())
            lines.append("  ".join("-" * w for w in widths))
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
            glob = [f"{m} {_fmt(values[('', m)])}" for m in ("loss", "grad_norm", "clip_coef", "skipped", "lr")
                    if ("", m) in values]
            lines.append("network: " + ", ".join(glob))
            recent = [e for e in self.events if e.step == step]
            lines += [f"  {e}" for e in recent]
            text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def diagnose(self, **thresholds):
        """A Diagnosis of the recorded history (``gradcore.monitor.diagnosis.diagnose_history``)."""
        from .diagnosis import diagnose_history

        return diagnose_history(self, **thresholds)

    def to_pandas(self):
        """``history.to_pandas()``."""
        return self.history.to_pandas()

    def to_csv(self, path) -> None:
        """``history.to_csv(path)``."""
        self.history.to_csv(path)

    # ------------------------------------------------------------------ lifetime
    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"GradientMonitor.{what}: the monitor was closed; create a new one")

    def _close_loggers(self) -> None:
        loggers, self._loggers = self._loggers, []
        for logger in loggers:
            logger.close()

    def close(self) -> None:
        """Complete a pending step, remove every hook from the network and close the
        loggers. The history, events and histograms stay readable."""
        if self._closed:
            return
        self._settle()
        for handle in self._handles:
            if isinstance(handle, Module):
                handle.__dict__.pop("_monitor_tap", None)
            else:
                handle.remove()
        self._handles = []
        self._clear_captures()
        self._closed = True
        self._close_loggers()

    def __enter__(self) -> "GradientMonitor":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        return (f"GradientMonitor({len(self.layers)} layers, every={self.every}, steps={self._step}, "
                f"events={len(self.events)}{', closed' if self._closed else ''})")


# ---------------------------------------------------------------------- helpers
def _flag(op: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {type(value).__name__} ({value!r})")
    return bool(value)


def _interval(op: str, value) -> Tuple[float, float]:
    try:
        low, high = value
    except (TypeError, ValueError):
        raise TypeError(f"{op}: update_ratio must be a pair (low, high), got {value!r}") from None
    low = _validate.nonnegative(op, "update_ratio[0]", low)
    high = _validate.real(op, "update_ratio[1]", high, finite=False)
    if not low < high:
        raise ValueError(f"{op}: update_ratio must be (low, high) with low < high, got ({low}, {high})")
    return low, high


def _loss_value(loss) -> float:
    if loss is None:
        return math.nan
    if isinstance(loss, Tensor):
        if loss.size != 1:
            raise ValueError(f"GradientMonitor.record: loss must be a scalar, got a Tensor of shape {loss.shape}")
        return float(loss.data.reshape(-1)[0])
    if isinstance(loss, (numbers.Real, np.floating, np.integer)) and not isinstance(loss, (bool, np.bool_)):
        return float(loss)
    raise TypeError(f"GradientMonitor.record: loss must be a 0-d Tensor, a number or None, got {type(loss).__name__}")


__all__ = ["GradientMonitor", "LayerInfo"]
