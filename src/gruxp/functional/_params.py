"""Parameter names, shapes and the seeded initialisation.

Names and shapes are PyTorch's, so a ``state_dict`` moves between the two libraries unchanged:
``weight_ih_l{k}[_reverse]`` (3H, I_k), ``weight_hh_l{k}[_reverse]`` (3H, H), ``bias_ih_l{k}[_reverse]``
and ``bias_hh_l{k}[_reverse]`` (3H,), gate rows in the order r, z, n.

The array API has no random numbers, so every draw happens on the host with a NumPy ``Generator``
in float64 and is then cast and placed: the same seed gives bit-identical parameters on every
backend (SciPy and scikit-learn do the same).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import numpy as np

from .._namespace import from_numpy

__all__ = [
    "direction_suffix",
    "stack_of",
    "gru_param_shapes",
    "cell_param_shapes",
    "init_params",
    "uniform_init",
    "constant_init",
    "host_rng",
]


def direction_suffix(layer: int, direction: int) -> str:
    """The end of a layer-direction's parameter names, PyTorch's: ``_l1``, ``_l1_reverse``."""
    return f"_l{layer}" + ("_reverse" if direction else "")


def stack_of(names: Iterable[str]) -> tuple[int, bool]:
    """``(num_layers, bidirectional)`` of a stack from its parameter names (``weight_ih_l{k}[_reverse]``)."""
    found = [m for m in (re.fullmatch(r"weight_ih_l(\d+)(_reverse)?", k) for k in names) if m]
    if not found:
        return 0, False
    return 1 + max(int(m.group(1)) for m in found), any(m.group(2) for m in found)


def gru_param_shapes(
    input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True, bidirectional: bool = False
) -> dict[str, tuple[int, ...]]:
    """Ordered ``{name: shape}`` of a stacked GRU, in PyTorch's order."""
    H, D = hidden_size, 2 if bidirectional else 1
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else D * H
        for direction in range(D):
            s = direction_suffix(layer, direction)
            shapes["weight_ih" + s] = (3 * H, in_size)
            shapes["weight_hh" + s] = (3 * H, H)
            if bias:
                shapes["bias_ih" + s] = (3 * H,)
                shapes["bias_hh" + s] = (3 * H,)
    return shapes


def cell_param_shapes(input_size: int, hidden_size: int, *, bias: bool = True) -> dict[str, tuple[int, ...]]:
    """Ordered ``{name: shape}`` of a single cell: ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``."""
    shapes: dict[str, tuple[int, ...]] = {"weight_ih": (3 * hidden_size, input_size), "weight_hh": (3 * hidden_size, hidden_size)}
    if bias:
        shapes |= {"bias_ih": (3 * hidden_size,), "bias_hh": (3 * hidden_size,)}
    return shapes


def host_rng(seed: Any) -> np.random.Generator:
    """A NumPy Generator from ``None`` (fresh entropy), an int, or a Generator (used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be None, a non-negative int or a numpy Generator; got {seed!r}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be non-negative; got {seed}")
    return np.random.default_rng(seed)


def uniform_init(shapes: dict[str, tuple[int, ...]], bound: float, rng: Any) -> dict[str, np.ndarray]:
    """Host float64 draws from U(-bound, bound), one per entry of ``shapes``, in order."""
    rng = host_rng(rng)
    return {name: rng.uniform(-bound, bound, size=shape) for name, shape in shapes.items()}


def constant_init(shapes: dict[str, tuple[int, ...]], value: float) -> dict[str, np.ndarray]:
    """Host float64 arrays filled with ``value``, one per entry of ``shapes`` (no draws)."""
    return {name: np.full(shape, float(value)) for name, shape in shapes.items()}


def init_params(
    shapes: dict[str, tuple[int, ...]], hidden_size: int, *, seed: Any = None, xp: ModuleType, device: Any, dtype: Any
) -> dict[str, Any]:
    """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's default) in ``shapes``' order."""
    host = uniform_init(shapes, 1.0 / math.sqrt(hidden_size), seed)
    return {name: from_numpy(a, xp=xp, device=device, dtype=dtype) for name, a in host.items()}
