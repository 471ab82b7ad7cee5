"""One GRU step, forward and backward side by side, and the cell built on it.

Equations (gate rows r, z, n as in PyTorch; ``gi = W_ih x + b_ih``, ``gh = W_hh h + b_hh``)::

    r  = σ(gi_r + gh_r)            z = σ(gi_z + gh_z)
    n  = tanh(gi_n + r ⊙ gh_n)                         reset_after=True  (PyTorch, cuDNN, Keras default)
    n  = tanh(gi_n + W_hn (r ⊙ h) + b_hn)              reset_after=False (Cho et al. 2014)
    h' = (1 − z) ⊙ n + z ⊙ h  =  n + z ⊙ (h − n)

σ(x) = ½ tanh(½x) + ½ cannot overflow (``1/(1+exp(-x))`` warns for x ≈ -100 in float32); its
error is below 2 eps in absolute terms, which is what a gate multiplying O(1) values needs.

Backward mirrors forward. With ``g`` the gradient arriving at h'::

    dn = g ⊙ (1 − z)        dz = g ⊙ (h − n)        da_n = dn ⊙ (1 − n²)
    reset_after:   dr = da_n ⊙ gh_n;  dgh = [da_r, da_z, da_n ⊙ r]
    reset_before:  d(r⊙h) = da_n W_hn;  dr = d(r⊙h) ⊙ h;  dgh = [da_r, da_z, da_n]
    da_{r,z} = d{r,z} ⊙ σ' = d{r,z} ⊙ {r,z}(1 − {r,z})          dgi = [da_r, da_z, da_n]
    dL/dh = g ⊙ z + dgh W_hh      (reset_after: one (B, 3H) @ (3H, H) GEMM)

Each step is its GEMMs plus a pure element-wise part written once, :func:`gates_forward` and
:func:`gates_backward` (and the pieces reset_before calls around its extra GEMM). The generic code
calls them on arrays; a fuser compiles the same functions (see :mod:`gruxp._native`).

``dgi`` and ``dgh`` are the gradients of the two pre-activation blocks. The weight gradients are
their products with the layer inputs, computed by :func:`param_grads` as one GEMM over all rows
(all time steps at once for a sequence), not per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from types import ModuleType
from typing import Any, NamedTuple

from .._checks import check_array, check_params, check_shape
from .._namespace import device_of, namespace_of, resolve_xp
from .._typing import Array
from ._params import cell_param_shapes

__all__ = [
    "sigmoid",
    "activations",
    "reset_update_gates",
    "candidate_blend",
    "gates_forward",
    "sigmoid_grad",
    "tanh_grad",
    "candidate_blend_backward",
    "gates_backward",
    "StepCache",
    "StepGrads",
    "folded_bias",
    "step_forward",
    "step_backward",
    "masked_state",
    "param_grads",
    "input_grad",
    "CellTape",
    "gru_cell",
    "gru_cell_forward",
    "gru_cell_backward",
]


def sigmoid(x: Array, *, xp: ModuleType) -> Any:
    """Logistic function through tanh: within 2 eps absolute, in [0, 1], no overflow for any x."""
    return 0.5 * xp.tanh(0.5 * x) + 0.5


def activations(xp: ModuleType) -> tuple[Callable, Callable]:
    """``(sigmoid, tanh)`` of namespace ``xp``, the primitives the gate functions below take."""
    return partial(sigmoid, xp=xp), xp.tanh


# -- The element-wise part of a step, written once ---------------------------------------------------
# Pure functions of same-shaped operands (one (B, H) block per gate, or scalars): no slicing, no GEMM,
# no output buffers, no namespace. The generic code calls them on arrays with the namespace's
# activations; a fuser compiles the very same functions over one element (numba on the CPU, see
# gruxp._native) with its own vectorisable activations. They call nothing but their arguments and
# each other, so that a compiler can inline them.


def reset_update_gates(gi_r: Any, gi_z: Any, gh_r: Any, gh_z: Any, sigmoid: Callable) -> tuple[Array, Array]:
    """``(r, z)`` from the input and recurrent pre-activations of the reset and update gates."""
    return sigmoid(gi_r + gh_r), sigmoid(gi_z + gh_z)


def candidate_blend(a_n: Any, z: Any, h: Array, tanh: Callable) -> tuple[Array, Array]:
    """``(h', n)``: the candidate n = tanh(a_n) and the new state h' = n + z ⊙ (h − n)."""
    n = tanh(a_n)
    return n + z * (h - n), n


def gates_forward(
    gi_r: Any, gi_z: Any, gi_n: Any, gh_r: Any, gh_z: Any, gh_n: Any, h: Array, sigmoid: Callable, tanh: Callable
) -> tuple[Any, Any, Any, Any]:
    """``(h', r, z, n)`` of a reset_after step from its six pre-activation blocks and h.

    ``gh_n`` = W_hn h + b_hn (the reset gate multiplies it). reset_before puts a GEMM between r and
    n, so its step calls :func:`reset_update_gates` and :func:`candidate_blend` around that GEMM.
    """
    r, z = reset_update_gates(gi_r, gi_z, gh_r, gh_z, sigmoid)
    h_new, n = candidate_blend(gi_n + r * gh_n, z, h, tanh)
    return h_new, r, z, n


def sigmoid_grad(s: Any) -> Any:
    """σ' in terms of σ's output s: (1 − s) s."""
    return (1.0 - s) * s


def tanh_grad(t: Any) -> Any:
    """tanh' in terms of tanh's output t: 1 − t²."""
    return 1.0 - t * t


def candidate_blend_backward(
    g: Array, h: Array, z: Any, n: Any, dsigmoid: Callable = sigmoid_grad, dtanh: Callable = tanh_grad
) -> tuple[Any, Any, Any]:
    """Backward of :func:`candidate_blend` (and of z's sigmoid) for g = dL/dh'.

    Returns ``(d_an, d_z, gz)``: the gradients of the candidate's and the update gate's
    pre-activations, and g ⊙ z, the part of dL/dh that bypasses the gates. ``dsigmoid`` and
    ``dtanh`` are the activations' derivatives from their outputs (a fuser may pass its own,
    typed like the operands).
    """
    gz = g * z
    return (g - gz) * dtanh(n), ((h - n) * g) * dsigmoid(z), gz


def gates_backward(
    g: Array, h: Array, r: Array, z: Any, n: Any, gh_n: Any, dsigmoid: Callable = sigmoid_grad, dtanh: Callable = tanh_grad
) -> tuple[Any, Any, Any, Any, Any]:
    """Backward of :func:`gates_forward`: ``(d_r, d_z, d_an, d_ghn, gz)``.

    d_r, d_z, d_an are the gradients of the gate pre-activations (input and recurrent sides alike,
    except the candidate's recurrent block, whose gradient is d_ghn = d_an ⊙ r). Then
    dL/dh = gz + [d_r, d_z, d_ghn] W_hh, one GEMM.
    """
    d_an, d_z, gz = candidate_blend_backward(g, h, z, n, dsigmoid, dtanh)
    return (d_an * gh_n) * dsigmoid(r), d_z, d_an, d_an * r, gz


class StepCache(NamedTuple):
    """What one step's backward needs besides h_prev: the gate values (B, H)."""

    r: Array  # σ(reset pre-activation)
    z: Any  # σ(update pre-activation)
    n: Any  # candidate state
    gh_n: Any  # W_hn h + b_hn, reset_after only (None otherwise)


class StepGrads(NamedTuple):
    """One step's gradients: pre-activation gradients of the gates, and dL/dh."""

    d_r: Any  # (B, H) of the reset gate's pre-activation (input and recurrent alike)
    d_z: Any  # (B, H) of the update gate's pre-activation
    d_an: Any  # (B, H) of the candidate's pre-activation: the input block W_in x + b_in
    d_ghn: Any  # (B, H) of the recurrent candidate block: da_n ⊙ r (reset_after) or da_n (reset_before)
    dh: Array  # (B, H) of the state the step started from


def folded_bias(b_ih: Array, b_hh: Array, *, reset_after: bool, xp: ModuleType) -> tuple[Array, Array]:
    """(input-side bias, b_hn kept inside the step): recurrent biases outside the reset product are
    added once to all T·B input rows instead of once per step."""
    if b_ih is None:
        return None, None
    if not reset_after:
        return b_ih + b_hh, None
    H = b_hh.shape[0] // 3
    return xp.concat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]]), b_hh[2 * H :]


