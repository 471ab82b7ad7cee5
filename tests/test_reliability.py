"""Defects found by an outside review and an adversarial sweep (issue 15), each pinned by a test
that failed before its fix: data loss first, then silent wrong answers, then crashes and errors."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gruxp
from gruxp import checkpoint, losses, optim
from gruxp.testing import to_numpy
from gruxp.training import NonFiniteLossError, stream_windows


def _regressor(dtype="float32"):
    return gruxp.Sequential(
        gru=gruxp.GRU(2, 4, batch_first=True, seed=0, dtype=dtype),
        last=gruxp.LastStep(batch_first=True),
        head=gruxp.Linear(4, 1, seed=1, dtype=dtype),
    )


def _batch(step, rng, dtype=np.float32):
    return rng.standard_normal((3, 5, 2)).astype(dtype), rng.standard_normal((3, 1)).astype(dtype)


# -- 1. a diverged update never replaces the good checkpoint ----------------------------------------
def test_overflowing_update_keeps_the_good_checkpoint_and_parameters(tmp_path):
    path = tmp_path / "ck.npz"
    model = _regressor()
    good = gruxp.Trainer(model, losses.mse, optim.SGD(lr=1e-3), checkpoint=path)
    good.fit(_batch, 2)
    good.save()
    saved = path.read_bytes()
    before = model.state_dict(numpy=True)
    trainer = gruxp.Trainer(model, losses.mse, optim.SGD(lr=1e300), checkpoint=path, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match="the update made parameters inf or NaN .*was kept"):
        trainer.fit(_batch, 5)
    assert trainer.step == 0 and path.read_bytes() == saved  # the claim "was kept" is true
    for k, v in model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(v, before[k])  # the model holds the last good parameters


def test_overflowing_optimizer_state_is_refused_too():
    model = _regressor()
    trainer = gruxp.Trainer(model, losses.mse, optim.Adam(lr=1e-3))
    huge = lambda step, rng: (np.full((3, 5, 2), 1e30, np.float32), np.full((3, 1), 3e38, np.float32))  # noqa: E731
    with pytest.raises(NonFiniteLossError):
        trainer.fit(huge, 1)
    assert trainer.step == 0 and trainer.opt_state["step"] == 0


def test_save_refuses_non_finite_values(tmp_path):
    model = _regressor()
    path = checkpoint.save(tmp_path / "m.npz", model)
    saved = path.read_bytes()
    model.layers["head"].params = {**model.layers["head"].params, "bias": np.array([np.nan], np.float32)}
    with pytest.raises(gruxp.CheckpointError, match=r"non-finite values .*param/head.bias"):
        checkpoint.save(path, model)
    assert path.read_bytes() == saved and [p.name for p in tmp_path.iterdir()] == ["m.npz"]


# -- 2. narrow unsigned ids never wrap -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint64])
def test_narrow_integer_ids_and_targets(dtype):
    ids = np.array([[5]], dtype=dtype)
    emb = gruxp.Embedding(300, 2, seed=0, dtype="float64")
    _, tape = emb.forward(ids)
    grad = emb.backward(tape, np.ones((1, 1, 2)))[0]["weight"]
    assert np.flatnonzero(grad[:, 0]).tolist() == [5]  # not rows 5 and 261
    loss, d = losses.cross_entropy(np.zeros((1, 300)), np.array([5], dtype=dtype))
    assert abs(float(loss) - np.log(300)) < 1e-12
    assert np.flatnonzero(d[0] < 0).tolist() == [5]


def test_out_of_range_uint64_ids_are_refused():
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 300\)"):
        gruxp.Embedding(300, 2)(np.array([2**63 + 5], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        losses.cross_entropy(np.zeros((1, 3)), np.array([2**64 - 1], dtype=np.uint64))


# -- 4. shapes and dtypes that used to be accepted silently ---------------------------------------------
def test_gru_step_refuses_a_sequence():
    gru = gruxp.GRU(3, 4, seed=0)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 3\) or \(3,\) \(one time step"):
        gru.step(np.zeros((5, 2, 3), np.float32))
    out, h = gru.step(np.zeros((2, 3), np.float32))
    assert out.shape == (2, 4) and h.shape == (1, 2, 4)


@pytest.mark.parametrize("opt", [optim.SGD(lr=0.1, momentum=0.9), optim.Adam(), optim.AdamW()], ids=lambda o: type(o).__name__)
def test_optimizers_refuse_gradients_of_another_shape_or_dtype(opt):
    params = {"w": np.zeros((3, 1), np.float32)}
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"grads\['w'\] must have the parameter's shape \(3, 1\); got \(3, 4\)"):
        opt.step(params, {"w": np.ones((3, 4), np.float32)}, state)
    with pytest.raises(TypeError, match=r"grads\['w'\] must have the parameter's dtype float32; got float64"):
        opt.step(params, {"w": np.ones((3, 1), np.float64)}, state)
    new, _ = opt.step(params, {"w": np.ones((3, 1), np.float32)}, state)
    assert new["w"].shape == (3, 1) and new["w"].dtype == np.float32


def test_parameterless_layers_check_dy():
    last = gruxp.LastStep()
    _, tape = last.forward(np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\)"):
        last.backward(tape, np.ones((1, 3)))
    with pytest.raises(TypeError, match="dy must be an array; got None"):
        last.backward(tape, None)
    drop = gruxp.Dropout(0.5, seed=0)
    _, tape = drop.forward(np.ones((4, 2, 3)))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 2, 3\)"):
        drop.backward(tape, np.ones((1, 2, 3)))


def test_embedding_padding_idx_matches_torch():
    torch = pytest.importorskip("torch")
    from gruxp import interop

    ref = torch.nn.Embedding(6, 3, padding_idx=0, dtype=torch.float64)
    emb = interop.from_torch(ref, dtype="float64")
    assert emb.padding_idx == 0 and np.all(emb.state_dict(numpy=True)["weight"][0] == 0)
    ids = np.array([[0, 2, 0, 5]])
    y, tape = emb.forward(ids)
    dy = np.random.default_rng(0).standard_normal((1, 4, 3))
    ref(torch.from_numpy(ids)).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ref(torch.from_numpy(ids)).detach().numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(emb.backward(tape, dy)[0]["weight"], ref.weight.grad.numpy(), rtol=0, atol=1e-15)
    assert interop.to_torch(emb).padding_idx == 0
    assert gruxp.Embedding(6, 3, padding_idx=-1).padding_idx == 5
    with pytest.raises(ValueError, match="max_norm or scale_grad_by_freq"):
        interop.from_torch(torch.nn.Embedding(6, 3, max_norm=1.0))


def test_embedding_padding_idx_survives_a_checkpoint(tmp_path):
    model = gruxp.Sequential(embed=gruxp.Embedding(6, 3, padding_idx=2, seed=0), head=gruxp.Linear(3, 2, seed=1))
    rebuilt = checkpoint.build_model(checkpoint.load(checkpoint.save(tmp_path / "m.npz", model)))
    assert rebuilt.layers["embed"].padding_idx == 2


def test_gru_cell_errors():
    cell = gruxp.GRUCell(3, 4, seed=0)
    _, tape = cell.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="dh must be a real floating array of dtype float32; got None"):
        cell.backward(tape, None)
    with pytest.raises(ValueError, match="x must hold at least one sequence; got B=0"):
        cell(np.zeros((0, 3), np.float32))


# -- 8. a damaged checkpoint is always a CheckpointError ---------------------------------------------
def _rewrite(src: Path, dst: Path, *, meta=None, raw_meta: bytes | None = None, drop=(), compress=None, extra=None):
    """Copy a checkpoint, replacing its metadata, dropping or adding members, or changing compression."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            name = info.filename
            if name in drop:
                continue
            data = zin.read(name)
            if name == "__meta__.npy" and (meta is not None or raw_meta is not None):
                import io

                body = raw_meta if raw_meta is not None else json.dumps(meta).encode()
                buf = io.BytesIO()
                np.save(buf, np.frombuffer(body, np.uint8))
                data = buf.getvalue()
            zout.writestr(name, data, compress_type=compress or zipfile.ZIP_STORED)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


