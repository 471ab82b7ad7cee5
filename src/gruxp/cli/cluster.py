"""``gruxp train --scheduler``: the language model trained data-parallel on a Dask cluster.

The client (this process) keeps the model, the optimizer, validation, samples and checkpoints; the
workers hold the training text's rows and compute each shard's gradient
(:class:`gruxp.distributed.ClusterTrainer`). The number of shards decides the arithmetic; how many
workers there are, and which one computed what, does not.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import click
import numpy as np

from gruxp import losses
from gruxp.distributed import ClusterTrainer


def connect(address: str, *, timeout: float) -> Any:
    """A client of the scheduler at ``address`` with at least one worker, or a one-line error naming it."""
    try:
        import distributed
    except ImportError:
        raise click.UsageError('--scheduler needs Dask\'s distributed: pip install "gruxp[dask]"') from None
    # Dask's own log lines (reconnection attempts, a lost worker) are not the user's business on this
    # command: what happened is said in one line, and a lost worker costs nothing but a retry.
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name.split(".")[0] == "distributed":
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            # direct: each step's call goes straight to the workers (their shards' holders), not through the scheduler
            client = distributed.Client(address, timeout=timeout, set_as_default=False, direct_to_workers=True)
    except (OSError, TimeoutError, ValueError) as exc:
        raise click.ClickException(
            f"cannot reach a Dask scheduler at {address} within {timeout:g} s: {_first_line(exc)}"
        ) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        close(client)
        raise click.ClickException(
            f"the Dask scheduler at {address} has no workers after {timeout:g} s: {_first_line(exc)}"
        ) from None
    return client


def trainer(
    client: Any, model: Any, optimizer: Any, tokens: np.ndarray, opts: dict, checkpoint: Any, saved: dict, ctx: click.Context
) -> tuple[ClusterTrainer, dict]:
    """The cluster's trainer with the stream loaded, and the record a checkpoint keeps of it.

    A resumed run keeps its checkpoint's number of shards and seed (they decide the arithmetic).
    """
    shards, seed = opts["shards"], opts["seed"]
    if saved:
        explicit = ctx.get_parameter_source("shards") not in (click.core.ParameterSource.DEFAULT, None)
        if explicit and shards != saved["shards"]:
            raise click.UsageError(
                f"--shards {shards} differs from the checkpoint's {saved['shards']}: a resumed run keeps its shards "
                "(they decide the arithmetic)"
            )
        shards, seed = saved["shards"], saved["seed"]
    if shards is None:
        shards = len(client.scheduler_info()["workers"])
    if shards > opts["batch"]:
        raise click.UsageError(f"--shards {shards} is more than --batch {opts['batch']}: each shard holds whole rows")
    run = ClusterTrainer(
        client,
        model,
        losses.cross_entropy,
        optimizer,
        clip_norm=opts["clip"],
        checkpoint=checkpoint,
        seed=seed,
        timeout=opts["timeout"],
    )
    run.load_stream(tokens, batch_size=opts["batch"], window=opts["seq_len"], shards=shards)
    return run, {"scheduler": opts["scheduler"], "shards": shards, "seed": seed}


def describe(run: Any, record: dict) -> str:
    """The line `gruxp train` prints about the cluster: its scheduler, workers and shards."""
    workers = len(run.client.scheduler_info()["workers"])
    stream = run.stream
    assert stream is not None
    rows = ", ".join(f"{b - a}" for a, b in stream.rows)
    return (
        f"cluster: {record['scheduler']}, {workers} worker(s); {record['shards']} shard(s) of rows ({rows}); "
        "the result depends on the shards, not on the workers"
    )


def close(client: Any) -> None:
    """Close without waiting long on a scheduler that is gone."""
    with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
        client.close(timeout=2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
