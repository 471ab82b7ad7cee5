"""NumPy on the CPU: the executor that runs a layer by its plan, and the route that asks for it.

The loop holds only what is sequential. Forward, each step is one GEMM, ``gh = h Wᵀ`` (rows, 3H),
then the step's element-wise part, :func:`gruxp.functional._cell.gates_forward`, applied by the
*fuser*. Backward, each step is the element-wise part (:func:`~gruxp.functional._cell.gates_backward`)
then one GEMM, ``[d_r, d_z, d_ghn] (rows, 3H) @ W_hh (3H, H)``, its left operand kept for the weight
gradients (GEMMs over all steps, after the loop). Everything is written into arrays allocated
here; nothing the caller can see is mutated, and past a sequence's end the loops apply the
core's :func:`~gruxp.functional._cell.masked_state`.

Fusers, each applying the same shared functions:

* ``numba``: one compiled pass over the (rows, H) elements per step, the shared functions inlined,
  with vectorisable activations (see :mod:`gruxp._native.numba_kernels`); equal to the generic
  code at a stated bound (float64 ≤ 1e-12 relative; tested). With gruxp's BLAS, the whole time
  loop is compiled, its GEMM a call into that BLAS, the GIL released.
* ``numpy``: the shared functions called on whole blocks, exactly as the generic code calls them,
  results copied into the buffers (with NumPy's BLAS: bit for bit the generic code; tested).

The executor decides nothing: a :class:`gruxp._native.plan.Plan` says which fuser and BLAS, how
the batch is cut into pieces (each piece a recurrence of its own over its rows, run on gruxp's
threads by :mod:`gruxp._native.workers`), how many steps an input GEMM takes, which form a step's
product takes, and how the GEMMs after the backward loop are cut. The backward kernel also
finishes the previous step, dL/dh = gz + [d_r, d_z, d_ghn] W_hh, at the start of the next kernel
call, which saves a pass per step.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import weakref
from functools import partial
from typing import Any

import numpy as np

from .._config import get_config
from .._namespace import is_numpy_namespace
from .._trace import record
from ..functional._cell import activations, folded_bias, gates_backward, gates_forward, input_grad, masked_state, param_grads
from ..functional._routes import GENERIC, Route
from ..functional._sequence import direction_backward_loop, direction_forward_loop, direction_result, previous_states
from . import blas, workers
from .loops import Fuser, time_loops, transposed
from .machine import this_machine
from .plan import RULES, Plan, cut, product_plan
from .planning import planned

__all__ = ["CpuRoute", "Executor", "TapePool", "clear_buffers", "numpy_fuser"]


def _numpy_matmul(a, b, out, panel=0):
    np.matmul(a, b, out=out)


def _gruxp_matmul(a, b, out, panel=0):
    blas.matmul(a, b, out=out)


_numpy_sigmoid, _ = activations(np)


def _numpy_forward_step(gi, b_in, gh, b_hn, h, active, h_out, r_out, z_out, n_out, ghn_out):
    # r_out, z_out and n_out None: nothing records the gates (a call without a tape), none is copied
    H = h.shape[1]
    gi = gi + b_in
    np.add(gh[:, 2 * H :], b_hn, out=ghn_out)
    h_new, r, z, n = gates_forward(
        gi[:, :H], gi[:, H : 2 * H], gi[:, 2 * H :], gh[:, :H], gh[:, H : 2 * H], ghn_out, h, _numpy_sigmoid, np.tanh
    )
    if not active.all():
        h_new = masked_state(active[:, None], h_new, h, np.where)
    np.copyto(h_out, h_new)
    if r_out is not None:
        np.copyto(r_out, r)
        np.copyto(z_out, z)
        np.copyto(n_out, n)


def _numpy_backward_step(gz, prod, active_prev, carry, d_out, active, h_prev, r, z, n, gh_n, d_i, d_h):
    H = carry.shape[1]
    dh = gz + prod
    if not active_prev.all():
        dh = masked_state(active_prev[:, None], dh, carry, np.where)
    np.copyto(carry, dh)
    g = dh + d_out
    if not active.all():
        g = masked_state(active[:, None], g, np.zeros((), g.dtype), np.where)
    d_r, d_z, d_an, d_gn, gz_new = gates_backward(g, h_prev, r, z, n, gh_n)
    for buffer, value in (
        (d_i[:, :H], d_r),
        (d_i[:, H : 2 * H], d_z),
        (d_i[:, 2 * H :], d_an),
        (d_h[:, :H], d_r),
        (d_h[:, H : 2 * H], d_z),
        (d_h[:, 2 * H :], d_gn),
        (gz, gz_new),
    ):
        np.copyto(buffer, value)


numpy_fuser = Fuser("numpy", _numpy_forward_step, _numpy_backward_step)


def active_steps(mask, T: int, B: int) -> np.ndarray:
    """(T, B) bool: whether each sequence is still running at each step (read only by the kernels;
    without a mask, one all-True array per small shape, made once)."""
    if mask is not None:
        return np.ascontiguousarray(mask[:, :, 0])
    return _all_active(T, B) if T * B <= 4096 else np.ones((T, B), bool)


@functools.lru_cache(maxsize=64)
def _all_active(T: int, B: int) -> np.ndarray:
    return np.ones((T, B), bool)


def output_gradient(d_out: Any, B: int, H: int, dtype: Any) -> np.ndarray:
    """A direction's output gradient as the kernels read it: (T, B, H) C-contiguous, or for None
    (no gradient reaches the outputs) one (1, B, H) block of zeros that every step reads."""
    return np.zeros((1, B, H), dtype) if d_out is None else np.ascontiguousarray(d_out)


def state_gradient(d_hT: Any, B: int, H: int, dtype: Any) -> np.ndarray:
    """dL/dh_T as the kernels carry it (updated in place, to dL/dh0): a copy, or zeros for None."""
    return np.zeros((B, H), dtype) if d_hT is None else np.array(d_hT, dtype=dtype, copy=True)


class TapePool:
    """One thread's tape blocks, each handed out again once nothing but this pool refers to it.

    A block is in use while any array made from it lives (a tape, an output, a final state: NumPy
    views keep their base alive, and so does every holder of its buffer: a memoryview,
    ``np.frombuffer``, ctypes from ``np.ctypeslib``, ``torch.from_numpy``; tested). That is read
    from its reference count, compared with an array held the same way, so the test does not
    depend on how the interpreter counts its own temporaries; only where reference counts are
    exact (CPython with the GIL) is a block reused at all. A request takes the smallest free block
    that fits and is at most twice its size (else a new one); a free block unused for
    :attr:`IDLE_TAKES` requests goes back to the OS.
    """

    IDLE_TAKES = 16
    REUSE = sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()

    def __init__(self) -> None:
        self.entries: list[list] = []  # [block, the request that last took it]
        self.takes = 0
        self._probe = [np.empty(0)]  # held like each block: by one list

    def _free(self, entry: list) -> bool:
        return self.REUSE and sys.getrefcount(entry[0]) == sys.getrefcount(self._probe[0])

    def take(self, size: int, dtype) -> np.ndarray:
        """A 1-D array of ``size`` elements of ``dtype`` (contents undefined), no one else's."""
        self.takes += 1
        dtype = np.dtype(dtype)
        free = [e for e in self.entries if self._free(e)]
        fitting = [e for e in free if e[0].dtype == dtype and size <= e[0].size <= 2 * size]
        chosen = min(fitting, key=lambda e: e[0].size, default=None)
        stale = {id(e) for e in free if e is not chosen and self.takes - e[1] > self.IDLE_TAKES}
        self.entries = [e for e in self.entries if id(e) not in stale]
        if chosen is None:
            chosen = [np.empty(size, dtype), 0]
            if self.REUSE:
                self.entries.append(chosen)
        chosen[1] = self.takes
        return chosen[0][:size]


