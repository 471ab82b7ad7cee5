"""The stacked, optionally bidirectional GRU over a sequence, and its backward pass through time.

Work is arranged so that the time loop holds only what must be sequential:

* the input pre-activations of all T steps are ONE (T·B, I) @ (I, 3H) GEMM before the loop;
* each step does one recurrent GEMM (two for reset_before) and the gate arithmetic;
* backward collects the per-step pre-activation gradients and computes every weight gradient and
  ``dx`` as one GEMM each after the loop.

Variable lengths follow PyTorch's packed sequences (``enforce_sorted=False``): a boolean mask
(T, B, 1), built where the arrays live from the B lengths, freezes each sequence's state after its last valid step and zeroes
its outputs there; the reverse direction therefore starts at step len−1 from h0. Padding in ``x``
is replaced by zeros at entry, so NaN or garbage padding can never leak into a gradient.

Nothing is mutated: per-step results are collected in lists and stacked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any, NamedTuple

from .._checks import (
    check_array,
    check_params,
    check_shape,
    check_traced_lengths,
    is_traced,
    out_of_range,
    placed_lengths,
)
from .._namespace import device_of, namespace_of, resolve_xp
from .._random import Randomness, randomness
from .._typing import Array
from ._cell import StepCache, folded_bias, input_grad, masked_state, param_grads, step_backward, step_forward
from ._layers import dropout_mask
from ._params import direction_suffix, gru_param_shapes, stack_of, uniform_init
from ._routes import python_loop, route_for
from ._structure import StackConfig

__all__ = ["Cell", "GRUConfig", "DirectionTape", "GRUTape", "gru", "gru_forward", "gru_backward", "run_stack", "backward_stack"]


class Cell(NamedTuple):
    """A recurrent cell as the stack driver and the routes see it: one definition per cell.

    ``forward(x, h0, p, *, mask, reverse, record, xp, loop, **options)`` runs one layer-direction
    over x (T, B, I) from h0 (B, H) and returns ``(out, h_T, tape or None)``, the tape a NamedTuple
    with at least ``x``, ``h0`` and ``hs`` (T, B, H), the states in time order; ``backward(tape,
    d_out, d_hT, p, *, mask, reverse, bias, need_dx, xp, loop, **options)`` returns ``((grads with
    short names, dx or None), dh0)``. Each writes its step as ``(carry, x_t) -> (carry, saved_t)``
    (flax's cell contract) and hands it to :func:`drive_forward` / :func:`drive_backward`, which own
    what every cell shares (lengths, the previous states, a missing output gradient) and run it with
    the ``loop`` a route hands them. ``p`` holds the layer-direction's parameters by short name
    (``weight_ih``, not ``weight_ih_l0_reverse``).

    ``forward_options(config, layer, direction, prepared)`` and ``backward_options(config)`` return the
    cell's own keywords as a NamedTuple (``reset_after``, ``zoneout``, ...): they cross the seam in
    :class:`ForwardCall` / :class:`BackwardCall`, typed records, never as loose dicts.
    ``prepare(config, shape, options, rng, xp, dtype, device)`` reads the call's options (``shape`` is
    (T, B, H)) once, before the layers run, and draws any random masks (zoneout) from ``rng``, the
    call's :class:`gruxp._random.Randomness` (on the device); what it returns reaches
    ``forward_options`` as ``prepared``.

    ``static`` names the cell's own keywords that steer Python (kept static by a compiler: the JAX
    route's ``jax.jit``). ``check(config, h0, xp)`` (optional) checks the call's initial state against
    the cell's own rules before any route runs, and returns it (poisoned with NaN where a traced value
    breaks them).

    A cell whose options hold ``parallel`` (minGRU's scan over time) lets a route run its recurrence
    step by step instead (``parallel=False``) where that is faster; both are the same function,
    tested against each other.
    """

    name: str
    forward: Any
    backward: Any
    forward_options: Any
    backward_options: Any
    prepare: Any = None
    check: Any = None
    static: tuple = ()  # its own keywords that are Python values (static under jax.jit)


class NoOptions(NamedTuple):
    """A direction function with no keywords of its own."""


class ForwardCall(NamedTuple):
    """One layer-direction's forward, as the stack driver hands it to a route (the seam's record)."""

    x: Array  # (T, B, I) the layer's input, time-major
    h0: Array  # (B, H)
    p: Mapping[str, Array]  # the layer-direction's parameters by short name
    mask: Any  # (T, B, 1) bool, or None: every sequence runs T steps
    reverse: bool
    record: bool
    xp: ModuleType
    options: Any  # the cell's own keywords: the NamedTuple its forward_options made

    def keywords(self) -> dict[str, Any]:
        """The direction function's keyword arguments: the driver's and the cell's own."""
        keywords = _option_dict(self.options)
        keywords.update(x=self.x, h0=self.h0, p=self.p, mask=self.mask, reverse=self.reverse, record=self.record, xp=self.xp)
        return keywords

    def run(self, forward: Any, loop: Any) -> Any:
        return forward(**self.keywords(), loop=loop)


