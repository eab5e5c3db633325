"""Training callbacks. ``fit`` calls them with the network and optimizer attached.

A callback sees ``self.model`` and ``self.optimizer`` (set before ``on_train_begin``; held
weakly, so the History ``fit`` returns keeps neither alive after training; a pickled or
copied callback holds neither until the next ``fit`` sets them) and
gets the logs dict: per batch ``{"batch", "size", "loss", <metrics>, "lr", "grad_norm",
"clip_coef", "skipped"}``, per epoch the epoch means plus ``val_*``, ``lr``,
``grad_norm`` and the ``skipped`` count. Setting ``model.stop_training = True`` ends
training after the current batch. Callbacks run in the order given to ``fit``; the
History it returns runs last, so it records keys the others add to the epoch logs.

Within a batch, the hook points of ``gradcore.training`` run in this order:
``on_batch_begin``, ``on_after_forward``, ``on_after_backward`` (gradients complete,
before clipping and the step; with gradient accumulation only after a group's last
batch), ``on_after_step`` (logs hold ``lr``, ``grad_norm`` before clipping,
``clip_coef``, ``skipped``), ``on_batch_end``.
"""
from __future__ import annotations

import math
import weakref
from typing import Dict, List, Optional

from . import _validate, _warnings


def _weak(obj):
    """A callable returning ``obj`` while it lives (a weak reference), or None."""
    if obj is None:
        return None
    try:
        return weakref.ref(obj)
    except TypeError:  # not weakly referenceable: hold it (an object of the user's)
        return lambda: obj


def _held(name: str) -> property:
    """``self.<name>``: weakly held, so a History or callback that outlives ``fit`` does not
    keep the network or its optimizer alive (``net.optimizer = None`` must release the
    optimizer, e.g. before ``net.astype``)."""
    slot = "_" + name + "_ref"

    def get(self):
        ref = self.__dict__.get(slot)
        return ref() if ref is not None else None

    def set(self, value):
        self.__dict__[slot] = _weak(value)

    return property(get, set, doc=f"The {name} ``fit`` runs with (weakly held; None once it is gone).")


class Callback:
    model = _held("model")
    optimizer = _held("optimizer")

    def set_context(self, model, optimizer) -> None:
        self.model = model
        self.optimizer = optimizer

    def __getstate__(self):
        # pickle / copy.copy / copy.deepcopy: a copy is detached from fit's context (the
        # weak references to the network and optimizer cannot be pickled, and a copy that
        # pointed at the original network would act on it); fit attaches it again
        # (set_context) before on_train_begin, as it does every callback.
        state = self.__dict__.copy()
        state.pop("_model_ref", None)
        state.pop("_optimizer_ref", None)
        return state

    def on_train_begin(self, logs: Optional[Dict] = None) -> None:
        pass

    def on_train_end(self, logs: Optional[Dict] = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: Optional[Dict] = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None) -> None:
        pass

    def on_batch_begin(self, batch: int, logs: Optional[Dict] = None) -> None:
        pass

    def on_batch_end(self, batch: int, logs: Optional[Dict] = None) -> None:
        pass

    def on_after_forward(self, batch: int, logs: Optional[Dict] = None) -> None:
        """The batch's loss and metrics are computed (in logs); backward has not run."""

    def on_after_backward(self, batch: int, logs: Optional[Dict] = None) -> None:
        """The gradients of the coming step are complete; clipping and the step follow."""

    def on_after_step(self, batch: int, logs: Optional[Dict] = None) -> None:
        """The optimizer stepped (or skipped): logs carry lr, grad_norm, clip_coef, skipped."""


class History(Callback):
    """Per-epoch logs: ``history.history["loss"]`` is the list of epoch losses."""

    def __init__(self):
        self.history: Dict[str, List[float]] = {}
        self.epoch: List[int] = []

    def on_train_begin(self, logs=None):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has stopped improving, with Keras 3's rules.

    An epoch improves when its value beats the best so far by more than ``min_delta``
    (``mode`` "min", "max", or "auto": max for names containing "acc", else min). Every
    epoch from ``start_from_epoch`` on adds one to ``wait``; an improving epoch resets it
    to 0 (only if it also beats ``baseline``, when one is given). Training stops at the
    end of a non-improving epoch (not the first) once ``wait >= patience``: with
    patience=2 and losses 1.0, 0.9, 0.95, 0.93 it stops after the fourth epoch.
    ``restore_best_weights`` loads the parameters and buffers of the best epoch when
    training ends, whether this callback stopped it or the epochs ran out (the first
    monitored epoch's if none improved). ``stopped_epoch`` is the index of the epoch it
    stopped at, 0 when it did not stop (as in Keras); ``best_epoch`` that of the best.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                 mode: str = "auto", baseline: Optional[float] = None, restore_best_weights: bool = False,
                 start_from_epoch: int = 0):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.patience = _validate.integer("EarlyStopping", "patience", patience)
        self.min_delta = abs(_validate.real("EarlyStopping", "min_delta", min_delta))
        self.verbose = verbose
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.baseline = None if baseline is None else _validate.real("EarlyStopping", "baseline", baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = _validate.integer("EarlyStopping", "start_from_epoch", start_from_epoch)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.best_state = None

    def _is_improvement(self, value: float, reference: float) -> bool:
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            _warnings.warn(f"EarlyStopping: '{self.monitor}' is not in the epoch logs (they hold "
                           f"{sorted(logs or {})}); it has no effect")
            return
        if epoch < self.start_from_epoch:
            return
        value = float(value)
        if self.restore_best_weights and self.best_state is None:
            self.best_state, self.best_epoch = self.model.state_dict(), epoch
        self.wait += 1
        if self._is_improvement(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_state = self.model.state_dict()
            if self.baseline is None or self._is_improvement(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.verbose and self.stopped_epoch > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_state is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.load_state_dict(self.best_state)


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch loss is NaN or infinite."""

    def __init__(self):
        self.terminated_at: Optional[int] = None

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.terminated_at = batch
            self.model.stop_training = True