def step_forward(gi: Array, h: Array, w_hh: Array, b_hn: Array, *, reset_after: bool, xp: ModuleType) -> tuple[Any, StepCache]:
    """h' from the input pre-activations ``gi`` (B, 3H) (with :func:`folded_bias` added) and ``h`` (B, H)."""
    H = h.shape[-1]
    sigmoid, tanh = activations(xp)
    gi_r, gi_z, gi_n = gi[:, :H], gi[:, H : 2 * H], gi[:, 2 * H :]
    if reset_after:
        gh = h @ xp.matrix_transpose(w_hh)
        gh_n = gh[:, 2 * H :] if b_hn is None else gh[:, 2 * H :] + b_hn
        h_new, r, z, n = gates_forward(gi_r, gi_z, gi_n, gh[:, :H], gh[:, H : 2 * H], gh_n, h, sigmoid, tanh)
        return h_new, StepCache(r, z, n, gh_n)
    gh = h @ xp.matrix_transpose(w_hh[: 2 * H, :])
    r, z = reset_update_gates(gi_r, gi_z, gh[:, :H], gh[:, H:], sigmoid)
    h_new, n = candidate_blend(gi_n + (r * h) @ xp.matrix_transpose(w_hh[2 * H :, :]), z, h, tanh)
    return h_new, StepCache(r, z, n, None)