@pytest.fixture
def saved(tmp_path):
    model = _regressor("float64")
    trainer = gruxp.Trainer(model, losses.mse, optim.Adam(), checkpoint=tmp_path / "good.npz")
    trainer.fit(lambda s, r: _batch(s, r, np.float64), 1)
    return trainer.save(), json.loads(bytes(np.load(tmp_path / "good.npz")["__meta__"]).decode())


def _npy(shape_text: str) -> bytes:
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_text}, }}".ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\x00" * 16


@pytest.mark.parametrize(
    "damage",
    [
        "metadata a list",
        "metadata a string",
        "metadata null",
        "metadata NaN",
        "NaN inside",
        "no model",
        "no dtype",
        "no rng",
        "members an int",
        "deep nesting",
        "step negative",
        "bad dtype",
        "model config a number",
        "optimizer slots bad",
        "unknown bit generator",
        "compressed",
        "declared shape 1e13",
        "object dtype",
        "pickle",
    ],
)
def test_damaged_metadata_and_members_raise_checkpoint_error(saved, tmp_path, damage):
    path, meta = saved
    dst = tmp_path / "bad.npz"
    edits = {
        "metadata a list": dict(raw_meta=b"[1, 2]"),
        "metadata a string": dict(raw_meta=b'"hello"'),
        "metadata null": dict(raw_meta=b"null"),
        "metadata NaN": dict(raw_meta=b"NaN"),
        "NaN inside": dict(raw_meta=json.dumps({**meta, "step": "X"}).replace('"X"', "NaN").encode()),
        "no model": dict(meta={k: v for k, v in meta.items() if k != "model"}),
        "no dtype": dict(meta={k: v for k, v in meta.items() if k != "dtype"}),
        "no rng": dict(meta={k: v for k, v in meta.items() if k != "rng"}),
        "members an int": dict(meta={**meta, "members": 3}),
        "deep nesting": dict(raw_meta=b"[" * 100_000 + b"]" * 100_000),
        "step negative": dict(meta={**meta, "step": -1}),
        "bad dtype": dict(meta={**meta, "dtype": "float16"}),
        "model config a number": dict(meta={**meta, "model": {"type": "Sequential", "config": 5}}),
        "optimizer slots bad": dict(meta={**meta, "optimizer": {**meta["optimizer"], "slots": 7}}),
        "unknown bit generator": dict(meta={**meta, "rng": {**meta["rng"], "data": {"bit_generator": "os.system"}}}),
        "compressed": dict(compress=zipfile.ZIP_DEFLATED),
        "declared shape 1e13": dict(drop=("param/head.bias.npy",), extra={"param/head.bias.npy": _npy("(10000000000000,)")}),
        "object dtype": dict(
            drop=("param/head.bias.npy",), extra={"param/head.bias.npy": _npy("(1,)").replace(b"'<f8'", b"'|O' ")}
        ),
        "pickle": dict(drop=("param/head.bias.npy",), extra={"param/head.bias.npy": b"\x80\x04K\x01."}),
    }[damage]
    _rewrite(path, dst, **edits)
    with pytest.raises(gruxp.CheckpointError):
        ck = checkpoint.load(dst)
        # some damage only shows when the pieces are used: that must be a CheckpointError as well
        trainer = gruxp.Trainer(_regressor("float64"), losses.mse, optim.Adam(), checkpoint=dst)
        trainer.resume()
        checkpoint.build_model(ck)


