"""Layers as torch's users expect them at two edges: a one-row training batch under
BatchNorm (the error names the layer as the network names it and says what to do; nothing
changes), and a patched ``functional.linear`` that reaches every Dense of a Sequential as
a patched torch.nn.functional.linear reaches every nn.Linear."""
import numpy as np
import pytest

import gradcore
from gradcore import functional as F
from gradcore import nn


def _snapshot(net):
    return {k: np.array(v, copy=True) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("make, label", [
    (lambda: nn.Sequential(nn.Dense(5, 8), nn.BatchNorm(8)), r"BatchNorm layer 1 \(BatchNorm\(8\)\)"),
    (lambda: nn.Sequential(nn.Dense(5, 8, "relu"), nn.BatchNorm1d(8), nn.Dense(8, 2)),
     r"BatchNorm1d layer 1 \(BatchNorm1d\(8\)\)"),
    (lambda: nn.BatchNorm(5), r"^BatchNorm \(BatchNorm\(5\)\)"),
])
def test_one_row_training_batch_under_batchnorm(make, label):
    net = make()
    net.train()
    before = _snapshot(net)
    with pytest.raises(ValueError, match=label) as info:
        net(np.ones((1, 5)))
    message = str(info.value)
    assert "more than 1 value per channel" in message and "(1, " in message
    assert ".eval()" in message and "2 or more rows" in message
    after = _snapshot(net)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    net.eval()  # the remedy the message names works: the running statistics
    out = net(np.ones((1, 5)))
    assert np.all(np.isfinite(np.asarray(out.data)))
    net.train()
    net(np.ones((2, 5)))  # and so does a larger batch


def test_one_row_batch_is_still_refused_by_functional_batch_norm():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.ones((1, 3)), np.zeros(3), np.ones(3), training=True)


def _net():
    gradcore.manual_seed(0)
    return nn.Sequential(nn.Dense(4, 6, "relu"), nn.Dense(6, 5, "tanh"), nn.BatchNorm(5), nn.Dense(5, 3),
                         nn.Dense(3, 2), dtype=np.float64)


def test_a_patched_linear_sees_every_dense_and_its_result_is_used(monkeypatch):
    net = _net()
    x = gradcore.Tensor(np.random.default_rng(0).standard_normal((3, 4)))
    chains = []
    original_chain = F._dense_chain

    def chain_spy(*args, **kwargs):
        chains.append(1)
        return original_chain(*args, **kwargs)

    monkeypatch.setattr(F, "_dense_chain", chain_spy)
    reference = net(x).data.copy()
    assert chains, "the unpatched network runs its fused chain"
    original = F.linear
    seen = []

    def stand_in(inp, weight, bias=None, *args, **kwargs):  # shifts each layer's bias by 0.5
        seen.append(weight.shape)
        return original(inp, weight, None if bias is None else bias + 0.5, *args, **kwargs)

    monkeypatch.setattr(F, "linear", stand_in)
    chains.clear()
    out = net(x).data
    assert seen == [(6, 4), (5, 6), (3, 5), (2, 3)] and not chains
    h = x
    for layer in net.layers:  # the same stand-in applied layer by layer
        if isinstance(layer, nn.Dense):
            h = original(h, layer.weight, layer.bias + 0.5, activation=layer.activation, alpha=layer.alpha)
        else:
            h = layer(h)
    np.testing.assert_array_equal(out, h.data)
    assert not np.array_equal(out, reference)
    monkeypatch.setattr(F, "linear", original)  # restored: the chain again, the same numbers
    chains.clear()
    np.testing.assert_array_equal(net(x).data, reference)
    assert chains
