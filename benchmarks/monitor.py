"""Gradient-monitor overhead: the same training without a monitor and with one, eager and compiled.

    python benchmarks/monitor.py [--quick] [--rounds N] [--eager-only] [--threads N]

Budgets: issue 7, eager ``fit``: everything on at every step at most 10% over the plain
``fit``, the gradient norms only at most 3%; issue 8, the compiled step
(``gradcore.compile_step``): with a monitor recording every step within 5% of the same
step without. Networks: the [784, 512, 256, 10] network with BatchNorm (Dense ->
BatchNorm -> ReLU twice, then Dense; cross-entropy on integer labels; Adam; float32) at
batch 128, and the documents' small sigmoid network [20, 50, 40, 30, 20, 10, 1] at batch
32 (binary cross-entropy, SGD), where a step is short and the monitor's fixed per-layer
cost shows.

Monitors: none; ``GradientMonitor(net)`` (everything on, every step); norms only
(``GradientMonitor(net, activations=False, updates=False)``). Paths: ``fit(...,
compiled=False)`` (eager: the monitor's taps), ``fit(..., compiled=True)`` (the plan
computes the monitor's statistics) and the bare compiled step, ``step(x, y)`` in a loop
(``compile_step(net, monitor=mon)``: no fit loop around it). "kept step": the bare
compiled step's steady state, one step per monitor kind made once and kept over every
round (the other paths pay each epoch's fresh monitor: its binding, and the compiled step
lowered again when the monitor's taps leave the network). Each round runs one epoch
per variant on one network, all variants in a rotated order (a neighbour's load hits all
of them alike), with a fresh monitor per epoch (built and closed outside the timing);
the table gives the median time per step over the rounds and the ratio to the same path
without a monitor. ``--threads N`` runs gradcore with N threads (default: its own default,
all cores); on a shared 2-core machine ``--threads 1`` keeps a neighbour's load from
stalling a second thread (the issue's numbers are 1 thread).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import fmt, machine_line  # noqa: E402

import gradcore  # noqa: E402
from gradcore import nn, optim  # noqa: E402
from gradcore.datasets import make_classification  # noqa: E402
from gradcore.monitor import GradientMonitor  # noqa: E402

# monitor name -> factory (None: no monitor)
MONITORS: Dict[str, Optional[Callable[[nn.Module], GradientMonitor]]] = {
    "no monitor": None,
    "GradientMonitor(net)": lambda net: GradientMonitor(net),
    "norms only": lambda net: GradientMonitor(net, activations=False, updates=False),
}
PATHS = ("eager fit", "compiled fit", "compiled step")
KEPT = "kept step"  # the compiled step with its monitor kept over all rounds (time_kept)
BUDGET = {("eager fit", "GradientMonitor(net)"): 1.10, ("eager fit", "norms only"): 1.03,  # issue 7
          ("compiled fit", "GradientMonitor(net)"): 1.05, ("compiled step", "GradientMonitor(net)"): 1.05,
          (KEPT, "GradientMonitor(net)"): 1.05}  # issue 8


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
    return net, X.astype(np.float32), y.astype(np.float32).reshape(-1, 1)


def batches(X, y, batch: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(x, y) of each batch as the bare compiled step takes them: contiguous, integer labels
    as int64, other targets in X's dtype (made before any timing)."""
    yy = np.ascontiguousarray(y, dtype=np.int64) if y.ndim == 1 else np.ascontiguousarray(y, dtype=X.dtype)
    return [(np.ascontiguousarray(X[i:i + batch]), np.ascontiguousarray(yy[i:i + batch]))
            for i in range(0, len(X), batch)]


def run_epoch(path: str, net, X, y, batch: int, mon) -> float:
    """Seconds of one epoch of `path` with monitor `mon` (building the compiled step not timed)."""
    if path == "compiled step":
        step = gradcore.compile_step(net, monitor=mon)
        parts = batches(X, y, batch)
        t0 = time.perf_counter()
        for xb, yb in parts:
            step(xb, yb)
        elapsed = time.perf_counter() - t0
        step.release_monitor()
        return elapsed
    t0 = time.perf_counter()
    net.fit(X, y, epochs=1, batch_size=batch, verbose=0, callbacks=[mon] if mon else None,
            compiled=path != "eager fit")
    return time.perf_counter() - t0


