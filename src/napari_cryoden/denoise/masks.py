"""Sampling masks: Bernoulli masks in real space (Self2Self) and blocky Bernoulli masks in Fourier space
(Fourier N2N). All masks are drawn with a ``torch.Generator`` so the same seed gives the same masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bernoulli_mask(shape, keep_probability: float, *, generator: torch.Generator | None = None,
                   device=None, block: tuple[int, ...] | None = None) -> torch.Tensor:
    """A {0, 1} float mask where each voxel (or each block of voxels) is kept with ``keep_probability``.

    ``shape`` is (batch, 1, *spatial). ``block`` (per spatial axis, e.g. (4, 1, 1)) drops whole blocks
    together: with noise correlated along an axis, dropping single voxels lets the network read the dropped
    noise from its correlated neighbours, so the dropped region must span the correlation length.
    """
    if not 0.0 < keep_probability < 1.0:
        raise ValueError(f"keep probability must be in (0, 1), got {keep_probability}")
    spatial = tuple(shape[2:])
    if block is None or all(b == 1 for b in block):
        u = torch.rand(shape, generator=generator, device=generator.device if generator else device)
        return (u < keep_probability).float().to(device) if device is not None else (u < keep_probability).float()
    block = tuple(int(b) for b in block)
    coarse = tuple(math.ceil(s / b) + 1 for s, b in zip(spatial, block))
    u = torch.rand((shape[0], shape[1], *coarse), generator=generator,
                   device=generator.device if generator else device)
    m = (u < keep_probability).float()
    m = F.interpolate(m, scale_factor=block, mode="nearest") if len(spatial) in (2, 3) else m
    # Random phase of the block grid so block edges are not always at the same voxels.
    offsets = [int(torch.randint(0, b, (1,), generator=generator, device=u.device)) for b in block]
    slices = tuple(slice(o, o + s) for o, s in zip(offsets, spatial))
    m = m[(slice(None), slice(None), *slices)]
    return m.to(device) if device is not None else m


def _frequency_radius(spatial: tuple[int, ...], device) -> torch.Tensor:
    """|k| in cycles/pixel on the rfftn grid of ``spatial``."""
    axes = [torch.fft.fftfreq(n, device=device) for n in spatial[:-1]] + [torch.fft.rfftfreq(spatial[-1], device=device)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))


def low_frequency_radius(ndim: int, fraction: float) -> float:
    """Radius (cycles/pixel) of the ball/disc holding ``fraction`` of the spectrum's volume ([-.5, .5]^d)."""
    if ndim == 3:
        return (3.0 * fraction / (4.0 * math.pi)) ** (1.0 / 3.0)
    return math.sqrt(fraction / math.pi)


def fourier_mask(shape, *, keep_probability: float = 0.5, block: int = 8, low_frequency_fraction: float = 0.07,
                 flip_probability: float = 0.1, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A Fourier-space sampling mask on the rfftn grid of ``shape`` = (batch, 1, *spatial), values in {0, ±1}.

    (1) A low-frequency ball holding ``low_frequency_fraction`` of the spectrum volume is always kept;
    (2) elsewhere, blocks of ``block`` frequencies per axis are kept with ``keep_probability``;
    (3) each kept coefficient outside the ball has its sign flipped with ``flip_probability``.
    """
    spatial = tuple(shape[2:])
    half = (*spatial[:-1], spatial[-1] // 2 + 1)
    dev = generator.device if generator is not None else device
    coarse = tuple(math.ceil(s / block) for s in half)
    keep = (torch.rand((shape[0], 1, *coarse), generator=generator, device=dev) < keep_probability).float()
    keep = keep.repeat_interleave(block, dim=2)
    for axis in range(3, keep.ndim):
        keep = keep.repeat_interleave(block, dim=axis)
    keep = keep[(slice(None), slice(None), *(slice(0, s) for s in half))]
    flips = torch.rand(keep.shape, generator=generator, device=dev) < flip_probability
    mask = keep * (1.0 - 2.0 * flips.float())
    ball = _frequency_radius(spatial, dev) <= low_frequency_radius(len(spatial), low_frequency_fraction)
    mask = torch.where(ball, torch.ones_like(mask), mask)
    return mask.to(device) if device is not None else mask


def apply_fourier_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse FT of ``rfftn(x) * mask`` over the spatial axes of (batch, channel, *spatial)."""
    dims = tuple(range(2, x.ndim))
    spectrum = torch.fft.rfftn(x, dim=dims)
    return torch.fft.irfftn(spectrum * mask, s=x.shape[2:], dim=dims)
