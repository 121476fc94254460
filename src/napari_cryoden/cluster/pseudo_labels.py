"""Pseudo-labels for clustering: features, KMeans, label bookkeeping and the pairs a Siamese network trains on."""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.clustering import adjusted_rand_index


def work_images(images, *, work_box: int, mask_fraction: float | None = 0.45) -> np.ndarray:
    """(n, N, N) -> (n, m, m) float32 images Fourier-cropped to ``m = min(N, work_box)`` (a low-pass),
    each masked by a soft disc (radius ``mask_fraction * m``; None: no mask), zero-mean and of unit
    variance inside it.

    Class differences live at low resolution; the crop also raises the per-pixel SNR and makes every later
    step ``(N / m)²`` times cheaper.
    """
    x = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))
    if x.ndim == 2:
        x = x[None]
    box = x.shape[-1]
    m = min(box, work_box)
    if m < box:
        f = torch.fft.rfft2(x)
        h = m // 2
        rows = torch.cat([f[..., :h, : h + 1], f[..., box - h :, : h + 1]], dim=-2)
        x = torch.fft.irfft2(rows, s=(m, m)) * (m * m) / (box * box)
    disc = soft_mask(m, mask_fraction * m) if mask_fraction else torch.ones((m, m))
    x = x - (x * disc).sum((-2, -1), keepdim=True) / disc.sum()
    x = x * disc
    x = x / x.flatten(1).std(1).clamp_min(1e-12)[:, None, None]
    return x.numpy().astype(np.float32)


def soft_mask(box: int, radius: float, edge: float = 2.0) -> torch.Tensor:
    """(box, box) disc about ``box // 2`` with a raised-cosine edge ``edge`` pixels wide."""
    y = torch.arange(box, dtype=torch.float32) - box // 2
    r = torch.sqrt(y[:, None] ** 2 + y[None, :] ** 2)
    t = ((r - radius) / edge).clamp(0, 1)
    return 0.5 * (1 + torch.cos(torch.pi * t))


def pca_features(x: np.ndarray, n_components: int, *, seed: int = 0) -> np.ndarray:
    """(n, ...) -> (n, c) principal-component scores (randomised SVD), c = min(n_components, n - 1, d)."""
    from sklearn.decomposition import PCA

    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    c = max(1, min(n_components, flat.shape[0] - 1, flat.shape[1]))
    return PCA(c, svd_solver="randomized", random_state=seed).fit_transform(flat).astype(np.float32)


