"""NumPy on the CPU: the time loop of one reset_after direction, with buffers and a fuser.

The loop holds only what is sequential. Forward, each step is one GEMM, ``gh = h Wᵀ`` (B, 3H),
then the step's element-wise part, :func:`gruxp.functional._cell.gates_forward`, applied by the
*fuser*. Backward, each step is the element-wise part (:func:`~gruxp.functional._cell.gates_backward`)
then one GEMM, ``[d_r, d_z, d_ghn] (B, 3H) @ W_hh (3H, H)``, its left operand kept for the weight
gradient (one GEMM over all steps). Everything is written into arrays
allocated here, once per call; nothing the caller can see is mutated.

Fusers, each applying the same shared functions:

* ``numba``: one compiled pass over the (B, H) elements per step, the shared functions inlined,
  with vectorisable activations (see :mod:`gruxp._native.numba_kernels`); equal to the generic
  code at a stated bound (float64 ≤ 1e-12 relative; tested).
* ``numpy``: the shared functions called on whole (B, H) blocks, exactly as the generic code calls
  them, results copied into the buffers: bit for bit the generic code (tested). The fallback
  without numba.

Where OpenBLAS forms a product with few columns faster than with as few rows (float32, H ≥ 512,
8 ≤ B ≤ 16; see :meth:`FusedLoop._transposed`), the compiled loops' GEMM forms it transposed and
copies it into the rows the step reads: same kernels, same buffers.

The backward kernel also finishes the previous step: dL/dh = gz + [d_r, d_z, d_ghn] W_hh is
formed at the start of the next kernel call (or frozen, past a sequence's end), which saves a
pass per step.

The loops run over a range of the batch's rows, so that the two halves of a batch, independent
of each other, can run at once on two cores (numba's compiled loops, which release the GIL; see
:meth:`FusedLoop._split`), and the GEMMs after the backward loop in two halves, too.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, NamedTuple

import numpy as np

from ..functional._cell import activations, gates_backward, gates_forward
from .threads import blas_threads, l2_bytes

__all__ = ["FusedLoop", "TapePool", "numpy_fuser", "time_loops", "transposed"]


def transposed(w: np.ndarray) -> np.ndarray:
    """Wᵀ as a C-contiguous copy: OpenBLAS multiplies a few rows by it 10-40% faster than by the
    transposed view, with the same bits. Copied 16 rows of W at a time: NumPy's transposing copy of
    the whole matrix is 4-6× slower from H = 512 on (2.2 ms against 0.45 ms for a (1536, 512)
    float32 W here, 20 against 3.5 ms at H = 1024), more than a short sequence's GEMMs gain."""
    out = np.empty(w.shape[::-1], w.dtype)
    for i in range(0, w.shape[0], 16):
        out[:, i : i + 16] = w[i : i + 16].T
    return out


