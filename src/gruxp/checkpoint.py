"""Checkpoints that cannot be lost: one ``.npz`` file, no pickle, written atomically.

A checkpoint holds the model's structure (its ``config()``) and parameters, the optimizer's name,
settings and state, the step, every host RNG state (dropout masks, data order) and any carried
recurrent state (truncated BPTT), so training resumes bit-identically on NumPy.

Layout of the zip archive (all members are plain arrays; read with ``allow_pickle=False``):

* ``__meta__``: UTF-8 JSON as uint8 — format and version, model type/config, dtype, optimizer
  name/config/step, step, RNG states, user ``extra``;
* ``param/<name>``, ``optim/<slot>/<name>``, ``carry/<name>``: the arrays, as host NumPy.

Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over
the target (``os.replace`` is atomic on POSIX and Windows): a crash mid-write leaves the previous
checkpoint intact. Reading checks the archive's CRCs, the format and every expected member, and
raises :class:`CheckpointError` naming the problem.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._namespace import dtype_name, from_numpy, to_numpy

__all__ = ["CheckpointError", "Checkpoint", "save", "load", "model_config", "build_model", "restore_model",
           "rng_states", "set_rng_states"]

FORMAT, VERSION = "gruxp-checkpoint", 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, or belongs to another model."""


class Checkpoint(NamedTuple):
    """A loaded checkpoint, all arrays on the host."""

    meta: dict
    params: dict[str, np.ndarray]
    optim: dict[str, dict[str, np.ndarray]]
    carry: dict[str, np.ndarray]


def model_config(model: Any) -> dict[str, Any]:
    """``{"type": ..., "config": ...}`` describing a model's structure (JSON-able)."""
    return {"type": type(model).__name__, "config": model.config()}


def rng_states(model: Any) -> dict[str, Any]:
    """Host RNG states of a model and its layers (for dropout), keyed by layer name ('' for itself)."""
    layers = getattr(model, "layers", {"": model})
    return {name: layer.rng.bit_generator.state for name, layer in layers.items() if hasattr(layer, "rng")}


def set_rng_states(model: Any, states: Mapping[str, Any]) -> None:
    layers = getattr(model, "layers", {"": model})
    for name, state in states.items():
        layers[name].rng.bit_generator.state = state


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def save(
    path: str | os.PathLike,
    model: Any,
    *,
    optimizer: Any = None,
    opt_state: Mapping[str, Any] | None = None,
    step: int = 0,
    carry: Mapping[str, Any] | None = None,
    rngs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically to ``path``; returns the path."""
    path = Path(path)
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    optim_meta = None
    if optimizer is not None:
        scalars = {}
        for slot, value in (opt_state or {}).items():
            if isinstance(value, Mapping):
                arrays.update({f"optim/{slot}/{k}": to_numpy(v) for k, v in value.items()})
            else:
                scalars[slot] = value
        optim_meta = {"type": type(optimizer).__name__, "config": optimizer.config(), "scalars": scalars,
                      "slots": sorted(k for k, v in (opt_state or {}).items() if isinstance(v, Mapping))}
    arrays.update({f"carry/{k}": to_numpy(v) for k, v in (carry or {}).items()})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_config(model),
        "dtype": dtype_name(model.dtype),
        "optimizer": optim_meta,
        "step": int(step),
        "rng": {"model": rng_states(model), **dict(rngs or {})},
        "extra": dict(extra or {}),
        "members": sorted(arrays),
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(_json_safe(meta)).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint gets ordinary file permissions
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint; raise :class:`CheckpointError` if it is not a sound one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            if "__meta__" not in archive.files:
                raise CheckpointError(f"{str(path)!r} is not a gruxp checkpoint (no __meta__ member)")
            meta = json.loads(bytes(archive["__meta__"]).decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{str(path)!r} is not a gruxp checkpoint (format {meta.get('format')!r})")
            if meta.get("version") != VERSION:
                raise CheckpointError(f"{str(path)!r} has checkpoint version {meta.get('version')}; this gruxp reads {VERSION}")
            missing = [m for m in meta["members"] if m not in archive.files]
            if missing:
                raise CheckpointError(f"{str(path)!r} is incomplete: missing {missing}")
            arrays = {m: archive[m] for m in meta["members"]}  # reading checks each member's CRC
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupted ({type(exc).__name__}: {exc})") from exc
    params = {m.split("/", 1)[1]: a for m, a in arrays.items() if m.startswith("param/")}
    carry = {m.split("/", 1)[1]: a for m, a in arrays.items() if m.startswith("carry/")}
    optim: dict[str, dict[str, np.ndarray]] = {}
    for m, a in arrays.items():
        if m.startswith("optim/"):
            _, slot, name = m.split("/", 2)
            optim.setdefault(slot, {})[name] = a
    return Checkpoint(meta, params, optim, carry)


def _layer_types() -> dict[str, Any]:
    from .layers import LAYER_TYPES, Sequential
    from .models import GRUCell

    return {**LAYER_TYPES, "GRUCell": GRUCell, "Sequential": Sequential}


def build_model(ckpt: Checkpoint, *, xp: Any = None, device: Any = None, dtype: Any = None) -> Any:
    """A new model with the checkpoint's structure and parameters (dtype defaults to the saved one)."""
    kind = ckpt.meta["model"]["type"]
    types = _layer_types()
    if kind not in types:
        raise CheckpointError(f"checkpoint holds an unknown model type {kind!r}")
    dtype = ckpt.meta["dtype"] if dtype is None else dtype
    config = ckpt.meta["model"]["config"]
    if kind == "Sequential":
        model = types[kind].from_config(config, xp=xp, device=device, dtype=dtype)
    else:
        model = types[kind](**config, xp=xp, device=device, dtype=dtype)
    model.load_state_dict(ckpt.params)
    set_rng_states(model, ckpt.meta["rng"].get("model", {}))
    return model


def restore_model(ckpt: Checkpoint, model: Any) -> None:
    """Load the checkpoint's parameters and RNG states into ``model``, whose structure must match."""
    want, got = ckpt.meta["model"], model_config(model)
    if _json_safe(got) != want:
        raise CheckpointError(f"checkpoint is for a different model: saved {json.dumps(want)}, this model is {json.dumps(_json_safe(got))}")
    model.load_state_dict(ckpt.params)
    set_rng_states(model, ckpt.meta["rng"].get("model", {}))


def restore_optimizer_state(ckpt: Checkpoint, model: Any) -> dict[str, Any]:
    """The optimizer state placed like the model's parameters."""
    opt = ckpt.meta["optimizer"] or {"scalars": {}, "slots": []}
    place = lambda a: from_numpy(a, xp=model.xp, device=model.device, dtype=model.dtype)  # noqa: E731
    state: dict[str, Any] = dict(opt["scalars"])
    for slot in opt["slots"]:
        state[slot] = {k: place(v) for k, v in ckpt.optim.get(slot, {}).items()}
    return state
