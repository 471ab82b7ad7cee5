"""Backward through time: finite differences (float64) on every backend, and agreement of every
gradient with the NumPy float64 result in both float widths."""

import _reference
import numpy as np
import pytest
from _cases import Case, host_case_inputs
from conftest import GRAD_TOL

import gruxp
from gruxp.testing import assert_close, numerical_gradient, to_numpy

FD_CASES = [
    Case(T=3, B=2, I=2, H=2),
    Case(T=3, B=2, I=2, H=2, reset_after=False),
    # the two largest: slow to compile on JAX, so there in the full run only (the other three stay quick)
    pytest.param(Case(T=3, B=3, I=2, H=2, num_layers=2, bidirectional=True, ragged=True), marks=pytest.mark.slow_on("jax")),
    pytest.param(
        Case(T=3, B=3, I=2, H=2, num_layers=2, bidirectional=True, ragged=True, reset_after=False, batch_first=True),
        marks=pytest.mark.slow_on("jax"),
    ),
    Case(T=3, B=1, I=2, H=2, bidirectional=True, unbatched=True, bias=False),
]


def _loss_fn(model, backend, case, host, *, wrt):
    """Σ out·d_out + Σ h_n·d_hn as a host function of one input (a param name, 'x' or 'h0')."""
    base = {"x": case.layout(host["x"], seq=True), "h0": case.layout(host["h0"], seq=False)}
    d_out = case.layout(host["d_out"], seq=True)
    d_hn = case.layout(host["d_hn"], seq=False)
    params = model.state_dict(numpy=True)

    def f(value):
        p = dict(params)
        inputs = dict(base)
        (inputs if wrt in inputs else p)[wrt] = value
        out, h_n = gruxp.functional.gru(
            {k: backend.asarray(v) for k, v in p.items()},
            backend.asarray(inputs["x"]),
            backend.asarray(inputs["h0"]),
            lengths=host["lengths"],
            num_layers=case.num_layers,
            bidirectional=case.bidirectional,
            batch_first=case.batch_first,
            reset_after=case.reset_after,
        )
        return float(np.sum(to_numpy(out) * d_out) + np.sum(to_numpy(h_n) * d_hn))

    return f, (base[wrt] if wrt in base else params[wrt])


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: c.id)
def test_layer_finite_differences(backend, case):
    model = case.model(backend, "float64")
    host = host_case_inputs(case)
    x = backend.asarray(case.layout(host["x"], seq=True))
    h0 = backend.asarray(case.layout(host["h0"], seq=False))
    _, _, tape = model.forward(x, h0, lengths=host["lengths"])
    grads, dx, dh0 = model.backward(
        tape, backend.asarray(case.layout(host["d_out"], seq=True)), backend.asarray(case.layout(host["d_hn"], seq=False))
    )
    analytic = {**grads, "x": dx, "h0": dh0}
    assert set(grads) == set(model.params)
    for name, value in analytic.items():
        f, at = _loss_fn(model, backend, case, host, wrt=name)
        numeric = numerical_gradient(f, at)
        # central differences with eps=1e-6: truncation ~eps² and rounding ~1e-16/eps ≈ 1e-10
        assert_close(value, numeric, rtol=1e-6, atol=1e-8, name=name)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_finite_differences(backend, reset_after, unbatched):
    rng = np.random.default_rng(1)
    I, H, B = 3, 2, 2
    cell = gruxp.GRUCell(I, H, reset_after=reset_after, xp=backend.xp, device=backend.device, dtype="float64", seed=3)
    shape = (lambda *s: s[1:]) if unbatched else (lambda *s: s)
    x, h, dh = rng.standard_normal(shape(B, I)), rng.standard_normal(shape(B, H)), rng.standard_normal(shape(B, H))
    h_new, tape = cell.forward(backend.asarray(x), backend.asarray(h))
    grads, dx, dh_prev = cell.backward(tape, backend.asarray(dh))
    params = cell.state_dict(numpy=True)

    def loss(**override):
        p = {**params, **{k: v for k, v in override.items() if k in params}}
        out = gruxp.functional.gru_cell(
            {k: backend.asarray(v) for k, v in p.items()},
            backend.asarray(override.get("x", x)),
            backend.asarray(override.get("h", h)),
            reset_after=reset_after,
        )
        return float(np.sum(to_numpy(out) * dh))

    for name, value in {**grads, "x": dx, "h": dh_prev}.items():
        at = {"x": x, "h": h}.get(name, params.get(name))
        numeric = numerical_gradient(lambda v, name=name: loss(**{name: v}), at)
        assert_close(value, numeric, rtol=1e-6, atol=1e-8, name=name)


AGREE_CASES = [
    Case(num_layers=2, bidirectional=True, T=6, B=4, I=5, H=4),
    Case(num_layers=2, bidirectional=True, ragged=True, reset_after=False, T=6, B=4, I=5, H=4),
    Case(num_layers=3, batch_first=True, ragged=True, T=7, B=3),
    Case(bidirectional=True, unbatched=True, bias=False),
]


