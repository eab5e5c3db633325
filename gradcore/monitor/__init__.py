"""Gradient monitors: watch every layer's gradients and activations while training,
detect vanishing / exploding gradients, dead or saturated units and NaN/Inf at their
origin, diagnose a network, test remedies against a control, plot and log the history.

    mon = GradientMonitor(net)                  # a fit callback, or a hand-written loop:
    net.fit(X, y, callbacks=[mon])              #   loss.backward(); mon.record(loss); opt.step()
    mon.summary(); print(mon.diagnose())          # per-layer table; findings + remedies

The names below are imported on first use, so ``import gradcore.monitor`` stays cheap and
the plotting functions only need matplotlib when called.
"""
from __future__ import annotations

import importlib

# public name -> submodule that defines it
_EXPORTS = {
    "GradientMonitor": "_monitor",
    "MonitorHistory": "_history",
    "LayerInfo": "_monitor",
    "Event": "_events",
    "NonFiniteError": "_events",
    "EVENT_KINDS": "_events",
    "Diagnosis": "diagnosis",
    "Finding": "diagnosis",
    "Recommendation": "diagnosis",
    "diagnose": "diagnosis",
    "diagnose_history": "diagnosis",
    "repair": "_repair",
    "RepairReport": "_repair",
    "REMEDIES": "_repair",
    "plot_gradient_flow": "plots",
    "plot_norms": "plots",
    "plot_activation_stats": "plots",
    "plot_activation_histograms": "plots",
    "plot_clip_coef": "plots",
    "plot_training_comparison": "plots",
    "CSVLogger": "loggers",
    "TensorBoardLogger": "loggers",
    "read_tfevents": "_tfevents",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradcore.monitor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
