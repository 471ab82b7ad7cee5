"""This gruxp against another source tree (an earlier commit), bench_cpu.py's configs (or
bench_cells.py's jobs, ``--bench cells``), runs alternating.

    git worktree add /tmp/before HEAD~3
    python benchmarks/compare_trees.py /tmp/before/src --runs 3 --rounds 7 [--kernel=Haswell]
    python benchmarks/compare_trees.py /tmp/before/src --bench cells --runs 3 --rounds 3

Two versions of gruxp cannot share a process, so each run of bench_cpu.py times one of them
against torch.nn.GRU; runs alternate (this, the other, this, ...) so that a slow spell of a shared
machine falls on both. The table gives, per config and mode, the median over runs of each
version's milliseconds and of its per-run ratio to torch, and this version's time over the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_run(src: str, rounds: int, kernel: str | None, folder: str) -> list[dict]:
    out = Path(folder) / f"run-{len(os.listdir(folder))}"
    env = {**os.environ, "PYTHONPATH": src}
    command = [sys.executable, str(HERE / "bench_cpu.py"), "--rounds", str(rounds), "--backends", "numpy", "--out", str(out)]
    if kernel:
        command.append(f"--kernel={kernel}")
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(next(out.glob("*.json")).read_text())["rows"]


def one_cells_run(src: str, rounds: int, kernel: str | None, folder: str) -> dict[str, float]:
    out = Path(folder) / f"cells-{len(os.listdir(folder))}.json"
    env = {**os.environ, "PYTHONPATH": src}
    command = [sys.executable, str(HERE / "bench_cells.py"), "--rounds", str(rounds), "--json", str(out)]
    if kernel:
        command.append(f"--kernel={kernel}")
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def compare_cells(args: argparse.Namespace, this: str) -> list[str]:
    results: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.runs):
            for name, src in (("this", this), ("other", args.other)):
                results[name].append(one_cells_run(src, args.rounds, args.kernel, folder))
    med = statistics.median
    lines = [
        f"# bench_cells.py: this: {this}; other: {args.other}; {args.runs} runs each, alternating, {args.rounds} rounds a run; "
        f"OPENBLAS_CORETYPE {args.kernel or 'unset'}",
        "| job | this ms | other ms | this / other (median of the runs' ratios) |",
        "|---|---|---|---|",
    ]
    for job in results["this"][0]:
        ratios = [a[job] / b[job] for a, b in zip(results["this"], results["other"], strict=True)]
        this_ms, other_ms = med(r[job] for r in results["this"]), med(r[job] for r in results["other"])
        lines.append(f"| {job} | {this_ms:.1f} | {other_ms:.1f} | {med(ratios):.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", help="the other version's src folder")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--kernel", default=None, help="OPENBLAS_CORETYPE for both, as --kernel=Haswell")
    parser.add_argument("--out", default=None, help="a file to write the Markdown table to, too")
    parser.add_argument(
        "--bench", choices=("cpu", "cells"), default="cpu", help="bench_cpu.py's configs or bench_cells.py's jobs"
    )
    args = parser.parse_args()
    this = str(HERE.parent / "src")
    if args.bench == "cells":
        lines = compare_cells(args, this)
        print("\n".join(lines))
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return
    results: dict[str, list[list[dict]]] = {"this": [], "other": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.runs):
            for name, src in (("this", this), ("other", args.other)):
                results[name].append(one_run(src, args.rounds, args.kernel, folder))
    lines = [
        f"# this: {this}; other: {args.other}; {args.runs} runs each, alternating, {args.rounds} rounds a run; "
        f"OPENBLAS_CORETYPE {args.kernel or 'unset'}",
        "| B | T | I=H | layers | mode | this ms | other ms | this / other | this / torch | other / torch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    med = statistics.median
    for i, row in enumerate(results["this"][0]):
        this_ms = med(run[i]["gruxp_ms"] for run in results["this"])
        other_ms = med(run[i]["gruxp_ms"] for run in results["other"])
        layers = f"{row['layers']}{' bi' if row['bidirectional'] else ''}"
        lines.append(
            f"| {row['B']} | {row['T']} | {row['H']} | {layers} | {row['mode']} | {this_ms:.1f} | {other_ms:.1f} | "
            f"{this_ms / other_ms:.2f} | {med(run[i]['ratio'] for run in results['this']):.2f}× | "
            f"{med(run[i]['ratio'] for run in results['other']):.2f}× |"
        )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
