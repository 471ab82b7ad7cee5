"""Bad input: a clear ValueError/TypeError naming the argument, never a deep traceback."""

import numpy as np
import pytest

import gruxp
from gruxp.testing import to_numpy


@pytest.fixture
def model(backend):
    return gruxp.GRU(4, 3, 2, bidirectional=True, xp=backend.xp, device=backend.device, dtype="float64", seed=0)


def _x(backend, shape=(5, 2, 4), dtype="float64"):
    return backend.asarray(np.ones(shape), dtype)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((5, 2, 3), r"x must have shape \(T, B, I\) or unbatched \(T, I\) with I=4; got \(5, 2, 3\)"),
        ((5,), r"x must have shape .* got \(5,\)"),
        ((1, 5, 2, 4), r"x must have shape .* got \(1, 5, 2, 4\)"),
        ((0, 2, 4), r"x must hold at least one time step"),
    ],
)
def test_x_shape(backend, model, shape, match):
    with pytest.raises(ValueError, match=match):
        model(_x(backend, shape))


def test_integer_x(backend, model):
    with pytest.raises(TypeError, match="x must be a real floating array of dtype float64; got dtype int64"):
        model(backend.int_array(np.ones((5, 2, 4), dtype=np.int64)))


def test_float_width_mismatch(backend, model):
    with pytest.raises(TypeError, match="x has dtype float32 but the parameters are float64"):
        model(_x(backend, dtype="float32"))


def test_namespace_mismatch(backend, model):
    """A NumPy x for a model elsewhere (or, for a NumPy model, an array-api-strict x)."""
    if backend.name == "numpy":
        strict = pytest.importorskip("array_api_strict")
        x, got = strict.ones((5, 2, 4), dtype=strict.float64), "array_api_strict"
    else:
        x, got = np.ones((5, 2, 4)), "numpy"
    with pytest.raises(
        TypeError, match=rf"x must be an array of the parameters' namespace \({backend.name}\); got a {got} array"
    ):
        model(x)


def test_not_an_array(model):
    with pytest.raises(TypeError, match="x must be an array of an array-API library; got list"):
        model([[[1.0, 2.0, 3.0, 4.0]]])


def test_device_mismatch():
    strict = pytest.importorskip("array_api_strict")
    m = gruxp.GRU(4, 3, xp=strict, device=strict.Device("device1"), seed=0)
    x = strict.ones((5, 2, 4), dtype=strict.float32, device=strict.Device("CPU_DEVICE"))
    with pytest.raises(ValueError, match=r"x is on device .*CPU_DEVICE.* but the parameters are on device .*device1"):
        m(x)


def test_h0_shape(backend, model):
    with pytest.raises(ValueError, match=r"h0 must have shape \(4, 2, 3\) \(num_layers·num_directions, B, H\); got \(2, 2, 3\)"):
        model(_x(backend), backend.asarray(np.zeros((2, 2, 3))))
    with pytest.raises(ValueError, match=r"h0 must have shape \(4, 3\)"):
        model(_x(backend, (5, 4)), backend.asarray(np.zeros((4, 1, 3))))


def test_h0_dtype(backend, model):
    with pytest.raises(TypeError, match="h0 has dtype float32"):
        model(_x(backend), backend.asarray(np.zeros((4, 2, 3)), "float32"))


@pytest.mark.parametrize(
    "lengths, exc, match",
    [
        ([5], ValueError, r"lengths must have shape \(2,\) .*got \(1,\)"),
        ([5, 6], ValueError, r"lengths must lie in \[1, T=5\]; got \[6\] at positions \[1\]"),
        ([0, 3], ValueError, r"lengths must lie in \[1, T=5\]; got \[0\]"),
        ([2.0, 3], TypeError, "lengths must hold integers; got float 2.0"),
        ([True, 3], TypeError, "lengths must hold integers; got bool"),
        (np.array([2.0, 3.0]), TypeError, "lengths must be integers; got dtype float64"),
        ("ab", TypeError, "lengths must be"),
        (np.array([[2, 3]]), ValueError, r"lengths must have shape \(2,\)"),
    ],
)
def test_bad_lengths(backend, model, lengths, exc, match):
    with pytest.raises(exc, match=match):
        model(_x(backend), lengths=lengths)


def test_float_lengths_array_of_the_namespace(backend, model):
    with pytest.raises(TypeError, match="lengths must be integers; got dtype float64"):
        model(_x(backend), lengths=backend.asarray(np.array([2.0, 3.0])))


def test_integer_lengths_array_of_the_namespace_is_accepted(backend, model):
    out, _ = model(_x(backend), lengths=backend.int_array([2, 5]))
    assert np.all(to_numpy(out)[2:, 0] == 0)


def test_lengths_with_unbatched_input(backend, model):
    with pytest.raises(ValueError, match="lengths is not accepted with unbatched x"):
        model(_x(backend, (5, 4)), lengths=[5])


def test_backward_with_a_twins_tape(backend, model):
    twin = gruxp.GRU(4, 3, 2, bidirectional=True, xp=backend.xp, device=backend.device, dtype="float64", seed=0)
    _, _, tape = twin.forward(_x(backend))
    with pytest.raises(ValueError, match="tape was recorded by another model"):
        model.backward(tape)


