"""Layers around the GRU, and :class:`Sequential` to compose them into one model.

Every layer has the GRU's shape of API: ``y, tape = layer.forward(x)`` and
``grads, dx = layer.backward(tape, dy)``, with PyTorch's parameter names. ``Sequential`` chains
them and exposes ONE flat dict of named parameters (``gru.weight_ih_l0``, ``head.weight``), which
is what optimizers, checkpoints and converters work on.

A GRU inside a ``Sequential`` reads its initial state from, and writes its final state to, the
``state`` dict under its own name: that is how truncated BPTT carries h_n from one window into the
next (``backward`` never reaches into the previous window, whose tape is gone).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from . import cells
from . import functional as F
from ._checks import (
    check_array,
    check_bool,
    check_keys,
    check_positive_int,
    check_shape,
    check_traced_lengths,
    is_traced,
    out_of_range,
    placed_lengths,
)
from ._namespace import device_of, namespace_of, same_device, to_numpy
from ._random import is_jax_key, randomness
from ._typing import Array
from .functional._layers import check_ids, dropout_mask, embedding, embedding_backward, last_step_mask, linear, linear_backward
from .models import CELLS, Modal, Module, Recurrent

__all__ = ["Linear", "Embedding", "Dropout", "LastStep", "Sequential", "SequentialTape"]


class _Tape(NamedTuple):
    """The record of a layer with a single saved input."""

    params: Mapping[str, Any]
    saved: Any  # the input (Linear, Embedding) or the mask (Dropout, LastStep)
    owner: Any = None
    out_shape: tuple[int, ...] | None = None  # what dy must be (Dropout, LastStep)


class Linear(Module):
    """y = x Wᵀ + b over the last axis, PyTorch's ``nn.Linear`` (weight (out, in), bias (out,)).

    Initialised like PyTorch: U(−1/√in, 1/√in) for weight and bias, drawn on the host.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        xp: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
    ) -> None:
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.bias = check_bool("bias", bias)
        self._place(xp, device, dtype, seed, lambda rng: F.uniform_init(self._param_shapes(), 1.0 / math.sqrt(in_features), rng))

    @classmethod
    def param_shapes(cls, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        n_in = check_positive_int("in_features", config.get("in_features"))
        n_out = check_positive_int("out_features", config.get("out_features"))
        return {"weight": (n_out, n_in), **({"bias": (n_out,)} if check_bool("bias", config.get("bias", True)) else {})}

    def config(self) -> dict[str, Any]:
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias)

    def _check_x(self, x: Array) -> None:
        check_array("x", x, xp=self.xp, device=self.device, dtype=self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}); got {tuple(x.shape)}")

    def __call__(self, x: Array) -> Any:
        return self.forward(x)[0]  # the tape is only a reference to x: nothing to save by skipping it

    def forward(self, x: Array, *, lengths: Any = None) -> tuple[Any, _Tape]:
        self._check_x(x)
        return linear(self.params, x, xp=self.xp), _Tape(dict(self.params), x, self._token)

    def backward(self, tape: _Tape, dy: Array) -> tuple[dict[str, Any], Any]:
        self._check_tape(tape, _Tape)
        _check_grad("dy", dy, tuple(tape.saved.shape[:-1]) + (self.out_features,), self)
        return linear_backward(tape.params, tape.saved, dy, xp=self.xp)

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}{'' if self.bias else ', bias=False'}, {self._placement()})"


