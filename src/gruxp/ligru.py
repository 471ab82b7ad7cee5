"""The light GRU (Li-GRU, Ravanelli et al. 2018), as SpeechBrain's ``LiGRU`` and ``SLiGRU`` compute it.

One cell, one file: its structure, its step (forward and backward, written once), its direction
functions, its model and its declaration in :mod:`gruxp.cells`. Per step, with the projections
``gi = W x_t + b_ih`` (all T steps at once; ``layer_norm``: ``LN_γ(W x_t) + b_ih``) and
``gh = U h_{t−1}`` (``recurrent_norm``: ``LN_γ'(U h_{t−1}) + b_hh``), rows in SpeechBrain's order,
the candidate block ``a`` first, then the gate ``k``::

    a = gi_a + gh_a        k = gi_z + gh_z
    z = σ(k)               h̃ = ReLU(a) ⊙ m         (m: recurrent dropout's keep-mask, one per sequence)
    h = z ⊙ h_{t−1} + (1 − z) ⊙ h̃

No reset gate. The layer norm is :func:`gruxp.functional.layer_norm` (over the 2H features, ε = 1e-5,
biased variance, as ``torch.nn.LayerNorm``) with a learned gain, the bias playing its shift.
``recurrent_norm`` is the stabilised form (SLiGRU, Moumen & Parcollet 2023) that keeps ReLU's states
from growing without bound. Batch normalisation (SpeechBrain's default for LiGRU) is not offered: it
needs statistics over the batch and running averages, state a pure function does not keep.

Backward, with ``g = dL/dh`` at a step: ``dz = g ⊙ (h_{t−1} − h̃)``, ``dk = dz ⊙ σ'``,
``da = g ⊙ (1 − z) ⊙ m ⊙ [a > 0]``, ``dh_{t−1} = g ⊙ z + [da, dk] U`` (through the recurrent norm's
backward where it is on); the weight gradients and dx are one GEMM each over all steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from . import cells
from ._checks import check_dropout
from ._typing import Array
from .functional import (
    Cell,
    StackConfig,
    activations,
    drive_backward,
    drive_forward,
    layer_norm,
    layer_norm_backward,
    python_loop,
    sigmoid_grad,
    uniform_init,
)
from .functional._layers import dropout_mask
from .functional._params import constant_init
from .models import Recurrent, StructureField

__all__ = ["LiGRU", "LiGRUConfig", "LIGRU_CELL", "ligru_step", "ligru_step_backward"]


@dataclasses.dataclass(frozen=True)
class LiGRUConfig(StackConfig):
    """The structure of a stacked Li-GRU; the parameter shapes follow from it."""

    layer_norm: bool = False
    recurrent_norm: bool = False

    @property
    def cell(self) -> Cell:
        return LIGRU_CELL

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``weight_ih`` (2H, I_k) and ``weight_hh`` (2H, H), rows a then z; ``bias_ih`` (2H,), and
        ``bias_hh`` only with ``recurrent_norm``; the norms' gains ``ln_weight_ih``/``ln_weight_hh``."""
        H = self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for s, inputs in self.layer_directions():
            shapes["weight_ih" + s] = (2 * H, inputs)
            shapes["weight_hh" + s] = (2 * H, H)
            if self.bias:
                shapes["bias_ih" + s] = (2 * H,)
                if self.recurrent_norm:
                    shapes["bias_hh" + s] = (2 * H,)
            if self.layer_norm:
                shapes["ln_weight_ih" + s] = (2 * H,)
            if self.recurrent_norm:
                shapes["ln_weight_hh" + s] = (2 * H,)
        return shapes

    def initial_params(self, rng: Any) -> dict[str, Any]:
        """U(−1/√H, 1/√H) for weights and biases (drawn in order), ones for the norms' gains."""
        shapes = self.param_shapes()
        drawn = uniform_init({k: v for k, v in shapes.items() if not k.startswith("ln_")}, 1.0 / math.sqrt(self.hidden_size), rng)
        gains = constant_init({k: v for k, v in shapes.items() if k.startswith("ln_")}, 1.0)
        return {k: (drawn | gains)[k] for k in shapes}


