"""Siamese clustering: an encoder trained with a contrastive loss on pairs chosen by pseudo-label confidence.

Rounds of **train → embed → KMeans → relabel** until two rounds agree (ARI above ``stop_ari``) or
``rounds`` is reached. The loss is

``L = Σ wᵢ [(1 − yᵢ) dᵢ² + yᵢ max(margin − dᵢ, 0)²] / (2 Σ wᵢ)``, d = ‖f(a) − f(b)‖ (wᵢ = 1: the mean),

with y = 0 for a positive pair and 1 for a negative one. What makes the embedding add to its PCA + KMeans start:

* **Pairs by confidence.** Each pseudo-label gets a confidence (:func:`~.pseudo_labels.label_confidence`: the
  margin between the nearest and the second-nearest class centre, in the features the labels came from); only the
  ``confident_fraction`` most confident members of each class enter pseudo-class pairs, so the coin tosses near a
  boundary are not learnt as truth. The confidences are recomputed every round in the new embedding.
* **Positives that are the same particle.** A fraction ``instance_fraction`` of the positives are one particle
  and an augmented copy of it: any in-plane rotation (± ``instance_rotation``), a shift (± ``augment_shift``),
  with probability ``augment_ctf`` a |CTF| modulation (the :mod:`~napari_cryoden.simulate.ctf` formula, first
  zero at a random frequency), and a fresh noise draw at ``augment_noise`` × the noise level measured on the stack
  (:func:`~.pseudo_labels.noise_level`). Their identity is certain whatever the labels say, and they make the
  embedding invariant to what the pre-alignment gets wrong. Negatives are confidently different pseudo-classes.
* **Encoder** ``templates`` (default): the image is resampled on a polar grid about the box centre and
  correlated at every rotation (an FFT along the angle) and at a 3 × 3 grid of centres ``template_shift`` apart
  with learnt polar templates that start from the class means of the starting pseudo-labels
  (:class:`TemplateEncoder`); the scores, soft-max pooled over rotations and centres, go through a small head.
  It is invariant to in-plane rotation by construction (exactly for multiples of 90° with the shifted centres,
  of 5.6° without them; to interpolation otherwise), and where the pre-alignment left a particle turned or
  off-centre the match still finds it. ``polar`` (the default until 2026-12-04) convolves the polar image with
  circular padding along the angle and pools the angle away, which at SNR 0.05 lost the neighbouring views;
  ``cartesian`` is a plain conv net (``docs/cluster.md`` has the ablations). Shifts are centred by the classical
  pre-alignment (:func:`~napari_cryoden.cluster.mra.iter_prealign`); the residual is in the augmentation and
  the shifted matches.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..align.transforms import transform_images
from ..checkpoint import Checkpointer, restore_rng, rng_state
from ..errors import CryodenInputError
from ..models import ModelFile, to_cpu
from ..params import as_dict, param, validate
from ..progress import ProgressEvent, StageClock
from ..simulate.ctf import ctf_2d, electron_wavelength
from .pseudo_labels import (
    confident_subset,
    kmeans_labels,
    label_confidence,
    labels_agreement,
    noise_level,
    pca_features,
    sample_training_pairs,
    soft_mask,
)

log = logging.getLogger(__name__)

KIND = "cluster/siamese"


@dataclass(frozen=True)
class SiameseParams:
    """Settings of Siamese clustering (``siamese``)."""

    rounds: int = param(6, "train → embed → KMeans rounds at most", min=1, max=50)
    epochs: float = param(12.0, "training per round, in passes of pairs over the particles", min=0.0)
    min_steps: int = param(30, "training steps per round at least", min=0)
    max_steps: int = param(300, "training steps per round at most", min=1)
    batch_size: int = param(64, "pairs per training step", min=2)
    learning_rate: float = param(1e-4, "Adam learning rate (the cartesian and polar encoders were tuned at 1e-3)", min=0.0)
    margin: float = param(2.0, "contrastive margin: different-label pairs are pushed this far apart", min=0.0)
    embedding_dim: int = param(16, "size of the embedding", min=2, max=512)
    channels: int = param(8, "channels of the first conv level (x2, x4 below)", min=4, max=128)
    pool_grid: int = param(4, "adaptive average pooling grid of the cartesian encoder (1: fully global pooling)",
                           min=1, max=8)
    harmonics: int = param(0, "polar encoder: pool the angle axis by max, mean and the magnitudes of this many "
                                "angular Fourier harmonics (0 or 1: max and mean only; the pooled axis has 16 "
                                "angles, so at most 9)", min=0, max=9)
    encoder: str = param("templates", "polar: rotation-invariant conv net; templates: rotation-invariant matches "
                         "against learnt templates started from the pseudo-class means; cartesian: plain conv net",
                         choices=("polar", "templates", "cartesian"))
    template_shift: float = param(1.0, "templates encoder: also match at centres moved by this many work-box "
                                  "pixels (a 3 × 3 grid; 0: the centre only)", min=0.0, max=4.0, unit="px")
    templates_per_class: int = param(1, "templates encoder: learnt templates per class (started from sub-class "
                                     "means)", min=1, max=16)
    augment_rotation: float = param(8.0, "every image of a pair is rotated by up to ± this many degrees",
                                    min=0.0, max=180.0, unit="°")
    augment_shift: float = param(1.0, "every image of a pair is shifted by up to ± this many work-box pixels",
                                 min=0.0, unit="px")
    confident_fraction: float = param(0.5, "pseudo-class pairs use only this most confident fraction of each "
                                      "class (margin between nearest and second-nearest centre)", min=0.01, max=1.0)
    instance_fraction: float = param(0.5, "fraction of positive pairs that are one particle and an augmented copy",
                                     min=0.0, max=1.0)
    instance_rotation: float = param(180.0, "the copy is rotated by up to ± this many degrees (180: any angle)",
                                     min=0.0, max=180.0, unit="°")
    augment_ctf: float = param(0.5, "probability that the copy is modulated by a random |CTF|", min=0.0, max=1.0)
    augment_noise: float = param(0.5, "the copy gets fresh noise of this many times the measured noise level",
                                 min=0.0)
    stop_ari: float = param(0.98, "stop when the ARI between two rounds' labels exceeds this", min=0.0, max=1.0)
    pca_components: int = param(20, "principal components of the initial KMeans", min=1)
    refine_iterations: int = param(10, "MRA iterations seeded by the Siamese classes (0: Siamese alone; "
                                   "stops early when no particle changes class)", min=0, max=100, basic=True)
    work_box: int = param(32, "images are Fourier-cropped to this box for clustering (pixels)", min=16, unit="px")
    prealign_iterations: int = param(3, "passes of the classical reference-free pre-alignment (0: none)",
                                     min=0, max=20)
    time_budget: float | None = param(None, "stop training after this many seconds", min=0.0, unit="s", basic=True)
    seed: int = param(0, "random seed")


def _block(i: int, o: int, k, padding) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, padding=padding), nn.GroupNorm(min(4, o), o), nn.ReLU())


class Encoder(nn.Module):
    """(b, 1, m, m) images -> (b, embedding_dim): three conv levels, adaptive pooling, projection head."""

    def __init__(self, *, channels: int = 16, embedding_dim: int = 16, pool_grid: int = 4):
        super().__init__()
        c = channels
        self.features = nn.Sequential(_block(1, c, 5, 2), nn.MaxPool2d(2), _block(c, 2 * c, 3, 1), nn.MaxPool2d(2),
                                      _block(2 * c, 4 * c, 3, 1), nn.AdaptiveAvgPool2d(pool_grid))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * pool_grid**2, 64), nn.ReLU(),
                                  nn.Linear(64, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _CircularConv(nn.Module):
    """Conv over (radius, angle) maps: zero padding along the radius, circular along the angle."""

    def __init__(self, i: int, o: int, k: tuple[int, int]):
        super().__init__()
        self.pad = (k[1] // 2, k[1] // 2, k[0] // 2, k[0] // 2)
        self.conv = nn.Conv2d(i, o, k)
        self.norm = nn.GroupNorm(min(4, o), o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad[0], self.pad[1], 0, 0), mode="circular")
        x = F.pad(x, (0, 0, self.pad[2], self.pad[3]))
        return F.relu(self.norm(self.conv(x)))


class PolarEncoder(nn.Module):
    """(b, 1, m, m) images -> (b, embedding_dim), invariant to in-plane rotation about the box centre ``m // 2``.

    The image is sampled on ``radii`` rings (out to 0.45 m) × ``angles`` directions (bilinear); three conv levels
    with circular padding along the angle (2× pooling along it after the first two) are equivariant to a rotation
    by a multiple of 360° / angles, which only shifts the angle axis; pooling over all angles (max and mean) then
    makes the features invariant. Radii and angles are fixed counts, so any box size works.
    """

    def __init__(self, *, channels: int = 8, embedding_dim: int = 16, radii: int = 16, angles: int = 64,
                 harmonics: int = 0):
        super().__init__()
        c = channels
        self.radii, self.angles, self.harmonics = radii, angles, harmonics
        self.features = nn.Sequential(_CircularConv(1, c, (5, 7)), nn.MaxPool2d((1, 2)),
                                      _CircularConv(c, 2 * c, (3, 5)), nn.MaxPool2d((1, 2)),
                                      _CircularConv(2 * c, 4 * c, (3, 5)))
        pooled = 2 + max(harmonics - 1, 0)  # max, mean (harmonic 0) and |harmonics 1 .. h-1|
        self.head = nn.Sequential(nn.Linear(pooled * 4 * c * radii, 64), nn.ReLU(), nn.Linear(64, embedding_dim))
        self._grid: torch.Tensor | None = None  # (1, radii, angles, 2) sampling grid, made for one box size
        self._grid_box = 0

    def polar(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 1, m, m) -> (b, 1, radii, angles) samples on rings about the box centre."""
        grid = self._polar_grid(x).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)

    def _polar_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(1, radii, angles, 2) grid_sample coordinates of the rings about ``m // 2`` (cached per box size)."""
        m = x.shape[-1]
        if self._grid is None or self._grid_box != m or self._grid.device != x.device:
            r = (torch.arange(self.radii, dtype=torch.float32) + 0.5) * (0.45 * m / self.radii)
            t = torch.arange(self.angles, dtype=torch.float32) * (2 * torch.pi / self.angles)
            px = m // 2 + r[:, None] * torch.cos(t)[None]
            py = m // 2 + r[:, None] * torch.sin(t)[None]
            grid = torch.stack([px / (m - 1) * 2 - 1, py / (m - 1) * 2 - 1], dim=-1)
            self._grid, self._grid_box = grid[None].to(x.device), m
        return self._grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(self.polar(x))  # (b, 4c, radii, angles / 4)
        parts = [f.amax(-1), f.mean(-1)]
        if self.harmonics > 1:  # |angular Fourier coefficients|: a rotation only changes their phase
            spectrum = torch.fft.rfft(f, dim=-1)[..., 1:self.harmonics].abs() / f.shape[-1]
            parts.append(spectrum.flatten(1, 2).reshape(f.shape[0], -1, f.shape[2]))
        pooled = torch.cat(parts, dim=1)
        return self.head(pooled.flatten(1))


