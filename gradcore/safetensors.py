"""Reader and writer for the safetensors file format (no pickle, no code in the file).

Layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data that
follows) plus an optional ``"__metadata__"`` of string pairs, then the raw little-endian
row-major bytes. Files written here open with the ``safetensors`` package and back.

Writes go to a temporary file in the same folder, are flushed to disk and renamed over
the target, so a crash mid-save leaves the previous file intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Mapping, Tuple

import numpy as np

_CODES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _CODES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, malformed, or does not fit the network."""


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] = None) -> None:
    """Write ``tensors`` (name -> array) and string ``metadata`` to ``path`` atomically."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype not in _NAMES:
            raise TypeError(f"save: tensor {name!r} has unsupported dtype {arr.dtype}")
        # ascontiguousarray turns a 0-d array (BatchNorm's num_batches_tracked) into shape (1,)
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(arr.shape)
        header[name] = {"dtype": _NAMES[np.dtype(arr.dtype.name)], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gradcore-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for arr in arrays:
                f.write(arr.tobytes(order="C"))
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_file(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Read ``path``; returns (name -> array, metadata). Raises CheckpointError when the
    file is cut short or its header does not describe its contents exactly."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise CheckpointError(f"{path}: not a safetensors file ({len(raw)} bytes, shorter than its header length)")
    n = int.from_bytes(raw[:8], "little")
    if n > _MAX_HEADER or 8 + n > len(raw):
        raise CheckpointError(f"{path}: header of {n} bytes does not fit in a file of {len(raw)} bytes (truncated?)")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed header (not a JSON object)")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: malformed __metadata__")
    data = memoryview(raw)[8 + n:]
    tensors: Dict[str, np.ndarray] = {}
    spans = []
    for name, entry in header.items():
        try:
            dtype = np.dtype(_CODES[entry["dtype"]]).newbyteorder("<")
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed entry for tensor {name!r}: {entry!r}") from None
        if any(s < 0 for s in shape) or not 0 <= begin <= end:
            raise CheckpointError(f"{path}: tensor {name!r} has invalid shape or offsets")
        if end > len(data):
            raise CheckpointError(f"{path}: tensor {name!r} ends at byte {end} but the file holds "
                                  f"{len(data)} data bytes (truncated)")
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} and dtype {entry['dtype']} "
                                  f"does not match its {end - begin} bytes")
        spans.append((begin, end))
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise CheckpointError(f"{path}: tensor data overlaps or leaves gaps at byte {begin}")
        covered = end
    if covered != len(data):
        raise CheckpointError(f"{path}: {len(data) - covered} trailing bytes after the last tensor")
    return tensors, {str(k): str(v) for k, v in metadata.items()}
