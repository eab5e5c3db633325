"""Shared timing helpers for the benchmarks: median of repeated runs, side by side."""
from __future__ import annotations

import os
import platform
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np


def measure(fn: Callable[[], object], min_time: float = 0.2, repeats: int = 7) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` batches of calls."""
    fn()  # warm up (allocations, thread pools, page faults)
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / repeats / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return float(np.median(samples))


def peer_mode() -> bool:
    """True in the child process that times PyTorch alone (``--peer torch``)."""
    return "--peer" in sys.argv


def run_torch_peer(script: str) -> dict:
    """Run ``script --peer torch`` in a child process; returns {case: seconds}.

    PyTorch is timed in a process of its own: imported next to gradcore, its OpenMP
    runtime (loaded RTLD_GLOBAL) would also host gradcore's loops, and one library's
    thread settings would slow the other down. Each runs with its own defaults.
    """
    import importlib.util
    import json
    import subprocess

    if importlib.util.find_spec("torch") is None:
        return {}
    import gradcore

    env = dict(os.environ)
    if not gradcore._OMP_WAIT_POLICY_FROM_USER:
        env.pop("OMP_WAIT_POLICY", None)
    args = [a for a in sys.argv[1:] if a != "--peer"]
    try:
        out = subprocess.run([sys.executable, script, "--peer", "torch", *args], check=True, capture_output=True,
                             text=True, env=env).stdout
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"PyTorch peer failed: {exc}")
        return {}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    for ln in out.splitlines():
        if ln.startswith("PyTorch"):
            print(ln)
    return json.loads(lines[-1]) if lines else {}


def try_import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def machine_line() -> str:
    import os

    import gradcore

    info = gradcore.info()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}, "
            f"gradcore {info['version']} ({info['simd']}, OpenMP {'on' if info['openmp'] else 'off'}, "
            f"{info['threads']} threads, BLAS {info['blas']})")


def print_table(title: str, rows: List[Dict[str, Optional[float]]], peers: List[str]) -> None:
    """rows: {'case': str, 'gradcore': s, 'numpy': s, 'torch': s or None, ...}."""
    print(f"\n{title}")
    head = f"{'case':<44}{'gradcore':>12}" + "".join(f"{p:>12}{'ratio':>8}" for p in peers)
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['case']:<44}{fmt(r['gradcore']):>12}"
        for p in peers:
            t = r.get(p)
            ratio = f"{t / r['gradcore']:.2f}x" if t else "-"
            line += f"{fmt(t):>12}{ratio:>8}"
        print(line)
    print("ratio = peer time / gradcore time (above 1: gradcore is faster)")


def fmt(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"
