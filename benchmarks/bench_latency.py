"""One token at a time: gruxp's per-token latency against torch.nn.GRU and nn.GRUCell, same process.

    python benchmarks/bench_latency.py                          # the grid below, this tree
    python benchmarks/bench_latency.py --quick                  # B=1, H=256, 2 layers only
    python benchmarks/bench_latency.py --other /tmp/before/src  # and an earlier commit, runs alternating
    python benchmarks/bench_latency.py --kernel=Haswell         # OPENBLAS_CORETYPE=Haswell for all

Per token, float32, I = 64: gruxp ``model(x_t, h)`` (x_t (1, B, I)) and ``model.step(x_t, h)``
against ``nn.GRU(x_t, h)`` and a stack of ``nn.GRUCell`` (under ``torch.no_grad``), torch's better of
1 and 2 threads, for B in 1, 4, 16, H in 128, 256, 512 and 1-2 layers; and the small training step
(B = 4, T = 16, H = 128: forward, backward, both). Every round times each side (``--calls`` calls
after a warm-up) one after the other; the table gives medians over rounds of µs per call and of the
per-round ratio gruxp / torch. OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset (or set by --kernel) as
in bench_cpu.py; the BLAS kernels that ran are printed.
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

_kernel = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--kernel=")), None)
_wanted = {} if _kernel is None else {"OPENBLAS_CORETYPE": _kernel}
if {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ} != _wanted:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")} | _wanted
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

HERE = Path(__file__).resolve().parent
INPUT = 64


def _timed(call, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def _torch_best(torch, call, calls: int) -> float:
    """torch's better of 1 and 2 threads for this call (µs)."""
    best = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        call()
        best.append(_timed(call, calls))
    return min(best)


def token_rows(configs: list[tuple[int, int, int]], rounds: int, calls: int) -> list[dict]:
    import numpy as np
    import torch

    import gruxp

    return [_token_row(np, torch, gruxp, B, H, L, rounds, calls) for B, H, L in configs]


def _token_row(np, torch, gruxp, B: int, H: int, L: int, rounds: int, calls: int) -> dict:
    rng = np.random.default_rng(0)
    model = gruxp.GRU(INPUT, H, L, seed=0)
    x = rng.standard_normal((1, B, INPUT)).astype(np.float32)
    h = rng.standard_normal((L, B, H)).astype(np.float32) * 0.1
    ref = torch.nn.GRU(INPUT, H, L)
    ref.load_state_dict({k: torch.as_tensor(v) for k, v in model.state_dict(numpy=True).items()})
    cells = [torch.nn.GRUCell(INPUT if k == 0 else H, H) for k in range(L)]
    tx, th = torch.from_numpy(x), torch.from_numpy(h)

    def stack_of_cells():
        y = tx[0]
        for k, cell in enumerate(cells):
            y = cell(y, th[k])

    jobs = {
        "model(x_t, h)": lambda: model(x, h),
        "step(x_t, h)": lambda: model.step(x[0], h),
    }
    samples: dict[str, list[float]] = {name: [] for name in (*jobs, "nn.GRU", "nn.GRUCell")}
    with torch.no_grad():
        for job in jobs.values():
            for _ in range(20):
                job()
        for _ in range(rounds):
            for name, job in jobs.items():
                samples[name].append(_timed(job, calls))
            samples["nn.GRU"].append(_torch_best(torch, lambda: ref(tx, th), calls))
            samples["nn.GRUCell"].append(_torch_best(torch, stack_of_cells, calls))
    med = {name: statistics.median(v) for name, v in samples.items()}
    ratio = {name: statistics.median(a / b for a, b in zip(samples[name], samples["nn.GRU"], strict=True)) for name in jobs}
    return {"B": B, "H": H, "layers": L, "us": med, "ratio": ratio}


