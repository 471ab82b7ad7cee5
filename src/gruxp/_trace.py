"""Which route ran: a public question, so that a test (or a user) can check that a fast route ran
instead of assuming it.

    with gruxp.routes_taken() as taken:
        model(x)
    taken  # [Taken(route='numpy-cpu', step='forward', how='fused (numba, compiled loop)'), ...]

Each route says what it ran when it runs a layer (forward or backward); gruxp's worker threads say
how many pieces a call handed out and to how many threads. Recording is per thread (or asyncio
task) and costs nothing outside the ``with`` block. Under ``jax.jit`` a route reports when the
program is traced, not on every call of the compiled program.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["Taken", "routes_taken"]


class Taken(NamedTuple):
    """One thing a route ran: ``route`` (its name: ``generic``, ``numpy-cpu``, a cell's CPU loop,
    ``jax``, or ``workers``), ``step`` (``forward``, ``backward`` or ``pieces``) and ``how`` in words;
    for ``workers``: ``pieces`` handed out and ``helpers``, gruxp threads asked to take some."""

    route: str
    step: str
    how: str
    pieces: int = 0
    helpers: int = 0


_log: contextvars.ContextVar[list[Taken] | None] = contextvars.ContextVar("gruxp_routes_taken", default=None)


@contextlib.contextmanager
def routes_taken() -> Iterator[list[Taken]]:
    """Record what each route runs inside the block (this thread only); yields the growing list."""
    taken: list[Taken] = []
    token = _log.set(taken)
    try:
        yield taken
    finally:
        _log.reset(token)


def record(route: str, step: str, how: str, *, pieces: int = 0, helpers: int = 0) -> None:
    """What a route calls as it runs something (nothing happens unless a block is recording)."""
    taken = _log.get()
    if taken is not None:
        taken.append(Taken(route, step, how, pieces, helpers))


def recording() -> bool:
    return _log.get() is not None
