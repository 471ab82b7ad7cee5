"""The training loop: one step is forward → loss → backward → (clip) → optimizer, on any backend.

:class:`Trainer` owns the optimizer state, the step counter, a host RNG for the data and, for
truncated BPTT, the recurrent state carried from one window into the next. The carried state
enters the next window as its initial state only: that window's backward stops at it (its
gradient ``dh0`` is dropped), which is exactly truncation.

Batches come from a function ``batch_fn(step, rng)`` so that the data a step sees depends only
on the step and the saved RNG state: resuming from a checkpoint continues bit-identically.

A non-finite loss, gradient norm or update (parameters or optimizer state that overflow) stops
training with :class:`NonFiniteLossError`; the model keeps the parameters of the last good step and
the last good checkpoint on disk is never overwritten (``checkpoint.save`` refuses non-finite values).
``history`` keeps the last ``history_size`` records only, so a long run does not grow without bound.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import checkpoint as ckpt_io
from ._checks import check_bool, check_positive_int, placed_lengths
from ._namespace import to_numpy
from ._random import key_from_words, seed_words
from ._typing import Array
from .functional._routes import route_for
from .optim import OPTIMIZERS, _number, clip_grad_norm

__all__ = ["Batch", "Trainer", "NonFiniteLossError", "stream_windows"]


class NonFiniteLossError(FloatingPointError):
    """The loss, gradient or update became NaN or infinite; parameters and checkpoints are as after
    the last good step."""


def _float_leaves(*trees: Any, xp: Any) -> list[Any]:
    """The float arrays of nested dicts of arrays and ints."""
    out = []
    for tree in trees:
        if isinstance(tree, Mapping):
            out.extend(_float_leaves(*tree.values(), xp=xp))
        elif hasattr(tree, "dtype") and xp.isdtype(tree.dtype, "real floating"):
            out.append(tree)
    return out


def _all_finite(*trees: Any, xp: Any) -> Any:
    """A 0-d boolean array: every float array of the (nested) dicts is finite. One array, so the
    eager step syncs with the device once, and the compiled step can return it."""
    return xp.all(xp.stack([xp.all(xp.isfinite(a)) for a in _float_leaves(*trees, xp=xp)]))


class Batch(NamedTuple):
    """One training batch. ``reset`` clears the carried state before this batch (a new stream)."""

    x: Array
    target: Array
    lengths: Any = None
    reset: bool = False


def _as_batch(item: Any) -> Batch:
    if isinstance(item, Batch):
        return item
    if isinstance(item, tuple) and 2 <= len(item) <= 4:
        return Batch(*item)
    raise TypeError(f"batch_fn must return a Batch or a tuple (x, target[, lengths[, reset]]); got {type(item).__name__}")


def stream_windows(
    tokens: np.ndarray, *, batch_size: int, window: int, xp: Any = None, device: Any = None
) -> Callable[[int, Any], Batch]:
    """Truncated-BPTT batches over one long token stream (host integer array).

    The stream is cut into ``batch_size`` contiguous rows; step k feeds columns
    [k·window, (k+1)·window) of every row as input and the next tokens as targets, so the state
    carried from window k is exactly the state at the start of window k+1. After the last window
    it starts again from the beginning with ``reset=True``.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    window = check_positive_int("window", window)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise TypeError(f"tokens must be a 1-D integer array; got shape {tokens.shape}, dtype {tokens.dtype}")
    columns = (tokens.size - 1) // batch_size
    n_windows = columns // window
    if n_windows < 1:
        raise ValueError(f"a stream of {tokens.size} tokens is too short for batch_size={batch_size}, window={window}")
    rows = tokens[: batch_size * columns + 1]
    inputs = rows[:-1].reshape(batch_size, columns)
    targets = rows[1:].reshape(batch_size, columns)
    from ._namespace import index_dtype, resolve_xp

    space = resolve_xp(xp, device)
    ids = index_dtype(space)

    def batch_fn(step: int, rng: Any) -> Batch:
        k = step % n_windows
        cols = slice(k * window, (k + 1) * window)
        put = lambda a: space.asarray(np.ascontiguousarray(a), dtype=ids, device=device)  # noqa: E731
        return Batch(put(inputs[:, cols]), put(targets[:, cols]), None, k == 0)

    batch_fn.n_windows = n_windows  # type: ignore[attr-defined]
    return batch_fn


