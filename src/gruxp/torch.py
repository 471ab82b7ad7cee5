"""gruxp in PyTorch's idiom: ``GRU`` and ``GRUCell`` as ``torch.nn.Module``s with gruxp's analytic backward.

Constructed like ``nn.GRU`` / ``nn.GRUCell`` (plus ``reset_after``), with ``nn.Parameter``s under
PyTorch's names, so that ``state_dict()`` loads into ``nn.GRU`` and back unchanged, and
``nn.Sequential``, ``torch.optim``, ``.to(device, dtype)``, ``train()``/``eval()`` and dropout
behave as in PyTorch. ``forward`` runs a ``torch.autograd.Function``: its forward is gruxp's forward
(with the tape), its backward gruxp's analytic backward over that tape, not autograd of the array
operations. Double backward is not defined, and says so when asked (``create_graph=True``).

Contiguous or not, float32 and float64 tensors on the CPU are viewed as NumPy arrays, without a
copy, and run on gruxp's CPU route (the plan, the bits of the NumPy model); the results are handed
back as tensors over the same memory. Tensors on other devices run gruxp's generic code on torch
(a CUDA route waits for a GPU to test it on). The parameters are saved for backward as PyTorch
saves its own, so changing one in place between forward and backward raises PyTorch's error.

Importing this module imports torch; ``import gruxp`` does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from . import functional as F
from ._checks import check_bool, check_dropout, check_positive_int

__all__ = ["GRU", "GRUCell", "LastStep", "Sequential"]

_FAST = (torch.float32, torch.float64)


def _array(t: torch.Tensor | None) -> Any:
    """What gruxp computes on: a NumPy view of a CPU float32/float64 tensor (no copy), else the tensor."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" and t.dtype in _FAST else t


def _tensor(a: Any) -> Any:
    """Back to a tensor: a NumPy result over its own memory (no copy), a tensor as it is."""
    if a is None or isinstance(a, torch.Tensor):
        return a
    return torch.from_numpy(a)


def _random_generator(module: nn.Module) -> np.random.Generator | None:
    """A host Generator for gruxp's dropout masks, seeded from torch's generator (``torch.manual_seed`` decides them)."""
    if not module.training:
        return None
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def _register(module: nn.Module, shapes: Mapping[str, tuple[int, ...]], device: Any, dtype: Any) -> None:
    """``module``'s parameters, PyTorch's names and shapes, initialised by its ``reset_parameters``."""
    for name, shape in shapes.items():
        module.register_parameter(name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
    module.reset_parameters()  # type: ignore[operator]


def _uniform(module: nn.Module, hidden_size: int) -> None:
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for weight in module.parameters():
            weight.uniform_(-bound, bound)


def _needs_graph(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records this call: grad mode on and some input requiring a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _no_double_backward() -> None:
    """gruxp's backward has no derivative of its own: ``create_graph=True`` (double backward, as in a
    gradient penalty) is refused with that reason rather than silently giving a constant gradient."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "double backward through gruxp.torch is not supported: its backward is gruxp's analytic backward, which has "
            "no derivative of its own (create_graph=True, e.g. a gradient penalty); use torch.nn.GRU for that"
        )


class _Options(NamedTuple):
    names: tuple[str, ...]
    num_layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    reset_after: bool
    dropout: float
    rng: Any
    lengths: Any

    def call(self) -> dict[str, Any]:
        """The keyword arguments of gruxp's functional call."""
        return {name: getattr(self, name) for name in self._fields if name != "names"}


class _GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, options: _Options, x: torch.Tensor, h0: torch.Tensor | None, *weights: torch.Tensor) -> tuple:
        params = {name: _array(w) for name, w in zip(options.names, weights, strict=True)}
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: zeros to gruxp
        out, h_n, tape = F.gru_forward(params, _array(x), _array(h0), **options.call())
        ctx.tape, ctx.names = tape, options.names
        ctx.save_for_backward(*weights)  # PyTorch's version check: an in-place edit before backward raises
        return _tensor(out), _tensor(h_n)

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor | None, d_hn: torch.Tensor | None) -> tuple:
        _no_double_backward()
        ctx.saved_tensors  # noqa: B018  (raises if a weight was changed in place since forward)
        need_x, need_h0, need_w = ctx.needs_input_grad[1], ctx.needs_input_grad[2], ctx.needs_input_grad[3:]
        grads, dx, dh0 = F.gru_backward(ctx.tape, _array(d_out), _array(d_hn), input_grad=need_x)
        weights = [_tensor(grads[name]) if need else None for name, need in zip(ctx.names, need_w, strict=True)]
        return (None, _tensor(dx) if need_x else None, _tensor(dh0) if need_h0 else None, *weights)


