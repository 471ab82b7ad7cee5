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

``dgi`` and ``dgh`` are the gradients of the two pre-activation blocks. The weight gradients are
their products with the layer inputs, computed by :func:`param_grads` as one GEMM over all rows
(all time steps at once for a sequence), not per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any, NamedTuple

from .._checks import check_array, check_params, check_shape
from .._namespace import device_of, namespace_of, resolve_xp
from ._params import cell_param_shapes

__all__ = [
    "sigmoid",
    "StepCache",
    "step_forward",
    "step_backward",
    "param_grads",
    "CellTape",
    "gru_cell",
    "gru_cell_forward",
    "gru_cell_backward",
]


def sigmoid(x: Any, *, xp: ModuleType) -> Any:
    """Logistic function through tanh: within 2 eps absolute, in [0, 1], no overflow for any x."""
    return 0.5 * xp.tanh(0.5 * x) + 0.5


class StepCache(NamedTuple):
    """What one step's backward needs besides h_prev: the gate values (B, ·)."""

    rz: Any  # (B, 2H): σ(reset | update pre-activations)
    n: Any  # (B, H): candidate state
    gh_n: Any  # (B, H): W_hn h + b_hn, reset_after only (None otherwise)


def step_forward(gi: Any, h: Any, w_hh: Any, b_hh: Any, *, reset_after: bool, xp: ModuleType) -> tuple[Any, StepCache]:
    """h' from the input pre-activations ``gi`` (B, 3H) and the state ``h`` (B, H)."""
    H = h.shape[-1]
    if reset_after:
        gh = h @ xp.matrix_transpose(w_hh)
        if b_hh is not None:
            gh = gh + b_hh
        rz = sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H], xp=xp)
        gh_n = gh[:, 2 * H :]
        n = xp.tanh(gi[:, 2 * H :] + rz[:, :H] * gh_n)
    else:
        gh_rz = h @ xp.matrix_transpose(w_hh[: 2 * H, :])
        if b_hh is not None:
            gh_rz = gh_rz + b_hh[: 2 * H]
        rz = sigmoid(gi[:, : 2 * H] + gh_rz, xp=xp)
        gh_n = None
        a_n = gi[:, 2 * H :] + (rz[:, :H] * h) @ xp.matrix_transpose(w_hh[2 * H :, :])
        if b_hh is not None:
            a_n = a_n + b_hh[2 * H :]
        n = xp.tanh(a_n)
    h_new = n + rz[:, H:] * (h - n)
    return h_new, StepCache(rz, n, gh_n)


def step_backward(
    g: Any, h: Any, cache: StepCache, w_hh: Any, *, reset_after: bool, xp: ModuleType
) -> tuple[Any, Any, Any]:
    """Gradients (dgi, dgh, dh) of one step, given ``g`` = dL/dh' and the state ``h`` it started from."""
    H = h.shape[-1]
    rz, n = cache.rz, cache.n
    r, z = rz[:, :H], rz[:, H:]
    da_n = (g - g * z) * (1.0 - n * n)
    dz = g * (h - n)
    if reset_after:
        dr = da_n * cache.gh_n
        d_rz = xp.concat([dr, dz], axis=1) * (rz * (1.0 - rz))
        dgh = xp.concat([d_rz, da_n * r], axis=1)
        dh = g * z + dgh @ w_hh
    else:
        d_rh = da_n @ w_hh[2 * H :, :]
        d_rz = xp.concat([d_rh * h, dz], axis=1) * (rz * (1.0 - rz))
        dgh = xp.concat([d_rz, da_n], axis=1)
        dh = g * z + d_rh * r + d_rz @ w_hh[: 2 * H, :]
    dgi = xp.concat([d_rz, da_n], axis=1)
    return dgi, dgh, dh


