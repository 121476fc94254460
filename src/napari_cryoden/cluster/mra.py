"""Multi-reference alignment (MRA) classification, RELION-style 2D classification by hard assignment.

K references; every particle is compared with every reference over all in-plane rotations and a small grid
of shifts, assigned to the best, and each reference is re-averaged from its members aligned to it.

"Best" is RELION's: the highest Gaussian log-likelihood (``score="likelihood"``, the default). Each particle
is masked and scaled to unit norm (so the noise is about equally strong in every image), the references are
means of such images, and the score of reference r against particle x is ⟨x, r⟩ − ‖r‖²/2 in units of the
noise variance per pixel — the log-likelihood of x = r + white noise up to a term that does not depend on r.
The normalised cross-correlation ⟨x, r⟩ / ‖r‖ (``score="correlation"``, the default until 2026-12-07) divides
by the reference's norm instead, and so throws away how strong a particle's match should be: classes of
different mass or view differ in signal strength (the norm of their projections: up to 16 times between the
classes of the clustering tuning stack, 3.7 times in the held-out one), and a particle of a weak class that
correlates with the shape of a strong one goes to it. The likelihood classified the unbalanced tuning stacks
better from every start (``docs/cluster.md``, *MRA*).

Shifts first come from one classical reference-free alignment of the whole stack (:func:`prealign`, the
:mod:`napari_cryoden.align` code), which centres every particle; the search here then covers rotations
(``n_angles`` steps) and ±``search_shift`` pixels around that centre.

The search is one matrix product per shift: particles (n, m²) times the bank of rotated references
(K·A, m²), on images Fourier-cropped to ``work_box`` — cheap enough to run several iterations over 10⁴
particles on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..align.cross_correlation import ClassicalParams, iter_align_reference_free
from ..align.transforms import align_images, transform_images
from ..io.mrc import release_pages
from ..params import param, validate
from ..progress import ProgressEvent, StageClock
from .pseudo_labels import soft_mask

log = logging.getLogger(__name__)

#: How :class:`RotationalSearch` scores a particle against a reference (see the module docstring).
SCORES = ("likelihood", "correlation")


@dataclass(frozen=True)
class MRAParams:
    """Settings of multi-reference alignment classification (``mra``)."""

    iterations: int = param(10, "assign / re-average iterations (stops early when no particle changes class)",
                            min=1, max=200, basic=True)
    n_angles: int = param(72, "in-plane rotations searched (360 / n_angles degree steps)", min=4, max=720)
    search_shift: int = param(1, "shifts searched around the pre-aligned centre, ± pixels of the work box",
                              min=0, max=8, unit="px")
    work_box: int = param(32, "images are Fourier-cropped to this box for clustering (pixels)", min=16, unit="px")
    prealign_iterations: int = param(3, "passes of the classical reference-free pre-alignment (0: none)",
                                     min=0, max=20)
    max_shift: float = param(0.0, "largest shift of the pre-alignment, pixels of the input (0: box / 8)",
                             min=0.0, unit="px")
    score: str = param("likelihood", "how a particle is compared with a reference: Gaussian log-likelihood "
                       "(RELION's) or normalised cross-correlation", choices=SCORES)
    seed: int = param(0, "random seed")


# -------------------------------------------------------------------------------------- prealignment
@dataclass(frozen=True)
class Prealignment:
    """Classical reference-free alignment of the whole stack on the work grid.

    ``angles`` (n,) degrees and ``origins`` (n, 2) in *input* pixels (RELION convention); ``aligned``
    (n, m, m) work images after it; ``scale`` = input box / work box.
    """

    angles: np.ndarray
    origins: np.ndarray
    aligned: np.ndarray | None  # None once the clustering front end has masked it in place
    scale: float


def iter_prealign(work: np.ndarray, *, box: int, iterations: int, max_shift: float, seed: int,
                  device="cpu") -> Generator[ProgressEvent, None, Prealignment]:
    """Classical reference-free alignment (:func:`~napari_cryoden.align.iter_align_reference_free`) of
    (n, m, m) work images of particles of ``box`` pixels; ``iterations`` 0 returns the identity."""
    n, m = work.shape[0], work.shape[-1]
    scale = box / m
    if iterations == 0:
        return Prealignment(np.zeros(n), np.zeros((n, 2)), work, scale)
    shift = (max_shift or box / 8) / scale
    params = ClassicalParams(max_shift=shift, iterations=iterations, seed_images=min(256, n), batch_size=1024,
                             structure_check=False, seed=seed)  # clustering runs its own structure test
    result = yield from iter_align_reference_free(work, params, device=device, keep_aligned=True)
    return Prealignment(result.angles, result.origins * scale, result.aligned, scale)


def compose(angles0, origins0, angles1, origins1) -> tuple[np.ndarray, np.ndarray]:
    """Parameters of ``align(align(x, a0, o0), a1, o1)`` as one alignment ``align(x, a, o)``.

    ``aligned(q) = x(R(-a0) (R(-a1) q - o1) - o0)``, so ``a = a0 + a1`` and ``o = o0 + R(-a0) o1``.
    """
    t = np.deg2rad(np.asarray(angles0, dtype=np.float64))
    o1 = np.asarray(origins1, dtype=np.float64)
    back = np.stack([np.cos(t) * o1[:, 0] + np.sin(t) * o1[:, 1], -np.sin(t) * o1[:, 0] + np.cos(t) * o1[:, 1]], 1)
    return np.mod(np.asarray(angles0) + np.asarray(angles1), 360.0), np.asarray(origins0, dtype=np.float64) + back


# ------------------------------------------------------------------------------------------ search
class RotationalSearch:
    """Best rotation and shift of every particle against each of K references, by matrix products.

    Parameters
    ----------
    box
        Side of the (work) images.
    n_angles
        Rotations of each reference, ``360 / n_angles`` degrees apart.
    search_shift
        Integer shifts ``-s..s`` along x and y are tried.
    score
        ``"likelihood"``: ⟨x, r⟩ − ‖r‖²/2 over the noise variance, x the particle masked and scaled to unit norm,
        r a reference made of such particles (:meth:`unit`; :func:`class_means` with ``normalise=``
        :meth:`references_from`); ``"correlation"``: ⟨x, r⟩ / (‖x‖ ‖r‖).
    """

    def __init__(self, box: int, *, n_angles: int = 72, search_shift: int = 1, device="cpu",
                 score: str = "likelihood"):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.box, self.n_angles, self.device, self.score = box, n_angles, torch.device(device), score
        self.angles = np.arange(n_angles) * (360.0 / n_angles)
        r = range(-search_shift, search_shift + 1)
        self.shifts = [(dx, dy) for dy in r for dx in r]
        self.mask = soft_mask(box, 0.45 * box).to(self.device)

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.mask
        return x - (x.sum((-2, -1), keepdim=True) / self.mask.sum()) * self.mask

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = self._masked(x)
        return (x / x.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]).flatten(1)

    def unit(self, images) -> np.ndarray:
        """(b, m, m) images masked, made zero-mean in the mask and scaled to unit norm (float32)."""
        x = torch.as_tensor(np.asarray(images, dtype=np.float32), device=self.device)
        return self._normalise(x).reshape(x.shape).cpu().numpy()

    @property
    def references_from(self):
        """What :func:`class_means` must apply to the particles to make this search's references: :meth:`unit`
        for the likelihood (references in the particles' units), None (the images as they are) otherwise."""
        return self.unit if self.score == "likelihood" else None

    def bank(self, references: np.ndarray) -> torch.Tensor:
        """(K, m, m) references -> (K * A, m²) masked rotated copies (row k * A + j: angle j), scaled to unit
        norm for the correlation score."""
        refs = torch.as_tensor(np.asarray(references, dtype=np.float32), device=self.device)
        k = refs.shape[0]
        stack = refs[:, None].expand(k, self.n_angles, self.box, self.box).reshape(-1, self.box, self.box)
        angles = torch.as_tensor(np.tile(self.angles, k), dtype=torch.float32, device=self.device)
        turned = transform_images(stack.contiguous(), angles=angles, mode="bilinear")
        if self.score == "likelihood":
            return self._masked(turned).flatten(1)
        return self._normalise(turned)

    def search(self, images: np.ndarray, bank: torch.Tensor, *, batch: int = 1024):
        """Scores (n, K) and, per reference, the best angle (n, K) in degrees and origin (n, K, 2) in pixels.

        ``particle ≈ transform_images(reference, angle, origin)`` (RELION convention), so
        ``align_images(particle, angle, origin)`` lines it up with the reference.
        """
        n = images.shape[0]
        k = bank.shape[0] // self.n_angles
        if self.score == "likelihood":  # <x, r> - |r|²/2, over the noise variance per pixel of a unit-norm image
            half_norm2 = 0.5 * (bank * bank).sum(1)
            per_noise = float((self.mask * self.mask).sum())
        scores = np.empty((n, k), np.float32)
        best_a = np.empty((n, k), np.int64)
        best_s = np.empty((n, k), np.int64)
        for start in range(0, n, batch):
            x = torch.as_tensor(np.asarray(images[start:start + batch], dtype=np.float32), device=self.device)
            per_shift = []
            for dx, dy in self.shifts:
                # roll moves content by +d: x(p - d) ≈ ref(R(a) p), i.e. x(p) ≈ ref(R(a)(p + d)): origin d.
                xs = torch.roll(x, shifts=(dy, dx), dims=(-2, -1)) if (dx or dy) else x
                cc = self._normalise(xs) @ bank.T
                if self.score == "likelihood":
                    cc = (cc - half_norm2) * per_noise
                per_shift.append(cc.reshape(-1, k, self.n_angles))
            cc = torch.stack(per_shift, -1)  # (b, K, A, S)
            flat = cc.flatten(2)
            value, index = flat.max(-1)
            scores[start:start + batch] = value.cpu().numpy()
            best_a[start:start + batch] = (index // len(self.shifts)).cpu().numpy()
            best_s[start:start + batch] = (index % len(self.shifts)).cpu().numpy()
        origins = np.asarray(self.shifts, dtype=np.float64)[best_s]
        return scores, self.angles[best_a], origins


def class_means(images: np.ndarray, labels: np.ndarray, k: int, angles, origins, *, mode: str = "bilinear",
                batch: int = 4096, normalise=None) -> tuple[np.ndarray, np.ndarray]:
    """(k, m, m) means of each class's members after ``align_images(particle, angle, origin)`` (``mode``
    interpolation), and the counts (k,). Read and aligned ``batch`` particles at a time, so a memory-mapped
    stack stays on disk and no aligned copy of the whole stack is made. ``normalise`` (a function of a batch
    of images, e.g. :meth:`RotationalSearch.unit`) is applied to each batch before it is aligned."""
    n, box = images.shape[0], images.shape[-1]
    labels = np.asarray(labels)
    sums = np.zeros((k, box, box), np.float64)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        block = np.asarray(images[start:stop], dtype=np.float32)
        aligned = align_images(block if normalise is None else normalise(block), angles=angles[start:stop],
                               shifts=origins[start:stop], mode=mode)
        np.add.at(sums, labels[start:stop], aligned)
        release_pages(images)
    counts = np.bincount(labels, minlength=k)
    return (sums / np.maximum(counts, 1)[:, None, None]).astype(np.float32), counts


def align_within_classes(images: np.ndarray, labels: np.ndarray, k: int, searcher: RotationalSearch,
                         *, passes: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Members of each class aligned to their class mean, ``passes`` times (labels kept).

    Returns the references (k, m, m), and per particle the angle, origin and score against its own class.
    """
    n = len(images)
    rows = np.arange(n)
    angles, origins = np.zeros(n), np.zeros((n, 2))
    norm = searcher.references_from
    references, _ = class_means(images, labels, k, angles, origins, normalise=norm)
    for _ in range(passes):
        scores, a, o = searcher.search(images, searcher.bank(references))
        angles, origins = a[rows, labels], o[rows, labels]
        references, _ = class_means(images, labels, k, angles, origins, normalise=norm)
    return references, angles, origins, scores[rows, labels]


@dataclass(frozen=True)
class MRAResult:
    """Labels (n,) 0..K-1, scores (n, K), the angle (n,) and origin (n, 2) of each particle to its own
    reference (work pixels), the references (K, m, m) and the iteration history."""

    labels: np.ndarray
    scores: np.ndarray
    angles: np.ndarray
    origins: np.ndarray
    references: np.ndarray
    history: list


def random_subset_references(images: np.ndarray, k: int, rng: np.random.Generator, *, normalise=None) -> np.ndarray:
    """K references, each the mean of a random 1/K of the particles, each turned by a random angle.

    No reference is favoured (RELION's unbiased start); the noise in the subsets breaks the symmetry.
    """
    n = len(images)
    groups = rng.permutation(n) % k
    angles = rng.uniform(0, 360, n)
    return class_means(images, groups, k, angles, np.zeros((n, 2)), normalise=normalise)[0]


def iter_mra(images: np.ndarray, k: int, *, references: np.ndarray | None = None, labels: np.ndarray | None = None,
             params: MRAParams | None = None, device="cpu", stage: str = "mra"
             ) -> Generator[ProgressEvent, None, MRAResult]:
    """MRA classification of (n, m, m) centred work images into ``k`` classes.

    Start from ``references`` (k, m, m), or from the class means of ``labels`` (after one alignment pass
    within each class), or else from random subsets (:func:`random_subset_references`).
    """
    params = validate(params or MRAParams())
    rng = np.random.default_rng(params.seed)
    n, m = images.shape[0], images.shape[-1]
    searcher = RotationalSearch(m, n_angles=params.n_angles, search_shift=params.search_shift, device=device,
                                score=params.score)
    if references is None and labels is not None:
        references = align_within_classes(images, labels, k, searcher)[0]
    elif references is None:
        references = random_subset_references(images, k, rng, normalise=searcher.references_from)
    clock = StageClock(stage, params.iterations)
    history = []
    previous = labels
    for it in range(params.iterations):
        scores, a, o = searcher.search(images, searcher.bank(references))
        new = scores.argmax(1)
        rows = np.arange(n)
        # An emptied class is re-seeded with the particles that fit their own class worst.
        counts = np.bincount(new, minlength=k)
        for c in np.flatnonzero(counts == 0):
            worst = np.argsort(scores[rows, new])[: max(1, n // (4 * k))]
            new[worst] = c
        angles, origins = a[rows, new], o[rows, new]
        references, counts = class_means(images, new, k, angles, origins, normalise=searcher.references_from)
        changed = n if previous is None else int((new != previous).sum())
        history.append({"iteration": it + 1, "changed": changed, "mean_score": float(scores[rows, new].mean())})
        yield clock.event(it + 1, changed=changed)
        log.info("mra iteration %d: %d particles changed class", it + 1, changed)
        previous = new
        if changed == 0:
            break
    return MRAResult(previous, scores, angles, origins, references, history)
