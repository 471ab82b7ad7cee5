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


def gru_with_analytic_vjp(params, x, h0, *, run: Callable, backward: Callable, run_options: dict) -> tuple[Any, Any]:
    """``(out, h_n)`` of the functional GRU as a ``jax.custom_vjp``: ``jax.grad``, ``jax.vjp`` and
    ``jax.value_and_grad`` run gruxp's backward over the tape instead of differentiating the scan.

    ``run(params, x, h0, record=...)`` is the forward (``record=True`` also returns the tape) and
    ``backward(tape, d_out, d_hn)`` gruxp's backward. The tape's arrays are the residuals; its
    structure (sizes, flags) is static and rebuilt around them. Forward-mode (``jax.jvp``) is not
    defined for a custom_vjp function; JAX says so when asked.
    """
    static: dict[str, Any] = {}

    @jax.custom_vjp
    def gru(params, x, h0):
        out, h_n, _ = run(params, x, h0, record=False, **run_options)
        return out, h_n

    def forward(params, x, h0):
        out, h_n, tape = run(params, x, h0, record=True, **run_options)
        leaves, static["treedef"] = jax.tree_util.tree_flatten(tape, is_leaf=lambda v: v is None)
        is_array = [isinstance(v, jax.Array) for v in leaves]
        static["others"] = [None if a else v for v, a in zip(leaves, is_array, strict=True)]
        static["is_array"] = is_array
        return (out, h_n), tuple(v for v, a in zip(leaves, is_array, strict=True) if a)

    def backward_pass(arrays, cotangents):
        it = iter(arrays)
        leaves = [next(it) if a else v for v, a in zip(static["others"], static["is_array"], strict=True)]
        tape = jax.tree_util.tree_unflatten(static["treedef"], leaves)
        grads, dx, dh0 = backward(tape, *cotangents)
        return grads, dx, (None if h0 is None else dh0)

    gru.defvjp(forward, backward_pass)
    return gru(params, x, h0)
