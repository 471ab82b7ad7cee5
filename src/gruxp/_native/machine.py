"""A frozen description of the machine the CPU plan is made for.

Two counts of CPUs, kept apart because they may decide different things:

* ``cpus``: how many CPUs the machine (or its container's CPU quota) offers. Fixed for a process,
  it may decide how the work is cut (the plan's arithmetic): results may differ between machines
  of different sizes, never between runs on one machine.
* ``usable``: how many of them this process may run on now (its affinity, within that quota).
  ``taskset`` changes it; so it decides only how many pieces run at once, never a result.

Load is not described at all: gruxp reads neither ``/proc/stat`` nor its threads' states.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

__all__ = ["Machine", "this_machine"]


@dataclass(frozen=True)
class Machine:
    """What the CPU plan may depend on (see the module docstring for which choice may use what)."""

    cpus: int = 1
    usable: int = 1
    blas: str | None = None  # the kernel of gruxp's own OpenBLAS ("SkylakeX", "Haswell", ...), None without it
    numba: bool = False

    def __post_init__(self) -> None:
        if self.cpus < 1 or self.usable < 1:
            raise ValueError(f"a machine has at least one CPU, and one usable; got {self}")


def _quota() -> int | None:
    """The CPUs a cgroup CPU quota grants (v2 ``cpu.max``, v1 ``cfs_quota_us``), rounded up; None without one."""
    for path, parse in (
        ("/sys/fs/cgroup/cpu.max", lambda t: t.split()[:2]),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")]),
    ):
        text = _read(path)
        if text is None:
            continue
        try:
            quota, period = parse(text)
            if quota in ("max", "-1") or period is None:
                return None
            return max(1, math.ceil(int(quota) / int(period)))
        except (ValueError, TypeError):
            return None
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@functools.cache
def _fixed() -> tuple[int, str | None, bool]:
    quota = _quota()
    cpus = os.cpu_count() or 1
    from .blas import library

    lib = library()
    try:
        import numba  # noqa: F401

        numba_present = True
    except ImportError:
        numba_present = False
    return (min(cpus, quota) if quota else cpus), (lib.kernel if lib else None), numba_present


def _usable(cpus: int) -> int:
    try:
        return max(1, min(cpus, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return cpus


def this_machine() -> Machine:
    """This machine now: the fixed facts read once per process, the affinity on every call."""
    cpus = _fixed()[0]
    return _machine(_usable(cpus))


@functools.lru_cache(maxsize=64)
def _machine(usable: int) -> Machine:
    cpus, blas, numba_present = _fixed()
    return Machine(cpus=cpus, usable=usable, blas=blas, numba=numba_present)
