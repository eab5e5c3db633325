"""Loggers that stream a GradientMonitor's numbers to a CSV file or to TensorBoard.

Give them to a monitor, which calls ``write_step(monitor, step, rows)`` after every
recorded step (rows: ``(layer, metric, value)`` triples of that step) and ``close()`` when
training ends::

    mon = GradientMonitor(net, loggers=[CSVLogger("grads.csv"), TensorBoardLogger("runs/a")])
    net.fit(X, y, callbacks=[mon])

or use one directly as a ``fit`` callback, without a monitor: it then logs the epoch logs
(loss, val_loss, metrics, lr, grad_norm, ...) once per epoch, as layer ``"epoch"`` (CSV)
or tags ``epoch/<key>`` (TensorBoard), with the epoch index as the step::

    net.fit(X, y, epochs=20, callbacks=[CSVLogger("epochs.csv")])

Both are context managers; a closed logger refuses to write (ValueError). Values are
written as they are, NaN and Inf included.
"""
from __future__ import annotations

import csv
import numbers
import os
import time
from typing import Iterable, List, Tuple

import numpy as np

from .. import _validate, _warnings
from ..callbacks import Callback
from . import _tfevents

CSV_HEADER = ["step", "layer", "metric", "value"]
EPOCH_LAYER = "epoch"  # the "layer" of the epoch logs a logger writes as a fit callback
GLOBAL_TAG = "train"   # TensorBoard group of the monitor's global metrics (layer "")
# TensorBoard name of each kind of GradientMonitor histogram, after "<layer>/"
_HISTOGRAM_NAMES = {"activation": "activation", "weight": "weight", "grad": "weight.grad"}


def _is_real(value) -> bool:
    """A real number (NumPy scalars and bools included), not a complex, string or None."""
    return isinstance(value, (numbers.Real, np.bool_))


def _checked_rows(owner: str, rows: Iterable) -> List[Tuple[str, str, float]]:
    """``rows`` as (layer, metric, float value) triples, or a TypeError naming the bad row."""
    out = []
    for i, row in enumerate(rows):
        try:
            layer, metric, value = row
        except (TypeError, ValueError):
            raise TypeError(f"{owner}.write_step: rows[{i}] must be a (layer, metric, value) triple, "
                            f"got {row!r}") from None
        if not isinstance(layer, str) or not isinstance(metric, str) or not _is_real(value):
            raise TypeError(f"{owner}.write_step: rows[{i}] must be (str, str, real number), got {row!r}")
        out.append((layer, metric, float(value)))
    return out


def _path_arg(owner: str, name: str, value) -> str:
    """``value`` as a path string, or a TypeError unless it is a str or os.PathLike."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{owner}: {name} must be a str or os.PathLike, got {type(value).__name__}")
    return os.fspath(value)


def _bool_arg(owner: str, name: str, value) -> bool:
    """``value`` as a bool, or a TypeError unless it is a bool (NumPy's included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _epoch_rows(logs) -> List[Tuple[str, str, float]]:
    """The numeric entries of a fit epoch's logs as ("epoch", key, value) rows."""
    return [(EPOCH_LAYER, key, float(value)) for key, value in (logs or {}).items() if _is_real(value)]


class _Logger(Callback):
    """What both loggers share: the logger protocol of a GradientMonitor, the fit-callback
    mode, closing. A subclass implements ``_write(step, rows, monitor)`` (monitor None in
    callback mode), ``flush()`` and ``_close()``."""

    def __init__(self, target: str):
        self._target = target  # the file or directory, for messages
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, action: str) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__}: {action} after close() ({self._target!r}); a closed "
                             "logger cannot write again: create a new one")

    def write_step(self, monitor, step: int, rows) -> None:
        """Log one recorded step of ``monitor``: ``rows`` is a list of (layer, metric, value);
        the global metrics (loss, grad_norm, clip_coef, ...) have layer ""."""
        name = type(self).__name__
        self._check_open("write_step")
        step = _validate.integer(f"{name}.write_step", "step", step)
        self._write(step, _checked_rows(name, rows), monitor)

    # fit-callback mode: one row per numeric key of the epoch logs
    def on_train_begin(self, logs=None):
        self._check_open("fit (on_train_begin)")

    def on_epoch_end(self, epoch, logs=None):
        self._check_open("on_epoch_end")
        self._write(int(epoch), _epoch_rows(logs), None)

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        """Flush and close the file; calling it again does nothing."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class CSVLogger(_Logger):
    """Writes every logged value as a row ``step,layer,metric,value`` of the CSV file at
    ``path`` (the header as ``MonitorHistory.to_csv``: the file reads back into the same
    columns). Values are written at full precision (``repr`` of the float), NaN and Inf as
    ``nan``, ``inf``, ``-inf``, which ``float()``, ``np.loadtxt`` and pandas read back.

    ``append``: add to an existing file (its header must be ``step,layer,metric,value``)
    instead of replacing it. ``flush_every``: flush the file every this many logged steps
    (epochs in callback mode), and always on ``close()``; the default 1 keeps the file
    complete up to the last step if the process dies.
    """

    def __init__(self, path, append: bool = False, flush_every: int = 1):
        self.path = _path_arg("CSVLogger", "path", path)
        self.append = _bool_arg("CSVLogger", "append", append)
        self.flush_every = _validate.positive_int("CSVLogger", "flush_every", flush_every)
        super().__init__(self.path)
        continuing = self.append and os.path.isfile(self.path) and os.path.getsize(self.path) > 0
        if continuing:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            if header != CSV_HEADER:
                raise ValueError(f"CSVLogger: cannot append to {self.path!r}: its header is {header}, expected "
                                 f"{CSV_HEADER}")
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._csv = csv.writer(self._file)
        if not continuing:
            self._csv.writerow(CSV_HEADER)
            self._file.flush()
        self._unflushed = 0

    def _write(self, step, rows, monitor):
        self._csv.writerows((step, layer, metric, repr(value)) for layer, metric, value in rows)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows to disk."""
        self._check_open("flush")
        self._file.flush()
        self._unflushed = 0

    def _close(self):
        self._file.close()


