"""The light GRU, a cell declared in one file (gruxp/ligru.py): against a PyTorch autograd reference of
SpeechBrain's equations for each option, finite differences, step() against the sequence, the JAX route,
checkpoints and the command line; and a toy cell declared here, in a test file, that trains through
Sequential, the Trainer, a checkpoint round trip and `gruxp train --cell`, with no other edit."""

from typing import NamedTuple

import _cell_reference
import numpy as np
import pytest

import gruxp
from gruxp import cells
from gruxp.testing import assert_close, numerical_gradient, to_numpy

OPTIONS = {
    "plain": {},
    "layer_norm": {"layer_norm": True},
    "recurrent_norm": {"recurrent_norm": True},
    "both": {"layer_norm": True, "recurrent_norm": True},
    "dropout": {"recurrent_norm": True, "recurrent_dropout": 0.4},
}


def _model(backend, options, *, L=2, D=2, H=4, I=3, seed=0):
    return gruxp.LiGRU(I, H, L, bidirectional=D == 2, xp=backend.xp, device=backend.device, dtype="float64", seed=seed, **options)


def _host(model):
    rng = np.random.default_rng(7)
    params = {}
    for k, v in model.state_dict(numpy=True).items():  # gains around one, not all equal
        params[k] = 1.0 + 0.2 * rng.standard_normal(v.shape) if k.startswith("ln_") else v
    return params


# On JAX (each case a compile) "both" and "dropout" hold every option; the single options: the full run
JAX_SLOW = pytest.mark.slow_on("jax")


@pytest.mark.parametrize("name", [n if n in ("both", "dropout") else pytest.param(n, marks=JAX_SLOW) for n in OPTIONS])
def test_against_pytorch_autograd(backend, name):
    """Outputs and every gradient of a 2-layer bidirectional ragged run, ≤ 1e-10 of autograd's."""
    torch = pytest.importorskip("torch")
    options = OPTIONS[name]
    model = _model(backend, options)
    params = _host(model)
    model.load_state_dict(params)
    rng = np.random.default_rng(1)
    x, h0 = rng.standard_normal((6, 3, 3)), rng.standard_normal((4, 3, 4))
    d_out, d_hn = rng.standard_normal((6, 3, 8)), rng.standard_normal((4, 3, 4))
    lengths = [6, 2, 4]
    out, h_n, tape = model.forward(backend.asarray(x), backend.asarray(h0), lengths=lengths)
    grads, dx, dh0 = model.backward(tape, backend.asarray(d_out), backend.asarray(d_hn))
    keep = None
    if options.get("recurrent_dropout"):
        keep = torch.tensor(np.stack([to_numpy(t.keep) for layer in tape.layers for t in layer]))
        assert set(np.unique(to_numpy(keep))) <= {0.0, 1 / 0.6}
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    xt, ht = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    structure = {k: v for k, v in options.items() if k != "recurrent_dropout"}
    ref_out, ref_hn = _cell_reference.ligru(tp, xt, ht, num_layers=2, bidirectional=True, lengths=lengths, keep=keep, **structure)
    assert_close(out, ref_out.detach().numpy(), rtol=1e-10, atol=1e-10, name="out")
    assert_close(h_n, ref_hn.detach().numpy(), rtol=1e-10, atol=1e-10, name="h_n")
    ((ref_out * torch.tensor(d_out)).sum() + (ref_hn * torch.tensor(d_hn)).sum()).backward()
    for k in params:
        assert_close(grads[k], tp[k].grad.numpy(), rtol=1e-10, atol=1e-10, name=k)
    assert_close(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10, name="dx")
    assert_close(dh0, ht.grad.numpy(), rtol=1e-10, atol=1e-10, name="dh0")


