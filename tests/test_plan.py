"""The CPU plan is a pure function of shapes, dtype and a machine description: driven here from
tables of machines (1, 2, 8 and 64 CPUs; SkylakeX and Haswell kernels; without numba or gruxp's
BLAS), without running anything."""

from dataclasses import replace

import pytest

from gruxp._native.machine import Machine, this_machine
from gruxp._native.plan import PLAN_FIELDS, RULES, Plan, PlanError, Shape, cut, describe, plan, plan_for

SKYLAKEX = Machine(cpus=2, usable=2, blas="SkylakeX", numba=True)
HASWELL = replace(SKYLAKEX, blas="Haswell")

# (machine, (T, B, I, H, D), dtype) -> (fuser, compiled, pieces, panel, transposed, grad_blocks, workers)
TABLE = [
    (SKYLAKEX, (100, 64, 256, 256, 1), "float32", ("numba", True, 2, 112, False, 2, 2)),
    (SKYLAKEX, (200, 32, 128, 128, 1), "float32", ("numba", True, 2, 0, False, 2, 2)),
    (SKYLAKEX, (50, 16, 512, 512, 1), "float32", ("numba", True, 2, 240, False, 2, 2)),
    (SKYLAKEX, (30, 16, 1024, 1024, 1), "float32", ("numba", True, 2, 0, True, 2, 2)),
    (SKYLAKEX, (500, 1, 256, 256, 1), "float32", ("numba", True, 1, 0, False, 2, 2)),
    (SKYLAKEX, (100, 32, 256, 256, 2), "float32", ("numba", True, 1, 112, False, 1, 2)),
    (SKYLAKEX, (100, 64, 256, 256, 1), "float64", ("numba", True, 2, 112, False, 2, 2)),
    (SKYLAKEX, (10, 4, 8, 16, 1), "float32", ("numpy", False, 1, 0, False, 1, 1)),
    (HASWELL, (100, 64, 256, 256, 1), "float32", ("numba", True, 2, 0, False, 2, 2)),
    (HASWELL, (50, 16, 512, 512, 1), "float32", ("numba", True, 2, 0, False, 2, 2)),
    (replace(SKYLAKEX, cpus=1, usable=1), (100, 64, 256, 256, 1), "float32", ("numba", True, 1, 48, False, 1, 1)),
    (replace(SKYLAKEX, cpus=8, usable=8), (100, 64, 256, 256, 1), "float32", ("numba", True, 8, 480, False, 8, 8)),
    (replace(SKYLAKEX, cpus=8, usable=8), (100, 32, 256, 256, 2), "float32", ("numba", True, 4, 480, False, 4, 8)),
    (replace(SKYLAKEX, cpus=64, usable=64), (100, 64, 256, 256, 1), "float32", ("numba", True, 16, 0, False, 12, 24)),
    (replace(SKYLAKEX, numba=False), (100, 64, 256, 256, 1), "float32", ("numpy", False, 1, 0, False, 2, 2)),
    (replace(SKYLAKEX, blas=None), (100, 64, 256, 256, 1), "float32", ("numba", False, 1, 0, False, 1, 1)),
]


@pytest.mark.parametrize(
    "machine, shape, dtype, expected",
    TABLE,
    ids=[f"{m.cpus}cpu-{m.blas}-{'numba' if m.numba else 'nonumba'}-{s}-{d}" for m, s, d, _ in TABLE],
)
def test_the_plan_for_each_machine(machine, shape, dtype, expected):
    p = plan(Shape(*shape), dtype, machine)
    got = (p.fuser, p.compiled, len(p.pieces), p.panel, p.transposed, p.grad_blocks, p.workers)
    assert got == expected
    assert p.pieces == cut(shape[1], len(p.pieces))
    assert p.blas == ("gruxp" if machine.blas else "numpy")
    assert p == plan(Shape(*shape), dtype, machine)  # pure: the same arguments, the same plan
    assert describe(p).count("\n") == len(p.reasons) - 1 and "pieces" in describe(p)


@pytest.mark.parametrize("cpus", [1, 2, 8, 64])
def test_affinity_and_load_decide_only_how_many_threads(cpus):
    """``usable`` (affinity) changes ``workers`` alone; the cut follows the machine's size."""
    for shape in [(100, 64, 256, 256, 1), (100, 32, 256, 256, 2), (7, 5, 3, 9, 1), (300, 128, 64, 64, 1)]:
        plans = [plan(Shape(*shape), "float32", replace(SKYLAKEX, cpus=cpus, usable=u)) for u in range(1, cpus + 1)]
        assert len({p.arithmetic for p in plans}) == 1
        assert all(p.workers <= u for u, p in enumerate(plans, start=1))


def test_pieces_grow_with_the_machine_and_keep_their_rows():
    counts = [
        len(plan(Shape(100, 256, 256, 256), "float32", replace(SKYLAKEX, cpus=c, usable=c)).pieces) for c in (1, 2, 4, 8, 64)
    ]
    assert counts == [1, 2, 4, 8, 64]
    p = plan(Shape(100, 256, 256, 256), "float32", replace(SKYLAKEX, cpus=128, usable=128))
    assert min(b1 - b0 for b0, b1 in p.pieces) >= RULES.piece_min_rows


def test_cut_covers_every_row_once():
    for n in range(1, 40):
        for parts in range(1, n + 1):
            ranges = cut(n, parts)
            assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) == parts
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_the_generic_code_where_the_loop_does_not_apply():
    assert plan(Shape(10, 4, 8, 16), "float32", SKYLAKEX, reset_after=False).route == "generic"
    assert plan(Shape(10, 4, 8, 16), "float16", SKYLAKEX).route == "generic"
    assert "reset_before" in describe(plan(Shape(10, 4, 8, 16), "float32", SKYLAKEX, reset_after=False))


