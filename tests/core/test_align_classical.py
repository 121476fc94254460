"""Classical alignment: known angles and shifts are recovered, in RELION's convention."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden.align import (
    ClassicalParams,
    align_images,
    align_reference_free,
    align_to_reference,
    transform_images,
)
from napari_cryoden.align.cross_correlation import rotational_average, symmetrize
from napari_cryoden.metrics.alignment import angular_error, remove_global_rotation, shift_error
from napari_cryoden.sample_data import builtin_map
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack

BOX = 48


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    m = builtin_map()
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size * 1.3, box=BOX)
    return project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)


def _stack(reference, *, n=40, snr=None, seed=1, max_shift=5.0):
    return simulate_alignment_stack(reference, pixel_size=1.0, n_per_image=n, max_shift=max_shift,
                                    integer_shifts=False, ctf_mode="none", snr=snr, seed=seed)


def test_noise_free_stack_is_recovered(reference):
    sim = _stack(reference)
    res = align_to_reference(sim.images, reference, ClassicalParams(max_shift=6))
    assert np.median(angular_error(res.angles, sim.angles)) < 0.5
    assert np.median(shift_error(res.origins, sim.origins)) < 0.1
    assert res.scores.min() > 0.9
    # The aligned stack is align_images with the found parameters, and its average is the reference.
    np.testing.assert_allclose(res.aligned, align_images(sim.images, angles=res.angles, shifts=res.origins),
                               atol=1e-4)
    corr = np.corrcoef(res.average.ravel(), reference.ravel())[0, 1]
    assert corr > 0.98


def test_rotating_the_input_changes_the_estimates_by_that_angle(reference):
    """particle'(p) = particle(R(g) p)  =>  psi' = psi + g and o' = R(-g) o (the convention test)."""
    sim = _stack(reference, n=20, seed=3)
    gamma = 37.0
    rotated = transform_images(sim.images, angles=gamma)
    p = ClassicalParams(max_shift=8)
    a, b = align_to_reference(sim.images, reference, p), align_to_reference(rotated, reference, p)
    assert np.median(angular_error(b.angles, a.angles + gamma)) < 0.5
    g = np.deg2rad(gamma)
    expected = np.stack([np.cos(g) * a.origins[:, 0] + np.sin(g) * a.origins[:, 1],
                         -np.sin(g) * a.origins[:, 0] + np.cos(g) * a.origins[:, 1]], 1)
    assert np.median(shift_error(b.origins, expected)) < 0.15


def test_sign_of_angle_and_origin(reference):
    """A particle made with psi = 30 and origin (3, -2) by the forward model reads back exactly so."""
    particle = transform_images(reference, angles=30.0, shifts=(3.0, -2.0))
    res = align_to_reference(particle[None], reference)
    assert angular_error(res.angles[0], 30.0) < 0.3
    np.testing.assert_allclose(res.origins[0], [3.0, -2.0], atol=0.1)


def test_noisy_stack_and_max_shift(reference):
    sim = _stack(reference, n=60, snr=1.0, seed=2)
    res = align_to_reference(sim.images, reference, ClassicalParams(max_shift=6))
    assert np.median(angular_error(res.angles, sim.angles)) < 2.0
    assert np.median(shift_error(res.origins, sim.origins)) < 0.4
    tight = align_to_reference(sim.images, reference, ClassicalParams(max_shift=2))
    assert np.abs(tight.origins).max() <= 2.0 + 1.0  # sub-pixel refinement may step just past the limit


def test_batches_give_the_same_result(reference):
    sim = _stack(reference, n=15, snr=2.0)
    a = align_to_reference(sim.images, reference, ClassicalParams(batch_size=4))
    b = align_to_reference(sim.images, reference, ClassicalParams(batch_size=64))
    np.testing.assert_allclose(a.angles, b.angles, atol=1e-3)
    np.testing.assert_allclose(a.origins, b.origins, atol=1e-3)


