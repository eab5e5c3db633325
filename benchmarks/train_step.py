"""Issue 8: one full training step against peers, each implementation in its own process.

    python benchmarks/train_step.py [--threads N] [--quick] [--only NAME[,NAME]] [--write]

A step is forward, loss, backward, global-norm clipping at 5 and Adam with AMSGrad
(lr 1e-3, betas (0.9, 0.999), eps 1e-8), float32, on the same batch every step, returning
the loss as a Python float. The four networks of issue 8:

  net1  [20, 50, 40, 30, 20, 10, 1], ReLU hidden, BCE with logits, batch 32 (the documents' net)
  net2  the same at batch 800 (the documents' full batch)
  net3  [784, 512, 256, 10], Dense -> BatchNorm -> ReLU per hidden layer, cross-entropy on
        integer labels, batch 128
  net4  [1024, 2048, 2048, 10], ReLU hidden, cross-entropy on integer labels, batch 256

Implementations (``--only`` takes these names):

  numpy     a hand-written NumPy step (this file: forward, backward including BatchNorm,
            clipping and AMSGrad in place over preallocated flat buffers, BLAS matmuls);
            checked first against gradcore's eager gradients and update (``--selftest``)
  eager     gradcore's eager path: ``net.compile(Adam(amsgrad=True, global_clip_norm=5))``
            then ``net.train_step((x, y))`` (what ``fit`` does per batch)
  compiled  ``gradcore.compile_step(net, loss, optimizer)`` (issue 8); "n/a" while the
            gradcore being measured has no ``compile_step``
  torch     PyTorch: ``clip_grad_norm_`` then ``Adam(amsgrad=True, fused=True)`` (foreach
            when fused is refused on CPU)
  jax       JAX jit with optax: ``value_and_grad`` + ``chain(clip_by_global_norm(5),
            amsgrad(1e-3))``, parameters and optimizer state donated

Each (implementation, network, thread count) runs in a child process of its own that
imports only its own framework (gradcore is never imported next to torch or jax), starts
from the same parameters (He-normal weights drawn with NumPy, seed 0) and the same batch,
warms up, then times batches of steps for a fixed budget and reports the median time per
step, the CPU time / wall time of the timed loop (the threads really used), the peak RSS
of the child (``resource.getrusage``, framework import included) and the losses of its
first three steps (the same network and loss everywhere: they must agree). Rounds repeat
every child with the implementations in a rotated order; a cell is the fastest of the
rounds' medians (on a shared machine the least disturbed round; the range over the rounds
and the CPU time per step are printed too, and ``--json`` keeps every child's report). Ratios are against the best peer (NumPy, PyTorch, JAX) at the same thread count.

Threads: ``--threads N`` times N threads only; by default 1 thread and all cores, reported
separately. gradcore children get ``OMP_WAIT_POLICY=PASSIVE`` before gradcore loads (as
gradcore sets by itself); the peers run with their own defaults.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "RESULTS.md")
SECTION = "## Issue 8: training step vs peers"

LR, BETAS, EPS, MAX_NORM = 1e-3, (0.9, 0.999), 1e-8, 5.0
BN_EPS, BN_MOMENTUM = 1e-5, 0.1

# A network: a list of layers ("dense", in, out, activation or None) / ("bn", features) / ("relu",).
NETWORKS: Dict[str, dict] = {
    "net1": dict(title="[20, 50, 40, 30, 20, 10, 1] batch 32", batch=32, loss="bce",
                 layers=[("dense", 20, 50, "relu"), ("dense", 50, 40, "relu"), ("dense", 40, 30, "relu"),
                         ("dense", 30, 20, "relu"), ("dense", 20, 10, "relu"), ("dense", 10, 1, None)]),
    "net2": dict(title="same, batch 800", batch=800, loss="bce", layers=None),  # net1's layers
    "net3": dict(title="[784, 512, 256, 10] + BatchNorm, batch 128", batch=128, loss="ce",
                 layers=[("dense", 784, 512, None), ("bn", 512), ("relu",), ("dense", 512, 256, None),
                         ("bn", 256), ("relu",), ("dense", 256, 10, None)]),
    "net4": dict(title="[1024, 2048, 2048, 10], batch 256", batch=256, loss="ce",
                 layers=[("dense", 1024, 2048, "relu"), ("dense", 2048, 2048, "relu"), ("dense", 2048, 10, None)]),
}
NETWORKS["net2"]["layers"] = NETWORKS["net1"]["layers"]

IMPLS = ["numpy", "eager", "compiled", "torch", "jax"]
PEERS = ["numpy", "torch", "jax"]
LABELS = {"numpy": "NumPy", "eager": "gradcore eager", "compiled": "gradcore compiled", "torch": "PyTorch",
          "jax": "JAX jit"}
GRADCORE_IMPLS = ("eager", "compiled")
# issue 8's targets for the compiled step: (network, factor, against) with time <= factor * reference
TARGETS = [("net1", 1 / 8, "jax"), ("net2", 0.5, "best"), ("net3", 0.8, "best"), ("net4", 1.0, "best")]


# ----------------------------------------------------------------------------------------------
# Common inputs: the same parameters and batch in every child


def input_width(layers) -> int:
    return layers[0][1]


def init_params(layers, seed: int = 0) -> List[np.ndarray]:
    """He-normal weights (out, in), zero biases, BatchNorm gamma 1 / beta 0, in layer order."""
    rng = np.random.default_rng(seed)
    out = []
    for layer in layers:
        if layer[0] == "dense":
            _, n_in, n_out, _ = layer
            out.append((rng.standard_normal((n_out, n_in)) * math.sqrt(2.0 / n_in)).astype(np.float32))
            out.append(np.zeros(n_out, dtype=np.float32))
        elif layer[0] == "bn":
            out.append(np.ones(layer[1], dtype=np.float32))
            out.append(np.zeros(layer[1], dtype=np.float32))
    return out


def make_batch(net: dict, seed: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """x (B, in) float32; y (B, 1) float32 0/1 for BCE, int64 labels (B,) for cross-entropy."""
    rng = np.random.default_rng(seed)
    b, layers = net["batch"], net["layers"]
    x = rng.standard_normal((b, input_width(layers)), dtype=np.float32)
    if net["loss"] == "bce":
        y = (rng.random((b, 1)) < 0.5).astype(np.float32)
    else:
        y = rng.integers(0, layers[-1][2], size=b).astype(np.int64)
    return x, y


# ----------------------------------------------------------------------------------------------
# The NumPy step


class NumpyStep:
    """One training step in NumPy over preallocated float32 buffers.

    Parameters, gradients and the Adam state (m, v, v_max) are flat buffers with one view
    per tensor, so clipping and the update are whole-buffer in-place ufuncs; activations
    and their gradients live in per-batch-size buffers allocated at the first step of that
    size. The math is gradcore's / PyTorch's: BatchNorm normalises with the biased batch
    variance and tracks the unbiased one; the clip coefficient is min(1, max_norm /
    (norm + 1e-6)); AMSGrad keeps v_max = max(v_max, v) and divides by
    sqrt(v_max) / sqrt(1 - b2^t) + eps.
    """

    def __init__(self, layers, params: List[np.ndarray], loss: str, max_norm: float = MAX_NORM, lr: float = LR):
        self.layers, self.loss, self.max_norm, self.lr = layers, loss, max_norm, lr
        sizes = [p.size for p in params]
        bounds = np.cumsum([0] + sizes)
        self.flat = np.concatenate([p.ravel() for p in params]).astype(np.float32)
        self.gflat = np.zeros_like(self.flat)
        self.m, self.v, self.vmax, self.gc, self.tmp = (np.zeros_like(self.flat) for _ in range(5))

        def views(buf):
            return [buf[a:b].reshape(p.shape) for a, b, p in zip(bounds[:-1], bounds[1:], params)]

        self.p, self.g = views(self.flat), views(self.gflat)
        self.gpieces = [self.gflat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        # per layer: index of its first parameter (dense: W, b; bn: gamma, beta), running statistics
        self.pidx, self.running = [], {}
        k = 0
        for i, layer in enumerate(layers):
            self.pidx.append(k)
            if layer[0] in ("dense", "bn"):
                k += 2
            if layer[0] == "bn":
                self.running[i] = (np.zeros(layer[1], np.float32), np.ones(layer[1], np.float32))
        self.t = 0
        self.bufs: Dict[int, dict] = {}

    def _buffers(self, b: int) -> dict:
        bufs = self.bufs.get(b)
        if bufs is None:
            out, grad, mask, extra = [], [], [], []
            for layer in self.layers:
                width = layer[2] if layer[0] == "dense" else layer[1] if layer[0] == "bn" else None
                if width is None:  # relu keeps the previous width
                    width = out[-1].shape[1]
                out.append(np.empty((b, width), np.float32))
                grad.append(np.empty((b, width), np.float32))  # gradient w.r.t. this layer's output
                relu = layer[0] == "relu" or (layer[0] == "dense" and layer[3] == "relu")
                mask.append(np.empty((b, width), bool) if relu else None)
                extra.append(dict(xhat=np.empty((b, width), np.float32), tmp=np.empty((b, width), np.float32),
                                  invstd=np.empty(width, np.float32)) if layer[0] == "bn" else None)
            bufs = self.bufs[b] = dict(out=out, grad=grad, mask=mask, extra=extra)
        return bufs

    def forward_backward(self, x: np.ndarray, y: np.ndarray) -> float:
        """Loss of the batch; fills the flat gradient buffer (=) and the BatchNorm running stats."""
        b = x.shape[0]
        bufs = self._buffers(b)
        out, grad, mask, extra = bufs["out"], bufs["grad"], bufs["mask"], bufs["extra"]
        inputs = []
        h = x
        for i, layer in enumerate(self.layers):
            inputs.append(h)
            o = out[i]
            kind = layer[0]
            if kind == "dense":
                w, bias = self.p[self.pidx[i]], self.p[self.pidx[i] + 1]
                np.matmul(h, w.T, out=o)
                o += bias
                if layer[3] == "relu":
                    np.maximum(o, 0, out=o)
            elif kind == "bn":
                gamma, beta = self.p[self.pidx[i]], self.p[self.pidx[i] + 1]
                e = extra[i]
                xhat, tmp, invstd = e["xhat"], e["tmp"], e["invstd"]
                mean = h.mean(axis=0)
                np.subtract(h, mean, out=xhat)
                np.multiply(xhat, xhat, out=tmp)
                var = tmp.mean(axis=0)                                  # biased batch variance
                np.add(var, np.float32(BN_EPS), out=invstd)
                np.sqrt(invstd, out=invstd)
                np.divide(np.float32(1), invstd, out=invstd)
                xhat *= invstd
                np.multiply(xhat, gamma, out=o)
                o += beta
                rm, rv = self.running[i]
                m = np.float32(BN_MOMENTUM)
                rm *= np.float32(1) - m
                rm += m * mean
                rv *= np.float32(1) - m
                rv += (m * np.float32(b / (b - 1))) * var               # unbiased in the running estimate
            else:  # relu
                np.maximum(h, 0, out=o)
            h = o
        loss = self._loss(h, y, grad[-1])
        d = grad[-1]
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            kind = layer[0]
            dinp = grad[i - 1] if i > 0 else None
            if kind == "dense":
                w = self.p[self.pidx[i]]
                dw, db = self.g[self.pidx[i]], self.g[self.pidx[i] + 1]
                if layer[3] == "relu":
                    np.greater(out[i], 0, out=mask[i])
                    np.multiply(d, mask[i], out=d)
                np.matmul(d.T, inputs[i], out=dw)
                np.sum(d, axis=0, out=db)
                if dinp is not None:
                    np.matmul(d, w, out=dinp)
            elif kind == "bn":
                gamma = self.p[self.pidx[i]]
                dgamma, dbeta = self.g[self.pidx[i]], self.g[self.pidx[i] + 1]
                e = extra[i]
                xhat, tmp, invstd = e["xhat"], e["tmp"], e["invstd"]
                np.sum(d, axis=0, out=dbeta)
                np.multiply(d, xhat, out=tmp)
                np.sum(tmp, axis=0, out=dgamma)
                if dinp is not None:
                    # dx = gamma * invstd / B * (B * dy - sum(dy) - xhat * sum(dy * xhat))
                    np.multiply(xhat, dgamma, out=tmp)
                    np.multiply(d, np.float32(b), out=dinp)
                    dinp -= dbeta
                    dinp -= tmp
                    dinp *= gamma * invstd * np.float32(1.0 / b)
            else:  # relu
                np.greater(out[i], 0, out=mask[i])
                np.multiply(d, mask[i], out=dinp)
            d = dinp
        return loss

    def _loss(self, z: np.ndarray, y: np.ndarray, dz: np.ndarray) -> float:
        """Mean loss over the batch; its gradient w.r.t. the logits z into dz."""
        if self.loss == "bce":
            # max(z, 0) - z y + log1p(exp(-|z|)); d/dz = sigmoid(z) - y, over the N elements
            n = z.size
            e = np.exp(-np.abs(z))
            loss = float(np.mean(np.maximum(z, 0) - z * y + np.log1p(e)))
            sig = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
            np.subtract(sig, y, out=dz)
            dz *= np.float32(1.0 / n)
            return loss
        b = z.shape[0]
        rows = np.arange(b)
        shifted = z - z.max(axis=1, keepdims=True)
        np.exp(shifted, out=dz)
        s = dz.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) - shifted[rows, y]))
        dz /= s
        dz[rows, y] -= 1
        dz *= np.float32(1.0 / b)
        return loss

    def grad_norm(self) -> float:
        return math.sqrt(sum(float(np.dot(g, g)) for g in self.gpieces))  # BLAS sdot per tensor

    def update(self) -> float:
        """Global clip, then AMSGrad over the flat buffers; returns the pre-clip norm."""
        total = self.grad_norm()
        coef = min(1.0, self.max_norm / (total + 1e-6))
        self.t += 1
        b1, b2 = BETAS
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        f32 = np.float32
        m, v, vmax, gc, tmp = self.m, self.v, self.vmax, self.gc, self.tmp
        np.multiply(self.gflat, f32(coef), out=gc)
        m *= f32(b1)
        np.multiply(gc, f32(1 - b1), out=tmp)
        m += tmp                                                    # m = b1 m + (1 - b1) g
        np.multiply(gc, gc, out=tmp)
        tmp *= f32(1 - b2)
        v *= f32(b2)
        v += tmp                                                    # v = b2 v + (1 - b2) g^2
        np.maximum(vmax, v, out=vmax)
        np.sqrt(vmax, out=tmp)
        tmp *= f32(1 / math.sqrt(bc2))
        tmp += f32(EPS)
        np.divide(m, tmp, out=tmp)
        tmp *= f32(self.lr / bc1)
        self.flat -= tmp
        return total

    def __call__(self, x: np.ndarray, y: np.ndarray) -> float:
        loss = self.forward_backward(x, y)
        self.update()
        return loss


# ----------------------------------------------------------------------------------------------
# Builders, one per implementation; each returns (step: () -> float, version string, note)


def build_numpy(net: dict, threads: int):
    limiter = None
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        limiter = threadpool_limits(limits=threads, user_api="blas")
        blas = ", ".join(f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
                         if i.get("user_api") == "blas") or "BLAS unknown"
    except ImportError:
        blas = "BLAS threads from OPENBLAS_NUM_THREADS"
    step = NumpyStep(net["layers"], init_params(net["layers"]), net["loss"])
    x, y = make_batch(net)
    step._limiter = limiter  # keep the limit alive with the step
    return (lambda: step(x, y)), f"NumPy {np.__version__} ({blas})", ""


def gradcore_net(net: dict):
    """gradcore network with the common parameters, its loss and optimizer (compiled with them)."""
    from gradcore import losses, nn, optim

    mods = []
    for layer in net["layers"]:
        if layer[0] == "dense":
            mods.append(nn.Dense(layer[1], layer[2], activation=layer[3]))
        elif layer[0] == "bn":
            mods.append(nn.BatchNorm(layer[1], momentum=BN_MOMENTUM, eps=BN_EPS))
        else:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods)
    for p, value in zip(model.parameters(), init_params(net["layers"])):
        p.data[...] = value
    loss = losses.get("bce_with_logits" if net["loss"] == "bce" else "cross_entropy")
    opt = optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS, amsgrad=True, global_clip_norm=MAX_NORM)
    model.compile(opt, loss=loss)
    model.train()
    return model, loss, opt


def gradcore_version(gradcore) -> str:
    info = gradcore.info()
    tree = os.path.dirname(os.path.dirname(os.path.abspath(gradcore.__file__)))
    try:  # which commit of which checkout (a benchmark may point --gradcore at another worktree)
        head = subprocess.run(["git", "-C", tree, "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        branch = subprocess.run(["git", "-C", tree, "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = branch = ""
    # the checkout by its folder name and commit only: a results file names no path of this machine
    name = os.path.basename(tree)
    where = f"{name}, {branch} {head}" if head else name
    return f"gradcore {info['version']} ({info['simd']}, BLAS {info['blas']}, {where})"


def build_eager(net: dict, threads: int):
    import gradcore

    gradcore.set_num_threads(threads)
    model, _, _ = gradcore_net(net)
    x, y = make_batch(net)
    return (lambda: model.train_step((x, y))["loss"]), gradcore_version(gradcore), ""


def build_compiled(net: dict, threads: int):
    import gradcore

    if not hasattr(gradcore, "compile_step"):
        return None, gradcore_version(gradcore), "gradcore.compile_step absent in this build"
    gradcore.set_num_threads(threads)
    model, loss, opt = gradcore_net(net)
    step = gradcore.compile_step(model, loss, opt)
    x, y = make_batch(net)
    return (lambda: float(step(x, y))), gradcore_version(gradcore), repr(step)  # names the mode (fused / split)


def build_torch(net: dict, threads: int):
    import torch

    torch.set_num_threads(threads)
    mods = []
    for layer in net["layers"]:
        if layer[0] == "dense":
            mods.append(torch.nn.Linear(layer[1], layer[2]))
            if layer[3] == "relu":
                mods.append(torch.nn.ReLU())
        elif layer[0] == "bn":
            mods.append(torch.nn.BatchNorm1d(layer[1], eps=BN_EPS, momentum=BN_MOMENTUM))
        else:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    params = list(model.parameters())  # Linear: weight (out, in), bias; BatchNorm1d: weight, bias
    with torch.no_grad():
        for p, value in zip(params, init_params(net["layers"])):
            p.copy_(torch.from_numpy(value))
    model.train()
    try:
        opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS, amsgrad=True, fused=True)
        mode = "fused"
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS, amsgrad=True, foreach=True)
        mode = "foreach"
    lossf = torch.nn.BCEWithLogitsLoss() if net["loss"] == "bce" else torch.nn.CrossEntropyLoss()
    xn, yn = make_batch(net)
    x, y = torch.from_numpy(xn), torch.from_numpy(yn)

    def step():
        opt.zero_grad()
        loss = lossf(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()
        return loss.item()

    return step, f"PyTorch {torch.__version__} (Adam {mode})", mode


def build_jax(net: dict, threads: int):
    import jax
    import jax.numpy as jnp
    import optax

    layers = net["layers"]
    flat = init_params(layers)
    params, bn_state, k = [], [], 0
    for layer in layers:
        if layer[0] in ("dense", "bn"):
            params.append((jnp.asarray(flat[k]), jnp.asarray(flat[k + 1])))
            k += 2
        if layer[0] == "bn":
            bn_state.append((jnp.zeros(layer[1], jnp.float32), jnp.ones(layer[1], jnp.float32)))

    def forward(params, bn_state, x):
        h, pi, bi, new_state = x, 0, 0, []
        for layer in layers:
            if layer[0] == "dense":
                w, b = params[pi]
                pi += 1
                h = h @ w.T + b
                if layer[3] == "relu":
                    h = jax.nn.relu(h)
            elif layer[0] == "bn":
                gamma, beta = params[pi]
                pi += 1
                mean = h.mean(axis=0)
                var = jnp.mean(jnp.square(h - mean), axis=0)
                h = (h - mean) * jax.lax.rsqrt(var + BN_EPS) * gamma + beta
                rm, rv = bn_state[bi]
                bi += 1
                n = h.shape[0]
                new_state.append(jax.lax.stop_gradient(
                    ((1 - BN_MOMENTUM) * rm + BN_MOMENTUM * mean,
                     (1 - BN_MOMENTUM) * rv + BN_MOMENTUM * var * (n / (n - 1)))))
            else:
                h = jax.nn.relu(h)
        return h, new_state

    def loss_fn(params, bn_state, x, y):
        z, new_state = forward(params, bn_state, x)
        if net["loss"] == "bce":
            loss = jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))
        else:
            logp = jax.nn.log_softmax(z, axis=-1)
            loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        return loss, new_state

    tx = optax.chain(optax.clip_by_global_norm(MAX_NORM), optax.amsgrad(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS))

    def update(params, opt_state, bn_state, x, y):
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, bn_state, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_state, loss

    jstep = jax.jit(update, donate_argnums=(0, 1, 2))
    xn, yn = make_batch(net)
    x, y = jax.device_put(xn), jax.device_put(yn.astype(np.int32) if yn.dtype == np.int64 else yn)
    state = {"p": params, "o": tx.init(params), "b": bn_state}

    def step():
        state["p"], state["o"], state["b"], loss = jstep(state["p"], state["o"], state["b"], x, y)
        return float(loss)

    import jaxlib

    return step, f"JAX {jax.__version__} (jaxlib {jaxlib.__version__}, optax {optax.__version__})", ""


BUILDERS = {"numpy": build_numpy, "eager": build_eager, "compiled": build_compiled, "torch": build_torch,
            "jax": build_jax}
MODULES = {"numpy": "numpy", "eager": "gradcore", "compiled": "gradcore", "torch": "torch", "jax": "jax"}


# ----------------------------------------------------------------------------------------------
# Child process: time one implementation on one network


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_step(step: Callable[[], float], budget: float, batches: int) -> dict:
    """Warm up, then time batches of steps; median (and min) seconds per step, CPU use."""
    t0 = time.perf_counter()
    n = 0
    while n < 5 or (time.perf_counter() - t0 < 0.15 * budget and n < 200):
        step()
        n += 1
    t1 = time.perf_counter()
    for _ in range(3):
        step()
    once = max((time.perf_counter() - t1) / 3, 1e-7)
    batches = max(5, min(batches, int(budget / once)))
    inner = max(1, int(budget / batches / once))
    samples = []
    c0, w0 = cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        s = time.perf_counter()
        for _ in range(inner):
            step()
        samples.append((time.perf_counter() - s) / inner)
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
    return dict(us=statistics.median(samples) * 1e6, us_min=min(samples) * 1e6, steps=batches * inner,
                cpu_util=cpu / max(wall, 1e-9), cpu_us=cpu / (batches * inner) * 1e6)


def child(impl: str, name: str, threads: int, budget: float, batches: int, pin: Optional[int]) -> dict:
    import importlib.util

    if pin is not None:  # before any framework sizes its thread pool from the affinity mask
        os.sched_setaffinity(0, {pin})
    net = NETWORKS[name]
    res = dict(impl=impl, net=name, threads=threads, cpus=sorted(os.sched_getaffinity(0)))
    if importlib.util.find_spec(MODULES[impl]) is None or (impl == "jax" and importlib.util.find_spec("optax") is None):
        res.update(status="missing", note=f"{MODULES[impl]} not installed" if impl != "jax" else
                   "jax / optax not installed")
        return res
    built = BUILDERS[impl](net, threads)
    step, version, note = built
    res.update(version=version, note=note)
    if step is None:
        res["status"] = "n/a"
        return res
    res["losses"] = [float(step()) for _ in range(3)]  # from the common parameters: must agree across impls
    res.update(time_step(step, budget, batches))
    res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res["status"] = "ok"
    return res


# ----------------------------------------------------------------------------------------------
# Self-test: the NumPy step against gradcore's eager gradients and update


def selftest() -> dict:
    """One step of each network in NumPy and in gradcore eager from the same parameters:
    the loss, every gradient, the updated parameters and the BatchNorm running statistics
    must agree (float32: gradients to 1e-4 of the tensor's largest, updates to 1% of lr
    where the gradient is above 1e-4 of the largest). Twice: clip at 5 and at 0.01 (the clip then acts)."""
    import gradcore

    report, ok = [], True
    for name in ("net1", "net3", "net4"):
        net = NETWORKS[name]
        x, y = make_batch(net)
        for max_norm in (MAX_NORM, 1e-2):
            model, loss_fn, opt = gradcore_net(net)
            opt.global_clip_norm = max_norm
            ref = NumpyStep(net["layers"], init_params(net["layers"]), net["loss"], max_norm=max_norm)
            before = [p.copy() for p in ref.p]
            worst = {}
            for it in range(2):  # two steps: the second uses the Adam state of the first
                np_loss = ref.forward_backward(x, y)
                opt.zero_grad()
                out = model(gradcore.Tensor(x))
                loss = loss_fn(out, y)
                loss.backward()
                gc_loss = float(loss.item())
                grads = [np.asarray(p.grad).copy() for p in model.parameters()]
                # relative to the tensor's largest gradient, floored at 1% of the largest of all
                # (a Dense bias before BatchNorm has a zero gradient up to rounding)
                gmax = max(float(np.max(np.abs(r))) for r in ref.g)
                gerr = max(float(np.max(np.abs(g - r))) / max(float(np.max(np.abs(r))), 1e-2 * gmax)
                           for g, r in zip(grads, ref.g))
                old_np = [p.copy() for p in ref.p]
                old_gc = [p.data.copy() for p in model.parameters()]
                ref.update()
                opt.step()
                # each side's own update; only where the gradient stands above float32 rounding
                # (Adam's first steps move a parameter by ~lr * sign(g) even for g ~ 1e-9)
                uerr = 0.0
                for p, r, o_gc, o_np, g in zip(model.parameters(), ref.p, old_gc, old_np, ref.g):
                    big = np.abs(g) > 1e-4 * gmax
                    if big.any():
                        uerr = max(uerr, float(np.max(np.abs((p.data - o_gc)[big] - (r - o_np)[big]))) / LR)
                rerr = 0.0
                for i, (rm, rv) in ref.running.items():
                    bn = model[i]
                    rerr = max(rerr, float(np.max(np.abs(bn.running_mean - rm))),
                               float(np.max(np.abs(bn.running_var - rv)) / np.max(np.abs(rv))))
                lerr = abs(np_loss - gc_loss) / max(abs(gc_loss), 1e-30)
                # the next step starts both from gradcore's parameters and statistics: an element
                # whose gradient is rounding noise moved by +-lr on either side, and would
                # otherwise carry that into the next forward pass
                for p, r in zip(model.parameters(), ref.p):
                    r[...] = p.data
                for i, (rm, rv) in ref.running.items():
                    rm[...], rv[...] = model[i].running_mean, model[i].running_var
                for key, val in (("loss", lerr), ("grad", gerr), ("update/lr", uerr), ("bn stats", rerr)):
                    worst[key] = max(worst.get(key, 0.0), val)
            moved = max(float(np.max(np.abs(p - b))) for p, b in zip(ref.p, before))
            good = (worst["loss"] <= 1e-5 and worst["grad"] <= 1e-4 and worst["update/lr"] <= 1e-2
                    and worst["bn stats"] <= 1e-5 and moved > 0.5 * LR)
            ok &= good
            report.append(dict(net=name, max_norm=max_norm, ok=good, moved=moved, **worst))
    return dict(ok=ok, cases=report)


# ----------------------------------------------------------------------------------------------
# Parent: run the children, print and write the tables


def child_env(impl: str, threads: int, gradcore_path: str) -> dict:
    env = dict(os.environ)
    if impl in GRADCORE_IMPLS or impl == "selftest":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what gradcore sets before its extension loads
        env["PYTHONPATH"] = os.pathsep.join([gradcore_path] + [p for p in [env.get("PYTHONPATH")] if p])
    if threads == 1 and impl == "numpy":
        for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = "1"
    if impl == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def idlest_core(window: float = 0.1) -> int:
    """The allowed CPU with the most idle time over the next ``window`` seconds (/proc/stat)."""
    allowed = sorted(os.sched_getaffinity(0))

    def idle() -> Dict[int, int]:
        out = {}
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("cpu") and line[3].isdigit():
                        fields = line.split()
                        out[int(fields[0][3:])] = int(fields[4]) + int(fields[5])  # idle + iowait
        except (OSError, ValueError, IndexError):
            pass
        return out

    a = idle()
    time.sleep(window)
    b = idle()
    return max(allowed, key=lambda c: (b.get(c, 0) - a.get(c, 0), c))


def run_child(args: List[str], env: dict, timeout: float = 900) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status="error", note=f"timed out after {timeout:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return dict(status="error", note=f"exit {proc.returncode}: {tail[:200]}")
    return json.loads(lines[-1])


def fmt_us(us: Optional[float]) -> str:
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.0f} us" if us >= 100 else f"{us:.1f} us"
    return f"{us / 1000:.2f} ms" if us < 100_000 else f"{us / 1000:.1f} ms"


def summarise(runs: List[dict]) -> dict:
    """One cell from the rounds of one (impl, net, threads): the fastest round's median.

    Other jobs on the machine only ever add time (preemption, a neighbour spinning on the
    second core), so the least disturbed round is the best estimate of each implementation's
    own speed; every implementation gets the same number of rounds, interleaved."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        first = runs[0] if runs else {}
        return dict(status=first.get("status", "missing"), note=first.get("note", ""), version=first.get("version"))
    us = [r["us"] for r in ok]
    best = min(ok, key=lambda r: r["us"])
    return dict(status="ok", us=best["us"], us_lo=min(us), us_hi=max(us), us_median=statistics.median(us),
                rounds=len(ok), rss_mb=max(r["rss_mb"] for r in ok), cpu_util=best["cpu_util"],
                cpu_us=min(r.get("cpu_us", math.inf) for r in ok),
                losses=ok[0]["losses"], version=ok[0].get("version"), note=ok[0].get("note", ""))


