"""monitor.CSVLogger, monitor.TensorBoardLogger and the event-file format of _tfevents.

Oracles: the CRC-32C check values of RFC 3720 and a bit-at-a-time CRC written here;
np.histogram for the histograms; TensorBoard's own EventAccumulator and CRC when
tensorboard is installed; the csv module for the CSV files; fit's History for the epoch logs.
"""
import csv
import math
import os
import struct
import warnings
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


def kept_histograms(arrays, steps):
    """``GradientMonitor.histograms`` as the brief specifies it, from np.histogram:
    {layer: [(step, kind, counts, edges), ...]} for arrays {(layer, kind): array}."""
    out = {}
    for step in steps:
        for (layer, kind), array in arrays.items():
            counts, edges = np.histogram(array * (step + 1), bins=30)
            out.setdefault(layer, []).append((step, kind, counts, edges))
    return out


def fake_monitor(histograms=None):
    """What a TensorBoardLogger uses of a GradientMonitor: ``histograms``."""
    return SimpleNamespace(histograms=histograms or {})


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
    rng = np.random.default_rng(0)
    arrays = {("0", "activation"): np.maximum(rng.standard_normal((8, 5)), 0).astype(dtype),
              ("0", "weight"): rng.standard_normal((5, 4)).astype(dtype),
              ("0", "grad"): (1e-3 * rng.standard_normal((5, 4))).astype(dtype),
              ("1", "weight"): np.full((3, 5), 0.25, dtype)}  # one value: np.histogram's range is +-0.5
    mon = fake_monitor(kept_histograms(arrays, steps=[6, 7, 8]))
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
    names = {"activation": "activation", "weight": "weight", "grad": "weight.grad"}
    assert set(hists) == {f"{layer}/{names[kind]}" for layer, kind in arrays}
    for (layer, kind), array in arrays.items():  # step 7's only: the arrays times 8
        h, (counts, edges) = hists[f"{layer}/{names[kind]}"], np.histogram(array * 8, bins=30)
        assert h["bucket"].sum() == array.size == h["num"]
        np.testing.assert_array_equal(h["bucket"], counts)
        np.testing.assert_array_equal(h["bucket_limit"], edges[1:])
        assert (h["min"], h["max"]) == (edges[0], edges[-1])
        assert math.isnan(h["sum"]) and math.isnan(h["sum_squares"])  # unknown from counts alone


