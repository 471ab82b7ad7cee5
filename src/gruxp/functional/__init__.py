"""The functional core: pure functions over a dict of named parameters.

Nothing here holds state; :mod:`gruxp.models` only keeps parameters and calls these functions.
Forward and backward sit side by side with mirrored names, and every tape is a NamedTuple.
"""

from ._cell import (
    CellTape,
    StepCache,
    activations,
    candidate_blend,
    candidate_blend_backward,
    gates_backward,
    gates_forward,
    gru_cell,
    gru_cell_backward,
    gru_cell_forward,
    input_grad,
    masked_state,
    param_grads,
    reset_update_gates,
    sigmoid,
    sigmoid_grad,
    step_backward,
    step_forward,
    tanh_grad,
)
from ._params import (
    cell_param_shapes,
    gru_param_shapes,
    host_rng,
    init_params,
    uniform_init,
)
from ._lngru import LayerNormDirectionTape, LayerNormGRUConfig, layer_norm, layer_norm_backward, lngru, lngru_forward
from ._mingru import MinGRUConfig, MinGRUDirectionTape, linear_scan, log_linear_scan, mingru, mingru_forward
from ._sequence import Cell, DirectionTape, GRUConfig, GRUTape, gru, gru_backward, gru_forward

__all__ = [
    "Cell",
    "LayerNormDirectionTape",
    "LayerNormGRUConfig",
    "MinGRUConfig",
    "MinGRUDirectionTape",
    "layer_norm",
    "layer_norm_backward",
    "linear_scan",
    "log_linear_scan",
    "lngru",
    "lngru_forward",
    "mingru",
    "mingru_forward",
    "CellTape",
    "DirectionTape",
    "GRUConfig",
    "GRUTape",
    "StepCache",
    "activations",
    "candidate_blend",
    "candidate_blend_backward",
    "cell_param_shapes",
    "gates_backward",
    "gates_forward",
    "gru",
    "gru_backward",
    "gru_cell",
    "gru_cell_backward",
    "gru_cell_forward",
    "gru_forward",
    "gru_param_shapes",
    "input_grad",
    "masked_state",
    "host_rng",
    "init_params",
    "uniform_init",
    "param_grads",
    "reset_update_gates",
    "sigmoid",
    "sigmoid_grad",
    "tanh_grad",
    "step_backward",
    "step_forward",
]
