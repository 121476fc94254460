"""Known answers for the tomogram phantom and the noise model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.fft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_cryoden.io.mrc import read_mrc
from napari_cryoden.simulate.noise import add_noise, measure_snr, noise_std_for_snr
from napari_cryoden.simulate.tomogram import (
    PARTICLE_SUPPORT_THRESHOLD,
    TomogramPhantom,
    missing_wedge_mask,
    simulate_tomogram,
)

SMALL = (48, 96, 96)


def _neighbour_correlation(noise: np.ndarray) -> float:
    a, b = noise[..., :-1].ravel(), noise[..., 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _asymmetric_map() -> np.ndarray:
    """A 21^3 map of three unequal Gaussian blobs: no rotational symmetry."""
    g = np.arange(21.0) - 10.0
    z, y, x = g[:, None, None], g[None, :, None], g[None, None, :]
    out = np.zeros((21, 21, 21))
    for (cz, cy, cx), s, a in [((0, 0, 0), 1.6, 1.0), ((0, 0, 6), 1.2, 0.8), ((4, -5, 0), 1.2, 0.6)]:
        out += a * np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * s**2))
    return out


@pytest.fixture(scope="module")
def white() -> TomogramPhantom:
    return simulate_tomogram(shape=SMALL, snr=0.3, noise="white", seed=1)


@pytest.fixture(scope="module")
def coloured() -> TomogramPhantom:
    return simulate_tomogram(shape=SMALL, snr=0.3, noise="coloured", seed=1)


# -- noise -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["white", "coloured"])
def test_measured_snr_matches_request(name, request):
    result = request.getfixturevalue(name)
    assert result.noisy.dtype == np.float32 and result.noisy.shape == SMALL
    assert measure_snr(result.clean, result.noisy) == pytest.approx(0.3, rel=0.05)
    assert np.std(result.noisy - result.clean) == pytest.approx(result.noise_std, rel=0.05)


def test_coloured_noise_is_correlated_and_white_is_not(white, coloured):
    assert abs(_neighbour_correlation(white.noisy - white.clean)) < 0.02
    # Gaussian kernel of sigma 1.5 px: exp(-1 / (4 * 1.5^2)) = 0.89 between neighbours.
    assert _neighbour_correlation(coloured.noisy - coloured.clean) > 0.8


def test_add_noise_per_image_on_a_stack():
    rng = np.random.default_rng(0)
    stack = rng.random((4, 64, 64)) * np.array([1.0, 2.0, 5.0, 10.0])[:, None, None]
    before = stack.copy()
    std = noise_std_for_snr(stack, 0.5, axes=(1, 2))
    assert std.shape == (4, 1, 1)
    np.testing.assert_allclose(std[:, 0, 0], np.sqrt(stack.var(axis=(1, 2)) / 0.5))
    noisy = add_noise(stack, 0.5, rng=np.random.default_rng(1), axes=(1, 2), colour="coloured")
    np.testing.assert_array_equal(stack, before)
    assert noisy.dtype == np.float32
    np.testing.assert_allclose(measure_snr(stack, noisy, axes=(1, 2)), 0.5, rtol=1e-3)
    # Masked SNR: signal variance inside the mask only.
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    std_masked = noise_std_for_snr(stack, 2.0, mask=mask, axes=(1, 2))
    np.testing.assert_allclose(std_masked[:, 0, 0], np.sqrt(stack[:, 16:48, 16:48].var(axis=(1, 2)) / 2.0))


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan])
def test_snr_must_be_positive(bad):
    with pytest.raises(ValueError):
        noise_std_for_snr(np.arange(10.0), bad)
    with pytest.raises(ValueError):
        simulate_tomogram(shape=SMALL, snr=bad)


# -- reproducibility ------------------------------------------------------------------------------------


def test_same_seed_same_volume_different_seed_different(white):
    again = simulate_tomogram(shape=SMALL, snr=0.3, noise="white", seed=1)
    np.testing.assert_array_equal(again.noisy, white.noisy)
    np.testing.assert_array_equal(again.phantom, white.phantom)
    pd.testing.assert_frame_equal(again.particles, white.particles)
    other = simulate_tomogram(shape=SMALL, snr=0.3, noise="white", seed=2)
    assert not np.array_equal(other.noisy, white.noisy)
    assert not np.array_equal(other.phantom, white.phantom)


# -- missing wedge --------------------------------------------------------------------------------------


def test_missing_wedge_removes_power_from_clean_only(white):
    missing = ~missing_wedge_mask(SMALL, 60.0)
    assert missing.any()

    def missing_fraction(volume):
        power = np.abs(scipy.fft.rfftn(volume.astype(np.float64))) ** 2
        return float((power * missing).sum() / power.sum())

    assert missing_fraction(white.clean) < 1e-9
    assert missing_fraction(white.phantom) > 1e-3
    # The noise is added after the wedge, so it fills the wedge.
    assert missing_fraction(white.noisy) > 0.05


def test_no_wedge_means_clean_is_phantom():
    result = simulate_tomogram(shape=SMALL, missing_wedge=None, seed=3)
    np.testing.assert_array_equal(result.clean, result.phantom)
    assert result.phantom.max() == pytest.approx(1.0)


# -- halves ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["white", "coloured"])
def test_halves_average_to_noisy_with_independent_noise(noise):
    result = simulate_tomogram(shape=SMALL, snr=0.5, noise=noise, halves=True, seed=4)
    np.testing.assert_array_equal((result.even + result.odd) / 2, result.noisy)
    sigma2 = result.noise_std**2
    assert np.var(result.even - result.odd) == pytest.approx(4 * sigma2, rel=0.05)
    assert np.var(result.noisy - result.clean) == pytest.approx(sigma2, rel=0.05)
    assert measure_snr(result.clean, result.even) == pytest.approx(0.25, rel=0.05)


# -- objects --------------------------------------------------------------------------------------------


def test_particles_do_not_overlap_and_count_is_right(white):
    table = white.particles
    assert list(table.columns) == ["x", "y", "z", "rot", "tilt", "psi"]
    assert len(table) == 12
    xyz = table[["x", "y", "z"]].to_numpy()
    dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert dist.min() >= 2 * white.particle_radius
    assert np.all((xyz >= 0) & (xyz <= np.array(SMALL[::-1]) - 1))


def test_particle_orientation_convention():
    """Rotating each pasted particle back by its stored angles recovers the reference map."""
    ref = _asymmetric_map()
    frozen = ref.copy()
    frozen.flags.writeable = False
    result = simulate_tomogram(shape=SMALL, n_vesicles=0, n_filaments=0, n_particles=6, particle_map=frozen,
                               particle_map_voxel_size=10.0, missing_wedge=None, seed=5)
    np.testing.assert_array_equal(frozen, ref)
    assert len(result.particles) == 6
    support = ref >= PARTICLE_SUPPORT_THRESHOLD * ref.max()
    idx = np.argwhere(support)
    centre = (idx * ref[support][:, None]).sum(0) / ref[support].sum()
    grid = np.stack(np.meshgrid(*[np.arange(21.0)] * 3, indexing="ij"), -1).reshape(-1, 3) - centre
    inside = np.linalg.norm(grid, axis=1) < 8
    for row in result.particles.itertuples():
        rot = Rotation.from_euler("ZYZ", [row.rot, row.tilt, row.psi], degrees=True)
        position = np.array([row.z, row.y, row.x])
        scores = []
        for r in (rot.inv(), rot):  # the documented convention, then the wrong one
            coords = position + r.apply(grid[:, ::-1])[:, ::-1]
            sampled = ndimage.map_coordinates(result.phantom, coords.T, order=1)
            scores.append(np.corrcoef(sampled[inside], ref.reshape(-1)[inside])[0, 1])
        assert scores[0] > 0.98
        if (rot * rot).magnitude() > np.deg2rad(60):  # R and its inverse differ enough to tell apart
            assert scores[1] < scores[0] - 0.1


def test_particle_map_is_rescaled_to_the_voxel_size():
    ref = _asymmetric_map()
    same = simulate_tomogram(shape=SMALL, n_particles=2, particle_map=ref, particle_map_voxel_size=10.0, seed=6)
    half = simulate_tomogram(shape=SMALL, n_particles=2, particle_map=ref, particle_map_voxel_size=5.0, seed=6)
    assert half.particle_radius / same.particle_radius == pytest.approx(0.5, rel=0.2)


def test_vesicles_are_hollow_bilayers():
    result = simulate_tomogram(shape=SMALL, n_vesicles=2, n_filaments=0, n_particles=0, missing_wedge=None,
                               seed=7)
    assert len(result.vesicles) >= 1
    half_sep = 2.0  # 4 nm bilayer at 10 Å/voxel
    for row in result.vesicles.itertuples():
        z, y, x = round(row.z), round(row.y), round(row.x)
        centre = result.phantom[z, y, x]
        leaflets = [ndimage.map_coordinates(result.phantom, [[row.z], [row.y], [row.x + d]], order=1)[0]
                    for d in (row.radius - half_sep, row.radius + half_sep)]
        mid_plane = ndimage.map_coordinates(result.phantom, [[row.z], [row.y], [row.x + row.radius]], order=1)[0]
        assert centre < 0.05 * min(leaflets)
        assert mid_plane < 0.9 * min(leaflets)  # two leaflets, not one solid shell


def test_default_phantom_has_everything_and_empty_vesicle_lumens(white):
    assert len(white.vesicles) >= 1 and len(white.filaments) >= 1
    assert set(white.filaments["kind"]) <= {"actin", "intermediate", "microtubule"}
    for row in white.vesicles.itertuples():
        assert white.phantom[round(row.z), round(row.y), round(row.x)] < 0.05


def test_empty_phantom_is_an_error():
    with pytest.raises(ValueError, match="nothing"):
        simulate_tomogram(shape=SMALL, n_vesicles=0, n_filaments=0, n_particles=0)


# -- files ----------------------------------------------------------------------------------------------


def test_save_round_trips_with_voxel_size(tmp_path):
    result = simulate_tomogram(shape=(16, 48, 40), voxel_size=12.5, n_vesicles=0, n_particles=3, halves=True,
                               seed=8)
    paths = result.save(tmp_path / "out", stem="tomo")
    assert set(paths) == {"noisy", "clean", "even", "odd", "particles"}
    for key in ("noisy", "clean", "even", "odd"):
        mrc = read_mrc(paths[key], mmap=False)
        np.testing.assert_array_equal(mrc.data, getattr(result, key))
        assert mrc.voxel_size == pytest.approx((12.5, 12.5, 12.5))
    assert paths["noisy"].name == "tomo.mrc" and paths["even"].name == "tomo_even.mrc"
    table = pd.read_csv(paths["particles"])
    pd.testing.assert_frame_equal(table, result.particles, check_dtype=False)
    no_halves = simulate_tomogram(shape=(16, 48, 40), n_vesicles=0, seed=8).save(tmp_path, stem="t")
    assert set(no_halves) == {"noisy", "clean", "particles"}
