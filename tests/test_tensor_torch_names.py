"""Tensor methods that carry PyTorch / NumPy names behave as there (DESIGN: names decide
semantics): flatten, max / min (with and without dim), amax / amin, abs() and unary +,
bool() / float() / int() of a tensor.
Oracle: PyTorch (importorskip) for values, indices and gradients, NumPy for shapes."""
import numpy as np
import pytest

import gradcore
from gradcore import Tensor, nn

NAN = float("nan")
ARRAYS = [
    np.array([[1.0, 3.0], [3.0, 3.0], [0.0, 0.0]]),          # ties, as after a ReLU
    np.array([[1.0, NAN], [3.0, NAN], [NAN, 2.0]]),          # NaN propagates as in torch
    np.array(2.0),                                           # 0-d
    np.random.default_rng(0).integers(0, 3, (3, 4, 2)).astype(float),  # many ties, 3-d
]


def _calls(x):
    dims = list(range(-x.ndim, x.ndim)) if x.ndim else [0, -1]
    out = [(None, False)]
    out += [(d, k) for d in dims for k in (False, True)]
    return out


@pytest.mark.parametrize("name", ["max", "min", "amax", "amin"])
@pytest.mark.parametrize("which", range(len(ARRAYS)))
def test_extremes_match_torch_values_indices_and_gradients(name, which):
    torch = pytest.importorskip("torch")
    x = ARRAYS[which]
    for dim, keepdim in _calls(x):
        t = torch.tensor(x, requires_grad=True)
        g = Tensor(x.copy(), requires_grad=True)
        if dim is None:
            r, q = getattr(t, name)(), getattr(g, name)()
        else:
            r, q = getattr(t, name)(dim=dim, keepdim=keepdim), getattr(g, name)(dim=dim, keepdim=keepdim)
        if isinstance(r, tuple):  # max / min with dim: (values, indices)
            assert isinstance(q, tuple)
            assert q.indices.dtype == np.int64
            np.testing.assert_array_equal(q.indices, r.indices.numpy(), err_msg=f"{name}({dim}, {keepdim})")
            r, q = r.values, q.values
        assert q.shape == tuple(r.shape)
        np.testing.assert_array_equal(np.asarray(q.data), r.detach().numpy())
        w = np.random.default_rng(1).standard_normal(tuple(r.shape))
        (r * torch.tensor(w)).sum().backward()
        with np.errstate(invalid="ignore", divide="ignore"):
            (q * Tensor(w)).sum().backward()
        np.testing.assert_allclose(np.asarray(g.grad), t.grad.numpy(), rtol=1e-15, atol=0,
                                   err_msg=f"{name}(dim={dim}, keepdim={keepdim}) of {x.tolist()}")


def test_numpy_named_max_and_min_over_an_axis_give_numpys_values():
    x = np.random.default_rng(2).standard_normal((3, 4, 2))
    t = Tensor(x)
    for axis in [0, 1, -1, (0, 2)]:
        for keepdims in (False, True):
            np.testing.assert_array_equal(t.max(axis, keepdims).data, x.max(axis, keepdims=keepdims))
            np.testing.assert_array_equal(t.min(axis=axis, keepdims=keepdims).data, x.min(axis, keepdims=keepdims))


def test_max_with_dim_honours_keepdims_for_indices_too():
    x = np.random.default_rng(3).standard_normal((3, 4))
    values, indices = Tensor(x).max(dim=1, keepdims=True)
    assert values.shape == (3, 1) and indices.shape == (3, 1)
    np.testing.assert_array_equal(indices, np.argmax(x, axis=1)[:, None])


@pytest.mark.parametrize("shape", [(), (5,), (5, 1), (3, 4), (2, 3, 4), (2, 0, 3)])
def test_flatten_matches_torch_for_every_start_and_end(shape):
    torch = pytest.importorskip("torch")
    x = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    assert Tensor(x).flatten().shape == x.flatten().shape
    n = max(len(shape), 1)
    for start in range(-n, n):
        for end in range(-n, n):
            try:
                want = torch.tensor(x).flatten(start, end)
            except RuntimeError:
                with pytest.raises((ValueError, IndexError)):
                    Tensor(x).flatten(start, end)
                continue
            got = Tensor(x).flatten(start, end)
            assert got.shape == tuple(want.shape), (shape, start, end)
            np.testing.assert_array_equal(got.data, want.numpy())
    with pytest.raises(IndexError):
        Tensor(x).flatten(0, n)


def test_flatten_gradient_returns_to_the_input_shape():
    x = np.random.default_rng(4).standard_normal((2, 3, 4))
    t = Tensor(x, requires_grad=True)
    w = np.random.default_rng(5).standard_normal(24)
    (t.flatten() * Tensor(w)).sum().backward()
    np.testing.assert_array_equal(t.grad, w.reshape(2, 3, 4))


def test_flatten_layer_keeps_the_batch_axis_like_torch_nn_flatten():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 3, 4))
    np.testing.assert_array_equal(nn.Flatten()(x).data, torch.nn.Flatten()(torch.tensor(x)).numpy())


def test_builtin_abs_and_unary_plus():
    torch = pytest.importorskip("torch")
    x = np.array([-2.0, 0.0, 3.0])
    t = Tensor(x, requires_grad=True)
    tt = torch.tensor(x, requires_grad=True)
    (abs(t) * Tensor([1.0, 2.0, 3.0])).sum().backward()
    (abs(tt) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    np.testing.assert_array_equal(abs(t).data, np.abs(x))
    np.testing.assert_array_equal(t.grad, tt.grad.numpy())  # sign(0) = 0 in both
    assert (+t) is t and (+tt) is tt  # torch.positive returns its input
    np.testing.assert_array_equal((-t).data, -x)
    assert gradcore.Tensor(x).abs().shape == (3,)


@pytest.mark.parametrize("values", [[0.0], 0.0, [[2.5]], -3.7, [1.0, 2.0], []])
def test_bool_float_int_of_a_tensor_as_torch(values):
    torch = pytest.importorskip("torch")
    for convert in (bool, float, int):
        try:
            want = convert(torch.tensor(values, dtype=torch.float64))
        except (RuntimeError, ValueError) as e:
            with pytest.raises(type(e)):
                convert(Tensor(np.array(values)))
            continue
        got = convert(Tensor(np.array(values)))
        assert type(got) is type(want) and got == want
