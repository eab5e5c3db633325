"""Checkpoints (issue 6): qualified class names, validation before anything is built or
written, the checksum, loading without random initialisation, and resuming fit.

Damaged files are made by reading a good checkpoint, changing one thing and writing it
back with ``safetensors.save_file`` (which stores a fresh checksum), so each test reaches
the check it is about rather than the checksum.
"""
import json
import os

import numpy as np
import pytest

import gradcore
from gradcore import nn, optim, serialize
from gradcore import safetensors as st
from gradcore.safetensors import CheckpointError


def make_net(seed=0, dtype=np.float64, head=None):
    gradcore.manual_seed(seed)
    return nn.Sequential(nn.Dense(4, 6, activation="relu"), nn.BatchNorm(6), nn.Dropout(0.1),
                         nn.Dense(6, 1, activation=head), dtype=dtype)


def data(n=48, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = (X[:, 0] - 0.5 * X[:, 1] > 0).astype(np.float64).reshape(-1, 1)
    return X, y


def trained(tmp_path, opt="adam", name="net.safetensors"):
    """A compiled network trained for one epoch and saved; returns (net, path)."""
    X, y = data()
    net = make_net()
    if opt == "adam":
        opt = optim.Adam(net.parameters(), lr=0.01, amsgrad=True)
    net.compile(opt, "mse", ["accuracy"])
    net.fit(X, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / name)
    net.save(path)
    return net, path


def rewrite(path, change_tensors=None, change_meta=None):
    tensors, meta = st.load_file(path)
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    st.save_file(tensors, path, meta)


def state_bytes(net):
    return {k: v.tobytes() for k, v in net.state_dict().items()}


@pytest.fixture
def no_module_built(monkeypatch):
    """Records every Module constructed while it is active (to prove nothing was built)."""
    built = []
    original = nn.Module.__new__

    def spy(cls, *args, **kwargs):
        built.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "__new__", staticmethod(spy))
    return built


# ---------------------------------------------------------------------- class names
def test_architecture_records_qualified_class_names():
    config = serialize.to_config(make_net())
    assert config["class"] == "gradcore.nn.containers.Sequential"
    inner = [a["__module__"]["class"] for a in config["args"]]
    assert inner == ["gradcore.nn.layers.Dense", "gradcore.nn.layers.BatchNorm", "gradcore.nn.layers.Dropout",
                     "gradcore.nn.layers.Dense"]


class Dense(nn.Dense):
    """A user's layer that happens to be called Dense: doubles the built-in output."""

    def forward(self, x):
        return super().forward(x) * 2.0


class Scale(nn.Module):
    def __init__(self, factor=3.0):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_user_class_named_dense_is_not_loaded_as_the_builtin(tmp_path):
    gradcore.manual_seed(0)
    net = nn.Sequential(Dense(3, 2, dtype=np.float64), nn.Dense(2, 2, dtype=np.float64))
    path = str(tmp_path / "user.safetensors")
    net.save(path)
    with pytest.raises(CheckpointError, match=r"unknown layer class 'test_checkpoint\.Dense'.*custom_objects"):
        gradcore.load(path)
    loaded = gradcore.load(path, custom_objects={"Dense": Dense})
    assert type(loaded[0]) is Dense and type(loaded[1]) is nn.Dense
    x = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))


def test_unknown_and_unrelated_classes_are_refused(tmp_path):
    net = nn.Sequential(Scale(2.0), nn.Dense(3, 1, dtype=np.float64))
    path = str(tmp_path / "scale.safetensors")
    net.save(path)
    with pytest.raises(CheckpointError, match="unknown layer class"):
        gradcore.load(path)
    loaded = gradcore.load(path, custom_objects={"Scale": Scale})
    assert type(loaded[0]) is Scale and loaded[0].factor == 2.0
    with pytest.raises(CheckpointError, match="must be a gradcore.nn.Module subclass"):
        gradcore.load(path, custom_objects={"Scale": dict})

    # a class name pointing anywhere else is never imported or called
    def to_os(meta):
        meta["architecture"] = meta["architecture"].replace("test_checkpoint.Scale", "os.system")
    rewrite(path, change_meta=to_os)
    with pytest.raises(CheckpointError, match="unknown layer class 'os.system'"):
        gradcore.load(path)


