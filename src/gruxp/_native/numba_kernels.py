"""The numba fuser: each step's element-wise part as one compiled pass, from the shared source.

:func:`gruxp.functional._cell.gates_forward` and ``gates_backward`` (and the helpers they call)
are compiled here as they are, inlined into a loop over the (B, H) elements of a step. Two things
are this fuser's own, and only these:

* the activations. numba's ``math.tanh`` is a scalar libm call, some 40× slower than NumPy's SIMD
  tanh, which would make a fused step slower than NumPy's dozen passes. So the kernels pass
  vectorisable ones into the shared functions: float32, the rational minimax approximation that
  Eigen and XLA use (within 7 ulp of float64 tanh; tested), clamped
  where it evaluates to ±1 with fused multiply-adds (Eigen's FMA constant); float64,
  Cephes' tanh (its rational form below 0.625, else 1 − 2/(e^{2|x|} + 1) with Cephes' exp), a few
  ulp. σ(x) = ½ tanh(½x) + ½ as in the generic code, and the derivatives (1 − s) s and 1 − t², with
  their constants typed like the operands: numba types a Python float literal as float64, which
  would turn a float32 step into a float64 one (twice the time). float64 uses the shared derivatives.
* ``error_model="numpy"``: a division by zero gives inf instead of a Python exception, whose
  check would keep LLVM from vectorising the loop; and ``fastmath={"contract"}``, only that flag:
  a·b + c may become one fused multiply-add (one rounding instead of two, and faster). NaN, inf,
  signed zeros and the order of every other operation are kept.

The step kernels are compiled on first use per dtype and kept on disk (:mod:`gruxp._native.numba_cache`,
keyed by a hash of this file and of the shared functions' file, so an edit of either compiles
afresh): a one-token call in a new process loads them in milliseconds. The compiled time loops call
gruxp's BLAS through addresses fixed in their code, valid in one process only: they are compiled
on first use per dtype and process (a few seconds), and the plan chooses them only where that pays.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import numba
import numpy as np
from numba.extending import register_jitable

from ..functional import _cell
from .numba_cache import cached

__all__ = ["fuser"]

_JIT: dict[str, Any] = dict(error_model="numpy", fastmath={"contract"})

for _helper in (
    _cell.reset_update_gates,
    _cell.candidate_blend,
    _cell.candidate_blend_backward,
    _cell.sigmoid_grad,
    _cell.tanh_grad,
):
    register_jitable(inline="always", **_JIT)(_helper)
_gates_forward = numba.njit(inline="always", **_JIT)(_cell.gates_forward)
_gates_backward = numba.njit(inline="always", **_JIT)(_cell.gates_backward)
_masked_state = numba.njit(inline="always", **_JIT)(_cell.masked_state)


@numba.njit(inline="always", **_JIT)
def select(live, new, old):  # the scalar ``where`` that masked_state takes
    return new if live else old


# -- float32: Eigen's / XLA's rational tanh, clamped where it evaluates to ±1 (with FMA) ---------------
_f = np.float32
_CLAMP32, _HALF32, _ONE32, _ZERO32 = _f(7.99881172180175781), _f(0.5), _f(1.0), _f(0.0)
_A32 = tuple(
    _f(c)
    for c in (
        4.89352455891786e-03,
        6.37261928875436e-04,
        1.48572235717979e-05,
        5.12229709037114e-08,
        -8.60467152213735e-11,
        2.00018790482477e-13,
        -2.76076847742355e-16,
    )
)
_B32 = tuple(_f(c) for c in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))
_a1, _a3, _a5, _a7, _a9, _a11, _a13 = _A32
_b0, _b2, _b4, _b6 = _B32


@numba.njit(inline="always", **_JIT)
def tanh32(x):
    x = min(max(x, -_CLAMP32), _CLAMP32)
    x2 = x * x
    p = ((((((_a13 * x2 + _a11) * x2 + _a9) * x2 + _a7) * x2 + _a5) * x2 + _a3) * x2 + _a1) * x
    q = ((_b6 * x2 + _b4) * x2 + _b2) * x2 + _b0
    return p / q


@numba.njit(inline="always", **_JIT)
def sigmoid32(x):
    return _HALF32 * tanh32(_HALF32 * x) + _HALF32


@numba.njit(inline="always", **_JIT)
def sigmoid_grad32(s):
    return (_ONE32 - s) * s


@numba.njit(inline="always", **_JIT)
def tanh_grad32(t):
    return _ONE32 - t * t


# -- float64: Cephes' tanh and exp ----------------------------------------------------------------
_P0, _P1, _P2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
_Q0, _Q1, _Q2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3
_E_P0, _E_P1, _E_P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
_E_Q0, _E_Q1, _E_Q2, _E_Q3 = (
    3.00198505138664455042e-6,
    2.52448340349684104192e-3,
    2.27265548208155028766e-1,
    2.00000000000000000009e0,
)
_LOG2E, _LN2_HI, _LN2_LO = 1.4426950408889634073599, 6.93145751953125e-1, 1.42860682030941723212e-6


@numba.njit(inline="always", **_JIT)
def tanh64(x):
    a = abs(x)
    z = x * x
    small = x + x * (z * ((_P0 * z + _P1) * z + _P2) / (((z + _Q0) * z + _Q1) * z + _Q2))
    y = 2.0 * min(a, 20.0)  # tanh(20) is 1 in float64; the clamp keeps 2^k below 2^63
    k = np.floor(_LOG2E * y + 0.5)
    w = (y - k * _LN2_HI) - k * _LN2_LO
    ww = w * w
    pw = w * ((_E_P0 * ww + _E_P1) * ww + _E_P2)
    e = (1.0 + 2.0 * pw / ((((_E_Q0 * ww + _E_Q1) * ww + _E_Q2) * ww + _E_Q3) - pw)) * (1 << np.int64(k))
    large = 1.0 - 2.0 / (e + 1.0)
    return small if a < 0.625 else (large if x > 0.0 else -large)


@numba.njit(inline="always", **_JIT)
def sigmoid64(x):
    return 0.5 * tanh64(0.5 * x) + 0.5


# -- the step kernels: written once, compiled per dtype with that dtype's activations ------------
# Each is a module-level function; :func:`_for_dtype` makes, for float32 and for float64, a copy of
# it whose globals ``_sigmoid``, ``_tanh``, ``_dsigmoid``, ``_dtanh`` and ``_zero`` name that dtype's
# functions. A copy is no closure, so numba can keep its machine code on disk
# (:mod:`gruxp._native.numba_cache`). Row views per sequence: LLVM vectorises the inner loop over j
# only when it can tell the rows apart, which it cannot through 2-D offsets like [b, 2H + j].
_sigmoid = _tanh = _dsigmoid = _dtanh = _zero = None  # each dtype's copy names its own (_ACTIVATIONS)


def _forward_step(gi, b_in, gh, b_hn, h, active, h_out, r_out, z_out, n_out, ghn_out):
    B, H = h.shape
    b_r, b_z, b_n = b_in[:H], b_in[H : 2 * H], b_in[2 * H :]
    for b in range(B):
        gi_r, gi_z, gi_n = gi[b, :H], gi[b, H : 2 * H], gi[b, 2 * H :]
        gh_r, gh_z, gh_nb = gh[b, :H], gh[b, H : 2 * H], gh[b, 2 * H :]
        hb, ho, ro, zo, no, go = h[b], h_out[b], r_out[b], z_out[b], n_out[b], ghn_out[b]
        live = active[b]
        for j in range(H):
            gh_n = gh_nb[j] + b_hn[j]
            h_new, r, z, n = _gates_forward(
                gi_r[j] + b_r[j], gi_z[j] + b_z[j], gi_n[j] + b_n[j], gh_r[j], gh_z[j], gh_n, hb[j], _sigmoid, _tanh
            )
            ho[j] = _masked_state(live, h_new, hb[j], select)
            ro[j], zo[j], no[j], go[j] = r, z, n, gh_n


def _backward_step(gz, prod, active_prev, carry, d_out, active, h_prev, r, z, n, gh_n, d_i, d_h):
    B, H = carry.shape
    for b in range(B):
        gzb, pb, cb, db, hb, rb, zb, nb, ghb = gz[b], prod[b], carry[b], d_out[b], h_prev[b], r[b], z[b], n[b], gh_n[b]
        di_r, di_z, di_n = d_i[b, :H], d_i[b, H : 2 * H], d_i[b, 2 * H :]
        dh_r, dh_z, dh_n = d_h[b, :H], d_h[b, H : 2 * H], d_h[b, 2 * H :]
        finish, live = active_prev[b], active[b]
        for j in range(H):
            dh = _masked_state(finish, gzb[j] + pb[j], cb[j], select)
            cb[j] = dh
            g = _masked_state(live, dh + db[j], _zero, select)
            d_r, d_z, d_an, d_gn, gz_new = _gates_backward(g, hb[j], rb[j], zb[j], nb[j], ghb[j], _dsigmoid, _dtanh)
            di_r[j], di_z[j], di_n[j] = d_r, d_z, d_an
            dh_r[j], dh_z[j], dh_n[j], gzb[j] = d_r, d_z, d_gn, gz_new


_ACTIVATIONS: dict[np.dtype, dict[str, Any]] = {
    np.dtype(np.float32): dict(_sigmoid=sigmoid32, _tanh=tanh32, _dsigmoid=sigmoid_grad32, _dtanh=tanh_grad32, _zero=_ZERO32),
    np.dtype(np.float64): dict(_sigmoid=sigmoid64, _tanh=tanh64, _dsigmoid=_cell.sigmoid_grad, _dtanh=_cell.tanh_grad, _zero=0.0),
}


def _for_dtype(function: Any, dtype: np.dtype) -> Any:
    """``function`` compiled with ``dtype``'s activations (see above), kept on disk."""
    names = {**globals(), **_ACTIVATIONS[dtype], "_DTYPE": dtype.name}
    copy = types.FunctionType(function.__code__, names, f"{function.__name__[1:]}_{dtype.name}")
    copy.__qualname__, copy.__module__ = copy.__name__, __name__
    return cached(numba.njit(**_JIT)(copy))