# -- the step, written once: every route runs these -----------------------------------------------------
def ligru_step(a: Any, k: Any, h: Any, keep: Any, positive: Any, sigmoid: Any) -> tuple[Any, Any, Any]:
    """``(h', z, h̃)`` from the pre-activations a, k, the state h, recurrent dropout's ``keep`` (1.0
    without) and ``positive`` = [a > 0] (ReLU(a) = a ⊙ [a > 0])."""
    z = sigmoid(k)
    candidate = a * positive * keep
    return z * h + (1.0 - z) * candidate, z, candidate


def ligru_step_backward(g: Any, h: Any, z: Any, candidate: Any, keep: Any, positive: Any) -> tuple[Any, Any, Any]:
    """``(da, dk, the direct part of dL/dh)`` for g = dL/dh' (the recurrent part is ``[da, dk] U``)."""
    dz = g * (h - candidate)
    return g * (1.0 - z) * keep * positive, dz * sigmoid_grad(z), g * z


class LiGRUDirectionTape(NamedTuple):
    """One layer-direction's record, time-major in time order."""

    x: Array  # (T, B, I)
    h0: Array  # (B, H)
    hs: Any  # (T, B, H) states after each step
    a: Any  # (T, B, H) the candidate's pre-activation
    z: Any  # (T, B, H)
    candidate: Any  # (T, B, H) h̃ = ReLU(a) ⊙ m
    gh_hat: Any  # (T, B, 2H) U h normalised (recurrent_norm), else None
    gh_rstd: Any  # (T, B, 1) or None
    gi_hat: Any  # (T, B, 2H) W x normalised (layer_norm), else None
    gi_rstd: Any  # (T, B, 1) or None
    keep: Any  # (B, H) recurrent dropout's keep-mask, or None


def _positive(a: Any, xp: Any) -> Any:
    return xp.astype(a > 0, a.dtype)


def ligru_direction_forward(
    x, h0, p, *, mask, reverse, record, xp, layer_norm=False, recurrent_norm=False, keep=None, loop=python_loop
):
    """One direction of the Li-GRU: ``(out, h_T, LiGRUDirectionTape or None)``."""
    T, B, I = x.shape
    H = h0.shape[-1]
    w_ih, w_hh = p["weight_ih"], p["weight_hh"]
    v = xp.reshape(x, (T * B, I)) @ xp.matrix_transpose(w_ih)
    gi_hat = gi_rstd = None
    if layer_norm:
        gi, gi_hat, gi_rstd = _layer_norm(v, p["ln_weight_ih"], p.get("bias_ih"), xp=xp)
        gi_hat, gi_rstd = xp.reshape(gi_hat, (T, B, 2 * H)), xp.reshape(gi_rstd, (T, B, 1))
    else:
        gi = v if p.get("bias_ih") is None else v + p["bias_ih"]
    gi = xp.reshape(gi, (T, B, 2 * H))
    sigmoid, _ = activations(xp)
    m = 1.0 if keep is None else keep

    def step(h, inputs):
        (gi_t,) = inputs
        u = h @ xp.matrix_transpose(w_hh)
        gh, gh_hat, rstd = _layer_norm(u, p["ln_weight_hh"], p.get("bias_hh"), xp=xp) if recurrent_norm else (u, None, None)
        a, k = gi_t[:, :H] + gh[:, :H], gi_t[:, H:] + gh[:, H:]
        h_new, z, candidate = ligru_step(a, k, h, m, _positive(a, xp), sigmoid)
        return h_new, (a, z, candidate, gh_hat, rstd)

    out, h_T, hs, saved = drive_forward(step, h0, (gi,), mask=mask, reverse=reverse, record=record, xp=xp, loop=loop)
    if not record:
        return out, h_T, None
    a, z, candidate, gh_hat, gh_rstd = saved
    return out, h_T, LiGRUDirectionTape(x, h0, hs, a, z, candidate, gh_hat, gh_rstd, gi_hat, gi_rstd, keep)


