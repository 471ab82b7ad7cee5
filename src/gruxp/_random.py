"""Where random masks come from: the backend's own generator, drawing where the arrays live.

A call that draws masks (dropout between layers, zoneout, a ``Dropout`` layer) turns its ``rng``
argument into :class:`Draws` once, at its entry, and every mask of the call comes from it:

==========================  ==========================================================================
namespace                   the generator, and what ``rng`` may be
==========================  ==========================================================================
NumPy (and array-api-strict, ``numpy.random.Generator`` (None: fresh entropy, an int: a seed); the
Dask: no generator of their draws are made on the host, where these arrays live (array-api-strict and
own)                        Dask get one boolean array per mask).
PyTorch                     ``torch.Generator`` on the arrays' device; None, an int or a NumPy Generator
                            give one seeded from a 64-bit number (an int: itself; a Generator: its next
                            draw).
JAX                         a ``jax.random`` key; mask i of the call uses ``fold_in(key, i)``. An int, or
                            a NumPy Generator outside ``jax.jit``, gives the key of a 64-bit number.
CuPy                        ``cupy.random.Generator`` or ``RandomState``; None, an int or a NumPy
                            Generator give a Philox ``RandomState`` seeded as for PyTorch.
==========================  ==========================================================================

Under ``jax.jit`` a host generator would be read once, while tracing, and its draws frozen into
the program as constants: every call would repeat one mask. So a traced call that draws and was
given no key (``rng`` None or a NumPy Generator) raises a ``ValueError`` naming the option that
draws. Models hold a host Generator (``model.rng``) and hand it here; on a device backend each call
takes one 64-bit number from it (:func:`seed_words`), so checkpoints keep the whole random state and
a compiled training step that takes those numbers as arguments draws exactly the masks of the
eager step. Masks agree between calls with the same seed on the same backend, not across backends.
"""

from __future__ import annotations

import secrets
import sys
from types import ModuleType
from typing import Any

import numpy as np

from ._checks import is_traced
from ._namespace import is_numpy_namespace, namespace_name

__all__ = ["Draws", "Randomness", "draws", "randomness", "seed_words", "key_from_words", "is_jax_key", "KEY_HELP"]

KEY_HELP = "pass a jax.random key as rng= (a new one for each call), or switch the option off (eval())"


def seed_words(rng: Any) -> tuple[np.uint32, np.uint32]:
    """The next 64-bit seed of a host ``rng`` (None: fresh entropy; an int: itself) as two uint32 words.

    Two scalar words, not one int: JAX without ``jax_enable_x64`` takes no 64-bit integer.
    """
    if rng is None:
        seed = secrets.randbits(64)
    elif isinstance(rng, np.random.Generator):
        seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    else:
        seed = _int_seed(rng)
    return np.uint32(seed >> 32), np.uint32(seed & 0xFFFFFFFF)


def _int_seed(rng: Any) -> int:
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
        raise TypeError(f"rng must be None, a non-negative int, a numpy Generator or the backend's own generator; got {rng!r}")
    if rng < 0:
        raise ValueError(f"rng must be non-negative; got {rng}")
    return int(rng) % 2**64


def key_from_words(hi: Any, lo: Any) -> Any:
    """The ``jax.random`` key of a 64-bit seed given as two uint32 words (traced or not)."""
    import jax

    return jax.random.fold_in(jax.random.key(hi), lo)


def is_jax_key(a: Any) -> bool:
    """A ``jax.random`` key: typed (``jax.random.key``) or raw (``PRNGKey``: two uint32)."""
    jax = sys.modules.get("jax")
    if jax is None or not isinstance(a, jax.Array):
        return False
    import jax.numpy as jnp

    return bool(jnp.issubdtype(a.dtype, jax.dtypes.prng_key)) or (a.dtype == jnp.uint32 and a.shape == (2,))


class Draws:
    """The masks of one call: ``bernoulli(shape, prob)`` is a boolean array on the call's device, True
    with probability ``prob`` (a uniform draw below ``prob``), one fresh draw per call of it."""

    def bernoulli(self, shape: tuple[int, ...], prob: float) -> Any:
        raise NotImplementedError


class _HostDraws(Draws):
    def __init__(self, generator: np.random.Generator, xp: ModuleType, device: Any) -> None:
        self.generator, self.xp, self.device = generator, xp, device

    def bernoulli(self, shape: tuple[int, ...], prob: float) -> Any:
        below = self.generator.random(shape) < prob  # float64 draws: the masks of every earlier version
        return below if is_numpy_namespace(self.xp) else self.xp.asarray(below, device=self.device)


class _TorchDraws(Draws):
    def __init__(self, generator: Any, device: Any) -> None:
        self.generator, self.device = generator, device

    def bernoulli(self, shape: tuple[int, ...], prob: float) -> Any:
        import torch

        return torch.rand(shape, generator=self.generator, device=self.device) < prob