def _tag(layer: str, name: str) -> str:
    """TensorBoard tag ``<layer>/<name>``: TensorBoard groups the charts by the part before
    the first slash, so each layer gets its own section; layer "" is ``train``."""
    return f"{layer or GLOBAL_TAG}/{name}"


class TensorBoardLogger(_Logger):
    """Writes a TensorBoard event file in ``logdir`` (created if missing); point
    ``tensorboard --logdir`` at it. No TensorFlow needed (see ``read_tfevents``).

    With a monitor, each recorded step becomes one event at that step holding:
    - a scalar per row, tagged ``<layer>/<metric>`` (``0/grad_norm``,
      ``0/weight.update_ratio``), the global metrics as ``train/<metric>``
      (``train/loss``); TensorBoard stores scalars as float32 (beyond its range +-inf);
    - with ``histograms=True``, the per-layer histograms the monitor kept for that step
      (``GradientMonitor(..., histograms=True)``): the layer's output, weight and weight
      gradient, tagged ``<layer>/activation``, ``<layer>/weight``, ``<layer>/weight.grad``.
      They are taken when the monitor records the step (gradients complete, before the
      optimizer step), which a logger called after the step cannot do: by then the weights
      moved and the gradients may be zeroed. Their ``sum`` and ``sum_squares`` are NaN
      (unknown from counts and edges alone).
    As a fit callback without a monitor: the epoch logs as ``epoch/<key>`` scalars at step
    = epoch index.

    ``histogram_every``: write the histograms only at the recorded steps that are multiples
    of it (each is ~0.5 kB: a layer's three histograms at every step of a long run make a
    large file). ``flush_secs``: flush the file when this many seconds passed since the last
    flush (0: after every step), and on ``close()``. ``path`` is the event file's path.
    """

    def __init__(self, logdir, histograms: bool = True, flush_secs: float = 10.0, histogram_every: int = 1):
        self.logdir = _path_arg("TensorBoardLogger", "logdir", logdir)
        self.histograms = _bool_arg("TensorBoardLogger", "histograms", histograms)
        self.flush_secs = _validate.nonnegative("TensorBoardLogger", "flush_secs", flush_secs)
        self.histogram_every = _validate.positive_int("TensorBoardLogger", "histogram_every", histogram_every)
        self._events = _tfevents.EventFileWriter(self.logdir)
        self.path = self._events.path
        super().__init__(self.path)
        self._last_flush = time.monotonic()
        self._warned_no_histograms = False

    def _write(self, step, rows, monitor):
        values = [_tfevents.encode_scalar(_tag(layer, metric), value) for layer, metric, value in rows]
        if monitor is not None and self.histograms and step % self.histogram_every == 0:
            values += self._histogram_values(monitor, step)
        self._events.write(step, values)
        if time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()

    def _histogram_values(self, monitor, step: int) -> List[bytes]:
        """The encoded histograms ``monitor.histograms`` holds for ``step``."""
        kept = getattr(monitor, "histograms", None)
        if not kept:
            if not self._warned_no_histograms:
                self._warned_no_histograms = True
                _warnings.warn(f"TensorBoardLogger: histograms=True, but the {type(monitor).__name__} keeps no "
                               "histograms: create it with GradientMonitor(..., histograms=True), or pass "
                               "histograms=False here; only scalars are written")
            return []
        values = []
        for layer, entries in kept.items():
            for entry_step, kind, counts, edges in reversed(entries):  # appended in step order
                if entry_step < step:
                    break
                if entry_step == step:
                    values.append(_tfevents.encode_histogram(
                        _tag(layer, _HISTOGRAM_NAMES.get(kind, kind)), _tfevents.histogram_from_counts(counts, edges)))
        return values

    def flush(self) -> None:
        """Write the buffered events to disk."""
        self._check_open("flush")
        self._events.flush()
        self._last_flush = time.monotonic()

    def _close(self):
        self._events.close()