def test_flipped_compression_field_and_renamed_npy(saved, tmp_path):
    path, _ = saved
    data = bytearray(path.read_bytes())
    central = bytes(data).index(b"PK\x01\x02")  # the first central directory entry
    data[central + 10] = 99  # its compression method: one zipfile cannot read (NotImplementedError)
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    with pytest.raises(gruxp.CheckpointError):
        checkpoint.load(tmp_path / "flipped.npz")
    np.save(tmp_path / "array.npy", np.ones(3))
    os.replace(tmp_path / "array.npy", tmp_path / "array.npz")
    with pytest.raises(gruxp.CheckpointError, match=r"is not a checkpoint.*starts b'\\x93NUM'"):
        checkpoint.load(tmp_path / "array.npz")


def test_trainer_resume_on_a_plain_checkpoint_says_why(tmp_path):
    model = _regressor()
    opt = optim.SGD(lr=0.1)
    path = checkpoint.save(tmp_path / "m.npz", model, optimizer=opt, opt_state=opt.init(model.params))
    trainer = gruxp.Trainer(_regressor(), losses.mse, opt)
    with pytest.raises(gruxp.CheckpointError, match="written by checkpoint.save, not by Trainer.save"):
        trainer.resume(path)


# -- 9. files: stale temporaries, symbolic links, no umask games -------------------------------------
def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    """A temporary is removed only when provably stale: its writer's lock is gone (a killed
    writer's never holds one); a live writer's locked temporary is left alone."""
    fcntl = pytest.importorskip("fcntl")
    model = _regressor()
    dead = tmp_path / f".m.npz.{os.getpid()}.deadbeef.tmp"  # this very process's PID: no PID guessing
    old_style = tmp_path / ".m.npz.k3j4h5.tmp"  # written by an earlier gruxp (mkstemp, no pid)
    live = tmp_path / f".m.npz.{2**22 + 12345}.cafe.tmp"  # a PID no process has: still a live writer, it holds the lock
    other = tmp_path / ".other.npz.1.x.tmp"  # another checkpoint's: left alone
    for f in (dead, old_style, live, other):
        f.write_bytes(b"half")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        checkpoint.save(tmp_path / "m.npz", model)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", live.name, other.name])
    checkpoint.save(tmp_path / "m.npz", model)  # its writer gone now: stale
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", other.name])