class BackwardCall(NamedTuple):
    """One layer-direction's backward, as the stack driver hands it to a route (the seam's record)."""

    tape: Any  # the direction's tape, as the cell's forward recorded it
    d_out: Any  # (T, B, H) the output's gradient, or None: zeros
    d_hT: Any  # (B, H) the final state's gradient, or None: zeros
    p: Mapping[str, Array]
    mask: Any
    reverse: bool
    bias: bool
    need_dx: bool
    xp: ModuleType
    options: Any  # the NamedTuple the cell's backward_options made

    def keywords(self) -> dict[str, Any]:
        keywords = _option_dict(self.options)
        keywords.update(tape=self.tape, d_out=self.d_out, d_hT=self.d_hT, p=self.p, mask=self.mask, reverse=self.reverse,
                        bias=self.bias, need_dx=self.need_dx, xp=self.xp)  # fmt: skip
        return keywords

    def run(self, backward: Any, loop: Any) -> Any:
        return backward(**self.keywords(), loop=loop)


def _option_dict(options: Any) -> dict[str, Any]:
    """A cell's own keywords as a new dict: from its options NamedTuple, or from a mapping (a cell may
    return a plain dict of them)."""
    return dict(options) if isinstance(options, Mapping) else options._asdict()


def drive_forward(step, h0, xs, *, mask, reverse, record, xp, loop):
    """The time loop of every cell's forward: ``step(h, x_t) -> (h_new, saved_t)`` (the carry and what
    backward needs of the step) over ``xs``, a tuple of (T, ...) arrays (or None), run by ``loop``.

    The driver owns what every cell shares: a sequence past its length keeps its state (``mask``),
    the states are recorded, and the outputs are zero past each length. Returns ``(out, h_T, hs,
    saved)``: ``saved`` the stacked ``saved_t`` in time order (an empty tuple without ``record``)."""

    def body(h, inputs):
        mask_t = inputs[0]
        h_new, saved = step(h, inputs[1:])
        h = h_new if mask_t is None else masked_state(mask_t, h_new, h, xp.where)
        return h, ((h, *saved) if record else (h,))

    h_T, ys = loop(body, h0, (mask, *xs), length=_steps(xs), reverse=reverse, xp=xp)
    hs = ys[0]
    return masked_outputs(hs, mask, xp=xp), h_T, hs, ys[1:]


def masked_outputs(hs: Any, mask: Any, *, xp: ModuleType) -> Any:
    """A direction's outputs from its states (T, B, H): zero past each sequence's length (the generic
    driver's rule, which a route's own loop applies too)."""
    return hs if mask is None else xp.where(mask, hs, xp.zeros((), dtype=hs.dtype, device=device_of(hs)))


def _steps(xs: tuple) -> int:
    """T, from the first array among a loop's inputs."""
    return next(a for a in xs if a is not None).shape[0]


