"""Standalone gradient clipping in place (torch.nn.utils.clip_grad_norm_ / clip_grad_value_).

Gradients that live in a flat buffer are clipped by one C++ call per contiguous run of
that buffer; loose gradients one tensor at a time.
"""
from __future__ import annotations

import math
from typing import List

import numpy as np

from .. import _C
from . import _checks
from ._params import Run, collect_parameters, consecutive_runs


class _Piece:
    """One 1-D gradient array with its tensor offsets, and where to write it back if copied."""

    __slots__ = ("grad", "offsets", "sumsq", "scales", "target")

    def __init__(self, grad: np.ndarray, offsets: np.ndarray, target=None):
        self.grad, self.offsets, self.target = grad, offsets, target
        k = len(offsets) - 1
        self.sumsq = np.zeros(k, dtype=np.float64)
        self.scales = np.ones(k, dtype=np.float64)

    def write_back(self) -> None:
        if self.target is not None:
            self.target[...] = self.grad.reshape(self.target.shape)


def _is_flat_view(g, flat, i: int) -> bool:
    """Whether ``g`` is exactly tensor i's slice of ``flat.grad``."""
    if not isinstance(g, np.ndarray) or g.dtype != flat.grad.dtype or not g.flags.c_contiguous:
        return False
    start = flat.grad.ctypes.data + int(flat.offsets[i]) * flat.grad.itemsize
    return g.ctypes.data == start and g.size == int(flat.offsets[i + 1] - flat.offsets[i])


def _pieces(parameters, op: str) -> List[_Piece]:
    tensors = [p for p in collect_parameters(parameters, op) if p.grad is not None]
    by_flat = {}
    loose = []
    for p in tensors:
        flat = getattr(p, "_flat", None)
        idx = flat.index(p) if flat is not None else -1
        if idx >= 0 and _is_flat_view(p.grad, flat, idx):
            by_flat.setdefault(id(flat), (flat, []))[1].append(idx)
        else:
            loose.append(p)
    pieces = []
    for flat, idxs in by_flat.values():
        for lo, hi in consecutive_runs(idxs):
            run = Run(flat.offsets, lo, hi)
            pieces.append(_Piece(run.view(flat.grad), run.offsets))
    for p in loose:
        g = p.grad
        if not (isinstance(g, np.ndarray) and g.dtype in (np.float32, np.float64)):
            raise TypeError(f"{op}: a gradient of shape {np.shape(g)} is not a float32/float64 array")
        if g.flags.c_contiguous and g.flags.writeable:
            pieces.append(_Piece(g.reshape(-1), np.array([0, g.size], dtype=np.int64)))
        else:
            pieces.append(_Piece(np.ascontiguousarray(g).reshape(-1), np.array([0, g.size], dtype=np.int64), g))
    return pieces


def _norm_type(op: str, norm_type) -> float:
    try:
        p = float(norm_type)  # torch accepts 'inf' as well as float('inf')
    except (TypeError, ValueError):
        raise TypeError(f"{op}: norm_type must be a number or 'inf', got {norm_type!r}") from None
    if math.isnan(p) or p <= 0:
        raise ValueError(f"{op}: norm_type must be > 0 (or inf), got {norm_type!r}")
    return p


def _p_norms(piece: _Piece, p: float) -> np.ndarray:
    """Per-tensor p-norms of a piece's gradients, in float64 (inf: max |g|)."""
    g = piece.grad
    out = np.empty(len(piece.offsets) - 1)
    for i in range(len(out)):
        part = np.abs(g[piece.offsets[i]:piece.offsets[i + 1]], dtype=np.float64)
        if part.size == 0:
            out[i] = 0.0
        elif math.isinf(p):
            out[i] = part.max()
        else:
            out[i] = np.sum(part ** p) ** (1.0 / p)
    return out


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None) -> np.float64:
    """torch.nn.utils.clip_grad_norm_: scale all gradients in place by
    min(1, max_norm / (total + 1e-6)) and return ``total``.

    ``total`` is the ``norm_type``-norm of all gradients seen as one vector (the norm of the
    per-tensor norms; ``norm_type=inf``: the largest absolute value), returned as a NumPy
    float64 (a float with ``.item()``, as code written for torch's tensor result expects).
    Parameters without a gradient are ignored. When the total is NaN or Inf the gradients
    are left as they are (torch would multiply them by NaN) and, with
    ``error_if_nonfinite``, a RuntimeError is raised. ``foreach`` is accepted for torch
    compatibility and ignored (the kernels are already fused).
    """
    op = "clip_grad_norm_"
    max_norm = _checks.real(op, "max_norm", max_norm, low=0.0, low_open=True, finite=False)
    p = _norm_type(op, norm_type)
    pieces = _pieces(parameters, op)
    if not pieces:
        return np.float64(0.0)
    if p != 2.0:
        norms = np.concatenate([_p_norms(x, p) for x in pieces])
        total = float(norms.max()) if math.isinf(p) else float(np.sum(norms ** p) ** (1.0 / p))
        if not math.isfinite(total):
            return _nonfinite(total, error_if_nonfinite)
        coef = min(1.0, max_norm / (total + 1e-6))
        for x in pieces:
            x.scales[...] = coef
            _C.clip_grads(x.grad, x.offsets, x.sumsq, x.scales, compute_scales=False)
            x.write_back()
        return np.float64(total)
    if len(pieces) == 1:
        x = pieces[0]
        norm, bad = _C.clip_grads(x.grad, x.offsets, x.sumsq, x.scales, global_clip_norm=max_norm)
        if bad >= 0:
            return _nonfinite(norm, error_if_nonfinite)
        x.write_back()
        return np.float64(norm)
    for x in pieces:
        if _C.grad_sumsq(x.grad, x.offsets, x.sumsq) >= 0:
            return _nonfinite(math.sqrt(sum(float(q.sumsq.sum()) for q in pieces)), error_if_nonfinite)
    sumsq = np.concatenate([x.sumsq for x in pieces])
    scales = np.empty_like(sumsq)
    norm = _C.clip_scales(sumsq, scales, 0.0, max_norm)
    at = 0
    for x in pieces:
        k = len(x.sumsq)
        x.scales[...] = scales[at:at + k]
        at += k
        _C.clip_grads(x.grad, x.offsets, x.sumsq, x.scales, compute_scales=False)
        x.write_back()
    return np.float64(norm)


def _nonfinite(norm: float, error: bool) -> np.float64:
    if error:
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of the gradients is non-finite ({norm}), so it cannot be clipped; "
            "the gradients were left unchanged"
        )
    return np.float64(norm)


def clip_grad_value_(parameters, clip_value: float, foreach=None) -> None:
    """torch.nn.utils.clip_grad_value_: clamp every gradient element in place to
    [-clip_value, clip_value] (NaN stays NaN; parameters without a gradient are ignored)."""
    op = "clip_grad_value_"
    clip_value = _checks.real(op, "clip_value", clip_value, low=0.0, low_open=True, finite=False)
    for p in _pieces(parameters, op):
        _C.clip_grads(p.grad, p.offsets, p.sumsq, p.scales, clip_value=clip_value, compute_scales=False)
        p.write_back()
