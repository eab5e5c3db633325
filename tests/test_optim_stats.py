"""Optimizer.record_stats: the fused step's per-tensor statistics (last_stats) against a NumPy
recomputation from snapshots taken around the step, for every optimizer, dtype, clipping
mode, weight decay and gradient noise; skipped steps, parameter groups, frozen parameters,
thread counts, and a step with the statistics off."""
import itertools

import numpy as np
import pytest

import gradcore
from gradcore import nn
from gradcore.optim import SGD, Adagrad, Adam, AdamW, RMSprop
from gradcore.optim.optimizer import STATS_COLUMNS

OPTIMIZERS = {
    "sgd": lambda p, **kw: SGD(p, lr=0.1, **kw),
    "sgd_momentum": lambda p, **kw: SGD(p, lr=0.1, momentum=0.9, dampening=0.1, **kw),
    "sgd_nesterov": lambda p, **kw: SGD(p, lr=0.1, momentum=0.9, nesterov=True, **kw),
    "adam": lambda p, **kw: Adam(p, lr=0.01, **kw),
    "adamw": lambda p, **kw: AdamW(p, lr=0.01, **kw),
    "amsgrad": lambda p, **kw: Adam(p, lr=0.01, amsgrad=True, **kw),
    "rmsprop": lambda p, **kw: RMSprop(p, lr=0.01, momentum=0.5, centered=True, **kw),
    "adagrad": lambda p, **kw: Adagrad(p, lr=0.1, **kw),
}
CLIPS = {"none": {}, "value": {"clip_value": 0.05}, "norm": {"clip_norm": 0.5}, "global": {"global_clip_norm": 0.3}}


def make_net(dtype, seed=0):
    gradcore.manual_seed(seed)
    return nn.Sequential(nn.Dense(7, 9, activation="relu", dtype=dtype), nn.Dense(9, 3, dtype=dtype), dtype=dtype)


def give_grads(params, rng, scale=1.0):
    for p in params:
        p.grad = (rng.standard_normal(p.shape) * scale).astype(p.dtype)


def reference(grads, before, after):
    """Rows of last_stats recomputed in NumPy: float64 sums of the raw gradients, max |g| over
    the finite values, non-finite counts, p_after^2 and (p_after - p_before)^2 (the difference
    in the parameter's dtype)."""
    rows = []
    for g, b, a in zip(grads, before, after):
        g64 = g.astype(np.float64).ravel()
        finite = np.isfinite(g64)
        diff = (a - b).astype(np.float64).ravel()
        rows.append([np.sum(g64 * g64), np.max(np.abs(g64[finite]), initial=0.0), np.sum(~finite),
                     np.sum(a.astype(np.float64) ** 2), np.sum(diff * diff)])
    return np.array(rows)


def step_with_snapshots(opt, params):
    grads = [p.grad.copy() for p in params]
    before = [p.data.copy() for p in params]
    opt.step()
    return reference(grads, before, [p.data.copy() for p in params])


@pytest.mark.parametrize("name,dtype,clip,wd,noise", list(itertools.product(
    OPTIMIZERS, (np.float32, np.float64), CLIPS, (0.0, 0.01), (False, True))))
def test_stats_match_numpy(name, dtype, clip, wd, noise):
    rng = np.random.default_rng(1)
    nets = [make_net(dtype), make_net(dtype)]
    kw = dict(CLIPS[clip], weight_decay=wd, grad_noise=(0.1, 0.55, 7) if noise else None)
    on, off = (OPTIMIZERS[name](n.parameters(), **kw) for n in nets)
    on.record_stats = True
    for step in range(2):  # the second step runs the optimizers' steady-state formulas
        grads = [(rng.standard_normal(p.shape) * 2).astype(dtype) for p in nets[0].parameters()]
        for net in nets:
            for p, g in zip(net.parameters(), grads):
                p.grad = g.copy()
        expected = step_with_snapshots(on, nets[0].parameters())
        off.step()
        assert on.last_stats_step == step + 1
        assert on.last_stats.shape == (len(on.stats_params), len(STATS_COLUMNS))
        np.testing.assert_allclose(on.last_stats, expected, rtol=1e-10, atol=0)
        assert np.all(on.last_stats[:, 4] > 0)
    # statistics change nothing: the twin without them holds the same parameters, bit for bit
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    assert off.last_stats is None


