"""Self2Self's partner on correlated noise: a copy of the distilled student trained further by
Recorrupted-to-Recorrupted, whose output is averaged with the student's.

Properties only (no floating-point trajectories): which inputs get a partner, that the prediction is exactly the
mean of the two networks, that the model file keeps it (and older files load without one), and that the pair
still denoises. Its gain over the student alone and over a tuned Gaussian is measured by
``benchmarks/denoise_tomograms.py`` (docs/methods.md), not asserted here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from napari_cryoden import metrics
from napari_cryoden.denoise.engine import TrainedDenoiser, default_params, iter_predict, iter_train
from napari_cryoden.denoise.self_supervised import DISTILL_SHARE, PARTNER_SHARE, Self2Self
from napari_cryoden.models import save_model
from napari_cryoden.progress import ProgressEvent, as_stage, run

SHAPE = (24, 48, 48)


def _ground_truth() -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    vol = np.zeros(SHAPE, np.float32)
    vol[6:18, 8:20, 6:42] = 1.0
    vol[((z - 12) ** 2 + (y - 34) ** 2 + (x - 14) ** 2) < 60] = 2.0
    vol[((z - 11) ** 2 + (y - 33) ** 2 + (x - 36) ** 2) < 40] = -1.0
    return vol


def _noisy(lengths, seed=0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=SHAPE)
    if max(lengths) > 0:
        noise = gaussian_filter(noise, lengths, mode="wrap")
    return (_ground_truth() + 0.8 * noise / noise.std()).astype(np.float32)


def _tiny(**overrides):
    base = dict(time_budget=0, epochs=4, patch_size=16, batch_size=4, base_channels=4, depth=2,
                smooth_sigmas="1", distill_steps=5)
    base.update(overrides)
    return default_params("self2self", dims=3, **base)


@pytest.fixture(scope="module")
def correlated():
    noisy = _noisy((1.5, 0.7, 0.7))
    events = []
    model = run(iter_train(noisy, _tiny(), method="self2self", seed=0, preview_every=0), events.append)
    return noisy, model, events


def test_correlated_noise_gets_a_partner_after_the_student(correlated):
    _, model, events = correlated
    assert max(int(b) for b in model.params.mask_block.split(",")) > 1  # the noise was measured correlated
    assert model.params.partner == "r2r" and model.partner is not None and model.student is not None
    stages = [e.stage for e in events]
    assert "partner" in stages and stages.index("partner") > max(i for i, s in enumerate(stages) if s == "distill")
    # It started as the student and was trained: its own weights, no longer the student's.
    assert model.partner is not model.student
    assert not all(torch.equal(a, b) for a, b in zip(model.partner.state_dict().values(),
                                                     model.student.state_dict().values()))
    assert "Recorrupted-to-Recorrupted" in model.describe_noise()


def test_white_noise_or_another_prediction_gets_no_partner():
    white = _noisy((0, 0, 0))
    events = []
    model = run(iter_train(white, _tiny(epochs=2), method="self2self", seed=0, preview_every=0), events.append)
    assert model.params.mask_block == "1,1,1"
    assert model.params.partner == "none" and model.partner is None
    assert "partner" not in {e.stage for e in events}
    masked = run(iter_train(_noisy((1.5, 0.7, 0.7)), _tiny(epochs=2, prediction="masked"), method="self2self",
                            seed=0, preview_every=0))
    assert masked.params.partner == "none" and masked.partner is None
    off = run(iter_train(_noisy((1.5, 0.7, 0.7)), _tiny(epochs=2, partner="none"), method="self2self", seed=0,
                         preview_every=0))
    assert off.partner is None and off.student is not None


def test_the_prediction_is_the_mean_of_the_student_and_the_partner(correlated):
    noisy, model, _ = correlated
    both = run(iter_predict(model, noisy, seed=0))
    student = run(iter_predict(dataclasses.replace(model, partner=None), noisy, seed=0))
    partner = run(iter_predict(dataclasses.replace(model, student=model.partner, partner=None), noisy, seed=0))
    assert np.allclose(both, 0.5 * (student + partner), atol=1e-4 * float(np.abs(both).max()))
    assert not np.allclose(student, partner, atol=1e-3)


def test_the_pair_denoises_where_the_identity_does_not(correlated):
    """A sanity property of a 4-epoch training (17.1 dB raw, 18.3 dB after it, 2026-12-08): the pair removes
    noise and costs nothing against the student alone. Whether it beats a tuned Gaussian filter takes minutes
    of training on a real volume: benchmarks/denoise_tomograms.py measures that."""
    noisy, model, _ = correlated
    clean = _ground_truth()
    both = run(iter_predict(model, noisy, seed=0))
    student = run(iter_predict(dataclasses.replace(model, partner=None), noisy, seed=0))
    assert metrics.psnr(clean, both, fit=True) > metrics.psnr(clean, noisy, fit=True) + 0.75
    assert metrics.psnr(clean, both, fit=True) > metrics.psnr(clean, student, fit=True) - 0.5


def test_the_partner_is_saved_and_an_older_file_loads_without_one(correlated, tmp_path):
    noisy, model, _ = correlated
    loaded = TrainedDenoiser.load(save_model(tmp_path / "pair.pt", model.to_model_file()))
    assert loaded.partner is not None and loaded.params.partner == "r2r"
    assert np.array_equal(run(iter_predict(loaded, noisy, seed=0)), run(iter_predict(model, noisy, seed=0)))
    old = model.to_model_file()
    old.extra.pop("partner")
    old.config["params"].pop("partner")  # a file saved before the partner has neither
    before = TrainedDenoiser.load(save_model(tmp_path / "old.pt", old))
    assert before.partner is None and before.params.partner == "none"
    assert np.array_equal(run(iter_predict(before, noisy, seed=0)),
                          run(iter_predict(dataclasses.replace(model, partner=None), noisy, seed=0)))


def test_the_budget_keeps_a_quarter_for_the_partner():
    s2s = Self2Self()
    with_partner, without = _tiny(partner="r2r"), _tiny(partner="none")
    assert s2s.finish_share(with_partner) == PARTNER_SHARE and s2s.finish_share(without) == 0.0
    # The teacher's share: 60 % with a partner (the distillation gets 15 %), 80 % without.
    assert 1 - s2s.distill_share(with_partner) - s2s.finish_share(with_partner) == pytest.approx(0.6)
    assert 1 - s2s.distill_share(without) == pytest.approx(1 - DISTILL_SHARE)


def test_as_stage_renames_the_events_returns_the_result_and_closes_on_cancel():
    closed = []

    def job():
        try:
            for i in range(3):
                yield ProgressEvent("train", i + 1, 3)
            return "done"
        finally:
            closed.append(True)

    seen = []
    assert run(as_stage(job(), "partner"), seen.append) == "done"
    assert [e.stage for e in seen] == ["partner"] * 3 and [e.step for e in seen] == [1, 2, 3]
    cancelled = as_stage(job(), "partner")
    next(cancelled)
    cancelled.close()
    assert closed == [True, True]