def param_grads(
    dgi: Any, dgh: Any, x: Any, h: Any, r: Any, *, reset_after: bool, bias: bool, xp: ModuleType
) -> dict[str, Any]:
    """Weight and bias gradients from rows of (dgi, dgh) and the matching inputs ``x``, states ``h``.

    All arguments are 2-D with one row per (time step, sequence): one GEMM per weight in all.
    ``r`` (rows, H) is the reset gate, needed by reset_before, whose W_hn multiplies r ⊙ h.
    """
    H = h.shape[-1]
    grads = {"weight_ih": xp.matrix_transpose(dgi) @ x}
    if reset_after:
        grads["weight_hh"] = xp.matrix_transpose(dgh) @ h
    else:
        grads["weight_hh"] = xp.concat(
            [xp.matrix_transpose(dgh[:, : 2 * H]) @ h, xp.matrix_transpose(dgh[:, 2 * H :]) @ (r * h)], axis=0
        )
    if bias:
        grads["bias_ih"] = xp.sum(dgi, axis=0)
        grads["bias_hh"] = xp.sum(dgh, axis=0)
    return grads


class CellTape(NamedTuple):
    """Everything :func:`gru_cell_backward` needs, recorded by :func:`gru_cell_forward`."""

    params: Mapping[str, Any]
    x: Any  # (B, I)
    h: Any  # (B, H)
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
    gi = x @ xp.matrix_transpose(params["weight_ih"])
    if params.get("bias_ih") is not None:
        gi = gi + params["bias_ih"]
    return step_forward(gi, h, params["weight_hh"], params.get("bias_hh"), reset_after=reset_after, xp=xp)


def gru_cell(params: Mapping[str, Any], x: Any, h: Any = None, *, reset_after: bool = True, xp: Any = None) -> Any:
    """One GRU step without recording anything for backward.

    Shapes: x (B, I) or unbatched (I,); h and the result (B, H) or (H,). ``h=None`` means zeros.
    """
    xp, xb, hb, unbatched, _ = _cell_inputs(params, x, h, xp=xp)
    h_new, _ = _cell_step(params, xb, hb, reset_after=reset_after, xp=xp)
    return h_new[0, ...] if unbatched else h_new


def gru_cell_forward(
    params: Mapping[str, Any], x: Any, h: Any = None, *, reset_after: bool = True, xp: Any = None
) -> tuple[Any, CellTape]:
    """One GRU step that also returns the :class:`CellTape` for :func:`gru_cell_backward`."""
    xp, xb, hb, unbatched, _ = _cell_inputs(params, x, h, xp=xp)
    h_new, cache = _cell_step(params, xb, hb, reset_after=reset_after, xp=xp)
    tape = CellTape(dict(params), xb, hb, cache, reset_after, unbatched)
    return (h_new[0, ...] if unbatched else h_new), tape


def gru_cell_backward(tape: CellTape, dh: Any, *, xp: Any = None) -> tuple[dict[str, Any], Any, Any]:
    """Exact gradients of Σ(h'·dh): ``(grads, dx, dh_prev)``, grads keyed like the params."""
    if not isinstance(tape, CellTape):
        raise TypeError(f"tape must be the CellTape returned by gru_cell_forward; got {type(tape).__name__}")
    params, x, h = tape.params, tape.x, tape.h
    p0 = params["weight_hh"]
    xp = namespace_of(p0) if xp is None else resolve_xp(xp)
    check_array("dh", dh, xp=xp, device=device_of(p0), dtype=p0.dtype)
    check_shape("dh", dh, tuple(h.shape[1:]) if tape.unbatched else tuple(h.shape), "(the shape of the cell's output)")
    g = xp.expand_dims(dh, axis=0) if tape.unbatched else dh
    dgi, dgh, dh_prev = step_backward(g, h, tape.cache, params["weight_hh"], reset_after=tape.reset_after, xp=xp)
    bias = "bias_ih" in params
    grads = param_grads(dgi, dgh, x, h, tape.cache.rz[:, : h.shape[-1]], reset_after=tape.reset_after, bias=bias, xp=xp)
    dx = dgi @ params["weight_ih"]
    if tape.unbatched:
        dx, dh_prev = dx[0, ...], dh_prev[0, ...]
    return grads, dx, dh_prev
