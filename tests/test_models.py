"""The model classes: state dicts, moves between namespaces, seeds, attributes."""

import subprocess
import sys

import numpy as np
import pytest

import gruxp
from gruxp.testing import to_numpy


def test_state_dict_round_trip_is_bit_exact(backend, dtype):
    model = gruxp.GRU(4, 3, 2, bidirectional=True, xp=backend.xp, device=backend.device, dtype=dtype, seed=5)
    state = model.state_dict(numpy=True)
    assert all(type(v) is np.ndarray and v.dtype == np.dtype(dtype) for v in state.values())
    fresh = gruxp.GRU(4, 3, 2, bidirectional=True, xp=backend.xp, device=backend.device, dtype=dtype, seed=6)
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict(numpy=True).items():
        np.testing.assert_array_equal(v, state[k])
    state["weight_ih_l0"][...] = 0.0  # a host copy: editing it leaves the model alone
    assert np.any(to_numpy(model.params["weight_ih_l0"]) != 0)


def test_to_moves_bit_exactly_and_keeps_the_width(backend, dtype):
    here = gruxp.GRU(4, 3, reset_after=False, dtype=dtype, seed=5)
    there = here.to(backend.xp, device=backend.device)
    assert there is not here and there.xp is backend.xp and there.dtype == backend.dtype(dtype)
    assert there.reset_after is False and there.params is not here.params
    for k, v in here.state_dict(numpy=True).items():
        np.testing.assert_array_equal(to_numpy(there.params[k]), v)
    x = np.random.default_rng(0).standard_normal((6, 2, 4))
    a, _ = here(np.asarray(x, dtype=dtype))
    b, _ = there(backend.asarray(x, dtype))
    np.testing.assert_allclose(
        to_numpy(b), a, rtol=1e-4 if dtype == "float32" else 1e-12, atol=1e-6 if dtype == "float32" else 1e-14
    )
    back = there.to(None, dtype="float64")
    assert back.dtype == backend.dtype("float64") and back.xp is backend.xp


def test_load_state_dict_from_torch_and_other_backends(backend):
    torch = pytest.importorskip("torch")
    net = torch.nn.GRU(4, 3, 2, bidirectional=True)
    model = gruxp.GRU(4, 3, 2, bidirectional=True, xp=backend.xp, device=backend.device, dtype="float64")
    model.load_state_dict(net.state_dict())  # float32 CPU tensors, cast to the model's float64
    for k, p in net.state_dict().items():
        np.testing.assert_array_equal(to_numpy(model.params[k]), p.numpy().astype(np.float64))
    source = gruxp.GRU(4, 3, 2, bidirectional=True, xp=backend.xp, device=backend.device, dtype="float64", seed=1)
    numpy_model = gruxp.GRU(4, 3, 2, bidirectional=True, dtype="float64")
    numpy_model.load_state_dict(source.params)  # arrays of any namespace/device
    for k, v in source.state_dict(numpy=True).items():
        np.testing.assert_array_equal(numpy_model.params[k], v)


def test_seed_none_draws_fresh_entropy_and_generators_are_accepted():
    a, b = gruxp.GRU(3, 4), gruxp.GRU(3, 4)
    assert not np.array_equal(a.params["weight_ih_l0"], b.params["weight_ih_l0"])
    c = gruxp.GRU(3, 4, seed=np.random.default_rng(3))
    d = gruxp.GRU(3, 4, seed=3)
    np.testing.assert_array_equal(c.params["weight_hh_l0"], d.params["weight_hh_l0"])


def test_defaults_and_attributes():
    model = gruxp.GRU(3, 4)
    assert model.dtype == np.float32 and model.params["weight_ih_l0"].dtype == np.float32
    assert (model.input_size, model.hidden_size, model.num_layers, model.bias) == (3, 4, 1, True)
    assert (model.batch_first, model.bidirectional, model.reset_after) == (False, False, True)
    assert repr(model) == "GRU(3, 4, xp=numpy, device='cpu', dtype=float32)"
    assert "reset_after=False" in repr(gruxp.GRUCell(2, 2, reset_after=False))
    with pytest.raises(AttributeError):
        _ = model.nonexistent


def test_raw_module_and_compat_wrapper_are_the_same_namespace():
    import array_api_compat.numpy as compat_numpy

    a = gruxp.GRU(3, 4, xp=np, seed=0)
    b = gruxp.GRU(3, 4, xp=compat_numpy, seed=0)
    assert a.xp is b.xp


def test_import_does_not_pull_in_optional_array_libraries():
    optional = (
        "cupy",
        "torch",
        "jax",
        "array_api_strict",
        "dask",
        "distributed",
        "onnx",
        "onnxruntime",
        "keras",
        "click",
        "threadpoolctl",
    )
    code = (
        "import sys, gruxp; gruxp.GRU(2, 3)(__import__('numpy').ones((2, 1, 2), 'float32')); "
        f"print(sorted(m for m in {optional!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_math_imports_no_array_library():
    """Only _namespace.py imports array_api_compat; the functional core imports no array library."""
    from pathlib import Path

    root = Path(gruxp.__file__).parent
    for path in (root / "functional").glob("*.py"):
        text = path.read_text()
        for lib in ("numpy", "cupy", "torch", "jax", "array_api_strict", "array_api_compat"):
            imports = [ln for ln in text.splitlines() if ln.startswith((f"import {lib}", f"from {lib}"))]
            allowed = lib == "numpy" and path.name in ("_params.py", "_sequence.py", "_layers.py")  # host RNG, host masks
            assert not imports or allowed, (path.name, imports)
    compat_users = [p.name for p in root.rglob("*.py") if "import array_api_compat" in p.read_text()]
    assert compat_users == ["_namespace.py"]
