"""The backend table: the one list of array libraries gruxp is tested and driven on.

One TOML file a row in the repository's ``backends/`` (shipped inside the wheel as
``gruxp/backends``). Read by the tests' matrix (tests/conftest.py), the command line's ``--backend``
choices, its install hints and device parsing, ``ci/requirements.py`` and ``ci/agreement.py``: a new
backend is a new file there, nothing else. A row that needs a GPU (``needs_gpu``) is skipped, with the
reason, wherever its library sees none: the rule is the same for every library.

Only the standard library is imported at the top: ``ci/requirements.py`` loads this file by path
before gruxp is installed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (tomli is a dependency below 3.11)
    import tomli as tomllib


ORDER = ["numpy", "array_api_strict", "torch", "torch-cuda", "jax", "jax-gpu", "cupy"]  # the matrix's column order


@dataclass(frozen=True)
class Row:
    """One (library, device kind) of the table; see backends/README.md for the fields."""

    name: str
    module: str
    requirement: str
    install: str
    devices: tuple[str, ...]
    library: str = ""  # the --backend name (default: name)
    needs_gpu: bool = False
    api_version: str | None = None
    source: str = field(default="", compare=False)

    @property
    def backend(self) -> str:
        return self.library or self.name


def _folder() -> Path:
    """backends/: inside the installed package, or beside src/ in a clone (editable installs, PYTHONPATH=src)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "backends", here.parents[1] / "backends"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"gruxp's backend table (backends/*.toml) is neither in {here} nor beside src/")


def rows(folder: Path | None = None) -> list[Row]:
    """Every row, in the matrix's order (then by name)."""
    out = []
    for path in (folder or _folder()).glob("*.toml"):
        spec = tomllib.loads(path.read_text())
        spec["devices"] = tuple(spec["devices"])
        out.append(Row(**spec, source=path.name))
    out.sort(key=lambda r: (ORDER.index(r.name) if r.name in ORDER else len(ORDER), r.name))
    return out


def libraries() -> dict[str, Row]:
    """The command line's backends: the first row of each library (its CPU row where there is one)."""
    out: dict[str, Row] = {}
    for row in rows():
        out.setdefault(row.backend, row)
    return out


def make_device(library: str, module: Any, device: str | None) -> Any:
    """The device object a library takes for a device string (None or "default": its default)."""
    if device in (None, "default"):
        return None
    if library == "array_api_strict":
        return module.Device(device)
    if library == "torch":
        return module.device(device)
    if library == "jax":
        import jax

        return jax.devices(device)[0]
    if library == "cupy":
        return module.cuda.Device(int(device))
    if library == "numpy" and device == "cpu":
        return None
    raise ValueError(f"{library} has no device {device!r}")


def missing_gpu(row: Row, module: Any, device: str) -> str | None:
    """Why a ``needs_gpu`` row cannot run here (None: it can): its device made and an array put on it."""
    if not row.needs_gpu:
        return None
    try:
        made = make_device(row.backend, module, device)
        if row.backend == "torch" and not module.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False (a CPU build, or no GPU and driver)")
        if row.backend == "cupy" and module.cuda.runtime.getDeviceCount() == 0:
            raise RuntimeError("no CUDA device")
        module.asarray([0.0], device=made) if made is not None else module.asarray([0.0])
    except Exception as exc:  # a missing driver raises anything from ImportError to CUDARuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{row.name} needs a GPU and {row.backend} sees none here ({type(exc).__name__}: {first})"
    return None
