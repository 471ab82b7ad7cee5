"""gruxp.torch as a drop-in for torch.nn.GRU: packed sequences, hx, torch.compile with a full graph,
torch.export, every cell as a module, parametrized weights, errors in torch's terms."""

import numpy as np
import pytest

import gruxp

torch = pytest.importorskip("torch")
from torch.nn.utils import parametrizations, prune  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import gruxp.torch as gt  # noqa: E402

LENGTHS = [5, 2, 7, 3]


def _pair(**kw):
    torch.manual_seed(0)
    ours = gt.GRU(3, 4, dtype=torch.float64, **kw)
    theirs = torch.nn.GRU(3, 4, dtype=torch.float64, **kw)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _close(a, b, what, tol=1e-10):
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= tol * scale, what


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("layers_bi", [(1, False), (2, True)])
def test_packed_sequences_in_and_out_as_nn_gru(enforce_sorted, batch_first, layers_bi):
    num_layers, bidirectional = layers_bi
    ours, theirs = _pair(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    rng = np.random.default_rng(0)
    shape = (4, 7, 3) if batch_first else (7, 4, 3)
    D = 2 if bidirectional else 1
    h0 = torch.tensor(rng.standard_normal((num_layers * D, 4, 4)), requires_grad=True)
    x = torch.tensor(rng.standard_normal(shape), requires_grad=True)
    results = []
    for net in (ours, theirs):
        x.grad = h0.grad = None
        net.zero_grad()
        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=enforce_sorted)
        out, h_n = net(packed, hx=h0)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out, name), getattr(packed, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        padded, out_lengths = pad_packed_sequence(out, batch_first=batch_first)
        g = torch.tensor(np.random.default_rng(1).standard_normal(tuple(padded.shape)))
        ((padded * g).sum() + (h_n**2).sum()).backward()
        results.append([padded.detach(), out_lengths, h_n.detach(), x.grad, h0.grad, *(p.grad for p in net.parameters())])
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        _close(a.double(), b.double(), i)


def test_hx_is_nn_grus_keyword_and_h0_its_alias():
    ours, theirs = _pair()
    x, h = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(1, 2, 4, dtype=torch.float64)
    _close(ours(x, hx=h)[0], theirs(x, hx=h)[0], "hx")
    _close(ours(x, h0=h)[0], theirs(x, h)[0], "h0")
    with pytest.raises(TypeError, match="hx .* or h0, not both"):
        ours(x, hx=h, h0=h)


def _language_model(module):
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"embed": torch.nn.Embedding(11, 6), "gru": module, "head": torch.nn.Linear(8, 11)})


class _LM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.gru, self.head = torch.nn.Embedding(11, 6), gt.GRU(6, 8, 2, batch_first=True), torch.nn.Linear(8, 11)

    def forward(self, ids):
        out, _ = self.gru(self.embed(ids))
        return self.head(out)


