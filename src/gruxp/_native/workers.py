"""gruxp's own threads: they run the pieces of a call at once, and decide nothing.

A call hands :func:`run` its tasks (independent pieces, cut by the plan) and how many threads
may take them at once. The calling thread takes tasks too, so a call never waits on a thread
busy with another call's tasks: if none is free, the caller runs them all itself, one after the
other, with the same results. Only numba's compiled loops and gruxp's BLAS calls release the
GIL; that is where threads pay.

The threads are named ``gruxp-worker-N``: daemons, started on first use, as many as the largest
call asked for less one, forgotten in a forked child. They change nothing process-wide (no BLAS
setting, no environment, no other thread's affinity); each keeps scratch buffers of its own, which
:func:`gruxp._native.clear_buffers` lets go of. A worker taking a call's tasks first moves itself
(its own affinity) off the caller's current core, among the cores the caller may use: the kernel
wakes a sleeping thread beside the thread that woke it and moves it only milliseconds later, which
would run the first pieces of a call on one core (see benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable, Sequence

from .._trace import record, recording

__all__ = ["run", "in_worker"]

_jobs: queue.SimpleQueue = queue.SimpleQueue()
_threads: list[threading.Thread] = []
_start_lock = threading.Lock()
_local = threading.local()


class _Batch:
    """One call's tasks, taken one at a time by whichever thread asks next."""

    def __init__(self, tasks: Sequence[Callable[[], None]], cores: set | None = None) -> None:
        self.tasks = tasks
        self.cores = cores  # where a worker should run: the caller's cores but its current one (None: anywhere)
        self.next = 0
        self.done = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def work(self) -> None:
        while True:
            with self.lock:
                i = self.next
                self.next += 1
            if i >= len(self.tasks):
                return
            try:
                self.tasks[i]()
            except BaseException as exc:  # handed to the caller, after every task ran
                with self.lock:
                    self.error = self.error or exc
            finally:
                with self.lock:
                    self.done += 1
                    if self.done == len(self.tasks):
                        self.finished.set()


def _serve() -> None:
    _local.worker = True
    while True:
        batch = _jobs.get()
        if batch.cores:
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(0, batch.cores)  # this thread only (Linux): a thread of gruxp's own
        batch.work()


@functools.cache
def _sched_getcpu() -> Callable[[], int] | None:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None


def _cores_but_this_one() -> set | None:
    """The cores the calling thread may use, less the one it runs on now; None where unknown or empty."""
    getcpu = _sched_getcpu()
    try:
        cores = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return None
    here = -1 if getcpu is None else getcpu()
    if here < 0:
        return None
    return (cores - {here}) or None


def _ensure(count: int) -> None:
    with _start_lock:
        while len(_threads) < count:
            thread = threading.Thread(target=_serve, name=f"gruxp-worker-{len(_threads) + 1}", daemon=True)
            thread.start()
            _threads.append(thread)


def in_worker() -> bool:
    """Whether the calling thread is one of gruxp's workers."""
    return getattr(_local, "worker", False)


def run(tasks: Sequence[Callable[[], None]], workers: int) -> None:
    """Run every task, on up to ``workers`` threads at once (the caller's included); raise the
    first task's exception, after all have run. From a worker thread, tasks run in that thread."""
    helpers = min(workers, len(tasks)) - 1
    if recording():
        asked = 0 if helpers <= 0 or in_worker() else helpers
        record(
            "workers",
            "pieces",
            f"{len(tasks)} pieces, {asked} of gruxp's threads asked to help",
            pieces=len(tasks),
            helpers=asked,
        )
    if helpers <= 0 or in_worker():
        for task in tasks:
            task()
        return
    batch = _Batch(tasks, _cores_but_this_one())
    _ensure(helpers)
    for _ in range(helpers):
        _jobs.put(batch)
    batch.work()
    batch.finished.wait()
    if batch.error is not None:
        raise batch.error


def _forget() -> None:
    global _jobs, _start_lock
    _threads.clear()  # a forked child has none of the parent's threads
    _jobs, _start_lock = queue.SimpleQueue(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)