def _layer_norm(v: Any, gain: Any, bias: Any, *, xp: Any) -> tuple[Any, Any, Any]:
    return layer_norm(v, gain, bias, xp=xp)


def _sum_rows(a: Array, *, xp: Any) -> Any:
    return xp.sum(xp.reshape(a, (-1, a.shape[-1])), axis=0)


def ligru_direction_backward(
    tape, d_out, d_hT, p, *, mask, reverse, bias, need_dx, xp, layer_norm=False, recurrent_norm=False, loop=python_loop
):
    """One direction's backward: ``((grads with short names, dx or None), dh0)``."""
    x = tape.x
    T, B, I = x.shape
    H = tape.h0.shape[-1]
    w_hh = p["weight_hh"]
    m = 1.0 if tape.keep is None else tape.keep

    def step(g, h_prev_t, inputs):
        a, z, candidate, gh_hat, rstd = inputs
        da, dk, direct = ligru_step_backward(g, h_prev_t, z, candidate, m, _positive(a, xp))
        d_gh = xp.concat([da, dk], axis=1)  # of gh, and of gi: the two add
        d_raw = layer_norm_backward(d_gh, gh_hat, rstd, p["ln_weight_hh"], xp=xp) if recurrent_norm else d_gh
        return direct + d_raw @ w_hh, (d_gh, d_raw)

    xs = (tape.a, tape.z, tape.candidate, tape.gh_hat, tape.gh_rstd)
    dh, h_prev, (d_g, d_raw) = drive_backward(step, tape, d_out, d_hT, xs, mask=mask, reverse=reverse, xp=xp, loop=loop)
    rows = T * B
    d_g2 = xp.reshape(d_g, (rows, 2 * H))
    grads = {}
    if layer_norm:
        gi_hat = xp.reshape(tape.gi_hat, (rows, 2 * H))
        d_v = layer_norm_backward(d_g2, gi_hat, xp.reshape(tape.gi_rstd, (rows, 1)), p["ln_weight_ih"], xp=xp)
        grads["ln_weight_ih"] = xp.sum(d_g2 * gi_hat, axis=0)
    else:
        d_v = d_g2
    grads["weight_ih"] = xp.matrix_transpose(d_v) @ xp.reshape(x, (rows, I))
    grads["weight_hh"] = xp.matrix_transpose(xp.reshape(d_raw, (rows, 2 * H))) @ xp.reshape(h_prev, (rows, H))
    if bias:
        grads["bias_ih"] = xp.sum(d_g2, axis=0)
    if recurrent_norm:
        grads["ln_weight_hh"] = _sum_rows(d_g * tape.gh_hat, xp=xp)
        if bias:
            grads["bias_hh"] = _sum_rows(d_g, xp=xp)
    dx = xp.reshape(d_v @ p["weight_ih"], (T, B, I)) if need_dx else None
    return (grads, dx), dh


def _prepare(config: LiGRUConfig, shape: tuple, options: Mapping[str, Any], rng: Any, xp: Any, dtype: Any, device: Any):
    """Recurrent dropout's keep-masks, one per sequence, (L·D, B, H), in training; else None."""
    rate = check_dropout("recurrent_dropout", options.get("recurrent_dropout", 0.0))
    if not rate or not options.get("training", False):
        return None
    T, B, H = shape
    what = f"recurrent_dropout={rate}"
    return dropout_mask(
        rate, (config.num_layers * config.num_directions, B, H), rng, xp=xp, dtype=dtype, device=device, what=what
    )