_STEPS = {dtype: (_for_dtype(_forward_step, dtype), _for_dtype(_backward_step, dtype)) for dtype in _ACTIVATIONS}


def gemm_kernel(cblas_gemm, cblas_gemv):
    """The compiled loops' GEMM for gruxp's BLAS: ``gemm(a, b, c, panel)``, c = a @ b with all three
    C-contiguous, in column panels of b and c where panel > 0; a single row goes to GEMV, as NumPy
    sends it (OpenBLAS's GEMM with one row is slower: see benchmarks/README.md)."""
    from .blas import NO_TRANS, ROW_MAJOR, TRANS

    @numba.njit(inline="always", **_JIT)
    def gemm(a, b, c, panel):  # c = a @ b, all C-contiguous; in column panels of b and c where panel > 0
        M, K = a.shape
        N = b.shape[1]
        if M == 1:  # c = bᵀ a
            cblas_gemv(ROW_MAJOR, TRANS, K, N, 1.0, b.ctypes.data, N, a.ctypes.data, 1, 0.0, c.ctypes.data, 1)
        elif panel > 0:
            for j in range(0, N, panel):
                cblas_gemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    NO_TRANS,
                    M,
                    min(panel, N - j),
                    K,
                    1.0,
                    a.ctypes.data,
                    K,
                    b[:, j:].ctypes.data,
                    N,
                    0.0,
                    c[:, j:].ctypes.data,
                    N,
                )
        else:
            cblas_gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, 1.0, a.ctypes.data, K, b.ctypes.data, N, 0.0, c.ctypes.data, N)

    return gemm