def test_tensorboard_event_accumulator_reads_our_files(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    weight = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    mon = fake_monitor(kept_histograms({("1", "weight"): weight}, steps=[0, 3]))
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
    assert acc.Tags()["histograms"] == ["1/weight"]
    hist = {h.step: h.histogram_value for h in acc.Histograms("1/weight")}
    assert sorted(hist) == [0, 3]
    counts, edges = np.histogram(weight * 4, bins=30)
    np.testing.assert_array_equal(hist[3].bucket, counts)
    np.testing.assert_array_equal(hist[3].bucket_limit, edges[1:])
    assert hist[3].num == weight.size and hist[3].min == edges[0] and hist[3].max == edges[-1]


def test_scalars_beyond_float32_are_infinite(tmp_path):
    with TensorBoardLogger(tmp_path, histograms=False) as log:
        log.write_step(None, 1, [("", "grad_norm", 1e40), ("", "loss", -1e300), ("0", "dz_max", 3e38)])
    assert [e["value"] for e in read_tfevents(tmp_path)] == [math.inf, -math.inf, float(np.float32(3e38))]


def test_histograms_off_every_and_missing(tmp_path):
    mon = fake_monitor(kept_histograms({("0", "weight"): np.arange(6.0)}, steps=range(7)))
    with TensorBoardLogger(tmp_path / "off", histograms=False) as log:
        log.write_step(mon, 0, ROWS)
    assert all("value" in e for e in read_tfevents(tmp_path / "off"))
    with TensorBoardLogger(tmp_path / "every", histogram_every=3) as log:
        for step in range(7):
            log.write_step(mon, step, [("", "loss", 1.0)])
    events = read_tfevents(tmp_path / "every")
    assert [e["step"] for e in events if "histogram" in e] == [0, 3, 6]
    assert [e["step"] for e in events if "value" in e] == list(range(7))
    with TensorBoardLogger(tmp_path / "none") as log:  # the monitor keeps none: say so once
        with pytest.warns(UserWarning, match=r"keeps no histograms: create it with GradientMonitor\(\.\.\., histograms=True\)"):
            log.write_step(fake_monitor(), 0, ROWS)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            log.write_step(fake_monitor(), 1, ROWS)
    assert all("value" in e for e in read_tfevents(tmp_path / "none"))


def test_two_writers_in_one_logdir_get_two_files(tmp_path):
    with TensorBoardLogger(tmp_path, histograms=False) as a, TensorBoardLogger(tmp_path, histograms=False) as b:
        a.write_step(None, 1, [("", "loss", 1.0)])
        b.write_step(None, 2, [("", "loss", 2.0)])
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
    with pytest.raises(TypeError, match="histogram_every"):
        TensorBoardLogger(tmp_path, histogram_every=2.5)
    with pytest.raises(TypeError, match="histograms must be a bool"):
        TensorBoardLogger(tmp_path, histograms=1)
    with pytest.raises(ValueError, match="3 counts need 4 edges, got 3"):
        _tfevents.histogram_from_counts(np.ones(3), np.arange(3.0))
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


# ---------------------------------------------------------------------------- with a GradientMonitor
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_monitor_streams_its_history_and_histograms(tmp_path, dtype):
    from gradcore.monitor import GradientMonitor, MonitorHistory
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((48, 4)).astype(dtype), rng.integers(0, 3, 48)
    net = tiny_net(dtype)
    net.compile(optim.SGD(net.parameters(), lr=0.1), loss="crossentropy")
    loggers = [CSVLogger(tmp_path / "steps.csv"), TensorBoardLogger(tmp_path / "tb")]
    mon = GradientMonitor(net, loggers=loggers, histograms=True)
    epoch_log = CSVLogger(tmp_path / "epochs.csv")
    history = net.fit(X, y, epochs=2, batch_size=16, verbose=0, callbacks=[mon, epoch_log])
    assert all(log.closed for log in loggers + [epoch_log])
    h = mon.history
    assert len(h) > 0 and h.steps().tolist() == list(range(6))

    _, rows = read_csv(tmp_path / "steps.csv")  # the CSV is the monitor's history, row for row
    assert [r[:3] for r in rows] == list(zip(h.step.tolist(), h.layer.tolist(), h.metric.tolist()))
    assert same_values([r[3] for r in rows], h.value.tolist())
    back = MonitorHistory.from_csv(tmp_path / "steps.csv")
    np.testing.assert_array_equal(back.value, h.value)

    events = read_tfevents(tmp_path / "tb")  # the scalars too, rounded to float32
    scalars = [(e["step"], e["tag"], e["value"]) for e in events if "value" in e]
    expected = [(s, f"{layer or 'train'}/{metric}", float(np.float32(v)))
                for s, layer, metric, v in zip(h.step.tolist(), h.layer.tolist(), h.metric.tolist(), h.value.tolist())]
    assert [s[:2] for s in scalars] == [e[:2] for e in expected]
    assert same_values([s[2] for s in scalars], [e[2] for e in expected])
    assert {"train/loss", "0/weight.grad_norm", "1/dz_norm"} <= {tag for _, tag, _ in scalars}

    hists = {(e["step"], e["tag"]): e["histogram"] for e in events if "histogram" in e}
    names = {"activation": "activation", "weight": "weight", "grad": "weight.grad"}
    kept = [(layer, step, kind, counts, edges) for layer, entries in mon.histograms.items()
            for step, kind, counts, edges in entries]
    assert len(hists) == len(kept) == 6 * 2 * 3  # steps x layers x (activation, weight, grad)
    sizes = {name: p.size for name, p in net.named_parameters()}
    for layer, step, kind, counts, edges in kept:
        got = hists[(step, f"{layer}/{names[kind]}")]
        np.testing.assert_array_equal(got["bucket"], counts)
        np.testing.assert_array_equal(got["bucket_limit"], edges[1:])
        if kind != "activation":
            assert got["num"] == sizes[f"{layer}.weight"]

    _, rows = read_csv(tmp_path / "epochs.csv")  # beside the monitor, a logger as a plain callback
    assert sorted((s, m) for s, _, m, _ in rows) == sorted((e, k) for e in range(2) for k in history.history)


def test_hand_written_loop_logs_every_recorded_step(tmp_path):
    from gradcore.monitor import GradientMonitor
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    net = tiny_net()
    opt = optim.SGD(net.parameters(), lr=0.1)
    with GradientMonitor(net, every=2, loggers=[CSVLogger(tmp_path / "loop.csv", flush_every=3)]) as mon:
        for _ in range(5):
            opt.zero_grad()
            loss = gradcore.functional.cross_entropy(net(gradcore.Tensor(X)), y)
            loss.backward()
            mon.record(loss)
            opt.step()
    _, rows = read_csv(tmp_path / "loop.csv")  # the last step is written when the monitor closes
    h = mon.history
    assert sorted({r[0] for r in rows}) == [0, 2, 4] == h.steps().tolist()
    assert [r[:3] for r in rows] == list(zip(h.step.tolist(), h.layer.tolist(), h.metric.tolist()))
    assert same_values([r[3] for r in rows], h.value.tolist())


def test_crc32c_kernel_input_forms_and_errors():
    """The kernel takes any contiguous bytes-like object (bytes, bytearray, memoryview,
    a NumPy array's bytes), sees every length modulo its 8-byte fold, and refuses
    strided memory."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    for n in range(0, 20):
        chunk = data[n:n + 37 + n]
        want = bitwise_crc32c(chunk)
        assert _tfevents.crc32c(chunk) == want
        assert _tfevents.crc32c(bytearray(chunk)) == want
        assert _tfevents.crc32c(memoryview(chunk)) == want
    arr = np.frombuffer(data, np.uint8)
    assert _tfevents.crc32c(arr) == bitwise_crc32c(data)
    for strided in (arr.reshape(100, 10)[:, ::2], arr.reshape(100, 10)[::2, :], arr[::3]):
        with pytest.raises(ValueError, match="contiguous"):
            _tfevents.crc32c(strided)
    with pytest.raises(TypeError):
        _tfevents.crc32c("text")
