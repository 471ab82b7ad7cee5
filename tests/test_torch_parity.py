"""Parity with torch.nn.GRU / nn.GRUCell (autograd) in float64, on every backend of the matrix.

|diff| <= 1e-10 + 1e-9·|ref| for out, h_n and every gradient (params, x, h0).
"""

import numpy as np
import pytest
from _cases import Case, host_case_inputs

import gruxp
from gruxp.testing import assert_close

torch = pytest.importorskip("torch")

MODES = {
    "plain": {},
    "batch_first": {"batch_first": True},
    "unbatched": {"unbatched": True},
    "no_bias": {"bias": False},
    "lengths": {"ragged": True},
    "lengths_batch_first": {"ragged": True, "batch_first": True},
}
PARITY = dict(rtol=1e-9, atol=1e-10)


def _torch_run(case, state, host):
    D = 2 if case.bidirectional else 1
    net = torch.nn.GRU(
        case.I,
        case.H,
        case.num_layers,
        bias=case.bias,
        batch_first=case.batch_first,
        bidirectional=case.bidirectional,
        dtype=torch.float64,
    )
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = torch.tensor(case.layout(host["x"], seq=True), requires_grad=True)
    h0 = torch.tensor(case.layout(host["h0"], seq=False), requires_grad=True)
    if host["lengths"] is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.as_tensor(host["lengths"]), batch_first=case.batch_first, enforce_sorted=False
        )
        out_p, h_n = net(packed, h0)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=case.batch_first, total_length=case.T)
    else:
        out, h_n = net(x, h0)
    d_out = torch.from_numpy(case.layout(host["d_out"][..., : D * case.H], seq=True))
    d_hn = torch.from_numpy(case.layout(host["d_hn"], seq=False))
    ((out * d_out).sum() + (h_n * d_hn).sum()).backward()
    grads = {k: p.grad.numpy() for k, p in net.named_parameters()}
    return out.detach().numpy(), h_n.detach().numpy(), grads, x.grad.numpy(), h0.grad.numpy()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
def test_nn_gru_parity(backend, num_layers, bidirectional, mode):
    case = Case(num_layers=num_layers, bidirectional=bidirectional, T=6, B=4, I=5, H=4, **MODES[mode])
    model = case.model(backend, "float64", seed=num_layers)
    host = host_case_inputs(case, seed=2)
    want_out, want_hn, want_grads, want_dx, want_dh0 = _torch_run(case, model.state_dict(numpy=True), host)

    x = backend.asarray(case.layout(host["x"], seq=True))
    h0 = backend.asarray(case.layout(host["h0"], seq=False))
    out, h_n, tape = model.forward(x, h0, lengths=host["lengths"])
    grads, dx, dh0 = model.backward(
        tape, backend.asarray(case.layout(host["d_out"], seq=True)), backend.asarray(case.layout(host["d_hn"], seq=False))
    )
    assert list(grads) == list(want_grads)  # PyTorch's names, PyTorch's order
    assert_close(out, want_out, name="out", **PARITY)
    assert_close(h_n, want_hn, name="h_n", **PARITY)
    assert_close(dx, want_dx, name="dx", **PARITY)
    assert_close(dh0, want_dh0, name="dh0", **PARITY)
    for name, g in want_grads.items():
        assert_close(grads[name], g, name=name, **PARITY)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("unbatched", [False, True])
def test_nn_grucell_parity(backend, bias, unbatched):
    rng = np.random.default_rng(4)
    I, H, B = 5, 4, 3
    cell = gruxp.GRUCell(I, H, bias=bias, xp=backend.xp, device=backend.device, dtype="float64", seed=9)
    net = torch.nn.GRUCell(I, H, bias=bias, dtype=torch.float64)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in cell.state_dict(numpy=True).items()})
    shape = (lambda *s: s[1:]) if unbatched else (lambda *s: s)
    x, h, dh = rng.standard_normal(shape(B, I)), rng.standard_normal(shape(B, H)), rng.standard_normal(shape(B, H))
    xt, ht = torch.tensor(x, requires_grad=True), torch.tensor(h, requires_grad=True)
    want = net(xt, ht)
    (want * torch.from_numpy(dh)).sum().backward()

    got, tape = cell.forward(backend.asarray(x), backend.asarray(h))
    grads, dx, dh_prev = cell.backward(tape, backend.asarray(dh))
    assert_close(got, want.detach().numpy(), name="h'", **PARITY)
    assert_close(cell(backend.asarray(x), backend.asarray(h)), want.detach().numpy(), name="h' (inference)", **PARITY)
    assert_close(dx, xt.grad.numpy(), name="dx", **PARITY)
    assert_close(dh_prev, ht.grad.numpy(), name="dh", **PARITY)
    for name, p in net.named_parameters():
        assert_close(grads[name], p.grad.numpy(), name=name, **PARITY)


def test_same_seed_same_parameters_on_every_backend(backend):
    """Initialisation is drawn on the host: bit-identical across backends, PyTorch's U(±1/√H)."""
    model = gruxp.GRU(5, 16, 2, bidirectional=True, xp=backend.xp, device=backend.device, dtype="float64", seed=123)
    reference = gruxp.GRU(5, 16, 2, bidirectional=True, dtype="float64", seed=123)
    state = model.state_dict(numpy=True)
    assert list(state) == [k for k, _ in torch.nn.GRU(5, 16, 2, bidirectional=True).named_parameters()]
    for k, v in reference.state_dict(numpy=True).items():
        np.testing.assert_array_equal(state[k], v)
        assert np.all(np.abs(v) <= 0.25) and v.std() > 0.1  # 1/sqrt(16) = 0.25; U(-a, a) has std a/sqrt(3)
