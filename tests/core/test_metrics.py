"""Known answers for napari_cryoden.metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from napari_cryoden.errors import CryodenInputError
from napari_cryoden.metrics import (
    FSCCurve,
    adjusted_rand_index,
    angular_distance,
    angular_error,
    clustering_accuracy,
    fit_affine,
    fourier_ring_correlation,
    fourier_shell_correlation,
    match_labels,
    mse,
    normalized_mutual_info,
    psnr,
    remove_global_rotation,
    resolution_at,
    shift_error,
    ssim,
    stack_mse,
    stack_psnr,
    stack_ssim,
)

# ---------------------------------------------------------------- intensity


def test_psnr_of_known_mse():
    reference = np.linspace(0.0, 1.0, 64 * 64).reshape(64, 64)  # data range 1
    estimate = reference + 0.1  # MSE 0.01
    assert mse(reference, estimate) == pytest.approx(0.01, rel=1e-12)
    assert psnr(reference, estimate) == pytest.approx(20.0, abs=1e-9)
    assert psnr(reference, estimate, data_range=10.0) == pytest.approx(40.0, abs=1e-9)
    assert psnr(reference, reference) == np.inf


@pytest.mark.parametrize("shape", [(40, 56), (12, 20, 16)])
def test_psnr_and_ssim_match_scikit_image(shape):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=shape)
    estimate = reference + 0.5 * rng.normal(size=shape)
    data_range = reference.max() - reference.min()
    assert psnr(reference, estimate) == pytest.approx(
        peak_signal_noise_ratio(reference, estimate, data_range=data_range), rel=1e-12
    )
    assert psnr(reference, estimate, data_range=3.0) == pytest.approx(
        peak_signal_noise_ratio(reference, estimate, data_range=3.0), rel=1e-12
    )
    assert ssim(reference, estimate) == pytest.approx(
        structural_similarity(reference, estimate, data_range=data_range), rel=1e-12
    )


def test_fit_makes_affine_copies_perfect():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(32, 32))
    scaled = -3.0 * reference + 7.0
    assert mse(reference, scaled) > 1.0
    assert mse(reference, scaled, fit=True) < 1e-20
    assert psnr(reference, scaled, fit=True) > 200.0
    assert ssim(reference, scaled, fit=True) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(fit_affine(scaled, reference), reference, atol=1e-12)
    # A constant estimate is best replaced by the mean of the reference.
    np.testing.assert_allclose(fit_affine(np.ones((4, 4)), reference[:4, :4]), reference[:4, :4].mean())


def test_minmax_normalisation_ignores_scale_and_offset():
    rng = np.random.default_rng(2)
    reference = rng.uniform(size=(16, 16))
    estimate = 5.0 * reference + 3.0
    assert mse(reference, estimate, normalize="minmax") == pytest.approx(0.0, abs=1e-24)
    with pytest.raises(CryodenInputError):
        mse(reference, estimate, normalize="zscore")
    with pytest.raises(CryodenInputError):
        mse(reference, estimate, normalize="minmax", fit=True)


def test_inputs_are_checked_and_not_mutated():
    reference = np.arange(64, dtype=np.float32).reshape(8, 8)
    estimate = reference[::-1].copy()
    before = (reference.copy(), estimate.copy())
    mse(reference, estimate, fit=True)
    ssim(reference, estimate, fit=True)
    fit_affine(estimate, reference)
    np.testing.assert_array_equal(reference, before[0])
    np.testing.assert_array_equal(estimate, before[1])
    with pytest.raises(CryodenInputError):
        psnr(reference, estimate[:, :7])
    with pytest.raises(CryodenInputError):
        ssim(np.ones((8, 8)), np.ones((8, 8)))  # constant reference: no data range
    small = structural_similarity(
        reference[:5, :5].astype(float), estimate[:5, :5].astype(float), data_range=36.0, win_size=5
    )
    assert ssim(reference[:5, :5], estimate[:5, :5]) == pytest.approx(small)  # small image: 5-pixel window


def test_stack_metrics_equal_looped():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(4, 20, 20))
    estimate = 2.0 * reference + rng.normal(size=reference.shape)
    looped = [psnr(r, e, fit=True) for r, e in zip(reference, estimate)]
    np.testing.assert_allclose(stack_psnr(reference, estimate, fit=True), looped)
    np.testing.assert_allclose(stack_ssim(reference, estimate), [ssim(r, e) for r, e in zip(reference, estimate)])
    np.testing.assert_allclose(stack_mse(reference, estimate), [mse(r, e) for r, e in zip(reference, estimate)])
    # One clean reference for every noisy copy.
    single = stack_psnr(reference[0], estimate)
    np.testing.assert_allclose(single, [psnr(reference[0], e) for e in estimate])
    with pytest.raises(CryodenInputError):
        stack_psnr(reference[:3], estimate)


# ---------------------------------------------------------------- Fourier


def _band_limited_pair(shape, cutoff, noise, seed):
    """Two maps sharing white signal below ``cutoff`` cycles/pixel, each with independent white noise."""
    rng = np.random.default_rng(seed)
    axes = [np.fft.fftfreq(n) for n in shape]
    k = np.sqrt(sum(np.meshgrid(*[a * a for a in axes], indexing="ij")))
    signal = np.fft.ifftn(np.fft.fftn(rng.normal(size=shape)) * (k < cutoff)).real
    signal /= signal.std()
    return signal + noise * rng.normal(size=shape), signal + noise * rng.normal(size=shape)


def _frc_full_fft(a, b):
    """Reference FRC/FSC from the full complex FFT, same shells as the library."""
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    size = max(a.shape)
    axes = [np.fft.fftfreq(n) for n in a.shape]
    k = np.sqrt(sum(np.meshgrid(*[x * x for x in axes], indexing="ij")))
    shell = np.rint(k * size).astype(int)
    out = []
    for i in range(size // 2 + 1):
        sel = shell == i
        num = np.sum(fa[sel] * np.conj(fb[sel])).real
        out.append(num / np.sqrt(np.sum(np.abs(fa[sel]) ** 2) * np.sum(np.abs(fb[sel]) ** 2)))
    return np.array(out)


def test_fsc_of_identical_maps_is_one():
    rng = np.random.default_rng(4)
    volume = rng.normal(size=(24, 32, 20))
    curve = fourier_shell_correlation(volume, volume, voxel_size=2.0)
    assert curve.correlation.shape == (17,)
    np.testing.assert_array_equal(curve.correlation, 1.0)
    assert curve.frequency[-1] == pytest.approx(0.5 / 2.0)
    assert curve.resolution() == pytest.approx(4.0)  # never drops: Nyquist


@pytest.mark.parametrize("shape", [(32, 32), (48, 80), (33, 20), (10, 16, 15)])
def test_frc_matches_full_fft_computation(shape):
    a, b = _band_limited_pair(shape, 0.3, 1.0, seed=5)
    curve = fourier_ring_correlation(a, b)
    np.testing.assert_allclose(curve.correlation, _frc_full_fft(a, b), atol=1e-12)


def test_fsc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(2, 64, 64, 64))
    curve = fourier_shell_correlation(a, b, voxel_size=1.0)
    assert abs(curve.correlation[4:].mean()) < 0.05
    assert np.all(np.abs(curve.correlation[4:]) < 0.2)
    assert curve.resolution(0.143) == np.inf  # already below at the first shell after DC


def test_frc_non_square_image():
    a, b = _band_limited_pair((48, 80), 0.2, 0.3, seed=7)
    curve = fourier_ring_correlation(a, b, voxel_size=1.25)
    assert curve.correlation.shape == curve.frequency.shape == curve.n_coefficients.shape == (41,)
    assert curve.n_coefficients[0] == 1
    # Shell 1 (|k| ~ 1/80): only kx = +-1/80, since ky = +-1/48 rounds to shell 2; the rfft stores one of the pair.
    assert curve.n_coefficients[1] == 2
    assert np.all(curve.correlation[1:15] > 0.8)
    assert np.all(np.abs(curve.correlation[18:]) < 0.35)
    # Cut-off 0.2 cycles/pixel = shell 16 of 80 -> 80 * 1.25 / 16 = 6.25 Å.
    assert 5.8 < curve.resolution(0.143) < 6.4


def test_fsc_resolution_of_band_limited_volumes():
    # Shared signal up to 0.25 cycles/pixel (shell 16 of 64) at SNR ~ 11: the curve falls from ~0.92 to ~0
    # between shells 16 and 17, i.e. between 64 * 1.5 / 17 = 5.65 Å and 64 * 1.5 / 16 = 6 Å.
    a, b = _band_limited_pair((64, 64, 64), 0.25, 0.3, seed=8)
    curve = fourier_shell_correlation(a, b, voxel_size=1.5)
    assert np.all(curve.correlation[1:15] > 0.85)
    assert 5.6 < curve.resolution(0.143) < 6.05
    assert 5.6 < curve.resolution(0.5) < 6.05


def test_resolution_of_hand_made_curve():
    shells = np.arange(33)
    curve = FSCCurve(
        frequency=shells / (64 * 2.0),
        correlation=np.clip(1.0 - shells / 20.0, 0.0, None),
        n_coefficients=np.ones(33, dtype=int),
        voxel_size=2.0,
    )
    # 1 - i/20 = 0.143 at i = 17.14; 0.5 exactly at shell 10.
    assert curve.resolution(0.143) == pytest.approx(128.0 / 17.14, rel=1e-9)
    assert resolution_at(curve, 0.5) == pytest.approx(12.8, rel=1e-9)
    with pytest.raises(ValueError):
        curve.correlation[0] = 0.0  # read-only


def test_fsc_input_checks():
    with pytest.raises(CryodenInputError):
        fourier_ring_correlation(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(CryodenInputError):
        fourier_ring_correlation(np.zeros(8), np.zeros(8))
    a = np.random.default_rng(9).normal(size=(16, 16))
    mask = np.ones((16, 16))
    np.testing.assert_allclose(
        fourier_ring_correlation(a, a[::-1], mask=mask).correlation, fourier_ring_correlation(a, a[::-1]).correlation
    )


# ---------------------------------------------------------------- alignment


def test_angular_distance_and_symmetry():
    assert angular_distance(359, 1) == 2
    assert angular_distance(1, 359) == 2
    assert angular_distance(10, 190) == 180
    np.testing.assert_allclose(angular_distance([0, 720.5, -90], [360, 0, 90]), [0, 0.5, 180])
    assert angular_error(360 / 7 + 1, 0, symmetry=7) == pytest.approx(1.0)
    assert angular_error(360 / 7 - 1, 0, symmetry=7) == pytest.approx(1.0)
    assert angular_error(181, 0) == pytest.approx(179.0)
    with pytest.raises(CryodenInputError):
        angular_error(1, 0, symmetry=0)


def test_shift_error():
    np.testing.assert_allclose(shift_error([[3, 4], [1, 1]], [[0, 0], [1, 1]]), [5, 0])
    with pytest.raises(CryodenInputError):
        shift_error(np.zeros((3, 2)), np.zeros((3, 3)))


def _summed_error(offset, estimate, truth, symmetry):
    return angular_error(estimate - offset, truth, symmetry=symmetry).sum(axis=-1)


@pytest.mark.parametrize(("offset", "symmetry"), [(37.0, 1), (-170.0, 1), (179.5, 1), (5.0, 7)])
def test_remove_global_rotation_recovers_offset(offset, symmetry):
    rng = np.random.default_rng(10)
    truth = rng.uniform(0, 360, size=500)
    estimate = np.mod(truth + offset + rng.normal(0, 3.0, size=500), 360)
    estimate[:50] = rng.uniform(0, 360, size=50)  # 10 % outliers
    if symmetry > 1:  # symmetric particles: any of the n equivalent angles may be found
        estimate = np.mod(estimate + 360 / symmetry * rng.integers(0, symmetry, size=500), 360)
    found, corrected = remove_global_rotation(estimate, truth, symmetry=symmetry)
    assert angular_error(found, offset, symmetry=symmetry) < 1.0
    assert np.median(angular_error(corrected, truth, symmetry=symmetry)) < 4.0
    # The offset is the exact minimiser of the summed circular error.
    grid = np.arange(-180, 180, 0.05)[:, None] / symmetry
    best_on_grid = _summed_error(grid, estimate, truth, symmetry).min()
    assert _summed_error(found, estimate, truth, symmetry) <= best_on_grid + 1e-9


def test_remove_global_rotation_exact_offset_and_inputs_kept():
    truth = np.array([0.0, 90.0, 200.0, 350.0])
    estimate = np.mod(truth + 37.0, 360)
    kept = estimate.copy()
    found, corrected = remove_global_rotation(estimate, truth)
    assert found == pytest.approx(37.0)
    np.testing.assert_allclose(angular_distance(corrected, truth), 0.0, atol=1e-9)
    np.testing.assert_array_equal(estimate, kept)


# ---------------------------------------------------------------- clustering


def test_accuracy_with_permuted_labels_is_one():
    truth = np.repeat([0, 1, 2, 3], 25)
    estimate = np.choose(truth, [17, -3, 5, 100])
    assert clustering_accuracy(truth, estimate) == 1.0
    assert match_labels(truth, estimate) == {17: 0, -3: 1, 5: 2, 100: 3}
    assert adjusted_rand_index(truth, estimate) == pytest.approx(1.0)
    assert normalized_mutual_info(truth, estimate) == pytest.approx(1.0)


def test_accuracy_is_the_hungarian_optimum_not_greedy():
    # Contingency [[3, 2], [3, 0]]: greedy takes a 3 and gets 3/8, the optimum is 2 + 3 = 5/8.
    truth = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    estimate = np.array([10, 10, 10, -4, -4, 10, 10, 10])
    assert clustering_accuracy(truth, estimate) == pytest.approx(5 / 8)
    assert match_labels(truth, estimate) == {10: 1, -4: 0}


def test_accuracy_brute_force_with_different_cluster_counts():
    rng = np.random.default_rng(11)
    truth = rng.integers(0, 3, size=60)
    estimate = rng.integers(0, 4, size=60) * 7
    best = 0
    for perm in itertools.permutations(np.unique(estimate), 3):
        best = max(best, sum(np.sum((truth == t) & (estimate == e)) for t, e in zip(range(3), perm)))
    assert clustering_accuracy(truth, estimate) == pytest.approx(best / 60)
    mapping = match_labels(truth, estimate)
    assert len(mapping) == 3 and set(mapping.values()) == {0, 1, 2}


def test_ari_and_nmi_match_sklearn():
    rng = np.random.default_rng(12)
    truth = rng.integers(0, 5, size=200)
    estimate = np.where(rng.uniform(size=200) < 0.7, truth, rng.integers(0, 6, size=200))
    assert adjusted_rand_index(truth, estimate) == pytest.approx(adjusted_rand_score(truth, estimate))
    assert normalized_mutual_info(truth, estimate) == pytest.approx(normalized_mutual_info_score(truth, estimate))
    assert normalized_mutual_info(truth, estimate, average_method="geometric") == pytest.approx(
        normalized_mutual_info_score(truth, estimate, average_method="geometric")
    )
    with pytest.raises(CryodenInputError):
        clustering_accuracy(truth, estimate[:-1])
