"""Self2Self's fast prediction: the distilled single-pass student, the masked-pass average it stands in for,
model files with and without a student, and the tiling that computes the fewest voxels.

Properties only (no floating-point trajectories): the student is nearer the teacher's averaged prediction
than the identity or any plain Gaussian filter is, old model files load and predict as before, and the
same seed gives the same bits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from napari_cryoden import metrics
from napari_cryoden.denoise.engine import TrainedDenoiser, choose_tile, default_params, iter_predict, iter_train
from napari_cryoden.denoise.masks import stratified_bernoulli_masks
from napari_cryoden.denoise.networks import UNetConfig
from napari_cryoden.denoise.self_supervised import teacher_passes
from napari_cryoden.denoise.tiling import tile_starts
from napari_cryoden.models import load_model, save_model
from napari_cryoden.progress import run


def _ground_truth(shape=(16, 32, 32)) -> np.ndarray:
    """Piecewise-constant boxes and balls: edges a Gaussian filter blurs."""
    z, y, x = np.indices(shape)
    vol = np.zeros(shape, np.float32)
    vol[4:12, 3:13, 4:28] = 1.0
    vol[((z - 8) ** 2 + (y - 22) ** 2 + (x - 9) ** 2) < 30] = 2.0
    vol[((z - 7) ** 2 + (y - 21) ** 2 + (x - 24) ** 2) < 20] = -1.0
    return vol


def _tiny(**overrides):
    base = dict(time_budget=0, epochs=4, patch_size=16, batch_size=4, base_channels=4, depth=2,
                smooth_sigmas="1", distill_steps=10)
    base.update(overrides)
    return default_params("self2self", dims=3, **base)


@pytest.fixture(scope="module")
def trained():
    clean = _ground_truth()
    noisy = (clean + np.random.default_rng(0).normal(scale=0.8, size=clean.shape)).astype(np.float32)
    events = []
    model = run(iter_train(noisy, _tiny(), method="self2self", seed=0, preview_every=0), events.append)
    return clean, noisy, model, events


def _rms(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def test_teacher_passes_drop_every_voxel_at_least_once():
    for p in (0.5, 0.7, 0.9):
        n = teacher_passes(p)
        g = torch.Generator().manual_seed(0)
        dropped = sum(1.0 - m for m in stratified_bernoulli_masks((1, 1, 8, 16, 16), p, n, generator=g))
        assert float(dropped.min()) >= 1.0
        assert (n - 1) * (1.0 - p) < 1.0  # and one fewer would not be enough
    assert teacher_passes(0.7) == 4


def test_training_distills_a_student_after_the_teacher(trained):
    _, _, model, events = trained
    assert model.student is not None
    stages = [e.stage for e in events]
    assert stages.index("distill") > max(i for i, s in enumerate(stages) if s == "train")
    assert sum(s == "distill" for s in stages) == model.params.distill_steps
    # The student is its own network (the teacher's weights are unchanged by the distillation).
    assert model.student is not model.net
    assert not all(torch.equal(a, b) for a, b in zip(model.student.state_dict().values(),
                                                     model.net.state_dict().values()))


def test_the_student_is_nearer_the_averaged_masked_passes_than_identity_or_any_gaussian(trained):
    clean, noisy, model, _ = trained
    student = run(iter_predict(model, noisy, seed=0))
    averaged = run(iter_predict(model, noisy, seed=0, n_predictions=8))
    gap = _rms(student, averaged)
    assert gap < 0.5 * _rms(noisy, averaged)  # the identity is far from the teacher
    nearest_gaussian = min(_rms(gaussian_filter(noisy, s), averaged) for s in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0))
    assert gap < nearest_gaussian  # and so is every plain Gaussian filter: the student learned the teacher
    # Its quality: a clear gain over the noisy input, and no real loss against the averaged passes.
    p_student, p_averaged = metrics.psnr(clean, student), metrics.psnr(clean, averaged)
    assert p_student > metrics.psnr(clean, noisy) + 3.0
    assert p_student > p_averaged - 1.0


def test_prediction_is_bit_identical_for_a_seed(trained):
    _, noisy, model, _ = trained
    a = run(iter_predict(model, noisy, seed=3))
    b = run(iter_predict(model, noisy, seed=3))
    assert np.array_equal(a, b)
    m1 = run(iter_predict(model, noisy, seed=3, n_predictions=2))
    m2 = run(iter_predict(model, noisy, seed=3, n_predictions=2))
    assert np.array_equal(m1, m2)


def test_training_with_a_student_is_bit_identical_for_a_seed():
    clean = _ground_truth((12, 16, 16))
    noisy = (clean + np.random.default_rng(1).normal(scale=0.8, size=clean.shape)).astype(np.float32)
    params = _tiny(epochs=1, patch_size=8, distill_steps=3)
    outs = [run(iter_predict(run(iter_train(noisy, params, method="self2self", seed=5, preview_every=0)),
                             noisy, seed=0)) for _ in range(2)]
    assert np.array_equal(outs[0], outs[1])


def test_the_student_is_saved_and_loaded_with_the_model(trained, tmp_path):
    _, noisy, model, _ = trained
    path = save_model(tmp_path / "s2s.pt", model.to_model_file())
    loaded = TrainedDenoiser.load(path)
    assert loaded.student is not None
    assert np.array_equal(run(iter_predict(loaded, noisy, seed=0)), run(iter_predict(model, noisy, seed=0)))


def test_an_older_model_file_without_a_student_loads_and_averages_masked_passes(trained, tmp_path):
    _, noisy, model, _ = trained
    old = model.to_model_file()
    old.extra.pop("student")
    for name in ("prediction", "distill_steps"):  # settings a file saved before the student does not have
        old.config["params"].pop(name)
    old.config["params"]["n_predictions"] = 2  # fewer passes than the default keep the test short
    path = save_model(tmp_path / "old.pt", old)
    assert "student" not in load_model(path).extra
    loaded = TrainedDenoiser.load(path)
    assert loaded.student is None and loaded.params.prediction == "student"
    out = run(iter_predict(loaded, noisy, seed=0))
    expected = run(iter_predict(model, noisy, seed=0, n_predictions=loaded.params.n_predictions))
    assert np.array_equal(out, expected)  # exactly the former default: the average of the masked passes


def test_prediction_modes_choose_the_network(trained):
    _, noisy, model, _ = trained

    def with_params(**changes):
        return dataclasses.replace(model, params=dataclasses.replace(model.params, **changes))

    student = run(iter_predict(model, noisy, seed=0))
    masked = run(iter_predict(with_params(prediction="masked", n_predictions=2), noisy, seed=0))
    assert np.array_equal(masked, run(iter_predict(model, noisy, seed=0, n_predictions=2)))
    unmasked = run(iter_predict(with_params(prediction="unmasked"), noisy, seed=0))
    assert not np.array_equal(student, masked) and not np.array_equal(student, unmasked)
    small = noisy[:12, :16, :16]
    no_student = run(iter_train(small, _tiny(epochs=1, patch_size=8, distill_steps=0), method="self2self",
                                seed=0, preview_every=0))
    assert no_student.student is None


def _computed(shape, tile, overlap) -> int:
    return int(np.prod([len(tile_starts(s, t, min(overlap, t // 2))) * t for s, t in zip(shape, tile)]))


@pytest.mark.parametrize("shape", [(32, 128, 128), (64, 128, 128), (64, 256, 256), (20, 50, 70)])
def test_automatic_tiles_compute_no_more_voxels_than_cubes(shape):
    config = UNetConfig(dims=3, base_channels=8, depth=3)
    tile = choose_tile(shape, 3, config, torch.device("cpu"), overlap=16)
    cube = choose_tile(shape, 3, config, torch.device("cpu"), 96)  # the former automatic tile: 96³ clipped
    assert int(np.prod(tile)) <= 96**3
    assert _computed(shape, tile, 16) <= _computed(shape, cube, 16)
    if int(np.prod(shape)) <= 96**3:
        assert tuple(tile) == tuple(shape)  # a volume that fits one tile is one tile
