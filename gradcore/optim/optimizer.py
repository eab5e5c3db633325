"""The Optimizer base class: parameter groups over flat buffers, clipping, the non-finite
policy, gradient noise.

An optimizer never moves a parameter (DESIGN.md decision 1). It addresses the flat buffer
each parameter already lives in (its network's, see ``gradcore.flat``): a run of consecutive
tensors of one buffer that share a parameter group and a step count is one call into C++,
so over a whole network the step is one call per dtype. Every state (moments, v_max,
momentum...) is a flat array of the owner's layout, restricted to the tensors this
optimizer manages (the whole layout in the common case).

A parameter whose ``.grad`` is None or whose ``requires_grad`` is False at step time is not
touched: no update, no weight decay, no momentum, no step count. (torch.optim holds frozen
parameters too but tests only ``.grad is None``: it would still update a parameter frozen
while a stale gradient remains; after ``zero_grad()`` both behave the same.)

``param_groups`` is torch's list of dicts: each group has its own ``lr`` (a float or a
schedule), the optimizer's hyper-parameters (betas, momentum, weight_decay...) and the
per-tensor clipping ``clip_value`` / ``clip_norm``. ``global_clip_norm``, ``nonfinite`` and
``grad_noise`` belong to the whole optimizer (one global norm per step).

Clipping, all applied inside the fused pass to (gradient + noise), in this order:
  * ``clip_norm``: each tensor scaled by clip_norm / max(norm_i, clip_norm) (Keras clipnorm);
  * ``global_clip_norm``: all scaled by min(1, max_norm / (total + 1e-6)), total being the norm
    of the per-tensor norms after the step above (torch.nn.utils.clip_grad_norm_);
  * ``clip_value``: each element clamped to [-clip_value, clip_value].
Weight decay is added after clipping. After every ``step()`` / ``update_params()``:
``last_grad_norm`` (pre-clip global norm), ``last_clip_coef`` (the global clip coefficient,
1.0 without global clipping), ``last_skipped``, ``skipped_steps``, ``last_nonfinite_param``.

A gradient holding NaN or Inf never reaches the parameters: the step is not applied, the
parameters and the optimizer state stay bit-identical, ``skipped_steps`` grows by one, and
``nonfinite`` decides what else happens ('skip': nothing, 'warn': a RuntimeWarning,
'raise': FloatingPointError).

Statistics (``record_stats = True``; a GradientMonitor turns it on): each step also
reports, from the passes it makes anyway (DESIGN.md decision 7), ``last_stats``, a float64
array (len(stats_params), 5) with per tensor the columns ``STATS_COLUMNS``:
  * grad_sumsq, grad_max_abs, grad_nonfinite: of the gradient as the step received it
    (before noise, clipping and weight decay; max |g| over its finite values);
  * param_sumsq: sum of p^2 after the update; update_sumsq: sum of (p_new - p_old)^2
    (the difference rounded to the dtype), all summed in double.
A skipped step fills the gradient columns, param_sumsq of the unchanged parameters and
update_sumsq 0. ``record_stats = "grad"`` measures the gradient columns only (the update
pass runs as without statistics; param_sumsq and update_sumsq are NaN). Rows of tensors
the step did not update (no gradient, frozen, or left out of ``update_params``) are NaN.
``last_stats_step`` is the number of ``step()`` / ``update_params()`` calls made when
``last_stats`` was written. Turning the statistics on changes no parameter: the update is
the same, bit for bit.

The weights before the update (for a GradientMonitor, which reports the norms of the
weights a step's forward used): with ``_record_before`` set as well, the fused pass also
sums each tensor's p^2 before its update (``STATS_BEFORE_COLUMN``, the kernels' sixth column:
one FMA per value it reads anyway, instead of a pass of its own before the step), in either
``record_stats`` mode; ``_stats_since(calls)`` gives the rows (six columns) of the updates
made since call number ``calls``. ``last_stats`` keeps its five columns. ``_record_before =
WITHOUT_AFTER`` (a monitor that turned the statistics on itself): with ``record_stats`` True
the pass measures the update and the weights before but not ``param_sumsq`` after (NaN):
two sums cost what the five columns do, a third costs more (csrc/optim.h).
"""
from __future__ import annotations

import copy
import functools
import inspect
import math
import operator
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _C, _warnings
from .. import random as _random
from ..flat import FlatBuffer
from ..tensor import Tensor, bump_version, enable_grad
from . import _checks
from ._state import check_state_values
from ._params import Run, collect_parameters, consecutive_runs, split_by_value
from . import schedules
from .schedules import Schedule, as_schedule

NONFINITE_POLICIES = ("skip", "raise", "warn")
# Columns of Optimizer.last_stats (the C++ step's statistics, csrc/optim.h).
STATS_COLUMNS = ("grad_sumsq", "grad_max_abs", "grad_nonfinite", "param_sumsq", "update_sumsq")
# The kernels' sixth column (a statistics table of width len(STATS_COLUMNS) + 1): the sum of
# p^2 before the update (``Optimizer._record_before``).
STATS_BEFORE_COLUMN = "param_sumsq_before"
# Optimizer._record_before's value for the column before in place of param_sumsq after
WITHOUT_AFTER = "without_after"


class GradNoise:
    """Gaussian gradient noise annealed over steps: std_t = std / (1 + t) ** decay.

    ``t`` is the number of updates the parameters have received before this one. Noise is
    drawn from its own NumPy Generator seeded by ``seed`` (by default a seed taken from
    gradcore's stream, so ``gradcore.manual_seed`` makes it reproducible), added to the
    gradient before clipping. The gradient buffer itself is left untouched: the noise lives in
    a separate flat buffer the kernel reads.
    """

    def __init__(self, std: float, decay: float = 0.55, seed: Optional[int] = None):
        self.std = _checks.real("GradNoise", "std", std, low=0.0)
        self.decay = _checks.real("GradNoise", "decay", decay, low=0.0)
        self.seed = _random.next_seed() if seed is None else _checks.integer("GradNoise", "seed", seed)
        self.rng = np.random.default_rng(self.seed)

    def std_at(self, t: int) -> float:
        return self.std / (1.0 + t) ** self.decay

    def fill(self, out: np.ndarray, t: int) -> None:
        """Draw standard normals into ``out`` (its dtype) and scale them by std_t."""
        self.rng.standard_normal(out=out, dtype=out.dtype)
        np.multiply(out, out.dtype.type(self.std_at(t)), out=out)

    def state_dict(self) -> dict:
        return {"std": self.std, "decay": self.decay, "seed": self.seed, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.std, self.decay, self.seed = float(state["std"]), float(state["decay"]), int(state["seed"])
        self.rng = np.random.default_rng(self.seed)
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self):
        return f"GradNoise(std={self.std}, decay={self.decay}, seed={self.seed})"


# Moved by every in-place change of a group's "params" list (_ParamList): an optimizer
# compares it with the value it last checked before each step (one integer compare).
_param_list_edits = [0]


class _ParamList(list):
    """A parameter group's ``"params"`` list. The optimizer steps the tensors registered
    when the group was added (their state lives in its flat slots), so a change of the
    list in place (``pop``, ``append``, ``del``, item assignment...) moves
    ``_param_list_edits``, and the next step refuses the edited list with a clear error
    instead of stepping tensors the list no longer names (or skipping new ones)."""

    __slots__ = ()


def _edits_list_method(name):
    base = getattr(list, name)

    @functools.wraps(base)
    def method(self, *args):
        _param_list_edits[0] += 1
        return base(self, *args)
    return method


for _name in ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse", "__setitem__",
              "__delitem__", "__iadd__", "__imul__"):
    setattr(_ParamList, _name, _edits_list_method(_name))
del _name


def _as_noise(grad_noise, op: str) -> Optional[GradNoise]:
    if grad_noise is None or isinstance(grad_noise, GradNoise):
        return grad_noise
    if isinstance(grad_noise, (tuple, list)):
        return GradNoise(*grad_noise)
    if isinstance(grad_noise, dict):
        return GradNoise(**grad_noise)
    try:
        return GradNoise(grad_noise)
    except TypeError:
        raise TypeError(f"{op}: grad_noise must be None, a GradNoise, a std, or a (std, decay[, seed]) tuple; "
                        f"got {type(grad_noise).__name__}") from None


