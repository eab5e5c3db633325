"""Kernel benchmarks: gradcore's C++ kernels against the same math in NumPy, side by side.

    python benchmarks/kernels.py [--quick]

Every case times the kernel on preallocated buffers (what the compiled training step
does) and the NumPy expression of the same math; PyTorch is timed too when installed.
"""
from __future__ import annotations

import argparse
import os
import sys

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


def _timed(fn):
    """Time gradcore / NumPy callables in the main process only."""
    return None if PEER else measure(fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller statistics case (1M values)")
    parser.add_argument("--peer", choices=["torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    def all_rows():
        rows = [dense_case(32, 20, 50), dense_case(256, 1024, 2048),
                batchnorm_case(32, 50), batchnorm_case(256, 2048)]
        rows += stats_cases(1_000_000 if args.quick else 10_000_000)
        rows.append(cross_entropy_case())
        return rows

    if PEER:
        if torch is None:
            return
        import json

        print(f"PyTorch {torch.__version__} with {torch.get_num_threads()} threads")
        print(json.dumps({r["case"]: r.get("torch") for r in all_rows()}))
        return
    print(machine_line())
    rows = all_rows()
    peers = ["numpy"]
    peer = run_torch_peer(os.path.abspath(__file__))
    if peer:
        peers.append("torch")
        for r in rows:
            r["torch"] = peer.get(r["case"])
    print_table("kernels (median time per call)", rows, peers)


if __name__ == "__main__":
    main()
