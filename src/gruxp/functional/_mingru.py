"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): gates from x_t alone, trained in parallel over time.

With the projections ``k_t = W_z x_t + b_z`` and ``v_t = W_h x_t + b_h`` (rows z, h of
``weight_ih`` (2H, I))::

    z_t = σ(k_t)       h̃_t = v_t   (log_space: h̃_t = g(v_t),  g(v) = v + ½ for v ≥ 0, σ(v) below)
    h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t  =  a_t ⊙ h_{t−1} + b_t

Nothing in a step waits on the previous one but this linear recurrence, so the whole sequence is
a scan. :func:`linear_scan` runs it in two levels built from standard array operations: every
block of C ≈ √T steps at once from a zero state (C steps, each on all T/C blocks), then the block
starts (T/C steps on (B, H)), then one fused update, ``h = A ⊙ h_start + h_local``. Linear space
needs no logarithm and no division: 0 < a < 1, so products only shrink (stable at any T).
With ``log_space`` the same two levels run on logarithms, the paper's form, each block's sum
kept by ``logaddexp`` (never one global max shift, which loses every early term once the range
of log-values passes ~709 in float64, about T ≈ 700 steps). The loops of both levels are the
route's (``lax.scan`` under JAX: the program does not grow with T).

Backward is the same recurrence reversed (the adjoint), with ``λ_t = dL/dh_t``::

    λ_t = g_t + a_{t+1} λ_{t+1}        (λ_T carries d_hT)
    dk = λ ⊙ (h̃ − h_{t−1}) ⊙ z(1 − z)        dv = λ ⊙ z ⊙ g'(v)        dh0 = a_1 λ_1

and the weight gradients and dx are one GEMM each over all steps. Past a sequence's length a
step is the identity (a = 1, b = 0): the state stays, and no gradient reaches its inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from .._checks import check_bool, is_traced
from .._namespace import device_of
from .._typing import Array
from ._cell import activations, masked_state, sigmoid, sigmoid_grad
from ._params import uniform_init
from ._routes import python_loop
from ._sequence import Cell, GRUTape, config_from_params, infer_stack, previous_states, run_stack
from ._structure import StackConfig

__all__ = [
    "MinGRUConfig",
    "MinGRUDirectionTape",
    "candidate_g",
    "candidate_g_grad",
    "log_candidate_g",
    "min_gates",
    "min_gates_backward",
    "linear_step",
    "linear_scan",
    "log_linear_scan",
    "MINGRU_CELL",
    "mingru",
    "mingru_forward",
]


@dataclasses.dataclass(frozen=True)
class MinGRUConfig(StackConfig):
    """The structure of a stacked minGRU; ``log_space`` picks the paper's log-space form (h̃ = g(v))."""

    log_space: bool = False

    @property
    def cell(self) -> Cell:
        return MINGRU_CELL

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``weight_ih_l{k}[_reverse]`` (2H, I_k), rows z then h; ``bias_ih_l{k}[_reverse]`` (2H,)."""
        H = self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for s, inputs in self.layer_directions():
            shapes["weight_ih" + s] = (2 * H, inputs)
            if self.bias:
                shapes["bias_ih" + s] = (2 * H,)
        return shapes

    def initial_params(self, rng: Any) -> dict[str, Any]:
        """Host float64 draws for every parameter, in order: U(−1/√H, 1/√H), as the GRU's."""
        return uniform_init(self.param_shapes(), 1.0 / math.sqrt(self.hidden_size), rng)


# -- The element-wise part, written once -------------------------------------------------------------


def candidate_g(v: Any, *, xp: Any) -> Any:
    """The paper's g: v + ½ for v ≥ 0, σ(v) below (positive, continuous, once differentiable)."""
    return xp.where(v >= 0, v + 0.5, sigmoid(v, xp=xp))


def candidate_g_grad(v: Any, *, xp: Any) -> Any:
    """g'(v): 1 for v ≥ 0, σ(v)(1 − σ(v)) below."""
    return xp.where(v >= 0, xp.ones_like(v), sigmoid_grad(sigmoid(v, xp=xp)))


def _softplus(v: Any, *, xp: Any) -> Any:
    return xp.logaddexp(xp.zeros_like(v), v)


def log_candidate_g(v: Any, *, xp: Any) -> Any:
    """log g(v) without forming g: log(v + ½) for v ≥ 0, −softplus(−v) below."""
    return xp.where(v >= 0, xp.log(xp.maximum(v, xp.zeros_like(v)) + 0.5), -_softplus(-v, xp=xp))


