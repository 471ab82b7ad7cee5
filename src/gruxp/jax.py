"""gruxp in JAX's idiom: a pure ``init`` and ``apply``, the parameters a plain pytree.

``init(seed_or_key, input_size, hidden_size, ...) -> params`` draws a dict of jax arrays with
PyTorch's names (what optax updates, what ``jax.tree_util`` maps over); ``apply(params, x, h0=None,
*, lengths=None, ...) -> (out, h_n)`` is :func:`gruxp.functional.gru` with the structure read from
the params (how many layers, one direction or two, with or without biases). Under ``jax.grad``
its derivative is gruxp's analytic backward (a ``custom_vjp`` over the tape), under ``jax.jit`` the
time loop is one ``lax.scan``. The names follow flax's ``Module.init`` / ``Module.apply``.

Importing this module imports JAX; ``import gruxp`` does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from . import functional as F
from ._checks import check_bool, check_positive_int
from ._random import is_jax_key
from ._typing import Array

__all__ = ["apply", "init"]


def init(
    seed_or_key: Any,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    bias: bool = True,
    bidirectional: bool = False,
    dtype: Any = "float32",
) -> dict[str, Array]:
    """Parameters of a GRU as a dict of jax arrays (PyTorch's names and shapes), U(−1/√H, 1/√H).

    An int seed draws on the host exactly as ``gruxp.GRU(..., seed=seed)`` does on every backend (the
    same numbers as the NumPy model); a ``jax.random`` key draws with JAX, one subkey per parameter.
    """
    shapes = F.gru_param_shapes(
        check_positive_int("input_size", input_size),
        check_positive_int("hidden_size", hidden_size),
        check_positive_int("num_layers", num_layers),
        bias=check_bool("bias", bias),
        bidirectional=check_bool("bidirectional", bidirectional),
    )
    bound = 1.0 / hidden_size**0.5
    if is_jax_key(seed_or_key):
        keys = jax.random.split(seed_or_key, len(shapes))
        return {
            name: jax.random.uniform(key, shape, dtype=jnp.dtype(dtype), minval=-bound, maxval=bound)
            for key, (name, shape) in zip(keys, shapes.items(), strict=True)
        }
    return F.init_params(shapes, hidden_size, seed=seed_or_key, xp=jnp, device=None, dtype=getattr(jnp, str(dtype)))


def apply(
    params: Mapping[str, Array],
    x: Array,
    h0: Array = None,
    *,
    lengths: Any = None,
    batch_first: bool = False,
    reset_after: bool = True,
    dropout: float = 0.0,
    rng: Any = None,
) -> tuple[Array, Array]:
    """``(out, h_n)`` of the GRU whose parameters ``init`` made: a pure function, for ``jax.jit``,
    ``jax.grad`` and ``jax.vmap``. Shapes and ``lengths`` as :class:`gruxp.GRU`'s; ``lengths`` may
    be traced inside ``jax.jit`` (check their values before).

    ``dropout=p`` (between layers, as ``nn.GRU`` in training) draws its masks in the program from
    ``rng``, a ``jax.random`` key, as flax modules take theirs: the same key, the same masks; split
    a new one for each step. Under ``jax.jit`` a call with dropout and no key raises a ``ValueError``
    (a host generator would be read once, while tracing, and every call would repeat its mask)."""
    config = F.config_from_params(
        params, num_layers=None, bidirectional=None, bias=None, batch_first=batch_first, reset_after=reset_after
    )
    return F.infer_stack(params, x, h0, lengths, config, xp=None, dropout=dropout, rng=rng)
