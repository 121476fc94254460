"""Recorrupted-to-Recorrupted (``r2r``): the noise it draws has the measured level and correlation, and the
input's and the target's noises are independent (the property the method rests on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoden.denoise.noise import estimate_noise_correlation
from napari_cryoden.denoise.recorrupted import Recorrupted, RecorruptedParams, recorruption_noise


def _close(measured, true):
    return all(abs(m - t) <= 0.15 + 0.1 * t for m, t in zip(measured, true))


@pytest.mark.parametrize("lengths", [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (2.0, 1.0, 0.7)])
def test_recorruption_noise_has_the_requested_level_and_correlation(lengths):
    g = torch.Generator().manual_seed(0)
    z = recorruption_noise((1, 1, 40, 64, 64), lengths, 2.5, generator=g, device="cpu")[0, 0].numpy()
    assert abs(z.std() - 2.5) < 0.05 * 2.5
    assert _close(estimate_noise_correlation(z).lengths, lengths)


@pytest.mark.parametrize("lengths", [(0.0, 0.0, 0.0), (2.0, 1.0, 0.7)])
def test_the_pairs_noises_are_independent_when_the_noise_model_is_right(lengths):
    """Pure noise y = n of the modelled correlation: input y + αz and target y − z/α. Their noises correlate
    by ≈ 0 at every lag (the covariance Σ − Σ); a recorruption drawn white for correlated noise cancels the
    covariance at lag 0 only, and leaves neighbours correlated."""
    g = torch.Generator().manual_seed(1)
    shape = (4, 1, 24, 48, 48)
    n = recorruption_noise(shape, lengths, 1.0, generator=g, device="cpu")
    method = Recorrupted()
    params = RecorruptedParams(alpha=0.5, noise_lengths=",".join(map(str, lengths)), noise_std=1.0)
    x, y, w = method.make_pair(n, params, patch_spatial=shape[2:], generator=g)
    assert w is None
    assert max(abs(c) for c in _cross(x, y)) < 0.03
    if max(lengths) > 0:
        white = RecorruptedParams(alpha=0.5, noise_lengths="0", noise_std=1.0)
        x, y, _ = method.make_pair(n, white, patch_spatial=shape[2:], generator=g)
        assert max(_cross(x, y)[1:]) > 0.2  # neighbours share the noise the white draw did not cancel


def _cross(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Correlation of a(p) with b(p) and with b one voxel further along z, y and x."""
    def corr(u, v):
        return float(np.corrcoef(u.flatten().numpy(), v.flatten().numpy())[0, 1])

    out = [corr(a, b)]
    for axis in (2, 3, 4):
        n = a.shape[axis]
        out.append(corr(a.narrow(axis, 0, n - 1), b.narrow(axis, 1, n - 1)))
    return out
