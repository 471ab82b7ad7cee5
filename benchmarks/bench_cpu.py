"""gruxp against torch.nn.GRU on this CPU, in one process, interleaved, float32.

    python benchmarks/bench_cpu.py                       # all configs, 9 rounds, numpy + torch namespaces
    python benchmarks/bench_cpu.py --quick               # 7 rounds, the first config only
    python benchmarks/bench_cpu.py --configs 2,0         # the third and first configs only
    python benchmarks/bench_cpu.py --backends numpy,torch,jax --out benchmarks/results
    python benchmarks/bench_cpu.py --backends torch-module  # gruxp.torch.GRU, an nn.Module

For each config and mode (inference forward; training step = forward with tape + backward,
including the input gradient dx on both sides: torch's input requires grad) every
round times gruxp and torch.nn.GRU back to back (A B A B …), each after a 0.25 s pause and a
warm-up call, so that neither inherits the other's spinning BLAS/OpenMP threads on a small machine.
It reports medians over rounds: milliseconds, GFLOP/s (forward = Σ T·2·B·3H·(I_k+H) over
layer-directions; training = 3× that), the per-round ratio to torch, and the fraction of the
"matmul floor": the same GEMMs, alone, timed in the same rounds (floor / gruxp per round; 1.0 =
nothing but GEMMs). Both fractions are paired within a round, so that a slow spell of this shared
machine, which lasts seconds, falls on both sides of a ratio rather than on one side's median.
torch gets as many threads as NumPy's BLAS.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which some machines set to work around old OpenBLAS
builds, change which kernel NumPy's and gruxp's OpenBLAS run; this script unsets both for its own
process (it re-executes itself), or sets OPENBLAS_CORETYPE to ``--kernel``'s value, and prints which
BLAS kernel then ran (threadpoolctl) and the plan gruxp's CPU route chose for each config.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

_kernel = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--kernel=")), None)
_wanted = {} if _kernel is None else {"OPENBLAS_CORETYPE": _kernel}
if {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ} != _wanted:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")} | _wanted
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402

import gruxp  # noqa: E402
from gruxp.benchmarking import blas_info, blas_threads, flops_forward, per_call, settle  # noqa: E402

CONFIGS = [  # (B, T, I=H, num_layers, bidirectional)
    (64, 100, 256, 1, False),
    (32, 200, 128, 1, False),
    (16, 50, 512, 1, False),
    (1, 500, 256, 1, False),
    (32, 100, 256, 2, True),
]


def make_gemm_floor(B, T, H, I, L, D, *, train: bool):
    """The GEMMs of one forward (and backward) with random operands: what no GRU can beat."""
    rng = np.random.default_rng(0)
    mats = []
    for layer in range(L):
        in_size = I if layer == 0 else D * H
        for _ in range(D):
            mats.append(
                dict(
                    x=rng.standard_normal((T * B, in_size), dtype=np.float32),
                    w_ih=rng.standard_normal((3 * H, in_size), dtype=np.float32),
                    w_hh=rng.standard_normal((3 * H, H), dtype=np.float32),
                    h=rng.standard_normal((B, H), dtype=np.float32),
                    g=rng.standard_normal((B, 3 * H), dtype=np.float32),
                    dg=rng.standard_normal((T * B, 3 * H), dtype=np.float32),
                    hs=rng.standard_normal((T * B, H), dtype=np.float32),
                )
            )

    def run():
        for m in mats:
            m["x"] @ m["w_ih"].T
            for _ in range(T):
                m["h"] @ m["w_hh"].T
            if train:
                for _ in range(T):
                    m["g"] @ m["w_hh"]
                m["dg"].T @ m["x"]
                m["dg"].T @ m["hs"]
                m["dg"] @ m["w_ih"]

    return run


def contenders(config, backends):
    import torch

    B, T, H, L, bi = config
    I, D = H, 2 if bi else 1
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((B, T, I), dtype=np.float32)
    d_out_np = rng.standard_normal((B, T, D * H), dtype=np.float32)
    net = torch.nn.GRU(I, H, L, batch_first=True, bidirectional=bi)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    x_t, d_out_t = torch.from_numpy(x_np), torch.from_numpy(d_out_np)
    # Equal work: gruxp's backward returns dx, so torch's input requires grad too.
    x_train = torch.from_numpy(x_np.copy()).requires_grad_(True)

    def torch_forward():
        with torch.no_grad():
            net(x_t)

    def torch_train():
        net.zero_grad(set_to_none=True)
        x_train.grad = None
        out, _ = net(x_train)
        out.backward(d_out_t)

    ours = {}
    for name in backends:
        if name in ("torch-module", "torch-module-compiled"):  # gruxp.torch.GRU: loss.backward() through gruxp's backward
            import gruxp.torch as gt

            module = gt.GRU(I, H, L, batch_first=True, bidirectional=bi)
            module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            if name == "torch-module-compiled":  # torch.compile(fullgraph=True): gruxp's operators in one graph
                torch._dynamo.reset()  # each config's module compiled afresh (Dynamo's recompile limit is per code object)
                module = torch.compile(module, fullgraph=True)
            x_module = torch.from_numpy(x_np.copy()).requires_grad_(True)

            def module_forward(module=module):
                with torch.no_grad():
                    module(x_t)

            def module_train(module=module, x=x_module):
                module.zero_grad(set_to_none=True)
                x.grad = None
                out, _ = module(x)
                out.backward(d_out_t)

            ours[name] = (module_forward, module_train)
            continue
        if name == "numpy":
            xp, conv = np, (lambda a: a)
        elif name == "torch":
            xp, conv = torch, torch.from_numpy
        elif name == "jax":
            import jax.numpy as jnp

            xp, conv = jnp, jnp.asarray
        else:
            raise SystemExit(f"unknown backend {name!r}")
        model = gruxp.GRU(I, H, L, batch_first=True, bidirectional=bi, xp=xp, dtype="float32")
        model.load_state_dict(state)
        x, d_out = conv(x_np), conv(d_out_np)

        def forward(model=model, x=x):
            model(x)

        def train(model=model, x=x, d_out=d_out):
            out, h_n, tape = model.forward(x)
            model.backward(tape, d_out)

        ours[name] = (forward, train)
    floors = (make_gemm_floor(B, T, H, I, L, D, train=False), make_gemm_floor(B, T, H, I, L, D, train=True))
    return ours, (torch_forward, torch_train), floors


def bench(config, backends, rounds):
    B, T, H, L, bi = config
    D = 2 if bi else 1
    ours, theirs, floors = contenders(config, backends)
    fwd_flops = flops_forward(B, T, H, H, L, D)
    rows = []
    for mode, index, flops in (("forward", 0, fwd_flops), ("train", 1, 3 * fwd_flops)):
        for name, fns in ours.items():
            a, b, floor = fns[index], theirs[index], floors[index]
            ta, tb, tf, ratios, floor_ratios = [], [], [], [], []
            for _ in range(rounds):
                settle(a)
                ta.append(per_call(a))
                settle(b)
                tb.append(per_call(b))
                settle(floor)
                tf.append(per_call(floor))
                ratios.append(ta[-1] / tb[-1])
                floor_ratios.append(tf[-1] / ta[-1])
            med = statistics.median
            rows.append(
                dict(
                    B=B,
                    T=T,
                    H=H,
                    I=H,
                    layers=L,
                    bidirectional=bi,
                    mode=mode,
                    backend=name,
                    gruxp_ms=med(ta) * 1e3,
                    torch_ms=med(tb) * 1e3,
                    floor_ms=med(tf) * 1e3,
                    ratio=med(ratios),
                    floor_fraction=med(floor_ratios),
                    gruxp_gflops=flops / med(ta) / 1e9,
                    torch_gflops=flops / med(tb) / 1e9,
                )
            )
            print(format_row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| B | T | I=H | layers | mode | backend | gruxp ms | torch ms | ratio (median/round) | gruxp GFLOP/s | "
    "torch GFLOP/s | matmul floor ms | floor / gruxp (median/round) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(r: dict) -> str:
    layers = f"{r['layers']}{' bi' if r['bidirectional'] else ''}"
    return (
        f"| {r['B']} | {r['T']} | {r['H']} | {layers} | {r['mode']} | {r['backend']} | {r['gruxp_ms']:.1f} | "
        f"{r['torch_ms']:.1f} | {r['ratio']:.2f}× | {r['gruxp_gflops']:.1f} | {r['torch_gflops']:.1f} | "
        f"{r['floor_ms']:.1f} | {r['floor_fraction']:.0%} |"
    )


def _plans(configs) -> list[str]:
    """The CPU route's plan for each config's first layer, in one line (``gruxp info --plan`` has it whole)."""
    try:
        from gruxp._native import cpu_plan
    except ImportError:  # a gruxp from before the plan
        return ["(no plan: this gruxp predates it)"] * len(configs)
    lines = []
    for B, T, H, L, bi in configs:
        p = cpu_plan(T, B, H, H, num_layers=L, bidirectional=bi)[0]
        lines.append(
            f"{p.fuser}{' compiled' if p.compiled else ''}, BLAS {p.blas}, {len(p.pieces)} piece(s), chunk {p.chunk}, "
            f"panel {p.panel}, {'transposed, ' if p.transposed else ''}{p.grad_blocks} grad block(s), {p.workers} worker(s)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="first config only, 7 rounds")
    parser.add_argument("--configs", default=None, help="comma-separated indices into CONFIGS (0-4), in that order")
    parser.add_argument(
        "--backends",
        default="numpy,torch",
        help="gruxp namespaces to time (numpy, torch, jax), or torch-module (gruxp.torch.GRU), torch-module-compiled",
    )
    parser.add_argument("--out", default=None, help="folder for the Markdown table and JSON")
    parser.add_argument("--kernel", default=None, help="OPENBLAS_CORETYPE for this run, as --kernel=Haswell (default: unset)")
    args = parser.parse_args()
    import torch

    info = blas_info()
    threads = blas_threads(info)
    torch.set_num_threads(threads)
    configs = CONFIGS[:1] if args.quick else CONFIGS
    if args.configs:
        configs = [CONFIGS[int(i)] for i in args.configs.split(",")]
    rounds = 7 if args.quick else max(7, args.rounds)
    meta = dict(
        date=datetime.date.today().isoformat(),
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
        torch=torch.__version__,
        gruxp=gruxp.__version__,
        blas=info,
        torch_threads=torch.get_num_threads(),
        torch_parallel=torch.__config__.parallel_info().splitlines()[:6],
        rounds=rounds,
        openblas_env_unset=True,
    )
    try:
        with open("/proc/cpuinfo") as f:
            meta["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# {meta['date']}  {meta['cpu']}  numpy {np.__version__}  torch {torch.__version__}  threads {threads}")
    print(
        "# BLAS:",
        "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}" for i in info),
    )
    plans = _plans(configs)
    meta["plans"] = plans
    for config, plan in zip(configs, plans, strict=True):
        print(f"# plan {config}: {plan}")
    print(HEADER)
    rows = []
    for config in configs:
        rows += bench(config, [b for b in args.backends.split(",") if b], rounds)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"cpu-{meta['date']}{'-' + args.kernel.lower() if args.kernel else ''}"
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        stem.with_suffix(".md").write_text("\n".join([HEADER, *map(format_row, rows)]) + "\n")
        print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()