def step_backward(g: Array, h: Array, cache: StepCache, w_hh: Array, *, reset_after: bool, xp: ModuleType) -> StepGrads:
    """Gradients of one step, given ``g`` = dL/dh' and the state ``h`` it started from.

    The recurrent part of dL/dh is one GEMM: [d_r, d_z, d_ghn] (B, 3H) @ W_hh (3H, H).
    """
    H = h.shape[-1]
    if reset_after:
        d_r, d_z, d_an, d_ghn, gz = gates_backward(g, h, cache.r, cache.z, cache.n, cache.gh_n)
        dh = gz + xp.concat([d_r, d_z, d_ghn], axis=1) @ w_hh
        return StepGrads(d_r, d_z, d_an, d_ghn, dh)
    d_an, d_z, gz = candidate_blend_backward(g, h, cache.z, cache.n)
    d_rh = d_an @ w_hh[2 * H :, :]  # gradient of r ⊙ h
    d_r = (d_rh * h) * sigmoid_grad(cache.r)
    dh = gz + xp.concat([d_r, d_z], axis=1) @ w_hh[: 2 * H, :] + d_rh * cache.r
    return StepGrads(d_r, d_z, d_an, d_an, dh)


def masked_state(live: Any, new: Any, old: Any, select: Callable) -> Any:
    """What a step leaves in a quantity carried through time: ``new`` while the sequence runs,
    ``old`` past its end. The state (forward) and dL/dh (backward) stay frozen so, and the gradient
    reaching a step past the end is zero (``old`` = 0). ``select`` is the namespace's ``where``, or
    a fuser's scalar ``new if live else old``: the one definition of what ``lengths`` means."""
    return select(live, new, old)


def _product(a: Any, b: Any) -> Any:
    return a @ b