class TemplateEncoder(PolarEncoder):
    """(b, 1, m, m) images -> (b, embedding_dim): rotation-invariant matches against a learnt bank of templates.

    Each image is sampled on the polar grid of :class:`PolarEncoder` (rings weighted by √r, so that sums over the
    grid are area integrals) and cross-correlated with ``templates`` learnt polar images at every rotation (an
    FFT along the angle); the normalised correlation is pooled over the rotations with a learnt soft maximum,
    ``log Σ_φ exp(β c(φ)) / β``. The scores — how well the particle matches each template at its best angle, a
    matched filter that the alignment's errors cannot spoil — go through a small head to the embedding. The
    templates start from the class means of the starting pseudo-labels (:meth:`initialise`), so training begins
    where a classical template match stands and the contrastive loss moves them.
    """

    def __init__(self, *, templates: int = 16, embedding_dim: int = 16, radii: int = 16, angles: int = 64,
                 shift: float = 0.0):
        nn.Module.__init__(self)
        self.radii, self.angles, self.harmonics = radii, angles, 0
        offsets = [(0.0, 0.0)] + ([(dy * shift, dx * shift) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                                   if dy or dx] if shift > 0 else [])
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32), persistent=False)
        self.templates = nn.Parameter(torch.randn(templates, radii, angles) * 0.1)
        self.log_beta = nn.Parameter(torch.tensor(float(np.log(20.0))))
        self.norm = nn.LayerNorm(templates)
        self.head = nn.Sequential(nn.Linear(templates, 64), nn.ReLU(), nn.Linear(64, embedding_dim))
        r = (torch.arange(radii, dtype=torch.float32) + 0.5) / radii
        self.register_buffer("ring_weight", r.sqrt()[:, None], persistent=False)
        self._grid = None
        self._grid_box = 0

    def rings(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 1, m, m) -> (b, offsets, radii, angles) polar samples about the centre moved by each of ``offsets``
        (pixels; the first is the centre itself), √r-weighted, zero-mean and of unit norm — one grid_sample."""
        m = x.shape[-1]
        if getattr(self, "_rings_box", None) != (m, x.device):  # every offset's grid, stacked along the radius
            shift = (self.offsets.flip(-1) / ((m - 1) / 2)).to(x.device)  # (dy, dx) -> grid (x, y) units
            self._rings_grid = (self._polar_grid(x) + shift[:, None, None, :]).reshape(1, -1, self.angles, 2)
            self._rings_box = (m, x.device)
        grid = self._rings_grid.expand(x.shape[0], -1, -1, -1).to(x.dtype)
        p = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
        p = p.reshape(x.shape[0], len(self.offsets), self.radii, self.angles) * self.ring_weight
        p = p - p.mean((-2, -1), keepdim=True)
        return p / p.flatten(2).norm(dim=-1).clamp_min(1e-6)[..., None, None]

    @torch.no_grad()
    def initialise(self, images: torch.Tensor, labels: np.ndarray, *, batch: int = 4096) -> None:
        """Templates = means of the images of each label (labels 0 .. templates − 1; a label without members
        keeps its random start). The images are sampled ``batch`` at a time."""
        t = self.templates.shape[0]
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        sums = torch.zeros_like(self.templates)
        counts = torch.zeros(t, dtype=self.templates.dtype, device=self.templates.device)
        for start in range(0, len(images), batch):
            lab = labels[start:start + batch].to(self.templates.device)
            keep = (lab >= 0) & (lab < t)
            p = self.rings(images[start:start + batch][:, None])[keep, 0]  # the centred samples
            sums.index_add_(0, lab[keep], p)
            counts.index_add_(0, lab[keep], torch.ones_like(lab[keep], dtype=counts.dtype))
        filled = counts > 0
        self.templates[filled] = sums[filled] / counts[filled][:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.templates - self.templates.mean((-2, -1), keepdim=True)
        t = t / t.flatten(1).norm(dim=1).clamp_min(1e-6)[:, None, None]
        spectrum = torch.einsum("bork,trk->btok", torch.fft.rfft(self.rings(x), dim=-1),
                                torch.fft.rfft(t, dim=-1).conj())
        corr = torch.fft.irfft(spectrum, n=self.angles, dim=-1).flatten(2)  # (b, templates, offsets × angles)
        beta = self.log_beta.exp()
        score = (torch.logsumexp(beta * corr, dim=-1) - np.log(corr.shape[-1])) / beta
        return self.head(self.norm(score))


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, *, margin: float,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ w [(1 − y) d² + y max(margin − d, 0)²] / (2 Σ w)`` with ``d = ‖a − b‖``; y = 1 for a negative pair.

    Without ``weights`` this is ``1/(2N) Σ [...]``, the source project's loss.
    """
    d = torch.sqrt(((a - b) ** 2).sum(-1) + 1e-12)
    per_pair = (1 - y) * d**2 + y * torch.clamp(margin - d, min=0) ** 2
    if weights is None:
        return 0.5 * per_pair.mean()
    return 0.5 * (weights * per_pair).sum() / weights.sum().clamp_min(1e-12)


