"""The per-step work lists of the norm and optimizer passes (norm.h's SmallBuffer): tasks,
partial sums, chunks and views sit in the caller's frame up to a count and on the heap
above it. Both sides of every limit against NumPy (float64 sums, and the Adam formula in
float64): layouts with few tensors, and with more tensors / chunks / tasks than the frame
holds (64 views, 512 optimizer chunks, 256 norm tasks)."""
import math

import numpy as np
import pytest

from gradcore import _C


def segments(sizes, rng, dtype=np.float64, scale=1.0):
    return [(rng.standard_normal(n) * scale).astype(dtype) for n in sizes]


# counts on both sides of the frame's limits: 64 views, 256 tasks of 64K values, 512 chunks
# of 16K values (a tensor of 1..3 values is one chunk and one task)
MANY = {"few": [5, 70_000, 3], "65 views": [1 + i % 3 for i in range(65)],
        "300 tasks": [1 + i % 3 for i in range(300)], "600 chunks": [1 + i % 3 for i in range(600)],
        "600 chunks, some large": [1 + i % 3 for i in range(590)] + [40_000] * 10}


@pytest.mark.parametrize("case", MANY)
def test_sum_of_squares_and_global_norm(case):
    rng = np.random.default_rng(0)
    arrays = segments(MANY[case], rng)
    want = np.array([float(np.sum(a * a)) for a in arrays])
    np.testing.assert_allclose(_C.sum_of_squares(arrays), want, rtol=1e-12, atol=0)
    assert _C.global_norm(arrays) == pytest.approx(math.sqrt(want.sum()), rel=1e-12)


