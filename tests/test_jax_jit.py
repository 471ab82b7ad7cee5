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