def min_gates(k: Any, h_tilde: Any, sigmoid: Any) -> tuple[Any, Any, Any]:
    """``(a, b, z)`` of a step: z = σ(k), a = 1 − z, b = z ⊙ h̃ (then h' = a ⊙ h + b)."""
    z = sigmoid(k)
    return 1.0 - z, z * h_tilde, z


def linear_step(a: Any, b: Any, h: Any) -> Any:
    """One step of the recurrence: a ⊙ h + b."""
    return a * h + b


def min_gates_backward(lam: Any, h_prev: Any, z: Any, h_tilde: Any) -> tuple[Any, Any]:
    """``(dk, dh̃)`` from λ = dL/dh' and the step's h_{t−1}, z, h̃."""
    return (lam * (h_tilde - h_prev)) * sigmoid_grad(z), lam * z


# -- The scan --------------------------------------------------------------------------------------


def _block(T: int) -> int:
    """C: the power of two nearest above √T, so both levels take about √T steps."""
    return 1 << max(0, math.ceil(math.log2(max(1.0, math.sqrt(T)))))


def _blocks(a: Array, fill: float, C: int, *, xp: Any) -> Any:
    """(T, B, H) -> (C, T/C, B, H): step c of every block together, padded with ``fill`` steps."""
    T = a.shape[0]
    n = -(-T // C)
    if n * C > T:
        a = xp.concat([a, xp.full((n * C - T, *a.shape[1:]), fill, dtype=a.dtype, device=device_of(a))], axis=0)
    return xp.permute_dims(xp.reshape(a, (n, C, *a.shape[1:])), (1, 0, 2, 3))


def _unblocks(a: Array, T: int, *, xp: Any) -> Any:
    C, n = a.shape[0], a.shape[1]
    return xp.reshape(xp.permute_dims(a, (1, 0, 2, 3)), (n * C, *a.shape[2:]))[:T, ...]


def _two_level(a, b, h0, *, step, combine, fill, start, reverse, xp, loop):
    """``(hs, h_T)`` of h ← step(a_t, b_t, h) over axis 0 (from the end with ``reverse``), in two
    levels of about √T steps: every block at once from ``start`` (the identity), keeping each step's
    product of a's (``combine``); then the state each block starts from; then one update. Blocks are
    filled out with identity steps (``fill``), which leave the state as it is."""
    T = a.shape[0]
    C = _block(T)
    blocks_a, blocks_b = _blocks(a, fill[0], C, xp=xp), _blocks(b, fill[1], C, xp=xp)

    def within(carry, inputs):  # step c of every block at once
        prod, h = carry
        a_c, b_c = inputs
        prod, h = combine(a_c, prod), step(a_c, b_c, h)
        return (prod, h), (prod, h)

    _, (prods, local) = loop(within, start(blocks_a[0, ...]), (blocks_a, blocks_b), length=C, reverse=reverse, xp=xp)
    edge = 0 if reverse else C - 1  # each block's last step processed: its whole product and local state

    def across(h, inputs):  # the state each block starts from
        prod, h_local = inputs
        return step(prod, h_local, h), (h,)

    h_T, (starts,) = loop(across, h0, (prods[edge, ...], local[edge, ...]), length=prods.shape[1], reverse=reverse, xp=xp)
    return _unblocks(step(prods, local, xp.expand_dims(starts, axis=0)), T, xp=xp), h_T


def _product(a: Any, prod: Any) -> Any:
    return a * prod


def linear_scan(a: Array, b: Array, h0: Array, *, reverse: bool = False, xp: Any, loop: Any = python_loop) -> tuple[Any, Any]:
    """``(hs, h_T)`` of h_t = a_t ⊙ h_{t−1} + b_t over axis 0 of a, b (T, B, H) from h0 (B, H) (with
    ``reverse``, h_t = a_t ⊙ h_{t+1} + b_t from the end), in two levels of about √T steps each (see
    the module docstring); ``loop`` runs each level."""
    return _two_level(
        a,
        b,
        h0,
        step=linear_step,
        combine=_product,
        fill=(1.0, 0.0),
        start=lambda a0: (xp.ones_like(a0), xp.zeros_like(a0)),
        reverse=reverse,
        xp=xp,
        loop=loop,
    )


def log_linear_scan(
    log_a: Array, log_b: Array, log_h0: Array, *, reverse: bool = False, xp: Any, loop: Any = python_loop
) -> tuple[Any, Any]:
    """:func:`linear_scan` on logarithms (positive b and h0): ``(log hs, log h_T)``, each step
    log h' = logaddexp(log a + log h, log b), so every block's sums are carried by ``logaddexp``."""

    def step(la, lb, lh):
        return xp.logaddexp(la + lh, lb)

    return _two_level(
        log_a,
        log_b,
        log_h0,
        step=step,
        combine=lambda la, lprod: la + lprod,
        fill=(0.0, -math.inf),
        start=lambda a0: (xp.zeros_like(a0), xp.full_like(a0, -math.inf)),
        reverse=reverse,
        xp=xp,
        loop=loop,
    )


def _sequential(a: Array, b: Array, h0: Array, *, reverse: bool = False, xp: Any, loop: Any) -> tuple[Any, Any]:
    """The same recurrence one step at a time (the oracle of the scans, and :meth:`MinGRU.step`)."""

    def step(h, inputs):
        a_t, b_t = inputs
        h = linear_step(a_t, b_t, h)
        return h, (h,)

    h_T, (hs,) = loop(step, h0, (a, b), length=a.shape[0], reverse=reverse, xp=xp)
    return hs, h_T


# -- One direction ---------------------------------------------------------------------------------


class MinGRUDirectionTape(NamedTuple):
    x: Array  # (T, B, I)
    h0: Array  # (B, H)
    hs: Any  # (T, B, H)
    z: Any  # (T, B, H)
    v: Any  # (T, B, H) the candidate's projection (h̃ = v, or g(v) in log space)


def _projections(x, p, *, xp):
    T, B, I = x.shape
    w = p["weight_ih"]
    H = w.shape[0] // 2
    proj = xp.reshape(x, (T * B, I)) @ xp.matrix_transpose(w)
    if "bias_ih" in p:
        proj = proj + p["bias_ih"]
    proj = xp.reshape(proj, (T, B, 2 * H))
    return proj[..., :H], proj[..., H:]


def mingru_direction_forward(x, h0, p, *, mask, reverse, record, xp, log_space=False, parallel=True, loop=python_loop):
    """One direction: ``(out, h_T, MinGRUDirectionTape or None)``; ``parallel`` picks the scan (else
    the sequential loop). The reverse direction runs the same recurrence from the end."""
    k, v = _projections(x, p, xp=xp)
    h_tilde = candidate_g(v, xp=xp) if log_space else v
    sig, _ = activations(xp)
    a, b, z = min_gates(k, h_tilde, sig)
    if mask is not None:  # past a sequence's end the step is the identity
        a, b = masked_state(mask, a, xp.ones_like(a), xp.where), masked_state(mask, b, xp.zeros_like(b), xp.where)
    if not parallel:
        hs, h_T = _sequential(a, b, h0, reverse=reverse, xp=xp, loop=loop)
    elif log_space:
        log_a = -_softplus(k, xp=xp)
        log_b = -_softplus(-k, xp=xp) + log_candidate_g(v, xp=xp)
        if mask is not None:
            log_a = xp.where(mask, log_a, xp.zeros_like(log_a))
            log_b = xp.where(mask, log_b, xp.full_like(log_b, -math.inf))
        positive = h0 > 0
        log_h0 = xp.where(positive, xp.log(xp.where(positive, h0, xp.ones_like(h0))), xp.full_like(h0, -math.inf))
        log_hs, log_hT = log_linear_scan(log_a, log_b, log_h0, reverse=reverse, xp=xp, loop=loop)
        hs, h_T = xp.exp(log_hs), xp.exp(log_hT)
    else:
        hs, h_T = linear_scan(a, b, h0, reverse=reverse, xp=xp, loop=loop)
    out = hs if mask is None else xp.where(mask, hs, xp.zeros((), dtype=hs.dtype, device=device_of(hs)))
    if not record:
        return out, h_T, None
    return out, h_T, MinGRUDirectionTape(x, h0, hs, z, v)


def mingru_direction_backward(
    tape, d_out, d_hT, p, *, mask, reverse, bias, need_dx, xp, log_space=False, parallel=True, loop=python_loop
):
    """One direction's backward, the adjoint recurrence by the same scan: ``((grads, dx or None), dh0)``."""
    x, h0, hs, z, v = tape.x, tape.h0, tape.hs, tape.z, tape.v
    T, B, I = x.shape
    H = h0.shape[-1]
    g = xp.zeros_like(hs) if d_out is None else d_out
    a = 1.0 - z
    if mask is not None:
        g = xp.where(mask, g, xp.zeros_like(g))
        a = xp.where(mask, a, xp.ones_like(a))
    # λ_t = g_t + a_next λ_next, λ past the last step = d_hT: the recurrence run the other way, whose
    # coefficient at t is the a of the step that read h_t (1 at the far end, where d_hT enters)
    one = xp.ones_like(a[:1, ...])
    h_prev = previous_states(tape, reverse=reverse, xp=xp)
    if reverse:
        coeff, start = xp.concat([one, a[:-1, ...]], axis=0), T - 1
    else:
        coeff, start = xp.concat([a[1:, ...], one], axis=0), 0
    lam_T = xp.zeros_like(h0) if d_hT is None else d_hT
    lam, _ = (linear_scan if parallel else _sequential)(coeff, g, lam_T, reverse=not reverse, xp=xp, loop=loop)
    h_tilde = candidate_g(v, xp=xp) if log_space else v
    dk, dh_tilde = min_gates_backward(lam, h_prev, z, h_tilde)
    dv = dh_tilde * candidate_g_grad(v, xp=xp) if log_space else dh_tilde
    if mask is not None:
        dk, dv = (xp.where(mask, d, xp.zeros_like(d)) for d in (dk, dv))
    dh0 = a[start, ...] * lam[start, ...]
    d_proj = xp.reshape(xp.concat([dk, dv], axis=-1), (T * B, 2 * H))
    grads = {"weight_ih": xp.matrix_transpose(d_proj) @ xp.reshape(x, (T * B, I))}
    if bias:
        grads["bias_ih"] = xp.sum(d_proj, axis=0)
    dx = xp.reshape(d_proj @ p["weight_ih"], (T, B, I)) if need_dx else None
    return (grads, dx), dh0


class MinGRUOptions(NamedTuple):
    """minGRU's own keywords, forward and backward."""

    log_space: bool
    parallel: bool  # the recurrence as a scan over time (else step by step; the same results)


def _forward_options(config: MinGRUConfig, layer: int, direction: int, prepared: Any) -> MinGRUOptions:
    return MinGRUOptions(config.log_space, prepared)


def _backward_options(config: MinGRUConfig) -> MinGRUOptions:
    return MinGRUOptions(config.log_space, True)  # the adjoint as a scan; a route may run it step by step


def _prepare(config, shape, options, rng, xp, dtype, device) -> bool:
    """Whether to scan in parallel (else step by step); nothing random."""
    return bool(options.get("parallel", True))


def _check(config: MinGRUConfig, h0: Any, xp: Any) -> Any:
    """The log-space form's states are positive (g(·) > 0): a negative h0 is refused here, before any
    route runs, so every route and ``step()`` give the one answer; under ``jax.jit``, where h0's values
    cannot be read, those units start from NaN, which cannot pass for a result."""
    if not config.log_space:
        return h0
    if is_traced(h0):
        return xp.where(h0 < 0, xp.asarray(math.nan, dtype=h0.dtype), h0)
    if bool(xp.any(h0 < 0)):
        raise ValueError("h0 must be non-negative for a log-space minGRU (its states are; g(·) > 0)")
    return h0


MINGRU_CELL = Cell(
    "mingru",
    mingru_direction_forward,
    mingru_direction_backward,
    _forward_options,
    _backward_options,
    _prepare,
    _check,
    static=("log_space", "parallel"),
)


def _mingru_config(params, *, num_layers, bias, batch_first, bidirectional, log_space) -> MinGRUConfig:
    return config_from_params(
        params,
        MinGRUConfig,
        gates=2,
        recurrent=False,
        num_layers=num_layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        log_space=log_space,
    )


def mingru(
    params: Mapping[str, Any],
    x: Array,
    h0: Array = None,
    *,
    lengths: Any = None,
    num_layers: int = 1,
    bias: bool | None = None,
    bidirectional: bool = False,
    batch_first: bool = False,
    log_space: bool = False,
    parallel: bool = True,
    dropout: float = 0.0,
    rng: Any = None,
    xp: Any = None,
) -> tuple[Array, Array]:
    """Inference ``(out, h_n)`` of a stacked minGRU; shapes, ``lengths`` and ``dropout`` as :func:`gru`.
    ``parallel=False`` runs the recurrence one step at a time (the same results)."""
    config = _mingru_config(
        params, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, log_space=log_space
    )
    options = {"parallel": check_bool("parallel", parallel)}
    return infer_stack(params, x, h0, lengths, config, xp=xp, dropout=dropout, rng=rng, options=options)


def mingru_forward(
    params: Mapping[str, Any],
    x: Array,
    h0: Array = None,
    *,
    lengths: Any = None,
    num_layers: int = 1,
    bias: bool | None = None,
    bidirectional: bool = False,
    batch_first: bool = False,
    log_space: bool = False,
    parallel: bool = True,
    dropout: float = 0.0,
    rng: Any = None,
    xp: Any = None,
) -> tuple[Array, Array, GRUTape]:
    """Like :func:`mingru`, and also the tape for :func:`gru_backward` (which takes every cell's)."""
    config = _mingru_config(
        params, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, log_space=log_space
    )
    options = {"parallel": check_bool("parallel", parallel)}
    return run_stack(params, x, h0, lengths, config, record=True, xp=xp, dropout=dropout, rng=rng, options=options)
