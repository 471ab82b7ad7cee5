"""The cell registry: one declaration per cell, which everything that names cells reads.

A cell is declared once, in its own file, by :func:`register`: its name (``--cell`` on the command
line), its model class (a :class:`gruxp.Recurrent`: constructor, structure, parameter shapes and
initial draws), its :class:`gruxp.functional.Cell` record (the direction functions over its shared
step, forward and backward, and what a call prepares), its own options with their kinds, and
optionally a CPU loop. Models (:func:`gruxp.models.recurrent`), :class:`gruxp.Sequential` and
checkpoints (the layer types they rebuild), safetensors, the command line's ``--cell`` choices, the
CPU route (which hands a cell's layers to its loop) and the JAX route (which keeps its structural
options static under ``jax.jit``) read the registry; nothing else names a cell. The Trainer asks each
layer whether it draws randomness (``draws_randomness``, from the options of kind ``"random"``).

Option kinds: ``"structure"`` (decides the parameters or the program: static under ``jax.jit``),
``"hyperparameter"`` (a number of the computation) and ``"random"`` (a rate of random masks, drawn only
in training mode).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

__all__ = ["CellSpec", "KINDS", "register", "get", "names", "specs", "for_function"]

KINDS = ("structure", "hyperparameter", "random")


class CellSpec(NamedTuple):
    """One cell's declaration (see the module docstring)."""

    name: str
    model: Any  # a gruxp.Recurrent subclass
    cell: Any  # its gruxp.functional.Cell record
    options: Mapping[str, str] = {}  # the model's own options (beyond the GRU's), by kind
    cpu: str | None = None  # "module:Class" of a CPU loop for its direction functions (NumPy), or None

    def cpu_class(self) -> Any:
        """The class of this cell's CPU loop (imported on first use), or None. It is made on the CPU
        route (``cls(route)``) and declares its plan rule, ``cls.plan(shape, dtype, machine, *, fuser,
        max_workers, options, rules)`` (:func:`gruxp._native.plan.plan_for` asks it)."""
        if self.cpu is None:
            return None
        module, _, name = self.cpu.partition(":")
        return getattr(importlib.import_module(module), name)

    def cpu_route(self, route: Any) -> Any:
        """The CPU loop for this cell, made on ``route`` (the CPU route), or None."""
        loop = self.cpu_class()
        return None if loop is None else loop(route)


_CELLS: dict[str, CellSpec] = {}


def register(spec: CellSpec) -> CellSpec:
    """Declare a cell (a later declaration of the same name replaces it); returns ``spec``."""
    if not isinstance(spec, CellSpec):
        raise TypeError(f"register takes a CellSpec; got {type(spec).__name__}")
    if not spec.name.isidentifier():
        raise ValueError(f"a cell's name must be an identifier (it is a --cell value); got {spec.name!r}")
    bad = {name: kind for name, kind in spec.options.items() if kind not in KINDS}
    if bad:
        raise ValueError(f"option kinds must be one of {KINDS}; got {bad}")
    _CELLS[spec.name] = spec
    return spec


def get(name: str) -> CellSpec:
    """The cell declared as ``name``; a ValueError naming the cells there are otherwise."""
    spec = _CELLS.get(name)
    if spec is None:
        raise ValueError(f"cell must be one of {names()}; got {name!r}")
    return spec


def names() -> list[str]:
    """The declared cells' names, in the order they were declared."""
    return list(_CELLS)


def specs() -> Iterator[CellSpec]:
    return iter(list(_CELLS.values()))


def for_function(function: Callable) -> CellSpec | None:
    """The cell whose forward or backward direction function ``function`` is, or None."""
    for spec in _CELLS.values():
        if function is spec.cell.forward or function is spec.cell.backward:
            return spec
    return None


class ModelsByName(Mapping):
    """The declared cells' model classes by cell name (``gruxp.models.CELLS``), read live."""

    def __getitem__(self, name: str) -> Any:
        return get(name).model

    def __iter__(self) -> Iterator[str]:
        return iter(names())

    def __len__(self) -> int:
        return len(_CELLS)

    def __repr__(self) -> str:
        return f"CELLS({ {n: s.model.__name__ for n, s in _CELLS.items()} })"


def _kind(spec: CellSpec, kind: str) -> tuple[str, ...]:
    return tuple(name for name, k in spec.options.items() if k == kind)


def static_options() -> set[str]:
    """Every declared cell's options of kind ``"structure"``: static under ``jax.jit``."""
    return {name for spec in _CELLS.values() for name in _kind(spec, "structure")}


def random_options(model: Any) -> tuple[str, ...]:
    """The options of kind ``"random"`` of the cell whose model ``model`` is (its class or an instance)."""
    kind = model if isinstance(model, type) else type(model)
    for spec in _CELLS.values():
        if spec.model is kind:
            return _kind(spec, "random")
    return ()
