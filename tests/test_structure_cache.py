"""Per-step caches of a network's structure are invalidated by every change that matters.

Sequential remembers, between steps, which runs of plain Dense layers it runs as one node
(``containers._cached_dense_run``). The oracle: the uncached decision (``_dense_run``)
after each change, and the same training steps on a twin network whose forward never uses
the cache (outputs and gradients must be the same bits; hooks and taps must be called).
"""
import numpy as np
import pytest

import gradcore
from gradcore import Tensor, nn
from gradcore.nn import containers as C


def _net(dtype=np.float32, seed=0, widths=(6, 8, 7, 5, 2), acts=("relu", "tanh", "relu", None)):
    rng = np.random.default_rng(seed)
    net = nn.Sequential(*[nn.Dense(widths[i], widths[i + 1], activation=acts[i], dtype=dtype)
                          for i in range(len(acts))])
    with gradcore.no_grad():
        for p in net.parameters():
            p.data[...] = rng.standard_normal(p.shape).astype(dtype)
    return net


def _ids(run):
    return None if run is None else [(id(w), id(b), k, a) for w, b, k, a in run]


def _assert_cache_agrees(net, x):
    """At every start, the cached run is the uncached one (asked twice: filled, then hit)."""
    x = net._as_input(x)
    layers = list(net._modules.values())
    for i in range(len(layers) - 1):
        want = _ids(C._dense_run(layers, i, x))
        assert _ids(C._cached_dense_run(net, layers, i, x)) == want, i
        assert _ids(C._cached_dense_run(net, layers, i, x)) == want, i


def _step(net, x):
    out = net(x)
    (out * out).sum().backward()
    grads = [None if p.grad is None else p.grad.copy() for p in net.parameters()]
    net.zero_grad()
    return out.data.copy(), grads


def _uncached_step(net, x, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(C, "_cached_dense_run", lambda seq, layers, i, x: C._dense_run(layers, i, x))
        return _step(net, x)


def _assert_same_step(net, x, monkeypatch):
    _assert_cache_agrees(net, x)
    out, grads = _step(net, x)
    ref_out, ref_grads = _uncached_step(net, x, monkeypatch)
    np.testing.assert_array_equal(out, ref_out)
    for a, b in zip(grads, ref_grads):
        if a is None or b is None:
            assert a is None and b is None
        else:
            np.testing.assert_array_equal(a, b)


X = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)


def test_whole_net_is_one_cached_run():
    net = _net()
    _assert_cache_agrees(net, X)
    layers = list(net._modules.values())
    run = C._cached_dense_run(net, layers, 0, Tensor(X))
    assert len(run) == 4 and type(run) is C._ContiguousRun  # the flat buffer's views: passed as they are


@pytest.mark.parametrize("where", [0, 1, 3])
def test_module_hook_added_and_removed(where, monkeypatch):
    net = _net()
    _assert_same_step(net, X, monkeypatch)
    calls = []
    handle = net[where].register_forward_hook(lambda m, a, o: calls.append(1))
    _assert_same_step(net, X, monkeypatch)
    assert calls  # the hooked layer was called on its own
    handle.remove()
    _assert_same_step(net, X, monkeypatch)
    del net[where].__dict__["_module_hooks"]  # as the monitor does, behind Module's back
    n = len(calls)
    _assert_same_step(net, X, monkeypatch)
    assert len(calls) == n
    layers = list(net._modules.values())
    assert len(C._cached_dense_run(net, layers, 0, Tensor(X))) == 4  # one run again


def test_monitor_tap_set_and_deleted_in_dict(monkeypatch):
    net = _net()
    _assert_same_step(net, X, monkeypatch)

    class Tap:
        def __init__(self):
            self.n = 0

        def forward(self, z, y):
            self.n += 1

        def backward(self, g):
            pass

    tap = Tap()
    object.__setattr__(net[2], "_monitor_tap", tap)  # the monitor's way: no Module.__setattr__
    _assert_same_step(net, X, monkeypatch)
    assert tap.n == 2  # once per step: the cached step and the uncached one
    del net[2].__dict__["_monitor_tap"]
    _assert_same_step(net, X, monkeypatch)
    assert tap.n == 2


