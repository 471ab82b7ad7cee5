"""gruxp's own OpenBLAS: every product of the CPU route, each on one thread.

OpenBLAS rounds some products differently on one thread and on several, and NumPy's OpenBLAS
runs as many threads as the process could use when it loaded (one under ``taskset -c 0``), a
count that threadpoolctl or another library may change at any moment for every thread of the
process (``openblas_set_num_threads_local`` too: in OpenBLAS 0.3.31 it sets the count for all
threads). A route that promises the same bits under any load, affinity and thread count, and
that must not change what the caller's other threads get, cannot call it. So gruxp loads the
OpenBLAS of the ``scipy-openblas64`` wheel (the build NumPy and SciPy ship in their own wheels)
as an instance of its own, sets it to one thread, and calls only that: the CPU route's
parallelism is gruxp's own, pieces of work whose cut the plan fixes (see :mod:`.plan`).

:func:`library` is None where that instance cannot be had privately (the wheel is missing, or
its file is the very library NumPy loaded) or does not answer a probe exactly; the CPU route then
uses NumPy's matmul, whose bits depend on NumPy's BLAS threads (see the README's "Numerics").
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ROW_MAJOR", "NO_TRANS", "TRANS", "Library", "library", "matmul"]

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_PACKAGES = (("scipy_openblas64", "64_"), ("scipy_openblas32", ""))  # import name, symbol suffix


@dataclass(frozen=True)
class Library:
    """gruxp's OpenBLAS instance: where it lies, what it is, its GEMM and GEMV per dtype."""

    path: str
    version: str
    kernel: str  # the core type OpenBLAS chose (or OPENBLAS_CORETYPE named): "SkylakeX", "Haswell", ...
    gemm: dict  # np.dtype -> cblas_?gemm
    gemv: dict  # np.dtype -> cblas_?gemv
    get_threads: Any
    set_threads: Any

    def one_thread(self) -> None:
        """Back to one thread, should a threadpoolctl limit have changed this instance's count."""
        if self.get_threads() != 1:
            self.set_threads(1)


