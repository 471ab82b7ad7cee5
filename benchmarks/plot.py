"""Draw the performance figure of the README and the docs from the latest results files.

    python benchmarks/plot.py            # reads benchmarks/results/, writes docs/_static/performance.png

Left: gruxp's time over torch.nn.GRU's on the CPU (bench_cpu.py; below 1 is faster), inference and
training, for each config, with OpenBLAS's default kernel and with the Haswell kernel where measured.
Right: gruxp's jax.jit(jax.grad) time over flax's, Keras's and torch's (bench_jax.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def latest(pattern: str) -> dict | None:
    files = sorted(RESULTS.glob(pattern))
    return json.loads(files[-1].read_text()) if files else None


def main() -> None:
    kernels = {"default kernel": latest("cpu-20??-??-??.json"), "Haswell kernel": latest("cpu-*-haswell.json")}
    jax = latest("jax-*.json")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1.3]})
    labels: list[str] = []
    width = 0.2
    for k, (kernel, data) in enumerate(kernels.items()):
        if data is None:
            continue
        rows = [r for r in data["rows"] if r["backend"] == "numpy"]
        configs = []
        for r in rows:
            name = f"{r['B']},{r['T']},{r['H']}" + (" 2bi" if r["bidirectional"] else "")
            if name not in configs:
                configs.append(name)
        labels = configs
        for m, mode in enumerate(("forward", "train")):
            values = [
                next(
                    r["ratio"]
                    for r in rows
                    if r["mode"] == mode and f"{r['B']},{r['T']},{r['H']}" + (" 2bi" if r["bidirectional"] else "") == c
                )
                for c in configs
            ]
            offset = (2 * k + m - 1.5) * width
            left.bar(
                [i + offset for i in range(len(configs))],
                values,
                width,
                label=f"{'inference' if mode == 'forward' else 'training'}, {kernel}",
                alpha=1.0 if k == 0 else 0.55,
                color=("tab:blue", "tab:orange")[m],
            )
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_xticks(range(len(labels)), labels)
    left.set_xlabel("B, T, I=H (float32, batch_first)")
    left.set_ylabel("gruxp time / torch.nn.GRU time")
    left.set_title("CPU: NumPy route against torch.nn.GRU (lower is faster)")
    left.legend(fontsize=8, loc="upper left")
    if jax is not None:
        peers = jax["peers"]
        names = [f"{p['B']},{p['T']},{p['H']}" for p in peers]
        peers_named = [("vs flax", "vs_flax"), ("vs Keras", "vs_keras"), ("vs torch.nn.GRU", "vs_torch")]
        for j, (label, field) in enumerate(p for p in peers_named if all(p[1] in row for row in peers)):
            right.bar([i + (j - 1) * 0.27 for i in range(len(peers))], [row[field] for row in peers], 0.27, label=label)
        right.axhline(1.0, color="black", linewidth=0.8)
        right.set_xticks(range(len(peers)), names)
        right.set_xlabel("B, T, I=H")
        right.set_title("JAX: training computation")
        right.legend(fontsize=8)
    fig.tight_layout()
    out = ROOT / "docs" / "_static" / "performance.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