# Keys of a parameter group besides "params", "lr" and the optimizer's own hyper-parameters.
GROUP_CLIP_KEYS = ("clip_value", "clip_norm")
# Settings of the whole optimizer: refused inside a group.
OPTIMIZER_KEYS = ("global_clip_norm", "nonfinite", "grad_noise")


def _same_region(a, b: np.ndarray) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous
            and a.ctypes.data == b.ctypes.data)


class _Slot:
    """One owner FlatBuffer as an optimizer sees it.

    ``group[i]``: the parameter group of the buffer's tensor i (-1: not managed here).
    ``steps`` / ``sumsq`` / ``scales``: per tensor (k,) update counts, last squared gradient
    norms and clip scales. ``state``: name -> a flat array holding the managed tensors'
    slices of the owner's layout, in buffer order (so a run of consecutive managed tensors
    is one contiguous slice; with every tensor managed it is the owner's layout exactly);
    ``start[i]`` is where tensor i's slice begins. ``stats``: (k, 5) per-tensor statistics
    (k, 6 with the weights before the update), allocated when the optimizer records them:
    each row is the one of the tensor's last update with statistics, ``stats_call[i]`` the
    step call (``_step_calls``) that wrote it (0: none) and ``stats_whole`` the last call
    that wrote every row.
    """

    def __init__(self, flat: FlatBuffer):
        k = len(flat)
        self.flat = flat
        self.group = np.full(k, -1, dtype=np.int64)
        self.start = np.full(k, -1, dtype=np.int64)
        self.steps = np.zeros(k, dtype=np.int64)
        self.sumsq = np.zeros(k, dtype=np.float64)
        self.scales = np.ones(k, dtype=np.float64)
        self.state: Dict[str, np.ndarray] = {}
        self.size = 0
        self.noise: Optional[np.ndarray] = None
        self.members: List[int] = []
        self.stats: Optional[np.ndarray] = None
        self.stats_call: Optional[np.ndarray] = None
        self.stats_whole = 0
        self._data_views: List[Any] = [None] * k
        self.runs: Dict[Tuple[int, int], Run] = {}  # (lo, hi) -> Run: the buffer's offsets never change

    def __getstate__(self):
        # (pickle) the run cache and the data views are made again on use
        state = self.__dict__.copy()
        state["runs"], state["_data_views"] = {}, [None] * len(self._data_views)
        return state

    def run(self, lo: int, hi: int) -> Run:
        run = self.runs.get((lo, hi))
        if run is None:
            run = self.runs[(lo, hi)] = Run(self.flat.offsets, lo, hi)
        return run

    def add(self, indices: Sequence[int], group: int, spec: Sequence[Tuple[str, float]]) -> None:
        """Manage tensors ``indices`` in ``group``; their state starts at ``spec``'s values."""
        old_start, old_state = self.start.copy(), self.state
        self.group[list(indices)] = group
        self.members = np.flatnonzero(self.group >= 0).tolist()
        sizes = np.diff(self.flat.offsets)
        self.start = np.full(len(self.flat), -1, dtype=np.int64)
        at = 0
        for i in self.members:
            self.start[i] = at
            at += int(sizes[i])
        self.size = at
        self.state = {}
        for name, arr in old_state.items():
            new = self.state[name] = np.zeros(self.size, dtype=self.flat.dtype)
            for i in self.members:
                if old_start[i] >= 0:
                    n = int(sizes[i])
                    new[self.start[i]:self.start[i] + n] = arr[old_start[i]:old_start[i] + n]
        for name, value in spec:
            arr = self.state_array(name)
            for i in indices:
                arr[self.start[i]:self.start[i] + int(sizes[i])] = value
        self.check_data()

    def state_array(self, name: str) -> np.ndarray:
        """State ``name`` (allocated as zeros on first use, e.g. momentum turned on later)."""
        arr = self.state.get(name)
        if arr is None:
            arr = self.state[name] = np.zeros(self.size, dtype=self.flat.dtype)
        return arr

    def check_data(self) -> None:
        """RuntimeError when a managed parameter's ``.data`` no longer views the buffer."""
        flat = self.flat
        for i in self.members:
            p = flat.params[i]
            view = flat.view(flat.data, i)
            if not _same_region(p.data, view) and view.size:
                raise RuntimeError(
                    f"parameter {i} of shape {flat.shapes[i]} no longer views its flat buffer; assign into it "
                    "with p.data[...] = value instead of replacing p.data"
                )
            self._data_views[i] = p.data

    def ready(self, indices: Sequence[int], describe) -> List[int]:
        """Of ``indices``, the tensors to update now: requires_grad and a gradient.

        A gradient array (or Tensor: its values) that replaced the buffer's view (``p.grad =
        g``) is copied into the buffer and the view put back, so the kernels read it; a
        ``.data`` that was replaced cannot be honoured and raises RuntimeError.
        ``describe(p)``: how an error names parameter ``p`` (the optimizer and its index).
        """
        flat = self.flat
        params, views, data_views = flat.params, flat.grad_views, self._data_views
        out = []
        stale_data = False
        for i in indices:
            p = params[i]
            if p.data is not data_views[i]:
                stale_data = True
            g = p.grad
            if g is None or not p.requires_grad:
                continue
            view = views[i]
            if g is not view and not _same_region(g, view):
                if isinstance(g, Tensor):
                    g = g.data
                if not isinstance(g, np.ndarray) or g.dtype.kind not in "biuf":
                    raise TypeError(f"{describe(p)}: .grad must be a NumPy array or a Tensor of real numbers "
                                    f"(shape {view.shape}), got {type(g).__name__}"
                                    + (f" of dtype {g.dtype}" if isinstance(g, np.ndarray) else ""))
                if g.shape != view.shape:
                    raise ValueError(f"{describe(p)}: gradient of shape {g.shape}, expected {view.shape} "
                                     "(the parameter's shape)")
                view[...] = g
                p.grad = view
            out.append(i)
        if stale_data:
            self.check_data()
        return out

    def noise_buffer(self) -> np.ndarray:
        if self.noise is None:
            self.noise = np.empty_like(self.flat.data)
        return self.noise


def _layout_difference(saved: dict, slot: _Slot) -> str:
    """What differs between a saved buffer entry and ``slot`` ('' when the layouts match)."""
    if saved["dtype"] != str(slot.flat.dtype):
        return f"saved dtype {saved['dtype']}, this optimizer's buffer is {slot.flat.dtype}"
    off, mine = np.asarray(saved["offsets"]).reshape(-1), slot.flat.offsets
    if off.shape != mine.shape:
        return f"saved {off.size - 1} tensors, this optimizer's buffer has {len(slot.flat)}"
    if not np.array_equal(off, mine):
        i = int(np.flatnonzero(off != mine)[0])
        return (f"offsets differ from tensor {i - 1} on: saved tensor {i - 1} spans [{off[i - 1]}, {off[i]}), "
                f"here [{mine[i - 1]}, {mine[i]}) (shape {slot.flat.shapes[i - 1]})" if i > 0
                else f"saved offsets start at {off[0]}, expected 0")
    managed = np.asarray(saved["managed"], dtype=bool).reshape(-1)
    if managed.shape != slot.group.shape or not np.array_equal(managed, slot.group >= 0):
        return (f"the saved optimizer managed tensors {np.flatnonzero(managed).tolist()} of the buffer, this one "
                f"{np.flatnonzero(slot.group >= 0).tolist()}")
    return ""


