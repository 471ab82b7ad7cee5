"""Every fast route equals its generic oracle, with every choice of the CPU plan forced on.

The NumPy fuser with NumPy's BLAS is bit for bit the generic code; numba (and gruxp's own BLAS)
and JAX's lax.scan loop at a stated bound. Choices are forced through the public settings
(``gruxp.config_context(cpu_plan=...)``), never by patching private attributes.
"""

import threading

import numpy as np
import pytest
from _cases import Case, host_case_inputs

import gruxp
from gruxp._native import blas, cpu_plan, workers
from gruxp.functional._routes import GENERIC, route_for
from gruxp.testing import to_numpy

CASES = [
    Case(),
    Case(bias=False),
    Case(num_layers=2, bidirectional=True, ragged=True),
    Case(num_layers=3, batch_first=True, ragged=True, T=7, B=5, H=6),
    Case(bidirectional=True, unbatched=True),
    Case(T=9, B=1, I=3, H=8),
    Case(T=7, B=9, I=5, H=33, ragged=True, num_layers=2),
    Case(batch_first=True, T=7, B=6, I=5, H=7),
]

needs_gruxp_blas = pytest.mark.skipif(blas.library() is None, reason="gruxp's own OpenBLAS (scipy-openblas64) is not installed")


def _run(case, dtype, seed, *, xp=np, dropout=0.0):
    """inference, forward and every gradient of the case's GRU on ``xp`` (host inputs, seeded)."""
    model = gruxp.GRU(
        case.I,
        case.H,
        case.num_layers,
        bias=case.bias,
        batch_first=case.batch_first,
        reset_after=case.reset_after,
        bidirectional=case.bidirectional,
        dropout=dropout,
        xp=xp,
        dtype=dtype,
        seed=seed,
    )
    host = host_case_inputs(case, seed=seed)
    cast = lambda a: xp.asarray(np.ascontiguousarray(a, dtype=dtype))  # noqa: E731  (batch_first: (B, T, I) in memory)
    x, h0 = cast(case.layout(host["x"], seq=True)), cast(case.layout(host["h0"], seq=False))
    inference = model(x, h0, lengths=host["lengths"])
    out, h_n, tape = model.forward(x, h0, lengths=host["lengths"])
    grads, dx, dh0 = model.backward(tape, cast(case.layout(host["d_out"], seq=True)), cast(case.layout(host["d_hn"], seq=False)))
    return [*inference, out, h_n, dx, dh0, *grads.values()]


def _generic(case, dtype, seed=3):
    with gruxp.config_context(fast_routes=False):
        return _run(case, dtype, seed)


