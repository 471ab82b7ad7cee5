"""Dask: batch inference and data-parallel training equal the single-process results."""

import functools

import numpy as np
import pytest

import gruxp
from gruxp import losses, optim

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
pytest.importorskip("threadpoolctl")

from gruxp import distributed as gd  # noqa: E402

# distributed's scheduler leaves its HTTP server socket to the garbage collector at teardown
# (its own ResourceWarning, reported as unraisable); nothing of gruxp's.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

B, T, I, H, V = 12, 6, 3, 5, 7


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _regressor(dtype="float64"):
    return gruxp.Sequential(
        gru=gruxp.GRU(I, H, 2, batch_first=True, seed=0, dtype=dtype),
        last=gruxp.LastStep(batch_first=True),
        head=gruxp.Linear(H, 1, seed=1, dtype=dtype),
    )


def _regression_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((B, T, I)), rng.standard_normal((B, 1))


def load_regression_shard(i, n):
    x, y = _regression_data()
    rows = np.array_split(np.arange(B), n)[i]
    return x[rows], y[rows]


@pytest.mark.parametrize("batch_first", [True, False])
def test_predict_equals_the_single_process_forward(batch_first):
    gru = gruxp.GRU(I, H, 2, bidirectional=True, batch_first=batch_first, dtype="float64", seed=3)
    x = np.random.default_rng(1).standard_normal((B, T, I) if batch_first else (T, B, I))
    lengths = np.random.default_rng(2).integers(1, T + 1, size=B)
    want_out, want_hn = gru(x, lengths=lengths)
    dx = da.from_array(x, chunks=(5, 2, 3) if batch_first else (2, 5, 3))  # rechunked to batch only
    out, h_n = gd.predict(gru, dx, lengths=da.from_array(lengths, chunks=4))
    assert out.chunks[0 if batch_first else 1] == (5, 5, 2)
    got_out, got_hn = out.compute(scheduler="threads"), h_n.compute(scheduler="threads")
    # each block is its own call, planned from its own shape (a 2-row block takes numba's step kernel):
    # equal to the whole call at the float64 bound, not bit for bit (docs/user-guide/dask.md)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got_hn, want_hn, rtol=1e-12, atol=1e-15)


def test_predict_on_a_cluster(client):
    gru = gruxp.GRU(I, H, dtype="float64", seed=3)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    out, h_n = gd.predict(gru, da.from_array(x, chunks=(T, 4, I)))
    want_out, want_hn = gru(x)
    np.testing.assert_array_equal(out.compute(), want_out)
    np.testing.assert_array_equal(h_n.compute(), want_hn)


def _single_process(steps, loss, make_model, data):
    model = make_model()
    opt = optim.Adam(lr=0.05)
    state = opt.init(model.params)
    x, y = data
    for _ in range(steps):
        out, _, tape = model.forward(x)
        value, dy = loss(out, y)
        grads, _, _ = model.backward(tape, dy)
        model.params, state = opt.step(model.params, grads, state)
    return model


@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_training_equals_single_process(client, n_shards):
    reference = _single_process(5, losses.mse, _regressor, _regression_data())
    model = _regressor()
    dp = gd.DataParallel(client, model, losses.mse, optim.Adam(lr=0.05))
    dp.load_shards(load_regression_shard, n=n_shards)
    records = [dp.step() for _ in range(5)]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and records[-1]["loss"] < records[0]["loss"]
    for k, v in reference.state_dict(numpy=True).items():
        if n_shards == 1:
            np.testing.assert_array_equal(model.state_dict(numpy=True)[k], v, err_msg=k)  # the same operations
        else:
            np.testing.assert_allclose(model.state_dict(numpy=True)[k], v, rtol=0, atol=1e-12, err_msg=k)


def load_lm_shard(i, n):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, V, size=(B, T + 1))
    targets = ids[:, 1:].copy()
    targets[0, :2] = -100
    rows = np.array_split(np.arange(B), n)[i]
    return ids[rows, :-1], targets[rows]


def test_language_model_with_ignore_index(client):
    def make():
        return gruxp.Sequential(
            embed=gruxp.Embedding(V, 4, seed=0, dtype="float64"),
            gru=gruxp.GRU(4, H, batch_first=True, seed=1, dtype="float64"),
            head=gruxp.Linear(H, V, seed=2, dtype="float64"),
        )

    loss = functools.partial(losses.cross_entropy, ignore_index=-100)
    reference = _single_process(3, loss, make, load_lm_shard(0, 1))
    model = make()
    dp = gd.DataParallel(client, model, loss, optim.Adam(lr=0.05))
    dp.load_shards(load_lm_shard, n=2)
    for _ in range(3):
        dp.step()
    for k, v in reference.state_dict(numpy=True).items():
        np.testing.assert_allclose(model.state_dict(numpy=True)[k], v, rtol=0, atol=1e-12, err_msg=k)


def test_a_task_runs_the_gru_on_one_thread_without_changing_the_worker(client):
    """``blas_threads=1``: the task's GRU calls plan one thread (a setting of the task's own thread),
    and NumPy's BLAS keeps the worker's thread count: nothing process-wide changes."""

    def in_task():
        from threadpoolctl import threadpool_info

        from gruxp._native import cpu_plan

        numpy_blas = lambda: [p["num_threads"] for p in threadpool_info() if "numpy" in p["filepath"]]  # noqa: E731
        before = numpy_blas()
        with gd._blas_limit(1):
            inside = cpu_plan(100, 64, 256, 256)[0].workers, numpy_blas()
        outside = cpu_plan(100, 64, 256, 256)[0].workers
        return inside, before, outside

    (workers, numpy_inside), numpy_before, workers_outside = client.submit(in_task, pure=False).result()
    assert workers == 1 and numpy_inside == numpy_before
    assert workers_outside >= 1


