"""GradientMonitor: every layer's gradients, weights, updates and activations while training.

Per recorded step the monitor reads

- the flat gradient buffer of the network (one ``_C.grad_stats_flat`` call per buffer):
  per parameter the gradient L2 norm, max |g| and non-finite count, per layer the norm
  over all its parameters, and the global norm;
- the flat parameter buffer the same way: the weight norms (the weights this step's
  forward used) and their non-finite counts;
- for each monitored layer the gradient w.r.t. its output before the activation (dz) and
  its output (activations), captured during forward / backward: a Dense layer through the
  internal tap of ``F.linear`` (which sees the pre-activation also when the activation is
  fused into the dense kernel), other layers through a forward hook and a hook on their
  output tensor; statistics by ``_C.grad_stats`` / ``_C.activation_stats``;
- after the optimizer step, the update norms (``_C.diff_sumsq_flat`` against a copy of the
  parameter buffer taken before the step).

When the step's optimizer (fit's, or ``optimizer=``) manages every parameter of the
network's buffers, the monitor turns on its ``record_stats`` instead (DESIGN.md decision
7): the fused step reports each gradient's sum of squares, max |g| and non-finite count,
the parameters' sums of squares before the update (``_record_before``) and, with
``updates``, after it and the update's, from the passes it makes anyway. No copy of the
parameters, no difference pass, no separate gradient or weight pass: the step's rows are
written once its optimizer step is done. The weights measured are those the update started
from, the ones the forward used (a write through ``.data`` between ``record`` and the
optimizer step is seen; a tensor whose weights held NaN / Inf is measured again after the
step, which leaves a non-finite value non-finite; a tensor the step did not update is
measured as it is). The numbers are those of the path above (the sums are accumulated in
double, so in float32 they agree to ~1e-7).

On a compiled step (``gradcore.compile_step(net, monitor=mon)``, or ``fit`` on its compiled
path with the monitor as a callback) the taps leave the layers: the C++ plan computes the
same statistics inside the step while each buffer is hot (``_C.activation_stats`` of each
monitored layer's output after its forward, the size of its dz (``_C.magnitude_stats``:
``grad_stats``' norm, max and non-finite count) after its backward, a standalone ReLU
layer's and its source's rows inside the ReLU's own passes, the gradient and update sums
from the optimizer's passes, the weights of a step no update measured as the forward
reads them) on the steps the monitor records, and hands them over as arrays
(``_arrays_begin`` / ``_record_arrays``); the rows and events are made by the same code
as the taps'. Once a step went through the fast path (or a monitor of a network of the
same structure made its layout before: ``_SHARED``), the next steps with the same
captures are recorded by one C++ call
(``_record_compiled``: ``_C.MonitorStep``, bound to the plan's arrays and the history's
columns) that writes the rows and, when no event condition can start, ends the step; the
growth windows (``_Recent``) live in one array that this call extends. With ``activations=False`` the plan
computes no statistics of the outputs (a pass over every layer's output, the largest part
of the monitor's cost), so a NaN / Inf that arises in a forward output is located at the
first backward tensor holding it (the layer's dz) instead of at the output. The weights' norms then come from
the previous step's update pass when it was recorded (a write through ``.data`` between
two steps is seen one step later), else from one pass before the step.

Rows go to a MonitorHistory; the conditions of ``_events`` are checked as rows arrive.
"""
from __future__ import annotations

import collections
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
from ..optim.optimizer import WITHOUT_AFTER
from ..tensor import Tensor, is_grad_enabled
from ..training import _current_lr
from ._events import Event, NonFiniteError, _fmt
from ._history import MonitorHistory

# Leaf modules that only move or drop values: nothing of their own to watch.
_UNMONITORED = (Dropout, Flatten, Identity)
_NONFINITE_POLICIES = ("warn", "stop", "raise")
_HIST_BINS = 30
# Parameter values from which the optimizer's step statistics replace the monitor's own
# passes. They save three passes over the parameters but cost a little Python per step:
# benchmarks/monitor.py, documents' sigmoid network (5K values) ~13 us slower per step with
# them, [784, 512, 256, 10] + BatchNorm (537K) ~330 us faster; a pass over 64K float32
# values costs ~8 us.
_STATS_MIN_VALUES = 1 << 16
# segments -> (k, 4) weight statistics [0, 0, NaN, 0] that _weights_before copies and fills
_W_BEFORE: Dict[int, np.ndarray] = {}
_GROWTH_WINDOW = 10   # recorded steps a layer's gradient norm is compared against
_GROWTH_MIN = 5       # fewer earlier steps than this: no growth check yet (the first steps move fast)


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


def _as_is(key, event: Event) -> Event:
    """The builder of ``_onset`` for an Event made already (the non-finite one)."""
    return event


class _LayerTap:
    """One monitored layer's channel into its monitor: Dense calls ``forward`` / ``output``
    / ``backward`` (F.linear's tap); other layers reach ``forward`` through a forward hook
    and ``backward`` through a hook on their output tensor."""

    __slots__ = ("monitor", "index", "module", "rowwise")

    def __init__(self, monitor: "GradientMonitor", index: int, module: Module):
        self.monitor, self.index, self.module = monitor, index, module
        # a Dense with softmax / log_softmax: its output arrives later, through output()
        self.rowwise = isinstance(module, Dense) and module.activation in _act.ROWWISE_ACTIVATIONS

    def forward(self, z, y) -> bool:
        monitor = self.monitor
        if (monitor._pending is None and not monitor._armed) or monitor._arrays_mode:
            return False  # an unrecorded step, or a compiled step's statistics are recorded: nothing to do
        return monitor._on_forward(self.index, self.module, z, y, not self.rowwise)

    def output(self, y) -> None:
        self.monitor._on_output(self.index, y)

    def backward(self, dz) -> None:
        self.monitor._on_backward(self.index, dz)

    def __reduce__(self):
        return (type(None), ())  # a copy of the network (deep copy, pickle) is not monitored


class _TapGroup:
    """The taps of several monitors watching one Dense layer (its one ``_monitor_tap`` slot)."""

    __slots__ = ("taps",)

    def __init__(self, taps: List[_LayerTap]):
        self.taps = taps

    def forward(self, z, y) -> None:
        for tap in self.taps:
            tap.forward(z, y)

    def output(self, y) -> None:
        for tap in self.taps:
            tap.output(y)

    def backward(self, dz) -> None:
        for tap in self.taps:
            tap.backward(dz)

    def __reduce__(self):
        return (type(None), ())  # (as _LayerTap)


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

    def __reduce__(self):
        return (type(None), ())  # a copy of the network is not monitored (_ModuleHooks leaves it out)


# The one-call record bound to a layout (GradientMonitor._bind_lean): the C++ context, the
# batch size and fast-path layout it was bound for, its two next-step weight buffers
# (w_next[0] / w_next[1]) and the history rows a step writes.
_Lean = collections.namedtuple("_Lean", "ctx batch layout w_next rows")

# What the fast path derives from a network's structure alone (which layers are captured,
# the rows' codes, the spec of _C.monitor_rows), shared by the monitors of networks of one
# structure: a fresh monitor per fit or per compile_step would otherwise derive it again
# (~0.4 ms on the first recorded step of [784, 512, 256, 10] + BatchNorm). Keyed by the
# monitor's _signature (everything the layouts are made of: layers, modes, parameters,
# history codes, flags), then by the captures; the arrays in it are read-only.
_SHARED: "collections.OrderedDict[tuple, dict]" = collections.OrderedDict()
_SHARED_MAX = 8  # signatures kept (the least recently used goes)


def _shared(signature: tuple) -> dict:
    entry = _SHARED.get(signature)
    if entry is None:
        entry = _SHARED[signature] = {}
        if len(_SHARED) > _SHARED_MAX:
            _SHARED.popitem(last=False)
    else:
        _SHARED.move_to_end(signature)
    return entry


class _Recent:
    """A layer's window of its last ``_GROWTH_WINDOW`` finite gradient norms (a deque with
    ``maxlen``: ``len``, iteration oldest first, ``append``), kept in the monitor's arrays
    so that the fast path's C++ (``_C.monitor_recent_quiet``, ``_C.MonitorStep``) reads
    and extends the same windows."""

    __slots__ = ("buf", "n", "head", "i")

    def __init__(self, buf: np.ndarray, n: np.ndarray, head: np.ndarray, i: int):
        self.buf, self.n, self.head, self.i = buf, n, head, i

    def __len__(self) -> int:
        return int(self.n[self.i])

    def __iter__(self):
        i = self.i
        row = self.buf[i].tolist()
        count = int(self.n[i])
        if count < len(row):
            return iter(row[:count])
        h = int(self.head[i])
        return iter(row[h:] + row[:h])

    def append(self, v: float) -> None:
        i = self.i
        h = int(self.head[i])
        self.buf[i, h] = v
        self.head[i] = (h + 1) % self.buf.shape[1]
        if self.n[i] < self.buf.shape[1]:
            self.n[i] += 1


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
    """A recorded step waiting for its optimizer step (its update sizes)."""

    __slots__ = ("step", "lr", "grad_norm", "norms", "row_start", "deferred")

    def __init__(self, step: int, lr: float, grad_norm: float, norms: np.ndarray, row_start: int,
                 deferred: Optional[tuple] = None):
        self.step, self.lr, self.grad_norm, self.norms, self.row_start = step, lr, grad_norm, norms, row_start
        # with the optimizer's statistics: (loss, which segments have a gradient, the
        # optimizer's step calls, the weights' statistics when the step will not give them)
        # at record time; the step's rows are written when its optimizer step is done
        self.deferred = deferred


class _Captures:
    """What a recorded step measured of its layers' outputs and dz, whichever way it was
    measured (taps during the Python forward / backward, or statistics a compiled step
    computed): the layers whose dz / output statistics are in ``_dz_S`` / ``_act_S``
    (``act`` only with ``activations``), the order outputs / dz arose in, the entries of
    each output whose saturation was counted (layers in mode "saturated" with a known
    pre-activation) and ``out_nonfinite(i)``, the non-finite count of layer i's output."""

    __slots__ = ("dz", "act", "fwd_order", "bwd_order", "sat_size", "out_nonfinite")

    def __init__(self, dz, act, fwd_order, bwd_order, sat_size, out_nonfinite):
        self.dz, self.act, self.fwd_order, self.bwd_order = dz, act, fwd_order, bwd_order
        self.sat_size, self.out_nonfinite = sat_size, out_nonfinite


