"""Which array namespace, which device, which float dtype: answered here and nowhere else.

This is the only module that imports ``array_api_compat``. The GRU math never asks an array
library anything directly; public entry points call :func:`namespace_of` or :func:`resolve_xp`
once and hand the answer down as the keyword ``xp``.

Design rules
------------
* Frameworks are never imported to find out whether an array belongs to them:
  ``array_api_compat.is_*_array`` look at ``sys.modules`` only, so ``import gruxp`` stays light.
* A namespace is always the array-api-compat view of it (``array_api_compat.numpy`` for NumPy,
  ``array_api_compat.torch`` for PyTorch, the module itself for JAX and array-api-strict), so two
  namespaces are the same exactly when they are the same object.
* Host copies (:func:`to_numpy`) are for state dicts, checkpoints and tests, never for the math.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import array_api_compat as aac
import numpy as np

__all__ = [
    "DeviceError",
    "namespace_of",
    "resolve_xp",
    "resolve_dtype",
    "device_of",
    "same_device",
    "namespace_name",
    "to_numpy",
    "from_numpy",
]

FLOAT_NAMES = ("float32", "float64")
NUMPY = aac.array_namespace(np.empty(0))  # array-api-compat's NumPy namespace


def namespace_of(*arrays: Any, what: str = "arrays") -> ModuleType:
    """The array-api-compat namespace shared by ``arrays`` (``None`` entries are ignored).

    Raises ``TypeError`` naming ``what`` when an entry is no array or the arrays mix libraries.
    NumPy arrays are answered without asking array-api-compat (a one-token call asks a dozen times).
    """
    present = [a for a in arrays if a is not None]
    if present and all(type(a) is np.ndarray for a in present):
        return NUMPY
    for a in present:
        if not aac.is_array_api_obj(a):
            raise TypeError(f"{what} must be an array of an array-API library; got {type(a).__name__}")
    try:
        return aac.array_namespace(*present)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in present})
        raise TypeError(f"{what} come from different array libraries: {', '.join(kinds)}") from exc


class DeviceError(ValueError, RuntimeError):
    """A namespace or device that cannot run here (CuPy without a usable GPU, ``device='cuda'`` with
    NumPy): the message says what was found and what to do."""


# what to do when a device string is refused, by namespace
_DEVICE_HINTS = {
    "numpy": "NumPy arrays live on the CPU (device None or 'cpu'); for a GPU use xp=cupy, or xp=torch with device='cuda'",
    "torch": "torch.cuda.is_available() says whether this torch sees a GPU (a CPU build never does); "
    "device None or 'cpu' runs on the CPU",
    "jax": "jax.devices() lists the devices this JAX sees; device None takes its default",
    "cupy": "CuPy takes a GPU's number (0, 1, ...) or a cupy.cuda.Device",
    "array_api_strict": "array_api_strict.Device('CPU_DEVICE'), 'device1' or 'device2'",
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_cupy_usable(cupy: Any) -> None:
    """Raise :class:`DeviceError` unless CuPy can reach a CUDA GPU (it imports without one, and then
    fails deep inside its first allocation with a driver error that does not say so)."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, an old driver, no device node: each says it differently
        raise DeviceError(
            f"cupy is installed but cannot use a CUDA GPU here ({_first_line(exc)}): run on a machine with an NVIDIA GPU "
            "and its driver, or use the CPU (xp=numpy, the default)"
        ) from None
    if count == 0:
        raise DeviceError("cupy is installed but finds no CUDA GPU here: use the CPU (xp=numpy, the default)")


def resolve_xp(xp: Any = None, device: Any = None) -> ModuleType:
    """Normalise a user's ``xp=``: ``None`` (NumPy), a raw module or its array-api-compat wrapper."""
    if xp is None:
        xp = np
    if not isinstance(xp, ModuleType) or not hasattr(xp, "asarray") or not hasattr(xp, "float32"):
        raise TypeError(
            "xp must be an array namespace module such as numpy, cupy, torch, jax.numpy or "
            f"array_api_strict (or its array_api_compat wrapper); got {xp!r}"
        )
    if xp.__name__ in ("cupy", "array_api_compat.cupy"):
        check_cupy_usable(sys.modules["cupy"])
    namespace = aac.array_namespace(xp.asarray([0.0], dtype=xp.float32))  # raw CuPy takes no device=
    if device is not None:
        try:
            namespace.asarray([0.0], dtype=namespace.float32, device=device)
        except Exception as exc:  # each library words an unknown device differently
            name = namespace_name(namespace)
            hint = _DEVICE_HINTS.get(name, "")
            raise DeviceError(
                f"device {device!r} is not usable with {name} ({_first_line(exc)})" + (f": {hint}" if hint else "")
            ) from None
    return namespace