def _saves(path, count, offset):
    model = _regressor()
    for i in range(count):
        model.layers["head"].params = {k: np.full_like(v, offset + i) for k, v in model.layers["head"].params.items()}
        checkpoint.save(path, model, step=offset + i)


def test_concurrent_saves_to_one_path_all_succeed(tmp_path):
    """Two threads × 30 saves to one path: every save succeeds, the file is always one complete
    checkpoint (a reader in a third thread loads it throughout), and no temporary is left."""
    import threading

    path = tmp_path / "m.npz"
    checkpoint.save(path, _regressor())
    errors, loads, stop = [], [], threading.Event()

    def write(offset):
        try:
            _saves(path, 30, offset)
        except Exception as exc:  # noqa: BLE001  (collected, asserted empty below)
            errors.append(exc)

    def read():
        while not stop.is_set():
            ckpt = checkpoint.load(path)
            loads.append(float(ckpt.params["head.bias"][0]) == ckpt.meta["step"] or ckpt.meta["step"] == 0)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(k * 1000,)) for k in range(2)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert errors == [] and loads and all(loads)
    assert checkpoint.load(path).meta["step"] in (29, 1029)  # the last complete write won
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_concurrent_saves_from_separate_processes_all_succeed(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "m.npz"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_reliability import _saves; "
        f"_saves({str(path)!r}, 20, int(sys.argv[1]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k * 1000)], stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = [(p.communicate(timeout=300)[1], p.returncode) for p in procs]
    assert all(rc == 0 for _, rc in results), results
    assert checkpoint.load(path).meta["step"] in (19, 1019)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_saving_through_a_symbolic_link_keeps_the_link(tmp_path):
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "real.npz"
    checkpoint.save(target, _regressor())
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    model = _regressor()
    model.layers["head"].params = {k: v + 1 for k, v in model.layers["head"].params.items()}
    checkpoint.save(link, model)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(checkpoint.load(target).params["head.bias"], model.state_dict(numpy=True)["head.bias"])
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["real.npz"]


def test_save_neither_changes_the_umask_nor_calls_fchmod(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "umask", lambda *a: calls.append(("umask", a)) or 0o022)
    monkeypatch.setattr(os, "fchmod", lambda *a: calls.append(("fchmod", a)), raising=False)
    path = checkpoint.save(tmp_path / "m.npz", _regressor())
    assert calls == []
    assert path.stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask() -> int:
    import subprocess
    import sys

    return int(
        subprocess.run(
            [sys.executable, "-c", "import os; m = os.umask(0); print(m)"], capture_output=True, text=True, check=True
        ).stdout
    )


# -- 11. smaller ones ------------------------------------------------------------------------------------
def test_to_keeps_a_users_mt19937_generator():
    rng = np.random.Generator(np.random.MT19937(7))
    gru = gruxp.GRU(2, 3, seed=rng, dropout=0.5, num_layers=2)
    moved = gru.to(dtype="float64")
    assert type(moved.rng.bit_generator).__name__ == "MT19937"
    assert moved.rng.random() == gru.rng.random()  # the same stream position, two independent streams


def test_mt19937_rng_state_round_trips_through_a_checkpoint(tmp_path):
    model = gruxp.Sequential(gru=gruxp.GRU(2, 3, seed=np.random.Generator(np.random.MT19937(7))))
    rebuilt = checkpoint.build_model(checkpoint.load(checkpoint.save(tmp_path / "m.npz", model)))
    assert rebuilt.layers["gru"].rng.random() == model.layers["gru"].rng.random()


def test_sequential_to_shares_no_layer():
    model = gruxp.Sequential(gru=gruxp.GRU(2, 3, seed=0), drop=gruxp.Dropout(0.5, seed=1), last=gruxp.LastStep())
    copy = model.to(dtype="float64")
    assert all(copy.layers[n] is not model.layers[n] for n in model.layers)
    copy.eval()
    assert model.layers["drop"].training and not copy.layers["drop"].training
    copy.train()
    x = np.ones((50,))
    # the same stream position, but two streams: shared, the second draw would be a different mask
    np.testing.assert_array_equal(model.layers["drop"](x), copy.layers["drop"](x))


def test_small_api_errors():
    with pytest.raises(ValueError, match="batch_size must be an int >= 1; got 0"):
        stream_windows(np.arange(100), batch_size=0, window=5)
    with pytest.raises(ValueError, match="window must be an int >= 1; got 0"):
        stream_windows(np.arange(100), batch_size=2, window=0)
    with pytest.raises(ValueError, match="no layer with parameters"):
        _ = gruxp.Sequential(d=gruxp.Dropout()).xp
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 0; got -1"):
        gruxp.Trainer(_regressor(), losses.mse, optim.SGD(), checkpoint_every=-1)
    trainer = gruxp.Trainer(_regressor(), losses.mse, optim.SGD())
    with pytest.raises(TypeError, match="steps must be an int >= 0; got str '10'"):
        trainer.fit(_batch, "10")
    with pytest.raises(ValueError, match="time_budget must be a finite number"):
        trainer.fit(_batch, 10, time_budget=float("nan"))


def test_trainer_history_is_bounded():
    trainer = gruxp.Trainer(_regressor(), losses.mse, optim.SGD(lr=1e-3), history_size=3)
    trainer.fit(_batch, 5)
    assert [r["step"] for r in trainer.history] == [3, 4, 5]


# -- hostile checkpoints: the cost of refusing one is bounded by the file ----------------------------
def _rewrite_meta(path, change):
    """Rewrite a checkpoint's JSON metadata with ``change(meta)``, the arrays as they are."""
    import io

    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    meta = json.loads(bytes(np.load(path)["__meta__"]).decode())
    change(meta)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    members["__meta__.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _cost_of(code: str) -> tuple[float, float, str]:
    """(seconds, MiB of peak memory over the start, stderr) of ``code`` run in a fresh interpreter."""
    import subprocess
    import sys

    probe = (
        "import resource, time, gruxp\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; start = time.perf_counter()\n"
        f"{code}\n"
        "print(time.perf_counter() - start, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    seconds, mib = proc.stdout.split()[-2:]
    return float(seconds), float(mib), proc.stderr


REFUSE = (
    "try:\n    gruxp.checkpoint.build_model(gruxp.checkpoint.load({path!r}))\n    raise SystemExit('not refused')\n"
    "except gruxp.CheckpointError as exc:\n    import sys; print(exc, file=sys.stderr)"
)


def test_a_member_listed_many_times_is_refused_at_once(tmp_path):
    path = tmp_path / "m.npz"
    checkpoint.save(path, gruxp.GRU(512, 1024, seed=0))  # ~19 MB of parameters
    _rewrite_meta(path, lambda meta: meta.update(members=meta["members"][:1] * 1000))
    seconds, mib, err = _cost_of(REFUSE.format(path=str(path)))
    assert "each member named once" in err
    assert seconds < 1.0 and mib < 100, (seconds, mib)


@pytest.mark.parametrize("model", ["GRU", "language model"])
def test_a_config_larger_than_the_stored_arrays_is_refused_before_allocating(tmp_path, model):
    path = tmp_path / "m.npz"
    if model == "GRU":
        checkpoint.save(path, gruxp.GRU(4, 8, seed=0))
        _rewrite_meta(path, lambda meta: meta["model"]["config"].update(input_size=8000, hidden_size=8000))
    else:
        lm = gruxp.Sequential(
            embed=gruxp.Embedding(50, 8, seed=0),
            gru=gruxp.GRU(8, 16, 2, batch_first=True, seed=1),
            head=gruxp.Linear(16, 50, seed=2),
        )
        checkpoint.save(path, lm, extra={"task": "lm", "vocab": [chr(65 + i) for i in range(50)]})
        _rewrite_meta(path, lambda meta: meta["model"]["config"][1]["args"].update(hidden_size=10000))
    assert path.stat().st_size < 64 * 1024
    seconds, mib, err = _cost_of(REFUSE.format(path=str(path)))
    assert "do not fit its own model config" in err
    assert seconds < 1.0 and mib < 100, (seconds, mib)


# -- clearer errors ----------------------------------------------------------------------------------
def test_lengths_must_be_readable_values_and_are_reported_as_given():
    gru = gruxp.GRU(2, 3, seed=0)
    x = np.ones((4, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"got \[9223372036854775809\] at positions \[0\]"):
        gru(x, lengths=np.array([2**63 + 1, 3], dtype=np.uint64))  # not its wrapped int64 value
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="lengths must be concrete host values.*on device 'meta'"):
        gru(x, lengths=torch.tensor([4, 3], device="meta"))


def test_lengths_traced_by_jax_jit_build_the_mask_in_the_program():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    model = gruxp.GRU(2, 3, 2, bidirectional=True, xp=jnp, dtype="float64", seed=0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3, 2)))
    lengths = np.array([5, 2, 1])
    eager = gruxp.functional.gru(model.params, x, lengths=lengths, num_layers=2, bidirectional=True)
    jitted = jax.jit(lambda p, x, n: gruxp.functional.gru(p, x, lengths=n, num_layers=2, bidirectional=True))
    for a, b in zip(jitted(model.params, x, jnp.asarray(lengths)), eager, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\)"):
        jitted(model.params, x, jnp.asarray([5, 2]))


def test_float_weights_from_an_integer_dtype_are_refused(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    gru = gruxp.GRU(2, 3, seed=0)
    state = gru.state_dict(numpy=True)
    path = tmp_path / "gru.safetensors"
    safetensors_numpy.save_file({k: v.view(np.int32) for k, v in state.items()}, str(path))  # the header says I32
    with pytest.raises(TypeError, match="'weight_ih_l0' must be a floating-point array.*got dtype int32"):
        gru.load_state_dict(gruxp.interop.load_safetensors(path))
    np.testing.assert_array_equal(gru.state_dict(numpy=True)["weight_ih_l0"], state["weight_ih_l0"])  # nothing changed


@pytest.mark.skip_on(jax="JAX arrays are immutable: nothing can be edited")
@pytest.mark.parametrize("fast", [True, False], ids=["routes", "generic"])
@pytest.mark.parametrize(
    "case", [dict(), dict(bidirectional=True, num_layers=2), dict(batch_first=True)], ids=["uni", "bi2", "bf"]
)
def test_editing_out_x_or_h0_between_forward_and_backward_changes_no_gradient(backend, case, fast):
    """The tape keeps its own copies of x, h0 and the states: the caller's arrays are theirs to edit."""
    gru = gruxp.GRU(3, 4, seed=0, xp=backend.xp, device=backend.device, dtype="float64", **case)
    rng = np.random.default_rng(0)
    shape = (5, 2, 3) if not case.get("batch_first") else (2, 5, 3)
    LD = 2 * case.get("num_layers", 1) if case.get("bidirectional") else case.get("num_layers", 1)
    host_x, host_h0 = rng.standard_normal(shape), rng.standard_normal((LD, 2, 4))
    with gruxp.config_context(fast_routes=fast):
        out, _, tape = gru.forward(backend.asarray(host_x), backend.asarray(host_h0))
        d_out = backend.asarray(rng.standard_normal(tuple(out.shape)))
        want = gru.backward(tape, d_out)
        x, h0 = backend.asarray(host_x), backend.asarray(host_h0)
        out, _, tape = gru.forward(x, h0)
        out[...] = 1.0  # the caller edits everything it holds
        x[...] = 0.0
        h0[...] = 5.0
        got = gru.backward(tape, d_out)
    for a, b in zip([*got[0].values(), got[1], got[2]], [*want[0].values(), want[1], want[2]], strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