@pytest.mark.parametrize("name", [pytest.param("plain", marks=JAX_SLOW), "both"])
def test_finite_differences(backend, name):
    model = _model(backend, OPTIONS[name], L=1, H=2, I=2)
    params = _host(model)
    rng = np.random.default_rng(2)
    x, h0 = rng.standard_normal((3, 2, 2)), rng.standard_normal((2, 2, 2))
    d_out, d_hn = rng.standard_normal((3, 2, 4)), rng.standard_normal((2, 2, 2))

    def loss(p, xv, hv):
        model.load_state_dict(p)
        out, h_n = model(backend.asarray(xv), backend.asarray(hv), lengths=[3, 2])
        return float(np.sum(to_numpy(out) * d_out) + np.sum(to_numpy(h_n) * d_hn))

    model.load_state_dict(params)
    _, _, tape = model.forward(backend.asarray(x), backend.asarray(h0), lengths=[3, 2])
    grads, dx, dh0 = model.backward(tape, backend.asarray(d_out), backend.asarray(d_hn))
    for k, value in params.items():
        assert_close(
            grads[k], numerical_gradient(lambda v, k=k: loss({**params, k: v}, x, h0), value), rtol=1e-6, atol=1e-7, name=k
        )
    assert_close(dx, numerical_gradient(lambda v: loss(params, v, h0), x), rtol=1e-6, atol=1e-7, name="dx")
    assert_close(dh0, numerical_gradient(lambda v: loss(params, x, v), h0), rtol=1e-6, atol=1e-7, name="dh0")


def test_step_equals_the_sequence(backend):
    model = _model(backend, OPTIONS["both"], D=1)
    xs = np.random.default_rng(3).standard_normal((8, 3, 3))
    full, h_full = model(backend.asarray(xs))
    h, outs = None, []
    for x_t in xs:
        y, h = model.step(backend.asarray(x_t), h)
        outs.append(to_numpy(y))
    assert_close(np.stack(outs), full, rtol=1e-12, atol=1e-13, name="out")
    assert_close(h, h_full, rtol=1e-12, atol=1e-13, name="h")


def test_recurrent_dropout_one_mask_per_sequence_in_training_only():
    model = gruxp.LiGRU(3, 5, recurrent_dropout=0.5, dtype="float64", seed=0)
    assert model.draws_randomness and "recurrent_dropout" in model.random_options
    x = np.random.default_rng(4).standard_normal((6, 4, 3))
    _, _, tape = model.forward(x)
    keep = to_numpy(tape.layers[0][0].keep)
    assert keep.shape == (4, 5) and set(np.unique(keep)) <= {0.0, 2.0}
    model.eval()
    assert not model.draws_randomness
    np.testing.assert_array_equal(model(x)[0], model(x)[0])
    plain = gruxp.LiGRU(3, 5, dtype="float64", seed=0)
    np.testing.assert_array_equal(model(x)[0], plain(x)[0])


def test_the_jax_route_and_a_users_jit():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    model = gruxp.LiGRU(3, 4, 2, layer_norm=True, recurrent_norm=True, recurrent_dropout=0.3, xp=jnp, dtype="float64", seed=0)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((5, 2, 3)))
    run = jax.jit(lambda x, key: model(x, rng=key)[0])
    assert not np.array_equal(to_numpy(run(x, jax.random.key(0))), to_numpy(run(x, jax.random.key(1))))
    model.eval()
    with gruxp.config_context(fast_routes=False):
        generic = model(x)[0]
    assert_close(jax.jit(lambda x: model(x)[0])(x), to_numpy(generic), rtol=1e-12, atol=1e-13, name="jit")


def test_checkpoint_and_the_command_line(tmp_path, capsys):
    model = gruxp.Sequential(
        gru=gruxp.LiGRU(2, 4, 2, recurrent_norm=True, recurrent_dropout=0.2, batch_first=True, seed=0),
        last=gruxp.LastStep(batch_first=True),
        head=gruxp.Linear(4, 1, seed=1),
    )
    path = gruxp.checkpoint.save(tmp_path / "c.npz", model, step=1)
    rebuilt = gruxp.checkpoint.build_model(gruxp.checkpoint.load(path))
    assert type(rebuilt.layers["gru"]) is gruxp.LiGRU and rebuilt.layers["gru"].recurrent_dropout == 0.2
    for k, v in model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(rebuilt.state_dict(numpy=True)[k], v)
    from gruxp.cli import main

    with _no_exit():
        main(
            [
                "train",
                "--task",
                "adding",
                "--cell",
                "ligru",
                "--steps",
                "2",
                "--hidden",
                "4",
                "--seq-len",
                "6",
                "--out",
                str(tmp_path / "r"),
            ]
        )
    ckpt = gruxp.checkpoint.load(tmp_path / "r" / "checkpoint.npz")
    assert ckpt.meta["extra"]["options"]["cell"] == "ligru"


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is SystemExit and not value.code:
            return True
        return False


