"""Export to ONNX: one standard ``GRU`` node per layer, built with the ``onnx`` package alone.

gruxp knows its equations and weight layout, so the export is exact by construction:

* ``reset_after=True`` is ONNX's ``linear_before_reset=1``; ``reset_after=False`` is ``0``;
* gate rows r, z, n become ONNX's z, r, h; W [D, 3H, I], R [D, 3H, H], B [D, 6H] (input biases, then
  recurrent), reverse-direction weights at index 1;
* ``lengths`` become ``sequence_lens``, whose semantics are PyTorch's packed sequences, like gruxp's;
* layers chain as Y [T, D, B, H] → Transpose → Reshape → [T, B, D·H]; h_n concatenates each layer's Y_h;
* ``layout`` stays 0 (ONNX Runtime refuses batch-first recurrent nodes): batch_first models get
  Transposes at the graph's edges;
* ONNX Runtime's GRU kernel is float32-only, so float64 models are exported as float32 with a warning
  (``dtype="float64"`` asks for a float64 graph and is refused with the reason).

Whole models: a :class:`~gruxp.Sequential` of GRUs, Linear layers, an Embedding first (ids → Gather) and
Dropout (the identity at inference).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ._namespace import dtype_name
from .functional._params import direction_suffix
from .interop import torch_to_keras_gates as _zrn  # ONNX's gate order is Keras's: z, r, n
from .layers import Dropout, Embedding, Linear, Sequential
from .models import GRU, Recurrent

__all__ = ["export"]


def _float_name(dtype: Any) -> str | None:
    """'float32'/'float64'/... for a dtype object, a NumPy scalar type or a name; None when it is none."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        name = dtype_name(dtype)
        return name if isinstance(name, str) else None


