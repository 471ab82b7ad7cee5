"""Type names for public signatures.

``Array`` is an array of any namespace gruxp runs on (NumPy, CuPy, PyTorch, JAX, array-api-strict).
The standard defines no runtime type they share, so to a type checker it is ``Any``; to a reader
it says which arguments are arrays (in the model's namespace, on its device, in its dtype).
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["Array"]

Array: TypeAlias = Any
