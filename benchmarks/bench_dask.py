"""Dask scaling on this machine: batch inference and one data-parallel training step.

    python benchmarks/bench_dask.py

predict: B=2048, T=100, I=H=128, float32, data made on the workers and the output reduced there
(its mean), a 1- and a 2-worker LocalCluster (processes, 1 thread each, BLAS pinned to 1 thread)
against a single NumPy process with 1 BLAS thread, and the threaded scheduler (2 chunks per core).
Training: one full-batch step (forward, backward, Adam) of
GRU(64→128) → LastStep → Linear on B=640, T=50, float64, shards loaded on the workers.
Medians of 5. 2 cores is not a cluster: the scheduler, nanny and client share the same cores.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import dask.array as da  # noqa: E402
import distributed  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import gruxp  # noqa: E402
from gruxp import distributed as gd  # noqa: E402
from gruxp import losses, optim  # noqa: E402

ROUNDS = 5


def median_time(fn) -> float:
    fn()
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_shard(i, n):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((640, 50, 64)), rng.standard_normal((640, 1))
    rows = np.array_split(np.arange(640), n)[i]
    return x[rows], y[rows]


def regressor():
    return gruxp.Sequential(
        gru=gruxp.GRU(64, 128, batch_first=True, seed=0, dtype="float64"),
        last=gruxp.LastStep(batch_first=True),
        head=gruxp.Linear(128, 1, seed=1, dtype="float64"),
    )


def main() -> None:
    gru = gruxp.GRU(128, 128, seed=0)
    # The data is made by tasks (on the workers, with a cluster) and the result is reduced there:
    # scoring many sequences means writing or summarising results where they are, not shipping them.
    dx = da.random.default_rng(0).standard_normal((100, 2048, 128), chunks=(100, 512, 128), dtype=np.float32)
    x = dx.compute()
    rows = []
    with threadpool_limits(1):
        single = median_time(lambda: float(gru(x)[0].mean()))
    rows.append(("predict", "single process, 1 BLAS thread", single, 1.0))
    threaded = median_time(lambda: float(gd.predict(gru, dx)[0].mean().compute(scheduler="threads")))
    rows.append(("predict", "threaded scheduler, 4 chunks", threaded, single / threaded))
    for workers in (1, 2):
        with (
            distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as c,
            distributed.Client(c) as client,
        ):
            on_workers = client.persist(dx)  # the data already on the workers, as on a real cluster
            distributed.wait(on_workers)
            t = median_time(lambda data=on_workers: float(gd.predict(gru, data)[0].mean().compute()))
            rows.append(("predict", f"LocalCluster, {workers} worker process(es)", t, single / t))

    data = train_shard(0, 1)
    model, opt = regressor(), optim.Adam()
    state = opt.init(model.params)

    def single_step():
        nonlocal state
        out, _, tape = model.forward(data[0])
        _, dy = losses.mse(out, data[1])
        grads = model.backward(tape, dy)[0]
        model.params, state = opt.step(model.params, grads, state)

    with threadpool_limits(1):
        single_train = median_time(single_step)
    rows.append(("train step", "single process, 1 BLAS thread", single_train, 1.0))
    for workers in (1, 2):
        with (
            distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as c,
            distributed.Client(c) as client,
        ):
            dp = gd.DataParallel(client, regressor(), losses.mse, optim.Adam())
            dp.load_shards(train_shard, n=workers)
            t = median_time(dp.step)
            rows.append(("train step", f"DataParallel, {workers} worker process(es)", t, single_train / t))
    print("| work | how | median s | speed-up vs single process |\n|---|---|---|---|")
    for work, how, t, speedup in rows:
        print(f"| {work} | {how} | {t:.3f} | {speedup:.2f}× |")


if __name__ == "__main__":
    main()
