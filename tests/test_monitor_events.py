"""GradientMonitor events: NaN / Inf located at its origin, exploding (threshold and growth),
vanishing (per layer and first / last), dead and saturated units, update ratios; onset-only
firing, the on_nonfinite policies, on_event, loggers and histograms."""
import warnings

import numpy as np
import pytest

from gradcore import Tensor, nn, optim
from gradcore.callbacks import Callback
from gradcore.monitor import Event, GradientMonitor, NonFiniteError


def mse(out, y):
    d = out - Tensor(y)
    return (d * d).mean()


def make_net(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    net = nn.Sequential(nn.Dense(6, 8, activation="relu", dtype=dtype), nn.Dense(8, 8, activation="tanh", dtype=dtype),
                        nn.BatchNorm(8, dtype=dtype), nn.Dense(8, 8, dtype=dtype), nn.ReLU(),
                        nn.Dense(8, 2, dtype=dtype))
    for _, p in net.named_parameters():
        p.data[...] = rng.normal(0, 0.5, p.shape)
    return net


def data(dtype=np.float32, n=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(dtype), rng.normal(size=(n, 2)).astype(dtype)


def one_step(net, mon, X, y, scale=1.0, opt=None):
    if opt is not None:
        opt.zero_grad()
    else:
        net.zero_grad()
    loss = mse(net(X), y)
    (loss * scale if scale != 1.0 else loss).backward()
    mon.record(loss)
    if opt is not None:
        opt.step()
    return loss


def kinds(mon, kind):
    return [e for e in mon.events if e.kind == kind]


# ---------------------------------------------------------------------- non-finite at its origin
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", ["0", "1", "3", "5"])
def test_planted_nan_is_reported_at_its_layer(dtype, layer):
    net = make_net(dtype)
    X, y = data(dtype)
    getattr(net, layer).weight.data[1, 2] = np.nan
    mon = GradientMonitor(net, on_nonfinite="warn")
    with pytest.warns(RuntimeWarning, match=f"step 0, layer '{layer}', weight"):
        one_step(net, mon, X, y)
    (event,) = kinds(mon, "nonfinite")
    assert (event.layer, event.tensor, event.step, event.evidence["phase"]) == (layer, "weight", 0, "parameter")
    # in the activations the NaN first appears at that layer's forward output
    order = [info.name for info in mon.layers]
    counts = [mon.history.last(name, "act_nonfinite") for name in order]
    k = order.index(layer)
    assert all(c == 0 for c in counts[:k]) and counts[k] > 0


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e38), (np.float64, 1e308)])
def test_overflow_from_a_huge_weight_is_located_where_it_starts(dtype, big):
    net = make_net(dtype)
    X, y = data(dtype)
    net[3].weight.data[...] = big  # finite, but its products overflow
    mon = GradientMonitor(net, on_nonfinite="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_step(net, mon, X, y)
    (event,) = kinds(mon, "nonfinite")
    assert (event.layer, event.tensor, event.evidence["phase"]) == ("3", "output", "forward")
    assert event.value == np.count_nonzero(~np.isfinite(net[3](net[2](net[1](net[0](X)))).data))
    assert mon.history.last("1", "act_nonfinite") == 0 and mon.history.last("3", "act_nonfinite") > 0


def test_nonfinite_in_backward_is_located_at_the_first_dz():
    """A finite forward whose loss gradient overflows: the first dz in backward order (the
    last layer) holds the Inf."""
    net = make_net(np.float32)
    X, y = data(np.float32)
    mon = GradientMonitor(net, on_nonfinite="warn")
    net.zero_grad()
    loss = mse(net(X), y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (loss * 1e38 * 1e10).backward()
        mon.record(loss)
    (event,) = kinds(mon, "nonfinite")
    assert (event.layer, event.tensor, event.evidence["phase"]) == ("5", "dz", "backward")


def test_nonfinite_fires_at_onset_only_and_raise_mode():
    net = make_net()
    X, y = data()
    net[1].bias.data[0] = np.inf
    opt = optim.SGD(net.parameters(), lr=0.1)  # skips the non-finite steps: the Inf stays
    mon = GradientMonitor(net, optimizer=opt, on_nonfinite="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            one_step(net, mon, X, y, opt=opt)
    assert len(kinds(mon, "nonfinite")) == 1 and mon.history.last("", "skipped") == 1
    raising = make_net()
    raising[0].weight.data[0, 0] = np.nan
    mon = GradientMonitor(raising, on_nonfinite="raise")
    with pytest.raises(NonFiniteError) as info:
        one_step(raising, mon, X, y)
    assert isinstance(info.value, FloatingPointError)
    assert info.value.event.layer == "0" and info.value.event.tensor == "weight"


def test_raise_inside_fit_leaves_parameters_unchanged():
    net = make_net()
    X, y = data(n=32)
    net.compile(optim.SGD(net.parameters(), lr=0.1), "mse")
    net[3].bias.data[1] = np.nan
    before = net.state_dict()
    with pytest.raises(NonFiniteError, match="layer '3'"):
        net.fit(X, y, batch_size=8, callbacks=[GradientMonitor(net, on_nonfinite="raise")], verbose=0)
    after = net.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.filterwarnings("ignore:fit. the optimizer skipped a step")
def test_stop_mode_ends_fit_after_the_batch():
    net = make_net()
    X, y = data(n=64)
    net.compile("sgd", "mse")
    net[0].bias.data[0] = np.nan
    mon = GradientMonitor(net, on_nonfinite="stop")
    with pytest.warns(RuntimeWarning, match="stopping training"):
        history = net.fit(X, y, epochs=3, batch_size=8, callbacks=[mon], verbose=0)
    assert len(history.epoch) == 1 and mon.step == 1
    assert kinds(mon, "nonfinite")[0].layer == "0"


class PlantNaN(Callback):
    def __init__(self, at):
        self.at, self.seen = at, 0

    def on_batch_begin(self, batch, logs=None):
        if self.seen == self.at:
            self.model[1].weight.data[0, 0] = np.nan
        self.seen += 1


@pytest.mark.filterwarnings("ignore:fit. the optimizer skipped a step")
def test_unrecorded_nonfinite_step_is_reported_and_the_next_steps_recorded():
    net = make_net()
    X, y = data(n=64)
    net.compile("sgd", "mse")
    mon = GradientMonitor(net, every=4)
    with pytest.warns(RuntimeWarning) as warned:
        net.fit(X, y, epochs=1, batch_size=8, callbacks=[PlantNaN(at=1), mon], verbose=0, shuffle=False)
    messages = [str(w.message) for w in warned if "GradientMonitor" in str(w.message)]
    assert len(messages) == 2 and "not recorded" in messages[0] and "layer '1', weight" in messages[1]
    first, located = kinds(mon, "nonfinite")
    assert (first.step, first.layer, first.tensor, first.evidence["phase"]) == (1, "", "grad_norm", "backward")
    assert (located.step, located.layer, located.tensor, located.evidence["phase"]) == (2, "1", "weight", "parameter")
    assert list(mon.history.steps()) == [0, 2, 3, 4, 5, 6, 7]  # recorded every step while non-finite


# ---------------------------------------------------------------------- exploding
def test_unrecorded_nonfinite_loss_in_a_hand_loop():
    net = make_net()
    X, y = data()
    mon = GradientMonitor(net, every=3)
    one_step(net, mon, X, y)
    net[5].bias.data[0] = np.nan
    with pytest.warns(RuntimeWarning, match="step 1, network, loss"):
        one_step(net, mon, X, y)
    with pytest.warns(RuntimeWarning, match="layer '5', bias"):
        one_step(net, mon, X, y)  # recorded although 2 % 3 != 0: located
    assert list(mon.history.steps()) == [0, 2]
    assert [(e.step, e.layer, e.tensor) for e in kinds(mon, "nonfinite")] == [(1, "", "loss"), (2, "5", "bias")]


def test_exploding_growth_against_the_recent_median_onset_only():
    net = make_net(np.float64)
    X, y = data(np.float64)
    mon = GradientMonitor(net, exploding=1e30, growth=10.0, activations=False)
    scales = [1, 1, 1, 1, 1, 1000, 1000, 1, 1000]
    for s in scales:
        one_step(net, mon, X, y, scale=s)
    events = kinds(mon, "exploding_growth")
    assert sorted({e.step for e in events}) == [5, 8]
    layers = {info.name for info in mon.layers if info.params}
    assert {e.layer for e in events if e.step == 5} == layers
    for e in events:
        steps, values = mon.history.series(e.layer, "grad_norm")
        previous = values[max(0, e.step - 10):e.step]
        assert e.value == values[e.step]
        assert e.evidence["median"] == pytest.approx(np.median(previous), rel=1e-12)
        assert e.value > 10 * np.median(previous)


def test_exploding_threshold_fires_again_after_recovering():
    net = make_net(np.float64)
    X, y = data(np.float64)
    mon = GradientMonitor(net, activations=False)
    for s in [1, 1e4, 1e4, 1, 1e4]:
        one_step(net, mon, X, y, scale=s)
    events = [e for e in kinds(mon, "exploding") if e.layer == "5"]
    assert [e.step for e in events] == [1, 4]
    steps, values = mon.history.series("5", "grad_norm")
    assert all(e.value == values[e.step] > 100.0 for e in events) and values[0] < 100.0


# ---------------------------------------------------------------------- vanishing, units, updates
def test_vanishing_layers_and_flow_ratio_of_a_deep_sigmoid_network():
    rng = np.random.default_rng(0)
    widths = [6, 16, 16, 16, 16, 16, 1]
    net = nn.Sequential(*[nn.Dense(a, b, activation="sigmoid" if i < 5 else None, dtype=np.float64)
                          for i, (a, b) in enumerate(zip(widths, widths[1:]))])
    for _, p in net.named_parameters():
        p.data[...] = rng.normal(0, 0.01, p.shape) if p.ndim == 2 else 0.0
    X = rng.normal(size=(32, 6))
    y = rng.normal(size=(32, 1))
    mon = GradientMonitor(net)
    one_step(net, mon, X, y)
    one_step(net, mon, X, y)
    h = mon.history
    dw = {info.name: h.last(info.name, "weight.grad_norm") for info in mon.layers}
    expected = {name for name, v in dw.items() if v < 0.01}
    assert expected and {e.layer for e in kinds(mon, "vanishing")} == expected
    assert all(e.step == 0 for e in mon.events if e.kind in ("vanishing", "vanishing_flow"))  # onset only
    (flow,) = kinds(mon, "vanishing_flow")
    assert flow.layer == "0" and flow.evidence["last_layer"] == "5"
    assert flow.value == pytest.approx(dw["0"] / dw["5"], rel=1e-12) and flow.value < 1e-3


def test_dead_and_saturated_units():
    net = make_net(np.float64)
    net[0].bias.data[:6] = -100.0  # 6 of 8 units dead
    net[1].bias.data[:5] = 20.0     # 5 of 8 tanh pre-activations far beyond +-5 in every row
    X, y = data(np.float64)
    mon = GradientMonitor(net)
    one_step(net, mon, X, y)
    (dead,) = kinds(mon, "dead_units")
    assert dead.layer == "0" and dead.value == mon.history.last("0", "dead_frac") >= 0.75
    (sat,) = kinds(mon, "saturated_units")
    assert sat.layer == "1" and sat.value == mon.history.last("1", "saturated_frac") > 0.5


@pytest.mark.parametrize("lr, kind", [(50.0, "update_ratio_high"), (1e-9, "update_ratio_low")])
def test_update_ratio_outside_the_interval(lr, kind):
    net = make_net(np.float64)
    X, y = data(np.float64)
    opt = optim.SGD(net.parameters(), lr=lr)
    seen = []
    mon = GradientMonitor(net, optimizer=opt, on_event=seen.append)
    one_step(net, mon, X, y, opt=opt)
    events = kinds(mon, kind)
    assert events and {e.layer for e in events} <= {"0", "1", "3", "5"}
    for e in events:
        assert e.value == mon.history.last(e.layer, "weight.update_ratio")
        assert e.tensor == "weight.update" and e.step == 0
    assert seen == mon.events and all(isinstance(e, Event) for e in seen)
    text = str(events[0])
    assert kind in text and "step 0" in text and f"layer '{events[0].layer}'" in text


# ---------------------------------------------------------------------- loggers, histograms
class ListLogger:
    def __init__(self):
        self.steps, self.closed = [], 0

    def write_step(self, monitor, step, rows):
        self.steps.append((step, rows))

    def close(self):
        self.closed += 1


def test_loggers_get_each_recorded_step_and_are_closed():
    net = make_net()
    X, y = data(n=32)
    net.compile("sgd", "mse")
    logger = ListLogger()
    mon = GradientMonitor(net, every=2, loggers=[logger])
    net.fit(X, y, epochs=1, batch_size=8, callbacks=[mon], verbose=0)
    assert [s for s, _ in logger.steps] == [0, 2] and logger.closed == 1
    for step, rows in logger.steps:
        assert {(layer, metric): v for layer, metric, v in rows} == pytest.approx(mon.history.at(step), nan_ok=True)
    mon.close()
    assert logger.closed == 1


def test_histograms_of_activations_weights_and_gradients():
    net = make_net(np.float64)
    X, y = data(np.float64)
    mon = GradientMonitor(net, histograms=True)
    one_step(net, mon, X, y)
    entries = mon.histograms["0"]
    assert [kind for _, kind, _, _ in entries] == ["activation", "weight", "grad"]
    a0 = np.maximum(X @ net[0].weight.data.T + net[0].bias.data, 0)
    step, kind, counts, edges = entries[0]
    assert step == 0 and len(counts) == 30 and len(edges) == 31
    np.testing.assert_array_equal(counts, np.histogram(a0, bins=30)[0])
    assert [kind for _, kind, _, _ in mon.histograms["4"]] == ["activation"]  # ReLU layer: no weight


def test_a_second_fit_after_the_loggers_closed_warns_that_it_is_not_logged():
    net = make_net()
    X, y = data(n=32)
    net.compile("sgd", "mse")
    logger = ListLogger()
    mon = GradientMonitor(net, loggers=[logger])
    net.fit(X, y, epochs=1, batch_size=16, callbacks=[mon], verbose=0)
    logged = len(logger.steps)
    with pytest.warns(RuntimeWarning, match="recorded in mon.history but not logged"):
        net.fit(X, y, epochs=1, batch_size=16, callbacks=[mon], verbose=0)
    assert len(logger.steps) == logged and len(mon.history.steps()) == 2 * logged
    mon.close()


def test_growth_out_of_the_vanishing_range_or_in_the_first_steps_is_not_an_explosion():
    """The documents' sigmoid network with randn * 0.01: in the first steps every layer's
    gradient grows ~10x as the output layer learns, and the first layers' norms (1e-8) stay
    far below `vanishing`. Neither is an explosion; a 1000x jump of a normal-sized
    gradient later is."""
    net = make_net(np.float64)
    X, y = data(np.float64)
    mon = GradientMonitor(net, exploding=1e30, growth=10.0, vanishing=1e-2, activations=False)
    for s in [1e-6, 1e-6, 1e-6, 1e-6, 1e-6, 1e-3]:   # 1000x, but still below vanishing
        one_step(net, mon, X, y, scale=s)
    for s in [1, 1, 1]:                              # out of the vanishing range: 1e6x the median
        one_step(net, mon, X, y, scale=s)
    steps, values = mon.history.series("0", "grad_norm")
    assert values[5] > 10 * np.median(values[:5]) and values[5] < 1e-2   # the test's premise
    assert not [e for e in kinds(mon, "exploding_growth") if e.step < 6]
    assert {e.step for e in kinds(mon, "exploding_growth")} == {6}


def test_record_without_a_loss_is_not_a_nonfinite_loss():
    """``mon.record()`` (no loss) stores nan for the loss but raises no alarm: with
    on_nonfinite='raise' a healthy step must pass."""
    net = make_net()
    X, y = data()
    mon = GradientMonitor(net, on_nonfinite="raise", every=2)
    for _ in range(3):
        net.zero_grad()
        mse(net(X), y).backward()
        mon.record()
    assert not kinds(mon, "nonfinite")
    steps, losses = mon.history.series("", "loss")
    assert list(steps) == [0, 2] and np.isnan(losses).all()


def test_growth_from_a_zero_median_is_not_reported_and_does_not_crash():
    """A layer whose gradient was exactly 0 (all its ReLU units dead) for the last steps and
    then comes back: the growth ratio is undefined; no exploding_growth, no ZeroDivisionError."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 10)).astype(np.float32)
    Y = (X[:, :1] > 0).astype(np.float32)
    net = nn.Sequential(nn.Dense(10, 8, activation="relu"), nn.Dense(8, 1))
    net[0].bias.data[:] = -100.0
    mon = GradientMonitor(net)
    for s in range(8):
        if s == 6:
            net[0].bias.data[:] = 0.0
        net.zero_grad()
        mse(net(X), Y).backward()
        mon.record()
    steps, norms = mon.history.series("0", "grad_norm")
    assert (norms[:6] == 0).all() and norms[6] > 1e-2     # the premise: revival from exactly 0
    assert not [e for e in kinds(mon, "exploding_growth") if e.layer == "0"]
