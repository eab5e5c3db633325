"""The GEMM floor of issue 8's networks: the matrix products of one training step, alone,
in each library's BLAS, side by side.

    python benchmarks/gemm_bound.py [--nets net3,net4] [--threads N] [--repeats R]

A training step of a Dense network needs, per layer of ``in`` -> ``out`` features at batch
``B``, three products: the forward ``X W^T`` (B x out), the weight gradient ``dY^T X``
(out x in) and, except for the first layer, the input gradient ``dY W`` (B x in). Their
sum is a floor under any step that runs them through that BLAS, whatever else it does.

Columns (each library in a child process of its own, ``--threads`` threads, 1 by default;
with 1 thread the child is pinned to one core, as train_step.py's children are):

  gradcore             gradcore's dense kernels (``_C.dense_forward`` without a bias,
                       ``_C.dense_backward`` with only dW or only dX asked), which call
                       SciPy's OpenBLAS (DESIGN.md decision 6); dX of a large float32 W
                       goes through blocks of W transposed (csrc/dense.cpp)
  OpenBLAS plain       SciPy's sgemm (``scipy.linalg.cython_blas``) with the transpose
                       flags of the row-major product, no copies
  OpenBLAS best form   the fastest of the four transpose flag pairs for the same product
                       (reaching it needs a transposed copy of an operand, not counted)
  PyTorch (MKL)        ``torch.matmul`` into a preallocated output, the same layouts
  JAX (XLA)            a jitted product of the same layouts, ``block_until_ready``

A cell is the least over ``--repeats`` batches of the median per call (the least
disturbed batch on a shared machine).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _timing import machine_line  # noqa: E402
from train_step import NETWORKS  # noqa: E402

LIBS = ("openblas", "torch", "jax")
FORMS = ("NN", "NT", "TN", "TT")


def products(net: str):
    """(label, kind, B, out, in) of every product of one step of ``net``."""
    spec = NETWORKS[net]
    dense = [layer for layer in spec["layers"] if layer[0] == "dense"]
    rows = []
    for i, (_, fin, fout, _) in enumerate(dense):
        rows.append((f"layer {i + 1} X W^T", "fwd", spec["batch"], fout, fin))
        rows.append((f"layer {i + 1} dY^T X", "dw", spec["batch"], fout, fin))
        if i > 0:
            rows.append((f"layer {i + 1} dY W", "dx", spec["batch"], fout, fin))
    return rows


def timed(fn, repeats: int) -> float:
    """Least over ``repeats`` batches of the median seconds per call."""
    fn()
    t0 = time.perf_counter()
    fn()
    inner = max(1, min(50, int(0.05 / max(time.perf_counter() - t0, 1e-7))))
    best = float("inf")
    for _ in range(repeats):
        samples = []
        for _ in range(inner):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        best = min(best, float(np.median(samples)))
    return best


def scipy_sgemm():
    """SciPy's Fortran sgemm as a ctypes function (the pointer gradcore takes too)."""
    from scipy.linalg import cython_blas

    cap = cython_blas.__pyx_capi__["sgemm"]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    addr = api.PyCapsule_GetPointer(cap, api.PyCapsule_GetName(cap))
    i, f, p = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_float), ctypes.c_void_p
    proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, i, i, i, f, p, i, p, i, f, p, i)
    return proto(addr)


def colmajor(kind: str, b: int, out: int, fin: int):
    """(flags, m, n, k) of the column-major sgemm gradcore's row-major call becomes."""
    if kind == "fwd":  # Y (B, out) = X W^T
        return "TN", out, b, fin
    if kind == "dw":  # dW (out, in) = dY^T X
        return "NT", fin, out, b
    return "NN", fin, b, out  # dX (B, in) = dY W


def gradcore_kernel(kind: str, b: int, out: int, fin: int, threads: int):
    """A call of gradcore's own dense kernel computing just this product."""
    import gradcore
    from gradcore import _C

    gradcore.set_num_threads(threads)
    rng = np.random.default_rng(1)
    x, w, dy = (rng.standard_normal(s, dtype=np.float32) for s in ((b, fin), (out, fin), (b, out)))
    if kind == "fwd":
        y = np.empty((b, out), np.float32)
        return lambda: _C.dense_forward(x, w, None, y, "identity", 0.0, None)
    if kind == "dw":
        dw = np.empty((out, fin), np.float32)
        return lambda: _C.dense_backward(x, w, dy, None, dw, None, False)
    dx = np.empty((b, fin), np.float32)
    return lambda: _C.dense_backward(x, w, dy, dx, None, None, False)


