"""NumPy on the CPU, the layer-normalised GRU: its time loop compiled by numba, with gruxp's BLAS inside.

The generic loop pays a dozen NumPy passes and a Python round trip per step, several times the
GRU's fused step. Here numba compiles the whole loop, as the GRU's executor does (see
:mod:`gruxp._native.loops`): per step one GEMM into gruxp's BLAS, then per row the norm's two
reductions and one pass of the cell's own element-wise functions (the GRU's
:func:`~gruxp.functional._cell.gates_forward`/``gates_backward``, the norm's
:func:`~gruxp.functional._lngru.ln_normalise`/``ln_rstd``/``ln_input_grad``, zoneout's blend, the
core's ``masked_state``), with the numba fuser's activations. Before and after the loop everything
is the generic code's own (:func:`~gruxp.functional._lngru.input_side`,
:func:`~gruxp.functional._lngru.finish_backward`), its products on gruxp's BLAS. The batch is cut
into pieces by the number of CPUs (a property of the machine, not of its load), each a recurrence
of its own on gruxp's threads. Equal to the generic code at the stated bound (float64 ≤ 1e-12
relative; tested).

Without numba or gruxp's BLAS, for other dtypes, and with ``fuser="numpy"``, the layer runs the
generic code.
"""

from __future__ import annotations

import math
from functools import cache, partial
from typing import Any, NamedTuple

import numpy as np

from .._trace import record
from ..functional import _cell, _lngru
from ..functional._routes import GENERIC
from ..functional._sequence import masked_outputs, previous_states
from . import blas, workers
from .cpu import active_steps as _active
from .cpu import output_gradient, state_gradient
from .loops import transposed
from .plan import RULES, CellPlan, Shape, cell_plan, cut
from .planning import planned

__all__ = ["LayerNormGruCpu"]


class _Primitives(NamedTuple):
    """What the layer-norm GRU's kernels are made of, compiled for one dtype: the shared element-wise
    functions (numba_kernels' and _lngru's, unchanged), the row sum and the GEMM into gruxp's BLAS."""

    jit: dict
    ftype: Any  # the dtype's scalar type: constants typed like the operands
    zero: Any
    sigmoid: Any
    tanh: Any
    dsigmoid: Any
    dtanh: Any
    ln_rstd: Any
    ln_normalise: Any
    ln_affine: Any
    ln_input_grad: Any
    blend: Any
    blend_backward: Any
    gates_forward: Any
    gates_backward: Any
    masked: Any
    select: Any
    row_sum: Any
    gemm: Any  # gemm(a, b, c, 0): c = a @ b, all C-contiguous


@cache
def _primitives(dtype: np.dtype) -> _Primitives:
    import numba

    from . import numba_kernels as nk

    lib = blas.library()
    assert lib is not None  # the plan asked for it
    jit = dict(nk._JIT)
    f32 = dtype == np.float32
    ftype = dtype.type
    zero = ftype(0.0)
    ln = {
        name: numba.njit(inline="always", **jit)(getattr(_lngru, name))
        for name in ("ln_rstd", "ln_normalise", "ln_affine", "ln_input_grad", "zoneout_blend", "zoneout_blend_backward")
    }

    # A row's sums in eight interleaved partial sums, added pairwise at the end: an order fixed by
    # the code (the same bits on every machine and load), which SIMD registers can follow; one
    # running sum would leave each addition waiting for the last.
    @numba.njit(inline="always", **jit)
    def row_sum(v, shift, square):  # Σ (v − shift), or Σ (v − shift)² with square
        n = v.shape[0]
        m = n - n % 8
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
        for j in range(0, m, 8):
            c0, c1, c2, c3 = v[j] - shift, v[j + 1] - shift, v[j + 2] - shift, v[j + 3] - shift
            c4, c5, c6, c7 = v[j + 4] - shift, v[j + 5] - shift, v[j + 6] - shift, v[j + 7] - shift
            if square:
                c0, c1, c2, c3, c4, c5, c6, c7 = c0 * c0, c1 * c1, c2 * c2, c3 * c3, c4 * c4, c5 * c5, c6 * c6, c7 * c7
            s0, s1, s2, s3 = s0 + c0, s1 + c1, s2 + c2, s3 + c3
            s4, s5, s6, s7 = s4 + c4, s5 + c5, s6 + c6, s7 + c7
        for j in range(m, n):
            c = v[j] - shift
            s0 += c * c if square else c
        return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))

    sigmoid, tanh, dsigmoid, dtanh = (
        (nk.sigmoid32, nk.tanh32, nk.sigmoid_grad32, nk.tanh_grad32)
        if f32
        else (nk.sigmoid64, nk.tanh64, _cell.sigmoid_grad, _cell.tanh_grad)
    )
    return _Primitives(
        jit,
        ftype,
        zero,
        sigmoid,
        tanh,
        dsigmoid,
        dtanh,
        ln["ln_rstd"],
        ln["ln_normalise"],
        ln["ln_affine"],
        ln["ln_input_grad"],
        ln["zoneout_blend"],
        ln["zoneout_blend_backward"],
        nk._gates_forward,
        nk._gates_backward,
        nk._masked_state,
        nk.select,
        row_sum,
        nk.gemm_kernel(lib.gemm[dtype], lib.gemv[dtype]),
    )


