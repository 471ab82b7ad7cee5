"""Test helpers for any namespace: host comparison and central finite differences.

Both work on host NumPy copies (:func:`gruxp._namespace.to_numpy`), so one tolerance policy
serves every backend. Finite differences are meant for float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._namespace import to_numpy
from ._typing import Array

__all__ = ["to_numpy", "assert_close", "numerical_gradient"]


def assert_close(actual: Array, desired: Array, *, rtol: float, atol: float = 0.0, name: str = "value") -> float:
    """Assert ``|actual − desired| <= atol + rtol·|desired|`` elementwise; return the largest ``|difference|``."""
    a, d = to_numpy(actual).astype(np.float64), to_numpy(desired).astype(np.float64)
    if a.shape != d.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {d.shape}")
    diff = np.abs(a - d)
    bad = ~(diff <= atol + rtol * np.abs(d))
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, diff, -1)), a.shape)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.size} elements differ beyond atol={atol:g}, rtol={rtol:g}; "
            f"worst at {i}: {a[i]!r} vs {d[i]!r}"
        )
    return float(diff.max(initial=0.0))


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f`` at host array ``x`` (float64), element by element."""
    x = np.array(x, dtype=np.float64, order="C", copy=True)  # C order: reshape(-1) must be a view
    grad = np.empty_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        up = f(x)
        flat[i] = keep - eps
        down = f(x)
        flat[i] = keep
        out[i] = (up - down) / (2 * eps)
    return grad
