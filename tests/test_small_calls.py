"""Small calls (one token at a time): nothing a call pays for once can go stale, the plan is made once,
and every cell streams on every backend with the user holding the state."""

import numpy as np
import pytest

import gruxp
from gruxp._native import cpu_plan
from gruxp.testing import assert_close, to_numpy

CELLS = ["gru", "lngru", "mingru"]
# the CPU route's plans a one-token call may take, forced through the public settings
ROUTES = {
    "default": {},
    "NumPy fuser": dict(fuser="numpy"),
    "compiled loop, a copy of Wᵀ": dict(fuser="numba", cpu_plan={"copy_weights": True}),
    "compiled loop, W as stored": dict(fuser="numba", cpu_plan={"transposed": True}),
    "generic code": dict(fast_routes=False),
}


def _model(backend, cell, **options):
    return gruxp.models.recurrent(cell, 5, 6, 2, xp=backend.xp, device=backend.device, dtype="float64", seed=0, **options)


@pytest.mark.parametrize("route", list(ROUTES))
def test_weights_edited_in_place_between_calls_are_never_used_stale(route):
    """An optimizer that updates in place: each call sees the weights as they are now, on every
    route the plan may take, for step() and for a call (the same bits as a fresh model with them)."""
    pytest.importorskip("numba") if "numba" in str(ROUTES[route]) else None
    model = gruxp.GRU(5, 6, 2, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 5))
    h = rng.standard_normal((2, 3, 6))
    with gruxp.config_context(**ROUTES[route]):
        before = [to_numpy(a) for a in (*model(x, h), *model.step(x[0], h))]
        for name, w in model.params.items():
            w *= 0.5 if "weight" in name else -1.0  # in place: the same arrays, other values
        after = [to_numpy(a) for a in (*model(x, h), *model.step(x[0], h))]
        fresh = gruxp.GRU(5, 6, 2, dtype="float64")
        fresh.load_state_dict(model.state_dict(numpy=True))
        want = [to_numpy(a) for a in (*fresh(x, h), *fresh.step(x[0], h))]
    for a, b, c in zip(after, want, before, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_weights_edited_in_place_on_every_backend(backend):
    if backend.name == "jax":
        pytest.skip("jax: arrays are immutable, nothing can be edited in place")
    model = _model(backend, "gru")
    x = backend.asarray(np.random.default_rng(0).standard_normal((1, 2, 5)))
    before = to_numpy(model.step(x[0, ...])[0])
    w = model.params["weight_ih_l1"]  # (the state starts at zero: the recurrent weights would not show)
    w[...] = w * 2.0
    fresh = _model(backend, "gru")
    fresh.load_state_dict(model.state_dict(numpy=True))
    np.testing.assert_array_equal(to_numpy(model.step(x[0, ...])[0]), to_numpy(fresh.step(x[0, ...])[0]))
    assert not np.array_equal(to_numpy(model.step(x[0, ...])[0]), before)


@pytest.mark.parametrize("cell", CELLS)
def test_step_streams_every_cell_on_every_backend_with_the_state_the_user_holds(backend, cell):
    options = {"zoneout": 0.3} if cell == "lngru" else {}
    model = _model(backend, cell, **options).eval()
    xs = np.random.default_rng(1).standard_normal((9, 3, 5))
    full, h_full = model(backend.asarray(xs))
    h, outs = None, []
    for x_t in xs:
        y, h = model.step(backend.asarray(x_t), h)
        outs.append(to_numpy(y))
        assert tuple(h.shape) == (2, 3, 6)  # the state is an array the caller holds
    assert_close(np.stack(outs), full, rtol=1e-12, atol=1e-13, name="out")
    assert_close(h, h_full, rtol=1e-12, atol=1e-13, name="h")


def test_sequential_step_streams_a_language_model():
    model = gruxp.Sequential(
        embed=gruxp.Embedding(9, 4, dtype="float64", seed=0),
        gru=gruxp.GRU(4, 6, 2, batch_first=True, dtype="float64", seed=1),
        head=gruxp.Linear(6, 9, dtype="float64", seed=2),
    ).eval()
    ids = np.random.default_rng(2).integers(0, 9, size=(3, 12))
    full, _ = model(ids)
    state, outs = None, []
    for t in range(12):
        y, state = model.step(ids[:, t], state)
        outs.append(y)
    assert_close(np.stack(outs, axis=1), full, rtol=1e-12, atol=1e-13, name="logits")


def test_a_one_token_call_copies_no_weight_and_runs_numbas_kept_kernel():
    """The plan says so, from the shape alone: at T·B = 1 no copy of Wᵀ pays; with numba installed the
    step kernel (kept on disk) runs in the Python loop, not the compiled loop."""
    plan = cpu_plan(1, 1, 64, 256, num_layers=2)[0]
    assert not plan.copy_weights and not plan.compiled
    assert any("a copy would not pay" in why for why in plan.reasons)
    if plan.fuser == "numba":
        assert any("kept on disk" in why for why in plan.reasons)
    big = cpu_plan(100, 32, 256, 256)[0]
    assert big.copy_weights  # many rows: the copy pays (or the compiled loop needs it)


def test_the_checks_still_run_on_every_call():
    model = gruxp.GRU(5, 6, 2, seed=0)
    x = np.zeros((3, 5), np.float32)
    model.step(x)
    with pytest.raises(TypeError, match="x has dtype float64 but the parameters are float32"):
        model.step(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3, 6\)"):
        model.step(x, np.zeros((2, 4, 6), np.float32))
    model.params["weight_hh_l0"] = np.zeros((18, 7), np.float32)  # replaced by a wrong shape
    with pytest.raises(ValueError, match=r"params\['weight_hh_l0'\] must have shape \(18, 6\)"):
        model.step(x)