def drive_backward(step, tape, d_out, d_hT, xs, *, mask, reverse, xp, loop):
    """The reverse time loop of every cell's backward: ``step(g, h_prev_t, x_t) -> (dh_prev, saved_t)``
    with ``g`` = dL/dh_t, over ``xs`` (as :func:`drive_forward`'s), run by ``loop`` in reverse
    processing order.

    The driver owns what every cell shares: ``g`` is the carried gradient plus the output's
    (``d_out`` None: none), zero past a sequence's length, where the carried gradient passes through
    unchanged; ``d_hT`` None means zeros; the states each step started from come from the tape.
    Returns ``(dh0, h_prev, saved)``: h_prev (T, B, H) and the stacked ``saved_t`` in time order."""
    hs = tape.hs
    h_prev = previous_states(tape, reverse=reverse, xp=xp)
    zero = xp.zeros((), dtype=hs.dtype, device=device_of(hs))
    dh = d_hT if d_hT is not None else xp.zeros(tape.h0.shape, dtype=hs.dtype, device=device_of(hs))

    def body(dh, inputs):
        d_out_t, mask_t, h_prev_t = inputs[:3]
        g = dh if d_out_t is None else dh + d_out_t
        if mask_t is not None:
            g = masked_state(mask_t, g, zero, xp.where)
        dh_new, saved = step(g, h_prev_t, inputs[3:])
        dh = dh_new if mask_t is None else masked_state(mask_t, dh_new, dh, xp.where)
        return dh, saved

    dh0, saved = loop(body, dh, (d_out, mask, h_prev, *xs), length=hs.shape[0], reverse=not reverse, xp=xp)
    return dh0, h_prev, saved


@dataclasses.dataclass(frozen=True)
class GRUConfig(StackConfig):
    """The structure of a stacked GRU; the parameter shapes follow from it."""

    reset_after: bool = True

    @property
    def cell(self) -> Cell:
        """The cell this structure stacks (the GRU's; every cell's structure names its own)."""
        return GRU_CELL

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return gru_param_shapes(
            self.input_size, self.hidden_size, self.num_layers, bias=self.bias, bidirectional=self.bidirectional
        )

    def initial_params(self, rng: Any) -> dict[str, Any]:
        """Host float64 draws for every parameter, in order: U(−1/√H, 1/√H) (PyTorch's default)."""
        return uniform_init(self.param_shapes(), 1.0 / math.sqrt(self.hidden_size), rng)


class DirectionTape(NamedTuple):
    """One layer-direction's record, all arrays time-major in time order (not processing order)."""

    x: Array  # (T, B, I_k) the layer's input
    h0: Array  # (B, H)
    hs: Any  # (T, B, H) state after each step (frozen past a sequence's length)
    r: Array  # (T, B, H) reset gate
    z: Any  # (T, B, H) update gate
    n: Any  # (T, B, H) candidate
    gh_n: Any  # (T, B, H) reset_after only, else None


class GRUTape(NamedTuple):
    """Everything :func:`gru_backward` needs; recorded by :func:`gru_forward` (or any cell's
    ``*_forward``: ``config`` names the cell, ``layers`` hold its direction tapes)."""

    params: Mapping[str, Any]
    config: GRUConfig
    layers: tuple[tuple[DirectionTape, ...], ...]
    mask: Any  # (T, B, 1) bool, or None when every sequence has length T
    dropout_masks: Any  # (L−1, T, B, D·H) scaled keep-masks between layers, or None
    unbatched: bool
    out_shape: tuple[int, ...]
    hn_shape: tuple[int, ...]
    owner: Any = None  # set by gruxp.GRU so that a tape cannot cross models


_suffix = direction_suffix  # the name the suffix had here before gruxp.functional exported it


