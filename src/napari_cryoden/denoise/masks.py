"""Sampling masks: Bernoulli masks in real space (Self2Self) and blocky Bernoulli masks in Fourier space
(Fourier N2N). All masks are drawn with a ``torch.Generator`` so the same seed gives the same masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform_field(shape, *, generator, device, block) -> torch.Tensor:
    """U(0, 1) values of shape (batch, 1, *spatial), constant over blocks of ``block`` voxels (random grid
    phase, so block edges are not always at the same voxels)."""
    spatial = tuple(shape[2:])
    dev = generator.device if generator is not None else device
    if block is None or all(b == 1 for b in block):
        u = torch.rand(tuple(shape), generator=generator, device=dev)
    else:
        block = tuple(int(b) for b in block)
        coarse = tuple(math.ceil(s / b) + 1 for s, b in zip(spatial, block))
        u = torch.rand((shape[0], shape[1], *coarse), generator=generator, device=dev)
        u = F.interpolate(u, scale_factor=block, mode="nearest")
        offsets = [int(torch.randint(0, b, (1,), generator=generator, device=dev)) for b in block]
        u = u[(slice(None), slice(None), *(slice(o, o + s) for o, s in zip(offsets, spatial)))]
    return u.to(device) if device is not None else u


def _check_keep(keep_probability: float) -> None:
    if not 0.0 < keep_probability < 1.0:
        raise ValueError(f"keep probability must be in (0, 1), got {keep_probability}")


def bernoulli_mask(shape, keep_probability: float, *, generator: torch.Generator | None = None,
                   device=None, block: tuple[int, ...] | None = None) -> torch.Tensor:
    """A {0, 1} float mask where each voxel (or each block of voxels) is kept with ``keep_probability``.

    ``shape`` is (batch, 1, *spatial). ``block`` (per spatial axis, e.g. (4, 1, 1)) drops whole blocks
    together: with noise correlated along an axis, dropping single voxels lets the network read the dropped
    noise from its correlated neighbours, so the dropped region must span the correlation length.
    """
    _check_keep(keep_probability)
    return (_uniform_field(shape, generator=generator, device=device, block=block) < keep_probability).float()


def stratified_bernoulli_masks(shape, keep_probability: float, n: int, *,
                               generator: torch.Generator | None = None, device=None,
                               block: tuple[int, ...] | None = None):
    """``n`` masks, each an exact Bernoulli(``keep_probability``) mask like :func:`bernoulli_mask`, drawn
    jointly so that every voxel is dropped in ⌊n(1−p)⌋ or ⌈n(1−p)⌉ of them (one uniform u per voxel;
    mask t drops the voxel when frac(u + t/n) < 1 − p). Averaging predictions over dropped voxels then has
    no voxel left without a prediction and no voxel with many more than its share (independent masks
    leave a fraction p^n of voxels never dropped: 5.8 % for p = 0.7, n = 8)."""
    _check_keep(keep_probability)
    u = _uniform_field(shape, generator=generator, device=device, block=block)
    for t in range(n):
        yield (torch.remainder(u + t / n, 1.0) >= 1.0 - keep_probability).float()


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
    ball = low_frequency_ball(spatial, low_frequency_fraction, dev)
    mask = torch.where(ball, torch.ones_like(mask), mask)
    return mask.to(device) if device is not None else mask


def low_frequency_ball(spatial: tuple[int, ...], fraction: float, device=None) -> torch.Tensor:
    """Boolean rfftn-grid mask of the always-kept low-frequency ball holding ``fraction`` of the spectrum."""
    return _frequency_radius(tuple(spatial), device) <= low_frequency_radius(len(spatial), fraction)


def complementary_fourier_mask(mask: torch.Tensor, spatial: tuple[int, ...],
                               low_frequency_fraction: float) -> torch.Tensor:
    """The {0, 1} mask of the frequencies ``mask`` dropped, plus the shared low-frequency ball.

    Outside the ball the two masks are disjoint, so for stationary noise (whose Fourier coefficients are
    independent) the two members carry independent noise — the premise of Noise2Noise.
    """
    ball = low_frequency_ball(spatial, low_frequency_fraction, mask.device)
    return ((mask == 0) | ball).float()


def apply_fourier_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse FT of ``rfftn(x) * mask`` over the spatial axes of (batch, channel, *spatial)."""
    dims = tuple(range(2, x.ndim))
    spectrum = torch.fft.rfftn(x, dim=dims)
    return torch.fft.irfftn(spectrum * mask, s=x.shape[2:], dim=dims)
