"""Reliability and first contact, fourth round: lossless text input, options never ignored, one answer
per model whatever the route, clear words at every door. Each test failed on the commit before it."""

import codecs
import sys
import types

import numpy as np
import pytest

import gruxp
from gruxp.testing import to_numpy

pytest.importorskip("click")
from gruxp.cli import corpus  # noqa: E402


def run_cli(capsys, *args):
    """``gruxp ARGS`` in this process: (exit status, stdout, stderr)."""
    from gruxp.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *fragments):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("gruxp: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


GREETING = "Grüße aus Köln, café, naïve, 東京\n"


# -- 1. text is read as the user reads it, or refused ---------------------------------------------------
def test_a_stray_latin1_byte_in_utf8_is_refused_with_its_offset(tmp_path):
    body = (GREETING * 50).encode()
    bad = body[:1000] + b"\xe9" + body[1000:]  # one Latin-1 é in otherwise UTF-8 text
    (tmp_path / "mixed.txt").write_bytes(bad)
    with pytest.raises(corpus.CorpusError, match=r"not valid utf-8 text: byte 1,000 \(b'\\xe9'\).*--encoding latin-1"):
        corpus.build(str(tmp_path / "mixed.txt"))


def test_a_cap_cuts_on_a_character_boundary_and_says_so(tmp_path):
    text = GREETING * 400
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    raw = text.encode()
    cap = next(n for n in range(5000, 6000) if (raw[n] & 0xC0) == 0x80)  # a cap inside a character
    got = corpus.build(str(tmp_path / "big.txt"), max_bytes=cap)
    kept = raw[:cap].decode("utf-8", errors="ignore")
    assert "".join(got.vocab[i] for i in np.concatenate([got.train, got.valid])) == kept
    assert "Ã" not in got.vocab and corpus.UNKNOWN not in kept
    note = "; ".join(got.notes)
    assert f"the first {len(kept.encode()):,} of its {len(raw):,} bytes" in note and "--max-bytes" in note


@pytest.mark.parametrize("codec", ["utf-16", "utf-8-sig", "utf-32"])
def test_a_byte_order_mark_names_the_encoding(tmp_path, codec):
    (tmp_path / "bom.txt").write_bytes((GREETING * 20).encode(codec))
    got = corpus.build(str(tmp_path / "bom.txt"))
    assert set(got.vocab) - {corpus.UNKNOWN} == set(GREETING) and got.notes[0] == codecs.lookup(codec).name


def test_encoding_option_decodes_latin1_and_refuses_unknown_names(tmp_path):
    (tmp_path / "latin.txt").write_bytes((GREETING.replace("東京", "") * 30).encode("latin-1"))
    with pytest.raises(corpus.CorpusError, match="not valid utf-8"):
        corpus.build(str(tmp_path / "latin.txt"))
    got = corpus.build(str(tmp_path / "latin.txt"), encoding="latin-1")
    assert {"ü", "ß", "é", "ï"} <= set(got.vocab) and got.notes[0] == "iso8859-1"
    with pytest.raises(corpus.CorpusError, match="--encoding 'klingon' is not an encoding Python knows"):
        corpus.build(str(tmp_path / "latin.txt"), encoding="klingon")


def test_a_folder_counts_the_files_it_could_not_read(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n" * 200)
    (tmp_path / "b.py").write_bytes("y = 'é'\n".encode("latin-1") * 100)
    got = corpus.build(str(tmp_path))
    assert "1 file(s) skipped, not readable as utf-8" in "; ".join(got.notes) and "é" not in got.vocab


def test_the_corpus_line_says_how_the_text_was_read(tmp_path, capsys):
    (tmp_path / "latin.txt").write_bytes(("Grüße aus Köln\n" * 300).encode("latin-1"))
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "train", "--data", tmp_path / "latin.txt", "--encoding", "latin-1", "--max-bytes", 2000, "--steps", 1,
        "--hidden", 8, "--layers", 1, "--embed", 4, "--batch", 2, "--seq-len", 8, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    line = next(ln for ln in stdout.splitlines() if ln.startswith("corpus:"))
    assert "read as iso8859-1; the first 2,000 of its 4,500 bytes (cut at --max-bytes 2,000" in line, line
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "latin.txt", "--steps", 1, "--out", tmp_path / "x")
    one_line_error(code, err, "is not valid utf-8 text: byte 2", "--encoding latin-1")


# -- 2. every option applied, or refused for that mode ----------------------------------------------------
STRUCTURE = {"hidden": 6, "layers": 2, "embed": 3, "dropout": 0.25, "seq_len": 6, "batch": 3, "lr": 0.01, "clip": 0.5}


@pytest.mark.parametrize("task", ["lm", "adding", "copy"])
@pytest.mark.parametrize("cell", ["gru", "lngru", "mingru"])
def test_every_option_is_applied_and_recorded_as_applied(tmp_path, capsys, task, cell):
    (tmp_path / "code.py").write_text("def f(x):\n    return x + 1\n" * 60)
    given = dict(STRUCTURE, cell=cell, zoneout=0.2 if cell == "lngru" else 0.0, dtype="float64")
    if task == "adding":
        del given["embed"]
    args = ["train", "--task", task, "--steps", 2, "--seed", 4, "--out", tmp_path / "run"]
    args += ["--data", tmp_path / "code.py"] if task == "lm" else []
    for name, value in given.items():
        if name != "zoneout" or value:
            args += ["--" + name.replace("_", "-"), value]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    ckpt = gruxp.checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    recorded = ckpt.meta["extra"]["options"]
    assert recorded == {**given, "zoneout": given["zoneout"]}, recorded
    model = gruxp.checkpoint.build_model(ckpt)
    layer = model.layers["gru"]
    assert type(layer) is gruxp.models.CELLS[cell]
    assert (layer.hidden_size, layer.num_layers, layer.dropout) == (6, 2, 0.25)
    assert getattr(layer, "zoneout", 0.0) == given["zoneout"] and layer.dtype == layer.xp.float64
    if "embed" in given:
        assert model.layers["embed"].embedding_dim == 3 and layer.input_size == 3
    assert ckpt.meta["optimizer"]["config"]["lr"] == 0.01
    assert ckpt.meta["extra"].get("reading", {}).get("encoding") is None


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--task", "adding", "--data", "x.txt"], "--data is an option of --task lm"),
        (["--task", "copy", "--encoding", "latin-1"], "--encoding is an option of --task lm"),
        (["--task", "copy", "--max-bytes", "100"], "--max-bytes is an option of --task lm"),
        (["--task", "adding", "--sample-every", "5"], "--sample-every is an option of --task lm"),
        (["--task", "adding", "--embed", "8"], "--embed is not an option of --task adding"),
        (["--dropout", "0.5", "--layers", "1"], "--dropout acts between recurrent layers"),
        (["--task", "copy", "--dropout", "0.5", "--layers", "1"], "it needs --layers 2 or more"),
        (["--cell", "gru", "--zoneout", "0.1"], "--zoneout is an option of --cell lngru"),
    ],
)
def test_an_option_that_would_not_apply_is_refused(tmp_path, capsys, args, fragment):
    code, _, err = run_cli(capsys, "train", *args, "--steps", 1, "--out", tmp_path / "run")
    one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_new_seed_or_clip(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--task", "adding", "--steps", 1, "--hidden", 4, "--layers", 1, "--out", out)
    assert code == 0, err
    for args, fragment in ((["--seed", 3], "--seed is not an option of --resume"), (["--clip", 0.1], "--clip 0.1 differs")):
        code, _, err = run_cli(capsys, "train", "--task", "adding", "--resume", "--steps", 2, *args, "--out", out)
        one_line_error(code, err, fragment)


# -- 3. one answer per model, whatever the entry point, route or backend ----------------------------------
def test_a_negative_h0_of_a_log_space_mingru_is_refused_everywhere(backend):
    model = gruxp.MinGRU(3, 4, 2, log_space=True, xp=backend.xp, device=backend.device, dtype="float64", seed=0)
    x = backend.asarray(np.ones((5, 2, 3)))
    h0 = backend.asarray(-np.ones((2, 2, 4)))
    message = "h0 must be non-negative for a log-space minGRU"
    calls = {
        "call": lambda: model(x, h0),
        "forward": lambda: model.forward(x, h0),
        "step": lambda: model.step(x[0, ...], h0),
        "functional": lambda: gruxp.functional.mingru(model.params, x, h0, num_layers=2, log_space=True),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=message):
            call()
        with gruxp.config_context(fast_routes=False), pytest.raises(ValueError, match=message):  # the generic route too
            call()


def test_under_jit_a_negative_h0_and_lengths_out_of_range_give_nan_never_a_plausible_answer():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    model = gruxp.MinGRU(3, 4, log_space=True, xp=jnp, dtype="float64", seed=0)
    h0 = jnp.asarray(np.stack([-np.ones((2, 4)), np.ones((2, 4))], axis=1)[0][None])  # sequence 0 negative
    out, h_n = jax.jit(lambda x, h: model(x, h))(jnp.ones((5, 2, 3)), h0)
    assert np.isnan(to_numpy(h_n)[0, 0]).all() and np.isfinite(to_numpy(h_n)[0, 1]).all()

    gru = gruxp.GRU(3, 4, xp=jnp, dtype="float64", seed=0)
    run = jax.jit(lambda x, lengths: gru(x, lengths=lengths))
    x = jnp.ones((5, 4, 3))
    out, h_n = run(x, jnp.asarray([5, 0, 9, 2]))
    bad = np.isnan(to_numpy(h_n)[0]).all(axis=-1)
    assert bad.tolist() == [False, True, True, False]
    want_out, want_h = gru(x[:, [0, 3]], lengths=[5, 2])
    np.testing.assert_allclose(to_numpy(h_n)[0, [0, 3]], to_numpy(want_h)[0], rtol=1e-12)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\]"):
        gru(x, lengths=jnp.asarray([5, 0, 9, 2]))  # outside jit: the values are read, and refused
    last = jax.jit(lambda y, lengths: gruxp.LastStep()(y, lengths=lengths))(out, jnp.asarray([5, 0, 9, 2]))
    assert np.isnan(to_numpy(last)).all(axis=-1).tolist() == [False, True, True, False]


