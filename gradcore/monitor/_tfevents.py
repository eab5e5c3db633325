"""TensorBoard event files, written and read without TensorFlow or protobuf.

An event file is a sequence of TFRecords, each framing one serialized ``Event`` message:

    uint64 length (little-endian) | uint32 masked CRC32C of those 8 bytes
    | length bytes of data       | uint32 masked CRC32C of the data

where CRC32C is the Castagnoli CRC (reflected polynomial 0x82F63B78) and the mask is
``((crc >> 15) | (crc << 17)) + 0xa282ead8`` modulo 2**32. The messages are encoded here
by hand from their field numbers (TensorBoard's ``event.proto``, ``summary.proto``,
``histogram.proto``):

    Event          wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
                   summary = 5 (Summary)
    Summary        value = 1 (repeated Summary.Value)
    Summary.Value  tag = 1 (string), simple_value = 2 (float), histo = 5 (HistogramProto)
    HistogramProto min = 1, max = 2, num = 3, sum = 4, sum_squares = 5 (doubles),
                   bucket_limit = 6, bucket = 7 (packed repeated doubles)

A histogram's bucket ``i`` counts the values in (bucket_limit[i-1], bucket_limit[i]]; the
first bucket starts at ``min``. A scalar (``simple_value``) is a 32-bit float in this
format: values are rounded to float32 (beyond its range they become +-inf).
"""
from __future__ import annotations

import os
import socket
import struct
import time
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .. import _C

FILE_VERSION = "brain.Event:2"
FILE_PREFIX = "events.out.tfevents."
FILE_SUFFIX = ".gradcore"

# protobuf wire types
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_UINT64 = (1 << 64) - 1
_UINT32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------- CRC32C
def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc`` (0 for a fresh checksum);
    ``crc32c(b"123456789") == 0xE3069283``. The C++ kernel (csrc/checksum.cpp): a byte
    loop in Python cost ~1 ms for one step's histograms."""
    return _C.crc32c(data, crc)


def masked_crc32c(data: bytes) -> int:
    """The CRC TFRecord stores: CRC32C rotated right by 15 bits plus 0xa282ead8 (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & _UINT32


def frame_record(data: bytes) -> bytes:
    """One TFRecord holding ``data``: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), data,
                     struct.pack("<I", masked_crc32c(data))))


