"""Losses that return ``(loss, d_pred)``: a 0-d loss and its gradient with respect to the prediction.

Cross-entropy goes through a stable log-softmax (shift by the row maximum), so logits of 1e4 neither
overflow nor lose the answer. ``ignore_index`` and ``reduction`` follow ``torch.nn.functional``.
"""

from __future__ import annotations

from typing import Any

from ._checks import check_array
from ._namespace import concrete_bool, device_of, dtype_name, namespace_of
from ._typing import Array
from .functional._layers import as_index

__all__ = ["cross_entropy", "mse"]

REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")


def cross_entropy(logits: Array, targets: Array, *, ignore_index: int = -100, reduction: str = "mean") -> tuple[Any, Any]:
    """Softmax cross-entropy of ``logits`` (..., C) against integer ``targets`` (...).

    Positions whose target equals ``ignore_index`` contribute nothing; ``mean`` divides by the
    number of the others (NaN if there are none, as PyTorch). Returns ``(loss, d_logits)``.
    """
    _check_reduction(reduction)
    xp = namespace_of(logits, what="logits")
    check_array("logits", logits, xp=xp, device=device_of(logits), dtype=logits.dtype)
    if namespace_of(targets, what="targets") is not xp:
        raise TypeError("targets must be an array of the same namespace as logits")
    if not xp.isdtype(targets.dtype, "integral"):
        raise TypeError(f"targets must be an integer array (class indices); got dtype {dtype_name(targets.dtype)}")
    if logits.ndim < 1 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:-1])} (logits' shape without the class axis); "
            f"got {tuple(targets.shape)}"
        )
    C = logits.shape[-1]
    targets = as_index(targets, xp=xp)  # compare in a dtype that holds C and ignore_index (uint8 wraps at 256)
    if concrete_bool(xp.any(((targets < 0) | (targets >= C)) & (targets != ignore_index))):
        raise ValueError(f"targets must lie in [0, {C}) or equal ignore_index={ignore_index}")
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    exp = xp.exp(shifted)
    total = xp.sum(exp, axis=-1, keepdims=True)
    log_probs = shifted - xp.log(total)
    classes = xp.arange(C, dtype=targets.dtype, device=device_of(targets))
    one_hot = targets[..., None] == classes
    valid = xp.astype(targets != ignore_index, logits.dtype)
    picked = xp.sum(xp.where(one_hot, log_probs, xp.zeros((), dtype=logits.dtype, device=device_of(logits))), axis=-1)
    loss = -xp.sum(picked * valid)
    grad = (exp / total - xp.astype(one_hot, logits.dtype)) * valid[..., None]
    if reduction == "mean":
        count = xp.sum(valid)
        loss, grad = loss / count, grad / count
    return loss, grad


def mse(pred: Array, target: Array, *, reduction: str = "mean") -> tuple[Any, Any]:
    """Mean (or summed) squared error; returns ``(loss, d_pred)``."""
    _check_reduction(reduction)
    xp = namespace_of(pred, what="pred")
    check_array("target", target, xp=xp, device=device_of(pred), dtype=pred.dtype)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"target must have the shape of pred {tuple(pred.shape)}; got {tuple(target.shape)}")
    diff = pred - target
    loss, grad = xp.sum(diff * diff), 2.0 * diff
    if reduction == "mean":
        n = 1
        for s in pred.shape:
            n *= s
        loss, grad = loss / n, grad / n
    return loss, grad