def test_gradcore1_checkpoint_with_bare_names_still_loads(tmp_path):
    """Files written before issue 6 recorded "Dense" etc. and Dense weights as (in, out)."""
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((3, 2)), rng.standard_normal(2)  # the old (in, out) layout
    arch = {"class": "Sequential", "args": [{"__module__": {"class": "Dense", "args": [3, 2],
                                                             "kwargs": {"dtype": {"__dtype__": "float64"}},
                                                             "dtype": "float64"}}],
            "kwargs": {}, "dtype": "float64"}
    path = str(tmp_path / "old.safetensors")
    st.save_file({"0.weight": W, "0.bias": b}, path, {"format": "gradcore-1", "architecture": json.dumps(arch)})
    net = gradcore.load(path)
    assert type(net[0]) is nn.Dense
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(net.predict(x), x @ W + b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- refused before anything is built
def test_tensor_of_another_dtype_is_refused_before_building(tmp_path, no_module_built):
    _, path = trained(tmp_path)
    rewrite(path, change_tensors=lambda t: t.update({"0.weight": t["0.weight"].astype(np.float32)}))
    del no_module_built[:]
    with pytest.raises(CheckpointError, match=r"'0\.weight' is float32 but the architecture is float64"):
        gradcore.load(path)
    assert no_module_built == []


def test_optimizer_state_of_another_dtype_is_refused(tmp_path):
    _, path = trained(tmp_path)

    def to_float32(tensors):
        name = next(k for k in tensors if k.startswith("optimizer/") and k.endswith("/m"))
        tensors[name] = tensors[name].astype(np.float32)
    rewrite(path, change_tensors=to_float32)
    with pytest.raises(CheckpointError, match=r"optimizer state .*/m': expected \(\d+,\) float64, the file holds "
                                              r"\(\d+,\) float32"):
        gradcore.load(path)


def test_unknown_optimizer_is_refused_before_building(tmp_path, no_module_built):
    _, path = trained(tmp_path)

    def rename(meta):
        meta["optimizer"] = meta["optimizer"].replace('"class": "Adam"', '"class": "Lion"')
    rewrite(path, change_meta=rename)
    del no_module_built[:]
    with pytest.raises(CheckpointError, match="unknown optimizer 'Lion'"):
        gradcore.load(path)
    assert no_module_built == []


def test_load_weights_refuses_another_dtype_and_leaves_the_network(tmp_path):
    _, path = trained(tmp_path)
    target = make_net(seed=5, dtype=np.float32)
    before = state_bytes(target)
    with pytest.raises(CheckpointError, match="expected dtype float32, got float64"):
        target.load_weights(path)
    assert state_bytes(target) == before


@pytest.mark.parametrize("key, value, message", [
    ("v", -1e-3, "negative values"),
    ("v_max", -1e-3, "negative values"),
    ("m", np.nan, "non-finite"),
    ("m", np.inf, "non-finite"),
    ("v", np.nan, "non-finite"),
    ("steps", -3, "negative counts"),
])
def test_bad_optimizer_state_is_refused(tmp_path, no_module_built, key, value, message):
    _, path = trained(tmp_path)

    def poison(tensors):
        name = next(k for k in tensors if k.startswith("optimizer/") and k.rsplit("/", 1)[-1] == key)
        arr = tensors[name].copy()
        arr.reshape(-1)[0] = value
        tensors[name] = arr
    rewrite(path, change_tensors=poison)
    del no_module_built[:]
    with pytest.raises(CheckpointError, match=message):
        gradcore.load(path)
    assert no_module_built == []


def test_state_check_follows_names_not_layout():
    """The optimizer check is driven by the state tree's names (gradcore's and torch's)."""
    serialize.check_optimizer_state({"state": {0: {"step": 3.0, "exp_avg": np.array([-1.0]),
                                                  "exp_avg_sq": np.array([2.0])}}})
    with pytest.raises(CheckpointError, match="exp_avg_sq"):
        serialize.check_optimizer_state({"state": {0: {"exp_avg_sq": np.array([-2.0])}}})
    with pytest.raises(CheckpointError, match="step count"):
        serialize.check_optimizer_state({"state": {0: {"step": -1}}})
    with pytest.raises(CheckpointError, match="step count"):
        serialize.check_optimizer_state({"skipped_steps": -2})
    with pytest.raises(CheckpointError, match="square_avg"):
        serialize.check_optimizer_state({"buffers": [{"state": {"square_avg": np.array([0.0, -1.0])}}]})


@pytest.mark.parametrize("opt_name, key", [("rmsprop", "square_avg"), ("adagrad", "sum")])
def test_negative_accumulators_of_other_optimizers_are_refused(tmp_path, opt_name, key):
    _, path = trained(tmp_path, opt=opt_name)

    def poison(tensors):
        name = next(k for k in tensors if k.endswith("/" + key))
        tensors[name] = -np.abs(tensors[name]) - 1.0
    rewrite(path, change_tensors=poison)
    with pytest.raises(CheckpointError, match="negative"):
        gradcore.load(path)


def test_negative_running_var_is_refused(tmp_path):
    _, path = trained(tmp_path)

    def poison(tensors):
        tensors["1.running_var"] = tensors["1.running_var"].copy()
        tensors["1.running_var"][2] = -0.5
    rewrite(path, change_tensors=poison)
    with pytest.raises(CheckpointError, match=r"'1\.running_var' holds a negative variance"):
        gradcore.load(path)
    target = make_net(seed=3)
    before = state_bytes(target)
    with pytest.raises(CheckpointError, match="negative variance"):
        target.load_weights(path)
    assert state_bytes(target) == before


def test_shape_whose_product_overflows_int64_is_refused(tmp_path):
    # 2**33 * 2**33 wraps to 0 in int64, which would match an empty data region
    header = json.dumps({"w": {"dtype": "F64", "shape": [2 ** 33, 2 ** 33], "data_offsets": [0, 0]}}).encode()
    header += b" " * (-len(header) % 8)
    path = str(tmp_path / "overflow.safetensors")
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="overflow int64"):
        st.load_file(path)


