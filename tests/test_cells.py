"""The layer-normalised GRU and minGRU on every backend: an independent PyTorch autograd reference,
finite differences, every route against the generic loop, minGRU's scan against its steps, zoneout,
lengths, and the JAX program's size against T."""

import _cell_reference
import numpy as np
import pytest

import gruxp
from gruxp import functional as F
from gruxp.testing import assert_close, numerical_gradient, to_numpy

# name: (functional call, model class, structure options, reference options)
CELLS = {
    "lngru": (F.lngru, F.lngru_forward, {}),
    "lngru-zoneout-eval": (F.lngru, F.lngru_forward, {"zoneout": 0.3, "training": False}),
    "lngru-zoneout-train": (F.lngru, F.lngru_forward, {"zoneout": 0.3, "training": True, "rng": 5}),
    "mingru": (F.mingru, F.mingru_forward, {}),
    "mingru-log": (F.mingru, F.mingru_forward, {"log_space": True}),
    "mingru-sequential": (F.mingru, F.mingru_forward, {"parallel": False}),
}


def _host_params(name, I, H, L, D, *, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    if name.startswith("lngru"):
        shapes = F.LayerNormGRUConfig.checked(I, H, L, bias, False, D == 2).param_shapes()
    else:
        shapes = F.MinGRUConfig.checked(I, H, L, bias, False, D == 2).param_shapes()
    params = {k: rng.uniform(-0.7, 0.7, size=s) for k, s in shapes.items()}
    for k in params:
        if k.startswith("ln_"):  # gains around one, not all equal: their gradients must tell them apart
            params[k] = 1.0 + 0.2 * rng.standard_normal(shapes[k])
    return params


def _inputs(name, T, B, I, H, L, D, seed=1):
    rng = np.random.default_rng(seed)
    h0 = rng.standard_normal((L * D, B, H))
    if name == "mingru-log":
        h0 = np.abs(h0)  # the log-space form's states are positive
    return rng.standard_normal((T, B, I)), h0, rng.standard_normal((T, B, D * H)), rng.standard_normal((L * D, B, H))


def _reference(name, params, x, h0, tape, **structure):
    """Forward and gradients from the PyTorch autograd reference, with the tape's zoneout draws."""
    torch = pytest.importorskip("torch")
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    _, options = CELLS[name][:2], CELLS[name][2]
    if name.startswith("lngru"):
        keep = None
        if options.get("training") and options.get("zoneout"):
            keep = torch.tensor(np.stack([to_numpy(t.keep) for layer in tape.layers for t in layer]))
        rate = options.get("zoneout", 0.0) if not options.get("training") else 0.0
        out, h_n = _cell_reference.lngru(tp, xt, ht, zoneout=rate, keep=keep, **structure)
    else:
        out, h_n = _cell_reference.mingru(tp, xt, ht, log_space=options.get("log_space", False), **structure)
    return tp, xt, ht, out, h_n


def _call_options(name):
    return {k: v for k, v in CELLS[name][2].items()}


JAX_SLOW = pytest.mark.slow_on("jax")  # compiles proving no more on JAX than the other cases: the full run only


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=JAX_SLOW) if n in ("lngru-zoneout-eval", "mingru-sequential") else n for n in CELLS]
)
def test_against_pytorch_autograd(backend, name):
    """Outputs and every gradient of a 2-layer bidirectional ragged run, ≤ 1e-10 of autograd's."""
    _check_against_pytorch(backend, name, np.array([6, 2, 4]))


@pytest.mark.parametrize("name", ["lngru", "mingru"])
def test_against_pytorch_autograd_full_length(backend, name):
    """The same without lengths: the tape keeps a direction's states as a slice of the next layer's input."""
    _check_against_pytorch(backend, name, None)


