"""Command-line backend choice: import the library, check it can run, resolve the device."""

from __future__ import annotations

import importlib
from typing import Any

from gruxp._backend_table import libraries

# name -> (module, how to install it): the libraries of gruxp's backend table (backends/*.toml), as the
# tests' matrix reads it; a new backend is a new row there
BACKENDS = {name: (row.module, row.install) for name, row in libraries().items()}


class BackendError(RuntimeError):
    """The chosen backend is not installed or cannot run here."""


def load(name: str, device: str | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """(namespace module, device object) for a backend name and an optional device string."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module, hint = BACKENDS[name]
    try:
        xp = importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(f"backend {name!r} is not installed ({hint}): {exc}") from exc
    if name == "jax":
        import jax

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        try:
            return xp, (jax.devices(device)[0] if device else None)
        except RuntimeError as exc:
            raise BackendError(f"jax has no {device!r} device: {exc}") from exc
    if name == "cupy":
        from gruxp._namespace import DeviceError, check_cupy_usable

        try:
            check_cupy_usable(xp)
        except DeviceError as exc:
            raise BackendError(f"{exc} (--backend numpy)") from None
        return xp, (xp.cuda.Device(int(device)) if device else None)
    if name == "torch":
        try:
            dev = xp.device(device or "cpu")
        except RuntimeError as exc:
            raise BackendError(f"torch does not know the device {device!r} ({exc}); e.g. cpu, cuda, cuda:1") from None
        if dev.type == "cuda" and not xp.cuda.is_available():
            raise BackendError(
                "torch is installed but sees no CUDA device (a CPU build of torch, or no GPU and driver here): "
                "leave out --device to run on the CPU, or install a CUDA build of torch on a machine with an NVIDIA GPU"
            )
        return xp, dev
    if name == "array_api_strict":
        return xp, (xp.Device(device) if device else None)
    if device not in (None, "cpu"):
        raise BackendError(f"numpy runs on the CPU only; got --device {device!r}")
    return xp, None


def describe(name: str) -> str:
    """One line: installed or not, version, usable devices."""
    module, _ = BACKENDS[name]
    try:
        mod = importlib.import_module(module.split(".")[0])
    except ImportError:
        return f"{name}: not installed"
    version = getattr(mod, "__version__", "?")
    try:
        if name == "numpy":
            devices = "cpu"
        elif name == "array_api_strict":
            devices = ", ".join(str(d) for d in mod.__array_namespace_info__().devices())
        elif name == "torch":
            n = mod.cuda.device_count() if mod.cuda.is_available() else 0
            devices = "cpu" + (f", {n} CUDA device(s)" if n else ", no CUDA device")
        elif name == "jax":
            devices = ", ".join(str(d) for d in mod.devices())
        else:  # cupy
            n = mod.cuda.runtime.getDeviceCount()
            devices = f"{n} CUDA device(s)" if n else "no CUDA device"
    except Exception as exc:  # a library that imports but cannot see its hardware
        devices = f"no usable device ({exc.__class__.__name__})"
    return f"{name}: installed, version {version}, devices: {devices}"
