"""Gradient-monitor overhead: the same ``net.fit`` without a monitor and with one.

    python benchmarks/monitor.py [--quick] [--rounds N]

Issue 7 sets the budget: with everything on at every step at most 10% over the plain
``fit``, with the gradient norms only at most 3%, on the [784, 512, 256, 10] network with
BatchNorm (Dense -> BatchNorm -> ReLU twice, then Dense; cross-entropy on integer labels;
Adam; float32) at batch 128. Also the documents' small sigmoid network [20, 50, 40, 30,
20, 10, 1] at batch 32 (binary cross-entropy, SGD), where a step is short and the
monitor's fixed per-layer cost shows.

Variants: no monitor; ``GradientMonitor(net)`` (everything on, every step); norms only
(``GradientMonitor(net, activations=False, updates=False)``). Each round runs one epoch of
``fit`` per variant on one network, the variants in a rotated order (a neighbour's load
hits all of them alike), with a fresh monitor per epoch (built and closed outside the
timing); the table gives the median time per step over the rounds and the ratio to the
run without a monitor.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import fmt, machine_line  # noqa: E402

import gradcore  # noqa: E402
from gradcore import nn, optim  # noqa: E402
from gradcore.datasets import make_classification  # noqa: E402
from gradcore.monitor import GradientMonitor  # noqa: E402

# variant name -> monitor factory (None: no monitor)
VARIANTS: Dict[str, Optional[Callable[[nn.Module], GradientMonitor]]] = {
    "no monitor": None,
    "GradientMonitor(net)": lambda net: GradientMonitor(net),
    "norms only": lambda net: GradientMonitor(net, activations=False, updates=False),
}
BUDGET = {"GradientMonitor(net)": 1.10, "norms only": 1.03}  # issue 7, for the BatchNorm network


def mlp_batchnorm(rows: int):
    """The [784, 512, 256, 10] BatchNorm network, Adam, cross-entropy on integer labels."""
    gradcore.manual_seed(0)
    net = nn.Sequential(
        nn.Dense(784, 512, kernel_initializer="he_normal"), nn.BatchNorm(512), nn.ReLU(),
        nn.Dense(512, 256, kernel_initializer="he_normal"), nn.BatchNorm(256), nn.ReLU(),
        nn.Dense(256, 10))
    net.compile(optim.Adam(net.parameters(), lr=1e-3), loss="cross_entropy")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, 784), dtype=np.float32)
    y = rng.integers(0, 10, size=rows)
    return net, X, y


def documents_sigmoid(rows: int):
    """The documents' deep sigmoid network [20, 50, 40, 30, 20, 10, 1], SGD, BCE."""
    gradcore.manual_seed(0)
    dims = [20, 50, 40, 30, 20, 10, 1]
    net = nn.Sequential(*[nn.Dense(i, o, activation="sigmoid") for i, o in zip(dims[:-1], dims[1:])])
    net.compile(optim.SGD(net.parameters(), lr=0.1), loss="binary_cross_entropy")
    X, y = make_classification(n_samples=rows, n_features=20, n_informative=15, n_redundant=5, random_state=42)
    return net, X, y.astype(np.float32).reshape(-1, 1)


def time_variants(net, X, y, batch: int, rounds: int) -> Dict[str, float]:
    """Median seconds per training step of each variant over `rounds` rotated rounds."""
    steps = -(-len(X) // batch)
    samples: Dict[str, List[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(rounds + 1):  # round 0 warms up (allocations, thread pools, caches) and is dropped
        for name in names[r % len(names):] + names[:r % len(names)]:
            make = VARIANTS[name]
            mon = make(net) if make else None
            t0 = time.perf_counter()
            net.fit(X, y, epochs=1, batch_size=batch, verbose=0, callbacks=[mon] if mon else None)
            elapsed = time.perf_counter() - t0
            if mon is not None:
                assert len(mon.history) > 0, "the monitor recorded nothing"
                mon.close()
            if r > 0:
                samples[name].append(elapsed / steps)
    return {name: float(np.median(s)) for name, s in samples.items()}


def print_rows(title: str, times: Dict[str, float], budget: Dict[str, float]) -> None:
    print(f"\n{title}")
    head = f"{'variant':<24}{'per step':>12}{'ratio':>9}{'budget':>9}"
    print(head)
    print("-" * len(head))
    base = times["no monitor"]
    for name, t in times.items():
        limit = budget.get(name)
        mark = "" if limit is None else (f"{limit:>8.2f}x" + ("" if t / base <= limit else "  over"))
        print(f"{name:<24}{fmt(t):>12}{t / base:>8.3f}x{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per network (default 15, 3 with --quick)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    print(machine_line())
    print(f"median per step over {rounds} rounds of one epoch per variant, variants rotated; ratio = time / "
          f"time without a monitor")
    net, X, y = mlp_batchnorm(512 if args.quick else 2048)
    print_rows(f"[784, 512, 256, 10] + BatchNorm, ReLU, Adam, float32, batch 128, {len(X)} rows",
               time_variants(net, X, y, 128, rounds), BUDGET)
    net, X, y = documents_sigmoid(256 if args.quick else 1024)
    print_rows(f"documents' [20, 50, 40, 30, 20, 10, 1] sigmoid, SGD, float32, batch 32, {len(X)} rows",
               time_variants(net, X, y, 32, rounds), {})


if __name__ == "__main__":
    main()