class _Call:
    """One kernel call: a run of tensors of one slot that share their group and step count."""

    __slots__ = ("slot", "run", "t", "group", "noise")

    @property
    def stats(self) -> Optional[np.ndarray]:
        """This run's rows of the slot's statistics (None when they are not recorded)."""
        return None if self.slot.stats is None else self.run.per_tensor(self.slot.stats)

    def __init__(self, slot: _Slot, run: Run, t: int, group: dict):
        self.slot, self.run, self.t, self.group, self.noise = slot, run, t, group, None

    def view(self, buffer: Optional[np.ndarray]) -> Optional[np.ndarray]:
        return None if buffer is None else self.run.view(buffer)

    def state(self, name: str) -> np.ndarray:
        """This run's slice of state ``name``."""
        arr = self.slot.state_array(name)
        if self.run.whole:  # the whole buffer (so every tensor is managed): the whole array
            return arr
        begin = int(self.slot.start[self.run.lo])
        return arr[begin:begin + self.run.end - self.run.begin]

    @property
    def param(self):
        return self.run.view(self.slot.flat.data)

    @property
    def grad(self):
        return self.run.view(self.slot.flat.grad)

    @property
    def sumsq(self):
        return self.run.per_tensor(self.slot.sumsq)

    @property
    def scales(self):
        return self.run.per_tensor(self.slot.scales)

    @property
    def params(self) -> List[Tensor]:
        return self.slot.flat.params[self.run.lo:self.run.hi]


def clip_scales(sumsq: np.ndarray, clip_norm: np.ndarray, global_clip_norm: float) -> Tuple[np.ndarray, float]:
    """Per-tensor scales (k,) and the global coefficient, as the C++ ``clip_scales`` computes
    them, for per-tensor ``clip_norm`` values (0: off)."""
    norms = np.sqrt(sumsq)
    scales = np.ones_like(norms)
    hit = (clip_norm > 0) & (norms > clip_norm)
    scales[hit] = clip_norm[hit] / norms[hit]
    coef = 1.0
    if global_clip_norm:
        post = math.sqrt(float(np.sum((scales * norms) ** 2)))
        coef = min(1.0, global_clip_norm / (post + 1e-6))
        if coef < 1:
            scales *= coef
    return scales, coef


# Keras' spellings of the constructor keywords -> gradcore's (Keras' clipnorm clips each
# variable by its own norm, which is gradcore's clip_norm; global_clipnorm is the global one).
KERAS_ALIASES = {"learning_rate": "lr", "clipnorm": "clip_norm", "clipvalue": "clip_value",
                 "global_clipnorm": "global_clip_norm"}
# torch.optim keywords that choose an implementation, not the mathematics: accepted with the
# values that describe what gradcore does (its step is one fused pass over a flat buffer, not
# differentiable, CPU only), refused otherwise.
TORCH_NOOPS = {"foreach": (None, False, True), "fused": (None, False, True), "capturable": (None, False),
               "differentiable": (None, False), "maximize": (None, False)}
COMMON_KEYS = ("clip_value", "clip_norm", "global_clip_norm", "nonfinite", "grad_noise")


def _constructor_keywords(init):
    """Wrap an optimizer class's ``__init__`` so Keras' keyword spellings are translated,
    torch's implementation switches accepted as no-ops, and an unknown keyword raises a
    TypeError naming the optimizer class (instead of Python's ``Optimizer.__init__() got an
    unexpected keyword argument``)."""
    sig = inspect.signature(init)
    named = [n for n, prm in sig.parameters.items() if prm.kind is not inspect.Parameter.VAR_KEYWORD]
    known = set(named[1:])
    if any(prm.kind is inspect.Parameter.VAR_KEYWORD for prm in sig.parameters.values()):
        known |= set(COMMON_KEYS)

    @functools.wraps(init)
    def __init__(self, *args, **kw):
        op = type(self).__name__
        positional = set(named[1:1 + len(args)])
        for keras, mine in KERAS_ALIASES.items():
            if keras in kw:
                if mine in kw or mine in positional:
                    raise TypeError(f"{op}: got both {keras}= (Keras' name) and {mine}=; pass one of them")
                kw[mine] = kw.pop(keras)
        for name, allowed in TORCH_NOOPS.items():
            if name in kw and name not in known:
                value = kw.pop(name)
                if not any(value is a for a in allowed):
                    what = ("is not implemented: negate the loss instead" if name == "maximize"
                            else "is not supported (gradcore's step is a fused CPU pass, not differentiable)")
                    raise ValueError(f"{op}: {name}={value!r} {what}")
        unknown = sorted(set(kw) - known)
        if unknown:
            raise TypeError(f"{op}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(sorted(known | set(KERAS_ALIASES)))}")
        init(self, *args, **kw)

    __init__._keywords_checked = True
    return __init__


