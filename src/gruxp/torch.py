"""gruxp in PyTorch's idiom: its cells as ``torch.nn.Module`` subclasses with gruxp's analytic backward.

``GRU``, ``LayerNormGRU``, ``MinGRU`` and ``GRUCell`` are constructed like ``nn.GRU`` / ``nn.GRUCell``
(plus each cell's own options), with ``nn.Parameter`` objects under PyTorch's names, so that
``state_dict()`` loads into ``nn.GRU`` and back unchanged, and ``nn.Sequential``, ``torch.optim``,
``.to(device, dtype)``, ``train()``/``eval()``, dropout, packed sequences and parametrizations
(``prune``, ``weight_norm``: the weights are read through the module's attributes) behave as in
PyTorch. The recurrent modules' forward and backward are two custom operators,
``gruxp::stack_forward`` (gruxp's forward, keeping the tape) and ``gruxp::stack_backward`` (gruxp's
analytic backward over it), registered with fake implementations and a backward formula:
``torch.compile(fullgraph=True)`` and ``torch.export`` take a model that holds them whole. Double
backward is not defined, and says so when asked (``create_graph=True``).

Contiguous or not, float32 and float64 tensors on the CPU are viewed as NumPy arrays, without a
copy, and run on gruxp's CPU route (the plan, the bits of the NumPy model); the results are handed
back as tensors over the same memory (a batch-first output is first made contiguous: the layout the
operators declare to torch.compile). Tensors on other devices run gruxp's generic code on torch
(a CUDA route waits for a GPU to test it on). The parameters are saved for backward as PyTorch
saves its own, so changing one in place between forward and backward raises PyTorch's error.

Importing this module imports torch; ``import gruxp`` does not.
"""

from __future__ import annotations

import itertools
import json
import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import functional as F
from ._checks import check_bool, check_dropout, check_lengths, check_positive_int

__all__ = ["GRU", "LayerNormGRU", "MinGRU", "GRUCell", "LastStep", "Sequential", "module_for"]

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


def _dense_array(t: torch.Tensor) -> Any:
    """:func:`_array` of ``t``, C-contiguous. A CPU copy is NumPy's, on this thread: torch's would wake
    its OpenMP threads, which then spin on the cores gruxp's workers are about to use."""
    a = _array(t)
    return np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a.contiguous()


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


def _no_double_backward(*, always: bool = False) -> None:
    """gruxp's backward has no derivative of its own: ``create_graph=True`` (double backward, as in a
    gradient penalty) is refused with that reason rather than silently giving a constant gradient."""
    if always or torch.is_grad_enabled():
        raise RuntimeError(
            "double backward through gruxp.torch is not supported: its backward is gruxp's analytic backward, which has "
            "no derivative of its own (create_graph=True, e.g. a gradient penalty); use torch.nn.GRU for that"
        )


# -- the stack as a pair of custom operators -------------------------------------------------------------
# ``gruxp::stack_forward`` runs gruxp's forward and keeps the tape; ``gruxp::stack_backward`` runs gruxp's
# backward over it. Both are opaque to torch.compile and torch.export (each has a fake implementation that
# gives only shapes), so a model holding these modules compiles with a full graph and exports whole.
# The tape stays in this process, in :data:`_tapes`, under the integer the forward returns as a tensor;
# it goes when that tensor does (the autograd graph that saved it, or the output nobody kept).
_tapes: dict[int, Any] = {}
_handles = itertools.count(1)


def _keep(tape: Any) -> torch.Tensor:
    key = next(_handles)
    _tapes[key] = tape
    handle = torch.tensor(key, dtype=torch.int64)
    weakref.finalize(handle, _tapes.pop, key, None)
    return handle


def _structure(spec: str) -> tuple[Any, dict, tuple[str, ...]]:
    """(the cell's structure, its call options, the parameter names in order) from the op's JSON spec."""
    from .models import CELLS

    data = json.loads(spec)
    structure = CELLS[data["cell"]].structure_type(**data["structure"])
    return structure, data["options"], tuple(structure.param_shapes())


