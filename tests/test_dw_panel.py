"""Dense weight gradients of the compiled step, and the sums of squares taken from them.

An accumulating run (``forward_backward(..., accumulate=True)``, fit's
``accumulate_steps > 1``) has the weight GEMM add its product into the flat gradient
buffer itself (beta = 1) instead of writing a scratch and adding it afterwards; a layer
with an L2 penalty keeps the scratch path. These tests check the gradients, the
per-tensor sums of squares the clip reads and the pre-clip global norm.

Oracle: a NumPy float64 forward and backward of the same Dense stack from the same
parameters (mean squared error, ReLU, the L2 penalty's gradient 2 * l2 * W), each batch's
gradient weighted by its scale and summed over the group. Shapes are odd, and the
batches of one case reach past 448 rows, where OpenBLAS sums the batch in several k
blocks (each added into the buffer). float64 to ~1e-10 relative (summation order), float32
to ~1e-4 (float32 forward and backward against a float64 reference).
"""
import math

import numpy as np
import pytest

import gradcore
from gradcore import _C, losses, nn, optim
from gradcore.compiled import compile_step

pytestmark = pytest.mark.skipif(not hasattr(_C, "Plan"), reason="the extension has no compiled plans")

# (layers as (in, out, activation, l2), micro-batch sizes of one group)
CASES = {
    "odd": ([(37, 129, "relu", 0.0), (129, 65, "relu", 0.0), (65, 3, None, 0.0)], [7, 33, 5]),
    "one batch": ([(37, 129, "relu", 0.0), (129, 65, None, 0.0)], [19]),
    "long batch": ([(30, 301, "relu", 0.0), (301, 2, None, 0.0)], [500, 461]),
    "l2": ([(11, 23, "relu", 0.01), (23, 17, "relu", 0.0), (17, 4, None, 0.02)], [9, 9, 4]),
}
# (gradient rtol, norm rtol) against the float64 reference
TOL = {np.float64: (1e-10, 1e-12), np.float32: (2e-4, 2e-5)}


def _net(layers, dtype):
    gradcore.manual_seed(7)
    return nn.Sequential(*[nn.Dense(i, o, act, l2=l2) for i, o, act, l2 in layers], dtype=dtype)