def param_grads(
    d_i: Array,
    d_h: Array,
    x: Array,
    h: Array,
    r: Array,
    *,
    reset_after: bool,
    bias: bool,
    xp: ModuleType,
    matmul: Callable | None = None,
) -> dict[str, Any]:
    """Weight and bias gradients from the stacked pre-activation gradients and the matching inputs.

    All arguments are 2-D with one row per (time step, sequence), so each weight takes one GEMM
    (reset_before's W_hh two: its n block multiplies r ⊙ h). ``d_i`` (rows, 3H) = [d_r, d_z, d_an],
    the input side's; ``d_h`` (rows, 3H) = [d_r, d_z, d_ghn], the recurrent side's (the left operand
    of the backward step's GEMM; reset_before: d_i itself); ``x`` (rows, I); ``h`` (rows, H) the states
    the steps started from; ``r`` (rows, H) the reset gate (reset_before only; else None).
    ``d_h`` may also be d_ghn alone, (rows, H): its r and z blocks are then d_i's.
    reset_after: the same block of columns of d_i and d_h gives the gradients' matching rows (a
    route may so cut these GEMMs into pieces). ``matmul(a, b)`` makes every product (default ``@``).
    """
    matmul = matmul or _product
    H = h.shape[-1]
    if tuple(d_h.shape) == (d_i.shape[0], H) and d_i.shape[1] == 3 * H:
        d_h = xp.concat([d_i[:, : 2 * H], d_h], axis=1)
    if tuple(d_h.shape) != tuple(d_i.shape):
        raise ValueError(f"d_h must have the shape of d_i, (rows, 3H) = {tuple(d_i.shape)}, or (rows, H); got {tuple(d_h.shape)}")
    d_hh = xp.matrix_transpose(d_h)
    grads = {
        "weight_ih": matmul(xp.matrix_transpose(d_i), x),
        "weight_hh": matmul(d_hh, h)
        if reset_after
        else xp.concat([matmul(d_hh[: 2 * H, :], h), matmul(d_hh[2 * H :, :], r * h)], axis=0),
    }
    if bias:
        # Column sums as a GEMV with a ones vector: BLAS is several times faster than a reduction
        # over the long axis 0 (T·B rows), and the result is as exact.
        ones = xp.ones((d_i.shape[0],), dtype=d_i.dtype, device=device_of(d_i))
        grads["bias_ih"] = matmul(ones, d_i)
        grads["bias_hh"] = matmul(ones, d_h) if reset_after else grads["bias_ih"]
    return grads


def input_grad(d_i: Array, w_ih: Array, *, matmul: Callable | None = None) -> Any:
    """dL/dx (rows, I) from the input side's pre-activation gradients ``d_i`` (rows, 3H)."""
    return (matmul or _product)(d_i, w_ih)


class CellTape(NamedTuple):
    """Everything :func:`gru_cell_backward` needs, recorded by :func:`gru_cell_forward`."""

    params: Mapping[str, Any]
    x: Array  # (B, I)
    h: Array  # (B, H)
    cache: StepCache
    reset_after: bool
    unbatched: bool
    owner: Any = None  # set by gruxp.GRUCell so that a tape cannot cross models


def _cell_inputs(params, x, h, *, xp):
    """Validate and batch the cell's inputs; return (xp, x, h, unbatched, bias)."""
    if not isinstance(params, Mapping) or "weight_ih" not in params or "weight_hh" not in params:
        raise ValueError("params must hold 'weight_ih' and 'weight_hh' (and optionally 'bias_ih', 'bias_hh')")
    three_h, input_size = params["weight_ih"].shape
    H = three_h // 3
    bias = "bias_ih" in params or "bias_hh" in params
    p_xp, device, dtype = check_params(params, cell_param_shapes(input_size, H, bias=bias))
    xp = p_xp if xp is None else resolve_xp(xp)
    if xp is not p_xp:
        raise TypeError("xp does not match the namespace of params")
    check_array("x", x, xp=xp, device=device, dtype=dtype)
    if x.ndim not in (1, 2) or x.shape[-1] != input_size:
        raise ValueError(f"x must have shape (B, {input_size}) or unbatched ({input_size},); got {tuple(x.shape)}")
    unbatched = x.ndim == 1
    B = 1 if unbatched else x.shape[0]
    if B < 1:
        raise ValueError(f"x must hold at least one sequence; got B={B} (shape {tuple(x.shape)})")
    if h is None:
        h = xp.zeros((B, H), dtype=dtype, device=device_of(x))
    else:
        check_array("h", h, xp=xp, device=device, dtype=dtype)
        check_shape("h", h, (H,) if unbatched else (B, H), "(H,) for unbatched x" if unbatched else "(B, H)")
        if unbatched:
            h = xp.expand_dims(h, axis=0)
    if unbatched:
        x = xp.expand_dims(x, axis=0)
    return xp, x, h, unbatched, bias


