"""Hand SciPy's OpenBLAS GEMM entry points to the compiled module.

SciPy exports the Fortran BLAS of the OpenBLAS it ships as PyCapsules in
``scipy.linalg.cython_blas.__pyx_capi__``; taking ``sgemm`` / ``dgemm`` from there means
gradcore uses exactly that BLAS, never one found on the system by chance.

When that BLAS is an OpenBLAS with its own (pthreads) thread pool, its
``openblas_set_num_threads`` / ``openblas_get_num_threads`` entry points (SciPy's wheels
prefix them: ``scipy_openblas_set_num_threads``) go to the compiled module too, which
then gives each GEMM one thread or ``gradcore.set_num_threads``'s count from its size
(csrc/blas.cpp). Without them OpenBLAS picks its threads itself, as before.
"""
from __future__ import annotations

import ctypes
import os

try:
    from scipy.linalg import cython_blas as _cython_blas
except ImportError as exc:  # pragma: no cover - exercised only without SciPy
    raise ImportError(
        "gradcore needs SciPy: its GEMM comes from the OpenBLAS that SciPy ships "
        "(scipy.linalg.cython_blas). Install it with `pip install scipy`."
    ) from exc


def install(module) -> None:
    """Give ``module`` (gradcore._C) the sgemm and dgemm function pointers, and OpenBLAS's
    thread-count entry points when they are found."""
    capi = _cython_blas.__pyx_capi__
    module.set_blas(capi["sgemm"], capi["dgemm"])
    found = thread_entry_points()
    if found is not None:
        set_addr, get_addr, threads = found
        module.set_blas_threading(set_addr, get_addr, threads)


# The affixes OpenBLAS builds give their symbols (as threadpoolctl lists them): plain,
# SciPy's / NumPy's wheels ("scipy_" prefix), and ILP64 builds ("64_" / "_64" suffix).
_PREFIXES = ("scipy_", "")
_SUFFIXES = ("", "64_", "_64")


def _scipy_pool():
    """threadpoolctl's record of the OpenBLAS SciPy's cython_blas uses, or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    pools = [p for p in threadpool_info() if p.get("internal_api") == "openblas"]
    scipy_pools = [p for p in pools if _in_scipy_folder(p)]
    if len(scipy_pools) == 1:
        return scipy_pools[0]
    # A SciPy not from a wheel links a system OpenBLAS: trust it only when it is the only one.
    return pools[0] if len(pools) == 1 and not scipy_pools else None


def _in_scipy_folder(pool) -> bool:
    # SciPy's wheel keeps its OpenBLAS in scipy.libs/ (NumPy's, also named
    # libscipy_openblas*, lives in numpy.libs/)
    return os.path.basename(os.path.dirname(pool.get("filepath") or "")).startswith("scipy")


def thread_entry_points():
    """(set address, get address, current count) of the OpenBLAS thread-count functions of
    SciPy's BLAS, or None: not OpenBLAS, its threads are OpenMP's (whose count is per
    calling thread and follows gradcore's own loops), or the symbols are missing."""
    pool = _scipy_pool()
    if pool is None or pool.get("threading_layer") != "pthreads":
        return None
    try:
        lib = ctypes.CDLL(pool["filepath"], mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_LOCAL)
    except OSError:
        return None
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            try:
                setter = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
                getter = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
            except AttributeError:
                continue
            getter.restype, getter.argtypes = ctypes.c_int, []
            threads = int(getter())
            return (ctypes.cast(setter, ctypes.c_void_p).value, ctypes.cast(getter, ctypes.c_void_p).value,
                    max(threads, 1))
    return None


def blas_info() -> dict:
    """Describe the BLAS SciPy ships (name, version, threads) through threadpoolctl."""
    from threadpoolctl import threadpool_info

    pools = threadpool_info()  # (each call scans every loaded library)
    for pool in pools:
        if pool.get("user_api") == "blas" and _in_scipy_folder(pool):
            return pool
    for pool in pools:
        if pool.get("user_api") == "blas":
            return pool
    return {}
