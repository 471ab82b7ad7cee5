"""NumPy on the CPU, minGRU: the recurrence as one compiled pass over the projections, from the shared source.

On a CPU the parallel scan buys nothing: its two levels read and write the (T, B, H) arrays a dozen
times, while one sequential pass per row reads the projections once and is bound by memory, not
by the dependence between steps. So this route keeps the generic code's projections and weight
gradients (one GEMM each, on gruxp's BLAS through :meth:`CpuRoute.matmul`) and fuses everything
between them: numba compiles the cell's own element-wise functions
(:func:`~gruxp.functional._mingru.min_gates`, :func:`~gruxp.functional._mingru.linear_step`,
:func:`~gruxp.functional._mingru.min_gates_backward`, and the core's ``masked_state``) into a loop
over the steps of each row, the rows cut into pieces on gruxp's threads. Every element's arithmetic
is the same whatever the cut, so the cut may follow the free cores. Equal to the generic scan at the
stated bound (float64 ≤ 1e-12 relative; tested).

It runs the linear form; ``log_space`` (the paper's form) and a missing numba leave the layer to the
generic code, as does the setting ``fuser="numpy"``.
"""

from __future__ import annotations

from functools import cache, partial
from typing import Any

import numpy as np

from .._trace import record
from ..functional import _mingru
from ..functional._routes import GENERIC
from ..functional._sequence import masked_outputs
from . import workers
from .cpu import _scratch, output_gradient, state_gradient
from .cpu import active_steps as _active
from .plan import RULES, CellPlan, Shape, cell_plan
from .planning import planned

__all__ = ["MinGruCpu"]


@cache
def _kernels(dtype: np.dtype) -> tuple[Any, Any]:
    import numba

    from . import numba_kernels as nk  # registers the core's helpers (sigmoid_grad, ...) with numba

    jit = dict(nk._JIT)
    sigmoid = nk.sigmoid32 if dtype == np.float32 else nk.sigmoid64
    zero = dtype.type(0.0)
    gates = numba.njit(inline="always", **jit)(_mingru.min_gates)
    step = numba.njit(inline="always", **jit)(_mingru.linear_step)
    gates_backward = numba.njit(inline="always", **jit)(_mingru.min_gates_backward)
    masked, select = nk._masked_state, nk.select

    @numba.njit(nogil=True, **jit)
    def forward_rows(proj, bias, h0, active, hs, z_out, reverse, b0, b1):
        # proj (T, B, 2H) without the bias: its candidate half gets it here, in place (the tape's v)
        T, H = proj.shape[0], h0.shape[1]
        b_k, b_v = bias[:H], bias[H:]
        for b in range(b0, b1):
            h = h0[b]
            for s in range(T):
                t = T - 1 - s if reverse else s
                k, v, zo, ho = proj[t, b, :H], proj[t, b, H:], z_out[t, b], hs[t, b]
                live = active[t, b]
                for j in range(H):
                    v[j] += b_v[j]
                    a, bb, z = gates(k[j] + b_k[j], v[j], sigmoid)
                    zo[j] = z
                    ho[j] = masked(live, step(a, bb, h[j]), h[j], select)
                h = ho

    @numba.njit(nogil=True, **jit)
    def backward_rows(z, v, hs, h0, d_out, active, carry, d_proj, sums, reverse, b0, b1):
        # carry[b] enters as dL/dh_T and leaves as dL/dh0; d_out is (T, B, H), or (1, B, H) of zeros;
        # sums (2H,) collects this piece's Σ d_proj (the bias's gradient), rows in processing order
        T, H = z.shape[0], h0.shape[1]
        sums[:] = zero
        for b in range(b0, b1):
            c = carry[b]  # a_{t+1} λ_{t+1}: what the later steps send back to h_t
            for s in range(T):
                t = s if reverse else T - 1 - s
                first = s == T - 1  # the first step processed: it started from h0
                hp = h0[b] if first else hs[t + 1 if reverse else t - 1, b]
                zb, vb, dk, dv = z[t, b], v[t, b], d_proj[t, b, :H], d_proj[t, b, H:]
                db = d_out[t if d_out.shape[0] == T else 0, b]
                live = active[t, b]
                for j in range(H):
                    lam = masked(live, db[j], zero, select) + c[j]
                    g_k, g_v = gates_backward(lam, hp[j], zb[j], vb[j])
                    dk[j] = masked(live, g_k, zero, select)
                    dv[j] = masked(live, g_v, zero, select)
                    sums[j] += dk[j]
                    sums[H + j] += dv[j]
                    c[j] = masked(live, step(1.0 - zb[j], zero, lam), lam, select)

    return forward_rows, backward_rows


