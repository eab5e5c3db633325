"""The compiled step's per-step identity checks (CompiledStep._stale): whatever the fused
plan bound that a user changes between steps is seen before the next step.

Oracle: the eager path, step for step, as in test_compiled.py (float64 to 1e-12): a change
the step missed would leave the compiled twin's parameters or optimizer state behind.
"""
import numpy as np
import pytest

import gradcore
from gradcore import losses, nn, optim
from gradcore.compiled import compile_step

from test_compiled import _batchnorm, _l2, assert_same_state, data, eager_step, state_of, twin


def _run(make, changes, steps=14, batch=16):
    """Train an eager and a compiled twin; ``changes[i](net, opt)`` runs on both before step i.
    Returns the compiled step and the modes it reported after each step."""
    X, Y = data()
    a, b = twin(make, np.float64)
    oa, ob = optim.Adam(a.parameters(), lr=1e-2), optim.Adam(b.parameters(), lr=1e-2)
    loss_fn = losses.get("mse")
    step = compile_step(b, loss_fn, ob)
    modes = []
    rng = np.random.default_rng(3)
    for i in range(steps):
        if i in changes:
            changes[i](a, oa)
            changes[i](b, ob)
        idx = rng.integers(0, len(X), size=batch)
        x, y = X[idx], Y[idx]
        gradcore.manual_seed(50 + i)
        la = eager_step(a, oa, loss_fn, x, y)
        gradcore.manual_seed(50 + i)
        lb = step(x, y)
        np.testing.assert_allclose(lb, la, rtol=1e-12, atol=1e-12, err_msg=f"loss, step {i}")
        assert_same_state(state_of(a, oa), state_of(b, ob), 1e-12, f"step {i}")
        modes.append(step.mode)
    return step, modes


def _set(key, value):
    def change(net, opt):
        opt.param_groups[0][key] = value
    return change


def test_group_values_changed_in_place_are_seen():
    # an equal value as a new object, new values, then a schedule: every step matches eager
    step, modes = _run(_l2, {2: _set("lr", float("0.01")), 4: _set("lr", 3e-3), 6: _set("weight_decay", 0.1),
                             8: _set("betas", (0.5, 0.8)), 10: _set("lr", optim.ExponentialDecay(1e-2, decay_steps=3, decay_rate=0.5)),
                             11: _set("clip_norm", 0.05), 12: _set("eps", 1e-3), 13: _set("clip_value", 0.01)})
    assert modes == ["fused"] * 14


def test_invalid_group_value_set_in_place_is_refused():
    X, Y = data()
    gradcore.manual_seed(0)
    net = _l2(np.float64)
    opt = optim.Adam(net.parameters(), lr=1e-2)
    step = compile_step(net, "mse", opt)
    step(X[:8], Y[:8])
    before = [q.data.copy() for q in net.parameters()]
    opt.param_groups[0]["eps"] = -1.0
    with pytest.raises(ValueError, match="eps"):
        step(X[:8], Y[:8])
    for q, old in zip(net.parameters(), before):
        np.testing.assert_array_equal(q.data, old)


def test_add_param_group_after_compiling_is_seen():
    def add(net, opt):
        extra = gradcore.Tensor(np.ones(3), requires_grad=True)  # never gets a gradient
        opt.add_param_group({"params": [extra], "lr": 0.5})
    step, modes = _run(_l2, {5: add})
    assert modes == ["fused"] * 5 + ["split"] * 9
    assert "2 parameter groups" in step.split_reason


def test_load_state_dict_between_steps_is_seen():
    saved = {}

    def save(net, opt):
        saved[id(opt)] = opt.state_dict()

    def load(net, opt):
        opt.load_state_dict(saved[id(opt)])
    step, modes = _run(_l2, {3: save, 8: load})
    assert modes == ["fused"] * 14


def _stepped_once(make):
    """A float64 ``make`` network and its compiled Adam step after one step on data()'s
    first 8 rows (returned as the batch x, y)."""
    X, Y = data()
    gradcore.manual_seed(0)
    net = make(np.float64)
    step = compile_step(net, "mse", optim.Adam(net.parameters(), lr=1e-2))
    step(X[:8], Y[:8])
    return net, step, X[:8], Y[:8]


@pytest.mark.parametrize("which", [0, -1])
def test_replaced_parameter_array_is_refused_first_or_last(which):
    net, step, x, y = _stepped_once(_l2)
    p = list(net.parameters())[which]
    before = [q.data.copy() for q in net.parameters()]
    p.data = p.data.copy()
    with pytest.raises(RuntimeError, match="no longer views"):
        step(x, y)
    for q, old in zip(net.parameters(), before):  # the refused step wrote nothing
        np.testing.assert_array_equal(q.data, old)


def test_frozen_last_parameter_is_refused():
    net, step, x, y = _stepped_once(_l2)
    list(net.parameters())[-1].requires_grad = False
    with pytest.raises(gradcore.compiled.UnsupportedError, match="frozen"):
        step(x, y)


def test_replaced_batchnorm_buffer_is_refused():
    net, step, x, y = _stepped_once(_batchnorm)
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm))
    bn._buffers["running_var"] = bn._buffers["running_var"].copy()
    with pytest.raises(RuntimeError, match="running_var was replaced"):
        step(x, y)