def ctf_bank(box: int, count: int, rng: np.random.Generator, *, first_zero=(0.15, 0.5)) -> torch.Tensor:
    """(count, box, box // 2 + 1) |CTF| on the rfft grid of the work images (what phase-flipped data carry).

    Dimensionless: 300 kV, Cs 0, amplitude contrast 0.1, one pixel = 1 Å, and a defocus that puts the first zero
    at a random frequency in ``first_zero`` (cycles per work pixel), so the modulation is the same whatever the
    stack's pixel size.
    """
    lam = electron_wavelength(300.0)
    k1 = rng.uniform(*first_zero, count)
    defocus = 1.0 / (lam * k1**2)  # the first zero of sin(pi lam dz k^2) at k1
    ctf = ctf_2d((box, box), pixel_size=1.0, defocus_u=defocus, cs=0.0, amplitude_contrast=0.1)
    return torch.as_tensor(np.abs(ctf), dtype=torch.float32)


class _Augmenter:
    """Random rotation + shift of every image of a pair; the copy of an instance pair also gets any rotation,
    a |CTF| modulation and fresh noise."""

    def __init__(self, params: SiameseParams, box: int, sigma: float, gen: torch.Generator,
                 rng: np.random.Generator, device):
        self.p, self.gen, self.m, self.sigma = params, gen, box, sigma
        self.mask = soft_mask(box, 0.45 * box).to(device)
        self.ctf = ctf_bank(box, 64, rng).to(device) if params.augment_ctf > 0 else None

    def __call__(self, x: torch.Tensor, copy: np.ndarray) -> torch.Tensor:
        p, n, gen = self.p, x.shape[0], self.gen
        copy_t = torch.as_tensor(copy)
        limit = torch.where(copy_t, torch.tensor(max(p.instance_rotation, p.augment_rotation)),
                            torch.tensor(p.augment_rotation))
        angles = (torch.rand(n, generator=gen) * 2 - 1) * limit
        shifts = (torch.rand(n, 2, generator=gen) * 2 - 1) * p.augment_shift
        if p.augment_rotation > 0 or p.augment_shift > 0 or copy.any():
            x = transform_images(x, angles=angles.to(x.device), shifts=shifts.to(x.device), mode="bilinear")
        if not copy.any():
            return x
        if self.ctf is not None:
            use = copy_t & (torch.rand(n, generator=gen) < p.augment_ctf)
            if use.any():
                pick = torch.randint(len(self.ctf), (int(use.sum()),), generator=gen).to(x.device)
                spectrum = torch.fft.rfft2(x[use.to(x.device)])
                x = x.clone()
                x[use.to(x.device)] = torch.fft.irfft2(spectrum * self.ctf[pick], s=(self.m, self.m))
        if p.augment_noise > 0 and self.sigma > 0:
            noise = torch.randn(x.shape, generator=gen).to(x.device) * (p.augment_noise * self.sigma) * self.mask
            x = x + noise * copy_t.to(x.device)[:, None, None]
        return x


