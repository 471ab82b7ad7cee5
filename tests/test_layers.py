"""Linear, Embedding, Dropout, LastStep and Sequential on every backend: finite differences,
PyTorch parity, and one full model (embedding → 2-layer GRU → linear → cross-entropy)."""

import numpy as np
import pytest

import gruxp
from gruxp import losses
from gruxp.testing import assert_close, numerical_gradient, to_numpy

FD = dict(rtol=1e-6, atol=1e-8)


def _place(backend, **kw):
    return dict(xp=backend.xp, device=backend.device, dtype="float64", **kw)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_finite_differences_and_torch(backend, bias):
    rng = np.random.default_rng(0)
    layer = gruxp.Linear(4, 3, bias=bias, **_place(backend, seed=1))
    x, dy = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    y, tape = layer.forward(backend.asarray(x))
    grads, dx = layer.backward(tape, backend.asarray(dy))
    state = layer.state_dict(numpy=True)

    def loss(p, xv):
        return float(
            np.sum(
                to_numpy(
                    gruxp.functional._layers.linear(
                        {k: backend.asarray(v) for k, v in p.items()}, backend.asarray(xv), xp=backend.xp
                    )
                )
                * dy
            )
        )

    assert_close(dx, numerical_gradient(lambda v: loss(state, v), x), name="dx", **FD)
    for k in state:
        assert_close(grads[k], numerical_gradient(lambda v, k=k: loss({**state, k: v}, x), state[k]), name=k, **FD)
    torch = pytest.importorskip("torch")
    net = torch.nn.Linear(4, 3, bias=bias, dtype=torch.float64)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    xt = torch.tensor(x, requires_grad=True)
    (net(xt) * torch.from_numpy(dy)).sum().backward()
    assert_close(y, net(xt).detach().numpy(), rtol=1e-12, atol=1e-14, name="y")
    assert_close(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14, name="dx torch")
    for k, p in net.named_parameters():
        assert_close(grads[k], p.grad.numpy(), rtol=1e-12, atol=1e-13, name=k)


def test_embedding_gradient_accumulates_repeated_ids(backend):
    rng = np.random.default_rng(1)
    emb = gruxp.Embedding(7, 3, **_place(backend, seed=2))
    ids = np.array([[1, 1, 3], [6, 1, 0]])  # id 1 three times, 2 4 5 never
    dy = rng.standard_normal((2, 3, 3))
    y, tape = emb.forward(backend.int_array(ids))
    grads, dx = emb.backward(tape, backend.asarray(dy))
    assert dx is None
    want = np.zeros((7, 3))
    np.add.at(want, ids.reshape(-1), dy.reshape(-1, 3))
    assert_close(grads["weight"], want, rtol=1e-14, atol=1e-15, name="dW")
    assert_close(y, emb.state_dict(numpy=True)["weight"][ids], rtol=0, atol=0, name="rows")
    weight = emb.state_dict(numpy=True)["weight"]
    numeric = numerical_gradient(lambda w: float(np.sum(w[ids] * dy)), weight)
    assert_close(grads["weight"], numeric, name="FD", **FD)


def test_embedding_gradient_in_blocks(backend):
    """A vocabulary larger than the one-hot block is summed block by block, with the same result."""
    from gruxp.functional import embedding_backward

    emb = gruxp.Embedding(11, 2, **_place(backend, seed=0))
    ids = np.random.default_rng(0).integers(0, 11, size=(5, 4))
    dy = np.random.default_rng(1).standard_normal((5, 4, 2))
    _, tape = emb.forward(backend.int_array(ids))
    whole = to_numpy(emb.backward(tape, backend.asarray(dy))[0]["weight"])
    args = (emb.params, backend.int_array(ids), backend.asarray(dy))
    blocked = to_numpy(embedding_backward(*args, xp=emb.xp, block_elements=11 * 3)["weight"])  # 3 rows a block
    np.testing.assert_allclose(blocked, whole, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="block_elements"):
        embedding_backward(*args, xp=emb.xp, block_elements=0)


def test_embedding_rejects_bad_ids(backend):
    emb = gruxp.Embedding(5, 2, **_place(backend))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
        emb(backend.int_array([[0, 5]]))
    with pytest.raises(TypeError, match="ids must be an integer array; got dtype float64"):
        emb(backend.asarray([[0.0, 1.0]]))


