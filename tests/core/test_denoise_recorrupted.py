"""Recorrupted-to-Recorrupted (``r2r``): the noise it draws has the measured level and correlation, and the
input's and the target's noises are independent (the property the method rests on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoden.denoise.noise import estimate_noise_correlation
from napari_cryoden.denoise.normalize import fit_normalization
from napari_cryoden.denoise.recorrupted import (
    Recorrupted,
    RecorruptedParams,
    normalised_noise_std,
    recorruption_noise,
)
from napari_cryoden.simulate import add_noise, simulate_tomogram


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


@pytest.mark.parametrize("lengths", [0.0, (1.5, 0.5, 0.6)])
def test_the_noise_level_is_measured_in_the_networks_units(lengths):
    """A phantom plus noise of known standard deviation: the level R2R draws at, in the units of the data's
    normalisation, is the true noise's std in those units (within 10 %)."""
    ph = simulate_tomogram(shape=(32, 96, 96), voxel_size=10.0, n_vesicles=3, n_filaments=3, n_particles=0,
                           snr=1.0, seed=5)
    if lengths == 0.0:
        noisy = add_noise(ph.clean, 0.15, rng=2)
    else:
        noisy = add_noise(ph.clean, 0.15, rng=2, colour="coloured", correlation_length=lengths)
    true = float((noisy - ph.clean).std())
    norm = fit_normalization(noisy)
    measured = normalised_noise_std(noisy, estimate_noise_correlation(noisy), norm)
    assert abs(measured - true / norm.std) < 0.1 * true / norm.std, (measured, true / norm.std)


def test_turns_are_kept_only_where_the_drawn_noise_is_alike_in_y_and_x():
    method = Recorrupted()
    assert method.allows_turns(RecorruptedParams(noise_lengths="1.5,0.7,0.7", noise_std=1.0))
    assert not method.allows_turns(RecorruptedParams(noise_lengths="1.5,0.5,0.6", noise_std=1.0))
