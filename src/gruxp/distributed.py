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
from typing import Any, NamedTuple

import numpy as np

from ._checks import check_array, check_positive_int
from ._namespace import device_of, dtype_name, namespace_of, to_numpy
from ._typing import Array
from .layers import Sequential
from .losses import cross_entropy
from .models import GRU
from .training import Batch, Trainer

__all__ = ["predict", "DataParallel", "ClusterTrainer", "ClusterError"]


class ClusterError(RuntimeError):
    """The cluster kept failing a step (lost workers, a cut link, a scheduler gone) past the retries."""


class Stream(NamedTuple):
    """How a token stream is cut: rows, window, windows per pass, and each shard's [start, stop) rows."""

    batch_size: int
    window: int
    n_windows: int
    rows: tuple[tuple[int, int], ...]


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
    window: tuple[int, int] | None = None,
    carry: dict | None = None,
) -> tuple[float, dict, list]:
    """(loss contribution, gradient contribution, [carried state]) of one shard to the full-batch mean.

    ``window`` (k, T): the shard holds token rows and this step reads their columns [k·T, (k+1)·T)
    (truncated BPTT), starting from ``carry``. Every random layer draws from a Generator seeded by
    (seed, step, shard, layer position): a run is reproducible for a fixed number of shards, whichever
    worker computes which shard.
    """
    with _blas_limit(blas_threads):
        model = _worker_model(config_json, dtype, blas_threads)
        model.load_state_dict(params)
        model.train()
        rng = {
            name: np.random.default_rng([*seed, index])
            for index, (name, layer) in enumerate(model.layers.items())
            if getattr(layer, "draws_randomness", False)
        }
        lengths = None
        if window is None:
            x, target = shard[0], shard[1]
            lengths = shard[2] if len(shard) > 2 else None
        else:
            k, width = window
            columns = slice(k * width, (k + 1) * width)
            x, target = (np.ascontiguousarray(rows[:, columns], dtype=np.int64) for rows in shard)
        y, state, tape = model.forward(x, carry, lengths=lengths, rng=rng)
        loss_sum, dy_sum = loss(y, target, reduction="sum")
        grads, _, _ = model.backward(tape, dy_sum / total)
        states = [{k: to_numpy(v) for k, v in state.items()}] if window is not None else []
        return float(loss_sum) / total, {k: to_numpy(v) for k, v in grads.items()}, states


def _add(a: tuple[float, dict, list], b: tuple[float, dict, list]) -> tuple[float, dict, list]:
    """Two shards' contributions summed; their carried states kept in shard order."""
    return a[0] + b[0], {k: a[1][k] + b[1][k] for k in a[1]}, a[2] + b[2]


# What a lost or restarted worker looks like from the client; anything else (a bug in the loss,
# a bad shard) is the user's error and is raised at once.
def _cluster_failures() -> tuple[type[BaseException], ...]:
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    return (OSError, KeyError, TimeoutError, CancelledError, KilledWorker)


def _address(client: Any) -> str:
    return str(getattr(getattr(client, "scheduler", None), "address", None) or "(unknown address)")


