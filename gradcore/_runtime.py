"""Threads and build information."""
from __future__ import annotations

import os

from . import _C, _blas
from . import _validate as _v

_blas_limiter = None

# More threads than this is a typo, not a configuration: OpenMP would try to start them all
# at the next parallel loop (a million threads exhausts the process).
MAX_THREADS = 1024


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1 to MAX_THREADS) in gradcore's OpenMP loops and in SciPy's OpenBLAS.

    Each kernel still decides from its size whether forking pays: small loops and small
    GEMMs run on one thread whatever ``n`` is (csrc/parallel.h, csrc/blas.cpp)."""
    global _blas_limiter
    n = _v.integer("set_num_threads", "n", n, low=1, high=MAX_THREADS)
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
    per_gemm = bool(_C.blas_thread_control())
    return {
        "version": __version__,
        "blas": f"{blas.get('internal_api', 'unknown')} {blas.get('version', '')} (from SciPy)".strip(),
        # With per-GEMM control OpenBLAS's current count is whatever the last GEMM needed:
        # report the count GEMMs above the threshold use.
        "blas_threads": int(_C.blas_user_threads()) if per_gemm else blas.get("num_threads"),
        "blas_threads_per_gemm": per_gemm,
        "blas_ready": bool(_C.blas_ready()),
        "threads": get_num_threads(),
        "openmp": bool(_C.have_openmp()),
        "simd": _C.simd_level(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
