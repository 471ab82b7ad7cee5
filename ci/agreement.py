"""Largest cross-backend differences against NumPy float64, per backend and float width.

    python ci/agreement.py

Runs a 2-layer bidirectional GRU with ragged lengths (both reset conventions, T=20, B=8, I=16,
H=32) forward and backward on every installed backend, and prints the largest absolute and
relative difference of out, h_n and every gradient from NumPy float64 on the same host inputs.
"""

from __future__ import annotations

import importlib

import numpy as np

import gruxp
from gruxp.testing import to_numpy

BACKENDS = [
    ("numpy", "numpy", None),
    ("array_api_strict", "array_api_strict", "device1"),
    ("torch", "torch", None),
    ("jax", "jax.numpy", None),
    ("cupy", "cupy", None),
]


def run(xp, device, dtype, reset_after, host):
    model = gruxp.GRU(16, 32, 2, bidirectional=True, reset_after=reset_after, xp=xp, device=device, dtype=dtype, seed=0)
    put = lambda a: xp.asarray(a, dtype=model.dtype, device=device)  # noqa: E731
    out, h_n, tape = model.forward(put(host["x"]), put(host["h0"]), lengths=host["lengths"])
    grads, dx, dh0 = model.backward(tape, put(host["d_out"]), put(host["d_hn"]))
    return {"out": out, "h_n": h_n, "dx": dx, "dh0": dh0, **grads}


def main() -> None:
    rng = np.random.default_rng(0)
    host = dict(
        x=rng.standard_normal((20, 8, 16)),
        h0=rng.standard_normal((4, 8, 32)) * 0.5,
        lengths=rng.integers(1, 21, size=8),
        d_out=rng.standard_normal((20, 8, 64)),
        d_hn=rng.standard_normal((4, 8, 32)),
    )
    print(f"{'backend':28} {'dtype':8} {'max |diff|':>11} {'max rel (|ref|>1e-3)':>21}")
    for name, module, device_name in BACKENDS:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            print(f"{name:28} not installed")
            continue
        if name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
        if name == "cupy" and mod.cuda.runtime.getDeviceCount() == 0:
            print(f"{name:28} no CUDA device")
            continue
        device = mod.Device(device_name) if name == "array_api_strict" else None
        for dtype in ("float64", "float32"):
            worst_abs = worst_rel = 0.0
            for reset_after in (True, False):
                ref = run(np, None, "float64", reset_after, host)
                got = run(mod, device, dtype, reset_after, host)
                for k, want in ref.items():
                    a, w = to_numpy(got[k]).astype(np.float64), to_numpy(want)
                    diff = np.abs(a - w)
                    worst_abs = max(worst_abs, float(diff.max()))
                    big = np.abs(w) > 1e-3
                    worst_rel = max(worst_rel, float((diff[big] / np.abs(w[big])).max(initial=0.0)))
            label = name + (f":{device_name}" if device_name else "")
            print(f"{label:28} {dtype:8} {worst_abs:11.2e} {worst_rel:21.2e}")


if __name__ == "__main__":
    main()
