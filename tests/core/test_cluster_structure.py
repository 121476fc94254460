"""The structure test: noise of any spectrum is reported as having no classes; real classes are not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_cryoden.cluster import PCAKMeansParams, cluster
from napari_cryoden.cluster.structure import Z_MIN, NoStructureWarning, structure_test
from napari_cryoden.sample_data import sample_particles


def test_separated_blobs_have_structure_and_one_gaussian_cloud_has_none():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (4, 10))
    blobs = np.concatenate([c + rng.normal(0, 1, (150, 10)) for c in centres])
    cloud = rng.multivariate_normal(np.zeros(10), np.diag(np.linspace(1, 20, 10)), size=600)  # anisotropic
    assert structure_test(blobs, 4).z > 10 * Z_MIN
    assert structure_test(cloud, 4).z < Z_MIN


def _run(images, k=3):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cluster(images, k, method="pca-kmeans", params=PCAKMeansParams(prealign_iterations=2),
                         averages=False)
    return result, [w for w in caught if issubclass(w.category, NoStructureWarning)]


@pytest.mark.parametrize("kind", ["white", "correlated"])
def test_pure_noise_is_reported_as_having_no_classes(kind):
    noise = np.random.default_rng(1).standard_normal((240, 32, 32)).astype(np.float32)
    if kind == "correlated":
        noise = np.stack([gaussian_filter(im, 1.5) for im in noise])
    result, caught = _run(noise)
    assert result.info["structure"]["z"] < Z_MIN
    assert len(caught) == 1 and "no clear class structure" in str(caught[0].message)


def test_real_classes_raise_no_warning():
    sim = sample_particles(n_particles=240, box=64, snr=1.0, seed=3)
    result, caught = _run(sim.images)
    assert result.info["structure"]["z"] > 2 * Z_MIN and not caught  # measured z ≈ 23 (noise: ≈ -1.5)