def kmeans_labels(features: np.ndarray, k: int, *, seed: int = 0, n_init: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """KMeans (k-means++ start, ``n_init`` restarts): labels (n,) in 0..k-1 and centres (k, d)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(np.asarray(features, dtype=np.float64))
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def order_by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Relabel so that class 0 is the largest (ties: lower old label first); returns the new labels."""
    counts = np.bincount(labels, minlength=k)
    order = np.lexsort((np.arange(k), -counts))  # old labels, largest first
    new = np.empty(k, np.int64)
    new[order] = np.arange(k)
    return new[labels]


def labels_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """ARI between two labelings of the same particles (1: the same partition)."""
    return adjusted_rand_index(a, b)


def sample_pairs(labels: np.ndarray, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i, j) and targets y: half same-label (y = 0), half different-label (y = 1).

    Classes are drawn uniformly (not by size), so a small class is seen as often as a large one. With a
    single non-empty class every pair is a same-label pair.
    """
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    classes = [c for c in classes if len(c)]
    n_same = n_pairs // 2 if len(classes) > 1 else n_pairs
    n_diff = n_pairs - n_same
    a_cls = rng.integers(0, len(classes), n_same)
    i_same = np.array([classes[c][rng.integers(len(classes[c]))] for c in a_cls], dtype=np.int64)
    j_same = np.array([classes[c][rng.integers(len(classes[c]))] for c in a_cls], dtype=np.int64)
    if n_diff:
        c1 = rng.integers(0, len(classes), n_diff)
        c2 = (c1 + rng.integers(1, len(classes), n_diff)) % len(classes)
        i_diff = np.array([classes[c][rng.integers(len(classes[c]))] for c in c1], dtype=np.int64)
        j_diff = np.array([classes[c][rng.integers(len(classes[c]))] for c in c2], dtype=np.int64)
    else:
        i_diff = j_diff = np.zeros(0, np.int64)
    y = np.concatenate([np.zeros(n_same), np.ones(n_diff)]).astype(np.float32)
    return np.concatenate([i_same, i_diff]), np.concatenate([j_same, j_diff]), y


def label_confidence(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(n,) confidence of each pseudo-label in [-1, 1]: ``(d₂ − d₁) / (d₂ + d₁)``, where d₁ is the distance of
    the particle's features to its own class centre and d₂ to the nearest other centre (centres = class means).

    0 means halfway between two centres (the label is a coin toss); labels from KMeans on the same features are
    ≥ 0. Classes without members have no centre.
    """
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    labels = np.asarray(labels, dtype=np.int64)
    present = [c for c in range(k) if np.any(labels == c)]
    centres = np.stack([f[labels == c].mean(0) for c in present])
    d = np.sqrt(np.maximum(((f**2).sum(1)[:, None] - 2 * f @ centres.T + (centres**2).sum(1)[None]), 0.0))
    slot = np.searchsorted(present, labels)
    own = d[np.arange(len(f)), slot]
    if len(present) < 2:
        return np.ones(len(f))
    d[np.arange(len(f)), slot] = np.inf
    other = d.min(1)
    return (other - own) / np.maximum(other + own, 1e-12)


def confident_subset(confidence: np.ndarray, labels: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``fraction`` most confident particles of every class (at least one per class).

    Per class rather than overall, so a class whose members all sit near a boundary still has pairs.
    """
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        q = max(1, int(round(fraction * len(idx))))
        keep[idx[np.argsort(-np.asarray(confidence)[idx], kind="stable")[:q]]] = True
    return keep


def sample_training_pairs(labels: np.ndarray, keep: np.ndarray, n_pairs: int, rng: np.random.Generator, *,
                          instance_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs for the Siamese network: ``(i, j, y, same_particle)``.

    Half the pairs are positives (y = 0): a fraction ``instance_fraction`` of them are one particle twice
    (``i == j``, ``same_particle`` True; the trainer augments the second copy: its identity is certain whatever
    the pseudo-labels say), the rest two particles of the same pseudo-class. The other half are negatives
    (y = 1): two particles of different pseudo-classes. Pseudo-class pairs use only the particles in ``keep``
    (the confident ones), classes drawn uniformly. With a single class there are no negatives.
    """
    labels = np.asarray(labels)
    classes = [np.flatnonzero(keep & (labels == c)) for c in np.unique(labels[keep])]
    n_pos = n_pairs // 2 if len(classes) > 1 else n_pairs
    n_inst = int(round(instance_fraction * n_pos))
    n_same, n_diff = n_pos - n_inst, n_pairs - n_pos
    inst = rng.integers(0, len(labels), n_inst)

    def pick(cls):
        return np.array([classes[c][rng.integers(len(classes[c]))] for c in cls], dtype=np.int64)

    a_cls = rng.integers(0, len(classes), n_same)
    c1 = rng.integers(0, len(classes), n_diff)
    c2 = (c1 + rng.integers(1, max(len(classes), 2), n_diff)) % len(classes)
    i = np.concatenate([inst, pick(a_cls), pick(c1)]).astype(np.int64)
    j = np.concatenate([inst, pick(a_cls), pick(c2)]).astype(np.int64)
    y = np.concatenate([np.zeros(n_pos), np.ones(n_diff)]).astype(np.float32)
    same = np.zeros(n_pairs, bool)
    same[:n_inst] = True
    return i, j, y, same


def noise_level(images: np.ndarray, *, components: int = 20, radius: float = 0.4) -> float:
    """Standard deviation of the noise per pixel of (n, m, m) images, measured as what the first ``components``
    principal components leave inside a disc of ``radius × m`` (white noise spreads evenly over all directions;
    signal concentrates in a few). An upper bound when the signal has more than ``components`` directions.
    """
    n, m = len(images), images.shape[-1]
    disc = (soft_mask(m, radius * m) >= 0.999).numpy()
    d = int(disc.sum())
    # The (d, d) covariance, summed over chunks (a copy of the whole stack in float64, and the SVD's workspace,
    # were 2-3 GB at 10^5 particles); its eigenvalues are the squared singular values of the centred pixels / (n-1).
    total, outer = np.zeros(d), np.zeros((d, d))
    for start in range(0, n, 4096):
        flat = np.asarray(images[start:start + 4096], dtype=np.float64)[:, disc]
        total += flat.sum(0)
        outer += flat.T @ flat
    mean = total / max(n, 1)
    cov = (outer - n * np.outer(mean, mean)) / max(n - 1, 1)
    q = min(components, n - 1, d - 1)
    power = np.sort(np.clip(np.linalg.eigvalsh(cov), 0.0, None))[::-1][: max(n - 1, 1)]
    return float(np.sqrt(power[q:].sum() / (d - q)))  # the trace is the total variance, whatever n is
