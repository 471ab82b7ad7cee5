"""ONNX export checked against ONNX Runtime (skipped with the reason when it is not installed)."""

import itertools

import numpy as np
import pytest

import gruxp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ATOL = dict(rtol=1e-5, atol=2e-6)  # float32 on both sides; observed ≲ 3e-7


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


GRID = list(itertools.product([False, True], [1, 2, 3], [True, False], [True, False], [False, True], [False, True]))


@pytest.mark.parametrize("bidirectional, layers, reset_after, bias, batch_first, ragged", GRID, ids=lambda v: str(v))
def test_onnx_runtime_matches_gruxp(tmp_path, bidirectional, layers, reset_after, bias, batch_first, ragged):
    gru = gruxp.GRU(
        3, 4, layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, reset_after=reset_after, seed=layers
    )
    path = tmp_path / "gru.onnx"
    gruxp.onnx.export(gru, path, lengths=ragged, h0=True)
    sess = _session(path)
    rng = np.random.default_rng(0)
    for B, T in ((3, 7), (5, 2)):  # one session, different batch sizes and lengths
        x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3)).astype(np.float32)
        h0 = rng.standard_normal((layers * (2 if bidirectional else 1), B, 4)).astype(np.float32)
        lengths = rng.integers(1, T + 1, size=B).astype(np.int32) if ragged else None
        feeds = {"x": x, "h0": h0, **({"lengths": lengths} if ragged else {})}
        got_out, got_hn = sess.run(["out", "h_n"], feeds)
        want_out, want_hn = gru(x, h0, lengths=lengths)
        np.testing.assert_allclose(got_out, want_out, **ATOL)
        np.testing.assert_allclose(got_hn, want_hn, **ATOL)


def test_checker_full_and_symbolic_dims(tmp_path):
    gru = gruxp.GRU(3, 4, 2, bidirectional=True, seed=0)
    proto = gruxp.onnx.export(gru, tmp_path / "g.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "g.onnx"), full_check=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["T", "B", 3]
    assert [n.op_type for n in proto.graph.node].count("GRU") == 2
    fixed = gruxp.onnx.export(gru, tmp_path / "f.onnx", dynamic=False, shape=(5, 2))
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [5, 2, 3]


def test_whole_model_with_embedding_and_head(tmp_path):
    model = gruxp.Sequential(
        embed=gruxp.Embedding(11, 5, seed=0),
        drop=gruxp.Dropout(0.3),
        gru=gruxp.GRU(5, 6, 2, batch_first=True, seed=1),
        head=gruxp.Linear(6, 11, seed=2),
    ).eval()
    gruxp.onnx.export(model, tmp_path / "lm.onnx", lengths=True)
    ids = np.random.default_rng(0).integers(0, 11, size=(3, 9))
    lengths = np.array([9, 4, 1], np.int32)
    y, h_n = _session(tmp_path / "lm.onnx").run(["y", "h_n"], {"x": ids, "lengths": lengths})
    want_y, state = model(ids, lengths=lengths)
    valid = np.arange(9)[None, :] < lengths[:, None]
    np.testing.assert_allclose(y[valid], want_y[valid], **ATOL)  # padded steps: head(0) on both sides
    np.testing.assert_allclose(y, want_y, **ATOL)
    np.testing.assert_allclose(h_n, state["gru"], **ATOL)


def test_float64_models(tmp_path):
    gru = gruxp.GRU(3, 4, dtype="float64", seed=0)
    with pytest.warns(UserWarning, match="exporting a float64 model as float32"):
        gruxp.onnx.export(gru, tmp_path / "g.onnx")
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    (out,) = _session(tmp_path / "g.onnx").run(["out"], {"x": x.astype(np.float32)})
    np.testing.assert_allclose(out, gru(x)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="float32 only"):
        gruxp.onnx.export(gru, tmp_path / "h.onnx", dtype="float64")


def test_export_errors(tmp_path):
    with pytest.raises(TypeError, match="export takes a gruxp.GRU or a gruxp.Sequential"):
        gruxp.onnx.export(gruxp.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="has no ONNX export"):
        gruxp.onnx.export(gruxp.Sequential(gru=gruxp.GRU(2, 2), last=gruxp.LastStep()), tmp_path / "x.onnx")
    newest = onnx.defs.onnx_opset_version()
    for opset in (9, 99, newest + 1, 14.0, True):
        with pytest.raises(ValueError, match=rf"opset must be an int in \[14, {newest}\]"):
            gruxp.onnx.export(gruxp.GRU(2, 2), tmp_path / "x.onnx", opset=opset)
    for dtype in ("float16", "bogus", np.int8, np.float16):
        with pytest.raises(TypeError, match="dtype must be None or float32"):
            gruxp.onnx.export(gruxp.GRU(2, 2), tmp_path / "x.onnx", dtype=dtype)
    for shape in ((0, 0), (-1, 2), (2,), (2.0, 3), "ab"):
        with pytest.raises(ValueError, match=r"shape must be \(T, B\) with two ints >= 1"):
            gruxp.onnx.export(gruxp.GRU(2, 2), tmp_path / "x.onnx", dynamic=False, shape=shape)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match=r"dynamic=False needs shape=\(T, B\)"):
        gruxp.onnx.export(gruxp.GRU(2, 2), tmp_path / "x.onnx", dynamic=False)


def test_newest_opset_loads_in_onnx_runtime(tmp_path):
    gru = gruxp.GRU(3, 4, seed=0)
    gruxp.onnx.export(gru, tmp_path / "new.onnx", opset=onnx.defs.onnx_opset_version(), dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(_session(tmp_path / "new.onnx").run(None, {"x": x})[0], gru(x)[0], **ATOL)


def test_a_linear_before_the_gru(tmp_path):
    """The graph's input has the first layer's features, not the GRU's (an onnx InferenceError before)."""
    model = gruxp.Sequential(pre=gruxp.Linear(3, 4, seed=0), gru=gruxp.GRU(4, 8, batch_first=True, seed=1))
    gruxp.onnx.export(model, tmp_path / "pre.onnx")
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    out, h_n = _session(tmp_path / "pre.onnx").run(None, {"x": x})
    y, state = model(x)
    np.testing.assert_allclose(out, y, **ATOL)
    np.testing.assert_allclose(h_n, state["gru"], **ATOL)
