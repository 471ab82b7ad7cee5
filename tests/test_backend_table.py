"""One backend table (backends/*.toml) for the tests' matrix, the command line and ci/: each reads
it through gruxp._backend_table, and the cross-backend agreement check is a test."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from gruxp._backend_table import Row, libraries, missing_gpu, rows

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # a dataclass looks its module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_the_matrix_the_command_line_and_ci_read_the_same_rows():
    from conftest import load_table

    table = rows()
    assert [r.name for r in table][:3] == ["numpy", "array_api_strict", "torch"]
    assert {"torch-cuda", "jax-gpu", "cupy"} <= {r.name for r in table if r.needs_gpu}
    assert [s["name"] for s in load_table()] == [r.name for r in table]  # the tests' matrix (unrestricted here)
    pytest.importorskip("click")
    from gruxp.cli.backends import BACKENDS

    assert BACKENDS == {name: (row.module, row.install) for name, row in libraries().items()}
    assert list(BACKENDS) == ["numpy", "array_api_strict", "torch", "jax", "cupy"]  # a library once, its CPU row first
    printed = subprocess.run([sys.executable, str(ROOT / "ci" / "requirements.py")], capture_output=True, text=True, check=True)
    assert printed.stdout.split() == [r.requirement for r in table if not r.needs_gpu]
    printed = subprocess.run(
        [sys.executable, str(ROOT / "ci" / "requirements.py"), "--gpu"], capture_output=True, text=True, check=True
    )
    assert printed.stdout.split() == [r.requirement for r in table if r.needs_gpu]


def test_a_row_that_needs_a_gpu_is_skipped_with_the_reason_for_any_library():
    """needs_gpu is one rule, not CuPy's: a CPU library on a device it lacks gives the reason."""
    import numpy as np

    row = Row(
        name="numpy-gpu", library="numpy", module="numpy", requirement="numpy", install="", devices=("gpu",), needs_gpu=True
    )
    reason = missing_gpu(row, np, "gpu")
    assert reason is not None and reason.startswith(
        "numpy-gpu needs a GPU and numpy sees none here (ValueError: numpy has no device 'gpu')"
    )
    assert missing_gpu(Row(name="numpy", module="numpy", requirement="", install="", devices=("default",)), np, "default") is None
    torch = pytest.importorskip("torch")
    cuda = next(r for r in rows() if r.name == "torch-cuda")
    if not torch.cuda.is_available():
        assert "torch.cuda.is_available() is False" in missing_gpu(cuda, torch, "cuda")


@pytest.mark.slow  # the matrix makes the same comparison test by test; this is the table's own (CI's slow pass)
def test_every_row_that_runs_here_agrees_with_numpy_float64():
    agreement = _load(ROOT / "ci" / "agreement.py")
    results = agreement.check()
    ran = {r.label for r in results if r.skipped is None}
    assert "numpy" in ran and "array_api_strict:device1" in ran
    for r in results:
        assert r.ok, f"{r.label} {r.dtype}: {r.worst_share:.2f} of the bound (max |diff| {r.worst_abs:.2e})"
        if r.skipped is not None:
            assert "not installed" in r.skipped or "needs a GPU" in r.skipped
    assert {r.label for r in results} >= {row.name for row in rows() if len(row.devices) == 1}