def _check_against_pytorch(backend, name, lengths):
    T, B, I, H, L, D = 6, 3, 3, 4, 2, 2
    params = _host_params(name, I, H, L, D)
    x, h0, d_out, d_hn = _inputs(name, T, B, I, H, L, D)
    _, forward, _ = CELLS[name]
    out, h_n, tape = forward(
        {k: backend.asarray(v) for k, v in params.items()},
        backend.asarray(x),
        backend.asarray(h0),
        lengths=lengths,
        num_layers=L,
        bidirectional=True,
        **_call_options(name),
    )
    grads, dx, dh0 = F.gru_backward(tape, backend.asarray(d_out), backend.asarray(d_hn))
    tp, xt, ht, ref_out, ref_hn = _reference(name, params, x, h0, tape, num_layers=L, bidirectional=True, lengths=lengths)
    assert_close(out, ref_out.detach().numpy(), rtol=1e-10, atol=1e-10, name="out")
    assert_close(h_n, ref_hn.detach().numpy(), rtol=1e-10, atol=1e-10, name="h_n")
    loss = (ref_out * __import__("torch").tensor(d_out)).sum() + (ref_hn * __import__("torch").tensor(d_hn)).sum()
    loss.backward()
    for k in params:
        assert_close(grads[k], tp[k].grad.numpy(), rtol=1e-10, atol=1e-10, name=k)
    assert_close(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10, name="dx")
    assert_close(dh0, ht.grad.numpy(), rtol=1e-10, atol=1e-10, name="dh0")


@pytest.mark.parametrize("name", ["lngru", pytest.param("lngru-zoneout-eval", marks=JAX_SLOW), "mingru", "mingru-log"])
def test_finite_differences(backend, name):
    """Every gradient against central differences of the forward, float64, bidirectional and ragged."""
    T, B, I, H, L, D = 3, 2, 2, 2, 1, 2
    lengths = np.array([3, 2])
    params = _host_params(name, I, H, L, D)
    x, h0, d_out, d_hn = _inputs(name, T, B, I, H, L, D)
    infer, forward, _ = CELLS[name]
    options = dict(lengths=lengths, num_layers=L, bidirectional=True, **_call_options(name))

    def loss(p, xv, hv):
        out, h_n = infer({k: backend.asarray(v) for k, v in p.items()}, backend.asarray(xv), backend.asarray(hv), **options)
        return float(np.sum(to_numpy(out) * d_out) + np.sum(to_numpy(h_n) * d_hn))

    _, _, tape = forward({k: backend.asarray(v) for k, v in params.items()}, backend.asarray(x), backend.asarray(h0), **options)
    grads, dx, dh0 = F.gru_backward(tape, backend.asarray(d_out), backend.asarray(d_hn))
    for k, value in params.items():
        numeric = numerical_gradient(lambda v, k=k: loss({**params, k: v}, x, h0), value)
        assert_close(grads[k], numeric, rtol=1e-6, atol=1e-7, name=k)
    assert_close(dx, numerical_gradient(lambda v: loss(params, v, h0), x), rtol=1e-6, atol=1e-7, name="dx")
    assert_close(dh0, numerical_gradient(lambda v: loss(params, x, v), h0), rtol=1e-6, atol=1e-7, name="dh0")


ROUTE_CELLS = ["lngru", "lngru-zoneout-eval", "lngru-zoneout-train", "mingru", "mingru-log"]
NO_ROUTE = "runs the generic loop itself: no route of its own to compare"


@pytest.mark.skip_on(torch=NO_ROUTE, array_api_strict=NO_ROUTE, cupy=NO_ROUTE)
@pytest.mark.parametrize("name", [pytest.param(n, marks=JAX_SLOW) if n == "lngru-zoneout-eval" else n for n in ROUTE_CELLS])
def test_routes_match_the_generic_loop(backend, name):
    """The backend's route (NumPy: the cells' numba loops, forced at this small size; JAX: jit and
    lax.scan) against the generic Python loop, float64, ≤ 1e-12 relative."""
    _compare_routes(backend, name, "float64")


@pytest.mark.parametrize("name", ROUTE_CELLS)
def test_cpu_routes_in_float32(name):
    """The cells' numba loops (float32 activations of the numba fuser) within 1e-5 of the generic loop."""
    import array_api_compat.numpy as xp
    from conftest import Backend

    _compare_routes(Backend("numpy", "numpy", xp, None, {}), name, "float32")


