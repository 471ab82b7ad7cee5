"""NumPy's own BLAS GEMM (and GEMV) as C functions, for numba code that runs a whole time loop.

Calling ``np.matmul`` once per step from Python costs ~5-15 µs of interpreter and dispatch work
around a GEMM that, at B = 1 or H = 128, takes about as long itself. A compiled loop that calls
the very BLAS NumPy uses (same library, same thread pool, same thread limits) removes that.

Found only where it is safe to call: an OpenBLAS that threadpoolctl reports as NumPy's, whose
``openblas_get_config`` says whether its integers are 64-bit, and whose ``cblas_?gemm`` and
``cblas_?gemv`` answer a probe exactly as ``np.matmul`` does. Anywhere else :func:`gemm` (or
:func:`gemv`) is None and the loop stays in Python.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

__all__ = ["gemm", "gemv"]

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


@functools.cache
def _library():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if "numpy" not in lib.filepath:
            continue
        dll = ctypes.CDLL(lib.filepath)
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
            config = getattr(dll, f"{prefix}openblas_get_config{suffix}", None)
            if config is None or not hasattr(dll, f"{prefix}cblas_sgemm{suffix}"):
                continue
            config.restype = ctypes.c_char_p
            int64 = b"USE64BITINT" in (config() or b"")
            return dll, prefix, suffix, int64
    return None


def _function(dtype, name: str, arguments: list):
    """``cblas_?<name>`` of NumPy's OpenBLAS for ``dtype`` with its argument types (``real`` and
    ``index`` standing for the floating type and BLAS's integer), or None."""
    found = _library()
    if found is None:
        return None
    dll, prefix, suffix, int64 = found
    dtype = np.dtype(dtype)
    kinds = {"real": {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}[dtype],
             "index": ctypes.c_int64 if int64 else ctypes.c_int32, "int": ctypes.c_int, "pointer": ctypes.c_void_p}
    f = getattr(dll, f"{prefix}cblas_{'s' if dtype == np.float32 else 'd'}{name}{suffix}", None)
    if f is None:
        return None
    f.restype = None
    f.argtypes = [kinds[kind] for kind in arguments]
    return f


@functools.cache
def gemm(dtype) -> ctypes._CFuncPtr | None:
    """``cblas_sgemm`` / ``cblas_dgemm`` of NumPy's OpenBLAS with its argument types, or None."""
    f = _function(dtype, "gemm", ["int", "int", "int", "index", "index", "index", "real", "pointer", "index", "pointer", "index",
                                  "real", "pointer", "index"])
    if f is None:
        return None
    a = np.arange(1.0, 13.0, dtype=dtype).reshape(3, 4)
    b = np.arange(-4.0, 4.0, dtype=dtype).reshape(4, 2)
    c = np.full((3, 2), np.nan, dtype)
    f(ROW_MAJOR, NO_TRANS, NO_TRANS, 3, 2, 4, 1.0, a.ctypes.data, 4, b.ctypes.data, 2, 0.0, c.ctypes.data, 2)
    return f if np.array_equal(c, a @ b) else None


@functools.cache
def gemv(dtype) -> ctypes._CFuncPtr | None:
    """``cblas_sgemv`` / ``cblas_dgemv`` of NumPy's OpenBLAS with its argument types, or None."""
    f = _function(dtype, "gemv", ["int", "int", "index", "index", "real", "pointer", "index", "pointer", "index", "real",
                                  "pointer", "index"])
    if f is None:
        return None
    a = np.arange(1.0, 5.0, dtype=dtype)
    b = np.arange(-4.0, 8.0, dtype=dtype).reshape(4, 3)
    c = np.full(3, np.nan, dtype)
    f(ROW_MAJOR, TRANS, 4, 3, 1.0, b.ctypes.data, 3, a.ctypes.data, 1, 0.0, c.ctypes.data, 1)  # c = bᵀ a
    return f if np.array_equal(c, a @ b) else None
