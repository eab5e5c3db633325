"""Keras-style training: ``net.compile(optimizer, loss, metrics)``, ``fit``, ``evaluate``,
``predict``, in one place. Mixed into ``gradcore.nn.Model`` (Sequential, Residual and a
user's own ``Model`` subclass); plain layers do not carry them.

One batch of ``fit`` is ``train_step((x, y))``, one batch of ``evaluate`` is
``test_step((x, y))``; a subclass overrides either, like Keras' ``Model.train_step``.
The default ``train_step`` is built from public pieces a custom one can reuse::

    def train_step(self, batch):
        x, y = batch
        out = self(x)
        loss = self.compute_loss(x, y, out)
        logs = self.compute_metrics(x, y, out, loss)          # {"loss": ..., metrics}
        self.run_hook("on_after_forward", logs)
        self.backward_and_step(loss, logs)                    # hooks, clip, step
        return logs

Hook points (methods of ``gradcore.callbacks.Callback``, each called with the batch
index and the batch's logs dict):
  * ``on_after_forward``: the loss and metrics of the batch are in logs;
  * ``on_after_backward``: the gradients of the step are complete (the whole
    accumulation group), before clipping and the optimizer step;
  * ``on_after_step``: logs carry ``lr`` (the rate this step used), ``grad_norm`` (the
    global gradient norm before clipping), ``clip_coef`` (the global clip coefficient,
    1.0 without global clipping) and ``skipped`` (1 when the optimizer skipped the step
    for a non-finite gradient, else 0).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import _validate, _warnings
from . import losses as _losses
from . import metrics as _metrics
from . import random as _random
from .callbacks import Callback, History
from .tensor import Tensor, no_grad

# Keys of the per-batch logs that describe the optimizer step rather than the data; an
# epoch reports the last lr, the mean grad_norm over the steps taken and the skipped count.
_STEP_KEYS = ("batch", "size", "lr", "grad_norm", "clip_coef", "skipped")
_MISSING = object()


def _as_array(a, name: str, op: str = "fit") -> np.ndarray:
    arr = np.asarray(a.data if isinstance(a, Tensor) else a)
    if arr.ndim == 0:
        raise ValueError(f"{op}: {name} must have a batch axis, got a scalar")
    return arr


def _batch_size_or_none(op: str, batch_size) -> Optional[int]:
    return None if batch_size is None else _validate.positive_int(op, "batch_size", batch_size)


def _verbose(op: str, verbose) -> int:
    if verbose == "auto":
        return 1
    if not isinstance(verbose, numbers.Integral) or verbose not in (0, 1, 2):
        raise ValueError(f"{op}: verbose must be 0 (silent), 1 (progress bar), 2 (one line per epoch) or "
                         f"'auto', got {type(verbose).__name__} {verbose!r}")
    return int(verbose)


def _only_none(op: str, **args) -> None:
    """Refuse Keras arguments gradcore accepts by name but does not implement."""
    for name, value in args.items():
        if value is not None:
            raise NotImplementedError(f"{op}: {name}= is not supported by gradcore (got {type(value).__name__}); "
                                      "pass None")


def _checked_logs(op: str, step: str, logs) -> Dict:
    if not isinstance(logs, dict):
        raise TypeError(f"{op}: {step} must return a dict of logs (e.g. {{'loss': 0.5}}), got {type(logs).__name__}")
    return logs


def _step_report(opt, returned, skipped_before) -> tuple:
    """(pre-clip norm or None, skipped, clip coefficient) of the ``opt.step()`` that just
    returned ``returned``, with fallbacks for an optimizer without the last_* attributes
    (``skipped_before``: its skipped_steps before the step)."""
    norm = getattr(opt, "last_grad_norm", returned)
    skipped = getattr(opt, "last_skipped", None)
    if skipped is None:
        skipped = getattr(opt, "skipped_steps", 0) != skipped_before
    coef = getattr(opt, "last_clip_coef", None)
    if coef is None:
        max_norm = getattr(opt, "global_clip_norm", None)
        coef = min(1.0, max_norm / (norm + 1e-6)) if max_norm and norm is not None and not skipped else 1.0
    return norm, skipped, coef


def _current_lr(opt) -> float:
    """The learning rate the optimizer's next step uses (nan when it cannot tell)."""
    try:  # the first read, without building the fallbacks (this runs every step)
        value = opt.current_lr
    except Exception:  # noqa: BLE001 - an attribute this optimizer does not have
        return _lr_fallback(opt)
    if type(value) is float:  # the common case, before the slower ABC check
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return _lr_fallback(opt)


