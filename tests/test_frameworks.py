"""gruxp in each framework's idiom: gruxp.torch (nn.Modules with gruxp's backward), gruxp.jax (init/apply),
state dicts in the model's own arrays."""

import numpy as np
import pytest

import gruxp

torch = pytest.importorskip("torch")
import gruxp.torch as gt  # noqa: E402

CASES = [
    dict(num_layers=layers, bidirectional=bi, batch_first=bf, lengths=ragged, unbatched=False)
    for layers in (1, 2)
    for bi in (False, True)
    for bf, ragged in ((False, False), (True, True), (False, True))
] + [dict(num_layers=2, bidirectional=True, batch_first=False, lengths=False, unbatched=True)]


def _ids(case):
    return "-".join(
        [f"L{case['num_layers']}", "bi" if case["bidirectional"] else "uni"]
        + [k for k in ("batch_first", "lengths", "unbatched") if case[k]]
    )


def _pair(case, dtype=torch.float64):
    torch.manual_seed(0)
    ours = gt.GRU(3, 4, case["num_layers"], batch_first=case["batch_first"], bidirectional=case["bidirectional"], dtype=dtype)
    theirs = torch.nn.GRU(
        3, 4, case["num_layers"], batch_first=case["batch_first"], bidirectional=case["bidirectional"], dtype=dtype
    )
    theirs.load_state_dict(ours.state_dict())  # the same names and shapes: loads as it is
    return ours, theirs


def _inputs(case, dtype=torch.float64):
    rng = np.random.default_rng(1)
    T, B, D = 6, 3, 2 if case["bidirectional"] else 1
    x = torch.tensor(rng.standard_normal((T, B, 3)), dtype=dtype)
    h0 = torch.tensor(rng.standard_normal((case["num_layers"] * D, B, 4)), dtype=dtype)
    lengths = [6, 2, 4] if case["lengths"] else None
    if case["unbatched"]:
        x, h0 = x[:, 0], h0[:, 0]
    elif case["batch_first"]:
        x = x.transpose(0, 1).contiguous()
    return x.requires_grad_(), h0.requires_grad_(), lengths


def _torch_reference(net, x, h0, lengths, batch_first):
    if lengths is None:
        return net(x, h0)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    out, h_n = net(packed, h0)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    return out, h_n


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gruxp_torch_gru_equals_nn_gru_with_the_same_state_dict(case):
    """Outputs and every gradient (parameters, input, h0) within 1e-12 relative, float64."""
    ours, theirs = _pair(case)
    x, h0, lengths = _inputs(case)
    results = []
    for net, call in (
        (ours, lambda: ours(x, h0, lengths=lengths)),
        (theirs, lambda: _torch_reference(theirs, x, h0, lengths, case["batch_first"])),
    ):
        x.grad = h0.grad = None
        net.zero_grad()
        out, h_n = call()
        d_out = torch.tensor(np.random.default_rng(2).standard_normal(tuple(out.shape)), dtype=out.dtype)
        d_hn = torch.tensor(np.random.default_rng(3).standard_normal(tuple(h_n.shape)), dtype=h_n.dtype)
        ((out * d_out).sum() + (h_n * d_hn).sum()).backward()
        results.append([out.detach(), h_n.detach(), x.grad, h0.grad, *(p.grad for p in net.parameters())])
    for a, b in zip(*results, strict=True):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 1e-12 * max(scale, 1.0)


def test_gradcheck_and_no_double_backward():
    torch.manual_seed(0)
    gru = gt.GRU(2, 3, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0: gru(x, h0, lengths=[4, 2]), (x, h0), eps=1e-6, atol=1e-7)
    cell = gt.GRUCell(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, h: cell(x, h), (x[0], h0[0]), eps=1e-6, atol=1e-7)
    out, h_n = gru(x, h0)
    with pytest.raises(RuntimeError, match="double backward through gruxp.torch is not supported"):
        torch.autograd.grad(out.sum(), x, create_graph=True)  # as a gradient penalty would