def direction_forward_loop(x, h0, p, *, mask, reverse, reset_after, record, xp, loop=python_loop):
    """One direction's forward over x (T, B, I) from h0 (B, H), the shared step driven by ``loop``:
    ``(out, h_T, DirectionTape or None)``. The generic code of every route (see :mod:`._routes`)."""
    T, B, I = x.shape
    w_ih, w_hh = p["weight_ih"], p["weight_hh"]
    b_in, b_hn = folded_bias(p.get("bias_ih"), p.get("bias_hh"), reset_after=reset_after, xp=xp)
    gi = xp.reshape(xp.reshape(x, (T * B, I)) @ xp.matrix_transpose(w_ih), (T, B, w_ih.shape[0]))
    if b_in is not None:
        gi = gi + b_in

    def step(h, inputs):
        (gi_t,) = inputs
        return step_forward(gi_t, h, w_hh, b_hn, reset_after=reset_after, xp=xp)

    out, h_T, hs, cache = drive_forward(step, h0, (gi,), mask=mask, reverse=reverse, record=record, xp=xp, loop=loop)
    return out, h_T, (DirectionTape(x, h0, hs, *cache) if record else None)


def direction_result(x, h0, h_T, states, *, mask, record, xp):
    """``(out, h_T, DirectionTape or None)`` from a direction's states ``(hs, r, z, n, gh_n)`` (or
    ``(hs,)`` without ``record``), for a route's loop of its own: out is zero past each sequence's end."""
    return masked_outputs(states[0], mask, xp=xp), h_T, (DirectionTape(x, h0, *states) if record else None)


def previous_states(tape: DirectionTape, *, reverse: bool, xp: ModuleType) -> Any:
    """(T, B, H): the state each step started from, in time order."""
    first = xp.expand_dims(tape.h0, axis=0)
    return xp.concat([tape.hs[1:, ...], first], axis=0) if reverse else xp.concat([first, tape.hs[:-1, ...]], axis=0)


def direction_backward_loop(tape, d_out, d_hT, p, *, mask, reverse, reset_after, bias, need_dx, xp, loop=python_loop):
    """One direction's backward, the shared step driven by ``loop`` (in reverse processing order):
    ``((grads with short names, dx (T, B, I) or None), dh0 (B, H))``."""
    w_hh = p["weight_hh"]

    def step(g, h_prev_t, inputs):
        grads = step_backward(g, h_prev_t, StepCache(*inputs), w_hh, reset_after=reset_after, xp=xp)
        return grads.dh, (grads.d_r, grads.d_z, grads.d_an, grads.d_ghn if reset_after else None)

    xs = (tape.r, tape.z, tape.n, tape.gh_n)
    dh0, h_prev, (d_r, d_z, d_an, d_ghn) = drive_backward(
        step, tape, d_out, d_hT, xs, mask=mask, reverse=reverse, xp=xp, loop=loop
    )
    d_i = xp.concat([d_r, d_z, d_an], axis=-1)
    d_h = xp.concat([d_r, d_z, d_ghn], axis=-1) if reset_after else d_i
    x = tape.x
    return finish_backward(d_i, d_h, x, h_prev, tape.r, p, reset_after=reset_after, bias=bias, need_dx=need_dx, xp=xp), dh0


def finish_backward(d_i, d_h, x, h_prev, r, p, *, reset_after, bias, need_dx, xp, matmul=None):
    """The GEMMs after the time loop: weight gradients and dx (None unless ``need_dx``), from the
    per-step gradients d_i, d_h (T, B, 3H) and the inputs x (T, B, I), h_prev (T, B, H); ``r``
    only for reset_before. ``matmul`` (default ``@``) is the product a route makes them with."""
    T, B, I = x.shape
    rows = T * B
    d_i2 = xp.reshape(d_i, (rows, d_i.shape[-1]))
    grads = param_grads(
        d_i2,
        xp.reshape(d_h, (rows, d_h.shape[-1])),
        xp.reshape(x, (rows, I)),
        xp.reshape(h_prev, (rows, h_prev.shape[-1])),
        None if reset_after else xp.reshape(r, (rows, r.shape[-1])),
        reset_after=reset_after,
        bias=bias,
        xp=xp,
        matmul=matmul,
    )
    dx = xp.reshape(input_grad(d_i2, p["weight_ih"], matmul=matmul), (T, B, I)) if need_dx else None
    return grads, dx