def _lr_fallback(opt) -> float:
    """_current_lr's other reads, in order, when ``current_lr`` gave no number."""
    for read in (lambda: opt.param_groups[0]["lr"], lambda: opt.lr):
        try:
            value = read()
        except Exception:  # noqa: BLE001 - an attribute this optimizer does not have
            continue
        if type(value) is float:
            return value
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    return math.nan


def _plateau_schedules(opt) -> list:
    """Every ReduceLROnPlateau the optimizer's learning rate(s) contain, however wrapped."""
    from .optim import schedules

    roots = [getattr(opt, "schedule", None)]
    roots += [group.get("lr") for group in getattr(opt, "param_groups", None) or () if isinstance(group, dict)]
    found = {}
    for root in roots:
        for s in schedules.plateaus(root):
            found[id(s)] = s
    return list(found.values())


def _format_logs(logs: Dict) -> str:
    parts = []
    for key, value in logs.items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            parts.append(f"{key}: {value}")
        elif isinstance(value, numbers.Real):
            v = float(value)
            text = f"{v:.4f}" if v == 0 or not math.isfinite(v) or 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
            parts.append(f"{key}: {text}")
    return " - ".join(parts)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:  # noqa: BLE001 - a replaced stream without isatty
        return False


class _EpochMeans:
    """Accumulates batch logs into epoch logs: row-weighted means of the loss and metrics,
    the last ``lr``, the mean ``grad_norm`` over the steps taken, the ``skipped`` count."""

    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.rows = 0
        self.lr = None
        self.norms: List[float] = []
        self.has_norm = False
        self.skipped = None

    def add(self, logs: Dict) -> None:
        size = logs["size"]
        for key, value in logs.items():
            if key not in _STEP_KEYS and isinstance(value, numbers.Real):
                self.sums[key] = self.sums.get(key, 0.0) + value * size
        self.rows += size
        if "lr" in logs:
            self.lr = logs["lr"]
        if "grad_norm" in logs:
            self.has_norm = True
            norm = logs["grad_norm"]
            if not logs.get("skipped") and math.isfinite(norm):
                self.norms.append(norm)
        if "skipped" in logs:
            self.skipped = (self.skipped or 0) + int(logs["skipped"])

    def result(self) -> Dict:
        out = {key: value / max(self.rows, 1) for key, value in self.sums.items()}
        if self.lr is not None:
            out["lr"] = self.lr
        if self.has_norm:
            out["grad_norm"] = float(np.mean(self.norms)) if self.norms else math.nan
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out


class _FitLoop:
    """What the pieces of ``train_step`` need to know about the running ``fit``: the
    callbacks, where the batch sits in its accumulation group, the buffer snapshot that
    a skipped step rolls back to, and the first skipped step (for the one warning)."""

    def __init__(self, callbacks: List[Callback], epochs: int, steps: int):
        self.callbacks = callbacks
        self.epochs, self.steps = epochs, steps
        self.epoch = self.batch = 0
        self.weight = 1.0      # this batch's share of the rows of its accumulation group
        self.step_now = True   # the batch completes its group: clip and step after it
        self.modules: list = []  # the network's modules, listed once per epoch (save_buffers reads them)
        self.outside: list = []  # the network's parameters the optimizer does not hold (zero_grad's other half)
        self.snapshot: list = []
        self.first_skip: Optional[str] = None
        self.warned = False
        self.skipped_total = 0

    def save_buffers(self) -> None:
        """Copy the buffers (BatchNorm statistics) a skipped step or an error rolls back to.
        Per step, so it reads each listed module's buffers directly instead of walking the
        module tree again (a buffer registered or replaced mid-epoch is still picked up)."""
        self.snapshot = [(buf, buf.copy()) for m in self.modules for buf in m._buffers.values() if buf is not None]

    def zero_grad(self, opt) -> None:
        """Every gradient of the network to None before the next group, like Keras' fresh
        gradients per step (or torch's ``model.zero_grad()``): the optimizer's own, and
        those of the layers it does not train (a frozen body under a trained head), which
        ``opt.zero_grad()`` leaves alone and a monitor or callback would see add up."""
        opt.zero_grad()
        for p in self.outside:
            p.grad = None

    def fire(self, hook: str, logs: Dict) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self.batch, logs)


