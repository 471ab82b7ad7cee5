"""How many BLAS threads the CPU loop's per-step GEMMs get: no more than there are idle cores.

A step's GEMM is small, and OpenBLAS splits it over all its threads; when another process keeps
a core busy, the thread waiting for that core stalls every step (2 threads were 0.7-43× slower
than 1 on a loaded 2-core machine, while 1.3-1.8× faster on an idle one: see
``benchmarks/bench_blas_threads.py``). So, on Linux, each call looks at how much CPU time other
processes used lately (``/proc/stat`` less this process's own) and, inside gruxp's own loop only,
limits BLAS to the cores they left idle (at least 1, at most what it had).
Without threadpoolctl, or off Linux, nothing is changed.

Two loops may also run at once, one per core with BLAS on one thread each (:func:`one_thread_each`:
both cores idle, and no other thread of this process running, such as OpenBLAS's spinning workers),
the second thread placed on a core other than the caller's (:func:`cores_but_this_one`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from typing import Any

__all__ = ["blas_limit", "blas_threads", "cores_but_this_one", "idle_cores", "l2_bytes", "one_thread_each", "others_running"]


@functools.cache
def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    blas = ThreadpoolController().select(user_api="blas")
    return blas if blas.lib_controllers else None


def blas_threads() -> int | None:
    """How many threads NumPy's BLAS would use for a call now (None without threadpoolctl)."""
    blas = _controller()
    return None if blas is None else _threads(blas)


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
        cores = len(os.sched_getaffinity(0))
        if _last and time.monotonic() - _last[0][0] < 0.25:  # within the interval: /proc/stat not read again
            return max(1, cores - round(_last[1]))
        now = _cpu_seconds()
    except (OSError, ValueError, AttributeError):
        return None
    if not _last:
        _last[:] = [now, 0.0]
    else:
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


def one_thread_each(own: frozenset = frozenset()) -> contextlib.AbstractContextManager | None:
    """A context running BLAS on one thread, for two loops at once (one per core), or None where
    that was not measured to pay: BLAS not on exactly 2 threads, fewer than 2 idle cores, another
    thread of this process running (besides the caller and the native thread ids ``own``), or no
    threadpoolctl to set it.

    The other thread is, most often, one of OpenBLAS's own: after each call it ran on several
    threads, its workers spin for ~0.1 s (2²⁸ clock ticks, sched_yield in a loop) before they
    sleep. Two loops started meanwhile share their cores with it: a forward at B=32, T=200, H=128
    took 14.7 ms in halves at once against 7.5 ms with the workers asleep (10.2 ms in one piece).
    """
    blas = _controller()
    if blas is None or _threads(blas) != 2:
        return None
    if others_running(own | {threading.get_native_id()}) != 0:  # the most frequent "no": checked first
        return None
    idle = idle_cores()
    return None if idle is None or idle < 2 else blas.limit(limits=1)


def others_running(own) -> int | None:
    """How many threads of this process, other than the native thread ids ``own``, are running
    or ready to run now (state R in /proc; a sleeping or waiting thread is S); None where unknown."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    running = 0
    for tid in tids:
        if int(tid) in own:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                running += f.read().rsplit(b")", 1)[1].split(None, 1)[0] == b"R"
        except OSError:  # it ended meanwhile
            continue
    return running


@functools.cache
def _sched_getcpu() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None


def cores_but_this_one() -> set | None:
    """The cores this thread may run on, less the one it runs on now; None where unknown or empty.

    For the second of two loops at once: a thread woken after a pause is placed beside the thread
    that woke it, and the kernel moves it to the idle core only a few milliseconds later (a
    forward at B=32, T=200, H=128 in halves took 14.8 ms after a 0.3 s pause, 8.7 ms with the
    second thread placed here).
    """
    getcpu = _sched_getcpu()
    try:
        cores = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return None
    here = -1 if getcpu is None else getcpu()
    if here < 0:
        return None
    return (cores - {here}) or None


@functools.cache
def l2_bytes() -> int:
    """The size of one core's L2 cache (Linux sysfs), or 1 MiB where it cannot be read."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(i for i in os.listdir(root) if i.startswith("index")):
            with open(f"{root}/{index}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{root}/{index}/size") as f:
                size = f.read().strip().upper()
            scale = {"K": 2**10, "M": 2**20}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 2**20
