"""Siamese clustering: an encoder trained with a contrastive loss on pairs drawn from KMeans pseudo-labels.

Rounds of **train → embed → KMeans → relabel** until two rounds agree (ARI above ``stop_ari``) or
``rounds`` is reached. The encoder (:class:`Encoder`) is a small conv net with adaptive average pooling
to a fixed grid and a projection head, so it works for any box size. Pairs are half same-label (y = 0),
half different-label (y = 1); the loss is

``L = 1/(2N) Σ [(1 − y) d² + y max(margin − d, 0)²]``, d = ‖f(a) − f(b)‖,

Invariance to in-plane rotation and shift: the images the encoder sees have been pre-aligned by the
classical reference-free alignment (:func:`~napari_cryoden.cluster.mra.iter_prealign`), and the pairs are
augmented with random rotations (± ``augment_rotation``) and shifts (± ``augment_shift``) that cover the
residual misalignment. ``docs/cluster.md`` shows why (learning full rotation invariance from scratch at
SNR 0.1 with a CPU budget does not work; pre-alignment does).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..align.transforms import transform_images
from ..checkpoint import Checkpointer, restore_rng, rng_state
from ..models import ModelFile, to_cpu
from ..params import as_dict, param, validate
from ..progress import ProgressEvent, StageClock
from .pseudo_labels import kmeans_labels, labels_agreement, sample_pairs

log = logging.getLogger(__name__)

KIND = "cluster/siamese"


@dataclass(frozen=True)
class SiameseParams:
    """Settings of Siamese clustering (``siamese``)."""

    rounds: int = param(3, "train → embed → KMeans rounds at most", min=1, max=50)
    epochs: float = param(2.0, "training per round, in passes of pairs over the particles", min=0.0)
    min_steps: int = param(30, "training steps per round at least", min=0)
    max_steps: int = param(100, "training steps per round at most", min=1)
    batch_size: int = param(64, "pairs per training step", min=2)
    learning_rate: float = param(1e-3, "Adam learning rate", min=0.0)
    margin: float = param(2.0, "contrastive margin: different-label pairs are pushed this far apart", min=0.0)
    embedding_dim: int = param(16, "size of the embedding", min=2, max=512)
    channels: int = param(8, "channels of the first conv level (x2, x4 below)", min=4, max=128)
    pool_grid: int = param(4, "adaptive average pooling grid (1: fully global pooling)", min=1, max=8)
    augment_rotation: float = param(8.0, "pairs are rotated by up to ± this many degrees (180: any angle)",
                                    min=0.0, max=180.0)
    augment_shift: float = param(1.0, "pairs are shifted by up to ± this many work-box pixels", min=0.0)
    stop_ari: float = param(0.98, "stop when the ARI between two rounds' labels exceeds this", min=0.0, max=1.0)
    pca_components: int = param(20, "principal components of the initial KMeans", min=1)
    refine_iterations: int = param(3, "MRA iterations seeded by the Siamese classes (0: Siamese alone)",
                                   min=0, max=100)
    work_box: int = param(32, "images are Fourier-cropped to this box for clustering (pixels)", min=16)
    prealign_iterations: int = param(3, "passes of the classical reference-free pre-alignment (0: none)",
                                     min=0, max=20)
    time_budget: float | None = param(None, "stop training after this many seconds", min=0.0)
    seed: int = param(0, "random seed")


class Encoder(nn.Module):
    """(b, 1, m, m) images -> (b, embedding_dim): three conv levels, adaptive pooling, projection head."""

    def __init__(self, *, channels: int = 16, embedding_dim: int = 16, pool_grid: int = 4):
        super().__init__()
        c = channels

        def block(i, o, k):
            return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2), nn.GroupNorm(min(4, o), o), nn.ReLU())

        self.features = nn.Sequential(block(1, c, 5), nn.MaxPool2d(2), block(c, 2 * c, 3), nn.MaxPool2d(2),
                                      block(2 * c, 4 * c, 3), nn.AdaptiveAvgPool2d(pool_grid))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * pool_grid**2, 64), nn.ReLU(),
                                  nn.Linear(64, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, *, margin: float) -> torch.Tensor:
    """``1/(2N) Σ [(1 − y) d² + y max(margin − d, 0)²]`` with ``d = ‖a − b‖``; y = 1 for different clusters."""
    d = torch.sqrt(((a - b) ** 2).sum(-1) + 1e-12)
    return 0.5 * ((1 - y) * d**2 + y * torch.clamp(margin - d, min=0) ** 2).mean()


def _augment(x: torch.Tensor, params: SiameseParams, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if params.augment_rotation <= 0 and params.augment_shift <= 0:
        return x
    angles = (torch.rand(n, generator=gen) * 2 - 1) * params.augment_rotation
    shifts = (torch.rand(n, 2, generator=gen) * 2 - 1) * params.augment_shift
    return transform_images(x, angles=angles.to(x.device), shifts=shifts.to(x.device), mode="bilinear")


def build_encoder(config: dict) -> Encoder:
    return Encoder(channels=config["channels"], embedding_dim=config["embedding_dim"], pool_grid=config["pool_grid"])


@torch.no_grad()
def embed(net: Encoder, images: np.ndarray, *, device="cpu", batch: int = 1024) -> np.ndarray:
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


def iter_train_siamese(images: np.ndarray, k: int, labels: np.ndarray, params: SiameseParams | None = None, *,
                       device="cpu", model: ModelFile | None = None, train: bool = True,
                       checkpoint: Checkpointer | None = None, resume: bool = False,
                       ) -> Generator[ProgressEvent, None, SiameseResult]:
    """Rounds of train → embed → KMeans on (n, m, m) work images, starting from pseudo-``labels``.

    ``model`` continues from a saved encoder; ``train=False`` only embeds with it and runs KMeans once.
    ``checkpoint`` saves the state after a round when ``checkpoint.every`` seconds have passed; with ``resume``
    the training continues from the last saved round.
    Yields "train" events (loss per step) and returns a :class:`SiameseResult`.
    """
    params = validate(params or SiameseParams())
    ctx = distributed.context()  # under torchrun: DDP and one pair stream per process
    device = distributed.training_device(torch.device(device), ctx)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(distributed.rank_seed(params.seed, ctx))
    gen = torch.Generator().manual_seed(distributed.rank_seed(params.seed, ctx))
    n, m = images.shape[0], images.shape[-1]
    config = {"channels": params.channels, "embedding_dim": params.embedding_dim, "pool_grid": params.pool_grid,
              "work_box": m}
    if model is not None:
        config = {**config, **{key: model.config[key] for key in ("channels", "embedding_dim", "pool_grid")}}
    net = build_encoder(config).to(device)
    if model is not None:
        net.load_state_dict(model.state_dict["encoder"])
    data = torch.as_tensor(np.asarray(images, dtype=np.float32), device=device)
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
    if checkpoint is not None and train:
        checkpoint.bind(kind=KIND, n=n, box=m, k=int(k), params=as_dict(params), world_size=ctx.world_size,
                        start_labels=hashlib.sha256(np.asarray(labels, np.int64).tobytes()).hexdigest())
        saved = checkpoint.load() if resume else None
        if saved is not None:
            model_net.load_state_dict(saved["encoder"])
            optimiser.load_state_dict(saved["optimizer"])
            first_round, step, history = int(saved["round"]), int(saved["step"]), list(saved["history"])
            labels = np.asarray(saved["labels"].numpy(), dtype=labels.dtype)
            clock.start -= float(saved["elapsed"])
            restore_rng(saved["rng"], numpy_rng=rng, generator=gen)
            yield clock.event(step, resumed_from=step, round=first_round)
    for r in range(first_round, rounds):
        losses = []
        if train and not out_of_time:
            net.train()
            for _ in range(steps):
                i, j, y = sample_pairs(labels, params.batch_size, rng)
                both = net(_augment(data[np.concatenate([i, j])], params, gen)[:, None])  # one forward a step
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
        if agreement > params.stop_ari or out_of_time:
            break
        if checkpoint is not None and train and ctx.is_main and checkpoint.due():
            checkpoint.save({"encoder": to_cpu(model_net.state_dict()), "optimizer": to_cpu(optimiser.state_dict()),
                             "round": r + 1, "step": step, "history": list(history),
                             "labels": torch.as_tensor(np.asarray(labels, np.int64)), "elapsed": clock.elapsed,
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