class Embedding(Module):
    """Integer ids (any shape) -> rows of ``weight`` (V, E), PyTorch's ``nn.Embedding`` (init N(0, 1)).

    The gradient adds up over repeated ids. ``dx`` is None: ids have no gradient. ``padding_idx``
    (as in PyTorch, negative counts from the end) names a row that starts at zero and gets no gradient.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        padding_idx: int | None = None,
        xp: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
    ) -> None:
        self.num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
                raise TypeError(f"padding_idx must be an int or None; got {type(padding_idx).__name__} {padding_idx!r}")
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must lie in [-{num_embeddings}, {num_embeddings}); got {padding_idx}")
            padding_idx = int(padding_idx) % num_embeddings
        self.padding_idx = padding_idx

        def draw(rng: np.random.Generator) -> dict:
            weight = rng.standard_normal((num_embeddings, embedding_dim))
            if padding_idx is not None:
                weight[padding_idx] = 0.0
            return {"weight": weight}

        self._place(xp, device, dtype, seed, draw)

    @classmethod
    def param_shapes(cls, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        return {
            "weight": (
                check_positive_int("num_embeddings", config.get("num_embeddings")),
                check_positive_int("embedding_dim", config.get("embedding_dim")),
            )
        }

    def config(self) -> dict[str, Any]:
        config = dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim)
        return config if self.padding_idx is None else {**config, "padding_idx": self.padding_idx}

    def _check_ids(self, ids: Array) -> None:
        if namespace_of(ids, what="ids") is not self.xp:
            raise TypeError("ids must be an integer array of the embedding's namespace")
        check_ids(ids, self.num_embeddings)

    def __call__(self, ids: Array) -> Any:
        return self.forward(ids)[0]

    def forward(self, ids: Array, *, lengths: Any = None) -> tuple[Any, _Tape]:
        self._check_ids(ids)
        return embedding(self.params, ids, xp=self.xp), _Tape(dict(self.params), ids, self._token)

    def backward(self, tape: _Tape, dy: Array) -> tuple[dict[str, Any], None]:
        self._check_tape(tape, _Tape)
        _check_grad("dy", dy, tuple(tape.saved.shape) + (self.embedding_dim,), self)
        return embedding_backward(tape.params, tape.saved, dy, xp=self.xp, padding_idx=self.padding_idx), None

    def __repr__(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad}, {self._placement()})"


class Dropout(Modal):
    """Inverted dropout in training mode (``train()``, the default); identity in ``eval()``.

    Masks come from the backend's generator on the input's device, seeded from ``self.rng`` (a host
    Generator, which checkpoints keep) or from the call's ``rng`` (under ``jax.jit``: a key); see
    :mod:`gruxp._random`.
    """

    random_options = ("p",)

    def __init__(self, p: float = 0.5, *, seed: Any = None) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a float in [0, 1); got {p!r}")
        self.p, self.rng = float(p), F.host_rng(seed)
        self.params: dict[str, Any] = {}

    @property
    def draws_randomness(self) -> bool:
        """Whether a call now draws a mask (training mode and p > 0)."""
        return self.training and self.p > 0

    def config(self) -> dict[str, Any]:
        return dict(p=self.p)

    def forward(self, x: Array, *, lengths: Any = None, rng: Any = None) -> tuple[Any, _Tape]:
        xp = namespace_of(x, what="x")
        source = randomness(self.rng if rng is None else rng, x, xp=xp, device=device_of(x))
        p = self.p if self.training else 0.0
        mask = dropout_mask(p, tuple(x.shape), source, xp=xp, dtype=x.dtype, device=device_of(x), what=f"Dropout(p={p})")
        return (x if mask is None else x * mask), _Tape({}, mask, out_shape=tuple(x.shape))

    def __call__(self, x: Array, *, rng: Any = None) -> Any:
        return self.forward(x, rng=rng)[0]

    def backward(self, tape: _Tape, dy: Array) -> tuple[dict, Any]:
        _check_mask_grad(tape, dy, "Dropout")
        return {}, (dy if tape.saved is None else dy * tape.saved)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


class LastStep(Modal):
    """The output at each sequence's last valid step: (T, B, F) -> (B, F), or (B, T, F) with batch_first.

    With ``lengths`` the step is len−1 (as PyTorch users index a padded output); for a bidirectional
    GRU that joins the forward direction's final state with the reverse direction's output there.
    """

    def __init__(self, *, batch_first: bool = False) -> None:
        self.batch_first = check_bool("batch_first", batch_first)
        self.params: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return dict(batch_first=self.batch_first)

    def forward(self, x: Array, *, lengths: Any = None) -> tuple[Any, _Tape]:
        xp = namespace_of(x, what="x")
        if x.ndim != 3:
            raise ValueError(f"x must have shape {'(B, T, F)' if self.batch_first else '(T, B, F)'}; got {tuple(x.shape)}")
        if self.batch_first:
            x = xp.permute_dims(x, (1, 0, 2))
        T, B = x.shape[0], x.shape[1]
        bad = None
        if lengths is not None and is_traced(lengths):  # a length outside [1, T] gives NaN for that row
            lengths, bad = out_of_range(check_traced_lengths(lengths, batch=B, xp=xp), steps=T, xp=xp)
        elif lengths is not None:
            lengths = placed_lengths(lengths, batch=B, steps=T, xp=xp, device=device_of(x))[1]
        select = last_step_mask(lengths, T, xp=xp, device=device_of(x))
        zero = xp.zeros((), dtype=x.dtype, device=device_of(x))
        y = xp.sum(xp.where(select, x, zero), axis=0)
        if bad is not None:
            y = xp.where(bad[:, None], xp.asarray(math.nan, dtype=x.dtype), y)
        return y, _Tape({}, select, out_shape=(B, x.shape[2]))

    def __call__(self, x: Array, *, lengths: Any = None) -> Any:
        return self.forward(x, lengths=lengths)[0]

    def backward(self, tape: _Tape, dy: Array) -> tuple[dict, Any]:
        _check_mask_grad(tape, dy, "LastStep")
        xp = namespace_of(dy, what="dy")
        dx = xp.where(tape.saved, dy[None, ...], xp.zeros((), dtype=dy.dtype, device=device_of(dy)))
        return {}, (xp.permute_dims(dx, (1, 0, 2)) if self.batch_first else dx)

    def __repr__(self) -> str:
        return f"LastStep(batch_first={self.batch_first})"


def _check_mask_grad(tape: Any, dy: Array, layer: str) -> None:
    if not isinstance(tape, _Tape) or tape.out_shape is None:
        raise TypeError(f"tape must be the one returned by this {layer}'s forward; got {type(tape).__name__}")
    if dy is None:
        raise TypeError("dy must be an array; got None")
    namespace_of(dy, tape.saved, what="dy and the forward's input")  # one library, or a TypeError
    check_shape("dy", dy, tape.out_shape, "(the shape of the forward output)")


def _check_grad(name: str, g: Array, shape: tuple[int, ...], layer: Module) -> None:
    check_array(name, g, xp=layer.xp, device=layer.device, dtype=layer.dtype)
    check_shape(name, g, shape, "(the shape of the forward output)")


class SequentialTape(NamedTuple):
    tapes: tuple[Any, ...]
    owner: Any = None


class _LayerTypes(Mapping):
    """The layer classes a Sequential's config (and a checkpoint) may name, by class name: these
    layers and every declared cell's model (:mod:`gruxp.cells`), read live."""

    def _all(self) -> dict[str, Any]:
        models = {spec.model.__name__: spec.model for spec in cells.specs()}
        return {**models, **{cls.__name__: cls for cls in (Linear, Embedding, Dropout, LastStep)}}

    def __getitem__(self, name: str) -> Any:
        return self._all()[name]

    def __iter__(self) -> Any:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