# -- 5, 7. devices a backend cannot take, and CuPy without a GPU -------------------------------------------
def test_cupy_without_a_usable_gpu_is_one_clear_line(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.asarray, fake.float32 = None, "float32"

    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version\nmore")

    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(gruxp.DeviceError) as info:
        gruxp.GRU(3, 4, xp=fake)
    message = str(info.value)
    assert "\n" not in message and "cudaErrorInsufficientDriver" in message and "xp=numpy" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


def test_a_device_numpy_cannot_take_says_what_to_do():
    with pytest.raises(gruxp.DeviceError, match=r"device 'cuda' is not usable with numpy .*for a GPU use xp=cupy"):
        gruxp.GRU(3, 4, device="cuda")


def test_cli_words_for_a_gpu_that_is_not_there_and_files_that_are_not_checkpoints(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        code, _, err = run_cli(capsys, "train", "--backend", "torch", "--device", "cuda", "--steps", 1, "--out", tmp_path / "r")
        one_line_error(code, err, "sees no CUDA device", "leave out --device")
    (tmp_path / "metrics.csv").write_text("step,seconds\n1,0.5\n")
    code, _, err = run_cli(capsys, "sample", tmp_path / "metrics.csv")
    one_line_error(code, err, "is not a checkpoint", ".npz")


def test_sample_without_an_argument_uses_the_default_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "sample")
    one_line_error(code, err, "none at gruxp-run/checkpoint.npz", "gruxp train")
    (tmp_path / "code.py").write_text("def f(x):\n    return x + 1\n" * 60)
    code, _, err = run_cli(capsys, "train", "--data", "code.py", "--steps", 1, "--hidden", 8, "--layers", 1, "--seq-len", 8)
    assert code == 0, err
    code, out, err = run_cli(capsys, "sample", "--length", 10, "--prime", "def")
    assert code == 0 and out.startswith("def") and len(out.rstrip("\n")) >= 10, err


# -- 6. layouts agree -----------------------------------------------------------------------------------
def test_sequential_refuses_layers_that_disagree_on_the_time_axis():
    with pytest.raises(ValueError, match=r"layer 'last' reads \(T, B, ·\) with batch_first=False, but layer 'gru'"):
        gruxp.Sequential(gru=gruxp.GRU(3, 4, batch_first=True), last=gruxp.LastStep(), head=gruxp.Linear(4, 1))
    with pytest.raises(ValueError, match="layer 'b' reads"):
        gruxp.Sequential(a=gruxp.GRU(3, 4, batch_first=True), d=gruxp.Dropout(0.1), b=gruxp.GRU(4, 4))
    gruxp.Sequential(gru=gruxp.GRU(3, 4, batch_first=True), last=gruxp.LastStep(batch_first=True), head=gruxp.Linear(4, 1))


# -- 8. what a newcomer reads first -------------------------------------------------------------------------
def test_the_api_entries_named_in_the_issue_have_descriptions():
    assert gruxp.checkpoint.set_rng_states.__doc__ and gruxp.interop.torch_to_keras_gates.__doc__
    w = np.arange(6.0)[:, None]
    np.testing.assert_array_equal(gruxp.interop.torch_to_keras_gates(w, 2)[:, 0], [2, 3, 0, 1, 4, 5])


def test_readme_and_guide_agree_on_installing_torch_and_say_how_to_get_array_api_strict():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme, guide = (root / "README.md").read_text(), (root / "docs/user-guide/index.md").read_text()
    for page in (readme, guide):
        assert "--index-url https://download.pytorch.org/whl/cpu" in page and "torch==2.13.0" in page
        assert "pip install array-api-strict" in page
    assert "lies on disk" not in guide
    assert "gruxp.jax.init" in readme and "pip install" in (root / "docs/index.md").read_text()
