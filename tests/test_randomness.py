"""Compiled = eager: masks from the backend's own generator or key, drawn where the arrays live, and
nothing a user can change between steps frozen into a compiled program (gruxp._random, Trainer)."""

import re

import numpy as np
import pytest

import gruxp
from gruxp import losses, optim
from gruxp.testing import to_numpy


def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jax, jnp


# -- under jax.jit: keys, and a clear error without one ------------------------------------------------
def test_apply_with_dropout_under_jit_takes_a_key():
    jax, jnp = _jax()
    import gruxp.jax as gj

    params = gj.init(0, 3, 4, 2, dtype="float64")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2, 3)))
    run = jax.jit(lambda p, x, key: gj.apply(p, x, dropout=0.5, rng=key)[0])
    a, b, again = run(params, x, jax.random.key(0)), run(params, x, jax.random.key(1)), run(params, x, jax.random.key(0))
    assert not np.array_equal(to_numpy(a), to_numpy(b))  # other keys, other masks
    np.testing.assert_array_equal(to_numpy(a), to_numpy(again))  # the same key, the same masks
    assert np.array_equal(to_numpy(run(params, x, jax.random.PRNGKey(0))), to_numpy(run(params, x, jax.random.PRNGKey(0))))
    with pytest.raises(ValueError, match=r"dropout=0.5 draws a random mask.*jax.jit.*pass a jax.random key as rng="):
        jax.jit(lambda p, x: gj.apply(p, x, dropout=0.5)[0])(params, x)
    # no random option: no key needed
    np.testing.assert_allclose(to_numpy(jax.jit(lambda p, x: gj.apply(p, x)[0])(params, x)), to_numpy(gj.apply(params, x)[0]))


@pytest.mark.parametrize("cell", ["lngru", "gru", "mingru"])
def test_a_models_random_options_under_a_users_jit(cell):
    jax, jnp = _jax()
    options = {"zoneout": 0.5} if cell == "lngru" else {"dropout": 0.5}
    model = gruxp.models.recurrent(cell, 3, 4, 2, xp=jnp, dtype="float64", seed=0, **options)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2, 3)))
    name = "zoneout" if cell == "lngru" else "dropout"
    with pytest.raises(ValueError, match=rf"{name}=0.5 draws a random mask"):
        jax.jit(lambda x: model(x)[0])(x)
    run = jax.jit(lambda x, key: model(x, rng=key)[0])
    a, b = run(x, jax.random.key(0)), run(x, jax.random.key(1))
    assert not np.array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(to_numpy(a), to_numpy(run(x, jax.random.key(0))))
    # eager: each call draws afresh from model.rng; in evaluation mode nothing is drawn, and no key is needed
    assert not np.array_equal(to_numpy(model(x)[0]), to_numpy(model(x)[0]))
    model.eval()
    np.testing.assert_allclose(to_numpy(jax.jit(lambda x: model(x)[0])(x)), to_numpy(model(x)[0]), rtol=1e-12, atol=1e-14)


def test_a_wrong_kind_of_generator_is_refused_by_name():
    jax, jnp = _jax()
    torch = pytest.importorskip("torch")
    model = gruxp.GRU(3, 4, 2, dropout=0.5, xp=jnp, seed=0)
    with pytest.raises(TypeError, match="rng for JAX arrays must be a jax.random key; got torch"):
        model(jnp.ones((3, 2, 3), dtype=jnp.float32), rng=torch.Generator())
    with pytest.raises(TypeError, match="rng for numpy arrays must be None, an int or a numpy Generator"):
        gruxp.GRU(3, 4, 2, dropout=0.5, seed=0)(np.ones((3, 2, 3), dtype=np.float32), rng=jax.random.key(0))


def test_torch_masks_come_from_torch_generators_on_the_device():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    model = gruxp.LayerNormGRU(3, 4, 2, dropout=0.3, zoneout=0.4, xp=xp, dtype="float64", seed=0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    _, _, tape = model.forward(x, rng=torch.Generator().manual_seed(1))
    _, _, same = model.forward(x, rng=torch.Generator().manual_seed(1))
    keep = tape.layers[0][0].keep
    assert isinstance(keep, torch.Tensor) and isinstance(tape.dropout_masks, torch.Tensor)
    assert torch.equal(keep, same.layers[0][0].keep) and torch.equal(tape.dropout_masks, same.dropout_masks)

    # the same model seed repeats the masks of every call, in order
    def masks(seed):
        m = gruxp.LayerNormGRU(3, 4, 2, dropout=0.3, zoneout=0.4, xp=xp, dtype="float64", seed=seed)
        return [m.forward(x)[2].layers[1][0].keep for _ in range(3)]

    first, second, other = masks(5), masks(5), masks(6)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], other[0])


