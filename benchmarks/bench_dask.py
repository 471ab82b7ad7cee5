"""Dask scaling on this machine: batch inference, one data-parallel training step, and `gruxp train`'s
step on separate hosts.

    python benchmarks/bench_dask.py            # all three (the hosts part needs root; skipped otherwise)
    python benchmarks/bench_dask.py --hosts    # only `gruxp train`'s step on separate hosts

predict: B=2048, T=100, I=H=128, float32, data made on the workers and the output reduced there
(its mean), a 1- and a 2-worker LocalCluster (processes, 1 thread each, BLAS pinned to 1 thread)
against a single NumPy process with 1 BLAS thread, and the threaded scheduler (2 chunks per core).
Training: one full-batch step (forward, backward, Adam) of
GRU(64→128) → LastStep → Linear on B=640, T=50, float64, shards loaded on the workers.
Medians of 5. 2 cores is not a cluster: the scheduler, nanny and client share the same cores.

Hosts: `gruxp train`'s default language model (embedding 64 → GRU 2×256 → linear, float32, batch 32
× window 64, AdamW, clip 1) on the standard library's sources, the step its Trainer takes locally
(all cores, and one thread) against ClusterTrainer's step (the code `gruxp train --scheduler` runs)
with a scheduler and 1 or 2 workers (one thread each) in network namespaces (tests/hosts.py), and
with each worker's link delayed by 50 ms; bytes per step counted on the workers' links. Each row's
steps alternate with the local one-thread step (12 pairs after 3), and the ratio is the median of the
pairs' ratios: this shared machine's load then weighs on both sides alike.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

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


def train_on_hosts() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import hosts as hosts_mod

    from gruxp.cli import corpus, lm
    from gruxp.distributed import ClusterTrainer
    from gruxp.training import Trainer, stream_windows

    reason = hosts_mod.unavailable()
    if reason is not None:
        print(f"hosts: skipped ({reason})")
        return
    text = corpus.build(None)
    B, T, warm, steps = 32, 64, 3, 12

    def model():
        return lm.build_model(
            len(text.vocab), hidden=256, layers=2, embed=64, dropout=0.0, xp=np, device=None, dtype="float32", seed=0
        )

    def optimizer():
        return optim.AdamW(lr=3e-3, weight_decay=0.01)

    local = Trainer(model(), losses.cross_entropy, optimizer(), clip_norm=1.0, stateful=True)
    batches = stream_windows(text.train, batch_size=B, window=T)

    def local_step(limit: int | None) -> None:
        with gruxp.config_context(max_workers=limit) if limit else contextlib.nullcontext():
            local.train_step(batches(local.step, local.rng))

    def interleaved(step) -> tuple[float, float, float]:
        """Medians of (step, the local one-thread step, their ratio), the two alternating: a busy
        moment of this shared machine slows both, not one."""
        for _ in range(warm):
            step()
            local_step(1)
        times, peers = [], []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            local_step(1)
            peers.append(time.perf_counter() - start)
        ratios = [t / p for t, p in zip(times, peers, strict=True)]
        return statistics.median(times), statistics.median(peers), statistics.median(ratios)

    rows = [("local, all cores", *interleaved(lambda: local_step(None)), None)]
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also fixes glibc's mmap
    # threshold at 128 KiB: every large array of a step is a fresh mapping, page-faulted in again.
    # MALLOC_MMAP_THRESHOLD_ in the worker's environment lets them be reused (docs/user-guide/dask.md).
    mmap = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20)}
    configs = [(1, 0.0, {}), (1, 0.0, mmap), (2, 0.0, mmap), (1, 50.0, mmap), (2, 50.0, mmap)]
    for workers, delay, env in configs:
        names = ["scheduler", *(f"w{i + 1}" for i in range(workers))]
        with hosts_mod.Hosts(names) as hosts:
            address = hosts.start_scheduler("scheduler")
            how = [hosts.add_delay(name, delay) for name in names[1:]] if delay else []
            for name in names[1:]:
                hosts.start_worker(name, address, delay_ms=delay, env=env)
            with distributed.Client(address, timeout=30, set_as_default=False, direct_to_workers=True) as client:
                client.wait_for_workers(workers, timeout=60)
                trainer = ClusterTrainer(client, model(), losses.cross_entropy, optimizer(), clip_norm=1.0, timeout=120)
                trainer.load_stream(text.train, batch_size=B, window=T, shards=workers)
                trainer.train_step()  # the shards reach the workers
                before = sum(hosts.bytes_through(name) for name in names[1:])
                seconds, peer, ratio = interleaved(trainer.train_step)
                sent = (sum(hosts.bytes_through(name) for name in names[1:]) - before) / (warm + steps)
            link = "" if not delay else f", links +{delay:g} ms ({'tc netem' if how[0] == 'netem' else 'delay proxy'})"
            setting = ", MALLOC_MMAP_THRESHOLD_=32 MiB" if env else ", as `dask worker` starts"
            rows.append((f"--scheduler, {workers} worker(s){setting}{link}", seconds, peer, ratio, sent))
    params = sum(int(np.prod(v.shape)) for v in model().params.values())
    print(f"\n`gruxp train`'s default model ({params:,} parameters, float32), batch {B} × window {T}; median of {steps} steps")
    print(
        "| how | step ms | chars/s | local one-thread step ms (alternating) | over it (median of ratios) "
        "| bytes on the workers' links a step |\n|---|---|---|---|---|---|"
    )
    for label, seconds, peer, ratio, sent in rows:
        per = "" if sent is None else f"{sent / 1e6:.2f} MB"
        print(f"| {label} | {seconds * 1e3:.1f} | {B * T / seconds:,.0f} | {peer * 1e3:.1f} | {ratio - 1:+.1%} | {per} |")


if __name__ == "__main__":
    if "--hosts" not in sys.argv:
        main()
    train_on_hosts()