class TrainingMixin:
    """compile / fit / evaluate / predict and the train_step / test_step they call."""

    optimizer = None
    loss = None
    stop_training = False
    _fit_loop: Optional[_FitLoop] = None

    def compile(self, optimizer=None, loss="mse", metrics: Sequence = ()) -> "TrainingMixin":
        """Attach an optimizer (an instance, or a name: 'adam', 'sgd', ...), a loss and metrics.

        ``loss``: a name, a Loss, a ``get_config()`` dict or a callable (see
        ``gradcore.losses`` for which names take logits and which probabilities). A network
        whose last layer outputs probabilities (sigmoid / softmax) feeding a logits loss,
        or raw scores feeding a probability loss, gets a warning naming the layer.
        ``metrics``: names or callables; "accuracy" follows the loss (``gradcore.metrics``).
        The configuration is kept as ``self.compile_config`` (JSON-safe) for checkpoints.
        """
        from . import optim

        if optimizer is None:
            optimizer = "adam"
        if isinstance(optimizer, str):
            optimizer = optim.get(optimizer, self.parameters())
        self.optimizer = optimizer
        self.loss = _losses.get(loss)
        _check_output_matches_loss(self, self.loss)
        self._metrics = [_metrics.get(m, self.loss) for m in metrics or ()]
        self.compile_config = {
            "optimizer": type(optimizer).__name__,
            "loss": _losses.serialize(self.loss),
            "metrics": [name for name, _ in self._metrics],
        }
        return self

    # ------------------------------------------------------------------ helpers
    def _require_compiled(self, what: str) -> None:
        if self.loss is None:
            raise RuntimeError(f"{what}: call net.compile(optimizer, loss, metrics) first")

    @contextlib.contextmanager
    def _evaluation_mode(self):
        """Evaluation mode for the block (predict, evaluate); training mode again after it
        when the network was training before."""
        was_training = getattr(self, "training", False)
        self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    @staticmethod
    def _restore(snapshot) -> None:
        for buf, saved in snapshot:
            buf[...] = saved

    def _batchnorm_names(self) -> List[str]:
        from .nn.layers import BatchNorm

        return [name or type(self).__name__ for name, m in self.named_modules() if isinstance(m, BatchNorm)]

    # ------------------------------------------------------------------ one batch
    def compute_loss(self, x=None, y=None, y_pred=None) -> Tensor:
        """The compiled loss of ``y_pred`` against ``y`` plus the regularisation terms of the
        layers (Dense ``l2`` ...), as Keras' ``compute_loss``; a 0-d Tensor."""
        loss = self.loss(y_pred, y)
        reg = self.regularization_loss()
        if reg is not None:
            loss = loss + reg
        return loss

    def compute_metrics(self, x, y, y_pred, loss) -> Dict[str, float]:
        """``{"loss": float(loss), <metric name>: value}`` for one batch."""
        logs = {"loss": float(loss.item())}
        for name, fn in self._metrics:
            logs[name] = fn(y_pred, y)
        return logs

    def run_hook(self, hook: str, logs: Dict) -> None:
        """Call ``hook`` (e.g. "on_after_forward") on fit's callbacks; nothing outside fit."""
        loop = self._fit_loop
        if loop is not None:
            loop.fire(hook, logs)

    def train_step(self, batch) -> Dict[str, float]:
        """One training batch ``(x, y)``: forward, loss, backward, and (when its accumulation
        group is complete) clip and step. Returns the batch's logs. Override to change
        what a batch does; ``fit`` calls it in training mode."""
        x, y = batch
        out = self(x)
        loss = self.compute_loss(x, y, out)
        logs = self.compute_metrics(x, y, out, loss)
        self.run_hook("on_after_forward", logs)
        self.backward_and_step(loss, logs)
        return logs

    def test_step(self, batch) -> Dict[str, float]:
        """One evaluation batch ``(x, y)`` without a graph: ``{"loss", <metrics>}``, the loss
        including regularisation like Keras. ``evaluate`` calls it in evaluation mode."""
        x, y = batch
        with no_grad():
            out = self(x)
            loss = self.compute_loss(x, y, out)
        return self.compute_metrics(x, y, out, loss)

    def backward_and_step(self, loss: Tensor, logs: Optional[Dict] = None) -> Dict:
        """``loss.backward()``, then clip and step the optimizer and zero the gradients.

        Inside ``fit`` with ``accumulate_steps=k`` the loss is weighted by the batch's share
        of the rows of its group of k batches (so the group's gradient is that of the mean
        loss over all its rows, a short last group included) and the step happens after
        the group's last batch. Fires ``on_after_backward`` (gradients complete, before
        clipping) and ``on_after_step``, and writes ``lr``, ``grad_norm``, ``clip_coef``,
        ``skipped`` into ``logs`` (nan / 0 on a batch that did not step). A skipped step
        also rolls the buffers (BatchNorm statistics) back to before the group.
        """
        logs = {} if logs is None else logs
        loop, opt = self._fit_loop, self.optimizer
        if opt is None:
            raise RuntimeError("backward_and_step: compile the network with an optimizer first")
        if loop is None:
            opt.zero_grad()
        weight = 1.0 if loop is None else loop.weight
        (loss * weight if weight != 1.0 else loss).backward()
        if loop is not None and not loop.step_now:
            logs.update(lr=_current_lr(opt), grad_norm=math.nan, clip_coef=math.nan, skipped=0)
            return logs
        self.run_hook("on_after_backward", logs)
        lr = _current_lr(opt)
        skipped_before = getattr(opt, "skipped_steps", 0)
        norm, skipped, coef = _step_report(opt, opt.step(), skipped_before)
        if skipped and loop is not None:
            self._note_skipped(loop, opt)
        if loop is not None:
            loop.zero_grad(opt)
            loop.save_buffers()
        else:
            opt.zero_grad()
        logs.update(lr=lr, grad_norm=float(norm) if norm is not None else math.nan, clip_coef=float(coef),
                    skipped=int(bool(skipped)))
        self.run_hook("on_after_step", logs)
        return logs

    def _note_skipped(self, loop: "_FitLoop", opt) -> None:
        """fit's handling of a step skipped for a non-finite gradient: the buffers roll back
        to before the accumulation group, and the first skip is noted for the warning."""
        self._restore(loop.snapshot)
        loop.skipped_total += 1
        if loop.first_skip is None:
            loop.first_skip = (f"epoch {loop.epoch + 1}/{loop.epochs}, batch {loop.batch + 1}/{loop.steps}: "
                               f"first non-finite gradient in parameter {self._nonfinite_name(opt)}")

    def _nonfinite_name(self, opt) -> str:
        """'2.weight' (shape ...): the parameter the optimizer found non-finite, by name."""
        bad = getattr(opt, "last_nonfinite_param", _MISSING)
        named = list(self.named_parameters())
        if bad is _MISSING:  # an optimizer that does not say: look at the gradients
            bad = next((p for _, p in named if p.grad is not None and not np.all(np.isfinite(p.grad))), None)
        if bad is None:
            return "(unknown)"
        name = next((n for n, p in named if p is bad), None)
        return f"'{name}' of shape {tuple(bad.shape)}" if name else f"of shape {tuple(bad.shape)} (not in this network)"

    # ------------------------------------------------------------------ fit
    def _drop_rows(self, n: int, batch_size: int, drop_last) -> int:
        """Rows to leave out of each epoch (the incomplete last batch), refusing up front a
        plan that would put a batch of one row through BatchNorm in training mode."""
        remainder = n % batch_size
        if drop_last is True:
            if n < batch_size:
                raise ValueError(f"fit: drop_last=True with batch_size={batch_size} leaves no batch: there are only "
                                 f"{n} training rows")
            return remainder
        norms = self._batchnorm_names()
        if not norms:
            return 0
        if batch_size == 1 or n == 1:
            raise ValueError(f"fit: BatchNorm layer '{norms[0]}' needs more than 1 value per channel in training mode, "
                             f"but {'batch_size=1' if batch_size == 1 else 'there is 1 training row'} gives batches "
                             "of one row; use batch_size >= 2")
        if remainder != 1:
            return 0
        if drop_last is False:
            raise ValueError(f"fit: {n} training rows with batch_size={batch_size} leave a last batch of 1 row, and "
                             f"BatchNorm layer '{norms[0]}' needs more than 1 value per channel in training mode; "
                             "pass drop_last=True (or leave drop_last=None) to drop it, or change batch_size")
        _warnings.warn(f"fit: {n} training rows with batch_size={batch_size} leave a last batch of 1 row, which "
                       f"BatchNorm layer '{norms[0]}' cannot normalise in training mode; that row is left out of "
                       "each epoch (a different one each epoch when shuffling). Pass drop_last=True to drop "
                       "incomplete batches without this note, or change batch_size.")
        return 1

    def fit(self, X, y, epochs: int = 1, batch_size: int = 32, validation_split: Optional[float] = None,
            validation_data=None, shuffle: bool = True, verbose=1, callbacks: Optional[Sequence[Callback]] = None,
            accumulate_steps: int = 1, drop_last: Optional[bool] = None, compiled="auto") -> History:
        """Train for ``epochs`` passes over (X, y) in mini-batches; returns a History.

        X (N, ...), y (N, ...). ``validation_split``: the rows from floor(N * (1 -
        validation_split)) on are held out (before shuffling, Keras' rule);
        ``validation_data=(X_val, y_val)`` instead. Integer class labels (y and y_val) are
        checked against the loss and the network's output width before the first batch:
        a bad one is refused naming its row of the data, and nothing is trained.
        Each batch is ``train_step((x, y))``. Epoch logs: the row-weighted means of the
        loss (with regularisation) and metrics, ``val_*`` (regularisation included, like
        Keras), ``lr`` (last step's rate), ``grad_norm`` (mean pre-clip norm over the steps
        taken) and ``skipped`` (steps skipped for non-finite gradients; the first one
        also gives one warning naming the parameter and the step).

        ``accumulate_steps=k`` adds up the gradients of k batches, weighted so the group's
        gradient is that of the mean loss over its rows, then clips and steps once.
        ``drop_last``: True drops the incomplete last batch of each epoch (torch's
        DataLoader); False keeps it; None (default) keeps it unless it would be one row
        under BatchNorm in training mode, which cannot be normalised: then that row is
        dropped with a note, so any dataset size trains as in Keras instead of failing in
        the middle of an epoch as torch does.
        Every ReduceLROnPlateau in the optimizer's learning rate (also when wrapped, e.g.
        in a LinearWarmup) is stepped with ``val_loss`` (or ``loss``) after every epoch.
        ``verbose``: 0 silent; 1 a progress bar on a terminal, one line per epoch
        otherwise; 2 one line per epoch. Callbacks run in the order given; the History
        returned runs last, so keys other callbacks add to the epoch logs reach it.

        ``compiled``: "auto" (default) runs each batch as one call into a C++ plan
        (``gradcore.compile_step``) when the network, loss and optimizer lower into one,
        ``train_step`` is not overridden and no callback needs the batch between forward,
        backward and update (``on_after_forward`` / ``on_after_backward``; a
        GradientMonitor of the network is no such callback: the plan computes its
        statistics); otherwise it trains eagerly. True always uses the plan (for
        such callbacks: the plan's forward and backward, the hooks, then
        ``optimizer.step()``) or raises ``gradcore.compiled.UnsupportedError`` saying why
        not; False trains eagerly. Both give the same numbers and the same logs.
        """
        self._require_compiled("fit")
        if self.optimizer is None:
            raise RuntimeError("fit: compile the network with an optimizer first")
        epochs = _validate.integer("fit", "epochs", epochs, low=0)
        batch_size = _validate.positive_int("fit", "batch_size", batch_size)
        k = _validate.positive_int("fit", "accumulate_steps", accumulate_steps)
        verbose = _verbose("fit", verbose)
        if not (compiled is True or compiled is False or compiled == "auto"):
            raise ValueError(f"fit: compiled must be 'auto', True or False, got {compiled!r}")
        if drop_last not in (None, True, False):
            raise TypeError(f"fit: drop_last must be None, True or False, got {drop_last!r}")
        callbacks = list(callbacks or [])
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks[{i}] must be a gradcore.callbacks.Callback, got {type(cb).__name__}")
        X, y = _as_array(X, "X"), _as_array(y, "y")
        if len(X) != len(y):
            raise ValueError(f"fit: X has {len(X)} samples but y has {len(y)}")
        _check_labels(self, X, y, "y")
        if validation_data is None and validation_split:
            validation_split = _validate.probability("fit", "validation_split", validation_split, one=False)
            cut = int(math.floor(len(X) * (1.0 - validation_split)))  # Keras' rule: the rows from there on
            if cut == 0 or cut == len(X):
                raise ValueError(f"fit: validation_split={validation_split} of {len(X)} rows leaves "
                                 f"{cut} training and {len(X) - cut} validation rows; both need at least one "
                                 "(use more data or another validation_split)")
            X, y, validation_data = X[:cut], y[:cut], (X[cut:], y[cut:])
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("fit: validation_data must be a pair (X_val, y_val)")
            vx, vy = _as_array(validation_data[0], "X_val"), _as_array(validation_data[1], "y_val")
            if len(vx) != len(vy) or len(vx) == 0:
                raise ValueError(f"fit: validation_data needs as many rows in X_val as in y_val, at least one; got "
                                 f"{len(vx)} and {len(vy)}")
            _check_labels(self, vx, vy, "y_val")
            validation_data = (vx, vy)
        if len(X) == 0:
            raise ValueError("fit: no training samples")
        n = len(X)
        n_used = n - self._drop_rows(n, batch_size, drop_last)
        steps = math.ceil(n_used / batch_size)

        runner = None
        if compiled is not False:
            from . import compiled as _compiled

            runner, why = _compiled.fit_runner(self, X, y, callbacks, compiled, k)
            if runner is None and compiled is True:
                raise _compiled.UnsupportedError(f"fit(compiled=True): {why}")
        history = History()
        cbs: List[Callback] = callbacks + [history]
        for cb in cbs:
            cb.set_context(self, self.optimizer)
        loop = _FitLoop(cbs, epochs, steps)
        self.stop_training = False
        self._fit_loop = loop
        try:
            for cb in cbs:
                cb.on_train_begin({})
            if runner is not None:
                why = _compiled.still_supported(self)  # a callback may have hooked the layers
                if why:
                    runner.close()
                    runner = None
                    if compiled is True:
                        for cb in cbs:  # let them undo what on_train_begin installed
                            cb.on_train_end({})
                        raise _compiled.UnsupportedError(f"fit(compiled=True): {why}")
            for epoch in range(epochs):
                loop.epoch = epoch
                for cb in cbs:
                    cb.on_epoch_begin(epoch, {})
                self.train()
                order = _random.generator().permutation(n) if shuffle else np.arange(n)
                order = order[:n_used]
                means = _EpochMeans()
                bar = _progress(verbose, steps, f"Epoch {epoch + 1}/{epochs}")
                loop.modules = list(self.modules())
                held = {id(p) for p in getattr(self.optimizer, "params", None) or ()}
                loop.outside = [p for p in self.parameters() if id(p) not in held] if held else []
                loop.zero_grad(self.optimizer)
                loop.save_buffers()
                if runner is not None:
                    loop.snapshot = runner.begin_epoch()  # the same rollback target, preallocated
                for step in range(steps):
                    idx = order[step * batch_size:(step + 1) * batch_size]
                    first = step - step % k
                    last = min(first + k, steps)
                    group_rows = min(last * batch_size, n_used) - first * batch_size
                    loop.batch, loop.step_now = step, step == last - 1
                    loop.weight = 1.0 if group_rows == len(idx) else len(idx) / group_rows
                    for cb in cbs:
                        cb.on_batch_begin(step, {"batch": step, "size": len(idx)})
                    try:
                        if runner is not None:
                            try:
                                step_logs = runner.train_batch(idx, loop)
                            except _compiled.UnsupportedError:
                                # e.g. a callback froze a layer: refused before anything ran, so
                                # "auto" goes on eagerly from the start of an accumulation group
                                if compiled is True or step % k:
                                    raise
                                runner = None
                        if runner is None:
                            step_logs = self.train_step((X[idx], y[idx]))
                    except Exception:
                        self._restore(loop.snapshot)
                        loop.zero_grad(self.optimizer)
                        raise
                    logs = {"batch": step, "size": len(idx)}
                    logs.update(_checked_logs("fit", "train_step", step_logs))
                    if loop.first_skip is not None and not loop.warned:
                        loop.warned = True
                        _warnings.warn(f"fit: the optimizer skipped a step for a non-finite gradient (NaN or Inf) at "
                                       f"{loop.first_skip}; the parameters and BatchNorm statistics were left "
                                       "unchanged. Skipped steps are counted in the logs' 'skipped' (only this "
                                       "first one is warned about).", RuntimeWarning)
                    means.add(logs)
                    if bar is not None:
                        bar.update(1)
                        post = {"loss": f"{means.sums.get('loss', 0.0) / max(means.rows, 1):.4f}"}
                        if loop.skipped_total:
                            post["skipped"] = loop.skipped_total
                        bar.set_postfix(post)
                    for cb in cbs:
                        cb.on_batch_end(step, logs)
                    if self.stop_training:
                        break
                epoch_logs = means.result()
                if validation_data is not None:
                    val = self.evaluate(validation_data[0], validation_data[1], batch_size=max(batch_size, 256),
                                        verbose=0, return_dict=True)
                    epoch_logs.update({f"val_{key}": value for key, value in val.items()})
                for plateau in _plateau_schedules(self.optimizer):
                    # ReduceLROnPlateau watches val_loss when there is one, like Keras' callback
                    plateau.step(epoch_logs.get("val_loss", epoch_logs.get("loss")))
                for cb in callbacks:
                    cb.on_epoch_end(epoch, epoch_logs)
                if bar is not None:
                    bar.set_postfix_str(_format_logs(epoch_logs))
                    bar.close()
                elif verbose:
                    print(f"Epoch {epoch + 1}/{epochs} - {_format_logs(epoch_logs)}", flush=True)
                history.on_epoch_end(epoch, epoch_logs)
                if self.stop_training:
                    break
            for cb in cbs:
                cb.on_train_end({})
        finally:
            self._fit_loop = None
            if runner is not None:
                runner.close()
        self.eval()
        return history

    # ------------------------------------------------------------------ inference
    def predict(self, X, batch_size: Optional[int] = None, verbose="auto", steps=None,
                callbacks=None) -> np.ndarray:
        """Outputs for X (N, ...) in evaluation mode, without recording a graph; in batches
        of ``batch_size`` rows (None: all at once). ``verbose`` (Keras' argument: 0, 1, 2
        or "auto") is accepted for Keras code; prediction prints nothing. Keras'
        ``steps`` and ``callbacks`` are accepted only as None."""
        batch_size = _batch_size_or_none("predict", batch_size)
        _verbose("predict", verbose)
        _only_none("predict", steps=steps, callbacks=callbacks)
        X = _as_array(X, "X", "predict")
        with self._evaluation_mode(), no_grad():
            if batch_size is None or batch_size >= len(X):
                return np.asarray(self(X).data)
            parts = [self(X[i:i + batch_size]).data for i in range(0, len(X), batch_size)]
            return np.concatenate(parts, axis=0)

    def evaluate(self, X, y, batch_size: Optional[int] = 256, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict: bool = False):
        """Row-weighted mean loss (regularisation included, like Keras) and metrics over
        (X, y), one ``test_step`` per batch of ``batch_size`` rows, in evaluation mode.

        Returns as Keras 3 does: with ``return_dict=False`` (the default) the loss alone
        when there are no other results, else the list ``[loss, *metrics]`` in compile
        order (then any other keys a custom ``test_step`` logs, sorted by name), so
        ``test_loss, test_acc = net.evaluate(X, y)`` works; with ``return_dict=True`` the
        dict ``{"loss": ..., <metric>: ...}``.
        ``verbose``: 0 silent; 1 or "auto" a progress bar on a terminal; 2 one line of
        results. Keras' ``sample_weight``, ``steps`` and ``callbacks`` are accepted only
        as None."""
        self._require_compiled("evaluate")
        batch_size = _batch_size_or_none("evaluate", batch_size)
        verbose = _verbose("evaluate", verbose)
        _only_none("evaluate", sample_weight=sample_weight, steps=steps, callbacks=callbacks)
        if not isinstance(return_dict, (bool, np.bool_)):
            raise TypeError(f"evaluate: return_dict must be True or False, got {type(return_dict).__name__}")
        X, y = _as_array(X, "X", "evaluate"), _as_array(y, "y", "evaluate")
        if len(X) != len(y):
            raise ValueError(f"evaluate: X has {len(X)} samples but y has {len(y)}")
        if len(X) == 0:
            raise ValueError("evaluate: X has no rows")
        size = len(X) if batch_size is None else batch_size
        bar = _progress(verbose, -(-len(X) // size), "evaluate")
        means = _EpochMeans()
        try:
            with self._evaluation_mode():
                for i in range(0, len(X), size):
                    xb, yb = X[i:i + size], y[i:i + size]
                    logs = {"size": len(xb)}
                    logs.update(_checked_logs("evaluate", "test_step", self.test_step((xb, yb))))
                    means.add(logs)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        result = means.result()
        if verbose == 2:
            print(f"evaluate - {_format_logs(result)}", flush=True)
        return dict(result) if return_dict else self._results_in_order(result)

    def _results_in_order(self, logs: Dict):
        """Keras 3's flat form of evaluate's logs: loss, the compiled metrics in compile
        order, then other keys sorted; a lone value is returned bare."""
        names = ["loss"] + [name for name, _ in getattr(self, "_metrics", ())]
        ordered = [logs[name] for name in names if name in logs]
        ordered += [logs[key] for key in sorted(logs) if key not in names]
        return ordered[0] if len(ordered) == 1 else ordered


def _check_labels(net, X: np.ndarray, y: np.ndarray, name: str) -> None:
    """fit's check of integer class labels against the compiled loss, over all of ``y``
    before the first batch: a label out of range (neither in [0, classes) nor the loss's
    ``ignore_index``) or a fractional float label is refused naming its row of the data,
    so a refused fit changes nothing. One vectorised pass; it applies to gradcore's
    label losses (CrossEntropyLoss, NLLLoss, SparseCategoricalCrossentropy) when the
    network's output width is known from its layers (else each batch's loss checks)."""
    from . import functional as F

    loss, L = net.loss, _losses
    if isinstance(loss, (L.CrossEntropyLoss, L.NLLLoss)):
        ignore = loss.ignore_index
        takes = y.shape == (len(y),)
    elif isinstance(loss, L.SparseCategoricalCrossentropy):
        ignore = None
        takes = y.shape in ((len(y),), (len(y), 1))
    else:
        return
    if not takes or y.dtype.kind not in "iuf" or len(y) == 0:
        return  # probabilities, or a dtype the loss itself refuses with its own message
    try:
        shape = net.output_shape((None,) + tuple(X.shape[1:]))
    except Exception:  # noqa: BLE001 - a user's layer that cannot tell: the loss checks per batch
        return
    if not shape or len(shape) != 2 or not isinstance(shape[-1], numbers.Integral):
        return
    F.class_labels(f"fit: {name} for loss {type(loss).__name__}", y.reshape(len(y)), len(y), int(shape[-1]), ignore)


def _final_layer(net):
    """(dotted name, module) of the layer producing a network's output, following the
    last child of (nested) Sequentials; the network itself otherwise."""
    from .nn import Sequential

    name, module = "", net
    while isinstance(module, Sequential) and len(module):
        key = list(module._modules)[-1]
        name, module = (f"{name}.{key}" if name else key), module._modules[key]
    return name, module


def _check_output_matches_loss(net, loss) -> None:
    """Warn when the last layer's output kind (probabilities / raw scores) is not what the
    loss takes: sigmoid or softmax into a logits loss trains on squashed scores and
    reports wrong values; raw scores into a probability loss are clipped to nonsense."""
    from .nn import Dense, Sigmoid, Softmax

    if not isinstance(loss, _losses.Loss) or loss.from_logits is None:
        return
    name, layer = _final_layer(net)
    squashing = isinstance(layer, Dense) and layer.activation in ("sigmoid", "softmax")
    if isinstance(layer, (Sigmoid, Softmax)) or squashing:
        output = "probabilities"
    elif isinstance(layer, Dense) and layer.activation is None:
        output = "logits (no activation)"
    else:
        return
    if (output == "probabilities") == (loss.from_logits is False):
        return
    where = f"layer '{name}' ({layer!r})" if name else f"the network's output layer ({layer!r})"
    if loss.from_logits:
        fix = ("drop the final activation, or use a loss that takes probabilities "
               "('binary_crossentropy', 'categorical_crossentropy', 'sparse_categorical_crossentropy')")
    else:
        fix = ("pass from_logits=True to the loss (e.g. losses.BinaryCrossentropy(from_logits=True)) "
               "or add the activation")
    _warnings.warn(f"{where} outputs {output} but loss '{loss.name}' expects {loss.expects}; {fix}")


def _progress(verbose: int, total: int, desc: str):
    """The progress bar of fit's epochs and of evaluate: a tqdm bar of ``total`` batches
    for ``verbose=1`` when stderr is a terminal, else None."""
    if verbose != 1 or not _isatty(sys.stderr):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)