def _compiled_loops(forward_step, backward_step, cblas_gemm, cblas_gemv):
    """:func:`gruxp._native.loops.time_loops` compiled as they are, their GEMM a call into gruxp's
    BLAS (see :mod:`gruxp._native.blas`): no interpreter work between steps, and the GIL released
    (pieces of a batch, and a layer's two directions, run at once). Two pairs: the product
    written as it is, and written transposed (the plan's ``transposed``); the GEMM is :func:`gemm_kernel`'s."""
    from .blas import NO_TRANS, ROW_MAJOR, TRANS
    from .loops import time_loops

    gemm = gemm_kernel(cblas_gemm, cblas_gemv)

    @numba.njit(inline="always", **_JIT)
    def gemm_transposed(a, bt, c, panel):  # c = a @ b as (bᵀ aᵀ)ᵀ, given bᵀ; all C-contiguous
        M, K = a.shape
        N = bt.shape[0]
        ct = np.empty((N, M), c.dtype)
        cblas_gemm(ROW_MAJOR, NO_TRANS, TRANS, N, M, K, 1.0, bt.ctypes.data, K, a.ctypes.data, K, 0.0, ct.ctypes.data, M)
        for i in range(M):
            ci = c[i]
            for j in range(N):
                ci[j] = ct[j, i]

    @numba.njit(nogil=True, **_JIT)
    def product(a, b, c, panel):  # the loops' GEMM, alone (tests)
        gemm(a, b, c, panel)

    loops = tuple(
        tuple(numba.njit(nogil=True, **_JIT)(loop) for loop in time_loops(forward_step, backward_step, g))
        for g in (gemm, gemm_transposed)
    )
    return (*loops, product)


def fuser(dtype, *, compiled_loops: bool = True):
    """The numba :class:`~gruxp._native.loops.Fuser` for float32 or float64 arrays: its step kernels,
    and its compiled time loops where gruxp's BLAS can be called from them (one per dtype and
    process: each is compiled on first call)."""
    return _fuser(np.dtype(dtype), compiled_loops)


@functools.cache
def _fuser(dtype: np.dtype, compiled_loops: bool):
    from .blas import library
    from .loops import Fuser

    forward_step, backward_step = _STEPS[dtype]
    lib = library() if compiled_loops else None
    if lib is None:
        return Fuser("numba", forward_step, backward_step)
    loops, transposed, product = _compiled_loops(forward_step, backward_step, lib.gemm[dtype], lib.gemv[dtype])
    return Fuser("numba", forward_step, backward_step, loops, transposed, product)
