"""The gruxp command, end to end, in subprocesses with tiny settings."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("click")
pytest.importorskip("tqdm")

import gruxp  # noqa: E402

TINY = ["--hidden", "8", "--layers", "1", "--embed", "4", "--batch", "4", "--seq-len", "16", "--eval-every", "2"]
TEXT = ("def add(a, b):\n    return a + b\n\n" * 40) + "class Point:\n    x: int = 0\n" * 20


def gruxp_cmd(*args, cwd, timeout=300, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:gruxp"}
    proc = subprocess.run([sys.executable, "-m", "gruxp", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"gruxp {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gruxp: error: ") and "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny language model, trained 4 steps, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("cli")
    (root / "code.py").write_text(TEXT)
    gruxp_cmd("train", "--data", "code.py", "--steps", 4, *TINY, "--out", "run", cwd=root)
    return root


def test_train_writes_checkpoint_metrics_and_plot(trained):
    run = trained / "run"
    assert (run / "checkpoint.npz").is_file() and (run / "loss.png").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(float(r["chars_per_s"]) > 0 and np.isfinite(float(r["valid"])) for r in rows)
    ckpt = gruxp.checkpoint.load(run / "checkpoint.npz")
    assert ckpt.meta["step"] == 4 and ckpt.meta["extra"]["task"] == "lm" and "\n" in ckpt.meta["extra"]["vocab"]


def test_train_resume_continues(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "code.py").write_text(TEXT)
    proc = gruxp_cmd("train", "--resume", "--steps", 6, "--eval-every", 2, "--out", "run", cwd=tmp_path)
    assert "step 6:" in proc.stdout
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert gruxp.checkpoint.load(tmp_path / "run" / "checkpoint.npz").meta["step"] == 6


def test_sample_and_eval(trained):
    proc = gruxp_cmd("sample", "run/checkpoint.npz", "--length", 50, "--prime", "def ", "--seed", 1, cwd=trained)
    assert proc.stdout.startswith("def ") and len(proc.stdout.rstrip("\n")) >= 40
    again = gruxp_cmd("sample", "run/checkpoint.npz", "--length", 50, "--prime", "def ", "--seed", 1, cwd=trained)
    assert again.stdout == proc.stdout  # seeded
    proc = gruxp_cmd("eval", "run/checkpoint.npz", "--data", "code.py", cwd=trained)
    assert "bits/char" in proc.stdout and "nats/char" in proc.stdout


def test_default_corpus_is_the_standard_library(tmp_path):
    proc = gruxp_cmd("train", "--steps", 2, *TINY, "--out", "run", cwd=tmp_path)
    assert "standard library sources" in proc.stdout and "unigram baseline" in proc.stdout


@pytest.mark.parametrize("task, baseline", [("adding", "0.1667 MSE"), ("copy", "nats/step")])
def test_synthetic_tasks(tmp_path, task, baseline):
    proc = gruxp_cmd("train", "--task", task, "--steps", 3, "--seq-len", 10, "--hidden", 8, "--layers", 1,
                     "--batch", 8, "--eval-every", 3, "--out", "run", cwd=tmp_path)
    assert baseline in proc.stdout and "done: 3 steps" in proc.stdout


def test_info_and_bench(tmp_path):
    proc = gruxp_cmd("info", cwd=tmp_path)
    for name in ("numpy: installed", "array_api_strict:", "torch:", "jax:", "cupy:", "numpy BLAS:"):
        assert name in proc.stdout
    proc = gruxp_cmd("bench", "--backends", "numpy", "--batch", 2, "--seq-len", 5, "--hidden", 8, "--rounds", 1, cwd=tmp_path)
    assert "| numpy | forward |" in proc.stdout and "| numpy | forward+backward |" in proc.stdout


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    (tmp_path / "code.py").write_text(TEXT * 5)
    proc = subprocess.Popen([sys.executable, "-m", "gruxp", "train", "--data", "code.py", "--time-budget", "120",
                             *TINY, "--eval-every", "1000", "--out", "run"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # wait until training runs (the model line is printed before the loop)
            time.sleep(0.05)
            if proc.poll() is not None:
                break
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "interrupted at step" in out and "Traceback" not in err
    ckpt = gruxp.checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    assert ckpt.meta["step"] >= 1


# -- bad input: one line on stderr, non-zero status, no traceback, no damaged checkpoint ----------
def test_missing_and_empty_data(tmp_path):
    assert_one_line_error(gruxp_cmd("train", "--data", "nope.txt", "--out", "a", cwd=tmp_path, check=False), "does not exist")
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(gruxp_cmd("train", "--data", "empty.txt", "--out", "b", cwd=tmp_path, check=False), "is empty")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "image.bin").write_bytes(b"\x00\x01")
    assert_one_line_error(gruxp_cmd("train", "--data", "folder", "--out", "c", cwd=tmp_path, check=False), "holds no text files")
    (tmp_path / "short.txt").write_text("abc")
    assert_one_line_error(gruxp_cmd("train", "--data", "short.txt", "--out", "d", cwd=tmp_path, check=False), "needs at least")


def test_unreadable_data_file(tmp_path):
    """A file whose read fails: mode 000 for ordinary users; for root (whom modes do not stop, as
    in CI) a link to /proc/self/mem, whose first page cannot be read (EIO)."""
    target = tmp_path / "secret.txt"
    target.write_text(TEXT)
    target.chmod(0)
    if os.access(target, os.R_OK):
        if not Path("/proc/self/mem").exists():
            pytest.skip("root without /proc: no file here refuses to be read")
        target.unlink()
        target.symlink_to("/proc/self/mem")
    assert_one_line_error(gruxp_cmd("train", "--data", "secret.txt", "--out", "a", cwd=tmp_path, check=False), "cannot read")


@pytest.mark.parametrize(
    "args, fragment",
    [(["--backend", "tensorflow"], "Invalid value for '--backend'"),
     (["--lr", "-1"], "Invalid value for '--lr'"),
     (["--batch", "0"], "Invalid value for '--batch'"),
     (["--steps", "ten"], "Invalid value for '--steps'"),
     (["--dropout", "1.5"], "Invalid value for '--dropout'"),
     (["--backend", "numpy", "--device", "cuda:0"], "numpy runs on the CPU only")],
)
def test_invalid_options(tmp_path, args, fragment):
    assert_one_line_error(gruxp_cmd("train", *args, "--out", "x", cwd=tmp_path, check=False), fragment)


def test_backend_not_installed_or_without_gpu(tmp_path):
    try:
        import cupy  # noqa: F401

        fragment = "no CUDA device"
    except ImportError:
        fragment = "not installed"
    except Exception:  # cupy installed without a driver
        fragment = "no CUDA device"
    proc = gruxp_cmd("train", "--backend", "cupy", "--steps", 1, "--out", "x", cwd=tmp_path, check=False)
    if proc.returncode == 0:
        pytest.skip("a CUDA device is available here")
    assert_one_line_error(proc, "cupy")
    assert fragment in proc.stderr


def test_checkpoints_are_never_damaged(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "code.py").write_text(TEXT)
    ckpt = tmp_path / "run" / "checkpoint.npz"
    before = ckpt.read_bytes()
    # training into a folder with a checkpoint, without --resume
    assert_one_line_error(gruxp_cmd("train", "--data", "code.py", "--steps", 2, "--out", "run", cwd=tmp_path, check=False), "--resume")
    # resuming with another model size
    assert_one_line_error(gruxp_cmd("train", "--resume", "--hidden", 32, "--steps", 8, "--out", "run", cwd=tmp_path, check=False),
                          "--hidden 32 differs from the checkpoint's 8")
    # a checkpoint of another kind of model
    gruxp_cmd("train", "--task", "adding", "--steps", 1, "--seq-len", 6, "--hidden", 4, "--layers", 1, "--batch", 4,
              "--eval-every", 1, "--out", "adding", cwd=tmp_path)
    for cmd in (["sample", "adding/checkpoint.npz"], ["eval", "adding/checkpoint.npz", "--data", "code.py"]):
        assert_one_line_error(gruxp_cmd(*cmd, cwd=tmp_path, check=False), "not a language model")
    # truncated and corrupted checkpoints, and a missing one
    (tmp_path / "half.npz").write_bytes(before[: len(before) // 2])
    assert_one_line_error(gruxp_cmd("sample", "half.npz", cwd=tmp_path, check=False), "truncated or corrupted")
    assert_one_line_error(gruxp_cmd("eval", "missing.npz", "--data", "code.py", cwd=tmp_path, check=False), "does not exist")
    (tmp_path / "junk.npz").write_text("not a zip")
    assert_one_line_error(gruxp_cmd("sample", "junk.npz", cwd=tmp_path, check=False), "truncated or corrupted")
    assert_one_line_error(gruxp_cmd("sample", "run/checkpoint.npz", "--temperature", "0", cwd=tmp_path, check=False), "--temperature")
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.npz", "loss.png", "metrics.csv"]


def test_import_gruxp_does_not_import_the_cli():
    code = "import sys, gruxp; print([m for m in ('click', 'tqdm', 'matplotlib') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
