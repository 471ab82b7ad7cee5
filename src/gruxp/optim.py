"""Pure optimizers: ``params, state = opt.step(params, grads, state)``, nothing updated in place.

They work on any namespace (JAX's immutable arrays included) and follow ``torch.optim``'s
single-tensor update rules and defaults exactly, so the same gradients give the same parameters
(tested to 1e-12 in float64 over 20 steps). ``state`` is a plain dict of arrays and ints that a
checkpoint can store.

A user may change an optimizer's settings between steps (``opt.lr = 1e-4``). A compiled training
step must not freeze them: it takes :meth:`~Adam.hyperparams` (the numbers) as arguments and
passes them to ``step(..., hyper=...)``; :meth:`~Adam.structure` (which terms exist at all:
amsgrad, momentum, weight decay) decides the program, so changing it compiles another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._checks import check_keys, is_traced
from ._namespace import dtype_name, namespace_of

__all__ = ["SGD", "Adam", "AdamW", "clip_grad_norm", "OPTIMIZERS"]


def _check_keys(params: Mapping[str, Any], grads: Mapping[str, Any]) -> None:
    """Same keys, and each gradient exactly its parameter's shape and dtype: a (3, 4) gradient must
    not broadcast a (3, 1) parameter into (3, 4), nor a float64 one promote a float32 parameter."""
    check_keys(grads, params, what="grads must have the keys of params", noun="")
    for k, p in params.items():
        g = grads[k]
        if not hasattr(g, "shape") or not hasattr(g, "dtype"):
            raise TypeError(f"grads[{k!r}] must be an array; got {type(g).__name__}")
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"grads[{k!r}] must have the parameter's shape {tuple(p.shape)}; got {tuple(g.shape)}")
        if g.dtype != p.dtype:
            raise TypeError(f"grads[{k!r}] must have the parameter's dtype {dtype_name(p.dtype)}; got {dtype_name(g.dtype)}")


def _number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number; got {value!r}")
    if value < low or (open_low and value == low) or value >= high:
        interval = f"{'(' if open_low else '['}{low}, {high})"
        raise ValueError(f"{name} must lie in {interval}; got {value}")
    return float(value)


class SGD:
    """Stochastic gradient descent with momentum, dampening, Nesterov and (L2) weight decay."""

    def __init__(
        self, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False
    ) -> None:
        self.lr = _number("lr", lr)
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.weight_decay = _number("weight_decay", weight_decay)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)

    def config(self) -> dict[str, Any]:
        return dict(
            lr=self.lr, momentum=self.momentum, dampening=self.dampening, weight_decay=self.weight_decay, nesterov=self.nesterov
        )

    def init(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"step": 0, "momentum_buffer": {}}

    def hyperparams(self) -> dict[str, float]:
        """The numbers of the update, which a compiled step takes as arguments."""
        return dict(lr=self.lr, momentum=self.momentum, dampening=self.dampening, weight_decay=self.weight_decay)

    def structure(self) -> tuple:
        """Which terms the update has (momentum, Nesterov, weight decay): what a compiled step is built for."""
        return (bool(self.momentum), self.nesterov, bool(self.weight_decay))

    def step(
        self, params: Mapping[str, Any], grads: Mapping[str, Any], state: Mapping[str, Any], *, hyper: Mapping | None = None
    ) -> tuple[dict, dict]:
        """``(params, state)`` after one update; ``hyper`` (default :meth:`hyperparams`) the numbers to use."""
        _check_keys(params, grads)
        h = self.hyperparams() if hyper is None else hyper
        new_params, buffers = {}, dict(state["momentum_buffer"])
        for k, p in params.items():
            d = grads[k]
            if self.weight_decay:
                d = d + h["weight_decay"] * p
            if self.momentum:
                buf = buffers.get(k)
                buf = d if buf is None else h["momentum"] * buf + (1.0 - h["dampening"]) * d
                buffers[k] = buf
                d = d + h["momentum"] * buf if self.nesterov else buf
            new_params[k] = p - h["lr"] * d
        return new_params, {"step": state["step"] + 1, "momentum_buffer": buffers}


class Adam:
    """Adam (Kingma & Ba) with torch.optim.Adam's defaults and update; ``weight_decay`` is L2."""

    decoupled = False

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        self.lr = _number("lr", lr)
        self.betas = (_number("betas[0]", betas[0], high=1.0), _number("betas[1]", betas[1], high=1.0))
        self.eps = _number("eps", eps)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def config(self) -> dict[str, Any]:
        return dict(lr=self.lr, betas=list(self.betas), eps=self.eps, weight_decay=self.weight_decay, amsgrad=self.amsgrad)

    def init(self, params: Mapping[str, Any]) -> dict[str, Any]:
        zeros = {k: namespace_of(p).zeros_like(p) for k, p in params.items()}
        state = {"step": 0, "exp_avg": zeros, "exp_avg_sq": dict(zeros)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = dict(zeros)
        return state

    def hyperparams(self) -> dict[str, float]:
        """The numbers of the update, which a compiled step takes as arguments."""
        return dict(lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps, weight_decay=self.weight_decay)

    def structure(self) -> tuple:
        """Which terms the update has (amsgrad, L2 weight decay): what a compiled step is built for."""
        return (self.amsgrad, bool(self.weight_decay))

    def step(
        self, params: Mapping[str, Any], grads: Mapping[str, Any], state: Mapping[str, Any], *, hyper: Mapping | None = None
    ) -> tuple[dict, dict]:
        """``(params, state)`` after one update; ``hyper`` (default :meth:`hyperparams`) the numbers to use."""
        _check_keys(params, grads)
        h = self.hyperparams() if hyper is None else hyper
        lr, b1, b2, eps, weight_decay = h["lr"], h["beta1"], h["beta2"], h["eps"], h["weight_decay"]
        t = state["step"] + 1
        if all(isinstance(v, (int, float)) for v in (t, b1, b2)):
            step_size = lr / (1.0 - b1**t)
            bias_correction2_sqrt = math.sqrt(1.0 - b2**t)
        else:  # traced (inside a compiled training step): the same formulas on 0-d arrays
            first = next(iter(params.values()))
            xp = namespace_of(first)
            tf = xp.astype(t, first.dtype) if hasattr(t, "dtype") else float(t)
            step_size = lr / (1.0 - b1**tf)
            bias_correction2_sqrt = xp.sqrt(1.0 - b2**tf)
        new = {"step": t, "exp_avg": {}, "exp_avg_sq": {}}
        if self.amsgrad:
            new["max_exp_avg_sq"] = {}
        new_params = {}
        for k, p in params.items():
            g = grads[k]
            if self.decoupled:
                p = p * (1.0 - lr * weight_decay)
            elif self.weight_decay:
                g = g + weight_decay * p
            m = state["exp_avg"][k]
            m = m + (1.0 - b1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 - beta1)
            v = state["exp_avg_sq"][k] * b2 + (1.0 - b2) * (g * g)
            new["exp_avg"][k], new["exp_avg_sq"][k] = m, v
            if self.amsgrad:
                v = namespace_of(v).maximum(state["max_exp_avg_sq"][k], v)
                new["max_exp_avg_sq"][k] = v
            denom = namespace_of(v).sqrt(v) / bias_correction2_sqrt + eps
            new_params[k] = p - step_size * (m / denom)
        return new_params, new


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), torch.optim.AdamW's defaults."""

    decoupled = True

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad)


OPTIMIZERS = {cls.__name__: cls for cls in (SGD, Adam, AdamW)}


def clip_grad_norm(grads: Mapping[str, Any], max_norm: float) -> tuple[dict[str, Any], Any]:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns ``(clipped, total_norm)`` with the norm before clipping as a 0-d array, following
    ``torch.nn.utils.clip_grad_norm_`` (coefficient max_norm / (norm + 1e-6), capped at 1).
    """
    if not is_traced(max_norm):  # a compiled step passes it traced, checked on the host before
        max_norm = _number("max_norm", max_norm, open_low=True)
    if not grads:
        raise ValueError("grads must not be empty")
    xp = namespace_of(*grads.values(), what="grads")
    squares = [xp.sum(g * g) for g in grads.values()]
    total = squares[0]
    for s in squares[1:]:
        total = total + s
    norm = xp.sqrt(total)
    coef = xp.clip(max_norm / (norm + 1e-6), max=1.0)
    return {k: g * coef for k, g in grads.items()}, norm
