"""Tensor ops and the tape: values against NumPy, gradients against finite differences."""
import numpy as np
import pytest

import gradcore
from gradcore import Tensor, gradcheck


def t64(rng, *shape, positive=False):
    a = rng.standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    return Tensor(a, requires_grad=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


BINARY_CASES = [
    ((3, 4), (3, 4)),
    ((3, 4), (4,)),
    ((2, 1, 4), (3, 1)),
    ((5,), ()),
]


@pytest.mark.parametrize("sa,sb", BINARY_CASES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_broadcasting_binary_ops(rng, op, sa, sb):
    a = t64(rng, *sa)
    b = t64(rng, *sb, positive=True)
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
          "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    out = fn(a, b)
    np.testing.assert_allclose(out.data, fn(a.data, b.data), rtol=1e-12)
    assert gradcheck(fn, [a, b])
    out = fn(a, b)
    out.backward(np.ones(out.shape))
    assert a.grad.shape == a.shape and b.grad.shape == b.shape


def test_scalar_operands_keep_float32():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    for y in (x * 2.0, 2.0 * x, x + 1, 1 - x, x / 3.0, 3.0 / x, x ** 2, -x):
        assert y.dtype == np.float32
    y = (3.0 / x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, -3.0 * np.ones(3), rtol=1e-6)


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "abs", "neg", "pow3", "pow_half", "pow_neg"])
def test_unary_ops(rng, name):
    x = t64(rng, 3, 5, positive=name in ("log", "sqrt", "pow_half", "pow_neg"))
    fns = {
        "exp": (lambda t: t.exp(), np.exp), "log": (lambda t: t.log(), np.log),
        "sqrt": (lambda t: t.sqrt(), np.sqrt), "abs": (lambda t: t.abs(), np.abs),
        "neg": (lambda t: -t, np.negative), "pow3": (lambda t: t ** 3, lambda a: a ** 3),
        "pow_half": (lambda t: t ** 0.5, np.sqrt), "pow_neg": (lambda t: t ** -1.5, lambda a: a ** -1.5),
    }
    fn, ref = fns[name]
    np.testing.assert_allclose(fn(x).data, ref(x.data), rtol=1e-12)
    assert gradcheck(fn, [x])


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("red", ["sum", "mean", "max"])
def test_reductions(rng, red, axis, keepdims):
    x = t64(rng, 3, 4, 2)
    fn = lambda t: getattr(t, red)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(fn(x).data, getattr(np, red)(x.data, axis=axis, keepdims=keepdims), rtol=1e-12)
    assert gradcheck(fn, [x])


def test_max_ties_share_gradient():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])


def test_shape_ops(rng):
    x = t64(rng, 2, 3, 4)
    assert gradcheck(lambda t: t.reshape(4, 6), [x])
    assert gradcheck(lambda t: t.transpose(2, 0, 1), [x])
    assert gradcheck(lambda t: t.T, [x])
    assert gradcheck(lambda t: t.flatten(), [x])
    np.testing.assert_array_equal(x.transpose(2, 0, 1).data, np.transpose(x.data, (2, 0, 1)))


@pytest.mark.parametrize("index", [
    1, (slice(None), 2), (Ellipsis, slice(1, 3)), ([0, 0, 1], slice(None)), (slice(None, None, -1),),
    np.array([[True, False, True, True]] * 3).reshape(3, 4)[None].repeat(2, 0),
])
def test_indexing(rng, index):
    x = t64(rng, 2, 3, 4)
    np.testing.assert_array_equal(x[index].data, x.data[index])
    assert gradcheck(lambda t: t[index], [x])


