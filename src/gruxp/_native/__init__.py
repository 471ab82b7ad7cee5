"""Optional fast routes, chosen in one place: how a backend runs the shared step functions.

Two kinds, both checked against the generic code (the oracle) on every case:

* a *loop* (:func:`loop_for`): who drives the unchanged step functions through time. The generic
  one is a Python ``for`` (:func:`gruxp.functional._sequence.python_loop`), which ``jax.jit``
  unrolls, so the traced program grows with T; on JAX the loop is ``jax.lax.scan``, which traces
  the step once. Same step math, same order of operations; XLA may fuse and round differently in
  the last bits (tested at float64 ≤ 1e-12 relative).
* a *fused loop* (:func:`fused_loop_for`, NumPy on the CPU): the loop with preallocated buffers,
  one GEMM per step, and the step's element-wise part (the shared ``gates_forward`` /
  ``gates_backward``) applied by a *fuser*: numba, compiling the shared functions into one pass
  (tested at float64 ≤ 1e-12 relative), or, without numba, NumPy calling them on whole blocks (bit
  for bit the generic code). See :mod:`gruxp._native.cpu`.
* a *route* (:func:`route_for`, JAX): the generic direction functions compiled with ``jax.jit``.

A route may mutate buffers it allocated itself, never anything the caller can see.

Set ``GRUXP_FAST_ROUTES=0`` in the environment, or use :func:`fast_routes` ``(False)``, to run the
generic code everywhere; ``GRUXP_FUSER=numpy`` (or ``fast_routes(True, fuser="numpy")``) keeps the
fused loop but not numba.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from .._namespace import is_jax_namespace, is_numpy_namespace

__all__ = ["clear_buffers", "fast_routes", "fuser_name", "fused_loop_for", "route_for", "loop_for", "differentiable_for", "compiler_for",
           "run_directions", "run_pair"]

_FUSERS = ("auto", "numba", "numpy")
_enabled = os.environ.get("GRUXP_FAST_ROUTES", "1") != "0"
_fuser = os.environ.get("GRUXP_FUSER", "auto")


@contextlib.contextmanager
def fast_routes(enabled: bool, *, fuser: str | None = None) -> Iterator[None]:
    """Turn the fast routes on or off inside a ``with`` block, and optionally choose the CPU fuser
    (``"auto"``: numba if it imports, else NumPy; ``"numba"``; ``"numpy"``). Not thread-safe: for
    tests and benchmarks."""
    global _enabled, _fuser
    if fuser is not None and fuser not in _FUSERS:
        raise ValueError(f"fuser must be one of {_FUSERS}; got {fuser!r}")
    before = _enabled, _fuser
    _enabled, _fuser = bool(enabled), (_fuser if fuser is None else fuser)
    try:
        yield
    finally:
        _enabled, _fuser = before


def fuser_name() -> str | None:
    """Which fuser the CPU's fused loop uses now: ``"numba"``, ``"numpy"``, or None (routes off)."""
    if not _enabled:
        return None
    if _fuser != "auto":
        return _fuser  # numba by name: an ImportError says why it cannot be
    return "numba" if _numba_available() else "numpy"


@functools.cache
def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


_loops: dict = {}  # (fuser, dtype name) -> FusedLoop, built on first use


def _fused_loop(name: str, dtype: str):
    if (name, dtype) not in _loops:
        from .cpu import FusedLoop, numpy_fuser
        from .threads import blas_limit

        if name == "numpy":
            fuser = numpy_fuser
        else:
            from .numba_kernels import fuser as numba_fuser

            fuser = numba_fuser(dtype)
        _loops[name, dtype] = FusedLoop(fuser, blas_limit, run_pair)
    return _loops[name, dtype]


def clear_buffers() -> None:
    """Free the CPU loop's scratch buffers and idle tape blocks (input projections, per-step
    gradients: a few times the tape's size, kept between calls to avoid re-faulting fresh pages),
    the calling thread's and those of the thread that runs a second direction."""
    _clear_this_thread()
    if _second is not None:
        _second.submit(_clear_this_thread).result()


def _clear_this_thread() -> None:
    for loop in _loops.values():
        loop.clear_buffers()


# numba compiles its kernels once per process (~5-10 s here); below this much work per direction
# call (T·B·H², about 1 ms of GEMM) the "auto" fuser stays with NumPy, which compiles nothing
NUMBA_MIN_WORK = 2**22