def best_peer(cells: Dict[str, dict]) -> Tuple[Optional[str], Optional[float]]:
    found = [(c["us"], p) for p, c in cells.items() if p in PEERS and c.get("status") == "ok"]
    if not found:
        return None, None
    us, p = min(found)
    return p, us


# Relative tolerances on the losses of the first three steps against NumPy's: step 1 is the
# forward pass from the common parameters, step 2 follows one clip + Adam update, step 3 the
# second update (the optimizer state at work). optax's AMSGrad keeps the maximum of the
# bias-corrected second moment (max(v_max, v / (1 - b2^t))) where torch and gradcore keep
# max(v_max, v) and correct afterwards: identical at t = 1, different from t = 2 on (6% on
# the third loss of net3, whose loss falls fast), so JAX's third loss is not compared.
LOSS_TOL = (1e-5, 1e-4, 1e-3)


def loss_check(cells: Dict[str, dict]) -> Dict[str, str]:
    """impl -> '' or a warning when its first losses differ from the NumPy (or first) ones."""
    ok = {k: c for k, c in cells.items() if c.get("status") == "ok"}
    if not ok:
        return {}
    ref = ok.get("numpy") or next(iter(ok.values()))
    out = {}
    for k, c in ok.items():
        steps = 2 if k == "jax" else 3
        diffs = [abs(c["losses"][i] - ref["losses"][i]) / max(abs(ref["losses"][i]), 1e-12) for i in range(steps)]
        bad = [f"step {i + 1}: {d:.1e}" for i, d in enumerate(diffs) if d > LOSS_TOL[i]]
        out[k] = f"losses differ from NumPy's ({', '.join(bad)})" if bad else ""
    return out


