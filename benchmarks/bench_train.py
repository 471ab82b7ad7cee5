"""The main job: `gruxp train`'s default model against the same model in PyTorch, chars/s, one process.

    python benchmarks/bench_train.py                  # 5 rounds of 40 steps each side, interleaved
    python benchmarks/bench_train.py --rounds 3 --steps 20 --kernel=Haswell

Embedding 64 → GRU 2×256 (batch_first) → Linear, vocabulary 181 (the default corpus's), batch 32 ×
window 64, AdamW (lr 3e-3, weight decay 0.01), gradient norm clipped at 1.0, the state carried from
window to window (truncated BPTT), float32. gruxp runs its Trainer exactly as `gruxp train` does;
torch runs nn.Embedding/nn.GRU/nn.Linear with torch.optim.AdamW and clip_grad_norm_, with as many
threads as NumPy's BLAS. Both read the same token stream (random ids: the speed does not depend on
the text). Each round times `--steps` steps of one side, then of the other, after a warm-up; the
table gives medians of chars/s (B·T per step over the wall time) and their per-round ratio.
OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset (or set by --kernel) as in bench_cpu.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_kernel = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--kernel=")), None)
_wanted = {} if _kernel is None else {"OPENBLAS_CORETYPE": _kernel}
if {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ} != _wanted:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")} | _wanted
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402

import gruxp  # noqa: E402
from gruxp import losses, optim  # noqa: E402
from gruxp.benchmarking import blas_info, blas_threads  # noqa: E402

VOCAB, EMBED, HIDDEN, LAYERS, BATCH, WINDOW, LR, CLIP = 181, 64, 256, 2, 32, 64, 3e-3, 1.0


def gruxp_job(tokens: np.ndarray):
    model = gruxp.Sequential(
        embed=gruxp.Embedding(VOCAB, EMBED, seed=0, dtype="float32"),
        gru=gruxp.GRU(EMBED, HIDDEN, LAYERS, batch_first=True, seed=1, dtype="float32"),
        head=gruxp.Linear(HIDDEN, VOCAB, seed=2, dtype="float32"),
    )
    trainer = gruxp.Trainer(model, losses.cross_entropy, optim.AdamW(lr=LR, weight_decay=0.01), clip_norm=CLIP, stateful=True)
    batches = gruxp.training.stream_windows(tokens, batch_size=BATCH, window=WINDOW)
    rng = np.random.default_rng(0)

    def steps(n: int) -> None:
        for _ in range(n):
            trainer.train_step(batches(trainer.step, rng))

    return steps


def torch_job(tokens: np.ndarray):
    import torch

    torch.manual_seed(0)
    embed, gru, head = (
        torch.nn.Embedding(VOCAB, EMBED),
        torch.nn.GRU(EMBED, HIDDEN, LAYERS, batch_first=True),
        torch.nn.Linear(HIDDEN, VOCAB),
    )
    params = [*embed.parameters(), *gru.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    columns = (tokens.size - 1) // BATCH
    inputs = torch.from_numpy(tokens[: BATCH * columns].reshape(BATCH, columns).astype(np.int64))
    targets = torch.from_numpy(tokens[1 : BATCH * columns + 1].reshape(BATCH, columns).astype(np.int64))
    state = {"h": None, "k": 0}

    def steps(n: int) -> None:
        for _ in range(n):
            k = state["k"] % (columns // WINDOW)
            x, y = inputs[:, k * WINDOW : (k + 1) * WINDOW], targets[:, k * WINDOW : (k + 1) * WINDOW]
            out, h = gru(embed(x), state["h"])
            loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, VOCAB), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            state["h"], state["k"] = h.detach(), state["k"] + 1

    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--kernel", default=None, help="OPENBLAS_CORETYPE for this run, as --kernel=Haswell (default: unset)")
    parser.add_argument("--out", default=None, help="folder for the Markdown table and JSON")
    args = parser.parse_args()
    import torch

    info = blas_info()
    torch.set_num_threads(blas_threads(info))
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=BATCH * WINDOW * 400 + 1)
    jobs = {"gruxp": gruxp_job(tokens), "torch": torch_job(tokens)}
    for job in jobs.values():
        job(3)  # warm-up: numba's compile, torch's first allocations
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, job in jobs.items():
            time.sleep(0.25)
            start = time.perf_counter()
            job(args.steps)
            rates[name].append(args.steps * BATCH * WINDOW / (time.perf_counter() - start))
    ratios = [a / b for a, b in zip(rates["gruxp"], rates["torch"], strict=True)]
    plan = getattr(gruxp._native, "cpu_plan", None)  # absent in a gruxp from before the plan
    step = "" if plan is None else f"  gruxp GRU layer 1: {plan(WINDOW, BATCH, HIDDEN, HIDDEN, num_layers=LAYERS)[1].arithmetic}"
    lines = [
        f"# {time.strftime('%Y-%m-%d')}  numpy {np.__version__}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}{step}",
        "# BLAS: "
        + "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}" for i in info),
        "| model | gruxp chars/s | torch chars/s | gruxp / torch (median/round) |\n|---|---|---|---|",
        f"| embed {EMBED} → GRU {LAYERS}×{HIDDEN} → linear {VOCAB}, batch {BATCH}×{WINDOW}, AdamW, clip {CLIP} | "
        f"{statistics.median(rates['gruxp']):,.0f} | {statistics.median(rates['torch']):,.0f} | "
        f"{statistics.median(ratios):.2f}× |",
    ]
    print("\n".join(lines))
    if args.out:
        import json
        from pathlib import Path

        stem = Path(args.out) / f"train-{time.strftime('%Y-%m-%d')}{'-' + args.kernel.lower() if args.kernel else ''}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
        stem.with_suffix(".json").write_text(json.dumps({"rates": rates, "ratios": ratios, "blas": info}, indent=2))


if __name__ == "__main__":
    main()