def test_architecture_larger_than_the_file_is_refused_before_building(tmp_path, no_module_built):
    """A Dense of 10**7 x 10**7 (800 TB) in the architecture, three values in the file."""
    _, path = trained(tmp_path)

    def huge(meta):
        arch = json.loads(meta["architecture"])
        arch["args"][3]["__module__"]["args"] = [10 ** 7, 10 ** 7]
        meta["architecture"] = json.dumps(arch)
    rewrite(path, change_meta=huge)
    del no_module_built[:]
    with pytest.raises(CheckpointError, match=r"needs at least 100000\d+ values but the file holds"):
        gradcore.load(path)
    assert no_module_built == []


def test_lower_bound_of_the_size_is_exact_for_builtin_layers():
    net = nn.Sequential(nn.Dense(4, 6), nn.BatchNorm(6), nn.LayerNorm((2, 3)), nn.PReLU(6),
                        nn.Dense(6, 2, use_bias=False), dtype=np.float64)
    config = json.loads(json.dumps(serialize.to_config(net)))
    builtins = serialize.builtin_classes()
    size = serialize.minimum_size(config, lambda n: builtins[n])
    # the exact count, minus integer buffers (BatchNorm may hold num_batches_tracked)
    assert size == sum(v.size for v in net.state_dict().values() if v.dtype.kind == "f")


