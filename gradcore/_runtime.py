"""Threads and build information."""
from __future__ import annotations

import numbers
import os

from . import _C, _blas

_blas_limiter = None


def max_threads() -> int:
    """Most threads set_num_threads accepts: 4 per core, at most 1024 (more only adds
    fork/join cost and memory; a larger number is almost always a typo)."""
    return min(1024, 4 * (os.cpu_count() or 1))


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in gradcore's OpenMP loops and in SciPy's OpenBLAS.

    n: an int from 1 to ``max_threads()`` (4 per core, at most 1024).
    """
    global _blas_limiter
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__} ({n!r})")
    n = int(n)
    limit = max_threads()
    if n < 1 or n > limit:
        raise ValueError(f"set_num_threads: n must be between 1 and {limit} (4 per core, at most 1024), got {n}")
    _C.set_num_threads(n)
    from threadpoolctl import threadpool_limits

    _blas_limiter = threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """Threads gradcore's own loops use (OMP_NUM_THREADS or the core count by default)."""
    return int(_C.get_num_threads())


def info() -> dict:
    """Version, BLAS, threads, SIMD level and OpenMP status of this build."""
    from . import __version__

    blas = _blas.blas_info()
    return {
        "version": __version__,
        "blas": f"{blas.get('internal_api', 'unknown')} {blas.get('version', '')} (from SciPy)".strip(),
        "blas_threads": blas.get("num_threads"),
        "blas_ready": bool(_C.blas_ready()),
        "threads": get_num_threads(),
        "openmp": bool(_C.have_openmp()),
        "simd": _C.simd_level(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
