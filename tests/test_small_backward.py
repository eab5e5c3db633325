"""The small Dense layers' own backward kernels (csrc/dense_small.cpp: dW = dY^T X and
dX = dY W for in, out <= 64, AVX-512), reached through dense_backward (eager and compiled).

Oracles: a NumPy float64 reference of the products (and the whole backward of a small
network), PyTorch's autograd where installed, and the eager step for the compiled one
(50 steps, 1e-5 float32 / 1e-12 float64). ``_C.set_dense_small("always")`` runs the
kernels on every shape within their limits (``"auto"`` picks them only where they were
measured faster than the BLAS), ``"off"`` takes the BLAS path a CPU without AVX-512 takes.
"""
import copy

import numpy as np
import pytest

import gradcore
from gradcore import _C, losses, nn, optim
from gradcore.compiled import compile_step

SHAPES = [(1, 1), (1, 64), (64, 1), (3, 5), (16, 16), (17, 33), (20, 50), (33, 17), (31, 47), (50, 40), (4, 64),
          (64, 10), (64, 64), (10, 1), (49, 2)]
BATCHES = [1, 7, 32, 800, 1000]


@pytest.fixture
def small_mode(request):
    """Sets the kernels' mode for one test and restores the previous one."""
    was = _C.set_dense_small("auto")
    yield lambda mode: _C.set_dense_small(mode)
    _C.set_dense_small(was)


def _operands(batch, n_in, n_out, dtype, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, n_in)).astype(dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    dY = rng.standard_normal((batch, n_out)).astype(dtype)
    return X, W, dY


def _bound(a, b, n, dtype):
    """Rounding bound of a sum of n products: n * eps * sum |terms| (float64 reference)."""
    eps = np.finfo(dtype).eps
    return 2.0 * n * eps * (np.abs(a) @ np.abs(b)) + np.finfo(dtype).tiny


def _check_products(X, W, dY, dX, dW, dW0=None):
    dtype = X.dtype
    X64, W64, G64 = (a.astype(np.float64) for a in (X, W, dY))
    ref_dw = G64.T @ X64
    tol_dw = _bound(G64.T, X64, X.shape[0], dtype)
    if dW0 is not None:  # accumulate: dW0 + (the product, rounded)
        ref_dw = ref_dw + dW0.astype(np.float64)
        tol_dw = tol_dw + np.finfo(dtype).eps * np.abs(ref_dw)
    assert np.all(np.abs(dW - ref_dw) <= tol_dw), np.max(np.abs(dW - ref_dw) / tol_dw)
    ref_dx = G64 @ W64
    tol_dx = _bound(G64, W64, W.shape[0], dtype)
    assert np.all(np.abs(dX - ref_dx) <= tol_dx), np.max(np.abs(dX - ref_dx) / tol_dx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["always", "off"])
def test_products_match_float64_reference(mode, dtype, small_mode):
    """The kernels on every shape ('always'), the BLAS path ('off'; 'auto' mixes the two and
    is covered by the whole-step tests below)."""
    small_mode(mode)
    for si, (n_in, n_out) in enumerate(SHAPES):
        for batch in BATCHES if mode == "always" else (7, 800):
            X, W, dY = _operands(batch, n_in, n_out, dtype, seed=si * 10 + batch)
            dX = np.full((batch, n_in), np.nan, dtype)
            dW = np.full((n_out, n_in), np.nan, dtype)
            _C.dense_backward(X, W, dY, dX, dW)
            _check_products(X, W, dY, dX, dW)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["always", "auto"])