def test_dropout_masks_from_the_backends_generator_seeded_and_eval_is_identity(backend):
    """The mask is the backend's own draw (they need not agree across backends): the same seed gives
    the same mask on one backend, another seed another; values 0 or 1/(1−p); backward uses it."""
    x = np.ones((40, 3, 5))
    ours = gruxp.Dropout(0.5, seed=3)
    y, tape = ours.forward(backend.asarray(x))
    again, _ = gruxp.Dropout(0.5, seed=3).forward(backend.asarray(x))
    other, _ = gruxp.Dropout(0.5, seed=4).forward(backend.asarray(x))
    np.testing.assert_array_equal(to_numpy(y), to_numpy(again))
    assert not np.array_equal(to_numpy(y), to_numpy(other))
    assert set(np.unique(to_numpy(y))) == {0.0, 2.0}
    assert 0.4 < np.mean(to_numpy(y) == 0) < 0.6
    _, dx = ours.backward(tape, backend.asarray(x))
    np.testing.assert_array_equal(to_numpy(dx), to_numpy(y))
    assert not np.array_equal(to_numpy(ours(backend.asarray(x))), to_numpy(y))  # a fresh mask per call
    ours.eval()
    np.testing.assert_array_equal(to_numpy(ours(backend.asarray(x))), x)


