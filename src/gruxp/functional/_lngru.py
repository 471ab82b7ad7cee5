"""The layer-normalised GRU with zoneout (Ba et al. 2016; Krueger et al. 2016), haste's form.

Layer norm without a shift, over the 3H features of each projection, with learned gains
``γ_ih``, ``γ_hh`` (3H,), then the biases and the GRU's own gates (reset_after)::

    LN_γ(v) = γ ⊙ (v − mean(v)) / sqrt(var(v) + ε)          over the last axis, ε = 1e-5
    gi = LN_γih(W_ih x) + b_ih        gh = LN_γhh(W_hh h) + b_hh
    h' = GRU gates(gi, gh, h)         (:func:`gruxp.functional.gates_forward`, rows r, z, n)
    h  ← k ⊙ h + (1 − k) ⊙ h'         zoneout: k ~ Bernoulli(rate) in training, k = rate in evaluation

Only reset_after: the norm runs over the 3H features of W_hh h, which reset_before never forms
at one moment (its n block multiplies r ⊙ h, known only after the r block's gate).

Backward of the norm, with ``v̂`` the normalised rows and ``d`` the gradient reaching γ ⊙ v̂::

    dv = rstd ⊙ (γ⊙d − mean(γ⊙d) − v̂ ⊙ mean(γ⊙d ⊙ v̂))       dγ = Σ_rows d ⊙ v̂

The input side's norm (all T steps at once) sits outside the loop; each step holds one GEMM,
the recurrent norm (a row reduction), the GRU's gate functions and the zoneout blend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

from .._checks import check_dropout
from .._typing import Array
from ._cell import activations, gates_backward, gates_forward
from ._params import constant_init, gru_param_shapes
from ._routes import python_loop
from ._sequence import (
    Cell,
    GRUConfig,
    GRUTape,
    NoOptions,
    config_from_params,
    drive_backward,
    drive_forward,
    infer_stack,
    run_stack,
)

__all__ = [
    "LN_EPS",
    "LayerNormGRUConfig",
    "LayerNormDirectionTape",
    "layer_norm",
    "layer_norm_backward",
    "ln_rstd",
    "ln_normalise",
    "ln_affine",
    "ln_input_grad",
    "zoneout_blend",
    "zoneout_blend_backward",
    "LNGRU_CELL",
    "lngru",
    "lngru_forward",
]

LN_EPS = 1e-5


# The norm is two row reductions (means over the last axis) around element-wise parts written once:
# the generic code reduces with ``xp.mean``, a fuser with its own sums, both call these.


def ln_rstd(var: Any, sqrt: Any) -> Any:
    """1 / sqrt(var + ε)."""
    return 1.0 / sqrt(var + LN_EPS)


def ln_normalise(v: Any, mean: Any, rstd: Any) -> Any:
    """v̂ = (v − mean) · rstd."""
    return (v - mean) * rstd


def ln_affine(v_hat: Any, gain: Any, bias: Any) -> Any:
    """γ ⊙ v̂ + b: the gain, then the bias, which the norm keeps in place of its own shift."""
    return v_hat * gain + bias


def ln_input_grad(dg: Any, v_hat: Any, rstd: Any, mean_dg: Any, mean_dg_v_hat: Any) -> Any:
    """dL/dv from dg = γ ⊙ dL/d(γ ⊙ v̂) and its two row means, mean(dg) and mean(dg ⊙ v̂)."""
    return rstd * (dg - mean_dg - v_hat * mean_dg_v_hat)


def layer_norm(v: Array, gain: Array, bias: Any = None, *, xp: Any) -> tuple[Any, Any, Any]:
    """``(γ ⊙ v̂ + bias, v̂, rstd)`` over the last axis of v (bias None: none added); rstd keeps that
    axis (size 1)."""
    mean = xp.mean(v, axis=-1, keepdims=True)
    centred = v - mean
    rstd = ln_rstd(xp.mean(centred * centred, axis=-1, keepdims=True), xp.sqrt)
    v_hat = ln_normalise(v, mean, rstd)
    return (v_hat * gain if bias is None else ln_affine(v_hat, gain, bias)), v_hat, rstd


def layer_norm_backward(d: Array, v_hat: Array, rstd: Array, gain: Array, *, xp: Any) -> Any:
    """dL/dv from d = dL/d(γ ⊙ v̂) (the gain's own gradient is Σ_rows d ⊙ v̂)."""
    dg = d * gain
    return ln_input_grad(dg, v_hat, rstd, xp.mean(dg, axis=-1, keepdims=True), xp.mean(dg * v_hat, axis=-1, keepdims=True))


def zoneout_blend(keep: Any, new: Any, old: Any) -> Any:
    """The state zoneout leaves: exactly ``old`` where keep = 1, ``new`` where 0; keep = rate at evaluation."""
    return keep * old + (1.0 - keep) * new


def zoneout_blend_backward(keep: Any, g: Any) -> tuple[Any, Any]:
    """``(dL/dnew, dL/dold)`` of :func:`zoneout_blend` for g = dL/d(result)."""
    return (1.0 - keep) * g, keep * g


@dataclasses.dataclass(frozen=True)
class LayerNormGRUConfig(GRUConfig):
    """The structure of a stacked layer-normalised GRU (:class:`GRUConfig`'s fields; reset_after only)."""

    @classmethod
    def checked(cls, *args: Any, **kwargs: Any) -> LayerNormGRUConfig:
        config = super().checked(*args, **kwargs)
        if not config.reset_after:
            raise ValueError(
                "reset_after must be True for LayerNormGRU: its norm runs over the 3H features of W_hh h, "
                "which reset_before (n from W_hn (r ⊙ h)) never forms at one moment"
            )
        return config

    @property
    def cell(self) -> Cell:
        return LNGRU_CELL

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = gru_param_shapes(
            self.input_size, self.hidden_size, self.num_layers, bias=self.bias, bidirectional=self.bidirectional
        )
        H = self.hidden_size
        for s, _ in self.layer_directions():
            shapes["ln_weight_ih" + s] = (3 * H,)
            shapes["ln_weight_hh" + s] = (3 * H,)
        return shapes

    def initial_params(self, rng: Any) -> dict[str, Any]:
        """The GRU's draws for its parameters, in order, and ones for the norm's gains."""
        drawn = GRUConfig(**self._asdict()).initial_params(rng) | constant_init(
            {k: v for k, v in self.param_shapes().items() if k.startswith("ln_")}, 1.0
        )
        return {k: drawn[k] for k in self.param_shapes()}


class LayerNormDirectionTape(NamedTuple):
    """One layer-direction's record, time-major in time order."""

    x: Array  # (T, B, I)
    h0: Array  # (B, H)
    hs: Any  # (T, B, H) states after each step
    r: Array  # (T, B, H)
    z: Any
    n: Any
    gh_n: Any  # (T, B, H) the candidate's recurrent block, after norm and bias
    gh_hat: Any  # (T, B, 3H) the recurrent projection, normalised
    gh_rstd: Any  # (T, B, 1)
    gi_hat: Any  # (T, B, 3H) the input projection, normalised
    gi_rstd: Any  # (T, B, 1)
    keep: Any  # (T, B, H) zoneout's draws, or None
    zoneout: float  # the rate (used where keep is None)


def _product(a: Any, b: Any) -> Any:
    return a @ b


def input_side(x: Array, p: Mapping[str, Any], *, xp: Any, matmul: Any = _product, norm: Any = None) -> tuple[Any, Any, Any]:
    """``(gi, gi_hat, gi_rstd)`` of all T steps at once: LN(W_ih x)·γ_ih + b_ih, (T, B, 3H).
    ``norm(v, gain, bias)`` (rows, 3H) -> ``(γ ⊙ v̂ + bias, v̂, rstd)``: :func:`layer_norm` by default."""
    T, B, I = x.shape
    w_ih = p["weight_ih"]
    v = matmul(xp.reshape(x, (T * B, I)), xp.matrix_transpose(w_ih))
    gi, gi_hat, gi_rstd = (norm or partial(layer_norm, xp=xp))(v, p["ln_weight_ih"], p.get("bias_ih"))
    G = w_ih.shape[0]
    return xp.reshape(gi, (T, B, G)), xp.reshape(gi_hat, (T, B, G)), xp.reshape(gi_rstd, (T, B, 1))


def lngru_direction_forward(x, h0, p, *, mask, reverse, record, xp, zoneout=0.0, zoneout_mask=None, loop=python_loop):
    """One direction of the layer-normalised GRU: ``(out, h_T, LayerNormDirectionTape or None)``."""
    H = h0.shape[-1]
    w_hh = p["weight_hh"]
    gi, gi_hat, gi_rstd = input_side(x, p, xp=xp)
    b_hh = p.get("bias_hh")
    sigmoid, tanh = activations(xp)

    def step(h, inputs):
        gi_t, keep_t = inputs
        gh, gh_hat, rstd = layer_norm(h @ xp.matrix_transpose(w_hh), p["ln_weight_hh"], b_hh, xp=xp)
        gh_n = gh[:, 2 * H :]
        h_new, r, z, n = gates_forward(
            gi_t[:, :H], gi_t[:, H : 2 * H], gi_t[:, 2 * H :], gh[:, :H], gh[:, H : 2 * H], gh_n, h, sigmoid, tanh
        )
        keep = zoneout if keep_t is None else keep_t
        if keep_t is not None or zoneout:
            h_new = zoneout_blend(keep, h_new, h)
        return h_new, (r, z, n, gh_n, gh_hat, rstd)

    xs = (gi, zoneout_mask)
    out, h_T, hs, saved = drive_forward(step, h0, xs, mask=mask, reverse=reverse, record=record, xp=xp, loop=loop)
    if not record:
        return out, h_T, None
    r, z, n, gh_n, gh_hat, gh_rstd = saved
    return out, h_T, LayerNormDirectionTape(x, h0, hs, r, z, n, gh_n, gh_hat, gh_rstd, gi_hat, gi_rstd, zoneout_mask, zoneout)


def _sum_rows(a: Array, *, xp: Any) -> Any:
    return xp.sum(xp.reshape(a, (-1, a.shape[-1])), axis=0)


def lngru_direction_backward(tape, d_out, d_hT, p, *, mask, reverse, bias, need_dx, xp, loop=python_loop):
    """One direction's backward: ``((grads with short names, dx or None), dh0)``."""
    w_hh, gain_hh = p["weight_hh"], p["ln_weight_hh"]
    rate = tape.zoneout  # a Python float, or a traced scalar under jax.jit (then the blend always runs)
    blend = tape.keep is not None or not isinstance(rate, (int, float)) or rate > 0

    def step(g, h_prev_t, inputs):
        r, z, n, gh_n, gh_hat, rstd, keep_t = inputs
        g_old = None
        if blend:
            g, g_old = zoneout_blend_backward(rate if keep_t is None else keep_t, g)
        d_r, d_z, d_an, d_ghn, gz = gates_backward(g, h_prev_t, r, z, n, gh_n)
        d_gh = xp.concat([d_r, d_z, d_ghn], axis=1)  # of LN(W_hh h)·γ + b_hh
        d_raw = layer_norm_backward(d_gh, gh_hat, rstd, gain_hh, xp=xp)
        dh_new = gz + d_raw @ w_hh
        if g_old is not None:
            dh_new = dh_new + g_old
        return dh_new, (xp.concat([d_r, d_z, d_an], axis=1), d_gh, d_raw)

    xs = (tape.r, tape.z, tape.n, tape.gh_n, tape.gh_hat, tape.gh_rstd, tape.keep)
    dh0, h_prev, (d_gi, d_gh, d_raw) = drive_backward(step, tape, d_out, d_hT, xs, mask=mask, reverse=reverse, xp=xp, loop=loop)
    return finish_backward(d_gi, d_gh, d_raw, h_prev, tape, p, bias=bias, need_dx=need_dx, xp=xp), dh0


def _gain_and_bias_grads(d: Array, v_hat: Array, *, xp: Any) -> tuple[Any, Any]:
    return _sum_rows(d * v_hat, xp=xp), _sum_rows(d, xp=xp)


def finish_backward(
    d_gi, d_gh, d_raw, h_prev, tape, p, *, bias, need_dx, xp, matmul=_product, norm_backward=None, sums=None, gh_sums=None
):
    """The work after the time loop, from the per-step gradients of gi (after the norm), of gh (after
    it) and of W_hh h (before it), all (T, B, 3H): ``(grads with short names, dx or None)``.
    ``norm_backward(d, v_hat, rstd, gain)`` is :func:`layer_norm_backward` by default; ``sums(d, v̂)``
    gives the gain's and the bias's gradients, (Σ_rows d ⊙ v̂, Σ_rows d); ``gh_sums``, those of the
    recurrent side where the loop made them (then ``d_gh`` may be None)."""
    x = tape.x
    T, B, I = x.shape
    H = h_prev.shape[-1]
    rows = T * B
    d_gi_raw = xp.reshape(
        (norm_backward or partial(layer_norm_backward, xp=xp))(d_gi, tape.gi_hat, tape.gi_rstd, p["ln_weight_ih"]), (rows, 3 * H)
    )
    sums = sums or partial(_gain_and_bias_grads, xp=xp)
    (g_ih, b_ih), (g_hh, b_hh) = sums(d_gi, tape.gi_hat), gh_sums or sums(d_gh, tape.gh_hat)
    grads = {
        "weight_ih": matmul(xp.matrix_transpose(d_gi_raw), xp.reshape(x, (rows, I))),
        "weight_hh": matmul(xp.matrix_transpose(xp.reshape(d_raw, (rows, 3 * H))), xp.reshape(h_prev, (rows, H))),
        "ln_weight_ih": g_ih,
        "ln_weight_hh": g_hh,
    }
    if bias:
        grads["bias_ih"], grads["bias_hh"] = b_ih, b_hh
    dx = xp.reshape(matmul(d_gi_raw, p["weight_ih"]), (T, B, I)) if need_dx else None
    return grads, dx


def _prepare(config: LayerNormGRUConfig, shape: tuple, options: Mapping[str, Any], rng: Any, xp: Any, dtype: Any, device: Any):
    """``(rate, masks)``: zoneout's rate and, in training, its (L·D, T, B, H) keep-draws (ones where a
    unit keeps its state) from the call's randomness ``rng``, made on ``device``."""
    rate = check_dropout("zoneout", options.get("zoneout", 0.0))
    if not rate or not options.get("training", False):
        return rate, None
    L = config.num_layers * config.num_directions
    return rate, xp.astype(rng.bernoulli((L, *shape), rate, what=f"zoneout={rate}"), dtype)


class ZoneoutOptions(NamedTuple):
    """The layer-normalised GRU's own forward keywords."""

    zoneout: float  # the rate
    zoneout_mask: Any  # (T, B, H) the direction's keep-draws in training, else None


def _forward_options(config: LayerNormGRUConfig, layer: int, direction: int, prepared: Any) -> ZoneoutOptions:
    rate, masks = prepared
    return ZoneoutOptions(float(rate), None if masks is None else masks[layer * config.num_directions + direction, ...])


def _backward_options(config: LayerNormGRUConfig) -> NoOptions:
    return NoOptions()


LNGRU_CELL = Cell(
    "lngru", lngru_direction_forward, lngru_direction_backward, _forward_options, _backward_options, _prepare, static=("zoneout",)
)


def _lngru_config(params, *, num_layers, bias, batch_first, bidirectional) -> LayerNormGRUConfig:
    return config_from_params(
        params, LayerNormGRUConfig, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional
    )


def lngru(
    params: Mapping[str, Any],
    x: Array,
    h0: Array = None,
    *,
    lengths: Any = None,
    num_layers: int = 1,
    bias: bool | None = None,
    bidirectional: bool = False,
    batch_first: bool = False,
    dropout: float = 0.0,
    zoneout: float = 0.0,
    training: bool = True,
    rng: Any = None,
    xp: Any = None,
) -> tuple[Array, Array]:
    """Inference ``(out, h_n)`` of a stacked layer-normalised GRU; shapes, ``lengths`` and ``dropout``
    as :func:`gru`. ``zoneout=rate``: with ``training``, each unit keeps its previous state with
    probability rate (draws from ``rng``); without, the state is the expectation,
    rate·h + (1 − rate)·h'. Parameters: the GRU's plus ``ln_weight_ih_l{k}``, ``ln_weight_hh_l{k}`` (3H,)."""
    config = _lngru_config(params, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    options = {"zoneout": zoneout, "training": training}
    return infer_stack(params, x, h0, lengths, config, xp=xp, dropout=dropout, rng=rng, options=options)


def lngru_forward(
    params: Mapping[str, Any],
    x: Array,
    h0: Array = None,
    *,
    lengths: Any = None,
    num_layers: int = 1,
    bias: bool | None = None,
    bidirectional: bool = False,
    batch_first: bool = False,
    dropout: float = 0.0,
    zoneout: float = 0.0,
    training: bool = True,
    rng: Any = None,
    xp: Any = None,
) -> tuple[Array, Array, GRUTape]:
    """Like :func:`lngru`, and also the tape for :func:`gru_backward` (which takes every cell's)."""
    config = _lngru_config(params, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    options = {"zoneout": zoneout, "training": training}
    return run_stack(params, x, h0, lengths, config, record=True, xp=xp, dropout=dropout, rng=rng, options=options)