class _Local:
    """One thread's scratch buffers (never handed to a caller) and tape pool."""

    def __init__(self) -> None:
        self.scratch: dict = {}
        self.tapes = TapePool()


_locals: weakref.WeakSet = weakref.WeakSet()
_thread = threading.local()


def _here() -> _Local:
    local = getattr(_thread, "local", None)
    if local is None:
        local = _thread.local = _Local()
        _locals.add(local)
    return local


SCRATCH_MIN_BYTES = 1 << 16  # smaller buffers are fresh arrays: cheaper than the lookup, no page to fault


def _scratch(name, shape: tuple, dtype, zero: bool = False) -> np.ndarray:
    """This thread's buffer ``name`` as a C-contiguous array of ``shape``, reused by its next call
    (a fresh array costs a page fault per 4 KB on first touch); it only grows. A buffer under
    64 KiB is a fresh array (a one-token call asks for a dozen)."""
    size = math.prod(shape)
    if size * np.dtype(dtype).itemsize < SCRATCH_MIN_BYTES:
        return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
    buffers = _here().scratch
    a = buffers.get(name)
    if a is None or a.dtype != dtype or a.size < size:
        a = buffers[name] = np.empty(size, dtype)
    view = a[:size].reshape(shape)
    if zero:
        view.fill(0)
    return view


