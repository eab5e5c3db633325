"""Reader and writer for the safetensors file format (no pickle, no code in the file).

Layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data that
follows) plus an optional ``"__metadata__"`` of string pairs, then the raw little-endian
row-major bytes. Files written here open with the ``safetensors`` package and back.

Writes go to a temporary file in the same folder, are flushed to disk and renamed over
the target, so a crash mid-save leaves the previous file intact.

Integrity: the writer stores ``"checksum": "sha256:<hex>"`` in ``__metadata__``, a SHA-256
of the header (canonical JSON, without the checksum itself) followed by the tensor data.
The reader verifies it when present, so a flipped byte anywhere in the data or in a
value of the header is refused; files without it (e.g. written by the ``safetensors``
package) are read as before, except that a caller can name metadata ``format`` values
whose writer always signs (``signed_formats``): such a file without the key (removed or
renamed) is refused. The key is reserved and not returned with the metadata.
"""
from __future__ import annotations

import hashlib
import json
import math
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
_MAX_NDIM = 64  # NumPy's own limit
CHECKSUM_KEY = "checksum"
_CHECKSUM_ALGO = "sha256"


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, malformed, or does not fit the network."""


def _raw_bytes(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes as a uint8 view (no copy, zero-size arrays included)."""
    return arr.reshape(-1).view(np.uint8)


def _digest(header: Mapping[str, object], chunks) -> str:
    """``sha256:<hex>`` of ``header`` (canonical JSON, checksum key left out) + ``chunks``."""
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != CHECKSUM_KEY}
    canonical = {k: v for k, v in header.items() if k != "__metadata__"}
    if meta:
        canonical["__metadata__"] = meta
    h = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    for chunk in chunks:
        h.update(chunk)
    return f"{_CHECKSUM_ALGO}:{h.hexdigest()}"


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] = None) -> None:
    """Write ``tensors`` (name -> array) and string ``metadata`` to ``path`` atomically
    (with a checksum of header and data in the metadata, see the module docstring)."""
    header: Dict[str, object] = {}
    if metadata and CHECKSUM_KEY in metadata:
        raise ValueError(f"save: the metadata key {CHECKSUM_KEY!r} is reserved for the file's checksum")
    header["__metadata__"] = {str(k): str(v) for k, v in (metadata or {}).items()}
    arrays = []
    offset = 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype not in _NAMES:
            raise TypeError(f"save: tensor {name!r} has unsupported dtype {arr.dtype}")
        # np.asarray keeps 0-d arrays 0-d (ascontiguousarray would make them (1,))
        arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")
        header[name] = {"dtype": _NAMES[np.dtype(arr.dtype.name)], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    header["__metadata__"][CHECKSUM_KEY] = _digest(header, (_raw_bytes(a) for a in arrays))
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gradcore-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for arr in arrays:
                f.write(_raw_bytes(arr))
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


def load_file(path: str, signed_formats: Tuple[str, ...] = ()) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Read ``path``; returns (name -> array, metadata). Raises CheckpointError when the
    file is cut short, its header does not describe its contents exactly, its checksum
    does not match, or its metadata ``format`` is one of ``signed_formats`` but it carries
    no checksum."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise CheckpointError(f"{path}: not a safetensors file ({len(raw)} bytes, shorter than its header length)")
    n = int.from_bytes(raw[:8], "little")
    if n > _MAX_HEADER or 8 + n > len(raw):
        raise CheckpointError(f"{path}: header of {n} bytes does not fit in a file of {len(raw)} bytes (truncated?)")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: malformed header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed header (not a JSON object)")
    metadata = header.get("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: malformed __metadata__ (must map strings to strings)")
    data = memoryview(raw)[8 + n:]
    if CHECKSUM_KEY not in metadata and metadata.get("format") in signed_formats:
        raise CheckpointError(f"{path}: a {metadata['format']} file must carry its {CHECKSUM_KEY!r} metadata "
                              "entry, and this one has none (removed or renamed); refusing to load it unverified")
    if CHECKSUM_KEY in metadata:
        expected = metadata[CHECKSUM_KEY]
        if not expected.startswith(_CHECKSUM_ALGO + ":"):
            raise CheckpointError(f"{path}: unknown checksum {expected!r} (expected {_CHECKSUM_ALGO}:<hex>)")
        if _digest(header, (data,)) != expected:
            raise CheckpointError(f"{path}: checksum mismatch: the header or tensor data changed after the file "
                                  "was written (flipped bytes or a damaged copy); refusing to load it")
    header.pop("__metadata__", None)
    tensors: Dict[str, np.ndarray] = {}
    spans = []
    for name, entry in header.items():
        try:
            dtype = np.dtype(_CODES[entry["dtype"]]).newbyteorder("<")
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed entry for tensor {name!r}: {entry!r}") from None
        if len(shape) > _MAX_NDIM or any(s < 0 for s in shape) or not 0 <= begin <= end:
            raise CheckpointError(f"{path}: tensor {name!r} has invalid shape {list(shape)[:_MAX_NDIM + 1]} "
                                  f"or offsets {[begin, end]}")
        if end > len(data):
            raise CheckpointError(f"{path}: tensor {name!r} ends at byte {end} but the file holds "
                                  f"{len(data)} data bytes (truncated)")
        count = math.prod(shape)  # exact (Python ints): a product that wraps int64 cannot sneak through
        if count >= 2 ** 63:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape}, whose {count} elements overflow int64")
        if end - begin != count * dtype.itemsize:
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
    return tensors, {str(k): str(v) for k, v in metadata.items() if k != CHECKSUM_KEY}


def _no_duplicates(pairs):
    """json object hook: a name given twice would silently hide one of the tensors."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out
