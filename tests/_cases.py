"""Host-side test cases: a model configuration and float64 inputs drawn from a seeded Generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import gruxp


@dataclass(frozen=True)
class Case:
    num_layers: int = 1
    bidirectional: bool = False
    reset_after: bool = True
    bias: bool = True
    batch_first: bool = False
    unbatched: bool = False
    ragged: bool = False
    T: int = 5
    B: int = 3
    I: int = 4
    H: int = 3

    @property
    def id(self) -> str:
        parts = [f"L{self.num_layers}", "bi" if self.bidirectional else "uni", "after" if self.reset_after else "before"]
        parts += [name for name in ("batch_first", "unbatched", "ragged") if getattr(self, name)]
        return "-".join(parts + ([] if self.bias else ["nobias"]))

    @property
    def LD(self) -> int:
        return self.num_layers * (2 if self.bidirectional else 1)

    def model(self, backend, dtype: str, seed: int = 7) -> gruxp.GRU:
        return gruxp.GRU(
            self.I,
            self.H,
            self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            bidirectional=self.bidirectional,
            reset_after=self.reset_after,
            xp=backend.xp,
            device=backend.device,
            dtype=dtype,
            seed=seed,
        )

    def inputs(self, seed: int = 0) -> dict:
        """Time-major host inputs plus lengths; ``layout`` converts them to the case's layout."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.T, self.B, self.I))
        h0 = 0.5 * rng.standard_normal((self.LD, self.B, self.H))
        lengths = None
        if self.ragged:
            lengths = rng.integers(1, self.T + 1, size=self.B)
            lengths[0] = self.T  # keep the full length present too
            lengths[-1] = 1
        D = 2 if self.bidirectional else 1
        d_out = rng.standard_normal((self.T, self.B, D * self.H))
        d_hn = rng.standard_normal((self.LD, self.B, self.H))
        return dict(x=x, h0=h0, lengths=lengths, d_out=d_out, d_hn=d_hn)

    def layout(self, a, *, seq: bool):
        """Time-major host (T, B, ·) or (LD, B, H) -> the case's layout."""
        if self.unbatched:
            return a[:, 0, :]
        if seq and self.batch_first:
            return np.swapaxes(a, 0, 1)
        return a

    def unlayout(self, a, *, seq: bool):
        if self.unbatched:
            return a[:, None, :]
        if seq and self.batch_first:
            return np.swapaxes(a, 0, 1)
        return a


def host_case_inputs(case: Case, seed: int = 0) -> dict:
    raw = case.inputs(seed)
    if case.unbatched:
        raw = {k: (v[:, :1, :] if isinstance(v, np.ndarray) and v.ndim == 3 else v) for k, v in raw.items()}
        raw["lengths"] = None
    return raw
