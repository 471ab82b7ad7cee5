"""The math has no Python branch on array values: forward and backward trace under jax.jit."""

import numpy as np
import pytest

import gruxp
from gruxp.testing import assert_close

jax = pytest.importorskip("jax")


@pytest.mark.parametrize("reset_after", [True, False])
def test_forward_and_backward_under_jit(reset_after):
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    model = gruxp.GRU(3, 4, 2, bidirectional=True, reset_after=reset_after, xp=jnp, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((5, 2, 3)))
    d_out = jnp.asarray(rng.standard_normal((5, 2, 8)))
    lengths = [5, 3]
    opts = dict(num_layers=2, bidirectional=True, reset_after=reset_after, lengths=lengths)

    def train_step(params, x, d_out):
        out, h_n, tape = gruxp.functional.gru_forward(params, x, **opts)
        grads, dx, dh0 = gruxp.functional.gru_backward(tape, d_out)
        return out, grads, dx

    jitted = jax.jit(train_step)
    out_j, grads_j, dx_j = jitted(model.params, x, d_out)
    out_e, grads_e, dx_e = train_step(model.params, x, d_out)
    assert_close(out_j, out_e, rtol=1e-12, atol=1e-14, name="out")
    assert_close(dx_j, dx_e, rtol=1e-12, atol=1e-14, name="dx")
    for k in grads_e:
        assert_close(grads_j[k], grads_e[k], rtol=1e-12, atol=1e-13, name=k)
    infer = jax.jit(lambda p, x: gruxp.functional.gru(p, x, num_layers=2, bidirectional=True, reset_after=reset_after))
    assert_close(infer(model.params, x)[0], model(x)[0], rtol=1e-12, atol=1e-14, name="inference")


# -- jax.grad through gruxp runs gruxp's backward (a custom_vjp), eagerly and under jit ----------------
def _grad_setup():
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    model = gruxp.GRU(3, 4, 2, bidirectional=True, batch_first=True, xp=jnp, dtype="float64", seed=0)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 3)))
    return jnp, model, x


def _loss(params, x):
    import jax.numpy as jnp

    out, h_n = gruxp.functional.gru(params, x, num_layers=2, bidirectional=True, batch_first=True, lengths=[5, 3])
    return jnp.sum(jnp.tanh(out) * out) + jnp.sum(h_n**3)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_jax_grad_uses_the_analytic_backward_and_is_exact(jit):
    from gruxp.testing import numerical_gradient, to_numpy

    jnp, model, x = _grad_setup()
    grad = jax.grad(_loss, argnums=(0, 1))
    with gruxp.routes_taken() as taken:  # under jit: what the trace ran (a fresh jitted function traces here)
        grads, dx = (jax.jit(grad) if jit else grad)(model.params, x)
    ran = {(t.route, t.step) for t in taken}
    assert ("jax", "derivative") in ran and ("jax", "backward") in ran, "jax.grad differentiated the scan itself"
    # the same gradients from gruxp's own API: d_out and d_hn of this loss, then model.backward
    out, h_n, tape = model.forward(x, lengths=[5, 3])
    d_out = jnp.tanh(out) + out * (1 - jnp.tanh(out) ** 2)
    want, want_dx, _ = model.backward(tape, d_out, 3 * h_n**2)
    for k in want:
        assert_close(grads[k], want[k], rtol=1e-12, atol=1e-13, name=k)
    assert_close(dx, want_dx, rtol=1e-12, atol=1e-13, name="dx")
    # and finite differences of the loss itself, for two parameters and x
    host = {k: to_numpy(v) for k, v in model.params.items()}
    for name in ("weight_hh_l1_reverse", "bias_ih_l0"):

        def f(value, name=name):
            return float(_loss({**model.params, name: jnp.asarray(value)}, x))

        assert_close(grads[name], numerical_gradient(f, host[name]), rtol=1e-6, atol=1e-8, name=name)


def test_value_and_grad_through_a_sequential_call():
    jnp, _, _ = _grad_setup()
    from gruxp import losses

    model = gruxp.Sequential(
        embed=gruxp.Embedding(7, 3, xp=jnp, dtype="float64", seed=0),
        gru=gruxp.GRU(3, 5, batch_first=True, xp=jnp, dtype="float64", seed=1),
        head=gruxp.Linear(5, 7, xp=jnp, dtype="float64", seed=2),
    )
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 7, size=(2, 6)))
    targets = jnp.asarray(np.random.default_rng(3).integers(0, 7, size=(2, 6)))

    def loss(params):
        model.params = params
        y, _ = model(ids)
        return losses.cross_entropy(y, targets)[0]

    start = model.params
    value, grads = jax.jit(jax.value_and_grad(loss))(start)
    model.params = start
    y, _, tape = model.forward(ids)
    want_loss, dy = losses.cross_entropy(y, targets)
    want = model.backward(tape, dy)[0]
    assert abs(float(value) - float(want_loss)) < 1e-12
    for k in want:
        assert_close(grads[k], want[k], rtol=1e-11, atol=1e-13, name=k)


def test_vmap_over_an_outer_axis_and_what_is_not_defined():
    jnp, model, x = _grad_setup()
    xs = jnp.stack([x, 2 * x, -x])
    per_example = jax.vmap(lambda xi: jax.grad(_loss, argnums=1)(model.params, xi))(xs)
    for i in range(3):
        assert_close(per_example[i], jax.grad(_loss, argnums=1)(model.params, xs[i]), rtol=1e-12, atol=1e-13, name=f"x[{i}]")
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff .*custom_vjp"):
        jax.jvp(lambda xi: _loss(model.params, xi), (x,), (x,))