def fused_loop_for(xp: ModuleType, *, reset_after: bool, dtype, work: int | None = None) -> Any:
    """The CPU's fused time loop for one direction (a :class:`gruxp._native.cpu.FusedLoop`), or None.

    NumPy, reset_after=True, float32 or float64. reset_before puts a GEMM between the gates and
    the candidate; it runs the generic loop. ``work`` (T·B·H²) below :data:`NUMBA_MIN_WORK` picks
    the NumPy fuser unless numba was asked for by name.
    """
    if not (_enabled and reset_after and is_numpy_namespace(xp)):
        return None
    name = str(getattr(dtype, "name", dtype))
    if name not in ("float32", "float64"):
        return None
    fuser = fuser_name()
    if fuser == "numba" and _fuser == "auto" and work is not None and work < NUMBA_MIN_WORK:
        fuser = "numpy"
    return _fused_loop(fuser, name)


_second = None  # gruxp's second thread: a layer's second direction, or a batch's second half; started on first use
_second_id = -1  # its native thread id
_pair_running = threading.Lock()


def _forget_second() -> None:
    global _second, _second_id, _pair_running
    _second, _second_id = None, -1  # a forked child inherits the executor but not its thread: it would wait forever
    _pair_running = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_second)


def _on_cores(cores, call: Callable[[], Any]) -> Any:
    if cores is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cores)  # this thread only (Linux)
    return call()


def run_pair(first: Callable[[], Any], second: Callable[[], Any]) -> bool:
    """Run two independent calls at once, each on its own core with BLAS on one thread (the second
    on gruxp's own thread), and return True; or call neither and return False, where
    :func:`gruxp._native.threads.one_thread_each` says two cores are not free, or a pair is
    running already (a direction of a pair does not split again). The second thread is put on a
    core other than the caller's (see :func:`gruxp._native.threads.cores_but_this_one`). Only for
    calls that release the GIL (numba's compiled loops)."""
    global _second, _second_id
    if not _pair_running.acquire(blocking=False):
        return False
    try:
        from .threads import cores_but_this_one, one_thread_each

        limit = one_thread_each(frozenset({_second_id}))
        if limit is None:
            return False
        if _second is None:
            from concurrent.futures import ThreadPoolExecutor

            _second = ThreadPoolExecutor(1, thread_name_prefix="gruxp-second")
            _second_id = _second.submit(threading.get_native_id).result()
        cores = cores_but_this_one()
        with limit:
            other = _second.submit(_on_cores, cores, second)
            try:
                first()
            finally:
                other.result()
        return True
    finally:
        _pair_running.release()


def run_directions(calls: list[Callable[[], Any]], *, xp: ModuleType, reset_after: bool, dtype, work: int) -> list:
    """``[call() for call in calls]``: a layer's directions, each a call of the whole direction.

    A bidirectional layer's two directions are independent; where the CPU's compiled loop runs
    them (its numba code releases the GIL) and two cores are free (:func:`run_pair`), they run at
    once, each on its own core with BLAS on one thread: each step's small GEMM loses less on one
    thread than the element-wise pass, run alone, leaves idle. Same functions, same buffers (per
    thread), same results: the order of operations within a direction does not change.
    """
    if len(calls) == 2 and work >= NUMBA_MIN_WORK:
        loop = fused_loop_for(xp, reset_after=reset_after, dtype=dtype, work=work)
        if loop is not None and loop.compiled:
            results = [None, None]

            def call(i: int) -> None:
                results[i] = calls[i]()

            if run_pair(lambda: call(0), lambda: call(1)):
                return results
    return [call() for call in calls]


def route_for(xp: ModuleType, *, reset_after: bool) -> ModuleType | None:
    """The fast route for one GRU direction on namespace ``xp``, or None for the generic code.

    JAX: the generic direction code, compiled with ``jax.jit`` once per shape, its loop a
    ``lax.scan`` (see :func:`loop_for`); eager calls then run one compiled program per direction.
    (NumPy's fast path sits inside the generic direction code: :func:`fused_loop_for`.)
    """
    if not (_enabled and is_jax_namespace(xp)):
        return None
    from . import jax_scan

    return jax_scan


def loop_for(xp: ModuleType, generic: Callable) -> Callable:
    """The time loop for namespace ``xp``: ``jax.lax.scan`` on JAX, else ``generic``."""
    if _enabled and is_jax_namespace(xp):
        from .jax_scan import scan_loop

        return scan_loop
    return generic


def differentiable_for(xp: ModuleType) -> Callable | None:
    """On JAX, the wrapper that gives the inference call gruxp's own backward as its VJP (so
    ``jax.grad`` never differentiates the scan); None elsewhere, or with the routes off."""
    if not (_enabled and is_jax_namespace(xp)):
        return None
    from .jax_scan import gru_with_analytic_vjp

    return gru_with_analytic_vjp


def compiler_for(xp: ModuleType) -> Callable | None:
    """``jax.jit`` on JAX (a whole training step becomes one compiled function), else None."""
    if not (_enabled and is_jax_namespace(xp)):
        return None
    import jax

    return jax.jit
