"""gruxp on JAX: compile time and run time of jitted forward and jax.grad, against flax, Keras and torch.

    pip install flax          # for this benchmark only: flax is not a gruxp dependency (Keras is a test one)
    python benchmarks/bench_jax.py [--out benchmarks/results] [--rounds 7]

Two tables, float32, batch_first, I = H, same process:

1. gruxp's jitted forward and jitted ``jax.grad`` of a scalar loss (Σ out²) for T ∈ {10, 100, 1000}
   at B = 32, I = H = 128: the first call's time (trace + compile + run) and the median run time.
   The time loop is ``lax.scan``, so compile time should not grow with T.
2. One training computation, forward + backward with the input gradient, median ms over rounds, at
   (B, T, H) = (32, 100, 128) and (64, 100, 256): gruxp (``jax.jit(jax.grad(loss))``, which runs
   gruxp's analytic backward through a custom_vjp), ``flax.linen.RNN(flax.linen.GRUCell)`` under
   the same ``jax.jit(jax.grad(...))`` (JAX differentiates its scan), and ``torch.nn.GRU`` (oneDNN
   or its own CPU kernel, autograd), and Keras 3's ``keras.layers.GRU`` on its JAX backend under
   ``jax.jit(jax.grad(...))`` of its ``stateless_call``. Rounds interleave them (A B C D A B C D ...).

OPENBLAS_* variables are irrelevant here (XLA and torch bring their own kernels). Results are
printed as Markdown and, with ``--out``, written there as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    _block(out)
    return time.perf_counter() - start


def _block(tree):
    import jax

    for leaf in jax.tree_util.tree_leaves(tree):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()


def gruxp_fns(B, T, H):
    import jax
    import jax.numpy as jnp

    import gruxp

    model = gruxp.GRU(H, H, batch_first=True, xp=jnp, seed=0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, H)), dtype=jnp.float32)

    def loss(params, x):
        out, _ = gruxp.functional.gru(params, x, batch_first=True)
        return jnp.sum(out * out)

    forward = jax.jit(lambda params, x: gruxp.functional.gru(params, x, batch_first=True)[0])
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return model.params, x, forward, grad


def flax_grad(B, T, H):
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    rnn = nn.RNN(nn.GRUCell(features=H))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, H)), dtype=jnp.float32)
    params = rnn.init(jax.random.PRNGKey(0), x)

    def loss(params, x):
        out = rnn.apply(params, x)
        return jnp.sum(out * out)

    return params, x, jax.jit(jax.grad(loss, argnums=(0, 1)))


def keras_grad(B, T, H):
    """Keras 3's GRU layer on its JAX backend, differentiated by JAX through ``stateless_call``."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import jax.numpy as jnp
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"Keras runs on {keras.backend.backend()}; set KERAS_BACKEND=jax before anything imports it")
    layer = keras.layers.GRU(H, return_sequences=True, reset_after=True)
    layer.build((B, T, H))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, H)), dtype=jnp.float32)
    weights = [v.value for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]  # the RNG seed state of its dropout

    def loss(weights, x):
        out, _ = layer.stateless_call(weights, fixed, x)
        return jnp.sum(out * out)

    return weights, x, jax.jit(jax.grad(loss, argnums=(0, 1)))


def torch_step(B, T, H):
    import torch

    net = torch.nn.GRU(H, H, batch_first=True)
    x = torch.tensor(np.random.default_rng(0).standard_normal((B, T, H)), dtype=torch.float32, requires_grad=True)

    def step():
        net.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = net(x)
        (out * out).sum().backward()

    return step


def compile_table(rounds):
    rows = []
    for T in (10, 100, 1000):
        params, x, forward, grad = gruxp_fns(32, T, 128)
        first_fwd = timed(forward, params, x)
        first_grad = timed(grad, params, x)
        fwd = statistics.median(timed(forward, params, x) for _ in range(rounds))
        grd = statistics.median(timed(grad, params, x) for _ in range(rounds))
        rows.append(dict(T=T, forward_first_s=first_fwd, grad_first_s=first_grad, forward_ms=fwd * 1e3, grad_ms=grd * 1e3))
    return rows


