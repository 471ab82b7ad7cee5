"""Losses against PyTorch and finite differences; optimizers against torch.optim over 20 steps."""

import numpy as np
import pytest

from gruxp import losses, optim
from gruxp.testing import assert_close, numerical_gradient, to_numpy

torch_or_none = None
try:  # parity checks run when torch is installed; the rest always runs
    import torch as torch_or_none
except ImportError:  # pragma: no cover
    pass


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy(backend, reduction):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4, 5)) * 3
    targets = rng.integers(0, 5, size=(3, 4))
    targets[1, 2] = targets[2, 0] = -100
    loss, grad = losses.cross_entropy(backend.asarray(logits), backend.int_array(targets), reduction=reduction)
    assert loss.shape == () and grad.shape == logits.shape

    def f(z):
        return float(losses.cross_entropy(backend.asarray(z), backend.int_array(targets), reduction=reduction)[0])

    assert_close(grad, numerical_gradient(f, logits), rtol=1e-6, atol=1e-8, name="d_logits")  # FD rounding ~|loss|·eps/h
    if torch_or_none is not None:
        t = torch_or_none
        z = t.tensor(logits, requires_grad=True)
        ref = t.nn.functional.cross_entropy(
            z.reshape(-1, 5), t.as_tensor(targets).reshape(-1), ignore_index=-100, reduction=reduction
        )
        ref.backward()
        assert_close(loss, ref.detach().numpy(), rtol=1e-13, atol=0, name="loss")
        assert_close(grad, z.grad.numpy(), rtol=1e-12, atol=1e-15, name="grad")


def test_cross_entropy_is_stable_for_huge_logits(backend, dtype):
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4], [3e4, 3e4, 0.0]])
    loss, grad = losses.cross_entropy(backend.asarray(logits, dtype), backend.int_array([1, 2, 0]))
    # row 0: -log softmax = 1e4; row 1: 0; row 2: log 2
    assert_close(loss, np.array((1e4 + 0.0 + np.log(2)) / 3), rtol=1e-6, atol=0, name="loss")
    assert np.all(np.isfinite(to_numpy(grad)))


def test_cross_entropy_errors(backend):
    z = backend.asarray(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\) or equal ignore_index=-100"):
        losses.cross_entropy(z, backend.int_array([0, 3]))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        losses.cross_entropy(z, backend.asarray([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\)"):
        losses.cross_entropy(z, backend.int_array([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.cross_entropy(z, backend.int_array([0, 1]), reduction="none")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse(backend, reduction):
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss, grad = losses.mse(backend.asarray(pred), backend.asarray(target), reduction=reduction)
    f = lambda p: float(losses.mse(backend.asarray(p), backend.asarray(target), reduction=reduction)[0])  # noqa: E731
    assert_close(grad, numerical_gradient(f, pred), rtol=1e-6, atol=1e-9, name="d_pred")
    want = np.sum((pred - target) ** 2) / (pred.size if reduction == "mean" else 1)
    assert_close(loss, np.array(want), rtol=1e-13, atol=0, name="loss")
    with pytest.raises(ValueError, match="target must have the shape of pred"):
        losses.mse(backend.asarray(pred), backend.asarray(target[:2]))


OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]


@pytest.mark.parametrize("name, kwargs", OPTIMIZER_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZER_CASES)])
def test_optimizer_parity_with_torch(backend, name, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    start = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    steps = [{k: rng.standard_normal(v.shape) for k, v in start.items()} for _ in range(20)]
    opt = optim.OPTIMIZERS[name](**kwargs)
    params = {k: backend.asarray(v) for k, v in start.items()}
    state = opt.init(params)
    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in start.items()}
    topt = getattr(torch.optim, name)(list(tparams.values()), **kwargs)
    for g in steps:
        params, state = opt.step(params, {k: backend.asarray(v) for k, v in g.items()}, state)
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        topt.step()
    assert state["step"] == 20
    for k in start:
        assert_close(params[k], tparams[k].detach().numpy(), rtol=0, atol=1e-12, name=k)


def test_optimizers_do_not_mutate(backend):
    params = {"w": backend.asarray(np.ones((2, 2)))}
    grads = {"w": backend.asarray(np.full((2, 2), 0.5))}
    for opt in (optim.SGD(lr=0.1, momentum=0.9), optim.Adam(), optim.AdamW()):
        state = opt.init(params)
        new, _ = opt.step(params, grads, state)
        np.testing.assert_array_equal(to_numpy(params["w"]), np.ones((2, 2)))
        assert not np.array_equal(to_numpy(new["w"]), np.ones((2, 2)))


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm(backend, max_norm):
    rng = np.random.default_rng(2)
    grads = {"a": rng.standard_normal((3, 3)), "b": rng.standard_normal(5)}
    clipped, norm = optim.clip_grad_norm({k: backend.asarray(v) for k, v in grads.items()}, max_norm)
    total = np.sqrt(sum(np.sum(v * v) for v in grads.values()))
    assert_close(norm, np.array(total), rtol=1e-14, atol=0, name="norm")
    coef = min(1.0, max_norm / (total + 1e-6))
    for k, v in grads.items():
        assert_close(clipped[k], v * coef, rtol=1e-14, atol=1e-16, name=k)
    if torch_or_none is not None:
        tg = [torch_or_none.nn.Parameter(torch_or_none.zeros(v.shape, dtype=torch_or_none.float64)) for v in grads.values()]
        for p, v in zip(tg, grads.values(), strict=True):
            p.grad = torch_or_none.tensor(v)
        tnorm = torch_or_none.nn.utils.clip_grad_norm_(tg, max_norm)
        assert abs(float(tnorm) - float(to_numpy(norm))) < 1e-12
        for p, k in zip(tg, grads, strict=True):
            assert_close(clipped[k], p.grad.numpy(), rtol=1e-13, atol=1e-15, name=k)


def test_optimizer_argument_errors():
    with pytest.raises(ValueError, match="lr must lie in"):
        optim.SGD(lr=-1)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        optim.SGD(nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\] must lie in \[0.0, 1.0\)"):
        optim.Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="grads must have the keys of params"):
        opt = optim.Adam()
        opt.step({"a": np.ones(2)}, {"b": np.ones(2)}, opt.init({"a": np.ones(2)}))
    with pytest.raises(ValueError, match=r"max_norm must lie in \(0.0"):
        optim.clip_grad_norm({"a": np.ones(2)}, 0.0)
