"""The lab: the documents' vanishing / exploding gradient experiments as one command.

    python -m gradcore.lab [experiment ...] [--out DIR] [--quick] [--seed N] [--no-plots]

or ``gradcore-lab`` once installed, or from Python::

    from gradcore.lab import run
    results = run(["vanishing", "compare"], out="gradcore-lab", quick=True, seed=0)

Experiments (``EXPERIMENTS``): ``vanishing`` (sigmoid + small random init vs ReLU + He vs
tanh + Xavier: per-layer dW / dZ norms and the diagnosis), ``exploding`` (large initial
weights with and without clipping, the first non-finite value located), ``clipping``
(none vs norm vs value), ``batchnorm`` (spread of gradient norms with and without
BatchNorm), ``compare`` (the documents' four configurations trained for 100 epochs) and
``repair`` (``gradcore.monitor.repair`` on the first of them). Each writes its tables to
the console as it finishes; ``report.md`` (tables and PNG figures) and ``results.json``
(every number) go to ``--out``.
"""
from .experiments import EXPERIMENTS
from .runner import main, run

__all__ = ["EXPERIMENTS", "main", "run"]