@cache
def _forward_loop(dtype: np.dtype) -> Any:
    """The forward time loop of rows b0:b1: one GEMM a step into gruxp's BLAS, then per row the norm,
    the gates and zoneout, in one pass."""
    import numba

    k = _primitives(dtype)
    ftype, zero, gemm, row_sum, sqrt = k.ftype, k.zero, k.gemm, k.row_sum, math.sqrt
    ln_rstd, ln_normalise, ln_affine, blend = k.ln_rstd, k.ln_normalise, k.ln_affine, k.blend
    gates_forward, sigmoid, tanh, masked, select = k.gates_forward, k.sigmoid, k.tanh, k.masked, k.select
    jit = k.jit

    @numba.njit(nogil=True, **jit)
    def forward_loop(gi, w_t, gain, bias, h0, active, keep, use_keep, rate, hs, r, z, n, ghn, gh_hat, gh_rstd, reverse, b0, b1):
        T, H = gi.shape[0], h0.shape[1]
        H3 = 3 * H
        inv = ftype(1.0 / H3)  # typed like the operands: a float64 mean would make a float32 row float64
        gh = np.empty((b1 - b0, H3), gi.dtype)
        h = h0[b0:b1]
        zoneout = use_keep or rate > zero
        for s in range(T):
            t = T - 1 - s if reverse else s
            gemm(h, w_t, gh, 0)
            for i in range(b1 - b0):
                b = b0 + i
                row, hat, gib, hb = gh[i], gh_hat[t, b], gi[t, b], h[i]
                mean = row_sum(row, zero, False) * inv
                rs = ftype(ln_rstd(row_sum(row, mean, True) * inv, sqrt))
                gh_rstd[t, b, 0] = rs
                for j in range(H3):
                    hat[j] = ln_normalise(row[j], mean, rs)
                live = active[t, b]
                ho, ro, zo, no, go, kb = (
                    hs[t, b],
                    r[t, b],
                    z[t, b],
                    n[t, b],
                    ghn[t, b],
                    keep[t if use_keep else 0, b if use_keep else 0],
                )
                for j in range(H):
                    g_n = ln_affine(hat[2 * H + j], gain[2 * H + j], bias[2 * H + j])
                    h_new, rr, zz, nn = gates_forward(
                        gib[j],
                        gib[H + j],
                        gib[2 * H + j],
                        ln_affine(hat[j], gain[j], bias[j]),
                        ln_affine(hat[H + j], gain[H + j], bias[H + j]),
                        g_n,
                        hb[j],
                        sigmoid,
                        tanh,
                    )
                    if zoneout:
                        h_new = blend(kb[j] if use_keep else rate, h_new, hb[j])
                    ho[j] = masked(live, h_new, hb[j], select)
                    ro[j], zo[j], no[j], go[j] = rr, zz, nn, g_n
            h = hs[t, b0:b1]

    return forward_loop


