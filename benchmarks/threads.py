"""Thread-policy benchmark: every parallel kernel family on 1 thread against 2 threads.

    python benchmarks/threads.py [--quick] [--only SUBSTR] [--min 4096] [--max 16777216]
    python benchmarks/threads.py --gemm [--rounds 21]   # BLAS: dense-layer GEMMs, 1 vs 2 threads
    python benchmarks/threads.py --nets [--rounds 21]   # whole eager training steps, 1 vs 2 threads
    python benchmarks/threads.py --forms [--rounds 15]  # BLAS: the four sgemm call forms per shape, 1 thread

DESIGN.md (decision 8): no thread setting may be slower than one thread. Each kernel
decides alone whether to fork (threads_for in csrc/parallel.h, with a grain per family),
so this script times every family at sizes from 4K to 16M float32 values (geometric,
factor 2; factor 4 with --quick) under gradcore.set_num_threads(1) and (2), side by side
in one process: the two settings alternate batch by batch and each keeps its fastest
batch, so a neighbour's load hits both alike. A row is flagged when 2 threads are more
than 3% slower than 1, after up to --recheck more sets of rounds (a real slowdown
survives them, a neighbour's burst does not); the speed-up column is t(1) / t(2).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import fmt, machine_line  # noqa: E402

import gradcore  # noqa: E402
from gradcore import _C  # noqa: E402

f32 = np.float32
TOLERANCE = 1.03  # 2 threads may be up to 3% slower than 1 (timing noise) before a row is flagged

Case = Callable[[int], Callable[[], object]]  # n -> zero-argument kernel call on prepared buffers
CASES: List[Tuple[str, str, Case]] = []  # (family, name, make)


def case(family: str, name: str):
    def register(make: Case) -> Case:
        CASES.append((family, name, make))
        return make

    return register


def data(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(f32)


def offsets_for(n: int, pieces: int = 4) -> np.ndarray:
    """Flat-buffer offsets of `pieces` tensors (a small network's parameters)."""
    return np.linspace(0, n, pieces + 1).astype(np.int64)


def activation_cases(family: str, kinds, alpha: float) -> None:
    """Forward and backward cases of each activation kind (alpha: leaky slope / elu alpha)."""
    for kind in kinds:
        @case(family, f"{kind} fwd")
        def _(n, kind=kind):
            x, y = data(n), np.empty(n, f32)
            return lambda: _C.activation_forward(kind, x, y, alpha)

        @case(family, f"{kind} bwd")
        def _(n, kind=kind):
            x, dy, dx, y = data(n), data(n, 1), np.empty(n, f32), np.empty(n, f32)
            _C.activation_forward(kind, x, y, alpha)
            return lambda: _C.activation_backward(kind, x, y, dy, dx, alpha)


# ------------------------------------------------------------ memory-bound element-wise
activation_cases("elementwise", ("relu", "leaky_relu"), 0.01)


@case("elementwise", "prelu fwd (one slope)")
def _(n):
    x, a, y = data(n), np.full(1, 0.25, f32), np.empty(n, f32)
    return lambda: _C.prelu_forward(x, a, y)


@case("elementwise", "dropout fwd")
def _(n):
    x, y, mask = data(n), np.empty(n, f32), np.empty(n, np.uint8)
    return lambda: _C.dropout_forward(x, y, mask, 0.1, 7)


@case("elementwise", "dropout bwd")
def _(n):
    dy, dx, mask = data(n), np.empty(n, f32), np.ones(n, np.uint8)
    return lambda: _C.dropout_backward(dy, mask, 0.1, dx)


@case("elementwise", "clip_grads scaling pass")
def _(n):
    g, off = data(n), offsets_for(n)
    sumsq, scales = np.zeros(4), np.ones(4)
    return lambda: _C.clip_grads(g, off, sumsq, scales, global_clip_norm=1e30, compute_scales=False)


@case("optimizer", "clip_grads (norm + scale)")
def _(n):
    g, off = data(n), offsets_for(n)
    sumsq, scales = np.zeros(4), np.ones(4)
    return lambda: _C.clip_grads(g, off, sumsq, scales, global_clip_norm=1e30)


@case("optimizer", "sgd momentum step")
def _(n):
    p, g, buf, off = data(n), data(n, 1), np.zeros(n, f32), offsets_for(n)
    sumsq, scales = np.zeros(4), np.ones(4)
    return lambda: _C.sgd_step(p, g, buf, off, sumsq, scales, lr=1e-6, momentum=0.9)


@case("optimizer", "adam step")
def _(n):
    p, g, m, v, off = data(n), data(n, 1), np.zeros(n, f32), np.zeros(n, f32), offsets_for(n)
    sumsq, scales = np.zeros(4), np.ones(4)
    return lambda: _C.adam_step(p, g, m, v, None, off, sumsq, scales, lr=1e-6, beta1=0.9, beta2=0.999, eps=1e-8,
                                bias_correction1=0.1, bias_correction2=0.001)


@case("optimizer", "rmsprop step")
def _(n):
    p, g, sq, off = data(n), data(n, 1), np.zeros(n, f32), offsets_for(n)
    sumsq, scales = np.zeros(4), np.ones(4)
    return lambda: _C.rmsprop_step(p, g, sq, None, None, off, sumsq, scales, lr=1e-6, alpha=0.99, eps=1e-8)


@case("optimizer", "adagrad step")
def _(n):
    p, g, ss, off = data(n), data(n, 1), np.zeros(n, f32), offsets_for(n)
    sumsq, scales = np.zeros(4), np.ones(4)
    return lambda: _C.adagrad_step(p, g, ss, off, sumsq, scales, lr=1e-6, eps=1e-10)


# ------------------------------------------------------------ transcendental activations
activation_cases("transcendental", ("sigmoid", "tanh", "gelu", "silu", "elu", "softplus"), 1.0)


# ------------------------------------------------------------ vector math (csrc/vmath.h)
for _fn in ("exp", "log1p", "tanh", "erf"):
    @case("vmath", f"vmath {_fn}")
    def _(n, fn=_fn):
        x, y = np.abs(data(n)), np.empty(n, f32)
        return lambda: _C.vmath(fn, x, y)


@case("transcendental", "softmax fwd (rows x 64)")
def _(n):
    x, y = data(n).reshape(-1, 64), np.empty((n // 64, 64), f32)
    return lambda: _C.softmax_forward(x, y)


@case("transcendental", "log_softmax fwd (rows x 64)")
def _(n):
    x, y = data(n).reshape(-1, 64), np.empty((n // 64, 64), f32)
    return lambda: _C.log_softmax_forward(x, y)


@case("rowwise", "softmax bwd (rows x 64)")
def _(n):
    x, y, dy, dx = data(n).reshape(-1, 64), np.empty((n // 64, 64), f32), data(n, 1).reshape(-1, 64), np.empty(
        (n // 64, 64), f32)
    _C.softmax_forward(x, y)
    return lambda: _C.softmax_backward(y, dy, dx)


# ------------------------------------------------------------ reductions
@case("reduction", "global_norm (8 arrays)")
def _(n):
    arrays = [data(n // 8, i) for i in range(8)]
    return lambda: _C.global_norm(arrays)


@case("reduction", "grad_stats (8 arrays)")
def _(n):
    arrays = [data(n // 8, i) for i in range(8)]
    return lambda: _C.grad_stats(arrays)


@case("reduction", "grad_stats_flat (4 segments)")
def _(n):
    buf, off = data(n), offsets_for(n)
    return lambda: _C.grad_stats_flat(buf, off)


@case("reduction", "activation_stats (rows x 512)")
def _(n):
    a = data(n).reshape(-1, 512) if n >= 512 else data(n)
    return lambda: _C.activation_stats(a)


@case("reduction", "activation_stats dead, all alive at the end")
def _(n):
    z = data(n).reshape(-1, 512) if n >= 512 else data(n)
    z[:-1] = -np.abs(z[:-1])  # no early exit: a unit is only seen alive in the last row
    z[-1] = 1.0
    return lambda: _C.activation_stats(z, z, "dead")


@case("reduction", "activation_stats saturated")
def _(n):
    a, z = data(n), data(n, 1, scale=5.0)
    return lambda: _C.activation_stats(a, z, "saturated", 5.0)


@case("reduction", "diff_sumsq_flat (4 segments)")
def _(n):
    a, b, off = data(n), data(n, 1), offsets_for(n)
    return lambda: _C.diff_sumsq_flat(a, b, off)


@case("reduction", "prelu bwd (one slope, dx + dalpha)")
def _(n):
    x, dy, dx, a, da = data(n), data(n, 1), np.empty(n, f32), np.full(1, 0.25, f32), np.zeros(1, f32)
    return lambda: _C.prelu_backward(x, a, dy, dx, da)


@case("rowwise", "layer_norm fwd (rows x 256)")
def _(n):
    x, y = data(n).reshape(-1, 256), np.empty((n // 256, 256), f32)
    g, b = np.ones(256, f32), np.zeros(256, f32)
    m, s = np.empty(n // 256, f32), np.empty(n // 256, f32)
    return lambda: _C.layer_norm_forward(x, g, b, 1e-5, y, m, s)


@case("rowwise", "layer_norm bwd (rows x 256)")
def _(n):
    r = n // 256
    x, dy, dx = data(n).reshape(r, 256), data(n, 1).reshape(r, 256), np.empty((r, 256), f32)
    g, b, y = np.ones(256, f32), np.zeros(256, f32), np.empty((r, 256), f32)
    m, s, dg, db = (np.empty(k, f32) for k in (r, r, 256, 256))
    _C.layer_norm_forward(x, g, b, 1e-5, y, m, s)
    return lambda: _C.layer_norm_backward(x, dy, g, m, s, dx, dg, db)


def batch_norm_buffers(n: int, c: int = 2048):
    """X (rows, c) of about n values, Y like it, gamma, beta, running mean / var, mean, invstd."""
    r = max(n // c, 1)
    x, y = data(r * c).reshape(r, c), np.empty((r, c), f32)
    return x, y, np.ones(c, f32), np.zeros(c, f32), np.zeros(c, f32), np.ones(c, f32), np.empty(c, f32), np.empty(
        c, f32)


@case("columnwise", "batch_norm fwd train (rows x 2048)")
def _(n):
    x, y, g, b, rm, rv, m, s = batch_norm_buffers(n)
    return lambda: _C.batch_norm_forward_train(x, g, b, rm, rv, 0.1, 1e-5, y, m, s)


@case("columnwise", "batch_norm bwd (rows x 2048)")
def _(n):
    x, y, g, b, rm, rv, m, s = batch_norm_buffers(n)
    dy, dx, dg, db = data(x.size, 1).reshape(x.shape), np.empty_like(x), np.empty_like(g), np.empty_like(g)
    _C.batch_norm_forward_train(x, g, b, rm, rv, 0.1, 1e-5, y, m, s)
    return lambda: _C.batch_norm_backward(x, dy, g, m, s, dx, dg, db, True, False)


@case("columnwise", "batch_norm fwd eval (rows x 2048)")
def _(n):
    x, y, g, b, rm, rv, _m, _s = batch_norm_buffers(n)
    return lambda: _C.batch_norm_forward_eval(x, g, b, rm, rv, 1e-5, y)


@case("columnwise", "dense bias grad (rows x 1024)")
def _(n):
    c = 1024
    r = max(n // c, 1)
    x, w = np.zeros((r, 1), f32), np.zeros((c, 1), f32)
    dy, db = data(r * c).reshape(r, c), np.empty(c, f32)
    return lambda: _C.dense_backward(x, w, dy, None, None, db)


@case("serial", "mse_loss + grad")
def _(n):
    p, t, g = data(n), data(n, 1), np.empty(n, f32)
    return lambda: _C.mse_loss(p, t, g)


# ------------------------------------------------------------ timing
def time_pair(fn: Callable[[], object], rounds: int, batch_seconds: float) -> Dict[int, float]:
    """Fastest seconds per call of fn under 1 and 2 threads, the settings alternating."""
    samples = time_samples(fn, [(t, lambda t=t: gradcore.set_num_threads(t)) for t in (1, 2)], rounds, batch_seconds)
    return {t: min(v) for t, v in samples.items()}


# ------------------------------------------------------------ BLAS (GEMM) and whole steps
# The four networks of issue 8: (label, layer widths, batch).
NETS = [
    ("[20,50,40,30,20,10,1] b32", [20, 50, 40, 30, 20, 10, 1], 32),
    ("[20,50,40,30,20,10,1] b800", [20, 50, 40, 30, 20, 10, 1], 800),
    ("[784,512,256,10]+BN b128", [784, 512, 256, 10], 128),
    ("[1024,2048,2048,10] b256", [1024, 2048, 2048, 10], 256),
]


def gemm_shapes():
    """(op, m, n, k) of every GEMM a dense layer's forward and backward run for NETS, each
    once, smallest m*n*k first: forward Y = X W^T (batch, out, in), dX = dY W (batch, in,
    out), dW = dY^T X (out, in, batch)."""
    seen = set()
    for _label, widths, batch in NETS:
        for i, o in zip(widths, widths[1:]):
            seen.update({("X W^T", batch, o, i), ("dY W", batch, i, o), ("dY^T X", o, i, batch)})
    return sorted(seen, key=lambda s: (s[1] * s[2] * s[3], s))


def gemm_call(op: str, m: int, n: int, k: int, dtype):
    """A zero-argument call of gradcore's GEMM in the layout dense_forward / dense_backward use."""
    rng = np.random.default_rng(0)
    if op == "X W^T":  # X (m, k), W (n, k), Y (m, n)
        X, W, Y = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((n, k)).astype(dtype), np.empty(
            (m, n), dtype)
        return lambda: _C.dense_forward(X, W, None, Y, "identity", 0.0, None)
    if op == "dY W":  # dY (m, k) with k = out, W (k, n) with n = in, dX (m, n)
        X, W, dY, dX = (np.zeros((m, n), dtype), rng.standard_normal((k, n)).astype(dtype),
                        rng.standard_normal((m, k)).astype(dtype), np.empty((m, n), dtype))
        return lambda: _C.dense_backward(X, W, dY, dX, None, None, False)
    # dW (m, n) = dY^T X with dY (k, m), X (k, n)
    X, W, dY, dW = (rng.standard_normal((k, n)).astype(dtype), np.zeros((m, n), dtype),
                    rng.standard_normal((k, m)).astype(dtype), np.empty((m, n), dtype))
    return lambda: _C.dense_backward(X, W, dY, None, dW, None, False)


def run_forms(rounds: int) -> int:
    """For each dense-layer GEMM shape of NETS (float32, 1 thread), the four column-major
    call forms nn / nt / tn / tt of the same (M, N, K) through SciPy's sgemm (the BLAS
    gradcore calls), interleaved batches, medians. The form a layer uses is fixed by how
    its arrays are stored (gemm_rowmajor maps row-major C(m, n) to column-major M = n,
    N = m): X W^T is "tn", dY W is "nn", dY^T X is "nt". A faster form for the same shape
    says what storing W (or dY) the other way round would buy."""
    from scipy.linalg import blas as sblas

    used = {"X W^T": "tn", "dY W": "nn", "dY^T X": "nt"}
    print(f"sgemm call forms, column-major M x N x K, 1 thread, median of {rounds} interleaved batches")
    head = f"{'op':<8}{'M':>6}{'N':>6}{'K':>6}" + "".join(f"{f:>11}" for f in ("nn", "nt", "tn", "tt")) + "   used"
    print(head)
    print("-" * len(head))
    saved = gradcore.get_num_threads()
    rng = np.random.default_rng(0)
    try:
        set_threads(1, "forced")
        for op, m, n, k in gemm_shapes():
            M, N, K = n, m, k  # gemm_rowmajor's column-major view
            calls = []
            for form in ("nn", "nt", "tn", "tt"):
                ta, tb = form[0] == "t", form[1] == "t"
                A = np.asfortranarray(rng.standard_normal((K, M) if ta else (M, K)).astype(f32))
                B = np.asfortranarray(rng.standard_normal((N, K) if tb else (K, N)).astype(f32))
                C = np.zeros((M, N), f32, order="F")
                calls.append((form, lambda A=A, B=B, C=C, ta=ta, tb=tb: sblas.sgemm(
                    1.0, A, B, beta=1.0, c=C, trans_a=ta, trans_b=tb, overwrite_c=1)))
            fn_of = dict(calls)
            box = {"fn": None}
            samples = time_samples(lambda: box["fn"](), [(f, lambda f=f: box.update(fn=fn_of[f])) for f in fn_of],
                                   rounds, 0.003)
            med = {f: float(np.median(v)) for f, v in samples.items()}
            print(f"{op:<8}{M:>6}{N:>6}{K:>6}" + "".join(f"{fmt(med[f]):>11}" for f in ("nn", "nt", "tn", "tt"))
                  + f"   {used[op]}", flush=True)
    finally:
        set_threads(saved, "policy")
    return 0


def set_threads(t: int, blas: str) -> None:
    """gradcore.set_num_threads(t); blas="forced": every GEMM on t OpenBLAS threads (the
    per-GEMM policy, when this build has one, switched off), "policy": the build's own."""
    gradcore.set_num_threads(t)
    if hasattr(_C, "set_blas_policy"):
        _C.set_blas_policy(blas != "forced")


def time_samples(fn: Callable[[], object], settings, rounds: int, batch_seconds: float) -> Dict[object, list]:
    """Seconds per call of fn in each batch under each setting (key, a zero-argument function
    that applies it), the settings interleaved batch by batch, their order rotating one
    place each round (with two settings: alternating which goes first)."""
    settings = list(settings)
    calls = None
    for key, apply in settings:  # warm up and size the batches
        apply()
        fn()
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        c = max(1, int(batch_seconds / once))
        calls = c if calls is None else min(calls, c)
    samples = {key: [] for key, _ in settings}
    for r in range(rounds):
        shift = r % len(settings)
        for key, apply in settings[shift:] + settings[:shift]:
            apply()
            fn()  # the first call after a switch may resize a pool
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[key].append((time.perf_counter() - t0) / calls)
    return samples


def run_gemm(rounds: int) -> int:
    """Every dense-layer GEMM of NETS on 1 and 2 OpenBLAS threads (forced, gradcore's
    own loops alike), float32 and float64, medians of interleaved batches."""
    print(f"GEMMs of dense forward / backward for {', '.join(label for label, _, _ in NETS)}")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; median of {rounds} interleaved batches per setting; "
          f"speed-up = t(1 thread) / t(2 threads)")
    head = f"{'op':<8}{'m':>6}{'n':>6}{'k':>6}{'m*n*k':>12}{'dtype':>9}{'1 thread':>12}{'2 threads':>12}{'speed-up':>10}"
    print(head)
    print("-" * len(head))
    saved = gradcore.get_num_threads()
    try:
        for op, m, n, k in gemm_shapes():
            for dtype in (np.float32, np.float64):
                fn = gemm_call(op, m, n, k, dtype)
                samples = time_samples(fn, [(t, lambda t=t: set_threads(t, "forced")) for t in (1, 2)], rounds, 0.003)
                med = {t: float(np.median(v)) for t, v in samples.items()}
                print(f"{op:<8}{m:>6}{n:>6}{k:>6}{m * n * k:>12}{np.dtype(dtype).name:>9}{fmt(med[1]):>12}"
                      f"{fmt(med[2]):>12}{med[1] / med[2]:>9.2f}x", flush=True)
    finally:
        set_threads(saved, "policy")
    return 0


def net_step(widths, batch: int):
    """One eager float32 training step of an issue-8 network: forward, loss, backward,
    global clip 5 and Adam with AMSGrad (BatchNorm after each hidden Dense of the 784 net)."""
    from gradcore import losses, nn, optim

    rng = np.random.default_rng(0)
    layers = []
    hidden = "sigmoid" if widths[0] == 20 else "relu"
    for j, (i, o) in enumerate(zip(widths, widths[1:])):
        last = j == len(widths) - 2
        if widths[0] == 784 and not last:
            layers += [nn.Dense(i, o), nn.BatchNorm(o), nn.ReLU()]
        else:
            layers.append(nn.Dense(i, o, activation=None if last else hidden))
    net = nn.Sequential(*layers)
    opt = optim.Adam(net.parameters(), lr=1e-3, amsgrad=True, global_clip_norm=5.0)
    x = gradcore.Tensor(rng.standard_normal((batch, widths[0])).astype(np.float32))
    if widths[-1] == 1:
        loss_fn, y = losses.MSELoss(), rng.standard_normal((batch, 1)).astype(np.float32)
    else:
        loss_fn, y = losses.CrossEntropyLoss(), rng.integers(0, widths[-1], batch)

    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    return step


def run_nets(rounds: int) -> int:
    """Whole eager steps of the four networks on gradcore.set_num_threads(1) and (2); with
    the per-GEMM BLAS policy, also 2 threads with it switched off (OpenBLAS choosing its
    threads alone: the behaviour before the policy), all three interleaved."""
    policy = hasattr(_C, "blas_thread_control") and _C.blas_thread_control()
    settings = [(1, lambda: set_threads(1, "policy")), (2, lambda: set_threads(2, "policy"))]
    if policy:
        settings.append(("2 off", lambda: set_threads(2, "forced")))
    print(f"eager float32 training steps (forward, loss, backward, global clip 5, Adam AMSGrad); "
          f"BLAS threads per GEMM size: {'yes (csrc/blas.cpp)' if policy else 'no (OpenBLAS decides)'}")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; median of {rounds} interleaved batches per setting; "
          f"speed-up = t(1 thread) / t(2 threads); '<<' marks 2 threads > {TOLERANCE - 1:.0%} slower")
    print("each cell: median / fastest batch (the fastest is what the setting does when the other "
          "processes leave the cores free)")
    head = f"{'network':<30}{'1 thread':>22}{'2 threads':>22}{'speed-up':>14}"
    if policy:
        head += f"{'2, no policy':>22}{'speed-up':>14}"
    print(head)
    print("-" * len(head))
    saved = gradcore.get_num_threads()
    flagged = 0
    try:
        for label, widths, batch in NETS:
            fn = net_step(widths, batch)
            samples = time_samples(fn, settings, rounds, 0.05)
            med = {key: float(np.median(v)) for key, v in samples.items()}
            best = {key: float(np.min(v)) for key, v in samples.items()}
            flag = "  <<" if med[2] > med[1] * TOLERANCE else ""
            flagged += bool(flag)

            def cells(key):
                return (f"{fmt(med[key]) + ' / ' + fmt(best[key]):>22}",
                        f"{med[1] / med[key]:>6.2f}x / {best[1] / best[key]:.2f}x")

            line = f"{label:<30}{cells(1)[0]}" + "".join(f"{a}{b:>14}" for a, b in [cells(2)] + (
                [cells("2 off")] if policy else []))
            print(line + flag, flush=True)
    finally:
        set_threads(saved, "policy")
    print(f"\n{flagged} network(s) slower on 2 threads than on 1 by more than {TOLERANCE - 1:.0%}; "
          f"load average {os.getloadavg()[0]:.2f} (other processes on the cores slow 2 threads most)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes a factor 4 apart, fewer rounds")
    ap.add_argument("--only", default="", help="run the cases whose family or name contains this")
    ap.add_argument("--min", type=int, default=1 << 12, help="smallest size (values)")
    ap.add_argument("--max", type=int, default=1 << 24, help="largest size (values)")
    ap.add_argument("--rounds", type=int, default=0, help="batches per setting (default 15, 7 with --quick)")
    ap.add_argument("--recheck", type=int, default=3, help="extra sets of rounds for a flagged row (noise filter)")
    ap.add_argument("--gemm", action="store_true", help="time the dense-layer GEMMs of the issue-8 networks instead")
    ap.add_argument("--nets", action="store_true", help="time whole eager steps of the issue-8 networks instead")
    ap.add_argument("--forms", action="store_true",
                    help="time the four sgemm call forms (nn/nt/tn/tt) of every dense-layer GEMM shape, 1 thread")
    args = ap.parse_args()
    if args.forms:
        return run_forms(args.rounds or 15)
    if args.gemm:
        return run_gemm(args.rounds or 21)
    if args.nets:
        return run_nets(args.rounds or 21)
    if not _C.have_openmp():
        print("gradcore was built without OpenMP: every kernel runs on one thread")
        return 0
    rounds = args.rounds or (7 if args.quick else 15)
    step = 4 if args.quick else 2
    sizes = []
    n = args.min
    while n <= args.max:
        sizes.append(n)
        n *= step
    print(machine_line())
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; fastest of {rounds} alternating batches per "
          f"setting (up to {args.recheck} more sets for a flagged row); speed-up = t(1 thread) / t(2 threads); '<<' marks 2 threads > {TOLERANCE - 1:.0%} slower")
    head = f"{'family':<15}{'case':<36}{'values':>10}{'1 thread':>12}{'2 threads':>12}{'speed-up':>10}"
    print(head)
    print("-" * len(head))
    saved = gradcore.get_num_threads()
    flagged = 0
    try:
        for family, name, make in CASES:
            if args.only and args.only not in family and args.only not in name:
                continue
            for n in sizes:
                fn = make(n)
                batch = 0.002 if args.quick else 0.004
                best = time_pair(fn, rounds, batch)
                # A slowdown that is real survives more rounds; one from a neighbour's
                # burst does not. Flagged rows get up to `recheck` more sets of rounds,
                # each setting keeping its fastest batch over all of them.
                for _ in range(args.recheck):
                    if best[2] <= best[1] * TOLERANCE:
                        break
                    more = time_pair(fn, rounds, batch)
                    best = {t: min(best[t], more[t]) for t in best}
                ratio = best[1] / best[2]
                flag = "  <<" if best[2] > best[1] * TOLERANCE else ""
                flagged += bool(flag)
                print(f"{family:<15}{name:<36}{size_label(n):>10}{fmt(best[1]):>12}{fmt(best[2]):>12}"
                      f"{ratio:>9.2f}x{flag}", flush=True)
    finally:
        gradcore.set_num_threads(saved)
    print(f"\n{flagged} row(s) slower on 2 threads than on 1 by more than {TOLERANCE - 1:.0%}")
    return 0


def size_label(n: int) -> str:
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


if __name__ == "__main__":
    sys.exit(main())
