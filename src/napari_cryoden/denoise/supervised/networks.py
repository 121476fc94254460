"""Networks of the supervised denoisers: a pix2pix-style U-Net generator and a PatchGAN discriminator.

Sized for particle images on a CPU: with 16 base channels and 3 levels the generator has about 0.9 M
parameters. Normalisation layers are group norms (per image), where pix2pix used batch norm with batch
size 1 (equally per image).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNetGenerator", "PatchDiscriminator", "build_generator", "build_discriminator"]


def _norm(channels: int) -> nn.GroupNorm:
    """Group normalisation (per image, so training and inference behave the same even after a few steps,
    unlike batch normalisation whose running statistics need many steps to settle)."""
    return nn.GroupNorm(4 if channels % 4 == 0 else 1, channels)


class ResidualBlock(nn.Module):
    """conv3-norm-ReLU-conv3-norm plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _norm(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _norm(channels))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class UNetGenerator(nn.Module):
    """U-Net with additive skip connections and residual blocks at the bottom (pix2pix generator).

    Input and output (b, 1, y, x) with y and x multiples of ``2**depth`` (the caller pads).
    """

    def __init__(self, channels: int = 16, depth: int = 3, residual_blocks: int = 2):
        super().__init__()
        self.depth = depth
        widths = [channels * 2**i for i in range(depth + 1)]
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1, bias=False),
                          _norm(widths[i + 1]), nn.LeakyReLU(0.2, inplace=True))
            for i in range(depth))
        self.bottom = nn.Sequential(*[ResidualBlock(widths[-1]) for _ in range(residual_blocks)])
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1, bias=False),
                          _norm(widths[i]), nn.ReLU(inplace=True))
            for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, x):
        skips = [self.stem(x)]
        for layer in self.down:
            skips.append(layer(skips[-1]))
        y = self.bottom(skips.pop())
        for layer in self.up:
            y = layer(y) + skips.pop()                  # additive skip
        return self.head(y)


class PatchDiscriminator(nn.Module):
    """PatchGAN on the pair (image, condition): one real/fake logit per overlapping patch (~34 px)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(2, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False), _norm(2 * c),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * c, 4 * c, 4, stride=1, padding=1, bias=False), _norm(4 * c),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * c, 1, 4, stride=1, padding=1))

    def forward(self, image, condition):
        return self.net(torch.cat([image, condition], dim=1))


def build_generator(config: dict) -> UNetGenerator:
    """The generator described by a model file's ``config``."""
    return UNetGenerator(channels=int(config.get("channels", 16)), depth=int(config.get("depth", 3)),
                         residual_blocks=int(config.get("residual_blocks", 2)))


def build_discriminator(config: dict) -> PatchDiscriminator:
    return PatchDiscriminator(channels=int(config.get("discriminator_channels", config.get("channels", 16))))
