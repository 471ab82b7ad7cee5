"""Every fast route equals its generic oracle: the NumPy fuser bit for bit; numba and JAX's lax.scan loop at a stated bound."""

import numpy as np
import pytest
from _cases import Case, host_case_inputs

import gruxp
from gruxp._native import fast_routes, fused_loop_for, route_for
from gruxp.testing import to_numpy

CASES = [
    Case(),
    Case(bias=False),
    Case(num_layers=2, bidirectional=True, ragged=True),
    Case(num_layers=3, batch_first=True, ragged=True, T=7, B=5, H=6),
    Case(bidirectional=True, unbatched=True),
    Case(T=9, B=1, I=3, H=8),
]


def _run(case, dtype, seed, *, xp=np, dropout=0.0):
    """inference, forward and every gradient of the case's GRU on ``xp`` (host inputs, seeded)."""
    model = gruxp.GRU(case.I, case.H, case.num_layers, bias=case.bias, batch_first=case.batch_first, reset_after=case.reset_after,
                      bidirectional=case.bidirectional, dropout=dropout, xp=xp, dtype=dtype, seed=seed)
    host = host_case_inputs(case, seed=seed)
    cast = lambda a: xp.asarray(np.ascontiguousarray(a, dtype=dtype))  # noqa: E731  (batch_first: (B, T, I) in memory)
    x, h0 = cast(case.layout(host["x"], seq=True)), cast(case.layout(host["h0"], seq=False))
    inference = model(x, h0, lengths=host["lengths"])
    out, h_n, tape = model.forward(x, h0, lengths=host["lengths"])
    grads, dx, dh0 = model.backward(tape, cast(case.layout(host["d_out"], seq=True)), cast(case.layout(host["d_hn"], seq=False)))
    return [*inference, out, h_n, dx, dh0, *grads.values()]


def _numpy_compat():
    import array_api_compat.numpy as np_compat

    return np_compat


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_numpy_fuser_is_bit_identical_to_the_generic_code(case, dtype):
    """Without numba the fused loop calls the shared gate functions on whole blocks: same bits."""
    with fast_routes(True, fuser="numpy"):
        assert fused_loop_for(_numpy_compat(), reset_after=True, dtype=dtype).fuser.name == "numpy"
        fast = _run(case, dtype, seed=3)
    with fast_routes(False):
        assert fused_loop_for(_numpy_compat(), reset_after=True, dtype=dtype) is None
        generic = _run(case, dtype, seed=3)
    for a, b in zip(fast, generic, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("loops", ["compiled", "compiled, in chunks", "compiled, halves at once", "compiled, transposed product",
                                   "compiled, column panels", "per-step"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES + [Case(T=7, B=4, I=5, H=33, ragged=True, num_layers=2), Case(batch_first=True, T=7, B=6, I=5, H=7)],
                         ids=lambda c: c.id)
def test_numba_fuser_equals_the_generic_code_at_the_stated_bound(case, dtype, loops, monkeypatch):
    """numba compiles the same gate functions with its own tanh (a few ulp from NumPy's): float64
    within 1e-12 of each array's largest value, float32 within the cross-backend tolerances. Both
    ways of driving the steps: the compiled loops (GEMM through NumPy's BLAS inside) and a Python
    loop calling np.matmul and the step kernels (where that BLAS cannot be reached). The compiled
    loops also with the input pre-activations computed a few steps at a time, as they are for
    long sequences (here forced: two steps per chunk, and one last), and with each half of the
    batch run at once on two threads, the GEMMs after the backward loop over each half of the
    steps (forced at this size), with each step's GEMM formed transposed (W hᵀ, forced), and with the
    forward step's GEMM called in column panels of 16 (forced, where 3H > 16)."""
    pytest.importorskip("numba")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import threading

    import gruxp._native as native
    from gruxp._native import threads
    from gruxp._native.cpu import FusedLoop
    from gruxp._native.numba_kernels import fuser

    compiled = loops.startswith("compiled")
    loop = FusedLoop(fuser(dtype, compiled_loops=compiled))
    if compiled and not loop.compiled:
        pytest.skip("NumPy's BLAS is not an OpenBLAS that gruxp can call from numba here")
    assert loop.compiled == compiled
    if loops == "compiled, in chunks":
        B = 1 if case.unbatched else case.B
        loop.CHUNK_BYTES, loop.MIN_CHUNK_ROWS_PER_INPUT = 2 * B * 3 * case.H * np.dtype(dtype).itemsize, 0
        assert loop._chunk_steps(case.T, B, case.I, case.H, dtype) == 2 and case.T % 2
    paired, ran_on = [], set()
    if loops == "compiled, halves at once":
        loop.MIN_SPLIT_ROWS, loop.MIN_SPLIT_WORK = 1, 0
        monkeypatch.setattr(threads, "one_thread_each", lambda *own: threadpoolctl.threadpool_limits(1, user_api="blas"))
        loop.pair = lambda first, second: paired.append(native.run_pair(first, second)) or paired[-1]
        compiled_forward = loop.forward_loop
        loop.forward_loop = lambda *a: (ran_on.add(threading.current_thread().name[:12]), compiled_forward(*a))[1]
    flipped, panels = [], []
    if loops == "compiled, transposed product":
        _force_transposed(loop, dtype, flipped)
    if loops == "compiled, column panels":
        loop._panel = lambda rows, H, dtype: panels.append(rows) or (16 if rows > 1 and 3 * H > 16 else 0)
    monkeypatch.setattr(native, "_fused_loop", lambda name, dtype: loop)
    with fast_routes(True, fuser="numba"):
        assert fused_loop_for(_numpy_compat(), reset_after=True, dtype=dtype) is loop
        fused = _run(case, dtype, seed=3)
    assert sorted(set(flipped)) == (["backward", "forward"] if loops == "compiled, transposed product" else [])
    assert (len(panels) > 0) == (loops == "compiled, column panels")
    if loops == "compiled, halves at once":
        split = not case.unbatched and case.B >= 2
        assert paired == ([True] * len(paired) if split else []) and (len(paired) > 0) == split
        assert ran_on == ({"MainThread", "gruxp-second"} if split else {"MainThread"})
    with fast_routes(False):
        generic = _run(case, dtype, seed=3)
    for a, b in zip(fused, generic, strict=True):
        a, b = to_numpy(a), to_numpy(b)
        scale = float(np.max(np.abs(b)))
        if dtype == "float64":
            assert float(np.max(np.abs(a - b))) <= 1e-12 * scale
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * scale)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)


