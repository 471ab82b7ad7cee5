"""``GRU``, ``LayerNormGRU``, ``MinGRU`` and ``GRUCell``: thin holders of a parameter dict that call :mod:`gruxp.functional`.

A model owns its parameters (``model.params``, PyTorch's names), the namespace, device and float
dtype they live on, and an identity token stamped on every tape it records, so ``backward``
refuses a tape from another model (even an identical twin) or from before its parameters were
replaced. Moving between libraries (:meth:`to`, :meth:`state_dict`, :meth:`load_state_dict`)
goes through host NumPy copies and is bit-exact.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload

import numpy as np

from . import cells
from . import functional as F
from ._checks import check_bool, check_dropout, check_keys, check_positive_int
from ._namespace import device_of, dtype_name, from_numpy, namespace_name, resolve_dtype, resolve_xp, to_numpy
from ._typing import Array
from .functional._lngru import LNGRU_CELL
from .functional._mingru import MINGRU_CELL
from .functional._sequence import GRU_CELL

T = TypeVar("T")

__all__ = ["Modal", "Module", "Recurrent", "GRU", "LayerNormGRU", "MinGRU", "GRUCell", "CELLS", "recurrent"]


class Modal:
    """Training mode (the default) and evaluation mode: only dropout looks at it."""

    training: bool = True

    def train(self, mode: bool = True):
        """Training mode: dropout, where configured, is active. Returns self."""
        self.training = check_bool("mode", mode)
        return self

    def eval(self):
        """Evaluation mode: no dropout. Returns self."""
        return self.train(False)


class Module(Modal):
    """What every layer with parameters shares: placement, modes, state dicts, moves, tape ownership.

    A subclass sets its structure, then calls :meth:`_place` with a host initialiser; it provides
    :meth:`param_shapes` and :meth:`config` (the constructor's keyword arguments, JSON-able).
    """

    params: dict[str, Any]

    @classmethod
    def param_shapes(cls, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the parameters of a layer built from ``config`` (the constructor's
        keyword arguments, as :meth:`config` returns them), computed without building it."""
        raise NotImplementedError

    def _param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.param_shapes(self.config())

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer's structure (not its placement)."""
        raise NotImplementedError

    def _place(self, xp: Any, device: Any, dtype: Any, seed: Any, draw: Callable[[np.random.Generator], dict]) -> None:
        self.xp = resolve_xp(xp, device)
        self.dtype = resolve_dtype(self.xp, dtype)
        # One host Generator per layer: it draws the initial parameters, then the dropout masks.
        self.rng = F.host_rng(seed)
        self.training = True
        host = draw(self.rng)
        self.params = {k: from_numpy(host[k], xp=self.xp, device=device, dtype=self.dtype) for k in self._param_shapes()}
        self.device = device_of(next(iter(self.params.values())))
        self._token = object()

    def state_dict(self, *, numpy: bool = False) -> dict[str, Any]:
        """Copies of the parameters, PyTorch's names and order, in the model's own arrays (torch
        tensors for a model on torch, jax arrays on JAX: ``torch.nn.GRU.load_state_dict`` takes a
        torch model's as it is); ``numpy=True``: host NumPy copies."""
        if numpy:
            return {name: to_numpy(value) for name, value in self.params.items()}
        return {name: self.xp.asarray(value, copy=True) for name, value in self.params.items()}

    def load_state_dict(self, mapping: Mapping[str, Any]) -> None:
        """Replace every parameter from ``mapping`` (NumPy, CPU torch, any array-API/DLPack array).

        Values are cast to the model's dtype and placed on its device. Nothing changes unless
        every entry is present, known and of the right shape; the error says which is not.
        """
        self.params = self._converted(mapping)

    def _converted(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """Check and convert a state dict into a new params dict (self is not touched)."""
        if not isinstance(mapping, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays; got {type(mapping).__name__}")
        shapes = self._param_shapes()
        check_keys(mapping, shapes, what="load_state_dict")
        new = {}
        for key, shape in shapes.items():
            try:
                host = to_numpy(mapping[key])
            except Exception as exc:
                raise TypeError(f"load_state_dict: {key!r} is not an array ({type(mapping[key]).__name__})") from exc
            if host.dtype.kind != "f":
                hint = (
                    " (a weights file whose dtype field says integers where floats were written?)"
                    if host.dtype.kind in "iu"
                    else ""
                )
                raise TypeError(
                    f"load_state_dict: {key!r} must be a floating-point array (the parameters are); got dtype {host.dtype}{hint}"
                )
            if host.shape != shape:
                raise ValueError(f"load_state_dict: {key!r} must have shape {shape}; got {host.shape}")
            new[key] = from_numpy(host, xp=self.xp, device=self.device, dtype=self.dtype)
        return new

    def to(self, xp: Any = None, device: Any = None, dtype: Any = None):
        """The same model on another namespace/device/dtype (a new object; ``self`` is unchanged).

        ``xp=None`` keeps the namespace; ``dtype=None`` keeps the float width.
        """
        if device is None and (xp is None or resolve_xp(xp) is self.xp):
            device = self.device  # same namespace: stay on this device unless told
        target = resolve_xp(self.xp if xp is None else xp, device)
        dtype = resolve_dtype(target, dtype_name(self.dtype) if dtype is None else dtype)
        clone = object.__new__(type(self))
        clone.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("params", "_token")})
        clone.xp, clone.dtype, clone._token = target, dtype, object()
        clone.rng = copy.deepcopy(self.rng)  # the same stream position, whatever the bit generator
        clone.params = {k: from_numpy(to_numpy(v), xp=target, device=device, dtype=dtype) for k, v in self.params.items()}
        clone.device = device_of(next(iter(clone.params.values())))
        return clone

    def _own(self, tape: Any) -> Any:
        return tape._replace(owner=self._token)

    def _check_tape(self, tape: Any, kind: Any) -> None:
        if not isinstance(tape, kind):
            raise TypeError(f"tape must be the {kind.__name__} returned by this model's forward; got {type(tape).__name__}")
        if tape.owner is not self._token:
            raise ValueError("tape was recorded by another model; call backward on the model whose forward made it")
        if tape.params.keys() != self.params.keys() or any(tape.params[k] is not v for k, v in self.params.items()):
            raise ValueError("tape is stale: this model's parameters were replaced after it was recorded; run forward again")

    def _placement(self) -> str:
        return f"xp={namespace_name(self.xp)}, device={self.device!r}, dtype={dtype_name(self.dtype)}"


class StructureField(Generic[T]):
    """A read-only attribute of a model that is the field of the same name of its ``structure``
    (declared, so that IDEs, ``dir()`` and type checkers see it)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, model: None, owner: type) -> StructureField[T]: ...
    @overload
    def __get__(self, model: object, owner: type) -> T: ...
    def __get__(self, model: Any, owner: type) -> Any:
        return self if model is None else getattr(model.structure, self.name)


class Recurrent(Module):
    """What every stacked recurrent layer shares (:class:`GRU`, :class:`LayerNormGRU`, :class:`MinGRU`):
    its structure (a cell's config, which names the cell), inference, ``step``, ``forward`` and
    ``backward`` through :mod:`gruxp.functional`'s stack driver. A subclass sets
    :attr:`structure_type` and, where its cell has call options, :meth:`_cell_options`."""

    structure_type: Any = F.GRUConfig
    structure: Any
    # the structure's fields, read through (a cell's model adds its own the same way)
    input_size = StructureField[int]()
    hidden_size = StructureField[int]()
    num_layers = StructureField[int]()
    bias = StructureField[bool]()
    batch_first = StructureField[bool]()
    bidirectional = StructureField[bool]()

    @property
    def random_options(self) -> tuple[str, ...]:
        """The options that draw random masks in training mode (what the Trainer asks, through
        :attr:`draws_randomness`): dropout between layers, and the cell's options declared of kind
        ``"random"`` in :mod:`gruxp.cells` (zoneout, ...)."""
        return ("dropout", *cells.random_options(self))

    def _build(self, structure: Any, dropout: Any, xp: Any, device: Any, dtype: Any, seed: Any) -> None:
        self.dropout = check_dropout("dropout", dropout)
        self.structure = structure
        self._place(xp, device, dtype, seed, self._draw)

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Host float64 initial parameters, as the cell's structure draws them (``initial_params``)."""
        return self.structure.initial_params(rng)

    @classmethod
    def param_shapes(cls, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        fields = {k: config[k] for k in cls.structure_type._fields if k in config}
        return cls.structure_type.checked(**{"input_size": None, "hidden_size": None, **fields}).param_shapes()

    def _random_rates(self) -> dict[str, float]:
        """The rates of the cell's own options declared ``"random"`` (zoneout, ...), by name."""
        return {name: getattr(self, name) for name in cells.random_options(self)}

    def config(self) -> dict[str, Any]:
        return {**self.structure._asdict(), "dropout": self.dropout, **self._random_rates()}

    def _cell_options(self, *, step: bool = False) -> dict[str, Any]:
        """The cell's own call options: its random rates, drawn in training mode and never by
        :meth:`step` (``step``); a cell with others adds them."""
        rates = self._random_rates()
        return {**rates, "training": self.training and not step} if rates else {}

    @property
    def draws_randomness(self) -> bool:
        """Whether a call in the current mode draws random masks: training mode and a random option
        that acts (dropout needs two layers or more to act between)."""
        if not self.training:
            return False
        return any(getattr(self, name) and (name != "dropout" or self.structure.num_layers > 1) for name in self.random_options)

    def _run_options(self, *, step: bool = False, rng: Any = None) -> dict[str, Any]:
        return dict(
            dropout=0.0 if step or not self.training else self.dropout,
            rng=self.rng if rng is None else rng,
            options=self._cell_options(step=step),
        )

    def __call__(self, x: Array, h0: Array = None, *, lengths: Any = None, rng: Any = None) -> tuple[Array, Array]:
        """Inference ``(out, h_n)``; keeps nothing for backward. ``rng`` (default: ``model.rng``) is
        where a training-mode call's masks come from; under ``jax.jit`` pass a ``jax.random`` key."""
        return F.infer_stack(self.params, x, h0, lengths, self.structure, xp=None, **self._run_options(rng=rng))

    def step(self, x_t: Array, h: Array = None) -> tuple[Array, Array]:
        """Streaming inference, one time step: ``(out_t, h)`` from x_t (B, I) or (I,) and h (L, B, H).

        Feeding a sequence step by step, carrying ``h`` (an array you hold: the model keeps no
        state), reproduces ``model(x)`` to rounding (float64 ≤ 1e-12 relative, float32 ≤ 1e-5): the
        same step in the same order, but the input projection is one small GEMM per step instead of
        one for the whole sequence, and on NumPy the plan may run another fuser for one token (numba's
        step kernel) than for a long sequence (see ``docs/numerics.md``). Each call pays little
        beyond its products: the plan for a shape is made once, and no weight is copied.
        Unidirectional models only (a reverse direction needs the whole sequence). No dropout.
        """
        if self.structure.bidirectional:
            raise ValueError(
                f"step() needs a unidirectional {type(self).__name__}: the reverse direction reads the sequence backwards"
            )
        if not hasattr(x_t, "ndim") or x_t.ndim not in (1, 2):  # a whole (T, B, I) sequence is not a step
            raise ValueError(
                f"x_t must have shape (B, {self.input_size}) or ({self.input_size},) (one time step; "
                f"call the model for a sequence); got {getattr(x_t, 'shape', type(x_t).__name__)}"
            )
        x = self.xp.expand_dims(x_t, axis=0)
        out, h_n = F.infer_stack(self.params, x, h, None, self._step_structure(), xp=None, **self._run_options(step=True))
        return out[0, ...], h_n

    def _step_structure(self) -> Any:
        """The structure a step runs: this one, time-major (made once per structure: a token counts)."""
        kept = self.__dict__.get("_stepping")
        if kept is None or kept[0] is not self.structure:
            kept = self._stepping = (self.structure, self.structure._replace(batch_first=False))
        return kept[1]

    def forward(self, x: Array, h0: Array = None, *, lengths: Any = None, rng: Any = None) -> tuple[Array, Array, F.GRUTape]:
        """``(out, h_n, tape)``; pass the tape to :meth:`backward`. ``rng`` as in :meth:`__call__`."""
        options = self._run_options(rng=rng)
        out, h_n, tape = F.run_stack(self.params, x, h0, lengths, self.structure, record=True, xp=None, **options)
        return out, h_n, self._own(tape)

    def backward(
        self, tape: F.GRUTape, d_out: Array = None, d_hn: Array = None, *, input_grad: bool = True
    ) -> tuple[dict[str, Array], Array, Array]:
        """``(grads, dx, dh0)``: exact gradients of Σ(out·d_out) + Σ(h_n·d_hn).

        ``input_grad=False`` returns ``dx=None`` and skips its GEMM (x is data).
        """
        self._check_tape(tape, F.GRUTape)
        return F.gru_backward(tape, d_out, d_hn, input_grad=check_bool("input_grad", input_grad))

    def _repr_extras(self) -> list[str]:
        return [f"{name}={rate}" for name, rate in self._random_rates().items() if rate]

    def __repr__(self) -> str:
        c = self.structure
        defaults = type(c)(c.input_size, c.hidden_size)
        extras = [
            f"{name}={value}"
            for name, value in c._asdict().items()
            if name not in ("input_size", "hidden_size") and value != getattr(defaults, name)
        ]
        if self.dropout:
            extras.append(f"dropout={self.dropout}")
        extras += self._repr_extras()
        return f"{type(self).__name__}({c.input_size}, {c.hidden_size}, {', '.join(extras + [self._placement()])})"


class GRU(Recurrent):
    """A stacked, optionally bidirectional GRU with PyTorch's ``nn.GRU`` semantics.

    Parameters
    ----------
    input_size, hidden_size, num_layers
        I, H and L. Layer k > 0 reads the (concatenated) output of layer k−1.
    bias
        Keep ``bias_ih_l*`` and ``bias_hh_l*``.
    batch_first
        x and out are (B, T, ·) instead of (T, B, ·); h0 and h_n are unaffected, as in PyTorch.
    bidirectional
        D = 2: a reverse direction per layer (``*_reverse`` parameters), outputs concatenated.
    reset_after
        True: n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)) (PyTorch, cuDNN, Keras default).
        False: n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn) (Cho et al. 2014).
    dropout
        p in [0, 1): in training mode (:meth:`train`, the default), each output of every layer but the
        last is zeroed with probability p and scaled by 1/(1−p), as ``nn.GRU(dropout=p)``. Masks are
        drawn on the arrays' device by the backend's generator, seeded from the model's host Generator
        ``model.rng`` (a seed fixes them on each backend; see ``docs/numerics.md``), or from the call's
        ``rng=`` (under ``jax.jit``: a key).
    xp, device, dtype
        Namespace (module or its array-api-compat wrapper; default NumPy), device, and float dtype
        (default float32 of that namespace).
    seed
        None for fresh entropy; an int (or NumPy Generator) gives bit-identical parameters on every
        backend: drawn on the host from U(−1/√H, 1/√H), PyTorch's default.

    Notes
    -----
    Shapes, by axis names (T steps, B sequences, I inputs, H hidden units, L layers, D directions):

    x: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I) (batch_first then ignored).
    h0, h_n: (L·D, B, H) or (L·D, H). out: (T, B, D·H), (B, T, D·H) or (T, D·H).
    lengths: B host integers in [1, T]; outputs past a length are zero, h_n is the last valid state.

    Examples
    --------
    >>> import numpy as np, gruxp
    >>> gru = gruxp.GRU(3, 5, num_layers=2, seed=0)
    >>> x = np.zeros((7, 2, 3), dtype=np.float32)
    >>> out, h_n = gru(x)
    >>> out.shape, h_n.shape
    ((7, 2, 5), (2, 2, 5))
    """

    structure_type = F.GRUConfig
    reset_after = StructureField[bool]()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bias: bool = True,
        batch_first: bool = False,
        bidirectional: bool = False,
        reset_after: bool = True,
        dropout: float = 0.0,
        xp: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
    ) -> None:
        structure = F.GRUConfig.checked(input_size, hidden_size, num_layers, bias, batch_first, bidirectional, reset_after)
        self._build(structure, dropout, xp, device, dtype, seed)


class LayerNormGRU(Recurrent):
    """A stacked layer-normalised GRU with zoneout (Ba et al. 2016; Krueger et al. 2016), haste's form.

    Layer norm (no shift, ε = 1e-5) over the 3H features of the input projection and of the
    recurrent projection, with learned gains ``ln_weight_ih_l{k}`` and ``ln_weight_hh_l{k}`` (3H,,
    initialised to ones), before the biases and the GRU's gates (rows r, z, n, reset_after):
    ``gi = LN(W_ih x)·γ_ih + b_ih``, ``gh = LN(W_hh h)·γ_hh + b_hh``. Every other parameter is the
    :class:`GRU`'s, named and initialised as there. See ``docs/cells/lngru.md``.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, bidirectional, dropout, xp, device, dtype, seed
        As :class:`GRU`. ``reset_after`` must stay True: the norm needs the 3H features of W_hh h
        at once, which reset_before never forms.
    zoneout
        rate in [0, 1): in training mode each hidden unit keeps its previous value with probability
        rate (drawn as dropout's masks are); in evaluation mode the state is the expectation,
        rate·h_{t−1} + (1 − rate)·h_t. The outputs are the states, zoned out.

    Examples
    --------
    >>> import numpy as np, gruxp
    >>> model = gruxp.LayerNormGRU(3, 5, zoneout=0.1, seed=0)
    >>> out, h_n = model(np.zeros((7, 2, 3), dtype=np.float32))
    >>> out.shape, h_n.shape
    ((7, 2, 5), (1, 2, 5))
    """

    structure_type = F.LayerNormGRUConfig
    reset_after = StructureField[bool]()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bias: bool = True,
        batch_first: bool = False,
        bidirectional: bool = False,
        reset_after: bool = True,
        dropout: float = 0.0,
        zoneout: float = 0.0,
        xp: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
    ) -> None:
        self.zoneout = check_dropout("zoneout", zoneout)
        structure = F.LayerNormGRUConfig.checked(
            input_size, hidden_size, num_layers, bias, batch_first, bidirectional, reset_after
        )
        self._build(structure, dropout, xp, device, dtype, seed)


class MinGRU(Recurrent):
    """A stacked minGRU (Feng et al. 2024): gates from the input alone, run in parallel over time.

    ``z = σ(W_z x + b_z)``, ``h̃ = W_h x + b_h`` (``log_space``: ``g(W_h x + b_h)``, the paper's
    log-space form), ``h_t = (1 − z) ⊙ h_{t−1} + z ⊙ h̃``. Parameters ``weight_ih_l{k}`` (2H, I_k),
    rows z then h, and ``bias_ih_l{k}`` (2H,), drawn from U(−1/√H, 1/√H). Calling the model, and
    :meth:`forward`, run the whole sequence as a scan built from standard array operations
    (:func:`gruxp.functional.linear_scan`); :meth:`step` runs one token at a time with the same
    results (≤ 1e-12 relative in float64); :meth:`backward` is the reverse scan. See
    ``docs/cells/mingru.md``.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, bidirectional, dropout, xp, device, dtype, seed
        As :class:`GRU`.
    log_space
        The paper's log-space form: h̃ = g(v) > 0 (g(v) = v + ½ for v ≥ 0, σ(v) below) and the scan
        on logarithms; h0 must then be non-negative.

    Examples
    --------
    >>> import numpy as np, gruxp
    >>> model = gruxp.MinGRU(3, 5, num_layers=2, seed=0)
    >>> out, h_n = model(np.zeros((7, 2, 3), dtype=np.float32))
    >>> out.shape, h_n.shape
    ((7, 2, 5), (2, 2, 5))
    """

    structure_type = F.MinGRUConfig
    log_space = StructureField[bool]()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bias: bool = True,
        batch_first: bool = False,
        bidirectional: bool = False,
        log_space: bool = False,
        dropout: float = 0.0,
        xp: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
    ) -> None:
        structure = F.MinGRUConfig.checked(input_size, hidden_size, num_layers, bias, batch_first, bidirectional, log_space)
        self._build(structure, dropout, xp, device, dtype, seed)

    def _cell_options(self, *, step: bool = False) -> dict[str, Any]:
        return {"parallel": not step}