class _Graph:
    """Collects nodes, initializers and fresh names."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, stem: str | None = None, **attrs: Any) -> list[str]:
        outputs = [self.name(stem or op.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=self.name(op), **attrs))
        return outputs


def _gru_layers(g: _Graph, gru: GRU, x: str, *, lengths: str, h0: str | None, np_dtype: Any) -> tuple[str, str]:
    """Time-major x [T, B, I] → (out [T, B, D·H], h_n [L·D, B, H])."""
    state = gru.state_dict(numpy=True)
    H, L, D = gru.hidden_size, gru.num_layers, 2 if gru.bidirectional else 1
    h_parts = []
    for layer in range(L):
        suffixes = [direction_suffix(layer, d) for d in range(D)]
        W = np.stack([_zrn(state["weight_ih" + s], H) for s in suffixes]).astype(np_dtype)
        R = np.stack([_zrn(state["weight_hh" + s], H) for s in suffixes]).astype(np_dtype)
        inputs = [x, g.const("W", W), g.const("R", R)]
        if gru.bias:
            B = np.stack([np.concatenate([_zrn(state["bias_ih" + s], H), _zrn(state["bias_hh" + s], H)]) for s in suffixes])
            inputs.append(g.const("B", B.astype(np_dtype)))
        else:
            inputs.append("")
        inputs.append(lengths)
        if h0 is not None:
            starts, ends = (
                g.const("start", np.array([layer * D], np.int64)),
                g.const("end", np.array([(layer + 1) * D], np.int64)),
            )
            (initial,) = g.node("Slice", [h0, starts, ends, g.const("axis", np.array([0], np.int64))], stem="initial_h")
            inputs.append(initial)
        while inputs and inputs[-1] == "":
            inputs.pop()
        y, y_h = g.node(
            "GRU",
            inputs,
            n_out=2,
            stem=f"gru_l{layer}",
            hidden_size=H,
            direction="bidirectional" if D == 2 else "forward",
            linear_before_reset=1 if gru.reset_after else 0,
        )
        (t_bdh,) = g.node("Transpose", [y], perm=[0, 2, 1, 3])  # [T, B, D, H]
        (x,) = g.node("Reshape", [t_bdh, g.const("shape", np.array([0, 0, -1], np.int64))], stem=f"out_l{layer}")
        h_parts.append(y_h)
    (h_n,) = g.node("Concat", h_parts, axis=0, stem="h_n") if len(h_parts) > 1 else g.node("Identity", h_parts, stem="h_n")
    return x, h_n


def export(
    model: GRU | Sequential,
    path: str | os.PathLike,
    *,
    opset: int = 14,
    dynamic: bool = True,
    shape: tuple[int, int] | None = None,
    lengths: bool = False,
    h0: bool = False,
    dtype: Any = None,
) -> Any:
    """Write ``model`` to ``path`` as an ONNX graph and return the ``onnx.ModelProto``.

    Graph inputs: ``x`` ((T, B, I), or (B, T, I) for batch_first; int64 ids when the first layer is
    an Embedding), then ``lengths`` (B,) int32 if ``lengths=True``, then ``h0`` (L·D, B, H) if
    ``h0=True``. Outputs: ``out`` (the GRU's output, or ``y`` after a head) and ``h_n``.
    ``dynamic=True`` makes B and T symbolic; ``dynamic=False`` fixes them to ``shape=(T, B)``.
    The graph passes ``onnx.checker.check_model(full_check=True)``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers, gru = _exportable_layers(model)
    _check_options(onnx, gru, opset=opset, dynamic=dynamic, shape=shape, dtype=dtype)
    np_dtype, elem = np.float32, TensorProto.FLOAT
    g = _Graph(helper, numpy_helper)
    T_dim, B_dim = ("T", "B") if shape is None else (int(shape[0]), int(shape[1]))  # shape is given exactly when not dynamic
    lead = [B_dim, T_dim] if gru.batch_first else [T_dim, B_dim]
    first = next(iter(layers.values()))
    if isinstance(first, Embedding):
        graph_inputs = [helper.make_tensor_value_info("x", TensorProto.INT64, lead)]
    else:  # the model's input: the first layer's features (a Linear may come before the GRU)
        in_features = first.in_features if isinstance(first, Linear) else gru.input_size
        graph_inputs = [helper.make_tensor_value_info("x", elem, lead + [in_features])]
    state_shape = [gru.num_layers * (2 if gru.bidirectional else 1), B_dim, gru.hidden_size]
    if lengths:
        graph_inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, [B_dim]))
    if h0:
        graph_inputs.append(helper.make_tensor_value_info("h0", elem, state_shape))
    current, h_n, features = _layer_nodes(g, layers, lengths=lengths, h0=h0, np_dtype=np_dtype)
    out_name = "out" if isinstance(model, GRU) or isinstance(list(layers.values())[-1], GRU) else "y"
    g.node("Identity", [current], stem="unused")
    g.nodes[-1].output[0] = out_name
    g.node("Identity", [h_n], stem="unused")
    g.nodes[-1].output[0] = "h_n"
    graph_outputs = [
        helper.make_tensor_value_info(out_name, elem, lead + [features]),
        helper.make_tensor_value_info("h_n", elem, state_shape),
    ]
    graph = helper.make_graph(g.nodes, "gruxp", graph_inputs, graph_outputs, initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="gruxp")
    proto.ir_version = min(proto.ir_version, 10)  # readable by current ONNX Runtime releases
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(path))
    return proto