def test_repeated_index_accumulates():
    x = Tensor(np.arange(4.0), requires_grad=True)
    x[[1, 1, 3]].sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 2, 0, 1])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_and_stack(rng, axis):
    a, b, c = t64(rng, 2, 3), t64(rng, 2, 3), t64(rng, 2, 3)
    np.testing.assert_array_equal(gradcore.concatenate([a, b, c], axis).data,
                                  np.concatenate([a.data, b.data, c.data], axis))
    np.testing.assert_array_equal(gradcore.stack([a, b, c], axis).data, np.stack([a.data, b.data, c.data], axis))
    assert gradcheck(lambda x, y, z: gradcore.concatenate([x, y, z], axis), [a, b, c])
    assert gradcheck(lambda x, y, z: gradcore.stack([x, y, z], axis), [a, b, c])


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 2)), ((3, 4), (4,)), ((2, 3, 4), (4, 2)),
                                   ((2, 3, 4), (2, 4, 5)), ((4,), (4,))])
def test_matmul(rng, sa, sb):
    a, b = t64(rng, *sa), t64(rng, *sb)
    np.testing.assert_allclose((a @ b).data, np.matmul(a.data, b.data), rtol=1e-12)
    assert gradcheck(lambda x, y: x @ y, [a, b])


def test_matmul_shape_error_names_shapes():
    with pytest.raises(ValueError, match=r"matmul.*\(3, 4\).*\(5, 2\)"):
        Tensor(np.ones((3, 4))) @ Tensor(np.ones((5, 2)))


def test_gradients_accumulate_until_zeroed(rng):
    x = t64(rng, 3)
    (x * x).sum().backward()
    first = x.grad.copy()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * first)
    x.zero_grad()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 3.0))


def test_shared_subexpression_gets_both_paths(rng):
    x = t64(rng, 4)
    y = x * 2.0
    z = (y * y + y).sum()
    z.backward()
    np.testing.assert_allclose(x.grad, 2 * (2 * y.data + 1), rtol=1e-12)


def test_backward_of_non_scalar_needs_grad(rng):
    x = t64(rng, 3)
    with pytest.raises(RuntimeError, match="single-element"):
        (x * 2.0).backward()
    y = x * 2.0
    y.backward(np.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(x.grad, [2.0, 0.0, 4.0])
    with pytest.raises(ValueError, match="shape"):
        (x * 2.0).backward(np.ones(4))


def test_graph_freed_unless_retained(rng):
    x = t64(rng, 3)
    loss = (x.exp()).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()
    x.zero_grad()
    loss = (x.exp()).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * np.exp(x.data), rtol=1e-12)


def test_no_grad_and_detach(rng):
    x = t64(rng, 3)
    with gradcore.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf
    z = x.detach() * 2.0
    assert not z.requires_grad
    assert np.shares_memory(x.detach().numpy(), x.data)

    @gradcore.no_grad()
    def f(t):
        return t + 1.0

    assert not f(x).requires_grad
    assert gradcore.is_grad_enabled()


def test_dtypes():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.arange(3)).dtype == np.float32
    assert Tensor(np.ones(2)).dtype == np.float64
    assert Tensor(np.ones(2), dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError):
        Tensor(np.ones(2), dtype=np.int32)
    with pytest.raises(TypeError):
        Tensor(np.array(["a"]))
    x = Tensor(np.ones(2, np.float32), requires_grad=True)
    y = x.double() * Tensor(np.ones(2))
    y.sum().backward()
    assert y.dtype == np.float64 and x.grad.dtype == np.float32


def test_float32_matches_float64(rng):
    a64 = rng.standard_normal((5, 4))
    b64 = rng.standard_normal((4, 3))
    fn = lambda a, b: ((a @ b).exp() / (a.abs().sum() + 1.0)).mean(axis=0)
    outs, grads = [], []
    for dt in (np.float32, np.float64):
        a, b = Tensor(a64.astype(dt), requires_grad=True), Tensor(b64.astype(dt), requires_grad=True)
        out = fn(a, b)
        out.sum().backward()
        outs.append(out.data)
        grads.append(a.grad)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_gradcheck_reports_wrong_gradient(rng):
    from gradcore.tensor import make_result

    def bad_square(t):
        return make_result(t.data ** 2, (t,), lambda g: (g * 3 * t.data,), "bad_square")

    with pytest.raises(gradcore.GradcheckError, match="element"):
        gradcheck(bad_square, [t64(rng, 3)])
    with pytest.raises(ValueError):
        gradcheck(lambda t: t * 2.0, [Tensor(np.ones(2))])
