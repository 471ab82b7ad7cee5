"""The seam between the core and the routes: routes register here, the core imports none of them.

The core (:mod:`gruxp.functional`) writes a layer's forward and backward once, as direction
functions over the shared step (``direction_forward_loop``, ``direction_backward_loop``) that
take their time loop as an argument. A *route* decides how a backend runs them: which loop
drives the step (a Python ``for``; ``jax.lax.scan``), whether a compiler takes the whole
function (``jax.jit``), or whether an executor of its own runs the layer (the CPU's fused loop).
It receives the core's functions; it never looks them up, and never computes anything the core
does not define.

:class:`Route` is the generic route, the oracle of every other: it runs the direction functions
as they are, with :func:`python_loop`. Backend routes subclass it and call :func:`register`
(:mod:`gruxp._native` registers NumPy's and JAX's when ``gruxp`` is imported). With the setting
``fast_routes=False`` (see :func:`gruxp.config_context`) every namespace gets the generic route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from .._config import get_config
from .._trace import record

__all__ = ["Route", "GENERIC", "python_loop", "register", "route_for"]


def python_loop(body: Callable, carry: Any, xs: tuple, *, length: int, reverse: bool, xp: ModuleType) -> tuple[Any, tuple]:
    """The generic time loop, and the oracle of every other: ``carry, y_t = body(carry, x_t)`` for
    t = 0..T−1 (T−1..0 with ``reverse``), with ``xs`` a tuple of (T, ...) arrays (or None) sliced at
    t and the ``y_t`` stacked back in time order. ``jax.lax.scan`` has exactly this contract.
    """
    ys: list[Any] = [None] * length
    for t in range(length - 1, -1, -1) if reverse else range(length):
        carry, ys[t] = body(carry, tuple(None if a is None else a[t, ...] for a in xs))
    stacked = tuple(None if ys[0][i] is None else xp.stack([y[i] for y in ys], axis=0) for i in range(len(ys[0])))
    return carry, stacked


class Route:
    """The generic route: the core's direction functions, run as they are, one after the other.

    ``layer_forward(forward, calls)`` and ``layer_backward(backward, calls)`` get the core's
    direction function and one :class:`~gruxp.functional._sequence.ForwardCall` (or ``BackwardCall``)
    per direction (a bidirectional layer: two), and return one result per direction, as
    ``call.run(forward, loop)`` would.
    """

    name = "generic"
    # Whether a bidirectional layer's tape may keep its states as slices of the layer's output
    # (False for a route whose tape lays out the states its own way).
    shares_states = True

    def claims(self, xp: ModuleType) -> bool:
        """Whether this route runs namespace ``xp``."""
        return True

    def loop(self, body: Callable, carry: Any, xs: tuple, *, length: int, reverse: bool, xp: ModuleType) -> tuple[Any, tuple]:
        return python_loop(body, carry, xs, length=length, reverse=reverse, xp=xp)

    def layer_forward(self, forward: Callable, calls: Sequence[Any]) -> list:
        record("generic", "forward", "the direction functions, one step at a time in a Python loop")
        return [call.run(forward, self.loop) for call in calls]

    def layer_backward(self, backward: Callable, calls: Sequence[Any]) -> list:
        record("generic", "backward", "the direction functions, one step at a time in a Python loop")
        return [call.run(backward, self.loop) for call in calls]

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b`` for 2-D arrays: the product every layer of the core makes through its route."""
        return a @ b

    def differentiable(self, xp: ModuleType) -> Callable | None:
        """A wrapper giving an inference call gruxp's backward as its derivative in the namespace's
        own autodiff (JAX's custom_vjp), or None where none is needed."""
        return None

    def compiler(self, xp: ModuleType) -> Callable | None:
        """The namespace's compiler for a whole training step (``jax.jit``), or None."""
        return None

    def placed(self, tree: Any) -> Any:
        """``tree``'s arrays placed as a compiled step returns them (JAX: committed to their device),
        so that a step's first call compiles the program every later call runs."""
        return tree


GENERIC = Route()
_registered: list[Route] = []


def register(route: Route) -> None:
    """Offer ``route`` for the namespaces it claims (a later registration of the same name replaces it)."""
    _registered[:] = [r for r in _registered if r.name != route.name] + [route]


def route_for(xp: ModuleType) -> Route:
    """The route that runs namespace ``xp`` now: the first registered one that claims it, or the
    generic one (always, with ``fast_routes=False``)."""
    if get_config()["fast_routes"]:
        for route in _registered:
            if route.claims(xp):
                return route
    return GENERIC
