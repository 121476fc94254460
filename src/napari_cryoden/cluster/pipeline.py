"""One entry point for every clustering method: work images, pre-alignment, the method, class averages."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..io.mrc import release_pages
from ..models import ModelFile
from ..params import validate
from ..progress import ProgressEvent
from .averages import ClassAverages, iter_class_averages
from .methods import methods
from .mra import RotationalSearch, compose, iter_prealign
from .pseudo_labels import order_by_size, pca_features, work_images
from .structure import structure_test, warn_if_unstructured

log = logging.getLogger(__name__)


#: Principal components in which the structure test (:mod:`.structure`) looks for classes.
STRUCTURE_COMPONENTS = 20

#: Clustering methods by name, and the parameter class of each (the CLI and the widget are built from them).
METHODS = tuple(methods())
PARAMS = {name: m.params for name, m in methods().items()}


@dataclass(frozen=True)
class ClusterResult:
    """A clustering of n particles into k classes, class 0 the largest.

    Attributes
    ----------
    labels
        (n,) class of each particle, 0-based, numbered by size (0 = most particles). RELION's
        ``rlnClassNumber`` is ``labels + 1``.
    features
        (n, d) what the classes were found in: the Siamese embedding, the PCA scores, or (MRA) the
        correlation with each reference.
    embedding
        (n, 2) the first two principal components of ``features``, for plotting.
    averages
        :class:`~napari_cryoden.cluster.averages.ClassAverages` (None when not computed); its per-particle
        ``score`` is the confidence and ``distance`` the distance to the class centre.
    model
        The trained Siamese encoder (:class:`~napari_cryoden.models.ModelFile`, kind "cluster/siamese").
    info
        Method, parameters, timings, per-round history, silhouette score.
    """

    labels: np.ndarray
    features: np.ndarray
    embedding: np.ndarray
    averages: ClassAverages | None = None
    model: ModelFile | None = None
    info: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.info.get("classes", self.labels.max() + 1))

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.k)


def _read_all(images) -> np.ndarray:
    """The particles as an (n, N, N) array: a particle source (STAR) is read; an array or memory map is kept as
    it is (float32 memory maps are not copied, so class averages read them batch by batch)."""
    if hasattr(images, "read") and hasattr(images, "box"):
        return images.read(0, len(images))
    x = np.asarray(images)
    x = x if x.dtype == np.float32 else x.astype(np.float32)
    return x[None] if x.ndim == 2 else x


#: Particles read and Fourier-cropped at a time: the work images of 10^5 particles of 64² then need ~0.4 GB,
#: not the ~5 GB of one FFT over the whole stack.
WORK_CHUNK = 4096


def _work_images(x: np.ndarray, work_box: int) -> np.ndarray:
    """:func:`work_images` (no mask) of (n, N, N) particles computed chunk by chunk (memory maps stay on disk)."""
    n, box = x.shape[0], x.shape[-1]
    m = min(box, work_box)
    out = np.empty((n, m, m), np.float32)
    for start in range(0, n, WORK_CHUNK):
        stop = min(n, start + WORK_CHUNK)
        out[start:stop] = work_images(np.array(x[start:stop], dtype=np.float32), work_box=work_box,  # a writable copy
                                      mask_fraction=None)
        release_pages(x)  # a memory-mapped stack's pages leave the resident set after each chunk
    return out


def silhouette(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, sample: int = 3000) -> float:
    """Silhouette score of ``labels`` in ``features`` (on at most ``sample`` particles); -1 for one class."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return -1.0
    return float(silhouette_score(features, labels, sample_size=min(sample, len(labels)), random_state=seed))


@dataclass(frozen=True)
class _FrontEnd:
    """What every clustering method starts from: the pre-alignment of the Fourier-cropped particles and the
    masked, pre-aligned work images; ``seconds`` it took and the settings it was computed with (``key``)."""

    prealignment: object
    masked: np.ndarray
    seconds: float
    key: tuple


def iter_front_end(x, *, work_box: int, params, device="cpu") -> Generator[ProgressEvent, None, _FrontEnd]:
    """Work images and their classical pre-alignment (the K-independent start of :func:`iter_cluster`)."""
    t0 = time.perf_counter()
    work = _work_images(x, work_box)
    m = work.shape[-1]
    pre = yield from iter_prealign(work, box=x.shape[-1], iterations=params.prealign_iterations,
                                   max_shift=getattr(params, "max_shift", 0.0), seed=params.seed, device=device)
    del work
    # The pre-aligned images become the masked work images in place, chunk by chunk: one (n, m, m) array, not
    # the four whole-stack temporaries of one work_images call (1.6 GB at 10^5 particles of 32²).
    masked = pre.aligned
    for start in range(0, len(masked), WORK_CHUNK):
        masked[start:start + WORK_CHUNK] = work_images(masked[start:start + WORK_CHUNK], work_box=m)
    return _FrontEnd(replace(pre, aligned=None), masked, time.perf_counter() - t0, _front_key(work_box, params))