def test_backward_after_parameters_replaced(backend, model):
    _, _, tape = model.forward(_x(backend))
    model.load_state_dict(model.state_dict(numpy=True))
    with pytest.raises(ValueError, match="tape is stale: this model's parameters were replaced"):
        model.backward(tape)
    _, _, tape = model.forward(_x(backend))
    model.params["weight_hh_l0"] = model.params["weight_hh_l0"] * 1.0
    with pytest.raises(ValueError, match="tape is stale"):
        model.backward(tape)


def test_backward_with_something_else(model):
    with pytest.raises(TypeError, match="tape must be the GRUTape returned by this model's forward; got tuple"):
        model.backward((1, 2))


def test_backward_gradient_shapes(backend, model):
    _, _, tape = model.forward(_x(backend))
    with pytest.raises(ValueError, match=r"d_out must have shape \(5, 2, 6\) .*; got \(5, 2, 3\)"):
        model.backward(tape, backend.asarray(np.zeros((5, 2, 3))))
    with pytest.raises(ValueError, match=r"d_hn must have shape \(4, 2, 3\) .*; got \(2, 2, 3\)"):
        model.backward(tape, None, backend.asarray(np.zeros((2, 2, 3))))
    with pytest.raises(TypeError, match="d_out has dtype float32"):
        model.backward(tape, backend.asarray(np.zeros((5, 2, 6)), "float32"))


def test_cell_errors(backend):
    cell = gruxp.GRUCell(4, 3, xp=backend.xp, device=backend.device, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\) or unbatched \(4,\); got \(2, 5\)"):
        cell(backend.asarray(np.zeros((2, 5))))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 3\) \(B, H\); got \(2, 4\)"):
        cell(backend.asarray(np.zeros((2, 4))), backend.asarray(np.zeros((2, 4))))
    _, tape = cell.forward(backend.asarray(np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"dh must have shape \(2, 3\)"):
        cell.backward(tape, backend.asarray(np.zeros((3,))))
    twin = gruxp.GRUCell(4, 3, xp=backend.xp, device=backend.device, dtype="float64", seed=0)
    with pytest.raises(ValueError, match="another model"):
        twin.backward(tape, backend.asarray(np.zeros((2, 3))))


def test_load_state_dict_problems_leave_the_model_intact(model):
    good = model.state_dict(numpy=True)
    missing = {k: v for k, v in good.items() if k != "bias_hh_l1"}
    extra = {**good, "weight_ih_l9": good["weight_ih_l0"]}
    misshapen = {**good, "weight_hh_l1_reverse": np.zeros((9, 4))}
    cases = [
        (missing, ValueError, r"missing keys \['bias_hh_l1'\]"),
        (extra, ValueError, r"unexpected keys \['weight_ih_l9'\]"),
        (misshapen, ValueError, r"'weight_hh_l1_reverse' must have shape \(9, 3\); got \(9, 4\)"),
        ({**good, "bias_ih_l0": np.array(["a"] * 9)}, TypeError, "'bias_ih_l0' must be a floating-point array"),
        ([1, 2], TypeError, "state_dict must be a mapping"),
    ]
    for bad, exc, match in cases:
        with pytest.raises(exc, match=match):
            model.load_state_dict(bad)
        for k, v in model.state_dict(numpy=True).items():
            np.testing.assert_array_equal(v, good[k])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(input_size=0, hidden_size=3), ValueError, "input_size must be an int >= 1; got 0"),
        (dict(input_size=4, hidden_size=2.5), TypeError, "hidden_size must be an int >= 1; got float 2.5"),
        (dict(input_size=4, hidden_size=3, num_layers=0), ValueError, "num_layers must be an int >= 1; got 0"),
        (dict(input_size=4, hidden_size=3, bidirectional="yes"), TypeError, "bidirectional must be True or False"),
        (dict(input_size=4, hidden_size=3, dtype="float16"), TypeError, "dtype must be float32 or float64"),
        (dict(input_size=4, hidden_size=3, dtype="int32"), TypeError, "dtype must be float32 or float64"),
        (dict(input_size=4, hidden_size=3, xp="numpy"), TypeError, "xp must be an array namespace module"),
        (dict(input_size=4, hidden_size=3, seed=-1), ValueError, "seed must be non-negative"),
        (dict(input_size=4, hidden_size=3, seed=1.5), TypeError, "seed must be None, a non-negative int"),
    ],
)
def test_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gruxp.GRU(**kwargs)


def test_functional_params_are_checked():
    params = gruxp.GRU(4, 3, seed=0).params
    x = np.ones((2, 1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"params\['weight_hh_l0'\] must have shape \(9, 3\); got \(9, 2\)"):
        gruxp.functional.gru({**params, "weight_hh_l0": params["weight_hh_l0"][:, :2]}, x)
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l0'\]"):
        gruxp.functional.gru({k: v for k, v in params.items() if k != "bias_hh_l0"}, x, bias=True)
    with pytest.raises(TypeError, match=r"params\['bias_ih_l0'\] has dtype float64; expected float32"):
        gruxp.functional.gru({**params, "bias_ih_l0": params["bias_ih_l0"].astype(np.float64)}, x)


def test_unusable_device():
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(ValueError, match="device 'device1' is not usable with array_api_strict"):
        gruxp.GRU(4, 3, xp=strict, device="device1")  # a name, not the library's Device object