def resolve_dtype(xp: ModuleType, dtype: Any = None) -> Any:
    """The float dtype of ``xp`` that ``dtype`` names; ``None`` means ``xp.float32``.

    Accepts the namespace's own dtype objects, another library's float32/float64, or the strings
    ``"float32"``/``"float64"``. Other widths are refused: array-api-strict, the oracle of the test
    matrix, has no float16, and bfloat16 is not a standard dtype.
    """
    if dtype is None:
        return xp.float32
    for name in FLOAT_NAMES:
        if isinstance(dtype, str):
            if dtype == name:
                return getattr(xp, name)
            continue
        try:
            if dtype == getattr(xp, name):
                return getattr(xp, name)
        except TypeError:
            pass
        if dtype_name(dtype) == name:
            return getattr(xp, name)
    raise TypeError(f"dtype must be float32 or float64 (a dtype of the namespace or its name); got {dtype!r}")


def dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"int64"`` and so on, whatever library the dtype comes from (or its name)."""
    # numpy/jax/cupy: np.dtype('float32').name; torch: "torch.float32"; strict: "array_api_strict.float32"
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(dtype, type):  # NumPy/JAX scalar types such as np.float32
        try:
            return np.dtype(dtype).name
        except TypeError:
            pass
    return str(dtype).rsplit(".", 1)[-1]


def device_of(x: Any) -> Any:
    """The device of ``x`` (``None`` for JAX tracers under ``jax.jit``, which hide it)."""
    return "cpu" if type(x) is np.ndarray else aac.device(x)


def same_device(a: Any, b: Any) -> bool:
    """Device equality that tolerates unknown (traced) devices; CuPy devices are unhashable."""
    if a is None or b is None:
        return True
    return bool(a == b)


def namespace_name(xp: ModuleType) -> str:
    """A short human name for a namespace: ``numpy``, ``torch``, ``jax``, ``cupy``, ``array_api_strict``."""
    checks = (
        ("numpy", aac.is_numpy_namespace),
        ("torch", aac.is_torch_namespace),
        ("cupy", aac.is_cupy_namespace),
        ("jax", aac.is_jax_namespace),
        ("array_api_strict", aac.is_array_api_strict_namespace),
        ("dask", aac.is_dask_namespace),
    )
    for name, test in checks:
        if test(xp):
            return name
    return getattr(xp, "__name__", repr(xp))


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy copy of ``a`` (any array-API/DLPack array, CPU torch tensor, CuPy array, list)."""
    if isinstance(a, np.ndarray):
        return np.array(a, copy=True)
    if aac.is_torch_array(a):
        return a.detach().cpu().numpy().copy()
    if aac.is_cupy_array(a):
        return a.get()
    if aac.is_jax_array(a):  # an explicit transfer: allowed where jax.transfer_guard refuses implicit ones
        return np.array(sys.modules["jax"].device_get(a), copy=True)
    if type(a).__module__.partition(".")[0] == "array_api_strict":
        # a simulated non-default device refuses host export; its CPU device allows it
        a = a.to_device(sys.modules["array_api_strict"].Device("CPU_DEVICE"))
    if hasattr(a, "__dlpack__"):
        try:
            return np.array(np.from_dlpack(a), copy=True)
        except (TypeError, ValueError, BufferError, RuntimeError):
            pass
    return np.array(a, copy=True)


def from_numpy(a: np.ndarray, *, xp: ModuleType, device: Any, dtype: Any) -> Any:
    """Place a host array on ``xp``/``device`` with ``dtype`` (always a fresh copy)."""
    return xp.asarray(np.ascontiguousarray(a), dtype=dtype, device=device, copy=True)


def index_dtype(xp: ModuleType) -> Any:
    """The integer dtype a Python int gets in ``xp``: int64, or int32 where that is the default (JAX
    without ``jax_enable_x64``, which would otherwise warn and truncate int64 on every batch; its
    ``default_dtypes()`` says int64 there all the same)."""
    return xp.asarray(0).dtype


def concrete_bool(a: Any) -> bool | None:
    """``bool(a)`` for a 0-d array, or None where the value is not known yet (a JAX tracer under jit).

    Used only by input validation (index ranges), never by the math.
    """
    try:
        return bool(a)
    except (TypeError, ValueError):  # jax's TracerBoolConversionError is a TypeError
        return None


def is_numpy_namespace(xp: ModuleType) -> bool:
    return aac.is_numpy_namespace(xp)


def is_jax_namespace(xp: ModuleType) -> bool:
    return aac.is_jax_namespace(xp)