class Optimizer:
    """Base class of the optimizers over flat parameter buffers.

    ``params``: Tensors, objects with ``.parameters()`` (layers, models), an iterable of
    either, or a list of parameter-group dicts (``[{"params": net[0].parameters(), "lr":
    1e-2}, {"params": net[2].parameters()}]``; keys a group leaves out take the constructor's
    values); or None to register parameters lazily through ``update_params(layer)``.
    ``lr``: a float or a schedule (``gradcore.optim.schedules``; any callable ``t -> lr``).
    Common keywords: ``clip_value``, ``clip_norm`` (per group), ``global_clip_norm`` (None:
    off), ``nonfinite`` ('skip' | 'raise' | 'warn'), ``grad_noise`` (None, a GradNoise, a std
    or a (std, decay[, seed]) tuple).

    Two ways to use it: ``opt.zero_grad(); loss.backward(); opt.step()`` updates every
    parameter that has a gradient; ``opt.update_params(layer)`` updates one layer's
    parameters (the ``Optimizer_Adam.update_params(layer)`` style). Each parameter counts
    its own updates, which drive the bias corrections, schedules and noise annealing.
    Setting ``opt.lr`` (or another hyper-parameter attribute) sets it in every group;
    ``opt.param_groups[i]["lr"] = x`` in one group, as in torch.
    """

    _hyper_names: Tuple[str, ...] = ()
    _record_before = False  # (set per optimizer in __init__; the class value serves older pickles)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_keywords_checked", False):
            cls.__init__ = _constructor_keywords(init)

    def __init__(self, params, defaults: dict, *, clip_value=None, clip_norm=None, global_clip_norm=None,
                 nonfinite="skip", grad_noise=None):
        op = type(self).__name__
        d = dict(defaults, clip_value=clip_value, clip_norm=clip_norm)
        d["lr"] = self._check_lr(d["lr"], op)
        self._check_group(d, op)
        object.__setattr__(self, "defaults", d)
        self.param_groups: List[dict] = []
        self.global_clip_norm = _checks.positive_or_none(op, "global_clip_norm", global_clip_norm)
        self.nonfinite = _checks.choice(op, "nonfinite", nonfinite, NONFINITE_POLICIES)
        self.grad_noise = _as_noise(grad_noise, op)
        self.skipped_steps = 0
        self._record_stats = False
        self._record_before = False  # the statistics also sum p^2 before the update (module docstring)
        self.last_stats: Optional[np.ndarray] = None
        self.last_stats_step = 0
        self._step_calls = 0
        self._report(0.0)
        self._checked: Dict[int, tuple] = {}  # id(group) -> its values when last validated
        self._slots: List[_Slot] = []
        self._slot_of: Dict[int, int] = {}  # id(FlatBuffer) -> slot index
        self._where: Dict[int, Tuple[int, int]] = {}  # id(tensor) -> (slot, index in its buffer)
        self._registered: List[tuple] = []  # per group: (group dict, its params list, the tensors registered)
        self._edits_seen = _param_list_edits[0]
        self._lazy = params is None
        if params is not None:
            if not (isinstance(params, (Tensor, dict, str, bytes)) or hasattr(params, "parameters")):
                try:
                    params = list(params)  # any iterable, generators included (once)
                except TypeError:
                    pass
            if isinstance(params, dict):
                params = [params]  # one group given as a dict
            groups = params if isinstance(params, list) else None
            if groups and all(isinstance(g, dict) for g in groups):
                for g in groups:
                    self.add_param_group(g)
            else:
                tensors = collect_parameters(params, op)
                if not tensors:
                    raise ValueError(f"{op}: got an empty parameter list")
                self.add_param_group({"params": tensors})
            if not self.params:
                raise ValueError(f"{op}: got an empty parameter list")

    # ------------------------------------------------------------------ hooks for subclasses
    def _check_hyper(self, group: dict, op: str) -> None:
        """Validate (and normalise in place) the hyper-parameters ``_hyper_names`` of ``group``."""
        raise NotImplementedError

    def _state_spec(self, group: dict) -> List[Tuple[str, float]]:
        """(name, initial value) of every flat state buffer a group with these values uses."""
        raise NotImplementedError

    def _kernel(self, call: _Call, lr: float, clip: dict) -> Tuple[float, int]:
        """Run the fused C++ step on ``call``'s run with ``call.group``'s hyper-parameters;
        ``clip``: the kernel's clipping keywords and ``stats`` (passed through as they are);
        returns (pre_clip_norm, bad_tensor)."""
        raise NotImplementedError

    # The compiled training step (gradcore.compiled) runs an optimizer's kernel inside its C++
    # plan when the class names the plan's kind for it and gives these two: the kernel's
    # hyper-parameters as one tuple (which ``_kernel`` reads too, so the two paths cannot
    # drift) and the state arrays in the plan's order.
    _plan_kind: Optional[str] = None

    def _hyper(self, group: dict, lr: float, t: int) -> tuple:
        """The kernel's hyper-parameters (csrc/optim.h's struct, in order, as floats) for an
        update of ``group``'s parameters updated ``t`` times before, at rate ``lr``."""
        raise NotImplementedError

    def _plan_states(self, slot: _Slot, group: dict) -> tuple:
        """The state arrays (whole-buffer layout) the plan's kernel of ``_plan_kind`` takes."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hyper-parameters
    def _check_group(self, group: dict, op: str) -> None:
        self._check_hyper(group, op)
        for key in GROUP_CLIP_KEYS:
            group[key] = _checks.positive_or_none(op, key, group.get(key))

    @staticmethod
    def _check_lr(value, op: str):
        if isinstance(value, dict) and "schedule" in value:
            value = schedules.from_config(value)
        if isinstance(value, Schedule) or callable(value):
            return as_schedule(value, op)
        return _checks.real(op, "lr", value, low=0.0)

    def __getattr__(self, name):
        # only called when normal lookup fails: a hyper-parameter reads the first group's
        # value (the constructor's before any group exists)
        defaults = self.__dict__.get("defaults")
        if defaults is not None and name in defaults:
            groups = self.__dict__.get("param_groups")
            return groups[0][name] if groups else defaults[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        defaults = self.__dict__.get("defaults")
        if defaults is not None and name in defaults:
            # opt.weight_decay = x: the new default, applied to every group (validated first)
            op = type(self).__name__
            trial = dict(defaults, **{name: value})
            if name == "lr":
                trial["lr"] = self._check_lr(value, op)
            else:
                self._check_group(trial, op)
            defaults[name] = trial[name]
            for g in self.param_groups:
                g[name] = trial[name]
            return
        object.__setattr__(self, name, value)

    # copy.deepcopy and pickle go through these two (the slots' buffers through
    # FlatBuffer's): the maps keyed by id() describe the original's objects and are made
    # again, and the copy (or the loaded optimizer) holds the buffers it steps, as in
    # PyTorch's copy.deepcopy((model, optimizer)), in either order or in a checkpoint dict.
    _KEYED_BY_ID = ("_slot_of", "_where", "_checked")

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in self._KEYED_BY_ID:
            state[key] = {}  # (_checked: the groups are validated again at the next step)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for si, s in enumerate(self._slots):
            flat = s.flat
            if any(p.__dict__.get("_flat", flat) is not flat for p in flat.params):
                raise RuntimeError(
                    f"deepcopy: a module copied before this {type(self).__name__} in the same copy took its "
                    "parameters out of the network's buffer (a sub-module copied alone); copy the whole network "
                    "with its optimizer, e.g. copy.deepcopy((net, optimizer))")
            flat.__dict__.setdefault("optimizers", weakref.WeakSet()).add(self)
            self._slot_of[id(flat)] = si
            for i in s.members:
                self._where[id(flat.params[i])] = (si, i)

    @property
    def schedule(self) -> Optional[Schedule]:
        """The first group's learning-rate schedule, or None for a constant rate."""
        lr = self.param_groups[0]["lr"] if self.param_groups else self.defaults["lr"]
        return lr if isinstance(lr, Schedule) else None

    def lr_at(self, t: int, group: Optional[dict] = None) -> float:
        """Learning rate of ``group``'s (default: the first group's) update with index ``t``
        (0 for a parameter's first update)."""
        if group is None:
            group = self.param_groups[0] if self.param_groups else self.defaults
        lr = group["lr"]
        if type(lr) is float and 0.0 <= lr < math.inf:
            return lr  # a constant rate (the common case, every step): the checks below pass it unchanged
        if isinstance(lr, Schedule):
            lr = float(lr(int(t)))
            if not (lr >= 0 and math.isfinite(lr)):
                raise ValueError(f"{type(self).__name__}: the learning-rate schedule gave {lr} at step {t}")
            return lr
        if not isinstance(lr, (int, float, np.floating, np.integer)) or isinstance(lr, bool):
            group["lr"] = lr = self._check_lr(lr, type(self).__name__)  # set through param_groups
            return self.lr_at(t, group)
        lr = float(lr)
        if not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"{type(self).__name__}: lr must be a finite number >= 0, got {lr}")
        return lr

    @property
    def current_lr(self) -> float:
        """The rate the next ``step()`` will use (the first group's)."""
        groups = self.param_groups
        if groups:
            lr = groups[0]["lr"]
            if type(lr) is float and 0.0 <= lr < math.inf:
                return lr  # a constant rate: what lr_at returns for any step count (read every step)
        return self.lr_at(self.iterations)

    @property
    def iterations(self) -> int:
        """Updates applied so far (the largest count over the parameters)."""
        most = 0
        for s in self._slots:  # read every step (current_lr): lists, not NumPy fancy indexing
            steps = s.steps.tolist()
            if len(s.members) == len(steps):
                if steps:
                    most = max(most, max(steps))
            elif s.members:
                most = max(most, max(steps[i] for i in s.members))
        return most

    # ------------------------------------------------------------------ parameters
    @property
    def params(self) -> List[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def record_stats(self):
        """False (default), True (every column of ``last_stats``) or "grad" (the gradient
        columns only): the statistics each step reports (see the module docstring)."""
        return self._record_stats

    @record_stats.setter
    def record_stats(self, value) -> None:
        if not (value is True or value is False or value == "grad"):
            raise ValueError(f"{type(self).__name__}.record_stats must be False, True or 'grad', got {value!r}")
        self._record_stats = value

    @property
    def stats_params(self) -> List[Tensor]:
        """The tensors the rows of ``last_stats`` describe: the managed tensors buffer by
        buffer (in the order the optimizer met the buffers), each buffer's in its layout
        order. For one group over a network's ``parameters()`` this is ``params``; with
        several groups the rows follow the buffer, not the groups."""
        return [s.flat.params[i] for s in self._slots for i in s.members]

    @property
    def flat_buffers(self) -> List[FlatBuffer]:
        return [s.flat for s in self._slots]

    def add_param_group(self, param_group: dict) -> None:
        """Add a group, like torch's: ``{"params": tensors or a layer, "lr": ..., ...}``; keys
        left out take the constructor's values. A tensor may belong to one group only."""
        op = f"{type(self).__name__}.add_param_group"
        if not isinstance(param_group, dict):
            raise TypeError(f"{op}: a parameter group must be a dict with a 'params' key, got "
                            f"{type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{op}: the group has no 'params' key (got keys {sorted(param_group)})")
        allowed = {"params", "lr", *self._hyper_names, *GROUP_CLIP_KEYS}
        for key in param_group:
            if key in OPTIMIZER_KEYS:
                raise ValueError(f"{op}: {key!r} is a setting of the whole optimizer, not of one group; "
                                 f"pass it to {type(self).__name__}(...)")
            if key not in allowed:
                raise ValueError(f"{op}: unknown key {key!r} in a parameter group; known: {sorted(allowed)}")
        tensors = collect_parameters(param_group["params"], op)
        if any(id(t) in self._where for t in tensors):
            raise ValueError(f"{op}: some parameters appear in more than one parameter group")
        group = {k: v for k, v in self.defaults.items()}
        group.update({k: v for k, v in param_group.items() if k != "params"})
        group["lr"] = self._check_lr(group["lr"], op)
        self._check_group(group, op)
        located = self._locate(tensors)
        self.param_groups.append({"params": tensors, **group})
        self._register(located, tensors, len(self.param_groups) - 1)

    def _locate(self, tensors: Sequence[Tensor]) -> List[Tuple[FlatBuffer, int]]:
        """(buffer, index) of each tensor: the buffer it lives in, or a one-tensor buffer over
        a loose tensor's own array. Checked before the optimizer changes anything."""
        op = type(self).__name__
        out = []
        for t in tensors:
            flat = t._flat
            i = flat.index(t) if flat is not None else -1
            if i < 0:
                flat, i = FlatBuffer.wrap(t, op), 0
            elif not _same_region(t.data, flat.view(flat.data, i)) and t.size:
                raise RuntimeError(f"{op}: a parameter of shape {t.shape} no longer views its flat buffer; assign "
                                   "into it with p.data[...] = value instead of replacing p.data")
            out.append((flat, i))
        return out

    def _register(self, located: Sequence[Tuple[FlatBuffer, int]], tensors: Sequence[Tensor], gi: int) -> None:
        """Manage ``tensors`` (found by ``_locate``) in group ``gi``. Nothing is copied or moved."""
        by_slot: Dict[int, List[int]] = {}
        for t, (flat, i) in zip(tensors, located):
            si = self._slot_of.get(id(flat))
            if si is None:
                si = self._slot_of[id(flat)] = len(self._slots)
                self._slots.append(_Slot(flat))
                flat.optimizers.add(self)
            self._where[id(t)] = (si, i)
            by_slot.setdefault(si, []).append(i)
        spec = self._state_spec(self.param_groups[gi])
        for si, idx in by_slot.items():
            self._slots[si].add(idx, gi, spec)
        self._note_groups()

    def _note_groups(self) -> None:
        """Remember ``param_groups`` as registered (what ``_check_groups`` compares with)."""
        for g in self.param_groups:
            if type(g["params"]) is not _ParamList:
                g["params"] = _ParamList(g["params"])
        self._registered = [(g, g["params"], tuple(g["params"])) for g in self.param_groups]
        self._edits_seen = _param_list_edits[0]

    def _check_groups(self, op: str) -> None:
        """Before a step: ``param_groups`` still lists, group by group, exactly the tensors
        registered (by ``add_param_group`` or the constructor). The optimizer steps those,
        so a group removed or replaced, or a ``"params"`` list edited in place, is refused
        here, before anything is written (torch would step the edited lists)."""
        groups, reg = self.param_groups, self._registered
        if _param_list_edits[0] == self._edits_seen and len(groups) == len(reg):
            for g, r in zip(groups, reg):
                if g is not r[0] or g["params"] is not r[1]:
                    break
            else:
                return
        if len(groups) != len(reg) or any(g is not r[0] for g, r in zip(groups, reg)):
            raise ValueError(f"{op}: param_groups changed after the groups were added ({len(reg)} registered, "
                             f"{len(groups)} listed now, or a group replaced); this optimizer steps the groups it "
                             "registered: add groups with add_param_group, or make a new optimizer")
        for i, (g, r) in enumerate(zip(groups, reg)):
            now = g["params"]
            if not isinstance(now, list) or len(now) != len(r[2]) or any(a is not b for a, b in zip(now, r[2])):
                got = len(now) if isinstance(now, list) else type(now).__name__
                raise ValueError(f"{op}: param_groups[{i}]['params'] was changed in place ({len(r[2])} tensor(s) "
                                 f"registered, {got} now); this optimizer steps the tensors registered when the "
                                 "group was added: add tensors with add_param_group, or make a new optimizer")
        self._note_groups()  # the same tensors (e.g. an equal list assigned): nothing to refuse

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients, like torch.optim.Optimizer.zero_grad: ``set_to_none=True``
        (torch's default) makes every ``.grad`` None (the parameter is then skipped until a
        backward gives it a gradient again, written into the flat buffer); ``False`` zeroes
        the existing gradients in place."""
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.fill(0)

    # ------------------------------------------------------------------ stepping
    def step(self, closure=None):
        """Clip and update every parameter that has a gradient, like torch's ``step``.

        ``closure``: an optional callable that re-evaluates the model and returns the loss;
        it is called (with gradients enabled) before the update and its result is returned
        (None without a closure). The pre-clip global norm is ``last_grad_norm``.
        """
        op = f"{type(self).__name__}.step"
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        if not self._slots:
            raise RuntimeError(f"{op}: no parameters registered (pass params, or call update_params(layer))")
        calls = []
        for s in self._slots:
            calls += self._calls(s, s.ready(s.members, self._describe))
        self._apply(calls, op)
        return loss

    def update_params(self, layer) -> float:
        """Clip and update only the parameters of ``layer`` (anything with ``.parameters()``,
        a Tensor or a list of them) that have a gradient. Global clipping treats them as the
        whole set. Returns their pre-clip norm (also ``last_grad_norm``)."""
        op = f"{type(self).__name__}.update_params"
        tensors = collect_parameters(layer, op)
        if not tensors:
            return 0.0
        missing = [t for t in tensors if id(t) not in self._where]
        if missing:
            if not self._lazy:
                raise ValueError(
                    f"{op}: {len(missing)} parameter(s) (first of shape {missing[0].shape}) are not managed by "
                    "this optimizer; create it with params=None to register layers lazily"
                )
            if not self.param_groups:
                self.add_param_group({"params": missing})
            else:
                located = self._locate(missing)
                self.param_groups[0]["params"].extend(missing)
                self._register(located, missing, 0)
        by_slot: Dict[int, List[int]] = {}
        for t in tensors:
            si, i = self._where[id(t)]
            by_slot.setdefault(si, []).append(i)
        calls = []
        for si in sorted(by_slot):
            s = self._slots[si]
            calls += self._calls(s, s.ready(sorted(set(by_slot[si])), self._describe))
        return self._apply(calls, op)

    def _calls(self, slot: _Slot, ready: List[int]) -> List[_Call]:
        """Kernel calls over ``ready`` tensors: runs of consecutive ones sharing group and step."""
        calls = []
        if not ready:
            return calls
        lo, hi = ready[0], ready[-1] + 1
        if hi - lo == len(ready) and len(self.param_groups) == 1:
            # the common case: one group, every tensor of a stretch ready, the same step count
            steps = slot.steps[lo:hi].tolist()
            if steps.count(steps[0]) == len(steps):
                return [_Call(slot, slot.run(lo, hi), steps[0], self.param_groups[0])]
        # ready is sorted: all of it consecutive (every tensor has a gradient) is the common case
        runs = [(ready[0], ready[-1] + 1)] if ready[-1] - ready[0] + 1 == len(ready) else consecutive_runs(ready)
        for lo, hi in runs:
            for a, b in ([(lo, hi)] if len(self.param_groups) == 1 else split_by_value(slot.group, lo, hi)):
                group = self.param_groups[int(slot.group[a])]
                for c, d in split_by_value(slot.steps, a, b):
                    calls.append(_Call(slot, slot.run(c, d), int(slot.steps[c]), group))
        return calls

    def _report(self, norm: float, coef: float = 1.0, skipped: bool = False, bad: Optional[Tensor] = None) -> None:
        """Set the step attributes of shared contract 3 (straight into __dict__, past the
        validating __setattr__: this runs every step; four stores cost less than building
        the keywords of one dict.update)."""
        d = self.__dict__
        d["last_grad_norm"] = float(norm)
        d["last_clip_coef"] = float(coef)
        d["last_skipped"] = skipped
        d["last_nonfinite_param"] = bad

    def _validate_groups(self, calls: List[_Call], op: str) -> None:
        """Check the groups' values again when one was changed through ``param_groups[i][key]``
        (by identity with the values last checked, in the dict's order, so an unchanged group
        costs one C-level pass over its values)."""
        for g in {id(c.group): c.group for c in calls}.values():
            seen = self._checked.get(id(g))
            if seen is None or len(seen) != len(g) or not all(map(operator.is_, seen, g.values())):
                self._check_group(g, op)
                self._checked[id(g)] = tuple(g.values())

    def _apply(self, calls: List[_Call], op: str) -> float:
        self._check_groups(op)
        n = self.__dict__["_step_calls"] = self._step_calls + 1
        if self.record_stats:
            width = len(STATS_COLUMNS) + (1 if self._record_before else 0)
            for s in self._slots:
                if s.stats is None or s.stats.shape[1] != width or getattr(s, "stats_call", None) is None:
                    s.stats = np.full((len(s.flat), width), np.nan)
                    s.stats_call = np.zeros(len(s.flat), dtype=np.int64)
                    s.stats_whole = 0
            # every path below writes the rows of every call (the gradient columns at least):
            # the other columns of those rows start as NaN (not measured in this mode)
            for c in calls:
                c.stats.fill(np.nan)
                if c.run.whole:
                    c.slot.stats_call.fill(n)
                    c.slot.stats_whole = n
                else:
                    c.slot.stats_call[c.run.lo:c.run.hi] = n
        if not calls:
            self._report(0.0)  # no parameter has a gradient: nothing to do, as in torch
            self._publish_stats()
            return 0.0
        self._validate_groups(calls, op)
        lrs = [self.lr_at(c.t, c.group) for c in calls]
        noise = self.grad_noise
        rng_state = noise.rng.bit_generator.state if noise is not None else None
        if noise is not None:
            for c in calls:
                c.noise = c.view(c.slot.noise_buffer())
                noise.fill(c.noise, c.t)
        gcn = self.global_clip_norm or 0.0
        if len(calls) == 1:
            # The common case: one kernel call computes the norms, checks, clips and updates.
            c = calls[0]
            clip = dict(clip_value=c.group["clip_value"] or 0.0, clip_norm=c.group["clip_norm"] or 0.0,
                        global_clip_norm=gcn, compute_scales=True, **self._stats_keywords(c))
            norm, bad = self._kernel(c, lrs[0], clip)
            if bad >= 0:
                return self._nonfinite(c, bad, norm, rng_state, op)
            coef = 1.0
            if gcn and clip["clip_norm"]:
                _, coef = clip_scales(c.sumsq, np.full(len(c.sumsq), clip["clip_norm"]), gcn)
            elif gcn:
                coef = min(1.0, gcn / (norm + 1e-6))  # no per-tensor clipping: the clipped total is the norm
        else:
            # Several runs (buffers, groups, step counts): one norm pass each, then one decision.
            bads = [_C.grad_sumsq(c.grad, c.run.offsets, c.sumsq, c.noise, c.stats if self.record_stats else None)
                    for c in calls]
            for c, bad in zip(calls, bads):
                if bad >= 0:
                    norm = math.sqrt(sum(float(x.sumsq.sum()) for x in calls))
                    if self.record_stats is True or (self.record_stats and self._record_before):
                        for x in calls:  # nothing is written: the parameters as they are, no update
                            param_sumsq = np.empty(len(x.sumsq))
                            _C.grad_sumsq(x.param, x.run.offsets, param_sumsq)
                            if self.record_stats is True:
                                x.stats[:, 4] = 0.0
                                if self._record_before != WITHOUT_AFTER:
                                    x.stats[:, 3] = param_sumsq
                            if self._record_before:
                                x.stats[:, 5] = param_sumsq
                    return self._nonfinite(c, bad, norm, rng_state, op)
            sumsq = np.concatenate([c.sumsq for c in calls])
            clip_norms = np.concatenate([np.full(len(c.sumsq), c.group["clip_norm"] or 0.0) for c in calls])
            coef = 1.0
            if np.all(clip_norms == clip_norms[0]):
                scales = np.empty_like(sumsq)
                norm = _C.clip_scales(sumsq, scales, float(clip_norms[0]), gcn)
                if gcn and clip_norms[0]:
                    _, coef = clip_scales(sumsq, clip_norms, gcn)
                elif gcn:
                    coef = min(1.0, gcn / (norm + 1e-6))
            else:
                scales, coef = clip_scales(sumsq, clip_norms, gcn)
                norm = math.sqrt(float(sumsq.sum()))
            at = 0
            for c, lr in zip(calls, lrs):
                k = c.run.hi - c.run.lo
                c.scales[...] = scales[at:at + k]
                at += k
                self._kernel(c, lr, dict(clip_value=c.group["clip_value"] or 0.0, compute_scales=False,
                                         **self._stats_keywords(c)))
        for c in calls:
            if c.run.whole:
                c.slot.steps += 1
            else:
                c.slot.steps[c.run.lo:c.run.hi] += 1
            bump_version(c.params)
        self._report(norm, coef)
        self._publish_stats()
        return float(norm)

    # ------------------------------------------------------------------ the compiled step's hooks
    def _fused_call(self, flat: FlatBuffer) -> Tuple[Optional[_Call], str]:
        """The one kernel call ``step()`` makes when every tensor of ``flat`` has a gradient,
        if the compiled step may run that kernel inside its plan: this class's kernel is the
        plan's (``_plan_kind``, the base ``_hyper`` / ``_kernel`` pair not overridden),
        one group and one step count over the whole of ``flat``, no gradient noise, no
        statistics. Otherwise (None, why not), and the compiled step calls ``step()``."""
        cls = type(self)
        self._check_groups(f"{cls.__name__}.step")
        kind = cls._plan_kind
        base = None if kind is None else next(c for c in cls.__mro__ if c.__dict__.get("_plan_kind") == kind)
        if base is None or cls._hyper is not base._hyper or cls._kernel is not base._kernel:
            return None, f"{cls.__name__} has no kernel the plan runs"
        if self.grad_noise is not None:
            return None, "grad_noise draws its noise in Python"
        if self.record_stats:
            return None, "record_stats reports per-tensor statistics of the step"
        if len(self.param_groups) != 1:
            return None, f"{len(self.param_groups)} parameter groups"
        if len(self._slots) != 1 or self._slots[0].flat is not flat:
            return None, "it manages parameters outside the network's flat buffer"
        slot = self._slots[0]
        if len(slot.members) != len(flat):
            return None, "it manages only some of the network's parameters"
        steps = slot.steps.tolist()
        if steps.count(steps[0]) != len(steps):
            return None, "the parameters have different update counts"
        slot.check_data()
        call = _Call(slot, Run(flat.offsets, 0, len(flat)), steps[0], self.param_groups[0])
        self._validate_groups([call], f"{cls.__name__}.step")
        return call, ""

    def _fused_skipped(self, call: _Call, bad: int, norm: float) -> float:
        """The bookkeeping of a step the compiled plan skipped for a non-finite gradient in
        tensor ``bad`` of ``call``'s run (the plan wrote nothing): as ``step()`` does it,
        the policy's warning or FloatingPointError included."""
        self.__dict__["_step_calls"] += 1
        return self._nonfinite(call, bad, norm, None, f"{type(self).__name__}.step")

    @staticmethod
    def _clip_tail(clip: dict, noise) -> tuple:
        """The kernels' trailing arguments from ``clip`` (what ``_kernel`` is given), in the
        order every ``*_step`` binding takes them: clip_value, clip_norm, global_clip_norm,
        noise, compute_scales, stats, stats_updates (passed positionally: pybind11 matches
        keywords one at a time, ~2 us a call for all of them)."""
        get = clip.get
        return (get("clip_value", 0.0), get("clip_norm", 0.0), get("global_clip_norm", 0.0), noise,
                get("compute_scales", True), get("stats"), get("stats_updates", True))

    def _stats_keywords(self, call: _Call) -> dict:
        """The kernel keywords of the statistics: the rows a call writes (None: off) and
        whether the update pass measures the parameters too."""
        if not self.record_stats:
            return {"stats": None}
        if self.record_stats is not True:
            return {"stats": call.stats, "stats_updates": 0}
        return {"stats": call.stats, "stats_updates": 2 if self._record_before == WITHOUT_AFTER else 1}

    def _publish_stats(self) -> None:
        """``last_stats`` from the slots' rows this step call wrote (NaN rows: tensors it did
        not update), in ``stats_params`` order, the five ``STATS_COLUMNS`` (a copy: the next
        step writes the slots again)."""
        if not self.record_stats:
            return
        n = self._step_calls
        slots = self._slots
        if len(slots) == 1 and slots[0].stats_whole == n:  # the common case: one call over the whole buffer
            S = slots[0].stats
            self.last_stats = (S if S.shape[1] == len(STATS_COLUMNS) else S[:, :len(STATS_COLUMNS)]).copy()
        else:
            self.last_stats = self._rows(lambda s: s.stats_whole == n, lambda s: s.stats_call == n,
                                         len(STATS_COLUMNS))
        self.last_stats_step = n

    def _rows(self, whole, fresh, width: Optional[int] = None) -> np.ndarray:
        """The slots' statistics rows in ``stats_params`` order (the first ``width`` columns),
        NaN where ``fresh(slot)`` (a mask per tensor) is False; ``whole(slot)``: every row is
        fresh. Always a new array."""
        rows = []
        for s in self._slots:
            S = s.stats if width is None or s.stats.shape[1] == width else s.stats[:, :width]
            if not whole(s):
                S = np.where(fresh(s)[:, None], S, np.nan)
            elif len(s.members) == len(s.flat):
                S = np.array(S)  # (a C-contiguous copy)
            rows.append(S if len(s.members) == len(s.flat) else S[s.members])
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def _stats_since(self, calls: int) -> Optional[np.ndarray]:
        """Per tensor of ``stats_params``, the statistics row (six columns with
        ``_record_before``) of its last update by a step call after call number ``calls``
        (``_step_calls`` then), NaN rows for tensors no such call updated; None when no call
        with statistics ran since."""
        if not self._slots or any(getattr(s, "stats_call", None) is None for s in self._slots):
            return None
        if not any((s.stats_call > calls).any() for s in self._slots):
            return None
        return self._rows(lambda s: s.stats_whole > calls, lambda s: s.stats_call > calls)

    def _stats_before_since(self, calls: int) -> Optional[Tuple[np.ndarray, Optional[np.ndarray]]]:
        """``_stats_since(calls)`` as (its five ``STATS_COLUMNS``, C-contiguous; its column
        before the update, None when the steps did not measure it), or None (no call since).
        The common case, one call since over every tensor of one buffer, reads ``last_stats``
        (a GradientMonitor calls this once per recorded step)."""
        n = self._step_calls
        cols = len(STATS_COLUMNS)
        if n == calls + 1 and self.last_stats_step == n and len(self._slots) == 1:
            s = self._slots[0]
            if s.stats_whole == n:
                return self.last_stats, (s.stats[:, cols].copy() if s.stats.shape[1] > cols else None)
        S = self._stats_since(calls)
        if S is None:
            return None
        return np.ascontiguousarray(S[:, :cols]), (S[:, cols] if S.shape[1] > cols else None)

    def _describe(self, p: Tensor) -> str:
        """'Adam: parameter 2 (shape (4,), float32)': ``p`` by its index in ``params``."""
        i = next((n for n, q in enumerate(self.params) if q is p), "?")
        return f"{type(self).__name__}: parameter {i} (shape {tuple(p.shape)}, {p.dtype})"

    def _nonfinite(self, call: _Call, bad: int, norm: float, rng_state, op: str) -> float:
        if self.grad_noise is not None:
            self.grad_noise.rng.bit_generator.state = rng_state  # a skipped step draws nothing
        self.skipped_steps += 1
        p = call.slot.flat.params[call.run.lo + int(bad)]
        i = next(n for n, q in enumerate(self.params) if q is p)
        self._report(norm, skipped=True, bad=p)
        self._publish_stats()
        msg = (f"{op}: non-finite gradient (NaN or Inf) in parameter {i} of shape {p.shape} ({p.dtype}); "
               f"global gradient norm {norm}; the step was skipped (skipped_steps={self.skipped_steps})")
        if self.nonfinite == "raise":
            raise FloatingPointError(msg)
        if self.nonfinite == "warn":
            _warnings.warn(msg, RuntimeWarning)
        return float(norm)

    def last_grad_norms(self) -> List[float]:
        """Pre-clip norm of each parameter's gradient at its last update (``params`` order)."""
        out = []
        for p in self.params:
            si, i = self._where[id(p)]
            out.append(math.sqrt(float(self._slots[si].sumsq[i])))
        return out

    # ------------------------------------------------------------------ checkpoints
    def get_config(self) -> dict:
        """Constructor keywords as plain values: ``optim.from_config(name, config, params)``
        rebuilds an equal optimizer with one group (``load_state_dict`` restores the groups;
        a schedule is described by ``schedules.to_config``)."""
        noise = self.grad_noise
        lr = self.defaults["lr"]
        return {
            "lr": schedules.to_config(lr) if isinstance(lr, Schedule) else lr,
            **{name: self.defaults[name] for name in self._hyper_names},
            "clip_value": self.defaults["clip_value"],
            "clip_norm": self.defaults["clip_norm"],
            "global_clip_norm": self.global_clip_norm,
            "nonfinite": self.nonfinite,
            "grad_noise": None if noise is None else {"std": noise.std, "decay": noise.decay, "seed": noise.seed},
        }

    def state_dict(self) -> dict:
        """A copy of everything a resumed run needs: the groups (hyper-parameters and the
        indices of their parameters in ``params`` order), step counts and every state."""
        index = {id(p): n for n, p in enumerate(self.params)}
        groups = []
        for g in self.param_groups:
            sched = g["lr"] if isinstance(g["lr"], Schedule) else None
            groups.append({
                **{k: g[k] for k in (*self._hyper_names, *GROUP_CLIP_KEYS)},
                "lr": None if sched is not None else g["lr"],
                "lr_schedule": sched.state_dict() if sched is not None else None,
                "params": [index[id(p)] for p in g["params"]],
            })
        return {
            "optimizer": type(self).__name__,
            "param_groups": groups,
            "global_clip_norm": self.global_clip_norm,
            "nonfinite": self.nonfinite,
            "skipped_steps": self.skipped_steps,
            "grad_noise": self.grad_noise.state_dict() if self.grad_noise is not None else None,
            "buffers": [
                {"dtype": str(s.flat.dtype), "offsets": s.flat.offsets.copy(), "managed": (s.group >= 0).copy(),
                 "steps": s.steps.copy(), "state": {name: arr.copy() for name, arr in s.state.items()}}
                for s in self._slots
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` (bit-exact) into an optimizer over the same parameters.

        The saved groups must match this optimizer's groups in number and sizes; an optimizer
        with a single group over the same parameters (what ``gradcore.load`` builds) is split
        into the saved groups. Everything is checked before anything is written.
        """
        op = f"{type(self).__name__}.load_state_dict"
        if state.get("optimizer") != type(self).__name__:
            raise ValueError(f"{op}: the state was saved by {state.get('optimizer')!r}, not {type(self).__name__}")
        params = self.params
        if "param_groups" not in state:
            state = self._upgrade(state, len(params))
        check_state_values(state, ValueError, op, self._state_element)
        saved_groups = state["param_groups"]
        sizes = [len(g["params"]) for g in saved_groups]
        mine = [len(g["params"]) for g in self.param_groups]
        regroup = len(saved_groups) != len(self.param_groups)
        if regroup and not (len(self.param_groups) == 1 and sum(sizes) == len(params)):
            raise ValueError(f"{op}: the state has {len(saved_groups)} parameter group(s) of sizes {sizes}, this "
                             f"optimizer {len(self.param_groups)} of sizes {mine}")
        if not regroup and sizes != mine:
            raise ValueError(f"{op}: the saved parameter groups have sizes {sizes}, this optimizer's {mine}")
        if sorted(i for g in saved_groups for i in g["params"]) != list(range(len(params))):
            raise ValueError(f"{op}: the saved groups do not index the parameters 0..{len(params) - 1} once each")
        new_groups = []
        for g in saved_groups:
            group = {"params": [params[int(i)] for i in g["params"]]}
            for key in (*self._hyper_names, *GROUP_CLIP_KEYS):
                group[key] = g[key]
            group["lr"] = self._check_lr(g["lr"], op) if g.get("lr") is not None else self.defaults["lr"]
            self._check_group(group, op)
            new_groups.append((group, g.get("lr_schedule")))
        # the slots as the saved groups lay them out, then the saved arrays against them
        buffers = state["buffers"]
        if len(buffers) != len(self._slots):
            raise ValueError(f"{op}: the state has {len(buffers)} flat buffer(s), this optimizer {len(self._slots)}")
        where_group = {}
        for gi, (group, _) in enumerate(new_groups):
            for p in group["params"]:
                where_group[id(p)] = gi
        slot_groups = []
        for s in self._slots:
            groups = np.full(len(s.flat), -1, dtype=np.int64)
            for i, p in enumerate(s.flat.params):
                if s.group[i] >= 0:
                    groups[i] = where_group[id(p)]
            slot_groups.append(groups)
        for n, (b, s) in enumerate(zip(buffers, self._slots)):
            diff = _layout_difference(b, s)
            if diff:
                raise ValueError(f"{op}: buffer {n} layout differs: {diff}")
            steps = np.asarray(b["steps"])
            if steps.shape != s.steps.shape:
                raise ValueError(f"{op}: buffer {n} has {steps.shape} step counts, expected {s.steps.shape}")
            if steps.dtype.kind not in "iu" and not (steps.dtype.kind == "f" and np.all(steps == np.round(steps))):
                raise ValueError(f"{op}: the step counts of buffer {n} must be integers, got {steps.dtype} {steps}")
            need = {name for gi in set(slot_groups[n][slot_groups[n] >= 0].tolist())
                    for name, _ in self._state_spec(new_groups[gi][0])}
            if not need <= set(b["state"]):
                raise ValueError(f"{op}: buffer {n} holds states {sorted(b['state'])}, this optimizer needs "
                                 f"{sorted(need)} (were amsgrad / momentum / centered the same?)")
            for name, arr in b["state"].items():
                arr = np.asarray(arr)
                if arr.shape != (s.size,) or arr.dtype != s.flat.dtype:
                    raise ValueError(f"{op}: state {name!r} of buffer {n} has shape {arr.shape} {arr.dtype}, "
                                     f"expected {(s.size,)} {s.flat.dtype}")
        # the optimizer-wide settings, and the schedules' and noise's states on copies
        global_clip_norm = _checks.positive_or_none(op, "global_clip_norm", state.get("global_clip_norm"))
        nonfinite = _checks.choice(op, "nonfinite", state.get("nonfinite", self.nonfinite), NONFINITE_POLICIES)
        skipped = state.get("skipped_steps", 0)
        if isinstance(skipped, bool) or not float(skipped).is_integer():
            raise ValueError(f"{op}: skipped_steps must be an integer >= 0, got {skipped!r}")
        noise = None
        if state.get("grad_noise") is not None:
            noise = copy.deepcopy(self.grad_noise) if self.grad_noise is not None else GradNoise(0.0, seed=0)
            try:
                noise.load_state_dict(state["grad_noise"])
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"{op}: invalid grad_noise state ({type(exc).__name__}: {exc})") from None
            _checks.real(op, "grad_noise std", noise.std, low=0.0)
            _checks.real(op, "grad_noise decay", noise.decay, low=0.0)
        for group, sched_state in new_groups:
            if sched_state is not None and isinstance(group["lr"], Schedule):
                try:
                    copy.deepcopy(group["lr"]).load_state_dict(sched_state)
                except (TypeError, ValueError, KeyError, AttributeError) as exc:
                    raise ValueError(f"{op}: invalid lr_schedule state ({type(exc).__name__}: {exc})") from None
        # everything checked: write
        object.__setattr__(self, "param_groups", [g for g, _ in new_groups])
        for gi, (group, sched_state) in enumerate(new_groups):
            if sched_state is not None and isinstance(group["lr"], Schedule):
                group["lr"].load_state_dict(sched_state)
        for b, s, groups in zip(buffers, self._slots, slot_groups):
            s.group[...] = groups
            np.copyto(s.steps, np.asarray(b["steps"], dtype=np.int64))
            s.state = {}
            for name, arr in b["state"].items():
                np.copyto(s.state_array(name), arr)
        self.global_clip_norm, self.nonfinite, self.skipped_steps = global_clip_norm, nonfinite, int(skipped)
        if noise is not None:
            self.grad_noise = noise
        self._note_groups()  # the groups as loaded (new dicts, the same tensors)

    def _state_element(self, path: Tuple[str, ...], index: int) -> str:
        """Which parameter element ``index`` of the state at ``path`` belongs to, for a
        ``buffers/<n>/state/<name>`` or ``buffers/<n>/steps`` path of this optimizer's layout."""
        if len(path) < 3 or path[0] != "buffers" or not path[1].isdigit() or int(path[1]) >= len(self._slots):
            return ""
        s = self._slots[int(path[1])]
        if path[2] == "steps":
            i = index
        else:
            i = next((j for j in s.members if s.start[j] <= index < s.start[j] + s.flat.params[j].size), None)
        if i is None or i >= len(s.flat):
            return ""
        return self._describe(s.flat.params[i])

    def _upgrade(self, state: dict, n: int) -> dict:
        """A state_dict written before parameter groups in the current form: one group, and
        the old buffers (each over whole tensors, dtype buffers in ``str(dtype)`` order)
        cut per tensor and laid out again over this optimizer's buffers."""
        op = f"{type(self).__name__}.load_state_dict"
        clip = state.get("clip", {})
        group = dict(state.get("hyperparameters", {}), lr=state.get("lr"), lr_schedule=state.get("lr_schedule"),
                     clip_value=clip.get("clip_value"), clip_norm=clip.get("clip_norm"), params=list(range(n)))
        for key in self._hyper_names:
            group.setdefault(key, self.defaults[key])
        per_tensor = []  # (steps, {name: flat slice}) in the old optimizer's parameter order
        for b in state.get("buffers", []):
            off = np.asarray(b["offsets"])
            for i in range(len(off) - 1):
                per_tensor.append((int(np.asarray(b["steps"])[i]),
                                   {k: np.asarray(v)[off[i]:off[i + 1]] for k, v in b["state"].items()}))
        order = sorted(self.params, key=lambda p: str(p.dtype))  # the old layout's order (stable within a dtype)
        if len(per_tensor) != len(order):
            raise ValueError(f"{op}: the state holds {len(per_tensor)} tensors, this optimizer {len(order)}")
        saved = {id(p): t for p, t in zip(order, per_tensor)}
        buffers = []
        for s in self._slots:
            steps = np.zeros(len(s.flat), dtype=np.int64)
            names = {k for i in s.members for k in saved[id(s.flat.params[i])][1]}
            arrays = {k: np.zeros(s.size, dtype=s.flat.dtype) for k in names}
            for i in s.members:
                st, parts = saved[id(s.flat.params[i])]
                steps[i] = st
                for k, part in parts.items():
                    if part.size != s.flat.params[i].size:
                        raise ValueError(f"{op}: saved state {k!r} of a tensor has {part.size} values, the "
                                         f"parameter {s.flat.params[i].size}")
                    arrays[k][s.start[i]:s.start[i] + part.size] = part
            buffers.append({"dtype": str(s.flat.dtype), "offsets": s.flat.offsets.copy(), "managed": s.group >= 0,
                            "steps": steps, "state": arrays})
        return dict(state, param_groups=[group], global_clip_norm=clip.get("global_clip_norm"), buffers=buffers)

    def __repr__(self):
        hyper = ", ".join(f"{n}={self.defaults[n]!r}" for n in self._hyper_names)
        n = sum(p.size for p in self.params)
        groups = f", groups={len(self.param_groups)}" if len(self.param_groups) > 1 else ""
        return f"{type(self).__name__}(lr={self.defaults['lr']!r}, {hyper}, params={n}{groups})"