def _exportable_layers(model: Any) -> tuple[dict[str, Any], GRU]:
    """The model's layers by name and its one GRU; a clear error for anything ONNX cannot hold."""
    for name, layer in ({"model": model} | (dict(model.layers) if isinstance(model, Sequential) else {})).items():
        if isinstance(layer, Recurrent) and not isinstance(layer, GRU):
            raise ValueError(
                f"{type(layer).__name__} ({name!r}, cell {layer.structure.cell.name!r}) has no ONNX export: ONNX's "
                "GRU operator is the plain GRU, and gruxp does not export other cells as Scan/Loop graphs; "
                "export a GRU, or run this model with gruxp (docs/user-guide/onnx.md)"
            )
    if isinstance(model, GRU):
        layers = {"gru": model}
    elif isinstance(model, Sequential):
        layers = dict(model.layers)
    else:
        raise TypeError(f"export takes a gruxp.GRU or a gruxp.Sequential; got {type(model).__name__}")
    grus = [layer for layer in layers.values() if isinstance(layer, GRU)]
    if len(grus) != 1:
        raise ValueError(f"export needs exactly one GRU in the model (ONNX state in/out is per GRU); found {len(grus)}")
    for name, layer in layers.items():
        if not isinstance(layer, (GRU, Linear, Dropout, Embedding)):
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) has no ONNX export; supported: GRU, Linear, Embedding, Dropout"
            )
        if isinstance(layer, Embedding) and name != next(iter(layers)):
            raise ValueError(f"an Embedding must be the first layer; {name!r} is not")
    return layers, grus[0]


def _check_options(onnx: Any, gru: GRU, *, opset: Any, dynamic: Any, shape: Any, dtype: Any) -> None:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 14 <= opset <= newest:
        raise ValueError(
            f"opset must be an int in [14, {newest}] (14: GRU's layout attribute and Reshape semantics; "
            f"{newest}: the newest this onnx {onnx.__version__} knows); got {opset!r}"
        )
    if dtype is not None:
        width = _float_name(dtype)
        if width == "float64":
            raise ValueError(
                "ONNX Runtime's GRU kernel supports float32 only ('GRU operator does not support double'); "
                "export with the default float32"
            )
        if width != "float32":
            raise TypeError(f"dtype must be None or float32 (the only width ONNX Runtime's GRU runs); got {dtype!r}")
    if dtype_name(gru.dtype) == "float64":
        warnings.warn(
            "exporting a float64 model as float32: ONNX Runtime's GRU kernel is float32-only", UserWarning, stacklevel=3
        )
    if not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be True or False; got {dynamic!r}")
    if shape is not None:
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
        ):
            raise ValueError(f"shape must be (T, B) with two ints >= 1; got {shape!r}")
        if dynamic:
            raise ValueError("shape=(T, B) fixes the graph's sizes: pass it with dynamic=False")
    elif not dynamic:
        raise ValueError("dynamic=False needs shape=(T, B)")


def _layer_nodes(g: _Graph, layers: dict[str, Any], *, lengths: bool, h0: bool, np_dtype: Any) -> tuple[str, str, int]:
    """Each layer's nodes in order, from the graph input ``x``: ``(output, h_n, output features)``."""
    current, features = "x", 0
    h_n = ""  # the GRU's final state (there is exactly one GRU, checked before)
    for layer in layers.values():
        if isinstance(layer, Dropout):
            continue
        if isinstance(layer, Embedding):
            weight = g.const("embedding", layer.state_dict(numpy=True)["weight"].astype(np_dtype))
            (current,) = g.node("Gather", [weight, current], axis=0, stem="embedded")
            features = layer.embedding_dim
        elif isinstance(layer, GRU):
            if layer.batch_first:
                (current,) = g.node("Transpose", [current], perm=[1, 0, 2], stem="time_major")
            current, h_n = _gru_layers(
                g, layer, current, lengths="lengths" if lengths else "", h0="h0" if h0 else None, np_dtype=np_dtype
            )
            if layer.batch_first:
                (current,) = g.node("Transpose", [current], perm=[1, 0, 2], stem="batch_major")
            features = (2 if layer.bidirectional else 1) * layer.hidden_size
        else:  # Linear
            st = layer.state_dict(numpy=True)
            (current,) = g.node("MatMul", [current, g.const("weight_t", st["weight"].T.astype(np_dtype))], stem="linear")
            if layer.bias:
                (current,) = g.node("Add", [current, g.const("bias", st["bias"].astype(np_dtype))], stem="linear")
            features = layer.out_features
    return current, h_n, features
