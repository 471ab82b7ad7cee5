"""Trainer, truncated BPTT, streaming inference, checkpoints that cannot be lost, exact resume."""

from pathlib import Path

import numpy as np
import pytest

import gruxp
from gruxp import checkpoint, losses, optim
from gruxp.testing import assert_close, to_numpy
from gruxp.training import stream_windows


def _lm(backend=None, *, dropout=0.1, dtype="float64"):
    kw = dict(dtype=dtype) if backend is None else dict(xp=backend.xp, device=backend.device, dtype=dtype)
    return gruxp.Sequential(
        embed=gruxp.Embedding(7, 4, seed=0, **kw),
        drop=gruxp.Dropout(dropout, seed=5),
        gru=gruxp.GRU(4, 6, 2, batch_first=True, dropout=dropout, seed=1, **kw),
        head=gruxp.Linear(6, 7, seed=2, **kw),
    )


TOKENS = np.random.default_rng(0).integers(0, 7, size=600)


def _trainer(model, tmp_path=None, **kw):
    return gruxp.Trainer(
        model,
        losses.cross_entropy,
        optim.Adam(lr=0.01),
        clip_norm=1.0,
        stateful=True,
        checkpoint=None if tmp_path is None else tmp_path / "ck.npz",
        seed=3,
        **kw,
    )


def test_training_reduces_the_loss_on_every_backend(backend):
    model = _lm(backend)
    trainer = _trainer(model)
    batches = stream_windows(TOKENS, batch_size=4, window=10, xp=backend.xp, device=backend.device)
    records = trainer.fit(batches, 30)
    assert [r["step"] for r in records] == list(range(1, 31))
    first, last = np.mean([r["loss"] for r in records[:5]]), np.mean([r["loss"] for r in records[-5:]])
    assert last < first and all(np.isfinite(r["grad_norm"]) for r in records)


def test_resume_is_bit_identical(tmp_path):
    """10 steps straight == 5 steps, checkpoint, a fresh process-like restart, 5 more (dropout on)."""
    batches = stream_windows(TOKENS, batch_size=4, window=10)
    straight = _trainer(_lm())
    straight.fit(batches, 10)

    first = _trainer(_lm(), tmp_path, checkpoint_every=5)
    first.fit(batches, 5)
    assert (tmp_path / "ck.npz").exists()
    second_model = _lm()  # fresh parameters, fresh RNGs: all must come from the checkpoint
    second = _trainer(second_model, tmp_path)
    second.resume()
    assert second.step == 5 and set(second.carry) == {"gru"}
    second.fit(batches, 10)
    for k, v in straight.model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(second_model.state_dict(numpy=True)[k], v, err_msg=k)
    assert [r["loss"] for r in straight.history[5:]] == [r["loss"] for r in second.history]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    model = _lm(dropout=0.0)
    trainer = _trainer(model, tmp_path, checkpoint_every=2)
    batches = stream_windows(TOKENS, batch_size=4, window=10)
    trainer.fit(batches, 2)
    saved = (tmp_path / "ck.npz").read_bytes()
    before = model.state_dict(numpy=True)
    bad = {k: (v * np.nan if k == "head.bias" else v) for k, v in before.items()}
    model.load_state_dict(bad)
    with pytest.raises(
        gruxp.NonFiniteLossError,
        match=r"loss is nan at step 3: training stopped before the update; the last checkpoint .* was kept",
    ):
        trainer.fit(batches, 4)
    assert trainer.step == 2
    assert (tmp_path / "ck.npz").read_bytes() == saved
    for k, v in model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(v, bad[k])  # no update was applied


def test_truncated_bptt_carries_state_but_not_gradient():
    """Window 2 starts from window 1's h_n; its gradients are those of a fresh forward from that state."""
    model = _lm(dropout=0.0)
    batches = stream_windows(TOKENS, batch_size=3, window=8)
    b1, b2 = batches(0, None), batches(1, None)
    assert b1.reset and not b2.reset
    _, state, _ = model.forward(b1.x)
    y, _, tape = model.forward(b2.x, state)
    full_y, _ = model(np.concatenate([b1.x, b2.x], axis=1))
    np.testing.assert_allclose(y, full_y[:, 8:], rtol=1e-12, atol=1e-14)  # carrying == one long sequence
    loss, dy = losses.cross_entropy(y, b2.target)
    grads, _, d_state = model.backward(tape, dy)
    assert set(d_state) == {"gru"}  # the gradient reaching the carried state is returned, not applied
    constant = {"gru": gruxp.testing.to_numpy(state["gru"]).copy()}
    _, _, tape2 = model.forward(b2.x, constant)
    again, _, _ = model.backward(tape2, dy)
    for k in grads:
        np.testing.assert_array_equal(grads[k], again[k])


