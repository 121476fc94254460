"""Errors of recovered in-plane alignment parameters (angles in degrees, shifts in pixels or Å)."""

from __future__ import annotations

import logging

import numpy as np

from napari_cryoden.errors import CryodenInputError

logger = logging.getLogger(__name__)

__all__ = [
    "angular_distance",
    "angular_error",
    "remove_global_rotation",
    "shift_error",
]


def angular_distance(a, b, *, period: float = 360.0):
    """Circular distance between angles, elementwise.

    Parameters
    ----------
    a, b : array_like
        Angles in degrees (broadcastable).
    period : float
        Angles that differ by a multiple of ``period`` are the same.

    Returns
    -------
    float or np.ndarray
        ``|((a - b + period/2) mod period) - period/2|``, in [0, period/2].
    """
    if not period > 0:
        raise CryodenInputError(None, f"period must be positive, got {period}")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.abs(np.mod(diff + period / 2.0, period) - period / 2.0)


def _check_symmetry(symmetry: int) -> int:
    if int(symmetry) != symmetry or symmetry < 1:
        raise CryodenInputError(None, f"symmetry must be a positive integer (n-fold), got {symmetry}")
    return int(symmetry)


def angular_error(estimate, truth, *, symmetry: int = 1, period: float = 360.0):
    """Circular error of estimated angles, modulo the in-plane symmetry.

    Parameters
    ----------
    estimate, truth : array_like
        Angles in degrees (broadcastable).
    symmetry : int
        n-fold rotational symmetry of the particle: angles that differ by ``period / symmetry`` are
        indistinguishable.
    period : float
        Full turn, 360 degrees.

    Returns
    -------
    float or np.ndarray
        Error in degrees, in [0, period / (2 * symmetry)].
    """
    symmetry = _check_symmetry(symmetry)
    return angular_distance(estimate, truth, period=period / symmetry)


def shift_error(estimate_xy, truth_xy) -> np.ndarray:
    """Euclidean distance between estimated and true shifts, per particle.

    Parameters
    ----------
    estimate_xy, truth_xy : array_like
        ``(n, 2)`` shifts (x, y), in pixels or Å (the result is in the same unit).

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 distances.
    """
    est = np.asarray(estimate_xy, dtype=np.float64)
    truth = np.asarray(truth_xy, dtype=np.float64)
    if est.shape != truth.shape:
        raise CryodenInputError(
            None, f"estimate and truth shifts must have the same shape, got {est.shape} and {truth.shape}"
        )
    if est.ndim != 2 or est.shape[1] != 2:
        raise CryodenInputError(None, f"shifts must be an (n, 2) array, got shape {est.shape}")
    return np.linalg.norm(est - truth, axis=1)


def remove_global_rotation(
    estimate_deg, truth_deg, *, symmetry: int = 1, period: float = 360.0
) -> tuple[float, np.ndarray]:
    """Remove the one global rotation by which estimated angles differ from the true ones.

    Reference-free alignment (2D classification, self-supervised alignment) recovers angles only up to
    one global rotation of the whole set: rotating the class average by ``offset`` and every particle
    angle by the same ``offset`` describes the same data. Before comparing with the truth, that rotation
    is found and taken out.

    The offset is the circular median of the differences: the angle that minimises the summed circular
    error ``sum angular_error(estimate - offset, truth, symmetry=symmetry)``. The minimum of this
    piecewise-linear function lies at one of the differences, and all of them are tried exactly in
    O(n log n), so the result is robust to outliers and to wrap-around.

    Parameters
    ----------
    estimate_deg, truth_deg : array_like
        ``(n,)`` angles in degrees.
    symmetry : int
        n-fold in-plane symmetry; the offset is then defined modulo ``period / symmetry``.
    period : float
        Full turn, 360 degrees.

    Returns
    -------
    offset : float
        Degrees, in (-period / (2 symmetry), period / (2 symmetry)]; ``estimate ≈ truth + offset``.
    corrected : np.ndarray
        ``(n,)`` float64 ``estimate - offset`` wrapped into [0, period).
    """
    symmetry = _check_symmetry(symmetry)
    est = np.asarray(estimate_deg, dtype=np.float64)
    truth = np.asarray(truth_deg, dtype=np.float64)
    if est.shape != truth.shape:
        raise CryodenInputError(
            None, f"estimate and truth angles must have the same shape, got {est.shape} and {truth.shape}"
        )
    if est.ndim != 1 or est.size == 0:
        raise CryodenInputError(None, f"angles must be a non-empty (n,) array, got shape {est.shape}")
    p = period / symmetry

    diffs = np.sort(np.mod(est - truth, p))
    n = diffs.size
    tiled = np.concatenate([diffs - p, diffs, diffs + p])
    prefix = np.concatenate([[0.0], np.cumsum(tiled)])
    # For candidate offset o, every difference has exactly one copy in the window (o - p/2, o + p/2],
    # and its circular distance to o is its plain distance there.
    lo = np.searchsorted(tiled, diffs - p / 2.0, side="right")
    mid = np.searchsorted(tiled, diffs, side="right")
    hi = lo + n
    left = diffs * (mid - lo) - (prefix[mid] - prefix[lo])
    right = (prefix[hi] - prefix[mid]) - diffs * (hi - mid)
    best = int(np.argmin(left + right))

    offset = float(diffs[best])
    offset = float(p / 2.0 - np.mod(p / 2.0 - offset, p))  # into (-p/2, p/2]
    corrected = np.mod(est - offset, period)
    logger.debug("global rotation offset %.3f degrees (symmetry %d)", offset, symmetry)
    return offset, corrected
