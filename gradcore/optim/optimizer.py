"""The Optimizer base class: flat buffers, clipping, non-finite policy, gradient noise.

Each optimizer keeps its parameters in FlatBuffers (one contiguous array per dtype, see
``gradcore.flat``) and every state (moments, v_max, momentum...) in flat arrays of the same
layout, so a step is one call into C++ per buffer: a pass for the per-tensor norms and the
non-finite check, then one fused pass that clips and updates.

Clipping, all applied inside that pass to (gradient + noise), in this order:
  * ``clip_norm``: each tensor scaled by clip_norm / max(norm_i, clip_norm) (Keras clipnorm);
  * ``global_clip_norm``: all scaled by min(1, max_norm / (total + 1e-6)), total being the norm
    of the per-tensor norms after the step above (torch.nn.utils.clip_grad_norm_);
  * ``clip_value``: each element clamped to [-clip_value, clip_value].
Weight decay is added after clipping. ``step()`` returns the pre-clip global norm.

A gradient holding NaN or Inf never reaches the parameters: the step is not applied, the
parameters and the optimizer state stay bit-identical, ``skipped_steps`` grows by one, and
``nonfinite`` decides what else happens ('skip': nothing, 'warn': a RuntimeWarning,
'raise': FloatingPointError).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _C
from .. import random as _random
from ..flat import FlatBuffer, flatten_parameters
from ..tensor import Tensor
from . import _checks
from ._params import Run, collect_parameters, consecutive_runs, split_by_value
from . import schedules
from .schedules import Schedule, as_schedule

NONFINITE_POLICIES = ("skip", "raise", "warn")


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


_UNSEEN = object()


def _same_region(a, b: np.ndarray) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous
            and a.ctypes.data == b.ctypes.data)


class _Slot:
    """One FlatBuffer with the optimizer's state for it."""

    def __init__(self, flat: FlatBuffer, state: Dict[str, np.ndarray]):
        k = len(flat)
        self.flat = flat
        self.state = state
        self.steps = np.zeros(k, dtype=np.int64)    # updates applied to each tensor
        self.sumsq = np.zeros(k, dtype=np.float64)  # per-tensor sum of squares of the last gradient
        self.scales = np.ones(k, dtype=np.float64)  # per-tensor clip scales of the last step
        self.noise: Optional[np.ndarray] = None
        self._data_views = self._checked_data()
        self._grad_views = [_UNSEEN] * k
        self.sync()

    def _checked_data(self) -> list:
        """The parameters' data arrays, or a RuntimeError if one left the buffer."""
        flat = self.flat
        for i, p in enumerate(flat.params):
            view = flat.view(flat.data, i)
            if not _same_region(p.data, view) and view.size:
                raise RuntimeError(
                    f"parameter {i} of shape {flat.shapes[i]} no longer views its flat buffer; assign into it "
                    "with p.data[...] = value instead of replacing p.data"
                )
        return [p.data for p in flat.params]

    def sync(self) -> None:
        """Make every parameter's .data / .grad the buffer's views again before a step.

        A gradient array that replaced the view (``p.grad = g``, or a backward after
        ``p.grad = None``) is copied into the buffer; ``p.grad = None`` counts as zero. A
        replaced ``.data`` cannot be honoured and raises RuntimeError.
        """
        stale_data = False
        for i, p in enumerate(self.flat.params):
            g = p.grad
            if g is not self._grad_views[i]:
                view = self.flat.view(self.flat.grad, i)
                if g is None:
                    view.fill(0)
                elif _same_region(g, view):
                    view = g
                else:
                    if np.shape(g) != view.shape:
                        raise ValueError(f"parameter {i} of shape {view.shape} has a gradient of shape {np.shape(g)}")
                    view[...] = g
                p.grad = view
                self._grad_views[i] = view
            stale_data = stale_data or p.data is not self._data_views[i]
        if stale_data:
            self._data_views = self._checked_data()

    def noise_buffer(self) -> np.ndarray:
        if self.noise is None:
            self.noise = np.empty_like(self.flat.data)
        return self.noise


class _Call:
    """One kernel call: a run of tensors of one slot that share their step count."""

    __slots__ = ("slot", "run", "t", "noise")

    def __init__(self, slot: _Slot, run: Run, t: int):
        self.slot, self.run, self.t, self.noise = slot, run, t, None

    def view(self, buffer: Optional[np.ndarray]) -> Optional[np.ndarray]:
        return None if buffer is None else self.run.view(buffer)

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