def test_forced_choices_and_their_checks():
    shape = Shape(10, 12, 8, 16)
    p = plan(
        shape, "float64", SKYLAKEX, fuser="numba", force={"pieces": 5, "chunk": 3, "panel": 16, "grad_blocks": 7, "workers": 4}
    )
    assert (len(p.pieces), p.chunk, p.panel, p.grad_blocks, p.workers) == (5, 3, 16, 7, 4)
    assert plan(shape, "float32", SKYLAKEX, fuser="numpy").fuser == "numpy"
    assert plan(shape, "float32", SKYLAKEX, fuser="numba", force={"blas": "numpy"}).compiled is False
    with pytest.raises(ValueError, match="pieces must be between 1 and the batch size 12"):
        plan(shape, "float32", SKYLAKEX, force={"pieces": 13})
    with pytest.raises(ValueError, match="compiled loop's"):
        plan(shape, "float32", SKYLAKEX, fuser="numpy", force={"transposed": True})
    with pytest.raises(ValueError, match="chunk must be in 1..10"):
        plan(shape, "float32", SKYLAKEX, fuser="numba", force={"chunk": 11})
    with pytest.raises(PlanError, match="numba is not installed"):
        plan(shape, "float32", replace(SKYLAKEX, numba=False), fuser="numba")
    assert plan(shape, "float32", replace(SKYLAKEX, cpus=8, usable=8), fuser="numba", max_workers=1).workers == 1


def test_this_machine_is_described_consistently():
    here = this_machine()
    assert 1 <= here.usable <= here.cpus
    assert isinstance(plan(Shape(5, 3, 4, 8), "float32", here), Plan)
    with pytest.raises(ValueError):
        Machine(cpus=0)


def test_the_other_cells_plans_follow_the_gru_plans_rules():
    """lngru and mingru, asked through the one entry: the fuser threshold, the pieces from CPUs (never
    the usable cores), the refusals that send a layer to the generic code, each with its reason; each
    cell's own refusal is declared with its CPU loop."""
    from gruxp._native.plan import Shape

    big, small = Shape(100, 64, 256, 256, 1), Shape(10, 8, 16, 16, 1)
    for cell in ("lngru", "mingru"):
        busy = plan_for(cell, big, "float32", Machine(cpus=4, usable=1, blas="SkylakeX", numba=True))
        quiet = plan_for(cell, big, "float32", Machine(cpus=4, usable=4, blas="SkylakeX", numba=True))
        assert busy.route == quiet.route == "fused" and busy.pieces == quiet.pieces and len(quiet.pieces) == 4
        assert (busy.workers, quiet.workers) == (1, 4)
        assert plan_for(cell, small, "float32", Machine(cpus=4, usable=4, numba=True, blas="Haswell")).route == "generic"
        forced = plan_for(cell, small, "float32", Machine(cpus=4, usable=4, numba=True, blas="Haswell"), fuser="numba")
        assert forced.route == "fused" and len(forced.pieces) == 1
        assert forced.workers == 1  # the GRU plan's worker rule: small work stays on one thread
        assert plan_for(cell, big, "float16", Machine(cpus=4, usable=4, numba=True, blas="Haswell")).route == "generic"
        assert plan_for(cell, big, "float32", Machine(cpus=4, usable=4, numba=False, blas="Haswell")).route == "generic"
    no_blas = plan_for("lngru", big, "float32", Machine(cpus=4, usable=4, numba=True, blas=None))
    assert no_blas.route == "generic" and "BLAS" in no_blas.reasons[0]
    log = plan_for("mingru", big, "float32", Machine(cpus=4, usable=4, numba=True, blas=None), options={"log_space": True})
    assert log.route == "generic" and "log_space" in log.reasons[0]
    two = Shape(100, 64, 256, 256, 2)  # minGRU's loop runs a layer's directions one after the other
    assert len(plan_for("mingru", two, "float32", Machine(cpus=4, usable=4, blas="SkylakeX", numba=True)).pieces) == 4
    assert len(plan_for("lngru", two, "float32", Machine(cpus=4, usable=4, blas="SkylakeX", numba=True)).pieces) == 2
    assert plan_for("ligru", big, "float32", SKYLAKEX).route == "generic"  # it declares no CPU loop
    with pytest.raises(PlanError, match="numba is not installed"):  # one error type for every plan
        plan_for("mingru", big, "float32", Machine(cpus=4, usable=4, numba=False), fuser="numba")


def test_one_plan_entry_one_error_and_the_forceable_fields_are_the_plans():
    """plan_for answers for every cell; the settings' cpu_plan fields are Plan's own; one error type."""
    from dataclasses import fields

    import gruxp
    from gruxp._native.plan import CellPlan

    shape = Shape(10, 12, 8, 16)
    assert plan_for("gru", shape, "float32", SKYLAKEX) == plan(shape, "float32", SKYLAKEX)
    assert isinstance(plan_for("lngru", shape, "float32", SKYLAKEX), CellPlan)
    assert set(PLAN_FIELDS) == {f.name for f in fields(Plan)} - {"route", "compiled", "reasons"}
    with pytest.raises(ValueError, match="cpu_plan names no plan field 'l2_bytes'"):
        gruxp.config_context(cpu_plan={"l2_bytes": 1}).__enter__()
    with pytest.raises(PlanError, match="unknown plan field 'nope'"):
        plan(shape, "float32", SKYLAKEX, force={"nope": 1})
    assert issubclass(PlanError, ValueError) and not hasattr(SKYLAKEX, "l2_bytes")