@pytest.mark.parametrize("groups", [False, True], ids=["one_call", "param_groups"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_skipped_step_rows(groups, dtype):
    net = make_net(dtype)
    params = net.parameters()
    spec = [{"params": params[:2]}, {"params": params[2:], "lr": 0.5}] if groups else params
    opt = Adam(spec, lr=0.01, grad_noise=(0.1,), nonfinite="skip")
    opt.record_stats = True
    give_grads(params, np.random.default_rng(2))
    params[1].grad[2] = np.inf
    params[2].grad[0, 1] = np.nan
    params[2].grad[2, 5] = -np.inf
    grads = [p.grad.copy() for p in params]
    before = [p.data.copy() for p in params]
    opt.step()
    assert opt.last_skipped
    expected = reference(grads, before, before)
    np.testing.assert_array_equal(np.isnan(opt.last_stats), np.isnan(expected))
    np.testing.assert_allclose(opt.last_stats, expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(opt.last_stats[:, 2], [0, 1, 2, 0])
    np.testing.assert_array_equal(opt.last_stats[:, 4], 0.0)


def test_param_groups_rows_follow_the_buffer():
    net = nn.Sequential(nn.Dense(5, 6, dtype=np.float64), nn.Dense(6, 4, dtype=np.float64),
                        nn.Dense(4, 2, dtype=np.float64), dtype=np.float64)
    params = net.parameters()
    # groups given out of buffer order and with different rates: several kernel calls
    opt = SGD([{"params": params[4:], "lr": 0.3}, {"params": params[:4], "lr": 0.01}], lr=0.1, momentum=0.5)
    opt.record_stats = True
    assert [id(p) for p in opt.stats_params] == [id(p) for p in params]
    rng = np.random.default_rng(3)
    for _ in range(2):
        give_grads(params, rng)
        expected = step_with_snapshots(opt, params)
        np.testing.assert_allclose(opt.last_stats, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("how", ["requires_grad", "grad_none", "update_params"])
def test_rows_of_tensors_not_stepped_are_nan(how):
    net = make_net(np.float64)
    params = net.parameters()
    opt = Adam(params, lr=0.01)
    opt.record_stats = True
    give_grads(params, np.random.default_rng(4))
    skipped = {1}
    if how == "requires_grad":
        params[1].requires_grad = False
    elif how == "grad_none":
        params[1].grad = None
    grads = [None if p.grad is None else p.grad.copy() for p in params]
    before = [p.data.copy() for p in params]
    if how == "update_params":
        opt.update_params(net[1])  # the second layer only: the first layer's rows are NaN
        skipped = {0, 1}
    else:
        opt.step()
    after = [p.data.copy() for p in params]
    for i in range(len(params)):
        if i in skipped:
            assert np.all(np.isnan(opt.last_stats[i]))
            np.testing.assert_array_equal(after[i], before[i])
        else:
            np.testing.assert_allclose(opt.last_stats[i], reference([grads[i]], [before[i]], [after[i]])[0],
                                       rtol=1e-12, atol=0)


def test_one_and_two_threads_agree_bit_for_bit():
    """A buffer above the update's and the norm pass's thread grains: both passes fork."""
    n = 1_100_000
    results = []
    old = gradcore.get_num_threads()
    try:
        for threads in (1, 2):
            gradcore.set_num_threads(threads)
            rng = np.random.default_rng(5)
            ps = [gradcore.Tensor(rng.standard_normal(m).astype(np.float32), requires_grad=True)
                  for m in (n, n + 7, 1001)]
            gradcore.flat.own_parameters(ps)
            opt = Adam(ps, lr=0.01, global_clip_norm=1.0)
            opt.record_stats = True
            for p in ps:
                p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt.step()
            results.append(opt.last_stats.copy())
    finally:
        gradcore.set_num_threads(old)
    np.testing.assert_array_equal(results[0], results[1])


def test_record_stats_off_by_default_and_last_stats_is_a_copy():
    net = make_net(np.float32)
    opt = SGD(net.parameters(), lr=0.1)
    assert opt.record_stats is False
    give_grads(net.parameters(), np.random.default_rng(6))
    opt.step()
    assert opt.last_stats is None and opt.last_stats_step == 0
    opt.record_stats = True
    opt.step()
    first = opt.last_stats
    kept = first.copy()
    opt.step()
    assert opt.last_stats_step == 3
    np.testing.assert_array_equal(first, kept)  # the next step did not write into the array we hold
    opt.record_stats = False
    opt.step()
    assert opt.last_stats_step == 3  # not written while off: a reader can tell it is stale


def test_kernel_refuses_a_stats_array_of_the_wrong_shape():
    p = np.zeros(6, np.float32)
    g = np.ones(6, np.float32)
    off = np.array([0, 2, 6], np.int64)
    with pytest.raises(ValueError, match=r"stats must be a float64 array of shape \(2, 5\)"):
        gradcore._C.sgd_step(p, g, None, off, np.zeros(2), np.zeros(2), lr=0.1, stats=np.zeros((3, 5)))
    np.testing.assert_array_equal(p, 0.0)


@pytest.mark.parametrize("groups", [False, True], ids=["one_call", "param_groups"])
def test_grad_only_statistics(groups):
    """record_stats = "grad": the gradient columns as with True, NaN parameter columns, the
    same update."""
    rng = np.random.default_rng(7)
    nets = [make_net(np.float32), make_net(np.float32)]
    opts = []
    for net, mode in zip(nets, (True, "grad")):
        params = net.parameters()
        spec = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}] if groups else params
        opt = RMSprop(spec, lr=0.01, momentum=0.5, grad_noise=(0.1, 0.55, 3))
        opt.record_stats = mode
        opts.append(opt)
    for step in range(2):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in nets[0].parameters()]
        if step == 1:
            grads[3][0] = np.nan  # a skipped step
        for net, opt in zip(nets, opts):
            for p, g in zip(net.parameters(), grads):
                p.grad = g.copy()
            opt.step()
        full, grad_only = opts[0].last_stats, opts[1].last_stats
        np.testing.assert_array_equal(grad_only[:, :3], full[:, :3])
        assert np.all(np.isnan(grad_only[:, 3:]))
        assert not np.isnan(full[:, 3:]).any()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_record_stats_refuses_other_values():
    opt = SGD(make_net(np.float32).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="record_stats must be False, True or 'grad', got 'all'"):
        opt.record_stats = "all"
    assert opt.record_stats is False
