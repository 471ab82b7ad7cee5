"""gruxp: a gated recurrent unit written once against the Python array API standard.

The same forward and analytic backward-through-time run on NumPy, CuPy, PyTorch, JAX and
array-api-strict. ``import gruxp`` imports none of the optional array libraries.
"""

from . import (
    _native,  # registers the backends' routes with the core  # noqa: F401
    cells,
    checkpoint,
    distributed,
    functional,
    interop,
    losses,
    onnx,
    optim,
    training,
)
from ._config import config_context, get_config, set_config
from ._namespace import DeviceError
from ._trace import Taken, routes_taken
from ._typing import Array
from .checkpoint import CheckpointError
from .functional import CellTape, GRUConfig, GRUTape
from .layers import Dropout, Embedding, LastStep, Linear, Sequential
from .ligru import LiGRU  # the light GRU: one file, which declares its cell
from .models import GRU, GRUCell, LayerNormGRU, MinGRU, Recurrent
from .training import Batch, NonFiniteLossError, Trainer

__version__ = "0.2.0"

__all__ = [
    "routes_taken",
    "Taken",
    "GRU",
    "LayerNormGRU",
    "MinGRU",
    "LiGRU",
    "Recurrent",
    "GRUCell",
    "GRUConfig",
    "GRUTape",
    "CellTape",
    "Linear",
    "Embedding",
    "Dropout",
    "LastStep",
    "Sequential",
    "Trainer",
    "Batch",
    "NonFiniteLossError",
    "CheckpointError",
    "DeviceError",
    "functional",
    "cells",
    "losses",
    "optim",
    "checkpoint",
    "training",
    "interop",
    "onnx",
    "distributed",
    "Array",
    "config_context",
    "get_config",
    "set_config",
    "__version__",
]
