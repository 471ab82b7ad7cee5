"""The cross-backend matrix: one ``backend`` fixture built from the table in ``backends/``.

Every numerical test takes ``backend`` (and usually ``dtype``). Inputs and references are made
on the host in NumPy float64 and moved with ``backend.asarray``; results come back with
``gruxp.testing.to_numpy``. A backend that is not installed, or CuPy without a GPU, is skipped
with the reason; ``GRUXP_BACKENDS=numpy,torch`` restricts a run.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pytest


def load_table() -> list[dict[str, Any]]:
    """The rows of gruxp's backend table (backends/*.toml, read by gruxp._backend_table, as the
    command line and ci/ read it), restricted by GRUXP_BACKENDS (row names)."""
    from gruxp._backend_table import rows

    specs = [{**asdict(row), "library": row.backend} for row in rows()]
    wanted = os.environ.get("GRUXP_BACKENDS")
    if wanted:
        names = {w.strip() for w in wanted.split(",") if w.strip()}
        specs = [s for s in specs if s["name"] in names]
    return specs


def _params() -> list[Any]:
    out = []
    for spec in load_table():
        for dev in spec["devices"]:
            label = spec["name"] if len(spec["devices"]) == 1 else f"{spec['name']}:{dev}"
            out.append(pytest.param((spec, dev), id=label))
    return out


@dataclass
class Backend:
    """One (library, device) of the matrix: its array-api-compat namespace and device. ``name`` is the
    library (what per-library logic asks), ``label`` the row and device (the test id)."""

    name: str
    label: str
    xp: Any
    device: Any
    spec: dict = field(repr=False)

    def dtype(self, name: str) -> Any:
        return getattr(self.xp, name)

    def asarray(self, host: Any, dtype: str = "float64") -> Any:
        return self.xp.asarray(np.asarray(host), dtype=self.dtype(dtype), device=self.device)

    def int_array(self, host: Any) -> Any:
        return self.xp.asarray(np.asarray(host), dtype=self.xp.int64, device=self.device)


_SETUP_DONE: set[str] = set()


def _import(spec: dict) -> Any:
    """The row's module, imported and set up for the tests (float64 on JAX, the pinned standard)."""
    library = spec["library"]
    try:
        mod = importlib.import_module(spec["module"])
    except ImportError as exc:
        pytest.skip(f"{spec['name']} not installed ({exc.__class__.__name__}: {exc})")
    if library in _SETUP_DONE:
        return mod
    if library == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        # Ampere+ GPUs default float32 matmuls to TF32 (SciPy PR 24724); keep IEEE float32.
        jax.config.update("jax_default_matmul_precision", "float32")
    elif library == "array_api_strict":
        mod.set_array_api_strict_flags(api_version=spec["api_version"])
    _SETUP_DONE.add(library)
    return mod


def _device(spec: dict, mod: Any, dev: str) -> Any:
    """The row's device; a row that needs a GPU is skipped with the reason where there is none (any library)."""
    from gruxp._backend_table import Row, make_device, missing_gpu

    row = Row(**spec)
    reason = missing_gpu(row, mod, dev)
    if reason is not None:
        pytest.skip(reason)
    return make_device(spec["library"], mod, dev)


@pytest.fixture(params=_params())
def backend(request: pytest.FixtureRequest) -> Backend:
    import array_api_compat

    spec, dev = request.param
    marker = request.node.get_closest_marker("skip_on")  # @pytest.mark.skip_on(jax="why"): a known per-backend skip
    if marker is not None and spec["library"] in marker.kwargs:
        pytest.skip(f"{spec['name']}: {marker.kwargs[spec['library']]}")
    mod = _import(spec)
    device = _device(spec, mod, dev)
    probe = mod.asarray([0.0], device=device) if device is not None else mod.asarray([0.0])
    xp = array_api_compat.array_namespace(probe)
    label = spec["name"] if len(spec["devices"]) == 1 else f"{spec['name']}:{dev}"
    return Backend(spec["library"], label, xp, device, spec)


@pytest.fixture(params=["float64", "float32"])
def dtype(request: pytest.FixtureRequest) -> str:
    return request.param


# Tolerances against the NumPy float64 reference. float64: the rtol 1e-9 (observed
# differences are ~1e-15). float32: each value is a chain of at most T·(I+H) ≈ 100 roundings of
# terms of size ≲ 3 (|h| ≤ 1, gates in (0, 1)), so eps32·100·3 ≈ 4e-5 bounds it; observed ≲ 3e-6.
TOL = {"float64": dict(rtol=1e-9, atol=1e-12), "float32": dict(rtol=1e-4, atol=5e-5)}
# Gradients accumulate over T steps and B sequences as well: scale atol by the gradient's size.
GRAD_TOL = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=1e-3, atol=2e-4)}


JAX_CACHE_GROWTH = 640 << 20  # bytes the process may grow by before the JAX caches are dropped
_after_last_drop = [0]


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: never drop
        return 0


@pytest.fixture(autouse=True)
def _bounded_jax_caches():
    """JAX compiles every eager operation (and every scan) once per shape and keeps the executable:
    over the suite's thousands of shapes (hypothesis draws them at random) the process grew to
    ~3.9 GB. After any test, once JAX is loaded and the process has grown by 640 MiB since the last
    drop, the caches are dropped; dropping them after every test would cost a minute of recompiling."""
    yield
    jax = sys.modules.get("jax")
    if jax is not None and _resident_bytes() - _after_last_drop[0] > JAX_CACHE_GROWTH:
        jax.clear_caches()
        _release_free_memory()
        _after_last_drop[0] = _resident_bytes()


def _release_free_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them otherwise, and RSS never falls)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc
        pass


# -- The quick command and the full one --------------------------------------------------------------
# The README's test command deselects tests marked slow (`-m "not slow"`); CI runs them right after it
# (`.ci/run`). Each repeats, on JAX's compile-bound paths or at a second dtype, a check that a quicker
# case of the same test already makes in the quick run. A test (or one of its parameter sets) marked
# `slow_on("jax")` is slow on those backends only.


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("slow_on")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None or "backend" not in callspec.params:
            continue
        spec, _ = callspec.params["backend"]
        if spec["library"] in marker.args:
            item.add_marker(pytest.mark.slow)
