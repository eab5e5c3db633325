"""gradcore.optim.schedules: each schedule against its formula, warmup composition,
ReduceLROnPlateau against PyTorch's rules (and torch itself when installed), and the
optimizer driving a schedule with its own step count."""
import math

import numpy as np
import pytest

from gradcore import Tensor
from gradcore.optim import SGD, Adam
from gradcore.optim.schedules import (
    Constant, CosineDecay, ExponentialDecay, InverseTimeDecay, LinearWarmup, ReduceLROnPlateau, StepDecay,
    as_schedule, from_config, to_config,
)

TS = [0, 1, 2, 3, 7, 10, 99, 1000]


@pytest.mark.parametrize("sched,formula", [
    (Constant(0.3), lambda t: 0.3),
    (ExponentialDecay(0.1, 1, 0.9), lambda t: 0.1 * 0.9 ** t),
    (ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5), lambda t: 0.1 * 0.5 ** (t / 4)),
    (ExponentialDecay(0.1, 4, 0.5, staircase=True), lambda t: 0.1 * 0.5 ** (t // 4)),
    (InverseTimeDecay(0.2, 1, 0.01), lambda t: 0.2 / (1 + 0.01 * t)),
    (InverseTimeDecay(0.2, decay_steps=3, decay_rate=0.5, staircase=True), lambda t: 0.2 / (1 + 0.5 * (t // 3))),
    (StepDecay(1.0, 3, gamma=0.5), lambda t: 0.5 ** (t // 3)),
    (CosineDecay(0.1, 100), lambda t: 0.05 * (1 + math.cos(math.pi * min(t, 100) / 100))),
    (CosineDecay(0.1, 10, alpha=0.1), lambda t: 0.01 + 0.045 * (1 + math.cos(math.pi * min(t, 10) / 10))),
], ids=["constant", "exp", "exp-steps", "exp-stair", "invtime", "invtime-stair", "step", "cosine", "cosine-min"])
def test_schedule_formulas(sched, formula):
    for t in TS:
        assert sched(t) == pytest.approx(formula(t), rel=1e-14, abs=1e-300)


def test_cosine_endpoints():
    s = CosineDecay(0.1, 20, alpha=0.01)
    assert s(0) == pytest.approx(0.1) and s(20) == pytest.approx(0.001) and s(10) == pytest.approx(0.0505)


@pytest.mark.parametrize("base", [0.2, ExponentialDecay(0.2, 1, 0.9), CosineDecay(0.2, 50)])
def test_linear_warmup_composes(base):
    warm = LinearWarmup(base, 10, start_lr=0.02)
    b = as_schedule(base)
    for t in range(10):
        assert warm(t) == pytest.approx(0.02 + (b(0) - 0.02) * t / 10, rel=1e-14)
    for t in (10, 11, 30, 60):
        assert warm(t) == pytest.approx(b(t - 10), rel=1e-14)
    assert ExponentialDecay(0.2, 1, 0.9).with_warmup(5)(2) == pytest.approx(0.2 * 2 / 5)


def plateau_reference(metrics, lr, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps):
    """PyTorch's documented ReduceLROnPlateau rules, tracking the rate itself."""
    best = math.inf if mode == "min" else -math.inf
    bad = cool = 0
    out = []
    for a in metrics:
        if mode == "min":
            better = a < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)
        else:
            better = a > (best * (1 + threshold) if threshold_mode == "rel" else best + threshold)
        if better:
            best, bad = a, 0
        else:
            bad += 1
        if cool > 0:
            cool -= 1
            bad = 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cool, bad = cooldown, 0
        out.append(lr)
    return out


PLATEAU_CASES = [
    dict(mode="min", factor=0.5, patience=2, threshold=1e-4, threshold_mode="rel", cooldown=0, min_lr=0.0),
    dict(mode="min", factor=0.1, patience=0, threshold=0.05, threshold_mode="abs", cooldown=2, min_lr=1e-4),
    dict(mode="max", factor=0.3, patience=1, threshold=0.01, threshold_mode="rel", cooldown=1, min_lr=0.0),
]


def metric_sequence(seed, n=60):
    rng = np.random.default_rng(seed)
    # improving, then noisy plateaus
    return list(np.concatenate([np.linspace(1, 0.5, 10), 0.5 + 0.05 * rng.standard_normal(n - 10)]))


@pytest.mark.parametrize("case", PLATEAU_CASES, ids=["min-rel", "min-abs-cooldown", "max-rel"])
def test_reduce_on_plateau_matches_rules(case):
    metrics = metric_sequence(1)
    if case["mode"] == "max":
        metrics = [-m for m in metrics]
    sched = ReduceLROnPlateau(0.1, **case)
    got = []
    for m in metrics:
        sched.step(m)
        got.append(sched(0))
    want = plateau_reference(metrics, 0.1, eps=1e-8, **case)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert min(got) < 0.1  # the sequence does trigger reductions


@pytest.mark.parametrize("case", PLATEAU_CASES, ids=["min-rel", "min-abs-cooldown", "max-rel"])
def test_reduce_on_plateau_matches_torch(case):
    torch = pytest.importorskip("torch")
    metrics = metric_sequence(2)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **case)
    sched = ReduceLROnPlateau(0.1, **case)
    for m in metrics:
        tsched.step(m)
        sched.step(m)
        assert sched(0) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


def test_reduce_on_plateau_scales_a_schedule_and_round_trips():
    sched = ReduceLROnPlateau(ExponentialDecay(0.1, 1, 0.99), factor=0.5, patience=0)
    sched(5)
    sched.step(1.0)
    sched.step(2.0)  # worse: reduce
    assert sched(7) == pytest.approx(0.5 * 0.1 * 0.99 ** 7)
    copy = ReduceLROnPlateau(ExponentialDecay(0.1, 1, 0.99), factor=0.5, patience=0)
    copy.load_state_dict(sched.state_dict())
    for m in (3.0, 0.1, 0.2):
        assert copy.step(m) == sched.step(m)
        assert copy(9) == sched(9)


def test_optimizer_follows_schedule_by_its_step_count():
    # SGD without momentum: p_{t+1} = p_t - lr_t * g, so lr_t can be read back exactly
    sched = LinearWarmup(CosineDecay(0.5, 20), 5, start_lr=0.05)
    p = Tensor(np.zeros(3), requires_grad=True)
    opt = SGD([p], lr=sched)
    used = []
    for step in range(12):
        prev = p.data.copy()
        p.grad = np.ones(3)  # a fresh tensor has no gradient until one is given (torch)
        if step == 4:
            p.grad[0] = np.nan  # a skipped step does not advance the schedule
            assert opt.current_lr == pytest.approx(sched(len(used)))
            opt.step()
            assert np.array_equal(p.data, prev)
            continue
        opt.step()
        used.append(float(prev[1] - p.data[1]))
    np.testing.assert_allclose(used, [sched(t) for t in range(11)], rtol=1e-12)
    assert opt.skipped_steps == 1 and opt.iterations == 11


def test_callable_and_state_dict_with_schedule():
    p = Tensor(np.ones(2), requires_grad=True)
    opt = Adam([p], lr=lambda t: 0.1 / (t + 1))
    assert opt.lr_at(3) == pytest.approx(0.025)
    plateau = ReduceLROnPlateau(0.1, patience=0)
    opt2 = Adam([p], lr=plateau)
    plateau.step(1.0)
    plateau.step(2.0)
    saved = opt2.state_dict()
    fresh = ReduceLROnPlateau(0.1, patience=0)
    opt3 = Adam([Tensor(np.ones(2), requires_grad=True)], lr=fresh)
    opt3.load_state_dict(saved)
    assert fresh(0) == pytest.approx(0.01)


@pytest.mark.parametrize("make,match", [
    (lambda: ExponentialDecay(0.1, 1, 0.0), "decay_rate must be > 0"),
    (lambda: ExponentialDecay(0.1, 0, 0.9), "decay_steps must be >= 1"),
    (lambda: InverseTimeDecay(-0.1, 1, 0.5), "initial_learning_rate must be >= 0"),
    (lambda: StepDecay(0.1, 2.5), "step_size must be an integer"),
    (lambda: CosineDecay(0.1, 10, alpha=-1), "alpha must be >= 0"),
    (lambda: LinearWarmup(0.1, -1), "warmup_steps must be >= 0"),
    (lambda: ReduceLROnPlateau(0.1, factor=1.0), "factor must be < 1"),
    (lambda: ReduceLROnPlateau(0.1, mode="up"), "mode must be one of"),
    (lambda: ReduceLROnPlateau(0.1, threshold_mode="pct"), "threshold_mode must be one of"),
    (lambda: Constant(0.1)(-1), "t must be >= 0"),
])
def test_bad_schedule_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_schedule_giving_a_bad_rate_is_caught():
    p = Tensor(np.ones(2), requires_grad=True)
    opt = SGD([p], lr=lambda t: -1.0)
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match="schedule gave -1.0"):
        opt.step()


# ---------------------------------------------------------------------- Keras' signatures (review session 15)
def test_keras_schedules_by_keyword_and_staircase():
    """Keras' keywords and formulas (keras.optimizers.schedules): the rate at step t."""
    e = ExponentialDecay(initial_learning_rate=0.3, decay_steps=7, decay_rate=0.8, staircase=True)
    i = InverseTimeDecay(initial_learning_rate=0.3, decay_steps=7, decay_rate=0.8, staircase=True)
    for t in TS:
        assert e(t) == pytest.approx(0.3 * 0.8 ** (t // 7), rel=1e-14)
        assert i(t) == pytest.approx(0.3 / (1 + 0.8 * (t // 7)), rel=1e-14)


def test_cosine_decay_warmup_is_keras():
    """warmup_target / warmup_steps: a linear ramp from initial_learning_rate, then the
    cosine from warmup_target to alpha * warmup_target over decay_steps (then flat)."""
    s = CosineDecay(0.01, 20, alpha=0.1, warmup_target=0.5, warmup_steps=5)

    def keras(t):
        t = min(t, 25)
        if t < 5:
            return 0.01 + (0.5 - 0.01) * t / 5
        c = 0.5 * (1 + math.cos(math.pi * (t - 5) / 20))
        return 0.5 * (0.9 * c + 0.1)

    for t in range(0, 40):
        assert s(t) == pytest.approx(keras(t), rel=1e-14), t
    assert s(25) == pytest.approx(0.05) and s(5) == pytest.approx(0.5)


@pytest.mark.parametrize("sched", [ExponentialDecay(0.1, 3, 0.5, staircase=True), InverseTimeDecay(0.2, 4, 0.3),
                                   CosineDecay(0.1, 10, 0.2, warmup_target=0.3, warmup_steps=4)])
def test_keras_schedules_round_trip_their_config(sched):
    twin = from_config(to_config(sched))
    assert type(twin) is type(sched) and twin.get_config() == sched.get_config()
    for t in TS:
        assert twin(t) == sched(t)


@pytest.mark.parametrize("old, formula", [
    ({"schedule": "ExponentialDecay", "config": {"lr": 0.1, "rate": 0.5, "decay_steps": 4, "staircase": False}},
     lambda t: 0.1 * 0.5 ** (t / 4)),
    ({"schedule": "InverseTimeDecay", "config": {"lr": 0.2, "decay": 0.5, "decay_steps": 3, "staircase": True}},
     lambda t: 0.2 / (1 + 0.5 * (t // 3))),
    ({"schedule": "CosineDecay", "config": {"lr": 0.1, "decay_steps": 10, "min_lr": 0.01}},
     lambda t: 0.01 + 0.045 * (1 + math.cos(math.pi * min(t, 10) / 10))),
])
def test_configs_saved_before_the_keras_signatures_load_with_their_rates(old, formula):
    sched = from_config(old)
    for t in TS:
        assert sched(t) == pytest.approx(formula(t), rel=1e-13)


@pytest.mark.parametrize("bad", [0.0, -1.5, float("nan"), float("inf"), 0, True])
def test_keras_decay_steps_refuses_what_keras_cannot_divide_by(bad):
    """decay_steps: a positive integer or a positive finite float (Keras); zero, negative,
    NaN, infinite and booleans are refused by name."""
    from gradcore.optim import schedules as S
    for make in (lambda d: S.ExponentialDecay(0.1, d, 0.5), lambda d: S.InverseTimeDecay(0.1, d, 0.5),
                 lambda d: S.CosineDecay(0.1, d)):
        with pytest.raises((ValueError, TypeError), match="decay_steps"):
            make(bad)


def test_keras_float_decay_steps_staircase_floors_the_ratio():
    """ExponentialDecay(0.1, 2.5, 0.5, staircase=True) at step t: 0.1 * 0.5 ** floor(t / 2.5)."""
    from gradcore.optim import schedules as S
    sched = S.ExponentialDecay(0.1, 2.5, 0.5, staircase=True)
    for t in range(12):
        assert sched(t) == pytest.approx(0.1 * 0.5 ** math.floor(t / 2.5), rel=1e-15)