def _compare_routes(backend, name, dtype):
    T, B, I, H, L, D = 7, 3, 3, 4, 2, 2
    params = _host_params(name, I, H, L, D)
    x, h0, d_out, d_hn = _inputs(name, T, B, I, H, L, D)
    _, forward, _ = CELLS[name]
    results, routes = [], []
    for fast in (True, False):
        with gruxp.config_context(fast_routes=fast, fuser="numba" if fast else "auto"), gruxp.routes_taken() as taken:
            p = {k: backend.asarray(v, dtype) for k, v in params.items()}
            out, h_n, tape = forward(
                p,
                backend.asarray(x, dtype),
                backend.asarray(h0, dtype),
                num_layers=L,
                bidirectional=True,
                lengths=[7, 3, 5],
                **_call_options(name),
            )
            grads, dx, dh0 = F.gru_backward(tape, backend.asarray(d_out, dtype), backend.asarray(d_hn, dtype))
            results.append([to_numpy(a).astype(np.float64) for a in (out, h_n, dx, dh0, *grads.values())])
        routes.append({(t.route, t.step) for t in taken if t.route != "workers"})
    # the comparison means something only if the fast run took the route (the public question says which)
    assert routes[1] == {("generic", "forward"), ("generic", "backward")}, routes[1]
    if backend.name == "numpy" and name == "mingru-log":
        # minGRU's CPU loop runs the linear form; the plan leaves the log form to the generic code
        assert routes[0] == routes[1], routes[0]
        pytest.skip("minGRU's log form has no CPU loop: the fast run is the generic code, nothing to compare")
    route = "jax" if backend.name == "jax" else f"{name.split('-')[0]}-cpu"
    assert routes[0] == {(route, "forward"), (route, "backward")}, routes[0]
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for fast, generic in zip(*results, strict=True):
        assert_close(fast, generic, rtol=rtol, atol=rtol * max(1.0, float(np.abs(generic).max())))


