"""The plan's fused backward of a Dense with an activation (csrc/dense.cpp
dense_act_backward_bias): the activation's gradient and the bias gradient are taken piece
by piece (4096 values, rows a multiple of 8) instead of as two passes. The pieces must not
change a bit: batches much larger than one piece, row counts that are not multiples of 8
or of the piece, and widths from 1 to past the 256-column block (the two-pass fallback)
train bit for bit like the eager tape (Pair from test_plan_kernel). On more than one
thread, large layers take the two passes (each threaded), so the pieces are tested on one
thread and both thread counts must agree."""
import numpy as np
import pytest

import gradcore as gc
import gradcore.functional as F
from gradcore import nn

from test_plan_kernel import Pair, data


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = gc.get_num_threads()
    gc.set_num_threads(request.param)
    yield request.param
    gc.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 9, 83, 800, 1001])
def test_fused_bias_gradient_matches_eager_bit_for_bit(dtype, batch, threads):
    rng = np.random.default_rng(batch)
    gc.manual_seed(4)
    net = nn.Sequential(nn.Dense(5, 50, activation="relu", dtype=dtype),
                        nn.Dense(50, 300, activation="tanh", dtype=dtype),   # > 256 columns: two passes
                        nn.Dense(300, 3, activation="sigmoid", dtype=dtype),
                        nn.Dense(3, 1, activation="leaky_relu", alpha=0.2, dtype=dtype))
    pair = Pair(net, F.mse_loss, "mse", opt="adam", clip={"global_clip_norm": 5.0}, dtype=dtype)
    for t in range(4):
        (loss, norm, bad, coef), value = pair.step(data(rng, batch, 5, dtype), data(rng, batch, 1, dtype))
        assert bad == -1
        assert loss == value and norm == pair.opt.last_grad_norm
    pair.assert_same()
