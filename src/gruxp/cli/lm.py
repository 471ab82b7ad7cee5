"""The character-level language model behind ``gruxp train``, ``sample`` and ``eval``.

Embedding → stacked GRU (batch_first) → Linear head, trained with truncated BPTT over long
contiguous rows of text. Everything here is ordinary gruxp API; the command line only wires it up.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import gruxp
from gruxp import losses
from gruxp.models import recurrent
from gruxp.testing import to_numpy


def build_model(
    vocab_size: int,
    *,
    hidden: int,
    layers: int,
    embed: int,
    dropout: float,
    xp: Any,
    device: Any,
    dtype: str,
    seed: int,
    cell: str = "gru",
    zoneout: float = 0.0,
) -> gruxp.Sequential:
    """The model; its recurrent layer (of ``cell``) is named ``gru`` whatever the cell, as checkpoints know it."""
    place = dict(xp=xp, device=device, dtype=dtype)
    rnn = recurrent(
        cell,
        embed,
        hidden,
        layers,
        zoneout=zoneout,
        batch_first=True,
        dropout=dropout,
        seed=seed + 1,
        **place,
    )
    return gruxp.Sequential(
        embed=gruxp.Embedding(vocab_size, embed, seed=seed, **place),
        gru=rnn,
        head=gruxp.Linear(hidden, vocab_size, seed=seed + 2, **place),
    )


def evaluate(model: gruxp.Sequential, ids: np.ndarray, *, seq_len: int, batch: int, max_chars: int = 200_000) -> float:
    """Mean cross-entropy in nats per character over (a prefix of) ``ids``, state carried across windows."""
    xp, device = model.xp, model.device
    ids = ids[: max_chars + 1]
    rows = max(1, min(batch, (ids.size - 1) // seq_len))
    cols = (ids.size - 1) // rows
    if cols < 1:
        raise ValueError(f"the text is too short to evaluate ({ids.size} characters)")
    inputs = ids[: rows * cols].reshape(rows, cols)
    targets = ids[1 : rows * cols + 1].reshape(rows, cols)
    was_training = model.layers["gru"].training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        for start in range(0, cols, seq_len):
            stop = min(start + seq_len, cols)
            x = xp.asarray(np.ascontiguousarray(inputs[:, start:stop]), device=device)
            y = xp.asarray(np.ascontiguousarray(targets[:, start:stop]), device=device)
            logits, state = model(x, state)
            loss, _ = losses.cross_entropy(logits, y, reduction="sum")
            total += float(loss)
            count += rows * (stop - start)
    finally:
        model.train(was_training)
    return total / count


def sample(
    model: gruxp.Sequential, vocab: list[str], *, length: int, temperature: float, prime: str, rng: np.random.Generator
) -> str:
    """Generate ``length`` characters after ``prime`` (temperature-scaled softmax, host RNG)."""
    from .corpus import encode_text

    xp, device = model.xp, model.device
    was_training = model.layers["gru"].training
    model.eval()
    try:
        prime_ids = encode_text(prime or "\n", vocab)
        logits, state = model(xp.asarray(prime_ids[None, :], device=device))
        last = to_numpy(logits)[0, -1]
        out = []
        for _ in range(length):
            with np.errstate(over="ignore"):  # a tiny temperature sends the others to -inf: the most likely only
                z = (last.astype(np.float64) - float(np.max(last))) / temperature
            p = np.exp(z)
            p /= p.sum()
            nxt = int(rng.choice(len(vocab), p=p))
            out.append(vocab[nxt])
            logits, state = model.step(xp.asarray(np.array([nxt], dtype=np.int64), device=device), state)
            last = to_numpy(logits)[0]
    finally:
        model.train(was_training)
    return "".join(out)


def bits_per_char(nats: float) -> float:
    return nats / math.log(2)
