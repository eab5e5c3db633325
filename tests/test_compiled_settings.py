"""Layer settings changed after compile_step (CompiledStep._relower): the next compiled
step uses them, as the eager forward does, instead of the values lowered at compile time.

Oracle: an eager twin stepped alongside (test_compiled_rebind._run, float64 to 1e-12):
a setting the compiled step kept would leave its parameters, optimizer state or
BatchNorm statistics apart from the eager twin's after the change.
"""
import numpy as np
import pytest

import gradcore
from gradcore import losses, nn, optim
from gradcore.compiled import UnsupportedError, compile_step

from test_compiled import assert_same_state, data, eager_step, state_of, twin
from test_compiled_rebind import _run


def _net(dtype):
    return nn.Sequential(nn.Dense(6, 12, "relu"), nn.LeakyReLU(0.01), nn.BatchNorm(12), nn.Dropout(0.0),
                         nn.Dense(12, 12, "elu"), nn.Dropout(0.3), nn.Dense(12, 1), dtype=dtype)


def _setattr(path, name, value):
    def change(net, opt):
        setattr(net[int(path)] if path else net, name, value)
    return change


@pytest.mark.parametrize("path, name, value", [
    ("1", "negative_slope", 0.4),          # an activation layer's setting
    ("2", "momentum", 0.6),                # BatchNorm
    ("2", "eps", 0.5),
    ("2", "momentum", None),               # cumulative average from here on
    ("3", "p", 0.5),                       # p = 0 drew nothing and made no op; now it drops
    ("5", "p", 0.0),                       # and the reverse
    ("5", "p", 0.7),
    ("0", "l2", 0.05),                     # Dense's penalty
    ("4", "activation", "tanh"),           # Dense's fused activation
    ("4", "alpha", 2.0),                   # ... and its parameter
])
def test_a_setting_changed_between_steps_is_used_by_the_next_step(path, name, value):
    step, _ = _run(_net, {5: _setattr(path, name, value)}, steps=10)
    assert step.relowered == 1


def test_a_replaced_layer_without_parameters_is_lowered_again():
    step, _ = _run(_net, {3: _setattr("", "1", nn.Tanh()), 6: _setattr("", "3", nn.Dropout(0.25))}, steps=10)
    assert step.relowered == 2


def _stepped(opt_cls=optim.Adam):
    """A float64 _net, its optimizer and compiled step after one step on data()'s first
    16 rows (returned as the batch x, y)."""
    gradcore.manual_seed(0)
    net = _net(np.float64)
    opt = opt_cls(net.parameters(), lr=1e-2)
    step = compile_step(net, losses.get("mse"), opt)
    X, Y = data()
    step(X[:16], Y[:16])
    return net, opt, step, X[:16], Y[:16]


def test_an_equal_value_set_again_keeps_the_plans():
    # the clock moves, the lowering is the same: no new plans, no allocation
    net, _, step, x, y = _stepped()
    gradcore.reset_memory_stats()
    for i in range(5):
        net[1].negative_slope = 0.01
        net[5].p = 0.3
        step(x, y)
    assert step.relowered == 0
    assert gradcore.memory_stats()["plan_allocations"] == 0


def test_changes_the_plan_cannot_follow_are_refused_before_anything_runs():
    net, opt, step, x, y = _stepped()
    before = state_of(net, opt)
    setattr(net, "6", nn.Dense(12, 1))  # a new parameter outside the compiled flat buffer
    with pytest.raises(UnsupportedError, match=r"changed after compiling.*layer '6'"):
        step(x, y)
    with pytest.raises(UnsupportedError, match="changed after compiling"):  # and again: nothing stale runs
        step(x, y)
    after = state_of(net, opt)
    kept = [k for k in before if not k.startswith("param 6.")]
    assert_same_state({k: before[k] for k in kept}, {k: after[k] for k in kept}, 0.0, "after the refused steps")


def test_a_hook_added_after_compiling_is_refused():
    net, _, step, x, y = _stepped(optim.SGD)
    seen = []
    handle = net[4].register_forward_hook(lambda m, i, o: seen.append(o))
    with pytest.raises(UnsupportedError, match=r"layer '4'.*module hooks"):
        step(x, y)
    handle.remove()
    step(x, y)  # the hook gone, the plan runs again
    assert not seen


def test_a_setting_changed_between_forward_backward_and_apply_update():
    # the update applies the gradients of the forward that ran (the old setting); the next
    # forward uses the new one: exactly the eager order of events
    X, Y = data()
    a, b = twin(_net, np.float64)
    oa, ob = optim.Adam(a.parameters(), lr=1e-2), optim.Adam(b.parameters(), lr=1e-2)
    loss_fn = losses.get("mse")
    step = compile_step(b, loss_fn, ob)
    for i in range(6):
        x, y = X[8 * i:8 * i + 16], Y[8 * i:8 * i + 16]
        gradcore.manual_seed(i)
        la = eager_step(a, oa, loss_fn, x, y)
        gradcore.manual_seed(i)
        lb = step.forward_backward(x, y)
        if i == 2:
            a[1].negative_slope = b[1].negative_slope = 0.3
        step.apply_update()
        np.testing.assert_allclose(lb, la, rtol=1e-12, atol=1e-12, err_msg=f"loss, step {i}")
        assert_same_state(state_of(a, oa), state_of(b, ob), 1e-12, f"step {i}")
    assert step.relowered == 1


class _SlopeSchedule(gradcore.callbacks.Callback):
    """Changes a layer setting at the start of epoch 2 (what a user's schedule might do)."""

    def on_epoch_begin(self, epoch, logs):
        if epoch == 2:
            self.model[1].negative_slope = 0.5
            self.model[5].p = 0.1


def test_fit_compiled_follows_a_callback_that_changes_a_setting():
    X, Y = data(n=96)
    runs = []
    for compiled in (False, True):
        gradcore.manual_seed(0)
        net = _net(np.float64)
        net.compile(optim.Adam(net.parameters(), lr=1e-2), "mse")
        gradcore.manual_seed(1)
        hist = net.fit(X, Y, epochs=4, batch_size=32, verbose=0, callbacks=[_SlopeSchedule()], compiled=compiled)
        runs.append((np.array(hist.history["loss"]), state_of(net, net.optimizer)))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-12, atol=1e-12)
    assert_same_state(runs[0][1], runs[1][1], 1e-12, "after fit")
