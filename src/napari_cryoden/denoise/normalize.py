"""Robust normalisation: clip to percentiles, then standardise; undone on output.

Statistics come from a strided subsample, so a memory-mapped volume is never read whole to compute them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """``apply(x) = (clip(x, low, high) - mean) / std``; ``invert(y) = y * std + mean``."""

    low: float
    high: float
    mean: float
    std: float

    def apply(self, x):
        """Works on numpy arrays and torch tensors."""
        if hasattr(x, "clamp"):
            return (x.clamp(self.low, self.high) - self.mean) / self.std
        return (np.clip(x, self.low, self.high) - self.mean) / self.std

    def invert(self, y):
        return y * self.std + self.mean

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(**{k: float(d[k]) for k in ("low", "high", "mean", "std")})


def subsample(data, *, max_values: int = 4_000_000, seed: int = 0) -> np.ndarray:
    """Up to ``max_values`` voxels of ``data`` (whole planes at evenly spaced z, then random voxels)."""
    if data.size <= max_values:
        return np.asarray(data, dtype=np.float32).ravel()
    per_plane = int(np.prod(data.shape[1:]))
    n_planes = max(1, min(data.shape[0], (2 * max_values) // max(per_plane, 1)))
    idx = np.unique(np.linspace(0, data.shape[0] - 1, n_planes).round().astype(int))
    values = np.asarray(data[idx], dtype=np.float32).ravel()
    if values.size > max_values:
        values = np.random.default_rng(seed).choice(values, max_values, replace=False)
    return values


def fit_normalization(data, *, low_percentile: float = 0.5, high_percentile: float = 99.5,
                      max_values: int = 4_000_000) -> Normalization:
    """Percentile clip limits and the mean/std of the clipped values (the thesis's pre-processing)."""
    values = subsample(data, max_values=max_values)
    values = values[np.isfinite(values)]
    low, high = np.percentile(values, [low_percentile, high_percentile])
    if not high > low:
        low, high = float(values.min()), float(values.max())
    clipped = np.clip(values, low, high)
    std = float(clipped.std())
    return Normalization(low=float(low), high=float(high), mean=float(clipped.mean()), std=std if std > 0 else 1.0)