def _mingru_host(T, B=2, H=3, *, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    params = {"weight_ih_l0": rng.uniform(-0.5, 0.5, (2 * H, 2)), "bias_ih_l0": rng.uniform(-0.5, 0.5, 2 * H)}
    params["bias_ih_l0"][:H] += shift  # larger z: the state forgets fast, log-values span a wide range
    return params, rng.standard_normal((T, B, 2)), np.abs(rng.standard_normal((1, B, H)))


@pytest.mark.parametrize("T", [1, 5, 64, 1000, 4096])
@pytest.mark.parametrize("log_space", [False, True], ids=["linear", "log"])
def test_mingru_scan_equals_its_steps(T, log_space):
    """The parallel scan against one step at a time (forward and backward), ≤ 1e-12 relative, float64."""
    params, x, h0 = _mingru_host(T, shift=1.0)
    d_out = np.random.default_rng(3).standard_normal((T, 2, 3))
    runs = []
    for parallel in (True, False):
        out, h_n, tape = F.mingru_forward(params, x, h0, log_space=log_space, parallel=parallel)
        grads, dx, dh0 = F.gru_backward(tape, d_out, None)
        runs.append((out, h_n, dx, dh0, *grads.values()))
    for scan, steps in zip(*runs, strict=True):
        assert np.abs(scan - steps).max() <= 1e-12 * max(1.0, np.abs(steps).max())


def test_mingru_step_by_step_model():
    """MinGRU.step carries the state through a sequence with the model's own results (≤ 1e-12)."""
    model = gruxp.MinGRU(3, 4, num_layers=2, dtype="float64", seed=0)
    x = np.random.default_rng(1).standard_normal((50, 2, 3))
    out, h_n = model(x)
    h, steps = None, []
    for t in range(x.shape[0]):
        o, h = model.step(x[t], h)
        steps.append(o)
    assert np.abs(np.stack(steps) - out).max() <= 1e-12
    assert np.abs(h - h_n).max() <= 1e-12


def _naive_log_scan(log_a, log_b):
    """The paper's log-space scan with ONE global max shift in logcumsumexp: loses early terms at long T."""
    a_star = np.cumsum(log_a, axis=0)
    v = log_b - a_star
    m = v.max(axis=0, keepdims=True)
    with np.errstate(divide="ignore"):
        return a_star + m + np.log(np.cumsum(np.exp(v - m), axis=0))


def test_log_space_scan_is_stable_where_a_global_max_is_not():
    """At T = 4096 a global-max logcumsumexp is wrong by orders of magnitude; gruxp's blocked
    log-space scan stays within 1e-12 of the sequential recurrence."""
    T = 4096
    params, x, h0 = _mingru_host(T, shift=1.0)
    H = 3
    k = (x @ params["weight_ih_l0"].T + params["bias_ih_l0"])[..., :H]
    v = (x @ params["weight_ih_l0"].T + params["bias_ih_l0"])[..., H:]
    log_a = -np.logaddexp(0, k)
    log_b = -np.logaddexp(0, -k) + F._mingru.log_candidate_g(v, xp=np)
    steps, _, _ = F.mingru_forward(params, x, np.zeros_like(h0), log_space=True, parallel=False)
    ours, _, _ = F.mingru_forward(params, x, np.zeros_like(h0), log_space=True)
    naive = np.exp(_naive_log_scan(log_a, log_b))
    assert np.abs(ours - steps).max() <= 1e-12 * np.abs(steps).max()
    assert np.nanmax(np.abs(naive - steps) / np.abs(steps)) > 1e-3 or np.isnan(naive).any()


def test_zoneout_draws_are_seeded_and_evaluation_is_the_expectation(backend):
    T, B, I, H = 20, 4, 3, 8
    params = {k: backend.asarray(v) for k, v in _host_params("lngru", I, H, 1, 1).items()}
    x, h0, _, _ = _inputs("lngru", T, B, I, H, 1, 1)
    x, h0 = backend.asarray(x), backend.asarray(h0)
    a, _, tape_a = F.lngru_forward(params, x, h0, zoneout=0.4, training=True, rng=7)
    b, _, tape_b = F.lngru_forward(params, x, h0, zoneout=0.4, training=True, rng=7)
    c, _, _ = F.lngru_forward(params, x, h0, zoneout=0.4, training=True, rng=8)
    assert np.array_equal(to_numpy(a), to_numpy(b)) and not np.array_equal(to_numpy(a), to_numpy(c))
    keep = to_numpy(tape_a.layers[0][0].keep)
    assert set(np.unique(keep)) <= {0.0, 1.0} and 0.3 < keep.mean() < 0.5
    states = np.concatenate([to_numpy(h0)[0][None], to_numpy(a)], axis=0)
    kept = keep == 1.0
    assert np.array_equal(states[1:][kept], states[:-1][kept])  # a kept unit holds its previous value exactly
    # evaluation: rate·h + (1 − rate)·h' exactly, i.e. the blend of the step without zoneout
    ev, _ = F.lngru(params, x, h0, zoneout=0.4, training=False)
    step, _ = F.lngru(params, x[:1, ...], h0, zoneout=0.0)
    expected = to_numpy(step)[0] + 0.4 * (to_numpy(h0)[0] - to_numpy(step)[0])
    assert_close(to_numpy(ev)[0], expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("cell", ["lngru", "mingru"])
def test_lengths_equal_running_each_sequence_alone(backend, cell):
    """Ragged batches: each sequence's outputs and final state are those of a run over its own steps."""
    T, B, I, H = 6, 3, 2, 3
    lengths = [6, 1, 4]
    params = {k: backend.asarray(v) for k, v in _host_params(cell, I, H, 1, 2).items()}
    x, h0, _, _ = _inputs(cell, T, B, I, H, 1, 2)
    infer = F.lngru if cell == "lngru" else F.mingru
    out, h_n = infer(params, backend.asarray(x), backend.asarray(h0), lengths=lengths, bidirectional=True)
    out, h_n = to_numpy(out), to_numpy(h_n)
    for b, n in enumerate(lengths):
        alone, alone_h = infer(params, backend.asarray(x[:n, b : b + 1]), backend.asarray(h0[:, b : b + 1]), bidirectional=True)
        assert_close(out[:n, b], to_numpy(alone)[:, 0], rtol=1e-12, atol=1e-14)
        assert np.all(out[n:, b] == 0)
        assert_close(h_n[:, b], to_numpy(alone_h)[:, 0], rtol=1e-12, atol=1e-14)


def _equations(jaxpr) -> int:
    """Equations of a jaxpr, counting those inside scans, jits and custom rules too."""
    from jax.extend import core

    count = 0
    for eqn in jaxpr.eqns:
        count += 1
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, core.ClosedJaxpr):
                    count += _equations(item.jaxpr)
                elif isinstance(item, core.Jaxpr):
                    count += _equations(item)
    return count


@pytest.mark.parametrize("cell", ["lngru", "mingru", "mingru-log"])
def test_jax_program_does_not_grow_with_T(cell):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    kinds = {
        "lngru": lambda: gruxp.LayerNormGRU(3, 4, xp=jnp, dtype="float64", seed=0),
        "mingru": lambda: gruxp.MinGRU(3, 4, xp=jnp, dtype="float64", seed=0),
        "mingru-log": lambda: gruxp.MinGRU(3, 4, log_space=True, xp=jnp, dtype="float64", seed=0),
    }
    model = kinds[cell]()
    config = model.structure
    options = {"log_space": True} if cell == "mingru-log" else {}

    def loss(params, x):
        if cell == "lngru":
            out, h_n = F.lngru(params, x)
        else:
            out, h_n = F.mingru(params, x, **options)
        return jnp.sum(out * out) + jnp.sum(h_n)

    sizes = {}
    for T in (16, 100, 1000, 1024):  # 100 and 1000 fill their last block of the scan with identity steps
        x = jnp.ones((T, 2, config.input_size), dtype=jnp.float64)
        sizes[T] = (
            _equations(jax.make_jaxpr(loss)(model.params, x).jaxpr),
            _equations(jax.make_jaxpr(jax.grad(loss))(model.params, x).jaxpr),
        )
    assert sizes[16] == sizes[1024] and sizes[100] == sizes[1000], sizes
    assert sizes[16][0] > 20  # the count sees the scans' bodies


def test_bad_structures_and_inputs_name_what_is_wrong():
    with pytest.raises(ValueError, match="reset_after must be True for LayerNormGRU"):
        gruxp.LayerNormGRU(2, 3, reset_after=False)
    with pytest.raises(ValueError, match="zoneout must be a float in"):
        gruxp.LayerNormGRU(2, 3, zoneout=1.0)
    with pytest.raises(TypeError, match="log_space must be True or False"):
        gruxp.MinGRU(2, 3, log_space="yes")
    with pytest.raises(ValueError, match="h0 must be non-negative"):
        gruxp.MinGRU(2, 3, log_space=True, seed=0)(np.zeros((4, 1, 2), np.float32), -np.ones((1, 1, 3), np.float32))
    with pytest.raises(ValueError, match="zoneout is not an option of the 'mingru' cell"):
        gruxp.models.recurrent("mingru", 2, 3, zoneout=0.1)
    with pytest.raises(ValueError, match=r"params\['weight_ih_l0'\] must have shape \(2H, I\)"):
        F.mingru({"weight_ih_l0": np.zeros((3, 2))}, np.zeros((2, 1, 2)))


@pytest.mark.parametrize("cell", ["lngru", "mingru"])
def test_trained_in_a_sequential_then_saved_and_rebuilt(tmp_path, cell):
    """Trainer steps a Sequential holding the cell; a checkpoint and a safetensors file rebuild it
    (the cell recorded with its options) with the same outputs, bit for bit."""
    from gruxp import checkpoint, interop, losses, optim

    options = {"zoneout": 0.2} if cell == "lngru" else {"log_space": True}
    rnn = gruxp.LayerNormGRU if cell == "lngru" else gruxp.MinGRU
    model = gruxp.Sequential(
        embed=gruxp.Embedding(12, 6, seed=0),
        gru=rnn(6, 8, num_layers=2, batch_first=True, seed=1, **options),
        head=gruxp.Linear(8, 12, seed=2),
    )
    rng = np.random.default_rng(0)
    trainer = gruxp.Trainer(model, losses.cross_entropy, optim.Adam(lr=1e-2))
    before = {k: np.array(v) for k, v in model.params.items()}
    ids = rng.integers(0, 12, size=(4, 10))
    losses_seen = [trainer.train_step(gruxp.Batch(ids, ids))["loss"] for _ in range(5)]
    assert losses_seen[-1] < losses_seen[0]
    assert all(not np.array_equal(before[k], model.params[k]) for k in model.params)
    checkpoint.save(tmp_path / "ckpt.npz", model)
    rebuilt = checkpoint.build_model(checkpoint.load(tmp_path / "ckpt.npz"))
    assert type(rebuilt.layers["gru"]) is rnn and rebuilt.layers["gru"].config() == model.layers["gru"].config()
    model.eval(), rebuilt.eval()
    assert np.array_equal(rebuilt(ids)[0], model(ids)[0])
    pytest.importorskip("safetensors")
    interop.save_safetensors(model.layers["gru"], tmp_path / "rnn.safetensors")
    alone = rnn(6, 8, num_layers=2, batch_first=True, seed=5, **options)
    alone.load_state_dict(interop.load_safetensors(tmp_path / "rnn.safetensors"))
    assert all(np.array_equal(alone.params[k], model.layers["gru"].params[k]) for k in alone.params)


def test_onnx_export_refuses_the_new_cells_by_name(tmp_path):
    pytest.importorskip("onnx")
    for model, cell in ((gruxp.LayerNormGRU(2, 3, seed=0), "lngru"), (gruxp.MinGRU(2, 3, seed=0), "mingru")):
        with pytest.raises(ValueError, match=f"{type(model).__name__} .*cell '{cell}'.* has no ONNX export"):
            gruxp.onnx.export(model, tmp_path / "m.onnx")
        seq = gruxp.Sequential(rnn=model, head=gruxp.Linear(3, 2, seed=1))
        with pytest.raises(ValueError, match=f"cell '{cell}'"):
            gruxp.onnx.export(seq, tmp_path / "s.onnx")


def test_jax_runs_the_parallel_scan_with_lax_scan():
    """On an accelerator the JAX route keeps minGRU's two-level scan (on a CPU it runs the steps):
    the scan under lax.scan equals the steps (float64 ≤ 1e-12), and its program does not grow with T."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import array_api_compat
    import jax.numpy as jnp

    from gruxp._native.jax_scan import scan_loop

    xp = array_api_compat.array_namespace(jnp.ones(1))
    sizes = set()
    for T in (16, 1024):
        rng = np.random.default_rng(T)
        a, b = jnp.asarray(rng.uniform(0.05, 0.95, (T, 3, 4))), jnp.asarray(rng.standard_normal((T, 3, 4)))
        h0 = jnp.asarray(rng.standard_normal((3, 4)))
        for reverse in (False, True):
            scan = jax.jit(lambda a, b, h0, r=reverse: F._mingru.linear_scan(a, b, h0, reverse=r, xp=xp, loop=scan_loop))
            steps = F._mingru._sequential(a, b, h0, reverse=reverse, xp=xp, loop=scan_loop)
            for got, want in zip(scan(a, b, h0), steps, strict=True):
                assert float(jnp.max(jnp.abs(got - want))) <= 1e-12 * max(1.0, float(jnp.max(jnp.abs(want))))
        sizes.add(
            _equations(jax.make_jaxpr(lambda a, b, h0: F._mingru.linear_scan(a, b, h0, xp=xp, loop=scan_loop))(a, b, h0).jaxpr)
        )
    assert len(sizes) == 1
