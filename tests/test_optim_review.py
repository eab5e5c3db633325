"""Review items A4, A5, B6, B7: frozen parameters stay in ``parameters()`` and in optimizers
(torch), ``Optimizer.load_state_dict`` refuses invalid state before writing anything, callbacks
do not keep the optimizer alive after ``fit``, and clear errors / Keras keyword spellings."""
import gc

import numpy as np
import pytest

import gradcore
from gradcore import Tensor, nn
from gradcore import functional as F
from gradcore.optim import SGD, Adagrad, Adam, AdamW, RMSprop


def make_net(seed=0):
    gradcore.manual_seed(seed)
    return nn.Sequential(nn.Dense(4, 6, activation="tanh", dtype=np.float64), nn.Dense(6, 3, dtype=np.float64),
                         dtype=np.float64)


def torch_twin(net):
    """A torch.nn.Sequential with the same weights (orientation read from the layer's shape)."""
    torch = pytest.importorskip("torch")
    layers = []
    for layer in (net[0], net[1]):
        w = layer.weight.data
        n_out = layer.bias.shape[0]
        lin = torch.nn.Linear(w.size // n_out, n_out, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w if w.shape == tuple(lin.weight.shape) else w.T))
            lin.bias.copy_(torch.tensor(layer.bias.data))
        layers.append(lin)
    return torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1])


def assert_same_as_torch(net, tnet):
    for layer, lin in zip((net[0], net[1]), (tnet[0], tnet[2])):
        tw = lin.weight.detach().numpy()
        w = layer.weight.data
        np.testing.assert_allclose(w if w.shape == tw.shape else w.T, tw, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.bias.data, lin.bias.detach().numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- A4
@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
                                      ("Adam", dict(lr=0.05, weight_decay=0.1)),
                                      ("AdamW", dict(lr=0.05, weight_decay=0.1))])
def test_freeze_then_unfreeze_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    net = make_net()
    tnet = torch_twin(net)
    assert net[0].requires_grad_(False) is net[0]
    tnet[0].requires_grad_(False)
    # every parameter, frozen or not, like torch
    assert len(net.parameters()) == len(list(tnet.parameters())) == 4
    assert net.count_params() == sum(p.numel() for p in tnet.parameters())  # Keras': frozen ones too
    opt = getattr(gradcore.optim, name)(net.parameters(), **kw)
    topt = getattr(torch.optim, name)(tnet.parameters(), **kw)
    assert len(opt.params) == 4
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((8, 4)), rng.standard_normal((8, 3))
    frozen_before = net[0].weight.data.copy()
    for step in range(6):
        if step == 3:  # unfreeze: the optimizer already holds layer 0 and now trains it
            net[0].requires_grad_(True)
            tnet[0].requires_grad_(True)
        opt.zero_grad()
        topt.zero_grad()
        F.mse_loss(net(Tensor(X)), Tensor(Y)).backward()
        torch.nn.functional.mse_loss(tnet(torch.tensor(X)), torch.tensor(Y)).backward()
        opt.step()
        topt.step()
        assert_same_as_torch(net, tnet)
        if step < 3:
            assert np.array_equal(net[0].weight.data, frozen_before)
    assert not np.array_equal(net[0].weight.data, frozen_before)


def test_compiled_fit_trains_a_layer_unfrozen_after_compile():
    net = make_net(1)
    net[0].requires_grad_(False)
    net.compile("sgd", "mse")
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((16, 4)), rng.standard_normal((16, 3))
    w0 = net[0].weight.data.copy()
    net.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    assert np.array_equal(net[0].weight.data, w0)
    net[0].requires_grad_(True)
    net.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(net[0].weight.data, w0)


# ---------------------------------------------------------------------- A5
def trained(cls, kw):
    net = make_net(2)
    opt = cls(net.parameters(), **kw)
    rng = np.random.default_rng(5)
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(net(Tensor(rng.standard_normal((8, 4)))), Tensor(rng.standard_normal((8, 3)))).backward()
        opt.step()
    return net, opt


def poison_state(name, value):
    def change(sd):
        arr = sd["buffers"][0]["state"][name]
        arr[7] = value if value is not None else -abs(arr[7]) - 1.0
    return change


def set_key(*path, value):
    def change(sd):
        d = sd
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return change


