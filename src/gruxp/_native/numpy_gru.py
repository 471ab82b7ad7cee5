"""The NumPy fast route for one reset_after GRU direction: the generic loop, with buffers.

Every line mirrors a line of :mod:`gruxp.functional._cell` / ``_sequence`` and performs the same
IEEE operations in the same order on the same values; only where results are written differs
(preallocated arrays and ``out=``), so results are bit-identical to the generic code (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..functional._cell import folded_bias
from ..functional._sequence import DirectionTape, _finish_backward, _previous_states


def _transposed(w: np.ndarray, *, rows: int) -> np.ndarray:
    return np.ascontiguousarray(w.T) if rows > 1 else w.T


def direction_forward(x, h0, p, *, mask, reverse, reset_after, record, xp):
    T, B, I = x.shape
    w_ih, w_hh = p["weight_ih"], p["weight_hh"]
    H = w_hh.shape[1]
    dtype = x.dtype
    b_in, b_hn = folded_bias(p.get("bias_ih"), p.get("bias_hh"), reset_after=True, xp=xp)
    # Multiplying by a C-contiguous copy of Wᵀ is 10-40% faster in OpenBLAS than by the transposed
    # view, and gives the same bits, except for a single row (M = 1), which NumPy hands to gemv.
    gi = np.reshape(np.reshape(x, (T * B, I)) @ _transposed(w_ih, rows=T * B), (T, B, 3 * H))
    if b_in is not None:
        np.add(gi, b_in, out=gi)
    whh_t = _transposed(w_hh, rows=B)
    hs = np.empty((T, B, H), dtype)
    if record:
        rz_all, n_all, ghn_all = np.empty((T, B, 2 * H), dtype), np.empty((T, B, H), dtype), np.empty((T, B, H), dtype)
    else:
        rz_one, n_one, ghn_one = np.empty((B, 2 * H), dtype), np.empty((B, H), dtype), np.empty((B, H), dtype)
    gh = np.empty((B, 3 * H), dtype)
    keep = None if mask is None else ~mask
    h = h0
    for t in range(T - 1, -1, -1) if reverse else range(T):
        rz, n, ghn = (rz_all[t], n_all[t], ghn_all[t]) if record else (rz_one, n_one, ghn_one)
        git = gi[t]
        np.matmul(h, whh_t, out=gh)
        np.add(git[:, : 2 * H], gh[:, : 2 * H], out=rz)  # sigmoid(gi_rz + gh_rz) = ½tanh(½a)+½
        np.multiply(rz, 0.5, out=rz)
        np.tanh(rz, out=rz)
        np.multiply(rz, 0.5, out=rz)
        np.add(rz, 0.5, out=rz)
        if b_hn is None:
            np.copyto(ghn, gh[:, 2 * H :])
        else:
            np.add(gh[:, 2 * H :], b_hn, out=ghn)
        np.multiply(rz[:, :H], ghn, out=n)  # n = tanh(r ⊙ gh_n + gi_n)
        np.add(n, git[:, 2 * H :], out=n)
        np.tanh(n, out=n)
        h_t = hs[t]
        np.subtract(h, n, out=h_t)  # h' = n + z ⊙ (h − n)
        np.multiply(rz[:, H:], h_t, out=h_t)
        np.add(n, h_t, out=h_t)
        if keep is not None:
            np.copyto(h_t, h, where=keep[t])
        h = h_t
    out = hs if mask is None else np.where(mask, hs, np.zeros((), dtype))
    if not record:
        return out, h, None
    return out, h, DirectionTape(x, h0, hs, rz_all, n_all, ghn_all)


def direction_backward(tape: DirectionTape, d_out: Any, d_hT: Any, p, *, mask, reverse, reset_after, bias, need_dx, xp):
    x, h0 = tape.x, tape.h0
    T, B, I = x.shape
    H = h0.shape[-1]
    dtype = h0.dtype
    w_hh = p["weight_hh"]
    w_r, w_z, w_n = w_hh[:H], w_hh[H : 2 * H], w_hh[2 * H :]
    h_prev = _previous_states(tape, reverse=reverse, xp=xp)
    d_i = np.empty((T, B, 3 * H), dtype)  # [d_r, d_z, d_an] per step, as the generic code stacks them
    d_ghn = np.empty((T, B, H), dtype)
    g, gz, tmp, prod = (np.empty((B, H), dtype) for _ in range(4))
    sp = np.empty((B, 2 * H), dtype)
    dh = np.zeros((B, H), dtype) if d_hT is None else np.array(d_hT, dtype=dtype, copy=True)
    dh_next = np.empty((B, H), dtype)
    keep = None if mask is None else ~mask
    for t in range(T) if reverse else range(T - 1, -1, -1):
        if d_out is None:
            np.copyto(g, dh)
        else:
            np.add(dh, d_out[t], out=g)
        if keep is not None:
            np.copyto(g, 0, where=keep[t])
        rz, n, hp = tape.rz[t], tape.n[t], h_prev[t]
        r, z = rz[:, :H], rz[:, H:]
        d_r, d_z, da_n, d_rz = d_i[t, :, :H], d_i[t, :, H : 2 * H], d_i[t, :, 2 * H :], d_i[t, :, : 2 * H]
        np.multiply(g, z, out=gz)  # gz = g ⊙ z
        np.multiply(n, n, out=tmp)  # da_n = (g − gz) ⊙ (1 − n²)
        np.subtract(1.0, tmp, out=tmp)
        np.subtract(g, gz, out=da_n)
        np.multiply(da_n, tmp, out=da_n)
        np.subtract(hp, n, out=d_z)  # dz = (h − n) ⊙ g
        np.multiply(d_z, g, out=d_z)
        np.multiply(da_n, tape.gh_n[t], out=d_r)  # dr = da_n ⊙ gh_n
        np.multiply(da_n, r, out=d_ghn[t])  # d_ghn = da_n ⊙ r
        np.subtract(1.0, rz, out=sp)  # d_{r,z} ⊙= (1 − σ) σ
        np.multiply(sp, rz, out=sp)
        np.multiply(d_rz, sp, out=d_rz)
        np.matmul(d_r, w_r, out=prod)  # dh = gz + d_r W_r + d_z W_z + d_ghn W_n
        np.add(gz, prod, out=dh_next)
        np.matmul(d_z, w_z, out=prod)
        np.add(dh_next, prod, out=dh_next)
        np.matmul(d_ghn[t], w_n, out=prod)
        np.add(dh_next, prod, out=dh_next)
        if keep is not None:
            np.copyto(dh_next, dh, where=keep[t])
        dh, dh_next = dh_next, dh
    return _finish_backward(d_i, d_ghn, tape, h_prev, p, reset_after=True, bias=bias, need_dx=need_dx, xp=xp), dh
