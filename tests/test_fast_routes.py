"""Every fast route equals its generic oracle bit for bit (NumPy; reset_after)."""

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


def _run(case, dtype, seed):
    model = gruxp.GRU(case.I, case.H, case.num_layers, bias=case.bias, batch_first=case.batch_first,
                      bidirectional=case.bidirectional, dtype=dtype, seed=seed)
    host = host_case_inputs(case, seed=seed)
    cast = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
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