POISONS = [
    (Adam, dict(amsgrad=True), poison_state("v", None), r"'buffers/0/state/v'.*negative.*parameter 0"),
    (Adam, dict(amsgrad=True), poison_state("v_max", None), "v_max.*negative"),
    (Adam, {}, poison_state("m", np.nan), "state/m.*non-finite.*nan"),
    (Adam, {}, poison_state("v", np.inf), "state/v.*non-finite.*inf"),
    (Adam, {}, lambda sd: sd["buffers"][0]["steps"].__setitem__(1, -5), "steps.*negative.*-5"),
    (Adam, {}, lambda sd: sd["buffers"][0].__setitem__("steps", sd["buffers"][0]["steps"] + 0.5), "integers"),
    (Adam, {}, set_key("skipped_steps", value=-1), "skipped_steps.*-1"),
    (Adam, {}, set_key("param_groups", 0, "betas", value=(0.9, 1.5)), "beta2"),
    (Adam, {}, set_key("param_groups", 0, "lr", value=-0.1), "lr"),
    (Adam, {}, set_key("global_clip_norm", value=-1.0), "global_clip_norm"),
    (Adam, {}, set_key("nonfinite", value="explode"), "nonfinite"),
    (RMSprop, dict(centered=True), poison_state("square_avg", None), "square_avg.*negative"),
    (Adagrad, {}, poison_state("sum", None), "state/sum.*negative"),
    (SGD, dict(momentum=0.9), poison_state("momentum_buffer", np.nan), "momentum_buffer.*non-finite"),
    (SGD, dict(momentum=0.9), lambda sd: sd["buffers"][0]["state"].__setitem__(
        "momentum_buffer", sd["buffers"][0]["state"]["momentum_buffer"].astype(np.float32)), "float32"),
]


def snapshot(net, opt):
    sd = opt.state_dict()
    arrays = [b["steps"].tobytes() for b in sd["buffers"]]
    arrays += [a.tobytes() for b in sd["buffers"] for a in b["state"].values()]
    return ([p.data.tobytes() for p in net.parameters()], arrays, repr(sd["param_groups"]),
            sd["skipped_steps"], sd["global_clip_norm"], sd["nonfinite"])


@pytest.mark.parametrize("cls, kw, change, message", POISONS)
def test_load_state_dict_refuses_invalid_state_and_changes_nothing(cls, kw, change, message):
    net, opt = trained(cls, kw)
    sd = opt.state_dict()
    change(sd)
    before = snapshot(net, opt)
    with pytest.raises(ValueError, match=message) as info:
        opt.load_state_dict(sd)
    assert f"{cls.__name__}.load_state_dict" in str(info.value)
    assert snapshot(net, opt) == before
    # and it still steps like an untouched twin (NumPy: the same optimizer, same data)
    twin_net, twin = trained(cls, kw)
    for o, n in ((opt, net), (twin, twin_net)):
        o.zero_grad()
        F.mse_loss(n(Tensor(np.ones((2, 4)))), Tensor(np.zeros((2, 3)))).backward()
        o.step()
    assert [p.data.tobytes() for p in net.parameters()] == [p.data.tobytes() for p in twin_net.parameters()]
    assert opt.skipped_steps == 0


def test_valid_state_still_round_trips():
    net, opt = trained(Adam, dict(amsgrad=True))
    sd = opt.state_dict()
    net2 = make_net(2)
    opt2 = Adam(net2.parameters(), amsgrad=True)
    opt2.load_state_dict(sd)
    assert snapshot(net, opt)[1] == snapshot(net2, opt2)[1]


# ---------------------------------------------------------------------- B6
def test_optimizer_released_after_fit_so_astype_works():
    net = nn.Sequential(nn.Dense(4, 5), nn.Dense(5, 3))
    net.compile("adam", "mse")
    rng = np.random.default_rng(6)
    X, Y = rng.standard_normal((16, 4)).astype(np.float32), rng.standard_normal((16, 3)).astype(np.float32)
    history = net.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    with pytest.raises(RuntimeError, match="net.optimizer = None"):
        net.astype(np.float64)  # still compiled: refused, and the message's advice ...
    net.optimizer = None  # ... is true: with the History alive, this releases the optimizer
    gc.collect()
    values = [p.data.astype(np.float64) for p in net.parameters()]
    net.astype(np.float64)
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert all(np.array_equal(p.data, v) for p, v in zip(net.parameters(), values))
    assert len(history.history["loss"]) == 2 and history.optimizer is None and history.model is net