class Optimizer:
    """Base class of the optimizers over flat parameter buffers.

    ``params``: Tensors, objects with ``.parameters()`` (layers, models) or an iterable of
    either; or None to register parameters lazily through ``update_params(layer)``.
    ``lr``: a float or a schedule (``gradcore.optim.schedules``; any callable ``t -> lr``).
    Common keywords: ``clip_value``, ``clip_norm``, ``global_clip_norm`` (None: off),
    ``nonfinite`` ('skip' | 'raise' | 'warn'), ``grad_noise`` (None, a GradNoise, a std or a
    (std, decay[, seed]) tuple).

    Two ways to use it: ``opt.zero_grad(); loss.backward(); opt.step()`` updates every
    parameter; ``opt.update_params(layer)`` updates one layer's parameters (the
    ``Optimizer_Adam.update_params(layer)`` style). Each parameter counts its own updates,
    which drive the bias corrections, schedules and noise annealing.
    """

    _hyper_names: Tuple[str, ...] = ()

    def __init__(self, params, lr, *, clip_value=None, clip_norm=None, global_clip_norm=None, nonfinite="skip",
                 grad_noise=None):
        op = type(self).__name__
        self.lr = lr
        self.clip_value = _checks.positive_or_none(op, "clip_value", clip_value)
        self.clip_norm = _checks.positive_or_none(op, "clip_norm", clip_norm)
        self.global_clip_norm = _checks.positive_or_none(op, "global_clip_norm", global_clip_norm)
        self.nonfinite = _checks.choice(op, "nonfinite", nonfinite, NONFINITE_POLICIES)
        self.grad_noise = _as_noise(grad_noise, op)
        self.skipped_steps = 0
        self._slots: List[_Slot] = []
        self._where: Dict[int, Tuple[int, int]] = {}  # id(tensor) -> (slot, index in its buffer)
        self._lazy = params is None
        if params is not None:
            tensors = collect_parameters(params, op)
            if not tensors:
                raise ValueError(f"{op}: got an empty parameter list (no tensor with requires_grad=True)")
            for flat in flatten_parameters(tensors):
                self._add_slot(flat)

    # ------------------------------------------------------------------ hooks for subclasses
    def _state_spec(self) -> List[Tuple[str, float]]:
        """(name, initial value) of every flat state buffer."""
        raise NotImplementedError

    def _check_hyper(self) -> None:
        """Validate (and normalise) the hyper-parameters named in ``_hyper_names``."""
        raise NotImplementedError

    def _kernel(self, call: _Call, lr: float, clip: dict) -> Tuple[float, int]:
        """Run the fused C++ step on ``call``'s run; returns (pre_clip_norm, bad_tensor)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ learning rate
    @property
    def lr(self):
        """The learning rate as given: a float or a schedule."""
        return self._lr

    @lr.setter
    def lr(self, value):
        op = type(self).__name__
        if isinstance(value, dict) and "schedule" in value:
            value = schedules.from_config(value)
        if isinstance(value, Schedule) or callable(value):
            self._lr = as_schedule(value, op)
        else:
            self._lr = _checks.real(op, "lr", value, low=0.0)

    @property
    def schedule(self) -> Optional[Schedule]:
        return self._lr if isinstance(self._lr, Schedule) else None

    def lr_at(self, t: int) -> float:
        """Learning rate of the update with index ``t`` (0 for a parameter's first update)."""
        if not isinstance(self._lr, Schedule):
            return self._lr
        lr = float(self._lr(int(t)))
        if not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"{type(self).__name__}: the learning-rate schedule gave {lr} at step {t}")
        return lr

    @property
    def current_lr(self) -> float:
        """The rate the next ``step()`` will use."""
        return self.lr_at(self.iterations)

    @property
    def iterations(self) -> int:
        """Updates applied so far (the largest count over the parameters)."""
        return max((int(s.steps.max()) for s in self._slots if len(s.steps)), default=0)

    # ------------------------------------------------------------------ parameters
    @property
    def params(self) -> List[Tensor]:
        return [p for s in self._slots for p in s.flat.params]

    @property
    def flat_buffers(self) -> List[FlatBuffer]:
        return [s.flat for s in self._slots]

    def _add_slot(self, flat: FlatBuffer) -> None:
        si = len(self._slots)
        for i, p in enumerate(flat.params):
            if id(p) in self._where:
                raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} is registered twice")
            self._where[id(p)] = (si, i)
        state = {name: np.full(flat.size, value, dtype=flat.dtype) for name, value in self._state_spec()}
        self._slots.append(_Slot(flat, state))

    def _register(self, tensors: Sequence[Tensor]) -> None:
        """Adopt the flat buffers ``tensors`` live in (whole), or give loose ones a new buffer."""
        new = [t for t in tensors if id(t) not in self._where]
        adopted, loose = {}, []
        for t in new:
            flat = getattr(t, "_flat", None)
            if flat is not None and any(p is t for p in flat.params):
                adopted[id(flat)] = flat
            else:
                loose.append(t)
        for flat in adopted.values():
            self._add_slot(flat)
        if loose:
            for flat in flatten_parameters(loose):
                self._add_slot(flat)

    def zero_grad(self) -> None:
        """Set every gradient to zero (in place: the gradients are views of flat buffers)."""
        for s in self._slots:
            s.sync()
            s.flat.zero_grad()

    # ------------------------------------------------------------------ stepping
    def step(self) -> float:
        """Clip and update every parameter; returns the pre-clip global gradient norm."""
        op = f"{type(self).__name__}.step"
        if not self._slots:
            raise RuntimeError(f"{op}: no parameters registered (pass params, or call update_params(layer))")
        calls = []
        for s in self._slots:
            s.sync()
            for lo, hi in split_by_value(s.steps, 0, len(s.flat)):
                calls.append(_Call(s, Run(s.flat.offsets, lo, hi), int(s.steps[lo])))
        return self._apply(calls, op)

    def update_params(self, layer) -> float:
        """Clip and update only the parameters of ``layer`` (anything with ``.parameters()``,
        a Tensor or a list of them). Global clipping treats them as the whole set. Returns
        their pre-clip norm."""
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
            self._register(missing)
        by_slot: Dict[int, List[int]] = {}
        for t in tensors:
            si, i = self._where[id(t)]
            by_slot.setdefault(si, []).append(i)
        calls = []
        for si in sorted(by_slot):
            s = self._slots[si]
            s.sync()
            for lo, hi in consecutive_runs(by_slot[si]):
                for a, b in split_by_value(s.steps, lo, hi):
                    calls.append(_Call(s, Run(s.flat.offsets, a, b), int(s.steps[a])))
        return self._apply(calls, op)

    def _clip_kwargs(self) -> dict:
        return {"clip_value": self.clip_value or 0.0, "clip_norm": self.clip_norm or 0.0,
                "global_clip_norm": self.global_clip_norm or 0.0}

    def _apply(self, calls: List[_Call], op: str) -> float:
        noise = self.grad_noise
        rng_state = noise.rng.bit_generator.state if noise is not None else None
        if noise is not None:
            for c in calls:
                c.noise = c.view(c.slot.noise_buffer())
                noise.fill(c.noise, c.t)
        lrs = [self.lr_at(c.t) for c in calls]
        clip = self._clip_kwargs()
        if len(calls) == 1:
            # The common case: one kernel call computes the norms, checks, clips and updates.
            norm, bad = self._kernel(calls[0], lrs[0], dict(clip, compute_scales=True))
            if bad >= 0:
                return self._nonfinite(calls[0], bad, norm, rng_state, op)
        else:
            # Several buffers (dtypes) or step counts: one norm pass each, then one global decision.
            for c in calls:
                bad = _C.grad_sumsq(c.grad, c.run.offsets, c.sumsq, c.noise)
                if bad >= 0:
                    norm = math.sqrt(sum(float(x.sumsq.sum()) for x in calls))
                    return self._nonfinite(c, bad, norm, rng_state, op)
            sumsq = np.concatenate([c.sumsq for c in calls])
            scales = np.empty_like(sumsq)
            norm = _C.clip_scales(sumsq, scales, clip["clip_norm"], clip["global_clip_norm"])
            at = 0
            for c, lr in zip(calls, lrs):
                k = c.run.hi - c.run.lo
                c.scales[...] = scales[at:at + k]
                at += k
                self._kernel(c, lr, dict(clip, compute_scales=False))
        for c in calls:
            c.slot.steps[c.run.lo:c.run.hi] += 1
        return float(norm)

    def _nonfinite(self, call: _Call, bad: int, norm: float, rng_state, op: str) -> float:
        if self.grad_noise is not None:
            self.grad_noise.rng.bit_generator.state = rng_state  # a skipped step draws nothing
        self.skipped_steps += 1
        i = call.run.lo + int(bad)
        p = call.slot.flat.params[i]
        msg = (f"{op}: non-finite gradient (NaN or Inf) in parameter {i} of shape {p.shape} ({p.dtype}); "
               f"global gradient norm {norm}; the step was skipped (skipped_steps={self.skipped_steps})")
        if self.nonfinite == "raise":
            raise FloatingPointError(msg)
        if self.nonfinite == "warn":
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return float(norm)

    def last_grad_norms(self) -> List[float]:
        """Pre-clip norm of each parameter's gradient at its last step (registration order)."""
        return [float(x) for s in self._slots for x in np.sqrt(s.sumsq)]

    # ------------------------------------------------------------------ checkpoints
    def get_config(self) -> dict:
        """Constructor keywords as plain values: ``optim.from_config(name, config, params)``
        rebuilds an equal optimizer (a schedule is described by ``schedules.to_config``)."""
        noise = self.grad_noise
        return {
            "lr": schedules.to_config(self._lr) if isinstance(self._lr, Schedule) else self._lr,
            **{name: getattr(self, name) for name in self._hyper_names},
            "clip_value": self.clip_value,
            "clip_norm": self.clip_norm,
            "global_clip_norm": self.global_clip_norm,
            "nonfinite": self.nonfinite,
            "grad_noise": None if noise is None else {"std": noise.std, "decay": noise.decay, "seed": noise.seed},
        }

    def state_dict(self) -> dict:
        """A copy of everything a resumed run needs: step counts, moments, hyper-parameters."""
        sched = self.schedule
        return {
            "optimizer": type(self).__name__,
            "hyperparameters": {name: getattr(self, name) for name in self._hyper_names},
            "lr": None if sched is not None else self._lr,
            "lr_schedule": sched.state_dict() if sched is not None else None,
            "clip": {"clip_value": self.clip_value, "clip_norm": self.clip_norm,
                     "global_clip_norm": self.global_clip_norm},
            "nonfinite": self.nonfinite,
            "skipped_steps": self.skipped_steps,
            "grad_noise": self.grad_noise.state_dict() if self.grad_noise is not None else None,
            "buffers": [
                {"dtype": str(s.flat.dtype), "offsets": s.flat.offsets.copy(), "steps": s.steps.copy(),
                 "state": {name: arr.copy() for name, arr in s.state.items()}}
                for s in self._slots
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` (bit-exact) into an optimizer over the same parameter layout."""
        op = f"{type(self).__name__}.load_state_dict"
        if state.get("optimizer") != type(self).__name__:
            raise ValueError(f"{op}: the state was saved by {state.get('optimizer')!r}, not {type(self).__name__}")
        buffers = state["buffers"]
        if len(buffers) != len(self._slots):
            raise ValueError(f"{op}: the state has {len(buffers)} flat buffer(s), this optimizer {len(self._slots)}")
        for i, (b, s) in enumerate(zip(buffers, self._slots)):
            if b["dtype"] != str(s.flat.dtype) or not np.array_equal(b["offsets"], s.flat.offsets):
                raise ValueError(f"{op}: buffer {i} layout differs (saved {b['dtype']} with {len(b['offsets']) - 1} "
                                 f"tensors, have {s.flat.dtype} with {len(s.flat)})")
            if set(b["state"]) != set(s.state):
                raise ValueError(f"{op}: buffer {i} holds states {sorted(b['state'])}, this optimizer needs "
                                 f"{sorted(s.state)} (were amsgrad / momentum / centered the same?)")
            for name, arr in b["state"].items():
                arr = np.asarray(arr)
                if arr.shape != s.state[name].shape or arr.dtype != s.state[name].dtype:
                    raise ValueError(f"{op}: state {name!r} of buffer {i} has shape {arr.shape} {arr.dtype}, "
                                     f"expected {s.state[name].shape} {s.state[name].dtype}")
        for b, s in zip(buffers, self._slots):
            np.copyto(s.steps, np.asarray(b["steps"], dtype=np.int64))
            for name, arr in b["state"].items():
                np.copyto(s.state[name], arr)
        for name, value in state.get("hyperparameters", {}).items():
            if name in self._hyper_names:
                setattr(self, name, value)
        self._check_hyper()
        if state.get("lr") is not None:
            self.lr = state["lr"]
        elif state.get("lr_schedule") is not None and self.schedule is not None:
            self.schedule.load_state_dict(state["lr_schedule"])
        clip = state.get("clip", {})
        op0 = type(self).__name__
        for key in ("clip_value", "clip_norm", "global_clip_norm"):
            if key in clip:
                setattr(self, key, _checks.positive_or_none(op0, key, clip[key]))
        self.nonfinite = _checks.choice(op0, "nonfinite", state.get("nonfinite", self.nonfinite), NONFINITE_POLICIES)
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if state.get("grad_noise") is not None:
            if self.grad_noise is None:
                self.grad_noise = GradNoise(0.0, seed=0)
            self.grad_noise.load_state_dict(state["grad_noise"])

    def __repr__(self):
        hyper = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._hyper_names)
        n = sum(s.flat.size for s in self._slots)
        return f"{type(self).__name__}(lr={self._lr!r}, {hyper}, params={n})"