class _JaxDraws(Draws):
    def __init__(self, key: Any) -> None:
        self.key, self.count = key, 0

    def bernoulli(self, shape: tuple[int, ...], prob: float) -> Any:
        import jax

        if self.key.dtype == np.uint32:  # a raw PRNGKey
            key = jax.random.fold_in(jax.random.wrap_key_data(self.key), self.count)
        else:
            key = jax.random.fold_in(self.key, self.count)
        self.count += 1
        return jax.random.uniform(key, shape) < prob


class _CupyDraws(Draws):
    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def bernoulli(self, shape: tuple[int, ...], prob: float) -> Any:
        import cupy

        if isinstance(self.generator, cupy.random.RandomState):
            return self.generator.random_sample(size=shape, dtype=cupy.float32) < prob
        return self.generator.random(shape, dtype=cupy.float32) < prob


def _is_torch_generator(rng: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(rng, torch.Generator)


def _is_cupy_generator(rng: Any) -> bool:
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(rng, (cupy.random.Generator, cupy.random.RandomState))


def draws(rng: Any, *, xp: ModuleType, device: Any, traced: bool, what: str) -> Draws:
    """:class:`Draws` for one call on namespace ``xp``/``device`` from the caller's ``rng`` (see the
    module's table). ``traced``: the call runs under ``jax.jit``; ``what`` names the option that draws
    (``"dropout=0.5"``), for the error a traced call without a key gets."""
    name = namespace_name(xp)
    foreign = is_jax_key(rng) or _is_torch_generator(rng) or _is_cupy_generator(rng)
    if name == "jax":
        if is_jax_key(rng):
            return _JaxDraws(rng)
        if foreign:
            raise TypeError(f"rng for JAX arrays must be a jax.random key; got {type(rng).__module__}.{type(rng).__name__}")
        if traced and not isinstance(rng, (int, np.integer)):
            raise ValueError(
                f"{what} draws a random mask, and under jax.jit a host generator would be read once, at trace time, "
                f"freezing that mask into the program: {KEY_HELP}"
            )
        return _JaxDraws(key_from_words(*seed_words(rng)))
    if name == "torch":
        if _is_torch_generator(rng):
            return _TorchDraws(rng, device)
        if foreign:
            raise TypeError(f"rng for torch tensors must be a torch.Generator; got {type(rng).__module__}.{type(rng).__name__}")
        import torch

        hi, lo = seed_words(rng)
        generator = torch.Generator(device=device if device is not None else "cpu")
        return _TorchDraws(generator.manual_seed((int(hi) << 32 | int(lo)) % 2**63), device)
    if name == "cupy":
        if _is_cupy_generator(rng):
            return _CupyDraws(rng)
        if foreign:
            raise TypeError(
                f"rng for CuPy arrays must be a cupy.random Generator; got {type(rng).__module__}.{type(rng).__name__}"
            )
        import cupy

        hi, lo = seed_words(rng)
        with cupy.cuda.Device(device if device is not None else cupy.cuda.runtime.getDevice()):
            state = cupy.random.RandomState(
                (int(hi) << 32 | int(lo)) % 2**63, method=cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
            )
        return _CupyDraws(state)
    if foreign:
        raise TypeError(
            f"rng for {name} arrays must be None, an int or a numpy Generator; got {type(rng).__module__}.{type(rng).__name__}"
        )
    if rng is not None and not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(_int_seed(rng))
    return _HostDraws(rng if rng is not None else np.random.default_rng(), xp, device)


class Randomness:
    """The random source of one call, made from its ``rng`` on the first draw (a call that draws
    nothing never reads ``rng``, and a traced call without a key fails only where it would draw).

    ``bernoulli(shape, prob, what=...)``: see :class:`Draws`; ``what`` names the option drawing.
    """

    def __init__(self, rng: Any, *, xp: ModuleType, device: Any, traced: bool) -> None:
        self.rng, self.xp, self.device, self.traced = rng, xp, device, traced
        self._draws: Draws | None = None

    def bernoulli(self, shape: tuple[int, ...], prob: float, *, what: str) -> Any:
        if self._draws is None:
            self._draws = draws(self.rng, xp=self.xp, device=self.device, traced=self.traced, what=what)
        return self._draws.bernoulli(shape, prob)


def randomness(rng: Any, x: Any, *, xp: ModuleType, device: Any) -> Randomness:
    """``rng`` as the :class:`Randomness` of a call whose input is ``x`` (as it is, if it is one)."""
    if isinstance(rng, Randomness):
        return rng
    return Randomness(rng, xp=xp, device=device, traced=is_traced(x))