def test_bad_input_is_refused_before_tracing():
    jnp, model, x = _grad_setup()
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\]"):
        jax.jit(
            jax.grad(
                lambda p: jnp.sum(
                    gruxp.functional.gru(p, x, num_layers=2, bidirectional=True, batch_first=True, lengths=[6, 1])[0]
                )
            )
        )(model.params)
    with pytest.raises(ValueError, match="x must have shape"):
        jax.jit(lambda p: gruxp.functional.gru(p, x[..., :2], num_layers=2, bidirectional=True, batch_first=True))(model.params)
    with pytest.raises(TypeError, match="x has dtype float32 but the parameters are float64"):
        jax.grad(
            lambda p: jnp.sum(
                gruxp.functional.gru(p, x.astype(jnp.float32), num_layers=2, bidirectional=True, batch_first=True)[0]
            )
        )(model.params)


# -- the training step as one compiled function ---------------------------------------------------------
@pytest.mark.parametrize("opt", ["AdamW", "SGD"])
def test_compiled_training_step_equals_the_numpy_step(opt):
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from gruxp import losses, optim
    from gruxp.training import stream_windows

    tokens = np.random.default_rng(0).integers(0, 7, size=800)

    def train(xp):
        model = gruxp.Sequential(
            embed=gruxp.Embedding(7, 4, seed=0, xp=xp, dtype="float64"),
            gru=gruxp.GRU(4, 6, 2, batch_first=True, seed=1, xp=xp, dtype="float64"),
            head=gruxp.Linear(6, 7, seed=2, xp=xp, dtype="float64"),
        )
        optimizer = optim.AdamW(lr=0.01) if opt == "AdamW" else optim.SGD(lr=0.1, momentum=0.9)
        trainer = gruxp.Trainer(model, losses.cross_entropy, optimizer, clip_norm=1.0, stateful=True, seed=3)
        records = trainer.fit(stream_windows(tokens, batch_size=4, window=10, xp=xp), 5)
        return trainer, records

    reference, want = train(np)
    trainer, got = train(jnp)
    assert trainer.compiles == 2  # the compiled route ran: the first window carries no state in, the others one
    for a, b in zip(got, want, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-12 * abs(b["loss"]) and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-12
    for k, v in reference.model.state_dict(numpy=True).items():
        np.testing.assert_allclose(trainer.model.state_dict(numpy=True)[k], v, rtol=1e-12, atol=1e-14, err_msg=k)
    assert trainer.opt_state["step"] == 5


def test_compiled_step_keeps_the_good_state_on_overflow_and_compiles_dropout():
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from gruxp import losses, optim

    def model(p=0.0):
        return gruxp.Sequential(
            gru=gruxp.GRU(2, 3, 2, dropout=p, batch_first=True, xp=jnp, seed=0),
            last=gruxp.LastStep(batch_first=True),
            head=gruxp.Linear(3, 1, xp=jnp, seed=1),
        )

    def data(step, rng):
        return (
            jnp.asarray(rng.standard_normal((4, 5, 2)), dtype=jnp.float32),
            jnp.asarray(rng.standard_normal((4, 1)), dtype=jnp.float32),
        )

    trainer = gruxp.Trainer(model(), losses.mse, optim.SGD(lr=1e300))  # float32 parameters overflow at once
    before = trainer.model.state_dict(numpy=True)
    with pytest.raises(gruxp.NonFiniteLossError, match="inf or NaN"):
        trainer.fit(data, 3)
    assert trainer.compiles == 1 and trainer.step == 0
    for k, v in trainer.model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(v, before[k])
    dropping = gruxp.Trainer(model(0.5), losses.mse, optim.SGD(lr=0.01))
    dropping.fit(data, 2)  # masks are drawn in the program, from keys it takes as arguments
    assert dropping.compiles == 1 and dropping.step == 2


def test_the_compiled_step_compiles_once_for_any_ragged_lengths():
    """Lengths are traced, not static: 20 steps of random ragged batches run one compiled program,
    and train exactly as the NumPy model does on the same batches (float64)."""
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from gruxp import losses, optim

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 6, 2)), rng.standard_normal((4, 1)), rng.integers(1, 7, size=4)) for _ in range(20)]

    def train(xp):
        model = gruxp.Sequential(
            gru=gruxp.GRU(2, 5, 2, bidirectional=True, batch_first=True, seed=0, xp=xp, dtype="float64"),
            last=gruxp.LastStep(batch_first=True),
            head=gruxp.Linear(10, 1, seed=1, xp=xp, dtype="float64"),
        )
        trainer = gruxp.Trainer(model, losses.mse, optim.Adam(lr=0.01), clip_norm=1.0)
        records = [trainer.train_step(gruxp.Batch(xp.asarray(x), xp.asarray(y), lengths)) for x, y, lengths in batches]
        return trainer, records

    reference, want = train(np)
    trainer, got = train(jnp)
    assert trainer.compiles == 1
    assert len({tuple(lengths) for _, _, lengths in batches}) == 20  # every batch a new ragged pattern
    for a, b in zip(got, want, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-12 * abs(b["loss"])
    for k, v in reference.model.state_dict(numpy=True).items():
        np.testing.assert_allclose(trainer.model.state_dict(numpy=True)[k], v, rtol=1e-11, atol=1e-13, err_msg=k)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=6\]; got \[0\]"):
        trainer.train_step(gruxp.Batch(jnp.asarray(batches[0][0]), jnp.asarray(batches[0][1]), np.array([0, 3, 3, 3])))