def target_rows(table: Dict[str, Dict[str, dict]], impls: List[str]) -> List[Tuple[str, str, str]]:
    """(target, measured, verdict) for one thread count."""
    rows = []
    for name, factor, against in TARGETS:
        cells = table.get(name)
        if cells is None:
            continue
        what = f"{NETWORKS[name]['title']}: compiled <= {factor:g} x {'JAX jit' if against == 'jax' else 'best peer'}"
        if against == "jax":
            ref = cells.get("jax", {}).get("us") if cells.get("jax", {}).get("status") == "ok" else None
            ref_name = "jax"
        else:
            ref_name, ref = best_peer(cells)
        comp = cells.get("compiled", {})
        if "compiled" not in impls:
            continue
        if comp.get("status") != "ok" or ref is None:
            why = "compiled n/a" if comp.get("status") != "ok" else f"no {against} peer measured"
            need = f"needs <= {fmt_us(factor * ref)} ({LABELS[ref_name]} {fmt_us(ref)})" if ref else "-"
            rows.append((what, need, f"n/a ({why})"))
            continue
        ratio = comp["us"] / ref
        rows.append((what, f"{fmt_us(comp['us'])} = {ratio:.2f} x {LABELS[ref_name]} {fmt_us(ref)}",
                     "met" if ratio <= factor else "not met"))
    if "eager" in impls and "numpy" in impls:
        for name in table:
            cells = table[name]
            e, n = cells.get("eager", {}), cells.get("numpy", {})
            what = f"{NETWORKS[name]['title']}: eager <= NumPy"
            if e.get("status") != "ok" or n.get("status") != "ok":
                rows.append((what, "-", "n/a"))
                continue
            ratio = e["us"] / n["us"]
            rows.append((what, f"{fmt_us(e['us'])} = {ratio:.2f} x NumPy {fmt_us(n['us'])}",
                         "met" if ratio <= 1.0 else "not met"))
    return rows


