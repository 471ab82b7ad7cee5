"""The routes: how each backend runs the shared step, chosen here and registered with the core.

The core (:mod:`gruxp.functional`) imports none of this; it asks :func:`gruxp.functional._routes.route_for`,
which finds what registered below. Each route is checked against the generic code (the oracle)
on every case:

* NumPy on the CPU (:class:`gruxp._native.cpu.CpuRoute`): a layer runs on an executor by a
  :class:`gruxp._native.plan.Plan`, a pure function of shapes, dtype and machine. Its loop drives
  the shared ``gates_forward``/``gates_backward`` through a *fuser*: numba, compiling them into
  one pass per step (float64 ≤ 1e-12 relative to the generic code; tested), or NumPy calling
  them on whole blocks. Its GEMMs run on gruxp's own OpenBLAS, one thread a call (see
  :mod:`gruxp._native.blas`); its parallelism is pieces of the batch (and a layer's directions)
  on gruxp's own threads. Load, affinity and threads decide scheduling only, never a bit.
* NumPy on the CPU, minGRU (:class:`gruxp._native.mingru_cpu.MinGruCpu`, which the CPU route hands
  minGRU layers to): the recurrence between the projection GEMMs as one numba pass per row.
* NumPy on the CPU, the layer-normalised GRU (:class:`gruxp._native.lngru_cpu.LayerNormGruCpu`):
  its time loop compiled by numba around one GEMM a step into gruxp's BLAS, as the GRU's.
* JAX (:class:`gruxp._native.jax_scan.JaxRoute`): the core's direction functions under
  ``jax.jit``, their loop ``lax.scan`` (float64 ≤ 1e-12 relative; tested).

A route may mutate buffers it allocated itself, never anything the caller can see. The setting
``fast_routes=False`` (:func:`gruxp.config_context`) runs the generic code everywhere;
``fuser="numpy"`` keeps the CPU route without numba.
"""

from __future__ import annotations

from ..functional._routes import register
from .cpu import CpuRoute, clear_buffers
from .jax_scan import JaxRoute

__all__ = ["clear_buffers", "cpu_plan"]

register(CpuRoute())  # other cells' CPU loops: named by their declarations (gruxp.cells)
register(JaxRoute())


def cpu_plan(
    steps: int,
    batch: int,
    inputs: int,
    hidden: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype: str = "float32",
    cell: str = "gru",
    machine=None,
    **options,
) -> list:
    """The CPU route's plan for each layer of a call (a :class:`~gruxp._native.plan.Plan` for the GRU,
    a :class:`~gruxp._native.plan.CellPlan` for another declared cell, :mod:`gruxp.cells`), under the
    settings in effect here, on this machine or on ``machine`` (a :class:`gruxp._native.machine.Machine`).
    ``options``: the cell's structure options (``reset_after=False``, ``log_space=True``, ...)."""
    from .planning import planned

    D = 2 if bidirectional else 1
    return [
        planned(
            cell,
            steps,
            batch,
            inputs if layer == 0 else D * hidden,
            hidden,
            D,
            dtype,
            options=tuple(options.items()),
            machine=machine,
        )
        for layer in range(num_layers)
    ]