def training_row(rounds: int, calls: int) -> dict:
    """The small training step, B = 4, T = 16, H = I = 128: gruxp forward + backward vs nn.GRU's."""
    import numpy as np
    import torch

    import gruxp

    B, T, H = 4, 16, 128
    rng = np.random.default_rng(0)
    model = gruxp.GRU(H, H, seed=0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    d_out = rng.standard_normal((T, B, H)).astype(np.float32)
    ref = torch.nn.GRU(H, H)
    tx, td = torch.from_numpy(x), torch.from_numpy(d_out)

    def ours():
        out, _, tape = model.forward(x)
        model.backward(tape, d_out, input_grad=False)

    def theirs():
        ref.zero_grad(set_to_none=True)
        out, _ = ref(tx)
        out.backward(td)

    ours()
    samples = {"gruxp": [], "torch": []}
    for _ in range(rounds):
        samples["gruxp"].append(_timed(ours, calls))
        samples["torch"].append(_torch_best(torch, theirs, calls))
    return {
        "us": {k: statistics.median(v) for k, v in samples.items()},
        "ratio": statistics.median(a / b for a, b in zip(samples["gruxp"], samples["torch"], strict=True)),
    }


def sample_row(rounds: int, length: int = 300) -> dict:
    """chars/s of sampling from `gruxp train`'s default model (embedding 64 → GRU 2×256 → linear, vocabulary
    181): gruxp's ``gruxp.cli.lm.sample`` against the same loop written with nn.Embedding, nn.GRU and
    nn.Linear (the same temperature-scaled softmax and NumPy draw on the host each character)."""
    import numpy as np
    import torch

    from gruxp.cli import lm

    vocab = [chr(32 + i) for i in range(180)] + ["\ufffd"]
    model = lm.build_model(len(vocab), hidden=256, layers=2, embed=64, dropout=0.0, xp=None, device=None, dtype="float32", seed=0)
    model.eval()
    weights = model.state_dict(numpy=True)
    embed, gru, head = (
        torch.nn.Embedding(len(vocab), 64),
        torch.nn.GRU(64, 256, 2, batch_first=True),
        torch.nn.Linear(256, len(vocab)),
    )
    embed.weight.data = torch.as_tensor(weights["embed.weight"])
    gru.load_state_dict({k[4:]: torch.as_tensor(v) for k, v in weights.items() if k.startswith("gru.")})
    head.load_state_dict({k[5:]: torch.as_tensor(v) for k, v in weights.items() if k.startswith("head.")})

    def theirs(rng: np.random.Generator) -> str:
        with torch.no_grad():
            ids = torch.as_tensor([[vocab.index(c) for c in "def "]])
            out, h = gru(embed(ids))
            last = head(out[0, -1]).numpy()
            chars = []
            for _ in range(length):
                z = (last.astype(np.float64) - float(np.max(last))) / 0.8
                p = np.exp(z)
                p /= p.sum()
                nxt = int(rng.choice(len(vocab), p=p))
                chars.append(vocab[nxt])
                out, h = gru(embed(torch.as_tensor([[nxt]])), h)
                last = head(out[0, -1]).numpy()
        return "".join(chars)

    def ours(rng: np.random.Generator) -> str:
        return lm.sample(model, vocab, length=length, temperature=0.8, prime="def ", rng=rng)

    samples: dict[str, list[float]] = {"gruxp": [], "torch": []}
    ours(np.random.default_rng(0))
    for r in range(rounds):
        for name, job in (("gruxp", ours), ("torch", theirs)):
            best = []
            for threads in (1, 2) if name == "torch" else (1,):
                torch.set_num_threads(threads)
                start = time.perf_counter()
                job(np.random.default_rng(r))
                best.append(length / (time.perf_counter() - start))
            samples[name].append(max(best))
    return {
        "chars_s": {k: statistics.median(v) for k, v in samples.items()},
        "ratio": statistics.median(a / b for a, b in zip(samples["gruxp"], samples["torch"], strict=True)),
    }


def child(args: argparse.Namespace) -> None:
    configs = [(1, 256, 2)] if args.quick else [(B, H, L) for L in (1, 2) for H in (128, 256, 512) for B in (1, 4, 16)]
    result = {"tokens": token_rows(configs, args.rounds, args.calls)}
    result["train"] = training_row(args.rounds, max(1, args.calls // 20))
    result["sample"] = sample_row(max(3, args.rounds // 2))
    from threadpoolctl import threadpool_info

    from gruxp._native.blas import library

    lib = library()
    result["blas"] = {
        "numpy": sorted({p.get("architecture") or "?" for p in threadpool_info() if p.get("user_api") == "blas"}),
        "gruxp": lib.kernel if lib else None,
    }
    print(json.dumps(result))


def table(name: str, runs: list[dict], other: list[dict] | None) -> list[str]:
    med = statistics.median
    lines = [
        f"## {name}",
        "",
        "| B | H | layers | model(x_t, h) µs | step µs | nn.GRU µs | nn.GRUCell µs | model / nn.GRU | step / nn.GRU |"
        + (" other model / nn.GRU | other step / nn.GRU |" if other else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if other else ""),
    ]
    for i, row in enumerate(runs[0]["tokens"]):
        us = {k: med(run["tokens"][i]["us"][k] for run in runs) for k in row["us"]}
        ratio = {k: med(run["tokens"][i]["ratio"][k] for run in runs) for k in row["ratio"]}
        line = (
            f"| {row['B']} | {row['H']} | {row['layers']} | {us['model(x_t, h)']:.0f} | {us['step(x_t, h)']:.0f} | "
            f"{us['nn.GRU']:.0f} | {us['nn.GRUCell']:.0f} | {ratio['model(x_t, h)']:.2f}× | {ratio['step(x_t, h)']:.2f}× |"
        )
        if other:
            o = {k: med(run["tokens"][i]["ratio"][k] for run in other) for k in row["ratio"]}
            line += f" {o['model(x_t, h)']:.2f}× | {o['step(x_t, h)']:.2f}× |"
        lines.append(line)
    train = {k: med(run["train"]["us"][k] for run in runs) for k in ("gruxp", "torch")}
    lines += [
        "",
        f"Small training step (B = 4, T = 16, H = I = 128, forward + backward): gruxp {train['gruxp']:.0f} µs, "
        f"nn.GRU {train['torch']:.0f} µs, ratio {med(run['train']['ratio'] for run in runs):.2f}×"
        + (f" (other: {med(run['train']['ratio'] for run in other):.2f}×)" if other else "")
        + f". BLAS kernels: NumPy {runs[0]['blas']['numpy']}, gruxp {runs[0]['blas']['gruxp']}.",
        "",
        "Sampling from `gruxp train`'s default model (300 characters, temperature 0.8): gruxp "
        f"{med(run['sample']['chars_s']['gruxp'] for run in runs):,.0f} chars/s, the same loop with nn.GRU + nn.Linear "
        f"{med(run['sample']['chars_s']['torch'] for run in runs):,.0f} chars/s, ratio "
        f"{med(run['sample']['ratio'] for run in runs):.2f}× (higher is faster)"
        + (f" (other: {med(run['sample']['ratio'] for run in other):.2f}×)" if other else "")
        + ".",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B=1, H=256, 2 layers only")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1, help="processes per tree (alternating with --other)")
    parser.add_argument("--other", default=None, help="another tree's src folder, timed in alternating runs")
    parser.add_argument("--kernel", default=None, help="OPENBLAS_CORETYPE for the run, as --kernel=Haswell")
    parser.add_argument("--out", default=None, help="a Markdown file to write the table to, too")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    trees = {"this": str(HERE.parent / "src")} | ({"other": args.other} if args.other else {})
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, src in trees.items():
            command = [sys.executable, __file__, "--child", "--rounds", str(args.rounds), "--calls", str(args.calls)]
            command += ["--quick"] if args.quick else []
            command += [f"--kernel={args.kernel}"] if args.kernel else []  # else the child would unset it again
            proc = subprocess.run(command, env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    title = f"Per-token latency, float32, I = {INPUT}; OPENBLAS_CORETYPE {args.kernel or 'unset'}"
    lines = table(f"{title}; {args.runs} run(s) × {args.rounds} rounds", runs["this"], runs.get("other"))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