def _prepare(params, x, h0, lengths, config: GRUConfig, xp):
    """Validate everything and bring x to (T, B, I), h0 to (L·D, B, H); build the lengths mask on the device."""
    p_xp, device, dtype = check_params(params, _param_shapes(type(config).__qualname__, config))
    if xp is not None and resolve_xp(xp) is not p_xp:
        raise TypeError("xp does not match the namespace of params")
    xp = p_xp
    check_array("x", x, xp=xp, device=device, dtype=dtype)
    I, H, LD = config.input_size, config.hidden_size, config.num_layers * config.num_directions
    if x.ndim not in (2, 3) or x.shape[-1] != I:
        layout = "(B, T, I)" if config.batch_first else "(T, B, I)"
        raise ValueError(f"x must have shape {layout} or unbatched (T, I) with I={I}; got {tuple(x.shape)}")
    unbatched = x.ndim == 2
    if unbatched:
        if lengths is not None:
            raise ValueError("lengths is not accepted with unbatched x of shape (T, I); add a batch axis")
        x = xp.expand_dims(x, axis=1)
    elif config.batch_first:
        x = xp.permute_dims(x, (1, 0, 2))
    T, B = x.shape[0], x.shape[1]
    if T < 1 or B < 1:
        raise ValueError(f"x must hold at least one time step and one sequence; got T={T}, B={B}")
    if h0 is None:
        h0 = xp.zeros((LD, B, H), dtype=dtype, device=device_of(x))
    else:
        check_array("h0", h0, xp=xp, device=device, dtype=dtype)
        if unbatched:
            check_shape("h0", h0, (LD, H), "(num_layers·num_directions, H) for unbatched x")
            h0 = xp.expand_dims(h0, axis=1)
        else:
            check_shape("h0", h0, (LD, B, H), "(num_layers·num_directions, B, H)")
    mask = None
    if lengths is not None:
        if is_traced(lengths):  # inside jax.jit: the values cannot be read (see check_traced_lengths)
            lengths, bad = out_of_range(check_traced_lengths(lengths, batch=B, xp=xp), steps=T, xp=xp)
            x, full = (
                xp.where(bad[None, :, None], xp.asarray(math.nan, dtype=dtype), x),
                False,
            )  # NaN results, never plausible ones
        else:
            host, lengths = placed_lengths(lengths, batch=B, steps=T, xp=xp, device=device_of(x))
            full = bool((host == T).all())
        if not full:  # built where the arrays live, from B integers
            mask = xp.arange(T, dtype=lengths.dtype, device=device_of(x))[:, None, None] < lengths[None, :, None]
    if mask is not None:
        x = xp.where(mask, x, xp.zeros((), dtype=dtype, device=device_of(x)))
    return xp, x, h0, mask, unbatched


def _direction_params(params: Mapping[str, Any], layer: int, direction: int) -> dict[str, Any]:
    """One layer-direction's parameters by short name: ``weight_ih_l1_reverse`` -> ``weight_ih``."""
    return {short: params[full] for full, short in _direction_names(tuple(params), layer, direction)}


@functools.lru_cache(maxsize=256)
def _direction_names(names: tuple[str, ...], layer: int, direction: int) -> tuple[tuple[str, str], ...]:
    s = direction_suffix(layer, direction)
    return tuple((full, full[: -len(s)]) for full in names if full.endswith(s))


@functools.lru_cache(maxsize=256)
def _param_shapes(kind: Any, config: Any) -> dict[str, tuple[int, ...]]:
    """``config.param_shapes()``, made once per structure (a one-token call would rebuild it every time).
    Keyed by the type's name too: structures of two cells may hold equal fields."""
    return config.param_shapes()


