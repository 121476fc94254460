"""Particle clustering (2D classification): Siamese contrastive clustering, MRA and PCA + KMeans baselines,
class averages ordered by size. ``docs/cluster.md`` describes the methods."""

from .averages import ClassAverages, iter_class_averages
from .methods import DEFAULT_METHOD, ClusterMethod, PCAKMeansParams, methods, register
from .mra import MRAParams, iter_mra, iter_prealign
from .pipeline import (
    METHODS,
    PARAMS,
    SCORE_COLUMN,
    ClusterResult,
    class_members,
    cluster,
    iter_cluster,
    iter_cluster_range,
    with_classes,
)
from .siamese import Encoder, SiameseParams, contrastive_loss, iter_train_siamese

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "PARAMS",
    "SCORE_COLUMN",
    "ClassAverages",
    "ClusterMethod",
    "ClusterResult",
    "Encoder",
    "MRAParams",
    "PCAKMeansParams",
    "SiameseParams",
    "class_members",
    "cluster",
    "contrastive_loss",
    "iter_class_averages",
    "iter_cluster",
    "iter_cluster_range",
    "iter_mra",
    "iter_prealign",
    "iter_train_siamese",
    "methods",
    "register",
    "with_classes",
]
