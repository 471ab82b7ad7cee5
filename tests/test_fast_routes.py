"""Every fast route equals its generic oracle: NumPy buffers bit for bit; JAX's lax.scan loop at a stated bound."""

import numpy as np
import pytest

import gruxp
from gruxp._native import fast_routes, route_for
from gruxp.testing import to_numpy

from _cases import Case, host_case_inputs

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
    cast = lambda a: xp.asarray(np.asarray(a, dtype=dtype))  # noqa: E731
    x, h0 = cast(case.layout(host["x"], seq=True)), cast(case.layout(host["h0"], seq=False))
    inference = model(x, h0, lengths=host["lengths"])
    out, h_n, tape = model.forward(x, h0, lengths=host["lengths"])
    grads, dx, dh0 = model.backward(tape, cast(case.layout(host["d_out"], seq=True)), cast(case.layout(host["d_hn"], seq=False)))
    return [*inference, out, h_n, dx, dh0, *grads.values()]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_numpy_route_is_bit_identical_to_the_generic_code(case, dtype):
    import array_api_compat.numpy as np_compat

    assert route_for(np_compat, reset_after=True) is not None
    fast = _run(case, dtype, seed=3)
    with fast_routes(False):
        assert route_for(np_compat, reset_after=True) is None
        generic = _run(case, dtype, seed=3)
    for a, b in zip(fast, generic, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_routes_only_where_they_apply():
    import array_api_compat.numpy as np_compat

    assert route_for(np_compat, reset_after=False) is None
    strict = pytest.importorskip("array_api_strict")
    assert route_for(strict, reset_after=True) is None


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
