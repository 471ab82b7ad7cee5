"""An independent float64 NumPy GRU, written from the equations and nothing else.

Deliberately unlike gruxp's code: one sequence and one step at a time, gates taken by name from
the weight rows, the logistic function spelled out, variable lengths handled by truncating each
sequence (not by masks), the reverse direction by reversing the truncated sequence.
"""

from __future__ import annotations

import numpy as np


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def cell(p, x, h, *, reset_after=True, suffix=""):
    """h' for one sequence: x (I,), h (H,)."""
    H = h.shape[0]
    W, U = p["weight_ih" + suffix], p["weight_hh" + suffix]
    b = p.get("bias_ih" + suffix, np.zeros(3 * H))
    c = p.get("bias_hh" + suffix, np.zeros(3 * H))
    rows = {g: slice(k * H, (k + 1) * H) for k, g in enumerate("rzn")}
    r = _sigmoid(W[rows["r"]] @ x + b[rows["r"]] + U[rows["r"]] @ h + c[rows["r"]])
    z = _sigmoid(W[rows["z"]] @ x + b[rows["z"]] + U[rows["z"]] @ h + c[rows["z"]])
    if reset_after:
        n = np.tanh(W[rows["n"]] @ x + b[rows["n"]] + r * (U[rows["n"]] @ h + c[rows["n"]]))
    else:
        n = np.tanh(W[rows["n"]] @ x + b[rows["n"]] + U[rows["n"]] @ (r * h) + c[rows["n"]])
    return (1.0 - z) * n + z * h


def gru(p, x, h0=None, *, num_layers=1, bidirectional=False, reset_after=True, lengths=None):
    """Time-major x (T, B, I) -> out (T, B, D·H), h_n (L·D, B, H)."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}
    T, B, _ = x.shape
    H = p["weight_hh_l0"].shape[1]
    D = 2 if bidirectional else 1
    if h0 is None:
        h0 = np.zeros((num_layers * D, B, H))
    lengths = [T] * B if lengths is None else list(lengths)
    out = np.zeros((T, B, D * H))
    h_n = np.zeros((num_layers * D, B, H))
    for b in range(B):
        L = lengths[b]
        seq = np.asarray(x[:L, b, :], dtype=np.float64)
        for layer in range(num_layers):
            outs = []
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                h = np.asarray(h0[layer * D + d, b], dtype=np.float64)
                steps = range(L - 1, -1, -1) if d else range(L)
                o = np.zeros((L, H))
                for t in steps:
                    h = cell(p, seq[t], h, reset_after=reset_after, suffix=suffix)
                    o[t] = h
                outs.append(o)
                h_n[layer * D + d, b] = h
            seq = np.concatenate(outs, axis=1)
        out[:L, b, :] = seq
    return out, h_n
