"""ClusterTrainer and `gruxp train --scheduler` on an in-process Dask cluster (separate hosts:
tests/test_cluster_hosts.py): the shards decide the arithmetic, the workers do not."""

import os
import subprocess
import sys

import numpy as np
import pytest

import gruxp
from gruxp import losses, optim

distributed = pytest.importorskip("distributed")
pytest.importorskip("click")

from gruxp.cli import lm  # noqa: E402
from gruxp.distributed import ClusterError, ClusterTrainer  # noqa: E402
from gruxp.training import stream_windows  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

TOKENS = np.random.default_rng(0).integers(0, 11, size=3000)
B, T, STEPS = 6, 8, 7  # 7 steps: the stream's 62 windows are not reached; resets are tested below


def _model(dtype, dropout=0.0):
    return lm.build_model(11, hidden=12, layers=2, embed=5, dropout=dropout, xp=np, device=None, dtype=dtype, seed=3)


def _optimizer():
    return optim.AdamW(lr=1e-2, weight_decay=0.01)


def _on_cluster(workers, shards, dtype, *, steps=STEPS, dropout=0.0, tokens=TOKENS):
    with (
        distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        model = _model(dtype, dropout)
        trainer = ClusterTrainer(client, model, losses.cross_entropy, _optimizer(), clip_norm=0.5, seed=4)
        trainer.load_stream(tokens, batch_size=B, window=T, shards=shards)
        losses_seen = [trainer.train_step()["loss"] for _ in range(steps)]
        return model.state_dict(numpy=True), {k: np.asarray(v) for k, v in trainer.carry.items()}, losses_seen


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_shards_decide_the_result_not_the_workers(dtype):
    """3 shards (with dropout between the layers) on 1, 2 and 3 workers: the same bits."""
    runs = [_on_cluster(workers, 3, dtype, dropout=0.3) for workers in (1, 2, 3)]
    params, carry, seen = runs[0]
    for other_params, other_carry, other_seen in runs[1:]:
        assert other_seen == seen
        for k in params:
            np.testing.assert_array_equal(other_params[k], params[k], err_msg=k)
        for k in carry:
            np.testing.assert_array_equal(other_carry[k], carry[k], err_msg=k)
    assert carry["gru"].shape == (2, B, 12)  # every row's carried state came back, in row order


def test_one_shard_equals_the_local_trainer_and_shards_agree_to_rounding():
    """One shard: Trainer on stream_windows bit for bit (params and carried state); two shards:
    the same training up to the order of a sum (float64)."""
    model = _model("float64")
    local = gruxp.Trainer(model, losses.cross_entropy, _optimizer(), clip_norm=0.5, stateful=True)
    batches = stream_windows(TOKENS, batch_size=B, window=T)
    for _ in range(STEPS):
        local.train_step(batches(local.step, local.rng))
    want = model.state_dict(numpy=True)
    one, carry, _ = _on_cluster(1, 1, "float64")
    for k in want:
        np.testing.assert_array_equal(one[k], want[k], err_msg=k)
    np.testing.assert_array_equal(carry["gru"], np.asarray(local.carry["gru"]))
    two, _, _ = _on_cluster(2, 2, "float64")
    for k in want:
        np.testing.assert_allclose(two[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_stream_wraps_with_a_reset_as_stream_windows_does():
    """Past the last window the stream starts again with the state cleared (Batch.reset)."""
    short = TOKENS[: B * T * 2 + 1]  # two windows
    model = _model("float64")
    local = gruxp.Trainer(model, losses.cross_entropy, _optimizer(), stateful=True)
    batches = stream_windows(short, batch_size=B, window=T)
    for _ in range(5):
        local.train_step(batches(local.step, local.rng))
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        other = _model("float64")
        trainer = ClusterTrainer(client, other, losses.cross_entropy, _optimizer(), seed=4)
        trainer.load_stream(short, batch_size=B, window=T, shards=1)
        for _ in range(5):
            trainer.train_step()
    for k, v in model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(other.state_dict(numpy=True)[k], v, err_msg=k)


def test_resume_from_a_checkpoint_continues_bit_for_bit(tmp_path):
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):

        def trainer():
            t = ClusterTrainer(
                client, _model("float32", 0.3), losses.cross_entropy, _optimizer(), seed=4, checkpoint=tmp_path / "c.npz"
            )
            t.load_stream(TOKENS, batch_size=B, window=T, shards=2)
            return t

        straight = trainer()
        for _ in range(6):
            straight.train_step()
        first = trainer()
        for _ in range(3):
            first.train_step()
        first.save()
        second = trainer()
        second.resume()
        for _ in range(3):
            second.train_step()
    for k, v in straight.model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(second.model.state_dict(numpy=True)[k], v, err_msg=k)


def test_refusals():
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        trainer = ClusterTrainer(client, _model("float32"), losses.cross_entropy, _optimizer())
        with pytest.raises(RuntimeError, match="no stream: call load_stream first"):
            trainer.train_step()
        with pytest.raises(ValueError, match=r"shards must be at most batch_size=6 \(each shard holds whole rows\); got 7"):
            trainer.load_stream(TOKENS, batch_size=B, window=T, shards=7)
        with pytest.raises(TypeError, match="tokens must be a 1-D integer array"):
            trainer.load_stream(TOKENS.astype(float), batch_size=B, window=T)
        trainer.load_stream(TOKENS, batch_size=B, window=T)
        assert trainer.shards == 1  # one per worker by default
        with pytest.raises(TypeError, match="reads its window on the workers"):
            trainer.train_step(gruxp.Batch(None, None))
    assert issubclass(ClusterError, RuntimeError)


# -- the command line against an in-process cluster ----------------------------------------------
TEXT = ("def add(a, b):\n    return a + b\n\n" * 40) + "class Point:\n    x: int = 0\n" * 20
TINY = ["--hidden", "8", "--layers", "2", "--embed", "4", "--batch", "4", "--seq-len", "16", "--eval-every", "3"]


def _gruxp(*args, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "gruxp", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ
    )


@pytest.fixture(scope="module")
def scheduler():
    # TCP on the loopback: the command runs in another process (an in-process cluster's default is inproc://)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


def test_train_on_the_cluster_equals_the_local_run_with_one_shard(scheduler, tmp_path):
    (tmp_path / "code.py").write_text(TEXT)
    local = _gruxp("train", "--data", "code.py", "--steps", 6, *TINY, "--out", "local", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    run = _gruxp(
        "train", "--data", "code.py", "--steps", 6, *TINY, "--out", "dist", "--scheduler", scheduler, "--shards", 1, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert f"cluster: {scheduler}, 2 worker(s); 1 shard(s) of rows (4)" in run.stdout
    assert "validation" in run.stdout and "--- sample ---" in run.stdout and (tmp_path / "dist" / "metrics.csv").exists()
    a, b = np.load(tmp_path / "local" / "checkpoint.npz"), np.load(tmp_path / "dist" / "checkpoint.npz")
    arrays = [k for k in a.files if k != "__meta__"]
    assert any(k.startswith("carry/") for k in arrays) and any(k.startswith("param/") for k in arrays)
    for k in arrays:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    meta = gruxp.checkpoint.load(tmp_path / "dist" / "checkpoint.npz").meta["extra"]["cluster"]
    assert meta == {"scheduler": scheduler, "shards": 1, "seed": 0}
    # resumed with other shards: refused, the checkpoint's shards decide the arithmetic
    again = _gruxp("train", "--resume", "--steps", 8, "--out", "dist", "--scheduler", scheduler, "--shards", 2, cwd=tmp_path)
    assert again.returncode != 0 and "--shards 2 differs from the checkpoint's 1" in again.stderr


def test_train_refuses_cluster_options_that_would_not_apply(tmp_path):
    (tmp_path / "code.py").write_text(TEXT)
    cases = [
        (["--data", "code.py", "--shards", 2], "--shards is an option of --scheduler"),
        (["--data", "code.py", "--timeout", 5], "--timeout is an option of --scheduler"),
        (
            ["--scheduler", "tcp://198.18.0.9:1", "--backend", "array_api_strict"],
            "--backend array_api_strict is not offered there",
        ),
        (["--scheduler", "tcp://198.18.0.9:1", "--task", "copy"], "--scheduler is an option of --task lm"),
    ]
    for extra, message in cases:
        proc = _gruxp("train", "--steps", 2, *TINY, *extra, "--out", "x", cwd=tmp_path)
        assert proc.returncode != 0 and message in proc.stderr, (extra, proc.stderr)
        assert not (tmp_path / "x").exists()


def test_an_unreachable_scheduler_is_one_line_naming_it(tmp_path):
    (tmp_path / "code.py").write_text(TEXT)
    # a free port on this machine's loopback: nothing listens there
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    proc = _gruxp(
        "train", "--data", "code.py", "--steps", 2, *TINY, "--scheduler", address, "--timeout", 3, "--out", "x", cwd=tmp_path
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"gruxp: error: cannot reach a Dask scheduler at {address} within 3 s"), lines[0]
    assert not (tmp_path / "x").exists()
