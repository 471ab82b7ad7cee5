"""The CPU route's plan: every choice it makes, as a pure function of shapes, dtype and machine.

Two kinds of choice, kept apart:

* **arithmetic**: the fuser, whose BLAS, how the batch is cut into pieces, how many steps one
  input GEMM takes, whether a step's product is formed transposed or in column panels, how the
  GEMMs after the backward loop are cut. They decide every bit of a result, so they read only
  the shapes, the dtype, gruxp's BLAS kernel, numba's presence and the machine's CPU count
  (:attr:`Machine.cpus`): never load, affinity, threads or what else runs.
* **scheduling**: how many threads run the pieces at once (:attr:`Plan.workers`), from the CPUs
  the process may use now. It never changes a result: each piece computes the same sums in the
  same order whichever thread runs it, and whenever.

Every threshold is in :class:`Rules`, with its reason; the measurements that chose them are in
``benchmarks/README.md``. :func:`plan` is pure: the same arguments, the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .._namespace import dtype_name
from .machine import Machine

__all__ = [
    "PLAN_FIELDS",
    "RULES",
    "CellPlan",
    "Plan",
    "PlanError",
    "Rules",
    "Shape",
    "cut",
    "describe",
    "plan",
    "plan_for",
    "product_plan",
]


class PlanError(ValueError):
    """A plan that cannot be made: a forced choice out of range or for another loop, or a fuser asked
    for that is not installed. The one error of every plan, the GRU's and the other cells'."""


@dataclass(frozen=True)
class Shape:
    """One layer of a GRU call: T steps of B sequences, I inputs, H hidden units, D directions."""

    steps: int
    batch: int
    inputs: int
    hidden: int
    directions: int = 1

    @property
    def work(self) -> int:
        """T·B·H² of one direction: what a direction's time loop costs, in units of its GEMMs."""
        return self.steps * self.batch * self.hidden**2


@dataclass(frozen=True)
class Rules:
    """The thresholds of :func:`plan`, one table."""

    # T·B·H² below which fuser="auto" takes NumPy: numba compiles its loops once per process and
    # dtype (seconds), more than such a call would save.
    numba_min_work: int = 2**22
    # A call of at most this many rows T·B (a token, or a few) takes numba's step kernel, which is kept
    # on disk (compiled once per machine, loaded in milliseconds), in the Python loop, whatever its
    # work: one call into it replaces NumPy's dozen passes, and the compiled loop (compiled per process,
    # and needing a copy of Wᵀ) gains nothing over so few steps.
    stream_max_rows: int = 16
    # A piece of the batch has at least this many rows: fewer, and its per-step GEMM runs far
    # below the BLAS's speed.
    piece_min_rows: int = 4
    # T·B·H² of a direction from which the batch is cut into pieces, and the GEMMs after the
    # backward loop into blocks: below it, handing a piece to another thread costs more than it gains.
    piece_min_work: int = 2**23
    # The compiled loop computes the input pre-activations a chunk of steps at a time, about this
    # many bytes (two L2 caches), still in cache when the step reads them ...
    chunk_bytes: int = 2**21
    # ... but at least this many rows per input feature: else packing W_ih for every chunk costs
    # more than it saves.
    chunk_min_rows_per_input: int = 4
    # OpenBLAS's kernels named here multiply without packing up to M·N·K of this size (their
    # small-matrix path): there a step's GEMM runs faster in column panels of that size.
    small_gemm: int = 10**6
    small_gemm_kernels: frozenset = frozenset({"SkylakeX"})
    # These kernels run a GEMM with few columns faster than with as few rows: a step's product is
    # formed transposed (W hᵀ), for these dtypes and sizes, and copied into the rows the step reads.
    transposed_kernels: frozenset = frozenset({"SkylakeX"})
    transposed_dtypes: tuple = ("float32",)
    transposed_min_hidden: int = 1024
    transposed_rows: tuple = (8, 16)
    # Outside the compiled loop (which needs it), a step's product h Wᵀ reads a C-contiguous copy of
    # Wᵀ from T·B ≥ this many rows: the copy costs as much as some 30 one-row products, and saves
    # 4 µs (one row) to 40 µs (a few rows) a step at H = 256 (benchmarks/README.md); below, the
    # product reads Wᵀ as a view, and a one-token call copies nothing of size H².
    weight_copy_min_rows: int = 32
    # A block of the weight-gradient GEMMs takes at least this many of the 3H gate columns.
    grad_min_columns: int = 64
    # A block of the layer-norm GRU's column sums (its gains' gradients) takes at least this many of
    # the features: fewer, and handing the block to a thread costs more than summing it. Each column's
    # sum runs over the rows in order whatever the cut, so the blocks decide no bit.
    sum_min_columns: int = 64
    # A block of the layer-norm GRU's input-side rows (the norm of W x, and its backward) takes at least
    # this many rows: fewer, and handing the block to a thread costs more than normalising it. Each
    # row's arithmetic is the same whatever the cut.
    norm_min_rows: int = 64
    # A layer's product (Linear, Embedding's gradient) of at least this many multiply-adds is cut
    # into blocks of at least product_min_rows rows (or columns) of the result, one per CPU.
    product_min_work: int = 2**22
    product_min_rows: int = 16


