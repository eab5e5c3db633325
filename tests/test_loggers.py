"""monitor.CSVLogger, monitor.TensorBoardLogger and the event-file format of _tfevents.

Oracles: the CRC-32C check values of RFC 3720 and a bit-at-a-time CRC written here;
np.histogram for the histograms; TensorBoard's own EventAccumulator and CRC when
tensorboard is installed; the csv module for the CSV files; fit's History for the epoch logs.
"""
import csv
import math
import os
import struct
from types import SimpleNamespace

import numpy as np
import pytest

import gradcore
from gradcore import nn, optim
from gradcore.monitor import CSVLogger, TensorBoardLogger, read_tfevents
from gradcore.monitor import _tfevents


def bitwise_crc32c(data: bytes) -> int:
    """CRC-32C one bit at a time (reflected polynomial 0x82F63B78), no table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def tiny_net(dtype=np.float64, seed=0):
    gradcore.manual_seed(seed)
    return nn.Sequential(nn.Dense(4, 5, activation="relu", dtype=dtype), nn.Dense(5, 3, dtype=dtype))


def with_grads(net, seed=1):
    """The net after one backward pass of a cross-entropy loss (gradients set)."""
    rng = np.random.default_rng(seed)
    dtype = net.parameters()[0].dtype
    X, y = rng.standard_normal((8, 4)).astype(dtype), rng.integers(0, 3, 8)
    net.zero_grad()
    gradcore.functional.cross_entropy(net(gradcore.Tensor(X)), y).backward()
    return net


def fake_monitor(net, histograms=None):
    """What a logger uses of a GradientMonitor: ``net`` and ``histograms``."""
    return SimpleNamespace(net=net, histograms=histograms or {})


ROWS = [("", "loss", 1.25), ("", "grad_norm", 3.5), ("0", "weight.grad_norm", 0.125),
        ("0", "act_mean", float("nan")), ("1", "dz_max", float("inf")), ("1", "act_min", -float("inf")),
        ("1", "weight.update_ratio", 1.0e-7)]


# ---------------------------------------------------------------------------- CRC32C
def test_crc32c_known_answers():
    """The standard check value and RFC 3720 (iSCSI) B.4 vectors."""
    assert _tfevents.crc32c(b"123456789") == 0xE3069283
    assert _tfevents.crc32c(b"") == 0
    assert _tfevents.crc32c(bytes(32)) == 0x8A9136AA
    assert _tfevents.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert _tfevents.crc32c(bytes(range(32))) == 0x46DD794E
    assert _tfevents.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_crc32c_matches_bitwise_reference_and_continues():
    rng = np.random.default_rng(0)
    for n in (1, 7, 64, 300):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _tfevents.crc32c(data) == bitwise_crc32c(data)
        assert _tfevents.crc32c(data[n // 2:], _tfevents.crc32c(data[:n // 2])) == bitwise_crc32c(data)
        crc = bitwise_crc32c(data)
        assert _tfevents.masked_crc32c(data) == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2 ** 32


def test_masked_crc_matches_tensorboard():
    stub = pytest.importorskip("tensorboard.compat.tensorflow_stub.pywrap_tensorflow")
    for data in (b"", b"123456789", bytes(range(256)) * 3):
        assert _tfevents.masked_crc32c(data) == stub.masked_crc32c(data)


def test_record_framing():
    data = b"an event"
    rec = _tfevents.frame_record(data)
    assert len(rec) == 8 + 4 + len(data) + 4
    assert struct.unpack("<Q", rec[:8])[0] == len(data)
    assert struct.unpack("<I", rec[8:12])[0] == _tfevents.masked_crc32c(rec[:8])
    assert rec[12:-4] == data
    assert struct.unpack("<I", rec[-4:])[0] == _tfevents.masked_crc32c(data)


# ---------------------------------------------------------------------------- event files
def test_event_file_name_and_file_version(tmp_path):
    logdir = tmp_path / "new" / "run"
    with TensorBoardLogger(logdir) as log:
        name = os.path.basename(log.path)
        assert os.path.dirname(log.path) == str(logdir)
    prefix, _, rest = name.partition("events.out.tfevents.")
    assert prefix == "" and rest.endswith(f".{os.getpid()}.gradcore")
    assert rest.split(".")[0].isdigit()
    with open(log.path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    first = data[12:12 + length]
    assert b"brain.Event:2" in first
    assert read_tfevents(log.path) == []  # the version event holds no summary values


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_written_scalars_and_histograms_read_back(tmp_path, dtype):
    net = with_grads(tiny_net(dtype))
    act_counts, act_edges = np.histogram(np.random.default_rng(3).standard_normal(40), bins=30)
    mon = fake_monitor(net, {"0": [(6, "activation", np.zeros(30), act_edges), (7, "activation", act_counts, act_edges),
                                   (7, "weight", np.ones(30), act_edges)]})
    with TensorBoardLogger(tmp_path) as log:
        log.write_step(mon, 7, ROWS)
    events = read_tfevents(tmp_path)
    assert {e["step"] for e in events} == {7}
    scalars = {e["tag"]: e["value"] for e in events if "value" in e}
    expected = {(layer or "train") + "/" + metric: float(np.float32(v)) for layer, metric, v in ROWS}
    assert scalars.keys() == expected.keys()
    for tag, value in expected.items():
        assert scalars[tag] == value or (math.isnan(value) and math.isnan(scalars[tag]))
    hists = {e["tag"]: e["histogram"] for e in events if "histogram" in e}
    names = [name for name, _ in net.named_parameters()]
    assert set(hists) == ({n.replace(".", "/") for n in names} | {n.replace(".", "/") + ".grad" for n in names}
                          | {"0/activation"})
    for name, p in net.named_parameters():
        for tag, array in ((name.replace(".", "/"), p.data), (name.replace(".", "/") + ".grad", p.grad)):
            h, (counts, edges) = hists[tag], np.histogram(array, bins=30)
            assert h["bucket"].sum() == array.size == h["num"]
            np.testing.assert_array_equal(h["bucket"], counts)
            np.testing.assert_array_equal(h["bucket_limit"], edges[1:])
            assert h["min"] == array.min() and h["max"] == array.max()
            np.testing.assert_allclose([h["sum"], h["sum_squares"]],
                                       [array.astype(np.float64).sum(), (array.astype(np.float64) ** 2).sum()],
                                       rtol=1e-12)
    act = hists["0/activation"]  # only step 7's activation entry, not its "weight" or step 6's
    np.testing.assert_array_equal(act["bucket"], act_counts)
    np.testing.assert_array_equal(act["bucket_limit"], act_edges[1:])
    assert act["min"] == act_edges[0] and act["num"] == 40


def test_tensorboard_event_accumulator_reads_our_files(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    net = with_grads(tiny_net(np.float32))
    mon = fake_monitor(net)
    with TensorBoardLogger(tmp_path, flush_secs=0) as log:
        for step in (0, 3):
            log.write_step(mon, step, [(layer, metric, v * (step + 1)) for layer, metric, v in ROWS])
    acc = ea.EventAccumulator(str(tmp_path), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
    acc.Reload()
    ours = read_tfevents(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == sorted({e["tag"] for e in ours if "value" in e})
    for layer, metric, v in ROWS:
        got = acc.Scalars(f"{layer or 'train'}/{metric}")
        assert [s.step for s in got] == [0, 3]
        np.testing.assert_array_equal([s.value for s in got], np.float32([v, 4 * v]))
    weight = dict(net.named_parameters())["1.weight"].data
    hist = {h.step: h.histogram_value for h in acc.Histograms("1/weight")}
    counts, edges = np.histogram(weight, bins=30)
    assert sorted(hist) == [0, 3]
    np.testing.assert_array_equal(hist[3].bucket, counts)
    np.testing.assert_array_equal(hist[3].bucket_limit, edges[1:])
    assert hist[3].num == weight.size and hist[3].min == weight.min()


def test_scalars_beyond_float32_and_nonfinite_histograms(tmp_path):
    net = tiny_net()
    params = dict(net.named_parameters())
    w = params["0.weight"]
    w.data[0, :2] = [np.nan, np.inf]  # histogram of the finite entries only
    params["0.bias"].grad = np.full(5, np.nan)  # nothing finite: no histogram
    with TensorBoardLogger(tmp_path) as log:
        log.write_step(fake_monitor(net), 1, [("", "grad_norm", 1e40), ("", "loss", -1e300)])
    events = read_tfevents(tmp_path)
    assert [e["value"] for e in events if "value" in e] == [math.inf, -math.inf]
    hists = {e["tag"]: e["histogram"] for e in events if "histogram" in e}
    finite = w.data[np.isfinite(w.data)]
    assert hists["0/weight"]["num"] == finite.size == w.size - 2
    np.testing.assert_array_equal(hists["0/weight"]["bucket"], np.histogram(finite, bins=30)[0])
    assert "0/bias.grad" not in hists and "0/weight.grad" not in hists  # no backward ran


def test_histograms_off_and_bins(tmp_path):
    net = with_grads(tiny_net())
    with TensorBoardLogger(tmp_path / "off", histograms=False) as log:
        log.write_step(fake_monitor(net), 0, ROWS)
    assert all("value" in e for e in read_tfevents(tmp_path / "off"))
    with TensorBoardLogger(tmp_path / "b7", bins=7) as log:
        log.write_step(fake_monitor(net), 0, [])
    sizes = {e["histogram"]["bucket"].size for e in read_tfevents(tmp_path / "b7")}
    assert sizes == {7}
    with TensorBoardLogger(tmp_path / "every", histogram_every=3) as log:
        for step in range(7):
            log.write_step(fake_monitor(net), step, [("", "loss", 1.0)])
    events = read_tfevents(tmp_path / "every")
    assert sorted({e["step"] for e in events if "histogram" in e}) == [0, 3, 6]
    assert sorted(e["step"] for e in events if "value" in e) == list(range(7))


def test_two_writers_in_one_logdir_get_two_files(tmp_path):
    with TensorBoardLogger(tmp_path, histograms=False) as a, TensorBoardLogger(tmp_path, histograms=False) as b:
        a.write_step(fake_monitor(None), 1, [("", "loss", 1.0)])
        b.write_step(fake_monitor(None), 2, [("", "loss", 2.0)])
        assert a.path != b.path
    assert sorted((e["step"], e["value"]) for e in read_tfevents(tmp_path)) == [(1, 1.0), (2, 2.0)]


def test_corrupt_or_missing_files_raise_clear_errors(tmp_path):
    with TensorBoardLogger(tmp_path / "run", histograms=False) as log:
        log.write_step(None, 5, ROWS)
    data = bytearray(open(log.path, "rb").read())
    bad = tmp_path / "flipped"
    flipped = bytearray(data)
    flipped[-10] ^= 0x01  # inside the last record's data
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"flipped.*data CRC of the record at byte \d+"):
        read_tfevents(bad)
    bad.write_bytes(bytes(data[:-3]))
    with pytest.raises(ValueError, match="file ends first"):
        read_tfevents(bad)
    bad.write_bytes(bytes(data) + b"\x01\x02")
    with pytest.raises(ValueError, match="truncated record header"):
        read_tfevents(bad)
    lying = bytearray(data)
    lying[0] ^= 0x40  # the first record's length no longer matches its CRC
    bad.write_bytes(bytes(lying))
    with pytest.raises(ValueError, match="length CRC"):
        read_tfevents(bad)
    bad.write_bytes(_tfevents.frame_record(b"\x0b\x02"))  # CRCs fine, wire type 3 inside
    with pytest.raises(ValueError, match="not an Event message"):
        read_tfevents(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no events.out.tfevents"):
        read_tfevents(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_tfevents(tmp_path / "nothing")
    with pytest.raises(TypeError, match="path_or_logdir"):
        read_tfevents(3)


# ---------------------------------------------------------------------------- CSV
def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [(int(s), layer, metric, float(v)) for s, layer, metric, v in rows[1:]]


def same_values(a, b):
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


def test_csv_rows_round_trip_with_nonfinite_values(tmp_path):
    path = tmp_path / "log.csv"
    steps = {0: ROWS, 4: [("1", "dz_norm", 0.1 + 0.2), ("", "loss", 1 / 3)]}
    with CSVLogger(path) as log:
        for step, rows in steps.items():
            log.write_step(None, step, rows)
    header, rows = read_csv(path)
    assert header == ["step", "layer", "metric", "value"]
    expected = [(s, layer, metric, v) for s, r in steps.items() for layer, metric, v in r]
    assert [r[:3] for r in rows] == [r[:3] for r in expected]
    assert same_values([r[3] for r in rows], [r[3] for r in expected])  # full precision: 0.1 + 0.2 exactly
    text = path.read_text()
    assert ",nan\n" in text.replace("\r\n", "\n") and ",inf" in text and ",-inf" in text
    values = np.genfromtxt(path, delimiter=",", skip_header=1, usecols=3)
    assert same_values(list(values), [r[3] for r in expected])


def test_csv_flush_every_and_append(tmp_path):
    path = tmp_path / "log.csv"
    log = CSVLogger(path, flush_every=2)
    log.write_step(None, 0, [("", "loss", 1.0)])
    assert path.read_text().strip() == "step,layer,metric,value"  # buffered
    log.write_step(None, 1, [("", "loss", 2.0)])
    assert len(path.read_text().splitlines()) == 3  # flushed after 2 steps
    log.write_step(None, 2, [("", "loss", 3.0)])
    log.close()
    with CSVLogger(path, append=True) as log:
        log.write_step(None, 3, [("", "loss", 4.0)])
    header, rows = read_csv(path)
    assert [(s, v) for s, _, _, v in rows] == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0)]
    CSVLogger(path).close()  # append=False replaces the file
    assert path.read_text().strip() == "step,layer,metric,value"
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"cannot append to .*other.csv.*header"):
        CSVLogger(other, append=True)


@pytest.mark.parametrize("make", [lambda p: CSVLogger(p / "x.csv"), lambda p: TensorBoardLogger(p, histograms=False)])
def test_writing_after_close_is_an_error(tmp_path, make):
    with make(tmp_path) as log:
        log.write_step(None, 0, [("", "loss", 1.0)])
    assert log.closed
    log.close()  # twice is fine
    with pytest.raises(ValueError, match=r"write_step after close\(\)"):
        log.write_step(None, 1, [("", "loss", 1.0)])
    with pytest.raises(ValueError, match="after close"):
        log.on_epoch_end(0, {"loss": 1.0})
    with pytest.raises(ValueError, match="after close"):
        log.on_train_begin({})


def test_bad_arguments_name_what_is_wrong(tmp_path):
    with pytest.raises(TypeError, match="CSVLogger: path"):
        CSVLogger(3)
    with pytest.raises(TypeError, match="append must be a bool"):
        CSVLogger(tmp_path / "a.csv", append="yes")
    with pytest.raises(ValueError, match="flush_every"):
        CSVLogger(tmp_path / "a.csv", flush_every=0)
    with pytest.raises(ValueError, match="flush_secs"):
        TensorBoardLogger(tmp_path, flush_secs=-1)
    with pytest.raises(ValueError, match="bins"):
        TensorBoardLogger(tmp_path, bins=0)
    with pytest.raises(TypeError, match="histogram_every"):
        TensorBoardLogger(tmp_path, histogram_every=2.5)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        TensorBoardLogger(tmp_path / "file")
    with CSVLogger(tmp_path / "b.csv") as log:
        with pytest.raises(TypeError, match=r"rows\[1\] must be a \(layer, metric, value\) triple"):
            log.write_step(None, 0, [("", "loss", 1.0), ("", "loss")])
        with pytest.raises(TypeError, match=r"rows\[0\] must be \(str, str, real number\)"):
            log.write_step(None, 0, [("", "loss", "high")])
        with pytest.raises(TypeError, match="step must be an integer"):
            log.write_step(None, 1.5, [])
    with TensorBoardLogger(tmp_path / "tb") as log:
        with pytest.raises(TypeError, match=r"histograms=True needs the monitor's network \(monitor.net\)"):
            log.write_step(object(), 0, [])


# ---------------------------------------------------------------------------- fit callbacks
def test_fit_callback_mode_logs_one_row_per_epoch_key(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 4)), rng.integers(0, 3, 60)
    net = tiny_net()
    net.compile(optim.SGD(net.parameters(), lr=0.1), loss="crossentropy", metrics=["accuracy"])
    csv_log, tb_log = CSVLogger(tmp_path / "epochs.csv"), TensorBoardLogger(tmp_path / "tb")
    history = net.fit(X, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0, callbacks=[csv_log, tb_log])
    assert csv_log.closed and tb_log.closed  # closed at the end of training
    keys = sorted(history.history)
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "lr"} <= set(keys)
    _, rows = read_csv(tmp_path / "epochs.csv")
    assert sorted((s, m) for s, _, m, _ in rows) == sorted((e, k) for e in range(3) for k in keys)
    assert {layer for _, layer, _, _ in rows} == {"epoch"}
    for s, _, metric, value in rows:
        assert same_values([value], [float(history.history[metric][s])])
    events = read_tfevents(tmp_path / "tb")
    assert sorted((e["step"], e["tag"]) for e in events) == sorted((e, "epoch/" + k) for e in range(3) for k in keys)
    for e in events:
        assert same_values([e["value"]], [float(np.float32(history.history[e["tag"][6:]][e["step"]]))])
    with pytest.raises(ValueError, match="after close"):  # a second fit needs a new logger
        net.fit(X, y, epochs=1, verbose=0, callbacks=[csv_log])
