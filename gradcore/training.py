"""Keras-style training: ``net.compile(optimizer, loss, metrics)``, ``fit``, ``evaluate``,
``predict``. Mixed into ``gradcore.nn.Module`` so every network has them.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import losses as _losses
from . import metrics as _metrics
from . import random as _random
from .callbacks import Callback, History
from .tensor import Tensor, no_grad


def _as_array(a, name: str) -> np.ndarray:
    arr = np.asarray(a.data if isinstance(a, Tensor) else a)
    if arr.ndim == 0:
        raise ValueError(f"fit: {name} must have a batch axis, got a scalar")
    return arr


class TrainingMixin:
    """compile / fit / evaluate / predict for a network (a Module)."""

    optimizer = None
    loss = None
    stop_training = False

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

    def _buffer_snapshot(self) -> List:
        return [(buf, buf.copy()) for _, buf in self.named_buffers()]

    @staticmethod
    def _restore(snapshot) -> None:
        for buf, saved in snapshot:
            buf[...] = saved

    def _batch_loss(self, xb, yb):
        """(loss including regularisation, network output) for one batch."""
        out = self(xb)
        loss = self.loss(out, yb)
        reg = self.regularization_loss()
        if reg is not None:
            loss = loss + reg
        return loss, out

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, epochs: int = 1, batch_size: int = 32, validation_split: Optional[float] = None,
            validation_data=None, shuffle: bool = True, verbose: int = 1,
            callbacks: Optional[Sequence[Callback]] = None, accumulate_steps: int = 1) -> History:
        """Train for ``epochs`` passes over (X, y) in mini-batches; returns a History.

        An optimizer whose learning rate is a ``ReduceLROnPlateau`` schedule is stepped
        with ``val_loss`` (or ``loss``) after every epoch.
        ``accumulate_steps=k`` adds up the gradients of k micro-batches (each loss scaled by
        1/k, so the sum is the gradient of one batch of k * batch_size), then clips and
        steps once. A step the optimizer skips for non-finite gradients also rolls back
        the buffers (BatchNorm running statistics) the forward pass changed, so bad data
        leaves the network exactly as it was.
        """
        self._require_compiled("fit")
        if self.optimizer is None:
            raise RuntimeError("fit: compile the network with an optimizer first")
        X, y = _as_array(X, "X"), _as_array(y, "y")
        if len(X) != len(y):
            raise ValueError(f"fit: X has {len(X)} samples but y has {len(y)}")
        if int(epochs) < 0 or int(batch_size) < 1 or int(accumulate_steps) < 1:
            raise ValueError(f"fit: need epochs >= 0, batch_size >= 1, accumulate_steps >= 1; got "
                             f"{epochs}, {batch_size}, {accumulate_steps}")
        if validation_data is None and validation_split:
            if not 0 < validation_split < 1:
                raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split}")
            cut = len(X) - int(round(len(X) * validation_split))
            X, y, validation_data = X[:cut], y[:cut], (X[cut:], y[cut:])
        if len(X) == 0:
            raise ValueError("fit: no training samples")

        history = History()
        cbs: List[Callback] = [history] + list(callbacks or [])
        for cb in cbs:
            cb.set_context(self, self.optimizer)
        self.stop_training = False
        for cb in cbs:
            cb.on_train_begin({})

        n = len(X)
        steps_per_epoch = math.ceil(n / batch_size)
        k = int(accumulate_steps)
        for epoch in range(int(epochs)):
            for cb in cbs:
                cb.on_epoch_begin(epoch, {})
            self.train()
            order = _random.generator().permutation(n) if shuffle else np.arange(n)
            totals: Dict[str, float] = {}
            seen = 0
            bar = _progress(steps_per_epoch, epoch, epochs, verbose)
            self.optimizer.zero_grad()
            snapshot = self._buffer_snapshot()
            for step in range(steps_per_epoch):
                idx = order[step * batch_size:(step + 1) * batch_size]
                xb, yb = X[idx], y[idx]
                for cb in cbs:
                    cb.on_batch_begin(step, {"batch": step, "size": len(idx)})
                try:
                    loss, out = self._batch_loss(xb, yb)
                    (loss * (1.0 / k) if k > 1 else loss).backward()
                except Exception:
                    self._restore(snapshot)
                    self.optimizer.zero_grad()
                    raise
                if (step + 1) % k == 0 or step == steps_per_epoch - 1:
                    skipped_before = getattr(self.optimizer, "skipped_steps", 0)
                    self.optimizer.step()
                    if getattr(self.optimizer, "skipped_steps", 0) != skipped_before:
                        self._restore(snapshot)
                    self.optimizer.zero_grad()
                    snapshot = self._buffer_snapshot()
                logs = {"batch": step, "size": len(idx), "loss": float(loss.item())}
                for name, fn in self._metrics:
                    logs[name] = fn(out, yb)
                for key in ["loss"] + [m for m, _ in self._metrics]:
                    totals[key] = totals.get(key, 0.0) + logs[key] * len(idx)
                seen += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}")
                for cb in cbs:
                    cb.on_batch_end(step, logs)
                if self.stop_training:
                    break
            epoch_logs = {key: value / max(seen, 1) for key, value in totals.items()}
            if validation_data is not None:
                val = self.evaluate(validation_data[0], validation_data[1], batch_size=max(batch_size, 256))
                epoch_logs.update({f"val_{key}": value for key, value in val.items()})
            plateau = getattr(self.optimizer, "schedule", None)
            if hasattr(plateau, "step") and hasattr(plateau, "num_bad_epochs"):
                # ReduceLROnPlateau watches val_loss when there is one, like Keras' callback
                plateau.step(epoch_logs.get("val_loss", epoch_logs.get("loss")))
            if bar is not None:
                bar.set_postfix({key: f"{value:.4f}" for key, value in epoch_logs.items()})
                bar.close()
            elif verbose == 2:
                print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k_}: {v:.4f}" for k_, v in epoch_logs.items()))
            for cb in cbs:
                cb.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end({})
        self.eval()
        return history

    # ------------------------------------------------------------------ inference
    def predict(self, X, batch_size: Optional[int] = None) -> np.ndarray:
        """Outputs for X in evaluation mode, without recording a graph."""
        X = _as_array(X, "X")
        was_training = getattr(self, "training", False)
        self.eval()
        try:
            with no_grad():
                if batch_size is None or batch_size >= len(X):
                    return np.asarray(self(X).data)
                parts = [self(X[i:i + batch_size]).data for i in range(0, len(X), batch_size)]
                return np.concatenate(parts, axis=0)
        finally:
            if was_training:
                self.train()

    def evaluate(self, X, y, batch_size: int = 256) -> Dict[str, float]:
        """Mean loss (without regularisation) and metrics over (X, y) in evaluation mode."""
        self._require_compiled("evaluate")
        X, y = _as_array(X, "X"), _as_array(y, "y")
        if len(X) != len(y):
            raise ValueError(f"evaluate: X has {len(X)} samples but y has {len(y)}")
        out = Tensor(self.predict(X, batch_size))
        with no_grad():
            result = {"loss": float(self.loss(out, y).item())}
        for name, fn in self._metrics:
            result[name] = fn(out, y)
        return result


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
    from . import _warnings
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


def _progress(total: int, epoch: int, epochs: int, verbose: int):
    if verbose != 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch", leave=True, dynamic_ncols=True)