def run_stack(params, x, h0, lengths, config, *, record: bool, xp, dropout=0.0, rng=None, options=None):
    """Any cell's stack over a sequence: ``(out, h_n, GRUTape or None)``. ``config`` is the cell's
    structure (it names the cell), ``options`` the cell's own call options (zoneout, ...)."""
    cell: Cell = config.cell
    traced = is_traced(x)
    xp, x, h0, mask, unbatched = _prepare(params, x, h0, lengths, config, xp)
    if cell.check is not None:
        h0 = cell.check(config, h0, xp)
    route = route_for(xp)
    L, D, H = config.num_layers, config.num_directions, config.hidden_size
    T, B = x.shape[0], x.shape[1]
    rng = rng if isinstance(rng, Randomness) else Randomness(rng, xp=xp, device=device_of(x), traced=traced)
    drop = None
    if not (dropout == 0.0 and type(dropout) in (float, int)):  # a plain zero: nothing to check or draw
        drop = dropout_mask(dropout, (L - 1, T, B, D * H), rng, xp=xp, dtype=x.dtype, device=device_of(x))
    prepared = None if cell.prepare is None else cell.prepare(config, (T, B, H), options or {}, rng, xp, x.dtype, device_of(x))
    if record:
        # The tape keeps its own x and h0: an edit of the caller's arrays between forward and
        # backward cannot change the gradients (the copy also makes a batch-first x time-major).
        x, h0 = xp.asarray(x, copy=True), xp.asarray(h0, copy=True)
    layer_in = x
    finals: list[Any] = []
    layers: list[tuple] = []
    for layer in range(L):
        calls = [
            ForwardCall(
                layer_in,
                h0[layer * D + d, ...],
                _direction_params(params, layer, d),
                mask,
                bool(d),
                record,
                xp,
                cell.forward_options(config, layer, d, prepared),
            )
            for d in range(D)
        ]
        outs, h_Ts, tapes = zip(*route.layer_forward(cell.forward, calls), strict=True)
        finals += h_Ts
        layer_in = outs[0] if D == 1 else xp.concat(outs, axis=-1)
        if record and D == 2 and mask is None and layer < L - 1 and route.shares_states:
            # each direction's states are now a slice of the next layer's input, which the tape
            # keeps anyway: keep only that (not the last layer's: the caller gets its output)
            tapes = tuple(t._replace(hs=layer_in[..., d * H : (d + 1) * H]) for d, t in enumerate(tapes))
        if drop is not None and layer < L - 1:
            layer_in = layer_in * drop[layer, ...]
        layers.append(tuple(tapes))
    out, h_n = layer_in, xp.stack(finals, axis=0)
    if record and out is layers[-1][0].hs:
        out = xp.asarray(out, copy=True)  # the caller may edit what it gets; the tape's states stay
    if unbatched:
        out, h_n = out[:, 0, ...], h_n[:, 0, ...]
    elif config.batch_first:
        out = xp.permute_dims(out, (1, 0, 2))
    if not record:
        return out, h_n, None
    tape = GRUTape(dict(params), config, tuple(layers), mask, drop, unbatched, tuple(out.shape), tuple(h_n.shape))
    return out, h_n, tape


class GRUOptions(NamedTuple):
    """The GRU's own keywords, forward and backward."""

    reset_after: bool


_GRU_OPTIONS = {flag: GRUOptions(flag) for flag in (True, False)}  # made once: a token's call asks for them


def _gru_options(config: GRUConfig, *args: Any) -> GRUOptions:
    return _GRU_OPTIONS[config.reset_after]


GRU_CELL = Cell("gru", direction_forward_loop, direction_backward_loop, _gru_options, _gru_options, static=("reset_after",))


