"""JAX: the time loop is ``jax.lax.scan`` over the unchanged step functions, compiled once per shape.

A Python ``for`` under ``jax.jit`` is unrolled: T copies of the step in the traced program, so
compile time grows with T (53 s at T = 50 for ``jax.grad`` through a 2-layer GRU). ``lax.scan``
traces the step once and compiles one loop for every T. Its contract is the generic loop's
(:func:`gruxp.functional._sequence.python_loop`), which stays the oracle.

The direction functions here are the generic ones (``direction_forward_loop`` and
``direction_backward_loop``), wrapped in ``jax.jit`` with the structure static: an eager call
compiles once per shape and then runs one program per direction, where the eager Python loop
dispatched a dozen small operations per step. Inside a user's own ``jit`` they are simply inlined.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from types import ModuleType
from typing import Any

import jax
from jax import lax


def scan_loop(body: Callable, carry: Any, xs: tuple, *, length: int, reverse: bool, xp: ModuleType) -> tuple[Any, tuple]:
    """``python_loop``'s contract through ``lax.scan`` (None entries of ``xs`` and of the outputs are
    empty pytrees to scan, exactly as they are "no array" to the generic loop)."""
    return lax.scan(body, carry, xs, length=length, reverse=reverse)


@lru_cache(maxsize=None)
def _compiled(name: str) -> Callable:
    from ..functional import _sequence

    statics = {"direction_forward_loop": ("reverse", "reset_after", "record", "xp"),
               "direction_backward_loop": ("reverse", "reset_after", "bias", "need_dx", "xp")}[name]
    return jax.jit(getattr(_sequence, name), static_argnames=statics)


def direction_forward(x, h0, p, *, mask, reverse, reset_after, record, xp):
    return _compiled("direction_forward_loop")(x, h0, p, mask=mask, reverse=reverse, reset_after=reset_after,
                                               record=record, xp=xp)


def direction_backward(tape, d_out, d_hT, p, *, mask, reverse, reset_after, bias, need_dx, xp):
    return _compiled("direction_backward_loop")(tape, d_out, d_hT, p, mask=mask, reverse=reverse, reset_after=reset_after,
                                                bias=bias, need_dx=need_dx, xp=xp)