def _front_key(work_box: int, params) -> tuple:
    return work_box, params.prealign_iterations, getattr(params, "max_shift", 0.0), params.seed


def iter_cluster(images, k: int, *, method: str = "siamese", params=None, device="cpu",
                 model: ModelFile | None = None, train: bool = True, averages: bool = True,
                 refine_averages: bool = True, checkpoint=None, resume: bool = False,
                 front_end: _FrontEnd | None = None) -> Generator[ProgressEvent, None, ClusterResult]:
    """Cluster (n, N, N) particles (array, memory map or particle source) into ``k`` classes.

    Parameters
    ----------
    images
        Particle images; square boxes.
    k
        Number of classes (2 <= k <= n).
    method
        One of :data:`METHODS`.
    params
        The method's parameter dataclass (:data:`PARAMS`), default settings when None.
    model
        ``siamese``: a saved encoder to start from; with ``train=False`` it is only applied.
    averages, refine_averages
        Compute class averages; refine each class's alignment at full resolution with the classical code.
    checkpoint, resume
        ``siamese``: a :class:`~napari_cryoden.checkpoint.Checkpointer` the encoder's training state is saved to
        between rounds, and whether to continue from it (pre-alignment is seeded and simply redone).
    front_end
        The pre-aligned work images of these particles from :func:`iter_front_end` with the same settings (a
        K range computes them once); None computes them.

    Yields progress events; returns a :class:`ClusterResult`.
    """
    if method not in methods():
        raise ValueError(f"method must be one of {tuple(methods())}, got {method!r}")
    chosen = methods()[method]
    params = validate(params if params is not None else chosen.params())
    if not isinstance(params, chosen.params):
        raise TypeError(f"{method} needs {chosen.params.__name__}, got {type(params).__name__}")
    t0 = time.perf_counter()
    x = _read_all(images)
    n, box = x.shape[0], x.shape[-1]
    if not 2 <= k <= n:  # CryodenInputError is a ValueError: the message, not the type, is what changed
        from ..errors import CryodenInputError

        raise CryodenInputError(None, f"the number of classes must be between 2 and the number of particles "
                                      f"({n}), got {k}" + ("; clustering needs at least 2 particles" if n < 2 else ""))
    work_box = model.config["work_box"] if model is not None else params.work_box
    handed_in = front_end is not None
    if front_end is None:
        front_end = yield from iter_front_end(x, work_box=work_box, params=params, device=device)
    elif front_end.key != _front_key(work_box, params):
        raise ValueError("front_end was computed with other settings")
    pre, masked = front_end.prealignment, front_end.masked
    m = masked.shape[-1]
    # A front end handed in (a K range) was computed once before: its time is reported but not re-spent.
    t0 -= front_end.seconds if handed_in else 0.0
    timings = {"prealign": time.perf_counter() - t0}
    searcher = RotationalSearch(m, device=device)
    info: dict = {"method": method, "classes": int(k), "particles": int(n), "box": int(box), "work_box": int(m)}
    scores: dict[int, np.ndarray] = {}

    def pca(components: int) -> np.ndarray:  # principal components of the work images, each count computed once
        if components not in scores:
            scores[components] = pca_features(masked, components, seed=params.seed)
        return scores[components]

    if n > k + 2:  # is there class structure at all? (a warning, not an error: the user decides)
        structure = structure_test(pca(STRUCTURE_COMPONENTS), k, seed=params.seed)
        info["structure"] = structure.as_dict()
        warn_if_unstructured(structure)
    found = yield from chosen.classify(masked, k, params, searcher=searcher, device=device, model=model, train=train,
                                       checkpoint=checkpoint, resume=resume, pca=pca)
    labels, a, o, features, trained = found.labels, found.angles, found.origins, found.features, found.model
    info.update(found.info)
    labels = order_by_size(labels, k)
    psi, origins = compose(pre.angles, pre.origins, a, o * pre.scale)
    timings["cluster"] = time.perf_counter() - t0 - sum(timings.values())
    embedding = pca_features(features, 2, seed=params.seed) if features.shape[1] >= 2 else np.c_[features, np.zeros(n)]
    info["silhouette"] = silhouette(features, labels, seed=params.seed)
    info["alignment"] = (psi, origins)  # to each class's work-grid reference, input pixels
    avg = None
    if averages:
        avg = yield from iter_class_averages(x, labels, k, angles=psi, origins=origins, refine=refine_averages,
                                             device=device)
        timings["averages"] = time.perf_counter() - t0 - sum(timings.values())
    timings["total"] = time.perf_counter() - t0
    info["seconds"] = timings
    return ClusterResult(labels, features, embedding, avg, trained, info)