# -- a toy cell, declared here --------------------------------------------------------------------------
class _ElmanTape(NamedTuple):
    x: object
    h0: object
    hs: object


def _elman_inputs(x, p, hidden, xp):
    """W x + b for all steps: (T, B, H)."""
    T, B, I = x.shape
    gi = xp.reshape(xp.reshape(x, (T * B, I)) @ xp.matrix_transpose(p["weight_ih"]), (T, B, hidden))
    return gi + p["bias_ih"] if "bias_ih" in p else gi


def _elman_grads(tape, h_prev, da, p, *, bias, need_dx, xp):
    """The GEMMs after the loop, from dL/da (T, B, H): ``(grads, dx or None)``."""
    T, B, I = tape.x.shape
    H = tape.h0.shape[-1]
    da2 = xp.reshape(da, (T * B, H))
    grads = {
        "weight_ih": xp.matrix_transpose(da2) @ xp.reshape(tape.x, (T * B, I)),
        "weight_hh": xp.matrix_transpose(da2) @ xp.reshape(h_prev, (T * B, H)),
    }
    if bias:
        grads["bias_ih"] = xp.sum(da2, axis=0)
    return grads, (xp.reshape(da2 @ p["weight_ih"], (T, B, I)) if need_dx else None)


def _uniform_draws(shapes, rng):
    return {k: rng.uniform(-0.5, 0.5, size=v) for k, v in shapes.items()}


def _toy_cell():
    """An Elman-style cell, h = tanh(W x + U h + b), declared in this file: its structure, its direction
    functions, its model, its registration."""
    import dataclasses

    from gruxp.functional import Cell, NoOptions, StackConfig, drive_backward, drive_forward, python_loop
    from gruxp.models import Recurrent

    @dataclasses.dataclass(frozen=True)
    class ToyConfig(StackConfig):
        cell = property(lambda self: TOY)

        def param_shapes(self):
            H = self.hidden_size
            shapes = {}
            for s, inputs in self.layer_directions():
                shapes["weight_ih" + s] = (H, inputs)
                shapes["weight_hh" + s] = (H, H)
                if self.bias:
                    shapes["bias_ih" + s] = (H,)
            return shapes

        def initial_params(self, rng):
            return _uniform_draws(self.param_shapes(), rng)

    def forward(x, h0, p, *, mask, reverse, record, xp, loop=python_loop):
        gi = _elman_inputs(x, p, h0.shape[-1], xp)

        def step(h, inputs):  # (carry, x_t) -> (carry, what backward keeps of the step)
            (gi_t,) = inputs
            return xp.tanh(gi_t + h @ xp.matrix_transpose(p["weight_hh"])), ()

        out, h_T, hs, _ = drive_forward(step, h0, (gi,), mask=mask, reverse=reverse, record=record, xp=xp, loop=loop)
        return out, h_T, (_ElmanTape(x, h0, hs) if record else None)

    def backward(tape, d_out, d_hT, p, *, mask, reverse, bias, need_dx, xp, loop=python_loop):
        def step(g, h_prev_t, inputs):  # g = dL/dh_t -> (dL/dh_{t-1}, saved)
            (h_t,) = inputs
            da = g * (1 - h_t * h_t)
            return da @ p["weight_hh"], (da,)

        dh, h_prev, (da,) = drive_backward(step, tape, d_out, d_hT, (tape.hs,), mask=mask, reverse=reverse, xp=xp, loop=loop)
        return _elman_grads(tape, h_prev, da, p, bias=bias, need_dx=need_dx, xp=xp), dh

    TOY = Cell("toy", forward, backward, lambda *a: NoOptions(), lambda *a: NoOptions())

    class Toy(Recurrent):
        structure_type = ToyConfig

        def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False, bidirectional=False,
                     dropout=0.0, xp=None, device=None, dtype=None, seed=None):  # fmt: skip
            self._build(
                ToyConfig.checked(input_size, hidden_size, num_layers, bias, batch_first, bidirectional),
                dropout,
                xp,
                device,
                dtype,
                seed,
            )

    return Toy, TOY