def _train(model, steps=5):
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, 11, size=(4, 9)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 11), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_torch_compile_takes_the_model_whole_and_trains_as_eager():
    eager = _LM()
    compiled = _LM()
    losses = _train(eager)
    torch._dynamo.reset()
    got = _train(torch.compile(compiled, fullgraph=True))
    np.testing.assert_allclose(got, losses, rtol=1e-5)
    for (name, a), b in zip(compiled.state_dict().items(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    ids = torch.as_tensor(np.random.default_rng(1).integers(0, 11, size=(2, 5)))
    explanation = torch._dynamo.explain(_LM())(ids)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_torch_export_gives_a_program_that_runs_as_eager():
    model = _LM().eval()
    ids = torch.as_tensor(np.random.default_rng(2).integers(0, 11, size=(3, 6)))
    program = torch.export.export(model, (ids,))
    torch.testing.assert_close(program.module()(ids), model(ids))
    assert any("gruxp.stack_forward" in str(node.target) for node in program.graph.nodes)


def test_functional_call_with_torch_autograd():
    model = _LM()
    ids = torch.as_tensor(np.random.default_rng(3).integers(0, 11, size=(2, 5)))
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    out = torch.func.functional_call(model, params, (ids,))
    grads = torch.autograd.grad(out.square().sum(), list(params.values()))
    model.zero_grad()
    model(ids).square().sum().backward()
    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(g, p.grad, msg=name)


def test_torch_func_grad_equals_nn_grus_and_refuses_grad_of_grad_and_vmap():
    ours, theirs = _pair(num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def loss(module):
        return lambda params, xx: torch.func.functional_call(module, params, (xx,))[0].square().sum()

    got = torch.func.grad(loss(ours), argnums=(0, 1))(dict(ours.named_parameters()), x)
    want = torch.func.grad(loss(theirs), argnums=(0, 1))(dict(theirs.named_parameters()), x)
    for name in want[0]:
        _close(got[0][name], want[0][name], name)
    _close(got[1], want[1], "dx")
    with pytest.raises(RuntimeError, match="double backward through gruxp.torch is not supported"):
        torch.func.grad(lambda xx: torch.func.grad(lambda y: ours(y)[0].square().sum())(xx).sum())(x)
    with pytest.raises(RuntimeError, match="torch.func.vmap over a gruxp.torch module is not supported"):
        torch.func.vmap(lambda xx: ours(xx)[0])(x.unsqueeze(0).repeat(2, 1, 1, 1))


@pytest.mark.parametrize("cell", ["lngru", "mingru"])
def test_every_cell_as_a_module_against_the_numpy_model_and_gradcheck(cell):
    module_type = {"lngru": gt.LayerNormGRU, "mingru": gt.MinGRU}[cell]
    torch.manual_seed(0)
    options = {"zoneout": 0.25} if cell == "lngru" else {}
    module = module_type(3, 4, 2, bidirectional=True, dtype=torch.float64, **options).eval()
    model = gruxp.models.recurrent(cell, 3, 4, 2, bidirectional=True, dtype="float64", **options).eval()
    model.load_state_dict(module.state_dict())  # gruxp's names: loads as it is
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    out, h_n = module(x, h0, lengths=[6, 3])
    want, want_h = model(x.detach().numpy(), h0.detach().numpy(), lengths=[6, 3])
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_n.detach().numpy(), want_h, rtol=1e-12, atol=1e-13)
    assert torch.autograd.gradcheck(lambda x, h0: module(x, h0, lengths=[6, 3]), (x, h0), eps=1e-6, atol=1e-7)
    module.train()
    if cell == "lngru":  # zoneout from torch's generator in training
        torch.manual_seed(3)
        a = module(x)[0]
        torch.manual_seed(3)
        assert torch.equal(module(x)[0], a) and not torch.equal(module(x)[0], a)


@pytest.mark.parametrize("how", ["prune", "weight_norm"])
def test_parametrized_weights_work_as_on_nn_gru(how):
    ours, theirs = _pair(num_layers=2)
    for net in (ours, theirs):
        if how == "prune":
            prune.l1_unstructured(net, "weight_hh_l0", amount=0.3)
        else:
            parametrizations.weight_norm(net, "weight_hh_l0")
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    results = []
    for net in (ours, theirs):
        out, h_n = net(x)
        (out.square().sum() + h_n.sum()).backward()
        results.append([out.detach(), *(p.grad for p in net.parameters())])
    assert len(results[0]) == len(results[1]) > 1
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        _close(a, b, i)


def test_errors_in_torchs_terms():
    gru = gt.GRU(3, 4)
    with pytest.raises(
        TypeError, match=r"x must be a floating-point tensor of dtype torch.float32.*got torch.int64.*nn.Embedding"
    ):
        gru(torch.zeros(5, 2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the parameters are torch.float32"):
        gru(torch.zeros(5, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x is on the meta device"):
        gru(torch.zeros(5, 2, 3, device="meta"))
    with pytest.raises(TypeError, match="x must be a tensor or a PackedSequence; got list"):
        gru([[0.0]])
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\]"):
        gru(torch.zeros(5, 2, 3), lengths=[5, 0])


def test_last_step_checks_lengths_as_gruxps_does():
    last = gt.LastStep()
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(last(x, lengths=[4, 1, 2]), torch.stack([x[3, 0], x[0, 1], x[1, 2]]))
    for bad in ([4, 1, 0], [5, 1, 1]):
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=4\]"):
            last(x, lengths=bad)
