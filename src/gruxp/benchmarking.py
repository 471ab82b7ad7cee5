"""Timing helpers shared by ``benchmarks/`` and ``gruxp bench``: fair, same-process comparisons.

On a small shared machine two libraries timed back to back fight over cores: OpenBLAS and OpenMP
worker threads keep spinning briefly after each call. So every contender gets a pause and a
warm-up call before it is timed (:func:`settle`), rounds interleave the contenders, and results
are medians.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["per_call", "settle", "flops_forward", "blas_info", "blas_threads"]


def per_call(fn: Callable[[], object], min_time: float = 0.05) -> float:
    """Seconds per call: one call, or the mean of as many as fill ``min_time``."""
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    if elapsed >= min_time:
        return elapsed
    n = max(1, int(min_time / max(elapsed, 1e-6)))
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def settle(fn: Callable[[], object], pause: float = 0.25) -> None:
    """Let other libraries' spinning threads go idle, then warm ``fn`` up once."""
    time.sleep(pause)
    fn()


def flops_forward(B: int, T: int, I: int, H: int, num_layers: int = 1, num_directions: int = 1) -> float:
    """GEMM FLOPs of one forward: Σ over layer-directions of T·2·B·3H·(I_k + H). Training: 3×."""
    total = 0.0
    for layer in range(num_layers):
        in_size = I if layer == 0 else num_directions * H
        total += num_directions * T * 2 * B * 3 * H * (in_size + H)
    return total


def blas_info() -> list[dict]:
    """The thread pools (BLAS, OpenMP) loaded in this process, via threadpoolctl when installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        import numpy as np

        config: Any = np.show_config(mode="dicts") if hasattr(np, "show_config") else {}
        blas = config.get("Build Dependencies", {}).get("blas", {}) if isinstance(config, dict) else {}
        return [
            {
                "internal_api": blas.get("name"),
                "version": blas.get("version"),
                "architecture": None,
                "num_threads": None,
                "note": "install threadpoolctl for the kernel and thread count",
            }
        ]
    keep = ("internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


def blas_threads(info: list[dict]) -> int:
    counts = [i["num_threads"] for i in info if i.get("internal_api") in ("openblas", "mkl", "blis") and i.get("num_threads")]
    return counts[0] if counts else os.cpu_count() or 1


def describe_pool(pool: dict) -> str:
    """One BLAS/OpenMP pool in words; what threadpoolctl alone can tell says so when it is missing."""
    name = " ".join(str(pool[k]) for k in ("internal_api", "version") if pool.get(k)) or "unknown library"
    if pool.get("architecture") is None and pool.get("num_threads") is None:
        return f"{name}, kernel and threads unknown (pip install threadpoolctl)"
    return f"{name}, kernel {pool.get('architecture') or 'unknown'}, {pool.get('num_threads')} threads"
