"""Optional fast routes, chosen in one place: how a backend runs the shared step functions.

Two kinds, both checked against the generic code (the oracle) on every case:

* a *loop* (:func:`loop_for`): who drives the unchanged step functions through time. The generic
  one is a Python ``for`` (:func:`gruxp.functional._sequence.python_loop`), which ``jax.jit``
  unrolls, so the traced program grows with T; on JAX the loop is ``jax.lax.scan``, which traces
  the step once. Same step math, same order of operations; XLA may fuse and round differently in
  the last bits (tested at float64 ≤ 1e-12 relative).
* a *route* (:func:`route_for`): where results are written (NumPy's preallocated buffers), bit for
  bit the generic code. A route may mutate buffers it allocated itself, never anything the caller
  can see.

Set ``GRUXP_FAST_ROUTES=0`` in the environment, or use :func:`fast_routes` ``(False)``, to run the
generic code everywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from types import ModuleType

from .._namespace import is_jax_namespace, is_numpy_namespace

__all__ = ["fast_routes", "route_for", "loop_for", "differentiable_for", "compiler_for"]

_enabled = os.environ.get("GRUXP_FAST_ROUTES", "1") != "0"


@contextlib.contextmanager
def fast_routes(enabled: bool) -> Iterator[None]:
    """Turn the fast routes on or off inside a ``with`` block (not thread-safe: tests and benchmarks)."""
    global _enabled
    before, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = before


def route_for(xp: ModuleType, *, reset_after: bool) -> ModuleType | None:
    """The fast route for one GRU direction on namespace ``xp``, or None for the generic code.

    NumPy, reset_after=True: per-step temporaries are NumPy allocations of ~64-200 KB, which glibc
    serves with mmap/munmap and page faults; preallocated buffers and ``out=`` remove ~40% of the
    forward's time at B=64, H=256 (measured, see README).

    JAX: the generic direction code, compiled with ``jax.jit`` once per shape, its loop a
    ``lax.scan`` (see :func:`loop_for`); eager calls then run one compiled program per direction.
    """
    if not _enabled:
        return None
    if is_jax_namespace(xp):
        from . import jax_scan

        return jax_scan
    if not reset_after or not is_numpy_namespace(xp):
        return None
    from . import numpy_gru

    return numpy_gru


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
