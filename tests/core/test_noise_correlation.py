"""The noise-correlation estimate (known per-axis lengths, isotropic and anisotropic), the blind spot that
follows it, the whitening filter that follows it, and data whose noise cannot be measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cli import run as cryoden

from napari_cryoden.denoise import get_method
from napari_cryoden.denoise.engine import Self2SelfParams, TrainedDenoiser, default_params, iter_train
from napari_cryoden.denoise.masks import apply_fourier_mask
from napari_cryoden.denoise.networks import SmoothFeatures
from napari_cryoden.denoise.noise import (
    THRESHOLD,
    NoNoiseError,
    auto_mask_block,
    block_for_lengths,
    estimate_noise_correlation,
    gaussian_reach,
)
from napari_cryoden.denoise.self_supervised import FourierN2NParams, whitening_filter
from napari_cryoden.errors import CryodenInputError
from napari_cryoden.io.mrc import write_mrc
from napari_cryoden.progress import run
from napari_cryoden.simulate import simulate_tomogram
from napari_cryoden.simulate.noise import add_noise, correlated_noise

SHAPE = (40, 64, 64)


def _close(measured, true):
    """Within 0.15 voxel + 10 % of the true Gaussian σ on every axis."""
    return all(abs(m - t) <= 0.15 + 0.1 * t for m, t in zip(measured, true))


# --------------------------------------------------------------------------------------- the estimate
@pytest.mark.parametrize("lengths", [
    (0.0, 0.0, 0.0),      # white
    (0.5, 0.5, 0.5),      # short: below one voxel's worth of blur, alike along every axis
    (1.0, 1.0, 1.0),      # isotropic: the case the excess-over-the-least-correlated-axis rule could not see
    (1.5, 0.0, 0.0),      # along z only
    (2.0, 1.0, 0.7),      # different along every axis
])
def test_the_estimate_recovers_known_per_axis_lengths_of_pure_noise(lengths):
    noise = correlated_noise(SHAPE, lengths, rng=1, std=3.0)
    est = estimate_noise_correlation(noise)
    assert _close(est.lengths, lengths), (est.lengths, lengths)
    assert est.source == "high-pass"
    # The block spans every lag where the correlation the simulator made exceeds the threshold, and no more.
    for axis, length in enumerate(lengths):
        reach = est.reach[axis]
        rho = [np.exp(-d**2 / (4 * length**2)) if length else 0.0 for d in (reach, reach + 1)]
        assert rho[1] <= THRESHOLD + 0.05 and (reach == 0 or rho[0] > THRESHOLD - 0.05)
    assert auto_mask_block(noise, dims=3, noise=est) == tuple(2 * r + 1 for r in est.reach)
    # Simulations that know their lengths (the training script, the benchmark's N2V mask) get the same rule.
    assert all(abs(r - g) <= 1 for r, g in zip(est.reach, gaussian_reach(lengths))), (est.reach, lengths)


def test_the_reach_of_known_lengths_is_the_last_lag_above_the_threshold():
    # exp(−d²/4L²) at L = 1.5: 0.37 at d = 3, 0.17 at d = 4; at L = 0.5: 0.37 at d = 1, 0.018 at d = 2.
    assert gaussian_reach((1.5, 0.5, 0.0)) == (3, 1, 0)
    assert block_for_lengths((1.5, 0.5, 0.0)) == (7, 3, 1)
    for length in np.linspace(0.1, 4.0, 40):
        reach = gaussian_reach([length])[0]
        assert np.exp(-reach**2 / (4 * length**2)) > THRESHOLD >= np.exp(-(reach + 1) ** 2 / (4 * length**2))


@pytest.fixture(scope="module")
def clean():
    return simulate_tomogram(shape=SHAPE, n_vesicles=2, n_filaments=2, n_particles=6, snr=1.0, seed=4).clean


@pytest.mark.parametrize("lengths", [None, (1.0, 1.0, 1.0), (1.5, 0.75, 0.75)])
def test_the_estimate_sees_through_a_tomogram_phantom_at_low_snr(clean, lengths):
    noisy = add_noise(clean, 0.1, rng=0) if lengths is None else \
        add_noise(clean, 0.1, rng=0, colour="coloured", correlation_length=lengths)
    est = estimate_noise_correlation(noisy)
    if lengths is None:
        assert est.block == (1, 1, 1)  # the phantom's own structure is not taken for correlated noise
    else:
        assert _close(est.lengths, lengths), est.lengths
    assert 0.8 < est.noise_fraction <= 1.0  # 1 / (1 + SNR) = 0.91, the signal's fine detail counted as noise


def test_signal_dominated_data_keep_small_blocks_and_halves_measure_the_noise_anyway(clean):
    # At SNR 5 the high-passed data are mostly signal: no correlation is claimed that only the signal has.
    white = add_noise(clean, 5.0, rng=0)
    est = estimate_noise_correlation(white)
    assert est.source == "high-pass, excess" and est.block == (1, 1, 1)
    # With two halves the signal cancels: their difference is pure noise, whatever the SNR.
    std = float(clean.std()) / np.sqrt(5.0)
    h1 = clean + correlated_noise(SHAPE, (1.0, 1.0, 1.0), rng=1, std=std)
    h2 = clean + correlated_noise(SHAPE, (1.0, 1.0, 1.0), rng=2, std=std)
    halves = estimate_noise_correlation(h1, half2=h2)
    assert halves.source == "halves" and _close(halves.lengths, (1.0, 1.0, 1.0)), halves.lengths


def test_a_stack_is_measured_in_the_image_plane_only():
    stack = correlated_noise((30, 64, 64), (0.0, 1.5, 0.0), rng=0)
    est = estimate_noise_correlation(stack, dims=2)
    assert est.axes == (1, 2) and est.lengths[0] == 0.0 and _close(est.lengths[1:], (1.5, 0.0))
    assert auto_mask_block(stack, dims=2, noise=est) == (7, 1)


# ------------------------------------------------------------------------------ masks follow the estimate
def test_the_loss_voxels_are_blind_to_every_voxel_within_the_measured_correlation():
    noise = correlated_noise((32, 48, 48), (1.0, 1.0, 1.0), rng=3)
    block = auto_mask_block(noise, dims=3)
    assert block == (5, 5, 5)  # reach 2: correlation 0.78, 0.37 at lags 1, 2; 0.11 at 3
    method = get_method("self2self")
    params = Self2SelfParams(mask_block=",".join(map(str, block)))
    x = torch.from_numpy(noise[None, None, :24, :24, :24].copy())
    inp, _, weights = method.make_pair(x, params, patch_spatial=(24, 24, 24), generator=torch.Generator().manual_seed(0))
    feats = SmoothFeatures(3, (1.0, 2.0, 3.0), masked=True)
    loss_voxels = torch.nonzero(weights[0, 0] > 0)
    assert len(loss_voxels) > 0
    for z, y, xx in loss_voxels[:: max(1, len(loss_voxels) // 6)].tolist():
        # Change the data everywhere within ±2 voxels of a loss voxel (its own value included): neither the
        # masked input, nor the mask, nor any smoothing channel changes anywhere.
        x2 = x.clone()
        x2[0, 0, max(0, z - 2):z + 3, max(0, y - 2):y + 3, max(0, xx - 2):xx + 3] += 100.0
        inp2, _, weights2 = method.make_pair(x2, params, patch_spatial=(24, 24, 24),
                                             generator=torch.Generator().manual_seed(0))
        assert torch.equal(weights, weights2)
        assert torch.equal(inp, inp2)
        assert torch.allclose(feats(inp), feats(inp2))


def test_training_stores_the_measurement_in_the_model_and_its_block_in_the_parameters(tmp_path):
    noise = correlated_noise((24, 32, 32), (1.5, 0.0, 0.0), rng=0)
    params = default_params("self2self", dims=3, patch_size=16, batch_size=2, time_budget=0, epochs=1,
                            base_channels=4, depth=2)
    model = run(iter_train(noise, params, method="self2self", seed=0))
    measured = model.noise_correlation
    assert model.params.mask_block == ",".join(map(str, measured["block"])) and measured["block"][1:] == [1, 1]
    assert measured["block"][0] >= 5
    line = model.describe_noise()
    assert line.startswith("noise correlation z/y/x: 1.") and "mask block " + "×".join(
        map(str, measured["block"])) in line
    reloaded = TrainedDenoiser.from_model_file(model.to_model_file())
    assert reloaded.noise_correlation == measured and reloaded.describe_noise() == line


def test_the_whitening_filter_flattens_the_measured_noise_and_is_undone_exactly():
    noise = correlated_noise((32, 48, 48), (1.0, 1.0, 1.0), rng=5)
    est = estimate_noise_correlation(noise)
    params = FourierN2NParams(whitening=",".join(f"{v:g}" for v in est.lengths))
    w = whitening_filter((32, 48, 48), params, "cpu")
    x = torch.from_numpy(noise)[None, None]
    white = apply_fourier_mask(x, w)
    after = estimate_noise_correlation(white[0, 0].numpy())
    # 0.77 → 0.65 between neighbours: the floor (largest gain 3.3) leaves the frequencies where the noise
    # is below a tenth of its peak partly correlated.
    assert max(after.neighbour) < min(est.neighbour) - 0.08
    assert torch.allclose(apply_fourier_mask(white, 1.0 / w), x, atol=1e-4)
    assert whitening_filter((32, 48, 48), FourierN2NParams(whitening="off"), "cpu") == 1.0


# ------------------------------------------------------------------------------------------- bad input
def test_data_whose_noise_cannot_be_measured_are_refused_with_a_clear_error():
    with pytest.raises(NoNoiseError, match="constant"):
        estimate_noise_correlation(np.full((24, 32, 32), 3.0, np.float32), name="c.mrc")
    with pytest.raises(CryodenInputError, match="too small"):
        estimate_noise_correlation(np.zeros((6, 32, 32), np.float32) + np.arange(6)[:, None, None])
    bad = correlated_noise((24, 32, 32), 0, rng=0)
    bad[12, 16, 16] = np.inf
    with pytest.raises(CryodenInputError, match="NaN or Inf"):
        estimate_noise_correlation(bad)


@pytest.mark.parametrize("case", ["constant", "tiny", "nan"])
@pytest.mark.parametrize("method", ["self2self", "fourier-n2n"])
def test_the_cli_names_the_file_and_writes_nothing(tmp_path, capsys, case, method):
    if case == "tiny" and method == "fourier-n2n":
        pytest.skip("fourier-n2n does not need the measurement; a small volume is only a U-Net size question")
    data = {"constant": np.full((24, 32, 32), 2.0, np.float32),
            "tiny": correlated_noise((6, 32, 32), 0, rng=0),
            "nan": correlated_noise((24, 32, 32), 0, rng=0)}[case]
    if case == "nan":
        data[5, 5, 5] = np.nan
    path = tmp_path / f"{case}.mrc"
    write_mrc(path, data, voxel_size=5.0)
    rc, _, err = cryoden(capsys, "denoise", path, "-o", tmp_path / "out.mrc", "--method", method, "--epochs", "1",
                         "--time-budget", "0", "--patch-size", "16", "--base-channels", "4", "--depth", "2",
                         "--save-model", tmp_path / "m.pt")
    assert rc == 2
    assert f"{case}.mrc:" in err and {"constant": "constant", "tiny": "too small", "nan": "NaN"}[case] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{case}.mrc"]


def test_the_fourier_ball_holds_the_same_share_of_the_noise_power_whatever_its_correlation():
    # The always-kept ball is in every input and every target, so its noise is copied to the output.
    from napari_cryoden.denoise.masks import low_frequency_radius
    from napari_cryoden.denoise.self_supervised import ball_volume_fraction

    assert ball_volume_fraction((0.0, 0.0, 0.0), 0.005, dims=3) == 0.005  # white: volume share = power share
    k = np.fft.fftfreq(64)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kz**2 + ky**2 + kx**2)
    for lengths in [(1.0, 1.0, 1.0), (1.5, 0.75, 0.75)]:
        power = np.exp(-4 * np.pi**2 * (lengths[0]**2 * kz**2 + lengths[1]**2 * ky**2 + lengths[2]**2 * kx**2))

        def share(fraction, power=power):
            return power[r <= low_frequency_radius(3, fraction)].sum() / power.sum()

        assert share(0.005) > 0.1  # the white-noise ball would keep over 10 % of this noise in the output
        assert 0.0 < share(ball_volume_fraction(lengths, 0.005, dims=3)) <= 0.005
