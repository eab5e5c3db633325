"""Optimizer benchmark: global-norm clipping + AMSGrad step over flat buffers.

    python benchmarks/optim.py [--quick]

10M float32 parameters in 8 tensors of one flat buffer (as a network holds them). gradcore does the whole thing in one optimizer step
(a norm pass, then one fused clip + update pass). NumPy does the same math in place on
preallocated flat buffers (its best case: whole-buffer ufuncs, BLAS dot for the norms).
PyTorch, when installed, runs torch.nn.utils.clip_grad_norm_ then
torch.optim.Adam(amsgrad=True, fused=True). Times are medians of several runs.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import machine_line, measure, peer_mode, print_table, run_torch_peer, try_import_torch  # noqa: E402

# PyTorch is timed in a child process of its own (see _timing.run_torch_peer).
PEER = peer_mode()
torch = try_import_torch() if PEER else None

import gradcore  # noqa: E402
from gradcore import Tensor  # noqa: E402
from gradcore.flat import own_parameters  # noqa: E402
from gradcore.optim import Adam, clip_grad_norm_  # noqa: E402

LR, BETAS, EPS, MAX_NORM = 1e-3, (0.9, 0.999), 1e-8, 1.0


def make_data(total: int, pieces: int = 8):
    rng = np.random.default_rng(0)
    sizes = [total // pieces] * pieces
    sizes[-1] += total - sum(sizes)
    params = [rng.standard_normal(n, dtype=np.float32) * 0.1 for n in sizes]
    grads = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    return sizes, params, grads


def gradcore_case(sizes, params, grads, record_stats=False):
    """record_stats: the step also measures per-tensor gradient, parameter and update sums
    of squares (what a GradientMonitor asks of the optimizer)."""
    ps = [Tensor(p.copy(), requires_grad=True) for p in params]
    for p, g in zip(ps, grads):
        p.grad = g.copy()
    own_parameters(ps)  # one flat buffer over the 8 tensors, as a network owns its parameters
    opt = Adam(ps, lr=LR, betas=BETAS, eps=EPS, amsgrad=True, global_clip_norm=MAX_NORM)
    opt.record_stats = record_stats
    return (lambda: opt.step()), (lambda: clip_grad_norm_(ps, 1e30))


def numpy_case(sizes, params, grads, init=None):
    """The same math with in-place ufuncs on flat buffers (as efficient as NumPy allows).
    init: (m, v, v_max) to start from instead of zeros."""
    p = np.concatenate(params)
    g = np.concatenate(grads)
    m, v, vmax, gc, tmp = (np.zeros_like(p) for _ in range(5))
    if init is not None:
        for buf, value in zip((m, v, vmax), init):
            buf[...] = value
    bounds = np.cumsum([0] + sizes)
    views = [g[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    b1, b2 = BETAS
    state = {"t": 0}
    f32 = np.float32

    def norm():
        return math.sqrt(sum(float(np.dot(x, x)) for x in views))  # BLAS sdot per tensor

    def clip():
        total = norm()
        np.multiply(g, f32(min(1.0, 1e30 / (total + 1e-6))), out=g)
        return total

    def step():
        total = norm()
        coef = min(1.0, MAX_NORM / (total + 1e-6))
        state["t"] += 1
        t = state["t"]
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        np.multiply(g, f32(coef), out=gc)                       # clipped gradient
        np.multiply(m, f32(b1), out=m)
        np.multiply(gc, f32(1 - b1), out=tmp)
        np.add(m, tmp, out=m)                                   # m = b1 m + (1-b1) g
        np.multiply(gc, gc, out=tmp)
        np.multiply(tmp, f32(1 - b2), out=tmp)
        np.multiply(v, f32(b2), out=v)
        np.add(v, tmp, out=v)                                   # v = b2 v + (1-b2) g^2
        np.maximum(vmax, v, out=vmax)
        np.sqrt(vmax, out=tmp)
        np.multiply(tmp, f32(1 / math.sqrt(bc2)), out=tmp)
        np.add(tmp, f32(EPS), out=tmp)                          # denominator
        np.divide(m, tmp, out=tmp)
        np.multiply(tmp, f32(LR / bc1), out=tmp)
        np.subtract(p, tmp, out=p)
        return total

    return step, clip


def torch_case(sizes, params, grads):
    ps = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    for p, g in zip(ps, grads):
        p.grad = torch.tensor(g)
    opt = torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, amsgrad=True, fused=True)

    def step():
        total = torch.nn.utils.clip_grad_norm_(ps, MAX_NORM)
        opt.step()
        return total

    def norm():
        return torch.nn.utils.clip_grad_norm_(ps, 1e30)

    return step, norm


# The denormal row: 1 value in DEAD_EVERY has a zero gradient and a decayed (denormal) m and v, as
# a dead unit's Adam state is after some thousand steps in float32; v_max keeps its old peak.
DEAD_EVERY = 100


def dead_state(total: int):
    rng = np.random.default_rng(1)
    dead = np.zeros(total, dtype=bool)
    dead[::DEAD_EVERY] = True
    tiny = lambda: np.exp(rng.uniform(np.log(1e-44), np.log(1e-39), total)).astype(np.float32)  # noqa: E731
    m = np.where(dead, tiny(), 0.01 * rng.standard_normal(total)).astype(np.float32)
    v = np.where(dead, tiny(), 1e-4 * (0.1 + rng.random(total))).astype(np.float32)
    vmax = (v + 1e-4).astype(np.float32)
    return dead, m, v, vmax


def gradcore_denormal_case(sizes, params, grads):
    """The AMSGrad step on a state with denormal m / v where the gradient is 0 (dead units).
    A flushing kernel zeroes them in its first call; IEEE arithmetic keeps them denormal for
    many calls (v decays by beta2 = 0.999 per step)."""
    ps = [Tensor(p.copy(), requires_grad=True) for p in params]
    total = sum(sizes)
    dead, m, v, vmax = dead_state(total)
    bounds = np.cumsum([0] + sizes)
    for p, g, a, b in zip(ps, grads, bounds[:-1], bounds[1:]):
        p.grad = np.where(dead[a:b], np.float32(0), g)
    own_parameters(ps)
    opt = Adam(ps, lr=LR, betas=BETAS, eps=EPS, amsgrad=True, global_clip_norm=MAX_NORM)
    opt.step()  # creates the state, then it is overwritten with the decayed one
    slot = opt._slots[0]
    for name, value in (("m", m), ("v", v), ("v_max", vmax)):
        slot.state[name][...] = value
    return lambda: opt.step()


def numpy_denormal_case(sizes, params, grads):
    dead, m, v, vmax = dead_state(sum(sizes))
    bounds = np.cumsum([0] + sizes)
    grads = [np.where(dead[a:b], np.float32(0), g) for g, a, b in zip(grads, bounds[:-1], bounds[1:])]
    step, _ = numpy_case(sizes, params, grads, init=(m, v, vmax))
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1M parameters instead of 10M")
    parser.add_argument("--peer", choices=["torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = 1_000_000 if args.quick else 10_000_000
    sizes, params, grads = make_data(total)
    label = f"{total / 1e6:g}M f32 / {len(sizes)}"
    step_case, norm_case = f"global clip + AMSGrad step, {label}", f"clip_grad_norm_ alone, {label}"
    if PEER:
        if torch is not None:
            import json

            print(f"PyTorch {torch.__version__} with {torch.get_num_threads()} threads")
            t_step, t_norm = torch_case(sizes, params, grads)
            print(json.dumps({step_case: measure(t_step), norm_case: measure(t_norm)}))
        return
    print(machine_line())
    gc_step, gc_norm = gradcore_case(sizes, params, grads)
    np_step, np_norm = numpy_case(sizes, params, grads)
    step_row = {"case": step_case, "gradcore": measure(gc_step), "numpy": measure(np_step)}
    norm_row = {"case": norm_case, "gradcore": measure(gc_norm), "numpy": measure(np_norm)}
    stats_row = {"case": f"same, record_stats=True, {label}",
                 "gradcore": measure(gradcore_case(sizes, params, grads, record_stats=True)[0])}
    den_case = f"same, 1% denormal m/v (g = 0), {label}"
    # the steady state over many calls, as a training run sees it (gradcore's first call flushes)
    den_row = {"case": den_case, "gradcore": measure(gradcore_denormal_case(sizes, params, grads)),
               "numpy": measure(numpy_denormal_case(sizes, params, grads))}
    peers = ["numpy"]
    peer = run_torch_peer(os.path.abspath(__file__))
    if peer:
        peers.append("torch")
        step_row["torch"], norm_row["torch"] = peer.get(step_case), peer.get(norm_case)
    print_table("optimizer step (median time per call)", [step_row, stats_row, den_row, norm_row], peers)
    print("gradcore: Adam(amsgrad=True, global_clip_norm=1.0).step(); torch: clip_grad_norm_ then "
          "Adam(amsgrad=True, fused=True).step(); the norm row clips with a huge max_norm (norm pass + x1)")
    print(f"denormal row: 1 value in {DEAD_EVERY} has g = 0 and denormal m, v (a dead unit's decayed Adam state); "
          "gradcore's update pass flushes them to 0 (FTZ/DAZ), NumPy keeps them (IEEE)")


if __name__ == "__main__":
    main()
