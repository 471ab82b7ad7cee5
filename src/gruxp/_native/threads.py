"""How many BLAS threads the CPU loop's per-step GEMMs get: no more than there are idle cores.

A step's GEMM is small, and OpenBLAS splits it over all its threads; when another process keeps
a core busy, the thread waiting for that core stalls every step (2 threads were 0.7-43× slower
than 1 on a loaded 2-core machine, while 1.3-1.8× faster on an idle one: see
``benchmarks/bench_blas_threads.py``). So, on Linux, each call looks at how much CPU time other
processes used lately (``/proc/stat`` less this process's own) and, inside gruxp's own loop only,
limits BLAS to the cores they left idle (at least 1, at most what it had).
Without threadpoolctl, or off Linux, nothing is changed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any

__all__ = ["blas_limit", "idle_cores", "one_thread_each"]


@functools.cache
def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    blas = ThreadpoolController().select(user_api="blas")
    return blas if blas.lib_controllers else None


def _threads(blas: Any) -> int:
    """The BLAS's thread count now (the largest, if NumPy loaded several BLAS libraries)."""
    return max((lib.num_threads for lib in blas.lib_controllers), default=1)


def _cpu_seconds() -> tuple[float, float, float]:
    """(wall clock, CPU time of every process on this machine, CPU time of this process), seconds."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    ticks = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return time.monotonic(), (user + nice + system + irq + softirq + steal) / ticks, own.user + own.system


_last: list = []  # [(wall, machine CPU, own CPU), cores busy with other work]


def idle_cores() -> int | None:
    """Cores this process may use that other processes did not keep busy lately; None where unknown.

    Measured, not sampled: the CPU time every process used since the last look, less this
    process's own, over the wall time between (looks at least 0.25 s apart; until the first such
    interval, every core counts as idle). A process that appears for an instant does not count.
    """
    try:
        now = _cpu_seconds()
        cores = len(os.sched_getaffinity(0))
    except (OSError, ValueError, AttributeError):
        return None
    if not _last:
        _last[:] = [now, 0.0]
    elif now[0] - _last[0][0] >= 0.25:
        (wall, machine, own), _ = _last
        _last[:] = [now, max(0.0, ((now[1] - machine) - (now[2] - own)) / (now[0] - wall))]
    return max(1, cores - round(_last[1]))


def blas_limit(steps: int, batch: int, hidden: int) -> contextlib.AbstractContextManager:
    """A context limiting BLAS to :func:`idle_cores` threads (never more than it has), for a loop of
    ``steps`` GEMMs of (batch, hidden) @ (hidden, 3·hidden); tiny loops (under ~0.1 ms of GEMM work,
    which OpenBLAS runs on one thread anyway) are left alone, as the check costs ~0.15 ms."""
    if steps * batch * hidden * hidden < 2**20:
        return contextlib.nullcontext()
    blas = _controller()
    if blas is None:
        return contextlib.nullcontext()
    idle = idle_cores()
    if idle is None or idle >= _threads(blas):
        return contextlib.nullcontext()
    return blas.limit(limits=idle)


def one_thread_each() -> contextlib.AbstractContextManager | None:
    """A context running BLAS on one thread, for two loops at once (a bidirectional layer's
    directions, one per core), or None where that was not measured to pay: BLAS not on exactly 2
    threads, fewer than 2 idle cores, or no threadpoolctl to set it."""
    blas = _controller()
    if blas is None or _threads(blas) != 2:
        return None
    idle = idle_cores()
    return None if idle is None or idle < 2 else blas.limit(limits=1)
