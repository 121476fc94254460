"""The self-supervised engine: masks, losses, training, tiled prediction, model files, cancel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from napari_cryoden import metrics
from napari_cryoden.denoise import get_method, methods
from napari_cryoden.denoise.engine import (
    FourierN2NParams,
    HalvesParams,
    Self2SelfParams,
    TrainedDenoiser,
    default_params,
    iter_predict,
    iter_predict_to_file,
    iter_train,
)
from napari_cryoden.denoise.masks import (
    apply_fourier_mask,
    bernoulli_mask,
    complementary_fourier_mask,
    fourier_mask,
    low_frequency_ball,
    low_frequency_radius,
    stratified_bernoulli_masks,
)
from napari_cryoden.denoise.networks import SmoothFeatures
from napari_cryoden.denoise.noise import auto_mask_block, correlation_lengths
from napari_cryoden.denoise.normalize import fit_normalization
from napari_cryoden.denoise.tiling import blend_window, iter_predict_tiled, tile_starts
from napari_cryoden.io.mrc import read_mrc, write_mrc
from napari_cryoden.models import load_model, save_model
from napari_cryoden.progress import ProgressEvent, run


# ---------------------------------------------------------------------------------------------- masks
def test_bernoulli_mask_keeps_the_requested_fraction():
    g = torch.Generator().manual_seed(0)
    m = bernoulli_mask((4, 1, 32, 32, 32), 0.7, generator=g)
    assert set(torch.unique(m).tolist()) == {0.0, 1.0}
    assert float(m.mean()) == pytest.approx(0.7, abs=0.01)


def test_block_mask_drops_whole_z_columns():
    g = torch.Generator().manual_seed(0)
    m = bernoulli_mask((2, 1, 24, 16, 16), 0.6, generator=g, block=(3, 1, 1))
    assert m.shape == (2, 1, 24, 16, 16)
    assert float(m.mean()) == pytest.approx(0.6, abs=0.05)
    # Along z, runs of equal values have length 3 (except where the random phase cuts the first/last run).
    col = m[0, 0, :, 5, 5].numpy()
    changes = np.flatnonzero(np.diff(col) != 0)
    assert np.all(np.diff(changes) % 3 == 0)


def test_fourier_mask_keeps_the_low_frequency_ball_and_half_the_blocks():
    g = torch.Generator().manual_seed(1)
    shape = (8, 1, 64, 64, 64)
    m = fourier_mask(shape, keep_probability=0.5, block=8, low_frequency_fraction=0.07, flip_probability=0.1,
                     generator=g)
    assert m.shape == (8, 1, 64, 64, 33)
    kz = torch.fft.fftfreq(64)[:, None, None]
    ky = torch.fft.fftfreq(64)[None, :, None]
    kx = torch.fft.rfftfreq(64)[None, None, :]
    r = torch.sqrt(kz**2 + ky**2 + kx**2)
    ball = r <= low_frequency_radius(3, 0.07)
    assert bool((m[:, :, ball] == 1).all())
    outside = m[:, :, ~ball]
    assert float((outside != 0).float().mean()) == pytest.approx(0.5, abs=0.05)
    kept = outside[outside != 0]
    assert float((kept < 0).float().mean()) == pytest.approx(0.1, abs=0.02)


def test_stratified_masks_are_bernoulli_and_drop_every_voxel_its_share():
    g = torch.Generator().manual_seed(0)
    for block in (None, (3, 1, 1)):
        masks = list(stratified_bernoulli_masks((2, 1, 24, 32, 32), 0.7, 8, generator=g, block=block))
        assert len(masks) == 8
        for m in masks:
            assert float(m.mean()) == pytest.approx(0.7, abs=0.03)
        times_dropped = sum(1 - m for m in masks)
        # 8 × 0.3 = 2.4: every voxel is dropped 2 or 3 times (independent masks leave 0.7^8 ≈ 5.8 % never dropped).
        assert set(torch.unique(times_dropped).tolist()) <= {2.0, 3.0}


def test_complementary_fourier_masks_are_disjoint_outside_the_ball_and_carry_independent_noise():
    g = torch.Generator().manual_seed(2)
    shape = (16, 1, 32, 32, 32)
    m = fourier_mask(shape, keep_probability=0.5, block=4, low_frequency_fraction=0.005, flip_probability=0.1,
                     generator=g)
    c = complementary_fourier_mask(m, (32, 32, 32), 0.005)
    ball = low_frequency_ball((32, 32, 32), 0.005)
    assert bool((c[:, :, ball] == 1).all()) and bool((m[:, :, ball] == 1).all())
    outside = ~ball
    assert bool(((m[:, :, outside] != 0) ^ (c[:, :, outside] != 0)).all())  # exactly one of the two keeps it
    # White noise through the two masks: the members are uncorrelated except for the tiny shared ball.
    noise = torch.randn(shape, generator=g)
    a, b = apply_fourier_mask(noise, m), apply_fourier_mask(noise, c)
    corr = float((a * b).mean() / (a.std() * b.std()))
    assert abs(corr) < 0.03
    # The thesis's pairs (two independent masks) share about a quarter of the spectrum: strongly correlated.
    m2 = fourier_mask(shape, keep_probability=0.5, block=4, low_frequency_fraction=0.005, flip_probability=0.1,
                      generator=g)
    b2 = apply_fourier_mask(noise, m2)
    assert float((a * b2).mean() / (a.std() * b2.std())) > 0.2


def test_smoothing_channels_never_see_a_dropped_voxel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 12, 20, 20, generator=g)
    m = bernoulli_mask(x.shape, 0.7, generator=g)
    feats = SmoothFeatures(3, (1.0, 2.0), masked=True)
    before = feats(torch.cat([x * m, m], dim=1))
    z, y, xx = [int(v[0]) for v in torch.nonzero(m[0, 0] == 0)[5:6].T]
    x2 = x.clone()
    x2[0, 0, z, y, xx] += 100.0  # a dropped voxel changes: nothing the network is given changes
    after = feats(torch.cat([x2 * m, m], dim=1))
    assert torch.allclose(before, after)
    # A constant image gives that constant at every scale, borders included (normalised convolution).
    const = torch.full_like(x, 3.0)
    assert torch.allclose(feats(torch.cat([const * m, m], dim=1)), torch.full((1, 2, 12, 20, 20), 3.0), atol=1e-4)


def test_noise_correlation_sets_the_mask_block():
    rng = np.random.default_rng(0)
    white = rng.normal(size=(48, 64, 64)).astype(np.float32)
    assert correlation_lengths(white) == (0, 0, 0)
    assert auto_mask_block(white, dims=3) == (1, 1, 1)
    zcorr = gaussian_filter(rng.normal(size=(48, 64, 64)), (1.5, 0, 0)).astype(np.float32)
    lengths = correlation_lengths(zcorr)
    assert lengths[0] >= 2 and lengths[1:] == (0, 0)
    assert auto_mask_block(zcorr, dims=3) == (2 * lengths[0] + 1, 1, 1)
    # Noise correlated alike along every axis is measured too (it was invisible to the earlier estimate); a
    # high-SNR signal is not taken for it: tests/core/test_noise_correlation.py.
    iso = gaussian_filter(rng.normal(size=(48, 64, 64)), 1.0).astype(np.float32)
    assert auto_mask_block(iso, dims=3) == (5, 5, 5)
    # A stack of images with noise correlated along y: measured in the image plane only.
    ycorr = gaussian_filter(rng.normal(size=(20, 64, 64)), (0, 1.5, 0)).astype(np.float32)
    block = auto_mask_block(ycorr, dims=2)
    assert block[0] >= 5 and block[1] == 1
    # Training resolves "auto" and stores the measured block in the model.
    params = default_params("self2self", dims=3, patch_size=16, batch_size=2, time_budget=0, epochs=1,
                            base_channels=4, depth=2)
    model = run(iter_train(zcorr, params, method="self2self", seed=0))
    assert model.params.mask_block == ",".join(str(b) for b in auto_mask_block(zcorr, dims=3))


def test_block_masks_put_the_loss_only_where_no_kept_voxel_is_within_the_correlation_length():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 32, 16, 16)
    p = Self2SelfParams(keep_probability=0.7, mask_block="5,1,1")
    inp, _, weights = get_method("self2self").make_pair(x, p, patch_spatial=(32, 16, 16), generator=g)
    kept = inp[:, 1:2]
    assert float(weights.sum()) > 0
    assert torch.equal(weights * kept, torch.zeros_like(kept))
    for dz in (-2, -1, 1, 2):  # every loss voxel's z-neighbours within ±2 are dropped too
        shifted = torch.roll(kept, dz, dims=2)
        inner = weights[:, :, 2:-2]
        assert torch.equal(inner * shifted[:, :, 2:-2], torch.zeros_like(inner))


def test_block_masks_keep_blocks_with_their_own_probability_and_old_models_keep_theirs():
    from napari_cryoden.denoise.self_supervised import mask_keep_probability

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 30, 30, 30)
    method = get_method("self2self")
    for block, expected in (("1,1,1", 0.7), ("3,3,3", 0.4)):
        p = Self2SelfParams(keep_probability=0.7, block_keep_probability=0.4, mask_block=block)
        assert mask_keep_probability(p) == expected
        inp, _, _ = method.make_pair(x, p, patch_spatial=(30, 30, 30), generator=g)
        assert float(inp[:, 1].mean()) == pytest.approx(expected, abs=0.04)
    # A model saved before the block setting existed used keep_probability for blocks too, and still does.
    old = Self2SelfParams.from_saved({"keep_probability": 0.6, "mask_block": "5,1,1"})
    assert mask_keep_probability(old) == 0.6
    assert Self2SelfParams.from_saved({"block_keep_probability": 0.3}).block_keep_probability == 0.3


def test_self2self_loss_only_sees_the_dropped_voxels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 16)
    p = Self2SelfParams(keep_probability=0.7, mask_block="1,1,1")
    inp, target, weights = get_method("self2self").make_pair(x, p, patch_spatial=(16, 16, 16), generator=g)
    mask = inp[:, 1:2]
    assert torch.equal(weights, 1 - mask)
    assert torch.equal(inp[:, :1] * (1 - mask), torch.zeros_like(x))  # the network never sees dropped voxels
    # Changing the target where voxels were kept does not change the loss.
    out = torch.randn_like(x)

    def loss(t):
        return float(((out - t) ** 2 * weights).sum() / weights.sum())

    assert loss(target) == pytest.approx(loss(target + 5.0 * mask))
    assert loss(target) != pytest.approx(loss(target + 5.0 * (1 - mask)))


# ----------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def noisy_volume():
    rng = np.random.default_rng(3)
    clean = gaussian_filter(rng.normal(size=(24, 48, 48)), 2.5)
    clean = (clean - clean.mean()) / clean.std()
    noisy = clean + rng.normal(scale=1.5, size=clean.shape)
    return clean.astype(np.float32), noisy.astype(np.float32)


def _light_blur_psnr(clean, noisy, *, is_stack: bool = False) -> float:
    """PSNR of the baseline a short training must beat: a sigma = 0.5 Gaussian blur (in-plane for a stack)."""
    return metrics.psnr(clean, gaussian_filter(noisy, (0, 0.5, 0.5) if is_stack else 0.5), fit=True)


@pytest.mark.parametrize("method", ["self2self", "fourier-n2n"])
def test_a_short_training_beats_a_light_gaussian_blur(noisy_volume, method):
    clean, noisy = noisy_volume
    # No smoothing channels: the untrained network would already be a Gaussian filter, and this test is about
    # what training itself achieves.
    params = default_params(method, dims=3, patch_size=16, batch_size=8, time_budget=0, epochs=4,
                            base_channels=8, depth=2, n_predictions=4, learning_rate=2e-3, smooth_sigmas="")
    events: list[ProgressEvent] = []
    model = run(iter_train(noisy, params, method=method, seed=0), events.append)
    train = [e for e in events if e.stage == "train"]  # (self2self then distils its student: stage "distill")
    assert train and train[-1].total == train[-1].step
    assert all(np.isfinite(e.loss) for e in events)
    denoised = run(iter_predict(model, noisy, seed=0))
    assert denoised.shape == noisy.shape and denoised.dtype == np.float32
    # The baseline is a sigma = 0.5 Gaussian blur (+2.5 dB over the raw input here), which passed the old "+2 dB
    # over raw" claim. Measured over that blur (seed 0 at 1 and 2 threads, the same; seed 1 and a second volume at
    # 2): self2self +3.6 to +4.1 dB, fourier-n2n +2.0 to +2.4 dB. Not the tuned Gaussian (sigma 1.5: +10.8 dB
    # over raw): these 40 steps reach +4.5 to +6.6 dB over raw, and even 160 steps stay 3.5 dB below it; beating the
    # oracle Gaussian takes the minutes of training of docs/benchmarks, not a unit test.
    psnr = metrics.psnr(clean, denoised, fit=True)
    assert psnr > _light_blur_psnr(clean, noisy) + 1.0, (psnr, _light_blur_psnr(clean, noisy))
    assert psnr > metrics.psnr(clean, noisy, fit=True) + 3.0


def test_n2n_halves_and_2d_stacks(noisy_volume):
    clean, noisy = noisy_volume
    rng = np.random.default_rng(0)
    half1 = clean + rng.normal(scale=2.0, size=clean.shape).astype(np.float32)
    half2 = clean + rng.normal(scale=2.0, size=clean.shape).astype(np.float32)
    # No smoothing channels (with them the untrained network scored +6.7 dB over the average, the trained one
    # +6.65 dB, so the test did not measure training), and 80 steps instead of 30 (30 only matched the blur).
    params = default_params("n2n-halves", dims=2, patch_size=32, batch_size=8, time_budget=0, epochs=8,
                            base_channels=8, depth=2, learning_rate=2e-3, smooth_sigmas="")
    model = run(iter_train(half1, params, method="n2n-halves", half2=half2, is_stack=True, seed=0))
    assert model.net_config.dims == 2
    out = run(iter_predict(model, half1, half2=half2, is_stack=True))
    # Baselines: the average of the halves, and its sigma = 0.5 in-plane blur (+1.6 dB over the average). Measured
    # over that blur: +3.8 to +4.3 dB (training seeds 0-2; seed 0 the same at 1 and 2 threads). Not claimed: the
    # tuned Gaussian of the average (sigma 1.5, +7.6 dB over the average; the training reaches +5.4 to +5.8).
    average = (half1 + half2) / 2
    psnr = metrics.psnr(clean, out, fit=True)
    assert psnr > _light_blur_psnr(clean, average, is_stack=True) + 2.0, psnr
    assert psnr > metrics.psnr(clean, average, fit=True) + 3.5


def test_same_seed_same_result(noisy_volume):
    _, noisy = noisy_volume
    params = default_params("self2self", dims=3, patch_size=16, batch_size=2, time_budget=0, epochs=1,
                            base_channels=4, depth=2, n_predictions=2)
    a = run(iter_predict(run(iter_train(noisy[:16, :32, :32], params, method="self2self", seed=5)),
                         noisy[:16, :32, :32], seed=1))
    b = run(iter_predict(run(iter_train(noisy[:16, :32, :32], params, method="self2self", seed=5)),
                         noisy[:16, :32, :32], seed=1))
    np.testing.assert_array_equal(a, b)


def test_normalisation_is_undone(noisy_volume):
    _, noisy = noisy_volume
    scaled = noisy * 1000.0 + 5000.0
    params = default_params("fourier-n2n", dims=3, patch_size=16, batch_size=2, time_budget=0, epochs=1,
                            base_channels=4, depth=2, n_predictions=1)
    out = run(iter_predict(run(iter_train(scaled, params, method="fourier-n2n")), scaled))
    assert abs(out.mean() - scaled.mean()) < 0.2 * scaled.std()
    norm = fit_normalization(scaled)
    np.testing.assert_allclose(norm.invert(norm.apply(scaled[0, 0, :5])), np.clip(scaled[0, 0, :5], norm.low,
                                                                                   norm.high), rtol=1e-5)


# ----------------------------------------------------------------------------------------- tiling
def test_tile_starts_cover_everything():
    for length, tile, overlap in [(100, 32, 8), (32, 32, 8), (10, 32, 8), (65, 16, 0)]:
        starts = tile_starts(length, tile, overlap)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and starts[-1] + min(tile, length) == length


def test_blending_has_no_seams_on_a_ramp():
    z, y, x = np.mgrid[:37, :50, :45].astype(np.float32)
    ramp = 0.3 * z + 0.1 * y - 0.2 * x + 5
    out = run(iter_predict_tiled(lambda b: b[:, 0] * 2 + 1, ramp, tile=(16, 16, 16), overlap=(4, 4, 4)))
    np.testing.assert_allclose(out, ramp * 2 + 1, rtol=1e-5, atol=1e-4)
    w = blend_window((16, 16, 16), (4, 4, 4))
    assert w.min() > 0 and w.max() == 1.0


def test_tiled_prediction_matches_untiled(noisy_volume):
    _, noisy = noisy_volume
    params = default_params("n2n-halves", dims=3, patch_size=16, batch_size=2, time_budget=0, epochs=1,
                            base_channels=4, depth=2, dropout=0.0)
    model = run(iter_train(noisy, params, method="n2n-halves", half2=noisy))
    whole = run(iter_predict(model, noisy, tile_size=64))
    tiled = run(iter_predict(model, noisy, tile_size=32))  # 2 x 2 x 1 tiles with 16-voxel overlaps
    # Zero padding at tile borders differs from the whole-volume pass only in low-weight margins.
    assert np.abs(whole - tiled).mean() < 0.005 * whole.std()
    assert np.abs(whole - tiled).max() < 0.05 * whole.std()


# ------------------------------------------------------------------------------------------ models
def test_model_round_trip_and_continue_training(tmp_path, noisy_volume):
    _, noisy = noisy_volume
    params = default_params("self2self", dims=3, patch_size=16, batch_size=2, time_budget=0, epochs=1,
                            base_channels=4, depth=2, n_predictions=2)
    model = run(iter_train(noisy, params, method="self2self", seed=0, voxel_size=(10.0, 10.0, 10.0)))
    path = save_model(tmp_path / "m.pt", model.to_model_file())
    loaded = TrainedDenoiser.load(path)
    # The model stores the mask block measured from the data in place of "auto" (white noise: single voxels),
    # and no partner (white noise needs none).
    assert loaded.method == "self2self"
    assert loaded.params == dataclasses.replace(params, mask_block="1,1,1", partner="none")
    assert loaded.voxel_size == (10.0, 10.0, 10.0) and loaded.net_config.smooth_sigmas == (1.0, 2.0, 3.0)
    for k, v in model.net.state_dict().items():
        torch.testing.assert_close(v, loaded.net.state_dict()[k])
    np.testing.assert_array_equal(run(iter_predict(model, noisy, seed=3)), run(iter_predict(loaded, noisy, seed=3)))
    steps_before = len(loaded.history)
    more = run(iter_train(noisy, params, method="self2self", model=loaded, seed=1))
    assert len(more.history) > steps_before
    with pytest.raises(Exception, match="not a denoise model"):
        TrainedDenoiser.load(save_model(tmp_path / "x.pt", dataclasses.replace(load_model(path), kind="align/udl")))


# ------------------------------------------------------------------------------------------- files
def test_cancel_leaves_no_output_and_finished_run_keeps_voxel_size(tmp_path, noisy_volume):
    _, noisy = noisy_volume
    params = default_params("fourier-n2n", dims=3, patch_size=16, batch_size=2, time_budget=0, epochs=1,
                            base_channels=4, depth=2, n_predictions=1)
    model = run(iter_train(noisy, params, method="fourier-n2n"))
    gen = iter_predict_to_file(model, noisy, tmp_path / "out.mrc", voxel_size=(7.0, 7.0, 7.0), origin=(1, 2, 3),
                               labels=["hello"])
    next(gen)
    gen.close()  # what a Cancel does
    assert list(tmp_path.iterdir()) == []
    path = run(iter_predict_to_file(model, noisy, tmp_path / "out.mrc", voxel_size=(7.0, 7.0, 7.0),
                                    origin=(1, 2, 3), labels=["hello"]))
    m = read_mrc(path)
    assert m.voxel_size == (7.0, 7.0, 7.0) and m.origin == (1.0, 2.0, 3.0) and "hello" in m.labels


def test_registry_lists_the_self_supervised_methods():
    names = methods()
    for name, cls in [("self2self", Self2SelfParams), ("fourier-n2n", FourierN2NParams), ("n2n-halves", HalvesParams)]:
        assert names[name].params is cls and names[name].family == "self-supervised"
    with pytest.raises(KeyError, match="unknown denoising method"):
        get_method("nope")


def test_cli_denoise_keeps_voxel_size_and_refuses_bad_input(tmp_path, noisy_volume, capsys):
    from napari_cryoden.cli import main

    _, noisy = noisy_volume
    write_mrc(tmp_path / "v.mrc", noisy, voxel_size=4.5, labels=["acquired"])
    rc = main(["-q", "denoise", str(tmp_path / "v.mrc"), "-o", str(tmp_path / "d.mrc"), "--method", "self2self",
               "--epochs", "1", "--time-budget", "0", "--patch-size", "16", "--base-channels", "4", "--depth", "2",
               "--n-predictions", "1", "--save-model", str(tmp_path / "m.pt")])
    assert rc == 0
    out = read_mrc(tmp_path / "d.mrc")
    assert out.voxel_size == (4.5, 4.5, 4.5) and out.data.shape == noisy.shape and "acquired" in out.labels
    rc = main(["-q", "denoise", str(tmp_path / "v.mrc"), "-o", str(tmp_path / "p.mrc"), "--method", "self2self",
               "--model", str(tmp_path / "m.pt"), "--predict-only"])
    assert rc == 0 and (tmp_path / "p.mrc").exists()
    capsys.readouterr()
    bad = noisy.copy()
    bad[3, 3, 3] = np.nan
    write_mrc(tmp_path / "nan.mrc", bad, voxel_size=1.0)
    assert main(["denoise", str(tmp_path / "nan.mrc"), "-o", str(tmp_path / "n.mrc"), "--method", "self2self"]) == 2
    assert "nan.mrc: contains NaN" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "v.mrc"), "-o", str(tmp_path / "v.mrc"), "--method", "self2self"]) == 2
    assert main(["denoise", str(tmp_path / "v.mrc"), "-o", str(tmp_path / "q.mrc"), "--method", "self2self",
                 "--predict-only"]) == 2
    assert not (tmp_path / "n.mrc").exists() and not (tmp_path / "q.mrc").exists()


def test_cli_denoise_reads_a_star_list_of_tomograms(tmp_path, noisy_volume, capsys):
    import pandas as pd
    import starfile

    from napari_cryoden.cli import main

    _, noisy = noisy_volume
    (tmp_path / "tomos").mkdir()
    for i in range(2):
        write_mrc(tmp_path / "tomos" / f"t{i}.mrc", noisy, voxel_size=4.5)
    starfile.write({"global": pd.DataFrame({"rlnTomoName": ["tomos/t0.mrc", "tomos/t1.mrc"]})}, tmp_path / "l.star")
    rc = main(["-q", "denoise", str(tmp_path / "l.star"), "-o", str(tmp_path / "out"), "--method", "gaussian"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t0_denoised.mrc", "t1_denoised.mrc"]
    starfile.write({"global": pd.DataFrame({"rlnTomoName": ["tomos/t0.mrc", "tomos/gone.mrc"]})},
                   tmp_path / "bad.star")
    rc = main(["-q", "denoise", str(tmp_path / "bad.star"), "-o", str(tmp_path / "o2"), "--method", "gaussian"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.star" in err and "gone.mrc" in err and not (tmp_path / "o2").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_train_and_predict_match_cpu_shapes(noisy_volume):
    clean, noisy = noisy_volume
    # No smoothing channels: with them the untrained network is already a Gaussian filter and beat the raw input
    # alone. The same settings and baseline as the CPU test (mixed precision on the GPU: same margin, not values).
    params = default_params("self2self", dims=3, patch_size=16, batch_size=8, time_budget=0, epochs=4,
                            base_channels=8, depth=2, n_predictions=4, learning_rate=2e-3, smooth_sigmas="")
    model = run(iter_train(noisy, params, method="self2self", device="cuda", seed=0))
    out = run(iter_predict(model, noisy, device="cuda", seed=0))
    assert out.shape == noisy.shape and np.isfinite(out).all()
    psnr = metrics.psnr(clean, out, fit=True)
    assert psnr > _light_blur_psnr(clean, noisy) + 1.0, (psnr, _light_blur_psnr(clean, noisy))


def test_prediction_halves_the_tile_and_retries_when_memory_runs_out(monkeypatch, caplog):
    """The GPU path's out-of-memory handling, exercised on the CPU with a predictor that fails on big tiles."""
    import logging

    from napari_cryoden.denoise.engine import TrainedDenoiser, default_params, iter_predict
    from napari_cryoden.denoise.networks import UNet, UNetConfig
    from napari_cryoden.denoise.normalize import fit_normalization
    from napari_cryoden.progress import run

    vol = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    params = default_params("fourier-n2n", dims=3, tile_size=32, tile_overlap=4)
    config = UNetConfig(dims=3, base_channels=4, depth=2, dropout=0.0)
    model = TrainedDenoiser(method="fourier-n2n", params=params, net_config=config, net=UNet(config),
                            normalization=fit_normalization(vol), history=[])
    sizes = []

    def fake_predictor(*args, **kwargs):  # the method object's tile predictor, replaced
        def predict(tiles):
            sizes.append(tiles.shape[-1])
            if tiles.shape[-1] > 16:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return tiles[:, 0] * 0.5
        return predict

    monkeypatch.setattr(get_method("fourier-n2n"), "tile_predictor", fake_predictor)
    with caplog.at_level(logging.WARNING, logger="napari_cryoden.denoise.engine"):
        out = run(iter_predict(model, vol, device="cpu"))
    assert sizes[0] == 32 and sizes[-1] == 16
    assert "out of memory; retrying with tiles of (16, 16, 16)" in caplog.text
    np.testing.assert_allclose(out, vol * 0.5, rtol=1e-5, atol=1e-5)  # the blended tiles cover everything
