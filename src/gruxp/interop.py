"""Weights in and out of PyTorch and Keras, losslessly, and as safetensors files.

PyTorch uses gruxp's own names and layouts (``nn.GRU``, ``nn.GRUCell``, ``nn.Linear``,
``nn.Embedding``), so conversion is a state-dict copy; ``torch`` is imported only when a function
that needs it is called.

Keras 3 differs in three ways (keras-team/keras#8720 is the classic confusion):

* gate order z, r, h instead of r, z, n;
* ``kernel`` (I, 3H) and ``recurrent_kernel`` (H, 3H), the transposes of weight_ih / weight_hh;
* ``bias`` (2, 3H) = [input bias; recurrent bias] when ``reset_after=True``, but one (3H,) bias
  when ``reset_after=False``. In that convention every recurrent bias sits outside the reset
  product (n = tanh(W_in x + b_in + W_hn(r⊙h) + b_hn)), so b_ih + b_hh folds into Keras's single
  bias exactly; the way back puts it all in ``bias_ih`` and zeros in ``bias_hh`` (same function).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._namespace import dtype_name, to_numpy
from .layers import Dropout, Embedding, LastStep, Linear, Sequential
from .models import GRU, GRUCell

__all__ = [
    "save_safetensors",
    "load_safetensors",
    "from_torch",
    "to_torch",
    "torch_to_keras_gates",
    "params_to_keras",
    "keras_to_params",
    "to_keras",
    "from_keras",
]


def torch_to_keras_gates(a: np.ndarray, H: int) -> np.ndarray:
    """PyTorch's gate blocks (r, z, n) along axis 0 of ``a`` (3H, ...) in Keras's and ONNX's order
    (z, r, n); the swap is its own inverse, so it also takes Keras's order back to PyTorch's."""
    return np.concatenate([a[H : 2 * H], a[:H], a[2 * H :]], axis=0)


_rzn_to_zrn = _zrn_to_rzn = torch_to_keras_gates


# -- PyTorch ------------------------------------------------------------------------------------
def from_torch(module: Any, *, xp: Any = None, device: Any = None, dtype: Any = None) -> Any:
    """A gruxp layer equal to a ``torch.nn`` GRU, GRUCell, Linear, Embedding or Dropout, to a
    ``gruxp.torch`` GRU, GRUCell or LastStep, or a gruxp Sequential equal to a ``gruxp.torch.Sequential``
    of those (weights copied, values unchanged)."""
    import torch

    from . import torch as gruxp_torch

    kind = type(module)
    place = dict(xp=xp, device=device, dtype=dtype)
    if kind is gruxp_torch.Sequential:
        return Sequential({name: from_torch(child, **place) for name, child in module.named_children()})
    if kind is torch.nn.Dropout:
        return Dropout(module.p)
    if kind is gruxp_torch.LastStep:
        return LastStep(batch_first=module.batch_first)
    if kind is gruxp_torch.GRU:
        layer: Any = GRU(
            module.input_size, module.hidden_size, module.num_layers, bias=module.bias, batch_first=module.batch_first,
            bidirectional=module.bidirectional, reset_after=module.reset_after, dropout=module.dropout, **place,
        )  # fmt: skip
    elif kind is gruxp_torch.GRUCell:
        layer = GRUCell(module.input_size, module.hidden_size, bias=module.bias, reset_after=module.reset_after, **place)
    elif kind is torch.nn.GRU:
        if getattr(module, "proj_size", 0):
            raise ValueError("torch.nn.GRU has no projections; proj_size must be 0")
        layer = GRU(
            module.input_size,
            module.hidden_size,
            module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            bidirectional=module.bidirectional,
            dropout=float(module.dropout),
            xp=xp,
            device=device,
            dtype=dtype,
        )
    elif kind is torch.nn.GRUCell:
        layer = GRUCell(module.input_size, module.hidden_size, bias=module.bias, xp=xp, device=device, dtype=dtype)
    elif kind is torch.nn.Linear:
        layer = Linear(module.in_features, module.out_features, bias=module.bias is not None, xp=xp, device=device, dtype=dtype)
    elif kind is torch.nn.Embedding:
        if module.max_norm is not None or module.scale_grad_by_freq:
            raise ValueError(
                "nn.Embedding with max_norm or scale_grad_by_freq has no gruxp equivalent; "
                f"got max_norm={module.max_norm}, scale_grad_by_freq={module.scale_grad_by_freq}"
            )
        layer = Embedding(
            module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx, xp=xp, device=device, dtype=dtype
        )
    else:
        raise TypeError(
            "from_torch converts nn.GRU, nn.GRUCell, nn.Linear, nn.Embedding, nn.Dropout and gruxp.torch's GRU, GRUCell, "
            f"LastStep and Sequential; got {kind.__name__}"
        )
    layer.load_state_dict({k: v.detach().cpu() for k, v in module.state_dict().items()})
    return layer


def to_torch(layer: Any, *, dtype: Any = None) -> Any:
    """The ``torch.nn`` module equal to a gruxp GRU (reset_after=True only), GRUCell, Linear, Embedding
    or Dropout; for a Sequential (the language model of ``gruxp train``), a ``gruxp.torch.Sequential``
    of those (a ``LastStep`` becomes ``gruxp.torch.LastStep``), its parameters under the same names."""
    import torch

    from . import torch as gruxp_torch

    if isinstance(layer, Sequential):
        return gruxp_torch.Sequential({name: to_torch(child, dtype=dtype) for name, child in layer.layers.items()})
    if isinstance(layer, Dropout):
        return torch.nn.Dropout(layer.p)
    if isinstance(layer, LastStep):
        return gruxp_torch.LastStep(batch_first=layer.batch_first)
    if getattr(layer, "reset_after", True) is False:
        raise ValueError("PyTorch has only the reset_after=True GRU; this model has reset_after=False")
    dtype = dtype or getattr(torch, dtype_name(layer.dtype))
    if isinstance(layer, GRU):
        module: Any = torch.nn.GRU(
            layer.input_size,
            layer.hidden_size,
            layer.num_layers,
            bias=layer.bias,
            batch_first=layer.batch_first,
            bidirectional=layer.bidirectional,
            dropout=layer.dropout,
            dtype=dtype,
        )
    elif isinstance(layer, GRUCell):
        module = torch.nn.GRUCell(layer.input_size, layer.hidden_size, bias=layer.bias, dtype=dtype)
    elif isinstance(layer, Linear):
        module = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias, dtype=dtype)
    elif isinstance(layer, Embedding):
        module = torch.nn.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx, dtype=dtype)
    else:
        raise TypeError(
            f"to_torch converts GRU, GRUCell, Linear, Embedding, Dropout, LastStep and Sequential; got {type(layer).__name__}"
        )
    module.load_state_dict({k: torch.from_numpy(v).to(dtype) for k, v in layer.state_dict(numpy=True).items()})
    return module


# -- safetensors ----------------------------------------------------------------------------------
def save_safetensors(model: Any, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` (PyTorch's names) as a ``.safetensors`` file; returns the path.

    For a :class:`~gruxp.GRU` the names are exactly ``nn.GRU``'s, so
    ``torch.nn.GRU(...).load_state_dict(safetensors.torch.load_file(path))`` works as it is; a
    ``Sequential``'s are prefixed by layer name (``gru.weight_ih_l0``), as in a torch module with
    submodules of those names. The header's metadata says ``format: pt`` (the Hugging Face
    convention) and holds the gruxp structure as JSON. Written to a temporary file and renamed over
    ``path``, so a failure never leaves a half-written file in place of a good one.
    """
    import json
    import secrets

    from safetensors.numpy import save_file

    from .checkpoint import _json_safe, model_config

    path = Path(path)
    tensors = {k: np.ascontiguousarray(v) for k, v in model.state_dict(numpy=True).items()}
    meta = {"format": "pt", "gruxp": json.dumps(_json_safe(model_config(model))), **dict(metadata or {})}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``.safetensors`` file as host NumPy, by name: pass them to ``load_state_dict``
    (a file written by PyTorch's ``safetensors.torch.save_file(net.state_dict(), path)`` loads too)."""
    from safetensors.numpy import load_file

    return load_file(str(path))


# -- Keras ----------------------------------------------------------------------------------------
def params_to_keras(params: Mapping[str, Any], *, reset_after: bool = True, suffix: str = "") -> list[np.ndarray]:
    """Keras GRU weights ``[kernel, recurrent_kernel(, bias)]`` from one layer-direction's params.

    ``suffix`` picks the layer-direction of a stacked GRU (``"_l0"``, ``"_l1_reverse"``); a cell
    uses ``""``.
    """
    w_ih, w_hh = to_numpy(params["weight_ih" + suffix]), to_numpy(params["weight_hh" + suffix])
    H = w_hh.shape[1]
    weights = [_rzn_to_zrn(w_ih, H).T.copy(), _rzn_to_zrn(w_hh, H).T.copy()]
    if ("bias_ih" + suffix) in params:
        b_ih, b_hh = to_numpy(params["bias_ih" + suffix]), to_numpy(params["bias_hh" + suffix])
        if reset_after:
            weights.append(np.stack([_rzn_to_zrn(b_ih, H), _rzn_to_zrn(b_hh, H)]))
        else:
            weights.append(_rzn_to_zrn(b_ih + b_hh, H))
    return weights


def keras_to_params(weights: Sequence[Any], *, reset_after: bool = True, suffix: str = "") -> dict[str, np.ndarray]:
    """PyTorch-named params from Keras GRU weights ``[kernel, recurrent_kernel(, bias)]``."""
    if len(weights) not in (2, 3):
        raise ValueError(
            f"Keras GRU weights are [kernel, recurrent_kernel] or [kernel, recurrent_kernel, bias]; got {len(weights)} arrays"
        )
    kernel, recurrent = to_numpy(weights[0]), to_numpy(weights[1])
    H = recurrent.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 3 * H or recurrent.shape != (H, 3 * H):
        raise ValueError(f"kernel must be (I, 3H) and recurrent_kernel (H, 3H); got {kernel.shape} and {recurrent.shape}")
    params = {"weight_ih" + suffix: _zrn_to_rzn(kernel.T, H), "weight_hh" + suffix: _zrn_to_rzn(recurrent.T, H)}
    if len(weights) == 3:
        bias = to_numpy(weights[2])
        expected = (2, 3 * H) if reset_after else (3 * H,)
        if bias.shape != expected:
            raise ValueError(f"bias must have shape {expected} for reset_after={reset_after}; got {bias.shape}")
        if reset_after:
            params["bias_ih" + suffix], params["bias_hh" + suffix] = _zrn_to_rzn(bias[0], H), _zrn_to_rzn(bias[1], H)
        else:
            params["bias_ih" + suffix], params["bias_hh" + suffix] = _zrn_to_rzn(bias, H), np.zeros(3 * H, bias.dtype)
    return params


def to_keras(layer: GRU | GRUCell) -> list[np.ndarray]:
    """Weights for ``keras.layers.GRU(H, reset_after=layer.reset_after, use_bias=layer.bias)``.

    A one-layer unidirectional GRU or a GRUCell (Keras stacks and wraps ``Bidirectional`` itself).
    """
    if isinstance(layer, GRU):
        if layer.num_layers != 1 or layer.bidirectional:
            raise ValueError("to_keras takes a one-layer unidirectional GRU; convert each layer-direction with params_to_keras")
        return params_to_keras(layer.params, reset_after=layer.reset_after, suffix="_l0")
    if isinstance(layer, GRUCell):
        return params_to_keras(layer.params, reset_after=layer.reset_after)
    raise TypeError(f"to_keras converts GRU and GRUCell; got {type(layer).__name__}")


def from_keras(
    weights: Sequence[Any],
    *,
    reset_after: bool = True,
    batch_first: bool = True,
    xp: Any = None,
    device: Any = None,
    dtype: Any = None,
) -> GRU:
    """A one-layer GRU equal to a Keras GRU with these weights (``layer.get_weights()``).

    ``batch_first=True`` by default because Keras is batch-major.
    """
    params = keras_to_params(weights, reset_after=reset_after, suffix="_l0")
    I, H = params["weight_ih_l0"].shape[1], params["weight_hh_l0"].shape[1]
    gru = GRU(I, H, bias=len(weights) == 3, batch_first=batch_first, reset_after=reset_after, xp=xp, device=device, dtype=dtype)
    gru.load_state_dict(params)
    return gru
