"""Scale out on Dask with exactly the same GRU math: batch inference and data-parallel training.

The time loop stays inside one task. Running the math on Dask's array namespace would unroll it
into the graph (about 22 tasks per step per chunk); instead the batch axis — the only axis whose
elements are independent — is the one that is chunked, and each task runs the ordinary forward
(or forward + backward) on its block, in whatever namespace the block lives in (NumPy blocks on
CPU workers, CuPy blocks on GPU workers).

* :func:`predict`: a dask array in, ``(out, h_n)`` dask arrays out; ``lengths`` may be a host
  array or a dask integer array (rechunked to the batch chunks).
* :class:`DataParallel`: shards are loaded on the workers by a function you give (never shipped
  from the client); each step scatters the parameters once (broadcast), computes one gradient per
  shard with the existing backward, sums the shard gradients in a fixed pairwise order (so the
  result is bit-reproducible for a given number of shards) and applies the optimizer on the client.
  The loss is the full-batch mean, so training equals single-process training (bit for bit with
  one shard). A worker lost mid-step costs a retry, not a wrong gradient: shard loading is a pure
  task that Dask recomputes on the remaining workers, and the sum's order does not depend on which
  worker computed what.

Threads: several worker *threads* on one machine each running gruxp's pieces on every core fight
for the cores. The tasks here run the GRU with at most ``blas_threads`` threads each (1 by default;
``None``: as many as the worker's CPUs), through ``gruxp.config_context(max_workers=...)``, which
holds for the task's own thread only: nothing process-wide changes (Dask's nanny pins NumPy's BLAS
for worker *processes*; gruxp's own BLAS runs one thread a call anyway).

Needs the ``dask`` extra: ``pip install "gruxp[dask]"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import check_array, check_positive_int
from ._namespace import device_of, dtype_name, namespace_of, to_numpy
from ._typing import Array
from .layers import Sequential
from .losses import cross_entropy
from .models import GRU

__all__ = ["predict", "DataParallel"]


def _blas_limit(threads: int | None):
    """At most ``threads`` threads for this task's GRU calls (this thread only); None: no limit."""
    if threads is None:
        return contextlib.nullcontext()
    from ._config import config_context

    return config_context(max_workers=threads)


# -- batch inference --------------------------------------------------------------------------
def _forward_block(block: Array, lengths: Any, *, state: dict, config: dict, blas_threads: int | None) -> tuple[Any, Any]:
    xp = namespace_of(block, what="x block")
    with _blas_limit(blas_threads):
        model = GRU(**config, xp=xp, device=device_of(block), dtype=block.dtype)
        model.load_state_dict(state)
        model.eval()
        host_lengths = None if lengths is None else to_numpy(lengths)
        return model(block, lengths=host_lengths)


def predict(model: GRU, x: Array, *, lengths: Any = None, blas_threads: int | None = 1) -> tuple[Any, Any]:
    """``(out, h_n)`` as dask arrays for a dask array ``x`` in the model's layout.

    ``x`` is (B, T, I) for a batch_first model, (T, B, I) otherwise; it is rechunked so that only
    the batch axis is chunked. ``out`` has x's batch chunks; ``h_n`` is (L·D, B, H), chunked along
    B the same way. The parameters enter the graph once.
    """
    import dask
    import dask.array as da

    if not isinstance(model, GRU):
        raise TypeError(f"predict takes a gruxp.GRU; got {type(model).__name__}")
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask array; got {type(x).__name__} (use the model directly for in-memory arrays)")
    # the blocks must be what the in-memory API accepts: the model's namespace and dtype (no recasting)
    check_array("x's blocks", x._meta, xp=model.xp, device=device_of(x._meta), dtype=model.dtype)
    if x.ndim != 3 or x.shape[-1] != model.input_size:
        layout = "(B, T, I)" if model.batch_first else "(T, B, I)"
        raise ValueError(f"x must have shape {layout} with I={model.input_size}; got {x.shape}")
    b_axis = 0 if model.batch_first else 1
    x = x.rechunk({a: (x.chunks[a] if a == b_axis else -1) for a in range(3)})
    batch_chunks = x.chunks[b_axis]
    if lengths is not None:
        if isinstance(lengths, da.Array):
            lengths = lengths.rechunk((batch_chunks,))
        else:
            lengths = da.from_array(np.asarray(lengths), chunks=(batch_chunks,))
        if lengths.shape != (x.shape[b_axis],):
            raise ValueError(f"lengths must have shape ({x.shape[b_axis]},); got {lengths.shape}")
        if not np.issubdtype(lengths.dtype, np.integer):
            raise TypeError(f"lengths must be integers; got dtype {lengths.dtype}")
    state = dask.delayed(model.state_dict(numpy=True), pure=True)  # one task, referenced by every block
    config = {k: v for k, v in model.config().items() if k != "dropout"}
    blocks = x.to_delayed().reshape(-1)
    len_blocks = [None] * len(blocks) if lengths is None else list(lengths.to_delayed().reshape(-1))
    D, H, LD = (2 if model.bidirectional else 1), model.hidden_size, model.num_layers * (2 if model.bidirectional else 1)
    outs, hns = [], []
    for block, size, lens in zip(blocks, batch_chunks, len_blocks, strict=True):
        pair = dask.delayed(_forward_block, nout=2, pure=True)(block, lens, state=state, config=config, blas_threads=blas_threads)
        T = x.shape[1 - b_axis]
        out_shape = (size, T, D * H) if model.batch_first else (T, size, D * H)
        outs.append(da.from_delayed(pair[0], shape=out_shape, dtype=x.dtype, meta=x._meta))
        hns.append(da.from_delayed(pair[1], shape=(LD, size, H), dtype=x.dtype, meta=x._meta))
    return da.concatenate(outs, axis=b_axis), da.concatenate(hns, axis=1)