class GRU(nn.Module):
    """``torch.nn.GRU``'s interface on gruxp: its forward and analytic backward, ``lengths`` without packing.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype
        As ``torch.nn.GRU``'s; the parameters are ``nn.Parameter``s with its names
        (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``),
        initialised as it does, U(−1/√H, 1/√H) from torch's generator.
    reset_after
        ``True`` (PyTorch's and cuDNN's convention) or ``False`` (Cho et al.'s, Keras's
        ``reset_after=False``), which ``nn.GRU`` does not have.

    Notes
    -----
    ``forward(x, h0=None, *, lengths=None) -> (out, h_n)``: x (T, B, I), (B, T, I) with
    ``batch_first``, or unbatched (T, I); h0 and h_n (L·D, B, H). ``lengths`` (B host integers in
    [1, T]) has packed-sequence semantics: outputs past a length are zero, h_n the last valid state.
    float32 and float64.

    Examples
    --------
    >>> import torch, gruxp.torch
    >>> gru = gruxp.torch.GRU(3, 5, num_layers=2, batch_first=True)
    >>> out, h_n = gru(torch.zeros(4, 7, 3))
    >>> out.shape, h_n.shape
    (torch.Size([4, 7, 5]), torch.Size([2, 4, 5]))
    """

    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    reset_after: bool
    dropout: float

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        reset_after: bool = True,
    ) -> None:
        super().__init__()
        self.dropout = check_dropout("dropout", dropout)
        structure = F.GRUConfig.checked(input_size, hidden_size, num_layers, bias, batch_first, bidirectional, reset_after)
        for field, value in structure._asdict().items():  # input_size, ..., reset_after: nn.GRU's attributes
            setattr(self, field, value)
        _register(self, structure.param_shapes(), device, dtype)

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) for every parameter, from torch's generator (``nn.GRU``'s own rule)."""
        _uniform(self, self.hidden_size)

    def flatten_parameters(self) -> None:
        """Nothing to do (``nn.GRU``'s cuDNN layout call, kept so that code calling it runs)."""

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None, *, lengths: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        names = tuple(name for name, _ in self.named_parameters(recurse=False))
        dropout = self.dropout if self.training and self.num_layers > 1 else 0.0
        options = _Options(
            names, self.num_layers, self.bias, self.batch_first, self.bidirectional, self.reset_after, dropout,
            _random_generator(self) if dropout else None, lengths,
        )  # fmt: skip
        weights = [getattr(self, name) for name in names]
        if not _needs_graph(x, h0, *weights):  # inference (no_grad, or nothing requires grad): no tape
            out, h_n = F.gru({n: _array(w) for n, w in zip(names, weights, strict=True)}, _array(x), _array(h0), **options.call())
            return _tensor(out), _tensor(h_n)
        return _GRUFunction.apply(options, x, h0, *weights)

    def extra_repr(self) -> str:
        extras = [f"{self.input_size}, {self.hidden_size}"] + ([f"num_layers={self.num_layers}"] if self.num_layers != 1 else [])
        for name, default in (("bias", True), ("batch_first", False), ("bidirectional", False), ("reset_after", True)):
            if getattr(self, name) != default:
                extras.append(f"{name}={getattr(self, name)}")
        return ", ".join(extras + ([f"dropout={self.dropout}"] if self.dropout else []))


class _GRUCellFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, names: tuple, reset_after: bool, x: torch.Tensor, h: torch.Tensor | None, *weights: torch.Tensor
    ) -> Any:
        params = {name: _array(w) for name, w in zip(names, weights, strict=True)}
        ctx.set_materialize_grads(False)
        h_new, tape = F.gru_cell_forward(params, _array(x), _array(h), reset_after=reset_after)
        ctx.tape, ctx.names = tape, names
        ctx.save_for_backward(*weights)
        return _tensor(h_new)

    @staticmethod
    def backward(ctx: Any, dh: torch.Tensor | None) -> tuple:
        _no_double_backward()
        ctx.saved_tensors  # noqa: B018  (PyTorch's in-place check)
        n_inputs = 4 + len(ctx.names)
        if dh is None:
            return (None,) * n_inputs
        grads, dx, dh_prev = F.gru_cell_backward(ctx.tape, _array(dh))
        need = ctx.needs_input_grad
        weights = [_tensor(grads[name]) if need[4 + i] else None for i, name in enumerate(ctx.names)]
        return (None, None, _tensor(dx) if need[2] else None, _tensor(dh_prev) if need[3] else None, *weights)


