"""Input validation: every message names the argument, what was expected and what came.

Checks run once per public call on shapes, dtypes, namespaces and devices (host metadata, never
array values), so they cost microseconds and never break ``jax.jit`` tracing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from ._namespace import device_of, dtype_name, namespace_name, namespace_of, same_device, to_numpy

__all__ = ["check_array", "check_shape", "check_params", "check_lengths", "check_positive_int", "check_bool"]


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return bool(value)


def check_array(name: str, a: Any, *, xp: ModuleType, device: Any, dtype: Any) -> None:
    """``a`` must be a real floating array of namespace ``xp`` on ``device`` with ``dtype``."""
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


def check_params(
    params: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], *, what: str = "params"
) -> tuple[ModuleType, Any, Any]:
    """Exact keys and shapes, one namespace, one device, one float dtype. Returns (xp, device, dtype)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{what} must be a mapping of parameter names to arrays; got {type(params).__name__}")
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise ValueError(f"{what} do not match the model: " + "; ".join(parts))
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


def check_lengths(lengths: Any, *, batch: int, steps: int) -> np.ndarray:
    """Host int64 lengths of shape (B,) with 1 <= len <= T, from a list, NumPy or any integer array.

    Lengths are host metadata, as in PyTorch's ``pack_padded_sequence``, even for GPU inputs.
    """
    if isinstance(lengths, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in lengths):
            bad = next(v for v in lengths if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)))
            raise TypeError(f"lengths must hold integers; got {type(bad).__name__} {bad!r}")
        host = np.asarray(lengths, dtype=np.int64).reshape(-1) if lengths else np.zeros(0, np.int64)
    else:
        try:
            host = to_numpy(lengths)
        except Exception as exc:  # anything that is no array at all
            raise TypeError(f"lengths must be a list of ints or an integer array; got {type(lengths).__name__}") from exc
        if host.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers; got dtype {host.dtype}")
        host = host.astype(np.int64)
    if host.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},) (one length per sequence, B={batch}); got {host.shape}")
    bad = (host < 1) | (host > steps)
    if bad.any():
        raise ValueError(
            f"lengths must lie in [1, T={steps}]; got {host[bad].tolist()} at positions {np.flatnonzero(bad).tolist()}"
        )
    return host