# -- data-parallel training ---------------------------------------------------------------------
_WORKER_MODELS: dict[str, Sequential] = {}
_WORKER_LOCK = threading.Lock()


def _worker_model(config_json: str, dtype: str, blas_threads: int | None) -> Sequential:
    """One model per worker thread and structure, reused across steps (parameters are replaced)."""
    key = f"{threading.get_ident()}:{dtype}:{config_json}"
    with _WORKER_LOCK:
        model = _WORKER_MODELS.get(key)
        if model is None:
            model = Sequential.from_config(json.loads(config_json), dtype=dtype)
            _WORKER_MODELS[key] = model
    return model


def _count(loss: Callable, target: np.ndarray) -> int:
    """How many terms the full-batch mean divides by: valid targets (cross-entropy) or elements."""
    ignore = getattr(loss, "keywords", {}).get("ignore_index", -100)
    if getattr(loss, "func", loss) is cross_entropy:
        return int(np.sum(np.asarray(target) != ignore))
    return int(np.asarray(target).size)


def _shard_grad(
    params: dict,
    shard: tuple,
    *,
    config_json: str,
    dtype: str,
    loss: Callable,
    total: int,
    blas_threads: int | None,
    seed: tuple[int, ...],
) -> tuple[float, dict]:
    """(loss contribution, gradient contribution) of one shard to the full-batch mean.

    Every layer's host RNG (dropout masks) is seeded from (seed, step, shard, layer): a run is
    reproducible for a fixed number of shards, whichever worker computes which shard.
    """
    with _blas_limit(blas_threads):
        model = _worker_model(config_json, dtype, blas_threads)
        model.load_state_dict(params)
        for index, layer in enumerate(model.layers.values()):
            if hasattr(layer, "rng"):
                layer.rng = np.random.default_rng([*seed, index])
        model.train()
        x, target = shard[0], shard[1]
        lengths = shard[2] if len(shard) > 2 else None
        y, _, tape = model.forward(x, lengths=lengths)
        loss_sum, dy_sum = loss(y, target, reduction="sum")
        grads, _, _ = model.backward(tape, dy_sum / total)
        return float(loss_sum) / total, {k: to_numpy(v) for k, v in grads.items()}


def _add(a: tuple[float, dict], b: tuple[float, dict]) -> tuple[float, dict]:
    return a[0] + b[0], {k: a[1][k] + b[1][k] for k in a[1]}


# What a lost or restarted worker looks like from the client; anything else (a bug in the loss,
# a bad shard) is the user's error and is raised at once.
def _cluster_failures() -> tuple[type[BaseException], ...]:
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    return (OSError, KeyError, TimeoutError, CancelledError, KilledWorker)