@cache
def _backward_loop(dtype: np.dtype) -> Any:
    """The backward time loop of rows b0:b1: per row the gates' and the norm's backward, then one GEMM
    a step for the recurrent part of dL/dh."""
    import numba

    k = _primitives(dtype)
    ftype, zero, gemm, row_sum, ln_input_grad = k.ftype, k.zero, k.gemm, k.row_sum, k.ln_input_grad
    gates_backward, dsigmoid, dtanh, blend_backward = k.gates_backward, k.dsigmoid, k.dtanh, k.blend_backward
    masked, select, jit = k.masked, k.select, k.jit

    @numba.njit(nogil=True, **jit)
    def backward_loop(d_out, active, keep, use_keep, rate, h_prev, r, z, n, ghn, gh_hat, gh_rstd, gain, w, dh, d_gi, sum_dv,
                      sum_d, d_raw, reverse, b0, b1):  # fmt: skip
        # dh[b0:b1] enters as dL/dh_T and leaves as dL/dh0; d_out is (T, B, H), or (1, B, H) of zeros;
        # sum_dv, sum_d (3H,) collect this piece's Σ d_gh ⊙ ĝh and Σ d_gh (the recurrent gain's and
        # bias's gradients), rows in the order they are processed
        T, H = h_prev.shape[0], h_prev.shape[2]
        H3 = 3 * H
        inv = ftype(1.0 / H3)
        rows = b1 - b0
        gz, old, prod = np.empty((rows, H), dh.dtype), np.zeros((rows, H), dh.dtype), np.empty((rows, H), dh.dtype)
        dgh, dg, dg_hat = np.empty((H3,), dh.dtype), np.empty((H3,), dh.dtype), np.empty((H3,), dh.dtype)
        sum_dv[:] = zero
        sum_d[:] = zero
        zoneout = use_keep or rate > zero
        for s in range(T):
            t = s if reverse else T - 1 - s
            for i in range(rows):
                b = b0 + i
                live = active[t, b]
                dgi, draw, hat = d_gi[t, b], d_raw[t, b], gh_hat[t, b]
                db = d_out[t if d_out.shape[0] == T else 0, b]
                kb = keep[t if use_keep else 0, b if use_keep else 0]
                hp, rb, zb, nb, gb, dhb = h_prev[t, b], r[t, b], z[t, b], n[t, b], ghn[t, b], dh[b]
                for j in range(H):
                    g = masked(live, dhb[j] + db[j], zero, select)
                    if zoneout:
                        g, old[i, j] = blend_backward(kb[j] if use_keep else rate, g)
                    d_r, d_z, d_an, d_ghn, gz[i, j] = gates_backward(g, hp[j], rb[j], zb[j], nb[j], gb[j], dsigmoid, dtanh)
                    dgi[j], dgi[H + j], dgi[2 * H + j] = d_r, d_z, d_an
                    dgh[j], dgh[H + j], dgh[2 * H + j] = d_r, d_z, d_ghn
                for j in range(H3):
                    dg[j] = dgh[j] * gain[j]
                    dg_hat[j] = dg[j] * hat[j]
                    sum_dv[j] += dgh[j] * hat[j]
                    sum_d[j] += dgh[j]
                mean_dg, mean_dg_hat = row_sum(dg, zero, False) * inv, row_sum(dg_hat, zero, False) * inv
                rs = gh_rstd[t, b, 0]
                for j in range(H3):
                    draw[j] = ln_input_grad(dg[j], hat[j], rs, mean_dg, mean_dg_hat)
            gemm(d_raw[t, b0:b1], w, prod, 0)
            for i in range(rows):
                b = b0 + i
                live = active[t, b]
                dhb = dh[b]
                for j in range(H):
                    dhb[j] = masked(live, gz[i, j] + prod[i, j] + old[i, j], dhb[j], select)

    return backward_loop


