"""The one list of clustering methods, from which the CLI and the napari widget are built.

Each method is one :class:`ClusterMethod` object: its parameter class, whether it trains a network (and so
takes ``--model`` / ``--save-model`` and a time budget), a description for ``--help`` and the widget, and
:meth:`ClusterMethod.classify`, the generator that turns centred work images into classes. What every
method shares — reading, Fourier-cropping, pre-alignment, the structure test, ordering by size, class
averages — stays in :func:`~napari_cryoden.cluster.pipeline.iter_cluster`, which never branches on a
method's name. A new method is a subclass here (or in its own module) passed to :func:`register`.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models import ModelFile
from ..params import param
from ..progress import ProgressEvent
from .mra import MRAParams, RotationalSearch, align_within_classes, iter_mra
from .pseudo_labels import kmeans_labels, label_confidence, pca_features
from .siamese import SiameseParams, iter_train_siamese


@dataclass(frozen=True)
class PCAKMeansParams:
    """Settings of the PCA + KMeans baseline (``pca-kmeans``)."""

    pca_components: int = param(20, "principal components kept", min=1, basic=True)
    work_box: int = param(32, "images are Fourier-cropped to this box for clustering (pixels)", min=16, unit="px")
    prealign_iterations: int = param(0, "passes of the classical reference-free pre-alignment (0: raw pixels)",
                                     min=0, max=20)
    max_shift: float = param(0.0, "largest shift of the pre-alignment, pixels of the input (0: box / 8)",
                             min=0.0, unit="px")
    n_init: int = param(4, "KMeans restarts", min=1)
    refine_iterations: int = param(0, "MRA iterations seeded by the KMeans classes (0: none)", min=0, max=100,
                                   basic=True)
    seed: int = param(0, "random seed")


@dataclass
class Classes:
    """What a method's :meth:`~ClusterMethod.classify` returns: classes of the work images, each particle's
    angle and origin against its class (work-box pixels), the features the classes were found in, and the
    trained model (None for methods that do not train). ``info`` entries are added to the result's info."""

    labels: np.ndarray
    angles: np.ndarray
    origins: np.ndarray
    features: np.ndarray
    model: ModelFile | None = None
    info: dict = field(default_factory=dict)


class ClusterMethod:
    """A clustering method: what the CLI, the widget and :func:`iter_cluster` need to know about it.

    Attributes
    ----------
    name
        CLI name ("siamese", "mra", "pca-kmeans").
    params
        Frozen parameter dataclass; the CLI options and the widget form are generated from it.
    description
        One sentence for ``--help`` and the widget.
    trains
        True when the method trains a network: it accepts a saved model, writes one, and takes
        ``--epochs`` / ``--time-budget`` and checkpoints.
    """

    name: str = ""
    params: type = object
    description: str = ""
    trains: bool = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def classify(self, masked: np.ndarray, k: int, params, *, searcher: RotationalSearch, device="cpu",
                 model: ModelFile | None = None, train: bool = True, checkpoint=None, resume: bool = False,
                 pca=None) -> Generator[ProgressEvent, None, Classes]:
        """Classes of the centred, masked work images ``masked`` (n, m, m); yields progress events.

        ``pca(c)`` gives the first ``c`` principal-component scores of ``masked`` (shared with the structure
        test, so they are computed once); without it they are computed here."""
        raise NotImplementedError


def _scores(masked, params, pca) -> np.ndarray:
    """The first ``params.pca_components`` principal-component scores of the work images."""
    return pca(params.pca_components) if pca is not None else pca_features(masked, params.pca_components,
                                                                         seed=params.seed)


def _refine_or_align(masked, k, labels, params, *, searcher, device, work_box: int, info: dict, key: str):
    """MRA seeded by ``labels`` when ``params.refine_iterations`` > 0, else one alignment within each class."""
    if params.refine_iterations:
        mparams = MRAParams(iterations=params.refine_iterations, work_box=work_box, seed=params.seed)
        res = yield from iter_mra(masked, k, labels=labels, params=mparams, device=device, stage="refine")
        info[key] = res.history
        return res.labels, res.angles, res.origins
    _, a, o, _ = align_within_classes(masked, labels, k, searcher)
    return labels, a, o


class PCAKMeans(ClusterMethod):
    name = "pca-kmeans"
    params = PCAKMeansParams
    description = "KMeans on principal components of the (pre-aligned) particles; the baseline"

    def classify(self, masked, k, params, *, searcher, device="cpu", pca=None, **_):
        features = _scores(masked, params, pca)
        labels, _ = kmeans_labels(features, k, seed=params.seed, n_init=params.n_init)
        info: dict[str, Any] = {}
        if params.refine_iterations:
            info["kmeans_labels"] = labels.copy()
        labels, a, o = yield from _refine_or_align(masked, k, labels, params, searcher=searcher, device=device,
                                                   work_box=masked.shape[-1], info=info, key="refine_history")
        return Classes(labels, a, o, features, info=info)


class MRA(ClusterMethod):
    name = "mra"
    params = MRAParams
    description = "RELION-style multi-reference alignment: hard assignment over rotations and shifts"

    def classify(self, masked, k, params, *, device="cpu", **_):
        res = yield from iter_mra(masked, k, params=params, device=device)
        return Classes(res.labels, res.angles, res.origins, res.scores, info={"history": res.history})


class Siamese(ClusterMethod):
    name = "siamese"
    params = SiameseParams
    description = "pre-alignment, a contrastive Siamese network on pseudo-labels, MRA refinement (default)"
    trains = True

    def classify(self, masked, k, params, *, searcher, device="cpu", model=None, train=True, checkpoint=None,
                 resume=False, pca=None):
        n = len(masked)
        confidence = None
        if model is not None and not train:
            start = np.zeros(n, np.int64)
        else:  # the scores the labels came from also rank them (no second PCA of the stack)
            scores = _scores(masked, params, pca)
            start, _ = kmeans_labels(scores, k, seed=params.seed)
            confidence = label_confidence(scores, start, k)
        info: dict[str, Any] = {"initial_labels": start}
        sres = yield from iter_train_siamese(masked, k, start, params, device=device, model=model, train=train,
                                             checkpoint=checkpoint, resume=resume, confidence=confidence)
        info["history"] = sres.history
        info["siamese_labels"] = sres.labels.copy()
        labels, a, o = yield from _refine_or_align(masked, k, sres.labels, params, searcher=searcher, device=device,
                                                   work_box=masked.shape[-1], info=info, key="refine_history")
        return Classes(labels, a, o, sres.embeddings, model=sres.model, info=info)


_REGISTRY: dict[str, ClusterMethod] = {}

#: The method the CLI and the widget start with.
DEFAULT_METHOD = "siamese"


def register(method: ClusterMethod) -> ClusterMethod:
    """Add ``method`` to the list the CLI and the widget offer (replacing one of the same name)."""
    if not method.name or not isinstance(method.params, type):
        raise TypeError("a clustering method needs a name and a parameter class")
    _REGISTRY[method.name] = method
    return method


def methods() -> dict[str, ClusterMethod]:
    """Every clustering method by name, the default first."""
    return dict(_REGISTRY)


for _m in (Siamese(), MRA(), PCAKMeans()):
    register(_m)