def _out_shapes(x: torch.Tensor, structure: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(out's shape, h_n's shape) of a call on x: what the fake implementation gives."""
    D, H = structure.num_directions, structure.hidden_size
    LD = structure.num_layers * D
    if x.dim() == 2:  # unbatched (T, I)
        return (x.shape[0], D * H), (LD, H)
    T, B = (x.shape[1], x.shape[0]) if structure.batch_first else (x.shape[0], x.shape[1])
    return ((B, T, D * H) if structure.batch_first else (T, B, D * H)), (LD, B, H)


@torch.library.custom_op("gruxp::stack_forward", mutates_args=())
def _stack_forward(
    x: torch.Tensor,
    h0: torch.Tensor | None,
    weights: list[torch.Tensor],
    lengths: torch.Tensor | None,
    seed: torch.Tensor,
    spec: str,
    dropout: float,
    record: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, h_n, the tape's handle) of any cell's stack (``spec``: its structure, options and names)."""
    structure, options, names = _structure(spec)
    params = {name: _array(w) for name, w in zip(names, weights, strict=True)}
    rng = int(seed.item()) if dropout or options.get("training") else None
    n_lengths = None if lengths is None else lengths.detach().cpu().numpy()  # checked by the stack driver
    if not record:
        out, h_n = F.infer_stack(
            params, _array(x), _array(h0), n_lengths, structure, xp=None, dropout=dropout, rng=rng, options=options
        )
        return _dense(out), _dense(h_n), torch.zeros((), dtype=torch.int64)
    out, h_n, tape = F.run_stack(
        params, _array(x), _array(h0), n_lengths, structure, record=True, xp=None, dropout=dropout, rng=rng, options=options
    )
    return _dense(out), _dense(h_n), _keep(tape)


def _dense(a: Any) -> torch.Tensor:
    """A result as a C-contiguous tensor: the layout the fake implementation promises (a batch-first
    output is a transposed view until then)."""
    return torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a.contiguous()


@_stack_forward.register_fake
def _stack_forward_fake(x, h0, weights, lengths, seed, spec, dropout, record):
    out_shape, hn_shape = _out_shapes(x, _structure(spec)[0])
    return x.new_empty(out_shape), x.new_empty(hn_shape), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("gruxp::stack_backward", mutates_args=())
def _stack_backward(
    handle: torch.Tensor,
    d_out: torch.Tensor,
    d_hn: torch.Tensor,
    x: torch.Tensor,
    weights: list[torch.Tensor],
    need_x: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(dx, dh0, every weight's gradient) over the tape ``handle`` names (dx zeros unless ``need_x``)."""
    return _backward(handle, d_out, d_hn, x, weights, need_x)


def _backward(
    handle: torch.Tensor, d_out: torch.Tensor, d_hn: torch.Tensor, x: torch.Tensor, weights: list[torch.Tensor], need_x: bool
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    tape = _tapes.get(int(handle.item()))
    if tape is None:
        raise RuntimeError("gruxp.torch: this backward's tape is gone (was the forward run without grad?)")
    grads, dx, dh0 = F.backward_stack(tape, _dense_array(d_out), _dense_array(d_hn), input_grad=need_x)
    if dx is None:  # not asked for: zeros (an operator returns a tensor)
        like = _array(x)
        dx = np.zeros(like.shape, like.dtype) if isinstance(like, np.ndarray) else torch.zeros_like(x)
    return _dense(dx), _dense(dh0), [_dense(grads[name]) for name in tape.params]


@_stack_backward.register_fake
def _stack_backward_fake(handle, d_out, d_hn, x, weights, need_x):
    return torch.empty_like(x), torch.empty_like(d_hn), [torch.empty_like(w) for w in weights]


def _stack_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, h0, weights, *_ = inputs
    ctx.has_h0 = h0 is not None
    ctx.shapes = (output[0].shape, output[1].shape)
    ctx.save_for_backward(output[2], x, *weights)  # PyTorch's version check: an in-place edit before backward raises


def _stack_backward_formula(ctx: Any, d_out: Any, d_hn: Any, d_handle: Any) -> tuple:
    _no_double_backward()
    handle, x, *weights = ctx.saved_tensors
    out_shape, hn_shape = ctx.shapes
    d_out = torch.zeros(out_shape, dtype=x.dtype, device=x.device) if d_out is None else d_out  # an unused output
    d_hn = torch.zeros(hn_shape, dtype=x.dtype, device=x.device) if d_hn is None else d_hn
    need_x = ctx.needs_input_grad[0]
    dx, dh0, grads = torch.ops.gruxp.stack_backward(handle, d_out, d_hn, x, weights, need_x)
    return (dx if need_x else None), (dh0 if ctx.has_h0 else None), list(grads), None, None, None, None, None


_stack_forward.register_autograd(_stack_backward_formula, setup_context=_stack_setup)


class _FuncStack(torch.autograd.Function):
    """The same two operators for ``torch.func``'s transforms (``grad``, ``vjp``, ``jacrev``): the autograd
    wrapper ``register_autograd`` generates has no ``setup_context``, which they require (pytorch#168393),
    so a call under one of them goes through this Function instead, with the same backward."""

    @staticmethod
    def forward(x, h0, lengths, seed, spec, dropout, *weights):
        return torch.ops.gruxp.stack_forward(x, h0, list(weights), lengths, seed, spec, dropout, True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, h0, *_ = inputs
        ctx.has_h0 = h0 is not None
        ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(output[2], x, *inputs[6:])

    @staticmethod
    def backward(ctx: Any, d_out: Any, d_hn: Any, d_handle: Any) -> tuple:
        # the transform's own level unwrapped; a tensor still wrapped belongs to an outer transform,
        # which would differentiate this backward (grad of grad) or batch it (vmap of grad): refused
        handle, x, d_out, d_hn, *weights = (
            _unwrap_level(t) for t in (*ctx.saved_tensors[:2], d_out, d_hn, *ctx.saved_tensors[2:])
        )
        need_x = ctx.needs_input_grad[0]
        with torch._C._DisableFuncTorch():  # plain tensors in, plain tensors out
            dx, dh0, grads = _backward(handle, d_out, d_hn, x, weights, need_x)
        return (dx if need_x else None), (dh0 if ctx.has_h0 else None), None, None, None, None, *grads


def _unwrap_level(t: torch.Tensor) -> torch.Tensor:
    functorch = torch._C._functorch
    if functorch.is_functorch_wrapped_tensor(t):
        t = functorch.get_unwrapped(t)
        if functorch.is_functorch_wrapped_tensor(t):
            _no_double_backward(always=True)
    return t


def _check_input(name: str, t: Any, like: torch.Tensor, *, allow_packed: bool = False) -> None:
    """x or hx in torch's terms: a tensor of the parameters' floating dtype and device."""
    if not isinstance(t, torch.Tensor):
        kinds = "a tensor or a PackedSequence" if allow_packed else "a tensor"
        raise TypeError(f"{name} must be {kinds}; got {type(t).__name__}")
    if not t.is_floating_point():
        hint = " (token ids? embed them first, e.g. with nn.Embedding)" if not t.is_complex() else ""
        raise TypeError(f"{name} must be a floating-point tensor of dtype {like.dtype}, as the parameters; got {t.dtype}{hint}")
    if t.dtype != like.dtype:
        raise TypeError(
            f"{name} has dtype {t.dtype} but the parameters are {like.dtype}: cast it with .to({like.dtype}) or the module"
        )
    if t.device.type == "meta" and like.device.type != "meta":
        raise ValueError(f"{name} is on the meta device, which holds no values: gruxp.torch computes on real tensors (cpu, cuda)")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but the parameters are on {like.device}: move one with .to(device)")


class _Recurrent(nn.Module):
    """What gruxp.torch's recurrent modules share: ``nn.GRU``'s constructor and call, packed sequences,
    gruxp's forward and analytic backward as the custom operators ``gruxp::stack_forward``/``backward``."""

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    dropout: float

    def _setup(self, structure: Any, dropout: float, device: Any, dtype: Any) -> None:
        self.dropout = check_dropout("dropout", dropout)
        self._structure = structure
        for name, value in structure._asdict().items():  # input_size, ..., reset_after: nn.GRU's attributes
            setattr(self, name, value)
        self._names = tuple(structure.param_shapes())
        _register(self, structure.param_shapes(), device, dtype)
        self._specs: dict[tuple, str] = {}
        for mode in (True, False):  # both modes' descriptions, before anything is compiled
            self.training = mode
            self._spec()
        self.training = True

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) for every parameter, from torch's generator (``nn.GRU``'s own rule); the norm's gains ones."""
        _uniform(self, self.hidden_size)
        with torch.no_grad():
            for name in self._names:
                if name.startswith("ln_"):
                    getattr(self, name).fill_(1.0)

    def flatten_parameters(self) -> None:
        """Nothing to do (``nn.GRU``'s cuDNN layout call, kept so that code calling it runs)."""

    def _options(self) -> dict[str, Any]:
        """The cell's own call options (zoneout, ...)."""
        return {}

    def _spec(self) -> str:
        """The operators' description of this call: structure and options as JSON, made once per set of
        options (a JSON encoder is nothing torch.compile can trace)."""
        options = self._options()
        key = tuple(sorted(options.items()))
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = json.dumps(
                {"cell": self.cell, "structure": self._structure._asdict(), "options": options}, sort_keys=True
            )
        return spec

    def forward(self, x: Any, hx: torch.Tensor | None = None, *, lengths: Any = None, h0: torch.Tensor | None = None) -> tuple:
        """``(out, h_n)`` as ``nn.GRU``: x (T, B, I), (B, T, I) with ``batch_first``, unbatched (T, I), or a
        ``PackedSequence`` (then out is one, with the same ``batch_sizes`` and indices, and h_n is in the
        caller's order); ``hx`` (``h0`` is its alias) (L·D, B, H). ``lengths`` (B integers in [1, T])
        gives packed semantics to a padded x."""
        if h0 is not None:
            if hx is not None:
                raise TypeError("pass the initial state once: hx (nn.GRU's name) or h0, not both")
            hx = h0
        weights = [getattr(self, name) for name in self._names]  # through the attributes: parametrizations apply
        packed = isinstance(x, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("lengths must be None for a PackedSequence input: the packing holds them")
            sequence, lengths = pad_packed_sequence(x, batch_first=self.batch_first)
        else:
            sequence = x
        _check_input("x", sequence, weights[0], allow_packed=True)
        if hx is not None:
            _check_input("hx", hx, weights[0])
        if lengths is not None:
            if sequence.dim() != 3:
                raise ValueError("lengths is not accepted with unbatched x of shape (T, I); add a batch axis")
            T, B = (sequence.shape[1], sequence.shape[0]) if self.batch_first else (sequence.shape[0], sequence.shape[1])
            lengths = _lengths_tensor(lengths, B, T)
        random = self.training and (self.dropout or self._options().get("training"))
        seed = torch.randint(0, 2**62, (), dtype=torch.int64) if random else torch.zeros((), dtype=torch.int64)
        dropout = self.dropout if self.training else 0.0
        record = _needs_graph(sequence, hx, *weights)
        # a torch.func transform around an eager call (under torch.compile the operators' own autograd)
        transform = None if torch.compiler.is_compiling() else torch._C._functorch.peek_interpreter_stack()
        if transform is not None:  # under torch.func.grad, vjp, jacrev ...
            if transform.key() == torch._C._functorch.TransformType.Vmap:
                raise RuntimeError(
                    "torch.func.vmap over a gruxp.torch module is not supported (its operators have no batching rule): "
                    "the module batches already, so fold the mapped axis into B, or loop"
                )
            out, h_n, _ = _FuncStack.apply(sequence, hx, lengths, seed, self._spec(), dropout, *weights)
        else:
            out, h_n, _ = torch.ops.gruxp.stack_forward(sequence, hx, weights, lengths, seed, self._spec(), dropout, record)
        if packed:
            out = _packed_like(out, x, lengths, self.batch_first)
        return out, h_n

    def extra_repr(self) -> str:
        """The constructor's arguments that differ from their defaults, as ``nn.GRU``'s repr shows them."""
        extras = [f"{self.input_size}, {self.hidden_size}"] + ([f"num_layers={self.num_layers}"] if self.num_layers != 1 else [])
        defaults = type(self._structure)(self.input_size, self.hidden_size)
        for name, value in self._structure._asdict().items():
            if name not in ("input_size", "hidden_size", "num_layers") and value != getattr(defaults, name):
                extras.append(f"{name}={value}")
        return ", ".join(extras + ([f"dropout={self.dropout}"] if self.dropout else []) + self._extra_options())

    def _extra_options(self) -> list[str]:
        return []


def _lengths_tensor(lengths: Any, batch: int, steps: int) -> torch.Tensor:
    """``lengths`` as a CPU int64 tensor of shape (B,): a list checked whole here; a tensor's shape and
    dtype here (what a compiled graph knows), its values inside the operator, which reads them."""
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(check_lengths(lengths, batch=batch, steps=steps))
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be integers; got {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape ({batch},) (one length per sequence, B={batch}); got {tuple(lengths.shape)}")
    return lengths.to(device="cpu", dtype=torch.int64)


def _packed_like(out: torch.Tensor, packed: PackedSequence, lengths: torch.Tensor, batch_first: bool) -> PackedSequence:
    """out (padded, the caller's order) packed exactly as ``packed`` is: its batch_sizes and indices."""
    if packed.sorted_indices is not None:
        out = out.index_select(0 if batch_first else 1, packed.sorted_indices)
        lengths = lengths.index_select(0, packed.sorted_indices.cpu())
    data = pack_padded_sequence(out, lengths, batch_first=batch_first, enforce_sorted=True).data
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


class GRU(_Recurrent):
    """``torch.nn.GRU``'s interface on gruxp: its forward and analytic backward, packed sequences or ``lengths``.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype
        As ``torch.nn.GRU``'s; the parameters are ``nn.Parameter`` objects with its names
        (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``),
        initialised as it does, U(−1/√H, 1/√H) from torch's generator.
    reset_after
        ``True`` (PyTorch's and cuDNN's convention) or ``False`` (Cho et al.'s, Keras's
        ``reset_after=False``), which ``nn.GRU`` does not have.

    Notes
    -----
    ``forward(x, hx=None, *, lengths=None) -> (out, h_n)``: x (T, B, I), (B, T, I) with
    ``batch_first``, unbatched (T, I), or a ``PackedSequence`` (out is then one too, packed alike);
    hx and h_n (L·D, B, H). ``lengths`` (B integers in [1, T]) gives a padded x packed-sequence
    semantics: outputs past a length are zero, h_n the last valid state. float32 and float64.
    The forward and backward are the custom operators ``gruxp::stack_forward`` and
    ``gruxp::stack_backward``: ``torch.compile(fullgraph=True)`` and ``torch.export`` take a model
    holding this module whole.

    Examples
    --------
    >>> import torch, gruxp.torch
    >>> gru = gruxp.torch.GRU(3, 5, num_layers=2, batch_first=True)
    >>> out, h_n = gru(torch.zeros(4, 7, 3))
    >>> out.shape, h_n.shape
    (torch.Size([4, 7, 5]), torch.Size([2, 4, 5]))
    """

    cell = "gru"
    reset_after: bool

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
        structure = F.GRUConfig.checked(input_size, hidden_size, num_layers, bias, batch_first, bidirectional, reset_after)
        self._setup(structure, dropout, device, dtype)


class LayerNormGRU(_Recurrent):
    """:class:`gruxp.LayerNormGRU` as an ``nn.Module``: ``nn.GRU``'s constructor and call, plus ``zoneout``.

    Parameters are the GRU's plus the norm's gains ``ln_weight_ih_l{k}`` and ``ln_weight_hh_l{k}`` (3H,,
    ones); zoneout draws from torch's generator in training mode, the expectation in ``eval()``."""

    cell = "lngru"

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
        zoneout: float = 0.0,
    ) -> None:
        super().__init__()
        self.zoneout = check_dropout("zoneout", zoneout)
        structure = F.LayerNormGRUConfig.checked(input_size, hidden_size, num_layers, bias, batch_first, bidirectional)
        self._setup(structure, dropout, device, dtype)

    def _options(self) -> dict[str, Any]:
        return {"zoneout": self.zoneout, "training": bool(self.training)}

    def _extra_options(self) -> list[str]:
        return [f"zoneout={self.zoneout}"] if self.zoneout else []


class MinGRU(_Recurrent):
    """:class:`gruxp.MinGRU` as an ``nn.Module``: ``nn.GRU``'s constructor and call, plus ``log_space``.

    Parameters ``weight_ih_l{k}`` (2H, I_k), rows z then h, and ``bias_ih_l{k}`` (2H,)."""

    cell = "mingru"

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
        log_space: bool = False,
    ) -> None:
        super().__init__()
        structure = F.MinGRUConfig.checked(input_size, hidden_size, num_layers, bias, batch_first, bidirectional, log_space)
        self._setup(structure, dropout, device, dtype)


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
        """The constructor's arguments that differ from their defaults, as ``nn.GRUCell``'s repr shows them."""
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
        last = torch.as_tensor(check_lengths(lengths, batch=y.shape[0], steps=y.shape[1]) - 1, device=y.device)
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
            if isinstance(layer, _Recurrent):
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


def module_for(cell: str) -> type:
    """The ``nn.Module`` of any cell declared in :mod:`gruxp.cells` (``gruxp.torch.<Model>`` gives the
    same, e.g. ``gruxp.torch.LiGRU``): ``nn.GRU``'s constructor and call, plus the cell's own options
    as keywords; its parameters under gruxp's names, U(−1/√H, 1/√H) with the norms' gains at one."""
    from . import cells

    spec = cells.get(cell)
    for kind in (GRU, LayerNormGRU, MinGRU):
        if kind.cell == cell:
            return kind
    made = _made.get(cell)
    if made is None:
        structure_options = [n for n, k in spec.options.items() if k == "structure"]
        call_options = [n for n, k in spec.options.items() if k != "structure"]

        def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                     bidirectional=False, device=None, dtype=None, **options):  # fmt: skip
            _Recurrent.__init__(self)
            unknown = sorted(set(options) - set(spec.options))
            if unknown:
                raise TypeError(f"{spec.model.__name__} takes no option {unknown[0]!r}; its options: {sorted(spec.options)}")
            self._call_options = {n: options.get(n, 0.0) for n in call_options}
            given = {n: options[n] for n in structure_options if n in options}
            structure = spec.model.structure_type.checked(
                input_size, hidden_size, num_layers, bias, batch_first, bidirectional, **given
            )
            self._setup(structure, dropout, device, dtype)

        def _options(self):
            random = any(k == "random" for k in spec.options.values())
            return {**self._call_options, **({"training": bool(self.training)} if random else {})}

        def _extra_options(self):
            return [f"{n}={v}" for n, v in self._call_options.items() if v]

        doc = f"{spec.model.__name__} as an ``nn.Module`` (made from its declaration in :mod:`gruxp.cells`)."
        namespace = {"cell": cell, "__init__": __init__, "_options": _options, "_extra_options": _extra_options, "__doc__": doc}
        made = _made[cell] = type(spec.model.__name__, (_Recurrent,), {**namespace, "__module__": __name__})
    return made


_made: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    from . import cells

    for spec in cells.specs():
        if spec.model.__name__ == name:
            return module_for(spec.name)
    raise AttributeError(f"module 'gruxp.torch' has no attribute {name!r}")