def _assert_within_bound(fast, generic, dtype):
    """float64 within 1e-12 of each array's largest value (the stated bound); float32 within the
    cross-backend tolerances."""
    for a, b in zip(fast, generic, strict=True):
        a, b = to_numpy(a), to_numpy(b)
        scale = float(np.max(np.abs(b)))
        if dtype == "float64":
            assert float(np.max(np.abs(a - b))) <= 1e-12 * scale
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * scale)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_numpy_fuser_with_numpys_blas_is_bit_identical_to_the_generic_code(case, dtype):
    """The NumPy fuser calls the shared gate functions on whole blocks, and np.matmul as the
    generic code does: the same bits."""
    with gruxp.config_context(fuser="numpy", cpu_plan={"blas": "numpy"}):
        assert cpu_plan(case.T, case.B, case.I, case.H, dtype=dtype)[0].arithmetic[:4] == ("fused", "numpy", False, "numpy")
        fast = _run(case, dtype, seed=3)
    for a, b in zip(fast, _generic(case, dtype), strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


PLANS = {
    "numpy fuser, gruxp's BLAS": dict(fuser="numpy"),
    "numpy fuser, a copy of Wᵀ": dict(fuser="numpy", cpu_plan={"copy_weights": True}),
    "numpy fuser, Wᵀ as a view": dict(fuser="numpy", cpu_plan={"copy_weights": False}),
    "numba, steps in Python, NumPy's BLAS": dict(fuser="numba", cpu_plan={"blas": "numpy"}),
    "numba, compiled": dict(fuser="numba"),
    "compiled, in chunks of 2 steps": dict(fuser="numba", cpu_plan={"chunk": 2}),
    "compiled, batch in 3 pieces at once": dict(fuser="numba", cpu_plan={"pieces": 3, "workers": 3}),
    "compiled, transposed product": dict(fuser="numba", cpu_plan={"transposed": True, "pieces": 2}),
    "compiled, column panels of 16": dict(fuser="numba", cpu_plan={"panel": 16}),
    "compiled, backward panels of 16": dict(fuser="numba", cpu_plan={"back_panel": 16}),
    "compiled, gradient GEMMs in 3 blocks": dict(fuser="numba", cpu_plan={"grad_blocks": 3, "workers": 2}),
}
NEEDS_BLAS = {name for name, settings in PLANS.items() if settings.get("cpu_plan", {}).get("blas") != "numpy"}


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_plan_choice_equals_the_generic_code_at_the_stated_bound(case, dtype, name):
    """numba compiles the same gate functions with its own tanh (a few ulp from NumPy's), and gruxp's
    BLAS may round a product otherwise than NumPy's: float64 within 1e-12 of each array's largest
    value, float32 within the cross-backend tolerances. Each choice of the plan is forced on every
    case (a piece of the batch, a chunk of steps, a panel or a block that a bug misplaces fails)."""
    if name in NEEDS_BLAS and blas.library() is None:
        pytest.skip("gruxp's own OpenBLAS (scipy-openblas64) is not installed")
    if PLANS[name].get("fuser") == "numba":
        pytest.importorskip("numba")
    settings = PLANS[name]
    forced = settings.get("cpu_plan", {})
    B = 1 if case.unbatched else case.B
    if forced.get("pieces", 1) > B:
        settings = {**settings, "cpu_plan": {**forced, "pieces": B}}
    with gruxp.config_context(**settings), gruxp.routes_taken() as taken:
        plans = cpu_plan(case.T, B, case.I, case.H, num_layers=case.num_layers, bidirectional=case.bidirectional, dtype=dtype)
        fused = _run(case, dtype, seed=3)
    for key, value in settings.get("cpu_plan", {}).items():
        got = len(plans[0].pieces) if key == "pieces" else getattr(plans[0], key)
        assert got == value, (key, got)
    assert plans[0].compiled == (settings.get("fuser") == "numba" and "blas" not in forced)
    ran = {(t.route, t.step) for t in taken}
    assert {("numpy-cpu", "forward"), ("numpy-cpu", "backward")} <= ran and ("generic", "forward") not in ran, ran
    fuser = settings.get("fuser")
    assert all(t.how.startswith(f"fused by {fuser}") for t in taken if t.route == "numpy-cpu")
    pieces = [t for t in taken if t.route == "workers"]
    if min(B, forced.get("pieces", 1)) > 1:
        assert max(t.pieces for t in pieces) >= 2
        if forced.get("workers", 1) > 1:
            assert max(t.helpers for t in pieces) >= 1  # the pieces were handed to gruxp's threads too
    _assert_within_bound(fused, _generic(case, dtype), dtype)


@needs_gruxp_blas
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_same_plan_gives_the_same_bits_on_any_number_of_threads(dtype):
    """Pieces, directions and gradient blocks run at once or one after the other: the cut is the
    plan's, so the bits are the same (here 4 pieces, 2 directions, 3 blocks on 1, 2 and 8 threads)."""
    pytest.importorskip("numba")
    case = Case(T=12, B=16, I=64, H=128, ragged=True, batch_first=True, num_layers=2, bidirectional=True)
    runs = []
    for threads in (1, 2, 8):
        with gruxp.config_context(fuser="numba", cpu_plan={"pieces": 4, "grad_blocks": 3, "workers": threads}):
            runs.append(_run(case, dtype, seed=4))
    for other in runs[1:]:
        for a, b in zip(other, runs[0], strict=True):
            np.testing.assert_array_equal(a, b)


@needs_gruxp_blas
def test_gruxp_blas_multiplies_every_layout_like_numpy():
    """Row-major, transposed views, strided rows, a single row (GEMV), vectors, empty and K = 0:
    the same values as NumPy (to rounding), written into ``out`` where given."""
    rng = np.random.default_rng(0)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        a, b = rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal((5, 9)).astype(dtype)
        wide = rng.standard_normal((7, 12)).astype(dtype)
        cases = [
            (a, b),
            (a, np.asfortranarray(b)),
            (a.T.copy().T, b),
            (a[:1], b),
            (a[3], b),
            (wide[:, 2:7], b),
            (a[:, :0], b[:0]),
            (a[:0], b),
            (np.ascontiguousarray(b.T), a.T),
            (a[::2], b),
            (a[:, ::-1], b[::-1]),
        ]
        for left, right in cases:
            np.testing.assert_allclose(blas.matmul(left, right), left @ right, rtol=rtol, atol=1e-6)
        out = np.full((14, 9), np.nan, dtype)
        blas.matmul(a, b, out=out[::2])
        np.testing.assert_allclose(out[::2], a @ b, rtol=rtol)
        assert np.isnan(out[1::2]).all()
    with pytest.raises(TypeError, match="one dtype"):
        blas.matmul(a.astype(np.float32), b.astype(np.float64))


@needs_gruxp_blas
def test_gruxp_blas_is_its_own_and_runs_on_one_thread(monkeypatch):
    """gruxp's OpenBLAS is not the file NumPy loaded, runs on one thread, and comes back to one
    thread if a threadpoolctl limit set it otherwise; NumPy's BLAS keeps its own count."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    lib = blas.library()
    numpy_libs = {info["filepath"] for info in threadpoolctl.threadpool_info() if "numpy" in info["filepath"]}
    assert lib.path not in numpy_libs and lib.get_threads() == 1
    before = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["filepath"] in numpy_libs]
    lib.set_threads(2)
    try:
        model = gruxp.GRU(16, 32, seed=0, dtype="float64")
        with gruxp.config_context(fuser="numpy"):
            model(np.ones((4, 3, 16)))
        assert lib.get_threads() == 1
    finally:
        lib.one_thread()
    assert [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["filepath"] in numpy_libs] == before


def test_a_call_changes_nothing_process_wide():
    """While gruxp runs pieces on its threads, another thread's BLAS thread count, the caller's
    affinity and the environment are what they were (no threadpoolctl limit, no pinning)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import os

    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(tuple(info["num_threads"] for info in threadpoolctl.threadpool_info() if "numpy" in info["filepath"]))

    affinity, environ = (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None), dict(os.environ)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        model = gruxp.GRU(64, 128, 2, bidirectional=True, seed=0, dtype="float32")
        x = np.random.default_rng(0).standard_normal((20, 32, 64)).astype(np.float32)
        for _ in range(3):
            out, _, tape = model.forward(x)
            model.backward(tape, out)
    finally:
        stop.set()
        watcher.join()
    assert len(set(seen)) == 1, set(seen)
    assert (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None) == affinity
    assert dict(os.environ) == environ


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_column_panels_multiply_like_one_call(dtype):
    """The compiled loops' GEMM in column panels (the last one narrower) writes every column of a @ b."""
    pytest.importorskip("numba")
    from gruxp._native.numba_kernels import fuser

    product = fuser(dtype).product
    if product is None:
        pytest.skip("gruxp's own OpenBLAS (scipy-openblas64) is not installed")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((7, 50)).astype(dtype)
    for width in (0, 16, 32, 50, 64):
        out = np.full((5, 50), np.nan, dtype)
        product(a, b, out, width)
        np.testing.assert_allclose(out, a @ b, rtol=1e-5 if dtype == "float32" else 1e-13)


def test_numba_activations_are_within_a_few_ulp():
    numba_kernels = pytest.importorskip("gruxp._native.numba_kernels")
    import numba

    @numba.njit
    def apply(f, x, out):
        for i in range(x.size):
            out[i] = f(x[i])

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20_000) * s for s in (1e-3, 0.3, 1.0, 3.0, 12.0)])
    x = np.concatenate([x, [0.0, 0.625, -0.625, 19.0, 25.0, 1e-300, 1e30, -1e30]])
    for dtype, tanh, bound in ((np.float64, numba_kernels.tanh64, 2.0), (np.float32, numba_kernels.tanh32, 7.0)):
        xs = x.astype(dtype)
        out = np.empty_like(xs)
        apply(tanh, xs, out)
        exact = np.tanh(xs.astype(np.longdouble))
        ulps = np.abs(out - exact) / np.spacing(np.abs(exact).astype(dtype))
        assert float(ulps.max()) <= bound, (dtype, float(ulps.max()))
        special = np.array([np.inf, -np.inf, np.nan], dtype)
        apply(tanh, special, out[:3])
        np.testing.assert_array_equal(out[:3], [1.0, -1.0, np.nan])


