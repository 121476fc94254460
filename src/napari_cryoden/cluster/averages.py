"""Class averages: each class's members aligned to each other (classical alignment), ordered by size."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..align.cross_correlation import ClassicalParams, iter_align_to_reference
from ..align.sources import RowsSource
from ..align.transforms import align_images
from ..io.mrc import release_pages
from ..progress import ProgressEvent
from .mra import class_means


@dataclass(frozen=True)
class ClassAverages:
    """Averages (k, N, N) indexed by class (class 0 = the largest), member counts (k,), and per particle:
    the angle (n,) and origin (n, 2, pixels) that align it to its class average (RELION convention), the
    normalised cross-correlation with that average (``score``, in [-1, 1]) and the distance to it
    ``sqrt(2 - 2 score)`` (of unit-norm images)."""

    averages: np.ndarray
    counts: np.ndarray
    angles: np.ndarray
    origins: np.ndarray
    score: np.ndarray
    distance: np.ndarray


def mean_aligned(images: np.ndarray, labels: np.ndarray, k: int, angles, origins) -> tuple[np.ndarray, np.ndarray]:
    """(k, N, N) means of each class's members after ``align_images(particle, angle, origin)`` (bicubic);
    counts (k,)."""
    return class_means(images, labels, k, np.asarray(angles), np.asarray(origins), mode="bicubic")


def size_order(labels: np.ndarray, k: int) -> np.ndarray:
    """Old label of each new class: ``order[c]`` is the c-th largest class (ties: lower label first)."""
    counts = np.bincount(labels, minlength=k)
    return np.lexsort((np.arange(k), -counts))


def iter_class_averages(images: np.ndarray, labels: np.ndarray, k: int, *, angles=None, origins=None,
                        refine: bool = True, max_shift: float | None = None, device="cpu"
                        ) -> Generator[ProgressEvent, None, ClassAverages]:
    """Class averages of (n, N, N) ``images`` labelled 0..k-1 (label 0 should be the largest class).

    ``angles``/``origins`` (from the clustering) give a first average per class; with ``refine`` every member
    is then aligned to its class's average by the classical cross-correlation code (full rotation search,
    ±``max_shift`` pixels, default box / 8) and the class is re-averaged. Without starting parameters the
    plain mean starts that alignment.
    """
    images = np.asarray(images, dtype=np.float32)
    n, box = images.shape[0], images.shape[-1]
    labels = np.asarray(labels, dtype=np.int64)
    angles = np.zeros(n) if angles is None else np.asarray(angles, dtype=np.float64)
    origins = np.zeros((n, 2)) if origins is None else np.asarray(origins, dtype=np.float64)
    averages, counts = mean_aligned(images, labels, k, angles, origins)
    score = np.zeros(n)
    if refine:
        params = ClassicalParams(max_shift=max_shift if max_shift is not None else box / 8, batch_size=1024)
        angles, origins = angles.copy(), origins.copy()
        for c in range(k):
            rows = np.flatnonzero(labels == c)
            if not len(rows) or not np.any(averages[c]):
                continue
            res = yield from iter_align_to_reference(RowsSource(images, rows), averages[c], params, device=device,
                                                     keep_aligned=False)
            angles[rows], origins[rows], score[rows] = res.angles, res.origins, res.scores
            release_pages(images)
            averages[c] = res.average
    else:
        unit_averages = _unit(averages)
        for start in range(0, n, 4096):  # batch by batch: a float64 copy of a 10^5 stack would be GBs
            stop = min(n, start + 4096)
            aligned = _unit(align_images(np.asarray(images[start:stop]), angles=angles[start:stop],
                                         shifts=origins[start:stop]))
            score[start:stop] = np.einsum("nij,nij->n", aligned, unit_averages[labels[start:stop]])
            release_pages(images)
    distance = np.sqrt(np.clip(2.0 - 2.0 * score, 0.0, None))
    return ClassAverages(averages, counts, angles, origins, score, distance)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean((-2, -1), keepdims=True)
    return x / np.maximum(np.sqrt((x**2).sum((-2, -1), keepdims=True)), 1e-12)
