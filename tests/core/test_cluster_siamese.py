"""The Siamese stage on its own (no MRA refinement): its loss, pairs and confidences on hand-computed cases, the
noise measurement, rotation invariance of the polar and template encoders, identity kept by the augmentation, a known answer
where PCA + KMeans fails, and bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_cryoden.align import transform_images
from napari_cryoden.cluster import SiameseParams, cluster, contrastive_loss, iter_train_siamese
from napari_cryoden.cluster.pseudo_labels import (
    confident_subset,
    kmeans_labels,
    label_confidence,
    noise_level,
    pca_features,
    sample_training_pairs,
    work_images,
)
from napari_cryoden.cluster.siamese import Encoder, PolarEncoder, TemplateEncoder, build_encoder, embed
from napari_cryoden.errors import CryodenInputError
from napari_cryoden.metrics import adjusted_rand_index
from napari_cryoden.progress import run
from napari_cryoden.sample_data import SAMPLE_CLASS_VIEWS, builtin_map
from napari_cryoden.simulate import simulate_particles

BOX = 32


def simulate(n: int, snr: float, seed: int, *, max_shift: float = 0.0):
    """Three views of the built-in map, random in-plane angles (what a failed pre-alignment leaves)."""
    m = builtin_map()
    sim = simulate_particles(m.data, voxel_size=m.pixel_size, pixel_size=m.pixel_size * 56 / BOX * 0.9,
                             n_particles=n, box=BOX, class_views=SAMPLE_CLASS_VIEWS, max_shift=max_shift, snr=snr,
                             mask_radius=BOX * 0.4, seed=seed)
    return work_images(sim.images, work_box=BOX), sim.classes


# ------------------------------------------------------------------------------------------ hand-computed
def test_contrastive_loss_on_hand_computed_pairs_with_and_without_weights():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [0.6, 0.8], [1.0, 1.0], [3.0, 4.0]])
    y = torch.tensor([0.0, 1.0, 1.0, 1.0])  # positive d=5; negative d=1; negative d=0; negative d=5 > margin
    per_pair = [25.0, 1.0, 4.0, 0.0]  # d², (2 − 1)², (2 − 0)², 0
    assert float(contrastive_loss(a, b, y, margin=2.0)) == pytest.approx(sum(per_pair) / 8, rel=1e-5)
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])  # a left-out pair (weight 0) does not count
    expected = (25 + 0 + 2 * 4 + 0) / (2 * 4)
    assert float(contrastive_loss(a, b, y, margin=2.0, weights=w)) == pytest.approx(expected, rel=1e-5)


def test_label_confidence_is_the_margin_between_the_two_nearest_centres():
    features = np.array([[0.0], [1.0], [4.0], [10.0], [11.0]])
    labels = np.array([0, 0, 0, 1, 1])
    c0, c1 = 5 / 3, 10.5
    own = np.abs(features[:, 0] - np.where(labels == 0, c0, c1))
    other = np.abs(features[:, 0] - np.where(labels == 0, c1, c0))
    conf = label_confidence(features, labels, 2)
    np.testing.assert_allclose(conf, (other - own) / (other + own), rtol=1e-9)
    # The particle at 4 is the one nearest the boundary: the least sure of class 0, and left out first.
    assert conf.argmin() == 2
    assert confident_subset(conf, labels, 0.8).tolist() == [True, True, False, True, True]
    assert confident_subset(conf, labels, 0.01).sum() == 2  # at least one per class


def test_pairs_are_positives_of_one_particle_or_confident_same_class_and_confident_negatives():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    keep = np.zeros(100, bool)
    keep[::2] = True  # half the particles are confident
    i, j, y, same = sample_training_pairs(labels, keep, 400, np.random.default_rng(0), instance_fraction=0.5)
    assert len(i) == len(j) == len(y) == len(same) == 400
    assert y.sum() == 200  # half negatives
    assert same.sum() == 100 and np.all(i[same] == j[same]) and np.all(y[same] == 0)
    pseudo = ~same
    assert np.all(keep[i[pseudo]]) and np.all(keep[j[pseudo]])  # uncertain labels left out
    assert np.all(labels[i[pseudo & (y == 0)]] == labels[j[pseudo & (y == 0)]])
    assert np.all(labels[i[y == 1]] != labels[j[y == 1]])
    assert set(labels[i[y == 1]]) == {0, 1, 2}  # every class is used, the small one too


def test_noise_level_is_measured_beside_the_signal():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    blobs = np.stack([np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / 20.0) for dx, dy in ((-4, 0), (4, 2), (0, -5))])
    signal = blobs[rng.integers(0, 3, 600)] * rng.uniform(2, 4, (600, 1, 1))
    for sigma in (0.3, 1.0):
        measured = noise_level(signal + rng.normal(0, sigma, signal.shape), components=5)
        assert measured == pytest.approx(sigma, rel=0.1)


# ------------------------------------------------------------------------------------------ invariance
def test_polar_and_template_encoders_are_invariant_to_rotation_by_construction():
    torch.manual_seed(0)
    images, _ = simulate(6, None, seed=0)
    turned = transform_images(images, angles=90.0)  # a multiple of the angular sampling: exact
    polar, plain = PolarEncoder().eval(), Encoder(channels=8).eval()
    templates = TemplateEncoder(templates=3, shift=1.0).eval()  # the shifted centres are a symmetric 3 × 3 grid
    with torch.no_grad():
        for net, bound in ((polar, 1e-3), (templates, 1e-3), (plain, None)):
            a, b = net(torch.as_tensor(images)[:, None]), net(torch.as_tensor(turned)[:, None])
            change = float(((a - b).norm(dim=1) / a.norm(dim=1)).max())
            if bound is None:
                assert change > 0.05  # the cartesian encoder is not: the check can fail
            else:
                assert change < bound


def test_augmented_copy_embeds_nearer_its_source_than_other_classes_after_a_short_training():
    # Train briefly on one stack, then turn and shift particles of another stack by random amounts (what the
    # alignment gets wrong) and ask whether each copy is nearer its own source than any particle of another
    # class. Baselines: the same check on the untrained encoder (same seed, random templates) and on the PCA
    # scores. Measured (stacks 1 and 5, training seeds 0-1, one thread, default template encoder): trained 1.0;
    # untrained 0.53-0.58; PCA 0.17. (Templates started from the class means but not trained keep 0.98-1.0:
    # the template encoder's invariance is built in; the known-answer test below is where training shows.)
    images, truth = simulate(90, 1.0, seed=1)
    params = SiameseParams(rounds=1, min_steps=40, max_steps=40, batch_size=32, seed=0)
    res = run(iter_train_siamese(images, 3, truth, params))
    net = build_encoder(res.model.config)
    net.load_state_dict(res.model.state_dict["encoder"])
    torch.manual_seed(params.seed)
    untrained = build_encoder(res.model.config)
    source, classes = simulate(60, 1.0, seed=2)
    rng = np.random.default_rng(3)
    copies = transform_images(source, angles=rng.uniform(0, 360, 60), shifts=rng.uniform(-1, 1, (60, 2)))

    def kept(e_source, e_copy):
        d = np.linalg.norm(e_copy[:, None] - e_source[None], axis=-1)
        own = d[np.arange(60), np.arange(60)]
        other = np.where(classes[None] != classes[:, None], d, np.inf).min(1)
        return float(np.mean(own < other))

    trained = kept(embed(net, source), embed(net, copies))
    baselines = {"untrained": kept(embed(untrained, source), embed(untrained, copies)),
                 "pca": kept(*np.split(pca_features(np.concatenate([source, copies]), 20), 2))}
    assert trained > 0.8 and trained > max(baselines.values()) + 0.1, (trained, baselines)


# ------------------------------------------------------------------------------------------ known answer
def test_learned_embedding_separates_classes_where_pca_kmeans_on_prealigned_particles_fails():
    # The Siamese stage alone, started from PCA + KMeans, no MRA anywhere. The stack is what a failed
    # pre-alignment hands over: every particle at a random in-plane angle (120 particles, 3 views, SNR 0.5).
    # Baselines: PCA + KMeans (the start), KMeans on the untrained encoder (same seed, random templates) and on
    # the encoder whose templates start from the PCA + KMeans class means but are not trained (learning rate 0:
    # a classical rotation-invariant template match), so the check measures the training, not only the
    # architecture. Measured (stacks 4-6, training seeds 0-1, one thread, learning rate 1e-4): learned 0.90-1.0
    # (0.90 / 0.93 on this stack); PCA + KMeans 0.10 (this stack) / 0.49; untrained 0.18-0.57; templates not
    # trained 0.57-0.98 (0.61 / 0.68 on this stack).
    images, truth = simulate(120, 0.5, seed=4)
    start, _ = kmeans_labels(pca_features(images, 20), 3)
    pca_ari = adjusted_rand_index(truth, start)
    params = SiameseParams(rounds=2, min_steps=30, max_steps=30, batch_size=32, seed=0)
    res = run(iter_train_siamese(images, 3, start, params))
    learned = adjusted_rand_index(truth, res.labels)
    matched = adjusted_rand_index(truth, run(iter_train_siamese(images, 3, start, replace(
        params, rounds=1, learning_rate=0.0))).labels)
    torch.manual_seed(params.seed)
    untrained = adjusted_rand_index(truth, kmeans_labels(embed(build_encoder(res.model.config), images), 3)[0])
    assert pca_ari < 0.3, pca_ari
    assert learned > 0.8 and learned > max(pca_ari, untrained, matched) + 0.15, (learned, pca_ari, untrained,
                                                                                  matched)


# ------------------------------------------------------------------------------------------ bad input
def test_more_classes_than_particles_or_one_particle_is_a_clear_input_error():
    images, _ = simulate(4, 1.0, seed=0)
    with pytest.raises(CryodenInputError, match="between 2 and 4"):
        run(iter_train_siamese(images, 5, np.zeros(4, np.int64)))
    with pytest.raises(CryodenInputError, match="at least 2"):
        run(iter_train_siamese(images[:1], 2, np.zeros(1, np.int64)))
    with pytest.raises(CryodenInputError, match="between 2 and the number of particles"):
        cluster(images, 5, method="siamese", averages=False)
    with pytest.raises(CryodenInputError, match="at least 2 particles"):
        cluster(images[:1], 2, method="siamese", averages=False)
