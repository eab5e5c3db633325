"""Hand SciPy's OpenBLAS GEMM entry points to the compiled module.

SciPy exports the Fortran BLAS of the OpenBLAS it ships as PyCapsules in
``scipy.linalg.cython_blas.__pyx_capi__``; taking ``sgemm`` / ``dgemm`` from there means
gradcore uses exactly that BLAS, never one found on the system by chance.
"""
from __future__ import annotations

try:
    from scipy.linalg import cython_blas as _cython_blas
except ImportError as exc:  # pragma: no cover - exercised only without SciPy
    raise ImportError(
        "gradcore needs SciPy: its GEMM comes from the OpenBLAS that SciPy ships "
        "(scipy.linalg.cython_blas). Install it with `pip install scipy`."
    ) from exc


def install(module) -> None:
    """Give ``module`` (gradcore._C) the sgemm and dgemm function pointers."""
    capi = _cython_blas.__pyx_capi__
    module.set_blas(capi["sgemm"], capi["dgemm"])


def blas_info() -> dict:
    """Describe the BLAS SciPy ships (name, version, threads) through threadpoolctl."""
    from threadpoolctl import threadpool_info

    import os

    for pool in threadpool_info():
        # SciPy's wheel keeps its OpenBLAS in scipy.libs/ (NumPy's, also named
        # libscipy_openblas*, lives in numpy.libs/)
        folder = os.path.basename(os.path.dirname(pool.get("filepath") or ""))
        if pool.get("user_api") == "blas" and folder.startswith("scipy"):
            return pool
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return pool
    return {}
