"""The time loops a fuser's step kernels run in, and the fuser itself: shared by the NumPy and numba fusers.

:func:`time_loops` are plain Python closures over a fuser's step kernels and a GEMM: run as they
are (one GEMM call and one fused pass per step), or compiled as they are by numba with a call into
gruxp's BLAS inside (see :mod:`gruxp._native.numba_kernels`). They hold only what is sequential.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Fuser", "time_loops", "transposed"]


def transposed(w: np.ndarray) -> np.ndarray:
    """Wᵀ as a C-contiguous copy, which OpenBLAS multiplies a few rows by faster than the transposed
    view. Copied 16 rows of W at a time: NumPy's transposing copy of a whole large matrix walks
    memory with a stride and is several times slower (see benchmarks/README.md)."""
    out = np.empty(w.shape[::-1], w.dtype)
    for i in range(0, w.shape[0], 16):
        out[:, i : i + 16] = w[i : i + 16].T
    return out


def time_loops(forward_step, backward_step, gemm):
    """``(forward_loop, backward_loop)`` over a fuser's step kernels, ``gemm(a, w, out, panel)`` doing
    out = a @ w (in column panels of that width where ``panel`` > 0), or, given w's transpose,
    out = (wᵀ aᵀ)ᵀ (the plan's ``panel`` and ``transposed``, see :mod:`gruxp._native.plan`).
    Plain Python closures: run as they are with np.matmul, or compiled as they are by numba with a
    GEMM call inside (see :func:`gruxp._native.numba_kernels.fuser`)."""

    def forward_loop(gi, b_in, w, b_hn, h0, active, hs, r, z, n, ghn, gh, reverse, record, b0, b1, panel):
        # rows b0:b1 of the batch: per step gh = h W_hhᵀ (w: W_hhᵀ, or W_hh for a transposed
        # product), then the step writes h' into hs[t] and, with record, the gates into r, z, n,
        # ghn [t] (else into their row 0); gi, h0 and gh hold those rows only
        T = gi.shape[0]
        h = h0
        for s in range(T):
            t = T - 1 - s if reverse else s
            k = t if record else 0
            gemm(h, w, gh, panel)
            forward_step(
                gi[t], b_in, gh, b_hn, h, active[t, b0:b1], hs[t, b0:b1], r[k, b0:b1], z[k, b0:b1], n[k, b0:b1], ghn[k, b0:b1]
            )
            h = hs[t, b0:b1]

    def backward_loop(gz, prod, first_active, carry, d_out, active, h_prev, r, z, n, gh_n, d_i, d_h, w, reverse, b0, b1, panel):
        # rows b0:b1 of the batch: per step (in reverse processing order) the step, which also
        # finishes the previous step's dL/dh from gz + prod, then prod = d_h[t] W_hh (w: W_hh, or
        # W_hhᵀ for a transposed product); gz, prod, first_active and carry hold those rows only;
        # d_out is (T, B, H), or (1, B, H) of zeros
        T = h_prev.shape[0]
        active_prev = first_active
        for s in range(T):
            t = s if reverse else T - 1 - s
            backward_step(
                gz,
                prod,
                active_prev,
                carry,
                d_out[t if d_out.shape[0] == T else 0, b0:b1],
                active[t, b0:b1],
                h_prev[t, b0:b1],
                r[t, b0:b1],
                z[t, b0:b1],
                n[t, b0:b1],
                gh_n[t, b0:b1],
                d_i[t, b0:b1],
                d_h[t, b0:b1],
            )
            gemm(d_h[t, b0:b1], w, prod, panel)
            active_prev = active[t, b0:b1]

    return forward_loop, backward_loop


class Fuser(NamedTuple):
    """How a step's element-wise part is applied, and the :func:`time_loops` that drive it: in
    Python, or compiled (numba) with a call into gruxp's BLAS inside. All write the same buffers."""

    name: str
    forward_step: Any  # (gi, b_in, gh, b_hn, h, active, h_out, r_out, z_out, n_out, ghn_out)
    backward_step: Any  # (gz, prod, active_prev, carry, d_out, active, h_prev, r, z, n, gh_n, d_i, d_h)
    compiled_loops: Any = None  # time_loops compiled, or None (no gruxp BLAS to call from them)
    transposed_loops: Any = None  # time_loops compiled with a GEMM that writes the product transposed, or None
    product: Any = None  # the compiled loops' GEMM, product(a, b, out, panel), or None