def build_encoder(config: dict) -> nn.Module:
    """The encoder a model file's ``config`` describes (files written before ``encoder`` existed: cartesian)."""
    if config.get("encoder", "cartesian") == "templates":
        return TemplateEncoder(templates=config["templates"], embedding_dim=config["embedding_dim"],
                               shift=config.get("template_shift", 0.0))
    if config.get("encoder", "cartesian") == "polar":
        return PolarEncoder(channels=config["channels"], embedding_dim=config["embedding_dim"],
                            harmonics=config.get("harmonics", 0))
    return Encoder(channels=config["channels"], embedding_dim=config["embedding_dim"], pool_grid=config["pool_grid"])


@torch.no_grad()
def embed(net: nn.Module, images: np.ndarray, *, device="cpu", batch: int = 1024) -> np.ndarray:
    """(n, m, m) work images -> (n, embedding_dim) float32 embeddings (eval mode)."""
    net.eval()
    out = []
    for start in range(0, len(images), batch):
        x = torch.as_tensor(np.asarray(images[start:start + batch], dtype=np.float32), device=device)[:, None]
        out.append(net(x).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class SiameseResult:
    """Labels (n,) 0..k-1 of the last round, embeddings (n, d), the model and the per-round history."""

    labels: np.ndarray
    embeddings: np.ndarray
    model: ModelFile
    history: list


def _sub_classes(images: np.ndarray, labels: np.ndarray, k: int, per_class: int, seed: int) -> np.ndarray:
    """Labels 0 .. k·per_class − 1: each class split into ``per_class`` sub-classes by KMeans on its PCA scores
    (the templates encoder starts one template from each sub-class mean)."""
    out = np.full(len(labels), -1, np.int64)
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        if per_class == 1 or len(idx) < 2 * per_class:  # too few to split: the members are dealt out in turn
            out[idx] = c * per_class + np.arange(len(idx)) % per_class
            continue
        sub, _ = kmeans_labels(pca_features(images[idx], 10, seed=seed), per_class, seed=seed, n_init=2)
        out[idx] = c * per_class + sub
    return out


def check_classes(n: int, k: int, *, name=None) -> None:
    """CryodenInputError unless a stack of ``n`` particles can be split into ``k`` classes (2 <= k <= n)."""
    if n < 2:
        raise CryodenInputError(name, f"has {n} particle(s); clustering needs at least 2")
    if not 2 <= k <= n:
        raise CryodenInputError(name, f"has {n} particles; the number of classes must be between 2 and {n}, "
                                      f"got {k}")


def iter_train_siamese(images: np.ndarray, k: int, labels: np.ndarray, params: SiameseParams | None = None, *,
                       device="cpu", model: ModelFile | None = None, train: bool = True,
                       checkpoint: Checkpointer | None = None, resume: bool = False,
                       confidence: np.ndarray | None = None,
                       ) -> Generator[ProgressEvent, None, SiameseResult]:
    """Rounds of train → embed → KMeans on (n, m, m) work images, starting from pseudo-``labels``.

    ``confidence`` (n,) ranks the starting labels (higher: surer; e.g. the KMeans margin); when None it is the
    :func:`~.pseudo_labels.label_confidence` of the labels in the images' first principal components.
    ``model`` continues from a saved encoder; ``train=False`` only embeds with it and runs KMeans once.
    ``checkpoint`` saves the state after a round when ``checkpoint.every`` seconds have passed; with ``resume``
    the training continues from the last saved round.
    Yields "train" events (loss per step) and returns a :class:`SiameseResult`.
    Raises CryodenInputError for fewer than 2 particles or k outside 2..n.
    """
    params = validate(params or SiameseParams())
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise CryodenInputError(None, f"particles must be a stack of square images (n, m, m), got {images.shape}")
    n, m = images.shape[0], images.shape[-1]
    check_classes(n, int(k))
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise CryodenInputError(None, f"{n} particles but {labels.shape[0] if labels.ndim else 0} pseudo-labels")
    ctx = distributed.context()  # under torchrun: DDP and one pair stream per process
    device = distributed.training_device(torch.device(device), ctx)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(distributed.rank_seed(params.seed, ctx))
    gen = torch.Generator().manual_seed(distributed.rank_seed(params.seed, ctx))
    config = {"channels": params.channels, "embedding_dim": params.embedding_dim, "pool_grid": params.pool_grid,
              "encoder": params.encoder, "harmonics": params.harmonics, "work_box": m,
              "templates": params.templates_per_class * int(k), "template_shift": params.template_shift}
    if model is not None:
        config = {**config, "encoder": model.config.get("encoder", "cartesian"),
                  **{key: model.config[key] for key in ("channels", "embedding_dim", "pool_grid")},
                  "harmonics": model.config.get("harmonics", 0), "templates": model.config.get("templates", 0),
                  "template_shift": model.config.get("template_shift", 0.0)}
    net = build_encoder(config).to(device)
    data = torch.as_tensor(images, device=device)
    if model is not None:
        net.load_state_dict(model.state_dict["encoder"])
    elif isinstance(net, TemplateEncoder):
        net.initialise(data, _sub_classes(images, labels, int(k), params.templates_per_class, params.seed))
    steps = int(np.clip(round(params.epochs * n / params.batch_size), params.min_steps, params.max_steps))
    rounds = params.rounds if train else 1
    total = rounds * steps if train else 1
    clock = StageClock("train", total, time_budget=params.time_budget)
    model_net = net
    net = distributed.wrap(net, ctx)
    optimiser = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
    history: list[dict] = []
    step = 0
    embeddings = None
    out_of_time = False
    first_round = 0
    if train:
        if confidence is None:
            confidence = label_confidence(pca_features(images, params.pca_components, seed=params.seed), labels, k)
        confidence = np.asarray(confidence, dtype=np.float64)
        augment = _Augmenter(params, m, noise_level(images), gen, rng, device)
    if checkpoint is not None and train:
        checkpoint.bind(kind=KIND, n=n, box=m, k=int(k), params=as_dict(params), world_size=ctx.world_size,
                        start_labels=hashlib.sha256(np.asarray(labels, np.int64).tobytes()).hexdigest())
        saved = checkpoint.load() if resume else None
        if saved is not None:
            model_net.load_state_dict(saved["encoder"])
            optimiser.load_state_dict(saved["optimizer"])
            first_round, step, history = int(saved["round"]), int(saved["step"]), list(saved["history"])
            labels = np.asarray(saved["labels"].numpy(), dtype=labels.dtype)
            if "confidence" in saved:
                confidence = saved["confidence"].numpy().astype(np.float64)
            clock.start -= float(saved["elapsed"])
            restore_rng(saved["rng"], numpy_rng=rng, generator=gen)
            yield clock.event(step, resumed_from=step, round=first_round)
    for r in range(first_round, rounds):
        losses = []
        if train and not out_of_time:
            net.train()
            keep = confident_subset(confidence, labels, params.confident_fraction)
            for _ in range(steps):
                i, j, y, same = sample_training_pairs(labels, keep, params.batch_size, rng,
                                                      instance_fraction=params.instance_fraction)
                first = augment(data[i], np.zeros(len(i), bool))
                second = augment(data[j], same)
                both = net(torch.cat([first, second])[:, None])  # one forward a step
                a, b = both[: len(i)], both[len(i):]
                loss = contrastive_loss(a, b, torch.as_tensor(y, device=device), margin=params.margin)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(distributed.mean(float(loss.detach()), ctx))
                step += 1
                yield clock.event(step, loss=losses[-1], round=r + 1)
                if distributed.agree(params.time_budget is not None and clock.elapsed > params.time_budget, ctx):
                    out_of_time = True
                    break
        embeddings = embed(model_net, images, device=device)
        new, _ = kmeans_labels(embeddings, k, seed=params.seed + r)
        agreement = labels_agreement(labels, new)
        history.append({"round": r + 1, "steps": len(losses), "first_loss": losses[0] if losses else None,
                        "last_loss": float(np.mean(losses[-10:])) if losses else None,
                        "ari_to_previous": agreement, "seconds": clock.elapsed})
        log.info("siamese round %d: loss %s, ARI to previous labels %.3f", r + 1,
                 history[-1]["last_loss"], agreement)
        labels = new
        if train:  # the next round's pairs come from the confidence of the new labels in the new embedding
            confidence = label_confidence(embeddings, labels, k)
        if agreement > params.stop_ari or out_of_time:
            break
        if checkpoint is not None and train and ctx.is_main and checkpoint.due():
            checkpoint.save({"encoder": to_cpu(model_net.state_dict()), "optimizer": to_cpu(optimiser.state_dict()),
                             "round": r + 1, "step": step, "history": list(history),
                             "labels": torch.as_tensor(np.asarray(labels, np.int64)),
                             "confidence": torch.as_tensor(confidence), "elapsed": clock.elapsed,
                             "rng": rng_state(numpy_rng=rng, generator=gen)})
    if train:
        yield clock.event(total, total=total)
    state = {"encoder": {key: v.detach().cpu() for key, v in model_net.state_dict().items()}}
    extra = {"history": history, "params": as_dict(params), "classes": int(k)}
    if model is not None:
        extra["history"] = list(model.extra.get("history", [])) + history
    model_file = ModelFile(kind=KIND, config=config, state_dict=state,
                           normalization={"work_box": m, "per_image": "zero mean, unit variance in a soft disc"},
                           extra=extra)
    return SiameseResult(labels, embeddings, model_file, history)