class _OnCluster:
    """What every cluster trainer holds: the client, the scheduler's address (for messages: a closed
    client no longer knows it), the masks' seed and the bounds of a step's attempts."""

    client: Any
    address: str
    blas_threads: int | None
    seed: int
    timeout: float
    retries: int

    def _on_cluster(self, client: Any, model: Any, *, seed: int, timeout: float, retries: int, blas_threads: int | None) -> None:
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a gruxp.Sequential; got {type(model).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a finite number of seconds > 0; got {timeout!r}")
        self.client, self.address, self.blas_threads = client, _address(client), blas_threads
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.timeout, self.retries = float(timeout), check_positive_int("retries", retries, minimum=0)


def _gone(client: Any) -> bool:
    """Whether the client gave up on its scheduler (it then raises RuntimeError on every call)."""
    return client.status not in ("running", "connecting")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _retried(owner: _OnCluster, attempt: Callable[[], Any], recover: Callable[[], None], step: int) -> Any:
    """``attempt()``, retried ``owner.retries`` times on cluster failures (``recover()`` between tries).

    Anything else (a bug in the loss, a bad shard) is the user's error and is raised at once. A client
    that gave up on its scheduler ("ConnectionPool is closed" from then on) is a cluster failure that
    no retry can help: it ends the retries at once.
    """
    failures = _cluster_failures()
    client = owner.client
    last: BaseException | None = None
    for tries in range(owner.retries + 1):
        if _gone(client):
            break
        try:
            return attempt()
        except Exception as exc:
            if not (isinstance(exc, failures) or _gone(client)):
                raise
            last = exc
        if _gone(client):
            break
        time.sleep(min(0.25 * 2**tries, 5.0))  # let the scheduler notice the loss (and a nanny restart)
        try:
            recover()
        except failures:
            pass  # the next attempt reports it
    if _gone(client):
        why = "" if last is None else f" ({_one_line(last)})"
        raise ClusterError(f"step {step + 1} failed: the scheduler at {owner.address} is gone{why}") from last
    assert last is not None
    raise ClusterError(
        f"step {step + 1} failed {owner.retries + 1} times, each within {owner.timeout:g} s, "
        f"on the cluster at {owner.address}: {_one_line(last)}"
    ) from last


class DataParallel(_OnCluster):
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
        reloaded. After that, a :class:`ClusterError` (a ``RuntimeError``) says what failed, naming the
        scheduler's address; never a hang.

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
        self._on_cluster(client, model, seed=seed, timeout=timeout, retries=retries, blas_threads=blas_threads)
        self.model, self.loss, self.optimizer, self.clip_norm = model, loss, optimizer, clip_norm
        self.opt_state = optimizer.init(model.params)
        self.step_count = 0
        self.shards: list[Any] = []
        self.total = 0
        self._placement: list[str] = []
        self._sources: list[tuple[Callable, tuple]] = []
        self._config_json = json.dumps(model.config())

    def _workers(self) -> list[str]:
        """The workers now (an RPC to the scheduler), remembered as the shards' preferred places.

        Asked when shards are loaded or reloaded, not every step: the places are preferences
        (``allow_other_workers``), so a stale list costs nothing but a hint the scheduler overrides.
        """
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            raise TimeoutError("the cluster has no workers")
        self._placement = workers
        return workers

    def _load(self, i: int, workers: list[str]) -> Any:
        function, args = self._sources[i]
        return self.client.submit(function, *args, workers=[workers[i % len(workers)]], allow_other_workers=True, pure=False)

    def _count_targets(self) -> None:
        counts = self.client.gather([self.client.submit(_count_shard, s, self.loss, pure=False) for s in self.shards])
        self.total = int(sum(counts))
        if self.total == 0:
            raise ValueError("the shards hold no targets to train on")

    def load_shards(self, loader: Callable[[int, int], tuple], n: int | None = None) -> None:
        """Run ``loader(i, n)`` on the workers (shard i preferably on worker i mod W) and keep the results there.

        The loader must be deterministic: a lost worker's shard is loaded again elsewhere.
        """
        workers = self._workers()
        n = len(workers) if n is None else int(n)
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        self._sources = [(loader, (i, n)) for i in range(n)]
        self.shards = [self._load(i, workers) for i in range(n)]
        self._count_targets()

    def _reload_lost_shards(self) -> None:
        workers = self._workers()
        self.shards = [
            shard if shard.status in ("pending", "finished") else self._load(i, workers) for i, shard in enumerate(self.shards)
        ]

    def _attempt(self, step: int) -> tuple[float, dict[str, np.ndarray], list[dict]]:
        # One future for the whole dict (scattering a dict would scatter each entry under its name),
        # to one worker: the others fetch it. A broadcast would replicate it to every worker the
        # scheduler lists, and the scheduler retries a dead one for minutes; callback_timeout bounds
        # the call itself (Client.scatter's own timeout only bounds the wait for workers). direct:
        # the parameters (and below, the summed gradient) go between this process and a worker, not
        # through the scheduler (one hop of the step's largest messages instead of two).
        [params] = self.client.sync(
            self.client._scatter,
            [self.model.state_dict(numpy=True)],
            hash=False,
            direct=True,
            timeout=self.timeout,
            callback_timeout=self.timeout,
        )
        workers = self._placement
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
                seed=(self.seed, step, i),
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
        [result] = self.client.sync(self.client._gather, [parts[0]], direct=True, callback_timeout=self.timeout)
        return result

    def gradients(self) -> tuple[float, dict[str, np.ndarray]]:
        """(full-batch mean loss, its gradient) at the current parameters, summed pairwise in shard order."""
        if not self.shards:
            raise RuntimeError("no shards: call load_shards first")
        loss, grads, _ = _retried(self, lambda: self._attempt(self.step_count), self._reload_lost_shards, self.step_count)
        return loss, grads

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


class HolderLost(OSError):
    """An actor holding shards is gone (its worker left, or its client cancelled it): retried."""


def _usable(actor: Any) -> bool:
    """Whether an actor can still be called: one whose future was lost or cancelled refuses every
    attribute with RuntimeError ("Worker holding Actor was lost")."""
    try:
        actor.gradients  # noqa: B018
    except RuntimeError:
        return False
    return True


class Holder(NamedTuple):
    """Which worker's actor holds which shards (an actor's rows are fixed when it is made)."""

    worker: str
    shards: tuple[int, ...]
    actor: Any


class _ShardHolder:
    """A Dask actor on one worker: some shards' token rows, and their gradients on request.

    An actor's method is called directly from the client, not through the scheduler: a step costs one
    round trip to each worker (the parameters out, each shard's gradient back). It holds no state the
    run depends on (the carried state and the parameters come with each call), so a lost one is
    replaced on another worker with its rows sent again, and nothing else changes.
    """

    def __init__(self, rows: dict[int, tuple[np.ndarray, np.ndarray]], config_json: str, dtype: str, total: int) -> None:
        self.rows, self.config_json, self.dtype, self.total = rows, config_json, dtype, total

    def gradients(
        self,
        params: dict,
        *,
        loss: Callable,
        blas_threads: int | None,
        seed: int,
        step: int,
        window: tuple[int, int],
        carries: dict[int, dict | None],
    ) -> dict[int, tuple[float, dict, list]]:
        """Each held shard's (loss contribution, gradient contribution, [carried state]) at ``params``."""
        return {
            i: _shard_grad(
                params,
                self.rows[i],
                config_json=self.config_json,
                dtype=self.dtype,
                loss=loss,
                total=self.total,
                blas_threads=blas_threads,
                seed=(seed, step, i),
                window=window,
                carry=carries[i],
            )
            for i in sorted(self.rows)
        }


class ClusterTrainer(Trainer, _OnCluster):
    """A :class:`~gruxp.Trainer` whose gradients are computed on a Dask cluster: truncated BPTT over a
    token stream (:meth:`load_stream`), its rows split into shards that the workers hold.

    Each worker holds its shards' token rows in a Dask actor (sent once). A step calls every holder
    (one round trip each; straight to the worker with a ``Client(direct_to_workers=True)``, as
    ``gruxp train`` makes it, through the scheduler otherwise) with the parameters, the window's index
    and its shards' carried state, and sums the shards' gradients on the client in a fixed pairwise
    order (0+1)+(2+3)…, so for a given number of shards the parameters do not depend on how many
    workers there are or which worker computed what (bit for bit). Everything else is the Trainer's own
    code: clipping, the optimizer, the finiteness checks and checkpoints, which hold every row's carried
    state, so a run continues from a checkpoint on another cluster bit for bit. With one shard and no
    random layer the parameters equal :class:`~gruxp.Trainer`'s on
    :func:`gruxp.training.stream_windows` batches (the same gradient: the summed loss's gradient
    divided by the count, as the mean does).

    A worker lost mid-step costs a retry: its shards' holder is made again on a worker still there
    (its rows sent again from the client, which keeps them) and the step is computed again, with the
    same result. A client that lost its scheduler stops the run (:class:`ClusterError`): the workers
    may still answer, but no lost worker could be replaced.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    model, loss, optimizer, clip_norm, checkpoint, seed, history_size
        As :class:`~gruxp.Trainer` (``stateful`` is always on). ``loss`` takes ``reduction="sum"``
        (:func:`gruxp.losses.cross_entropy`). ``seed`` (an int) also seeds the random layers' masks
        per (step, shard, layer), whichever worker draws them.
    blas_threads
        As :class:`DataParallel` (1: workers that share a machine do not oversubscribe it).
    timeout, retries
        A step whose cluster fails is tried again up to ``retries`` times, each attempt bounded by
        ``timeout`` seconds; then :class:`ClusterError` says what failed, and nothing has changed.
    """

    def __init__(
        self,
        client: Any,
        model: Sequential,
        loss: Callable,
        optimizer: Any,
        *,
        clip_norm: float | None = None,
        checkpoint: Any = None,
        seed: int = 0,
        history_size: int = 10_000,
        blas_threads: int | None = 1,
        timeout: float = 60.0,
        retries: int = 2,
    ) -> None:
        self._on_cluster(client, model, seed=seed, timeout=timeout, retries=retries, blas_threads=blas_threads)
        super().__init__(
            model,
            loss,
            optimizer,
            clip_norm=clip_norm,
            stateful=True,
            checkpoint=checkpoint,
            seed=seed,
            history_size=history_size,
            compile=False,
        )
        self.stream: Stream | None = None
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []  # each shard's token rows, kept to replace a holder
        self._holders: list[Holder] = []

    # -- the data --------------------------------------------------------------------------------
    def load_stream(self, tokens: np.ndarray, *, batch_size: int, window: int, shards: int | None = None) -> None:
        """Cut ``tokens`` as :func:`gruxp.training.stream_windows` does: ``batch_size`` contiguous rows,
        windows of ``window`` columns; split the rows into ``shards`` shards of whole rows
        (``np.array_split`` of the row indices; default one shard per worker now) and give each worker
        its shards' rows (once, one byte a token where the vocabulary fits). Every target counts (a
        token stream has no padding): the mean divides by batch_size · window.
        """
        batch_size, window = check_positive_int("batch_size", batch_size), check_positive_int("window", window)
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise TypeError(f"tokens must be a 1-D integer array; got shape {tokens.shape}, dtype {tokens.dtype}")
        workers = self._live_workers()
        n = len(workers) if shards is None else check_positive_int("shards", shards)
        if n > batch_size:
            raise ValueError(f"shards must be at most batch_size={batch_size} (each shard holds whole rows); got {n}")
        columns = (tokens.size - 1) // batch_size
        if columns // window < 1:
            raise ValueError(f"a stream of {tokens.size} tokens is too short for batch_size={batch_size}, window={window}")
        small = np.min_scalar_type(int(tokens.max(initial=0)))  # uint8 for a character vocabulary
        used = tokens[: batch_size * columns + 1].astype(small)
        inputs, targets = used[:-1].reshape(batch_size, columns), used[1:].reshape(batch_size, columns)
        rows = np.array_split(np.arange(batch_size), n)
        self._rows = [(inputs[r[0] : r[-1] + 1], targets[r[0] : r[-1] + 1]) for r in rows]
        self.stream = Stream(batch_size, window, columns // window, tuple((int(r[0]), int(r[-1]) + 1) for r in rows))
        self._holders = []
        self._place({i: workers[i % len(workers)] for i in range(n)})

    @property
    def shards(self) -> int:
        return len(self._rows)

    def _live_workers(self) -> list[str]:
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            raise TimeoutError("the cluster has no workers")
        return workers

    def _place(self, where: dict[int, str]) -> None:
        """A holder on each named worker for the shards given to it, made within ``timeout``."""
        assert self.stream is not None
        by_worker: dict[str, list[int]] = {}
        for i, worker in where.items():
            by_worker.setdefault(worker, []).append(i)
        config, dtype = json.dumps(self.model.config()), dtype_name(self.model.dtype)
        total = self.stream.batch_size * self.stream.window
        made = [
            (
                worker,
                tuple(held),
                self.client.submit(
                    _ShardHolder,
                    {i: self._rows[i] for i in held},
                    config,
                    dtype,
                    total,
                    workers=[worker],
                    allow_other_workers=False,
                    actor=True,
                    pure=False,
                ),
            )  # fmt: skip
            for worker, held in by_worker.items()
        ]
        deadline = time.monotonic() + self.timeout
        with self.client.as_current():  # an actor binds to the current client when it arrives
            for worker, held, future in made:
                self._holders.append(Holder(worker, held, future.result(timeout=max(deadline - time.monotonic(), 0.001))))

    def _replace_lost_holders(self) -> None:
        """The shards of holders that were lost (their worker left, or the client dropped them) go
        to the workers still there (round robin)."""
        workers = self._live_workers()
        kept = [holder for holder in self._holders if holder.worker in workers and _usable(holder.actor)]
        lost = sorted(i for holder in self._holders if holder not in kept for i in holder.shards)
        self._holders = kept
        if lost:
            self._place({i: workers[k % len(workers)] for k, i in enumerate(lost)})

    # -- one step -------------------------------------------------------------------------------
    def train_step(self, batch: Batch | None = None) -> dict[str, float]:
        """One update on the stream's next window (the data is on the workers: ``batch`` must be None)."""
        if self.stream is None:
            raise RuntimeError("no stream: call load_stream first")
        if batch is not None:
            raise TypeError("ClusterTrainer.train_step reads its window on the workers: call it without a batch")
        return super().train_step(Batch(None, None, None, self.step % self.stream.n_windows == 0))

    def _gradients(self, batch: Batch) -> tuple[float, dict, dict]:
        stream, m = self.stream, self.model
        assert stream is not None
        host = {name: to_numpy(h) for name, h in self.carry.items()}
        carries = [{name: np.ascontiguousarray(h[:, a:b]) for name, h in host.items()} or None for a, b in stream.rows]
        window = (self.step % stream.n_windows, stream.window)
        loss, grads, states = _retried(self, lambda: self._attempt(window, carries), self._replace_lost_holders, self.step)
        state = {
            name: m.xp.asarray(np.concatenate([s[name] for s in states], axis=1), dtype=m.dtype, device=m.device)
            for name in states[0]
        }
        return loss, {k: m.xp.asarray(v, dtype=m.dtype, device=m.device) for k, v in grads.items()}, state

    def _attempt(self, window: tuple[int, int], carries: list[dict | None]) -> tuple[float, dict, list]:
        params = self.model.state_dict(numpy=True)
        with self.client.as_current():
            return self._call_holders(params, window, carries)

    def _call_holders(self, params: dict, window: tuple[int, int], carries: list[dict | None]) -> tuple[float, dict, list]:
        if not all(_usable(holder.actor) for holder in self._holders):
            raise HolderLost("a worker holding shards was lost")
        calls = [
            holder.actor.gradients(
                params,
                loss=self.loss,
                blas_threads=self.blas_threads,
                seed=self.seed,
                step=self.step,
                window=window,
                carries={i: carries[i] for i in holder.shards},
            )
            for holder in self._holders
        ]
        deadline = time.monotonic() + self.timeout
        parts: dict[int, tuple[float, dict, list]] = {}
        for call in calls:
            parts.update(call.result(timeout=max(deadline - time.monotonic(), 0.001)))
        ordered = [parts[i] for i in range(len(self._rows))]
        while len(ordered) > 1:  # a fixed pairwise tree: (0+1) + (2+3) ..., whatever worker ran what
            ordered = [
                _add(ordered[i], ordered[i + 1]) if i + 1 < len(ordered) else ordered[i] for i in range(0, len(ordered), 2)
            ]
        return ordered[0]
