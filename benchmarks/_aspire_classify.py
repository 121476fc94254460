"""Peer driver for `benchmarks/clustering.py`: ASPIRE's rotation-invariant classification (RIRClass2D).

Runs under ASPIRE's own interpreter (``pip install aspire`` into a separate virtualenv; ASPIRE is never a
dependency of napari-cryoden), called as::

    ASPIRE_PYTHON benchmarks/_aspire_classify.py STACK.npy K SEED OUT.json PIXEL_SIZE

ASPIRE's classifier (bispectrum of fast steerable PCA coefficients, Zhao & Singer) answers each image's
nearest rotation-invariant neighbours, not a partition. Two partitions into K classes are made from what it
computes, and both are scored by the caller: spectral clustering of its symmetrised nearest-neighbour graph,
and KMeans on its (unit-normalised) bispectrum features. Settings are RIRClass2D's documented defaults
(400 FSPCA components, 300 bispectrum components, 100 neighbours, the "legacy" implementations), after
``normalize_background`` as in ASPIRE's class-averaging examples. The JSON holds both label vectors and the
seconds of each stage (everything after the stack is read).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    stack, k, seed, out, pixel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    from aspire.classification import RIRClass2D
    from aspire.source import ArrayImageSource
    from scipy import sparse
    from sklearn.cluster import KMeans, SpectralClustering

    images = np.load(stack).astype(np.float64)
    t0 = time.perf_counter()
    src = ArrayImageSource(images, pixel_size=pixel).normalize_background().cache()
    n_nbor = min(100, len(images) - 1)
    clf = RIRClass2D(src, fspca_components=400, bispectrum_components=300, n_nbor=n_nbor,
                     large_pca_implementation="legacy", nn_implementation="legacy",
                     bispectrum_implementation="legacy", seed=seed)
    kept = {}
    nearest = clf._nn_classification

    def keep_features(coef_b, coef_b_r):  # the bispectrum classify computes, kept for the KMeans partition
        kept["coef_b"] = coef_b
        return nearest(coef_b, coef_b_r)

    clf._nn_classification = keep_features
    classes, _, _ = clf.classify()
    t_classify = time.perf_counter() - t0

    n = len(images)
    rows = np.repeat(np.arange(n), classes.shape[1] - 1)
    cols = np.asarray(classes[:, 1:]).ravel()
    graph = sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n)).tocsr()
    graph = ((graph + graph.T) > 0).astype(np.float64)
    t1 = time.perf_counter()
    spectral = SpectralClustering(n_clusters=k, affinity="precomputed", assign_labels="cluster_qr",
                                  random_state=seed).fit_predict(graph)
    t_spectral = time.perf_counter() - t1

    t2 = time.perf_counter()
    feats = np.asarray(kept["coef_b"])
    feats = np.c_[feats.real, feats.imag] if np.iscomplexobj(feats) else feats
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    kmeans = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(feats)
    t_kmeans = time.perf_counter() - t2

    import aspire

    with open(out, "w") as fh:
        json.dump({"spectral": spectral.tolist(), "kmeans": kmeans.tolist(), "aspire": aspire.__version__,
                   "seconds": {"classify": t_classify, "spectral": t_spectral, "bispectrum_kmeans": t_kmeans}}, fh)


if __name__ == "__main__":
    main()