def test_reference_free_recovers_parameters_up_to_one_global_rotation(reference):
    sim = _stack(reference, n=80, snr=2.0, seed=4, max_shift=4)
    res = align_reference_free(sim.images, ClassicalParams(max_shift=6, iterations=5, seed_images=40))
    offset, corrected = remove_global_rotation(res.angles, sim.angles)
    assert np.median(angular_error(corrected, sim.angles)) < 1.0
    # The average is the reference turned by the global rotation (estimate = truth + offset).
    turned = transform_images(reference, angles=-offset)
    assert np.corrcoef(res.reference.ravel(), turned.ravel())[0, 1] > 0.8
    assert res.info["reference"] == "free"


def test_reference_free_with_angle_guesses_searches_only_near_them(reference):
    """What the deep methods hand over: the passes search near the guesses (then near the angle the pass
    before found), not globally. Guesses at the true angles recover them (known answers, in the guesses'
    frame); particles guessed 90° off keep an angle far from the truth, which the global search finds."""
    sim = _stack(reference, n=80, snr=2.0, seed=4, max_shift=4)
    guess = sim.angles.copy()
    wrong = np.arange(80) % 8 == 0
    guess[wrong] += 90.0
    params = ClassicalParams(max_shift=6, iterations=3, seed_images=40)
    res = align_reference_free(sim.images, params, initial_reference=reference, angle_guess=guess)
    err = angular_error(res.angles, sim.angles)
    assert np.median(err[~wrong]) < 1.0  # (shifts: up to the re-centring of the average, as any free result)
    assert np.all(err[wrong] > 45.0)
    assert res.info["search"] == "local" and res.info["iterations"] >= 2
    glob = align_reference_free(sim.images, params, initial_reference=reference)
    assert np.median(angular_error(glob.angles, sim.angles)[wrong]) < 2.0 and glob.info["search"] == "global"


def test_reference_free_with_ctf_averages_phase_flipped_particles(reference):
    """Particles of different defocus: the average is built from phase-flipped particles, so their contrast
    adds up and the reference-free alignment still finds the angles (the raw average cancelled them)."""
    from _stacks import stack_ctf

    from napari_cryoden.align.cross_correlation import phase_flip

    sim = simulate_alignment_stack(reference, pixel_size=2.0, n_per_image=80, max_shift=3.0, integer_shifts=False,
                                   ctf_mode="full", snr=1.0, seed=6)
    ctf = stack_ctf(sim, BOX, 2.0)
    # Phase flipping undoes the CTF's sign: flipping twice gives the particle back.
    np.testing.assert_allclose(phase_flip(phase_flip(sim.images[:3], ctf[:3]), ctf[:3]), sim.images[:3], atol=1e-4)
    res = align_reference_free(sim.images, ClassicalParams(max_shift=5, iterations=6, seed_images=40), ctf=ctf)
    _, corrected = remove_global_rotation(res.angles, sim.angles)
    assert np.median(angular_error(corrected, sim.angles)) < 2.0


def test_split_halves_keep_each_particle_out_of_its_own_reference(reference):
    sim = _stack(reference, n=60, snr=0.5, seed=8, max_shift=3)
    res = align_reference_free(sim.images, ClassicalParams(max_shift=5, iterations=4, seed_images=30,
                                                           split_halves=True))
    _, corrected = remove_global_rotation(res.angles, sim.angles)
    assert np.median(angular_error(corrected, sim.angles)) < 2.0
    assert res.info["iterations"] >= 2


def test_bootstrap_start_is_not_one_image():
    """The rotational average used to centre the bootstrap prefers no direction."""
    img = np.zeros((32, 32), np.float32)
    img[16, 20] = 1.0
    ra = rotational_average(img)
    np.testing.assert_allclose(ra, ra.T, atol=1e-6)
    np.testing.assert_allclose(ra, ra[::-1, ::-1][np.r_[-1, :31]][:, np.r_[-1, :31]], atol=1e-6)


def test_symmetry(reference):
    sym = symmetrize(reference, 3)
    sim = _stack(sym, n=30, seed=5)
    res = align_to_reference(sim.images, sym, ClassicalParams(symmetry=3))
    assert res.angles.max() < 120.0
    assert np.median(angular_error(res.angles, sim.angles, symmetry=3)) < 0.5
    assert np.median(shift_error(res.origins, sim.origins)) < 0.1


