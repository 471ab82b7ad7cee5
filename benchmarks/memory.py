"""Tape memory against the minimum, and peak RSS of one training step (NumPy, float32).

    python benchmarks/memory.py                 # B=64, T=100, I=H=256, one layer
    python benchmarks/memory.py --layers 2 --bidirectional

The tape keeps what backward needs, independent of what the caller holds (an edit of x or of the
returned output cannot change a gradient): per layer-direction the three gate values, the states
and one more H-vector per step (W_hn h + b_hn), T·B·(3H + H + H) floats, and the first layer's
input, T·B·I (the other layers' inputs are the previous layers' states). The tape is measured by
walking it: every array it keeps alive, each block counted once. Peak RSS is measured in a fresh
process for each phase (resource.getrusage, Linux), against the resident size just before the
call (/proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np, gruxp
B, T, H, L, bi, phase = json.loads(sys.argv[1])
model = gruxp.GRU(H, H, L, batch_first=True, bidirectional=bi, seed=0)
x = np.random.default_rng(0).standard_normal((B, T, H), dtype=np.float32)
d_out = np.random.default_rng(1).standard_normal((B, T, (2 if bi else 1) * H), dtype=np.float32)
model(x[:, :2]); out, _, tape = model.forward(x[:, :2]); model.backward(tape, d_out[:, :2])  # warm imports/BLAS
del out, tape
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
base = rss_kib()
if phase == "inference":
    model(x)
else:
    out, h_n, tape = model.forward(x)
    model.backward(tape, d_out)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak}))
"""


def tape_bytes(B: int, T: int, H: int, L: int, bi: bool) -> dict:
    import gruxp

    model = gruxp.GRU(H, H, L, batch_first=True, bidirectional=bi, seed=0)
    x = np.random.default_rng(0).standard_normal((B, T, H), dtype=np.float32)
    out, h_n, tape = model.forward(x)
    seen, total, parts = set(), 0, {}
    for layer in tape.layers:
        for direction in layer:
            for name, a in direction._asdict().items():
                if a is None:
                    continue
                assert not np.shares_memory(a, x) and not np.shares_memory(a, out), name  # the tape's own
                key = (a.__array_interface__["data"][0], a.nbytes)
                if key in seen:
                    continue  # one layer's input, kept once for both directions
                seen.add(key)
                total += a.nbytes
                parts[name] = parts.get(name, 0) + a.nbytes
    D = 2 if bi else 1
    minimum = (L * D * T * B * (3 * H + H + H) + T * B * H) * 4
    return {"tape_bytes": total, "minimum_bytes": minimum, "ratio": total / minimum, "parts": parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--B", type=int, default=64)
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--H", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    args = parser.parse_args()
    spec = [args.B, args.T, args.H, args.layers, args.bidirectional]
    tape = tape_bytes(*spec)
    mib = 1 / 2**20
    print(f"config B={args.B} T={args.T} I=H={args.H} layers={args.layers} bidirectional={args.bidirectional}, float32")
    print(
        f"tape: {tape['tape_bytes'] * mib:.1f} MiB, minimum T·B·(3H+H+H) per layer-direction and T·B·I: "
        f"{tape['minimum_bytes'] * mib:.1f} MiB, ratio {tape['ratio']:.2f}"
    )
    print("  " + ", ".join(f"{k} {v * mib:.1f} MiB" for k, v in tape["parts"].items()))
    x_bytes = args.B * args.T * args.H * 4
    for phase in ("inference", "train"):
        res = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(spec + [phase])], capture_output=True, text=True, check=True
        )
        r = json.loads(res.stdout)
        print(
            f"peak RSS, {phase:9s}: {r['peak_kib'] / 1024:.1f} MiB (+{(r['peak_kib'] - r['base_kib']) / 1024:.1f} MiB over "
            f"the resident size just before the call; x itself is {x_bytes * mib:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
