"""Train a GRU on the adding problem (Hochreiter & Schmidhuber 1997) with gruxp on NumPy.

Each input is T steps of two channels: a value drawn from U[0, 1] and a marker that is 1 at two
random positions (one in each half) and 0 elsewhere. The target is the sum of the two marked
values. Always predicting 1.0 scores MSE = Var(U1 + U2) = 1/6 ≈ 0.167; a GRU that has learned
to remember the marked values gets far below it.

    python examples/adding_problem.py            # T=50, stops at test MSE < 0.01
    python examples/adding_problem.py --T 100 --max-steps 6000 --xp torch
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np

import gruxp
from gruxp import losses, optim


def adding_batch(rng: np.random.Generator, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    values = rng.uniform(0.0, 1.0, size=(batch, steps))
    markers = np.zeros((batch, steps))
    first = rng.integers(0, steps // 2, size=batch)
    second = rng.integers(steps // 2, steps, size=batch)
    markers[np.arange(batch), first] = 1.0
    markers[np.arange(batch), second] = 1.0
    x = np.stack([values, markers], axis=-1)  # (B, T, 2)
    y = (values * markers).sum(axis=1, keepdims=True)  # (B, 1)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-steps", type=int, default=4000)
    parser.add_argument("--target-mse", type=float, default=0.01)
    parser.add_argument("--xp", default="numpy", help="numpy, torch, jax.numpy, array_api_strict, cupy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    xp = importlib.import_module(args.xp)
    place = dict(xp=xp, dtype="float32")
    model = gruxp.Sequential(
        gru=gruxp.GRU(2, args.hidden, batch_first=True, seed=args.seed, **place),
        last=gruxp.LastStep(batch_first=True),
        head=gruxp.Linear(args.hidden, 1, seed=args.seed + 1, **place),
    )
    put = lambda a: xp.asarray(a, dtype=model.dtype, device=model.device)  # noqa: E731
    trainer = gruxp.Trainer(model, losses.mse, optim.Adam(lr=args.lr), clip_norm=1.0, seed=args.seed)
    test_x, test_y = adding_batch(np.random.default_rng(12345), 1000, args.T)
    test_x, test_y = put(test_x), put(test_y)

    def batch_fn(step: int, rng: np.random.Generator) -> gruxp.Batch:
        x, y = adding_batch(rng, args.batch, args.T)
        return gruxp.Batch(put(x), put(y))

    def test_mse() -> float:
        pred, _ = model.eval()(test_x)
        model.train()
        return float(losses.mse(pred, test_y)[0])

    print(f"adding problem, T={args.T}: baseline (always 1.0) MSE = {1 / 6:.4f}; target < {args.target_mse}")
    start, mse = time.perf_counter(), test_mse()
    while trainer.step < args.max_steps and mse >= args.target_mse:
        trainer.fit(batch_fn, trainer.step + 100)
        mse = test_mse()
        print(
            f"step {trainer.step:5d}  train loss {trainer.history[-1]['loss']:.4f}  test MSE {mse:.5f}  "
            f"({time.perf_counter() - start:.1f} s)"
        )
    wall = time.perf_counter() - start
    verdict = "solved" if mse < args.target_mse else "not solved"
    print(
        f"{verdict}: test MSE {mse:.5f} after {trainer.step} steps in {wall:.1f} s "
        f"({args.xp}, batch {args.batch}, hidden {args.hidden})"
    )


if __name__ == "__main__":
    main()
