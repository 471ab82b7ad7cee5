"""JAX: the time loop is ``jax.lax.scan`` over the unchanged step functions, compiled once per shape.

A Python ``for`` under ``jax.jit`` is unrolled: T copies of the step in the traced program, so
compile time grows with T. ``lax.scan`` traces the step once and compiles one loop for every T.
Its contract is the generic loop's (:func:`gruxp.functional._routes.python_loop`), which stays the
oracle.

:class:`JaxRoute` receives the core's direction functions and wraps each in ``jax.jit`` with the
structure static: an eager call compiles once per shape and then runs one program per direction,
where the eager Python loop dispatched a dozen small operations per step. Inside a user's own
``jit`` they are simply inlined. JAX is imported on first use, never by ``import gruxp``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from types import ModuleType
from typing import Any

from .._namespace import is_jax_namespace
from .._trace import record
from ..functional._routes import Route

__all__ = ["JaxRoute", "gru_with_analytic_vjp", "scan_loop"]

_STATIC = ("reverse", "record", "bias", "need_dx", "xp", "loop")  # the stack driver's; each cell adds its own


def scan_loop(body: Callable, carry: Any, xs: tuple, *, length: int, reverse: bool, xp: ModuleType) -> tuple[Any, tuple]:
    """``python_loop``'s contract through ``lax.scan`` (None entries of ``xs`` and of the outputs are
    empty pytrees to scan, exactly as they are "no array" to the generic loop)."""
    from jax import lax

    return lax.scan(body, carry, xs, length=length, reverse=reverse)


@cache
def _compiled(function: Callable) -> Callable:
    """``function`` under ``jax.jit``, its structural keywords static: the driver's, and those its cell
    declares (``Cell.static``, found through :mod:`gruxp.cells`); once per function."""
    import inspect

    import jax

    from .. import cells

    spec = cells.for_function(function)
    static = _STATIC + (() if spec is None else tuple(spec.cell.static))
    names = [name for name in static if name in inspect.signature(function).parameters]
    return jax.jit(function, static_argnames=names)


class JaxRoute(Route):
    """JAX arrays: the core's direction functions under ``jax.jit``, their loop ``lax.scan``; gruxp's
    backward as ``jax.grad``'s derivative; ``jax.jit`` for a whole training step."""

    name = "jax"

    def claims(self, xp: ModuleType) -> bool:
        return is_jax_namespace(xp)

    def loop(self, body: Callable, carry: Any, xs: tuple, *, length: int, reverse: bool, xp: ModuleType) -> tuple[Any, tuple]:
        return scan_loop(body, carry, xs, length=length, reverse=reverse, xp=xp)

    def layer_forward(self, forward: Callable, calls: Any) -> list:
        record("jax", "forward", "the direction functions under jax.jit, their loop lax.scan")
        return [_compiled(forward)(**_time_order(call).keywords(), loop=scan_loop) for call in calls]

    def layer_backward(self, backward: Callable, calls: Any) -> list:
        record("jax", "backward", "the direction functions under jax.jit, their loop lax.scan")
        return [_compiled(backward)(**_time_order(call).keywords(), loop=scan_loop) for call in calls]

    def differentiable(self, xp: ModuleType) -> Callable:
        return gru_with_analytic_vjp

    def compiler(self, xp: ModuleType) -> Callable:
        import jax

        return jax.jit

    def placed(self, tree: Any) -> Any:
        import jax

        return jax.tree_util.tree_map(
            lambda a: jax.device_put(a, next(iter(a.devices()))) if isinstance(a, jax.Array) else a, tree
        )


def _time_order(call: Any) -> Any:
    """A cell that may run its recurrence in parallel over time (the ``parallel`` keyword, see
    :class:`gruxp.functional.Cell`) runs it step by step on XLA's CPU backend: nothing there runs the
    steps of time at once, and the scan's two levels pay for their transposes (benchmarks/README.md).
    On an accelerator the call keeps its choice. Both are tested against the generic code."""
    options = call.options
    if "parallel" in (options if isinstance(options, Mapping) else options._fields):
        import jax

        if jax.default_backend() == "cpu":
            parallel = {**options, "parallel": False} if isinstance(options, Mapping) else options._replace(parallel=False)
            return call._replace(options=parallel)
    return call


def gru_with_analytic_vjp(params, x, h0, *, run: Callable, backward: Callable, run_options: dict) -> tuple[Any, Any]:
    """``(out, h_n)`` of the functional GRU as a ``jax.custom_vjp``: ``jax.grad``, ``jax.vjp`` and
    ``jax.value_and_grad`` run gruxp's backward over the tape instead of differentiating the scan.

    ``run(params, x, h0, record=...)`` is the forward (``record=True`` also returns the tape) and
    ``backward(tape, d_out, d_hn)`` gruxp's backward. The tape's arrays are the residuals; its
    structure (sizes, flags) is static and rebuilt around them. Forward-mode (``jax.jvp``) is not
    defined for a custom_vjp function; JAX says so when asked.
    """
    import jax

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
        record("jax", "derivative", "gruxp's backward over the tape, as jax.grad's derivative (custom_vjp)")
        it = iter(arrays)
        leaves = [next(it) if a else v for v, a in zip(static["others"], static["is_array"], strict=True)]
        tape = jax.tree_util.tree_unflatten(static["treedef"], leaves)
        grads, dx, dh0 = backward(tape, *cotangents)
        return grads, dx, (None if h0 is None else dh0)

    gru.defvjp(forward, backward_pass)
    return gru(params, x, h0)
