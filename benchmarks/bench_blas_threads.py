"""The per-step recurrent GEMM with 1 and with 2 BLAS threads, on an idle and on a loaded machine.

    python benchmarks/bench_blas_threads.py [--rounds 9]

A GRU step's GEMMs are small: (B, H) @ (H, 3H) forward and (B, 3H) @ (3H, H) backward. OpenBLAS
splits them over its threads, and on a 2-core machine that another process keeps busy, a thread
that waits for the busy core stalls every step (the default `gruxp train` run was ~4.5× slower
with 2 threads than with 1 under load). This script measures both thread counts for the sizes of
`bench_cpu.py`, idle, then with one busy-looping process beside it (the "loaded" column), as
medians of per-call times over interleaved rounds. float32, as the benchmarks.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for this process (it re-executes itself); the
kernel that ran is printed (threadpoolctl).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

SIZES = [(64, 256), (32, 128), (16, 512), (1, 256), (32, 256)]  # (B, H) of bench_cpu.py's configs


def per_call(fn, min_time=0.05):
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def measure(rounds):
    rng = np.random.default_rng(0)
    rows = []
    for B, H in SIZES:
        h = rng.standard_normal((B, H), dtype=np.float32)
        w_t = rng.standard_normal((H, 3 * H), dtype=np.float32)
        d = rng.standard_normal((B, 3 * H), dtype=np.float32)
        w = rng.standard_normal((3 * H, H), dtype=np.float32)
        times = {(kind, threads): [] for kind in ("forward", "backward") for threads in (1, 2)}
        for _ in range(rounds):
            for threads in (1, 2):
                with threadpool_limits(limits=threads, user_api="blas"):
                    times["forward", threads].append(per_call(lambda: h @ w_t))
                    times["backward", threads].append(per_call(lambda: d @ w))
        rows.append(((B, H), {k: statistics.median(v) * 1e6 for k, v in times.items()}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    print(f"NumPy {np.__version__}; BLAS: " + "; ".join(f"{p['internal_api']} {p.get('version')} kernel {p.get('architecture')}, "
                                                        f"{p['num_threads']} threads" for p in blas))
    idle = measure(args.rounds)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        loaded = measure(args.rounds)
    finally:
        busy.kill()
        busy.wait()
    print("\n| B, H | GEMM | idle 1 thread µs | idle 2 threads µs | 2/1 idle | loaded 1 thread µs | loaded 2 threads µs | 2/1 loaded |")
    print("|---|---|---|---|---|---|---|---|")
    for ((B, H), a), (_, b) in zip(idle, loaded, strict=True):
        for kind, shape in (("forward", f"({B},{H})@({H},{3 * H})"), ("backward", f"({B},{3 * H})@({3 * H},{H})")):
            print(f"| {B}, {H} | {shape} | {a[kind, 1]:.1f} | {a[kind, 2]:.1f} | {a[kind, 2] / a[kind, 1]:.2f}× | "
                  f"{b[kind, 1]:.1f} | {b[kind, 2]:.1f} | {b[kind, 2] / b[kind, 1]:.2f}× |")


if __name__ == "__main__":
    main()