# The built-in cells' declarations (see gruxp.cells; a cell of another file registers itself the same way)
cells.register(cells.CellSpec("gru", GRU, GRU_CELL, {"reset_after": "structure"}))
cells.register(
    cells.CellSpec("lngru", LayerNormGRU, LNGRU_CELL, {"zoneout": "random"}, "gruxp._native.lngru_cpu:LayerNormGruCpu")
)
cells.register(cells.CellSpec("mingru", MinGRU, MINGRU_CELL, {"log_space": "structure"}, "gruxp._native.mingru_cpu:MinGruCpu"))
CELLS = cells.ModelsByName()  # the declared cells' model classes by name, read live


def recurrent(
    cell: str, input_size: int, hidden_size: int, num_layers: int = 1, *, zoneout: float = 0.0, **options: Any
) -> Recurrent:
    """The stacked layer of the cell declared as ``cell`` (:mod:`gruxp.cells`: ``"gru"``, ``"lngru"``,
    ``"mingru"``, ...); ``zoneout`` only for a cell that has it; ``options`` as the layer's constructor
    takes them."""
    spec = cells.get(cell)
    if zoneout:
        if "zoneout" not in spec.options:
            raise ValueError(f"zoneout is not an option of the {cell!r} cell; got zoneout={zoneout!r}")
        options["zoneout"] = zoneout
    return spec.model(input_size, hidden_size, num_layers, **options)


