"""The compiled plan's small-layer paths (csrc/activation.cpp dense_forward_small, and the
lean per-step call of CompiledStep): the same numbers as the eager step."""
import numpy as np
import pytest

import gradcore
from gradcore import nn

SHAPES = [  # (widths, batch): the benchmark's net1 / net2 and edges of the small kernel's rule
    ([20, 50, 40, 30, 20, 10, 1], 32),
    ([20, 50, 40, 30, 20, 10, 1], 800),
    ([7, 64, 33, 3], 5),         # 64 outputs (4 float32 vectors, 8 float64 ones)
    ([40, 30, 64, 40], 40),      # k >= 32 with out * rows <= 1200: the BLAS's small kernel
    ([10, 64, 64, 2], 17),       # a row tail (17 = 2 * 8 + 1)
    ([3, 1, 5], 9),
    ([65, 20, 70, 4], 12),       # above 64: the BLAS path
]


def _assert_as_eager(out, eager):
    """compiled == eager: to 1e-6 (float32) / 1e-13 (float64) relative, the last bits a BLAS
    other than the one measured here may round differently."""
    tol = 1e-6 if out.dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, eager, rtol=tol, atol=tol * max(1.0, float(np.abs(eager).max())))


def _net(widths, dtype, act="relu", bias=True):
    layers = [nn.Dense(widths[i], widths[i + 1], activation=act if i < len(widths) - 2 else None, use_bias=bias, dtype=dtype)
              for i in range(len(widths) - 1)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("widths,batch", SHAPES)
def test_forward_output_equals_eager_and_oracle(widths, batch, dtype):
    rng = np.random.default_rng(len(widths) * 100 + batch)
    net = _net(widths, dtype)
    step = gradcore.compile_step(net, gradcore.losses.MSELoss(), gradcore.optim.Adam(net.parameters(), lr=1e-3))
    x = rng.standard_normal((batch, widths[0])).astype(dtype)
    y = rng.standard_normal((batch, widths[-1])).astype(dtype)
    for _ in range(3):
        eager = net(x).data.copy()
        # NumPy float64 oracle of the forward
        h = x.astype(np.float64)
        for i, layer in enumerate(net):
            h = h @ layer.weight.data.astype(np.float64).T + layer.bias.data.astype(np.float64)
            if i < len(net) - 1:
                h = np.maximum(h, 0)
        step(x, y)
        out = step.output()
        # one FMA chain per output then + b: on this OpenBLAS (0.3.30) the BLAS kernel's
        # numbers exactly; another BLAS may round differently, within the compiled step's
        # tolerance against eager
        _assert_as_eager(out, eager)
        tol = 1e-4 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, h, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "leaky_relu"])
def test_small_forward_other_activations_and_no_bias(act, dtype):
    rng = np.random.default_rng(7)
    for bias in (True, False):
        net = _net([12, 33, 17, 2], dtype, act=act, bias=bias)
        step = gradcore.compile_step(net, gradcore.losses.MSELoss(), gradcore.optim.SGD(net.parameters(), lr=0.1))
        x = rng.standard_normal((21, 12)).astype(dtype)
        y = rng.standard_normal((21, 2)).astype(dtype)
        eager = net(x).data.copy()
        step(x, y)
        _assert_as_eager(step.output(), eager)