class DataParallel:
    """Data-parallel training of a :class:`~gruxp.Sequential` on a Dask cluster.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    model
        The model; it lives on the client (NumPy parameters), workers rebuild it from its config.
    loss
        :func:`gruxp.losses.cross_entropy` or :func:`gruxp.losses.mse` (or a ``functools.partial``
        of one); shards call it with ``reduction="sum"``.
    optimizer
        An optimizer of :mod:`gruxp.optim`, applied on the client.
    clip_norm
        Clip the summed gradient's global norm on the client, as single-process training does.
    blas_threads
        BLAS threads per task (1: workers that share a machine do not oversubscribe it).
    seed
        Seeds the workers' dropout masks per (step, shard, layer).
    timeout, retries
        A step whose cluster fails (a worker lost while parameters are scattered or gradients
        computed, lost dependencies, a closed connection) is retried up to ``retries`` times, each
        attempt bounded by ``timeout`` seconds: parameters are scattered anew and lost shards are
        reloaded through the loader. After that, a ``RuntimeError`` says what failed; never a hang.

    Examples
    --------
    ``dp = DataParallel(client, model, losses.mse, optim.Adam()); dp.load_shards(load, n=4);
    for _ in range(100): dp.step()`` where ``load(i, n)`` returns shard i of n as ``(x, target)``.
    """

    def __init__(
        self,
        client: Any,
        model: Sequential,
        loss: Callable,
        optimizer: Any,
        *,
        clip_norm: float | None = None,
        blas_threads: int | None = 1,
        seed: int = 0,
        timeout: float = 300.0,
        retries: int = 3,
    ) -> None:
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a gruxp.Sequential; got {type(model).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a finite number of seconds > 0; got {timeout!r}")
        self.client, self.model, self.loss, self.optimizer = client, model, loss, optimizer
        self.clip_norm, self.blas_threads = clip_norm, blas_threads
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.timeout, self.retries = float(timeout), check_positive_int("retries", retries, minimum=0)
        self.opt_state = optimizer.init(model.params)
        self.step_count = 0
        self.shards: list[Any] = []
        self.total = 0
        self._loader: Callable[[int, int], tuple] | None = None
        self._config_json = json.dumps(model.config())

    def _workers(self) -> list[str]:
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            raise TimeoutError("the cluster has no workers")
        return workers

    def _load(self, i: int, n: int, workers: list[str]) -> Any:
        return self.client.submit(self._loader, i, n, workers=[workers[i % len(workers)]], allow_other_workers=True, pure=False)

    def load_shards(self, loader: Callable[[int, int], tuple], n: int | None = None) -> None:
        """Run ``loader(i, n)`` on the workers (shard i preferably on worker i mod W) and keep the results there.

        The loader must be deterministic: a lost worker's shard is loaded again elsewhere.
        """
        workers = self._workers()
        n = len(workers) if n is None else int(n)
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        self._loader = loader
        self.shards = [self._load(i, n, workers) for i in range(n)]
        counts = self.client.gather([self.client.submit(_count_shard, s, self.loss, pure=False) for s in self.shards])
        self.total = int(sum(counts))
        if self.total == 0:
            raise ValueError("the shards hold no targets to train on")

    def _reload_lost_shards(self) -> None:
        workers = self._workers()
        n = len(self.shards)
        self.shards = [
            shard if shard.status in ("pending", "finished") else self._load(i, n, workers) for i, shard in enumerate(self.shards)
        ]

    def _attempt(self) -> tuple[float, dict[str, np.ndarray]]:
        # One future for the whole dict (scattering a dict would scatter each entry under its name),
        # to one worker: the others fetch it. A broadcast would replicate it to every worker the
        # scheduler lists, and the scheduler retries a dead one for minutes; callback_timeout bounds
        # the call itself (Client.scatter's own timeout only bounds the wait for workers).
        [params] = self.client.sync(
            self.client._scatter,
            [self.model.state_dict(numpy=True)],
            hash=False,
            timeout=self.timeout,
            callback_timeout=self.timeout,
        )
        workers = self._workers()
        dtype = dtype_name(self.model.dtype)
        parts = [
            self.client.submit(
                _shard_grad,
                params,
                shard,
                config_json=self._config_json,
                dtype=dtype,
                loss=self.loss,
                total=self.total,
                blas_threads=self.blas_threads,
                seed=(self.seed, self.step_count, i),
                workers=[workers[i % len(workers)]],
                allow_other_workers=True,
                pure=False,
            )
            for i, shard in enumerate(self.shards)
        ]
        while len(parts) > 1:  # a fixed pairwise tree: (0+1) + (2+3) ..., whatever worker ran what
            parts = [
                self.client.submit(_add, parts[i], parts[i + 1], pure=False) if i + 1 < len(parts) else parts[i]
                for i in range(0, len(parts), 2)
            ]
        return parts[0].result(timeout=self.timeout)

    def gradients(self) -> tuple[float, dict[str, np.ndarray]]:
        """(full-batch mean loss, its gradient) at the current parameters, summed pairwise in shard order."""
        if not self.shards:
            raise RuntimeError("no shards: call load_shards first")
        failures = _cluster_failures()
        for attempt in range(self.retries + 1):
            try:
                return self._attempt()
            except failures as exc:
                last = exc
                time.sleep(min(0.25 * 2**attempt, 5.0))  # let the scheduler notice the loss (and a nanny restart)
                try:
                    self._reload_lost_shards()
                except failures:
                    pass  # the next attempt reports it
        raise RuntimeError(
            f"DataParallel: step {self.step_count + 1} failed {self.retries + 1} times, each within "
            f"{self.timeout:g} s; the cluster keeps losing work ({type(last).__name__}: {last})"
        ) from last

    def step(self) -> dict[str, float]:
        """One optimizer step on the full batch; returns ``{"step", "loss", "grad_norm"}``."""
        from .optim import clip_grad_norm

        loss, host_grads = self.gradients()
        if not math.isfinite(loss):
            from .training import NonFiniteLossError

            raise NonFiniteLossError(f"loss is {loss} at step {self.step_count + 1}: stopped before the update")
        m = self.model
        grads = {k: m.xp.asarray(v, dtype=m.dtype, device=m.device) for k, v in host_grads.items()}
        if self.clip_norm is not None:
            grads, norm = clip_grad_norm(grads, self.clip_norm)
        else:
            norm = math.sqrt(sum(float(np.sum(v * v)) for v in host_grads.values()))
        m.params, self.opt_state = self.optimizer.step(m.params, grads, self.opt_state)
        self.step_count += 1
        return {"step": self.step_count, "loss": loss, "grad_norm": float(norm)}


def _count_shard(shard: tuple, loss: Callable) -> int:
    return _count(loss, to_numpy(shard[1]))