def _force_transposed(loop, dtype, ran: list) -> None:
    """Make ``loop`` form every step's product transposed (W hᵀ), noting in ``ran`` which loop ran so."""
    loop.TRANSPOSED_DTYPES, loop.MIN_TRANSPOSED_HIDDEN, loop.MIN_TRANSPOSED_ROWS, loop.MAX_TRANSPOSED_ROWS = (np.dtype(dtype),), 0, 0, 10**9
    forward, backward = loop.transposed_loops
    loop.transposed_loops = (lambda *a: (ran.append("forward"), forward(*a))[1], lambda *a: (ran.append("backward"), backward(*a))[1])


@pytest.mark.parametrize("product", ["h Wᵀ", "(W hᵀ)ᵀ where it applies"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_halves_at_once_give_the_bits_of_one_piece(dtype, product, monkeypatch):
    """At a size where OpenBLAS rounds a GEMM of half the rows as it rounds all of them (every
    size measured that large), the two halves of the batch at once, with the GEMMs after the loop
    split by gate columns and dx rows, give the one-piece numba run's bits: no sum changes order.
    The transposed product (W hᵀ) would not (its GEMM rounds half the columns differently), so
    where the batch may run in halves it is not formed, whether the halves then run or not (its
    rule forced open here: the run in one piece, under load, and the halves agree)."""
    pytest.importorskip("numba")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import gruxp._native as native
    from gruxp._native import threads
    from gruxp._native.cpu import FusedLoop
    from gruxp._native.numba_kernels import fuser

    loop = FusedLoop(fuser(dtype))
    if not loop.compiled:
        pytest.skip("NumPy's BLAS is not an OpenBLAS that gruxp can call from numba here")
    flipped = []
    if product != "h Wᵀ":
        _force_transposed(loop, dtype, flipped)
    monkeypatch.setattr(native, "_fused_loop", lambda name, dtype: loop)
    case = Case(T=12, B=16, I=64, H=128, ragged=True, batch_first=True, num_layers=2)
    declined, paired = [], []
    loop.MIN_SPLIT_WORK, loop.pair = 0, lambda first, second: declined.append(False) or False  # as under load
    with fast_routes(True, fuser="numba"), threadpoolctl.threadpool_limits(1, user_api="blas"):
        one_piece = _run(case, dtype, seed=4)
    monkeypatch.setattr(threads, "one_thread_each", lambda *own: threadpoolctl.threadpool_limits(1, user_api="blas"))
    loop.pair = lambda first, second: paired.append(native.run_pair(first, second)) or paired[-1]
    with fast_routes(True, fuser="numba"):
        halves = _run(case, dtype, seed=4)
    # per layer: inference, taped forward, backward loop, the GEMMs after it
    assert paired == [True] * 4 * case.num_layers and len(declined) == 4 * case.num_layers
    assert flipped == []
    for a, b in zip(halves, one_piece, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_column_panels_multiply_like_one_call(dtype):
    """The compiled loops' GEMM in column panels (the last one narrower) writes every column of a @ b;
    and the forward step uses panels only where they gave one call's bits, on one BLAS thread."""
    pytest.importorskip("numba")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from gruxp._native.cpu import FusedLoop
    from gruxp._native.numba_kernels import fuser
    from gruxp._native.threads import blas_threads

    loop = FusedLoop(fuser(dtype))
    if loop.fuser.product is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS that gruxp can call from numba here")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((7, 50)).astype(dtype)
    for width in (0, 16, 32, 50, 64):
        out = np.full((5, 50), np.nan, dtype)
        loop.fuser.product(a, b, out, width)
        np.testing.assert_allclose(out, a @ b, rtol=1e-5 if dtype == "float32" else 1e-13)
    loop.SMALL_GEMM = 16 * 4 * 8  # forced: panels of 16 columns for (4, 8) @ (8, 24)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        width = loop._panel(4, 8, dtype)
    assert width == (16 if loop._exact_panels[4, 8, 16, np.dtype(dtype)] else 0)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        if blas_threads() == 2:
            assert loop._panel(4, 8, dtype) == 0  # OpenBLAS's own two threads: one call


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


def test_without_numba_the_fallback_is_the_numpy_fuser():
    import subprocess
    import sys

    code = ("import sys; sys.modules['numba'] = None\n"
            "from gruxp._native import fuser_name; import gruxp, numpy as np\n"
            "m = gruxp.GRU(3, 4, seed=0); out, _ = m(np.ones((5, 2, 3), np.float32)); print(fuser_name(), out.shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["numpy", "(5,", "2,", "4)"]


def test_routes_only_where_they_apply():
    np_compat = _numpy_compat()
    assert route_for(np_compat, reset_after=True) is None  # NumPy's fast path is the fused loop
    assert fused_loop_for(np_compat, reset_after=False, dtype="float64") is None
    assert fused_loop_for(np_compat, reset_after=True, dtype="float16") is None
    with pytest.raises(ValueError, match="fuser must be one of"):
        with fast_routes(True, fuser="cython"):
            pass
    strict = pytest.importorskip("array_api_strict")
    assert route_for(strict, reset_after=True) is None
    assert fused_loop_for(strict, reset_after=True, dtype=strict.float64) is None


def test_blas_threads_are_limited_inside_gruxp_only():
    """With a busy process beside it, gruxp's loop runs BLAS on the idle cores only, and the
    process-wide setting is what it was afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import subprocess
    import sys

    from gruxp._native.threads import _controller, blas_limit, idle_cores

    if idle_cores() is None or _controller() is None:
        pytest.skip("no /proc/stat or no BLAS that threadpoolctl knows here: the rule does not apply")
    ours = {lib.filepath for lib in _controller().lib_controllers}  # the BLAS NumPy had loaded

    def threads():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["filepath"] in ours]

    before = threads()
    cores = len(__import__("os").sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        idle_cores()  # the interval measured starts here, with the busy process running
        time.sleep(0.6)
        assert idle_cores() <= max(1, cores - 1)
        with blas_limit(1000, 64, 256):
            inside = threads()
    finally:
        busy.kill()
        busy.wait()
    assert threads() == before
    if max(before) > 1:
        assert max(inside) < max(before)


def test_two_loops_at_once_only_while_no_other_thread_of_the_process_runs(monkeypatch):
    """A thread of this process that is running (OpenBLAS's spinning workers, most often) is
    counted, a sleeping one is not; while one runs, no pair starts and neither call runs."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import hashlib
    import os
    import threading
    import time

    import gruxp._native as native
    from gruxp._native import threads

    if threads.others_running({threading.get_native_id()}) is None:
        pytest.skip("no /proc/self/task here: the check does not apply")
    monkeypatch.setattr(threads, "idle_cores", lambda: 2)  # whatever other processes do meanwhile
    monkeypatch.setattr(threads, "_threads", lambda blas: 2)
    monkeypatch.setattr(threads, "_controller", lambda: threadpoolctl.ThreadpoolController().select(user_api="blas"))
    if not threads._controller().lib_controllers:
        pytest.skip("no BLAS that threadpoolctl knows here")
    stop, started = threading.Event(), threading.Event()
    data = bytes(2**25)

    def spin():  # hashlib lets go of the GIL over large data: this thread runs, it does not wait for the GIL
        started.set()
        while not stop.is_set():
            hashlib.sha256(data).digest()

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        started.wait()
        time.sleep(0.05)
        own = {threading.get_native_id(), native._second_id}
        assert threads.others_running(own) >= 1
        assert threads.one_thread_each(frozenset({native._second_id})) is None
        calls = []
        assert native.run_pair(lambda: calls.append(1), lambda: calls.append(2)) is False and calls == []
    finally:
        stop.set()
        spinner.join()
    waiting = threading.Event()
    sleeper = threading.Thread(target=waiting.wait)
    sleeper.start()
    try:
        deadline = time.monotonic() + 2  # a BLAS worker that an earlier call woke spins ~0.1 s
        while threads.others_running({threading.get_native_id(), native._second_id}) and time.monotonic() < deadline:
            time.sleep(0.05)
        calls = []
        assert native.run_pair(lambda: calls.append(1), lambda: calls.append(2)) is True and sorted(calls) == [1, 2]
        cores = threads.cores_but_this_one()
        assert cores is None or (cores and cores <= os.sched_getaffinity(0))
    finally:
        waiting.set()
        sleeper.join()
    assert threads.l2_bytes() >= 2**14


# -- JAX: the loop is lax.scan over the same step functions ------------------------------------------
SCAN_CASES = [Case(num_layers=layers, bidirectional=bi, reset_after=ra, ragged=ragged, batch_first=bf, T=6, B=3)
              for layers in (1, 2) for bi in (False, True) for ra in (True, False) for ragged, bf in ((False, False), (True, True))]
SCAN_CASES += [Case(bidirectional=True, unbatched=True), Case(num_layers=2, reset_after=False, unbatched=True, bias=False)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", SCAN_CASES, ids=lambda c: c.id)
def test_jax_scan_route_equals_the_python_loop(case, dtype):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from array_api_compat import array_namespace

    assert route_for(array_namespace(jnp.zeros(1)), reset_after=case.reset_after) is not None
    options = dict(xp=jnp, dropout=0.3 if case.num_layers > 1 else 0.0)
    scanned = _run(case, dtype, 3, **options)
    with fast_routes(False):
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
    with fast_routes(False):
        assert _jaxpr_size(6) > _jaxpr_size(3)  # the generic loop unrolls: the check can fail


def test_buffers_are_reused_and_can_be_freed():
    """The CPU loop keeps its scratch per thread between calls (no fresh page faults), never
    something a caller holds; clear_buffers lets it go, and the next call is as right."""
    import gruxp._native as native

    model = gruxp.GRU(4, 8, xp=np, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3, 4))
    with fast_routes(True, fuser="numpy"):
        out1, h1 = model(x)
        loop = native.fused_loop_for(_numpy_compat(), reset_after=True, dtype="float64")
        assert loop._local.buffers  # kept
        out2, h2 = model(x)
        assert not np.shares_memory(out1, out2)  # results are never scratch
        native.clear_buffers()
        assert not getattr(loop._local, "buffers", None)
        out3, h3 = model(x)
    np.testing.assert_array_equal(out1, out3)
    np.testing.assert_array_equal(h2, h3)


def test_a_tape_block_is_taken_again_only_when_nothing_refers_to_it():
    from gruxp._native.cpu import TapePool

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


@pytest.mark.parametrize("fuser", ["numpy", "numba"])
def test_a_later_call_never_writes_into_what_an_earlier_one_returned(fuser):
    """Tape blocks are pooled: a second training step must leave the first's outputs, final state
    and tape as they were (its gradients then equal a fresh computation's)."""
    if fuser == "numba":
        pytest.importorskip("numba")
    model = gruxp.GRU(4, 8, 2, bidirectional=True, batch_first=True, xp=np, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x1, x2, d_out = rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 6, 16))
    with fast_routes(True, fuser=fuser):
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
    """The CPU loop stores h0 beside the states, so the states each step started from need no copy;
    arrays it did not lay out that way get None (the generic copy)."""
    from gruxp.functional._sequence import _previous_states

    model = gruxp.GRU(4, 8, 1, bidirectional=True, xp=np, dtype="float64", seed=0)
    with fast_routes(True, fuser="numpy"):
        _, _, tape = model.forward(np.random.default_rng(0).standard_normal((5, 3, 4)))
        loop = fused_loop_for(_numpy_compat(), reset_after=True, dtype="float64")
    direction = tape.layers[0][int(reverse)]
    view = loop.previous_states(direction.hs, direction.h0, reverse=reverse)
    assert view is not None and np.shares_memory(view, direction.hs)
    np.testing.assert_array_equal(view, _previous_states(direction, reverse=reverse, xp=_numpy_compat()))
    assert loop.previous_states(direction.hs.copy(), direction.h0, reverse=reverse) is None
    assert loop.previous_states(direction.hs, direction.h0.copy(), reverse=reverse) is None
    assert loop.previous_states(direction.hs, direction.h0, reverse=not reverse) is None


@pytest.mark.parametrize("case", [Case(num_layers=2, bidirectional=True, ragged=True), Case(bidirectional=True, batch_first=True)],
                         ids=lambda c: c.id)
def test_a_bidirectional_layer_may_run_its_directions_at_once_with_the_same_results(case, monkeypatch):
    """Where two cores are free, the compiled loop runs a layer's two directions on two threads;
    forced here at a small size: the second direction runs on gruxp's thread, results equal the
    one-after-the-other run's bit for bit (BLAS on one thread in both), and clear_buffers reaches
    that thread's buffers too."""
    pytest.importorskip("numba")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import threading

    import gruxp._native as native
    from gruxp._native import threads
    from gruxp._native.cpu import FusedLoop

    with fast_routes(True, fuser="numba"):
        if not fused_loop_for(_numpy_compat(), reset_after=True, dtype="float64").compiled:
            pytest.skip("NumPy's BLAS is not an OpenBLAS that gruxp can call from numba here")
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            one_after_the_other = _run(case, "float64", seed=5)
        ran_on = []
        forward = FusedLoop.forward
        monkeypatch.setattr(FusedLoop, "forward", lambda self, *a, **k: (ran_on.append(threading.current_thread().name), forward(self, *a, **k))[1])
        monkeypatch.setattr(native, "NUMBA_MIN_WORK", 0)
        monkeypatch.setattr(threads, "one_thread_each", lambda *own: threadpoolctl.threadpool_limits(1, user_api="blas"))
        at_once = _run(case, "float64", seed=5)
        assert any(name.startswith("gruxp-second") for name in ran_on)
        loop = fused_loop_for(_numpy_compat(), reset_after=True, dtype="float64")
        worker_buffers = lambda: bool(getattr(loop._local, "buffers", None))  # noqa: E731
        assert native._second.submit(worker_buffers).result()
        native.clear_buffers()
        assert not native._second.submit(worker_buffers).result()
    for a, b in zip(at_once, one_after_the_other, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_runs_both_directions_at_once_too(monkeypatch):
    """The second direction's thread does not survive fork(): a child starts its own, not waiting on
    the parent's forever."""
    pytest.importorskip("numba")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import multiprocessing
    import warnings

    import gruxp._native as native
    from gruxp._native import threads

    case = Case(bidirectional=True)
    with fast_routes(True, fuser="numba"):
        if not fused_loop_for(_numpy_compat(), reset_after=True, dtype="float64").compiled:
            pytest.skip("NumPy's BLAS is not an OpenBLAS that gruxp can call from numba here")
        monkeypatch.setattr(native, "NUMBA_MIN_WORK", 0)
        monkeypatch.setattr(threads, "one_thread_each", lambda *own: threadpoolctl.threadpool_limits(1, user_api="blas"))
        expected = _run(case, "float64", seed=2)
        assert native._second is not None
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=lambda: results.put([to_numpy(a) for a in _run(case, "float64", seed=2)]))
        with warnings.catch_warnings():  # JAX, if an earlier test started it, warns on any fork (the child needs no JAX)
            warnings.simplefilter("ignore", RuntimeWarning)
            child.start()
        got = results.get(timeout=120)
        child.join(timeout=30)
    assert child.exitcode == 0
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, to_numpy(b))
