"""The gruxp command, end to end, in subprocesses with tiny settings."""

import csv
import importlib.util
import os
import re
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

TINY = [
    "--hidden",
    "8",
    "--layers",
    "1",
    "--embed",
    "4",
    "--batch",
    "4",
    "--seq-len",
    "16",
    "--eval-every",
    "2",
]  # strings: Popen's args
TEXT = ("def add(a, b):\n    return a + b\n\n" * 40) + "class Point:\n    x: int = 0\n" * 20


def gruxp_cmd(*args, cwd, timeout=300, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:gruxp"}
    proc = subprocess.run(
        [sys.executable, "-m", "gruxp", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
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
    proc = gruxp_cmd(
        "train",
        "--task",
        task,
        "--steps",
        3,
        "--seq-len",
        10,
        "--hidden",
        8,
        "--layers",
        1,
        "--batch",
        8,
        "--eval-every",
        3,
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert baseline in proc.stdout and "done: 3 steps" in proc.stdout


def test_info_and_bench(tmp_path):
    proc = gruxp_cmd("info", cwd=tmp_path)
    for name in ("numpy: installed", "array_api_strict:", "torch:", "jax:", "cupy:", "numpy BLAS:", "CPU step: "):
        assert name in proc.stdout
    step = next(ln for ln in proc.stdout.splitlines() if ln.startswith("CPU step: "))
    assert ("fused by numba" in step) == (importlib.util.find_spec("numba") is not None), step
    proc = gruxp_cmd("bench", "--backends", "numpy", "--batch", 2, "--seq-len", 5, "--hidden", 8, "--rounds", 1, cwd=tmp_path)
    assert "| numpy | forward |" in proc.stdout and "| numpy | forward+backward |" in proc.stdout


def _start(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gruxp", *map(str, args)],
        cwd=cwd,
        text=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_line(proc, fragment, timeout=120):
    """Read stdout until a line holds ``fragment`` (the run's own word that it got there); no fixed sleeps."""
    import selectors

    seen, deadline = [], time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                line = proc.stdout.readline()
                if not line:
                    break
                seen.append(line)
                if fragment in line:
                    return seen
    raise AssertionError(f"{fragment!r} never appeared; stdout so far: {''.join(seen)!r}")


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("when", ["before the first evaluation", "while evaluating and plotting"])
def test_a_signal_saves_everything_and_exits_cleanly(tmp_path, signame, when):
    """Ctrl-C (or SIGTERM) between steps, inside a sample or inside a plot: always saved, exit 0, and
    metrics.csv and loss.png are written even when no evaluation had run yet."""
    (tmp_path / "code.py").write_text(TEXT * 5)
    period = ["--eval-every", 1000, "--sample-every", 1] if when.startswith("before") else ["--eval-every", 1]
    proc = _start(["train", "--data", "code.py", "--time-budget", 120, *TINY, *period, "--out", "run"], tmp_path)
    try:
        _wait_for_line(proc, "--- sample at step 1" if when.startswith("before") else "step 2: train")
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err
    assert f"interrupted by {signame} at step" in out and "Traceback" not in err and "Exception ignored" not in err
    step = gruxp.checkpoint.load(tmp_path / "run" / "checkpoint.npz").meta["step"]
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert step >= 1 and int(rows[-1]["step"]) == step and (tmp_path / "run" / "loss.png").is_file()


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
    [
        (["--backend", "tensorflow"], "Invalid value for '--backend'"),
        (["--lr", "-1"], "Invalid value for '--lr'"),
        (["--batch", "0"], "Invalid value for '--batch'"),
        (["--steps", "ten"], "Invalid value for '--steps'"),
        (["--dropout", "1.5"], "Invalid value for '--dropout'"),
        (["--backend", "numpy", "--device", "cuda:0"], "numpy runs on the CPU only"),
    ],
)
def test_invalid_options(tmp_path, args, fragment):
    assert_one_line_error(gruxp_cmd("train", *args, "--out", "x", cwd=tmp_path, check=False), fragment)


def test_backend_not_installed_or_without_gpu(tmp_path):
    try:
        import cupy  # noqa: F401

        fragment = "CUDA GPU"
    except ImportError:
        fragment = "not installed"
    except Exception:  # cupy installed without a driver
        fragment = "CUDA GPU"
    proc = gruxp_cmd("train", "--backend", "cupy", "--steps", 1, "--out", "x", cwd=tmp_path, check=False)
    if proc.returncode == 0:
        pytest.skip("a CUDA device is available here")
    assert_one_line_error(proc, "cupy")
    assert fragment in proc.stderr
    if fragment == "not installed":  # gruxp installs from its clone: the hint says so
        assert 'pip install ".[cuda12]" or ".[cuda13]" in the clone of gruxp' in proc.stderr


def test_checkpoints_are_never_damaged(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "code.py").write_text(TEXT)
    ckpt = tmp_path / "run" / "checkpoint.npz"
    before = ckpt.read_bytes()
    # training into a folder with a checkpoint, without --resume
    assert_one_line_error(
        gruxp_cmd("train", "--data", "code.py", "--steps", 2, "--out", "run", cwd=tmp_path, check=False), "--resume"
    )
    # resuming with another model size
    assert_one_line_error(
        gruxp_cmd("train", "--resume", "--hidden", 32, "--steps", 8, "--out", "run", cwd=tmp_path, check=False),
        "--hidden 32 differs from the checkpoint's 8",
    )
    # a checkpoint of another kind of model
    gruxp_cmd(
        "train",
        "--task",
        "adding",
        "--steps",
        1,
        "--seq-len",
        6,
        "--hidden",
        4,
        "--layers",
        1,
        "--batch",
        4,
        "--eval-every",
        1,
        "--out",
        "adding",
        cwd=tmp_path,
    )
    for cmd in (["sample", "adding/checkpoint.npz"], ["eval", "adding/checkpoint.npz", "--data", "code.py"]):
        assert_one_line_error(gruxp_cmd(*cmd, cwd=tmp_path, check=False), "not a language model")
    # truncated and corrupted checkpoints, and a missing one
    (tmp_path / "half.npz").write_bytes(before[: len(before) // 2])
    assert_one_line_error(gruxp_cmd("sample", "half.npz", cwd=tmp_path, check=False), "truncated or corrupted")
    assert_one_line_error(gruxp_cmd("eval", "missing.npz", "--data", "code.py", cwd=tmp_path, check=False), "does not exist")
    (tmp_path / "junk.npz").write_text("not a zip")
    assert_one_line_error(gruxp_cmd("sample", "junk.npz", cwd=tmp_path, check=False), "is not a checkpoint")
    assert_one_line_error(
        gruxp_cmd("sample", "run/checkpoint.npz", "--temperature", "0", cwd=tmp_path, check=False), "--temperature"
    )
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.npz", "loss.png", "metrics.csv"]


def test_import_gruxp_does_not_import_the_cli():
    code = "import sys, gruxp; print([m for m in ('click', 'tqdm', 'matplotlib') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- issue 15: the adversarial sweep's findings, as a user or an attacker triggers them ------------------
def test_a_diverging_run_ends_with_one_line_and_no_folder(tmp_path):
    proc = gruxp_cmd(
        "train",
        "--task",
        "adding",
        "--lr",
        "1e38",
        "--eval-every",
        1,
        "--steps",
        5,
        "--seq-len",
        6,
        "--hidden",
        4,
        "--layers",
        1,
        "--batch",
        4,
        "--out",
        "run",
        cwd=tmp_path,
        check=False,
    )
    assert_one_line_error(proc, "NonFiniteLossError", "inf or NaN")
    assert "RuntimeWarning" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_diverging_resume_keeps_the_good_checkpoint(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "code.py").write_text(TEXT)
    before = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    ckpt = gruxp.checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    # poison the saved optimizer so that the next update overflows
    state = {
        slot: {k: np.full_like(v, 1e38 if slot == "exp_avg" else 1e-38) for k, v in arrays.items()}
        for slot, arrays in ckpt.optim.items()
    }
    model = gruxp.checkpoint.build_model(ckpt)
    opt = gruxp.training.optimizer_from_checkpoint(ckpt)
    gruxp.checkpoint.save(
        tmp_path / "run" / "checkpoint.npz",
        model,
        optimizer=opt,
        opt_state={**ckpt.meta["optimizer"]["scalars"], **state},
        step=ckpt.meta["step"],
        carry=ckpt.carry,
        rngs={k: v for k, v in ckpt.meta["rng"].items() if k != "model"},
        extra=ckpt.meta["extra"],
    )
    poisoned = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    proc = gruxp_cmd("train", "--resume", "--steps", 8, "--eval-every", 1, "--out", "run", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "inf or NaN", "was kept")
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == poisoned != before


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--time-budget", "nan"],
        ["train", "--time-budget", "inf"],
        ["train", "--lr", "nan"],
        ["train", "--clip", "inf"],
        ["train", "--dropout", "nan"],
        ["sample", "x.npz", "--temperature", "nan"],
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, args):
    assert_one_line_error(gruxp_cmd(*args, cwd=tmp_path, check=False), "is not a finite number")
    assert not (tmp_path / "gruxp-run").exists()


def test_eval_scores_the_text_as_it_is(trained, tmp_path):
    text = ("x = 1\n" * 4000)[:20_000]
    (tmp_path / "exact.txt").write_text(text)
    proc = gruxp_cmd("eval", trained / "run" / "checkpoint.npz", "--data", "exact.txt", cwd=tmp_path)
    assert "20,000 characters" in proc.stdout
    (tmp_path / "one.txt").write_text("x")
    assert_one_line_error(
        gruxp_cmd("eval", trained / "run" / "checkpoint.npz", "--data", "one.txt", cwd=tmp_path, check=False),
        "fewer than 2 characters",
    )


def test_data_must_be_a_regular_file_or_a_folder(tmp_path):
    assert_one_line_error(gruxp_cmd("train", "--data", "", "--out", "a", cwd=tmp_path, check=False), "data path is empty")
    os.mkfifo(tmp_path / "pipe")
    for data in ("pipe", "/dev/zero", "/dev/urandom"):
        proc = gruxp_cmd("train", "--data", data, "--out", "a", cwd=tmp_path, check=False, timeout=60)
        assert_one_line_error(proc, "neither a regular file nor a folder")
    assert not (tmp_path / "a").exists()


def test_bench_needs_a_backend(tmp_path):
    assert_one_line_error(gruxp_cmd("bench", "--backends", "", cwd=tmp_path, check=False), "--backends names no backend")


# -- issue 14: a newcomer's first hour ---------------------------------------------------------------
def test_resume_says_where_it_starts_and_refuses_nothing_to_do(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "code.py").write_text(TEXT)
    proc = gruxp_cmd("train", "--resume", "--steps", 7, "--eval-every", 2, "--out", "run", cwd=tmp_path)
    assert "resuming run/checkpoint.npz from step 4, training to step 7" in proc.stdout
    assert "done: 3 steps (resumed at step 4), now at step 7" in proc.stdout
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    proc = gruxp_cmd("train", "--resume", "--steps", 5, "--out", "run", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "already at step 7", "--steps 5 leaves nothing to do")
    assert (tmp_path / "run" / "metrics.csv").read_text() == metrics and "nan" not in metrics


def test_tasks_count_sequences_and_label_the_training_figure(tmp_path):
    proc = gruxp_cmd(
        "train",
        "--task",
        "adding",
        "--steps",
        4,
        "--seq-len",
        8,
        "--hidden",
        4,
        "--layers",
        1,
        "--batch",
        4,
        "--eval-every",
        2,
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert "sequences/s" in proc.stdout and "chars/s" not in proc.stdout
    assert "train" in proc.stdout and "MSE (mean of the last 2 steps), validation" in proc.stdout
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,seconds,train,valid,sequences_per_s"


def test_bad_data_leaves_no_output_folder(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    for data in ("missing.txt", "empty.txt"):
        assert_one_line_error(gruxp_cmd("train", "--data", data, "--out", "run", cwd=tmp_path, check=False))
        assert not (tmp_path / "run").exists()


def test_fewer_steps_than_one_period_still_evaluate(tmp_path):
    (tmp_path / "code.py").write_text(TEXT)
    gruxp_cmd("train", "--data", "code.py", "--steps", 3, *TINY[:-2], "--out", "run", cwd=tmp_path)  # eval every 250
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [3] and (tmp_path / "run" / "loss.png").is_file()


def test_a_time_budget_scales_the_evaluation_period(tmp_path):
    (tmp_path / "code.py").write_text(TEXT)
    proc = gruxp_cmd("train", "--data", "code.py", "--time-budget", 2, *TINY[:-2], "--out", "run", cwd=tmp_path)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert len(rows) >= 3, proc.stdout  # about 8 by the clock, though eval-every 250 is never reached
    assert "--- sample at step" in proc.stdout


def test_the_progress_bar_names_the_unit(tmp_path):
    """tqdm draws only on a terminal: give the run one (a pseudo-terminal) and read what it draws."""
    import fcntl
    import pty
    import struct
    import termios

    (tmp_path / "code.py").write_text(TEXT)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a 160-column terminal
    proc = subprocess.Popen(
        [sys.executable, "-m", "gruxp", "train", "--data", "code.py", "--steps", "30", *TINY, "--out", "run"],
        cwd=tmp_path,
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the run closed its end
            break
        if not chunk:
            break
        drawn += chunk
    proc.communicate(timeout=120)
    os.close(leader)
    assert proc.returncode == 0
    assert b"bits/char" in drawn and b"chars_s=" in drawn, drawn[-500:]


def test_jax_backend_trains_without_warnings(tmp_path):
    pytest.importorskip("jax")
    (tmp_path / "code.py").write_text(TEXT)
    env_run = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::UserWarning",
            "-m",
            "gruxp",
            "train",
            "--backend",
            "jax",
            "--data",
            "code.py",
            "--steps",
            "2",
            *TINY,
            "--out",
            "run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert env_run.returncode == 0, env_run.stderr
    assert "Warning" not in env_run.stderr


def test_info_without_threadpoolctl_says_what_is_unknown(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "threadpoolctl.py").write_text("raise ImportError('hidden for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "gruxp", "info"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    blas = [ln for ln in proc.stdout.splitlines() if ln.startswith("numpy BLAS:")]
    assert blas and all("None" not in ln and "pip install threadpoolctl" in ln for ln in blas), proc.stdout


def test_help_readme_and_docs_agree_on_the_default_run(tmp_path):
    proc = gruxp_cmd("--help", cwd=tmp_path)
    assert "240 s training budget" in proc.stdout
    root = Path(__file__).resolve().parents[1]
    assert "a time budget of 240 s" in (root / "README.md").read_text()
    assert "--time-budget` (default 240 s)" in (root / "docs" / "user-guide" / "cli.md").read_text()


# -- Frictions a new user met, each fixed -------------------------------------------------------------
def _without(tmp_path, *modules):
    """An environment in which importing ``modules`` fails, as if they were not installed."""
    shim = tmp_path / ("without-" + "-".join(modules))
    shim.mkdir()
    for name in modules:
        (shim / f"{name}.py").write_text("raise ImportError('hidden for this test')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}


def _run(args, cwd, env):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_install_hints_name_the_clone_form_and_never_a_bare_torch(tmp_path):
    env = _without(tmp_path, "torch", "click")
    proc = _run(["-c", "import sys; sys.modules.pop('click', None); from gruxp.cli import main; main(['info'])"], tmp_path, env)
    assert proc.returncode != 0 and 'pip install ".[cli,plot]" in the clone of gruxp' in proc.stderr, proc.stderr
    env = _without(tmp_path, "torch")
    proc = _run(["-m", "gruxp", "train", "--backend", "torch", "--steps", "1", "--out", "x"], tmp_path, env)
    assert_one_line_error(proc, "backend 'torch' is not installed", "--index-url https://download.pytorch.org/whl/cpu")
    assert "pip install torch)" not in proc.stderr and "pip install torch:" not in proc.stderr


def test_data_refuses_a_binary_file(tmp_path):
    (tmp_path / "program").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 40)
    proc = gruxp_cmd("train", "--data", "program", "--steps", 1, *TINY, "--out", "run", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "'program' is not a text file")
    assert not (tmp_path / "run").exists()
    proc = gruxp_cmd("eval", str(tmp_path / "missing.npz"), "--data", "program", cwd=tmp_path, check=False)
    assert proc.returncode != 0


def test_metrics_seconds_continue_across_resume(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "code.py").write_text(TEXT)
    before = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    gruxp_cmd("train", "--resume", "--steps", 6, "--eval-every", 2, "--out", "run", cwd=tmp_path)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert float(rows[-1]["seconds"]) > float(before[-1]["seconds"]) and float(rows[2]["seconds"]) >= float(rows[1]["seconds"])


@pytest.mark.slow  # two backends' bench in a subprocess; test_info_and_bench runs bench quickly
def test_bench_times_the_reference_once_per_size_and_mode(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("array_api_strict")
    proc = gruxp_cmd(
        "bench", "--backends", "numpy,array_api_strict", "--batch", 2, "--seq-len", 4, "--hidden", 8, "--rounds", 2, cwd=tmp_path
    )
    rows = [
        ln.split("|")[1:-1] for ln in proc.stdout.splitlines() if ln.startswith("| numpy") or ln.startswith("| array_api_strict")
    ]
    assert len(rows) == 4
    by_mode = {}
    for cells in rows:
        by_mode.setdefault(cells[1].strip(), set()).add(cells[5].strip())
    assert all(len(torch_ms) == 1 for torch_ms in by_mode.values()), by_mode


def test_bench_refuses_a_missing_backend_before_any_row(tmp_path):
    env = _without(tmp_path, "jax")
    proc = _run(
        ["-m", "gruxp", "bench", "--backends", "numpy,jax", "--batch", "2", "--seq-len", "4", "--hidden", "8", "--rounds", "1"],
        tmp_path,
        env,
    )
    assert_one_line_error(proc, "backend 'jax' is not installed", 'pip install ".[jax]"')
    assert "| numpy |" not in proc.stdout and proc.stdout.strip() == ""


def test_a_tiny_temperature_samples_the_most_likely_character(trained):
    run = trained / "run" / "checkpoint.npz"
    tiny = gruxp_cmd("sample", run, "--temperature", "1e-320", "--length", 40, "--seed", 1, cwd=trained)
    small = gruxp_cmd("sample", run, "--temperature", "1e-6", "--length", 40, "--seed", 2, cwd=trained)
    # stderr holds only the speed line ("sampled N characters in … s, … chars/s"): no warning
    assert re.fullmatch(r"sampled \d+ characters in .*chars/s\n", tiny.stderr), tiny.stderr
    assert "nan" not in tiny.stdout.lower()
    assert tiny.stdout == small.stdout  # both greedy: the seed no longer matters


def test_a_one_character_corpus_is_too_short_not_empty(tmp_path):
    (tmp_path / "one.txt").write_text("a")
    proc = gruxp_cmd("train", "--data", "one.txt", "--steps", 1, *TINY, "--out", "run", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "holds only 1 character(s): too short to train on")


@pytest.mark.parametrize("cell", ["lngru", "mingru"])
def test_train_another_cell_then_resume_and_sample(tmp_path, cell):
    """--cell trains that cell; the checkpoint records it, so resume and sample rebuild it."""
    (tmp_path / "code.py").write_text(TEXT)
    extra = ["--zoneout", "0.1"] if cell == "lngru" else []
    out = gruxp_cmd("train", "--data", "code.py", "--cell", cell, *extra, *TINY, "--steps", "3", "--out", "run", cwd=tmp_path)
    name = {"lngru": "LayerNormGRU", "mingru": "MinGRU"}[cell]
    assert f"→ {name} 1×8 → linear" in out.stdout
    gruxp_cmd("train", "--data", "code.py", "--steps", "4", "--out", "run", "--resume", cwd=tmp_path)
    ckpt = gruxp.checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    assert ckpt.meta["step"] == 4 and ckpt.meta["extra"]["options"]["cell"] == cell
    assert type(gruxp.checkpoint.build_model(ckpt).layers["gru"]).__name__ == name
    gruxp_cmd("sample", "run/checkpoint.npz", "--length", "20", cwd=tmp_path)
    clash = gruxp_cmd(
        "train", "--data", "code.py", "--cell", "gru", "--steps", "5", "--out", "run", "--resume", cwd=tmp_path, check=False
    )
    assert_one_line_error(clash, "--cell gru differs from the checkpoint's", cell)


def test_zoneout_needs_the_lngru_cell(tmp_path):
    proc = gruxp_cmd("train", "--cell", "mingru", "--zoneout", "0.1", "--out", "run", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "--zoneout is an option of --cell lngru")


def test_info_plan_for_another_cell(tmp_path):
    out = gruxp_cmd("info", "--plan", "64", "100", "256", "256", "--cell", "lngru", "--cpus", "4", cwd=tmp_path).stdout
    assert "CPU plan for a LayerNormGRU" in out and "route: the lngru cell's numba loop" in out and "pieces: 4" in out
    out = gruxp_cmd("info", "--plan", "8", "10", "16", "16", "--cell", "mingru", cwd=tmp_path).stdout
    assert "generic code" in out and "numba's compile would not pay" in out


@pytest.mark.slow  # three CLI processes each compiling JAX: the Trainer's resume test covers this quickly
@pytest.mark.parametrize("cell", ["lngru", "gru", "mingru"])
def test_jax_resume_is_bit_identical_with_random_options(tmp_path, cell):
    """On JAX the compiled step draws dropout and zoneout masks from keys seeded by each layer's
    Generator, which the checkpoint keeps: 4 steps == 2 steps + --resume + 2 steps, bit for bit."""
    pytest.importorskip("jax")
    (tmp_path / "code.py").write_text(TEXT)
    options = ["--backend", "jax", "--cell", cell, "--layers", "2", "--dropout", "0.3", *TINY[:2], *TINY[4:]]
    options += ["--zoneout", "0.3"] if cell == "lngru" else []
    gruxp_cmd("train", "--data", "code.py", *options, "--steps", 4, "--out", "whole", cwd=tmp_path)
    gruxp_cmd("train", "--data", "code.py", *options, "--steps", 2, "--out", "split", cwd=tmp_path)
    gruxp_cmd("train", "--resume", "--backend", "jax", "--steps", 4, "--out", "split", cwd=tmp_path)
    whole, split = (gruxp.checkpoint.load(tmp_path / run / "checkpoint.npz") for run in ("whole", "split"))
    assert whole.meta["step"] == split.meta["step"] == 4
    for name, value in whole.params.items():
        np.testing.assert_array_equal(split.params[name], value, err_msg=name)
    assert whole.meta["rng"] == split.meta["rng"]