def test_real_monitor_attach_and_close(monkeypatch):
    net = _net()
    _assert_same_step(net, X, monkeypatch)
    from gradcore.monitor import GradientMonitor

    mon = GradientMonitor(net)
    _assert_same_step(net, X, monkeypatch)
    mon.close()
    _assert_same_step(net, X, monkeypatch)


@pytest.mark.parametrize("change", ["activation", "alpha", "weight_data_dtype", "weight_data_shape", "bias_none",
                                    "weight_data_fortran", "bias_data_strided",
                                    "new_weight", "tensor_hook", "frozen", "set_layer", "append", "astype"])
def test_structure_changes_between_steps(change, monkeypatch):
    net = _net()
    _assert_same_step(net, X, monkeypatch)
    layer = net[1]
    if change == "activation":
        layer.activation = "sigmoid"
    elif change == "alpha":
        layer.activation = "leaky_relu"
        _assert_same_step(net, X, monkeypatch)
        layer.alpha = np.float64(0.3)  # not a plain float: the run ends before this layer
    elif change == "weight_data_dtype":
        layer.weight.data = layer.weight.data.astype(np.float64)
    elif change == "weight_data_shape":
        layer.weight.data = np.ones((7, 9), np.float32)  # the per-layer path's error is expected
        with pytest.raises(ValueError) as cached:
            net(X)
        with pytest.raises(ValueError) as uncached, monkeypatch.context() as m:
            m.setattr(C, "_cached_dense_run", lambda seq, layers, i, x: C._dense_run(layers, i, x))
            net(X)
        assert str(cached.value) == str(uncached.value)
        _assert_cache_agrees(net, X)
        return
    elif change == "bias_none":
        layer.bias = None
    elif change == "weight_data_fortran":  # not C-contiguous: the chain must convert it, as linear() does
        layer.weight.data = np.asfortranarray(layer.weight.data * 0.5)
        layers = list(net._modules.values())
        assert type(C._cached_dense_run(net, layers, 0, Tensor(X))) is list
    elif change == "bias_data_strided":
        layer.bias.data = np.repeat(layer.bias.data, 2)[::2]
        assert not layer.bias.data.flags.c_contiguous
    elif change == "new_weight":
        layer.weight = Tensor(np.full((7, 8), 0.25, np.float32), requires_grad=True)
    elif change == "tensor_hook":
        seen = []
        layer.weight.register_hook(lambda g: seen.append(1))
        _assert_same_step(net, X, monkeypatch)
        assert seen
        return
    elif change == "frozen":
        layer.weight.requires_grad = False
    elif change == "set_layer":
        setattr(net, "2", nn.Dense(7, 5, activation="gelu"))
    elif change == "append":
        net.append(nn.Dense(2, 3, activation="tanh"))
    elif change == "astype":
        net.astype(np.float64)
    _assert_same_step(net, X, monkeypatch)
    _assert_same_step(net, X, monkeypatch)


def test_input_dtype_and_width_and_rows(monkeypatch):
    net = _net(np.float64)
    _assert_same_step(net, X.astype(np.float64), monkeypatch)
    _assert_same_step(net, X[:1].astype(np.float64), monkeypatch)
    _assert_same_step(net, X, monkeypatch)  # float32 input converted
    with pytest.raises(ValueError):
        net(np.ones((3, 5)))  # a wrong width gets the per-layer error
    _assert_cache_agrees(net, np.ones((3, 6)))
    # a float64 Tensor run through a float32 network's layers directly: the cache keys on dtype
    net32 = _net()
    layers = list(net32._modules.values())
    assert C._cached_dense_run(net32, layers, 0, Tensor(X)) is not None
    assert C._cached_dense_run(net32, layers, 0, Tensor(X.astype(np.float64))) is None


