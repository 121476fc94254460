"""Networks of the deep aligners: UDL's Siamese angle regressor and JUDL's small autoencoder.

The regressor follows the seed (Chen, Feng & Shen 2023): a **mask module** (small conv stack ending in a
sigmoid weight map), a shared **residual feature extractor** and a **linear head**, applied to the centred
log-amplitude spectrum of each image. It is *not* rotation-equivariant: a rotation of an input changes its
features in no prescribed way, so the right answer has to be learned — the untrained network guesses at
chance. Sized for CPUs (about 10-30 k parameters instead of the published 74 M). GroupNorm everywhere, so
inference behaves the same in eval mode for any batch size (the original ran BatchNorm in training mode at
inference).

Head: the published head regressed one number from the concatenated features of both images. Ours maps each
image's features linearly to a point ``z = (cos 2θ, sin 2θ) · r`` of the 180°-periodic circle (an
orientation of the image; no sawtooth at 0/180°) and reads the relative angle out as the phase difference
``arg(z_b conj(z_a)) / 2`` — still one linear map per image, and antisymmetric: ``f(a, b) = -f(b, a)``,
``f(a, a) = 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Architecture of the current regressor, stored in every model file's config; files without it (or with
#: another one) were written by an older napari-cryoden with another network and cannot be loaded into it.
ARCHITECTURE = "siamese-regressor-2"


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.ReLU(inplace=True),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _norm(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout)))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class SiameseAngleRegressor(nn.Module):
    """Predicts the in-plane angle between two centred log-amplitude maps, modulo 180°.

    ``forward(a, b)`` takes (n, 1, S, S) maps (:func:`.udl.log_amplitudes`) and returns (n,) degrees ``phi``
    in [0, 180) such that ``b`` ≈ ``a`` rotated by ``phi``.

    The feature extractor is residual at two scales: residual blocks (stride 2) over the masked map, and an
    identity path that hands the masked map itself to the head. The head's weights on the blocks' features
    start at zero, so training starts from a (random) linear read-out of the map, which learns within tens
    of steps, and the blocks' contribution grows from there (measured: with random weights on both, the same
    training took 3-4 times more steps).
    """

    def __init__(self, size: int, *, base: int = 8, levels: int = 2):
        super().__init__()
        self.size = size
        self.mask = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 1, 3, 1, 1),
                                  nn.Sigmoid())
        layers: list[nn.Module] = [nn.Conv2d(1, base, 3, 1, 1, bias=False), _norm(base), nn.ReLU(inplace=True)]
        c, side = base, size
        for _ in range(levels):
            layers.append(ResidualBlock(c, 2 * c, stride=2))
            c, side = 2 * c, (side + 1) // 2
        self.features = nn.Sequential(*layers)
        # No biases: a constant orientation would be a trap (every relative angle ~0, vanishing gradients).
        self.head = nn.Linear(c * side * side, 2, bias=False)
        self.direct = nn.Linear(size * size, 2, bias=False)
        nn.init.zeros_(self.head.weight)

    def orientation(self, maps: torch.Tensor) -> torch.Tensor:
        """(n, 1, S, S) maps -> (n, 2) unnormalised (cos 2θ, sin 2θ) of each image's learned orientation θ."""
        x = maps * self.mask(maps)
        return self.head(self.features(x).flatten(1)) + self.direct(x.flatten(1))

    def relative(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        """Degrees in [0, 180): ``arg(z_b conj(z_a)) / 2`` of orientations from :meth:`orientation`."""
        if za.shape[0] == 1 and zb.shape[0] > 1:
            za = za.expand_as(zb)
        re = zb[:, 0] * za[:, 0] + zb[:, 1] * za[:, 1]
        im = zb[:, 1] * za[:, 0] - zb[:, 0] * za[:, 1]
        return torch.remainder(torch.rad2deg(torch.atan2(im, re)) / 2.0, 180.0)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """``phi`` (n,) degrees of ``b`` relative to ``a``; with ``b`` None, ``a``'s orientations (n, 2) (one
        forward call per training step, as DistributedDataParallel needs)."""
        if b is None:
            return self.orientation(a)
        return self.relative(self.orientation(a), self.orientation(b))


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
