"""The Trainer's training step of each cell (compiled on JAX, eager on NumPy), this tree against another.

    python benchmarks/bench_step.py                               # this tree, JAX, each cell
    python benchmarks/bench_step.py --other /tmp/before/src       # and an earlier commit, runs alternating
    python benchmarks/bench_step.py --backend numpy --random      # with dropout (and zoneout for lngru)

Model: Embedding 64 → cell 2×256 (batch_first) → Linear, vocabulary 181, batch 32 × window 64, AdamW
(lr 3e-3), clipping at 1.0, the state carried (truncated BPTT), float32: `gruxp train`'s default run.
Each run is a fresh process per tree (two versions of gruxp cannot share one); runs alternate, so a
slow spell of a shared machine falls on both. A run warms up (compiles), then times `--steps` steps
`--rounds` times; the table gives the median ms per step over rounds and runs, and this / other.
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
CELLS = ("gru", "lngru", "mingru")
VOCAB, EMBED, HIDDEN, LAYERS, BATCH, WINDOW = 181, 64, 256, 2, 32, 64


def one_tree(backend: str, cells: list[str], steps: int, rounds: int, random: bool) -> dict[str, float]:
    """ms per step of each cell, in this process (the tree on sys.path)."""
    import numpy as np

    import gruxp
    from gruxp import losses, optim

    if backend == "jax":
        import jax.numpy as xp
    else:
        xp = None
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=BATCH * WINDOW * 64 + 1)
    result = {}
    for cell in cells:
        options = {}
        if random:
            options["dropout"] = 0.1
            if cell == "lngru":
                options["zoneout"] = 0.1
        model = gruxp.Sequential(
            embed=gruxp.Embedding(VOCAB, EMBED, seed=0, xp=xp),
            gru=gruxp.models.recurrent(cell, EMBED, HIDDEN, LAYERS, batch_first=True, seed=1, xp=xp, **options),
            head=gruxp.Linear(HIDDEN, VOCAB, seed=2, xp=xp),
        )
        trainer = gruxp.Trainer(model, losses.cross_entropy, optim.AdamW(lr=3e-3), clip_norm=1.0, stateful=True)
        batches = gruxp.training.stream_windows(tokens, batch_size=BATCH, window=WINDOW, xp=xp)
        rng = np.random.default_rng(0)
        for _ in range(3):
            trainer.train_step(batches(trainer.step, rng))
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step(batches(trainer.step, rng))  # reads the loss: the step has finished
            times.append((time.perf_counter() - start) / steps * 1e3)
        result[cell] = statistics.median(times)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["jax", "numpy"], default="jax")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--random", action="store_true", help="dropout 0.1 between layers (and zoneout 0.1 for lngru)")
    parser.add_argument("--other", default=None, help="another tree's src folder, timed in alternating runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cells = args.cells.split(",")
    if args.child:
        print(json.dumps(one_tree(args.backend, cells, args.steps, args.rounds, args.random)))
        return
    trees = {"this": str(HERE.parent / "src")} | ({"other": args.other} if args.other else {})
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, src in trees.items():
            command = [sys.executable, __file__, "--child", "--backend", args.backend, "--cells", args.cells]
            command += ["--steps", str(args.steps), "--rounds", str(args.rounds)] + (["--random"] if args.random else [])
            proc = subprocess.run(command, env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"# {args.backend}, {'dropout 0.1 (+ zoneout 0.1 for lngru)' if args.random else 'no random options'}; "
        f"B={BATCH} T={WINDOW} H={HIDDEN} L={LAYERS} float32; {args.runs} runs × {args.rounds} rounds × {args.steps} steps"
    )
    header = "| cell | this ms/step |" + (" other ms/step | this / other |" if args.other else "")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for cell in cells:
        this = statistics.median(run[cell] for run in runs["this"])
        row = f"| {cell} | {this:.1f} |"
        if args.other:
            other = statistics.median(run[cell] for run in runs["other"])
            row += f" {other:.1f} | {this / other:.3f} |"
        print(row)


if __name__ == "__main__":
    main()