@pytest.mark.parametrize("kind", ["white", "correlated"])
def test_reference_free_alignment_of_pure_noise_warns_of_no_common_signal(kind):
    """Noise aligned to its own average looks like a result (scores > 0, an average with features); the run
    compares with phase-randomised copies of the particles and says there is nothing shared."""
    import warnings

    from scipy.ndimage import gaussian_filter

    from napari_cryoden.align.cross_correlation import STRUCTURE_MIN_RATIO, NoCommonSignalWarning

    noise = np.random.default_rng(3).standard_normal((60, 48, 48)).astype(np.float32)
    if kind == "correlated":
        noise = np.stack([gaussian_filter(im, 1.5) for im in noise])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = align_reference_free(noise, ClassicalParams(max_shift=4, iterations=3, seed_images=60))
    assert res.info["structure"]["ratio"] < STRUCTURE_MIN_RATIO
    assert [w for w in caught if issubclass(w.category, NoCommonSignalWarning)]


def test_reference_free_alignment_of_real_particles_finds_common_signal():
    import warnings

    from napari_cryoden.align.cross_correlation import STRUCTURE_MIN_RATIO, NoCommonSignalWarning
    from napari_cryoden.sample_data import sample_particles

    sim = sample_particles(n_particles=60, box=48, snr=0.3, max_shift=3.0, seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = align_reference_free(sim.images, ClassicalParams(max_shift=4, iterations=3, seed_images=60))
    assert res.info["structure"]["ratio"] > STRUCTURE_MIN_RATIO + 0.3
    assert not [w for w in caught if issubclass(w.category, NoCommonSignalWarning)]


def test_sub_step_refinement_recovers_angles_between_grid_points(reference):
    """Noise-free particles at angles between the bank's 2° steps (and the 4° search grid) come back to a
    fraction of a step: the sub-step parabolas, not the grid, set the precision."""
    angles = np.arange(12) * 30.0 + 1.1  # 0.9° from the nearest point of the 2° bank, 1.1° from the 4° grid
    shifts = np.tile([1.3, -0.6], (12, 1))
    particles = transform_images(np.repeat(reference[None], 12, 0), angles=angles, shifts=shifts)
    res = align_to_reference(particles, reference, ClassicalParams(angular_step=2.0, max_shift=4))
    grid = np.round(res.angles / 2.0) * 2.0
    assert np.median(angular_error(res.angles, angles)) < 0.25
    assert np.median(angular_error(grid, angles)) > 0.8  # the bank's grid alone is 0.9° off
    np.testing.assert_allclose(res.origins, shifts, atol=0.1)


def test_exhaustive_search_finds_angles_the_polar_amplitudes_miss(reference):
    """At low SNR the polar-amplitude candidates miss the right angle for many particles (errors of tens of
    degrees); the exhaustive half-resolution search scores every angle and misses almost none."""
    sim = _stack(reference, n=200, snr=0.05, seed=3, max_shift=4)
    wrong = {}
    for search in ("exhaustive", "polar"):
        res = align_to_reference(sim.images, reference, ClassicalParams(max_shift=5, search=search))
        wrong[search] = int((angular_error(res.angles, sim.angles) > 10).sum())
    assert wrong["exhaustive"] <= 8  # measured 2 of 200
    assert wrong["polar"] >= wrong["exhaustive"] + 20  # measured 47


def test_frc_weight_keeps_shared_rings_and_drops_noise():
    """FRC weights of two half averages: ~1 where they share the signal, ~0 where they are independent noise;
    filtering by all-ones weights returns the image."""
    from napari_cryoden.align.cross_correlation import filter_rings, frc_weight

    rng = np.random.default_rng(0)
    box = 48
    signal = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((box, box))) *
                           (np.hypot(*np.meshgrid(np.fft.rfftfreq(box), np.fft.fftfreq(box))) < 0.15), s=(box, box))
    a = signal * 20 + rng.standard_normal((box, box))
    b = signal * 20 + rng.standard_normal((box, box))
    w = frc_weight(a, b)
    assert w[2:6].min() > 0.9  # low rings: signal ≫ noise
    assert np.median(w[12:]) < 0.25  # past the signal's band: independent noise
    assert w.min() >= 0.0 and w.max() <= 1.0
    np.testing.assert_allclose(filter_rings(a, np.ones(box)), a, atol=1e-4)