# ---------------------------------------------------------------------------- encoding
def _varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (an int64 < 0 is sent as its 64-bit two's complement)."""
    value &= _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _double(field: int, value: float) -> bytes:
    return _key(field, _FIXED64) + struct.pack("<d", value)


def _message(field: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes, an embedded message or a packed array."""
    return _key(field, _BYTES) + _varint(len(payload)) + payload


def encode_scalar(tag: str, value: float) -> bytes:
    """A ``Summary.Value`` with ``tag`` and ``simple_value`` (``value`` rounded to float32)."""
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, as the format can hold
        as_float32 = np.array(value, dtype="<f4").tobytes()
    return _message(1, tag.encode("utf-8")) + _key(2, _FIXED32) + as_float32


def encode_histogram(tag: str, histogram: Dict) -> bytes:
    """A ``Summary.Value`` with ``tag`` and a ``HistogramProto`` built from ``histogram``: a
    dict with min, max, num, sum, sum_squares (floats) and bucket_limit, bucket (equal-length
    1-d arrays: right edges and counts), as :func:`histogram_from_counts` returns."""
    proto = b"".join((
        _double(1, histogram["min"]), _double(2, histogram["max"]), _double(3, histogram["num"]),
        _double(4, histogram["sum"]), _double(5, histogram["sum_squares"]),
        _message(6, np.asarray(histogram["bucket_limit"], dtype="<f8").tobytes()),
        _message(7, np.asarray(histogram["bucket"], dtype="<f8").tobytes()),
    ))
    return _message(1, tag.encode("utf-8")) + _message(5, proto)


def encode_event(wall_time: float, step: int, *, file_version: Optional[str] = None,
                 values: Iterable[bytes] = ()) -> bytes:
    """A serialized ``Event``: the file version, or a ``Summary`` of encoded ``values``."""
    parts = [_double(1, wall_time), _key(2, _VARINT) + _varint(step)]
    if file_version is not None:
        parts.append(_message(3, file_version.encode("utf-8")))
    summary = b"".join(_message(1, value) for value in values)
    if summary:
        parts.append(_message(5, summary))
    return b"".join(parts)


def histogram_from_counts(counts: np.ndarray, edges: np.ndarray) -> Dict:
    """A histogram dict for :func:`encode_histogram` from bin ``counts`` (k,) and ``edges``
    (k + 1,), as ``np.histogram`` returns them: bucket_limit = edges[1:] (the first bucket
    starts at min), min and max the outer edges, num the total count; sum and sum_squares
    are unknown without the values and are NaN."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    edges = np.asarray(edges, dtype=np.float64).reshape(-1)
    if edges.size != counts.size + 1:
        raise ValueError(f"histogram_from_counts: {counts.size} counts need {counts.size + 1} edges, got {edges.size}")
    return {"min": float(edges[0]), "max": float(edges[-1]), "num": float(counts.sum()),
            "sum": float("nan"), "sum_squares": float("nan"),
            "bucket_limit": edges[1:].copy(), "bucket": counts}


# ---------------------------------------------------------------------------- writing
class EventFileWriter:
    """Appends events to a new file ``events.out.tfevents.<time>.<host>.<pid>.gradcore`` in
    ``logdir`` (created if missing); the first event carries the file version."""

    def __init__(self, logdir: str):
        logdir = os.fspath(logdir)
        if os.path.exists(logdir) and not os.path.isdir(logdir):
            raise ValueError(f"TensorBoard logdir {logdir!r} exists and is not a directory")
        os.makedirs(logdir, exist_ok=True)
        stem = f"{FILE_PREFIX}{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path, self._file = _create_exclusive(logdir, stem)
        self.write(0, file_version=FILE_VERSION)
        self.flush()

    def write(self, step: int, values: Iterable[bytes] = (), *, file_version: Optional[str] = None,
              wall_time: Optional[float] = None) -> None:
        """Append one Event at ``step`` holding the encoded Summary ``values``."""
        event = encode_event(time.time() if wall_time is None else wall_time, step,
                             file_version=file_version, values=values)
        self._file.write(frame_record(event))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _create_exclusive(logdir: str, stem: str):
    """Open ``<stem>.gradcore`` for writing, never over an existing file (two writers started
    in the same second by one process get ``<stem>.1.gradcore``, ...)."""
    n = 0
    while True:
        path = os.path.join(logdir, stem + (f".{n}" if n else "") + FILE_SUFFIX)
        try:
            return path, open(path, "xb")
        except FileExistsError:
            n += 1


# ---------------------------------------------------------------------------- reading
class _Corrupt(ValueError):
    """Raised inside the parser; read_tfevents adds the file and the record's offset."""


def _read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _Corrupt("a varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("a varint is longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value) of each field of a serialized message: an int for a
    varint, 8 / 4 raw bytes for fixed64 / fixed32, the bytes of a length-delimited field."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            value, pos = buf[pos:pos + size], pos + size
            if len(value) != size:
                raise _Corrupt(f"field {field} runs past the end of its message")
        elif wire_type == _BYTES:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
            if len(value) != size:
                raise _Corrupt(f"field {field} runs past the end of its message")
        else:
            raise _Corrupt(f"field {field} has wire type {wire_type}, which event files do not use")
        yield field, wire_type, value


def _decode_histogram(buf: bytes) -> Dict:
    out = {"min": 0.0, "max": 0.0, "num": 0.0, "sum": 0.0, "sum_squares": 0.0}
    arrays: Dict[str, List[np.ndarray]] = {"bucket_limit": [], "bucket": []}
    names = {1: "min", 2: "max", 3: "num", 4: "sum", 5: "sum_squares", 6: "bucket_limit", 7: "bucket"}
    for field, wire_type, value in _fields(buf):
        name = names.get(field)
        if name in arrays:  # packed (proto3) or one double per field
            if wire_type == _BYTES and len(value) % 8 == 0:
                arrays[name].append(np.frombuffer(value, dtype="<f8"))
            elif wire_type == _FIXED64:
                arrays[name].append(np.frombuffer(value, dtype="<f8"))
            else:
                raise _Corrupt(f"HistogramProto.{name} is neither packed doubles nor a double")
        elif name is not None and wire_type == _FIXED64:
            out[name] = struct.unpack("<d", value)[0]
    for name, parts in arrays.items():
        out[name] = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    if out["bucket_limit"].size != out["bucket"].size:
        raise _Corrupt(f"a histogram has {out['bucket_limit'].size} bucket limits but {out['bucket'].size} buckets")
    return out


def _decode_value(buf: bytes) -> Optional[Dict]:
    """{"tag", "value"} or {"tag", "histogram"} of a Summary.Value; None for other kinds
    (images, audio, tensors), which this reader skips."""
    tag, entry = "", None
    for field, wire_type, value in _fields(buf):
        if field == 1 and wire_type == _BYTES:
            tag = bytes(value).decode("utf-8", errors="replace")
        elif field == 2 and wire_type == _FIXED32:
            entry = {"value": float(struct.unpack("<f", value)[0])}
        elif field == 5 and wire_type == _BYTES:
            entry = {"histogram": _decode_histogram(value)}
    if entry is None:
        return None
    return {"tag": tag, **entry}


def _decode_event(buf: bytes) -> List[Dict]:
    wall_time, step, summaries = 0.0, 0, []
    for field, wire_type, value in _fields(buf):
        if field == 1 and wire_type == _FIXED64:
            wall_time = struct.unpack("<d", value)[0]
        elif field == 2 and wire_type == _VARINT:
            step = value - (1 << 64) if value >> 63 else value
        elif field == 5 and wire_type == _BYTES:
            summaries.append(value)
    out = []
    for summary in summaries:
        for field, wire_type, value in _fields(summary):
            if field == 1 and wire_type == _BYTES:
                decoded = _decode_value(value)
                if decoded is not None:
                    out.append({"wall_time": wall_time, "step": step, **decoded})
    return out


def _records(data: bytes) -> Iterator[Tuple[int, bytes]]:
    """(offset, payload) of each TFRecord of ``data``, checking both CRCs."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise _Corrupt(f"truncated record header at byte {pos} ({len(data) - pos} of 12 bytes)")
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (stored,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if stored != masked_crc32c(header):
            raise _Corrupt(f"the length CRC of the record at byte {pos} does not match")
        end = pos + 12 + length
        if end + 4 > len(data):
            raise _Corrupt(f"the record at byte {pos} claims {length} bytes but the file ends first")
        payload = data[pos + 12:end]
        (stored,) = struct.unpack("<I", data[end:end + 4])
        if stored != masked_crc32c(payload):
            raise _Corrupt(f"the data CRC of the record at byte {pos} does not match")
        yield pos, payload
        pos = end + 4


def _event_files(path: str) -> List[str]:
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path) if name.startswith(FILE_PREFIX))
        if not names:
            raise FileNotFoundError(f"read_tfevents: no {FILE_PREFIX}* file in directory {path!r}")
        return [os.path.join(path, name) for name in names]
    if not os.path.exists(path):
        raise FileNotFoundError(f"read_tfevents: {path!r} does not exist")
    return [path]


def read_tfevents(path_or_logdir) -> List[Dict]:
    """The scalars and histograms of a TensorBoard event file, or of every
    ``events.out.tfevents.*`` file of a directory (in file-name order, i.e. by start time).

    Returns a list of dicts in file order, one per summary value:
    ``{"wall_time": float, "step": int, "tag": str, "value": float}`` for a scalar, or
    ``{..., "histogram": {"min", "max", "num", "sum", "sum_squares": float,
    "bucket_limit": (k,) float64, "bucket": (k,) float64}}`` for a histogram. Other kinds of
    values (images, tensors, graphs) are skipped. Every record's CRCs are checked: a
    damaged or truncated file raises ValueError naming the file and the byte offset.
    """
    if not isinstance(path_or_logdir, (str, os.PathLike)):
        raise TypeError(f"read_tfevents: path_or_logdir must be a path, got {type(path_or_logdir).__name__}")
    out: List[Dict] = []
    for path in _event_files(os.fspath(path_or_logdir)):
        with open(path, "rb") as f:
            data = f.read()
        try:
            for offset, payload in _records(data):
                try:
                    out.extend(_decode_event(payload))
                except _Corrupt as err:
                    raise _Corrupt(f"the record at byte {offset} is not an Event message: {err}") from None
        except _Corrupt as err:
            raise ValueError(f"read_tfevents: {path!r} is not a valid event file: {err}") from None
    return out