def child_openblas(net: str, repeats: int, threads: int) -> dict:
    sgemm = scipy_sgemm()
    rng = np.random.default_rng(0)
    res = {}
    for label, kind, b, out, fin in products(net):
        used, m, n, k = colmajor(kind, b, out, fin)
        a = rng.standard_normal(m * k, dtype=np.float32)
        bb = rng.standard_normal(k * n, dtype=np.float32)
        c = np.empty(m * n, dtype=np.float32)
        cell = {}
        for form in FORMS:
            ints = [ctypes.c_int(v) for v in (m, n, k, m if form[0] == "N" else k, k if form[1] == "N" else n, m)]
            one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
            args = (form[0].encode(), form[1].encode(), *(ctypes.byref(v) for v in ints[:3]), ctypes.byref(one),
                    a.ctypes.data, ctypes.byref(ints[3]), bb.ctypes.data, ctypes.byref(ints[4]),
                    ctypes.byref(zero), c.ctypes.data, ctypes.byref(ints[5]))
            cell[form] = timed(lambda: sgemm(*args), repeats)
        res[label] = {"as called": cell[used], "best": min(cell.values()), "form": used,
                      "best form": min(cell, key=cell.get),
                      "gradcore": timed(gradcore_kernel(kind, b, out, fin, threads), repeats)}
    return res


def child_torch(net: str, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    res = {}
    for label, kind, b, out, fin in products(net):
        x, w, dy = torch.randn(b, fin), torch.randn(out, fin), torch.randn(b, out)
        if kind == "fwd":
            dst = torch.empty(b, out)
            res[label] = timed(lambda: torch.matmul(x, w.t(), out=dst), repeats)
        elif kind == "dw":
            dst = torch.empty(out, fin)
            res[label] = timed(lambda: torch.matmul(dy.t(), x, out=dst), repeats)
        else:
            dst = torch.empty(b, fin)
            res[label] = timed(lambda: torch.matmul(dy, w, out=dst), repeats)
    return res


def child_jax(net: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    ops = {"fwd": jax.jit(lambda x, w, dy: x @ w.T), "dw": jax.jit(lambda x, w, dy: dy.T @ x),
           "dx": jax.jit(lambda x, w, dy: dy @ w)}
    res = {}
    for label, kind, b, out, fin in products(net):
        args = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in ((b, fin), (out, fin), (b, out))]
        f = ops[kind]
        res[label] = timed(lambda: f(*args).block_until_ready(), repeats)
    return res


def run_child(lib: str, net: str, threads: int, repeats: int) -> dict:
    env = dict(os.environ)
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    if lib == "jax":
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", lib, "--nets", net, "--threads", str(threads),
           "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail[:160]}
    return json.loads(lines[-1])


def ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", default="net3,net4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=LIBS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.threads == 1 and hasattr(os, "sched_setaffinity"):
            # one core, before any library sizes its thread pool from the affinity mask (XLA
            # ignores the thread-count variables)
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        net = args.nets
        out = {"openblas": lambda: child_openblas(net, args.repeats, args.threads),
               "torch": lambda: child_torch(net, args.repeats, args.threads),
               "jax": lambda: child_jax(net, args.repeats)}[args.child]()
        print(json.dumps(out))
        return
    print(machine_line())
    print(f"{args.threads} thread(s), float32, ms per product (least over {args.repeats} batches of the median)")
    for net in args.nets.split(","):
        got = {lib: run_child(lib, net, args.threads, args.repeats) for lib in LIBS}
        print(f"\n{net}: {NETWORKS[net]['title']}")
        print("| product | (B, out, in) | gradcore | OpenBLAS plain | OpenBLAS best form | PyTorch (MKL) | JAX (XLA) |")
        print("|---|---|---|---|---|---|---|")
        totals = {"gradcore": 0.0, "as called": 0.0, "best": 0.0, "torch": 0.0, "jax": 0.0}
        for label, kind, b, out, fin in products(net):
            ob = got["openblas"].get(label)
            cells = ([ms(ob["gradcore"]), f"{ms(ob['as called'])} ({ob['form']})",
                      f"{ms(ob['best'])} ({ob['best form']})"] if ob else ["-", "-", "-"])
            if ob:
                for key in ("gradcore", "as called", "best"):
                    totals[key] += ob[key]
            for lib in ("torch", "jax"):
                v = got[lib].get(label)
                cells.append(ms(v) if v is not None else "-")
                if v is not None:
                    totals[lib] += v
            print(f"| {label} | ({b}, {out}, {fin}) | " + " | ".join(cells) + " |")
        print("| **sum** | | " + " | ".join(ms(totals[k]) for k in ("gradcore", "as called", "best", "torch", "jax"))
              + " |")
        for lib in LIBS:
            if "error" in got[lib]:
                print(f"{lib}: {got[lib]['error']}")


if __name__ == "__main__":
    main()
