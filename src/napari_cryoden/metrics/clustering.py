"""Agreement between true classes and a clustering (2D classification) of the same particles."""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from napari_cryoden.errors import CryodenInputError

logger = logging.getLogger(__name__)

__all__ = [
    "adjusted_rand_index",
    "clustering_accuracy",
    "match_labels",
    "normalized_mutual_info",
]


def _as_labels(truth, estimate) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    estimate = np.asarray(estimate)
    if truth.ndim != 1 or estimate.ndim != 1:
        raise CryodenInputError(None, f"labels must be 1D, got shapes {truth.shape} and {estimate.shape}")
    if truth.shape != estimate.shape:
        raise CryodenInputError(
            None, f"truth and estimate must label the same particles, got {truth.size} and {estimate.size} labels"
        )
    if truth.size == 0:
        raise CryodenInputError(None, "no labels given")
    return truth, estimate


def adjusted_rand_index(truth, estimate) -> float:
    """Adjusted Rand index (:func:`sklearn.metrics.adjusted_rand_score`): 1 for identical partitions, ~0 for chance.

    Parameters
    ----------
    truth, estimate : array_like
        ``(n,)`` labels; the label values themselves do not matter.
    """
    truth, estimate = _as_labels(truth, estimate)
    return float(adjusted_rand_score(truth, estimate))


def normalized_mutual_info(truth, estimate, *, average_method: str = "arithmetic") -> float:
    """Normalised mutual information (:func:`sklearn.metrics.normalized_mutual_info_score`), in [0, 1].

    Parameters
    ----------
    truth, estimate : array_like
        ``(n,)`` labels; the label values themselves do not matter.
    average_method : {"arithmetic", "geometric", "min", "max"}
        How the two entropies are averaged in the normaliser.
    """
    truth, estimate = _as_labels(truth, estimate)
    return float(normalized_mutual_info_score(truth, estimate, average_method=average_method))


def _hungarian(truth: np.ndarray, estimate: np.ndarray):
    truth_labels, truth_index = np.unique(truth, return_inverse=True)
    est_labels, est_index = np.unique(estimate, return_inverse=True)
    table = contingency_matrix(truth_index, est_index)  # rows: true classes, columns: clusters
    rows, cols = linear_sum_assignment(table, maximize=True)
    return truth_labels, est_labels, table, rows, cols


def match_labels(truth, estimate) -> dict:
    """One-to-one matching of clusters to true classes that maximises the number of agreeing particles.

    Parameters
    ----------
    truth, estimate : array_like
        ``(n,)`` labels of any values; the numbers of classes and clusters may differ.

    Returns
    -------
    dict
        ``{estimate_label: truth_label}`` (Python scalars). With more clusters than classes the surplus
        clusters are left out; with fewer, some classes are unmatched.
    """
    truth, estimate = _as_labels(truth, estimate)
    truth_labels, est_labels, _, rows, cols = _hungarian(truth, estimate)
    return {est_labels[c].item(): truth_labels[r].item() for r, c in zip(rows, cols)}


def clustering_accuracy(truth, estimate) -> float:
    """Fraction of particles whose cluster is matched to their true class under the best one-to-one matching.

    The matching is the Hungarian optimum (:func:`scipy.optimize.linear_sum_assignment`) on the contingency
    table, as returned by :func:`match_labels`; particles in unmatched clusters count as wrong.

    Parameters
    ----------
    truth, estimate : array_like
        ``(n,)`` labels of any values; the numbers of classes and clusters may differ.

    Returns
    -------
    float
        In [0, 1]; 1 when the clustering equals the truth up to renaming the labels.
    """
    truth, estimate = _as_labels(truth, estimate)
    _, _, table, rows, cols = _hungarian(truth, estimate)
    return float(table[rows, cols].sum() / truth.size)