def test_mixed_network_caches_none_and_runs(monkeypatch):
    net = nn.Sequential(nn.Dense(6, 8, activation="relu"), nn.Dense(8, 8), nn.BatchNorm(8), nn.ReLU(),
                        nn.Dense(8, 4, activation="tanh"), nn.Dense(4, 2))
    net.train()
    for _ in range(2):
        _assert_same_step(net, X, monkeypatch)
    net[4].activation = None
    _assert_same_step(net, X, monkeypatch)


def test_copies_do_not_share_the_cache(monkeypatch):
    import copy

    net = _net()
    _assert_same_step(net, X, monkeypatch)
    twin = copy.deepcopy(net)
    with gradcore.no_grad():
        twin[0].weight.data[...] = 0.5
    _assert_same_step(twin, X, monkeypatch)
    _assert_same_step(net, X, monkeypatch)
    assert not np.array_equal(twin(X).data, net(X).data)


# ---------------------------------------------------------------------- regularization_loss


def _penalty(net):
    """NumPy oracle: sum of l2 * sum(w ** 2) over the Dense layers reachable in ``net``, in float64."""
    total, any_term = 0.0, False
    for m in net.modules():
        if isinstance(m, nn.Dense) and m.l2 != 0.0:
            total += m.l2 * float(np.sum(m.weight.data.astype(np.float64) ** 2))
            any_term = True
    return total if any_term else None


def _assert_penalty(net):
    for _ in range(2):  # filled, then remembered
        got = net.regularization_loss()
        want = _penalty(net)
        if want is None:
            assert got is None
        else:
            assert got is not None
            np.testing.assert_allclose(float(got.item()), want, rtol=1e-6)


def test_regularization_follows_every_change():
    net = _net()
    _assert_penalty(net)
    net[1].l2 = 0.01  # public attribute
    _assert_penalty(net)
    with gradcore.no_grad():
        net[1].weight.data[...] *= 2.0  # values change in place: the term is computed every step
    _assert_penalty(net)
    net.append(nn.Dense(2, 3, l2=0.5))
    _assert_penalty(net)
    net._modules["4"] = nn.Dense(2, 3, l2=0.25)  # a private write, as some torch code does
    _assert_penalty(net)
    net[4]._parameters["weight"] = Tensor(np.ones((3, 2), np.float32), requires_grad=True)
    _assert_penalty(net)
    del net._modules["4"]
    _assert_penalty(net)
    net[1].l2 = 0.0
    _assert_penalty(net)


def test_regularization_of_nested_and_dynamic_modules():
    inner = nn.Sequential(nn.Dense(4, 4, l2=0.1), nn.Dense(4, 4))
    outer = nn.Sequential(nn.Dense(3, 4), inner)
    _assert_penalty(outer)
    inner[1].l2 = 0.2
    _assert_penalty(outer)

    class Switching(nn.Module):
        """Lists a different child each call: never remembered."""

        def __init__(self):
            super().__init__()
            self.a = nn.Dense(2, 2, l2=1.0)
            self.b = nn.Dense(2, 2, l2=3.0)
            self.flip = False

        def named_children(self):
            self.__dict__["flip"] = not self.__dict__["flip"]  # behind Module.__setattr__'s back
            yield ("a", self.a) if self.flip else ("b", self.b)

        def forward(self, x):
            return self.a(x)

    sw = Switching()
    first = float(sw.regularization_loss().item())
    second = float(sw.regularization_loss().item())
    wa = float(np.sum(sw.a.weight.data.astype(np.float64) ** 2))
    wb = float(np.sum(sw.b.weight.data.astype(np.float64) ** 2))
    assert sorted([first, second]) == pytest.approx(sorted([1.0 * wa, 3.0 * wb]), rel=1e-6)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = Tensor(np.full(3, 2.0, np.float32), requires_grad=True)
            self.scale = 1.0

        def own_regularization(self):
            return (self.w * self.w).sum() * self.scale

        def forward(self, x):
            return x

    c = Custom()
    net = nn.Sequential(nn.Dense(3, 3), c)
    assert float(net.regularization_loss().item()) == pytest.approx(12.0)
    c.scale = 0.5
    assert float(net.regularization_loss().item()) == pytest.approx(6.0)