@pytest.mark.parametrize("case", AGREE_CASES, ids=lambda c: c.id)
def test_gradients_agree_with_an_independent_reference(backend, dtype, case):
    """Every gradient on every backend, in both widths, equals PyTorch autograd through the
    equation-level reference GRU of ``_reference.py`` (float64): nothing of gruxp on that side."""
    pytest.importorskip("torch", reason="the independent gradient reference is PyTorch autograd")
    host = host_case_inputs(case, seed=11)
    model = case.model(backend, dtype)
    args = [backend.asarray(case.layout(host[k], seq=k != "h0"), dtype) for k in ("x", "h0")]
    _, _, tape = model.forward(*args, lengths=host["lengths"])
    grads, dx, dh0 = model.backward(
        tape,
        backend.asarray(case.layout(host["d_out"], seq=True), dtype),
        backend.asarray(case.layout(host["d_hn"], seq=False), dtype),
    )
    got = {**grads, "x": dx, "h0": dh0}
    assert all(a.dtype == backend.dtype(dtype) for a in got.values())
    want = _reference.torch_gradients(
        model.state_dict(numpy=True),
        host["x"],
        host["h0"],
        host["d_out"],
        host["d_hn"],
        num_layers=case.num_layers,
        bidirectional=case.bidirectional,
        reset_after=case.reset_after,
        lengths=host["lengths"],
    )
    want["x"], want["h0"] = case.layout(want["x"], seq=True), case.layout(want["h0"], seq=False)
    assert set(want) == set(got)
    for name, w in want.items():
        scale = float(np.max(np.abs(w), initial=1.0))
        tol = GRAD_TOL[dtype]
        assert_close(got[name], w, rtol=tol["rtol"], atol=tol["atol"] * scale, name=name)


def test_zero_h0_gets_a_gradient(backend):
    case = Case(num_layers=2, bidirectional=True)
    model = case.model(backend, "float64")
    host = host_case_inputs(case)
    _, _, tape = model.forward(backend.asarray(host["x"]))
    _, _, dh0 = model.backward(tape, backend.asarray(host["d_out"]))
    dh0 = to_numpy(dh0)
    assert dh0.shape == (case.LD, case.B, case.H) and np.all(dh0 != 0.0)


def test_none_gradients_mean_zero(backend):
    case = Case(num_layers=2)
    model = case.model(backend, "float64")
    host = host_case_inputs(case)
    _, _, tape = model.forward(backend.asarray(host["x"]))
    zeros_out = backend.asarray(np.zeros_like(host["d_out"][..., : case.H]))
    zeros_hn = backend.asarray(np.zeros_like(host["d_hn"]))
    for d_out, d_hn in ((None, backend.asarray(host["d_hn"])), (backend.asarray(host["d_out"][..., : case.H]), None)):
        a = model.backward(tape, d_out, d_hn)
        b = model.backward(tape, zeros_out if d_out is None else d_out, zeros_hn if d_hn is None else d_hn)
        for u, v in zip([*a[0].values(), a[1], a[2]], [*b[0].values(), b[1], b[2]], strict=True):
            np.testing.assert_array_equal(to_numpy(u), to_numpy(v))
    grads, dx, dh0 = model.backward(tape)
    assert all(np.all(to_numpy(g) == 0.0) for g in [*grads.values(), dx, dh0])


def test_input_grad_false_skips_dx_only(backend):
    case = Case(num_layers=2, bidirectional=True, ragged=True, batch_first=True)
    model = case.model(backend, "float64")
    host = host_case_inputs(case)
    args = (backend.asarray(case.layout(host["x"], seq=True)), backend.asarray(host["h0"]))
    _, _, tape = model.forward(*args, lengths=host["lengths"])
    d_out = backend.asarray(case.layout(host["d_out"], seq=True))
    full = model.backward(tape, d_out)
    lean = model.backward(tape, d_out, input_grad=False)
    assert lean[1] is None
    for k in full[0]:
        np.testing.assert_array_equal(to_numpy(lean[0][k]), to_numpy(full[0][k]))
    np.testing.assert_array_equal(to_numpy(lean[2]), to_numpy(full[2]))


@pytest.mark.parametrize("reset_after", [True, False])
def test_param_grads_takes_the_recurrent_gradient_whole_or_as_its_candidate_block(reset_after):
    # d_h = [d_r, d_z, d_ghn] (one GEMM for W_hh), or d_ghn alone as before: the same gradients
    from array_api_compat import numpy as xp

    from gruxp.functional import param_grads

    rng = np.random.default_rng(3)
    rows, H, I = 11, 4, 5
    d_i, d_ghn = rng.standard_normal((rows, 3 * H)), rng.standard_normal((rows, H))
    x, h, r = rng.standard_normal((rows, I)), rng.standard_normal((rows, H)), rng.random((rows, H))
    d_ghn = d_ghn if reset_after else d_i[:, 2 * H :]
    whole = param_grads(d_i, np.concatenate([d_i[:, : 2 * H], d_ghn], axis=1), x, h, r, reset_after=reset_after, bias=True, xp=xp)
    block = param_grads(d_i, d_ghn, x, h, r, reset_after=reset_after, bias=True, xp=xp)
    h_n = h if reset_after else r * h
    expected = {
        "weight_ih": d_i.T @ x,
        "weight_hh": np.concatenate([d_i[:, : 2 * H].T @ h, d_ghn.T @ h_n]),
        "bias_ih": d_i.sum(0),
        "bias_hh": np.concatenate([d_i[:, : 2 * H].sum(0), d_ghn.sum(0)]),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(whole[name], value, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(block[name], value, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="d_h must have the shape of d_i"):
        param_grads(d_i, d_ghn[:, :2], x, h, r, reset_after=reset_after, bias=True, xp=xp)