@pytest.fixture
def toy():
    Toy, cell = _toy_cell()
    before = dict(cells._CELLS)
    cells.register(cells.CellSpec("toy", Toy, cell, {}))
    yield Toy
    cells._CELLS.clear()
    cells._CELLS.update(before)


def test_a_toy_cell_declared_in_a_test_file_trains_everywhere(toy, tmp_path, capsys):
    from gruxp import losses, optim

    model = gruxp.Sequential(
        embed=gruxp.Embedding(9, 4, seed=0),
        gru=gruxp.models.recurrent("toy", 4, 6, 2, batch_first=True, seed=1),
        head=gruxp.Linear(6, 9, seed=2),
    )
    trainer = gruxp.Trainer(model, losses.cross_entropy, optim.Adam(lr=0.01), checkpoint=tmp_path / "t.npz")
    ids = np.random.default_rng(0).integers(0, 9, size=(3, 8))
    record = trainer.train_step(gruxp.Batch(ids[:, :-1], ids[:, 1:]))
    assert np.isfinite(record["loss"])
    trainer.save()
    rebuilt = gruxp.checkpoint.build_model(gruxp.checkpoint.load(tmp_path / "t.npz"))
    assert type(rebuilt.layers["gru"]) is toy
    np.testing.assert_array_equal(rebuilt(ids)[0], model(ids)[0])
    (tmp_path / "code.py").write_text("def f(x):\n    return x + 1\n" * 50)
    from gruxp.cli import main

    with _no_exit():
        main(["train", "--data", str(tmp_path / "code.py"), "--cell", "toy", "--steps", "2", "--hidden", "6", "--layers", "1",
              "--seq-len", "8", "--batch", "2", "--out", str(tmp_path / "run")])  # fmt: skip
    assert gruxp.checkpoint.load(tmp_path / "run" / "checkpoint.npz").meta["extra"]["options"]["cell"] == "toy"
    assert "→ Toy 1×6 → linear" in capsys.readouterr().out  # the model line names the declared cell's model


def _plain_toy_cell(structure_of):
    """The same Elman cell declared the plainest way: a NamedTuple structure, its options a dict, its
    own loop bodies (masking written out, as the driver does it)."""
    from gruxp.functional import Cell, direction_suffix, previous_states, python_loop
    from gruxp.models import Recurrent

    class PlainConfig(NamedTuple):
        input_size: int
        hidden_size: int
        num_layers: int = 1
        bias: bool = True
        batch_first: bool = False
        bidirectional: bool = False

        @classmethod
        def checked(cls, *args, **kwargs):
            return cls(*structure_of(*args, **kwargs))  # a StackConfig unpacks like a tuple

        num_directions = property(lambda self: 2 if self.bidirectional else 1)
        cell = property(lambda self: PLAIN)

        def param_shapes(self):
            H, D = self.hidden_size, self.num_directions
            shapes = {}
            for layer in range(self.num_layers):
                for d in range(D):
                    s = direction_suffix(layer, d)
                    shapes["weight_ih" + s] = (H, self.input_size if layer == 0 else D * H)
                    shapes["weight_hh" + s] = (H, H)
                    if self.bias:
                        shapes["bias_ih" + s] = (H,)
            return shapes

        def initial_params(self, rng):
            return _uniform_draws(self.param_shapes(), rng)

    def forward(x, h0, p, *, mask, reverse, record, xp, loop=python_loop):
        gi = _elman_inputs(x, p, h0.shape[-1], xp)

        def step(h, inputs):
            gi_t, mask_t = inputs
            h_new = xp.tanh(gi_t + h @ xp.matrix_transpose(p["weight_hh"]))
            h = h_new if mask_t is None else xp.where(mask_t, h_new, h)
            return h, (h,)

        h, (hs,) = loop(step, h0, (gi, mask), length=x.shape[0], reverse=reverse, xp=xp)
        out = hs if mask is None else xp.where(mask, hs, xp.zeros_like(hs))
        return out, h, (_ElmanTape(x, h0, hs) if record else None)

    def backward(tape, d_out, d_hT, p, *, mask, reverse, bias, need_dx, xp, loop=python_loop):
        def step(dh, inputs):
            d_out_t, mask_t, h_t = inputs
            g = dh if d_out_t is None else dh + d_out_t
            if mask_t is not None:
                g = xp.where(mask_t, g, xp.zeros_like(g))
            da = g * (1 - h_t * h_t)
            new = da @ p["weight_hh"]
            return (new if mask_t is None else xp.where(mask_t, new, dh)), (da,)

        dh = d_hT if d_hT is not None else xp.zeros_like(tape.h0)
        dh, (da,) = loop(step, dh, (d_out, mask, tape.hs), length=tape.x.shape[0], reverse=not reverse, xp=xp)
        h_prev = previous_states(tape, reverse=reverse, xp=xp)
        return _elman_grads(tape, h_prev, da, p, bias=bias, need_dx=need_dx, xp=xp), dh

    PLAIN = Cell("plain", forward, backward, lambda *a: {}, lambda *a: {})

    class Plain(Recurrent):
        structure_type = PlainConfig

        def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False, bidirectional=False,
                     dropout=0.0, xp=None, device=None, dtype=None, seed=None):  # fmt: skip
            structure = PlainConfig.checked(input_size, hidden_size, num_layers, bias, batch_first, bidirectional)
            self._build(structure, dropout, xp, device, dtype, seed)

    return Plain, PLAIN