class Trainer:
    """Train ``model`` (a :class:`~gruxp.Sequential` or any layer with forward/backward).

    Parameters
    ----------
    model
        A :class:`~gruxp.Sequential` (wrap a lone layer: ``Sequential(gru=gru, head=head)``).
    loss
        ``loss(y, target) -> (loss, dy)``, e.g. :func:`gruxp.losses.cross_entropy`.
    optimizer
        An optimizer of :mod:`gruxp.optim`.
    clip_norm
        Clip the global gradient norm to this value (None: no clipping; the norm is still reported).
    stateful
        Carry the recurrent state from batch to batch (truncated BPTT); ``Batch.reset`` clears it.
    checkpoint, checkpoint_every
        Where and how often (in steps) to save; the file is replaced atomically.
    seed
        Seeds the host RNG passed to ``batch_fn``.
    history_size
        How many of the latest step records :attr:`history` keeps.
    compile
        Run each step as one compiled program where the namespace has a compiler (JAX's ``jax.jit``);
        False runs it eagerly, operation by operation (the same numbers and masks, slower).
    """

    def __init__(
        self,
        model: Any,
        loss: Callable,
        optimizer: Any,
        *,
        clip_norm: float | None = None,
        stateful: bool = False,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 0,
        seed: Any = 0,
        history_size: int = 10_000,
        compile: bool = True,
    ) -> None:
        if not hasattr(model, "layers"):
            raise TypeError(f"model must be a gruxp.Sequential; got {type(model).__name__}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.clip_norm, self.stateful = clip_norm, bool(stateful)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every, minimum=0)
        self.rng = np.random.default_rng(seed)
        self.opt_state = optimizer.init(model.params)
        self.step = 0
        self.carry: dict[str, Any] = {}
        self.history_size = check_positive_int("history_size", history_size)
        self.history: list[dict[str, float]] = []
        self.compile = check_bool("compile", compile)
        self._programs: dict[tuple, Callable] = {}

    # -- one step ---------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> dict[str, float]:
        """One update; returns ``{"step", "loss", "grad_norm", "seconds"}``.

        Raises :class:`NonFiniteLossError`, leaving the model and optimizer state as they were,
        when the loss, the gradient norm or the updated parameters/state are not finite.
        """
        start = time.perf_counter()
        # Overflow is detected and reported below, as one error: no stream of NumPy RuntimeWarnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            record, params, opt_state, state = self._compute_step(batch)
        self.model.params, self.opt_state = params, opt_state
        if self.stateful:
            self.carry = state  # the next window starts here; its backward will not reach back
        self.step += 1
        record = {"step": self.step, **record, "seconds": time.perf_counter() - start}
        self.history.append(record)
        if len(self.history) > self.history_size:
            del self.history[0]
        return record

    def _stop(self, what: str) -> NonFiniteLossError:
        kept = self.checkpoint is not None and self.checkpoint.exists()
        where = f"; the last checkpoint {str(self.checkpoint)!r} was kept" if kept else ""
        return NonFiniteLossError(f"{what} at step {self.step + 1}: training stopped before the update{where}")

    def _compute_step(self, batch: Batch) -> tuple[dict, dict, dict, dict]:
        if batch.reset:
            self.carry = {}
        compiled = self._compiled_step()
        if compiled is not None:
            return self._run_compiled(compiled, batch)
        return self._eager_step(batch)

    # -- the compiled step (JAX) ------------------------------------------------------------------
    # Compiled = eager: nothing a user may change between steps is read only while tracing. The
    # numbers (learning rate and the optimizer's other settings, the clipping norm, the random layers'
    # seeds, the step count) are arguments of the program; what decides its shape (each layer's mode
    # and structure, which optimizer terms exist, whether to clip or carry state) is its static
    # signature, and a change of it builds another program, counted in :attr:`compiles`.
    def _compiled_step(self) -> Callable | None:
        """The compiled function for the current static signature (built on first use), or None
        where the namespace has no compiler."""
        compiler = route_for(self.model.xp).compiler(self.model.xp)
        if compiler is None or not self.compile:
            return None
        signature = self.static_signature()
        program = self._programs.get(signature)
        if program is None:
            # a fresh function per signature: the compiler's cache, keyed on shapes, is per function
            program = compiler(lambda *args, **kwargs: self._pure_step(*args, **kwargs))
            self._programs[signature] = program
        return program

    @property
    def compiles(self) -> int:
        """How many programs the compiled step (JAX) has built: one per static signature
        (:meth:`static_signature`) and input shapes; 0 where steps run eagerly."""
        return sum(program._cache_size() if hasattr(program, "_cache_size") else 1 for program in self._programs.values())

    def static_signature(self) -> tuple:
        """What the compiled step is built for: each layer's type, structure and mode, the optimizer's
        type and :meth:`structure`, the loss, and whether it clips and carries state. The numbers a
        user changes between steps are not in it: they are the program's arguments."""
        layers = tuple(
            (name, type(layer).__name__, json.dumps(layer.config(), sort_keys=True, default=repr), bool(layer.training))
            for name, layer in self.model.layers.items()
        )
        optimizer = (type(self.optimizer).__name__, self.optimizer.structure())
        return layers, optimizer, self.loss, self.clip_norm is None, self.stateful

    def _random_layers(self) -> list[str]:
        """The layers that draw masks in the current mode (each one's own declaration)."""
        return [name for name, layer in self.model.layers.items() if getattr(layer, "draws_randomness", False)]

    def _steps_and_batch(self, x: Array) -> tuple[int, int]:
        """(T, B) of a batch's input, batch-first or time-major as the model's recurrent layers read it."""
        batch_first = next((layer.batch_first for layer in self.model.layers.values() if hasattr(layer, "batch_first")), False)
        if x.ndim < 2:
            raise ValueError(f"a batch with lengths needs x of shape (T, B, ...) or (B, T, ...); got {tuple(x.shape)}")
        return (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])

    def _pure_step(
        self,
        params: dict,
        opt_state: dict,
        x: Array,
        target: Array,
        carry: dict,
        seeds: dict,
        hyper: dict,
        clip: Any,
        *,
        lengths: Any,
    ) -> tuple:
        """The step as a pure function of arrays (what the compiler traces). The model's own
        forward/backward run on ``params`` lent to it for the trace and given back afterwards; each
        random layer draws from the key of its seed, as the eager step does (:mod:`gruxp._random`)."""
        model = self.model
        kept = model.params
        model.params = params
        try:
            rngs = {name: key_from_words(*words) for name, words in seeds.items()}
            y, state, tape = model.forward(x, carry if self.stateful else None, lengths=lengths, rng=rngs)
            loss, dy = self.loss(y, target)
            grads, _, _ = model.backward(tape, dy)
        finally:
            model.params = kept
        xp = model.xp
        if clip is not None:
            grads, norm = clip_grad_norm(grads, clip)
        else:
            norm = xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))
        new_params, new_state = self.optimizer.step(params, grads, opt_state, hyper=hyper)
        finite = _all_finite(new_params, new_state, xp=xp)
        return new_params, new_state, state, loss, norm, finite

    def _run_compiled(self, compiled: Callable, batch: Batch) -> tuple[dict, dict, dict, dict]:
        model = self.model
        lengths = None
        if batch.lengths is not None:  # checked here, on the host: inside the program their values cannot be read
            T, B = self._steps_and_batch(batch.x)
            lengths = placed_lengths(batch.lengths, batch=B, steps=T, xp=model.xp, device=model.device)[1]
        # one 64-bit seed per random layer, from its own Generator, as its eager forward would take it
        seeds = {name: seed_words(model.layers[name].rng) for name in self._random_layers()}
        if self.clip_norm is not None:
            _number("clip_norm", self.clip_norm, open_low=True)
        placed = route_for(model.xp).placed
        params, opt_state, state, loss, norm, finite = compiled(
            placed(model.params),
            placed(self.opt_state),
            batch.x,
            batch.target,
            placed(self.carry if self.stateful else {}),
            seeds,
            self.optimizer.hyperparams(),
            self.clip_norm,
            lengths=lengths,
        )
        value, norm, finite = (float(v) for v in to_numpy(model.xp.stack([loss, norm, model.xp.astype(finite, loss.dtype)])))
        opt_state = {k: (v if isinstance(v, Mapping) else int(to_numpy(v))) for k, v in opt_state.items()}  # counters stay ints
        if not math.isfinite(value):
            raise self._stop(f"loss is {value}")
        if not math.isfinite(norm):
            raise self._stop(f"gradient norm is {norm}")
        if not finite:
            raise self._stop("the update made parameters inf or NaN (or the optimizer state; try a smaller learning rate)")
        return {"loss": value, "grad_norm": norm}, params, opt_state, state

    # -- the eager step (every namespace) ---------------------------------------------------------
    def _eager_step(self, batch: Batch) -> tuple[dict, dict, dict, dict]:
        value, grads, state = self._gradients(batch)
        return self._update(value, grads, state)

    def _gradients(self, batch: Batch) -> tuple[float, dict, dict]:
        """(the batch's mean loss, its gradient, the state to carry) at the current parameters.

        The one place a subclass computes gradients elsewhere (:class:`gruxp.distributed.ClusterTrainer`:
        on a Dask cluster); clipping, the update and the checks stay in :meth:`_update`.
        """
        model = self.model
        y, state, tape = model.forward(batch.x, self.carry if self.stateful else None, lengths=batch.lengths)
        loss, dy = self.loss(y, batch.target)
        value = float(to_numpy(loss))  # explicit transfers: the only host reads of a step
        if not math.isfinite(value):
            raise self._stop(f"loss is {value}")
        grads, _, _ = model.backward(tape, dy)
        return value, grads, state

    def _update(self, value: float, grads: dict, state: dict) -> tuple[dict, dict, dict, dict]:
        """Clip, step the optimizer and check that everything stayed finite (nothing is assigned here)."""
        model = self.model
        if not math.isfinite(value):
            raise self._stop(f"loss is {value}")
        if self.clip_norm is not None:
            grads, norm = clip_grad_norm(grads, self.clip_norm)
        else:
            norm = model.xp.sqrt(sum(model.xp.sum(g * g) for g in grads.values()))
        norm = float(to_numpy(norm))
        if not math.isfinite(norm):
            raise self._stop(f"gradient norm is {norm}")
        params, opt_state = self.optimizer.step(model.params, grads, self.opt_state)
        if not bool(to_numpy(_all_finite(params, opt_state, xp=model.xp))):
            raise self._stop("the update made parameters inf or NaN (or the optimizer state; try a smaller learning rate)")
        return {"loss": value, "grad_norm": norm}, params, opt_state, state

    def fit(
        self,
        batch_fn: Callable[[int, Any], Any],
        steps: int,
        *,
        log: Callable[[dict], None] | None = None,
        time_budget: float | None = None,
    ) -> list[dict[str, float]]:
        """Run until ``steps`` steps have been taken in total (or ``time_budget`` seconds pass)."""
        steps = check_positive_int("steps", steps, minimum=0)
        if time_budget is not None and (
            isinstance(time_budget, bool)
            or not isinstance(time_budget, (int, float))
            or not math.isfinite(time_budget)
            or time_budget <= 0
        ):
            raise ValueError(f"time_budget must be a finite number of seconds > 0 or None; got {time_budget!r}")
        begin = time.perf_counter()
        records = []
        while self.step < steps:
            record = self.train_step(_as_batch(batch_fn(self.step, self.rng)))
            records.append(record)
            if log is not None:
                log(record)
            if self.checkpoint is not None and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save()
            if time_budget is not None and time.perf_counter() - begin >= time_budget:
                break
        return records

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, path: str | Path | None = None, *, extra: dict | None = None) -> Path:
        path = Path(path) if path is not None else self.checkpoint
        if path is None:
            raise ValueError("no checkpoint path: pass one here or to Trainer(checkpoint=...)")
        return ckpt_io.save(
            path,
            self.model,
            optimizer=self.optimizer,
            opt_state=self.opt_state,
            step=self.step,
            carry=self.carry,
            rngs={"data": self.rng.bit_generator.state},
            extra=extra,
        )

    def resume(self, path: str | Path | None = None) -> ckpt_io.Checkpoint:
        """Restore parameters, optimizer state, step, RNG states and carried state from ``path``."""
        path = Path(path) if path is not None else self.checkpoint
        if path is None:
            raise ValueError("no checkpoint path: pass one here or to Trainer(checkpoint=...)")
        ckpt = ckpt_io.load(path)
        opt = ckpt.meta["optimizer"]
        if (
            opt is None
            or opt["type"] != type(self.optimizer).__name__
            or opt["config"] != ckpt_io._json_safe(self.optimizer.config())
        ):
            raise ckpt_io.CheckpointError(
                f"checkpoint optimizer {None if opt is None else (opt['type'], opt['config'])} does not match "
                f"{type(self.optimizer).__name__} {self.optimizer.config()}"
            )
        if "data" not in ckpt.meta["rng"]:
            raise ckpt_io.CheckpointError(
                f"{str(path)!r} holds no data-order RNG state: it was written by checkpoint.save, not by "
                "Trainer.save; load its parameters with checkpoint.restore_model or checkpoint.build_model"
            )
        # everything that can fail first: the trainer changes only when all of it is sound
        data_rng = ckpt_io.generator_from_state(ckpt.meta["rng"]["data"])
        m = self.model
        opt_state = ckpt_io.restore_optimizer_state(ckpt, m)
        carry = {k: m.xp.asarray(v, dtype=m.dtype, device=m.device) for k, v in ckpt.carry.items()}
        ckpt_io.restore_model(ckpt, m)
        self.opt_state, self.step, self.rng, self.carry = opt_state, ckpt.meta["step"], data_rng, carry
        return ckpt


def optimizer_from_checkpoint(ckpt: ckpt_io.Checkpoint) -> Any:
    """Rebuild the optimizer object a checkpoint was saved with."""
    opt = ckpt.meta["optimizer"]
    if opt is None:
        raise ckpt_io.CheckpointError("checkpoint holds no optimizer")
    config = dict(opt["config"])
    if "betas" in config:
        config["betas"] = tuple(config["betas"])
    return OPTIMIZERS[opt["type"]](**config)
