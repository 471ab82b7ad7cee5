"""Load decides scheduling, never arithmetic: the same calls give the same bytes quiet or busy, on
one core or all, from one thread or four (the README's "Numerics and reproducibility")."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager

import numpy as np

import gruxp

# (T, B, I, H, layers, bidirectional, dtype, ragged, batch_first): batch sizes 1-64 (odd ones too),
# H 128-1024, 1-2 layers; between them every route of the plan on a 2-CPU machine: the batch in
# pieces, transposed products, column panels, gradient blocks, the NumPy fuser on gruxp's BLAS.
CALLS = [
    (8, 64, 32, 128, 1, False, "float32", False, False),
    (6, 33, 16, 256, 2, True, "float64", True, False),
    (5, 1, 8, 512, 1, False, "float32", False, False),
    (3, 7, 8, 1024, 1, False, "float32", True, True),
    (3, 16, 32, 1024, 1, False, "float32", False, False),
    (10, 5, 8, 128, 1, True, "float64", False, False),
    (12, 31, 24, 128, 2, False, "float64", True, False),
]


def digest() -> str:
    """sha256 over every output, final state, gradient, dx and dh0 of :data:`CALLS`."""
    h = hashlib.sha256()
    for T, B, I, H, layers, bi, dtype, ragged, batch_first in CALLS:
        model = gruxp.GRU(I, H, layers, bidirectional=bi, batch_first=batch_first, dtype=dtype, seed=1)
        rng = np.random.default_rng(2)
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
        lengths = rng.integers(1, T + 1, B) if ragged else None
        out, h_n = model(x, lengths=lengths)
        arrays = [out, h_n]
        out, h_n, tape = model.forward(x, lengths=lengths)
        grads, dx, dh0 = model.backward(tape, rng.standard_normal(out.shape).astype(dtype), np.ones_like(h_n))
        for a in [*arrays, out, h_n, dx, dh0, *grads.values()]:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@contextmanager
def busy(processes: int):
    """That many other processes spinning on the CPUs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def _subprocess_digest(prefix: list[str]) -> str:
    code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_determinism as t; print(t.digest())"
    result = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_the_same_calls_give_the_same_bytes_quiet_busy_pinned_and_threaded():
    quiet = digest()
    table = {"quiet": quiet, "quiet, again right after": digest()}
    with busy(1):
        table["one busy process"] = digest()
    with busy(2):
        table["two busy processes"] = digest()
    found: list = [None] * 4
    threads = [threading.Thread(target=lambda i=i: found.__setitem__(i, digest())) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table.update({f"thread {i + 1} of 4 at once": d for i, d in enumerate(found)})
    table["a fresh process"] = _subprocess_digest([])
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) > 1:
        table["a fresh process under taskset -c 0"] = _subprocess_digest(["taskset", "-c", "0"])
    with gruxp.config_context(max_workers=1):
        table["max_workers=1"] = digest()
    print(json.dumps(table, indent=1))  # the table the README quotes (pytest -s shows it)
    assert set(table.values()) == {quiet}, {k: v[:12] for k, v in table.items()}


def test_the_plans_arithmetic_does_not_read_the_usable_cpus():
    """On one machine the cut is the same whatever affinity allows (``usable``): only ``workers``
    changes. The machine's size (``cpus``) may change the cut; so results may differ between machines."""
    from dataclasses import replace

    from gruxp._native import cpu_plan
    from gruxp._native.machine import this_machine

    here = this_machine()
    for shape in [(100, 64, 256, 256), (50, 16, 512, 512), (500, 1, 256, 256), (100, 32, 256, 256)]:
        plans = [cpu_plan(*shape, num_layers=2, bidirectional=True, machine=replace(here, usable=u)) for u in (1, 2, 64)]
        assert all([p.arithmetic for p in ps] == [p.arithmetic for p in plans[0]] for ps in plans)
        assert [p.workers for p in plans[0]] == [1, 1]


def cells_digest() -> str:
    """sha256 over a LayerNormGRU (zoneout drawn) and a MinGRU call, forward and backward, at sizes
    where their CPU loops cut the batch into pieces on gruxp's threads."""
    h = hashlib.sha256()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 32, 24))
    for model in (
        gruxp.LayerNormGRU(24, 256, bidirectional=True, zoneout=0.2, dtype="float32", seed=1),
        gruxp.MinGRU(24, 256, num_layers=2, dtype="float64", seed=1),
    ):
        xs = x.astype(model.dtype)
        out, h_n, tape = model.forward(xs, lengths=rng.integers(1, 13, 32))
        grads, dx, dh0 = model.backward(tape, np.ones_like(out), np.ones_like(h_n))
        for a in [out, h_n, dx, dh0, *grads.values()]:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_the_new_cells_give_the_same_bytes_quiet_busy_and_threaded():
    from gruxp._native import cpu_plan

    # both run their own loops here: the LayerNormGRU's two directions at once, the MinGRU's rows in pieces
    assert cpu_plan(12, 32, 24, 256, cell="lngru", bidirectional=True)[0].route == "fused"
    from gruxp._native.machine import this_machine

    assert len(cpu_plan(12, 32, 24, 256, cell="mingru", dtype="float64")[0].pieces) == min(this_machine().cpus, 32 // 4)
    quiet = cells_digest()
    table = {"quiet": quiet}
    with busy(2):
        table["two busy processes"] = cells_digest()
    found: list = [None] * 2
    threads = [threading.Thread(target=lambda i=i: found.__setitem__(i, cells_digest())) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table.update({f"thread {i + 1} of 2 at once": d for i, d in enumerate(found)})
    with gruxp.config_context(max_workers=1):
        table["max_workers=1"] = cells_digest()
    assert set(table.values()) == {quiet}, {k: v[:12] for k, v in table.items()}


def tokens_digest() -> str:
    """sha256 over one-token calls (``step()`` and ``model(x_t, h)``, B = 1, 4, 16; H 128-512), each
    carrying its state over 20 tokens: the shapes a sampler or a stream sends."""
    h = hashlib.sha256()
    for B, H, layers, dtype in ((1, 256, 2, "float32"), (4, 128, 1, "float64"), (16, 512, 1, "float32")):
        model = gruxp.GRU(64, H, layers, dtype=dtype, seed=1)
        xs = np.random.default_rng(4).standard_normal((20, B, 64)).astype(dtype)
        state, state_call = None, None
        for x_t in xs:
            y, state = model.step(x_t, state)
            out, state_call = model(x_t[None], state_call)
            for a in (y, state, out, state_call):
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_one_token_calls_give_the_same_bytes_quiet_busy_and_threaded():
    quiet = tokens_digest()
    table = {"quiet": quiet, "again": tokens_digest()}
    with busy(2):
        table["two busy processes"] = tokens_digest()
    found: list = [None] * 2
    threads = [threading.Thread(target=lambda i=i: found.__setitem__(i, tokens_digest())) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table.update({f"thread {i + 1} of 2 at once": d for i, d in enumerate(found)})
    with gruxp.config_context(max_workers=1):
        table["max_workers=1"] = tokens_digest()
    assert set(table.values()) == {quiet}, {k: v[:12] for k, v in table.items()}