def _cell_step(params, x, h, *, reset_after, xp):
    b_in, b_hn = folded_bias(params.get("bias_ih"), params.get("bias_hh"), reset_after=reset_after, xp=xp)
    gi = x @ xp.matrix_transpose(params["weight_ih"])
    if b_in is not None:
        gi = gi + b_in
    return step_forward(gi, h, params["weight_hh"], b_hn, reset_after=reset_after, xp=xp)


def gru_cell(params: Mapping[str, Any], x: Array, h: Array = None, *, reset_after: bool = True, xp: Any = None) -> Any:
    """One GRU step without recording anything for backward.

    Shapes: x (B, I) or unbatched (I,); h and the result (B, H) or (H,). ``h=None`` means zeros.
    """
    xp, xb, hb, unbatched, _ = _cell_inputs(params, x, h, xp=xp)
    h_new, _ = _cell_step(params, xb, hb, reset_after=reset_after, xp=xp)
    return h_new[0, ...] if unbatched else h_new


def gru_cell_forward(
    params: Mapping[str, Any], x: Array, h: Array = None, *, reset_after: bool = True, xp: Any = None
) -> tuple[Any, CellTape]:
    """One GRU step that also returns the :class:`CellTape` for :func:`gru_cell_backward`."""
    xp, xb, hb, unbatched, _ = _cell_inputs(params, x, h, xp=xp)
    h_new, cache = _cell_step(params, xb, hb, reset_after=reset_after, xp=xp)
    tape = CellTape(dict(params), xb, hb, cache, reset_after, unbatched)
    return (h_new[0, ...] if unbatched else h_new), tape


def gru_cell_backward(tape: CellTape, dh: Array, *, xp: Any = None) -> tuple[dict[str, Array], Array, Array]:
    """Exact gradients of Σ(h'·dh): ``(grads, dx, dh_prev)``, grads keyed like the params."""
    if not isinstance(tape, CellTape):
        raise TypeError(f"tape must be the CellTape returned by gru_cell_forward; got {type(tape).__name__}")
    params, x, h = tape.params, tape.x, tape.h
    p0 = params["weight_hh"]
    xp = namespace_of(p0) if xp is None else resolve_xp(xp)
    check_array("dh", dh, xp=xp, device=device_of(p0), dtype=p0.dtype)
    check_shape("dh", dh, tuple(h.shape[1:]) if tape.unbatched else tuple(h.shape), "(the shape of the cell's output)")
    g = xp.expand_dims(dh, axis=0) if tape.unbatched else dh
    step = step_backward(g, h, tape.cache, params["weight_hh"], reset_after=tape.reset_after, xp=xp)
    d_i = xp.concat([step.d_r, step.d_z, step.d_an], axis=1)
    d_h = xp.concat([step.d_r, step.d_z, step.d_ghn], axis=1) if tape.reset_after else d_i
    bias = "bias_ih" in params
    grads = param_grads(d_i, d_h, x, h, tape.cache.r, reset_after=tape.reset_after, bias=bias, xp=xp)
    dx, dh_prev = input_grad(d_i, params["weight_ih"]), step.dh
    if tape.unbatched:
        dx, dh_prev = dx[0, ...], dh_prev[0, ...]
    return grads, dx, dh_prev