LAYER_TYPES: Mapping[str, Any] = _LayerTypes()


def _layout(batch_first: bool) -> str:
    return "(B, T, ·) with batch_first=True" if batch_first else "(T, B, ·) with batch_first=False"


def _check_layouts(layers: Mapping[str, Any]) -> None:
    """Each layer that reads a time axis (a recurrent layer, LastStep) must read it where the one
    before it wrote it: a mismatch would swap T and B silently, or fail later with a message about
    the wrong shape. Checked when the model is built, naming both layers."""
    previous = None
    for name, layer in layers.items():
        batch_first = getattr(layer, "batch_first", None) if isinstance(layer, (Recurrent, LastStep)) else None
        if batch_first is None:
            continue
        if previous is not None and previous[1] != batch_first:
            raise ValueError(
                f"layer {name!r} reads {_layout(batch_first)}, but layer {previous[0]!r} before it writes "
                f"{_layout(previous[1])}: build both with the same batch_first"
            )
        previous = None if isinstance(layer, LastStep) else (name, batch_first)  # LastStep ends the time axis


class Sequential:
    """Layers applied in order, with one flat dict of parameters named ``<layer>.<param>``.

    Examples
    --------
    >>> import numpy as np, gruxp
    >>> model = gruxp.Sequential(
    ...     embed=gruxp.Embedding(50, 8, seed=0),
    ...     gru=gruxp.GRU(8, 16, num_layers=2, batch_first=True, seed=1),
    ...     head=gruxp.Linear(16, 50, seed=2))
    >>> ids = np.zeros((4, 10), dtype=np.int64)            # (B, T)
    >>> logits, state, tape = model.forward(ids)
    >>> logits.shape, state["gru"].shape
    ((4, 10, 50), (2, 4, 16))
    >>> sorted(model.params)[:2]
    ['embed.weight', 'gru.bias_hh_l0']
    """

    def __init__(self, layers: Mapping[str, Any] | None = None, /, **named: Any) -> None:
        items = list((layers or {}).items()) + list(named.items())
        if not items:
            raise ValueError("Sequential needs at least one layer")
        for name, layer in items:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"layer names must be identifiers; got {name!r}")
            if not hasattr(layer, "forward") or not hasattr(layer, "backward"):
                raise TypeError(f"layer {name!r} has no forward/backward; got {type(layer).__name__}")
        self.layers: dict[str, Any] = dict(items)
        self._token = object()
        _check_layouts(self.layers)
        placed = self.placed
        for name, layer in self.layers.items():
            if isinstance(layer, Module) and (
                layer.xp is not placed[0].xp or layer.dtype != placed[0].dtype or not same_device(layer.device, placed[0].device)
            ):
                raise ValueError(
                    f"layer {name!r} lives on {layer._placement()} but the first layer with parameters on "
                    f"{placed[0]._placement()}; build all layers with the same xp, device and dtype"
                )

    # -- parameters -------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        return {f"{name}.{k}": v for name, layer in self.layers.items() for k, v in layer.params.items()}

    @params.setter
    def params(self, flat: Mapping[str, Any]) -> None:
        expected = self.params
        check_keys(flat, expected, what="params do not match the model", noun="")
        for k, v in flat.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise ValueError(f"params[{k!r}] must have shape {tuple(expected[k].shape)}; got {tuple(v.shape)}")
        for name, layer in self.layers.items():
            if layer.params:
                layer.params = {k: flat[f"{name}.{k}"] for k in layer.params}

    def state_dict(self, *, numpy: bool = False) -> dict[str, Any]:
        """Copies of every layer's parameters under flat names (``gru.weight_ih_l0``), in the model's
        own arrays; ``numpy=True``: host NumPy copies."""
        if numpy:
            return {k: to_numpy(v) for k, v in self.params.items()}
        return {k: self.xp.asarray(v, copy=True) for k, v in self.params.items()}

    def load_state_dict(self, mapping: Mapping[str, Any]) -> None:
        """All-or-nothing: every layer is checked before any is changed."""
        expected = self.params
        check_keys(mapping, expected, what="load_state_dict")
        staged = {
            name: layer._converted({k: mapping[f"{name}.{k}"] for k in layer.params})
            for name, layer in self.layers.items()
            if layer.params
        }
        for name, params in staged.items():
            self.layers[name].params = params

    def config(self) -> list[dict[str, Any]]:
        return [{"name": n, "type": type(layer).__name__, "args": layer.config()} for n, layer in self.layers.items()]

    @classmethod
    def param_shapes(cls, config: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the flat parameters of a Sequential built from ``config``, without building it."""
        shapes: dict[str, tuple[int, ...]] = {}
        for entry in config:
            kind = LAYER_TYPES.get(str(entry.get("type")))
            if kind is None:
                raise ValueError(f"unknown layer type {entry.get('type')!r}; known: {sorted(LAYER_TYPES)}")
            if issubclass(kind, Module):
                shapes.update({f"{entry['name']}.{k}": v for k, v in kind.param_shapes(entry["args"]).items()})
        return shapes

    @classmethod
    def from_config(cls, config: list[dict[str, Any]], *, xp: Any = None, device: Any = None, dtype: Any = None) -> Sequential:
        """Rebuild the structure from :meth:`config` (parameters freshly initialised)."""
        layers = {}
        for entry in config:
            kind = LAYER_TYPES.get(str(entry.get("type")))
            if kind is None:
                raise ValueError(f"unknown layer type {entry.get('type')!r}; known: {sorted(LAYER_TYPES)}")
            placed = issubclass(kind, Module)
            layers[entry["name"]] = kind(**entry["args"], **(dict(xp=xp, device=device, dtype=dtype) if placed else {}))
        return cls(layers)

    def to(self, xp: Any = None, device: Any = None, dtype: Any = None) -> Sequential:
        """The same model on another namespace/device/dtype (a new object, sharing nothing with ``self``:
        layers without parameters are copied too, with their mode and RNG position)."""
        return Sequential(
            {
                n: (layer.to(xp, device, dtype) if isinstance(layer, Module) else copy.deepcopy(layer))
                for n, layer in self.layers.items()
            }
        )

    def train(self, mode: bool = True) -> Sequential:
        for layer in self.layers.values():
            layer.train(mode)
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    @property
    def placed(self) -> list[Module]:
        return [layer for layer in self.layers.values() if isinstance(layer, Module)]

    def _first_placed(self, what: str) -> Module:
        placed = self.placed
        if not placed:
            raise ValueError(
                f"this Sequential has no layer with parameters ({', '.join(self.layers)}), so no {what}: "
                "add a GRU, Linear or Embedding"
            )
        return placed[0]

    @property
    def xp(self) -> Any:
        return self._first_placed("namespace").xp

    @property
    def device(self) -> Any:
        return self._first_placed("device").device

    @property
    def dtype(self) -> Any:
        return self._first_placed("dtype").dtype

    # -- computation ------------------------------------------------------------------------
    def _layer_rngs(self, rng: Any) -> dict[str, Any]:
        """Each random layer's ``rng`` for one call: a mapping gives them by name; a ``jax.random`` key,
        ``fold_in(key, position)`` of the layer's position; an int, one shared NumPy Generator seeded by
        it; a generator, itself (shared: its draws follow one another). None: each layer's own."""
        random = [name for name, layer in self.layers.items() if hasattr(layer, "random_options")]
        if rng is None:
            return {}
        if isinstance(rng, Mapping):
            unknown = [k for k in rng if k not in random]
            if unknown:
                raise ValueError(f"rng has entries for layers that draw no randomness: {unknown} (those that may: {random})")
            return dict(rng)
        if is_jax_key(rng):
            import jax

            return {name: jax.random.fold_in(rng, i) for i, name in enumerate(self.layers) if name in random}
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            rng = F.host_rng(int(rng))
        return dict.fromkeys(random, rng)

    def forward(
        self, x: Array, state: Mapping[str, Any] | None = None, *, lengths: Any = None, rng: Any = None
    ) -> tuple[Any, dict, SequentialTape]:
        """``(y, state, tape)``: ``state`` maps each GRU's name to its h_n (its h0 on input). ``rng``:
        where the masks of a training-mode call come from (see :meth:`_layer_rngs`; under ``jax.jit``
        a key); by default each layer's own ``rng``."""
        state = self._checked_state(state)
        rngs = self._layer_rngs(rng)
        new_state, tapes, y = {}, [], x
        for name, layer in self.layers.items():
            if isinstance(layer, Recurrent):
                y, new_state[name], tape = layer.forward(y, state.get(name), lengths=lengths, rng=rngs.get(name))
            elif name in rngs:
                y, tape = layer.forward(y, lengths=lengths, rng=rngs[name])
            else:
                y, tape = layer.forward(y, lengths=lengths)
            tapes.append(tape)
        return y, new_state, SequentialTape(tuple(tapes), self._token)

    def __call__(
        self, x: Array, state: Mapping[str, Any] | None = None, *, lengths: Any = None, rng: Any = None
    ) -> tuple[Any, dict]:
        """Inference ``(y, state)``; GRUs keep no tape. ``rng`` as in :meth:`forward`."""
        state = self._checked_state(state)
        rngs = self._layer_rngs(rng)
        new_state, y = {}, x
        for name, layer in self.layers.items():
            if isinstance(layer, Recurrent):
                y, new_state[name] = layer(y, state.get(name), lengths=lengths, rng=rngs.get(name))
            elif isinstance(layer, LastStep):
                y = layer(y, lengths=lengths)
            elif name in rngs:
                y = layer(y, rng=rngs[name])
            else:
                y = layer(y)
        return y, new_state

    def _checked_state(self, state: Mapping[str, Any] | None) -> dict:
        """A copy of a call's carried states, each naming a recurrent layer of this model."""
        state = dict(state or {})
        unknown = [k for k in state if not isinstance(self.layers.get(k), Recurrent)]
        if unknown:
            recurrent = ", ".join(model.__name__ for model in CELLS.values())
            raise ValueError(f"state has entries for layers that are not recurrent ({recurrent}): {unknown}")
        return state

    def step(self, x_t: Array, state: Mapping[str, Any] | None = None) -> tuple[Any, dict]:
        """Streaming inference, one time step: ``(y_t, state)`` from x_t (B, ...) without the time axis
        (ids (B,) for an Embedding first), each recurrent layer's state carried by name as in
        :meth:`__call__`, which the caller holds. Recurrent layers run :meth:`gruxp.Recurrent.step`;
        ``LastStep`` passes a step through (it is its own last); other layers run as in a call."""
        state = self._checked_state(state)
        new_state, y = {}, x_t
        for name, layer in self.layers.items():
            if isinstance(layer, Recurrent):
                y, new_state[name] = layer.step(y, state.get(name))
            elif not isinstance(layer, LastStep):
                y = layer(y)
        return y, new_state

    def backward(self, tape: SequentialTape, dy: Array, d_state: Mapping[str, Any] | None = None) -> tuple[dict, Any, dict]:
        """``(grads, dx, d_state0)``: flat grads keyed like :attr:`params`.

        ``dx`` is None when the first layer is an Embedding (integer ids) or a GRU (its input is data).
        """
        if not isinstance(tape, SequentialTape) or tape.owner is not self._token:
            raise ValueError("tape was not recorded by this model's forward")
        d_state = dict(d_state or {})
        grads, d_state0 = {}, {}
        first = next(iter(self.layers))
        for (name, layer), layer_tape in zip(reversed(self.layers.items()), reversed(tape.tapes), strict=True):
            if isinstance(layer, Recurrent):
                # a recurrent layer that reads the model's input reads data: skip its dx GEMM
                g, dy, d_state0[name] = layer.backward(layer_tape, dy, d_state.get(name), input_grad=name != first)
            else:
                g, dy = layer.backward(layer_tape, dy)
            grads.update({f"{name}.{k}": v for k, v in g.items()})
        return {k: grads[k] for k in self.params}, dy, d_state0

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {n}={layer!r}" for n, layer in self.layers.items())
        return f"Sequential(\n{inner}\n)"
