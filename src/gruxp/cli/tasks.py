"""The synthetic memory benchmarks of ``gruxp train --task``.

* adding (Hochreiter & Schmidhuber 1997): two channels, values U[0, 1] and a marker on two
  positions (one in each half); the target is the sum of the two marked values. Always
  predicting 1 scores MSE = Var(U1 + U2) = 1/6.
* copy (copying memory, Arjovsky et al. 2016): 10 symbols from 8 categories, T−1 blanks, a
  delimiter, 10 blanks; the output must be blank until the last 10 steps, which repeat the
  symbols. A memoryless model scores a cross-entropy of 10·ln 8 / (T + 20) nats per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

import gruxp
from gruxp import losses
from gruxp.models import recurrent


class Task(NamedTuple):
    title: str
    metric: str
    build: Callable[..., gruxp.Sequential]
    batch: Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]
    loss: Callable[[Any, Any], tuple[Any, Any]]
    baseline: Callable[[int], float]


def _adding_batch(rng: np.random.Generator, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    values = rng.uniform(0.0, 1.0, size=(batch, steps))
    markers = np.zeros((batch, steps))
    rows = np.arange(batch)
    markers[rows, rng.integers(0, max(1, steps // 2), size=batch)] = 1.0
    markers[rows, rng.integers(steps // 2, steps, size=batch)] = 1.0
    return np.stack([values, markers], axis=-1), (values * markers).sum(axis=1, keepdims=True)


def _adding_model(*, hidden, layers, embed, dropout, xp, device, dtype, seed, cell="gru", zoneout=0.0) -> gruxp.Sequential:
    place = dict(xp=xp, device=device, dtype=dtype)
    return gruxp.Sequential(
        gru=recurrent(cell, 2, hidden, layers, zoneout=zoneout, dropout=dropout, batch_first=True, seed=seed, **place),
        last=gruxp.LastStep(batch_first=True),
        head=gruxp.Linear(hidden, 1, seed=seed + 1, **place),
    )


def _copy_batch(rng: np.random.Generator, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    symbols = rng.integers(1, 9, size=(batch, 10))
    x = np.zeros((batch, steps + 20), dtype=np.int64)
    y = np.zeros((batch, steps + 20), dtype=np.int64)
    x[:, :10] = symbols
    x[:, steps + 9] = 9  # the delimiter: "repeat now"
    y[:, -10:] = symbols
    return x, y


def _copy_model(*, hidden, layers, embed, dropout, xp, device, dtype, seed, cell="gru", zoneout=0.0) -> gruxp.Sequential:
    place = dict(xp=xp, device=device, dtype=dtype)
    return gruxp.Sequential(
        embed=gruxp.Embedding(10, embed, seed=seed, **place),
        gru=recurrent(cell, embed, hidden, layers, zoneout=zoneout, dropout=dropout, batch_first=True, seed=seed + 1, **place),
        head=gruxp.Linear(hidden, 9, seed=seed + 2, **place),
    )


TASKS = {
    "adding": Task("adding problem", "MSE", _adding_model, _adding_batch, losses.mse, lambda steps: 1.0 / 6.0),
    "copy": Task(
        "copying memory",
        "nats/step",
        _copy_model,
        _copy_batch,
        losses.cross_entropy,
        lambda steps: 10 * math.log(8) / (steps + 20),
    ),
}