RULES = Rules()
NO_NUMBA = "fuser='numba' was asked for, but numba is not installed (pip install numba, or gruxp's fast extra)"


@dataclass(frozen=True)
class Plan:
    """Every choice of the CPU route for one layer; the executor runs it and decides nothing.

    ``route`` is ``"fused"`` (this route's loop) or ``"generic"`` (the core's code, with why in
    ``reasons``). Arithmetic: ``fuser`` (``"numba"`` or ``"numpy"``), ``compiled`` (the whole time
    loop compiled, GEMMs called from it), ``blas`` (``"gruxp"``: gruxp's own OpenBLAS, one thread
    a call; ``"numpy"``: NumPy's matmul), ``pieces`` (the batch's row ranges, each a recurrence of
    its own), ``chunk`` (steps per input GEMM), ``panel`` and ``back_panel`` (column width of a
    forward and a backward step's GEMM, 0 for one call), ``transposed`` (each step's product formed
    as W hᵀ), ``grad_blocks`` (column blocks of the weight-gradient GEMMs, and row blocks of dx),
    ``copy_weights`` (the forward's h Wᵀ reads a C-contiguous copy of Wᵀ made for the call, else
    the view). Scheduling: ``workers``.
    """

    route: str
    fuser: str = "numpy"
    compiled: bool = False
    blas: str = "numpy"
    pieces: tuple = ((0, 1),)
    chunk: int = 1
    panel: int = 0
    back_panel: int = 0
    transposed: bool = False
    grad_blocks: int = 1
    workers: int = 1
    reasons: tuple = field(default=(), compare=False)
    copy_weights: bool = False

    @property
    def arithmetic(self) -> tuple:
        """The choices that decide a result's bits (all but ``workers``)."""
        return (
            self.route,
            self.fuser,
            self.compiled,
            self.blas,
            self.pieces,
            self.chunk,
            self.panel,
            self.back_panel,
            self.transposed,
            self.grad_blocks,
            self.copy_weights,
        )


# The choices a test or an experiment may force (gruxp.config_context(cpu_plan={...})): every field of
# a Plan but the route, what follows from the fuser and BLAS (compiled) and the reasons.
PLAN_FIELDS = tuple(f.name for f in fields(Plan) if f.name not in ("route", "compiled", "reasons"))


def cut(n: int, parts: int) -> tuple:
    """``parts`` consecutive ranges covering 0..n, sizes differing by at most one (larger first)."""
    q, extra = divmod(n, parts)
    bounds, start = [], 0
    for k in range(parts):
        stop = start + q + (k < extra)
        bounds.append((start, stop))
        start = stop
    return tuple(bounds)


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "float64": 8}[dtype]


