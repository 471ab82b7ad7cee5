"""Linear, embedding, dropout and last-step selection: forward and backward side by side.

Same rules as the GRU: pure functions, a NamedTuple-free tape where the tape is a single array,
every created array with ``dtype=`` and ``device=``, no Python branch on array values.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from .._checks import check_dropout, check_positive_int
from .._namespace import concrete_bool, device_of, dtype_name, index_dtype, namespace_of
from .._random import randomness
from .._typing import Array
from ._routes import route_for

__all__ = [
    "as_index",
    "linear",
    "linear_backward",
    "embedding",
    "embedding_backward",
    "dropout_mask",
    "last_step_mask",
]

# The embedding gradient is a sum of one-hot rows; the one-hot block is bounded to this many
# elements by default so a large vocabulary never allocates N·V at once.
ONE_HOT_BLOCK = 1 << 22


def linear(params: Mapping[str, Any], x: Array, *, xp: ModuleType) -> Any:
    """y = x Wᵀ + b over the last axis; x (..., in) -> (..., out)."""
    w = params["weight"]
    lead, n_in = tuple(x.shape[:-1]), x.shape[-1]
    y = route_for(xp).matmul(xp.reshape(x, (-1, n_in)), xp.matrix_transpose(w))
    if params.get("bias") is not None:
        y = y + params["bias"]
    return xp.reshape(y, lead + (w.shape[0],))


def linear_backward(params: Mapping[str, Any], x: Array, dy: Array, *, xp: ModuleType) -> tuple[dict, Any]:
    """Gradients of Σ y·dy: ({weight, bias}, dx)."""
    w = params["weight"]
    n_out, n_in = w.shape
    x2, dy2 = xp.reshape(x, (-1, n_in)), xp.reshape(dy, (-1, n_out))
    product = route_for(xp).matmul
    grads = {"weight": product(xp.matrix_transpose(dy2), x2)}
    if params.get("bias") is not None:
        grads["bias"] = xp.sum(dy2, axis=0)
    return grads, xp.reshape(product(dy2, w), tuple(x.shape))


def as_index(ids: Array, *, xp: ModuleType) -> Any:
    """Integer ids in the namespace's default integer dtype (int64; int32 on JAX without x64), so
    comparisons with a vocabulary size never wrap (uint8 ids and V = 300: ``arange(300, dtype=uint8)``
    holds 256 twice over). An id past that dtype's range becomes negative here, and the range checks
    refuse it."""
    wide = index_dtype(xp)
    return ids if ids.dtype == wide else xp.astype(ids, wide)


def check_ids(ids: Array, num_embeddings: int, *, name: str = "ids") -> None:
    if type(ids) is np.ndarray and ids.dtype.kind in "iu":  # NumPy's ids, checked without the namespace's look-ups
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_embeddings):
            raise ValueError(f"{name} must lie in [0, {num_embeddings}); got values outside it")
        return
    xp = namespace_of(ids, what=name)
    if not xp.isdtype(ids.dtype, "integral"):
        raise TypeError(f"{name} must be an integer array; got dtype {dtype_name(ids.dtype)}")
    ids = as_index(ids, xp=xp)
    bad = concrete_bool(xp.any((ids < 0) | (ids >= num_embeddings)))
    if bad:
        raise ValueError(f"{name} must lie in [0, {num_embeddings}); got values outside it")


def embedding(params: Mapping[str, Any], ids: Array, *, xp: ModuleType) -> Any:
    """Rows of ``weight`` (V, E) picked by integer ``ids`` of any shape -> (*ids.shape, E)."""
    w = params["weight"]
    flat = xp.take(w, xp.reshape(ids, (-1,)), axis=0)
    return xp.reshape(flat, tuple(ids.shape) + (w.shape[1],))


def embedding_backward(
    params: Mapping[str, Any],
    ids: Array,
    dy: Array,
    *,
    xp: ModuleType,
    padding_idx: int | None = None,
    block_elements: int = ONE_HOT_BLOCK,
) -> dict:
    """dW[v] = Σ over positions with id v of dy: one-hot GEMMs in bounded blocks (repeats add up).

    The row ``padding_idx`` gets no gradient (PyTorch's ``nn.Embedding(padding_idx=...)``). Each
    one-hot block holds at most ``block_elements`` elements (at least one row of V): memory, never
    the result, depends on it.
    """
    w = params["weight"]
    V, E = w.shape
    flat_ids, flat_dy = xp.reshape(as_index(ids, xp=xp), (-1,)), xp.reshape(dy, (-1, E))
    if padding_idx is not None:  # an id that matches no row of the one-hot block
        flat_ids = xp.where(flat_ids == padding_idx, xp.asarray(-1, dtype=flat_ids.dtype, device=device_of(w)), flat_ids)
    vocab = xp.arange(V, dtype=flat_ids.dtype, device=device_of(w))
    rows = max(1, check_positive_int("block_elements", block_elements) // V)
    grad = None
    n = flat_ids.shape[0]
    for start in range(0, n, rows):
        stop = min(start + rows, n)  # the standard leaves out-of-bounds slice stops unspecified
        one_hot = xp.astype(flat_ids[start:stop, None] == vocab[None, :], w.dtype)
        part = route_for(xp).matmul(xp.matrix_transpose(one_hot), flat_dy[start:stop, :])
        grad = part if grad is None else grad + part
    if grad is None:
        grad = xp.zeros((V, E), dtype=w.dtype, device=device_of(w))
    return {"weight": grad}


def dropout_mask(p: float, shape: tuple[int, ...], rng: Any, *, xp: ModuleType, dtype: Any, device: Any, what: str = "") -> Any:
    """Inverted-dropout keep-mask (0 or 1/(1−p)) of ``shape``, None when p == 0 (nothing drawn).

    ``rng`` is the call's :class:`gruxp._random.Randomness` (or what makes one: a key, a generator, a
    seed): the draws are the backend's, made on ``device``. ``what`` names the option in errors."""
    p = check_dropout("dropout", p)
    if p == 0.0 or 0 in shape:
        return None
    source = randomness(rng, None, xp=xp, device=device)
    drop = source.bernoulli(shape, p, what=what or f"dropout={p}")
    return xp.astype(xp.logical_not(drop), dtype) * (1.0 / (1.0 - p))


def last_step_mask(lengths: Any, steps: int, *, xp: ModuleType, device: Any) -> Any:
    """Boolean (T, B, 1) selecting each sequence's last valid step ((T, 1, 1), step T−1, without
    lengths); ``lengths`` an integer array of ``xp`` on ``device`` (checked, or traced by ``jax.jit``),
    so the mask is built where the arrays live."""
    if lengths is None:
        return xp.reshape(xp.arange(steps, device=device) == steps - 1, (steps, 1, 1))
    return xp.arange(steps, dtype=lengths.dtype, device=device)[:, None, None] == (lengths - 1)[None, :, None]