def _batches(layers, sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    out = []
    for n in sizes:
        x = rng.standard_normal((n, layers[0][0])).astype(dtype)
        y = rng.standard_normal((n, layers[-1][1])).astype(dtype)
        out.append((x, y, n / total))
    return out


def reference(params, layers, batches):
    """float64 gradients (W, b per layer, parameter order) of sum_j scale_j * loss_j."""
    Ws = [np.asarray(p, dtype=np.float64) for p in params[0::2]]
    bs = [np.asarray(p, dtype=np.float64) for p in params[1::2]]
    grads = [np.zeros_like(np.asarray(p, dtype=np.float64)) for p in params]
    for x, y, scale in batches:
        h = [np.asarray(x, dtype=np.float64)]
        zs = []
        for (_, _, act, _), W, b in zip(layers, Ws, bs):
            z = h[-1] @ W.T + b
            zs.append(z)
            h.append(np.maximum(z, 0.0) if act == "relu" else z)
        out = h[-1]
        g = 2.0 * (out - np.asarray(y, dtype=np.float64)) / out.size * scale
        for li in range(len(layers) - 1, -1, -1):
            act, l2 = layers[li][2], layers[li][3]
            if act == "relu":
                g = g * (zs[li] > 0)
            grads[2 * li] += g.T @ h[li] + 2.0 * l2 * scale * Ws[li]
            grads[2 * li + 1] += g.sum(axis=0)
            g = g @ Ws[li]
    return grads


def _compiled_group(net, batches, clip):
    opt = optim.SGD(net.parameters(), lr=1e-3, global_clip_norm=clip)
    step = compile_step(net, losses.get("mse"), opt)
    params = [np.array(p.data, dtype=np.float64) for p in net.parameters()]
    for j, (x, y, w) in enumerate(batches):
        step.forward_backward(x, y, scale=w, accumulate=j > 0)
    grads = [np.array(view, dtype=np.float64) for _, view in step._grad_pairs]
    sumsq = np.array(step._slot.sumsq, dtype=np.float64) if step._mode == "fused" else None
    norm = step.apply_update()
    return params, grads, sumsq, norm


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_weight_gradients_match_numpy(case, dtype):
    layers, sizes = CASES[case]
    net = _net(layers, dtype)
    batches = _batches(layers, sizes, dtype)
    params, grads, sumsq, norm = _compiled_group(net, batches, clip=1e-3)
    ref = reference(params, layers, batches)
    gtol, ntol = TOL[dtype]
    assert len(grads) == len(ref)
    for i, (g, r) in enumerate(zip(grads, ref)):
        scale = np.abs(r).max()
        np.testing.assert_allclose(g, r, rtol=gtol, atol=gtol * scale, err_msg=f"{case}: tensor {i}")
    # the per-tensor sums of squares and the global norm: of the gradients the plan holds
    # (double accumulation: float64 exact to rounding, float32 squares summed exactly)
    own = np.array([np.sum(g * g) for g in grads])
    assert sumsq is not None, "the SGD step is expected to run fused"
    np.testing.assert_allclose(sumsq, own, rtol=1e-12, atol=0, err_msg=f"{case}: per-tensor sums of squares")
    assert norm == pytest.approx(math.sqrt(own.sum()), rel=1e-12)
    # and against the reference gradients
    ref_norm = math.sqrt(sum(float(np.sum(r * r)) for r in ref))
    assert norm == pytest.approx(ref_norm, rel=max(ntol, 10 * gtol if dtype == np.float32 else ntol))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_accumulated_group_matches_eager(dtype):
    """The in-buffer accumulation (several k blocks at 500 / 461 rows) against eager's
    leaf.grad += g, to the compiled-vs-eager tolerance."""
    layers, sizes = CASES["long batch"]
    batches = _batches(layers, sizes, dtype, seed=3)
    tol = {np.float64: 1e-12, np.float32: 1e-5}[dtype]
    a = _net(layers, dtype)
    oa = optim.SGD(a.parameters(), lr=1e-3, global_clip_norm=1e-3)
    loss_fn = losses.get("mse")
    oa.zero_grad()
    for x, y, w in batches:
        (loss_fn(a(x), y) * w).backward()
    eager = [np.array(p.grad, dtype=np.float64) for p in a.parameters()]
    oa.step()
    b = _net(layers, dtype)
    _, grads, _, norm = _compiled_group(b, batches, clip=1e-3)
    for i, (g, e) in enumerate(zip(grads, eager)):
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol * np.abs(e).max(), err_msg=f"tensor {i}")
    assert norm == pytest.approx(oa.last_grad_norm, rel=tol)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(np.asarray(pb.data, np.float64), np.asarray(pa.data, np.float64), rtol=tol,
                                   atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_accumulating_group_after_plain_steps(dtype):
    """A group that accumulates starts from the buffer its first (plain) micro-step wrote,
    not from the previous step's gradient: two groups in a row, each against NumPy."""
    layers, sizes = CASES["odd"]
    net = _net(layers, dtype)
    gtol, _ = TOL[dtype]
    opt = optim.SGD(net.parameters(), lr=1e-2)
    step = compile_step(net, losses.get("mse"), opt)
    for group in range(2):
        batches = _batches(layers, sizes, dtype, seed=10 + group)
        params = [np.array(p.data, dtype=np.float64) for p in net.parameters()]
        for j, (x, y, w) in enumerate(batches):
            step.forward_backward(x, y, scale=w, accumulate=j > 0)
        grads = [np.array(view, dtype=np.float64) for _, view in step._grad_pairs]
        ref = reference(params, layers, batches)
        for i, (g, r) in enumerate(zip(grads, ref)):
            np.testing.assert_allclose(g, r, rtol=gtol, atol=gtol * np.abs(r).max(),
                                       err_msg=f"group {group}: tensor {i}")
        step.apply_update()
