"""dense_forward's bias broadcast (fill_rows in csrc/dense.cpp): on one thread it writes row 0
and then doubles the filled block with memcpy, so every row count (powers of two and not,
1 row, more rows than one doubling covers) must still give exactly b in every row. A
layer with no inputs (in == 0) outputs the bias alone, so the oracle is exact."""
import numpy as np
import pytest

from gradcore import _C


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 31, 800, 1025])
@pytest.mark.parametrize("cols", [1, 7, 50, 300])
def test_bias_rows_exact(dtype, rows, cols):
    rng = np.random.default_rng(rows * 1000 + cols)
    b = rng.standard_normal(cols).astype(dtype)
    X, W = np.empty((rows, 0), dtype), np.empty((cols, 0), dtype)
    Y = np.full((rows, cols), np.nan, dtype)
    _C.dense_forward(X, W, b, Y)
    np.testing.assert_array_equal(Y, np.broadcast_to(b, (rows, cols)))


@pytest.mark.parametrize("rows", [1, 3, 33, 800])
def test_bias_plus_product_every_row(rows):
    # with inputs: the GEMM adds onto the broadcast rows (beta = 1); every row is checked
    # against float64 NumPy, so a row the doubling missed (NaN) or wrote twice fails
    rng = np.random.default_rng(rows)
    X = rng.standard_normal((rows, 20)).astype(np.float32)
    W = rng.standard_normal((10, 20)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    Y = np.full((rows, 10), np.nan, np.float32)
    _C.dense_forward(X, W, b, Y)
    want = X.astype(np.float64) @ W.T.astype(np.float64) + b
    np.testing.assert_allclose(Y, want, rtol=1e-5, atol=1e-5)