#: How a K range picks its K (see :mod:`.model_selection` and docs/cluster.md).
K_CRITERIA = ("silhouette", "distinct")


def iter_cluster_range(images, ks: Sequence[int], *, criterion: str = "distinct",
                       **kwargs) -> Generator[ProgressEvent, None, ClusterResult]:
    """Cluster for every k in ``ks`` and keep one: with ``criterion="silhouette"`` the highest silhouette score of
    its features; with ``"distinct"`` the largest K whose class averages all differ by more than their own noise
    (:func:`~.model_selection.choose_distinct_k`).

    The chosen result's ``info["model_selection"]`` has the criterion, ``values`` ``{k: silhouette}`` and
    ``max_rho`` ``{k: the closest pair of classes' rho}`` (both are always measured).
    """
    from .model_selection import choose_distinct_k, class_distinctness

    if criterion not in K_CRITERIA:
        raise ValueError(f"criterion must be one of {K_CRITERIA}, got {criterion!r}")
    want_averages = kwargs.pop("averages", True)
    refine = kwargs.pop("refine_averages", True)
    scores: dict[int, float] = {}
    rho: dict[int, float] = {}
    results: dict[int, ClusterResult] = {}
    checkpoint = kwargs.pop("checkpoint", None)
    x = _read_all(images)  # once: a STAR's particles are read from their stacks once for the whole range
    front = None
    for k in ks:
        part = checkpoint.part(f"k{int(k)}") if checkpoint is not None else None  # one training per K
        if front is None and len(ks) > 1 and 2 <= int(k) <= len(x):  # the pre-alignment is K-independent
            chosen = methods()[kwargs.get("method", "siamese")]
            params = validate(kwargs.get("params") or chosen.params())
            model = kwargs.get("model")
            front = yield from iter_front_end(x, device=kwargs.get("device", "cpu"), params=params,
                                              work_box=model.config["work_box"] if model is not None else params.work_box)
        res = yield from iter_cluster(x, int(k), averages=False, checkpoint=part, front_end=front, **kwargs)
        scores[int(k)] = res.info["silhouette"]
        psi, origins = res.info["alignment"]
        rho[int(k)] = class_distinctness(x, res.labels, int(k), psi, origins,
                                         seed=getattr(kwargs.get("params"), "seed", 0))["max_rho"]
        results[int(k)] = res
    if criterion == "silhouette":
        best = results[max(scores, key=lambda k: (scores[k], -k))]
    else:
        best = results[choose_distinct_k(rho)]
    best.info["model_selection"] = {"score": criterion, "values": scores, "max_rho": rho}
    if want_averages:  # only for the chosen K
        psi, origins = best.info["alignment"]
        avg = yield from iter_class_averages(x, best.labels, best.k, angles=psi, origins=origins,
                                             refine=refine, device=kwargs.get("device", "cpu"))
        best = replace(best, averages=avg)
    return best


#: Per-particle confidence column written beside rlnClassNumber (normalised cross-correlation of the aligned
#: particle with its class average, in [-1, 1]).
SCORE_COLUMN = "rlnCryodenClassScore"


def with_classes(particles, result: ClusterResult):
    """A copy of the particle rows (pandas DataFrame) with ``rlnClassNumber`` (1-based, 1 = largest class) and,
    when class averages were computed, :data:`SCORE_COLUMN`."""
    if len(particles) != len(result.labels):
        raise ValueError(f"{len(particles)} particle rows but {len(result.labels)} labels")
    rows = particles.reset_index(drop=True).copy()
    rows["rlnClassNumber"] = result.labels + 1
    if result.averages is not None:
        rows[SCORE_COLUMN] = result.averages.score
    return rows


def class_members(class_numbers, wanted: Sequence[int]) -> np.ndarray:
    """Boolean mask of the particles whose ``rlnClassNumber`` (1-based) is one of ``wanted``; ValueError naming
    the classes that have no particles."""
    numbers = np.asarray(class_numbers).astype(int)
    present = set(numbers.tolist())
    missing = sorted(set(int(c) for c in wanted) - present)
    if missing:
        raise ValueError(f"no particles in class(es) {missing}; classes present: {sorted(present)}")
    return np.isin(numbers, [int(c) for c in wanted])


def cluster(images, k: int, **kwargs) -> ClusterResult:
    """Synchronous :func:`iter_cluster`."""
    from ..progress import run

    return run(iter_cluster(images, k, **kwargs))
