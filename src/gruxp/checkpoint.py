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
import math
import os
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._namespace import dtype_name, from_numpy, to_numpy

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save",
    "load",
    "model_config",
    "build_model",
    "restore_model",
    "rng_states",
    "set_rng_states",
    "generator_from_state",
]

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


BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def generator_from_state(state: Any) -> np.random.Generator:
    """A NumPy Generator in ``state`` (whatever bit generator it names, among NumPy's own)."""
    kind = state.get("bit_generator") if isinstance(state, Mapping) else None
    if kind not in BIT_GENERATORS:
        raise CheckpointError(f"RNG state names bit generator {kind!r}; expected one of {BIT_GENERATORS}")
    rng = np.random.Generator(getattr(np.random, kind)())
    try:
        rng.bit_generator.state = dict(state)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"RNG state for {kind} is malformed ({type(exc).__name__}: {exc})") from exc
    return rng


def set_rng_states(model: Any, states: Mapping[str, Any]) -> None:
    """Give each layer named in ``states`` (as :func:`rng_states` returns them) a NumPy Generator in
    that state: the masks a resumed run draws are then those of the uninterrupted run."""
    layers = getattr(model, "layers", {"": model})
    unknown = [name for name in states if name not in layers or not hasattr(layers[name], "rng")]
    if unknown:
        raise CheckpointError(f"RNG states for layers {unknown} that this model does not have")
    for name, state in states.items():
        layers[name].rng = generator_from_state(state)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):  # e.g. MT19937's key in an RNG state
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _check_finite(arrays: Mapping[str, np.ndarray]) -> None:
    bad = [name for name, a in arrays.items() if a.dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        raise CheckpointError(
            f"refusing to save non-finite values (inf or NaN) in {bad}: a checkpoint never "
            f"replaces a good one with a diverged one"
        )


def _target(path: Path) -> Path:
    """Where the bytes go: through a symbolic link to its target, so the link itself survives."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _lock(fd: int, *, wait: bool) -> bool:
    """Take an exclusive advisory lock (flock) on ``fd``; False if another open file holds one.
    True without locking where the platform has no flock (nothing is then ever judged stale)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of this checkpoint (``.<name>.<...>.tmp``) whose writer is gone.

    Every writer holds an advisory lock (flock) on its temporary from creating it until it is
    renamed into place; the lock dies with the writer, however it dies. So a temporary that can
    be locked here is provably stale; one that cannot is being written (by another thread, another
    process, another PID namespace on the same file system) and is left alone. Where the platform
    has no flock, nothing is removed.
    """
    if fcntl is None:
        return
    prefix = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # renamed or removed meanwhile, or not a plain file
        try:
            if _lock(fd, wait=False) and os.path.samestat(os.fstat(fd), os.stat(entry, follow_symlinks=False)):
                entry.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


def _create_locked_temporary(target: Path) -> tuple[Path, int]:
    """A new temporary beside ``target``, created exclusively and locked (see
    :func:`_remove_stale_temporaries`); made again if a cleaner removed it before the lock was taken."""
    while True:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        # O_EXCL: never follow or reuse a planted file; mode 0o666 lets the process umask decide, as
        # for any ordinary file (no fchmod, and no process-wide umask change that other threads would see).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        _lock(fd, wait=True)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp, follow_symlinks=False)):
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)


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
    """Write a checkpoint atomically to ``path``; returns the path.

    Non-finite parameters, optimizer state or carried state are refused (:class:`CheckpointError`)
    before anything is written. A symbolic link is written through to its target. Temporaries
    left by an earlier writer that was killed mid-save are removed (never a live writer's: saves
    to one path from several threads or processes all succeed, and the last one wins).
    """
    path = Path(path)
    arrays = {f"param/{k}": v for k, v in model.state_dict(numpy=True).items()}
    optim_meta = None if optimizer is None else _optimizer_members(optimizer, opt_state or {}, arrays)
    arrays.update({f"carry/{k}": to_numpy(v) for k, v in (carry or {}).items()})
    _check_finite(arrays)
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
    arrays["__meta__"] = np.frombuffer(json.dumps(_json_safe(meta), allow_nan=False).encode("utf-8"), dtype=np.uint8)
    _write_atomically(_target(path), arrays)
    return path


def _optimizer_members(optimizer: Any, opt_state: Mapping[str, Any], arrays: dict[str, Any]) -> dict[str, Any]:
    """Add the optimizer state's arrays to ``arrays`` (``optim/{slot}/{name}``); its description."""
    scalars = {}
    for slot, value in opt_state.items():
        if isinstance(value, Mapping):
            arrays.update({f"optim/{slot}/{k}": to_numpy(v) for k, v in value.items()})
        else:
            scalars[slot] = value
    return {
        "type": type(optimizer).__name__,
        "config": optimizer.config(),
        "scalars": scalars,
        "slots": sorted(k for k, v in opt_state.items() if isinstance(v, Mapping)),
    }


def _write_atomically(target: Path, arrays: dict[str, Any]) -> None:
    """``arrays`` as an .npz at ``target``: written to a locked temporary beside it, flushed to disk,
    renamed over it (atomic; concurrent saves: the last one wins), and the rename made durable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp, fd = _create_locked_temporary(target)
    try:
        with os.fdopen(fd, "wb") as f:  # closing it, after the rename, releases the lock
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, target)  # concurrent saves: each rename is atomic, the last one wins
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


# -- reading: every byte is distrusted until checked ------------------------------------------------
def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {str(path)!r} {problem}")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in the metadata")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_meta(meta: Any, path: Path) -> dict:
    """The metadata's schema; every departure is a :class:`CheckpointError` that names the field."""
    if not isinstance(meta, dict):
        raise _fail(path, f"has metadata of type {type(meta).__name__}, expected a JSON object")
    if meta.get("format") != FORMAT:
        raise _fail(path, f"is not a gruxp checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise _fail(path, f"has checkpoint version {meta.get('version')!r}; this gruxp reads {VERSION}")

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            value: Any = meta
            for part in field.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise _fail(path, f"has a bad metadata field {field!r}: expected {expected}, found {shown}")

    model: Any = meta.get("model")
    opt: Any = meta.get("optimizer")
    need(isinstance(model, dict), "model", "an object")
    need(isinstance(model.get("type"), str), "model.type", "a string")
    need(isinstance(model.get("config"), (dict, list)), "model.config", "an object or a list")
    need(meta.get("dtype") in ("float32", "float64"), "dtype", "'float32' or 'float64'")
    need(opt is None or isinstance(opt, dict), "optimizer", "null or an object")
    if opt is not None:
        need(isinstance(opt.get("type"), str), "optimizer.type", "a string")
        need(isinstance(opt.get("config"), dict), "optimizer.config", "an object")
        need(isinstance(opt.get("scalars"), dict), "optimizer.scalars", "an object")
        need(
            isinstance(opt.get("slots"), list) and all(isinstance(s, str) for s in opt["slots"]),
            "optimizer.slots",
            "a list of strings",
        )
    need(_is_int(meta.get("step")) and meta["step"] >= 0, "step", "an int >= 0")
    rng: Any = meta.get("rng")
    need(isinstance(rng, dict) and all(isinstance(v, dict) for v in rng.values()), "rng", "an object of objects")
    need(
        isinstance(rng.get("model", {}), dict) and all(isinstance(v, dict) for v in rng.get("model", {}).values()),
        "rng.model",
        "an object of RNG states",
    )
    need(isinstance(meta.get("extra"), dict), "extra", "an object")
    members: Any = meta.get("members")
    need(
        isinstance(members, list)
        and all(
            isinstance(m, str)
            and m.startswith(("param/", "optim/", "carry/"))
            and (not m.startswith("optim/") or m.count("/") >= 2)
            for m in members
        ),
        "members",
        "a list of 'param/...', 'optim/<slot>/...' and 'carry/...' names",
    )
    need(len(set(members)) == len(members), "members", "each member named once")
    return meta


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member, its declared size checked against the bytes really stored."""
    with zf.open(info) as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _fail(path, f"member {info.filename!r} has .npy version {major}")
        if dtype.hasobject or dtype.kind not in "biuf":
            raise _fail(path, f"member {info.filename!r} has dtype {dtype}; checkpoints hold numbers only")
        count = math.prod(shape)
        if count * dtype.itemsize > info.file_size:
            raise _fail(
                path,
                f"member {info.filename!r} declares shape {shape} ({count * dtype.itemsize:,} bytes) "
                f"but stores {info.file_size:,} bytes",
            )
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise _fail(path, f"member {info.filename!r} is truncated")
        f.read()  # to the member's end: the zip module checks its CRC there
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.copy()


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint; raise :class:`CheckpointError` if it is not a sound one.

    Checked before use: the zip structure and every CRC, that members are stored uncompressed as
    ``np.savez`` writes them (so no member can expand past the file's own size), each member's
    declared shape against its stored bytes, numeric dtypes only, and the metadata's schema.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not head.startswith(b"PK"):  # every zip archive (an .npz) starts so; a truncated one still does
        raise _fail(
            path, f"is not a checkpoint: gruxp writes them as .npz archives (train's OUT/checkpoint.npz); it starts {head!r}"
        )
    try:
        meta, arrays = _read_archive(path)
    except CheckpointError:
        raise
    except _UNSOUND as exc:
        raise _fail(path, f"is truncated or corrupted ({type(exc).__name__}: {exc})") from exc
    params = {m.split("/", 1)[1]: a for m, a in arrays.items() if m.startswith("param/")}
    carry = {m.split("/", 1)[1]: a for m, a in arrays.items() if m.startswith("carry/")}
    optim: dict[str, dict[str, np.ndarray]] = {}
    for m, a in arrays.items():
        if m.startswith("optim/"):
            _, slot, name = m.split("/", 2)
            optim.setdefault(slot, {})[name] = a
    return Checkpoint(meta, params, optim, carry)


# What reading an unsound archive may raise, each turned into a CheckpointError that names the file
_UNSOUND = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    UnicodeDecodeError,
    NotImplementedError,
    RecursionError,
    MemoryError,
)


def _read_archive(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of the .npz at ``path``, every member checked as :func:`load` says."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        for info in infos.values():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                raise _fail(
                    path, f"member {info.filename!r} is compressed or larger than the file (gruxp writes stored members only)"
                )
        if "__meta__.npy" not in infos:
            raise _fail(path, "is not a gruxp checkpoint (no __meta__ member)")
        raw = _read_member(zf, infos["__meta__.npy"], path)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise _fail(path, "has a __meta__ member that is not UTF-8 bytes")
        meta = _validate_meta(json.loads(raw.tobytes().decode("utf-8"), parse_constant=_refuse_constant), path)
        missing = [m for m in meta["members"] if m + ".npy" not in infos]
        if missing:
            raise _fail(path, f"is incomplete: missing {missing}")
        return meta, {m: _read_member(zf, infos[m + ".npy"], path) for m in meta["members"]}


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
    try:
        if kind == "Sequential" and not (
            isinstance(config, list) and all(isinstance(e, dict) and isinstance(e.get("args"), dict) for e in config)
        ):
            raise CheckpointError(f"checkpoint's Sequential config is malformed: {str(config)[:80]}")
        if kind != "Sequential" and not isinstance(config, dict):
            raise CheckpointError(f"checkpoint's {kind} config is malformed: {str(config)[:80]}")
        # The config's parameter shapes against the stored arrays' before anything is allocated: a
        # small file cannot make the model it declares cost more than the file holds.
        declared = types[kind].param_shapes(config)
        stored = {name: tuple(a.shape) for name, a in ckpt.params.items()}
        if declared != stored:
            wrong = sorted(n for n in declared.keys() | stored.keys() if declared.get(n) != stored.get(n))
            raise CheckpointError(
                f"checkpoint's parameters do not fit its own model config: {wrong[0]!r} is declared "
                f"{declared.get(wrong[0], 'absent')} but stored {stored.get(wrong[0], 'absent')}"
            )
        if kind == "Sequential":
            model = types[kind].from_config(config, xp=xp, device=device, dtype=dtype)
        else:
            model = types[kind](**config, xp=xp, device=device, dtype=dtype)
        model.load_state_dict(ckpt.params)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint's model cannot be rebuilt ({type(exc).__name__}: {exc})") from exc
    set_rng_states(model, ckpt.meta["rng"].get("model", {}))
    return model


def restore_model(ckpt: Checkpoint, model: Any) -> None:
    """Load the checkpoint's parameters and RNG states into ``model``, whose structure must match."""
    want, got = ckpt.meta["model"], model_config(model)
    if _json_safe(got) != want:
        raise CheckpointError(
            f"checkpoint is for a different model: saved {json.dumps(want)}, this model is {json.dumps(_json_safe(got))}"
        )
    try:
        model.load_state_dict(ckpt.params)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint's parameters do not fit the model ({exc})") from exc
    set_rng_states(model, ckpt.meta["rng"].get("model", {}))


def restore_optimizer_state(ckpt: Checkpoint, model: Any) -> dict[str, Any]:
    """The optimizer state placed like the model's parameters (each slot checked against them)."""
    opt = ckpt.meta["optimizer"] or {"scalars": {}, "slots": []}
    shapes = {k: tuple(v.shape) for k, v in model.params.items()}
    place = lambda a: from_numpy(a, xp=model.xp, device=model.device, dtype=model.dtype)  # noqa: E731
    state: dict[str, Any] = dict(opt["scalars"])
    if not _is_int(state.get("step", 0)) or state.get("step", 0) < 0:
        raise CheckpointError(f"checkpoint's optimizer step must be an int >= 0; got {state.get('step')!r}")
    for slot in opt["slots"]:
        arrays = ckpt.optim.get(slot, {})
        for k, a in arrays.items():
            if shapes.get(k) != a.shape:
                raise CheckpointError(
                    f"checkpoint's optimizer state {slot}/{k} has shape {a.shape}; "
                    f"the model's parameter is {shapes.get(k, 'absent')}"
                )
        state[slot] = {k: place(v) for k, v in arrays.items()}
    return state
