"""The new cells against their yardsticks, in one process: minGRU against its own projection GEMMs
and against gruxp's GRU; the layer-normalised GRU's and the light GRU's training steps against the GRU's.

    python benchmarks/bench_cells.py                     # NumPy, and JAX when installed
    python benchmarks/bench_cells.py --rounds 3 --kernel=Haswell --out benchmarks/results
    python benchmarks/bench_cells.py --json times.json   # every job's median ms (compare_trees.py --bench cells)

minGRU, forward + backward (float32, I = H): "GEMMs alone" is the three products its step cannot
avoid, made the way gruxp makes them (the route's matmul on NumPy; XLA under jax.jit): the input
projection X Wᵀ (T·B, 2H), and in backward dW = dPᵀ X and dx = dP W. Everything else in minGRU
(gates, the scan, its reverse) is the overhead over them. The GRU at the same size runs its
forward and backward on the CPU route. The layer-normalised GRU's and the light GRU's steps are
forward + backward at (B, T, H) = (64, 100, 256), against the GRU's (the light GRU declares no CPU
loop: NumPy runs it as the generic code). Medians of ``--rounds`` interleaved rounds; each
ratio is the median of the per-round ratios; a round times each job by the median of three calls
after an untimed one. OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset (or set
by --kernel) as in bench_cpu.py.
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
from gruxp.benchmarking import blas_info, per_call, settle  # noqa: E402
from gruxp.functional._routes import route_for  # noqa: E402

MIN_SIZES = ((32, 1000, 256), (8, 4096, 256))
LN_SIZE = (64, 100, 256)


def _numpy_jobs(B: int, T: int, H: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    d_out = rng.standard_normal((T, B, H)).astype(np.float32)
    mingru, gru = gruxp.MinGRU(H, H, seed=0), gruxp.GRU(H, H, seed=0)
    w = mingru.params["weight_ih_l0"]
    matmul = route_for(gruxp._namespace.resolve_xp(None)).matmul
    x2, dp = x.reshape(T * B, H), rng.standard_normal((T * B, 2 * H)).astype(np.float32)

    def gemms():
        matmul(x2, w.T)
        matmul(dp.T, x2)
        matmul(dp, w)

    def train(model):
        def run():
            _, _, tape = model.forward(x)
            model.backward(tape, d_out)

        return run

    return {"GEMMs alone": gemms, "minGRU": train(mingru), "GRU": train(gru)}


def _jax_jobs(B: int, T: int, H: int) -> dict:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((T, B, H)), dtype=jnp.float32)
    mingru = gruxp.MinGRU(H, H, xp=jnp, seed=0)
    params = mingru.params

    @jax.jit
    def min_step(p, x):
        return jax.grad(lambda p, x: jnp.sum(gruxp.functional.mingru(p, x)[0]), argnums=(0, 1))(p, x)

    @jax.jit
    def gemm_step(w, x):
        return jax.grad(lambda w, x: jnp.sum(jnp.tanh(jnp.reshape(x, (T * B, H)) @ w.T)), argnums=(0, 1))(w, x)

    def block(f):
        return lambda: jax.block_until_ready(f())

    return {
        "GEMMs alone": block(lambda: gemm_step(params["weight_ih_l0"], x)),
        "minGRU": block(lambda: min_step(params, x)),
    }


def _ln_jobs() -> dict:
    B, T, H = LN_SIZE
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    d_out = rng.standard_normal((T, B, H)).astype(np.float32)

    def train(model):
        def run():
            _, _, tape = model.forward(x)
            model.backward(tape, d_out, input_grad=False)

        return run

    return {
        "GRU": train(gruxp.GRU(H, H, seed=0)),
        "LayerNormGRU": train(gruxp.LayerNormGRU(H, H, seed=0)),
        "LiGRU": train(gruxp.LiGRU(H, H, seed=0)),
    }


def _measure(jobs: dict, rounds: int, calls: int = 3) -> dict[str, list[float]]:
    """Per round and job, the median of ``calls`` timed calls after one untimed call (the first
    call after another job pays for that job's threads and freed memory)."""
    for job in jobs.values():
        settle(job)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            time.sleep(0.1)
            job()
            times[name].append(statistics.median(per_call(job, min_time=0.0) for _ in range(calls)))
    return times


def _ratio(times: dict, a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernel", default=None, help="OPENBLAS_CORETYPE for this run, as --kernel=Haswell (default: unset)")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--out", default=None, help="folder for the Markdown table")
    parser.add_argument("--json", default=None, help="a file for every job's median milliseconds, by name")
    args = parser.parse_args()
    medians: dict[str, float] = {}
    info = blas_info()
    lines = [
        f"# {time.strftime('%Y-%m-%d')}  numpy {np.__version__}  gruxp {gruxp.__version__}  cpus {os.cpu_count()}",
        "# BLAS: "
        + "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}" for i in info),
        "",
        "minGRU forward + backward, float32, I = H:",
        "",
        "| backend | (B, T, H) | GEMMs alone ms | minGRU ms | minGRU / GEMMs | GRU ms | GRU / minGRU |",
        "|---|---|---|---|---|---|---|",
    ]
    for B, T, H in MIN_SIZES:
        t = _measure(_numpy_jobs(B, T, H), args.rounds)
        med = {k: 1e3 * statistics.median(v) for k, v in t.items()}
        medians |= {f"numpy {k} {(B, T, H)}": v for k, v in med.items()}
        lines.append(
            f"| numpy | ({B}, {T}, {H}) | {med['GEMMs alone']:.1f} | {med['minGRU']:.1f} | "
            f"{_ratio(t, 'minGRU', 'GEMMs alone'):.2f}× | {med['GRU']:.1f} | {_ratio(t, 'GRU', 'minGRU'):.2f}× |"
        )
        print(lines[-1], flush=True)
    if not args.no_jax:
        try:
            import jax

            jax.config.update("jax_enable_x64", True)
        except ImportError:
            jax = None
        if jax is not None:
            for B, T, H in MIN_SIZES:
                t = _measure(_jax_jobs(B, T, H), args.rounds)
                med = {k: 1e3 * statistics.median(v) for k, v in t.items()}
                medians |= {f"jax {k} {(B, T, H)}": v for k, v in med.items()}
                lines.append(
                    f"| jax {jax.__version__} | ({B}, {T}, {H}) | {med['GEMMs alone']:.1f} | {med['minGRU']:.1f} | "
                    f"{_ratio(t, 'minGRU', 'GEMMs alone'):.2f}× | – | – |"
                )
                print(lines[-1], flush=True)
    t = _measure(_ln_jobs(), args.rounds)
    med = {k: 1e3 * statistics.median(v) for k, v in t.items()}
    medians |= {f"numpy step {k} {LN_SIZE}": v for k, v in med.items()}
    lines += [
        "",
        f"Training step (forward + backward, no dx), float32, (B, T, H) = {LN_SIZE}, NumPy's CPU route:",
        "",
        "| GRU ms | LayerNormGRU ms | LayerNormGRU / GRU | LiGRU ms | LiGRU / GRU |",
        "|---|---|---|---|---|",
        f"| {med['GRU']:.1f} | {med['LayerNormGRU']:.1f} | {_ratio(t, 'LayerNormGRU', 'GRU'):.2f}× | "
        f"{med['LiGRU']:.1f} | {_ratio(t, 'LiGRU', 'GRU'):.2f}× |",
    ]
    print("\n".join(lines))
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).write_text(json.dumps(medians))
    if args.out:
        from pathlib import Path

        suffix = f"-{args.kernel.lower()}" if args.kernel else ""
        path = Path(args.out) / f"cells-{time.strftime('%Y-%m-%d')}{suffix}.md"
        path.write_text("\n".join(lines) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