def test_an_in_place_edit_of_a_weight_before_backward_raises_as_in_pytorch():
    gru = gt.GRU(2, 3)
    out, _ = gru(torch.randn(4, 2, 2))
    with torch.no_grad():
        gru.weight_hh_l0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_adam_50_steps_match_nn_gru():
    case = dict(num_layers=2, bidirectional=True, batch_first=True, lengths=False, unbatched=False)
    ours, theirs = _pair(case)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((3, 7, 3)))
    target = torch.tensor(rng.standard_normal((3, 7, 8)))
    losses = []
    for net in (ours, theirs):
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        history = []
        for _ in range(50):
            opt.zero_grad()
            loss = ((net(x)[0] - target) ** 2).mean()
            loss.backward()
            opt.step()
            history.append(loss.item())
        losses.append(history)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-10)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def test_module_idioms_to_train_eval_sequential_and_repr():
    torch.manual_seed(0)
    cell = torch.nn.Sequential(gt.GRUCell(3, 4), torch.nn.Linear(4, 2))
    assert cell(torch.randn(5, 3)).shape == (5, 2) and len(list(cell.parameters())) == 6
    gru = gt.GRU(3, 4, num_layers=2, dropout=0.5).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in gru.parameters())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    a = gru(x)[0]
    torch.manual_seed(1)
    b = gru(x)[0]
    c = gru(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)  # training: dropout drawn from torch's generator
    gru.eval()
    assert torch.equal(gru(x)[0], gru(x)[0])
    assert repr(gt.GRU(3, 4, batch_first=True, reset_after=False)) == "GRU(3, 4, batch_first=True, reset_after=False)"


def test_cpu_tensors_take_the_cpu_route_without_copies_and_give_the_numpy_models_bits():
    """The same plan, the same bits: gruxp.torch on CPU tensors against gruxp.GRU on NumPy arrays."""
    torch.manual_seed(0)
    ours = gt.GRU(16, 32, batch_first=True)
    model = gruxp.GRU(16, 32, batch_first=True)
    model.load_state_dict(ours.state_dict())
    x = torch.randn(8, 20, 16, requires_grad=True)
    with gruxp.routes_taken() as taken:
        out, h_n = ours(x)
        d_out = torch.randn_like(out)
        out.backward(d_out)
    ran = {(t.route, t.step) for t in taken}
    assert {("numpy-cpu", "forward"), ("numpy-cpu", "backward")} <= ran, taken  # the CPU route's own loop
    np_out, np_hn, tape = model.forward(x.detach().numpy())
    grads, dx, _ = model.backward(tape, d_out.numpy())
    np.testing.assert_array_equal(out.detach().numpy(), np_out)
    np.testing.assert_array_equal(x.grad.numpy(), dx)
    for name, p in ours.named_parameters():
        np.testing.assert_array_equal(p.grad.numpy(), grads[name], err_msg=name)
    # No copy of the input: an input of 2.6 MB through a layer whose own arrays are a few kB
    # allocates (NumPy's allocations, traced) far less than one copy of it would.
    import tracemalloc

    wide = gt.GRU(4096, 4)
    x_wide = torch.randn(20, 8, 4096)
    with torch.no_grad():
        wide(x_wide)  # a first call may build buffers
        tracemalloc.start()
        try:
            y, _ = wide(x_wide)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert y.shape == (20, 8, 4)
    assert peak < x_wide.numel() * x_wide.element_size() // 4, peak


# -- state dicts in the model's own arrays, and round trips ----------------------------------------
def _lm(xp=np):
    return gruxp.Sequential(
        embed=gruxp.Embedding(11, 4, seed=0, xp=xp),
        gru=gruxp.GRU(4, 6, 2, batch_first=True, seed=1, xp=xp),
        head=gruxp.Linear(6, 11, seed=2, xp=xp),
    )


def test_state_dicts_come_in_the_models_own_arrays():
    gru = gruxp.GRU(3, 4, xp=torch, seed=0)
    state = gru.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = torch.nn.GRU(3, 4)
    net.load_state_dict(state)  # as PyTorch users expect
    assert all(isinstance(v, np.ndarray) for v in gru.state_dict(numpy=True).values())
    state["weight_hh_l0"][...] = 0.0  # a copy: the model keeps its own
    assert float(gru.params["weight_hh_l0"].abs().sum()) > 0
    assert all(isinstance(v, np.ndarray) for v in gruxp.GRU(3, 4, seed=0).state_dict().values())
    jnp = pytest.importorskip("jax.numpy")
    import jax

    assert all(isinstance(v, jax.Array) for v in gruxp.GRU(3, 4, xp=jnp, seed=0).state_dict().values())


