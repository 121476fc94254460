"""Clustering: known classes are recovered, averages match the truth, the loss is its formula, seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoden.align import align_images, align_to_reference, transform_images
from napari_cryoden.align.cross_correlation import ClassicalParams
from napari_cryoden.cluster import (
    METHODS,
    PARAMS,
    MRAParams,
    PCAKMeansParams,
    SiameseParams,
    cluster,
    contrastive_loss,
    iter_train_siamese,
)
from napari_cryoden.cluster.mra import compose
from napari_cryoden.cluster.pseudo_labels import order_by_size, sample_pairs, work_images
from napari_cryoden.cluster.siamese import build_encoder, embed
from napari_cryoden.metrics import adjusted_rand_index
from napari_cryoden.models import load_model, save_model
from napari_cryoden.progress import run
from napari_cryoden.sample_data import SAMPLE_CLASS_VIEWS, builtin_map
from napari_cryoden.simulate import simulate_particles

BOX = 40
#: Short training: a handful of steps is enough at these SNRs, and keeps the file fast on 2 cores.
FAST_SIAMESE = SiameseParams(rounds=2, min_steps=8, max_steps=8, batch_size=32, refine_iterations=2,
                             prealign_iterations=2)


def simulate(n: int, snr: float | None, seed: int):
    m = builtin_map()
    return simulate_particles(m.data, voxel_size=m.pixel_size, pixel_size=m.pixel_size * 56 / BOX * 0.9,
                              n_particles=n, box=BOX, class_views=SAMPLE_CLASS_VIEWS, max_shift=3.0,
                              snr=snr, mask_radius=BOX * 0.4, seed=seed)


@pytest.fixture(scope="module")
def clean_sim():
    """Three views, high SNR (2), unequal class sizes (48 / 36 / 24 particles)."""
    sim = simulate(144, 2.0, seed=3)
    keep = np.concatenate([np.flatnonzero(sim.classes == c)[:size] for c, size in ((0, 24), (1, 48), (2, 36))])
    keep.sort()
    return sim.images[keep], sim.classes[keep], sim.references


@pytest.fixture(scope="module")
def noisy_sim():
    sim = simulate(120, 0.3, seed=5)
    return sim.images, sim.classes, sim.references


def test_registry_lists_every_method_with_its_params():
    assert METHODS == ("siamese", "mra", "pca-kmeans")
    assert set(PARAMS) == set(METHODS)
    for cls in PARAMS.values():
        p = cls()
        with pytest.raises(AttributeError):
            p.seed = 1  # frozen: safe to hand to a worker thread


def test_contrastive_loss_matches_its_formula_on_hand_computed_pairs():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [0.6, 0.8], [1.0, 1.0], [3.0, 4.0]])
    y = torch.tensor([0.0, 1.0, 1.0, 1.0])  # same, different (d=1), different (d=0), different (d=5 > margin)
    # (1/2N) Σ: same pair d² = 25; d=1 -> (2-1)² = 1; d=0 -> 4; d=5 -> 0.
    expected = (25 + 1 + 4 + 0) / (2 * 4)
    assert float(contrastive_loss(a, b, y, margin=2.0)) == pytest.approx(expected, rel=1e-5)


def test_pairs_are_half_same_half_different():
    labels = np.repeat([0, 1, 2], [50, 30, 5])
    i, j, y = sample_pairs(labels, 200, np.random.default_rng(0))
    assert y.sum() == 100
    assert np.all(labels[i[y == 0]] == labels[j[y == 0]])
    assert np.all(labels[i[y == 1]] != labels[j[y == 1]])


def test_order_by_size_numbers_the_largest_class_zero():
    labels = np.array([2, 2, 2, 0, 1, 1])
    assert order_by_size(labels, 3).tolist() == [0, 0, 0, 2, 1, 1]


def test_compose_equals_two_alignments():
    rng = np.random.default_rng(0)
    img = transform_images(rng.normal(size=(3, 32, 32)).astype(np.float32), angles=0.0)
    img = np.fft.irfft2(np.fft.rfft2(img) * (np.hypot(*np.meshgrid(np.fft.rfftfreq(32), np.fft.fftfreq(32))) < 0.15),
                        s=(32, 32)).astype(np.float32)  # smooth: interpolation errors stay small
    a0, o0 = np.array([30.0, 100.0, 250.0]), rng.uniform(-2, 2, (3, 2))
    a1, o1 = np.array([-20.0, 45.0, 10.0]), rng.uniform(-2, 2, (3, 2))
    twice = align_images(align_images(img, angles=a0, shifts=o0), angles=a1, shifts=o1)
    a, o = compose(a0, o0, a1, o1)
    once = align_images(img, angles=a, shifts=o)
    inner = slice(8, 24)
    assert np.abs(twice - once)[:, inner, inner].max() < 0.05 * np.abs(img).max()


@pytest.mark.parametrize("method", ["siamese", "mra"])
def test_well_separated_classes_are_recovered_exactly(clean_sim, method):
    images, truth, _ = clean_sim
    params = FAST_SIAMESE if method == "siamese" else MRAParams(iterations=6, prealign_iterations=2)
    res = cluster(images, 3, method=method, params=params, averages=False)
    assert adjusted_rand_index(truth, res.labels) == 1.0


def test_pca_kmeans_on_prealigned_images_recovers_clean_classes(clean_sim):
    images, truth, _ = clean_sim
    res = cluster(images, 3, method="pca-kmeans", params=PCAKMeansParams(prealign_iterations=2), averages=False)
    assert adjusted_rand_index(truth, res.labels) == 1.0


def test_averages_are_sorted_by_size_and_match_the_true_views(clean_sim):
    images, truth, refs = clean_sim
    res = cluster(images, 3, method="siamese", params=FAST_SIAMESE)
    counts = res.counts
    assert counts.tolist() == sorted(counts.tolist(), reverse=True) == [48, 36, 24]
    assert res.averages.averages.shape == (3, BOX, BOX)
    assert np.array_equal(res.averages.counts, counts)
    # Class c's particles are true class truth[labels == c]; its average matches that reference up to a
    # rotation and shift (found by the alignment code).
    for c in range(3):
        true_class = np.bincount(truth[res.labels == c]).argmax()
        fit = align_to_reference(res.averages.averages[c][None], refs[true_class], ClassicalParams(max_shift=6))
        assert fit.scores[0] > 0.9, (c, fit.scores[0])
    assert np.all((res.averages.score > 0) & (res.averages.score <= 1))
    assert np.allclose(res.averages.distance, np.sqrt(2 - 2 * res.averages.score))


def test_siamese_recovers_classes_at_moderate_snr(noisy_sim):
    # SNR 0.3, random psi and ±3 px shifts, 120 particles: measured ARI 1.0 (threshold leaves margin for
    # seeds and platforms; a wrong rotation handling gives ~0.1).
    images, truth, _ = noisy_sim
    res = cluster(images, 3, method="siamese", params=FAST_SIAMESE, averages=False)
    assert adjusted_rand_index(truth, res.labels) > 0.8


def test_labels_are_invariant_to_a_random_rotation_of_the_inputs(clean_sim):
    images, truth, _ = clean_sim
    rng = np.random.default_rng(1)
    turned = transform_images(images, angles=rng.uniform(0, 360, len(images)))
    a = cluster(images, 3, method="mra", params=MRAParams(iterations=6, prealign_iterations=2), averages=False)
    b = cluster(turned, 3, method="mra", params=MRAParams(iterations=6, prealign_iterations=2), averages=False)
    assert adjusted_rand_index(a.labels, b.labels) == 1.0


def test_siamese_loss_decreases_and_model_round_trips(noisy_sim, tmp_path):
    images, truth, _ = noisy_sim
    work = work_images(images, work_box=32)
    params = SiameseParams(rounds=1, min_steps=30, max_steps=30, batch_size=32, seed=0)
    events = []
    gen = iter_train_siamese(work, 3, truth, params)
    res = run(gen, events.append)
    losses = [e.loss for e in events if e.loss is not None]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert res.model.kind == "cluster/siamese"
    path = save_model(tmp_path / "siamese.pt", res.model)
    back = load_model(path, kind="cluster/siamese")
    net = build_encoder(back.config)
    net.load_state_dict(back.state_dict["encoder"])
    assert np.allclose(embed(net, work), res.embeddings, atol=1e-5)


def test_same_seed_same_labels(noisy_sim):
    images, _, _ = noisy_sim
    p = SiameseParams(rounds=1, min_steps=5, max_steps=5, batch_size=16, refine_iterations=1, prealign_iterations=1,
                      seed=7)
    a = cluster(images, 3, method="siamese", params=p, averages=False)
    b = cluster(images, 3, method="siamese", params=p, averages=False)
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.features, b.features)
