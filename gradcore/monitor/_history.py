"""MonitorHistory: a GradientMonitor's measurements as a long table of rows
(step, layer, metric, value), kept in growing NumPy columns.

Layer and metric names are stored as small integer codes (one list of names each), so
recording a step is a few slice assignments; the string columns are built when read.
"""
from __future__ import annotations

import csv
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

_COLUMNS = ("step", "layer", "metric", "value")


def _intern(codes: Dict[str, int], names: List[str], name: str) -> int:
    """The code of ``name`` in ``codes`` / ``names``, appending it when new."""
    code = codes.get(name)
    if code is None:
        code = codes[name] = len(names)
        names.append(name)
    return code


class MonitorHistory:
    """Rows (step, layer, metric, value) recorded by a GradientMonitor.

    Columns (NumPy arrays, one entry per row): ``step`` (int64), ``layer`` and ``metric``
    (str objects), ``value`` (float64). Layer "" holds the network-wide rows (loss,
    grad_norm, clip_coef, skipped, lr). ``len(h)`` is the number of rows.
    """

    def __init__(self, layers: Sequence[str] = ()):
        self._layer_names: List[str] = [""]
        self._layer_codes: Dict[str, int] = {"": 0}
        for name in layers:
            self.layer_code(name)
        self._metric_names: List[str] = []
        self._metric_codes: Dict[str, int] = {}
        self._n = 0
        self._step = np.empty(0, dtype=np.int64)
        self._lc = np.empty(0, dtype=np.int32)
        self._mc = np.empty(0, dtype=np.int32)
        self._val = np.empty(0, dtype=np.float64)
        self._grow(1024)
        self._strings: Optional[Tuple[int, np.ndarray, np.ndarray]] = None
        # called before every read: the monitor fills in the update sizes of its last step
        self._before_read: Optional[Callable[[], None]] = None

    # ------------------------------------------------------------------ writing (the monitor)
    def layer_code(self, name: str) -> int:
        return _intern(self._layer_codes, self._layer_names, name)

    def metric_code(self, name: str) -> int:
        return _intern(self._metric_codes, self._metric_names, name)

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * len(self._val))
        for attr in ("_step", "_lc", "_mc", "_val"):
            old = getattr(self, attr)
            new = np.empty(cap, dtype=old.dtype)
            new[:self._n] = old[:self._n]
            setattr(self, attr, new)

    def append(self, step: int, layer_codes, metric_codes, values) -> None:
        """Add rows of one step: ``layer_codes``, ``metric_codes`` (int arrays or scalars)
        and ``values`` (an array) of the same length."""
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        k = values.size
        if k == 0:
            return
        n = self._n
        if n + k > len(self._val):
            self._grow(n + k)
        self._step[n:n + k] = step
        self._lc[n:n + k] = layer_codes
        self._mc[n:n + k] = metric_codes
        self._val[n:n + k] = values
        self._n = n + k

    def rows_since(self, start: int) -> List[Tuple[str, str, float]]:
        """(layer, metric, value) of the rows from index ``start`` on (a step's rows, for loggers)."""
        n = self._n
        return [(self._layer_names[lc], self._metric_names[mc], v) for lc, mc, v in
                zip(self._lc[start:n].tolist(), self._mc[start:n].tolist(), self._val[start:n].tolist())]

    def _sync(self) -> None:
        if self._before_read is not None:
            self._before_read()

    # ------------------------------------------------------------------ columns
    def __len__(self) -> int:
        self._sync()
        return self._n

    @property
    def step(self) -> np.ndarray:
        """int64 step of each row."""
        self._sync()
        return self._step[:self._n].copy()

    @property
    def value(self) -> np.ndarray:
        """float64 value of each row."""
        self._sync()
        return self._val[:self._n].copy()

    def _string_columns(self) -> Tuple[np.ndarray, np.ndarray]:
        self._sync()
        if self._strings is None or self._strings[0] != self._n:
            layers = np.array(self._layer_names, dtype=object)[self._lc[:self._n]]
            metrics = np.array(self._metric_names + [""], dtype=object)[self._mc[:self._n]]
            self._strings = (self._n, layers, metrics)
        return self._strings[1], self._strings[2]

    @property
    def layer(self) -> np.ndarray:
        """Layer name (str objects) of each row; "" for the network-wide rows."""
        return self._string_columns()[0].copy()

    @property
    def metric(self) -> np.ndarray:
        """Metric name (str objects) of each row."""
        return self._string_columns()[1].copy()

    # ------------------------------------------------------------------ queries
    def _known_layer(self, layer: str) -> int:
        if layer not in self._layer_codes:
            raise ValueError(f"MonitorHistory: unknown layer {layer!r}; the layers are {self._layer_names}")
        return self._layer_codes[layer]

    def _codes(self, layer: str, metric: str) -> Tuple[int, int]:
        lc = self._known_layer(layer)
        if metric not in self._metric_codes:
            raise ValueError(f"MonitorHistory: no metric {metric!r} was recorded; the metrics are "
                             f"{self._metric_names}")
        return lc, self._metric_codes[metric]

    def series(self, layer: str, metric: str) -> Tuple[np.ndarray, np.ndarray]:
        """(steps int64, values float64) of one layer's metric, in recording order."""
        self._sync()
        lc, mc = self._codes(layer, metric)
        n = self._n
        rows = np.flatnonzero((self._lc[:n] == lc) & (self._mc[:n] == mc))
        return self._step[rows], self._val[rows]

    def last(self, layer: str, metric: str, default: float = math.nan) -> float:
        """The latest value of a layer's metric, ``default`` when it was never recorded."""
        self._sync()
        lc, mc = self._layer_codes.get(layer), self._metric_codes.get(metric)
        if lc is None or mc is None:
            return default
        n = self._n
        rows = np.flatnonzero((self._lc[:n] == lc) & (self._mc[:n] == mc))
        return float(self._val[rows[-1]]) if len(rows) else default

    def steps(self) -> np.ndarray:
        """The recorded steps (int64, increasing)."""
        self._sync()
        return np.unique(self._step[:self._n])

    def at(self, step: int = -1) -> Dict[Tuple[str, str], float]:
        """{(layer, metric): value} of one recorded step (-1: the last one); {} when nothing
        was recorded at ``step``."""
        self._sync()
        n = self._n
        if n == 0:
            return {}
        if step == -1:
            step = int(self._step[n - 1])
        rows = np.flatnonzero(self._step[:n] == step)
        names, metrics = self._layer_names, self._metric_names
        return {(names[self._lc[r]], metrics[self._mc[r]]): float(self._val[r]) for r in rows}

    def layers(self) -> List[str]:
        """Layer names in forward order, "" (the whole network) first."""
        return list(self._layer_names)

    def metrics(self, layer: Optional[str] = None) -> List[str]:
        """Metric names recorded (for ``layer`` only when given), in first-recorded order."""
        self._sync()
        n = self._n
        if layer is None:
            codes = self._mc[:n]
        else:
            codes = self._mc[:n][self._lc[:n] == self._known_layer(layer)]
        present = set(np.unique(codes).tolist())
        return [m for i, m in enumerate(self._metric_names) if i in present]

    # ------------------------------------------------------------------ export
    def to_dict(self) -> Dict[str, list]:
        """{"step": [...], "layer": [...], "metric": [...], "value": [...]} of plain Python values."""
        layers, metrics = self._string_columns()
        n = self._n
        return {"step": self._step[:n].tolist(), "layer": layers.tolist(), "metric": metrics.tolist(),
                "value": self._val[:n].tolist()}

    def to_pandas(self):
        """A pandas DataFrame with columns step, layer, metric, value (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("MonitorHistory.to_pandas needs pandas: pip install pandas "
                              "(or use to_dict() / to_csv(), which need nothing)") from None
        layers, metrics = self._string_columns()
        n = self._n
        return pd.DataFrame({"step": self._step[:n].copy(), "layer": layers.copy(), "metric": metrics.copy(),
                             "value": self._val[:n].copy()})

    def to_csv(self, path) -> None:
        """Write the rows to ``path`` with the header ``step,layer,metric,value``; values
        are written with full precision (``repr``), NaN / Inf as nan / inf. Read it back with
        ``MonitorHistory.from_csv(path)``; with pandas, keep the layer names as text:
        ``pd.read_csv(path, dtype={"layer": str}, keep_default_na=False, na_values={"value": ["nan"]})``
        (layers are "0", "1", ... and the network's own row is "")."""
        data = self.to_dict()
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(_COLUMNS)
            for row in zip(data["step"], data["layer"], data["metric"], data["value"]):
                writer.writerow((row[0], row[1], row[2], repr(row[3])))

    @classmethod
    def from_csv(cls, path) -> "MonitorHistory":
        """A history read back from a file written by ``to_csv``."""
        history = cls()
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(header) != _COLUMNS:
                raise ValueError(f"MonitorHistory.from_csv: {path!r} does not start with the header "
                                 f"{','.join(_COLUMNS)} (got {header})")
            steps, lcs, mcs, vals = [], [], [], []
            for line, row in enumerate(reader, start=2):
                if len(row) != 4:
                    raise ValueError(f"MonitorHistory.from_csv: line {line} of {path!r} has {len(row)} fields, "
                                     "expected 4")
                steps.append(int(row[0]))
                lcs.append(history.layer_code(row[1]))
                mcs.append(history.metric_code(row[2]))
                vals.append(float(row[3]))
        history._grow(len(vals) + 1)
        n = len(vals)
        history._step[:n], history._lc[:n], history._mc[:n], history._val[:n] = steps, lcs, mcs, vals
        history._n = n
        return history

    def __repr__(self) -> str:
        self._sync()
        return (f"MonitorHistory(rows={self._n}, steps={len(np.unique(self._step[:self._n]))}, "
                f"layers={len(self._layer_names) - 1}, metrics={len(self._metric_names)})")


__all__ = ["MonitorHistory"]