def test_nesting_deeper_than_the_limit_is_refused(tmp_path):
    _, path = trained(tmp_path)

    def deep_lists(meta):
        meta["architecture"] = "[" * 100000 + "]" * 100000
    rewrite(path, change_meta=deep_lists)
    with pytest.raises(CheckpointError, match="architecture"):
        gradcore.load(path)

    dense = {"class": "gradcore.nn.layers.Dense", "args": [4, 1], "kwargs": {"dtype": {"__dtype__": "float64"}},
             "dtype": "float64"}
    arch = dense
    for _ in range(serialize.MAX_DEPTH):
        arch = {"class": "gradcore.nn.containers.Sequential", "args": [{"__module__": arch}], "kwargs": {},
                "dtype": "float64"}
    st.save_file({"0.weight": np.zeros((4, 1)), "0.bias": np.zeros(1)}, path,
                 {"format": serialize.FORMAT, "architecture": json.dumps(arch)})
    with pytest.raises(CheckpointError, match="nests deeper than"):
        gradcore.load(path)


@pytest.mark.parametrize("cut", [3, 100, -1, -40])
def test_truncated_checkpoint_is_refused(tmp_path, cut):
    _, path = trained(tmp_path)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:cut])
    with pytest.raises(CheckpointError):
        gradcore.load(path)


# ---------------------------------------------------------------------- checksum
def _data_start(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return raw, 8 + n, json.loads(raw[8:8 + n])


def test_flipped_byte_in_tensor_data_is_detected_by_the_checksum(tmp_path):
    _, path = trained(tmp_path)
    gradcore.load(path)  # intact: loads
    raw, start, header = _data_start(path)
    begin, _ = header["0.weight"]["data_offsets"]
    damaged = bytearray(raw)
    damaged[start + begin] ^= 0x01  # lowest mantissa bit of the first weight: still a valid number
    with open(path, "wb") as f:
        f.write(damaged)
    with pytest.raises(CheckpointError, match="checksum"):
        gradcore.load(path)
    with pytest.raises(CheckpointError, match="checksum"):
        make_net().load_weights(path)


def test_files_without_a_checksum_still_load(tmp_path):
    """Files written by the safetensors package (which knows no checksum) still read; a
    gradcore-2 checkpoint re-written without its checksum is refused (it cannot be verified)."""
    sn = pytest.importorskip("safetensors.numpy")
    net, path = trained(tmp_path)
    tensors, meta = st.load_file(path)
    plain = str(tmp_path / "plain.safetensors")
    sn.save_file(tensors, plain, metadata={"note": "written by the safetensors package"})
    got, got_meta = st.load_file(plain)
    assert got_meta == {"note": "written by the safetensors package"}
    assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in tensors.items()}
    sn.save_file(tensors, path, metadata=meta)
    assert "checksum" not in json.loads(open(path, "rb").read()[8:8 + int.from_bytes(open(path, "rb").read()[:8],
                                                                                          "little")])["__metadata__"]
    with pytest.raises(CheckpointError, match="gradcore-2 file must carry its 'checksum'"):
        gradcore.load(path)


def test_npz_checkpoint_with_a_flipped_byte_is_refused(tmp_path):
    _, path = trained(tmp_path, name="net.npz")
    raw = bytearray(open(path, "rb").read())
    i = raw.index(b"t:0.weight") + 200  # inside that member's data
    raw[i] ^= 0x01
    with open(path, "wb") as f:
        f.write(raw)
    with pytest.raises(CheckpointError):
        gradcore.load(path)


