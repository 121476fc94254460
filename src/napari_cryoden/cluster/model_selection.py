"""Choosing the number of classes: are two classes the same view seen through noise?

The silhouette of KMeans in PCA or embedding space rises with K on cryo-EM stacks (the views of a molecule and
the residual misalignments form continua that more centres always fit better; `docs/cluster.md` has the
measurements), so it over-splits. The criterion here asks what a microscopist asks of class averages: does
any pair of classes look like the same view? Two averages of one view differ only by their noise, and how much
they may differ follows from each class's own reproducibility, measured by splitting its members in two:

- ``h_c``: correlation of the averages of two random halves of class c (in a soft disc);
- ``r_c = 2 h_c / (1 + h_c)``: the expected correlation of the full average with the noise-free view
  squared (Spearman-Brown), so two averages of the *same* view correlate by ``sqrt(r_i r_j)``;
- ``rho_ij``: the best correlation of average j with average i over rotations and shifts, divided by
  ``sqrt(r_i r_j)``. About 1 when i and j are one view, lower when they differ.

K is then the largest K of the range whose classes are all distinct (every ``rho_ij`` below a threshold),
i.e. the most classes the data can tell apart; the threshold was chosen on the tuning stacks of
`benchmarks/cluster_embedding.py` (not on the benchmark it is reported on).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..align.cross_correlation import ClassicalParams, align_to_reference
from .averages import _unit, mean_aligned
from .pseudo_labels import soft_mask

#: rho above which two classes count as one view. Chosen on the tuning stacks (8 classes = 4 views x 2 maps,
#: no CTF, 2,000 particles; PCA + KMeans + MRA at each K): at the true K the closest pair (the neighbouring views
#: 30° apart) reached 0.880 / 0.865 / 0.861 (SNR 0.1 seed 0 / SNR 0.05 seed 1 / SNR 0.1 seed 2), one K more
#: 0.928 / 0.879 / 0.993. 0.91 separates the two SNR 0.1 stacks; on the SNR 0.05 one no threshold does (K + 1 is
#: then picked), and a lower one would cut the SNR 0.1 stacks short.
SAME_VIEW_RHO = 0.91

#: Classes with fewer members have no meaningful half-split reliability and are left out of the test.
MIN_MEMBERS = 8


def class_distinctness(images, labels: np.ndarray, k: int, angles: np.ndarray, origins: np.ndarray, *,
                       seed: int = 0, mask_fraction: float = 0.4) -> dict:
    """How alike the classes' averages are, against how alike two averages of one view would be.

    Parameters
    ----------
    images
        (n, N, N) particles (array or memory map), as clustered.
    labels, k
        Class of every particle (0..k-1).
    angles, origins
        Per-particle alignment to its class (``ClusterResult.info["alignment"]``; RELION convention).

    Returns
    -------
    dict
        ``rho`` (k, k) with NaN on the diagonal and for classes that cannot be measured; ``reliability`` (k,)
        the ``r_c`` above; ``max_rho`` and the ``pair`` (i, j) where it is reached; ``unmeasurable``: classes
        under :data:`MIN_MEMBERS` members or with halves that do not correlate at all — then ``max_rho`` is
        infinite (such a K is not resolved).
    """
    labels = np.asarray(labels, dtype=np.int64)
    angles, origins = np.asarray(angles, dtype=np.float64), np.asarray(origins, dtype=np.float64)
    box = images.shape[-1]
    disc = soft_mask(box, mask_fraction * box).numpy().astype(np.float64)
    half = np.random.default_rng(seed).integers(0, 2, len(labels))
    # One pass over the stack (a memory map is read batch by batch): class c's halves are classes c and k + c.
    means, sizes = mean_aligned(images, labels + k * half, 2 * k, angles, origins)
    halves = (means[:k], means[k:])
    counts = sizes[:k] + sizes[k:]
    full = (halves[0] * sizes[:k, None, None] + halves[1] * sizes[k:, None, None]) / np.maximum(counts, 1)[:, None, None]
    h = np.array([float(np.sum(_unit(halves[0][c] * disc) * _unit(halves[1][c] * disc))) for c in range(k)])
    reliability = np.clip(2 * h / (1 + h), 1e-6, 1.0)
    usable = (counts >= MIN_MEMBERS) & (h > 0)
    rho = np.full((k, k), np.nan)
    masked = (full * disc).astype(np.float32)
    params = ClassicalParams(max_shift=max(1.0, box / 16), structure_check=False)
    for i in np.flatnonzero(usable):
        fit = align_to_reference(masked, masked[i], params)
        for j in np.flatnonzero(usable):
            if j != i:
                rho[i, j] = float(fit.scores[j]) / np.sqrt(reliability[i] * reliability[j])
    rho = np.fmax(rho, rho.T)  # the search is not exactly symmetric: keep the closer of the two
    small = [int(c) for c in np.flatnonzero(~usable)]
    if small:  # a class too small to measure cannot be shown distinct: such a K does not count as resolved
        return {"rho": rho, "reliability": reliability, "max_rho": float("inf"), "pair": None, "unmeasurable": small}
    if k < 2:
        return {"rho": rho, "reliability": reliability, "max_rho": float("nan"), "pair": None, "unmeasurable": []}
    i, j = np.unravel_index(np.nanargmax(rho), rho.shape)
    return {"rho": rho, "reliability": reliability, "max_rho": float(rho[i, j]), "pair": (int(i), int(j)),
            "unmeasurable": []}


def choose_distinct_k(max_rho: Mapping[int, float], *, threshold: float = SAME_VIEW_RHO) -> int:
    """The largest K whose classes are all distinct (``max_rho[K] < threshold``); the smallest K when none is."""
    ks = sorted(int(k) for k in max_rho)
    distinct = [k for k in ks if np.isfinite(max_rho[k]) and max_rho[k] < threshold]
    return max(distinct) if distinct else ks[0]
