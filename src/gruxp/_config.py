"""gruxp's settings: scoped like ``numpy.errstate`` or scikit-learn's ``config_context``.

A setting lives in a context variable, so each thread and each asyncio task sees its own: a
``with gruxp.config_context(fast_routes=False):`` block in one thread never changes what another
thread runs. A new thread starts from the process defaults, which :func:`set_config` changes
and the environment gives at import (``GRUXP_FAST_ROUTES=0``, ``GRUXP_FUSER=numpy``).

Settings choose *which* code runs, never what it computes: each route is tested against the
generic code (see :mod:`gruxp._native`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["config_context", "get_config", "set_config"]

FUSERS = ("auto", "numba", "numpy")


def _check(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown gruxp setting {unknown[0]!r}; the settings are {', '.join(sorted(_DEFAULTS))}")
    out = dict(options)
    if "fast_routes" in out and not isinstance(out["fast_routes"], bool):
        raise TypeError(f"fast_routes must be True or False; got {out['fast_routes']!r}")
    if "fuser" in out and out["fuser"] not in FUSERS:
        raise ValueError(f"fuser must be one of {FUSERS}; got {out['fuser']!r}")
    if "max_workers" in out:
        n = out["max_workers"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"max_workers must be a positive int or None; got {n!r}")
    if "cpu_plan" in out:
        plan = out["cpu_plan"]
        if not isinstance(plan, Mapping):
            raise TypeError(f"cpu_plan must be a mapping of plan fields to forced values; got {type(plan).__name__}")
        from ._native.plan import PLAN_FIELDS  # the plan's own fields (imported late: _native reads this module)

        bad = sorted(set(plan) - set(PLAN_FIELDS))
        if bad:
            raise ValueError(f"cpu_plan names no plan field {bad[0]!r}; the fields are {', '.join(PLAN_FIELDS)}")
        out["cpu_plan"] = dict(plan)
    return out


_DEFAULTS: dict[str, Any] = {
    # False runs the generic code (the oracle) on every namespace.
    "fast_routes": os.environ.get("GRUXP_FAST_ROUTES", "1") != "0",
    # The CPU route's fuser: "auto" (numba where it is installed and the work is large enough to
    # repay its compile, else NumPy), "numba" or "numpy".
    "fuser": os.environ.get("GRUXP_FUSER", "auto"),
    # At most this many threads run one call's pieces at once (None: the CPUs this process may
    # use). Scheduling only: the same bits for any value.
    "max_workers": None,
    # Forced choices of the CPU plan, for tests and experiments (see gruxp._native.plan.Plan):
    # e.g. {"pieces": 3, "chunk": 2}. A forced plan computes other bits than the default one.
    "cpu_plan": {},
}
_DEFAULTS.update(_check({k: _DEFAULTS[k] for k in ("fast_routes", "fuser")}))
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("gruxp_config", default=None)


def get_config() -> dict[str, Any]:
    """The settings in effect here (this thread or task): a copy, changing it changes nothing."""
    current = _current.get()
    return dict(_DEFAULTS if current is None else current)


def set_config(**options: Any) -> None:
    """Change settings for the rest of this context, and the process defaults that new threads start from.

    Options: ``fast_routes`` (bool), ``fuser`` (``"auto"``, ``"numba"``, ``"numpy"``),
    ``max_workers`` (int or None), ``cpu_plan`` (a mapping of forced plan choices).
    """
    checked = _check(options)
    _DEFAULTS.update(checked)
    current = _current.get()
    if current is not None:
        _current.set({**current, **checked})


@contextlib.contextmanager
def config_context(**options: Any) -> Iterator[None]:
    """Change settings inside a ``with`` block, for this thread or task only (see :func:`set_config`)."""
    token = _current.set({**get_config(), **_check(options)})
    try:
        yield
    finally:
        _current.reset(token)
