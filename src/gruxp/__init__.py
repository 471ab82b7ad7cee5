"""gruxp: a gated recurrent unit written once against the Python array API standard.

The same forward and analytic backward-through-time run on NumPy, CuPy, PyTorch, JAX and
array-api-strict. ``import gruxp`` imports none of the optional array libraries.
"""

from . import functional
from .functional import GRUConfig, GRUTape, CellTape
from .models import GRU, GRUCell

__version__ = "0.1.0"

__all__ = ["GRU", "GRUCell", "GRUConfig", "GRUTape", "CellTape", "functional", "__version__"]