def clear_buffers() -> None:
    """Let go of every thread's scratch buffers and free tape blocks (rebuilt on the next call).
    Call it while no gruxp call runs."""
    for local in list(_locals):
        local.scratch.clear()
        local.tapes = TapePool()


def previous_states_view(hs, h0, *, reverse: bool):
    """(T, B, H): the state each step started from, as a view where :meth:`Executor.forward` stored
    ``h0`` beside ``hs`` in one tape block; else None (the caller copies)."""
    T, B, H = hs.shape
    block = hs.base
    if not (
        isinstance(block, np.ndarray)
        and h0.base is block
        and block.ndim == 1
        and hs.flags.c_contiguous
        and h0.flags.c_contiguous
        and h0.shape == (B, H)
        and h0.dtype == hs.dtype
    ):
        return None
    row = B * H * hs.itemsize
    if h0.ctypes.data != hs.ctypes.data + (T * row if reverse else -row):
        return None
    first = hs.ctypes.data + row if reverse else h0.ctypes.data  # where h_prev[0] lies
    start = (first - block.ctypes.data) // hs.itemsize
    return block[start : start + T * B * H].reshape(T, B, H)


def _one_thread(plan: Plan) -> None:
    lib = blas.library()
    if plan.blas == "gruxp" and lib is not None:
        lib.one_thread()


