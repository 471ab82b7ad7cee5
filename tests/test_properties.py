"""Property tests over random small shapes (hypothesis), on every backend."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gruxp
from gruxp.testing import to_numpy

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def configs(draw):
    return dict(
        T=draw(st.integers(1, 5)),
        B=draw(st.integers(1, 4)),
        I=draw(st.integers(1, 4)),
        H=draw(st.integers(1, 4)),
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        reset_after=draw(st.booleans()),
        bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def _model(backend, c):
    return gruxp.GRU(
        c["I"],
        c["H"],
        c["num_layers"],
        bias=c["bias"],
        bidirectional=c["bidirectional"],
        reset_after=c["reset_after"],
        xp=backend.xp,
        device=backend.device,
        dtype="float64",
        seed=c["seed"],
    )


@pytest.mark.slow_on("jax")  # hypothesis draws many shapes: each compiles anew on JAX
@SETTINGS
@given(c=configs())
def test_batch_equals_each_sequence_alone(backend, c):
    """A batch with ragged lengths gives, per sequence, what that sequence gives alone and unpadded."""
    rng = np.random.default_rng(c["seed"])
    model = _model(backend, c)
    LD = c["num_layers"] * (2 if c["bidirectional"] else 1)
    x = rng.standard_normal((c["T"], c["B"], c["I"]))
    h0 = rng.uniform(-1, 1, (LD, c["B"], c["H"]))
    lengths = rng.integers(1, c["T"] + 1, size=c["B"])
    out, h_n = model(backend.asarray(x), backend.asarray(h0), lengths=lengths)
    out, h_n = to_numpy(out), to_numpy(h_n)
    for b, L in enumerate(lengths):
        o, h = model(backend.asarray(x[:L, b]), backend.asarray(h0[:, b]))
        np.testing.assert_allclose(out[:L, b], to_numpy(o), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n[:, b], to_numpy(h), rtol=1e-12, atol=1e-14)
        assert np.all(out[L:, b] == 0.0)
    # |h| stays within max(1, |h0|): h' is a convex combination of n ∈ (-1, 1) and h
    assert np.all(np.abs(out) <= 1.0) and np.all(np.abs(h_n) <= 1.0)


@pytest.mark.slow_on("jax")
@SETTINGS
@given(c=configs())
def test_directional_derivative(backend, c):
    """<grad, v> equals the central difference of the loss along a random direction v of (params, x, h0)."""
    rng = np.random.default_rng(c["seed"] + 1)
    model = _model(backend, c)
    LD, D = c["num_layers"] * (2 if c["bidirectional"] else 1), 2 if c["bidirectional"] else 1
    x = rng.standard_normal((c["T"], c["B"], c["I"]))
    h0 = rng.standard_normal((LD, c["B"], c["H"]))
    d_out = rng.standard_normal((c["T"], c["B"], D * c["H"]))
    d_hn = rng.standard_normal((LD, c["B"], c["H"]))
    lengths = rng.integers(1, c["T"] + 1, size=c["B"])
    state = model.state_dict(numpy=True)
    v = {k: rng.standard_normal(a.shape) for k, a in {**state, "x": x, "h0": h0}.items()}

    _, _, tape = model.forward(backend.asarray(x), backend.asarray(h0), lengths=lengths)
    grads, dx, dh0 = model.backward(tape, backend.asarray(d_out), backend.asarray(d_hn))
    analytic = sum(np.sum(to_numpy(g) * v[k]) for k, g in {**grads, "x": dx, "h0": dh0}.items())

    def loss(s):
        p = {k: backend.asarray(state[k] + s * v[k]) for k in state}
        out, h_n = gruxp.functional.gru(
            p,
            backend.asarray(x + s * v["x"]),
            backend.asarray(h0 + s * v["h0"]),
            lengths=lengths,
            num_layers=c["num_layers"],
            bidirectional=c["bidirectional"],
            reset_after=c["reset_after"],
        )
        return np.sum(to_numpy(out) * d_out) + np.sum(to_numpy(h_n) * d_hn)

    eps = 1e-6
    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    assert abs(numeric - analytic) <= 1e-6 * (1 + abs(analytic))