def _loaded_paths() -> set[str]:
    """Real paths of the shared libraries this process has loaded (Linux); empty where unknown."""
    try:
        with open("/proc/self/maps") as f:
            return {os.path.realpath(line.split(None, 5)[5].strip()) for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return set()


def _library_file(package: str) -> str | None:
    """The OpenBLAS file of wheel ``package``, found without importing it: its ``__init__`` loads
    the library into the global namespace (for NumPy builds that link to it), which would make it
    anyone's."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(spec.submodule_search_locations[0], "lib")
    try:
        names = sorted(
            n for n in os.listdir(folder) if n.startswith("libscipy_openblas") and n.endswith((".so", ".dylib", ".dll"))
        )
    except OSError:
        return None
    return os.path.realpath(os.path.join(folder, names[0])) if names else None


# cblas_?gemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) and
# cblas_?gemv(order, trans, M, N, alpha, A, lda, x, incx, beta, y, incy), by kind of argument
_GEMM_ARGUMENTS = "int int int index index index real pointer index pointer index real pointer index".split()
_GEMV_ARGUMENTS = "int int index index real pointer index pointer index real pointer index".split()


def _functions(dll: Any, name: str, suffix: str, arguments: list, index: Any) -> dict:
    found = {}
    for dtype, letter, real in ((np.dtype(np.float32), "s", ctypes.c_float), (np.dtype(np.float64), "d", ctypes.c_double)):
        f = getattr(dll, f"scipy_cblas_{letter}{name}{suffix}")
        f.restype = None
        f.argtypes = [{"real": real, "index": index, "int": ctypes.c_int, "pointer": ctypes.c_void_p}[a] for a in arguments]
        found[dtype] = f
    return found


@functools.cache
def library() -> Library | None:
    """gruxp's own OpenBLAS, set to one thread; None where it cannot be had (see the module docstring)."""
    for package, suffix in _PACKAGES:
        path = _library_file(package)
        if path is None or path in _loaded_paths():  # absent, or loaded by someone else: not private
            continue
        try:
            dll = ctypes.CDLL(path)
            text = functools.partial(getattr, dll)
            for name in (f"scipy_openblas_get_corename{suffix}", f"scipy_openblas_get_config{suffix}"):
                text(name).restype = ctypes.c_char_p
            config = text(f"scipy_openblas_get_config{suffix}")().decode()
            index = ctypes.c_int64 if "USE64BITINT" in config else ctypes.c_int32
            gemm = _functions(dll, "gemm", suffix, _GEMM_ARGUMENTS, index)
            gemv = _functions(dll, "gemv", suffix, _GEMV_ARGUMENTS, index)
            set_threads, get_threads = (
                text(f"scipy_openblas_set_num_threads{suffix}"),
                text(f"scipy_openblas_get_num_threads{suffix}"),
            )
        except (OSError, AttributeError):
            continue
        set_threads.argtypes, set_threads.restype, get_threads.restype = [ctypes.c_int], None, ctypes.c_int
        found = Library(
            path,
            config.split()[1] if config.startswith("OpenBLAS ") else config,
            text(f"scipy_openblas_get_corename{suffix}")().decode(),
            gemm,
            gemv,
            get_threads,
            set_threads,
        )
        found.set_threads(1)
        if _answers_exactly(found):
            return found
    return None


def _answers_exactly(lib: Library) -> bool:
    """Small integer products, exact in any order of summation, must come back as NumPy has them."""
    for dtype in lib.gemm:
        a = np.arange(1.0, 13.0, dtype=dtype).reshape(3, 4)
        b = np.arange(-4.0, 4.0, dtype=dtype).reshape(4, 2)
        c = np.full((3, 2), np.nan, dtype)
        lib.gemm[dtype](ROW_MAJOR, NO_TRANS, NO_TRANS, 3, 2, 4, 1.0, a.ctypes.data, 4, b.ctypes.data, 2, 0.0, c.ctypes.data, 2)
        v = np.full(2, np.nan, dtype)
        lib.gemv[dtype](ROW_MAJOR, TRANS, 4, 2, 1.0, b.ctypes.data, 2, a[0].ctypes.data, 1, 0.0, v.ctypes.data, 1)
        if not (np.array_equal(c, a @ b) and np.array_equal(v, a[0] @ b)):
            return False
    return True


def _layout(a: np.ndarray) -> tuple[int, int, np.ndarray]:
    """``(trans, leading dimension, array)`` of a 2-D operand as BLAS reads it (row-major), copied
    only where neither it nor its transpose has unit stride along rows."""
    rows, cols = a.shape
    item = a.itemsize
    s0, s1 = a.strides
    if (s1 == item or cols == 1) and s0 % item == 0 and s0 >= max(1, cols) * item:
        return NO_TRANS, s0 // item, a
    if (s0 == item or rows == 1) and s1 % item == 0 and s1 >= max(1, rows) * item:
        return TRANS, s1 // item, a
    a = np.ascontiguousarray(a)
    return NO_TRANS, max(1, cols), a


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` on gruxp's OpenBLAS, one thread: ``a`` (M, K) or a row (K,), ``b`` (K, N), both
    float32 or both float64, any strides; written into ``out`` (rows with unit stride) if given.
    A single row goes to GEMV, as NumPy sends it."""
    lib = library()
    dtype = a.dtype
    if lib is None or dtype != b.dtype or dtype not in lib.gemm or a.ndim not in (1, 2) or b.ndim != 2:
        raise TypeError(
            f"gruxp's BLAS multiplies 2-D float32/float64 arrays of one dtype; got {a.dtype}{a.shape} @ {b.dtype}{b.shape}"
        )
    if a.ndim == 2 and a.shape[0] == 1 and a.flags.c_contiguous and (out is None or (out.ndim == 2 and out.flags.c_contiguous)):
        # one row (a one-token step): y = bᵀ a with as little Python as it takes
        K, N = b.shape
        s0, s1 = b.strides
        item = b.itemsize
        if a.shape[1] == K and K > 1 and N > 1 and (out is None or (out.shape == (1, N) and out.dtype == dtype)):
            out = np.empty((1, N), dtype) if out is None else out
            gemv = lib.gemv[dtype]
            if s1 == item and s0 >= N * item:  # b row-major: bᵀ a
                gemv(ROW_MAJOR, TRANS, K, N, 1.0, b.ctypes.data, s0 // item, a.ctypes.data, 1, 0.0, out.ctypes.data, 1)
                return out
            if s0 == item and s1 >= K * item:  # b a transposed view of a row-major (N, K): that matrix times a
                gemv(ROW_MAJOR, NO_TRANS, N, K, 1.0, b.ctypes.data, s1 // item, a.ctypes.data, 1, 0.0, out.ctypes.data, 1)
                return out
    vector = a.ndim == 1
    a2 = a[None, :] if vector else a
    (M, K), N = a2.shape, b.shape[1]
    if out is None:
        out = np.empty((N,) if vector else (M, N), dtype)
    out2 = out.reshape(1, N) if vector else out
    if out2.shape != (M, N) or out2.dtype != dtype or (M > 0 and N > 1 and out2.strides[1] != out2.itemsize):
        raise ValueError(f"out must be a ({M}, {N}) {dtype} array with unit stride along rows; got {out.dtype}{out.shape}")
    if M == 0 or N == 0:
        return out
    if K == 0:
        out2[...] = 0
        return out
    tb, ldb, b = _layout(b)
    if M == 1:  # y = bᵀ a (b read as stored); the row of a with its own stride
        row = np.ascontiguousarray(a2[0]) if a2.strides[1] <= 0 or a2.strides[1] % a2.itemsize else a2[0]
        inc = row.strides[0] // row.itemsize if K > 1 else 1
        trans, rows, cols = (TRANS, K, N) if tb == NO_TRANS else (NO_TRANS, N, K)
        lib.gemv[dtype](ROW_MAJOR, trans, rows, cols, 1.0, b.ctypes.data, ldb, row.ctypes.data, inc, 0.0, out2.ctypes.data, 1)
        return out
    ta, lda, a2 = _layout(a2)
    ldc = out2.strides[0] // out2.itemsize if M > 1 else N
    lib.gemm[dtype](ROW_MAJOR, ta, tb, M, N, K, 1.0, a2.ctypes.data, lda, b.ctypes.data, ldb, 0.0, out2.ctypes.data, ldc)
    return out
