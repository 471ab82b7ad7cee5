"""Optional fast routes: backend-specific re-implementations of hot loops, chosen in one place.

Each route computes exactly what the generic array-API code computes, operation for operation,
so the generic code is its oracle: the tests compare the two bit for bit. A route may mutate
buffers it allocated itself, never anything the caller can see.

Set ``GRUXP_FAST_ROUTES=0`` in the environment, or use :func:`fast_routes` ``(False)``, to run the
generic code everywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

from .._namespace import is_numpy_namespace

__all__ = ["fast_routes", "route_for"]

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
    """
    if not _enabled or not reset_after or not is_numpy_namespace(xp):
        return None
    from . import numpy_gru

    return numpy_gru
