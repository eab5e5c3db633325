"""Kernel benchmarks: gradcore's C++ kernels against the same math in NumPy, side by side.

    python benchmarks/kernels.py [--quick] [--elementwise | --no-elementwise]

Every case times the kernel on preallocated buffers (what the compiled training step
does) and the NumPy expression of the same math; PyTorch is timed too when installed.

The element-wise section (--elementwise: it alone) gives nanoseconds per element of
sigmoid, tanh, gelu, softplus (gradcore's activation kernels) and exp, log1p, erf
(gradcore's vector math, _C.vmath) at 4K, 64K and 1M values, float32 and float64, on 1
and 2 threads (gradcore.set_num_threads, torch.set_num_threads): gradcore and NumPy
alternate round by round in this process and each keeps its median round, PyTorch does
the same in its own process. An extension without _C.vmath (a build from before it)
leaves the gradcore cells of exp, log1p and erf empty.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import machine_line, measure, peer_mode, print_table, run_torch_peer, try_import_torch  # noqa: E402

# PyTorch is timed in a child process of its own (see _timing.run_torch_peer).
PEER = peer_mode()
torch = try_import_torch() if PEER else None

import gradcore  # noqa: E402
from gradcore import _C  # noqa: E402

rng = np.random.default_rng(0)
f32 = np.float32


# ---------------------------------------------------------------------- dense
def dense_case(batch, n_in, n_out):
    X = rng.standard_normal((batch, n_in)).astype(f32)
    W = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(f32)  # (out, in), as torch.nn.Linear
    b = rng.standard_normal(n_out).astype(f32)
    dY = rng.standard_normal((batch, n_out)).astype(f32)
    Y, dX, dW, db = (np.empty((batch, n_out), f32), np.empty_like(X), np.empty_like(W), np.empty_like(b))

    def gc():
        _C.dense_forward(X, W, b, Y)
        _C.dense_backward(X, W, dY, dX, dW, db)

    def npy():
        Yn = X @ W.T + b
        dXn = dY @ W
        dWn = dY.T @ X
        dbn = dY.sum(axis=0)
        return Yn, dXn, dWn, dbn

    row = {"case": f"dense fwd+bwd {batch} x {n_in}->{n_out} f32", "gradcore": _timed(gc), "numpy": _timed(npy)}
    if torch is not None:
        tX, tW, tb, tdY = map(torch.from_numpy, (X, W, b, dY))

        def tch():
            torch.addmm(tb, tX, tW.t())
            tdY.mm(tW)
            tdY.t().mm(tX)
            tdY.sum(0)

        row["torch"] = measure(tch)
    return row


# ---------------------------------------------------------------------- batch norm
def batchnorm_case(batch, features, eps=1e-5, momentum=0.1):
    X = (rng.standard_normal((batch, features)) * 2 + 1).astype(f32)
    gamma = rng.standard_normal(features).astype(f32)
    beta = rng.standard_normal(features).astype(f32)
    dY = rng.standard_normal((batch, features)).astype(f32)
    rm, rv = np.zeros(features, f32), np.ones(features, f32)
    Y, dX = np.empty_like(X), np.empty_like(X)
    mean, invstd, dg, dbeta = (np.empty(features, f32) for _ in range(4))

    def gc():
        _C.batch_norm_forward_train(X, gamma, beta, rm, rv, momentum, eps, Y, mean, invstd)
        _C.batch_norm_backward(X, dY, gamma, mean, invstd, dX, dg, dbeta, True, False)

    rmn, rvn = rm.copy(), rv.copy()

    def npy():
        mu = X.mean(axis=0)
        xc = X - mu
        var = (xc * xc).mean(axis=0)
        inv = 1.0 / np.sqrt(var + eps)
        xhat = xc * inv
        out = xhat * gamma + beta
        rmn[:] = (1 - momentum) * rmn + momentum * mu
        rvn[:] = (1 - momentum) * rvn + momentum * var * (batch / (batch - 1))
        dbn = dY.sum(axis=0)
        dgn = (dY * xhat).sum(axis=0)
        dXn = (gamma * inv / batch) * (batch * dY - dbn - xhat * dgn)
        return out, dXn, dgn, dbn

    row = {"case": f"batch_norm fwd+bwd {batch} x {features} f32", "gradcore": _timed(gc), "numpy": _timed(npy)}
    if torch is not None:
        tX = torch.from_numpy(X.copy()).requires_grad_(True)
        tg = torch.from_numpy(gamma.copy()).requires_grad_(True)
        tb = torch.from_numpy(beta.copy()).requires_grad_(True)
        trm, trv, tdY = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy()), torch.from_numpy(dY)

        def tch():
            out = torch.nn.functional.batch_norm(tX, trm, trv, tg, tb, True, momentum, eps)
            torch.autograd.grad(out, (tX, tg, tb), tdY)

        row["torch"] = measure(tch)
    return row


# ---------------------------------------------------------------------- gradient statistics
def stats_cases(total=10_000_000, parts=8):
    sizes = np.full(parts, total // parts)
    grads = [rng.standard_normal(int(s)).astype(f32) for s in sizes]

    def gc_stats():
        return _C.grad_stats(grads)

    def np_stats():
        return [(float(np.dot(g, g)), float(np.abs(g).max()), int(np.count_nonzero(~np.isfinite(g)))) for g in grads]

    def gc_norm():
        return _C.global_norm(grads)

    def np_norm():
        return float(np.sqrt(sum(np.dot(g, g) for g in grads)))

    rows = [
        {"case": f"grad stats (sumsq, max|x|, nonfinite) {total // 10**6}M f32 / {parts}",
         "gradcore": _timed(gc_stats), "numpy": _timed(np_stats)},
        {"case": f"global L2 norm {total // 10**6}M f32 / {parts}", "gradcore": _timed(gc_norm),
         "numpy": _timed(np_norm)},
    ]
    if torch is not None:
        tg = [torch.from_numpy(g) for g in grads]

        def t_stats():
            return [(torch.dot(g, g).item(), g.abs().max().item(), (~torch.isfinite(g)).sum().item()) for g in tg]

        def t_norm():
            return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in tg])).item()

        rows[0]["torch"] = measure(t_stats)
        rows[1]["torch"] = measure(t_norm)
    return rows


# ---------------------------------------------------------------------- softmax cross-entropy
def cross_entropy_case(batch=128, classes=10):
    logits = rng.standard_normal((batch, classes)).astype(f32)
    labels = rng.integers(0, classes, batch).astype(np.int64)
    grad = np.empty_like(logits)

    def gc():
        return _C.cross_entropy_loss(logits, labels, grad)

    rows_idx = np.arange(batch)

    def npy():
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) - z[rows_idx, labels]))
        g = e / s
        g[rows_idx, labels] -= 1
        g /= batch
        return loss, g

    row = {"case": f"softmax cross-entropy fwd+bwd {batch} x {classes} f32", "gradcore": _timed(gc),
           "numpy": _timed(npy)}
    if torch is not None:
        tl = torch.from_numpy(logits.copy()).requires_grad_(True)
        tlab = torch.from_numpy(labels)

        def tch():
            loss = torch.nn.functional.cross_entropy(tl, tlab)
            torch.autograd.grad(loss, tl)

        row["torch"] = measure(tch)
    return row


# ---------------------------------------------------------------------- element-wise ns / element
ELEMENTWISE_SIZES = (4096, 65536, 1 << 20)
ELEMENTWISE_FUNCS = ("sigmoid", "tanh", "gelu", "softplus", "exp", "log1p", "erf")


def _elementwise_input(name, n, dtype):
    x = np.random.default_rng(5).normal(0.0, 3.0, n).astype(dtype)
    return np.abs(x) if name == "log1p" else x  # log1p on its domain


def _gradcore_elementwise(name, x, y):
    if name in ("exp", "log1p", "erf"):
        if not hasattr(_C, "vmath"):
            return None
        return lambda: _C.vmath(name, x, y)
    return lambda: _C.activation_forward(name, x, y, 0.0)


def _numpy_elementwise(name, x, y):
    try:
        from scipy import special
    except ImportError:
        special = None
    if name == "sigmoid":
        return (lambda: special.expit(x, out=y)) if special else None
    if name == "gelu":
        # exact GELU = x Phi(x); scipy's ndtr is Phi
        return (lambda: np.multiply(x, special.ndtr(x), out=y)) if special else None
    if name == "softplus":
        return lambda: np.logaddexp(0, x, out=y)
    if name == "erf":
        return (lambda: special.erf(x, out=y)) if special else None
    return lambda: getattr(np, name)(x, out=y)


def _torch_elementwise(name, x, y):
    t, out = torch.from_numpy(x), torch.from_numpy(y)
    F = torch.nn.functional
    return {"sigmoid": lambda: torch.sigmoid(t, out=out), "tanh": lambda: torch.tanh(t, out=out),
            "gelu": lambda: out.copy_(F.gelu(t)), "softplus": lambda: out.copy_(F.softplus(t)),
            "exp": lambda: torch.exp(t, out=out), "log1p": lambda: torch.log1p(t, out=out),
            "erf": lambda: torch.erf(t, out=out)}[name]


def _median_rounds(fns, rounds=7, batch_time=0.004):
    """{key: median seconds per call}: the callables alternate round by round."""
    inner = {}
    for k, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        inner[k] = max(1, int(batch_time / max(time.perf_counter() - t0, 1e-7)))
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                fn()
            samples[k].append((time.perf_counter() - t0) / inner[k])
    return {k: float(np.median(v)) for k, v in samples.items()}


def elementwise_rows():
    """One row per (function, dtype, size, threads), times in seconds per element."""
    rows = []
    before = torch.get_num_threads() if PEER else gradcore.get_num_threads()
    for threads in (1, 2):
        if PEER:
            torch.set_num_threads(threads)
        else:
            gradcore.set_num_threads(threads)
        for dtype in (np.float32, np.float64):
            for n in ELEMENTWISE_SIZES:
                for name in ELEMENTWISE_FUNCS:
                    x = _elementwise_input(name, n, dtype)
                    y = np.empty_like(x)
                    row = {"case": f"{name} {np.dtype(dtype).name} {n // 1024}K {threads}t"}
                    if PEER:
                        fns = {"torch": _torch_elementwise(name, x, y)}
                    else:
                        fns = {"gradcore": _gradcore_elementwise(name, x, y), "numpy": _numpy_elementwise(name, x, y)}
                    fns = {k: f for k, f in fns.items() if f is not None}
                    for k, sec in _median_rounds(fns).items():
                        row[k] = sec / n
                    rows.append(row)
    if PEER:
        torch.set_num_threads(before)
    else:
        gradcore.set_num_threads(before)
    return rows


def print_elementwise(rows):
    print("\nelement-wise (median ns per element; ratio = torch / gradcore, above 1: gradcore is faster)")
    head = f"{'case':<28}{'gradcore':>10}{'numpy':>10}{'torch':>10}{'ratio':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = "".join(f"{r[k] * 1e9:>10.2f}" if r.get(k) else f"{'-':>10}" for k in ("gradcore", "numpy", "torch"))
        ratio = f"{r['torch'] / r['gradcore']:.2f}x" if r.get("torch") and r.get("gradcore") else "-"
        print(f"{r['case']:<28}{cells}{ratio:>8}")


def _timed(fn):
    """Time gradcore / NumPy callables in the main process only."""
    return None if PEER else measure(fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller statistics case (1M values)")
    sections = parser.add_mutually_exclusive_group()
    sections.add_argument("--elementwise", action="store_true", help="only the element-wise ns/element section")
    sections.add_argument("--no-elementwise", action="store_true", help="skip the element-wise section")
    parser.add_argument("--peer", choices=["torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    def all_rows():
        if args.elementwise:
            return []
        rows = [dense_case(32, 20, 50), dense_case(256, 1024, 2048),
                batchnorm_case(32, 50), batchnorm_case(256, 2048)]
        rows += stats_cases(1_000_000 if args.quick else 10_000_000)
        rows.append(cross_entropy_case())
        return rows

    def all_elementwise():
        return [] if args.no_elementwise else elementwise_rows()

    if PEER:
        if torch is None:
            return
        import json

        print(f"PyTorch {torch.__version__} with {torch.get_num_threads()} threads")
        rows = all_rows()
        print(json.dumps({r["case"]: r.get("torch") for r in rows + all_elementwise()}))
        return
    print(machine_line())
    rows, elementwise = all_rows(), all_elementwise()
    peers = ["numpy"]
    peer = run_torch_peer(os.path.abspath(__file__))
    if peer:
        peers.append("torch")
        for r in rows + elementwise:
            r["torch"] = peer.get(r["case"])
    if rows:
        print_table("kernels (median time per call)", rows, peers)
    if elementwise:
        print_elementwise(elementwise)


if __name__ == "__main__":
    main()