def test_gru_dropout_between_layers(backend):
    """nn.GRU(dropout=p): masks on every layer's output but the last, training only, seeded."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3))
    gru = gruxp.GRU(3, 4, 3, dropout=0.4, **_place(backend, seed=7))
    state = gru.state_dict(numpy=True)
    rng_state = gru.rng.bit_generator.state
    out, h_n, tape = gru.forward(backend.asarray(x))
    keep = to_numpy(tape.dropout_masks)  # (L−1, T, B, H): the backend's draws
    assert keep.shape == (2, 5, 2, 4) and set(np.unique(keep)) <= {0.0, 1 / 0.6}
    if backend.name == "numpy":  # NumPy draws from the model's host Generator itself, as every earlier version did
        masks = np.random.default_rng()
        masks.bit_generator.state = rng_state
        np.testing.assert_array_equal(keep, (masks.random((2, 5, 2, 4)) >= 0.4) / 0.6)
    # the same seed, the same masks; the same computation by hand, one layer at a time
    np.testing.assert_array_equal(
        to_numpy(gruxp.GRU(3, 4, 3, dropout=0.4, **_place(backend, seed=7))(backend.asarray(x))[0]), to_numpy(out)
    )
    layer_in = x
    for k in range(3):
        single = gruxp.GRU(layer_in.shape[-1], 4, dtype="float64")
        single.load_state_dict({n.replace(f"_l{k}", "_l0"): v for n, v in state.items() if f"_l{k}" in n})
        layer_in, _ = single(layer_in)
        if k < 2:
            layer_in = layer_in * keep[k]
    assert_close(out, layer_in, rtol=1e-12, atol=1e-14, name="out")
    gru.eval()
    no_drop, _ = gru(backend.asarray(x))
    plain = gruxp.GRU(3, 4, 3, dtype="float64")
    plain.load_state_dict(state)
    assert_close(no_drop, plain(x)[0], rtol=1e-12, atol=1e-14, name="eval")


def test_gru_dropout_gradients(backend):
    """With the mask fixed (same RNG state for every evaluation), backward is exact."""
    case_x = np.random.default_rng(2).standard_normal((3, 2, 2))
    gru = gruxp.GRU(2, 2, 2, dropout=0.5, **_place(backend, seed=1))
    d_out = np.random.default_rng(3).standard_normal((3, 2, 2))
    start = gru.rng.bit_generator.state
    _, _, tape = gru.forward(backend.asarray(case_x))
    grads, dx, _ = gru.backward(tape, backend.asarray(d_out))
    state = gru.state_dict(numpy=True)

    def loss(p, xv):
        rng = np.random.default_rng()
        rng.bit_generator.state = start
        out, _ = gruxp.functional.gru(
            {k: backend.asarray(v) for k, v in p.items()}, backend.asarray(xv), num_layers=2, dropout=0.5, rng=rng
        )
        return float(np.sum(to_numpy(out) * d_out))

    assert_close(dx, numerical_gradient(lambda v: loss(state, v), case_x), name="dx", **FD)
    for k in state:
        assert_close(grads[k], numerical_gradient(lambda v, k=k: loss({**state, k: v}, case_x), state[k]), name=k, **FD)


def test_last_step_picks_each_sequences_last_valid_output(backend):
    x = np.arange(5 * 3 * 2, dtype=np.float64).reshape(5, 3, 2)
    lengths = [5, 2, 1]
    layer = gruxp.LastStep()
    y, tape = layer.forward(backend.asarray(x), lengths=lengths)
    np.testing.assert_array_equal(to_numpy(y), np.stack([x[L - 1, b] for b, L in enumerate(lengths)]))
    _, dx = layer.backward(tape, backend.asarray(np.ones((3, 2))))
    dx = to_numpy(dx)
    assert dx.sum() == 6 and all(dx[L - 1, b].sum() == 2 for b, L in enumerate(lengths))
    bf = gruxp.LastStep(batch_first=True)
    y2, _ = bf.forward(backend.asarray(np.swapaxes(x, 0, 1)), lengths=lengths)
    np.testing.assert_array_equal(to_numpy(y2), to_numpy(y))


def _language_model(backend, *, dropout=0.0):
    return gruxp.Sequential(
        embed=gruxp.Embedding(6, 3, **_place(backend, seed=0)),
        drop=gruxp.Dropout(dropout, seed=9),
        gru=gruxp.GRU(3, 2, 2, batch_first=True, dropout=dropout, **_place(backend, seed=1)),
        head=gruxp.Linear(2, 6, **_place(backend, seed=2)),
    )


def test_full_model_finite_differences(backend):
    """embedding → 2-layer GRU → linear → cross-entropy: every parameter by central differences."""
    ids = np.random.default_rng(0).integers(0, 6, size=(2, 4))
    targets = np.random.default_rng(1).integers(0, 6, size=(2, 4))
    targets[0, 0] = -100  # ignored position
    model = _language_model(backend)
    logits, _, tape = model.forward(backend.int_array(ids))
    loss, dlogits = losses.cross_entropy(logits, backend.int_array(targets))
    grads, dx, d_state = model.backward(tape, dlogits)
    assert dx is None and set(grads) == set(model.params) and d_state["gru"].shape == (2, 2, 2)
    state = model.state_dict(numpy=True)
    probe = _language_model(backend)

    def f(name):
        def value(v):
            probe.load_state_dict({**state, name: v})
            out, _ = probe(backend.int_array(ids))
            return float(losses.cross_entropy(out, backend.int_array(targets))[0])

        return value

    for name in state:
        assert_close(grads[name], numerical_gradient(f(name), state[name]), name=name, **FD)


def test_sequential_params_state_dict_and_errors(backend):
    model = _language_model(backend)
    names = list(model.params)
    assert names[0] == "embed.weight" and "gru.weight_ih_l0" in names and names[-1] == "head.bias"
    doubled = {k: v * 2.0 for k, v in model.params.items()}
    model.params = doubled
    assert all(model.params[k] is v for k, v in doubled.items())
    with pytest.raises(ValueError, match=r"missing \['head.bias'\]"):
        model.params = {k: v for k, v in doubled.items() if k != "head.bias"}
    with pytest.raises(ValueError, match="load_state_dict: unexpected keys"):
        model.load_state_dict({**model.state_dict(numpy=True), "x.y": np.zeros(1)})
    with pytest.raises(ValueError, match="lives on .*float32.* build all layers with the same"):
        gruxp.Sequential(a=gruxp.Linear(2, 2, **_place(backend)), b=gruxp.Linear(2, 2, xp=backend.xp, device=backend.device))
    rebuilt = gruxp.Sequential.from_config(model.config(), xp=backend.xp, device=backend.device, dtype="float64")
    rebuilt.load_state_dict(model.state_dict(numpy=True))
    ids = backend.int_array([[1, 2, 3]])
    np.testing.assert_array_equal(to_numpy(rebuilt(ids)[0]), to_numpy(model(ids)[0]))