# ---------------------------------------------------------------------- B7
def test_wrong_gradient_shape_names_optimizer_parameter_expected_and_got():
    a, b = Tensor(np.zeros(2), requires_grad=True), Tensor(np.zeros(3), requires_grad=True)
    opt = Adam([a, b])
    a.grad, b.grad = np.ones(2), np.ones(4)
    with pytest.raises(ValueError, match=r"Adam: parameter 1 \(shape \(3,\).*gradient of shape \(4,\), expected \(3,\)"):
        opt.step()


def test_grad_given_as_tensor_is_used():
    rng = np.random.default_rng(7)
    w0, g = rng.standard_normal(5), rng.standard_normal(5)
    p = Tensor(w0.copy(), requires_grad=True)
    opt = SGD([p], lr=0.1)
    p.grad = Tensor(g)
    opt.step()
    np.testing.assert_allclose(p.data, w0 - 0.1 * g, rtol=1e-15)
    p.grad = "not a gradient"
    with pytest.raises(TypeError, match=r"SGD: parameter 0.*\.grad must be"):
        opt.step()


def test_keras_keyword_spellings_are_aliases():
    rng = np.random.default_rng(8)
    w0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) * 3 for _ in range(3)]

    def run(**kw):
        p = Tensor(w0.copy(), requires_grad=True)
        opt = SGD([p], **kw)
        for g in grads:
            p.grad = g.copy()
            opt.step()
        return p.data

    # NumPy oracle: Keras clipnorm (per variable), then clipvalue, then p -= lr * g
    w = w0.copy()
    for g in grads:
        n = np.linalg.norm(g)
        g = g * (1.0 / max(n, 1.0)) if n > 1.0 else g
        w = w - 0.05 * np.clip(g, -0.3, 0.3)
    np.testing.assert_allclose(run(learning_rate=0.05, clipnorm=1.0, clipvalue=0.3), w, rtol=1e-13)
    p = Tensor(w0.copy(), requires_grad=True)
    opt = Adam([p], learning_rate=0.01, global_clipnorm=2.0)
    assert opt.lr == 0.01 and opt.global_clip_norm == 2.0
    with pytest.raises(TypeError, match="Adam.*learning_rate.*lr"):
        Adam([p], lr=0.1, learning_rate=0.1)
    with pytest.raises(TypeError, match="SGD.*learning_rate.*lr"):
        SGD([p], 0.1, learning_rate=0.1)  # lr given by position
    with pytest.raises(TypeError, match="clipnorm.*clip_norm"):
        Adam([p], clip_norm=1.0, clipnorm=1.0)


def test_unknown_and_torch_keywords():
    p = Tensor(np.zeros(3), requires_grad=True)
    with pytest.raises(TypeError, match="AdamW.*'bogus'"):
        AdamW([p], bogus=1)
    with pytest.raises(TypeError, match="RMSprop.*'beta_1'"):
        RMSprop([p], beta_1=0.9)
    Adam([p], foreach=None, fused=False, capturable=False, differentiable=False, maximize=False)  # no-ops
    with pytest.raises(ValueError, match="Adam: maximize=True is not implemented"):
        Adam([p], maximize=True)
    with pytest.raises(ValueError, match="SGD: differentiable=True"):
        SGD([p], differentiable=True)


def test_layout_difference_is_described():
    gradcore.manual_seed(0)
    a = nn.Sequential(nn.Dense(2, 3), nn.Dense(3, 2))  # sizes 6, 3, 6, 2
    b = nn.Sequential(nn.Dense(3, 2), nn.Dense(2, 3))  # sizes 6, 2, 6, 3
    sd = SGD(a.parameters(), momentum=0.9).state_dict()
    opt = SGD(b.parameters(), momentum=0.9)
    with pytest.raises(ValueError, match=r"offsets differ from tensor 1 on: saved tensor 1 spans \[6, 9\), "
                                         r"here \[6, 8\)"):
        opt.load_state_dict(sd)


def test_load_state_dict_reads_a_bfloat16_torch_state():
    torch = pytest.importorskip("torch")
    net = make_net(3)
    tnet = torch_twin(make_net(4)).to(torch.bfloat16)
    sd = {}
    for i, (layer, lin) in enumerate(zip((net[0], net[1]), (tnet[0], tnet[2]))):
        w = lin.weight.detach()
        sd[f"{i}.weight"] = w if tuple(w.shape) == layer.weight.shape else w.T
        sd[f"{i}.bias"] = lin.bias.detach()
    net.load_state_dict(sd)
    for key, p in net.named_parameters():
        np.testing.assert_array_equal(p.data, sd[key].float().numpy().astype(np.float64))
