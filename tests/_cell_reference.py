"""Independent references for the new cells: their equations written out in PyTorch, step by step,
differentiated by autograd. Nothing here imports gruxp."""

import numpy as np


def _torch():
    import torch

    return torch


def _run(step, params, x, h0, *, num_layers, bidirectional, lengths, gates):
    """A stacked run of ``step(p, suffix, x_all, h, t) -> h'`` in time-major float64 torch tensors."""
    torch = _torch()
    T = x.shape[0]
    D = 2 if bidirectional else 1
    live = None if lengths is None else torch.as_tensor(np.arange(T)[:, None] < np.asarray(lengths)[None, :])[..., None]
    layer_in, finals = x, []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            pre = gates(params, suffix, layer_in)
            h = h0[layer * D + d]
            out = [None] * T
            for t in range(T - 1, -1, -1) if d else range(T):
                new = step(params, suffix, pre, h, t)
                h = new if live is None else torch.where(live[t], new, h)
                out[t] = h if live is None else torch.where(live[t], h, torch.zeros_like(h))
            outs.append(torch.stack(out))
            finals.append(h)
        layer_in = torch.cat(outs, dim=-1)
    return layer_in, torch.stack(finals)


def lngru(params, x, h0, *, num_layers=1, bidirectional=False, lengths=None, zoneout=0.0, keep=None):
    """haste's LayerNormGRU in PyTorch's gate order: F.layer_norm (no shift, ε = 1e-5) of each
    projection, biases after it; zoneout ``keep`` (L·D, T, B, H) draws, or the rate's expectation."""
    torch = _torch()
    F = torch.nn.functional
    H = h0.shape[-1]
    index = {}

    def gates(p, s, layer_in):
        index[s] = len(index)
        return F.layer_norm(layer_in @ p["weight_ih" + s].T, (3 * H,), weight=p["ln_weight_ih" + s], eps=1e-5) + p.get(
            "bias_ih" + s, 0.0
        )

    def step(p, s, gi, h, t):
        gh = F.layer_norm(h @ p["weight_hh" + s].T, (3 * H,), weight=p["ln_weight_hh" + s], eps=1e-5) + p.get("bias_hh" + s, 0.0)
        r = torch.sigmoid(gi[t, :, :H] + gh[:, :H])
        z = torch.sigmoid(gi[t, :, H : 2 * H] + gh[:, H : 2 * H])
        n = torch.tanh(gi[t, :, 2 * H :] + r * gh[:, 2 * H :])
        new = (1 - z) * n + z * h
        k = zoneout if keep is None else keep[index[s], t]
        return k * h + (1 - k) * new

    return _run(step, params, x, h0, num_layers=num_layers, bidirectional=bidirectional, lengths=lengths, gates=gates)


def mingru(params, x, h0, *, num_layers=1, bidirectional=False, lengths=None, log_space=False):
    """The paper's minGRU, sequential: z = σ(k), h̃ = v (or g(v)), h = (1 − z) h + z h̃."""
    torch = _torch()
    H = h0.shape[-1]

    def gates(p, s, layer_in):
        pre = layer_in @ p["weight_ih" + s].T + p.get("bias_ih" + s, 0.0)
        v = pre[..., H:]
        h_tilde = torch.where(v >= 0, v + 0.5, torch.sigmoid(v)) if log_space else v
        return torch.sigmoid(pre[..., :H]), h_tilde

    def step(p, s, pre, h, t):
        z, h_tilde = pre
        return (1 - z[t]) * h + z[t] * h_tilde[t]

    return _run(step, params, x, h0, num_layers=num_layers, bidirectional=bidirectional, lengths=lengths, gates=gates)


def ligru(params, x, h0, *, num_layers=1, bidirectional=False, lengths=None, layer_norm=False, recurrent_norm=False, keep=None):
    """SpeechBrain's LiGRU/SLiGRU: a = W_a x + U_a h, k = W_z x + U_z h (rows a then z), z = σ(k),
    h̃ = ReLU(a) ⊙ m, h = z h + (1 − z) h̃; layer_norm: F.layer_norm(W x) with gain, + b_ih;
    recurrent_norm: F.layer_norm(U h) with gain, + b_hh. ``keep`` (L·D, B, H): recurrent dropout's masks."""
    torch = _torch()
    F = torch.nn.functional
    H = h0.shape[-1]
    index = {}

    def gates(p, s, layer_in):
        index[s] = len(index)
        v = layer_in @ p["weight_ih" + s].T
        if layer_norm:
            v = F.layer_norm(v, (2 * H,), weight=p["ln_weight_ih" + s], eps=1e-5)
        return v + p.get("bias_ih" + s, 0.0)

    def step(p, s, gi, h, t):
        u = h @ p["weight_hh" + s].T
        if recurrent_norm:
            u = F.layer_norm(u, (2 * H,), weight=p["ln_weight_hh" + s], eps=1e-5) + p.get("bias_hh" + s, 0.0)
        a, k = gi[t, :, :H] + u[:, :H], gi[t, :, H:] + u[:, H:]
        z = torch.sigmoid(k)
        candidate = torch.relu(a) * (1.0 if keep is None else keep[index[s]])
        return z * h + (1 - z) * candidate

    return _run(step, params, x, h0, num_layers=num_layers, bidirectional=bidirectional, lengths=lengths, gates=gates)