def test_without_numba_the_plan_takes_the_numpy_fuser():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import gruxp, numpy as np\n"
        "from gruxp._native import cpu_plan\n"
        "m = gruxp.GRU(3, 4, seed=0); out, _ = m(np.ones((5, 2, 3), np.float32))\n"
        "print(cpu_plan(500, 64, 256, 256)[0].fuser, out.shape)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["numpy", "(5,", "2,", "4)"]


def test_routes_only_where_they_apply():
    import array_api_compat.numpy as np_compat

    assert route_for(np_compat).name == "numpy-cpu"
    assert cpu_plan(5, 3, 4, 8, reset_after=False)[0].route == "generic"
    assert cpu_plan(5, 3, 4, 8, dtype="float16")[0].route == "generic"
    with gruxp.config_context(fast_routes=False):
        assert route_for(np_compat) is GENERIC
    with pytest.raises(ValueError, match="fuser must be one of"):
        with gruxp.config_context(fuser="cython"):
            pass
    with pytest.raises(ValueError, match="cpu_plan names no plan field 'halves'"):
        gruxp.config_context(cpu_plan={"halves": 2}).__enter__()
    with pytest.raises(TypeError, match="unknown gruxp setting 'fastroutes'"):
        gruxp.set_config(fastroutes=False)
    strict = pytest.importorskip("array_api_strict")
    assert route_for(strict) is GENERIC