def test_accumulate_adds_into_dw(mode, dtype, small_mode):
    """accumulate=True (beta = 1, the plan's dw_in_view): dW0 + the product, the values of
    dW0 that the product does not cover untouched (none: all of dW is covered)."""
    small_mode(mode)
    for si, (n_in, n_out) in enumerate(SHAPES):
        for batch in (7, 800):
            X, W, dY = _operands(batch, n_in, n_out, dtype, seed=500 + si)
            dW0 = np.random.default_rng(si).standard_normal((n_out, n_in)).astype(dtype)
            dW = dW0.copy()
            dX = np.empty((batch, n_in), dtype)
            _C.dense_backward(X, W, dY, dX, dW, None, True)
            _check_products(X, W, dY, dX, dW, dW0=dW0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_agree_with_the_blas_path(dtype, small_mode):
    """'always' against 'off' (the BLAS) on the same operands: the same sums in another
    order, so equal to a few roundings of the terms."""
    for si, (n_in, n_out) in enumerate(SHAPES):
        for batch in BATCHES:
            X, W, dY = _operands(batch, n_in, n_out, dtype, seed=900 + si)
            got = {}
            for mode in ("always", "off"):
                small_mode(mode)
                dX = np.empty((batch, n_in), dtype)
                dW = np.empty((n_out, n_in), dtype)
                _C.dense_backward(X, W, dY, dX, dW)
                got[mode] = (dX, dW)
            eps = np.finfo(dtype).eps
            for k, (a, b) in enumerate(zip(got["always"], got["off"])):
                n = batch if k == 1 else n_out
                tol = 4 * n * eps * (np.abs(dY).T @ np.abs(X) if k == 1 else np.abs(dY) @ np.abs(W))
                assert np.all(np.abs(a.astype(np.float64) - b) <= tol + np.finfo(dtype).tiny), (n_in, n_out, batch, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate_as_in_numpy(dtype, small_mode):
    """A NaN in X and an Inf in dY spread exactly as NumPy's float64 products spread them
    (Inf * 0 = NaN included); the lanes past a layer's width never leak into the result."""
    small_mode("always")
    for n_in, n_out in [(20, 50), (50, 40), (17, 33), (1, 64), (64, 1), (10, 1)]:
        for batch in (7, 32, 800):
            X, W, dY = _operands(batch, n_in, n_out, dtype, seed=n_in + n_out)
            X[batch // 2, n_in // 3] = np.nan
            dY[batch // 3, n_out - 1] = np.inf
            dY[0, 0] = -np.inf
            X[0, n_in - 1] = 0.0  # -inf * 0 = nan in dW[0, n_in - 1]
            W[n_out - 1, 0] = 0.0  # inf * 0 = nan in dX[batch // 3, 0]
            dX = np.empty((batch, n_in), dtype)
            dW = np.empty((n_out, n_in), dtype)
            _C.dense_backward(X, W, dY, dX, dW)
            with np.errstate(invalid="ignore", over="ignore"):
                ref_dw = dY.astype(np.float64).T @ X.astype(np.float64)
                ref_dx = dY.astype(np.float64) @ W.astype(np.float64)
            for got, ref in ((dW, ref_dw), (dX, ref_dx)):
                np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
                np.testing.assert_array_equal(np.isposinf(got), np.isposinf(ref))
                np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))


def test_mode_switch_validates_and_reports(small_mode):
    assert small_mode("off") == "auto"
    assert _C.dense_small_enabled() is False
    assert small_mode("always") == "off"
    with pytest.raises(ValueError, match="'off', 'auto' or 'always'"):
        _C.set_dense_small("fast")
    assert small_mode("auto") == "always"


# ---------------------------------------------------------------------- whole steps
NETS = {"net1": ([20, 50, 40, 30, 20, 10, 1], 32), "net2": ([20, 50, 40, 30, 20, 10, 1], 800),
        "odd": ([7, 64, 33, 1, 17, 3], 13)}


def _make(widths, dtype):
    gradcore.manual_seed(3)
    return nn.Sequential(*[nn.Dense(widths[i], widths[i + 1], activation="relu" if i < len(widths) - 2 else None)
                           for i in range(len(widths) - 1)], dtype=dtype)


def _eager_step(net, opt, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return float(loss.item())


# net2 (batch 800) in the default mode only (test time)
NET_MODES = [(n, m) for n in sorted(NETS) for m in ("auto", "always", "off") if n != "net2" or m == "auto"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,mode", NET_MODES)
def test_compiled_matches_eager_over_50_steps(name, mode, dtype, small_mode):
    """The benchmark's step (BCE with logits, Adam AMSGrad, global clip 5): compiled ==
    eager after every one of 50 steps, 1e-5 float32 / 1e-12 float64 (issue 8)."""
    small_mode(mode)
    widths, batch = NETS[name]
    a = _make(widths, dtype)
    b = copy.deepcopy(a)
    make_opt = lambda net: optim.Adam(net.parameters(), lr=1e-3, amsgrad=True, global_clip_norm=5.0)
    oa, ob = make_opt(a), make_opt(b)
    loss_fn = losses.BCEWithLogitsLoss()
    step = compile_step(b, loss_fn, ob)
    rng = np.random.default_rng(11)
    X = rng.standard_normal((batch, widths[0])).astype(dtype)
    Y = (rng.random((batch, widths[-1])) < 0.5).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for i in range(50):
        la = _eager_step(a, oa, loss_fn, X, Y)
        lb = step(X, Y)
        assert lb == pytest.approx(la, rel=tol, abs=tol)
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            np.testing.assert_allclose(q.data, p.data, rtol=tol, atol=tol, err_msg=f"step {i}: {n}")
    for s_a, s_b in zip(oa._slots, ob._slots):
        for k in s_a.state:
            np.testing.assert_allclose(s_b.state[k], s_a.state[k], rtol=tol, atol=tol, err_msg=k)


def _reference_grads(net, x, y):
    """float64 gradients of BCE-with-logits (mean) through the ReLU stack, parameter order."""
    Ws = [np.asarray(l.weight.data, np.float64) for l in net]
    bs = [np.asarray(l.bias.data, np.float64) for l in net]
    h, zs = [x.astype(np.float64)], []
    for i, (W, b) in enumerate(zip(Ws, bs)):
        z = h[-1] @ W.T + b
        zs.append(z)
        h.append(np.maximum(z, 0) if i < len(Ws) - 1 else z)
    g = (1 / (1 + np.exp(-h[-1])) - y) / y.size
    out = []
    for i in range(len(Ws) - 1, -1, -1):
        if i < len(Ws) - 1:
            g = g * (zs[i] > 0)
        out = [g.T @ h[i], g.sum(0)] + out
        g = g @ Ws[i]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["always", "off"])
def test_accumulated_compiled_gradients_match_numpy(mode, dtype, small_mode):
    """forward_backward(accumulate=True) (the plan adds dW into the gradient buffer, beta = 1)
    over a group of batches against the float64 sum of the batches' gradients."""
    small_mode(mode)
    widths = [20, 50, 40, 30, 20, 10, 1]
    net = _make(widths, dtype)
    step = compile_step(net, losses.BCEWithLogitsLoss(), optim.SGD(net.parameters(), lr=1e-3))
    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((n, 20)).astype(dtype), (rng.random((n, 1)) < 0.5).astype(dtype))
               for n in (32, 7, 600)]
    ref = None
    for j, (x, y) in enumerate(batches):
        step.forward_backward(x, y, scale=0.5, accumulate=j > 0)
        r = [0.5 * g for g in _reference_grads(net, x, y)]
        ref = r if ref is None else [a + b for a, b in zip(ref, r)]
    grads = [np.array(view, dtype=np.float64) for _, view in step._grad_pairs]
    tol = 2e-4 if dtype == np.float32 else 1e-10
    for i, (g, r) in enumerate(zip(grads, ref)):
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.abs(r).max(), err_msg=f"tensor {i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_parity(dtype, small_mode):
    torch = pytest.importorskip("torch")
    small_mode("always")
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    for n_in, n_out, batch in [(20, 50, 800), (50, 40, 32), (33, 17, 7), (64, 64, 1000), (10, 1, 32)]:
        X, W, dY = _operands(batch, n_in, n_out, dtype, seed=batch)
        tx = torch.tensor(X, dtype=tdt, requires_grad=True)
        tw = torch.tensor(W, dtype=tdt, requires_grad=True)
        (tx @ tw.T).backward(torch.tensor(dY, dtype=tdt))
        dX = np.empty_like(X)
        dW = np.empty_like(W)
        _C.dense_backward(X, W, dY, dX, dW)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for got, ref in ((dX, tx.grad.numpy()), (dW, tw.grad.numpy())):
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
