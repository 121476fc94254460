"""Networks of the deep aligners: a relative-angle predictor (UDL/JUDL) and JUDL's small autoencoder.

Sized for CPUs: the default predictor has about 50 k parameters (the published UDL network had about
74 M, far more than two CPU cores can train in minutes). GroupNorm everywhere, so inference behaves the same
in eval mode for any batch size (the original ran BatchNorm in training mode at inference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class CircularConv(nn.Module):
    """3x3 convolution over (radius, angle) maps: circular along the angle (180°-periodic), zero-padded
    along the radius; ``stride`` applies to the radius only, so the angle axis stays shift-equivariant."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, (stride, 1), (1, 0), bias=bias)

    def forward(self, x):
        return self.conv(F.pad(x, (1, 1, 0, 0), mode="circular"))


class ResidualBlock(nn.Module):
    """Two circular 3x3 convolutions with a skip connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(CircularConv(cin, cout, stride), _norm(cout), nn.ReLU(inplace=True),
                                  CircularConv(cout, cout), _norm(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, (stride, 1), bias=False), _norm(cout)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


def polar_grid(box: int, *, n_radii: int = 32, n_angles: int = 90) -> torch.Tensor:
    """``grid_sample`` grid (1, R, T, 2) of a centred box x box map at radii 1.5..box/2-2, angles [0, 180°)."""
    radii = torch.linspace(1.5, box / 2 - 2, min(n_radii, box // 2 - 3))
    theta = torch.arange(n_angles) * (math.pi / n_angles)
    x = radii[:, None] * torch.cos(theta)[None] + box // 2
    y = radii[:, None] * torch.sin(theta)[None] + box // 2
    scale = 2.0 / (box - 1)
    return torch.stack([x * scale - 1, y * scale - 1], dim=-1)[None].to(torch.float32)


class RelativeAngleNet(nn.Module):
    """Predicts the in-plane angle between two centred log-amplitude maps, modulo 180°.

    ``forward(a, b)`` returns (n,) degrees ``phi`` such that ``b`` ≈ ``a`` rotated by ``phi``.

    Modules: the maps are resampled on a polar grid (radius x angle in [0, 180°)); a **mask module**
    (small conv stack ending in a sigmoid) weights that input; a shared **residual feature extractor**
    (circular along the angle, strided along the radius) gives per-angle feature vectors (the radius is
    averaged out); the **matching module** is the circular cross-correlation of the two feature sequences over
    angle offsets, read out by a soft-argmax (learned sharpness) as a circular mean. A rotation of an input is
    a circular shift of its features, so the design is rotation-equivariant by construction; training by
    differences then teaches noise-robust features and a sharp, single correlation peak.
    """

    def __init__(self, box: int, *, base: int = 8, levels: int = 2, n_radii: int = 32, n_angles: int = 90):
        super().__init__()
        self.register_buffer("grid", polar_grid(box, n_radii=n_radii, n_angles=n_angles), persistent=False)
        self.n_angles = n_angles
        self.mask = nn.Sequential(CircularConv(1, 8, bias=True), nn.ReLU(inplace=True), CircularConv(8, 1, bias=True),
                                  nn.Sigmoid())
        layers: list[nn.Module] = [CircularConv(1, base, stride=2), _norm(base), nn.ReLU(inplace=True)]
        c = base
        for _ in range(levels):
            layers.append(ResidualBlock(c, 2 * c, stride=2))
            c *= 2
        layers.append(nn.Conv2d(c, c, 1))
        self.features = nn.Sequential(*layers)
        self.log_sharpness = nn.Parameter(torch.tensor(2.0))

    def polar(self, maps: torch.Tensor) -> torch.Tensor:
        grid = self.grid.expand(maps.shape[0], -1, -1, -1)
        return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def embed(self, maps: torch.Tensor) -> torch.Tensor:
        """(n, 1, N, N) centred amplitudes -> (n, C, T) unit-norm features per angle."""
        p = self.polar(maps)
        p = p - p.mean(-1, keepdim=True)
        f = self.features(p * self.mask(p)).mean(2)
        f = f - f.mean(-1, keepdim=True)
        return f / f.flatten(1).norm(dim=1).clamp_min(1e-6)[:, None, None]

    def correlation(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """(n, T) correlation over angle offsets: ``sum_theta fb(theta) fa(theta + delta)``."""
        if fa.shape[0] == 1 and fb.shape[0] > 1:
            fa = fa.expand_as(fb)
        spec = torch.conj(torch.fft.rfft(fb, dim=-1)) * torch.fft.rfft(fa, dim=-1)
        return torch.fft.irfft(spec.sum(1), n=self.n_angles, dim=-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor, *, embedded_a: torch.Tensor | None = None) -> torch.Tensor:
        fa = self.embed(a) if embedded_a is None else embedded_a
        c = self.correlation(fa, self.embed(b))
        w = torch.softmax(c * self.log_sharpness.exp() * self.n_angles, dim=-1)
        phase = torch.arange(self.n_angles, device=c.device, dtype=c.dtype) * (2 * math.pi / self.n_angles)
        angle = torch.atan2((w * torch.sin(phase)).sum(-1), (w * torch.cos(phase)).sum(-1))
        return torch.remainder(torch.rad2deg(angle) / 2.0, 180.0)


def shift_angles(polar: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Turn (n, C, R, T) polar maps (T angles over 180°) by ``degrees``: ``out(theta) = in(theta - d)``."""
    t = polar.shape[-1]
    k = torch.fft.rfftfreq(t, device=polar.device)
    phase = -2 * math.pi * k[None, :] * (degrees[:, None] * t / 180.0)
    spec = torch.fft.rfft(polar, dim=-1) * torch.polar(torch.ones_like(phase), phase)[:, None, None, :]
    return torch.fft.irfft(spec, n=t, dim=-1)


class AmplitudeAutoencoder(nn.Module):
    """JUDL's small convolutional autoencoder (bottleneck of ``code`` channels at 1/8 resolution)."""

    def __init__(self, *, base: int = 8, code: int = 4):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, base, 3, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(base, 2 * base, 3, 2, 1),
            nn.ReLU(inplace=True), nn.Conv2d(2 * base, code, 3, 2, 1))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code, 2 * base, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * base, base, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(base, 1, 4, 2, 1))

    def forward(self, x):
        out = self.decoder(self.encoder(x))
        return out[..., : x.shape[-2], : x.shape[-1]]