class GRUCell(Module):
    """One GRU step with PyTorch's ``nn.GRUCell`` semantics (``reset_after`` as in :class:`GRU`).

    Parameters are ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` and ``bias_hh`` (3H,).

    Notes
    -----
    Shapes, by axis names (T steps, B sequences, I inputs, H hidden units, L layers, D directions):

    x: (B, I) or unbatched (I,); h and the result: (B, H) or (H,). ``h=None`` means zeros.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        reset_after: bool = True,
        xp: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
    ) -> None:
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.bias = check_bool("bias", bias)
        self.reset_after = check_bool("reset_after", reset_after)
        self._place(xp, device, dtype, seed, lambda rng: F.uniform_init(self._param_shapes(), 1.0 / math.sqrt(hidden_size), rng))

    @classmethod
    def param_shapes(cls, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        return F.cell_param_shapes(
            check_positive_int("input_size", config.get("input_size")),
            check_positive_int("hidden_size", config.get("hidden_size")),
            bias=check_bool("bias", config.get("bias", True)),
        )

    def config(self) -> dict[str, Any]:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias, reset_after=self.reset_after)

    def __call__(self, x: Array, h: Array = None) -> Any:
        return F.gru_cell(self.params, x, h, reset_after=self.reset_after)

    def forward(self, x: Array, h: Array = None) -> tuple[Any, F.CellTape]:
        h_new, tape = F.gru_cell_forward(self.params, x, h, reset_after=self.reset_after)
        return h_new, self._own(tape)

    def backward(self, tape: F.CellTape, dh: Array) -> tuple[dict[str, Array], Array, Array]:
        """``(grads, dx, dh_prev)``: exact gradients of Σ(h'·dh)."""
        self._check_tape(tape, F.CellTape)
        return F.gru_cell_backward(tape, dh)

    def __repr__(self) -> str:
        extras = [] if self.bias else ["bias=False"]
        extras += [] if self.reset_after else ["reset_after=False"]
        return f"GRUCell({self.input_size}, {self.hidden_size}, {', '.join(extras + [self._placement()])})"