def time_variants(net, X, y, batch: int, rounds: int, paths) -> Dict[Tuple[str, str], float]:
    """Median seconds per training step of each (path, monitor) over `rounds` rotated rounds."""
    steps = -(-len(X) // batch)
    names = [(p, m) for p in paths for m in MONITORS]
    samples: Dict[Tuple[str, str], List[float]] = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up (allocations, thread pools, caches) and is dropped
        for path, m in names[r % len(names):] + names[:r % len(names)]:
            make = MONITORS[m]
            mon = make(net) if make else None
            elapsed = run_epoch(path, net, X, y, batch, mon)
            if mon is not None:
                assert len(mon.history) > 0, "the monitor recorded nothing"
                mon.close()
            if r > 0:
                samples[(path, m)].append(elapsed / steps)
    return {name: float(np.median(s)) for name, s in samples.items()}


def time_kept(net, X, y, batch: int, rounds: int) -> Dict[Tuple[str, str], float]:
    """The steady state of the bare compiled step: one step per monitor kind, made once with
    its monitor and kept over every round (no monitor is made or closed in between, so no
    plan is lowered again): median seconds per training step, the kinds rotated per round."""
    parts = batches(X, y, batch)
    kept = {}
    for m, make in MONITORS.items():
        mon = make(net) if make else None
        kept[m] = (gradcore.compile_step(net, monitor=mon), mon)
    names = list(kept)
    samples: Dict[str, List[float]] = {m: [] for m in names}
    for r in range(rounds + 1):  # round 0 warms up and is dropped
        for m in names[r % len(names):] + names[:r % len(names)]:
            step = kept[m][0]
            t0 = time.perf_counter()
            for xb, yb in parts:
                step(xb, yb)
            if r > 0:
                samples[m].append((time.perf_counter() - t0) / len(parts))
    for step, mon in kept.values():
        step.release_monitor()
        if mon is not None:
            mon.close()
    return {(KEPT, m): float(np.median(v)) for m, v in samples.items()}


def print_rows(title: str, times: Dict[Tuple[str, str], float], paths) -> None:
    print(f"\n{title}")
    head = f"{'monitor':<24}" + "".join(f"{p:>28}" for p in paths)
    print(head)
    print("-" * len(head))
    for m in MONITORS:
        cells = []
        for p in paths:
            t, base = times[(p, m)], times[(p, "no monitor")]
            limit = BUDGET.get((p, m))
            mark = "" if limit is None else (" ok" if t / base <= limit else " over")
            cells.append(f"{fmt(t):>12} {t / base:6.3f}x{mark:<5}")
        print(f"{m:<24}" + "".join(f"{c:>28}" for c in cells))
    print("budgets: " + ", ".join(f"{p} / {m}: {v:.2f}x" for (p, m), v in BUDGET.items() if p in paths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per network (default 15, 3 with --quick)")
    parser.add_argument("--eager-only", action="store_true", help="only the eager fit (no compiled plans)")
    parser.add_argument("--threads", type=int, default=0, help="gradcore threads (default: gradcore's default)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    if args.threads:
        gradcore.set_num_threads(args.threads)
    paths = PATHS if not args.eager_only and hasattr(gradcore, "compile_step") else PATHS[:1]
    print(machine_line())
    print(f"median per step over {rounds} rounds of one epoch per variant, variants rotated; ratio = time / "
          f"time of the same path without a monitor")
    shown = paths + (KEPT,) if len(paths) == len(PATHS) else paths
    for title, build, rows, batch in (
            ("[784, 512, 256, 10] + BatchNorm, ReLU, Adam, float32, batch 128", mlp_batchnorm, 2048, 128),
            ("documents' [20, 50, 40, 30, 20, 10, 1] sigmoid, SGD, float32, batch 32", documents_sigmoid, 1024, 32)):
        net, X, y = build(rows // 4 if args.quick else rows)
        times = time_variants(net, X, y, batch, rounds, paths)
        if KEPT in shown:
            times.update(time_kept(net, X, y, batch, rounds))
        print_rows(f"{title}, {len(X)} rows", times, shown)


if __name__ == "__main__":
    main()