class LiGRUNorms(NamedTuple):
    """The Li-GRU's own backward keywords (recurrent dropout's mask is on the tape)."""

    layer_norm: bool
    recurrent_norm: bool


class LiGRUOptions(NamedTuple):
    """The Li-GRU's own forward keywords."""

    layer_norm: bool
    recurrent_norm: bool
    keep: Any  # (B, H) recurrent dropout's keep-mask for this layer-direction, or None


def _forward_options(config: LiGRUConfig, layer: int, direction: int, keep: Any) -> LiGRUOptions:
    mask = None if keep is None else keep[layer * config.num_directions + direction, ...]
    return LiGRUOptions(config.layer_norm, config.recurrent_norm, mask)


def _backward_options(config: LiGRUConfig) -> LiGRUNorms:
    return LiGRUNorms(config.layer_norm, config.recurrent_norm)


LIGRU_CELL = Cell(
    "ligru",
    ligru_direction_forward,
    ligru_direction_backward,
    _forward_options,
    _backward_options,
    _prepare,
    static=("layer_norm", "recurrent_norm"),
)


class LiGRU(Recurrent):
    """A stacked light GRU (Ravanelli et al. 2018), SpeechBrain's ``LiGRU``/``SLiGRU``: no reset gate,
    a ReLU candidate, the update gate z from the input and the state.

    ``a = W_a x + b_a + U_a h``, ``k = W_z x + b_z + U_z h``, ``z = σ(k)``, ``h̃ = ReLU(a)``,
    ``h = z ⊙ h + (1 − z) ⊙ h̃``. Parameters ``weight_ih_l{k}`` (2H, I_k), ``weight_hh_l{k}`` (2H, H),
    rows a then z, ``bias_ih_l{k}`` (2H,), and ``bias_hh_l{k}`` (2H,) only with ``recurrent_norm``.
    See ``docs/cells/ligru.md``.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, bidirectional, dropout, xp, device, dtype, seed
        As :class:`gruxp.GRU`.
    layer_norm
        Normalise the input projection: ``LN_γ(W x) + b_ih`` (gain ``ln_weight_ih_l{k}``, ones at
        first; the bias is the norm's shift), SpeechBrain's ``LiGRU(normalization="layernorm")``.
    recurrent_norm
        Normalise the recurrent projection too: ``LN_γ'(U h) + b_hh`` (``ln_weight_hh_l{k}``), the
        stabilised SLiGRU.
    recurrent_dropout
        p in [0, 1): in training mode h̃ is multiplied by a keep-mask (0 or 1/(1−p)) drawn once per
        sequence and layer-direction for the whole call, as SpeechBrain does; none in evaluation.

    Examples
    --------
    >>> import numpy as np, gruxp
    >>> model = gruxp.LiGRU(3, 5, num_layers=2, recurrent_norm=True, seed=0)
    >>> out, h_n = model(np.zeros((7, 2, 3), dtype=np.float32))
    >>> out.shape, h_n.shape
    ((7, 2, 5), (2, 2, 5))
    """

    structure_type = LiGRUConfig
    layer_norm = StructureField[bool]()
    recurrent_norm = StructureField[bool]()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        layer_norm: bool = False,
        recurrent_norm: bool = False,
        recurrent_dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
        bidirectional: bool = False,
        dropout: float = 0.0,
        xp: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
    ) -> None:
        self.recurrent_dropout = check_dropout("recurrent_dropout", recurrent_dropout)
        structure = LiGRUConfig.checked(
            input_size, hidden_size, num_layers, bias, batch_first, bidirectional, layer_norm, recurrent_norm
        )
        self._build(structure, dropout, xp, device, dtype, seed)


cells.register(
    cells.CellSpec(
        "ligru", LiGRU, LIGRU_CELL, {"layer_norm": "structure", "recurrent_norm": "structure", "recurrent_dropout": "random"}
    )
)
