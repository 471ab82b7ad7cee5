"""Largest cross-backend differences against NumPy float64, per backend row and float width, checked.

    python ci/agreement.py        # prints the table; exits 1 if any row is past its bound

Runs a 2-layer bidirectional GRU with ragged lengths (both reset conventions, T=20, B=8, I=16,
H=32) forward and backward on every row of the backend table (backends/*.toml, read by
gruxp._backend_table as the tests and the command line read it) that can run here, and compares
out, h_n and every gradient with NumPy float64 on the same host inputs. A row that is not installed,
or needs a GPU where there is none, is reported as skipped with the reason. tests/test_agreement.py
runs it.

Bound: every entry within atol + rtol·|reference|: float64 rtol 1e-12 (the design's bound for any
route), atol 1e-13; float32 the tests' gradient tolerance (tests/conftest.py's GRAD_TOL: rtol 1e-3,
atol 2e-4; each entry is a chain of up to T·(I+H) roundings, and gradients sum over B and T as well).
The table also prints the largest absolute and relative differences (relative over the entries whose
reference exceeds 1e-3 in size).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import numpy as np

import gruxp
from gruxp._backend_table import make_device, missing_gpu, rows
from gruxp.testing import to_numpy

BOUNDS = {"float64": (1e-12, 1e-13), "float32": (1e-3, 2e-4)}  # (rtol, atol)


@dataclass
class Result:
    label: str
    dtype: str
    worst_abs: float = 0.0
    worst_rel: float = 0.0
    worst_share: float = 0.0  # the largest |diff| / (atol + rtol·|reference|): at most 1 within the bound
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is not None or self.worst_share <= 1.0


def run(xp, device, dtype, reset_after, host):
    model = gruxp.GRU(16, 32, 2, bidirectional=True, reset_after=reset_after, xp=xp, device=device, dtype=dtype, seed=0)
    put = lambda a: xp.asarray(a, dtype=model.dtype, device=device)  # noqa: E731
    out, h_n, tape = model.forward(put(host["x"]), put(host["h0"]), lengths=host["lengths"])
    grads, dx, dh0 = model.backward(tape, put(host["d_out"]), put(host["d_hn"]))
    return {"out": out, "h_n": h_n, "dx": dx, "dh0": dh0, **grads}


def check() -> list[Result]:
    rng = np.random.default_rng(0)
    host = dict(
        x=rng.standard_normal((20, 8, 16)),
        h0=rng.standard_normal((4, 8, 32)) * 0.5,
        lengths=rng.integers(1, 21, size=8),
        d_out=rng.standard_normal((20, 8, 64)),
        d_hn=rng.standard_normal((4, 8, 32)),
    )
    reference = {reset_after: run(np, None, "float64", reset_after, host) for reset_after in (True, False)}
    results = []
    for row in rows():
        for device_name in row.devices:
            label = row.name if len(row.devices) == 1 else f"{row.name}:{device_name}"
            try:
                mod = importlib.import_module(row.module)
            except ImportError as exc:
                results += [Result(label, dtype, skipped=f"not installed ({exc})") for dtype in BOUNDS]
                continue
            if row.backend == "jax":
                import jax

                jax.config.update("jax_enable_x64", True)
            reason = missing_gpu(row, mod, device_name)
            if reason is not None:
                results += [Result(label, dtype, skipped=reason) for dtype in BOUNDS]
                continue
            device = make_device(row.backend, mod, device_name)
            for dtype in BOUNDS:
                result = Result(label, dtype)
                for reset_after in (True, False):
                    got = run(mod, device, dtype, reset_after, host)
                    for k, want in reference[reset_after].items():
                        a, w = to_numpy(got[k]).astype(np.float64), to_numpy(want)
                        diff = np.abs(a - w)
                        result.worst_abs = max(result.worst_abs, float(diff.max()))
                        big = np.abs(w) > 1e-3
                        result.worst_rel = max(result.worst_rel, float((diff[big] / np.abs(w[big])).max(initial=0.0)))
                        rtol, atol = BOUNDS[dtype]
                        result.worst_share = max(result.worst_share, float((diff / (atol + rtol * np.abs(w))).max()))
                results.append(result)
    return results


def main() -> int:
    results = check()
    print(f"{'backend':28} {'dtype':8} {'max |diff|':>11} {'max rel (|ref|>1e-3)':>21} {'of the bound':>13}")
    for r in results:
        if r.skipped is not None:
            print(f"{r.label:28} {r.dtype:8} skipped: {r.skipped}")
        else:
            flag = "" if r.ok else "  PAST THE BOUND"
            print(f"{r.label:28} {r.dtype:8} {r.worst_abs:11.2e} {r.worst_rel:21.2e} {r.worst_share:13.2f}{flag}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