# -- the compiled Trainer step: a fresh mask each step, the same sequence for the same seed -------------
def _random_model(xp, cell, *, seed=0, dtype="float64"):
    options = {"zoneout": 0.5} if cell == "lngru" else {"dropout": 0.5}
    return gruxp.Sequential(
        embed=gruxp.Embedding(7, 4, seed=seed, xp=xp, dtype=dtype),
        gru=gruxp.models.recurrent(cell, 4, 6, 2, batch_first=True, seed=seed + 1, xp=xp, dtype=dtype, **options),
        drop=gruxp.Dropout(0.25, seed=seed + 2),
        head=gruxp.Linear(6, 7, seed=seed + 3, xp=xp, dtype=dtype),
    )


def _batches(xp, n=6):
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 7, size=(3, 5)) for _ in range(n)]
    return [gruxp.Batch(xp.asarray(a[:, :-1]), xp.asarray(a[:, 1:])) for a in ids]


def _losses(xp, cell, seeds, *, steps=4):
    """The losses of ``steps`` steps (lr 0, one batch) from each random layer seeded by each of ``seeds``,
    by one Trainer (its program compiled once): only the masks change the loss."""
    trainer = gruxp.Trainer(_random_model(xp, cell), losses.cross_entropy, optim.SGD(lr=0.0))
    runs = []
    for seed in seeds:
        for k, name in enumerate(("gru", "drop")):
            trainer.model.layers[name].rng = np.random.default_rng([seed, k])
        runs.append([trainer.train_step(batch)["loss"] for batch in _batches(xp, 1) * steps])
    return runs, trainer


@pytest.mark.parametrize("cell", ["lngru", pytest.param("gru", marks=pytest.mark.slow)])
def test_random_layers_draw_afresh_each_compiled_step_and_repeat_with_the_seed(cell):
    jax, jnp = _jax()
    (run, again, other), trainer = _losses(jnp, cell, [0, 0, 10])
    assert trainer.compiles == 1  # compiled, once
    assert len(set(run)) == len(run), run
    assert run == again and other != run


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_random_layers_draw_afresh_each_eager_step_and_repeat_with_the_seed(library):
    xp = pytest.importorskip("array_api_compat." + library)
    for cell in ("lngru", "gru"):
        (run, again, other), trainer = _losses(xp, cell, [0, 0, 10], steps=3)
        assert trainer.compiles == 0 and len(set(run)) == len(run)
        assert run == again and other != run


def test_the_trainer_asks_layers_whether_they_draw():
    model = _random_model(np, "lngru")
    assert [name for name, layer in model.layers.items() if getattr(layer, "draws_randomness", False)] == ["gru", "drop"]
    model.eval()
    assert not any(getattr(layer, "draws_randomness", False) for layer in model.layers.values())
    assert not gruxp.GRU(3, 4, 1, dropout=0.5).draws_randomness  # one layer: no dropout acts between layers
    assert gruxp.LayerNormGRU(3, 4, zoneout=0.1).draws_randomness


def test_a_compiled_run_resumes_bit_identically_with_zoneout_and_dropout(tmp_path):
    """4 compiled steps == 2 steps + save + resume (a new model and Trainer) + 2 steps, bit for bit:
    each random layer's Generator, which the checkpoint keeps, gives the seeds of its keys."""
    jax, jnp = _jax()
    batches = _batches(jnp, 4)

    def trainer():
        return gruxp.Trainer(
            _random_model(jnp, "lngru"), losses.cross_entropy, optim.AdamW(lr=0.01), checkpoint=tmp_path / "c.npz"
        )

    whole = trainer()
    for batch in batches:
        whole.train_step(batch)
    first = trainer()
    for batch in batches[:2]:
        first.train_step(batch)
    first.save()
    second = trainer()
    second.resume()
    for batch in batches[2:]:
        second.train_step(batch)
    for k, v in whole.model.state_dict(numpy=True).items():
        np.testing.assert_array_equal(second.model.state_dict(numpy=True)[k], v, err_msg=k)
    assert [r["loss"] for r in whole.history[2:]] == [r["loss"] for r in second.history]


# -- nothing frozen: mode, learning rate and clipping changed between compiled steps ------------------
def _changes(trainer, step):
    """The user's edits before step ``step`` (0-based) of six."""
    if step == 1:
        trainer.model.eval()
    elif step == 2:
        trainer.optimizer.lr = 0.0
    elif step == 3:
        trainer.model.train()
        trainer.optimizer.lr = 0.05
        trainer.optimizer.betas = (0.5, 0.9)
    elif step == 4:
        trainer.clip_norm = 0.05
    elif step == 5:
        trainer.clip_norm = None
        trainer.optimizer.weight_decay = 0.5


def _six_steps(xp, cell, *, compile=True):
    model = _random_model(xp, cell)
    trainer = gruxp.Trainer(model, losses.cross_entropy, optim.AdamW(lr=0.01), clip_norm=1.0, compile=compile)
    records = []
    for step, batch in enumerate(_batches(xp)):
        _changes(trainer, step)
        records.append(trainer.train_step(batch))
    return trainer, records