# ---------------------------------------------------------------------- atomic writes
def test_save_failing_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    net, path = trained(tmp_path)
    before = open(path, "rb").read()

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        net.save(path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


class Unsaveable:
    """A loss whose configuration holds something JSON cannot express."""

    def __call__(self, prediction, target):
        return gradcore.losses.MSE()(prediction, target)

    def get_config(self):
        return {"name": "unsaveable", "table": object()}


def test_unserialisable_value_fails_the_save_and_keeps_the_previous_checkpoint(tmp_path):
    net, path = trained(tmp_path)
    before = open(path, "rb").read()
    net.loss = Unsaveable()
    if getattr(net, "compile_config", None) is not None:
        net.compile_config = dict(net.compile_config, loss=net.loss.get_config())
    with pytest.raises(TypeError, match="cannot be written to a checkpoint"):
        net.save(path)
    assert open(path, "rb").read() == before
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


# ---------------------------------------------------------------------- no random initialisation
def test_load_does_not_draw_from_the_random_stream(tmp_path, monkeypatch):
    _, path = trained(tmp_path)
    gradcore.manual_seed(123)
    expected = gradcore.random.generator().standard_normal(8)

    def no_sampling(self, shape, rng):
        raise AssertionError(f"{self.name} drew random values while loading")
    monkeypatch.setattr(nn.init.Initializer, "sample", no_sampling)
    gradcore.manual_seed(123)
    gradcore.load(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(gradcore.random.generator().standard_normal(8), expected)


def test_skip_initialization_gives_zeros_and_is_scoped():
    gradcore.manual_seed(0)
    with nn.init.skip_initialization():
        assert nn.init.initialization_skipped()
        layer = nn.Dense(300, 200, dtype=np.float64)
        custom = nn.init.get(lambda shape, dtype, rng: rng.standard_normal(shape))((3, 2), np.float64)
    assert not nn.init.initialization_skipped()
    assert not layer.weight.data.any() and not custom.any()
    gradcore.manual_seed(0)
    after = nn.Dense(300, 200, dtype=np.float64)
    assert after.weight.data.std() > 0.01  # initialisation works again outside the block


# ---------------------------------------------------------------------- resuming fit
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_fit_resumes_from_a_checkpoint_as_if_uninterrupted(tmp_path, suffix):
    X, y = data(n=64)

    def compiled():
        net = make_net(seed=7, head="sigmoid")
        net.compile(optim.Adam(net.parameters(), lr=0.02), "binary_crossentropy", ["accuracy"])
        return net

    gradcore.manual_seed(11)
    straight = compiled()
    full = straight.fit(X, y, epochs=3, batch_size=16, verbose=0)

    gradcore.manual_seed(11)
    first = compiled()
    first.fit(X, y, epochs=2, batch_size=16, verbose=0)
    path = str(tmp_path / f"resume{suffix}")
    first.save(path)
    resumed = gradcore.load(path)
    assert resumed.loss.get_config() == straight.loss.get_config()
    assert [name for name, _ in resumed._metrics] == [name for name, _ in straight._metrics]
    last = resumed.fit(X, y, epochs=1, batch_size=16, verbose=0)

    for key, value in straight.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[key], value, rtol=1e-12, atol=1e-12, err_msg=key)
    assert set(last.history) == set(full.history)
    for key in full.history:
        np.testing.assert_allclose(last.history[key][-1], full.history[key][-1], rtol=1e-12, err_msg=key)
    np.testing.assert_array_equal(resumed.evaluate(X, y, return_dict=True)["accuracy"],
                                  straight.evaluate(X, y, return_dict=True)["accuracy"])


def test_compile_configuration_without_optimizer_state(tmp_path):
    net = make_net()
    net.compile(optim.SGD(net.parameters(), lr=0.05, momentum=0.5), "mse", ["accuracy"])
    path = str(tmp_path / "noopt.safetensors")
    net.save(path, include_optimizer=False)
    loaded = gradcore.load(path)
    assert type(loaded.optimizer) is optim.SGD
    assert loaded.optimizer.get_config() == net.optimizer.get_config()
    assert loaded.optimizer.iterations == 0
    assert [name for name, _ in loaded._metrics] == ["accuracy"]


def my_loss(prediction, target):
    return gradcore.losses.MSE()(prediction, target) * 2.0


def test_custom_loss_needs_custom_objects(tmp_path):
    net = make_net()
    net.compile("sgd", my_loss)
    path = str(tmp_path / "custom.safetensors")
    net.save(path)
    with pytest.raises(CheckpointError, match="my_loss.*custom_objects"):
        gradcore.load(path)
    assert gradcore.load(path, custom_objects={"my_loss": my_loss}).loss is my_loss
    plain = gradcore.load(path, compile=False)
    assert plain.loss is None


class TwoPart(nn.Module):
    """A user's outer module (not a container that settles one dtype) over a float64 layer."""

    def __init__(self, width=3):
        super().__init__()
        self.body = nn.Dense(width, 2, dtype=np.float64)
        self.head = Scale(0.5)

    def forward(self, x):
        return self.head(self.body(x))


def test_user_outer_module_round_trips_with_custom_objects(tmp_path):
    gradcore.manual_seed(2)
    net = TwoPart(3)
    path = str(tmp_path / "two.safetensors")
    net.save(path)
    loaded = gradcore.load(path, custom_objects={"TwoPart": TwoPart, "Scale": Scale})
    assert state_bytes(loaded) == state_bytes(net)
    x = np.random.default_rng(1).standard_normal((4, 3))
    np.testing.assert_array_equal(loaded(x).data, net(x).data)


def test_optimizer_state_tree_keeps_integer_keys_and_checks_through_them():
    """A torch-style state_dict ({param index: {...}}) survives the JSON tree unchanged."""
    state = {"state": {0: {"step": 4, "exp_avg": np.array([-1.0, 2.0]), "exp_avg_sq": np.array([1.0, 4.0])},
                       1: {"step": 4, "exp_avg": np.zeros(3), "exp_avg_sq": np.ones(3)}},
             "param_groups": [{"lr": 0.1, "betas": [0.9, 0.999], "params": [0, 1]}]}
    tensors = {}
    tree = json.loads(json.dumps(serialize._flatten_state(state, "optimizer/", tensors)))
    back = serialize._unflatten_state(tree, tensors)
    assert set(back["state"]) == {0, 1}
    np.testing.assert_array_equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["param_groups"] == state["param_groups"]
    serialize.check_optimizer_state(back)
    tensors["optimizer/state/1/exp_avg_sq"][1] = -1.0
    with pytest.raises(CheckpointError, match="state/1/exp_avg_sq"):
        serialize.check_optimizer_state(serialize._unflatten_state(tree, tensors))


class Counted(nn.Module):
    """A module with a 0-d int64 buffer, like torch's BatchNorm ``num_batches_tracked``."""

    def __init__(self, n=3):
        super().__init__()
        self.lin = nn.Dense(n, 2, dtype=np.float64)
        self.register_buffer("num_batches_tracked", np.array(5, dtype=np.int64))

    def forward(self, x):
        return self.lin(x)


def test_zero_dim_integer_buffer_round_trips_and_is_checked(tmp_path):
    path = str(tmp_path / "counted.safetensors")
    st.save_file({"n": np.array(7, dtype=np.int64)}, path)
    assert st.load_file(path)[0]["n"].shape == ()
    Counted().save(path)
    loaded = gradcore.load(path, custom_objects={"Counted": Counted})
    assert loaded.num_batches_tracked.shape == () and loaded.num_batches_tracked.dtype == np.int64
    assert int(loaded.num_batches_tracked) == 5
    rewrite(path, change_tensors=lambda t: t.update({"num_batches_tracked": np.array(-1, dtype=np.int64)}))
    with pytest.raises(CheckpointError, match="num_batches_tracked' holds a negative count"):
        gradcore.load(path, custom_objects={"Counted": Counted})


class ScaledMSE(gradcore.losses.Loss):
    """A user's Loss class with one argument (rebuilt from its config via custom_objects)."""

    def __init__(self, factor=1.0):
        self.factor = factor

    def __call__(self, prediction, target):
        return gradcore.losses.MSE()(prediction, target) * self.factor

    def arguments(self):
        return {"factor": self.factor}


def test_custom_loss_class_is_rebuilt_with_its_arguments(tmp_path):
    net = make_net()
    net.compile("sgd", ScaledMSE(3.0))
    path = str(tmp_path / "scaled.safetensors")
    net.save(path)
    with pytest.raises(CheckpointError, match="ScaledMSE.*custom_objects"):
        gradcore.load(path)
    loaded = gradcore.load(path, custom_objects={"ScaledMSE": ScaledMSE})
    assert type(loaded.loss) is ScaledMSE and loaded.loss.factor == 3.0
