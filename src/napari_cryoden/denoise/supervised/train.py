"""Training the supervised denoisers (cGAN and autoencoder) on (noisy, clean) pairs.

Pairs come from the simulator (:func:`napari_cryoden.simulate.simulate_particles`: random views of one or
more maps, in-plane rotations and shifts, a CTF and white noise at a chosen SNR; the target is the noise-free
particle, with the same CTF, low-passed to ``target_resolution`` Å) or from the user (an (n, y, x) noisy
stack and the matching clean stack, used as they are).

- **autoencoder**: the U-Net generator alone, trained with an L1 (or L2) loss.
- **cgan** (pix2pix, Isola et al. 2017): the same generator ``G`` and a PatchGAN discriminator ``D`` on
  (image, condition) pairs; ``D`` minimises ``BCE(D(y, x), 1) + BCE(D(G(x), x), 0)`` and ``G`` minimises
  ``BCE(D(G(x), x), 1) + 100 · |G(x) − y|₁``; Adam with β₁ = 0.5, learning rates 1.5e-4 (D) and 4e-4 (G).

Normalisation: every input image is standardised by its own mean and standard deviation, the target is
expressed in the same units (``(clean − mean(noisy)) / std(noisy)``), and a prediction is mapped back with
that image's mean and std, so outputs are in the input's units.

**Trust.** A supervised denoiser learns what particles looked like *in its training data*. A cGAN in
particular is rewarded for outputs that look like the training targets, so on data unlike its simulation
(another particle, pixel size, SNR, CTF or noise colour) it can add density that is not there or remove
density that is. Its output is only as trustworthy as the simulation it was trained on; check it against a
self-supervised or classical result before interpreting fine detail.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import CryodenInputError, require_finite
from ...models import ModelFile
from ...progress import ProgressEvent, StageClock
from .networks import build_discriminator, build_generator

log = logging.getLogger(__name__)

__all__ = ["KINDS", "lowpass", "simulate_training_pairs", "iter_train_supervised", "standardise"]

KINDS = ("cgan", "autoencoder")


def lowpass(images: np.ndarray, *, resolution: float, pixel_size: float, edge: float = 0.02) -> np.ndarray:
    """Low-pass 2D images (..., y, x) to ``resolution`` Å with a raised-cosine edge ``edge`` cycles/pixel wide.

    Returns float32; a resolution finer than Nyquist (2 × pixel size) leaves the images unchanged.
    """
    arr = np.asarray(images, dtype=np.float32)
    cutoff = pixel_size / float(resolution)                          # cycles per pixel
    if cutoff >= 0.5:
        return arr.copy()
    h, w = arr.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    lo, hi = cutoff - edge / 2, cutoff + edge / 2
    transfer = np.clip((hi - f) / max(hi - lo, 1e-9), 0.0, 1.0)
    transfer = 0.5 - 0.5 * np.cos(np.pi * transfer)
    out = np.fft.irfft2(np.fft.rfft2(arr) * transfer, s=(h, w))
    return out.astype(np.float32)


def simulate_training_pairs(maps: Sequence[np.ndarray], voxel_sizes: Sequence[float], *, n_pairs: int = 1024,
                            box: int = 64, pixel_size: float | None = None, snr: float = 0.1,
                            ctf_mode: str = "full", target_resolution: float | None = 10.0,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(noisy, target, pixel_size): simulated particles and their clean versions low-passed to
    ``target_resolution`` Å (None: not low-passed)."""
    from ...simulate import simulate_particles

    sim = simulate_particles(list(maps), voxel_size=list(voxel_sizes), n_particles=n_pairs, box=box,
                             pixel_size=pixel_size, ctf_mode=ctf_mode, snr=snr, seed=seed)
    target = sim.clean if target_resolution is None else lowpass(sim.clean, resolution=target_resolution,
                                                                 pixel_size=sim.pixel_size)
    return sim.images, target, sim.pixel_size