@pytest.mark.parametrize("cell", ["gru", pytest.param("lngru", marks=pytest.mark.slow)])
def test_settings_changed_between_compiled_steps_take_effect_as_in_the_eager_step(cell):
    """Compiled against eager on JAX (the same masks: the same seeds), and the eager JAX step against
    NumPy's where no mask is drawn: float64, 1e-12."""
    jax, jnp = _jax()
    compiled, got = _six_steps(jnp, cell)
    eager, want = _six_steps(jnp, cell, compile=False)
    assert eager.compiles == 0
    for a, b in zip(got, want, strict=True):
        assert (
            abs(a["loss"] - b["loss"]) <= 1e-12 * abs(b["loss"])
            and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-12 * b["grad_norm"]
        )
    for k, v in eager.model.state_dict(numpy=True).items():
        np.testing.assert_allclose(compiled.model.state_dict(numpy=True)[k], v, rtol=1e-12, atol=1e-14, err_msg=k)
    assert compiled.compiles == 3, compiled.compiles  # programs: train + clip, eval + clip, train + no clip


def test_a_learning_rate_of_zero_stops_the_compiled_updates_and_a_new_one_restarts_them():
    jax, jnp = _jax()
    model = gruxp.Sequential(
        embed=gruxp.Embedding(7, 4, seed=0, xp=jnp, dtype="float64"),
        gru=gruxp.GRU(4, 6, batch_first=True, seed=1, xp=jnp, dtype="float64"),
        head=gruxp.Linear(6, 7, seed=2, xp=jnp, dtype="float64"),
    )
    reference = model.to(np)
    trainers = [gruxp.Trainer(m, losses.cross_entropy, optim.Adam(lr=0.01), clip_norm=1.0) for m in (model, reference)]
    for step, (batch, host) in enumerate(zip(_batches(jnp), _batches(np), strict=True)):
        for trainer in trainers:
            _changes(trainer, step)
        before = model.state_dict(numpy=True)
        got, want = trainers[0].train_step(batch), trainers[1].train_step(host)
        assert abs(got["loss"] - want["loss"]) <= 1e-12 * want["loss"], step
        after = model.state_dict(numpy=True)
        moved = any(not np.array_equal(before[k], after[k]) for k in before)
        assert moved == (step != 2), step  # lr = 0 at step 2 only
    for k, v in reference.state_dict(numpy=True).items():
        np.testing.assert_allclose(model.state_dict(numpy=True)[k], v, rtol=1e-12, atol=1e-14, err_msg=k)
    # programs: train + clip, eval + clip, then (no clip, an L2 term) — lr, betas and a return to train reused one
    assert trainers[0].compiles == 3


# -- masks and lengths stay on the device -------------------------------------------------------------
_TRANSFER = re.compile(r"host-to-device transfer: aval=ShapedArray\((\w+)\[([^\]]*)\]")


@pytest.mark.parametrize(
    "cell", ["lngru", pytest.param("gru", marks=pytest.mark.slow), pytest.param("mingru", marks=pytest.mark.slow)]
)
def test_no_host_to_device_copy_larger_than_a_scalar(cell, capfd):
    jax, jnp = _jax()
    options = {"zoneout": 0.3} if cell == "lngru" else {}
    layer = gruxp.models.recurrent(cell, 4, 6, 2, batch_first=True, dropout=0.3, xp=jnp, dtype="float64", seed=1, **options)
    model = gruxp.Sequential(
        embed=gruxp.Embedding(7, 4, seed=0, xp=jnp, dtype="float64"),
        gru=layer,
        drop=gruxp.Dropout(0.2, seed=2),
        head=gruxp.Linear(6, 7, seed=3, xp=jnp, dtype="float64"),
    )
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 7, size=(3, 8)))
    lengths = jnp.asarray([8, 5, 2])
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 8, 4)))
    trainer = gruxp.Trainer(model, losses.cross_entropy, optim.AdamW(lr=0.01), clip_norm=1.0)
    batch = gruxp.Batch(ids[:, :-1], ids[:, 1:], lengths - 1 + jnp.asarray([0, 0, 1]) * 0)
    capfd.readouterr()
    with jax.transfer_guard_device_to_host("disallow"), jax.transfer_guard_host_to_device("log"):
        out, h_n, tape = layer.forward(x, lengths=lengths)
        layer.backward(tape, jnp.ones_like(out), jnp.ones_like(h_n))
        for _ in range(2):
            trainer.train_step(batch)
        jax.block_until_ready(trainer.model.params)
    logged = capfd.readouterr().err
    transfers = _TRANSFER.findall(logged)
    assert transfers, "the log caught no transfer at all (did the guard log?)"
    large = [t for t in transfers if t[1].strip()]
    assert not large, large


def test_host_lengths_cross_once_as_integers_and_the_mask_is_built_on_the_device(capfd):
    jax, jnp = _jax()
    model = gruxp.GRU(3, 4, xp=jnp, dtype="float64", seed=0)
    x = jnp.ones((6, 3, 3))
    capfd.readouterr()
    with jax.transfer_guard_host_to_device("log"):
        model(x, lengths=[6, 4, 1])
    transfers = _TRANSFER.findall(capfd.readouterr().err)
    assert [t for t in transfers if t[1].strip()] == [("int64", "3")]  # the three lengths; no (T, B, 1) mask
