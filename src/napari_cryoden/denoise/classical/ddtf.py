"""DDTF: data-driven tight frame denoising (Cai, Ji, Shen, Ye 2014).

The frame is a bank of ``patch_size``² filters ``W`` (the columns of an orthogonal ``n × n`` matrix,
``n = patch_size²``) learned from the noisy image's own patches ``Y`` (columns, stride 1). Because ``W`` is
orthogonal, analysis and synthesis are ``C = Wᵀ Y`` and ``Y = W C``, and overlapping patches make a tight
frame of the image. Starting from the 2D DCT filters, each of ``iterations`` rounds alternates

1. **sparse coding**: ``C = H_λ(Wᵀ Y)`` (hard thresholding, ``λ = threshold · σ``), and
2. **filter update**: ``W = argmin ‖Y − W C‖_F`` subject to ``WᵀW = I``, the orthogonal Procrustes
   problem, solved by the SVD ``Y Cᵀ + εW₀ = U Σ Vᵀ → W = U Vᵀ`` (the small ``εW₀``, ε = 10⁻³·‖Y Cᵀ‖/n, keeps
   the solution unique when some filters lost all their coefficients to the threshold).

Denoising thresholds the coefficients of every overlapping patch with the learned filters and averages the
overlapping reconstructions ``W H_λ(Wᵀ y)``. The filter bank stays orthogonal to rounding error
(``‖WᵀW − I‖`` about 1e-6 in float32). σ is given (``noise_sigma``) or estimated (MAD of the finest
diagonal Haar band). Learning runs on up to ``train_patches`` patches drawn at random.

Volumes: slice-wise along z (one filter bank per slice, one σ for the volume); stacks: image by image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...params import param
from ..registry import DenoiseMethod, register
from ._common import (
    average_patches,
    dct_matrix,
    extract_patches,
    iter_tiled_method,
)

__all__ = ["DDTFParams", "ddtf_images", "learn_tight_frame", "iter_ddtf"]

#: Images larger than this (plus a margin) are processed in overlapping tiles (bounded memory).
TILE = 512


@dataclass(frozen=True)
class DDTFParams:
    noise_sigma: float | None = param(None, "noise standard deviation in input units; estimated from the data "
                                            "(MAD of the finest diagonal Haar band) when not given", min=0.0, basic=True)
    patch_size: int = param(8, "filter (patch) side in pixels", min=2, max=16, unit="px")
    threshold: float = param(3.0, "hard threshold in units of the noise sigma", min=0.0, max=20.0)
    iterations: int = param(25, "filter-learning rounds (thresholding + SVD update)", min=0, max=500)
    train_patches: int = param(20000, "patches drawn at random to learn the filters", min=16, max=10**7)


def learn_tight_frame(patches: torch.Tensor, thresholds: torch.Tensor, *, iterations: int = 25) -> torch.Tensor:
    """Learn orthogonal filter banks from patches.

    Parameters
    ----------
    patches
        (b, n, m) patch columns, one set per batch item.
    thresholds
        (b,) hard thresholds λ (input units).

    Returns
    -------
    torch.Tensor
        (b, n, n) filter banks ``W`` with orthonormal columns.
    """
    b, n, _ = patches.shape
    size = int(round(np.sqrt(n)))
    c = dct_matrix(size)
    w = torch.as_tensor(np.kron(c, c).T, dtype=patches.dtype, device=patches.device).expand(b, -1, -1).contiguous()
    lam = thresholds.to(patches).reshape(b, 1, 1)
    for _ in range(iterations):
        coefs = w.transpose(1, 2) @ patches
        coefs = coefs * (coefs.abs() > lam)
        cross = (patches @ coefs.transpose(1, 2)).double()
        # a small pull towards the current bank keeps the Procrustes solution unique when filters have no
        # coefficient left above the threshold (the cross-correlation is then rank-deficient)
        scale = cross.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(b, 1, 1) / n
        u, _, vh = torch.linalg.svd(cross + 1e-3 * scale * w.double())
        w = (u @ vh).to(patches.dtype)
    return w


@torch.inference_mode()
def ddtf_images(images: torch.Tensor, sigmas: torch.Tensor, *, patch_size: int = 8, threshold: float = 3.0,
                iterations: int = 25, train_patches: int = 20000, seed: int = 0, return_filters: bool = False):
    """DDTF denoising of a batch of 2D images (one filter bank per image).

    Parameters
    ----------
    images
        (b, y, x) float32; sides at least ``patch_size``.
    sigmas
        (b,) noise standard deviations (input units).
    Other parameters as in :class:`DDTFParams`; ``seed`` picks the training patches.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        (b, y, x) estimate, and with ``return_filters`` the (b, p², p²) orthogonal filter banks.
    """
    b, h, w = images.shape
    patches, index = extract_patches(images, patch_size, 1)
    m = patches.shape[2]
    gen = torch.Generator().manual_seed(int(seed))
    train_idx = torch.randperm(m, generator=gen)[:min(train_patches, m)].to(images.device)
    lam = threshold * sigmas.to(images)
    filters = learn_tight_frame(patches[:, :, train_idx], lam, iterations=iterations)
    coefs = filters.transpose(1, 2) @ patches
    coefs = coefs * (coefs.abs() > lam.reshape(b, 1, 1))
    out = average_patches(filters @ coefs, index, (h, w))
    return (out, filters) if return_filters else out


def iter_ddtf(data, params: DDTFParams, *, is_stack: bool, voxel_size=None, seed: int = 0, device: str = "auto",
              name=None, out=None):
    """DDTF (registry interface): 2D images, stacks image by image, volumes slice by slice along z."""
    result = yield from iter_tiled_method(
        data, lambda images, sig: ddtf_images(
            images, sig, patch_size=params.patch_size, threshold=params.threshold, iterations=params.iterations,
            train_patches=params.train_patches, seed=seed),
        is_stack=is_stack, name=name, device=device, noise_sigma=params.noise_sigma, min_side=params.patch_size,
        tile=TILE, margin=2 * params.patch_size,
        bytes_per_image=lambda h, w: 4.0 * h * w * 5 * params.patch_size**2, out=out)
    return result

register(DenoiseMethod(
    name="ddtf", title="DDTF (data-driven tight frame)", family="classical", params=DDTFParams, denoise=iter_ddtf,
    description="Hard thresholding in an orthogonal filter bank learned from the image's own patches "
                "(alternating thresholding and SVD/Procrustes updates). Stacks image by image; volumes "
                "slice by slice along z.",
))