def test_a_cell_declared_with_a_namedtuple_structure_and_dict_options_gives_the_drivers_bits(toy, tmp_path):
    """The seam's typed records take a cell's options as a NamedTuple or a dict, and every reader of a
    structure speaks NamedTuple's protocol: the plain declaration computes what the driver-based toy
    does, bit for bit, with lengths, both directions and two layers; its checkpoint rebuilds it."""
    Plain, cell = _plain_toy_cell(toy.structure_type.checked)
    cells.register(cells.CellSpec("plain", Plain, cell, {}))
    plain = Plain(3, 4, 2, bidirectional=True, seed=0, dtype="float64")
    driven = toy(3, 4, 2, bidirectional=True, seed=0, dtype="float64")
    assert plain.config() == driven.config() and plain.hidden_size == 4 and "Plain(3, 4, num_layers=2" in repr(plain)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    d_out = np.random.default_rng(1).standard_normal((6, 2, 8))
    results = []
    for model in (plain, driven):
        out, h_n, tape = model.forward(x, lengths=[6, 4])
        results.append((out, h_n, *model.backward(tape, d_out)))
    for a, b in zip(*results, strict=True):
        if isinstance(a, dict):
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            np.testing.assert_array_equal(a, b)
    model = gruxp.Sequential(plain=plain)
    gruxp.checkpoint.save(tmp_path / "p.npz", model)
    rebuilt = gruxp.checkpoint.build_model(gruxp.checkpoint.load(tmp_path / "p.npz"))
    np.testing.assert_array_equal(rebuilt(x)[0], model(x)[0])


def test_every_declared_cell_has_an_nn_module():
    torch = pytest.importorskip("torch")
    import gruxp.torch as gt

    torch.manual_seed(0)
    module = gt.LiGRU(3, 4, 2, recurrent_norm=True, recurrent_dropout=0.3, dtype=torch.float64).eval()
    assert module is not None and type(module) is gt.module_for("ligru") and "recurrent_dropout=0.3" in repr(module)
    model = gruxp.LiGRU(3, 4, 2, recurrent_norm=True, dtype="float64").eval()
    model.load_state_dict(module.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, h_n = module(x, lengths=[5, 3])
    want, _ = model(x.detach().numpy(), lengths=[5, 3])
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12, atol=1e-13)
    assert torch.autograd.gradcheck(lambda x: module(x, lengths=[5, 3])[0], (x,), eps=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="LiGRU takes no option 'zoneout'"):
        gt.LiGRU(3, 4, zoneout=0.1)