@cache
def _norm_kernels(dtype: np.dtype) -> tuple[Any, Any, Any]:
    """The input side's kernels, on blocks of rows or columns: the norm, its backward, the column sums
    (the gains' and biases' gradients)."""
    import numba

    k = _primitives(dtype)
    ftype, zero, row_sum, sqrt = k.ftype, k.zero, k.row_sum, math.sqrt
    ln_rstd, ln_normalise, ln_affine, ln_input_grad, jit = k.ln_rstd, k.ln_normalise, k.ln_affine, k.ln_input_grad, k.jit

    @numba.njit(nogil=True, **jit)
    def norm_rows(v, gain, bias, y, v_hat, rstd, r0, r1):  # the norm of rows r0:r1 of v (rows, F)
        F = v.shape[1]
        inv = ftype(1.0 / F)
        for i in range(r0, r1):
            row, hat, out = v[i], v_hat[i], y[i]
            mean = row_sum(row, zero, False) * inv
            rs = ftype(ln_rstd(row_sum(row, mean, True) * inv, sqrt))
            rstd[i, 0] = rs
            for j in range(F):
                hat[j] = ln_normalise(row[j], mean, rs)
                out[j] = ln_affine(hat[j], gain[j], bias[j])

    @numba.njit(nogil=True, **jit)
    def norm_backward_rows(d, v_hat, rstd, gain, dv, r0, r1):  # dL/dv of rows r0:r1 from d = dL/d(γ ⊙ v̂)
        F = d.shape[1]
        inv = ftype(1.0 / F)
        dg, dg_hat = np.empty((F,), d.dtype), np.empty((F,), d.dtype)
        for i in range(r0, r1):
            db, hat, out = d[i], v_hat[i], dv[i]
            for j in range(F):
                dg[j] = db[j] * gain[j]
                dg_hat[j] = dg[j] * hat[j]
            mean_dg, mean_dg_hat = row_sum(dg, zero, False) * inv, row_sum(dg_hat, zero, False) * inv
            rs = rstd[i, 0]
            for j in range(F):
                out[j] = ln_input_grad(dg[j], hat[j], rs, mean_dg, mean_dg_hat)

    @numba.njit(nogil=True, **jit)
    def column_sums(d, v_hat, out_dv, out_d, c0, c1):  # columns c0:c1 of Σ_rows d ⊙ v̂ and Σ_rows d, rows in order
        for j in range(c0, c1):
            out_dv[j] = zero
            out_d[j] = zero
        for i in range(d.shape[0]):
            db, hat = d[i], v_hat[i]
            for j in range(c0, c1):
                out_dv[j] += db[j] * hat[j]
                out_d[j] += db[j]

    return norm_rows, norm_backward_rows, column_sums


