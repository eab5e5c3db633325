"""cross_entropy / nll_loss where the 'mean' has nothing to average (every label ignored,
or every kept label of weight 0): loss and gradient as torch's, an ignored row's gradient
an exact 0 (so an optimizer steps as torch's does), a kept row's NaN where torch's is NaN.
Oracle: PyTorch (importorskip)."""
import numpy as np
import pytest

import gradcore
from gradcore import functional as F

X = np.array([[2.0, -1.0, 0.0], [0.0, 3.0, -3.0], [1.0, 1.0, -2.0]])
OPTIONS = [
    dict(ignore_index=1), dict(weight=[1.0, 0.0, 1.0]), dict(ignore_index=1, label_smoothing=0.2),
    dict(weight=[1.0, 0.0, 1.0], label_smoothing=0.2), dict(ignore_index=1, weight=[1.0, 2.0, 1.0]),
    dict(ignore_index=1, reduction="sum"), dict(ignore_index=1, reduction="none"),
    dict(ignore_index=0, weight=[1.0, 0.0, 1.0]), dict(ignore_index=0, weight=[1.0, 0.0, 1.0], label_smoothing=0.1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("labels", [[1, 1, 1], [1, 0, 1], [0, 1, 2]])
@pytest.mark.parametrize("options", OPTIONS)
def test_loss_and_gradient_match_torch(dtype, fn, labels, options):
    torch = pytest.importorskip("torch")
    if fn == "nll_loss" and "label_smoothing" in options:
        pytest.skip("nll_loss has no label_smoothing")
    y = np.array(labels)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    topts = dict(options)
    if "weight" in topts:
        topts["weight"] = torch.tensor(topts["weight"], dtype=tdtype)
    xt = torch.tensor(X.astype(dtype), requires_grad=True)
    lt = getattr(torch.nn.functional, fn)(xt, torch.tensor(y), **topts)
    (lt.sum() if lt.ndim else lt).backward()
    xg = gradcore.Tensor(X.astype(dtype), requires_grad=True)
    lg = getattr(F, fn)(xg, y, **options)
    with np.errstate(invalid="ignore", divide="ignore"):
        (lg.sum() if lg.ndim else lg).backward()
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(np.asarray(lg.data), lt.detach().numpy(), rtol=rtol, atol=0)
    np.testing.assert_allclose(np.asarray(xg.grad), xt.grad.numpy(), rtol=rtol, atol=1e-7 if dtype == np.float32 else 0)
    assert np.asarray(xg.grad).dtype == dtype


def test_an_all_ignored_batch_moves_adam_like_torch():
    """The zero gradient reaches the optimizer: Adam's momentum from an earlier step moves
    the weight on the all-ignored step, as in torch."""
    torch = pytest.importorskip("torch")
    from gradcore import nn, optim
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((3, 4))
    x = rng.standard_normal((2, 4))
    layer = nn.Dense(4, 3, dtype=np.float64)
    layer.weight.data[...] = W0
    layer.bias.data[...] = 0.0
    opt = optim.Adam(layer.parameters(), lr=0.1)
    t = torch.nn.Linear(4, 3, dtype=torch.float64)
    with torch.no_grad():
        t.weight.copy_(torch.tensor(W0))
        t.bias.zero_()
    topt = torch.optim.Adam(t.parameters(), lr=0.1)
    for y in ([0, 2], [1, 1]):  # the second batch is all ignored
        opt.zero_grad()
        loss = F.cross_entropy(layer(gradcore.Tensor(x)), np.array(y), ignore_index=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            loss.backward()
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(t(torch.tensor(x)), torch.tensor(y), ignore_index=1).backward()
        topt.step()
    np.testing.assert_allclose(layer.weight.data, t.weight.detach().numpy(), rtol=1e-12, atol=1e-14)
