"""Regression tests for the C++ kernel defects of issue 6: thread partitioning, argument
checks, overflow and NaN propagation, SGD's momentum switch, the extension's version and
the thread-count limits. Oracles: NumPy references written here, PyTorch where named."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradcore
from gradcore import _C

# The source tree of the gradcore under test (what PYTHONPATH points at).
ROOT = pathlib.Path(gradcore.__file__).resolve().parent.parent  # where the imported package lives
REPO = pathlib.Path(__file__).resolve().parent.parent  # the source tree (CMakeLists.txt, csrc/)


def run_python(code: str, env_extra=None, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd or str(ROOT),
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ 1. thread partition
def test_kernels_cover_every_row_when_openmp_gives_fewer_threads_than_asked():
    """OMP_THREAD_LIMIT=1 makes OpenMP start one thread although two were asked for:
    every parallel loop must still cover all of its work (layer_norm left half the rows
    unwritten). Checked against NumPy in float64."""
    code = """
    import json
    import numpy as np
    import gradcore
    from gradcore import _C
    gradcore.set_num_threads(2)
    assert _C.get_num_threads() == 2
    rng = np.random.default_rng(0)
    errors = {}

    # layer norm forward + backward, 512 x 256 (above the parallel grain)
    X = rng.standard_normal((512, 256))
    g, b = rng.standard_normal(256), rng.standard_normal(256)
    Y, m, s = np.full_like(X, np.nan), np.full(512, np.nan), np.full(512, np.nan)
    _C.layer_norm_forward(X, g, b, 1e-5, Y, m, s)
    mu = X.mean(1, keepdims=True); inv = 1 / np.sqrt(X.var(1, keepdims=True) + 1e-5)
    xhat = (X - mu) * inv
    errors["layer_norm Y"] = np.abs(Y - (xhat * g + b)).max()
    errors["layer_norm invstd"] = np.abs(s - inv[:, 0]).max()
    dY = rng.standard_normal(X.shape)
    dX, dg, db = np.full_like(X, np.nan), np.full(256, np.nan), np.full(256, np.nan)
    _C.layer_norm_backward(X, dY, g, m, s, dX, dg, db)
    gh = dY * g
    dX_ref = inv * (gh - gh.mean(1, keepdims=True) - xhat * (gh * xhat).mean(1, keepdims=True))
    errors["layer_norm dX"] = np.abs(dX - dX_ref).max()
    errors["layer_norm dgamma"] = np.abs(dg - (dY * xhat).sum(0)).max()
    errors["layer_norm dbeta"] = np.abs(db - dY.sum(0)).max()

    # element-wise, softmax, batch norm, dropout, statistics
    x = rng.standard_normal(300_000)
    y = np.full_like(x, np.nan)
    _C.activation_forward("tanh", x, y, 0.0)
    errors["tanh"] = np.abs(y - np.tanh(x)).max()
    Z = rng.standard_normal((2000, 100))
    P = np.full_like(Z, np.nan)
    _C.softmax_forward(Z, P)
    E = np.exp(Z - Z.max(1, keepdims=True))
    errors["softmax"] = np.abs(P - E / E.sum(1, keepdims=True)).max()
    B = rng.standard_normal((256, 2048))
    Yb, sm, si = np.full_like(B, np.nan), np.full(2048, np.nan), np.full(2048, np.nan)
    _C.batch_norm_forward_train(B, None, None, None, None, 0.1, 1e-5, Yb, sm, si)
    errors["batch_norm"] = np.abs(Yb - (B - B.mean(0)) / np.sqrt(B.var(0) + 1e-5)).max()
    mask = np.full(x.shape, 7, np.uint8)
    yd = np.full_like(x, np.nan)
    _C.dropout_forward(x, yd, mask, 0.5, 3, 0)
    errors["dropout mask"] = float(np.isin(mask, (0, 1), invert=True).sum())
    errors["dropout"] = np.abs(yd - np.where(mask == 1, 2 * x, 0.0)).max()
    big = rng.standard_normal(3_000_000)
    errors["grad_stats"] = abs(_C.grad_stats([big])[0, 0] - np.dot(big, big)) / np.dot(big, big)
    print(json.dumps({k: float(v) for k, v in errors.items()}))
    """
    out = run_python(code, {"OMP_THREAD_LIMIT": "1"})
    assert out.returncode == 0, out.stderr
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in errors.items() if not v <= 1e-9}
    assert not bad, bad


# ------------------------------------------------------------------ 2. argument checks
def _ln_inputs(rng):
    X = rng.standard_normal((4, 3))
    m, s = X.mean(1), 1 / np.sqrt(X.var(1) + 1e-5)
    return X, rng.standard_normal((4, 3)), m, s


@pytest.mark.parametrize("which", ["dX", "dgamma", "dbeta"])
def test_layer_norm_refuses_a_list_as_output(which):
    rng = np.random.default_rng(1)
    X, dY, m, s = _ln_inputs(rng)
    kwargs = {"dX": None, "dgamma": None, "dbeta": None}
    kwargs[which] = [[0.0] * 3] * 4 if which == "dX" else [0.0] * 3
    with pytest.raises(TypeError, match=rf"^layer_norm_backward: {which} must be a numpy.ndarray or None, got list"):
        _C.layer_norm_backward(X, dY, None, m, s, **kwargs)


def test_batch_norm_and_losses_refuse_lists_as_outputs():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((8, 3))
    Y, sm, si = np.empty_like(X), np.empty(3), np.empty(3)
    with pytest.raises(TypeError, match="^batch_norm_forward_train: running_var must be a numpy.ndarray or None"):
        _C.batch_norm_forward_train(X, None, None, np.zeros(3), [1.0, 1.0, 1.0], 0.1, 1e-5, Y, sm, si)
    _C.batch_norm_forward_train(X, None, None, None, None, 0.1, 1e-5, Y, sm, si)
    with pytest.raises(TypeError, match="^batch_norm_backward: dgamma must be a numpy.ndarray or None"):
        _C.batch_norm_backward(X, X, None, sm, si, None, [0.0] * 3, None)
    with pytest.raises(TypeError, match="^mse_loss: grad must be a numpy.ndarray or None, got list"):
        _C.mse_loss(X, X, [[0.0] * 3] * 8)
    with pytest.raises(TypeError, match="^cross_entropy: grad must be a numpy.ndarray or None"):
        _C.cross_entropy_loss(X, np.zeros(8, np.int64), [[0.0] * 3] * 8)


def _cross_entropy_ref(Z, labels):
    lse = np.log(np.exp(Z - Z.max(1, keepdims=True)).sum(1)) + Z.max(1)
    loss = np.mean(lse - Z[np.arange(len(labels)), labels])
    grad = np.exp(Z - lse[:, None])
    grad[np.arange(len(labels)), labels] -= 1
    return loss, grad / len(labels)


def test_longlong_labels_are_int64():
    """np.longlong is a distinct dtype object with the same type as int64 on Linux: the
    dtype check compares types, not objects."""
    if np.dtype(np.longlong).itemsize != 8:
        pytest.skip("longlong is not 64-bit here")
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6).astype(np.longlong)
    assert np.dtype(np.longlong) == np.int64
    grad = np.empty_like(Z)
    loss = _C.cross_entropy_loss(Z, labels, grad)
    ref_loss, ref_grad = _cross_entropy_ref(Z, labels.astype(np.int64))
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)
    buf = rng.standard_normal(10)
    stats = _C.grad_stats_flat(buf, np.array([0, 4, 10], dtype=np.longlong))
    np.testing.assert_allclose(stats[:, 0], [np.dot(buf[:4], buf[:4]), np.dot(buf[4:], buf[4:])], rtol=1e-12)


# ------------------------------------------------------------------ 2. overflow / NaN
def test_grad_stats_mean_of_large_finite_float32_values():
    rng = np.random.default_rng(4)
    x = (rng.uniform(0.5, 2.0, 100_003) * 1e36).astype(np.float32)
    assert np.isfinite(x).all()
    row = _C.grad_stats([x])[0]
    ref = x.astype(np.float64)
    assert row[3] == 0  # nonfinite count
    assert row[4] == pytest.approx(ref.mean(), rel=1e-6)
    assert row[5] == pytest.approx(ref.std(), rel=1e-5)
    assert row[0] == pytest.approx(np.dot(ref, ref), rel=1e-6)
    assert row[2] == pytest.approx(ref.max(), rel=0)


def test_batch_norm_propagates_a_nan_variance_like_torch():
    """A column with +inf has mean inf and variance NaN: torch's output is NaN in the whole
    column (the variance is not replaced by 0)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    X = rng.standard_normal((16, 3))
    X[5, 1] = np.inf
    Y, sm, si = np.empty_like(X), np.empty(3), np.empty(3)
    rm, rv = np.zeros(3), np.ones(3)
    _C.batch_norm_forward_train(X, None, None, rm, rv, 0.1, 1e-5, Y, sm, si)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ref = torch.nn.functional.batch_norm(torch.from_numpy(X), trm, trv, training=True, momentum=0.1, eps=1e-5).numpy()
    np.testing.assert_array_equal(np.isnan(Y), np.isnan(ref))
    assert np.isnan(ref[:, 1]).all()
    np.testing.assert_allclose(Y[:, [0, 2]], ref[:, [0, 2]], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(rv), np.isnan(trv.numpy()))
    np.testing.assert_allclose(rv[[0, 2]], trv.numpy()[[0, 2]], rtol=1e-12)


