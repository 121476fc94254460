"""Particle simulation: projections, exact ground truth, CTF, SNR, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_cryoden.align.transforms import align_images, transform_images
from napari_cryoden.io.mrc import read_mrc
from napari_cryoden.io.star import read_particle_images, read_star
from napari_cryoden.simulate import (
    ctf_2d,
    electron_wavelength,
    measure_snr,
    project_map,
    simulate_alignment_stack,
    simulate_particles,
)


@pytest.fixture(scope="module")
def blob_volume():
    rng = np.random.default_rng(5)
    vol = gaussian_filter(rng.normal(size=(32, 32, 32)), 2.0)
    zz, yy, xx = np.mgrid[:32, :32, :32] - 16
    vol *= (xx**2 + yy**2 + zz**2) < 12**2  # zero border so rotations lose nothing
    return vol.astype(np.float32)


def test_projection_at_identity_is_the_z_sum(blob_volume):
    proj = project_map(blob_volume, rot=0.0, tilt=0.0, psi=0.0)[0]
    np.testing.assert_allclose(proj, blob_volume.sum(axis=0), rtol=1e-5, atol=1e-5)


def test_projection_matches_the_central_section(blob_volume):
    """Fourier-slice theorem: the 2D FT of the projection is the kz = 0 plane of the 3D FT."""
    proj = project_map(blob_volume, rot=0.0, tilt=0.0, psi=0.0)[0]
    np.testing.assert_allclose(np.fft.fft2(proj), np.fft.fftn(blob_volume)[0], atol=1e-3)


def test_tilt_90_projects_along_x(blob_volume):
    """tilt = 90 about y: the beam runs along x, so the projection is the sum over x (a side view)."""
    proj = project_map(blob_volume, rot=0.0, tilt=90.0, psi=0.0)[0]
    side = blob_volume.sum(axis=2)  # indexed [z, y]
    # A(0, 90, 0)^T maps (x, y, z) to (z, y, -x): P[y, x] = side[c - (x - c), y] with the centre c = N // 2.
    n, c = blob_volume.shape[0], blob_volume.shape[0] // 2
    expected = np.zeros_like(proj)
    for x in range(n):
        z = 2 * c - x
        if 0 <= z < n:
            expected[:, x] = side[z, :]
    np.testing.assert_allclose(proj, expected, atol=1e-4 * np.abs(side).max())


def test_psi_in_3d_equals_2d_rotation_of_the_projection(blob_volume):
    p0 = project_map(blob_volume, rot=0.0, tilt=0.0, psi=0.0)[0]
    p37 = project_map(blob_volume, rot=0.0, tilt=0.0, psi=37.0)[0]
    rotated = transform_images(p0, angles=37.0, shifts=None)
    inner = np.hypot(*(np.mgrid[:32, :32] - 16)) < 12
    assert np.corrcoef(p37[inner], rotated[inner])[0, 1] > 0.999


def test_infinite_snr_stack_has_exactly_the_requested_parameters(builtin_map):
    sim = simulate_particles(builtin_map.data, voxel_size=builtin_map.pixel_size, n_particles=12, box=64,
                             class_views=[(0, 0), (0, 90)], snr=None, max_shift=4, seed=3)
    assert sim.table.particles["rlnClassNumber"].isin([1, 2]).all()
    # The clean images are the class references moved by exactly the recorded psi and origins ...
    expected = transform_images(sim.references[sim.classes], angles=sim.angles, shifts=sim.origins)
    np.testing.assert_allclose(sim.images, expected, atol=1e-5)
    # ... and undoing them gives the references back.
    back = align_images(sim.images, angles=sim.angles, shifts=sim.origins)
    mask = np.hypot(*(np.mgrid[:64, :64] - 32)) < 24
    for img, c in zip(back, sim.classes):
        assert np.corrcoef(img[mask], sim.references[c][mask])[0, 1] > 0.99
    # Origins recorded in Å, psi in [0, 360).
    assert np.all(np.abs(sim.origins) <= 4) and np.all((sim.angles >= 0) & (sim.angles < 360))


def test_unrotated_shift_recovered_by_phase_correlation(builtin_map):
    sim = simulate_particles(builtin_map.data, voxel_size=builtin_map.pixel_size, n_particles=4, box=64,
                             class_views=[(0, 0)], rotate=False, integer_shifts=True, max_shift=6, snr=None, seed=1)
    ref = sim.references[0]
    for img, origin in zip(sim.images, sim.origins):
        xc = np.fft.ifft2(np.fft.fft2(img) * np.conj(np.fft.fft2(ref))).real
        dy, dx = np.unravel_index(np.argmax(xc), xc.shape)
        dx, dy = (dx + 32) % 64 - 32, (dy + 32) % 64 - 32
        # The particle is the reference moved by -origin.
        assert (dx, dy) == (-origin[0], -origin[1])


@pytest.mark.parametrize("snr", [1.0, 0.1, 0.01])
def test_measured_snr_within_5_percent(builtin_map, snr):
    sim = simulate_particles(builtin_map.data, voxel_size=builtin_map.pixel_size, n_particles=40, box=48,
                             class_views=[(0, 0)], snr=snr, seed=2)
    assert measure_snr(sim.clean, sim.images) == pytest.approx(snr, rel=0.05)


def test_snr_inside_a_mask(builtin_map):
    from napari_cryoden.simulate import circular_mask

    sim = simulate_particles(builtin_map.data, voxel_size=builtin_map.pixel_size, n_particles=40, box=48,
                             class_views=[(0, 0)], snr=0.2, mask_radius=18, seed=2)
    mask = circular_mask(48, 18)
    signal = sim.clean[:, mask].var(axis=1)
    noise = (sim.images - sim.clean).var(axis=(1, 2))
    assert np.mean(signal / noise) == pytest.approx(0.2, rel=0.05)


def test_same_seed_same_stack_and_different_seed_differs(builtin_map):
    kw = dict(voxel_size=builtin_map.pixel_size, n_particles=6, box=32, snr=0.5)
    a = simulate_particles(builtin_map.data, seed=7, **kw)
    b = simulate_particles(builtin_map.data, seed=7, **kw)
    c = simulate_particles(builtin_map.data, seed=8, **kw)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.allclose(a.images, c.images)


def test_several_maps_make_several_classes(builtin_map, rng):
    other = gaussian_filter(rng.normal(size=(40, 40, 40)), 2).astype(np.float32)
    sim = simulate_particles([builtin_map.data, other], voxel_size=[builtin_map.pixel_size, 4.23],
                             n_particles=20, box=48, snr=None, seed=0)
    assert sorted(np.unique(sim.classes)) == [0, 1] and np.bincount(sim.classes).tolist() == [10, 10]
    assert sim.references.shape == (2, 48, 48)


def test_ctf_zero_crossing_and_one_defocus_per_particle():
    pixel, defocus = 1.0, 20000.0
    ctf = ctf_2d((128, 128), pixel_size=pixel, defocus_u=[defocus, defocus], cs=0.0, amplitude_contrast=0.0,
                 rfft=True)
    assert ctf.shape == (2, 128, 65)
    np.testing.assert_array_equal(ctf[0], ctf[1])
    # With Cs = 0 and no amplitude contrast, CTF = -sin(pi * lambda * dz * k^2): first zero at k^2 = 1/(lambda dz).
    k0 = 1.0 / np.sqrt(electron_wavelength(300.0) * defocus)
    k = np.fft.rfftfreq(128, d=pixel)
    line = ctf[0, 0]
    first_zero = k[np.flatnonzero(np.diff(np.sign(line[1:])) != 0)[0] + 1]
    assert first_zero == pytest.approx(k0, abs=1.5 / 128)
    assert electron_wavelength(300.0) == pytest.approx(0.019687, rel=1e-4)


def test_ctf_stack_records_defocus(builtin_map):
    sim = simulate_particles(builtin_map.data, voxel_size=builtin_map.pixel_size, n_particles=8, box=48,
                             ctf_mode="full", defocus_range=(12000, 18000), snr=None, seed=0)
    d = sim.table.particles["rlnDefocusU"].to_numpy()
    assert np.all((d >= 12000) & (d <= 18000)) and len(np.unique(d)) == 8
    assert not np.allclose(sim.clean, transform_images(sim.references[sim.classes], angles=sim.angles,
                                                       shifts=sim.origins))


def test_alignment_recipe(builtin_map):
    centre = project_map(builtin_map.data, rot=0.0, tilt=0.0, psi=0.0)
    sim = simulate_alignment_stack(centre, pixel_size=builtin_map.pixel_size, n_per_image=50, seed=0)
    assert sim.snr == 0.1 and len(sim.images) == 50
    o = sim.origins
    np.testing.assert_allclose(o, np.round(o), atol=1e-9)
    assert np.abs(o).max() <= 10 and np.abs(o).max() >= 5
    assert measure_snr(sim.clean, sim.images) == pytest.approx(0.1, rel=0.05)
    assert (sim.table.particles["rlnCtfBfactor"] == 50).all()


def test_save_round_trip(tmp_path, builtin_map):
    sim = simulate_particles(builtin_map.data, voxel_size=builtin_map.pixel_size, n_particles=5, box=32,
                             snr=0.5, seed=0)
    files = sim.save(tmp_path / "p.mrcs", tmp_path / "p.star",
                     clean_path=tmp_path / "clean.mrcs")
    table = read_star(files["star"])
    np.testing.assert_allclose(read_particle_images(table), sim.images)
    np.testing.assert_allclose(table.particles["rlnAnglePsi"], sim.angles, atol=1e-5)
    assert read_mrc(files["stack"]).voxel_size[-1] == pytest.approx(builtin_map.pixel_size, rel=1e-5)
    assert read_mrc(files["clean"]).is_stack


def test_class_fractions_give_unbalanced_classes(builtin_map, rng):
    other = gaussian_filter(rng.normal(size=(40, 40, 40)), 2).astype(np.float32)
    sim = simulate_particles([builtin_map.data, other], voxel_size=[builtin_map.pixel_size, 4.23], n_particles=103,
                             box=32, class_views=((0, 0), (0, 90)), class_fractions=[0.5, 0.25, 0.15, 0.10],
                             snr=None, seed=0)
    counts = np.bincount(sim.classes, minlength=4)
    assert counts.sum() == 103 and np.all(np.abs(counts - np.array([51.5, 25.75, 15.45, 10.3])) < 1)
    assert len(np.unique(sim.classes[:20])) > 1  # shuffled, not in blocks
    # unnormalised shares mean the same; None keeps classes equal
    again = simulate_particles([builtin_map.data, other], voxel_size=[builtin_map.pixel_size, 4.23], n_particles=103,
                               box=32, class_views=((0, 0), (0, 90)), class_fractions=[5, 2.5, 1.5, 1.0], snr=None,
                               seed=0)
    np.testing.assert_array_equal(again.classes, sim.classes)
    with pytest.raises(ValueError, match="one per class"):
        simulate_particles(builtin_map.data, voxel_size=builtin_map.pixel_size, n_particles=10, box=32,
                           class_views=((0, 0), (0, 90)), class_fractions=[1.0], snr=None)
