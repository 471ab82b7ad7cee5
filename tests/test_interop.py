"""Weights to and from PyTorch and Keras, round-tripped and checked against the frameworks' own layers."""

import os

import numpy as np
import pytest

import gruxp
from gruxp import interop
from gruxp.testing import assert_close, to_numpy

X = np.random.default_rng(0).standard_normal((3, 6, 4))  # (B, T, I), batch-major like Keras


def test_torch_round_trips():
    torch = pytest.importorskip("torch")
    modules = [
        torch.nn.GRU(4, 5, 2, bidirectional=True, batch_first=True, dtype=torch.float64),
        torch.nn.GRUCell(4, 5, bias=False, dtype=torch.float64),
        torch.nn.Linear(4, 5, dtype=torch.float64),
        torch.nn.Embedding(9, 3, dtype=torch.float64),
    ]
    for module in modules:
        ours = interop.from_torch(module, dtype="float64")
        back = interop.to_torch(ours)
        assert type(back) is type(module)
        for k, v in module.state_dict().items():
            np.testing.assert_array_equal(back.state_dict()[k].numpy(), v.numpy())
            np.testing.assert_array_equal(ours.state_dict(numpy=True)[k], v.numpy())
    gru = interop.from_torch(modules[0], dtype="float64")
    out, _ = gru(X)
    assert_close(out, modules[0](torch.from_numpy(X))[0].detach().numpy(), rtol=1e-12, atol=1e-14, name="out")
    with pytest.raises(ValueError, match="PyTorch has only the reset_after=True GRU"):
        interop.to_torch(gruxp.GRU(2, 2, reset_after=False))
    with pytest.raises(TypeError, match="from_torch converts"):
        interop.from_torch(torch.nn.LSTM(2, 2))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_keras_round_trip_is_exact(reset_after, bias):
    gru = gruxp.GRU(4, 5, bias=bias, batch_first=True, reset_after=reset_after, dtype="float64", seed=3)
    weights = interop.to_keras(gru)
    expected_bias = [] if not bias else [(2, 15) if reset_after else (15,)]
    assert [w.shape for w in weights] == [(4, 15), (5, 15)] + expected_bias
    back = interop.from_keras(weights, reset_after=reset_after, dtype="float64")
    np.testing.assert_allclose(to_numpy(back(X)[0]), to_numpy(gru(X)[0]), rtol=1e-13, atol=1e-15)
    again = interop.to_keras(back)
    for a, b in zip(again, weights, strict=True):
        np.testing.assert_array_equal(a, b)  # Keras → gruxp → Keras is exact
    if reset_after or not bias:
        for k, v in gru.state_dict(numpy=True).items():
            np.testing.assert_array_equal(back.state_dict(numpy=True)[k], v)  # so is gruxp → Keras → gruxp


def test_keras_gate_order_against_the_equations():
    """z, r, h columns in Keras: the update gate's block of the kernel is PyTorch's second row block."""
    gru = gruxp.GRU(2, 3, dtype="float64", seed=1)
    kernel, recurrent, bias = interop.to_keras(gru)
    w = gru.state_dict(numpy=True)["weight_ih_l0"]
    np.testing.assert_array_equal(kernel[:, 0:3], w[3:6].T)  # z
    np.testing.assert_array_equal(kernel[:, 3:6], w[0:3].T)  # r
    np.testing.assert_array_equal(kernel[:, 6:9], w[6:9].T)  # h / n
    with pytest.raises(ValueError, match="bias must have shape \\(9,\\) for reset_after=False"):
        interop.keras_to_params([kernel, recurrent, bias], reset_after=False)


# Keras 3.15's Variable.__array__ lacks numpy 2's copy= keyword: its own warning, not ours.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.parametrize("reset_after", [True, False])
def test_matches_keras_gru_layer(reset_after):
    pytest.importorskip("jax")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"keras runs on {keras.backend.backend()}, this check uses the jax backend")
    layer = keras.layers.GRU(5, reset_after=reset_after, return_sequences=True, return_state=True, dtype="float32")
    x32 = X.astype(np.float32)
    layer(x32)  # build
    rng = np.random.default_rng(7)
    layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    want_out, want_h = layer(x32)
    ours = interop.from_keras(layer.get_weights(), reset_after=reset_after, dtype="float32")
    out, h_n = ours(x32)
    assert_close(out, np.asarray(want_out), rtol=1e-5, atol=2e-6, name="out")
    assert_close(h_n[0], np.asarray(want_h), rtol=1e-5, atol=2e-6, name="h_n")
    # and back: Keras weights made by gruxp give Keras the same outputs
    layer.set_weights(interop.to_keras(ours))
    assert_close(layer(x32)[0], np.asarray(want_out), rtol=1e-6, atol=1e-7, name="round trip")


def test_safetensors_round_trip_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    gru = gruxp.GRU(3, 5, 2, bidirectional=True, batch_first=True, dtype="float64", seed=0)
    path = interop.save_safetensors(gru, tmp_path / "gru.safetensors")
    net = torch.nn.GRU(3, 5, 2, bidirectional=True, batch_first=True, dtype=torch.float64)
    net.load_state_dict(st.load_file(path))  # PyTorch's names, as they are
    x = np.random.default_rng(0).standard_normal((2, 7, 3))
    np.testing.assert_allclose(net(torch.from_numpy(x))[0].detach().numpy(), gru(x)[0], rtol=1e-12, atol=1e-12)
    # and back: a file written by PyTorch loads into gruxp
    net2 = torch.nn.GRU(3, 5, 2, bidirectional=True, batch_first=True, dtype=torch.float64)
    st.save_file(net2.state_dict(), tmp_path / "torch.safetensors")
    gru.load_state_dict(interop.load_safetensors(tmp_path / "torch.safetensors"))
    np.testing.assert_allclose(gru(x)[0], net2(torch.from_numpy(x))[0].detach().numpy(), rtol=1e-12, atol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gru.safetensors", "torch.safetensors"]  # no temporaries


def test_safetensors_of_a_whole_model(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors import safe_open

    model = gruxp.Sequential(embed=gruxp.Embedding(9, 4, seed=0), gru=gruxp.GRU(4, 6, seed=1), head=gruxp.Linear(6, 9, seed=2))
    path = interop.save_safetensors(model, tmp_path / "m.safetensors")
    with safe_open(path, framework="numpy") as f:
        assert f.metadata()["format"] == "pt" and '"Sequential"' in f.metadata()["gruxp"]
        assert sorted(f.keys()) == sorted(model.params)
    twin = gruxp.Sequential(embed=gruxp.Embedding(9, 4, seed=5), gru=gruxp.GRU(4, 6, seed=6), head=gruxp.Linear(6, 9, seed=7))
    twin.load_state_dict(interop.load_safetensors(path))
    for k, v in model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(twin.state_dict(numpy=True)[k], v)