def cell_text(c: dict, best: Optional[float], warn: str = "") -> str:
    if c.get("status") == "ok":
        ratio = f" ({c['us'] / best:.2f}x)" if best else ""
        return fmt_us(c["us"]) + ratio + (" !" if warn else "")
    return {"missing": "skipped", "n/a": "n/a", "error": "error"}.get(c.get("status"), "-")


def print_tables(results: Dict[int, Dict[str, Dict[str, dict]]], impls: List[str]) -> None:
    for threads, table in results.items():
        print(f"\n{threads} thread{'s' if threads > 1 else ''}: median per step; (ratio) = time / best peer "
              f"(NumPy, PyTorch, JAX) at {threads} thread{'s' if threads > 1 else ''}")
        head = f"{'network':<44}" + "".join(f"{LABELS[i]:>24}" for i in impls)
        print(head)
        print("-" * len(head))
        for name, cells in table.items():
            _, best = best_peer(cells)
            warns = loss_check(cells)
            print(f"{NETWORKS[name]['title']:<44}" + "".join(
                f"{cell_text(cells.get(i, {}), best, warns.get(i, '')):>24}" for i in impls))
        print(f"{'peak RSS (MB)':<44}")
        for name, cells in table.items():
            print(f"  {NETWORKS[name]['title']:<42}" + "".join(
                f"{(format(cells[i]['rss_mb'], '.0f') if cells.get(i, {}).get('status') == 'ok' else '-'):>24}"
                for i in impls))
        print("CPU time / wall time in the timed loop (threads really busy):")
        for name, cells in table.items():
            print(f"  {NETWORKS[name]['title']:<42}" + "".join(
                f"{(format(cells[i]['cpu_util'], '.2f') if cells.get(i, {}).get('status') == 'ok' else '-'):>24}"
                for i in impls))
        for name, cells in table.items():
            for i, w in loss_check(cells).items():
                if w:
                    print(f"  ! {LABELS[i]} on {NETWORKS[name]['title']}: {w}")
        rows = target_rows(table, impls)
        if rows:
            print("targets (issue 8):")
            for what, measured, verdict in rows:
                print(f"  {what:<70} {measured:<44} {verdict}")
    notes = {}
    for table in results.values():
        for cells in table.values():
            for i, c in cells.items():
                if c.get("status") != "ok" and c.get("note"):
                    notes.setdefault(i, c["note"])
    for i, note in notes.items():
        print(f"{LABELS[i]}: {note}")