def peer_table(rounds):
    import torch

    rows = []
    for B, T, H in ((32, 100, 128), (64, 100, 256)):
        params, x, _, grad = gruxp_fns(B, T, H)
        f_params, f_x, f_grad = flax_grad(B, T, H)
        k_weights, k_x, k_grad = keras_grad(B, T, H)
        t_step = torch_step(B, T, H)
        timed(grad, params, x), timed(f_grad, f_params, f_x), timed(k_grad, k_weights, k_x), t_step()  # compile, warm up
        ours, theirs, kerases, torchs = [], [], [], []
        for _ in range(rounds):
            ours.append(timed(grad, params, x))
            theirs.append(timed(f_grad, f_params, f_x))
            kerases.append(timed(k_grad, k_weights, k_x))
            start = time.perf_counter()
            t_step()
            torchs.append(time.perf_counter() - start)
        ratio_flax = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
        ratio_keras = statistics.median(a / b for a, b in zip(ours, kerases, strict=True))
        ratio_torch = statistics.median(a / b for a, b in zip(ours, torchs, strict=True))
        rows.append(
            dict(
                B=B,
                T=T,
                H=H,
                gruxp_ms=statistics.median(ours) * 1e3,
                flax_ms=statistics.median(theirs) * 1e3,
                keras_ms=statistics.median(kerases) * 1e3,
                vs_keras=ratio_keras,
                torch_ms=statistics.median(torchs) * 1e3,
                vs_flax=ratio_flax,
                vs_torch=ratio_torch,
                torch_threads=torch.get_num_threads(),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import flax
    import jax
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    header = (
        f"{datetime.date.today()} · {cpu} · jax {jax.__version__} ({jax.devices()[0].platform}), flax {flax.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) · float32"
    )
    compiles = compile_table(args.rounds)
    peers = peer_table(args.rounds)
    # compile = the first call less one run (the first call also runs the program once)
    for r in compiles:
        r["forward_compile_s"] = r["forward_first_s"] - r["forward_ms"] / 1e3
        r["grad_compile_s"] = r["grad_first_s"] - r["grad_ms"] / 1e3
    lines = [
        f"# gruxp on JAX ({header})",
        "",
        "| T | forward: first call s | compile s | run ms | jax.grad: first call s | compile s | run ms |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['T']} | {r['forward_first_s']:.2f} | {r['forward_compile_s']:.2f} | {r['forward_ms']:.1f} | "
        f"{r['grad_first_s']:.2f} | {r['grad_compile_s']:.2f} | {r['grad_ms']:.1f} |"
        for r in compiles
    ]
    base = compiles[0]
    lines += [
        "",
        "compile time at T = 1000 relative to T = 10: forward "
        f"{compiles[-1]['forward_compile_s'] / base['forward_compile_s']:.2f}×, jax.grad "
        f"{compiles[-1]['grad_compile_s'] / base['grad_compile_s']:.2f}×",
    ]
    lines += [
        "",
        "| B, T, I=H | gruxp jit(grad) ms | flax jit(grad) ms | Keras jit(grad) ms | torch ms "
        "| gruxp/flax | gruxp/Keras | gruxp/torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['B']},{r['T']},{r['H']} | {r['gruxp_ms']:.1f} | {r['flax_ms']:.1f} | {r['keras_ms']:.1f} | {r['torch_ms']:.1f} | "
        f"{r['vs_flax']:.2f}× | {r['vs_keras']:.2f}× | {r['vs_torch']:.2f}× |"
        for r in peers
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"jax-{datetime.date.today()}"
        stem.with_suffix(".md").write_text(text + "\n")
        stem.with_suffix(".json").write_text(json.dumps({"header": header, "compile": compiles, "peers": peers}, indent=1))


if __name__ == "__main__":
    main()
