"""The one impure step before the pure plan: the settings in effect here and this machine.

:func:`gruxp._native.plan.plan_for` is a pure function of its arguments; every caller that plans a
real call (the CPU route, the cells' CPU loops, ``cpu_plan`` and ``gruxp info --plan``) reads the
settings (:func:`gruxp.config_context`) and probes the machine here, once, the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._config import get_config
from .machine import Machine, this_machine
from .plan import CellPlan, Plan, Shape, plan_for

__all__ = ["planned"]


def planned(
    cell: str, shape: Shape, dtype: Any, *, options: Mapping[str, Any] | None = None, machine: Machine | None = None
) -> Plan | CellPlan:
    """``plan_for`` on this machine (or ``machine``) under the settings in effect: the fuser, the
    forced choices (``cpu_plan``) and the thread cap."""
    config = get_config()
    return plan_for(
        cell,
        shape,
        dtype,
        machine or this_machine(),
        fuser=config["fuser"],
        force=config["cpu_plan"],
        max_workers=config["max_workers"],
        options=options,
    )