# ------------------------------------------------------------------ 2. SGD momentum switch
def test_sgd_without_momentum_ignores_a_passed_buffer_and_dampening():
    """torch.optim.SGD(momentum=0, dampening=0.5) is plain SGD: p -= lr * g. The kernel
    chose the momentum path because a buffer was passed and stepped by lr * 0.5 * g."""
    rng = np.random.default_rng(6)
    p0, g = rng.standard_normal(10), rng.standard_normal(10)
    p, buf = p0.copy(), np.full(10, 3.0)
    off = np.array([0, 10], np.int64)
    _C.sgd_step(p, g, buf, off, np.zeros(1), np.zeros(1), lr=0.1, momentum=0.0, dampening=0.5, init_buffer=False)
    np.testing.assert_allclose(p, p0 - 0.1 * g, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(buf, 3.0)  # no momentum: the buffer is not the step's business
    # momentum > 0 still uses the buffer: buf = 0.9 * buf + 0.5 * g, p -= lr * buf
    p = p0.copy()
    _C.sgd_step(p, g, buf, off, np.zeros(1), np.zeros(1), lr=0.1, momentum=0.9, dampening=0.5, init_buffer=False)
    np.testing.assert_allclose(buf, 0.9 * 3.0 + 0.5 * g, rtol=1e-15)
    np.testing.assert_allclose(p, p0 - 0.1 * buf, rtol=1e-15)


# ------------------------------------------------------------------ 2. version check
def test_extension_exports_the_package_version():
    assert _C.__version__ == gradcore.__version__


def test_a_mismatched_extension_is_refused():
    from gradcore._loader import check_extension_version

    class Fake:
        __version__ = "0.0.1"
        __file__ = "/somewhere/_C.so"

    check_extension_version(type("Same", (), {"__version__": "1.2.3"}), "1.2.3")
    with pytest.raises(ImportError, match=r"version '0\.0\.1' but the Python package is '1\.2\.3'; reinstall"):
        check_extension_version(Fake, "1.2.3")
    with pytest.raises(ImportError, match="reinstall"):
        check_extension_version(object(), "1.2.3")  # an old build without __version__


def test_importing_a_package_whose_extension_is_stale_fails_clearly(tmp_path):
    """A copy of the package whose Python version differs from the compiled one: the import
    stops with an ImportError that says to reinstall (not a kernel crash later)."""
    pkg = tmp_path / "gradcore"
    shutil.copytree(ROOT / "gradcore", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    init = pkg / "__init__.py"
    text = init.read_text()
    init.write_text(re.sub(r'__version__ = "[^"]*"', '__version__ = "99.0.0"', text, count=1))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", "import gradcore"], env=env, cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "reinstall" in out.stderr and "99.0.0" in out.stderr, out.stderr


# 4. set_num_threads' limits (1 to gradcore._runtime.MAX_THREADS, ints only) are tested in
# tests/test_validation.py::test_set_num_threads_refuses_absurd_counts.


# ------------------------------------------------------------------ 3. build
def test_cmake_lists_every_source_explicitly():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "GLOB" not in cmake
    listed = set(re.findall(r"csrc/[A-Za-z0-9_]+\.cpp", cmake))
    on_disk = {f"csrc/{p.name}" for p in (REPO / "csrc").glob("*.cpp")}
    assert listed == on_disk
    assert re.search(r"-Wall\b", cmake) and re.search(r"-Wextra\b", cmake)