def test_streaming_step_equals_the_full_sequence(backend, dtype):
    gru = gruxp.GRU(5, 7, 3, xp=backend.xp, device=backend.device, dtype=dtype, seed=0)
    x = np.random.default_rng(0).standard_normal((30, 4, 5))
    full, h_full = gru(backend.asarray(x, dtype))
    h, outs = None, []
    for t in range(30):
        o, h = gru.step(backend.asarray(x[t], dtype), h)
        outs.append(to_numpy(o))
    streamed = np.stack(outs)
    # identical arithmetic except the input GEMM's blocking (one (T·B, I) GEMM vs T (B, I) GEMMs)
    eps = np.finfo(dtype).eps
    assert_close(streamed, full, rtol=8 * eps, atol=8 * eps, name="out")
    assert_close(h, h_full, rtol=8 * eps, atol=8 * eps, name="h")
    with pytest.raises(ValueError, match="step\\(\\) needs a unidirectional GRU"):
        gruxp.GRU(5, 7, bidirectional=True).step(np.zeros((1, 5), np.float32))


def test_streaming_a_language_model_token_by_token():
    model = _lm(dropout=0.0).eval()
    ids = TOKENS[:40].reshape(2, 20)
    full, _ = model(ids)
    state, outs = None, []
    for t in range(20):
        y, state = model(ids[:, t : t + 1], state)
        outs.append(y[:, 0])
    np.testing.assert_allclose(np.stack(outs, axis=1), full, rtol=1e-13, atol=1e-13)


def test_checkpoint_round_trip_and_rebuild(tmp_path, backend):
    model = _lm(backend)
    opt = optim.AdamW(lr=0.01)
    state = opt.init(model.params)
    path = checkpoint.save(tmp_path / "m.npz", model, optimizer=opt, opt_state=state, step=7, extra={"note": "x"})
    ck = checkpoint.load(path)
    assert ck.meta["step"] == 7 and ck.meta["extra"] == {"note": "x"} and ck.meta["optimizer"]["type"] == "AdamW"
    rebuilt = checkpoint.build_model(ck, xp=backend.xp, device=backend.device)
    for k, v in model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(rebuilt.state_dict(numpy=True)[k], v)
    assert [p for p in Path(tmp_path).iterdir()] == [path]  # no temporary file left behind


def test_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _lm()
    path = checkpoint.save(tmp_path / "m.npz", model, step=1)
    good = path.read_bytes()

    def exploding_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", exploding_savez)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model, step=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_damaged_checkpoints_raise_a_clear_error(tmp_path):
    model = _lm()
    path = checkpoint.save(tmp_path / "m.npz", model, step=1)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(gruxp.CheckpointError, match="truncated or corrupted"):
        checkpoint.load(truncated)
    corrupted = tmp_path / "corrupted.npz"
    flipped = bytearray(data)
    i = data.index(b"param/head.weight") + 200  # inside that member's data
    flipped[i] ^= 0xFF
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(gruxp.CheckpointError, match="truncated or corrupted"):
        checkpoint.load(corrupted)
    with pytest.raises(gruxp.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nothing.npz")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(gruxp.CheckpointError, match="is not a gruxp checkpoint"):
        checkpoint.load(tmp_path / "plain.npz")
    other = gruxp.Sequential(gru=gruxp.GRU(4, 5, dtype="float64"))
    with pytest.raises(gruxp.CheckpointError, match="checkpoint is for a different model"):
        checkpoint.restore_model(checkpoint.load(path), other)


def test_resume_refuses_another_optimizer(tmp_path):
    trainer = _trainer(_lm(), tmp_path)
    trainer.fit(stream_windows(TOKENS, batch_size=4, window=10), 1)
    trainer.save()
    other = gruxp.Trainer(_lm(), losses.cross_entropy, optim.SGD(lr=0.1), checkpoint=tmp_path / "ck.npz")
    with pytest.raises(gruxp.CheckpointError, match="checkpoint optimizer .* does not match SGD"):
        other.resume()


def test_trainer_input_errors():
    with pytest.raises(TypeError, match="model must be a gruxp.Sequential"):
        gruxp.Trainer(gruxp.GRU(2, 2), losses.mse, optim.SGD())
    trainer = _trainer(_lm())
    with pytest.raises(TypeError, match="batch_fn must return a Batch or a tuple"):
        trainer.fit(lambda step, rng: "nope", 1)