@pytest.mark.parametrize("case", MANY)
def test_grad_stats_flat(case):
    rng = np.random.default_rng(1)
    arrays = segments(MANY[case], rng)
    arrays[0] = arrays[0] + 100.0  # a cancelling variance: the second pass runs for it
    buf = np.concatenate(arrays)
    offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(np.int64)
    got = _C.grad_stats_flat(buf, offsets)
    for row, a in zip(got, arrays):
        np.testing.assert_allclose(row[:3], [np.sum(a * a), np.sqrt(np.sum(a * a)), np.max(np.abs(a))], rtol=1e-12)
        assert row[3] == 0
        np.testing.assert_allclose(row[4:], [a.mean(), a.std()], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", MANY)
@pytest.mark.parametrize("with_stats", [False, True])
def test_adam_step_on_many_tensors(case, with_stats):
    rng = np.random.default_rng(2)
    sizes = MANY[case]
    p, g, m = (np.concatenate(segments(sizes, rng)) for _ in range(3))
    v = np.abs(np.concatenate(segments(sizes, rng)))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    k = len(sizes)
    lr, b1, b2, eps, clip = 1e-2, 0.9, 0.999, 1e-8, 0.5
    bc1, bc2 = 1 - b1 ** 3, 1 - b2 ** 3
    # NumPy: global clip on the norm of all gradients, then the Adam formula
    norm = math.sqrt(float(np.sum(g * g)))
    coef = min(1.0, clip / (norm + 1e-6))
    gc = g * coef
    m_want = b1 * m + (1 - b1) * gc
    v_want = b2 * v + (1 - b2) * gc * gc
    p_want = p - (lr / bc1) * (m_want / (np.sqrt(v_want) / math.sqrt(bc2) + eps))
    p_old, g_old = p.copy(), g.copy()
    sumsq, scales = np.zeros(k), np.zeros(k)
    stats = np.zeros((k, 5)) if with_stats else None
    got_norm, bad = _C.adam_step(p, g, m, v, None, offsets, sumsq, scales, lr=lr, beta1=b1, beta2=b2, eps=eps,
                                 bias_correction1=bc1, bias_correction2=bc2, global_clip_norm=clip, stats=stats)
    assert bad == -1 and got_norm == pytest.approx(norm, rel=1e-12)
    np.testing.assert_allclose(p, p_want, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(m, m_want, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(v, v_want, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(sumsq, [np.sum(g_old[a:b] ** 2) for a, b in zip(offsets[:-1], offsets[1:])],
                               rtol=1e-12)
    if with_stats:
        for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
            d = p[a:b] - p_old[a:b]
            np.testing.assert_allclose(stats[i], [np.sum(g_old[a:b] ** 2), np.max(np.abs(g_old[a:b])), 0,
                                                  np.sum(p[a:b] ** 2), np.sum(d * d)], rtol=1e-10)


def test_skipped_step_on_many_tensors_writes_nothing():
    rng = np.random.default_rng(3)
    sizes = MANY["600 chunks"]
    p, g, m = (np.concatenate(segments(sizes, rng)) for _ in range(3))
    v = np.abs(np.concatenate(segments(sizes, rng)))
    g[-1] = np.nan
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    k = len(sizes)
    before = [a.copy() for a in (p, m, v)]
    stats = np.zeros((k, 5))
    _, bad = _C.adam_step(p, g, m, v, None, offsets, np.zeros(k), np.zeros(k), lr=1e-2, beta1=0.9, beta2=0.999,
                          eps=1e-8, bias_correction1=0.1, bias_correction2=0.001, stats=stats)
    assert bad == k - 1
    for a, b in zip((p, m, v), before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(stats[:, 3], [np.sum(p[a:b] ** 2) for a, b in zip(offsets[:-1], offsets[1:])],
                               rtol=1e-12)
    np.testing.assert_array_equal(stats[:, 4], 0)


# ---------------------------------------------------------------------- statistics one block behind
STEPS = {
    "sgd": lambda p, g, s, off, ss, sc, st: _C.sgd_step(p, g, s[0], off, ss, sc, lr=0.05, momentum=0.9,
                                                        weight_decay=0.01, stats=st),
    "sgd_plain": lambda p, g, s, off, ss, sc, st: _C.sgd_step(p, g, None, off, ss, sc, lr=0.05, stats=st),
    "adam": lambda p, g, s, off, ss, sc, st: _C.adam_step(p, g, s[0], s[1], None, off, ss, sc, lr=1e-2, beta1=0.9,
                                                          beta2=0.999, eps=1e-8, bias_correction1=0.19,
                                                          bias_correction2=0.002997, clip_value=0.5, stats=st),
    "amsgrad": lambda p, g, s, off, ss, sc, st: _C.adam_step(p, g, s[0], s[1], s[2], off, ss, sc, lr=1e-2,
                                                             beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                                                             decoupled=True, bias_correction1=0.19,
                                                             bias_correction2=0.002997, stats=st),
    "rmsprop": lambda p, g, s, off, ss, sc, st: _C.rmsprop_step(p, g, s[1], s[0], s[3], off, ss, sc, lr=1e-2,
                                                                alpha=0.99, eps=1e-8, momentum=0.5, stats=st),
    "adagrad": lambda p, g, s, off, ss, sc, st: _C.adagrad_step(p, g, s[1], off, ss, sc, lr=0.1, eps=1e-10,
                                                                stats=st),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", STEPS)
def test_update_statistics_of_every_optimizer_on_multi_block_tensors(name, dtype):
    """Tensors of several 256-value blocks, with and without a short last block, and chunks
    (16K values) of both kinds: sum p_new^2 and sum (p_new - p_old)^2 (the difference in the
    dtype) per tensor against NumPy, and the parameters and state equal to a step without
    statistics, bit for bit."""
    rng = np.random.default_rng(4)
    sizes = [7, 256, 1000, 512, 16_384 + 300, 70_000]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n, k = offsets[-1], len(sizes)
    p0 = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    states0 = [(0.1 * rng.standard_normal(n)).astype(dtype)] + [np.abs(rng.standard_normal(n)).astype(dtype)
                                                                 for _ in range(2)]
    states0.append((0.1 * rng.standard_normal(n)).astype(dtype))
    runs = []
    for with_stats in (False, True):
        p, states = p0.copy(), [s.copy() for s in states0]
        stats = np.zeros((k, 5)) if with_stats else None
        STEPS[name](p, g, states, offsets, np.zeros(k), np.zeros(k), stats)
        runs.append((p, states, stats))
    (p_off, s_off, _), (p_on, s_on, stats) = runs
    np.testing.assert_array_equal(p_on, p_off)
    for a, b in zip(s_on, s_off):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(p_on, p0)
    for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        d = (p_on[a:b] - p0[a:b]).astype(np.float64)  # the difference rounded to the dtype
        np.testing.assert_allclose(stats[i, 3], np.sum(p_on[a:b].astype(np.float64) ** 2), rtol=1e-10)
        np.testing.assert_allclose(stats[i, 4], np.sum(d * d), rtol=1e-10)
        assert stats[i, 4] > 0