def machine_info() -> Dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return dict(cpu=cpu, cores=str(os.cpu_count()), python=platform.python_version(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def _portable_argv(argv):
    """The command line as a results file records it: without --write and with every
    path argument (--gradcore, --json, ...) cut to its last component."""
    out = []
    for a in argv:
        if a == "--write":
            continue
        out.append(os.path.basename(a.rstrip("/")) if os.path.isabs(a) else a)
    return out


def markdown(results, impls, info, versions, selftest_res, argv, load) -> str:
    lines = [SECTION, "",
             f"`python benchmarks/train_step.py {' '.join(argv)}`".replace("  ", " ").replace(" `", "`"), "",
             f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['date']} (run started "
             f"{info['start']}); load average {load[0]} before, {load[1]} after. The machine was shared with the "
             f"other helpers of this session (builds, test suites, their own benchmarks): each child reports the "
             f"median time per step over its batches of steps; rounds run every child again with the "
             f"implementations in a rotated order; a cell is the fastest round's median (the least disturbed; "
             f"the range over the rounds and the CPU time per step are in the second table).", ""]
    lines += ["Versions: " + "; ".join(dict.fromkeys(versions.values())) + ".", ""]
    lines += ["One step = forward, loss, backward, global-norm clip at 5, Adam with AMSGrad (lr 1e-3), float32, "
              "the same batch each step, the loss returned as a float; every implementation starts from the "
              "same parameters, and the losses of their first three steps were compared (a `!` marks a "
              "disagreement). Each implementation runs alone in a child process; peak RSS is that process's "
              "(framework import included). Ratio = time / best peer (NumPy, PyTorch, JAX) at the same thread "
              "count; below 1: faster than every peer.", ""]
    if selftest_res is not None:
        worst = {k: max(c[k] for c in selftest_res["cases"]) for k in ("loss", "grad", "update/lr", "bn stats")}
        lines += [f"NumPy step vs gradcore eager (`--selftest`, two steps, clip 5 and 0.01, nets 1, 3, 4): "
                  f"{'passed' if selftest_res['ok'] else '**failed**'}; worst relative loss "
                  f"{worst['loss']:.1e}, gradient {worst['grad']:.1e} (of the tensor's max), update "
                  f"{worst['update/lr']:.1e} x lr, BatchNorm running stats {worst['bn stats']:.1e}.", ""]
    for threads, table in results.items():
        lines += [f"### {threads} thread{'s' if threads > 1 else ''}", ""]
        lines += ["| network | " + " | ".join(LABELS[i] for i in impls) + " |",
                  "|---|" + "---|" * len(impls)]
        for name, cells in table.items():
            _, best = best_peer(cells)
            warns = loss_check(cells)
            lines.append(f"| {NETWORKS[name]['title']} | " + " | ".join(
                cell_text(cells.get(i, {}), best, warns.get(i, "")) for i in impls) + " |")
        lines += ["", "Peak RSS of the child / CPU time per step (least over the rounds) and CPU time per wall "
                  "time of the fastest round (threads busy; below 1 at 1 thread: preempted) / range of the "
                  "round medians:", "",
                  "| network | " + " | ".join(LABELS[i] for i in impls) + " |", "|---|" + "---|" * len(impls)]
        for name, cells in table.items():
            row = []
            for i in impls:
                c = cells.get(i, {})
                if c.get("status") != "ok":
                    row.append("-")
                    continue
                lo, hi = fmt_us(c["us_lo"]), fmt_us(c["us_hi"])
                spread = lo if lo == hi else f"{lo}-{hi}"
                row.append(f"{c['rss_mb']:.0f} MB / {fmt_us(c['cpu_us'])} ({c['cpu_util']:.2f}) / {spread}")
            lines.append(f"| {NETWORKS[name]['title']} | " + " | ".join(row) + " |")
        warn_lines = [f"- `!` {LABELS[i]} on {NETWORKS[name]['title']}: {w}"
                      for name, cells in table.items() for i, w in loss_check(cells).items() if w]
        if warn_lines:
            lines += [""] + warn_lines
        rows = target_rows(table, impls)
        if rows:
            lines += ["", "| target (issue 8) | measured | verdict |", "|---|---|---|"]
            lines += [f"| {a} | {b} | {'**not met**' if c == 'not met' else c} |" for a, b, c in rows]
        lines.append("")
    notes = {}
    for table in results.values():
        for cells in table.values():
            for i, c in cells.items():
                if c.get("status") != "ok" and c.get("note"):
                    notes.setdefault(i, c["note"])
    if notes:
        lines += ["Not measured: " + "; ".join(f"{LABELS[i]}: {n}" for i, n in notes.items()) + ".", ""]
    how = {}
    for table in results.values():
        for cells in table.values():
            for i, c in cells.items():
                if c.get("status") == "ok" and c.get("note"):
                    how.setdefault(i, set()).add(c["note"])
    if how:
        lines += ["As run: " + "; ".join(f"{LABELS[i]}: {', '.join(sorted(n))}" for i, n in how.items()) + ".", ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace this script's section of RESULTS.md (up to the next '## ' heading), or append it."""
    with open(RESULTS) as f:
        content = f.read()
    start = content.find(SECTION)
    if start < 0:
        content = content.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        nxt = content.find("\n## ", start + len(SECTION))
        end = len(content) if nxt < 0 else nxt + 1
        content = content[:start] + text.rstrip("\n") + "\n" + ("\n" + content[end:] if nxt >= 0 else "")
    with open(RESULTS, "w") as f:
        f.write(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="time N threads only (default: 1 and all cores)")
    parser.add_argument("--quick", action="store_true", help="one round, short timing budgets (a smoke run)")
    parser.add_argument("--only", help=f"comma-separated implementations among {', '.join(IMPLS)}")
    parser.add_argument("--nets", help=f"comma-separated networks among {', '.join(NETWORKS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of every child (default 3, 1 with --quick)")
    parser.add_argument("--budget", type=float, default=0.0,
                        help="seconds of timed steps per child (default 2, 0.4 with --quick)")
    parser.add_argument("--gradcore", default=REPO, help="the gradcore source tree the gradcore children import "
                        "(default: this checkout)")
    parser.add_argument("--write", action="store_true", help=f"write the tables into {RESULTS}")
    parser.add_argument("--json", help="save every child's report (and the run's context) to this file")
    parser.add_argument("--from-json", help="tabulate (and --write) a run saved with --json instead of running")
    parser.add_argument("--selftest", action="store_true", help="only check the NumPy step against gradcore")
    parser.add_argument("--no-selftest", action="store_true", help="skip the NumPy self-test")
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--net", choices=list(NETWORKS), help=argparse.SUPPRESS)
    parser.add_argument("--selftest-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pin", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    budget = args.budget or (0.4 if args.quick else 2.0)
    batches = 7 if args.quick else 15

    if args.child:
        print(json.dumps(child(args.child, args.net, args.threads or os.cpu_count(), budget, batches, args.pin)))
        return
    if args.selftest_child:
        print(json.dumps(selftest()))
        return

    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        info, selftest_res, argv, load = saved["info"], saved["selftest"], saved["argv"], tuple(saved["load"])
        impls, names, thread_list = saved["impls"], saved["nets"], saved["threads"]
        runs = {(r["threads"], r["net"], r["impl"]): [] for r in saved["runs"]}
        for r in saved["runs"]:
            runs[(r["threads"], r["net"], r["impl"])].append(r)
    else:
        impls, names, thread_list = parse_selection(parser, args)
        selftest_res = None if args.no_selftest else run_selftest(args)
        if args.selftest:
            sys.exit(0 if selftest_res and selftest_res.get("ok") else 1)
        argv = _portable_argv(sys.argv[1:])
        info, runs, load = run_all(args, impls, names, thread_list, budget)
        if args.json:
            records = [dict(r, threads=t, net=n, impl=i) for (t, n, i), rs in runs.items() for r in rs]
            with open(args.json, "w") as f:
                json.dump(dict(info=info, selftest=selftest_res, argv=argv, load=load, impls=impls, nets=names,
                               threads=thread_list, runs=records), f, indent=1)
            print(f"saved every child's report to {args.json}")
    results = {t: {n: {i: summarise(runs.get((t, n, i), [])) for i in impls} for n in names} for t in thread_list}
    print_tables(results, impls)
    if args.write:
        versions = {}
        for table in results.values():
            for cells in table.values():
                for i, c in cells.items():
                    if c.get("version"):
                        versions.setdefault(i, c["version"])
        write_section(markdown(results, impls, info, versions, selftest_res, argv, load))
        print(f"wrote the section '{SECTION}' of {RESULTS}")


def parse_selection(parser, args) -> Tuple[List[str], List[str], List[int]]:
    impls = IMPLS if not args.only else [i.strip() for i in args.only.split(",")]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        parser.error(f"--only: unknown implementation(s) {bad}; choose from {IMPLS}")
    names = list(NETWORKS) if not args.nets else [n.strip() for n in args.nets.split(",")]
    bad = [n for n in names if n not in NETWORKS]
    if bad:
        parser.error(f"--nets: unknown network(s) {bad}; choose from {list(NETWORKS)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    cores = os.cpu_count() or 1
    return impls, names, [args.threads] if args.threads else sorted({1, cores})


def run_selftest(args) -> Optional[dict]:
    res = run_child(["--selftest-child"], child_env("selftest", 1, os.path.abspath(args.gradcore)))
    if "cases" not in res:
        print(f"self-test not run: {res.get('note')}")
        return None
    print(f"NumPy step vs gradcore eager: {'passed' if res['ok'] else 'FAILED'}")
    for c in res["cases"]:
        print(f"  {c['net']} clip {c['max_norm']:g}: loss {c['loss']:.1e}, grad {c['grad']:.1e}, "
              f"update {c['update/lr']:.1e} x lr, bn stats {c['bn stats']:.1e}{'' if c['ok'] else '  FAIL'}")
    return res


def run_all(args, impls, names, thread_list, budget):
    """Every (round, threads, network, implementation) child; returns (info, runs, load averages)."""
    gradcore_path = os.path.abspath(args.gradcore)
    rounds = args.rounds or (1 if args.quick else 3)
    cores = os.cpu_count() or 1
    # 1 thread means one core: XLA sizes its pools from the affinity mask and ignores the old
    # Eigen thread flags, so every 1-thread child is pinned to one core, the idlest just before.
    pinning = hasattr(os, "sched_getaffinity") and cores > 1
    info = machine_info()
    info["start"] = info["date"]
    load0 = "%.1f %.1f %.1f" % os.getloadavg()
    print(f"{info['cpu']}, {info['cores']} cores; {rounds} round(s), {budget:g} s per child; threads {thread_list}; "
          f"load average {load0}")
    runs: Dict[Tuple[int, str, str], List[dict]] = {}
    order = list(impls)
    for r in range(rounds):
        for threads in thread_list:
            for name in names:
                k = (r + names.index(name)) % len(order)
                for impl in order[k:] + order[:k]:
                    res = run_child(["--child", impl, "--net", name, "--threads", str(threads), "--budget",
                                     str(budget)] + (["--quick"] if args.quick else [])
                                    + (["--pin", str(idlest_core())] if threads == 1 and pinning else []),
                                    child_env(impl, threads, gradcore_path))
                    res["round"] = r + 1
                    runs.setdefault((threads, name, impl), []).append(res)
                    if res.get("status") == "ok":
                        print(f"  round {r + 1} {threads}t {name} {impl:<9} {fmt_us(res['us']):>10} "
                              f"(cpu {res['cpu_util']:.2f}, {res['rss_mb']:.0f} MB, loss {res['losses'][0]:.5f})",
                              flush=True)
                    else:
                        print(f"  round {r + 1} {threads}t {name} {impl:<9} {res.get('status')}: {res.get('note')}",
                              flush=True)
    load1 = "%.1f %.1f %.1f" % os.getloadavg()
    print(f"load average at the end {load1}")
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return info, runs, (load0, load1)

if __name__ == "__main__":
    main()