class GRUCell(nn.Module):
    """``torch.nn.GRUCell``'s interface on gruxp (plus ``reset_after``): ``forward(x, h=None) -> h'``,
    x (B, I) or (I,), h (B, H) or (H,); gruxp's analytic backward."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        reset_after: bool = True,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.bias = check_bool("bias", bias)
        self.reset_after = check_bool("reset_after", reset_after)
        _register(self, F.cell_param_shapes(input_size, hidden_size, bias=bias), device, dtype)

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) for every parameter, from torch's generator (``nn.GRUCell``'s own rule)."""
        _uniform(self, self.hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        names = tuple(name for name, _ in self.named_parameters(recurse=False))
        weights = [getattr(self, name) for name in names]
        if not _needs_graph(x, h, *weights):
            params = {n: _array(w) for n, w in zip(names, weights, strict=True)}
            return _tensor(F.gru_cell(params, _array(x), _array(h), reset_after=self.reset_after))
        return _GRUCellFunction.apply(names, self.reset_after, x, h, *weights)

    def extra_repr(self) -> str:
        extras = [f"{self.input_size}, {self.hidden_size}"] + ([] if self.bias else ["bias=False"])
        return ", ".join(extras + ([] if self.reset_after else ["reset_after=False"]))


class LastStep(nn.Module):
    """Each sequence's last valid output, as :class:`gruxp.LastStep`: (T, B, F) or (B, T, F) -> (B, F)."""

    def __init__(self, batch_first: bool = False) -> None:
        super().__init__()
        self.batch_first = check_bool("batch_first", batch_first)

    def forward(self, x: torch.Tensor, *, lengths: Any = None) -> torch.Tensor:
        y = x if self.batch_first else x.transpose(0, 1)  # (B, T, F)
        if lengths is None:
            return y[:, -1]
        last = torch.as_tensor(np.asarray(lengths) - 1, device=y.device)
        return y[torch.arange(y.shape[0], device=y.device), last]


class Sequential(nn.Module):
    """The torch counterpart of :class:`gruxp.Sequential`: named layers in order (their parameters
    under the same flat names, ``gru.weight_ih_l0``), each recurrent layer's state carried by name.

    ``forward(x, state=None, *, lengths=None) -> (y, state)``, as gruxp's Sequential is called.
    :func:`gruxp.interop.to_torch` builds one from a gruxp Sequential, ``from_torch`` takes it back.
    """

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)

    def forward(
        self, x: torch.Tensor, state: Mapping[str, Any] | None = None, *, lengths: Any = None
    ) -> tuple[torch.Tensor, dict]:
        state = dict(state or {})
        new: dict[str, Any] = {}
        y = x
        for name, layer in self.named_children():
            if isinstance(layer, GRU):
                y, new[name] = layer(y, state.get(name), lengths=lengths)
            elif isinstance(layer, nn.GRU):
                if lengths is not None:
                    raise ValueError(f"layer {name!r} is torch.nn.GRU, which takes no lengths (use gruxp.torch.GRU)")
                y, new[name] = layer(y, state.get(name))
            elif isinstance(layer, LastStep):
                y = layer(y, lengths=lengths)
            else:
                y = layer(y)
        return y, new