def plan(
    shape: Shape,
    dtype: Any,
    machine: Machine,
    *,
    reset_after: bool = True,
    fuser: str = "auto",
    force: Mapping[str, Any] | None = None,
    max_workers: int | None = None,
    rules: Rules = RULES,
) -> Plan:
    """The CPU route's plan for one layer (see the module docstring for what each choice may read).

    ``fuser`` is the setting (``"auto"``, ``"numba"``, ``"numpy"``); ``force`` replaces chosen
    values (``pieces`` as a count), for tests and experiments; ``max_workers`` caps the threads.
    """
    name = dtype_name(dtype)
    if not reset_after:
        return Plan("generic", reasons=("route: generic code — reset_before puts a GEMM between the gates and the candidate",))
    if name not in ("float32", "float64"):
        return Plan("generic", reasons=(f"route: generic code — the fused loop takes float32 and float64, not {name}",))
    T, B, D = shape.steps, shape.batch, shape.directions
    why: list[str] = []
    fuser, stream = _fuser(shape, machine, fuser, why, rules)
    blas = "gruxp" if machine.blas else "numpy"
    compiled = fuser == "numba" and blas == "gruxp" and not stream
    _say_blas_and_loop(machine, blas, compiled, why)
    pieces = _pieces(shape, machine, compiled, why, rules)
    grad_blocks = 1
    if blas == "gruxp" and shape.work >= rules.piece_min_work:
        grad_blocks = max(1, min(machine.cpus // D, 3 * shape.hidden // rules.grad_min_columns))
    forced = dict(force or {})
    if "fuser" in forced or "blas" in forced:
        fuser, blas = forced.pop("fuser", fuser), forced.pop("blas", blas)
        compiled = fuser == "numba" and blas == "gruxp"
    pieces = int(forced.pop("pieces", pieces))
    if not 1 <= pieces <= B:
        raise PlanError(f"pieces must be between 1 and the batch size {B}; got {pieces}")
    ranges = cut(B, pieces)
    rows = ranges[0][1] - ranges[0][0]  # the largest piece's rows decide the per-piece rules
    chunk, panel, back_panel, transposed = _products(shape, name, machine, rows, rules) if compiled else (T, 0, 0, False)
    chunk, panel, back_panel = (
        int(forced.pop("chunk", chunk)),
        int(forced.pop("panel", panel)),
        int(forced.pop("back_panel", back_panel)),
    )
    transposed, grad_blocks = bool(forced.pop("transposed", transposed)), int(forced.pop("grad_blocks", grad_blocks))
    # the compiled loop multiplies by Wᵀ stored row-major; NumPy's matmul reads the view, as the generic code does
    copy_weights = blas == "gruxp" and (compiled or T * B >= rules.weight_copy_min_rows)
    copy_weights = bool(forced.pop("copy_weights", copy_weights))
    _check_products(shape, compiled, chunk, panel, back_panel, transposed, grad_blocks, copy_weights)
    _say_products(shape, blas, compiled, chunk, panel, back_panel, transposed, grad_blocks, copy_weights, why, rules)
    workers = 1  # NumPy's BLAS runs its own threads; small work is not worth handing to another thread
    if blas == "gruxp" and shape.work >= rules.piece_min_work:
        tasks = max(D * pieces, 2 * D * grad_blocks)
        workers = max(1, min(tasks, machine.usable, max_workers or machine.usable))
    if "workers" in forced:
        workers = max(1, int(forced.pop("workers")))
    why.append(
        f"workers: {workers} thread(s) at once — {machine.usable} CPU(s) usable now (scheduling only: the same bits for any)"
    )
    if forced:
        raise PlanError(f"unknown plan field {sorted(forced)[0]!r}; the fields are {', '.join(PLAN_FIELDS)}")
    choices = (fuser, compiled, blas, ranges, chunk, panel, back_panel, transposed, grad_blocks, workers)
    return Plan("fused", *choices, tuple(why), copy_weights)


def _fuser(shape: Shape, machine: Machine, fuser: str, why: list[str], rules: Rules) -> tuple[str, bool]:
    """``(fuser, stream)``: the fuser (the setting, or ``"auto"``'s choice) and whether a call of a
    token or a few takes numba's step kernel in the Python loop rather than the compiled loop."""
    if fuser != "auto":
        if fuser == "numba" and not machine.numba:
            raise PlanError(NO_NUMBA)
        why.append(f"fuser: {fuser} — asked for")
        return fuser, False
    work = shape.work
    stream = machine.numba and shape.steps * shape.batch <= rules.stream_max_rows
    fuser = "numba" if machine.numba and (work >= rules.numba_min_work or stream) else "numpy"
    why.append(
        f"fuser: {fuser} — "
        + (
            f"numba installed, T·B ≤ {rules.stream_max_rows} rows: its step kernel, kept on disk, in the Python loop"
            if stream
            else f"numba installed, T·B·H² ≥ {rules.numba_min_work:,}"
            if fuser == "numba"
            else "numba not installed"
            if not machine.numba
            else f"T·B·H² = {work:,} < {rules.numba_min_work:,}, numba's compile would not pay"
        )
    )
    return fuser, stream


def _say_blas_and_loop(machine: Machine, blas: str, compiled: bool, why: list[str]) -> None:
    why.append(
        f"blas: {blas} — "
        + (
            f"gruxp's own OpenBLAS ({machine.blas} kernel), one thread a call"
            if machine.blas
            else "gruxp's OpenBLAS (scipy-openblas64) is not available: NumPy's matmul and its threads"
        )
    )
    why.append(
        "loop: "
        + (
            "compiled whole, its GEMMs called from it (the GIL released)"
            if compiled
            else "Python, one GEMM call and one fused pass per step"
        )
    )


def _pieces(shape: Shape, machine: Machine, compiled: bool, why: list[str], rules: Rules) -> int:
    """How many pieces the batch is cut into: the machine's CPUs (never the usable ones) for the
    compiled loop, where the work pays for them."""
    B, D = shape.batch, shape.directions
    pieces = 1
    if compiled and shape.work >= rules.piece_min_work and B >= 2 * rules.piece_min_rows:
        pieces = max(1, min(machine.cpus // D, B // rules.piece_min_rows))
    why.append(
        f"pieces: {pieces} — "
        + (
            f"the batch cut for {machine.cpus} CPUs, {D} direction(s) each, ≥ {rules.piece_min_rows} rows a piece"
            if pieces > 1
            else "one piece" + ("" if compiled else " (the loop holds the GIL)")
        )
    )
    return pieces


def _products(shape: Shape, name: str, machine: Machine, rows: int, rules: Rules) -> tuple[int, int, int, bool]:
    """The compiled loop's ``(chunk, panel, back_panel, transposed)`` for pieces of ``rows`` rows."""
    T, I, H = shape.steps, shape.inputs, shape.hidden
    chunks = -(-T * rows * 3 * H * _itemsize(name) // rules.chunk_bytes)
    chunk = min(T, max(-(-T // max(1, chunks)), -(-rules.chunk_min_rows_per_input * I // rows)))
    lo, hi = rules.transposed_rows
    transposed = (
        machine.blas in rules.transposed_kernels
        and name in rules.transposed_dtypes
        and H >= rules.transposed_min_hidden
        and lo <= rows <= hi
    )
    panel = back_panel = 0
    if not transposed and machine.blas in rules.small_gemm_kernels and rows >= 2 and rows * 3 * H * H > rules.small_gemm:
        # (rows, H) @ (H, 3H) forward, (rows, 3H) @ (3H, H) backward: panels of N within M·N·K
        width, back_width = rules.small_gemm // (rows * H) // 16 * 16, rules.small_gemm // (rows * 3 * H) // 16 * 16
        panel, back_panel = (width if width >= 16 else 0), (back_width if 16 <= back_width < H else 0)
    return chunk, panel, back_panel, transposed


def _check_products(
    shape: Shape, compiled: bool, chunk: int, panel: int, back_panel: int, transposed: bool, grad_blocks: int, copy_weights: bool
) -> None:
    """Refuse a forced combination the executors cannot run."""
    T, H = shape.steps, shape.hidden
    if compiled and not transposed and not copy_weights:
        raise PlanError("copy_weights=False is the Python loop's: the compiled loop multiplies by a C-contiguous Wᵀ")
    if not compiled and (transposed or panel or back_panel):
        raise PlanError("transposed products and column panels are the compiled loop's (fuser numba with gruxp's BLAS)")
    if not 1 <= chunk <= T or panel < 0 or back_panel < 0 or not 1 <= grad_blocks <= 3 * H:
        raise PlanError(f"chunk must be in 1..{T}, panel ≥ 0 and grad_blocks in 1..{3 * H}; got {chunk}, {panel}, {grad_blocks}")


def _say_products(
    shape: Shape,
    blas: str,
    compiled: bool,
    chunk: int,
    panel: int,
    back_panel: int,
    transposed: bool,
    grad_blocks: int,
    copy_weights: bool,
    why: list[str],
    rules: Rules,
) -> None:
    T, B = shape.steps, shape.batch
    why.append(
        f"chunk: {chunk} step(s) per input GEMM" + (" (~two L2 caches of pre-activations)" if compiled and chunk < T else "")
    )
    why.append(
        "product: "
        + (
            "W hᵀ, transposed (few columns run faster on this kernel)"
            if transposed
            else f"h Wᵀ in column panels of {panel} (the kernel's small-matrix path)"
            if panel
            else "h Wᵀ, one call"
        )
        + (f"; backward in panels of {back_panel}" if back_panel else "")
    )
    why.append(f"grad blocks: {grad_blocks} column block(s) of the weight gradients, row block(s) of dx")
    why.append(
        "weights: "
        + (
            "W_hh as stored (the transposed product)"
            if transposed
            else "a C-contiguous copy of W_hhᵀ for the call"
            + (" (the compiled loop's GEMM)" if compiled else f" (T·B ≥ {rules.weight_copy_min_rows} rows: it pays)")
            if copy_weights
            else "W_hhᵀ as a view: no copy"
            + (f" (T·B = {T * B} < {rules.weight_copy_min_rows} rows: a copy would not pay)" if blas == "gruxp" else "")
        )
    )


def product_plan(
    M: int, N: int, K: int, machine: Machine, *, max_workers: int | None = None, rules: Rules = RULES
) -> tuple[int, int, int]:
    """``(axis, blocks, workers)`` for a product (M, K) @ (K, N) on gruxp's BLAS: the result cut into
    ``blocks`` ranges of its rows (axis 0) or columns (axis 1), whichever are more; the cut from
    the shapes and the machine's CPUs, ``workers`` from the CPUs usable now (scheduling only)."""
    axis, length = (0, M) if M >= N else (1, N)
    blocks = 1
    if M * N * K >= rules.product_min_work:
        blocks = max(1, min(machine.cpus, length // rules.product_min_rows))
    workers = max(1, min(blocks, machine.usable, max_workers or machine.usable))
    return axis, blocks, workers


def describe(p: Plan) -> str:
    """The plan as lines of text: each choice and why (``gruxp info --plan``)."""
    return "\n".join(f"  {line}" for line in p.reasons)


@dataclass(frozen=True)
class CellPlan:
    """The CPU route's choices for a layer of another cell (``lngru``, ``mingru``, ...): its own
    numba loop or the generic code, the rows' pieces (arithmetic: from shapes and ``Machine.cpus``)
    and the threads that run them (scheduling: the usable cores). Printed by ``gruxp info --plan ... --cell``."""

    cell: str
    route: str  # "fused" (the cell's numba loop) or "generic"
    pieces: tuple
    workers: int
    reasons: tuple = field(default=(), compare=False)


def cell_plan(
    cell: str,
    shape: Shape,
    dtype: Any,
    machine: Machine,
    *,
    fuser: str = "auto",
    max_workers: int | None = None,
    blocked: str | None = None,
    rules: Rules = RULES,
) -> CellPlan:
    """The rule every cell's own CPU loop shares, pure as :func:`plan`: the GRU plan's fuser rule
    (numba where installed and T·B·H² pays for its compile; ``fuser`` forces it) and its rule for
    pieces of the batch. ``blocked`` is the cell's own reason its loop cannot run this call (its
    plan rule, declared beside the loop, says it), or None."""
    B, D, work = shape.batch, shape.directions, shape.work
    dtype = dtype_name(dtype)
    why = []
    if fuser == "numba" and not machine.numba:
        raise PlanError(NO_NUMBA)
    blocked = (
        f"{dtype} (the loop is compiled for float32 and float64)"
        if dtype not in ("float32", "float64")
        else blocked
        if blocked is not None
        else "fuser='numpy'"
        if fuser == "numpy"
        else "numba is not installed"
        if not machine.numba
        else f"T·B·H² = {work:,} < {rules.numba_min_work:,}, numba's compile would not pay"
        if fuser == "auto" and work < rules.numba_min_work
        else None
    )
    if blocked is not None:
        return CellPlan(cell, "generic", ((0, B),), 1, (f"route: generic code: {blocked}",))
    why.append(f"route: the {cell} cell's numba loop" + (" (fuser='numba')" if fuser == "numba" else f" (T·B·H² = {work:,})"))
    count = 1
    if work >= rules.piece_min_work and B >= 2 * rules.piece_min_rows:
        count = max(1, min(machine.cpus // D, B // rules.piece_min_rows))
    why.append(f"pieces: {count} (min(CPUs // directions, B // {rules.piece_min_rows}) when T·B·H² ≥ {rules.piece_min_work:,})")
    workers = 1  # the GRU plan's rule: small work is not worth handing to another thread
    if work >= rules.piece_min_work:
        workers = max(1, min(machine.usable, max_workers or machine.usable))
    why.append(
        f"workers: {workers} — "
        + (
            f"the usable cores{', capped by max_workers' if max_workers else ''}"
            if work >= rules.piece_min_work
            else f"T·B·H² < {rules.piece_min_work:,}: not worth another thread"
        )
        + " (scheduling only: the same bits for any)"
    )
    return CellPlan(cell, "fused", cut(B, count), workers, tuple(why))


def plan_for(
    cell: str,
    shape: Shape,
    dtype: Any,
    machine: Machine,
    *,
    fuser: str = "auto",
    force: Mapping[str, Any] | None = None,
    max_workers: int | None = None,
    options: Mapping[str, Any] | None = None,
    rules: Rules = RULES,
) -> Plan | CellPlan:
    """The one entry of the CPU route's planning, pure: the GRU's :class:`Plan` (:func:`plan`: the
    route's own loop), the plan rule of the CPU loop another cell declares (:mod:`gruxp.cells`), or
    the generic code for a cell that declares none. ``options`` holds the cell's structure options
    (``reset_after``, ``log_space``, ...); ``force`` names the GRU plan's fields (:data:`PLAN_FIELDS`),
    which another cell's loop does not have (it is not read there)."""
    options = dict(options or {})
    if cell == "gru":
        reset_after = bool(options.get("reset_after", True))
        return plan(
            shape, dtype, machine, reset_after=reset_after, fuser=fuser, force=force, max_workers=max_workers, rules=rules
        )
    from .. import cells

    loop = cells.get(cell).cpu_class()
    if loop is None:
        return CellPlan(cell, "generic", ((0, shape.batch),), 1, ("route: generic code: the cell declares no CPU loop",))
    return loop.plan(shape, dtype, machine, fuser=fuser, max_workers=max_workers, options=options, rules=rules)
