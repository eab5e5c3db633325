"""Optimizer.current_lr (read every step by fit and train_step) is lr_at(iterations) for
every kind of rate: the constant-rate shortcut must not change an answer or an error."""
import math

import numpy as np
import pytest

from gradcore import Tensor, optim
from gradcore.optim import schedules
from gradcore.training import _current_lr


def _opt(lr, n=2):
    w = Tensor(np.ones(3), requires_grad=True)
    opt = optim.SGD([w], lr=lr)
    for _ in range(n):
        w.grad = np.full(3, 0.5)
        opt.step()
    return opt


@pytest.mark.parametrize("lr", [0.1, 0.0, 3, np.float64(0.25), np.float32(0.5),
                                schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)])
def test_current_lr_is_lr_at_iterations(lr):
    opt = _opt(lr)
    assert opt.current_lr == opt.lr_at(opt.iterations)
    assert type(opt.current_lr) is float
    assert _current_lr(opt) == opt.lr_at(opt.iterations)


def test_current_lr_follows_param_group_changes_and_refuses_bad_rates():
    opt = _opt(0.1)
    opt.param_groups[0]["lr"] = 0.02
    assert opt.current_lr == 0.02 == _current_lr(opt)
    opt.param_groups[0]["lr"] = schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)
    assert opt.current_lr == pytest.approx(0.25)  # two updates so far
    for bad in (float("nan"), -1.0, math.inf):
        opt.param_groups[0]["lr"] = bad
        with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
            opt.current_lr
        assert math.isnan(_current_lr(opt)) or _current_lr(opt) == opt.param_groups[0]["lr"]


def test_current_lr_fallbacks():
    class Plain:
        lr = 0.3

    class Groups:
        param_groups = [{"lr": np.float64(0.4)}]

    class Nothing:
        pass

    assert _current_lr(Plain()) == 0.3
    assert _current_lr(Groups()) == 0.4
    assert math.isnan(_current_lr(Nothing()))


@pytest.mark.parametrize("lr,want", [(0.1, 0.1), (-0.0, 0.0), (3, 3.0), (np.float32(0.5), 0.5), (True, None),
                                     (float("nan"), None), (-0.5, None), (math.inf, None)])
def test_lr_at_constant_rates(lr, want):
    opt = _opt(0.1, n=0)
    opt.param_groups[0]["lr"] = lr
    if want is None:
        with pytest.raises((ValueError, TypeError)):
            opt.lr_at(4)
        return
    got = opt.lr_at(4)
    assert type(got) is float and got == want