def standardise(noisy: torch.Tensor, *others: torch.Tensor):
    """Per-image standardisation of (b, 1, y, x) ``noisy`` and the same affine map applied to ``others``."""
    mean = noisy.mean(dim=(2, 3), keepdim=True)
    std = noisy.std(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    return ((noisy - mean) / std, *[(o - mean) / std for o in others], mean, std)


def _check_pairs(noisy, clean) -> tuple[np.ndarray, np.ndarray]:
    noisy = np.asarray(noisy, dtype=np.float32)
    clean = np.asarray(clean, dtype=np.float32)
    for arr, name in ((noisy, "noisy pairs"), (clean, "clean pairs")):
        if arr.ndim != 3:
            raise CryodenInputError(name, f"must be an (n, y, x) stack, got shape {arr.shape}")
        require_finite(arr, name=name)
    if noisy.shape != clean.shape:
        raise CryodenInputError("clean pairs", f"must have the shape of the noisy stack {noisy.shape}, got "
                                               f"{clean.shape}")
    if len(noisy) < 2:
        raise CryodenInputError("noisy pairs", "at least 2 image pairs are needed")
    return noisy, clean


def _random_crops(noisy: np.ndarray, clean: np.ndarray, idx: np.ndarray, crop: int, rng: np.random.Generator):
    h, w = noisy.shape[-2:]
    if crop >= h and crop >= w:
        return noisy[idx], clean[idx]
    ch, cw = min(crop, h), min(crop, w)
    ys = rng.integers(0, h - ch + 1, len(idx))
    xs = rng.integers(0, w - cw + 1, len(idx))
    a = np.stack([noisy[i, y:y + ch, x:x + cw] for i, y, x in zip(idx, ys, xs)])
    b = np.stack([clean[i, y:y + ch, x:x + cw] for i, y, x in zip(idx, ys, xs)])
    return a, b


def iter_train_supervised(kind: str, *, noisy: np.ndarray | None = None, clean: np.ndarray | None = None,
                          maps: Sequence[np.ndarray] | None = None, voxel_sizes: Sequence[float] | None = None,
                          snr: float = 0.1, n_pairs: int = 1024, box: int = 64, pixel_size: float | None = None,
                          ctf_mode: str = "full", target_resolution: float | None = 10.0, epochs: int | None = 20,
                          time_budget: float | None = None, batch_size: int = 16, crop: int = 64,
                          channels: int = 16, depth: int = 3, residual_blocks: int = 2, loss: str = "l1",
                          l1_weight: float = 100.0, validation_fraction: float = 0.1, seed: int = 0,
                          device: str = "auto", preview_every: int = 0
                          ) -> Generator[ProgressEvent, None, ModelFile]:
    """Train a supervised denoiser; yields progress events and returns the :class:`ModelFile`.

    Parameters
    ----------
    kind
        "cgan" or "autoencoder".
    noisy, clean
        User-supplied (n, y, x) training pairs (used as given). When None, pairs are simulated from ``maps``.
    maps, voxel_sizes
        (z, y, x) maps and their voxel sizes (Å) to simulate ``n_pairs`` pairs of ``box``² pixels at
        ``pixel_size`` Å (default: the first map's) with CTF ``ctf_mode`` and ``snr``; targets low-passed to
        ``target_resolution`` Å. Default: the built-in EMD-5625 map.
    epochs, time_budget
        Stop after ``epochs`` passes over the training pairs or ``time_budget`` seconds (wall clock),
        whichever comes first (at least one is needed).
    batch_size, crop
        Images per step; training images larger than ``crop`` are randomly cropped to it.
    channels, depth, residual_blocks
        Generator size (base channels, down-sampling levels, residual blocks at the bottom).
    loss
        Reconstruction loss of the autoencoder, "l1" or "l2" (the cGAN uses L1).
    l1_weight
        Weight of the L1 term of the cGAN generator loss (pix2pix: 100).
    validation_fraction
        Pairs held out to report a validation L1 after every epoch.
    seed, device
        Random seed (simulation, initial weights, batches) and torch device ("auto", "cpu", "cuda", ...).
    preview_every
        Attach a preview (one denoised validation image, input units) every this many steps (0: never).
    """
    if kind not in KINDS:
        raise CryodenInputError(None, f"kind must be one of {KINDS}, got {kind!r}")
    if loss not in ("l1", "l2"):
        raise CryodenInputError(None, f"loss must be 'l1' or 'l2', got {loss!r}")
    if epochs is None and time_budget is None:
        raise CryodenInputError(None, "give epochs or a time budget (or both)")
    from ...device import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clock = StageClock("simulate" if noisy is None else "prepare", 1)
    yield clock.event(0)
    if noisy is None:
        if maps is None:
            from ...sample_data import builtin_map

            m = builtin_map()
            maps, voxel_sizes = [m.data], [m.pixel_size]
        if voxel_sizes is None or len(voxel_sizes) != len(maps):
            raise CryodenInputError(None, "give one voxel size per map")
        noisy, clean, pixel_size = simulate_training_pairs(
            maps, voxel_sizes, n_pairs=n_pairs, box=box, pixel_size=pixel_size, snr=snr, ctf_mode=ctf_mode,
            target_resolution=target_resolution, seed=seed)
        source = {"source": "simulated", "snr": snr, "n_pairs": n_pairs, "box": box, "ctf_mode": ctf_mode,
                  "target_resolution": target_resolution}
    else:
        if clean is None:
            raise CryodenInputError(None, "user-supplied pairs need both the noisy and the clean stack")
        noisy, clean = _check_pairs(noisy, clean)
        source = {"source": "user pairs", "n_pairs": int(len(noisy))}
    yield clock.event(1)

    n = len(noisy)
    order = rng.permutation(n)
    n_val = max(1, int(round(validation_fraction * n))) if n >= 4 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))

    config = {"network": "unet2d-additive", "channels": channels, "depth": depth,
              "residual_blocks": residual_blocks, "discriminator_channels": channels}
    gen = build_generator(config).to(dev)
    opt_g = torch.optim.Adam(gen.parameters(), lr=4e-4, betas=(0.5, 0.999))
    disc = opt_d = None
    if kind == "cgan":
        disc = build_discriminator(config).to(dev)
        opt_d = torch.optim.Adam(disc.parameters(), lr=1.5e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    multiple = 2**depth

    def to_tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32, device=dev)[:, None]

    def fit_size(t: torch.Tensor) -> torch.Tensor:
        h, w = t.shape[-2:]
        return t[..., :h // multiple * multiple, :w // multiple * multiple]

    val_x = val_y = None
    if n_val:
        vx, vy = _random_crops(noisy, clean, val_idx, crop, np.random.default_rng(seed + 1))
        val_x, val_y = fit_size(to_tensor(vx)), fit_size(to_tensor(vy))

    history: dict[str, list] = {"epoch": [], "train_loss": [], "val_l1": []}
    total = steps_per_epoch * epochs if epochs is not None else 0
    clock = StageClock("train", total, time_budget=time_budget)
    yield clock.event(0, total=total)
    step = 0
    epoch = 0
    stop = False
    while not stop:
        gen.train()
        if disc is not None:
            disc.train()
        perm = rng.permutation(train_idx)
        losses = []
        for start in range(0, len(perm), batch_size):
            bx, by = _random_crops(noisy, clean, perm[start:start + batch_size], crop, rng)
            x, y = fit_size(to_tensor(bx)), fit_size(to_tensor(by))
            if rng.random() < 0.5:                                     # flips: particles have no handedness in 2D
                x, y = x.flip(-1), y.flip(-1)
            x, y, _, _ = standardise(x, y)
            fake = gen(x)
            if kind == "cgan":
                opt_d.zero_grad(set_to_none=True)
                real_logit = disc(y, x)
                fake_logit = disc(fake.detach(), x)
                loss_d = 0.5 * (bce(real_logit, torch.ones_like(real_logit))
                                + bce(fake_logit, torch.zeros_like(fake_logit)))
                loss_d.backward()
                opt_d.step()
                opt_g.zero_grad(set_to_none=True)
                adv_logit = disc(fake, x)
                recon = torch.mean(torch.abs(fake - y))
                loss_g = bce(adv_logit, torch.ones_like(adv_logit)) + l1_weight * recon
                loss_g.backward()
                opt_g.step()
                report = float(recon.detach())
                info = {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach())}
            else:
                opt_g.zero_grad(set_to_none=True)
                diff = fake - y
                loss_g = diff.abs().mean() if loss == "l1" else diff.square().mean()
                loss_g.backward()
                opt_g.step()
                report = float(loss_g.detach())
                info = {}
            losses.append(report)
            step += 1
            preview = None
            if preview_every and val_x is not None and step % preview_every == 0:
                preview = _predict_tensor(gen, val_x[:1])[0, 0].cpu().numpy()
            yield clock.event(step, loss=report, preview=preview, epoch=epoch + 1, **info)
            if time_budget is not None and clock.elapsed >= time_budget:
                stop = True
                break
        epoch += 1
        val_l1 = float("nan")
        if val_x is not None:
            xs, vy_n, _, _ = standardise(val_x, val_y)
            val_l1 = float(torch.mean(torch.abs(gen_eval(gen, xs) - vy_n)))
        history["epoch"].append(epoch)
        history["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        history["val_l1"].append(val_l1)
        log.info("epoch %d: train %.4g, validation L1 %.4g", epoch, history["train_loss"][-1], val_l1)
        if epochs is not None and epoch >= epochs:
            stop = True

    extra = {"history": history, "training": {**source, "kind": kind, "epochs": epoch, "steps": step,
                                              "batch_size": batch_size, "crop": crop, "loss": loss,
                                              "l1_weight": l1_weight, "seed": seed,
                                              "elapsed_s": round(clock.elapsed, 2)},
             "pixel_size": float(pixel_size) if pixel_size else None,
             "warning": "supervised output is only as trustworthy as its training simulation; a GAN can add "
                        "density that is not there"}
    if disc is not None:
        extra["discriminator"] = disc.state_dict()
    return ModelFile(kind=f"denoise/{kind}", config=config, state_dict=gen.state_dict(),
                     normalization={"mode": "per-image", "description": "each input image standardised by its "
                                    "own mean and std; outputs mapped back with them"},
                     extra=extra)


@torch.no_grad()
def gen_eval(gen: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Generator output in evaluation mode (then back to the previous mode)."""
    was_training = gen.training
    gen.eval()
    try:
        return gen(x)
    finally:
        gen.train(was_training)


@torch.no_grad()
def _predict_tensor(gen: nn.Module, x: torch.Tensor) -> torch.Tensor:
    xs, mean, std = standardise(x)
    return gen_eval(gen, xs) * std + mean