class Executor:
    """Runs one fuser's loops over a layer's directions, exactly as a :class:`Plan` says."""

    def __init__(self, fuser: Fuser):
        self.fuser = fuser
        self._python_loops = {
            name: time_loops(fuser.forward_step, fuser.backward_step, gemm)
            for name, gemm in (("numpy", _numpy_matmul), ("gruxp", _gruxp_matmul))
        }

    def _loops(self, p: Plan) -> tuple:
        if p.compiled:
            return self.fuser.transposed_loops if p.transposed else self.fuser.compiled_loops
        return self._python_loops[p.blas]

    @staticmethod
    def _matmul(plan: Plan):
        return blas.matmul if plan.blas == "gruxp" else np.matmul

    # -- forward -------------------------------------------------------------------------------
    def forward(self, plan: Plan, calls: list[Any]) -> list:
        """Each direction's ``(out, h_T, DirectionTape or None)``, as the core's direction function returns them."""
        _one_thread(plan)
        if not plan.compiled and not calls[0].record and len(plan.pieces) == 1:
            return [self._forward_direct(plan, call) for call in calls]
        jobs = [self._forward_job(plan, d, call) for d, call in enumerate(calls)]
        workers.run([task for tasks, _ in jobs for task in tasks], plan.workers)
        return [
            direction_result(*result, mask=call.mask, record=call.record, xp=call.xp)
            for (_, result), call in zip(jobs, calls, strict=True)
        ]

    def _forward_direct(self, plan: Plan, call: Any) -> tuple:
        """One direction without a tape, one piece, in the calling thread: the loop of
        :meth:`_forward_rows` with no task, no tape and no gate copies. The same products and the same
        kernel, so the same bits; a one-token call pays for little more than its two products."""
        x, h0, params, reverse = call.x, call.h0, call.p, call.reverse
        T, B, I = x.shape
        w_ih, w_hh = params["weight_ih"], params["weight_hh"]
        H = w_hh.shape[1]
        dtype = x.dtype
        b_in, b_hn = folded_bias(params.get("bias_ih"), params.get("bias_hh"), reset_after=True, xp=call.xp)
        b_in = np.zeros((3 * H,), dtype) if b_in is None else b_in
        b_hn = np.zeros((H,), dtype) if b_hn is None else b_hn
        w = transposed(w_hh) if plan.copy_weights else w_hh.T
        matmul = self._matmul(plan)
        gi = _scratch("gi", (T, B, 3 * H), dtype)
        matmul(x.reshape(T * B, I), w_ih.T, out=gi.reshape(T * B, 3 * H))
        hs, gh, ghn = np.empty((T, B, H), dtype), _scratch("gh", (B, 3 * H), dtype), _scratch("g", (B, H), dtype)
        # the gates nothing will read: none for NumPy's kernel, one scratch for numba's (it writes them)
        r, z, n = (None, None, None) if self.fuser.name == "numpy" else _scratch("rzn", (3, B, H), dtype)
        active = active_steps(call.mask, T, B)
        step = self.fuser.forward_step
        h = np.ascontiguousarray(h0)
        for s in range(T):
            t = T - 1 - s if reverse else s
            matmul(h, w, out=gh)
            step(gi[t], b_in, gh, b_hn, h, active[t], hs[t], r, z, n, ghn)
            h = hs[t]
        return direction_result(x, h0, h, (hs,), mask=call.mask, record=False, xp=call.xp)

    def _forward_job(self, plan: Plan, d: int, call: Any) -> tuple[list, tuple]:
        """One direction's forward: its buffers, and a task per piece of the batch."""
        x, h0, params, record = call.x, call.h0, call.p, call.record
        T, B, I = x.shape
        w_ih, w_hh = params["weight_ih"], params["weight_hh"]
        H = w_hh.shape[1]
        dtype = x.dtype
        if record:
            # The tape in one block from this thread's pool: h0 and the states (h0 first, or last
            # when reverse: the states each step started from are then a view), r, z, n, gh_n.
            block = _here().tapes.take((5 * T + 1) * B * H, dtype)
            states = block[: (T + 1) * B * H].reshape(T + 1, B, H)
            hs, h0_kept = (states[:T], states[T]) if call.reverse else (states[1:], states[0])
            np.copyto(h0_kept, h0)
            h0 = h0_kept
            r, z, n, ghn = block[(T + 1) * B * H :].reshape(4, T, B, H)
        else:
            hs, (r, z, n, ghn) = np.empty((T, B, H), dtype), [_scratch((k, d), (1, B, H), dtype) for k in "rzng"]
        b_in, b_hn = folded_bias(params.get("bias_ih"), params.get("bias_hh"), reset_after=True, xp=call.xp)
        b_in = np.zeros((3 * H,), dtype) if b_in is None else np.ascontiguousarray(b_in)  # added in the kernel: a pass less
        b_hn = np.zeros((H,), dtype) if b_hn is None else np.ascontiguousarray(b_hn)
        # (rows, H) @ Wᵀ: by a C-contiguous copy of Wᵀ where the plan says it pays (or the compiled
        # loop needs it), else by the view (on NumPy's BLAS always, as the generic code multiplies);
        # W hᵀ takes W itself. A copy is made for this call: no call can read another's stale copy.
        w = np.ascontiguousarray(w_hh) if plan.transposed else transposed(w_hh) if plan.copy_weights else w_hh.T
        active = active_steps(call.mask, T, B)
        h = np.ascontiguousarray(h0)
        tape = (hs, r, z, n, ghn)
        tasks = [
            partial(self._forward_rows, plan, x, h[b0:b1], w_ih, b_in, w, b_hn, active, tape, b0, b1, call.reverse, record)
            for b0, b1 in plan.pieces
        ]
        return tasks, (x, h0, hs[0 if call.reverse else T - 1], tape if record else (hs,))

    def _forward_rows(self, plan: Plan, x, h, w_ih, b_in, w, b_hn, active, tape, b0, b1, reverse, record) -> None:
        """Rows b0:b1 of a direction from their start state ``h``: the input pre-activations a chunk
        of steps at a time (this thread's buffers), each chunk then through the loop."""
        T, _, I = x.shape
        H = b_hn.shape[0]
        rows, dtype = b1 - b0, x.dtype
        hs, r, z, n, ghn = tape
        x = x[:, b0:b1]
        steps = plan.chunk
        gi = _scratch("gi", (steps, rows, 3 * H), dtype)
        gh = _scratch("gh", (rows, 3 * H), dtype)
        loop = self._loops(plan)[0]
        matmul = self._matmul(plan)
        x_buffer = None if x.flags.c_contiguous else _scratch("x", (steps, rows, I), dtype)  # a chunk's copy
        for start in range(0, T, steps):
            # the chunk [t0, t1) in processing order: from the end when reverse
            t0, t1 = (max(0, T - start - steps), T - start) if reverse else (start, min(T, start + steps))
            k = t1 - t0
            if x_buffer is None:
                x_chunk = x[t0:t1]
            else:
                x_chunk = x_buffer[:k]
                np.copyto(x_chunk, x[t0:t1])
            # by the transposed view, as the generic code does: as fast for many rows as a copy of W_ihᵀ
            matmul(x_chunk.reshape(k * rows, I), w_ih.T, out=gi[:k].reshape(k * rows, 3 * H))
            rec = (r[t0:t1], z[t0:t1], n[t0:t1], ghn[t0:t1]) if record else (r, z, n, ghn)
            loop(gi[:k], b_in, w, b_hn, h, active[t0:t1], hs[t0:t1], *rec, gh, reverse, record, b0, b1, plan.panel)
            h = hs[t0 if reverse else t1 - 1, b0:b1]

    # -- backward ------------------------------------------------------------------------------
    def backward(self, plan: Plan, calls: list[Any]) -> list:
        """Each direction's ``((grads, dx or None), dh0)``, as the core's direction function returns them:
        the loops over every piece first, then the GEMMs after them, cut into blocks."""
        _one_thread(plan)
        jobs = [self._backward_job(plan, d, call) for d, call in enumerate(calls)]
        workers.run([task for tasks, _ in jobs for task in tasks], plan.workers)
        finished = [self._finish_job(plan, call, *loop_result) for (_, loop_result), call in zip(jobs, calls, strict=True)]
        workers.run([task for tasks, _ in finished for task in tasks], plan.workers)
        return [result() for _, result in finished]

    def _backward_job(self, plan: Plan, d: int, call: Any) -> tuple[list, tuple]:
        tape, d_out, d_hT = call.tape, call.d_out, call.d_hT
        T, B, H = tape.hs.shape
        dtype = tape.hs.dtype
        h_prev = previous_states_view(tape.hs, tape.h0, reverse=call.reverse)
        if h_prev is None:
            h_prev = previous_states(tape, reverse=call.reverse, xp=call.xp)
        w_hh = call.p["weight_hh"]
        w = transposed(w_hh) if plan.transposed else np.ascontiguousarray(w_hh)
        # d_i and d_h are read by the GEMMs after the loop, before this thread's next backward call
        d_i, d_h = _scratch(("d_i", d), (T, B, 3 * H), dtype), _scratch(("d_h", d), (T, B, 3 * H), dtype)
        prod, carry = _scratch(("prod", d), (B, H), dtype, zero=True), _scratch(("carry", d), (B, H), dtype)
        gz = state_gradient(d_hT, B, H, dtype)
        # a batch-first d_out, or one direction's columns of it, is copied to (T, B, H) piece by piece
        d_source = None if d_out is None or d_out.flags.c_contiguous else d_out
        if d_out is None:
            d_out = output_gradient(None, B, H, dtype)
        elif d_source is not None:
            d_out = _scratch(("d_out", d), d_out.shape, dtype)
        active = active_steps(call.mask, T, B)
        first_active = np.ones((B,), bool)
        loop = self._loops(plan)[1]
        r, z, n, gh_n = (np.ascontiguousarray(a) for a in (tape.r, tape.z, tape.n, tape.gh_n))

        def rows(b0: int, b1: int) -> None:
            if d_source is not None:
                np.copyto(d_out[:, b0:b1], d_source[:, b0:b1])
            loop(
                gz[b0:b1],
                prod[b0:b1],
                first_active[b0:b1],
                carry[b0:b1],
                d_out,
                active,
                h_prev,
                r,
                z,
                n,
                gh_n,
                d_i,
                d_h,
                w,
                call.reverse,
                b0,
                b1,
                plan.back_panel,
            )

        last = active[T - 1 if call.reverse else 0]  # of the last step processed
        return [partial(rows, b0, b1) for b0, b1 in plan.pieces], (d_i, d_h, h_prev, gz, prod, carry, last)

    def _finish_job(self, plan: Plan, call: Any, d_i, d_h, h_prev, gz, prod, carry, last) -> tuple[list, Any]:
        """The GEMMs after a direction's loop, as tasks: the weight gradients by blocks of gate
        columns (each element the same sum, whatever the cut), dx by blocks of rows."""
        x, params = call.tape.x, call.p
        T, B, I = x.shape
        rows, H = T * B, h_prev.shape[-1]
        d_i2, d_h2 = np.reshape(d_i, (rows, 3 * H)), np.reshape(d_h, (rows, 3 * H))
        x2, h2 = np.reshape(x, (rows, I)), np.reshape(h_prev, (rows, H))
        matmul = self._matmul(plan)
        blocks: list = [None] * plan.grad_blocks
        dx = np.empty((rows, I), x.dtype) if call.need_dx else None

        def grads(k: int, c0: int, c1: int) -> None:
            blocks[k] = param_grads(
                d_i2[:, c0:c1], d_h2[:, c0:c1], x2, h2, None, reset_after=True, bias=call.bias, xp=call.xp, matmul=matmul
            )

        def inputs(out: np.ndarray, r0: int, r1: int) -> None:
            input_grad(d_i2[r0:r1], params["weight_ih"], matmul=partial(matmul, out=out[r0:r1]))

        tasks = [partial(grads, k, c0, c1) for k, (c0, c1) in enumerate(cut(3 * H, plan.grad_blocks))]
        if dx is not None:
            tasks += [partial(inputs, dx, r0, r1) for r0, r1 in cut(rows, plan.grad_blocks)]

        def result():
            g = blocks[0] if len(blocks) == 1 else {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
            dh0 = gz + prod
            if not last.all():
                dh0 = masked_state(last[:, None], dh0, carry, np.where)
            return (g, None if dx is None else np.reshape(dx, (T, B, I))), dh0

        return tasks, result


def _product_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    blas.matmul(a, b, out=out)


_executors: dict = {}


def _executor(fuser: str, dtype) -> Executor:
    key = (fuser, np.dtype(dtype))
    if key not in _executors:
        if fuser == "numpy":
            _executors[key] = Executor(numpy_fuser)
        else:
            from .numba_kernels import fuser as numba_fuser

            _executors[key] = Executor(numba_fuser(dtype))
    return _executors[key]


class CpuRoute(Route):
    """NumPy arrays on the CPU: a layer runs on :class:`Executor` by the plan for its shape, or, where
    the plan says so (reset_before, float16), as the generic code."""

    name = "numpy-cpu"
    shares_states = False  # the tape keeps the states in its own block (beside h0: h_prev is a view)

    def __init__(self) -> None:
        self._cell_loops: dict[str, Any] = {}  # other cells' CPU loops (gruxp.cells), made on first use

    def _other(self, function: Any) -> Route:
        """The route for another cell's direction function: its CPU loop where its declaration names
        one (:mod:`gruxp.cells`), else the generic route."""
        from .. import cells

        spec = cells.for_function(function)
        if spec is None or spec.cpu is None:
            return GENERIC
        if spec.name not in self._cell_loops:
            self._cell_loops[spec.name] = spec.cpu_route(self)
        return self._cell_loops[spec.name]

    def claims(self, xp) -> bool:
        return is_numpy_namespace(xp)

    @staticmethod
    def plan_for(steps: int, batch: int, inputs: int, hidden: int, directions: int, dtype, *, reset_after: bool) -> Plan:
        """The GRU's plan for one layer under the settings in effect here (see :func:`gruxp.config_context`)."""
        made = planned("gru", steps, batch, inputs, hidden, directions, dtype, options=(("reset_after", reset_after),))
        assert isinstance(made, Plan)
        return made

    def matmul(self, a, b):
        """``a @ b`` on gruxp's BLAS, the result cut into blocks by :func:`gruxp._native.plan.product_plan`
        (the same bits on any number of threads); NumPy's matmul where gruxp's BLAS is absent."""
        lib = blas.library()
        if lib is None or a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype not in lib.gemm:
            return a @ b
        lib.one_thread()
        (M, K), N = a.shape, b.shape[1]
        if M * N * K < RULES.product_min_work:  # one block: the plan's answer, without asking it
            return blas.matmul(a, b)
        axis, blocks, threads = product_plan(M, N, K, this_machine(), max_workers=get_config()["max_workers"])
        out = np.empty((M, N), a.dtype)
        if blocks == 1:
            return blas.matmul(a, b, out=out)
        if axis == 0:
            parts = [(a[r0:r1], b, out[r0:r1]) for r0, r1 in cut(M, blocks)]
        else:
            parts = [(a, b[:, c0:c1], out[:, c0:c1]) for c0, c1 in cut(N, blocks)]
        workers.run([partial(_product_into, *part) for part in parts], threads)
        return out

    def layer_forward(self, forward, calls):
        if forward is not direction_forward_loop:  # another cell: its own fused loop, or the generic one
            return self._other(forward).layer_forward(forward, calls)
        x, w_hh = calls[0].x, calls[0].p["weight_hh"]
        T, B, I = x.shape
        plan = self.plan_for(T, B, I, w_hh.shape[1], len(calls), x.dtype, reset_after=calls[0].options.reset_after)
        if plan.route == "generic":
            return super().layer_forward(forward, calls)
        record(self.name, "forward", _how(plan))
        return _executor(plan.fuser, x.dtype).forward(plan, calls)

    def layer_backward(self, backward, calls):
        if backward is not direction_backward_loop:
            return self._other(backward).layer_backward(backward, calls)
        tape = calls[0].tape
        T, B, H = tape.hs.shape
        plan = self.plan_for(T, B, tape.x.shape[-1], H, len(calls), tape.hs.dtype, reset_after=calls[0].options.reset_after)
        if plan.route == "generic":
            return super().layer_backward(backward, calls)
        record(self.name, "backward", _how(plan))
        return _executor(plan.fuser, tape.hs.dtype).backward(plan, calls)


def _how(plan: Plan) -> str:
    """What the fused executor runs, in the words of :func:`gruxp.routes_taken`."""
    loop = "the whole loop compiled" if plan.compiled else "a Python loop over fused steps"
    return f"fused by {plan.fuser}, {loop}"
