"""Input validation: every message names the argument, what was expected and what came.

Checks run once per public call on shapes, dtypes, namespaces and devices (host metadata, never
array values), so they cost microseconds and never break ``jax.jit`` tracing.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from ._namespace import NUMPY, device_of, dtype_name, index_dtype, namespace_name, namespace_of, same_device, to_numpy

__all__ = ["check_array", "check_shape", "check_params", "check_lengths", "check_positive_int", "check_bool"]


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")
    return int(value)


def check_dropout(name: str, value: Any) -> float:
    """A dropout probability: a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1); got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return bool(value)


def check_array(name: str, a: Any, *, xp: ModuleType, device: Any, dtype: Any) -> None:
    """``a`` must be a real floating array of namespace ``xp`` on ``device`` with ``dtype``."""
    if xp is NUMPY and type(a) is np.ndarray and a.dtype == dtype and a.dtype.kind == "f":
        return  # the common case, answered without the namespace's look-ups (they cost microseconds)
    if a is None:
        raise TypeError(f"{name} must be a real floating array of dtype {dtype_name(dtype)}; got None")
    a_xp = namespace_of(a, what=name)
    if a_xp is not xp:
        raise TypeError(
            f"{name} must be an array of the parameters' namespace ({namespace_name(xp)}); "
            f"got a {namespace_name(a_xp)} array ({type(a).__module__}.{type(a).__name__})"
        )
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name} must be a real floating array of dtype {dtype_name(dtype)}; got dtype {dtype_name(a.dtype)}")
    if a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {dtype_name(a.dtype)} but the parameters are {dtype_name(dtype)}; "
            f"cast it with xp.astype, or move the model with .to(dtype=...)"
        )
    if not same_device(device_of(a), device):
        raise ValueError(f"{name} is on device {device_of(a)!r} but the parameters are on device {device!r}")


def check_shape(name: str, a: Any, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {meaning}; got {tuple(a.shape)}")


_checked: dict[Any, tuple[list, tuple]] = {}  # params signature -> (weak references, answer)


def _numpy_signature(params: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """What :func:`check_params`' answer depends on, for NumPy arrays: each entry's name, identity,
    shape and dtype (a NumPy array's device is the CPU), and the shapes asked for. None for others."""
    if not isinstance(params, dict):
        return None
    entries = []
    for name, a in params.items():
        if type(a) is not np.ndarray:
            return None
        entries.append((name, id(a), a.shape, a.dtype))
    return tuple(entries), id(shapes)


def check_keys(mapping: Mapping[str, Any], expected: Iterable[str], *, what: str, noun: str = "keys ") -> None:
    """Exactly the keys of ``expected``: else a ValueError ``"{what}: missing keys [...]; unexpected keys [...]"``
    (``noun=""``: ``missing [...]``, as parameter checks have always said)."""
    expected = list(expected)
    missing = [k for k in expected if k not in mapping]
    extra = [k for k in mapping if k not in set(expected)]
    if missing or extra:
        parts = ([f"missing {noun}{missing}"] if missing else []) + ([f"unexpected {noun}{extra}"] if extra else [])
        raise ValueError(f"{what}: " + "; ".join(parts))


def check_params(
    params: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], *, what: str = "params"
) -> tuple[ModuleType, Any, Any]:
    """Exact keys and shapes, one namespace, one device, one float dtype. Returns (xp, device, dtype).

    For NumPy parameters the answer is kept per signature (names, identities, shapes, dtypes: all it
    reads), so a model called token by token checks its parameters once, not at every token; any
    array replaced, reshaped or retyped is checked again."""
    signature = _numpy_signature(params, shapes)
    if signature is not None:
        kept = _checked.get(signature)
        if kept is not None and all(ref() is a for ref, a in zip(kept[0], params.values(), strict=True)):
            return kept[1]
    answer = _check_params(params, shapes, what=what)
    if signature is not None:
        if len(_checked) >= 64:
            _checked.clear()
        _checked[signature] = ([weakref.ref(a) for a in params.values()], answer)
    return answer


def _check_params(params: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], *, what: str) -> tuple[ModuleType, Any, Any]:
    if not isinstance(params, Mapping):
        raise TypeError(f"{what} must be a mapping of parameter names to arrays; got {type(params).__name__}")
    check_keys(params, shapes, what=f"{what} do not match the model", noun="")
    xp = namespace_of(*params.values(), what=what)
    first = next(iter(shapes))
    dtype, device = params[first].dtype, device_of(params[first])
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"{what}[{first!r}] must be a real floating array; got dtype {dtype_name(dtype)}")
    for key, shape in shapes.items():
        a = params[key]
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{what}[{key!r}] must have shape {tuple(shape)}; got {tuple(a.shape)}")
        if a.dtype != dtype:
            raise TypeError(f"{what}[{key!r}] has dtype {dtype_name(a.dtype)}; expected {dtype_name(dtype)} like {first!r}")
        if not same_device(device_of(a), device):
            raise ValueError(f"{what}[{key!r}] is on device {device_of(a)!r}; expected {device!r} like {first!r}")
    return xp, device, dtype


