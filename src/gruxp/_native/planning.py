"""The one impure step before the pure plan: the settings in effect here and this machine.

:func:`gruxp._native.plan.plan_for` is a pure function of its arguments; every caller that plans a
real call (the CPU route, the cells' CPU loops, ``cpu_plan`` and ``gruxp info --plan``) reads the
settings (:func:`gruxp.config_context`) and probes the machine here, once, the same way. Being pure,
each answer is kept by its question: a one-token call asks the same question thousands of times and
pays for a dictionary look-up.
"""

from __future__ import annotations

from typing import Any

from .._config import get_config
from .machine import Machine, this_machine
from .plan import CellPlan, Plan, Shape, plan_for

__all__ = ["planned"]

_answers: dict[tuple, Plan | CellPlan] = {}


def planned(
    cell: str,
    steps: int,
    batch: int,
    inputs: int,
    hidden: int,
    directions: int,
    dtype: Any,
    *,
    options: tuple[tuple[str, Any], ...] = (),
    machine: Machine | None = None,
) -> Plan | CellPlan:
    """``plan_for(cell, Shape(steps, batch, inputs, hidden, directions), dtype, ...)`` on this machine
    (or ``machine``) under the settings in effect: the fuser, the forced choices (``cpu_plan``) and the
    thread cap; ``options`` the cell's structure options as ``(name, value)`` pairs
    (``(("reset_after", True),)``: part of the question as they are)."""
    config = get_config()
    machine = machine or this_machine()
    force = config["cpu_plan"]
    key = (cell, steps, batch, inputs, hidden, directions, dtype, machine, config["fuser"], config["max_workers"],
           options, tuple(sorted(force.items())) if force else ())  # fmt: skip
    found = _answers.get(key)
    if found is None:
        shape = Shape(steps, batch, inputs, hidden, directions)
        found = plan_for(
            cell,
            shape,
            dtype,
            machine,
            fuser=config["fuser"],
            force=force,
            max_workers=config["max_workers"],
            options=dict(options),
        )
        if len(_answers) >= 256:
            _answers.clear()
        _answers[key] = found
    return found
