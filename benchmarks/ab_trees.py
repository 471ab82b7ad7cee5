"""This gruxp against another source tree by the fastest calls: what a noisy shared machine cannot inflate.

    git worktree add /tmp/before HEAD~3
    python benchmarks/ab_trees.py /tmp/before/src [--pairs 3] [--calls 15] [--best 5]

Each job (bench_cpu.py's five configs, forward and forward + backward; bench_cells.py's cell jobs) is
timed in a fresh process per tree, processes alternating (this, the other, this, ...): ``--calls``
calls after two untimed ones, the job's time the mean of the ``--best`` fastest. A slow spell of the
machine lengthens some calls; it rarely shortens the fastest. The table gives each tree's median over
the pairs and the median of the pairs' ratios. ``compare_trees.py`` gives the full bench_cpu.py tables
(against torch) of both trees; this script answers "did the change make it slower?" on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPU_CONFIGS = ((64, 100, 256, 1, False), (32, 200, 128, 1, False), (16, 50, 512, 1, False), (1, 500, 256, 1, False),
               (32, 100, 256, 2, True))  # fmt: skip
MIN_SIZES = ((32, 1000, 256), (8, 4096, 256))
STEP_SIZE = (64, 100, 256)


def _jobs() -> dict:
    import numpy as np

    import gruxp

    rng = np.random.default_rng(0)
    jobs = {}

    def train(model, x, d_out, **options):
        def run():
            _, _, tape = model.forward(x)
            model.backward(tape, d_out, **options)

        return run

    for B, T, H, L, bi in CPU_CONFIGS:
        x = rng.standard_normal((T, B, H)).astype(np.float32)
        d_out = rng.standard_normal((T, B, (2 if bi else 1) * H)).astype(np.float32)
        model = gruxp.GRU(H, H, L, bidirectional=bi, seed=0)
        name = f"GRU {B}×{T}×{H}{f', {L} layers bi' if bi else ''}"
        jobs[f"{name} forward"] = lambda model=model, x=x: model(x)
        jobs[f"{name} train"] = train(model, x, d_out)
    for B, T, H in MIN_SIZES:
        x, d_out = (rng.standard_normal((T, B, H)).astype(np.float32) for _ in range(2))
        jobs[f"minGRU {B}×{T}×{H} train"] = train(gruxp.MinGRU(H, H, seed=0), x, d_out)
    B, T, H = STEP_SIZE
    x, d_out = (rng.standard_normal((T, B, H)).astype(np.float32) for _ in range(2))
    for model in (gruxp.GRU(H, H, seed=0), gruxp.LayerNormGRU(H, H, seed=0), gruxp.LiGRU(H, H, seed=0)):
        jobs[f"{type(model).__name__} {B}×{T}×{H} step (no dx)"] = train(model, x, d_out, input_grad=False)
    return jobs


def _time_all(calls: int, best: int) -> dict[str, float]:
    out = {}
    for name, job in _jobs().items():
        job()
        job()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            job()
            times.append(time.perf_counter() - start)
        out[name] = 1e3 * statistics.mean(sorted(times)[:best])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", nargs="?", help="the other version's src folder")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--best", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one process's timings, as JSON
    parser.add_argument("--out", default=None, help="a file to write the Markdown table to, too")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_time_all(args.calls, args.best)))
        return
    if args.other is None:
        parser.error("the other version's src folder is required")
    this = str(HERE.parent / "src")
    runs: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    for _ in range(args.pairs):
        for name, src in (("this", this), ("other", args.other)):
            command = [sys.executable, __file__, "--child", "--calls", str(args.calls), "--best", str(args.best)]
            done = subprocess.run(command, env={**os.environ, "PYTHONPATH": src}, check=True, capture_output=True, text=True)
            runs[name].append(json.loads(done.stdout))
    med = statistics.median
    lines = [
        f"# this: {this}; other: {args.other}; {args.pairs} process pairs alternating; each job the mean of the "
        f"{args.best} fastest of {args.calls} calls; OPENBLAS_CORETYPE {os.environ.get('OPENBLAS_CORETYPE', 'unset')}",
        "| job | this ms | other ms | this / other (median of the pairs' ratios) |",
        "|---|---|---|---|",
    ]
    for job in runs["this"][0]:
        ratio = med(a[job] / b[job] for a, b in zip(runs["this"], runs["other"], strict=True))
        lines.append(
            f"| {job} | {med(r[job] for r in runs['this']):.2f} | {med(r[job] for r in runs['other']):.2f} | {ratio:.3f} |"
        )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
