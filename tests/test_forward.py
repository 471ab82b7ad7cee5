"""Forward pass on every backend against an independent float64 reference (tests/_reference.py)."""

import _reference as ref
import numpy as np
import pytest
from _cases import Case, host_case_inputs
from conftest import TOL

import gruxp
from gruxp.testing import assert_close, to_numpy

CASES = [
    Case(),
    Case(reset_after=False),
    Case(bias=False),
    Case(num_layers=2, bidirectional=True),
    Case(num_layers=2, bidirectional=True, reset_after=False, ragged=True),
    Case(num_layers=3, ragged=True, batch_first=True),
    Case(bidirectional=True, unbatched=True),
    Case(num_layers=2, batch_first=True, bias=False, reset_after=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_matches_reference(backend, dtype, case):
    model = case.model(backend, dtype)
    host = host_case_inputs(case)
    x = backend.asarray(case.layout(host["x"], seq=True), dtype)
    h0 = backend.asarray(case.layout(host["h0"], seq=False), dtype)
    out, h_n = model(x, h0, lengths=host["lengths"])
    exp_out, exp_hn = ref.gru(
        model.state_dict(numpy=True),
        host["x"],
        host["h0"],
        num_layers=case.num_layers,
        bidirectional=case.bidirectional,
        reset_after=case.reset_after,
        lengths=host["lengths"],
    )
    for name, got, want in (("out", out, case.layout(exp_out, seq=True)), ("h_n", h_n, case.layout(exp_hn, seq=False))):
        assert gruxp._namespace.namespace_of(got) is backend.xp, name
        assert got.dtype == backend.dtype(dtype), name
        assert_close(got, want, name=name, **TOL[dtype])
    # forward() (with tape) and __call__ (inference) give identical numbers
    out2, h_n2, _ = model.forward(x, h0, lengths=host["lengths"])
    np.testing.assert_array_equal(to_numpy(out2), to_numpy(out))
    np.testing.assert_array_equal(to_numpy(h_n2), to_numpy(h_n))


def test_outputs_stay_on_the_device(backend):
    model = Case().model(backend, "float32")
    x = backend.asarray(np.ones((4, 2, 4)), "float32")
    out, h_n = model(x)
    dev = gruxp._namespace.device_of
    want = dev(x) if backend.device is None else backend.device  # the default device, or the chosen one
    assert want is not None and dev(x) == want
    assert dev(out) == want and dev(h_n) == want and dev(model.params["weight_hh_l0"]) == want


def test_ragged_outputs_are_zero_past_each_length(backend):
    case = Case(num_layers=2, bidirectional=True, ragged=True, T=6, B=4)
    model = case.model(backend, "float64")
    host = host_case_inputs(case, seed=3)
    out, _ = model(backend.asarray(host["x"]), lengths=host["lengths"])
    out = to_numpy(out)
    for b, L in enumerate(host["lengths"]):
        assert np.all(out[L:, b] == 0.0)
        assert np.all(out[:L, b] != 0.0)


def test_padding_values_never_matter(backend):
    """NaN or huge padding past each length changes nothing, in forward or backward."""
    case = Case(num_layers=2, bidirectional=True, ragged=True, T=6, B=4)
    model = case.model(backend, "float64")
    host = host_case_inputs(case, seed=5)
    lengths = host["lengths"]
    poisoned = host["x"].copy()
    for b, L in enumerate(lengths):
        poisoned[L:, b] = np.nan if b % 2 else 1e30
    results = []
    for xs in (host["x"], poisoned):
        out, h_n, tape = model.forward(backend.asarray(xs), backend.asarray(host["h0"]), lengths=lengths)
        grads, dx, dh0 = model.backward(tape, backend.asarray(host["d_out"]), backend.asarray(host["d_hn"]))
        results.append([to_numpy(a) for a in (out, h_n, dx, dh0, *grads.values())])
    for clean, dirty in zip(*results, strict=True):
        assert np.all(np.isfinite(dirty))
        np.testing.assert_array_equal(dirty, clean)


@pytest.mark.parametrize("reset_after", [True, False])
def test_saturated_inputs_are_stable(backend, dtype, reset_after):
    """|pre-activations| ~ 1e4: no overflow warning (warnings are errors), no NaN, gates saturate."""
    model = gruxp.GRU(2, 3, reset_after=reset_after, xp=backend.xp, device=backend.device, dtype=dtype, seed=1)
    x = backend.asarray(np.array([[[1e4, -1e4]], [[-1e4, 1e4]], [[3e4, 3e4]]]), dtype)
    out, h_n, tape = model.forward(x)
    grads, dx, dh0 = model.backward(tape, backend.asarray(np.ones((3, 1, 3)), dtype))
    for a in (out, h_n, dx, dh0, *grads.values()):
        assert np.all(np.isfinite(to_numpy(a)))
    assert np.all(np.abs(to_numpy(out)) <= 1.0)


def test_sigmoid_is_exact_and_stable(backend, dtype):
    from gruxp.functional import sigmoid

    z = np.array([-1e4, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e4])
    got = to_numpy(sigmoid(backend.asarray(z, dtype), xp=backend.xp))
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-z))
    # ½tanh(½z)+½ is accurate to rounding in absolute terms (what a gate's product needs); the
    # relative error of tiny values like σ(-20) ≈ 2e-9 is larger, as for any 1 − (1 − ε) form.
    eps = np.finfo(dtype).eps
    assert_close(got, want, rtol=2 * eps, atol=2 * eps, name="sigmoid")
    assert np.all((got >= 0.0) & (got <= 1.0))


@pytest.mark.skip_on(jax="JAX arrays are immutable: nothing to check")
@pytest.mark.parametrize("case", [Case(num_layers=2, bidirectional=True, ragged=True, reset_after=False)], ids=lambda c: c.id)
def test_inputs_not_mutated(backend, case):
    """Read-only NumPy inputs (a stand-in for JAX's immutability) pass through forward and backward."""
    model = case.model(backend, "float64")
    host = host_case_inputs(case)
    arrays = {k: backend.asarray(host[k]) for k in ("x", "h0", "d_out", "d_hn")}
    params = {k: v for k, v in model.params.items()}
    before = {k: to_numpy(v) for k, v in {**arrays, **params}.items()}
    if backend.name == "numpy":
        for a in [*arrays.values(), *params.values()]:
            a.flags.writeable = False
    out, h_n, tape = model.forward(arrays["x"], arrays["h0"], lengths=host["lengths"])
    model.backward(tape, arrays["d_out"], arrays["d_hn"])
    for k, v in {**arrays, **params}.items():
        np.testing.assert_array_equal(to_numpy(v), before[k], err_msg=k)
