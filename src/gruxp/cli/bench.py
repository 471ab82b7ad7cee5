"""``gruxp bench``: gruxp on the chosen backends against torch.nn.GRU, in one process, interleaved."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

import gruxp
from gruxp.benchmarking import blas_info, blas_threads, describe_pool, flops_forward, per_call, settle

from .backends import load


def _contenders(name, *, batch, seq_len, hidden, layers, dtype, state):
    xp, device = load(name, None, dtype)
    model = gruxp.GRU(hidden, hidden, layers, batch_first=True, xp=xp, device=device, dtype=dtype)
    model.load_state_dict(state)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((batch, seq_len, hidden)), dtype=model.dtype, device=device)
    d_out = xp.asarray(rng.standard_normal((batch, seq_len, hidden)), dtype=model.dtype, device=device)
    sync = (lambda: xp.cuda.Device().synchronize()) if name == "cupy" else (lambda: None)

    def forward():
        model(x)
        sync()

    def train():
        out, _, tape = model.forward(x)
        model.backward(tape, d_out)
        sync()

    return forward, train


def run(names: list[str], *, batch: int, seq_len: int, hidden: int, layers: int, rounds: int, dtype: str) -> None:
    torch: Any
    try:
        import torch
    except ImportError:
        torch = None
    info = blas_info()
    reference = gruxp.GRU(hidden, hidden, layers, batch_first=True, dtype=dtype, seed=0)
    state = reference.state_dict(numpy=True)
    theirs = None
    if torch is not None:
        torch.set_num_threads(blas_threads(info))
        tdtype = getattr(torch, dtype)
        net = torch.nn.GRU(hidden, hidden, layers, batch_first=True, dtype=tdtype)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        rng = np.random.default_rng(0)
        tx = torch.tensor(rng.standard_normal((batch, seq_len, hidden)), dtype=tdtype)
        tg = torch.tensor(rng.standard_normal((batch, seq_len, hidden)), dtype=tdtype)
        tx_grad = tx.clone().requires_grad_(True)

        def t_forward():
            with torch.no_grad():
                net(tx)

        def t_train():
            tx_grad.grad = None
            net.zero_grad(set_to_none=True)
            out, _ = net(tx_grad)
            out.backward(tg)

        theirs = (t_forward, t_train)
    # every backend loaded first: one that is missing is refused before any row is printed
    ours = {
        name: _contenders(name, batch=batch, seq_len=seq_len, hidden=hidden, layers=layers, dtype=dtype, state=state)
        for name in names
    }
    flops = flops_forward(batch, seq_len, hidden, hidden, layers)
    pools = "; ".join(describe_pool(i) for i in info)
    print(f"B={batch} T={seq_len} I=H={hidden} layers={layers} {dtype}, median of {rounds} rounds; thread pools: {pools}")
    print("| backend | mode | ms per call | ms per step | GFLOP/s | torch.nn.GRU ms | ratio to torch |")
    print("|---|---|---|---|---|---|---|")
    for mode, index, work in (("forward", 0, flops), ("forward+backward", 1, 3 * flops)):
        # each round times the reference once, then every backend: one torch figure per size and mode
        mine: dict[str, list[float]] = {name: [] for name in ours}
        ratios: dict[str, list[float]] = {name: [] for name in ours}
        ref: list[float] = []
        for _ in range(rounds):
            if theirs is not None:
                settle(theirs[index])
                ref.append(per_call(theirs[index]))
            for name, fns in ours.items():
                settle(fns[index])
                mine[name].append(per_call(fns[index]))
                if ref:
                    ratios[name].append(mine[name][-1] / ref[-1])
        torch_ms = f"{statistics.median(ref) * 1e3:.2f}" if ref else "(torch not installed)"
        for name in ours:
            ms = statistics.median(mine[name]) * 1e3
            ratio = f"{statistics.median(ratios[name]):.2f}×" if ratios[name] else "-"
            print(f"| {name} | {mode} | {ms:.2f} | {ms / seq_len:.3f} | {work / (ms / 1e3) / 1e9:.1f} | {torch_ms} | {ratio} |")