def is_traced(a: Any) -> bool:
    """Whether ``a`` is a JAX tracer (an abstract value inside ``jax.jit``): its values cannot be read."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(a, jax.core.Tracer)


def check_lengths(lengths: Any, *, batch: int, steps: int) -> np.ndarray:
    """Host int64 lengths of shape (B,) with 1 <= len <= T, from a list, NumPy or any integer array.

    Lengths are host metadata, as in PyTorch's ``pack_padded_sequence``, even for GPU inputs: their
    values must be readable here (under ``jax.jit``, see :func:`check_traced_lengths`).
    """
    if isinstance(lengths, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in lengths):
            bad = next(v for v in lengths if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)))
            raise TypeError(f"lengths must hold integers; got {type(bad).__name__} {bad!r}")
        values = [int(v) for v in lengths]
    else:
        try:
            host = to_numpy(lengths)
        except Exception as exc:  # no array at all, or one whose values cannot be read (a meta-device tensor)
            where = getattr(lengths, "device", None)
            raise TypeError(
                "lengths must be concrete host values: a list of ints, or an integer array whose values can be read "
                f"(lengths decide which steps run); got {type(lengths).__name__}"
                + (f" on device {str(where)!r}" if where is not None else "")
                + f" ({type(exc).__name__}: {exc})"
            ) from exc
        if host.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers; got dtype {host.dtype}")
        values = [int(v) for v in host.reshape(-1)] if host.ndim == 1 else []
        if host.ndim != 1:
            raise ValueError(f"lengths must have shape ({batch},) (one length per sequence, B={batch}); got {host.shape}")
    if len(values) != batch:
        raise ValueError(f"lengths must have shape ({batch},) (one length per sequence, B={batch}); got ({len(values)},)")
    bad = [(i, v) for i, v in enumerate(values) if not 1 <= v <= steps]  # Python ints: a uint64 past 2^63 stays itself
    if bad:
        raise ValueError(f"lengths must lie in [1, T={steps}]; got {[v for _, v in bad]} at positions {[i for i, _ in bad]}")
    return np.asarray(values, dtype=np.int64)


def placed_lengths(lengths: Any, *, batch: int, steps: int, xp: ModuleType, device: Any) -> tuple[np.ndarray, Any]:
    """Checked lengths as ``(host values, integer array of xp on device)``: the values are read once,
    to check them; the array is the caller's own where it already is one of ``xp`` on ``device`` (no
    copy), else one copy of the B values, so masks are then built where the arrays live."""
    host = check_lengths(lengths, batch=batch, steps=steps)
    try:
        own = namespace_of(lengths) is xp and same_device(device_of(lengths), device)
    except TypeError:  # a list, or another library's array
        own = False
    if not own:
        return host, xp.asarray(host, dtype=index_dtype(xp), device=device)
    return host, (lengths if lengths.dtype == index_dtype(xp) else xp.astype(lengths, index_dtype(xp)))


def out_of_range(lengths: Any, *, steps: int, xp: ModuleType) -> tuple[Any, Any]:
    """``(lengths clipped to [1, T], bad)`` for traced lengths: ``bad`` (B,) marks the sequences whose
    length lay outside [1, T]. The callers make those sequences' results NaN: a traced value cannot
    raise, and must not pass for a real answer."""
    bad = (lengths < 1) | (lengths > steps)
    return xp.clip(lengths, 1, steps), bad


def check_traced_lengths(lengths: Any, *, batch: int, xp: ModuleType) -> Any:
    """Lengths traced by ``jax.jit`` (a compiled training step whose batches are ragged): shape (B,)
    and an integer dtype are checked; the values cannot be read there (check them on the host, as
    :class:`gruxp.Trainer` does, before the compiled step). A value outside [1, T] makes that
    sequence's results NaN (:func:`out_of_range`)."""
    if not xp.isdtype(lengths.dtype, "integral"):
        raise TypeError(f"lengths must be integers; got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"lengths must have shape ({batch},) (one length per sequence, B={batch}); got {tuple(lengths.shape)}")
    return lengths if lengths.dtype == index_dtype(xp) else xp.astype(lengths, index_dtype(xp))