def test_settings_are_per_thread_and_restored():
    """A config_context in one thread is invisible to another; set_config changes the defaults new
    threads start from; leaving the block restores what was."""
    entered, release, seen = threading.Event(), threading.Event(), {}

    def hold():
        with gruxp.config_context(fast_routes=False, fuser="numpy"):
            entered.set()
            release.wait()
            seen["inside"] = gruxp.get_config()["fast_routes"]

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait()
    assert gruxp.get_config()["fast_routes"] is True and gruxp.get_config()["fuser"] == "auto"
    release.set()
    thread.join()
    assert seen["inside"] is False
    before = gruxp.get_config()
    try:
        gruxp.set_config(max_workers=1)
        other = {}
        t = threading.Thread(target=lambda: other.update(gruxp.get_config()))
        t.start()
        t.join()
        assert other["max_workers"] == 1
    finally:
        gruxp.set_config(max_workers=before["max_workers"])
    assert gruxp.get_config() == before


# -- JAX: the loop is lax.scan over the same step functions ------------------------------------------
SCAN_CASES = [
    Case(num_layers=layers, bidirectional=bi, reset_after=ra, ragged=ragged, batch_first=bf, T=6, B=3)
    for layers in (1, 2)
    for bi in (False, True)
    for ra in (True, False)
    for ragged, bf in ((False, False), (True, True))
]
SCAN_CASES += [Case(bidirectional=True, unbatched=True), Case(num_layers=2, reset_after=False, unbatched=True, bias=False)]


def _scan_params():
    """float64 (the stated bound) for every case; float32 for two in the quick run, the rest in the full one."""
    quick32 = {Case(num_layers=1, T=6, B=3), Case(num_layers=2, bidirectional=True, T=6, B=3)}
    return [
        pytest.param(
            case, dtype, id=f"{case.id}-{dtype}", marks=() if dtype == "float64" or case in quick32 else pytest.mark.slow
        )
        for dtype in ("float64", "float32")
        for case in SCAN_CASES
    ]


@pytest.mark.parametrize("case, dtype", _scan_params())
def test_jax_scan_route_equals_the_python_loop(case, dtype):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from array_api_compat import array_namespace

    assert route_for(array_namespace(jnp.zeros(1))).name == "jax"
    options = dict(xp=jnp, dropout=0.3 if case.num_layers > 1 else 0.0)
    scanned = _run(case, dtype, 3, **options)
    with gruxp.config_context(fast_routes=False):
        looped = _run(case, dtype, 3, **options)
    # XLA fuses the step's element-wise work inside the scan; float64 within 1e-12 relative (the
    # stated bound), float32 within the cross-backend tolerances
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=1e-4, atol=5e-5)
    for a, b in zip(scanned, looped, strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), **tol)


def _jaxpr_size(T):
    import jax
    import jax.numpy as jnp

    model = gruxp.GRU(3, 4, 2, bidirectional=True, xp=jnp, dtype="float64", seed=0)

    def loss(params, x):
        out, h_n, tape = gruxp.functional.gru_forward(params, x, num_layers=2, bidirectional=True)
        grads, _, _ = gruxp.functional.gru_backward(tape, jnp.ones_like(out))
        return jnp.sum(out) + sum(jnp.sum(g) for g in grads.values())

    jaxpr = jax.make_jaxpr(loss)(model.params, jnp.zeros((T, 2, 3)))

    def count(j):  # equations, those inside scan/jit bodies included
        total = 0
        for eqn in j.eqns:
            total += 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        total += count(inner)
        return total

    return count(jaxpr.jaxpr)


