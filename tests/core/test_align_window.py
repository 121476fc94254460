"""What the shipped (any-box) alignment networks read: a window cropped around the particle, so a small particle
in a large box is not a few central Fourier pixels, and optionally a binned spectrum reaching twice as far.

Known answers: the radius of a uniform disc; the crop's bounds (the particle's fill, the shifts, the box);
the binned map of a turned image is the turned map (the zero frequency stays the centre). The shipped-model
test compares the same fixed weights on the same particles with and without the window (no training).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden.align.udl import (
    SHIPPED_ROTATIONS,
    build_network,
    inference_settings,
    iter_align_with_model,
    log_amplitudes,
    network_angle_error,
    network_crop,
    particle_radius,
    predict_relative_angles,
)
from napari_cryoden.models import load_pretrained
from napari_cryoden.progress import run
from napari_cryoden.sample_data import builtin_map
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack


def _disc(radius: float, box: int = 128, background: float = 0.0) -> np.ndarray:
    c = np.arange(box) - box / 2 + 0.5
    return ((np.hypot(c[:, None], c[None, :]) <= radius) + background).astype(np.float32)


def test_particle_radius_of_a_disc_ignores_the_background_and_noise_only_enlarges_it():
    for radius in (8.0, 15.0, 30.0):
        assert abs(particle_radius(_disc(radius)) - radius) <= 1.0
        assert abs(particle_radius(_disc(radius, background=5.0)) - radius) <= 1.0
    noisy = _disc(15.0) + np.random.default_rng(0).normal(0, 0.3, (128, 128)).astype(np.float32)
    assert particle_radius(noisy) >= particle_radius(_disc(15.0))
    assert particle_radius(np.zeros((64, 64), np.float32)) == 32  # nothing to measure: the whole box


def test_network_crop_makes_the_particle_fill_the_window_within_the_box_and_the_shifts():
    r = particle_radius(_disc(10.0))
    assert network_crop(_disc(10.0), 128, max_shift=0.0, fill=0.4) == 2 * int(np.ceil(r / 0.4))  # fill rules
    assert network_crop(_disc(10.0), 128, max_shift=30.0, fill=0.4) == 2 * int(np.ceil(r + 30 + 4))  # shifts rule
    assert network_crop(_disc(40.0), 128, max_shift=10.0) == 128  # a large particle: the whole box
    assert network_crop(_disc(3.0), 128, max_shift=0.0, size=64) == 64  # never below the spectrum it needs


@pytest.mark.parametrize("spectrum_bin", [1, 2])
def test_a_turned_image_turns_the_map_about_its_centre(spectrum_bin):
    ref = _reference(128)
    a = log_amplitudes(ref[None], size=32, spectrum_bin=spectrum_bin)[0, 0].numpy()
    # np.rot90 turns about the array's centre, which only shifts the particle: amplitudes do not see it
    b = log_amplitudes(np.rot90(ref).copy()[None], size=32, spectrum_bin=spectrum_bin)[0, 0].numpy()
    inside = np.hypot(*np.meshgrid(np.arange(32) - 16, np.arange(32) - 16, indexing="ij")) <= 14
    # np.rot90 of an even-sized map moves its centre by one pixel: search that shift (a half-pixel error of the
    # binning's centre would match no whole shift). Median over the disc of a unit-sd map: the soft mask is
    # centred on a pixel, so the turned image is masked a little differently (max error ~0.2 near the map's zeros)
    errors = sorted(float(np.median(np.abs(b - np.roll(np.rot90(a, k), (dy, dx), (0, 1)))[inside]))
                    for k in (1, 3) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert errors[0] < 0.02 and errors[2] > 0.2, errors[:3]  # the one shift (for k = 1 and 3 alike) and no other
    if spectrum_bin == 2:  # and it reaches further: a bin-1 map of the same image is another map
        assert np.abs(a - log_amplitudes(ref[None], size=32)[0, 0].numpy()).max() > 0.1


def _reference(box: int) -> np.ndarray:
    m = builtin_map()  # emd_5625: never in the shipped models' training data
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size * 2.5, box=box)
    return project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)


@pytest.mark.parametrize("kind", ["align/udl", "align/judl"])
def test_the_shipped_model_reads_a_small_particle_through_the_window(kind):
    """emd_5625 spanning about 15 % of a 128² box, SNR 0.3: the same shipped weights, the whole box against the
    window ``cryoden align`` crops (and the CLI path uses that window)."""
    ref = _reference(128)
    sim = simulate_alignment_stack(ref, pixel_size=1.0, n_per_image=150, max_shift=8, integer_shifts=False,
                                   ctf_mode="none", snr=0.3, seed=3)
    model = load_pretrained(kind)
    net = build_network(model)
    crop = network_crop(ref, 128, max_shift=10.0, size=32 * net.spectrum_bin)
    assert crop < 100
    whole = np.median(network_angle_error(predict_relative_angles(net, ref, sim.images), sim.angles))
    window = np.median(network_angle_error(predict_relative_angles(net, ref, sim.images, crop=crop), sim.angles))
    assert window < 8.0 and whole > window + 5.0, (whole, window)
    res = run(iter_align_with_model(sim.images, model, ref, refine="none", keep_aligned=False))
    how = inference_settings(model, ref, 128, max_shift=10.0, refine="none")
    assert res.info["network_crop"] == how["crop"] == crop and res.info["network_rotations"] == SHIPPED_ROTATIONS
    np.testing.assert_allclose(res.info["network_angles"], predict_relative_angles(net, ref, sim.images, **how),
                               atol=1e-3)


@pytest.mark.parametrize("kind", ["align/udl", "align/judl"])
def test_reading_turned_copies_averages_the_network_answers_back_in_the_particle_frame(kind):
    """Each particle read turned by k·180°/K and the answers turned back: on emd_5625 at SNR 1 the average is as
    good as one reading or better (a wrong sign of the turn-back would scatter the answers to chance), and
    at SNR 0.3 it is not worse."""
    net = build_network(load_pretrained(kind))
    ref = _reference(128)
    for snr in (1.0, 0.3):
        sim = simulate_alignment_stack(ref, pixel_size=1.0, n_per_image=120, max_shift=8, integer_shifts=False,
                                       ctf_mode="none", snr=snr, seed=4)
        crop = network_crop(ref, 128, max_shift=10.0)
        one, eight = (np.median(network_angle_error(
            predict_relative_angles(net, ref, sim.images, crop=crop, rotations=k), sim.angles)) for k in (1, 8))
        assert eight < 8.0 and eight <= one + 0.5, (snr, one, eight)