def _plan(call: Any, shape: tuple, dtype) -> Any:
    T, B, H = shape
    return planned("mingru", T, B, H, H, 1, dtype, options=(("log_space", call.options.log_space),))


class MinGruCpu:
    """The layer functions :class:`gruxp._native.cpu.CpuRoute` hands a minGRU layer to."""

    def __init__(self, route: Any) -> None:
        self.route = route  # the CPU route: its matmul makes every product

    @staticmethod
    def plan(
        shape: Shape, dtype: Any, machine: Any, *, fuser: str, max_workers: Any, options: Any, rules: Any = RULES
    ) -> CellPlan:
        """The plan rule of this loop: :func:`~gruxp._native.plan.cell_plan`'s, for one direction at a
        time (the loop runs a layer's directions one after the other, each over all the CPUs); the
        log-space form is the generic code's (the loop runs the linear form)."""
        blocked = "log_space (the loop runs the linear form)" if options.get("log_space") else None
        one = Shape(shape.steps, shape.batch, shape.inputs, shape.hidden, 1)
        return cell_plan("mingru", one, dtype, machine, fuser=fuser, max_workers=max_workers, blocked=blocked, rules=rules)

    def layer_forward(self, forward, calls):
        x, h0 = calls[0].x, calls[0].h0
        plan = _plan(calls[0], (*x.shape[:2], h0.shape[-1]), x.dtype)
        if plan.route == "generic":
            return GENERIC.layer_forward(forward, calls)
        record("mingru-cpu", "forward", "minGRU's numba loop")
        return [self._forward(call, plan) for call in calls]

    def layer_backward(self, backward, calls):
        hs = calls[0].tape.hs
        plan = _plan(calls[0], hs.shape, hs.dtype)
        if plan.route == "generic":
            return GENERIC.layer_backward(backward, calls)
        record("mingru-cpu", "backward", "minGRU's numba loop")
        return [self._backward(call, plan) for call in calls]

    def _forward(self, call: Any, plan: CellPlan):
        x, h0, p, reverse = call.x, call.h0, call.p, call.reverse
        T, B, I = x.shape
        w = p["weight_ih"]
        H = w.shape[0] // 2
        proj = np.reshape(self.route.matmul(np.reshape(x, (T * B, I)), w.T), (T, B, 2 * H))  # this call's own array
        bias = np.ascontiguousarray(p["bias_ih"]) if "bias_ih" in p else np.zeros((2 * H,), x.dtype)
        hs, z = np.empty((T, B, H), x.dtype), np.empty((T, B, H), x.dtype)
        start = np.ascontiguousarray(h0)
        active = _active(call.mask, T, B)
        forward_rows = _kernels(np.dtype(x.dtype))[0]
        pieces, threads = plan.pieces, plan.workers
        workers.run([partial(forward_rows, proj, bias, start, active, hs, z, reverse, b0, b1) for b0, b1 in pieces], threads)
        mask = call.mask
        out = masked_outputs(hs, mask, xp=np)
        h_T = hs[0 if reverse else T - 1]
        tape = _mingru.MinGRUDirectionTape(x, h0, hs, z, proj[..., H:]) if call.record else None
        return out, h_T, tape

    def _backward(self, call: Any, plan: CellPlan):
        tape, d_out, d_hT, p, reverse = call.tape, call.d_out, call.d_hT, call.p, call.reverse
        x, h0 = tape.x, tape.h0
        T, B, I = x.shape
        H = h0.shape[-1]
        dtype = x.dtype
        d = output_gradient(d_out, B, H, dtype)
        carry = state_gradient(d_hT, B, H, dtype)
        d_proj = _scratch(("mingru d_proj", reverse), (T, B, 2 * H), dtype)  # read only by this call's products
        active = _active(call.mask, T, B)
        backward_rows = _kernels(np.dtype(dtype))[1]
        z, hs = np.ascontiguousarray(tape.z), np.ascontiguousarray(tape.hs)
        v = tape.v  # a view of the projections (rows of 2H, the candidate's half): read in place
        start = np.ascontiguousarray(h0)
        pieces, threads = plan.pieces, plan.workers
        sums = np.empty((len(pieces), 2 * H), dtype)
        args = (z, v, hs, start, d, active, carry, d_proj)
        workers.run([partial(backward_rows, *args, sums[k], reverse, b0, b1) for k, (b0, b1) in enumerate(pieces)], threads)
        d2 = np.reshape(d_proj, (T * B, 2 * H))
        grads = {"weight_ih": self.route.matmul(d2.T, np.reshape(x, (T * B, I)))}
        if call.bias:
            grads["bias_ih"] = sums[0] if len(pieces) == 1 else np.sum(sums, axis=0)
        dx = np.reshape(self.route.matmul(d2, p["weight_ih"]), (T, B, I)) if call.need_dx else None
        return (grads, dx), carry
