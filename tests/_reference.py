"""An independent float64 GRU, written from the equations and nothing else.

Deliberately unlike gruxp's code: one sequence and one step at a time, gates taken by name from
the weight rows, the logistic function spelled out, variable lengths handled by truncating each
sequence (not by masks), the reverse direction by reversing the truncated sequence.

It runs on NumPy (``lib=np``) or on PyTorch tensors (``lib=torch``), where autograd then gives
gradients that owe nothing to gruxp's hand-written backward: :func:`torch_gradients`.
"""

from __future__ import annotations

import numpy as np


def cell(p, x, h, *, reset_after=True, suffix="", lib=np):
    """h' for one sequence: x (I,), h (H,)."""
    H = h.shape[0]
    sigmoid = lambda a: 1.0 / (1.0 + lib.exp(-a))  # noqa: E731
    W, U = p["weight_ih" + suffix], p["weight_hh" + suffix]
    b = p.get("bias_ih" + suffix, lib.zeros(3 * H, dtype=lib.float64))
    c = p.get("bias_hh" + suffix, lib.zeros(3 * H, dtype=lib.float64))
    rows = {g: slice(k * H, (k + 1) * H) for k, g in enumerate("rzn")}
    r = sigmoid(W[rows["r"]] @ x + b[rows["r"]] + U[rows["r"]] @ h + c[rows["r"]])
    z = sigmoid(W[rows["z"]] @ x + b[rows["z"]] + U[rows["z"]] @ h + c[rows["z"]])
    if reset_after:
        n = lib.tanh(W[rows["n"]] @ x + b[rows["n"]] + r * (U[rows["n"]] @ h + c[rows["n"]]))
    else:
        n = lib.tanh(W[rows["n"]] @ x + b[rows["n"]] + U[rows["n"]] @ (r * h) + c[rows["n"]])
    return (1.0 - z) * n + z * h


def gru(p, x, h0=None, *, num_layers=1, bidirectional=False, reset_after=True, lengths=None, lib=np):
    """Time-major x (T, B, I) -> out (T, B, D·H), h_n (L·D, B, H)."""
    if lib is np:
        p = {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}
    T, B, _ = x.shape
    H = p["weight_hh_l0"].shape[1]
    D = 2 if bidirectional else 1
    if h0 is None:
        h0 = lib.zeros((num_layers * D, B, H), dtype=lib.float64)
    lengths = [T] * B if lengths is None else [int(n) for n in lengths]
    out = lib.zeros((T, B, D * H), dtype=lib.float64)
    h_n = lib.zeros((num_layers * D, B, H), dtype=lib.float64)
    for b in range(B):
        L = lengths[b]
        seq = x[:L, b, :]
        for layer in range(num_layers):
            outs = []
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                h = h0[layer * D + d, b]
                steps = range(L - 1, -1, -1) if d else range(L)
                o = [None] * L
                for t in steps:
                    h = cell(p, seq[t], h, reset_after=reset_after, suffix=suffix, lib=lib)
                    o[t] = h
                outs.append(lib.stack(o))
                h_n[layer * D + d, b] = h
            seq = lib.concatenate(outs, axis=1)
        out[:L, b, :] = seq
    return out, h_n


def torch_gradients(params, x, h0, d_out, d_hn, **options):
    """Gradients of Σ out·d_out + Σ h_n·d_hn by PyTorch autograd through :func:`gru` (all host
    float64, time-major): ``{param: grad, "x": dx, "h0": dh0}``."""
    import torch

    leaves = {
        k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in {**params, "x": x, "h0": h0}.items()
    }
    p = {k: v for k, v in leaves.items() if k not in ("x", "h0")}
    out, h_n = gru(p, leaves["x"], leaves["h0"], lib=torch, **options)
    loss = (out * torch.from_numpy(d_out)).sum() + (h_n * torch.from_numpy(d_hn)).sum()
    loss.backward()
    return {k: v.grad.numpy() for k, v in leaves.items()}
