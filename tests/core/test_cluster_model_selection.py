"""Choosing K: two classes of one view look alike within their noise; classes of different views do not."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden.cluster import PCAKMeansParams, cluster, iter_cluster_range
from napari_cryoden.cluster.model_selection import SAME_VIEW_RHO, choose_distinct_k, class_distinctness
from napari_cryoden.progress import run
from napari_cryoden.sample_data import SAMPLE_CLASS_VIEWS, builtin_map
from napari_cryoden.simulate import simulate_particles

BOX = 40


@pytest.fixture(scope="module")
def views():
    """Three views of the built-in map, 40 particles each, SNR 0.5, random in-plane angle and shift."""
    m = builtin_map()
    return simulate_particles(m.data, voxel_size=m.pixel_size, pixel_size=m.pixel_size * 56 / BOX * 0.9,
                              n_particles=120, box=BOX, class_views=SAMPLE_CLASS_VIEWS, max_shift=3.0, snr=0.5,
                              mask_radius=BOX * 0.4, seed=4)


def test_one_view_split_in_two_looks_like_one_view_and_different_views_do_not(views):
    fit = cluster(views.images, 3, method="pca-kmeans", params=PCAKMeansParams(prealign_iterations=3,
                                                                                 refine_iterations=2),
                  averages=False)
    psi, origins = fit.info["alignment"]
    three = class_distinctness(views.images, fit.labels, 3, psi, origins)
    assert three["max_rho"] < SAME_VIEW_RHO - 0.1  # three real views: clearly distinct
    assert np.all((three["reliability"] > 0.3) & (three["reliability"] <= 1))
    # Split the largest class at random into two: same view, independent noise -> rho about 1.
    labels = fit.labels.copy()
    members = np.flatnonzero(labels == 0)
    labels[members[np.random.default_rng(0).permutation(members.size)[: members.size // 2]]] = 3
    four = class_distinctness(views.images, labels, 4, psi, origins)
    assert four["pair"] in ((0, 3), (3, 0))
    assert four["max_rho"] > SAME_VIEW_RHO
    assert four["max_rho"] < 1.3  # normalised by the halves' reliability, not an unbounded score
    # A class too small to measure cannot be shown distinct.
    labels[np.flatnonzero(labels == 3)[3:]] = 0
    tiny = class_distinctness(views.images, labels, 4, psi, origins)
    assert tiny["unmeasurable"] == [3] and tiny["max_rho"] == float("inf")


def test_choose_distinct_k_takes_the_largest_k_whose_classes_all_differ():
    assert choose_distinct_k({2: 0.3, 3: 0.5, 4: 0.97, 5: 0.99}) == 3
    assert choose_distinct_k({2: 0.3, 3: 0.95, 4: 0.6}) == 4  # the largest distinct one, not the first
    assert choose_distinct_k({3: 0.99, 4: 1.0}) == 3  # nothing distinct: the smallest K
    assert choose_distinct_k({2: float("nan"), 3: 0.5, 4: float("inf")}) == 3


@pytest.mark.filterwarnings("ignore::napari_cryoden.cluster.structure.NoStructureWarning")  # K = 2 of 3 views
def test_a_k_range_by_distinctness_finds_the_three_views(views):
    res = run(iter_cluster_range(views.images, [2, 3, 4, 5], criterion="distinct", method="pca-kmeans",
                                 params=PCAKMeansParams(prealign_iterations=3, refine_iterations=2), averages=False))
    assert res.k == 3
    rho = res.info["model_selection"]["max_rho"]
    assert rho[4] > SAME_VIEW_RHO and rho[5] > SAME_VIEW_RHO and rho[3] < SAME_VIEW_RHO
    with pytest.raises(ValueError, match="criterion"):
        run(iter_cluster_range(views.images, [2, 3], criterion="bic"))