@pytest.mark.parametrize("kind", ["GRU", "GRUCell", "Linear", "Embedding", "Sequential"])
def test_round_trips_torch_gruxp_numpy_keep_every_value(kind):
    layer = {
        "GRU": lambda: gruxp.GRU(3, 4, 2, bidirectional=True, seed=0),
        "GRUCell": lambda: gruxp.GRUCell(3, 4, seed=0),
        "Linear": lambda: gruxp.Linear(3, 4, seed=0),
        "Embedding": lambda: gruxp.Embedding(7, 3, padding_idx=2, seed=0),
        "Sequential": _lm,
    }[kind]()
    module = gruxp.interop.to_torch(layer)
    back = gruxp.interop.from_torch(module)
    on_torch = gruxp.interop.from_torch(module, xp=torch)
    states = [module.state_dict().values(), back.state_dict().values(), on_torch.state_dict(numpy=True).values()]
    for (name, a), b, c, d in zip(layer.state_dict().items(), *states, strict=True):
        for other in (b.numpy(), c, d):
            np.testing.assert_array_equal(a, other, err_msg=name)
    assert type(back) is type(layer)


def test_the_language_model_converts_to_an_equivalent_torch_module():
    lm = _lm()
    module = gruxp.interop.to_torch(lm)
    ids = np.random.default_rng(0).integers(0, 11, size=(2, 9))
    ours, state = lm(ids)
    theirs, torch_state = module(torch.from_numpy(ids))
    np.testing.assert_allclose(theirs.detach().numpy(), ours, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch_state["gru"].detach().numpy(), state["gru"], rtol=1e-5, atol=1e-6)
    assert [n for n, _ in module.named_parameters()] == list(lm.params)


# -- JAX: init/apply with optax -----------------------------------------------------------------------
def test_jax_init_apply_under_jit_and_grad_with_optax_train_as_the_numpy_model():
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import gruxp.jax as gj
    from gruxp import optim

    params = gj.init(0, 3, 5, 2, bidirectional=True, dtype="float64")
    model = gruxp.GRU(3, 5, 2, bidirectional=True, dtype="float64", seed=0)
    for k, v in model.params.items():
        np.testing.assert_array_equal(np.asarray(params[k]), v)  # an int seed: the NumPy model's numbers
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((6, 4, 3)), rng.standard_normal((6, 4, 10))) for _ in range(5)]

    def loss(p, x, y):
        out, _ = gj.apply(p, x, lengths=jnp.asarray([6, 3, 5, 1]))
        return jnp.mean((out - y) ** 2)

    tx = optax.adam(0.01)
    state = tx.init(params)

    @jax.jit
    def step(p, state, x, y):
        value, grads = jax.value_and_grad(loss)(p, x, y)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    values = []
    for x, y in data:
        params, state, value = step(params, state, jnp.asarray(x), jnp.asarray(y))
        values.append(float(value))
    opt, opt_state, want = optim.Adam(lr=0.01), None, []
    opt_state = opt.init(model.params)
    for x, y in data:
        out, _, tape = model.forward(x, lengths=[6, 3, 5, 1])
        want.append(float(np.mean((out - y) ** 2)))
        grads, _, _ = model.backward(tape, 2 * (out - y) / out.size)
        model.params, opt_state = opt.step(model.params, grads, opt_state)
    np.testing.assert_allclose(values, want, rtol=1e-10)
    for k, v in model.params.items():
        np.testing.assert_allclose(np.asarray(params[k]), v, rtol=1e-9, atol=1e-12, err_msg=k)
    keyed = gj.init(jax.random.key(0), 3, 5)
    assert set(keyed) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    assert float(jnp.max(jnp.abs(keyed["weight_hh_l0"]))) <= 1 / 5**0.5
