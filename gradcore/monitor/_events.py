"""What a GradientMonitor reports while training: ``Event`` and ``NonFiniteError``.

An event is one condition that became true at one recorded step (it fires at the onset
only: the same condition at the next recorded step is not reported again). Kinds:

- ``exploding``: a layer's gradient norm (all its parameters) above ``exploding``;
- ``exploding_growth``: a layer's gradient norm more than ``growth`` times its median
  over its last recorded steps;
- ``vanishing``: a layer's weight-gradient norm below ``vanishing``;
- ``vanishing_flow``: first-layer / last-layer weight-gradient norm below ``flow_ratio``;
- ``nonfinite``: the first NaN / Inf of a step, located at its origin (``layer``,
  ``tensor`` and ``evidence["phase"]``: "parameter", "forward" or "backward");
- ``dead_units``, ``saturated_units``: the fraction of dead (ReLU family) or saturated
  (sigmoid / tanh) units of a layer above its threshold;
- ``update_ratio_high``, ``update_ratio_low``: a weight's update / weight norm outside
  the ``update_ratio`` interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict

EVENT_KINDS = ("exploding", "exploding_growth", "vanishing", "vanishing_flow", "nonfinite", "dead_units",
               "saturated_units", "update_ratio_high", "update_ratio_low")


def _fmt(v: float) -> str:
    """A number for a message: 4 significant digits, scientific when very large or small."""
    v = float(v)
    if v == 0 or not math.isfinite(v) or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.3e}"


@dataclass
class Event:
    """One detected condition.

    ``kind`` (one of ``EVENT_KINDS``), ``step`` (the monitor's step index), ``layer`` (the
    layer's name in ``named_modules``; "" for the whole network), ``tensor`` (what was
    measured: "grad", "weight.grad", "weight.update", "output", "dz", "loss", a parameter
    name...), ``value`` and ``threshold`` (the number that crossed it and the limit),
    ``message`` (plain words) and ``evidence`` (the numbers behind it).
    """

    kind: str
    step: int
    layer: str
    tensor: str
    value: float
    threshold: float
    message: str
    evidence: Dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        where = f"layer '{self.layer}'" if self.layer else "network"
        return f"[{self.kind}] step {self.step}, {where}, {self.tensor}: {self.message}"

    def to_dict(self) -> Dict[str, Any]:
        """The event as a dict of plain Python values."""
        return {"kind": self.kind, "step": self.step, "layer": self.layer, "tensor": self.tensor,
                "value": self.value, "threshold": self.threshold, "message": self.message,
                "evidence": dict(self.evidence)}


class NonFiniteError(FloatingPointError):
    """Raised by a GradientMonitor with ``on_nonfinite="raise"``; ``.event`` is the
    "nonfinite" Event naming the layer, tensor, phase and step where NaN / Inf appeared."""

    def __init__(self, event: Event):
        super().__init__(str(event))
        self.event = event


__all__ = ["Event", "NonFiniteError", "EVENT_KINDS"]