# _C.monitor_rows' return bits besides "rows written" (csrc/stats.h MonitorRowsCode)
_ROWS_UPDATE_MOVED = 2  # an update norm is not 0
_ROWS_WEIGHTS_NEXT = 4  # w_next received the next step's weight statistics
_ROWS_NEXT_SECOND = 8   # _C.MonitorStep: w_next was its second buffer
_ROWS_QUIET = 16        # _C.MonitorStep: no condition can start; the norms joined their windows


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
    ``<p>.grad_max``, ``<p>.grad_nonfinite``, ``<p>.norm`` (of the weights the step's
    forward used) and, with ``updates``, ``<p>.update_norm`` (of the change the optimizer
    step made) and ``<p>.update_ratio`` (update_norm / norm) for each
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
    condition: a layer's gradient norm above ``exploding``, or above ``growth`` times its
    median over the last recorded steps (from the sixth recorded step, and only a norm above
    ``vanishing``: growth out of the vanishing range is not an explosion); a weight-gradient norm below ``vanishing``; first / last weight-gradient norm
    below ``flow_ratio``; ``dead_frac`` above ``dead``; ``saturated_frac`` above
    ``saturated``; a weight's update ratio outside ``update_ratio``; NaN / Inf, located at
    the first layer and tensor where it appeared (``on_nonfinite``: "warn", "stop" sets
    ``net.stop_training``, "raise" raises NonFiniteError).

    ``histograms=True`` keeps 30-bin histograms of each layer's output, weight and weight
    gradient per recorded step in ``mon.histograms``. ``loggers``: objects with
    ``write_step(monitor, step, rows)`` and ``close()``, called after each recorded step.
    """

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
        self._loggers_closed_by_fit = False  # a second fit would record without logging: warn
        self._no_loss_steps: set = set()     # steps recorded with record() and no loss

        self.net = net
        self.optimizer = optimizer
        self.layers: List[LayerInfo] = []
        self._modules: List[Module] = []
        self._collect_layers(op)
        self._names = [info.name for info in self.layers]
        self.history = MonitorHistory([info.name for info in self.layers])
        self.history._before_read = self._settle
        self._events: List[Event] = []
        self.histograms: Dict[str, list] = {info.name: [] for info in self.layers} if self.histograms_enabled else {}

        self._step = 0               # index of the optimizer step in progress
        self._force = False          # record every step (a non-finite norm was seen)
        self._armed = True           # the step in progress is recorded (step 0 is)
        self._pending: Optional[_Pending] = None
        self._closed = False
        self._active: Dict[str, set] = {}  # kind -> keys true at the last recorded step (onset-only events)
        # per layer: its finite gradient norms of the last recorded steps (the growth check)
        # (a window per layer in one array: the compiled steps' fast path updates it in C++)
        L = len(self.layers)
        self._recent_buf = np.zeros((L, _GROWTH_WINDOW))
        self._recent_n = np.zeros(L, np.int64)
        self._recent_head = np.zeros(L, np.int64)
        self._recent = [_Recent(self._recent_buf, self._recent_n, self._recent_head, i) for i in range(L)]
        self._lean = None  # the bound fast path of a compiled step (_record_compiled)
        self._fast: Dict[int, tuple] = {}  # id of a _Captures -> its fast-path layout (_record_fast)
        self._act_S = np.zeros((len(self.layers), 8))  # per layer: _C.activation_stats of its output
        self._dz_S = np.zeros((len(self.layers), 6))   # per layer: _C.grad_stats of its dz
        self._clear_captures()
        self._codes()
        self._map_parameters()
        self._handles: list = []  # per monitored layer: its forward hook's handle, or its Dense tap
        self._stats_opt = None       # the optimizer whose step statistics replace the monitor's passes
        self._stats_mode = True if self.updates else "grad"  # what the monitor needs of them
        self._stats_restore = False  # the optimizer's record_stats before the monitor set it
        self._stats_turned_on = False
        self._before_restore = None  # the optimizer's _record_before before the monitor set it
        # statistics computed by a compiled step (_use_arrays): the taps and the optimizer's
        # statistics are off; _w_cache: (step, sums of squares of the weights) that the
        # update of the step before `step` left, _w_before: the weights' statistics taken
        # before the step in progress
        self._arrays_mode = False
        self._arrays_users = 0  # compiled steps that record through the arrays (_use_arrays)
        self._array_caps: Dict[tuple, _Captures] = {}  # which rows are measured, batch -> their captures
        self._w_cache: Optional[tuple] = None
        self._w_before: Optional[np.ndarray] = None
        self._w_step = -1  # the step _arrays_begin prepared
        self._bind_optimizer(optimizer)
        self._install()

    def __getstate__(self):
        # copy.deepcopy / pickle: fit's weak references stay behind (Callback), so do the
        # one-call record's C++ binding (it holds this monitor's arrays; a copy binds its own
        # at its next fast-path step), the per-batch captures (closures; made again) and the
        # fast path's layouts (keyed by the id() of the original's captures: a copy's new
        # captures could reuse such an id, and took another's layout; made again on use)
        state = super().__getstate__()
        state["_lean"] = None
        state["_array_caps"] = {}
        state["_fast"] = {}
        return state

    def __setstate__(self, state):
        """A copy watches its own (copied) network as a new monitor would: the taps and
        hooks stayed behind with the original network (module hooks are not copied), so an
        open monitor installs them again on the copy's layers; no compiled step holds the
        copy, and it uses the copied optimizer it was bound to."""
        self.__dict__.update(state)
        self._arrays_mode, self._arrays_users, self._handles = False, 0, []
        self._w_cache = self._w_before = None
        self._w_step = -1
        if self._stats_opt is not None:
            self.optimizer = self._stats_opt
        if not self._closed:
            self._clear_captures()
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
        self._owns_all = len(net_rows) == base  # the buffers hold this network's parameters only
        h = self.history
        rows = np.array([p.row for p in self._params], dtype=np.intp)
        layer = np.array([p.layer for p in self._params], dtype=np.intp)
        self._p_rows = rows
        self._p_lc = self._lcode[layer] if len(layer) else np.empty(0, np.int32)
        self._p_lc3 = np.repeat(self._p_lc, 3)
        self._p_mc3 = np.array([h.metric_code(f"{p.name}.{m}") for p in self._params
                                for m in ("grad_norm", "grad_max", "grad_nonfinite")], dtype=np.int32)
        self._p_mc_norm = np.array([h.metric_code(f"{p.name}.norm") for p in self._params], dtype=np.int32)
        if self.updates:
            self._p_mc_update = np.array([h.metric_code(f"{p.name}.update_norm") for p in self._params], np.int32)
            self._p_mc_ratio = np.array([h.metric_code(f"{p.name}.update_ratio") for p in self._params], np.int32)
            self._p_lc_upd = np.concatenate([self._p_lc, self._p_lc])
            self._p_mc_upd = np.concatenate([self._p_mc_update, self._p_mc_ratio])
        self._p_layers = layer.tolist()
        self._kernels = [k for k, p in enumerate(self._params) if p.kernel]  # weight matrices, in forward order
        self._p_identity = rows.tolist() == list(range(base))  # statistics rows are the parameters, in order
        self._all_have = [True] * base
        self._grad_layers = np.unique(layer)  # layers with parameters: they get a grad_norm row
        self._paramless = np.setdiff1d(np.arange(len(self.layers)), self._grad_layers)
        # (layers, params) 0/1: a layer's summed squares of its parameters' gradients in one product
        self._p_to_layer = np.zeros((len(self.layers), len(self._params)))
        self._p_to_layer[layer, np.arange(len(self._params))] = 1.0
        self._layouts: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}  # which rows a step has -> their codes
        self._fast = {}  # the fast path's layouts hold the rows' codes and the parameters' layers
        self._lean = None  # (bound to a layout)
        self._fast_mask = None
        self._fast_limits = ((), None)  # (thresholds, their float64 array) for _C.monitor_rows
        self._fast_code = 0  # what the last _C.monitor_rows call of the fast path returned
        self._tap_caps: Dict[tuple, _Captures] = {}  # the taps' captures for the fast path (_tap_captures_fast)
        self._snapshots: List[np.ndarray] = []  # copies of the parameters (updates without the optimizer's stats)
        h = self.history
        self._signature = (tuple(self._names), tuple(self._mode), tuple((p.row, p.layer, p.name, p.kernel)
                                                                       for p in self._params),
                           len(self._row_tensors), self._owns_all, self._p_identity, self.activations, self.updates,
                           tuple(h._layer_names), tuple(h._metric_names))
        if getattr(self, "_stats_opt", None) is not None:
            self._bind_optimizer(self._stats_opt)  # the buffers changed: map the optimizer's rows again

    def _follow_parameters(self) -> None:
        """Map the parameters again when the network re-homed them (astype, a new layer)."""
        for flat in self._flats:  # (a loop, not any(generator): once per recorded step)
            if flat.params[0]._flat is not flat:
                self._map_parameters()
                return

    def _stats_optimizer(self, optimizer):
        """``optimizer`` when its step statistics can replace the monitor's passes: it has
        ``record_stats``, manages every tensor of the network's buffers and they hold at
        least ``_STATS_MIN_VALUES`` values; else None."""
        if optimizer is None or self.histograms_enabled or not hasattr(optimizer, "record_stats"):
            return None
        if sum(flat.data.size for flat in self._flats) < _STATS_MIN_VALUES:
            return None
        rows = {id(t): r for r, t in enumerate(optimizer.stats_params)}
        if not self._row_tensors or any(id(t) not in rows for t in self._row_tensors):
            return None
        return optimizer

    def _bind_optimizer(self, optimizer) -> None:
        """Use ``optimizer``'s step statistics when it qualifies (``_stats_optimizer``):
        turn its ``record_stats`` on (True, or "grad" without updates; a larger setting of
        the user's is kept) and map its rows to the buffers' segments."""
        opt = None if self._arrays_mode else self._stats_optimizer(optimizer)
        if opt is not self._stats_opt:
            self._release_optimizer()
        self._stats_opt = opt
        if opt is None:
            return
        rows = {id(t): r for r, t in enumerate(opt.stats_params)}
        self._opt_rows = np.array([rows[id(t)] for t in self._row_tensors], dtype=np.intp)
        self._opt_identity = self._opt_rows.tolist() == list(range(len(rows)))  # last_stats rows are the segments
        if opt.record_stats is not True and opt.record_stats != self._stats_mode:
            self._stats_restore = opt.record_stats
            opt.record_stats = self._stats_mode
            self._stats_turned_on = True
        if self._before_restore is None:
            self._before_restore = opt._record_before
            # the weights' sums of squares before the update; param_sumsq after is not used here,
            # so not measured either unless the user had asked for every column
            opt._record_before = True if opt.record_stats is True and not self._stats_turned_on else WITHOUT_AFTER

    def _release_optimizer(self) -> None:
        if self._stats_opt is not None and self._stats_turned_on:
            self._stats_opt.record_stats = self._stats_restore
        if self._stats_opt is not None and self._before_restore is not None:
            self._stats_opt._record_before = self._before_restore
        self._stats_opt, self._stats_turned_on, self._before_restore = None, False, None

    def _install(self) -> None:
        for i, module in enumerate(self._modules):
            tap = _LayerTap(self, i, module)
            if isinstance(module, Dense) and type(module).forward is Dense.forward:
                current = module.__dict__.get("_monitor_tap")  # another monitor's: share the slot
                if isinstance(current, _TapGroup):
                    current.taps.append(tap)
                else:
                    object.__setattr__(module, "_monitor_tap", tap if current is None else _TapGroup([current, tap]))
                self._handles.append(tap)
            else:
                # an activation layer's input is its pre-activation (a Dense's own forward is not tapped here)
                input_is_z = self.layers[i].activation is not None and not isinstance(module, Dense)
                hook = _ForwardHook(tap, input_is_z)
                self._handles.append(module.register_forward_hook(hook))

    def _clear_captures(self) -> None:
        """Forget the arrays and order of the step (their statistics rows are overwritten
        when the layer is captured again)."""
        n = len(self.layers)
        self._out: List[Optional[np.ndarray]] = [None] * n
        self._z: List[Optional[np.ndarray]] = [None] * n
        self._dz: List[Optional[np.ndarray]] = [None] * n
        self._fwd_order: List[int] = []
        self._bwd_order: List[int] = []

    # ------------------------------------------------------------------ capture (hot path)
    # The statistics of an output and of a dz are taken as soon as the array is made, while it
    # is still in cache (at record time it would be read back from memory); the arrays are kept
    # until the step is recorded, for locating a NaN and for histograms.
    def _on_forward(self, i: int, module: Module, z, y, measure: bool = True) -> bool:
        if not (module.training and is_grad_enabled()):
            return False
        if self._pending is not None:  # a training forward after a recorded step: its optimizer step is done
            self._finish()
        if not self._armed:
            return False
        if self._out[i] is None:  # first call of the step (a repeated forward keeps the order)
            self._fwd_order.append(i)
        self._out[i] = y
        self._z[i] = z
        if measure and self.activations:
            self._act_S[i] = self._act_stats(i)
        return True

    def _on_output(self, i: int, y) -> None:
        if self._armed and self._out[i] is not None:
            self._out[i] = y
            if self.activations:
                self._act_S[i] = self._act_stats(i)

    def _on_backward(self, i: int, dz) -> None:
        if self._armed and self._out[i] is not None:
            if self._dz[i] is None:
                self._bwd_order.append(i)
            self._dz[i] = dz
            self._dz_S[i] = _C.grad_stats([np.ascontiguousarray(dz)])[0]

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
        if self._arrays_mode:
            raise RuntimeError("GradientMonitor.record: the monitor records a compiled step's statistics (it was "
                               "given to gradcore.compile_step); record() is for a hand-written eager loop")
        value = _loss_value(loss)
        if self._pending is not None:
            self._finish()
        if loss is None:  # recorded as nan, but not a non-finite loss
            self._no_loss_steps.add(self._step)
        self._record(value)

    def _record(self, loss: float) -> None:
        step = self._step
        self._step += 1
        if self._stats_turned_on:
            # only a recorded step needs its optimizer's statistics
            self._stats_opt.record_stats = self._stats_mode if self._armed else self._stats_restore
        if not self._armed:
            self._armed = self._force or self._step % self.every == 0
            if not self._loss_ok(step, loss) and not self._in_fit:  # fit: checked with the step's grad_norm after it
                self._global_nonfinite(step, "loss", loss)
            self._no_loss_steps.discard(step)
            return
        if self._stats_opt is not None:
            self._follow_parameters()
        opt = self._stats_opt
        if opt is not None and (not opt._record_before or
                                (opt.record_stats is not True and opt.record_stats != self._stats_mode)):
            # another monitor of this optimizer closed and put its settings back: take them
            # again (this monitor's close puts back what it finds now)
            if not opt._record_before:
                self._before_restore = None
            self._bind_optimizer(opt)
            opt = self._stats_opt  # None when it no longer qualifies: the taps' passes record the step
        if opt is not None:
            # the gradient statistics come with the optimizer step: keep the captures until then;
            # the weights too (the column before the update, which _bind_optimizer turned on)
            lr = _current_lr(self.optimizer) if self.optimizer is not None and not self._in_fit else math.nan
            has = [t.grad is not None for t in self._row_tensors]  # (fit clears the gradients before on_after_step)
            self._pending = _Pending(step, lr, math.nan, None, -1, (loss, has, opt._step_calls))
            self._armed = self._force or self._step % self.every == 0
            return
        try:
            self._record_step(step, loss)
        finally:
            self._clear_captures()
            self._armed = self._force or self._step % self.every == 0

    # ------------------------------------------------------------------ statistics computed elsewhere
    # A compiled step (gradcore.compile_step) computes the statistics the taps would capture
    # inside its C++ plan, while each buffer is hot, and hands them over as arrays; the rows
    # and events are then made by the same _record_step / _finish_rows as the taps'.
    def _use_arrays(self, on: bool = True) -> None:
        """Record from statistics computed elsewhere (``_arrays_begin`` / ``_record_arrays``)
        instead of the taps (on: the taps and hooks leave the network, so a compiled step
        can lower it), or from the taps again (off: they are installed again). Counted:
        each compiled step that takes the monitor turns it on once and off once; the taps
        come back when the last one lets go."""
        if on:
            why = self._arrays_unsupported()
            if why:
                raise ValueError(f"GradientMonitor: {why}")
            self._arrays_users += 1
        elif self._arrays_users > 0:
            self._arrays_users -= 1
        on = self._arrays_users > 0
        if on == self._arrays_mode or self._closed:
            return
        self._settle()
        self._clear_captures()
        self._w_cache = self._w_before = None
        self._w_step = -1
        self._lean = None  # (bound to _opt_S)
        if on:
            self._release_optimizer()
            self._uninstall()
            self._arrays_mode = True
            # the optimizer's per-tensor statistics of a recorded step (a plan writes them), and
            # the weights' statistics a plan measures in its forward (_arrays_begin(True))
            self._opt_S = np.full((len(self._row_tensors), 5), np.nan)
            self._w_plan = np.full((len(self._row_tensors), 6), np.nan)
        else:
            self._arrays_mode = False
            self._install()
            self._bind_optimizer(self.optimizer)

    def _arrays_unsupported(self) -> str:
        """Why the monitor cannot record from a compiled step's statistics ('' when it can)."""
        if self._closed:
            return "the monitor was closed; create a new one"
        if self.histograms_enabled:
            return ("histograms=True needs every layer's arrays in Python; a compiled step computes statistics "
                    "only (train eagerly, e.g. fit(compiled=False))")
        if len(self._flats) != 1 or not self._owns_all:
            return "the network's parameters are not one flat buffer of its own"
        return ""

    def _arrays_begin(self, plan_weights: bool = False):
        """Before a step whose statistics are computed elsewhere: whether it is recorded (its
        caller then computes the arrays ``_record_arrays`` takes). The weights' statistics
        (of the weights this step's forward uses) are taken now, unless the update of the
        previous step measured them (``param_sumsq`` of its statistics; a write through
        ``.data`` in between is not seen then). A closed monitor records nothing.

        ``plan_weights``: the caller's plan can measure the weights in its forward (into
        ``_w_plan``, set_stats' param_out): then 2 instead of a pass here (the weights are
        read where the forward streams them through the cache)."""
        if self._closed:
            return False
        if self._pending is not None:  # (_settle)
            self._finish()
        if not self._armed:
            self._w_before = None
            return False
        if self._w_step == self._step:  # a later batch of the same accumulation group: the weights measured
            W = self._w_before
            if W is not None and W is self._w_plan and math.isnan(W[0, 3]):
                return 2  # (the run that was to measure them did not get to its forward)
            return True
        self._w_before = None
        self._follow_parameters()
        cache = self._w_cache
        self._w_step = self._step
        if cache is None or cache[0] != self._step:
            if plan_weights:
                self._w_before = self._w_plan
                return 2
            self._w_before = self._segment_stats("data")
        return True

    def _record_arrays(self, loss: float, act_S: Optional[np.ndarray], dz_S: Optional[np.ndarray],
                       opt_stats: Optional[np.ndarray], lr: float, grad_norm: float, clip_coef: float,
                       skipped: bool, batch: int) -> None:
        """Record step ``self.step`` (then count it) from statistics computed elsewhere, after
        its optimizer step: the same rows and events as the taps give.

        ``act_S`` (layers, 8): per monitored layer ``_C.activation_stats`` of its output (with
        its pre-activation in mode "dead" / "saturated", ``_mode``), a NaN row where the
        output was not seen; ``dz_S`` (layers, 6): ``_C.grad_stats`` of its dz, NaN rows the
        same; ``opt_stats`` (segments, 5): per segment of the network's flat buffers (in
        order) the optimizer's statistics (``optim.STATS_COLUMNS``: gradient sum of squares,
        max |g|, non-finite count, weights' sum of squares after the update, update's sum of
        squares; the last two may be NaN without ``updates``); ``lr``, ``grad_norm``
        (before clipping), ``clip_coef``, ``skipped`` of the step; ``batch``: its rows.
        When ``_arrays_begin`` said the step is not recorded, pass None for the arrays (the
        step is counted and a non-finite grad_norm / loss reported)."""
        if self._closed:
            return
        step = self._step
        self._step += 1
        values = [grad_norm, clip_coef, skipped, lr]
        if act_S is None:
            self._armed = self._force or self._step % self.every == 0
            for key, value in (("grad_norm", grad_norm), ("loss", loss)):  # as fit's on_after_step
                if not math.isfinite(value):
                    self._global_nonfinite(step, key, value)
                    break
            return
        k = len(self._row_tensors)
        R = np.asarray(opt_stats, dtype=np.float64)
        if R.shape != (k, 5):
            raise ValueError(f"GradientMonitor: opt_stats must have shape ({k}, 5) (one row per parameter tensor of "
                             f"the network's buffers), got {R.shape}")
        if self.updates and np.isnan(np.add.reduce(R[:, 4])):  # (ndarray.sum: the same, through a Python wrapper)
            raise ValueError("GradientMonitor: opt_stats has no update sums of squares (column 4) but the monitor "
                             "records updates")
        cap = self._array_captures(act_S, dz_S, batch)
        if self._w_before is not None:  # measured before the step (a skipped step wrote nothing since)
            W = self._w_before
        elif skipped:
            W = self._segment_stats("data")  # nothing was written: the weights the forward used
        elif self._w_cache is not None and self._w_cache[0] == step:
            W = self._w_cache[1]
        else:
            raise RuntimeError("GradientMonitor._record_arrays: the step's weights were not measured (call "
                               "_arrays_begin() before the step)")
        fast = False
        w_next = np.empty((k, 4))  # the next step's weights: measured by this update, unless it is not recorded
        try:
            fast = self._record_fast(step, loss, R, W, cap, values, w_next)
            if not fast:
                self._record_step(step, loss, _sumsq_stats(R[:, :3]), W, lr, self._all_have, cap)
        finally:
            self._w_before = None
            self._armed = self._force or self._step % self.every == 0
        if fast:  # _C.monitor_rows wrote w_next as below (kRowsWeightsNext) when the sum is finite
            self._w_cache = (self._step, w_next) if self._fast_code & _ROWS_WEIGHTS_NEXT else None
            if act_S is self._act_S and dz_S is self._dz_S and opt_stats is self._opt_S:
                self._bind_lean(cap, batch)
        else:
            p, self._pending = self._pending, None
            after = R[:, 3]
            if math.isfinite(np.add.reduce(after)):
                w_next[:, 0] = after
                w_next[:, 1] = np.sqrt(after)
                w_next[:, 2] = math.nan  # (max |w| is not measured by the update)
                w_next[:, 3] = 0.0
                self._w_cache = (self._step, w_next)
            else:
                self._w_cache = None
        if not fast:
            self._finish_rows(p, values, R[:, 4])
            return
        self._fast_rows_done(step, math.isfinite(grad_norm))

    def _bind_lean(self, cap: _Captures, batch: int) -> None:
        """Bind the fast path of the captures ``cap`` (a batch of ``batch`` rows) to the plan's
        arrays (``_act_S`` / ``_dz_S`` / ``_opt_S``) in one ``_C.MonitorStep``, which then
        records the next steps with these captures (``_record_compiled``)."""
        layout = self._fast.get(id(cap))
        if layout is None or (self._lean is not None and self._lean.batch == batch and self._lean.layout is layout):
            return
        lc, mc, graded, dead, sat, spec, sat_size, vals, mask, glob, offs, graded_arr = layout
        k = len(self._row_tensors)
        w = (np.empty((k, 4)), np.empty((k, 4)))
        ctx = _C.MonitorStep(self._opt_S, self._dz_S, self._act_S, spec, sat_size, vals, mask,
                             np.isnan(self._act_S[:, 7]).astype(np.uint8), np.isnan(self._dz_S[:, 3]).astype(np.uint8),
                             lc, mc, w[0], w[1], self._recent_buf, self._recent_n, self._recent_head, _GROWTH_MIN,
                             offs[0], self.updates)
        self._lean = _Lean(ctx, batch, layout, w, ctx.rows)
        self._lean_limits = None  # (set before its first step)
        self._lean_hist = None

    def _record_compiled(self, loss: float, lr: float, grad_norm: float, clip_coef: float, skipped: bool,
                         batch: int) -> None:
        """Record a compiled step whose statistics the plan wrote into ``_act_S`` / ``_dz_S`` /
        ``_opt_S`` (after ``_arrays_begin`` said it is recorded): ``_record_arrays`` with these
        arrays, in one C++ call (``_C.MonitorStep``: the checks, the rows straight into the
        history, the conditions, the quiet check) when the step has the captures of the last
        fast-path step and its weights were measured; any other step (a non-finite value,
        other captures, a skipped step) goes through ``_record_arrays``. The same rows,
        events and state either way."""
        lean = self._lean
        if (lean is None or lean.batch != batch) and not skipped and not self._closed:
            lean = self._lean_for(batch)
        if lean is not None and lean.batch == batch and not skipped and not self._closed:
            step = self._step
            W = self._w_before
            if W is None:
                cache = self._w_cache
                W = cache[1] if cache is not None and cache[0] == step else None
            if W is not None and W.flags.c_contiguous:
                ctx, rows = lean.ctx, lean.rows
                now = (self.exploding, self.vanishing, self.flow_ratio, self.dead, self.saturated,
                       *self.update_ratio, self.growth)
                if self._lean_limits != now:  # the thresholds are attributes: a change is seen here
                    ctx.set_limits(now)
                    self._lean_limits = now
                h = self.history
                n = h._n
                if n + rows > len(h._val):
                    h._grow(n + rows)
                if h._val is not self._lean_hist:
                    ctx.bind_history(h._step, h._lc, h._mc, h._val)
                    self._lean_hist = h._val
                code = ctx.run(W, loss, grad_norm, clip_coef, 0.0, lr, step, n, self._fast_mask)
                if code:
                    self._lean_rows(lean, code, step, n, rows, grad_norm)
                    return
        self._record_arrays(loss, self._act_S, self._dz_S, self._opt_S, lr, grad_norm, clip_coef, skipped, batch)

    def _lean_for(self, batch: int) -> Optional["_Lean"]:
        """The one-call record bound to the captures of the step the plan just measured (a
        batch of ``batch`` rows), from the layout a monitor of this structure made before
        (``_fast_layout``): a fresh monitor's first steps skip the general path's record.
        None when no such layout is known yet (the general path makes it)."""
        cap = self._array_captures(self._act_S, self._dz_S, batch)
        key = id(cap)
        if key not in self._fast:
            if ("layout", tuple(cap.dz), tuple(cap.act), tuple(cap.sat_size.items())) not in _shared(self._signature):
                return None
            self._fast[key] = self._fast_layout(cap, len(self._row_tensors))
        self._bind_lean(cap, batch)
        return self._lean

    def _lean_rows(self, lean: "_Lean", code: int, step: int, n: int, rows: int, grad_norm: float) -> None:
        """After ``_C.MonitorStep.run`` wrote step ``step``'s rows from history row ``n``: the
        rest of ``_record_arrays`` / ``_record_fast`` (the events unless the step is quiet)."""
        self._step = step + 1
        self.history._n = n + rows
        self._fast_code = code
        self._fast_row_start = n
        self._pending = None
        self._active["nonfinite"] = ()
        try:
            if code & _ROWS_QUIET:
                self._active["exploding_growth"] = []
            else:
                lc, mc, graded, dead, sat, spec, sat_size, vals, mask, glob, offs, graded_arr = lean.layout
                update_group = self.updates and (code & _ROWS_UPDATE_MOVED) != 0  # (not skipped)
                in_sync = update_group or not self.updates
                o_ln = offs[0]
                self._fast_events(step, graded, dead, sat, vals.tolist(), vals[o_ln:o_ln + len(graded)].tolist(),
                                  offs, len(self._row_tensors), update_group, (graded_arr, vals))
                self._fast_mask = lean.ctx.signature() if in_sync else None
        finally:
            self._w_before = None
            self._armed = self._force or self._step % self.every == 0
        w = lean.w_next
        self._w_cache = (self._step, w[1 if code & _ROWS_NEXT_SECOND else 0]) if code & _ROWS_WEIGHTS_NEXT else None
        if self._force or self._loggers:
            self._fast_rows_done(step, math.isfinite(grad_norm))

    def _fast_rows_done(self, step: int, finite_norm: bool) -> None:
        """After the fast path wrote a step's rows: a forced record is done once its norm is
        finite (as _finish_rows), and the loggers get the new rows."""
        if self._force and finite_norm:
            self._force = False
            self._armed = self._step % self.every == 0
        if self._loggers:
            rows = self.history.rows_since(self._fast_row_start)
            for logger in self._loggers:
                logger.write_step(self, step, rows)

    # The common recorded step of a compiled plan: nothing non-finite. One C++ call
    # (_C.monitor_rows) makes the rows _record_step and _finish_rows write, in their order,
    # and the step's event conditions (on these few numbers each NumPy call, run cold after
    # a large step, cost more than the work). Conditions equal to the previous recorded
    # step's: no event can start. Else an event group where no condition starts keeps its
    # state here, any other runs the general path's detector. Non-finite steps go the
    # general way.
    def _fast_layout(self, cap: _Captures, k: int) -> Optional[tuple]:
        """What the fast path needs for a step with captures ``cap`` (``k`` segments): the
        rows' layer / metric codes, the spec of ``_C.monitor_rows`` and its buffers, the
        dead / saturated layers; None when the general path must run (the parameter rows
        are not the segments in order)."""
        if not (self._p_identity and self._owns_all and len(self._params) == k):
            return None
        shared = _shared(self._signature)
        key = ("layout", tuple(cap.dz), tuple(cap.act), tuple(cap.sat_size.items()))
        fixed = shared.get(key)
        if fixed is None:
            fixed = shared[key] = self._fast_fixed(cap, k)
        lc, mc, graded, dead, sat, spec, sat_size, offs, graded_arr, mask_size = fixed
        return (lc, mc, graded, dead, sat, spec, sat_size, np.empty(len(lc)), np.empty(mask_size, np.uint8),
                np.empty(4), offs, graded_arr)

    def _fast_fixed(self, cap: _Captures, k: int) -> tuple:
        """The part of ``_fast_layout`` that depends on the structure and the captures only
        (shared; its arrays read-only)."""
        act = list(cap.act)
        dead = [i for i in act if self._mode[i] == "dead"]
        sat = [i for i in act if self._mode[i] == "saturated" and i in cap.sat_size]
        frac = {"dead": dict.fromkeys(dead), "saturated": dict.fromkeys(sat)}
        lc, mc = self._layout(None, self._grad_layers, cap.dz, cap.act, frac)
        lcs, mcs = [lc, np.zeros(4, np.int32)], [mc, self._mc_global[1:]]
        if self.updates:
            lcs.append(self._p_lc_upd)
            mcs.append(self._p_mc_upd)
        lc, mc = np.concatenate(lcs).astype(np.int32), np.concatenate(mcs).astype(np.int32)
        graded = self._grad_layers.tolist()
        dz, kern = list(cap.dz), self._kernels
        spec = np.array([k, len(self.layers), len(graded), len(dz), len(act), len(dead), len(sat), len(kern)] +
                        self._p_layers + graded + dz + act + dead + sat + kern, dtype=np.int64)
        sat_size = np.array([float(cap.sat_size[i]) for i in sat])
        ng, nk = len(graded), len(kern)
        # slices of the values: gradient norms (every third from 0), layer norms, weight
        # norms, fractions, glob, update, ratio
        o_ln = 3 * k
        o_w = o_ln + ng
        o_f = o_w + k + 3 * len(dz) + 5 * len(act)
        o_glob = o_f + len(dead) + len(sat) + 1
        o_u = o_glob + 4
        mask_size = ng + nk + 1 + len(dead) + len(sat) + 2 * nk
        graded_arr = np.array(graded, dtype=np.int64)
        for arr in (lc, mc, spec, sat_size, graded_arr):
            arr.flags.writeable = False
        return (lc, mc, tuple(graded), tuple(dead), tuple(sat), spec, sat_size, (o_ln, o_w, o_f, o_glob, o_u),
                graded_arr, mask_size)

    def _no_onset(self, kind: str, keys: list, active: Dict[str, list]) -> bool:
        """Whether condition ``kind`` starts for none of ``keys`` (the keys true now): each
        was true at the previous recorded step. The keys go to ``active`` (what ``_onset``
        would remember)."""
        active[kind] = keys
        if not keys:
            return True
        before = self._active.get(kind, ())
        return all(key in before for key in keys)

    def _record_fast(self, step: int, loss: float, R: np.ndarray, W: np.ndarray, cap: _Captures,
                     values: list, w_next: Optional[np.ndarray] = None) -> bool:
        """Write step ``step``'s rows and check its events when nothing in it is non-finite
        (see above); False (nothing changed) when the general path must run. ``w_next``
        ((k, 4) or None) receives the next step's weight statistics from ``R``'s column 3
        (``_fast_code`` & _ROWS_WEIGHTS_NEXT says it did: their sum is finite)."""
        if self.histograms_enabled or self._closed:
            return False
        key = id(cap)
        layout = self._fast.get(key)
        if layout is None:
            if key in self._fast:
                return False
            layout = self._fast[key] = self._fast_layout(cap, len(R))
            if layout is None:
                return False
        lc, mc, graded, dead, sat, spec, sat_size, vals, mask, glob, offs, graded_arr = layout
        if not (self._loss_ok(step, loss) and R.flags.c_contiguous and W.flags.c_contiguous):
            return False
        glob[:] = [math.nan if v is None else v for v in values]  # grad_norm, clip_coef, skipped, lr
        now = (self.exploding, self.vanishing, self.flow_ratio, self.dead, self.saturated) + tuple(self.update_ratio)
        if self._fast_limits[0] != now:  # the thresholds are attributes: a change is seen here
            self._fast_limits = (now, np.array(now))
        limits = self._fast_limits[1]
        code = _C.monitor_rows(R, W, self._dz_S, self._act_S, spec, sat_size, limits, loss, glob, self.updates,
                               vals, mask, w_next)
        if not code:
            return False  # a non-finite value: located by the general path
        self._fast_code = code
        self._fast_row_start = self.history._n
        self.history.append(step, lc, mc, vals)
        self._pending = None
        self._active["nonfinite"] = ()
        o_ln = offs[0]
        update_group = self.updates and glob[2] != 1 and (code & _ROWS_UPDATE_MOVED) != 0  # as _finish_rows
        # the mask's update conditions are those _active holds when the group is checked
        # this step (or never is: no updates)
        in_sync = update_group or not self.updates
        signature = mask.tobytes()
        # the conditions of the previous recorded step, which _active holds: no onset, unless
        # a growth candidate (its median decides); without one the norms join their windows
        if signature == self._fast_mask and in_sync and _C.monitor_recent_quiet(
                self._recent_buf, self._recent_n, self._recent_head, graded_arr, vals, o_ln, _GROWTH_MIN,
                self.vanishing, self.growth):
            self._active["exploding_growth"] = []
            return True
        ln = vals[o_ln:o_ln + len(graded)].tolist()
        self._fast_events(step, graded, dead, sat, vals.tolist(), ln, offs, len(R), update_group, (graded_arr, vals))
        self._fast_mask = signature if in_sync else None
        return True

    def _fast_events(self, step: int, graded: List[int], dead: List[int], sat: List[int], vals: List[float],
                     ln: List[float], offs: tuple, k: int, update_group: bool, arrays: tuple) -> None:
        """The events of a fast-path step, in the general path's order: a group where no
        condition starts keeps its state here, any other runs the general detector.
        ``arrays``: (graded as int64, the values' array) for the growth windows' C++."""
        o_ln, o_w, o_f, o_glob, o_u = offs
        names, p_layers, kern = self._names, self._p_layers, self._kernels
        gnorm = vals[0:3 * k:3]
        active: Dict[str, list] = {}
        if self._gradients_quiet(graded, ln, [gnorm[j] for j in kern], active, arrays, o_ln):
            self._active.update(active)
            _C.monitor_recent_push(self._recent_buf, self._recent_n, self._recent_head, arrays[0], arrays[1], o_ln)
        else:
            layer_norm = [math.nan] * len(self.layers)
            for i, v in zip(graded, ln):
                layer_norm[i] = v
            self._detect_gradients(step, layer_norm, gnorm, self._all_have)
        nd = len(dead)
        dead_f, sat_f = vals[o_f:o_f + nd], vals[o_f + nd:o_f + nd + len(sat)]
        active = {}
        if (self._no_onset("dead_units", [(names[i], "output") for i, v in zip(dead, dead_f) if v > self.dead],
                           active) and
                self._no_onset("saturated_units", [(names[i], "output") for i, v in zip(sat, sat_f)
                                                   if v > self.saturated], active)):
            self._active.update(active)
        else:
            self._detect_units(step, {"dead": dict(zip(dead, dead_f)), "saturated": dict(zip(sat, sat_f))})
        if update_group:
            update, ratio, wn = vals[o_u:o_u + k], vals[o_u + k:o_u + 2 * k], vals[o_w:o_w + k]
            active = {}
            low, high = self.update_ratio
            if (self._no_onset("update_ratio_high", [(names[p_layers[j]], "weight.update") for j in kern
                                                     if ratio[j] > high], active) and
                    self._no_onset("update_ratio_low", [(names[p_layers[j]], "weight.update") for j in kern
                                                        if ratio[j] < low], active)):
                self._active.update(active)
            else:
                self._detect_updates(step, ratio, update, wn)

    def _gradients_quiet(self, graded: List[int], ln: List[float], gk: List[float], active: Dict[str, list],
                         arrays: tuple, o_ln: int) -> bool:
        """Whether _detect_gradients would report nothing for the graded layers' norms
        ``ln`` (all finite) and the weight matrices' gradient norms ``gk``; the conditions'
        keys go to ``active``. A growth candidate's median is taken here, as the detector
        takes it: a layer whose norm moves a lot but not 10x its median (a small network
        early in training: most steps) does not send the step to the general detector.
        ``arrays`` / ``o_ln``: (graded as int64, the values' array) and where ``ln`` starts in
        it, for ``_C.monitor_recent_candidates`` (``_growth_candidate`` of every layer)."""
        names = self._names
        if not self._no_onset("exploding", [(names[i], "grad") for i, v in zip(graded, ln) if v > self.exploding],
                              active):
            return False
        growth = []
        for g in _C.monitor_recent_candidates(self._recent_buf, self._recent_n, self._recent_head, arrays[0], arrays[1],
                                              o_ln, _GROWTH_MIN, self.vanishing, self.growth):
            i, v = graded[g], ln[g]
            median = _median(self._recent[i])
            if median > 0 and v > self.growth * median:  # as _detect_gradients
                growth.append((names[i], "grad"))
        if not self._no_onset("exploding_growth", growth, active):
            return False
        floor = self.vanishing
        kern, p_layers = self._kernels, self._p_layers
        if not self._no_onset("vanishing", [(names[p_layers[k]], "weight.grad") for k, v in zip(kern, gk)
                                            if v < floor], active):
            return False
        flow = []
        if len(kern) >= 2:
            first, last = gk[0], gk[-1]
            if (first / last if last > 0 else math.inf) < self.flow_ratio:
                flow.append((names[p_layers[kern[0]]], "weight.grad"))
        return self._no_onset("vanishing_flow", flow, active)

    def _array_captures(self, act_S, dz_S, batch: int) -> _Captures:
        """The captures of statistics computed elsewhere (``_record_arrays``), copied into
        ``_act_S`` / ``_dz_S`` (unless they are those arrays: a plan writes into them);
        forward order is layer order, backward its reverse."""
        for name, A, S in (("act_S", act_S, self._act_S), ("dz_S", dz_S, self._dz_S)):
            if A is S:
                continue
            A = np.asarray(A)
            if A.shape != S.shape:
                raise ValueError(f"GradientMonitor: {name} must have shape {S.shape} (one row per monitored layer), "
                                 f"got {A.shape}")
            np.copyto(S, A)
        S = self._act_S
        # units (column 7) and the non-finite count (column 3) are never NaN when measured
        # (the units themselves are in the key: another network of the same structure may
        # have other widths, and the saturated entries are batch x units)
        key = (S[:, 7].tobytes(), np.isnan(self._dz_S[:, 3]).tobytes(), batch)
        cap = self._array_caps.get(key)
        if cap is None:
            shared = _shared(self._signature)
            parts = shared.get(("captures", key))
            if parts is None:
                out = tuple(np.flatnonzero(~np.isnan(S[:, 7])).tolist())
                dz = tuple(np.flatnonzero(~np.isnan(self._dz_S[:, 3])).tolist())
                act = out if self.activations else ()
                sat = tuple((i, int(batch * S[i, 7])) for i in act if self._mode[i] == "saturated")
                parts = shared[("captures", key)] = (dz, act, out, sat)
            dz, act, out, sat = parts
            cap = self._array_caps[key] = _Captures(dz, act, out, dz[::-1], dict(sat), lambda i: S[i, 4])
        return cap

    def _rows_since(self, calls: int) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """The optimizer's statistics of the updates its step calls made since call number
        ``calls`` (the record's), one row per buffer segment: (rows of ``optim.STATS_COLUMNS``,
        C-contiguous; sums of squares before the update, None when the steps did not measure
        them), NaN for segments not updated; (None, None) when no step ran since."""
        got = self._stats_opt._stats_before_since(calls)
        if got is None:
            return None, None
        R, before = got
        if self._opt_identity:
            return R, before
        return R[self._opt_rows], (None if before is None else before[self._opt_rows])

    def _weights_before(self, before: Optional[np.ndarray]) -> np.ndarray:
        """Statistics (k, 4: sumsq, norm, max |w| (NaN: not measured), non-finite count) of the
        weights each buffer segment held when the step started: from the optimizer's sums of
        squares before its update (``before``) when finite; a segment not updated since the
        record (or no step at all: ``before`` None) as it is now; a segment whose sum is not
        finite (NaN / Inf in it) as it is now too: an update leaves non-finite values
        non-finite (a skipped step wrote nothing), so its count is of the values that were."""
        if before is None:
            return self._segment_stats("data")
        W = _W_BEFORE.get(len(before))
        if W is None:
            W = _W_BEFORE[len(before)] = np.tile([0.0, 0.0, math.nan, 0.0], (len(before), 1))
        W = W.copy()  # (a new array each step: the step's pending rows keep a view of it)
        W[:, 0] = before
        np.sqrt(before, out=W[:, 1])
        if not math.isfinite(np.add.reduce(before)):
            now = self._segment_stats("data")
            redo = ~np.isfinite(before)
            W[redo] = now[redo, :4]
        return W

    def _gradients_after_step(self, has: List[bool], R: Optional[np.ndarray]):
        """(G, D) of a deferred step: gradient statistics per buffer segment and the update's
        sums of squares, from the optimizer's statistics rows ``R`` of its steps since the
        record (``_rows_since``; None: no step, the gradients are measured and no update)."""
        if R is not None:
            stepped = ~np.isnan(R[:, 0])
            if stepped.all() or stepped[np.array(has)].all():  # every tensor with a gradient was stepped
                return _sumsq_stats(R[:, :3]), R[:, 4]
            return self._segment_stats("grad"), np.where(np.isnan(R[:, 4]), 0.0, R[:, 4])
        return self._segment_stats("grad"), np.zeros(len(self._row_tensors))

    def _record_step(self, step: int, loss: float, G: Optional[np.ndarray] = None, W: Optional[np.ndarray] = None,
                     lr: Optional[float] = None, has: Optional[List[bool]] = None,
                     cap: Optional[_Captures] = None) -> None:
        """Append the step's rows and check its events. ``G`` / ``W``: the gradient / weight
        statistics per buffer segment (columns sumsq, norm, max, nonfinite) when the
        optimizer's statistics (or a compiled step's) gave them (``has``: which segments
        had a gradient at record time); else measured here, with a copy of the weights (with
        updates) to measure the optimizer step against. ``cap``: the layers' captures (None:
        the taps')."""
        h = self.history
        if cap is None:
            cap = self._tap_captures()
        row_start = h._n
        if G is None:
            self._follow_parameters()
            G = self._segment_stats("grad")
            W = self._segment_stats("data")
            if self.updates:
                if not self._snapshots:
                    self._snapshots = [np.empty_like(flat.data) for flat in self._flats]
                for flat, snap in zip(self._flats, self._snapshots):
                    np.copyto(snap, flat.data)
        if has is None:
            has = [t.grad is not None for t in self._row_tensors]
        all_have = all(has)
        pG, pW = (G, W) if self._p_identity else (G[self._p_rows], W[self._p_rows])
        if all_have:
            p_has = None
            layer_norm = np.sqrt(self._p_to_layer @ pG[:, 0])
            if len(self._paramless):
                layer_norm[self._paramless] = math.nan
            graded = self._grad_layers
            grad_rows = pG[:, 1:4].ravel()
        else:
            p_has = np.array(has)[self._p_rows]
            layer_norm = np.sqrt(self._p_to_layer @ np.where(p_has, pG[:, 0], 0.0))
            layer_has = self._p_to_layer @ p_has > 0
            layer_norm[~layer_has] = math.nan
            # the layers with a gradient (also one holding NaN: a NaN norm is a row, as when
            # every tensor has a gradient; the layout cached by `has` counts on it)
            graded = np.flatnonzero(layer_has)
            grad_rows = pG[:, 1:4].ravel()[np.repeat(p_has, 3)]
        if self._owns_all and all_have:
            grad_norm = math.sqrt(G[:, 0].sum())
        else:
            rows = self._net_rows[np.array(has)[self._net_rows]]
            grad_norm = math.sqrt(G[rows, 0].sum()) if len(rows) else math.nan  # nan: no gradient at all
        # a NaN / Inf anywhere makes a sum of squares non-finite (checked exactly when locating it)
        suspect = not (self._loss_ok(step, loss) and math.isfinite(grad_norm + W[:, 0].sum()))
        values = [grad_rows, layer_norm[graded], pW[:, 1]]
        # dz (measured in backward) and outputs (measured in forward) of the layers that have one
        dz_layers = cap.dz
        if dz_layers:
            D = self._dz_S[list(dz_layers)]
            values.append(D[:, 1:4].ravel())
            suspect = suspect or not math.isfinite(D[:, 0].sum())
        act_layers = cap.act
        frac: Dict[str, Dict[int, float]] = {"dead": {}, "saturated": {}}
        if act_layers:
            S = self._act_S[list(act_layers)]
            values.append(S[:, :5].ravel())
            suspect = suspect or bool(S[:, 4].any())
            frac = self._unit_fractions(act_layers, S.tolist(), cap.sat_size)
        extra = list(frac["dead"].values()) + list(frac["saturated"].values()) + [loss]
        values.append(np.array(extra))
        key = (all_have or tuple(has), dz_layers, act_layers, tuple(frac["dead"]), tuple(frac["saturated"]))
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = self._layout(p_has, graded, dz_layers, act_layers, frac)
        h.append(step, layout[0], layout[1], np.concatenate(values))
        if self.histograms_enabled:
            self._add_histograms(step, act_layers)
        # events of the step's gradients and activations
        if not (suspect and self._locate_nonfinite(step, loss, G, W, has, cap)):
            self._onset("nonfinite", {}, _as_is)  # nothing non-finite: the condition ended
        self._detect_gradients(step, layer_norm.tolist(), pG[:, 1].tolist(), has if p_has is None else p_has.tolist())
        self._detect_units(step, frac)
        if lr is None:
            lr = _current_lr(self.optimizer) if self.optimizer is not None and not self._in_fit else math.nan
        self._pending = _Pending(step, lr, grad_norm, pW[:, 1], row_start)

    def _layout(self, p_has, graded, dz_layers, act_layers, frac) -> Tuple[np.ndarray, np.ndarray]:
        """Layer and metric codes of a step's rows, in the order ``_record_step`` puts the
        values: parameter gradients, layer grad_norm, weight norms, dz, activations, dead and
        saturated fractions, loss (cached per combination: the same rows come every step)."""
        mc = self._mc
        p_lc3, p_mc3 = self._p_lc3, self._p_mc3
        if p_has is not None:
            keep = np.repeat(p_has, 3)
            p_lc3, p_mc3 = p_lc3[keep], p_mc3[keep]
        dz, act = list(dz_layers), list(act_layers)
        dead, sat = list(frac["dead"]), list(frac["saturated"])
        lcs = [p_lc3, self._lcode[graded], self._p_lc, np.repeat(self._lcode[dz], 3), np.repeat(self._lcode[act], 5),
               self._lcode[dead], self._lcode[sat], [0]]
        mcs = [p_mc3, np.full(len(graded), mc["grad_norm"]), self._p_mc_norm, np.tile(self._mc_dz, len(dz)),
               np.tile(self._mc_act, len(act)), np.full(len(dead), mc["dead_frac"]),
               np.full(len(sat), mc["saturated_frac"]), [mc["loss"]]]
        return (np.concatenate(lcs).astype(np.int32), np.concatenate(mcs).astype(np.int32))

    def _unit_fractions(self, act_layers: Tuple[int, ...], S: List[List[float]],
                        sat_size: Dict[int, int]) -> Dict[str, Dict[int, float]]:
        """{"dead": {layer: dead units / units} (ReLU family), "saturated": {layer: saturated
        entries / entries} (sigmoid / tanh with a known pre-activation: the layers of
        ``sat_size``, layer -> entries)} of this step."""
        frac: Dict[str, Dict[int, float]] = {"dead": {}, "saturated": {}}
        for row, i in zip(S, act_layers):
            mode = self._mode[i]
            if mode == "dead":
                frac["dead"][i] = row[5] / row[7]
            elif mode == "saturated" and i in sat_size:
                frac["saturated"][i] = row[6] / sat_size[i]
        return frac

    def _tap_captures(self) -> _Captures:
        """The captures of the step's taps (arrays kept in ``_out`` / ``_z`` / ``_dz``)."""
        out = self._out
        act = tuple(i for i, o in enumerate(out) if o is not None) if self.activations else ()
        sat = {i: out[i].size for i in act if self._mode[i] == "saturated" and self._z[i] is not None}

        def out_nonfinite(i: int) -> int:
            return np.size(out[i]) - np.count_nonzero(np.isfinite(out[i]))

        return _Captures(tuple(i for i, d in enumerate(self._dz) if d is not None), act, self._fwd_order,
                         self._bwd_order, sat, out_nonfinite)

    def _segment_stats(self, which: str) -> np.ndarray:
        """grad_stats_flat of every flat buffer's ``which`` ("grad" / "data") array, stacked (k, 6)."""
        parts = [_C.grad_stats_flat(getattr(flat, which), flat.offsets) for flat in self._flats]
        return parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros((0, 6))])

    def _act_stats(self, i: int) -> np.ndarray:
        A = np.ascontiguousarray(self._out[i])
        Z, mode = self._z[i], self._mode[i]
        if mode == "none" or (Z is None and mode == "saturated"):
            return _C.activation_stats(A, None, "none", self.saturation)
        if Z is not None:
            Z = np.ascontiguousarray(Z, dtype=A.dtype).reshape(A.shape)
        return _C.activation_stats(A, Z, mode, self.saturation)

    def _add_histograms(self, step: int, act_layers: Sequence[int]) -> None:
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
        update sizes and their events, then the loggers."""
        p = self._pending
        self._pending = None
        try:
            self._finish_step(p, logs)
        finally:
            self._no_loss_steps.discard(p.step)

    def _finish_step(self, p: "_Pending", logs: Optional[Dict]) -> None:
        opt = self.optimizer
        if logs is not None:
            values = [logs.get("grad_norm", math.nan), logs.get("clip_coef", math.nan), logs.get("skipped", math.nan),
                      logs.get("lr", math.nan)]
        elif opt is not None:
            values = [getattr(opt, "last_grad_norm", math.nan), getattr(opt, "last_clip_coef", math.nan),
                      getattr(opt, "last_skipped", math.nan), p.lr]
        else:
            values = [p.grad_norm, math.nan, math.nan, math.nan]
        D = None
        if p.deferred is not None:
            loss, has, calls = p.deferred
            try:
                R, before = self._rows_since(calls)
                W = self._weights_before(before)
                if self._deferred_fast(p.step, loss, W, has, R, values):
                    return
                G, D = self._gradients_after_step(has, R)
                self._record_step(p.step, loss, G, W, p.lr, has)
            finally:
                self._clear_captures()
            p, self._pending = self._pending, None
        self._finish_rows(p, values, D)

    def _deferred_fast(self, step: int, loss: float, W: np.ndarray, has: List[bool], R: Optional[np.ndarray],
                       values: list) -> bool:
        """An eager step recorded with the optimizer's statistics (``R``: its rows since the
        record, ``_rows_since``: five columns), written by the compiled steps' fast path
        (``_record_fast``: one C++ call for the rows and the event conditions) when every
        tensor had a gradient and was stepped (else, or when the step holds a non-finite
        value, False: the general path writes it). Then the end of ``_finish_rows``: the
        forced record and the loggers."""
        if R is None or not all(has) or self.histograms_enabled:
            return False
        # (a tensor not stepped, or no update measured, holds NaN in R's column 0 or 4:
        # _C.monitor_rows declines it, and the general path writes the step)
        if not self._record_fast(step, loss, R, W, self._tap_captures_fast(), values):
            return False
        self._fast_rows_done(step, math.isfinite(math.nan if values[0] is None else float(values[0])))
        return True

    def _tap_captures_fast(self) -> _Captures:
        """The taps' captures for ``_record_fast``, one object per set of captured layers
        (its layouts are cached by the captures object). Its ``out_nonfinite`` is not
        used there (the fast path reads the non-finite counts from ``_act_S``)."""
        out, z = self._out, self._z
        act = tuple(i for i, o in enumerate(out) if o is not None) if self.activations else ()
        sat = tuple((i, out[i].size) for i in act if self._mode[i] == "saturated" and z[i] is not None)
        dz = tuple(i for i, d in enumerate(self._dz) if d is not None)
        key = (dz, act, sat, tuple(self._fwd_order), tuple(self._bwd_order))
        cap = self._tap_caps.get(key)
        if cap is None:
            cap = self._tap_caps[key] = _Captures(dz, act, tuple(self._fwd_order), tuple(self._bwd_order), dict(sat),
                                                  None)
        return cap

    def _finish_rows(self, p: "_Pending", values: list, D: Optional[np.ndarray]) -> None:
        """The rows of a recorded step after its optimizer step: the global ``values``
        (grad_norm, clip_coef, skipped, lr; None: nan), the update sizes from ``D`` (the
        update's sum of squares per buffer segment; None: measured against the snapshot)
        and their events; then the loggers."""
        h = self.history
        values = [math.nan if v is None else float(v) for v in values]
        h.append(p.step, 0, self._mc_global[1:], values)
        if self.updates:
            if D is None and values[2] == 1:
                D = np.zeros(len(self._row_tensors))  # a skipped step wrote nothing (NaN - NaN is no change)
            if D is None:
                D = [_C.diff_sumsq_flat(flat.data, snap, flat.offsets)
                     for flat, snap in zip(self._flats, self._snapshots)]
                D = D[0] if len(D) == 1 else np.concatenate(D or [np.zeros(0)])
            update = np.sqrt(D if self._p_identity else D[self._p_rows])
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = update / p.norms
            h.append(p.step, self._p_lc_upd, self._p_mc_upd, np.concatenate([update, ratio]))
            if update.any() and values[2] != 1:  # nothing moved (no step yet, or skipped): no verdict on sizes
                self._detect_updates(p.step, ratio.tolist(), update.tolist(), p.norms.tolist())
        if self._force and math.isfinite(values[0]):
            self._force = False
            self._armed = self._step % self.every == 0
        if self._loggers:
            rows = h.rows_since(p.row_start)
            for logger in self._loggers:
                logger.write_step(self, p.step, rows)

    def _settle(self) -> None:
        """Before results are read: complete a pending step (its optimizer step is taken
        to have happened)."""
        if self._pending is not None:
            self._finish()

    # ------------------------------------------------------------------ events
    @property
    def events(self) -> List[Event]:
        """The events so far, in the order they fired (see ``gradcore.monitor._events``)."""
        self._settle()
        return self._events

    def _emit(self, event: Event) -> None:
        self._events.append(event)
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

    def _onset(self, kind: str, found: Dict[tuple, object], build: Callable[[tuple, object], Event]) -> None:
        """Emit ``build(key, item)`` for each key of ``found`` (key -> what the event needs)
        whose condition was not true at the previous recorded step; remember the keys."""
        before = self._active.get(kind, ())
        self._active[kind] = set(found)  # (not found.keys(): a view would keep found alive and not copy)
        self._fast_mask = None  # _active changed outside the fast path's signature
        for key, item in found.items():
            if key not in before:
                self._emit(build(key, item))

    def _global_nonfinite(self, step: int, tensor: str, value: float) -> None:
        """A non-finite loss or global norm at a step that was not recorded: report it and
        record every step until the norm is finite again."""
        self._force = True
        self._armed = True
        event = Event("nonfinite", step, "", tensor, float(value), math.nan,
                      f"{tensor} is {value} at a step that was not recorded (every={self.every}); recording every "
                      "step until it is finite again to locate the origin",
                      {"phase": "backward" if tensor == "grad_norm" else "forward"})
        self._onset("nonfinite", {("", tensor): event}, _as_is)

    def _loss_ok(self, step: int, loss: float) -> bool:
        """The step's loss is finite, or was not given (``record()`` without a loss)."""
        return math.isfinite(loss) or step in self._no_loss_steps

    def _locate_nonfinite(self, step: int, loss: float, G: np.ndarray, W: np.ndarray, has: List[bool],
                          cap: _Captures) -> bool:
        """Report the first tensor of the step holding NaN / Inf, in the order the values
        arose: parameters (their values before the step), forward outputs in forward order,
        dz in backward order, parameter gradients in backward order; then record every step
        until the gradient norm is finite again. False when nothing is non-finite (a sum of
        squares of finite values overflowed)."""
        origin = None
        fwd = list(cap.fwd_order) + [i for i in range(len(self.layers)) if i not in cap.fwd_order]
        by_layer: Dict[int, List[_Param]] = {}
        for p in self._params:
            by_layer.setdefault(p.layer, []).append(p)
        for i in fwd:
            bad = [p for p in by_layer.get(i, ()) if W[p.row, 3] > 0]
            if bad:
                origin = (i, bad[0].name, "parameter", W[bad[0].row, 3])
                break
        if origin is None:
            for i in cap.fwd_order:
                count = cap.out_nonfinite(i)
                if count:
                    origin = (i, "output", "forward", count)
                    break
        bwd = list(cap.bwd_order)
        if origin is None:
            for i in bwd:
                count = self._dz_S[i, 3]  # grad_stats' non-finite count, taken when dz was captured
                if count:
                    origin = (i, "dz", "backward", count)
                    break
        if origin is None:
            for i in bwd + [i for i in reversed(fwd) if i not in bwd]:
                bad = [p for p in by_layer.get(i, ()) if has[p.row] and G[p.row, 3] > 0]
                if bad:
                    origin = (i, f"{bad[0].name}.grad", "backward", G[bad[0].row, 3])
                    break
        if origin is None and self._loss_ok(step, loss):
            return False
        if origin is None:
            layer, tensor, phase, count = "", "loss", "forward", 1
        else:
            layer, tensor, phase, count = self.layers[origin[0]].name, origin[1], origin[2], origin[3]
        what = {"parameter": f"parameter {tensor} already holds", "forward": "the forward output first holds",
                "backward": f"{tensor} first holds" if tensor != "dz" else "the gradient dz first holds"}[phase]
        message = f"{what} {int(count)} NaN/Inf value(s) (loss {loss:.4g})"
        event = Event("nonfinite", step, layer, tensor, float(count), 0.0, message,
                      {"phase": phase, "nonfinite": int(count), "loss": loss})
        self._force = True
        self._onset("nonfinite", {(layer, tensor): event}, _as_is)
        return True

    def _growth_candidate(self, i: int, v: float) -> bool:
        """Whether layer ``i``'s gradient norm ``v`` may be growth (its median decides): enough
        earlier steps, above ``vanishing`` (below: recovering, not exploding) and above
        growth x the minimum of its recent norms (the median is at least the minimum)."""
        recent = self._recent[i]
        return len(recent) >= _GROWTH_MIN and v > self.vanishing and v > self.growth * min(recent)

    def _detect_gradients(self, step: int, layer_norm: List[float], wnorm: List[float], p_has: List[bool]) -> None:
        """exploding / exploding_growth from the layers' gradient norms (nan: no gradient),
        vanishing / vanishing_flow from the weight matrices' gradient norms ``wnorm`` (per
        monitored parameter; ``p_has``: it has a gradient)."""
        names, limit = self._names, self.exploding
        self._onset("exploding", {(names[i], "grad"): v for i, v in enumerate(layer_norm) if v > limit},
                    lambda key, v: Event("exploding", step, key[0], "grad", v, limit,
                                         f"gradient norm {_fmt(v)} is above {_fmt(limit)}", {"grad_norm": v}))
        # growth against the layer's median over its last recorded steps (the median is at
        # least the minimum, so only a norm above growth x the minimum needs the median); a
        # norm still below `vanishing` is recovering from vanishing, not exploding
        found = {}
        for i, v in enumerate(layer_norm):
            recent = self._recent[i]
            if self._growth_candidate(i, v):
                median = _median(recent)
                if median > 0 and v > self.growth * median:  # from a zero median: revival, not growth
                    found[(names[i], "grad")] = (v, median, len(recent))
            if math.isfinite(v):
                recent.append(v)
        self._onset("exploding_growth", found, lambda key, item: Event(
            "exploding_growth", step, key[0], "grad", item[0], self.growth * item[1],
            f"gradient norm {_fmt(item[0])} is {item[0] / item[1]:.3g}x its median {_fmt(item[1])} over the last "
            f"{item[2]} recorded steps (limit {self.growth:g}x)",
            {"grad_norm": item[0], "median": item[1], "window": item[2], "growth": item[0] / item[1]}))
        # vanishing: the weight matrices' gradient norms, and first / last
        kernels = [k for k in self._kernels if p_has[k]]
        low = {(names[self._p_layers[k]], "weight.grad"): wnorm[k] for k in kernels if wnorm[k] < self.vanishing}
        self._onset("vanishing", low, lambda key, v: Event(
            "vanishing", step, key[0], "weight.grad", v, self.vanishing,
            f"weight-gradient norm {_fmt(v)} is below {_fmt(self.vanishing)}", {"grad_norm": v}))
        found = {}
        if len(kernels) >= 2:
            first, last = wnorm[kernels[0]], wnorm[kernels[-1]]
            ratio = first / last if last > 0 else math.inf
            if ratio < self.flow_ratio:
                found[(names[self._p_layers[kernels[0]]], "weight.grad")] = (
                    ratio, names[self._p_layers[kernels[-1]]], first, last)
        self._onset("vanishing_flow", found, lambda key, item: Event(
            "vanishing_flow", step, key[0], "weight.grad", item[0], self.flow_ratio,
            f"first/last weight-gradient norm ratio {_fmt(item[0])} is below {_fmt(self.flow_ratio)} (layer "
            f"'{key[0]}': {_fmt(item[2])}, layer '{item[1]}': {_fmt(item[3])})",
            {"first_layer": key[0], "last_layer": item[1], "first_grad_norm": item[2], "last_grad_norm": item[3],
             "ratio": item[0]}))

    def _detect_units(self, step: int, frac: Dict[str, Dict[int, float]]) -> None:
        for mode, kind, limit in (("dead", "dead_units", self.dead), ("saturated", "saturated_units", self.saturated)):
            what = ("of the units are dead (pre-activation <= 0 for the whole batch)" if mode == "dead" else
                    f"of the pre-activations are beyond +-{self.saturation:g} (saturated)")
            self._onset(kind, {(self._names[i], "output"): v for i, v in frac[mode].items() if v > limit},
                        lambda key, v, kind=kind, limit=limit, what=what, mode=mode: Event(
                            kind, step, key[0], "output", v, limit, f"{v:.0%} {what}, above {limit:.0%}",
                            {f"{mode}_frac": v}))

    def _detect_updates(self, step: int, ratio: List[float], update: List[float], norms: List[float]) -> None:
        """update_ratio_high / _low of the weight matrices (per monitored parameter lists)."""
        low, high = self.update_ratio
        for kind, limit, word, outside in (("update_ratio_high", high, "above", lambda r: r > high),
                                           ("update_ratio_low", low, "below", lambda r: r < low)):
            found = {(self._names[self._p_layers[k]], "weight.update"): k for k in self._kernels if outside(ratio[k])}
            self._onset(kind, found, lambda key, k, kind=kind, limit=limit, word=word: Event(
                kind, step, key[0], "weight.update", ratio[k], limit,
                f"update/weight norm ratio {_fmt(ratio[k])} is {word} {_fmt(limit)} (update {_fmt(update[k])}, "
                f"weight {_fmt(norms[k])})", {"update_norm": update[k], "norm": norms[k], "ratio": ratio[k]}))

    # ------------------------------------------------------------------ fit callback
    def set_context(self, model, optimizer) -> None:
        self._check_open("fit")
        if model is not self.net and all(m is not self.net for m in model.modules()):
            raise ValueError(f"GradientMonitor: it watches {self.net.describe()}, but fit trains "
                             f"{model.describe()}, which does not contain it")
        super().set_context(model, optimizer)
        self._bind_optimizer(optimizer)

    @property
    def _in_fit(self) -> bool:
        """Inside ``net.fit`` (its loop is running, also after an exception left no
        on_train_end): the step's lr / grad_norm / clip_coef / skipped come from its logs."""
        model = self.model
        return model is not None and getattr(model, "_fit_loop", None) is not None

    def on_after_backward(self, batch, logs=None) -> None:
        if self._arrays_mode:
            return  # the compiled step records (_record_arrays)
        logs = logs or {}
        if self._pending is not None:
            self._finish()
        self._record(_loss_value(logs.get("loss")))

    def on_after_step(self, batch, logs=None) -> None:
        if self._arrays_mode:
            return
        logs = logs or {}
        if self._pending is not None:
            self._finish(logs)
            return
        for key in ("grad_norm", "loss"):  # an unrecorded step: the global norm, else the loss
            value = logs.get(key)
            if isinstance(value, numbers.Real) and not math.isfinite(value):
                self._global_nonfinite(self._step - 1, key, value)
                break

    def on_train_begin(self, logs=None) -> None:
        if self._loggers_closed_by_fit:
            _warnings.warn("GradientMonitor: its loggers were closed at the end of the previous fit, so this fit is "
                           "recorded in mon.history but not logged; create new loggers (and a new monitor) to log "
                           "it", RuntimeWarning)

    def on_train_end(self, logs=None) -> None:
        self._settle()
        self._loggers_closed_by_fit = self._loggers_closed_by_fit or bool(self._loggers)
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
            for info, module in zip(self.layers, self._modules):
                fused = info.activation and isinstance(module, Dense)
                kind = info.kind + (f"({info.activation})" if fused else "")
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
            recent = [e for e in self._events if e.step == step]
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
        self._uninstall()
        self._clear_captures()
        self._release_optimizer()
        self._closed = True
        self._close_loggers()

    def _uninstall(self) -> None:
        """Remove the monitor's taps and hooks from the network."""
        for module, handle in zip(self._modules, self._handles):
            if isinstance(handle, _LayerTap):
                current = module.__dict__.get("_monitor_tap")
                if current is handle:
                    del module.__dict__["_monitor_tap"]
                elif isinstance(current, _TapGroup):
                    current.taps.remove(handle)
                    if len(current.taps) == 1:
                        object.__setattr__(module, "_monitor_tap", current.taps[0])
                continue
            handle.remove()
            hooks = module.__dict__.get("_module_hooks")
            if hooks is not None and not (hooks.pre or hooks.forward or hooks.backward or hooks.backward_pre):
                del module.__dict__["_module_hooks"]  # back to the hook-free call path, as before
        self._handles = []

    def __enter__(self) -> "GradientMonitor":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        return (f"GradientMonitor({len(self.layers)} layers, every={self.every}, steps={self._step}, "
                f"events={len(self._events)}{', closed' if self._closed else ''})")


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


def _sumsq_stats(R: np.ndarray) -> np.ndarray:
    """Statistics rows (k, 4: sumsq, norm, max |x|, nonfinite) from (k, 3) rows of sum of
    squares, max |x| and non-finite count (the optimizer's gradient columns)."""
    G = np.empty((len(R), 4))
    G[:, 0] = R[:, 0]
    G[:, 1] = np.sqrt(R[:, 0])
    G[:, 2:4] = R[:, 1:3]
    return G


def _median(values) -> float:
    """The median of a few finite numbers (sorting a short list beats np.median)."""
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])


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