def test_the_compiled_program_does_not_grow_with_T():
    """A structural check, not a timing: the traced forward+backward is the same size for T = 10 and
    T = 200 (the Python loop unrolled it: T copies of the step)."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    assert _jaxpr_size(10) == _jaxpr_size(200)
    with gruxp.config_context(fast_routes=False):
        assert _jaxpr_size(6) > _jaxpr_size(3)  # the generic loop unrolls: the check can fail


# -- Memory: buffers, the tape pool, what a caller holds ---------------------------------------------
def test_buffers_are_reused_and_can_be_freed():
    """The CPU route keeps its scratch per thread between calls (no fresh page faults), never
    something a caller holds; clear_buffers lets it go, and the next call is as right."""
    from gruxp._native import cpu

    model = gruxp.GRU(4, 8, xp=np, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3, 4))
    out1, h1 = model(x)
    assert cpu._here().scratch  # kept
    out2, h2 = model(x)
    assert not np.shares_memory(out1, out2)  # results are never scratch
    gruxp._native.clear_buffers()
    assert not cpu._here().scratch
    out3, h3 = model(x)
    np.testing.assert_array_equal(out1, out3)
    np.testing.assert_array_equal(h2, h3)


def test_a_tape_block_is_taken_again_only_when_nothing_refers_to_it():
    from gruxp._native.cpu import TapePool

    if not TapePool.REUSE:
        pytest.skip("this interpreter's reference counts are not exact: no block is reused")
    pool = TapePool()
    a = pool.take(100, np.float64)
    a[:] = 1.0
    held = a[10:20]  # a view keeps the block in use
    del a
    b = pool.take(100, np.float64)
    assert not np.shares_memory(b, held)
    np.testing.assert_array_equal(held, 1.0)
    address = held.ctypes.data - 10 * 8
    del held
    assert pool.take(100, np.float64).ctypes.data == address  # free again: reused
    assert pool.take(60, np.float64).ctypes.data == address  # a free block up to twice the request fits
    assert pool.take(40, np.float64).ctypes.data != address  # more than twice: a new one
    assert pool.take(100, np.float32).dtype == np.float32
    del b
    for _ in range(TapePool.IDLE_TAKES + 1):
        pool.take(7, np.float64)  # one small block, taken and freed each time
    assert [e[0].size for e in pool.entries] == [7]  # the idle ones were given back


def _torch_view(a):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(a)


def _data_as(a):
    import ctypes

    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


# Ways a caller may hold an array's memory without the array itself: (hold, read back as (shape)).
HOLDERS = {
    "a NumPy view": (lambda a: a[:], lambda held, shape: held),
    "a memoryview": (memoryview, lambda held, shape: np.asarray(held)),
    "np.frombuffer": (lambda a: np.frombuffer(memoryview(a), dtype=a.dtype), lambda held, shape: held.reshape(shape)),
    "ctypes (np.ctypeslib)": (np.ctypeslib.as_ctypes, lambda held, shape: np.ctypeslib.as_array(held)),
    "ctypes pointer (data_as)": (_data_as, lambda held, shape: np.ctypeslib.as_array(held, shape=shape)),
    "torch.from_numpy": (_torch_view, lambda held, shape: held.numpy()),
}


@pytest.mark.parametrize("holder", list(HOLDERS))
def test_what_a_caller_holds_keeps_its_bytes_across_later_calls(holder):
    """A result's memory, held only through another object, is never reused by the next 20 calls
    (the tape pool hands out a block only once nothing refers to it)."""
    hold, read = HOLDERS[holder]
    model = gruxp.GRU(4, 8, 1, xp=np, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    out, h_n, tape = model.forward(rng.standard_normal((6, 3, 4)))
    arrays = {
        "out": out,
        "h_n": h_n,
        "tape.hs": tape.layers[0][0].hs,
        "tape.r": tape.layers[0][0].r,
        "tape.h0": tape.layers[0][0].h0,
    }
    kept = {name: hold(a) for name, a in arrays.items()}
    expected = {name: (a.copy(), a.shape) for name, a in arrays.items()}
    del out, h_n, tape, arrays
    for _ in range(20):
        o, _, t = model.forward(rng.standard_normal((6, 3, 4)))
        model.backward(t, o)
    for name, held in kept.items():
        values, shape = expected[name]
        np.testing.assert_array_equal(read(held, shape), values, err_msg=name)


@pytest.mark.parametrize("fuser", ["numpy", "numba"])
def test_a_later_call_never_writes_into_what_an_earlier_one_returned(fuser):
    """Tape blocks are pooled: a second training step must leave the first's outputs, final state
    and tape as they were (its gradients then equal a fresh computation's)."""
    if fuser == "numba":
        pytest.importorskip("numba")
    model = gruxp.GRU(4, 8, 2, bidirectional=True, batch_first=True, xp=np, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x1, x2, d_out = rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 6, 16))
    with gruxp.config_context(fuser=fuser):
        out1, h1, tape1 = model.forward(x1)
        saved = [a.copy() for a in (out1, h1)]
        for _ in range(3):
            out2, h2, tape2 = model.forward(x2)
            model.backward(tape2, d_out)
            del out2, h2, tape2
        np.testing.assert_array_equal(out1, saved[0])
        np.testing.assert_array_equal(h1, saved[1])
        late = model.backward(tape1, d_out)
        fresh = model.backward(model.forward(x1)[2], d_out)
    for a, b in zip([*late[0].values(), *late[1:]], [*fresh[0].values(), *fresh[1:]], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reverse", [False, True])
def test_previous_states_are_a_view_of_the_tape_block(reverse):
    """The CPU route stores h0 beside the states, so the states each step started from need no copy;
    arrays it did not lay out that way get None (the generic copy)."""
    import array_api_compat.numpy as np_compat

    from gruxp._native.cpu import previous_states_view
    from gruxp.functional._sequence import previous_states

    model = gruxp.GRU(4, 8, 1, bidirectional=True, xp=np, dtype="float64", seed=0)
    _, _, tape = model.forward(np.random.default_rng(0).standard_normal((5, 3, 4)))
    direction = tape.layers[0][int(reverse)]
    view = previous_states_view(direction.hs, direction.h0, reverse=reverse)
    assert view is not None and np.shares_memory(view, direction.hs)
    np.testing.assert_array_equal(view, previous_states(direction, reverse=reverse, xp=np_compat))
    assert previous_states_view(direction.hs.copy(), direction.h0, reverse=reverse) is None
    assert previous_states_view(direction.hs, direction.h0.copy(), reverse=reverse) is None
    assert previous_states_view(direction.hs, direction.h0, reverse=not reverse) is None


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_runs_pieces_on_its_own_threads():
    """gruxp's threads do not survive fork(): a child starts its own, not waiting on the parent's forever."""
    pytest.importorskip("numba")
    import multiprocessing
    import warnings

    case = Case(bidirectional=True, B=8)
    settings = dict(fuser="numba", cpu_plan={"pieces": 2, "workers": 2})
    with gruxp.config_context(**settings):
        expected = _run(case, "float64", seed=2)

    def child(results):
        with gruxp.config_context(**settings):
            results.put([to_numpy(a) for a in _run(case, "float64", seed=2)])

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=child, args=(results,))
    with warnings.catch_warnings():  # JAX, if an earlier test started it, warns on any fork (the child needs no JAX)
        warnings.simplefilter("ignore", RuntimeWarning)
        process.start()
    got = results.get(timeout=120)
    process.join(timeout=30)
    assert process.exitcode == 0
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_a_failing_piece_raises_in_the_caller_after_the_others_ran():
    ran = []

    def fail():
        raise RuntimeError("piece 1")

    with pytest.raises(RuntimeError, match="piece 1"):
        workers.run([lambda: ran.append(0), fail, lambda: ran.append(2), lambda: ran.append(3)], 3)
    assert sorted(ran) == [0, 2, 3]


def test_routes_taken_records_this_threads_calls_inside_the_block_only():
    """The public question the route tests ask: what ran, here and now, and nothing else."""
    import threading

    gru = gruxp.GRU(4, 8, seed=0, dtype="float64")
    x = np.ones((6, 3, 4))
    gru(x)  # outside any block: not recorded anywhere
    with gruxp.routes_taken() as taken:
        other = threading.Thread(target=gru, args=(x,))
        other.start()
        other.join()  # another thread's call: not this block's
        assert taken == []
        gru(x)
    gru(x)
    assert [(t.route, t.step) for t in taken] == [("numpy-cpu", "forward")]
    assert taken[0].how.startswith("fused by ")
    with gruxp.routes_taken() as generic, gruxp.config_context(fast_routes=False):
        out, _, tape = gru.forward(x)
        gru.backward(tape, np.ones_like(out))
    assert [(t.route, t.step) for t in generic] == [("generic", "forward"), ("generic", "backward")]
