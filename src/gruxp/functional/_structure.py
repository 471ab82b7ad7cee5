"""What every stacked recurrent structure holds, declared once: a cell's structure adds its own fields.

A structure is the part of a model that decides its parameters and its program: sizes, layers,
directions and the cell's own flags (``reset_after``, ``log_space``, ...). It is a frozen dataclass,
hashable (caches and ``jax.jit`` key on it) and equal only to a structure of the same class. A cell's
structure subclasses :class:`StackConfig`, adds its fields (booleans, each checked by name) and
provides ``cell`` (its :class:`gruxp.functional.Cell`), ``param_shapes()`` and ``initial_params(rng)``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from .._checks import check_bool, check_positive_int
from ._params import direction_suffix

__all__ = ["StackConfig"]


class _FieldNames:
    """``cls._fields``: a dataclass's field names, in order, as a NamedTuple's class answers them."""

    def __get__(self, instance: Any, owner: type) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(owner))


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """The fields every stacked recurrent layer has, PyTorch's ``nn.GRU`` names and defaults."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    bidirectional: bool = False

    @classmethod
    def checked(cls, *args: Any, **kwargs: Any) -> Any:
        """The structure from user values, bound as the constructor binds them, each checked: sizes
        positive integers, flags booleans (a ``TypeError``/``ValueError`` that names it)."""
        bound = _signature(cls).bind(*args, **kwargs)
        bound.apply_defaults()
        return cls(**{f.name: _CHECKS[str(f.type)](f.name, bound.arguments[f.name]) for f in dataclasses.fields(cls)})

    # NamedTuple's protocol, which every consumer of a structure speaks (so a cell may declare its
    # structure as a NamedTuple instead): the field names, the fields by name, a copy with changes.
    _fields = _FieldNames()

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}

    def _replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)

    # ... and its tuple protocol: the fields in order (unpacking, indexing, slicing, len)
    def __iter__(self) -> Iterator[Any]:
        return iter([getattr(self, name) for name in self._fields])

    def __len__(self) -> int:
        return len(self._fields)

    def __getitem__(self, index: Any) -> Any:
        return tuple(self)[index]

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def layer_directions(self) -> Iterator[tuple[str, int]]:
        """``(suffix, input size)`` of each layer-direction in PyTorch's parameter order: ``("_l0", I)``,
        ``("_l0_reverse", I)``, ``("_l1", D·H)``, ..."""
        D = self.num_directions
        for layer in range(self.num_layers):
            for direction in range(D):
                yield direction_suffix(layer, direction), self.input_size if layer == 0 else D * self.hidden_size


_CHECKS: dict[str, Callable[[str, Any], Any]] = {"int": check_positive_int, "bool": check_bool}  # by field annotation


_signatures: dict[type, inspect.Signature] = {}


def _signature(cls: type) -> inspect.Signature:
    """The constructor's signature, made once per class (a functional call checks its structure each time)."""
    if cls not in _signatures:
        _signatures[cls] = inspect.signature(cls)
    return _signatures[cls]