def time_loops(forward_step, backward_step, gemm):
    """``(forward_loop, backward_loop)`` over a fuser's step kernels, ``gemm(a, w, out, panel)`` doing
    out = a @ w (in column panels of that width where ``panel`` > 0, see :meth:`FusedLoop._panel`), or,
    given w's transpose, out = (wᵀ aᵀ)ᵀ (see :meth:`FusedLoop._transposed`).
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
            forward_step(gi[t], b_in, gh, b_hn, h, active[t, b0:b1], hs[t, b0:b1], r[k, b0:b1], z[k, b0:b1], n[k, b0:b1],
                         ghn[k, b0:b1])
            h = hs[t, b0:b1]

    def backward_loop(gz, prod, first_active, carry, d_out, active, h_prev, r, z, n, gh_n, d_i, d_h, w, reverse, b0, b1):
        # rows b0:b1 of the batch: per step (in reverse processing order) the step, which also
        # finishes the previous step's dL/dh from gz + prod, then prod = d_h[t] W_hh (w: W_hh, or
        # W_hhᵀ for a transposed product); gz, prod, first_active and carry hold those rows only;
        # d_out is (T, B, H), or (1, B, H) of zeros
        T = h_prev.shape[0]
        active_prev = first_active
        for s in range(T):
            t = s if reverse else T - 1 - s
            backward_step(gz, prod, active_prev, carry, d_out[t if d_out.shape[0] == T else 0, b0:b1], active[t, b0:b1],
                          h_prev[t, b0:b1], r[t, b0:b1], z[t, b0:b1], n[t, b0:b1], gh_n[t, b0:b1], d_i[t, b0:b1], d_h[t, b0:b1])
            gemm(d_h[t, b0:b1], w, prod, 0)
            active_prev = active[t, b0:b1]

    return forward_loop, backward_loop


def _numpy_gemm(a, b, out, panel):
    np.matmul(a, b, out=out)


class Fuser(NamedTuple):
    """How a step's element-wise part is applied, and the :func:`time_loops` that drive it: in
    Python with np.matmul, or compiled (numba) with a GEMM call inside. All write the same buffers."""

    name: str
    forward_step: Any  # (gi, b_in, gh, b_hn, h, active, h_out, r_out, z_out, n_out, ghn_out)
    backward_step: Any  # (gz, prod, active_prev, carry, d_out, active, h_prev, r, z, n, gh_n, d_i, d_h)
    compiled_loops: Any = None  # time_loops compiled, or None: time_loops in Python with np.matmul
    transposed_loops: Any = None  # time_loops compiled with a GEMM that writes the product transposed, or None
    product: Any = None  # the compiled loops' GEMM, product(a, b, out, panel), or None


_numpy_sigmoid, _ = activations(np)


def _numpy_forward_step(gi, b_in, gh, b_hn, h, active, h_out, r_out, z_out, n_out, ghn_out):
    H = h.shape[1]
    gi = gi + b_in
    np.add(gh[:, 2 * H :], b_hn, out=ghn_out)
    h_new, r, z, n = gates_forward(gi[:, :H], gi[:, H : 2 * H], gi[:, 2 * H :], gh[:, :H], gh[:, H : 2 * H], ghn_out, h,
                                   _numpy_sigmoid, np.tanh)
    for buffer, value in ((r_out, r), (z_out, z), (n_out, n), (h_out, h_new)):
        np.copyto(buffer, value)
    if not active.all():
        np.copyto(h_out, h, where=~active[:, None])


def _numpy_backward_step(gz, prod, active_prev, carry, d_out, active, h_prev, r, z, n, gh_n, d_i, d_h):
    H = carry.shape[1]
    dh = gz + prod
    if not active_prev.all():
        dh = np.where(active_prev[:, None], dh, carry)
    np.copyto(carry, dh)
    g = dh + d_out
    if not active.all():
        g = np.where(active[:, None], g, np.zeros((), g.dtype))
    d_r, d_z, d_an, d_gn, gz_new = gates_backward(g, h_prev, r, z, n, gh_n)
    for buffer, value in ((d_i[:, :H], d_r), (d_i[:, H : 2 * H], d_z), (d_i[:, 2 * H :], d_an),
                          (d_h[:, :H], d_r), (d_h[:, H : 2 * H], d_z), (d_h[:, 2 * H :], d_gn), (gz, gz_new)):
        np.copyto(buffer, value)


numpy_fuser = Fuser("numpy", _numpy_forward_step, _numpy_backward_step)


def _active(mask, T: int, B: int) -> np.ndarray:
    """(T, B) bool: whether each sequence is still running at each step."""
    return np.ones((T, B), bool) if mask is None else np.ascontiguousarray(mask[:, :, 0])


class TapePool:
    """One thread's tape blocks, each handed out again once nothing but this pool refers to it.

    A block is in use while any array made from it lives (a tape, an output, a final state: NumPy
    views keep their base alive). That is read from its reference count, compared with an array
    held the same way, so the test does not depend on how the interpreter counts its own
    temporaries. A request takes the smallest free block that fits and is at most twice its size
    (else a new one); a free block unused for :attr:`IDLE_TAKES` requests goes back to the OS.
    """

    IDLE_TAKES = 16

    def __init__(self) -> None:
        self.entries: list[list] = []  # [block, the request that last took it]
        self.takes = 0
        self._probe = [np.empty(0)]  # held like each block: by one list

    def _free(self, entry: list) -> bool:
        return sys.getrefcount(entry[0]) == sys.getrefcount(self._probe[0])

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
            self.entries.append(chosen)
        chosen[1] = self.takes
        return chosen[0][:size]


class FusedLoop:
    """The forward and backward time loops of one direction, driving one fuser's kernels.

    Arrays that never leave a call (the input pre-activations, the per-step gradients, scratch)
    are kept per thread and reused by the next call of the same shape: a fresh 20 MB array costs
    a page fault per 4 KB on first touch, ~6% of a forward at B=64, T=100, H=256.
    """

    CHUNK_BYTES, MIN_CHUNK_ROWS_PER_INPUT = 2**21, 4  # see _chunk_steps
    MIN_SPLIT_ROWS, MIN_SPLIT_WORK = 4, 2**25  # see _split
    SMALL_GEMM = 10**6  # see _panel
    TRANSPOSED_DTYPES, MIN_TRANSPOSED_HIDDEN, MIN_TRANSPOSED_ROWS, MAX_TRANSPOSED_ROWS = (np.dtype(np.float32),), 512, 8, 16  # see _transposed

    def __init__(self, fuser: Fuser, blas_limit: Any = None, pair: Any = None):
        self.fuser = fuser
        self.compiled = fuser.compiled_loops is not None  # compiled loops take C-contiguous GEMM operands
        self.forward_loop, self.backward_loop = fuser.compiled_loops or time_loops(fuser.forward_step, fuser.backward_step, _numpy_gemm)
        self.transposed_loops = fuser.transposed_loops  # (forward, backward) or None
        self.blas_limit = blas_limit  # callable(steps, batch, hidden) -> context manager, or None
        self.pair = pair  # callable(first, second) -> True once both ran at once, False if it ran neither; or None
        self._local = threading.local()
        self._exact_panels: dict = {}  # (rows, H, width, dtype) -> whether panels give one call's bits

    def clear_buffers(self) -> None:
        """Let go of this thread's buffers and free tape blocks (they are rebuilt on the next call)."""
        self._local.__dict__.pop("buffers", None)
        self._local.__dict__.pop("tapes", None)

    def _pool(self) -> TapePool:
        return self._local.__dict__.setdefault("tapes", TapePool())

    def _buffer(self, name: str, shape: tuple, dtype, zero: bool = False) -> np.ndarray:
        buffers = self._local.__dict__.setdefault("buffers", {})
        a = buffers.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = buffers[name] = np.empty(shape, dtype)
        if zero:
            a.fill(0)
        return a

    def _threads(self, T: int, B: int, H: int):
        return contextlib.nullcontext() if self.blas_limit is None else self.blas_limit(T, B, H)

    def forward(self, x, h0, w_ih, b_in, w_hh, b_hn, *, mask, reverse, record):
        """``(hs, h_T, (x, h0, r, z, n, gh_n) or None)`` of one direction over x (T, B, I); x and h0
        returned are C-contiguous copies where needed, for the tape (h0 stored beside hs, so that
        :meth:`previous_states` is a view)."""
        T, B, I = x.shape
        H = w_hh.shape[1]
        dtype = x.dtype
        if record:
            # The tape in one block from this thread's pool: h0 and the states (h0 first, or last
            # when reverse: the states each step started from are then a view), r, z, n, gh_n, and
            # x's copy (batch_first, or a bidirectional layer's input; made by _forward_rows). A fresh
            # block is page faults and zeroing on first touch (3-5% of a training step at B=64, T=100, H=256).
            x_size = 0 if x.flags.c_contiguous else T * B * I
            block = self._pool().take((5 * T + 1) * B * H + x_size, dtype)
            states = np.reshape(block[: (T + 1) * B * H], (T + 1, B, H))
            hs, h0_copy = (states[:T], states[T]) if reverse else (states[1:], states[0])
            np.copyto(h0_copy, h0)
            h0 = h0_copy
            r, z, n, ghn = np.reshape(block[(T + 1) * B * H : (5 * T + 1) * B * H], (4, T, B, H))
            x_tape = np.reshape(block[(5 * T + 1) * B * H :], (T, B, I)) if x_size else None
        else:
            x_tape = None
            hs, (r, z, n, ghn) = np.empty((T, B, H), dtype), [self._buffer(k, (1, B, H), dtype) for k in "rzng"]
        b_in = np.zeros((3 * H,), dtype) if b_in is None else np.ascontiguousarray(b_in)  # added in the kernel: a pass less
        # (B, H) @ Wᵀ by a C-contiguous copy of Wᵀ. NumPy hands a single row (B = 1) to gemv, where
        # the copy would change the bits, so its loop keeps the view there; the compiled loop's
        # cblas call needs the copy always. The transposed product, W hᵀ, takes W itself.
        flip = self._transposed(T, B, H, dtype)
        w = np.ascontiguousarray(w_hh) if flip else transposed(w_hh) if B > 1 or self.compiled else w_hh.T
        b_hn = np.zeros((H,), dtype) if b_hn is None else np.ascontiguousarray(b_hn)
        active = _active(mask, T, B)
        h = np.ascontiguousarray(h0)
        tape = (hs, r, z, n, ghn)
        with self._threads(T, B, H):
            self._by_rows(T, B, H, dtype, lambda b0, b1: self._forward_rows(
                x, h[b0:b1], w_ih, b_in, w, b_hn, active, tape, b0, b1, reverse=reverse, record=record, flip=flip, x_tape=x_tape))
        return hs, hs[0 if reverse else T - 1], ((x if x_tape is None else x_tape, h0, r, z, n, ghn) if record else None)

    def _forward_rows(self, x, h, w_ih, b_in, w, b_hn, active, tape, b0, b1, *, reverse, record, flip, x_tape=None):
        """Rows b0:b1 of :meth:`forward`, from their start state ``h``: the input pre-activations a
        chunk of steps at a time (this thread's buffers), each chunk then through the loop (whose
        GEMM forms the product transposed where ``flip``). With ``x_tape`` (T, B, I), x's rows are
        copied there first, chunk by chunk: on this half's core, and in cache for the GEMM."""
        T, _, I = x.shape
        H = b_hn.shape[0]
        rows = b1 - b0
        dtype = x.dtype
        hs, r, z, n, ghn = tape
        x = x[:, b0:b1]
        source = x if x_tape is None else x_tape[:, b0:b1]
        steps = self._chunk_steps(T, rows, I, H, dtype)
        gi = self._buffer("gi", (steps, rows, 3 * H), dtype)
        gh = self._buffer("gh", (rows, 3 * H), dtype)
        loop = self.transposed_loops[0] if flip else self.forward_loop
        panel = 0 if flip else self._panel(rows, H, dtype)
        x_buffer = None if source.flags.c_contiguous else self._buffer("x", (steps, rows, I), dtype)  # a chunk's copy
        for start in range(0, T, steps):
            # the chunk [t0, t1) in processing order: from the end when reverse
            t0, t1 = (max(0, T - start - steps), T - start) if reverse else (start, min(T, start + steps))
            k = t1 - t0
            if source is not x:
                np.copyto(source[t0:t1], x[t0:t1])
            if x_buffer is None:
                x_chunk = source[t0:t1]
            else:
                x_chunk = x_buffer[:k]
                np.copyto(x_chunk, source[t0:t1])
            # by the transposed view, as the generic code does: as fast for many rows as a copy of W_ihᵀ
            np.matmul(np.reshape(x_chunk, (k * rows, I)), w_ih.T, out=np.reshape(gi[:k], (k * rows, 3 * H)))
            rec = (r[t0:t1], z[t0:t1], n[t0:t1], ghn[t0:t1]) if record else (r, z, n, ghn)
            loop(gi[:k], b_in, w, b_hn, h, active[t0:t1], hs[t0:t1], *rec, gh, reverse, record, b0, b1, panel)
            h = hs[t0 if reverse else t1 - 1, b0:b1]

    def finish(self, finish, d_i, d_h, x, h_prev, w_ih, *, need_dx: bool):
        """``finish(d_i, d_h, x, h_prev, need_dx=…)`` -> (grads, dx), the GEMMs after the backward
        loop, as they are; or, where the loops run in halves (:meth:`_split`), in two halves at
        once: each thread the weight gradients' rows of half the gate columns (``finish`` on those
        columns) and half of dx's rows (dx = d_i W_ih, here). Each element is the same sum in the
        same order as in one GEMM: OpenBLAS gave the same bits at every size measured here. Then
        no GEMM of a training step runs on OpenBLAS's own threads, which would spin for ~0.1 s
        afterwards and take the cores from the next call's halves (see
        :func:`gruxp._native.threads.one_thread_each`)."""
        T, B, H = h_prev.shape
        rows, cut = T * B, 3 * H // 2  # H > 1: a block of 3H/2 columns is not mistaken for d_ghn alone
        d_i2 = np.reshape(d_i, (rows, 3 * H))
        dx = np.empty((rows, x.shape[-1]), x.dtype) if need_dx else None
        parts = [None, None]

        def run(i: int, columns: slice, dx_rows: slice) -> None:
            parts[i], _ = finish(d_i[..., columns], d_h[..., columns], x, h_prev, need_dx=False)
            if dx is not None:
                np.matmul(d_i2[dx_rows], w_ih, out=dx[dx_rows])

        if not (H > 1 and self._split(T, B, H, h_prev.dtype)
                and self.pair(lambda: run(0, slice(0, cut), slice(0, rows // 2)), lambda: run(1, slice(cut, None), slice(rows // 2, None)))):
            return finish(d_i, d_h, x, h_prev, need_dx=need_dx)
        grads = {k: np.concatenate([g, parts[1][k]]) for k, g in parts[0].items()}
        return grads, (None if dx is None else np.reshape(dx, x.shape))

    def _by_rows(self, T: int, B: int, H: int, dtype, run) -> None:
        """``run(0, B)``, or ``run`` on each half of the batch at once (see :meth:`_split`)."""
        half = B // 2
        if not (self._split(T, B, H, dtype) and self.pair(lambda: run(0, half), lambda: run(half, B))):
            run(0, B)

    def _split(self, T: int, B: int, H: int, dtype) -> bool:
        """Whether to offer the two halves of the batch to :attr:`pair` (which runs them at once
        where two cores are free). Rows are independent: each core runs its own half's recurrence,
        one GEMM and one pass per step, with no exchange between the cores until the end, where
        OpenBLAS's two threads meet at every step's GEMM and the element-wise pass runs on one
        core. Measured here (2 cores, float32): B=32, T=200, H=128 forward 10.4 → 7.8 ms, training
        31.7 → 26.9 ms; B=64, T=100, H=256 31.4 → 30.1 and 95.5 → 92.6 ms.

        Only where each core can keep W_hh in cache, at most two L2s' worth (3H² elements): each
        half's GEMM reads all of it every step, where OpenBLAS's threads read half each (B=16,
        T=50, H=512 float32, 3 MiB with 1 MiB L2s: 19.3 → 20.5 ms); with at least
        :attr:`MIN_SPLIT_ROWS` rows a half; and from :attr:`MIN_SPLIT_WORK` (T·B·H², about 10 ms
        of training), below which checking for free cores costs more than halves gain.
        """
        return (self.compiled and self.pair is not None and B >= 2 * self.MIN_SPLIT_ROWS and T * B * H * H >= self.MIN_SPLIT_WORK
                and 3 * H * H * np.dtype(dtype).itemsize <= 2 * l2_bytes())

    def _panel(self, rows: int, H: int, dtype) -> int:
        """The width of the column panels in which the forward step's GEMM, (rows, H) @ (H, 3H), is
        called, or 0 for one call. OpenBLAS's SkylakeX kernels multiply without packing W (their
        small-matrix path) where M·N·K ≤ :attr:`SMALL_GEMM`; on one thread that ran a step's GEMM
        faster in panels of that size: (32, 256) @ (256, 768) float32 143 → 110 µs, float64 265 → 224
        (a half of B=64, H=256). Only where BLAS runs on one thread now (the halves, a pair, a busy
        machine: the panels run on one thread, where OpenBLAS's own two threads ran B=64 in 176 against
        222 µs), and only where the panels give the one call's bits, probed once per shape on random
        operands (the same sums in the same order: equal at K = H = 256 here, not at K = 512), so the
        choice, which depends on load, never changes a result."""
        product = self.fuser.product
        N = 3 * H
        if product is None or rows < 2 or rows * N * H <= self.SMALL_GEMM:
            return 0
        width = self.SMALL_GEMM // (rows * H) // 16 * 16
        if width < 16 or blas_threads() != 1:
            return 0
        key = (rows, H, width, np.dtype(dtype))
        if key not in self._exact_panels:
            rng = np.random.default_rng(0)
            a, b = rng.standard_normal((rows, H)).astype(dtype), rng.standard_normal((H, N)).astype(dtype)
            one, panels = np.empty((rows, N), dtype), np.empty((rows, N), dtype)
            product(a, b, one, 0)
            product(a, b, panels, width)
            self._exact_panels[key] = bool(np.array_equal(one, panels))
        return width if self._exact_panels[key] else 0

    def _transposed(self, T: int, B: int, H: int, dtype) -> bool:
        """Whether the compiled loops form each step's product transposed: ghᵀ = W_hh hᵀ forward,
        W_hhᵀ d_hᵀ backward, then copied into the (B, ·) rows the step reads. OpenBLAS (its SkylakeX
        kernel, here) runs a GEMM with few columns faster than with as few rows: at B=16, H=512,
        float32, 2 threads, 191 against 226 µs forward and 192 against 236 backward, of which the copy
        takes back ~13 and ~3 µs. So only where it paid in whole runs, alternating in one process
        (medians of 9-15): float32, H ≥ 512, 8 ≤ B ≤ 16 (B=16, T=50, H=512: forward 20.6 → 18.3 ms,
        training 55.2 → 51.3; H=1024, T=30: 55.9 → 43.2 and 146.0 → 125.3; B=8, T=100, H=512: forward
        −5%, training ±3%). At B = 24-32 training gained nothing (±3%); float64 at H ≥ 512 ran slower
        at every size (up to 2×), and B ≤ 4 up to 3× slower. Not where the batch may run in halves
        (:meth:`_split`): a transposed GEMM rounds half the columns differently, and the halves must
        give one piece's bits."""
        return (self.transposed_loops is not None and np.dtype(dtype) in self.TRANSPOSED_DTYPES and H >= self.MIN_TRANSPOSED_HIDDEN
                and self.MIN_TRANSPOSED_ROWS <= B <= self.MAX_TRANSPOSED_ROWS and not self._split(T, B, H, dtype))

    def _chunk_steps(self, T: int, B: int, I: int, H: int, dtype) -> int:
        """How many steps' input pre-activations one GEMM computes, just before the loop runs them.

        The compiled loop takes them in chunks of about :attr:`CHUNK_BYTES` (this machine's two 1 MiB L2 caches),
        still in cache when its element-wise pass reads them: a forward at B=32, T=200, H=128 took
        10.0-10.2 ms against 10.5-10.7 with all T at once (medians of 15, here). A chunk keeps at
        least 4·I rows, or packing W_ih for each chunk costs more than it saves (B=16, H=512: +2%).
        The NumPy fuser takes all T at once: OpenBLAS rounds a GEMM of fewer rows differently at
        some shapes (174 of 696 shape and chunk combinations here), and that fuser promises the
        generic code's bits.
        """
        if not self.compiled:
            return T
        chunks = -(-T * B * 3 * H * np.dtype(dtype).itemsize // self.CHUNK_BYTES)  # ceil
        steps = -(-T // max(1, chunks))
        return min(T, max(steps, -(-self.MIN_CHUNK_ROWS_PER_INPUT * I // B)))

    def previous_states(self, hs, h0, *, reverse: bool):
        """(T, B, H): the state each step started from, as a view where :meth:`forward` stored
        ``h0`` beside ``hs`` in one of this loop's tape blocks; else None (the caller copies)."""
        T, B, H = hs.shape
        block = hs.base
        if not (isinstance(block, np.ndarray) and h0.base is block and block.ndim == 1 and hs.flags.c_contiguous
                and h0.flags.c_contiguous and h0.shape == (B, H) and h0.dtype == hs.dtype):
            return None
        row = B * H * hs.itemsize
        if h0.ctypes.data != hs.ctypes.data + (T * row if reverse else -row):
            return None
        first = hs.ctypes.data + row if reverse else h0.ctypes.data  # where h_prev[0] lies
        start = (first - block.ctypes.data) // hs.itemsize
        return np.reshape(block[start : start + T * B * H], (T, B, H))

    def backward(self, d_out, d_hT, h_prev, r, z, n, gh_n, w_hh, *, mask, reverse):
        """``(d_i, d_h, dh0)``: the gradients of the input and recurrent pre-activations per step,
        d_i (T, B, 3H) = [d_r, d_z, d_an] and d_h (T, B, 3H) = [d_r, d_z, d_ghn]."""
        T, B, H = h_prev.shape
        dtype = h_prev.dtype
        flip = self._transposed(T, B, H, dtype)
        w, loop = (transposed(w_hh), self.transposed_loops[1]) if flip else (np.ascontiguousarray(w_hh), self.backward_loop)
        # d_i and d_h are read by the caller before its next backward call (per thread)
        d_i, d_h = self._buffer("d_i", (T, B, 3 * H), dtype), self._buffer("d_h", (T, B, 3 * H), dtype)
        prod, carry = self._buffer("prod", (B, H), dtype, zero=True), self._buffer("carry", (B, H), dtype)
        gz = np.zeros((B, H), dtype) if d_hT is None else np.array(d_hT, dtype=dtype, copy=True)
        # a batch-first d_out is copied to (T, B, H) by each half, on its own core
        d_source = None if d_out is None or d_out.flags.c_contiguous else d_out
        d_out = np.zeros((1, B, H), dtype) if d_out is None else d_out if d_source is None else self._buffer("d_out", d_out.shape, dtype)
        active = _active(mask, T, B)
        first_active = np.ones((B,), bool)
        with self._threads(T, B, H):
            def rows(b0: int, b1: int) -> None:
                if d_source is not None:
                    np.copyto(d_out[:, b0:b1], d_source[:, b0:b1])
                loop(gz[b0:b1], prod[b0:b1], first_active[b0:b1], carry[b0:b1], d_out, active, h_prev, r, z, n, gh_n, d_i, d_h, w,
                     reverse, b0, b1)

            self._by_rows(T, B, H, dtype, rows)
        active_prev = active[T - 1 if reverse else 0]  # of the last step processed
        dh0 = gz + prod
        if not active_prev.all():
            dh0 = np.where(active_prev[:, None], dh0, carry)
        return d_i, d_h, dh0