def _sums(d, v_hat, *, threads: int):
    """(Σ_rows d ⊙ v̂, Σ_rows d), the columns cut into blocks: each column's sum runs over the rows
    in order, whatever the cut."""
    d2, hat2 = (np.reshape(np.ascontiguousarray(a), (-1, a.shape[-1])) for a in (d, v_hat))
    F = d2.shape[1]
    out_dv, out_d = np.empty((F,), d.dtype), np.empty((F,), d.dtype)
    kernel = _norm_kernels(np.dtype(d.dtype))[2]
    blocks = cut(F, max(1, min(threads, F // RULES.sum_min_columns)))
    workers.run([partial(kernel, d2, hat2, out_dv, out_d, c0, c1) for c0, c1 in blocks], threads)
    return out_dv, out_d


def _row_blocks(rows: int, threads: int) -> tuple:
    """The input side's rows cut for ``threads`` (Rules.norm_min_rows a block at least)."""
    return cut(rows, max(1, min(threads, rows // RULES.norm_min_rows)))


def _norm(v, gain, bias, *, threads: int):
    """The input side's norm of v (rows, F), its rows cut into blocks on gruxp's threads (each row's
    arithmetic is the same whatever the cut)."""
    rows, F = v.shape
    y, v_hat, rstd = np.empty_like(v), np.empty_like(v), np.empty((rows, 1), v.dtype)
    kernel = _norm_kernels(np.dtype(v.dtype))[0]
    bias = np.zeros((F,), v.dtype) if bias is None else np.ascontiguousarray(bias)
    args = (np.ascontiguousarray(v), np.ascontiguousarray(gain), bias, y, v_hat, rstd)
    workers.run([partial(kernel, *args, r0, r1) for r0, r1 in _row_blocks(rows, threads)], threads)
    return y, v_hat, rstd


def _norm_backward(d, v_hat, rstd, gain, *, threads: int):
    shape = d.shape
    d2, hat2, rstd2 = (np.reshape(np.ascontiguousarray(a), (-1, a.shape[-1])) for a in (d, v_hat, rstd))
    dv = np.empty_like(d2)
    kernel = _norm_kernels(np.dtype(d.dtype))[1]
    args = (d2, hat2, rstd2, np.ascontiguousarray(gain), dv)
    workers.run([partial(kernel, *args, r0, r1) for r0, r1 in _row_blocks(d2.shape[0], threads)], threads)
    return np.reshape(dv, shape)


def _plan(shape: tuple, dtype, directions: int) -> Any:
    T, B, H = shape
    return planned("lngru", T, B, H, H, directions, dtype)


def _one_thread() -> None:
    lib = blas.library()
    if lib is not None:
        lib.one_thread()


class LayerNormGruCpu:
    """The layer functions :class:`gruxp._native.cpu.CpuRoute` hands a layer-normalised GRU layer to."""

    def __init__(self, route: Any) -> None:
        self.route = route  # the CPU route: its matmul makes the products outside the loop

    @staticmethod
    def plan(
        shape: Shape, dtype: Any, machine: Any, *, fuser: str, max_workers: Any, options: Any, rules: Any = RULES
    ) -> CellPlan:
        """The plan rule of this loop: :func:`~gruxp._native.plan.cell_plan`'s, the directions of a
        layer run side by side; without gruxp's BLAS the generic code (the loop calls it each step)."""
        blocked = "gruxp's BLAS is not installed (the loop calls it each step)" if machine.blas is None else None
        return cell_plan("lngru", shape, dtype, machine, fuser=fuser, max_workers=max_workers, blocked=blocked, rules=rules)

    def layer_forward(self, forward, calls):
        x, h0 = calls[0].x, calls[0].h0
        plan = _plan((*x.shape[:2], h0.shape[-1]), x.dtype, len(calls))
        if plan.route == "generic":
            return GENERIC.layer_forward(forward, calls)
        record("lngru-cpu", "forward", "the layer-norm GRU's numba loop")
        _one_thread()
        jobs = [self._forward_job(call, plan) for call in calls]
        workers.run([task for tasks, _ in jobs for task in tasks], plan.workers)
        return [result() for _, result in jobs]

    def layer_backward(self, backward, calls):
        hs = calls[0].tape.hs
        plan = _plan(hs.shape, hs.dtype, len(calls))
        if plan.route == "generic":
            return GENERIC.layer_backward(backward, calls)
        record("lngru-cpu", "backward", "the layer-norm GRU's numba loop")
        _one_thread()
        jobs = [self._backward_job(call, plan) for call in calls]
        workers.run([task for tasks, _ in jobs for task in tasks], plan.workers)
        return [finish() for _, finish in jobs]

    def _forward_job(self, call: Any, plan: CellPlan):
        x, h0, p, reverse, record = call.x, call.h0, call.p, call.reverse, call.record
        T, B, _ = x.shape
        H = h0.shape[-1]
        dtype = x.dtype
        pieces, threads = plan.pieces, plan.workers
        norm = partial(_norm, threads=threads)
        gi, gi_hat, gi_rstd = _lngru.input_side(x, p, xp=call.xp, matmul=self.route.matmul, norm=norm)
        hs, r, z, n, ghn = (np.empty((T, B, H), dtype) for _ in range(5))
        gh_hat, gh_rstd = np.empty((T, B, 3 * H), dtype), np.empty((T, B, 1), dtype)
        keep = call.options.zoneout_mask
        use_keep = keep is not None
        keep = np.ascontiguousarray(keep) if use_keep else np.zeros((1, 1, H), dtype)
        bias = p["bias_hh"] if "bias_hh" in p else np.zeros((3 * H,), dtype)
        loop = _forward_loop(np.dtype(dtype))
        args = (gi, transposed(p["weight_hh"]), np.ascontiguousarray(p["ln_weight_hh"]), np.ascontiguousarray(bias))
        start = np.ascontiguousarray(h0)
        active = _active(call.mask, T, B)
        rest = (active, keep, use_keep, dtype.type(call.options.zoneout), hs, r, z, n, ghn, gh_hat, gh_rstd, reverse)
        tasks = [partial(loop, *args, start, *rest, b0, b1) for b0, b1 in pieces]
        mask = call.mask
        tape = (
            _lngru.LayerNormDirectionTape(
                x, h0, hs, r, z, n, ghn, gh_hat, gh_rstd, gi_hat, gi_rstd, call.options.zoneout_mask, call.options.zoneout
            )
            if record
            else None
        )

        def result():  # once the tasks ran: (out, h_T, tape or None), as the generic direction returns them
            out = masked_outputs(hs, mask, xp=np)
            return out, hs[0 if reverse else T - 1], tape

        return tasks, result

    def _backward_job(self, call: Any, plan: CellPlan):
        tape, d_out, d_hT, p, reverse = call.tape, call.d_out, call.d_hT, call.p, call.reverse
        x, h0 = tape.x, tape.h0
        T, B, _ = x.shape
        H = h0.shape[-1]
        dtype = x.dtype
        h_prev = previous_states(tape, reverse=reverse, xp=call.xp)
        d = output_gradient(d_out, B, H, dtype)
        dh = state_gradient(d_hT, B, H, dtype)
        d_gi, d_raw = np.empty((T, B, 3 * H), dtype), np.empty((T, B, 3 * H), dtype)
        keep = tape.keep
        use_keep = keep is not None
        keep = np.ascontiguousarray(keep) if use_keep else np.zeros((1, 1, H), dtype)
        active = _active(call.mask, T, B)
        loop = _backward_loop(np.dtype(dtype))
        saved = (np.ascontiguousarray(a) for a in (h_prev, tape.r, tape.z, tape.n, tape.gh_n, tape.gh_hat, tape.gh_rstd))
        args = (d, active, keep, use_keep, dtype.type(tape.zoneout), *saved, np.ascontiguousarray(p["ln_weight_hh"]))
        w = np.ascontiguousarray(p["weight_hh"])
        pieces, threads = plan.pieces, plan.workers
        sum_dv, sum_d = np.empty((len(pieces), 3 * H), dtype), np.empty((len(pieces), 3 * H), dtype)
        tasks = [
            partial(loop, *args, w, dh, d_gi, sum_dv[k], sum_d[k], d_raw, reverse, b0, b1) for k, (b0, b1) in enumerate(pieces)
        ]

        def finish():
            gh_sums = (sum_dv[0], sum_d[0]) if len(pieces) == 1 else (np.sum(sum_dv, axis=0), np.sum(sum_d, axis=0))
            grads, dx = _lngru.finish_backward(
                d_gi,
                None,
                d_raw,
                h_prev,
                tape,
                p,
                bias=call.bias,
                need_dx=call.need_dx,
                xp=call.xp,
                matmul=self.route.matmul,
                norm_backward=partial(_norm_backward, threads=threads),
                sums=partial(_sums, threads=threads),
                gh_sums=gh_sums,
            )
            return (grads, dx), dh

        return tasks, finish