def config_from_params(params, cls=GRUConfig, *, gates=3, recurrent=True, **structure) -> Any:
    """A cell's structure ``cls.checked(I, H, **structure)`` with I and H read from ``weight_ih_l0``
    (gates·H, I); ``bias``, ``num_layers`` or ``bidirectional`` given as None mean "as the params'
    names have it" (``bias_ih_l0``, ``weight_ih_l{k}``, ``weight_ih_l0_reverse``)."""
    needed = ["weight_ih_l0"] + (["weight_hh_l0"] if recurrent else [])
    if not isinstance(params, Mapping) or any(k not in params for k in needed):
        raise ValueError(f"params must hold {' and '.join(repr(k) for k in needed)} (PyTorch's names)")
    w = params["weight_ih_l0"]
    if getattr(w, "ndim", None) != 2 or w.shape[0] % gates:
        raise ValueError(f"params['weight_ih_l0'] must have shape ({gates}H, I); got {tuple(getattr(w, 'shape', ()))}")
    num_layers, bidirectional = stack_of(params)
    read = {"bias": "bias_ih_l0" in params, "num_layers": num_layers, "bidirectional": bidirectional}
    structure.setdefault("bias", None)
    structure.update({name: value for name, value in read.items() if name in structure and structure[name] is None})
    return cls.checked(int(w.shape[1]), int(w.shape[0]) // gates, **structure)


def _config(params, *, num_layers, bias, batch_first, bidirectional, reset_after) -> GRUConfig:
    return config_from_params(
        params, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, reset_after=reset_after
    )


def gru(
    params: Mapping[str, Any],
    x: Array,
    h0: Array = None,
    *,
    lengths: Any = None,
    num_layers: int = 1,
    bias: bool | None = None,
    bidirectional: bool = False,
    batch_first: bool = False,
    reset_after: bool = True,
    dropout: float = 0.0,
    rng: Any = None,
    xp: Any = None,
) -> tuple[Array, Array]:
    """Inference: ``(out, h_n)`` of a stacked GRU; nothing is kept for backward.

    Notes
    -----
    Shapes, by axis names (T steps, B sequences, I inputs, H hidden units, L layers, D directions):

    x: (T, B, I), (B, T, I) with ``batch_first``, or unbatched (T, I).
    h0, h_n: (L·D, B, H) or unbatched (L·D, H); ``h0=None`` means zeros.
    out: (T, B, D·H), (B, T, D·H) or (T, D·H).
    lengths: (B,) host integers in [1, T], PyTorch packed-sequence semantics.

    ``bias=None`` infers it from the params (``bias_ih_l0`` present or not). ``dropout=p`` zeroes
    each output of every layer but the last with probability p (scaled by 1/(1−p)), as PyTorch's
    ``nn.GRU(dropout=p)`` in training; masks are drawn on the arrays' device from ``rng``: a NumPy
    Generator or an int seed on any backend, or the backend's own generator (a ``jax.random`` key,
    required under ``jax.jit``; a ``torch.Generator``; a CuPy generator). See ``docs/numerics.md``.
    """
    config = _config(
        params, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, reset_after=reset_after
    )
    return infer_stack(params, x, h0, lengths, config, xp=xp, dropout=dropout, rng=rng)


def infer_stack(params, x, h0, lengths, config, *, xp, dropout=0.0, rng=None, options=None) -> tuple[Array, Array]:
    """Any cell's inference ``(out, h_n)``; under JAX, ``jax.grad`` through it runs gruxp's backward."""
    first = next(iter(params.values()))
    namespace = namespace_of(first, what="params")
    rng = randomness(rng, x, xp=namespace, device=device_of(first))  # made here: inside a custom_vjp x is traced
    differentiable = route_for(namespace).differentiable(namespace)
    if differentiable is not None:  # JAX: jax.grad through this call uses gruxp's backward

        def run(p, x, h0, *, record):
            return run_stack(p, x, h0, lengths, config, record=record, xp=xp, dropout=dropout, rng=rng, options=options)

        return differentiable(params, x, h0, run=run, backward=_backward_for_vjp, run_options={})
    out, h_n, _ = run_stack(params, x, h0, lengths, config, record=False, xp=xp, dropout=dropout, rng=rng, options=options)
    return out, h_n


def _backward_for_vjp(tape: GRUTape, d_out: Array, d_hn: Array) -> tuple[dict[str, Array], Array, Array]:
    return gru_backward(tape, d_out, d_hn)


def gru_forward(
    params: Mapping[str, Any],
    x: Array,
    h0: Array = None,
    *,
    lengths: Any = None,
    num_layers: int = 1,
    bias: bool | None = None,
    bidirectional: bool = False,
    batch_first: bool = False,
    reset_after: bool = True,
    dropout: float = 0.0,
    rng: Any = None,
    xp: Any = None,
) -> tuple[Array, Array, GRUTape]:
    """Like :func:`gru`, and also return the :class:`GRUTape` that :func:`gru_backward` needs."""
    config = _config(
        params, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, reset_after=reset_after
    )
    return run_stack(params, x, h0, lengths, config, record=True, xp=xp, dropout=dropout, rng=rng)


def gru_backward(
    tape: GRUTape, d_out: Array = None, d_hn: Array = None, *, input_grad: bool = True
) -> tuple[dict[str, Array], Array, Array]:
    """Exact gradients of Σ(out·d_out) + Σ(h_n·d_hn): ``(grads, dx, dh0)``.

    ``grads`` has the keys of the params; ``dx`` and ``dh0`` have the shapes of ``x`` and ``h0``
    (a zero h0 gets its gradient too). ``d_out`` or ``d_hn`` may be None, meaning zeros.
    ``input_grad=False`` skips the GEMM for ``dx`` (returned as None) when x is data, not a
    quantity that needs a gradient: about a sixth of a training step's GEMM work when I = H.
    """
    return backward_stack(tape, d_out, d_hn, input_grad=input_grad)


def backward_stack(tape: GRUTape, d_out: Array = None, d_hn: Array = None, *, input_grad: bool = True) -> tuple:
    """Any cell's backward through its stack: ``(grads, dx, dh0)`` (see :func:`gru_backward`)."""
    if not isinstance(tape, GRUTape):
        raise TypeError(
            f"tape must be the GRUTape returned by a forward with record (gru_forward, ...); got {type(tape).__name__}"
        )
    params, config = tape.params, tape.config
    cell: Cell = config.cell
    ref = next(iter(params.values()))
    xp, device, dtype = check_params(params, config.param_shapes(), what="tape.params")
    for name, grad, shape in (("d_out", d_out, tape.out_shape), ("d_hn", d_hn, tape.hn_shape)):
        if grad is not None:
            check_array(name, grad, xp=xp, device=device_of(ref), dtype=dtype)
            check_shape(name, grad, shape, "(the shape of the forward result it belongs to)")
    if d_out is not None:
        if tape.unbatched:
            d_out = xp.expand_dims(d_out, axis=1)
        elif config.batch_first:
            d_out = xp.permute_dims(d_out, (1, 0, 2))
    if d_hn is not None and tape.unbatched:
        d_hn = xp.expand_dims(d_hn, axis=1)
    H, D = config.hidden_size, config.num_directions
    route = route_for(xp)
    grads: dict[str, Any] = {}
    dh0s: list[Any] = [None] * (config.num_layers * D)
    d_layer = d_out
    for layer in range(config.num_layers - 1, -1, -1):
        calls = [
            BackwardCall(
                tape.layers[layer][d],
                None if d_layer is None else (d_layer if D == 1 else d_layer[..., d * H : (d + 1) * H]),
                None if d_hn is None else d_hn[layer * D + d, ...],
                _direction_params(params, layer, d),
                tape.mask,
                bool(d),
                config.bias,
                layer > 0 or input_grad,
                xp,
                cell.backward_options(config),
            )
            for d in range(D)
        ]
        d_in = None
        for direction, ((g, dx), dh0) in enumerate(route.layer_backward(cell.backward, calls)):
            suffix = direction_suffix(layer, direction)
            grads.update({short + suffix: value for short, value in g.items()})
            dh0s[layer * D + direction] = dh0
            d_in = dx if d_in is None else d_in + dx
        d_layer = d_in if tape.dropout_masks is None or layer == 0 else d_in * tape.dropout_masks[layer - 1, ...]
    dx, dh0 = d_layer, xp.stack(dh0s, axis=0)
    if tape.unbatched:
        dx, dh0 = (None if dx is None else dx[:, 0, ...]), dh0[:, 0, ...]
    elif config.batch_first and dx is not None:
        dx = xp.permute_dims(dx, (1, 0, 2))
    return {k: grads[k] for k in params}, dx, dh0