def test_processes_cluster_pickles_everything():
    """Real worker processes: every task function, argument and result must pickle."""
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        model = _regressor()
        dp = gd.DataParallel(client, model, losses.mse, optim.SGD(lr=0.1))
        dp.load_shards(load_regression_shard, n=2)
        dp.step()
        reference = _regressor()
        opt = optim.SGD(lr=0.1)
        x, y = _regression_data()
        out, _, tape = reference.forward(x)
        grads = reference.backward(tape, losses.mse(out, y)[1])[0]
        reference.params, _ = opt.step(reference.params, grads, opt.init(reference.params))
        for k, v in reference.state_dict(numpy=True).items():
            np.testing.assert_allclose(model.state_dict(numpy=True)[k], v, rtol=0, atol=1e-12, err_msg=k)
        gru = gruxp.GRU(I, H, dtype="float64", seed=3)
        xs = np.random.default_rng(1).standard_normal((T, B, I))
        np.testing.assert_array_equal(gd.predict(gru, da.from_array(xs, chunks=(T, 6, I)))[0].compute(), gru(xs)[0])


def test_a_lost_worker_costs_a_retry_not_a_wrong_gradient():
    """Kill a worker process in the middle of a step: the step finishes on the survivors, equal."""
    import os
    import signal
    import threading
    import time

    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        model = _regressor()
        dp = gd.DataParallel(client, model, sleepy_mse, optim.SGD(lr=0.1))
        dp.load_shards(load_regression_shard, n=4)
        want = _regressor()
        victim = sorted(client.scheduler_info()["workers"])[1]
        pid = client.run(os.getpid, workers=[victim])[victim]

        def kill_soon():
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        started = time.perf_counter()
        loss, grads = dp.gradients()  # each shard's gradient takes 1 s: the victim dies inside one
        killer.join()
        assert time.perf_counter() - started > 1.0
        assert _dead(pid)  # the victim is really gone (its nanny may have started a new process)
        x, y = _regression_data()
        out, _, tape = want.forward(x)
        want_loss, dy = losses.mse(out, y)
        want_grads = want.backward(tape, dy)[0]
        assert abs(loss - float(want_loss)) < 1e-12
        for k, v in want_grads.items():
            np.testing.assert_allclose(grads[k], v, rtol=0, atol=1e-12, err_msg=k)


def _dead(pid):
    from pathlib import Path

    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


def sleepy_mse(pred, target, reduction="mean"):
    import time

    time.sleep(1.0)  # long enough for the victim to die while computing its shard's gradient
    return losses.mse(pred, target, reduction=reduction)


def _die_after(delay):
    """Run on a worker: SIGKILL its own process ``delay`` seconds from now (the task itself returns)."""
    import os
    import signal
    import threading

    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()


def test_workers_killed_early_in_steps_cost_retries_not_hangs():
    """SIGKILL a worker within the first ~40 ms of gradients(), step after step on one cluster (the
    scatter, the first tasks): every step still returns the right gradient, in bounded time."""
    import time

    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        model = _regressor()
        dp = gd.DataParallel(client, model, losses.mse, optim.SGD(lr=0.1), timeout=20, retries=4)
        dp.load_shards(load_regression_shard, n=4)
        x, y = _regression_data()
        out, _, tape = model.forward(x)
        want_loss, dy = losses.mse(out, y)
        want_grads = model.backward(tape, dy)[0]
        killed = set()
        for delay in [0.0, 0.005, 0.02, 0.04]:
            deadline = time.monotonic() + 60
            while True:  # two live workers: the last victim gone from the scheduler, its successor there
                workers = set(client.scheduler_info()["workers"])
                if len(workers) == 2 and not workers & killed:
                    break
                assert time.monotonic() < deadline, f"the cluster did not recover: {workers}"
                time.sleep(0.1)
            victim = sorted(workers)[0]
            killed.add(victim)
            # not waited for: with delay 0 the worker may die before it reports the task done
            suicide = client.submit(_die_after, delay, workers=[victim], allow_other_workers=False, pure=False)
            started = time.perf_counter()
            loss, grads = dp.gradients()
            del suicide
            assert time.perf_counter() - started < 5 * 20
            assert abs(loss - float(want_loss)) < 1e-12
            for k, v in want_grads.items():
                np.testing.assert_allclose(grads[k], v, rtol=0, atol=1e-12, err_msg=k)


def test_worker_dropout_is_seeded(client):
    """Two runs with the same seed and shard count draw the same dropout masks on the workers."""

    def model():
        return gruxp.Sequential(
            gru=gruxp.GRU(I, H, 2, batch_first=True, dropout=0.5, seed=0, dtype="float64"),
            drop=gruxp.Dropout(0.5, seed=1),
            last=gruxp.LastStep(batch_first=True),
            head=gruxp.Linear(H, 1, seed=1, dtype="float64"),
        )

    runs = []
    for seed in (7, 7, 8):
        dp = gd.DataParallel(client, model(), losses.mse, optim.SGD(lr=0.1), seed=seed)
        dp.load_shards(load_regression_shard, n=2)
        runs.append([dp.step()["loss"] for _ in range(2)])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_predict_refuses_blocks_the_model_would_refuse():
    """No silent recasting: a float32 model on float64 blocks, or a torch model on NumPy blocks."""
    x64 = da.from_array(np.zeros((5, 4, I)), chunks=(5, 2, I))
    with pytest.raises(TypeError, match="x's blocks has dtype float64 but the parameters are float32"):
        gd.predict(gruxp.GRU(I, H, seed=0), x64)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"x's blocks must be an array of the parameters' namespace \(torch\)"):
        gd.predict(gruxp.GRU(I, H, xp=torch, dtype="float64", seed=0), x64)
