"""U-Nets for 2D and 3D denoising, configurable depth, width and decoder dropout.

Design (after the Self2Self-with-dropout thesis, SOURCES.md): LeakyReLU conv blocks, max-pool downsampling,
nearest upsampling + conv, skip concatenation, dropout only in the decoder, a linear output (no sigmoid:
it skewed values), and the raw input concatenated before the last convolutions. Optionally the sampling
mask is given as a second input channel, so the network knows which voxels are missing (a cheap stand-in
for Self2Self's partial convolutions that actually receives the mask).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    dims: int = 3
    base_channels: int = 16
    depth: int = 3
    dropout: float = 0.3
    mask_channel: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (one halving per level)."""
        return 2 ** (self.depth - 1)


def _layers(dims: int):
    if dims == 3:
        return nn.Conv3d, nn.MaxPool3d, nn.Dropout3d
    if dims == 2:
        return nn.Conv2d, nn.MaxPool2d, nn.Dropout2d
    raise ValueError(f"dims must be 2 or 3, got {dims}")


class _Block(nn.Sequential):
    def __init__(self, conv, c_in: int, c_out: int, dropout: float = 0.0, drop=None):
        layers = [conv(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
        if dropout > 0:
            layers.append(drop(dropout))
        layers += [conv(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net mapping (B, C_in, *spatial) to (B, 1, *spatial); C_in = 1, or 2 with ``mask_channel``."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        conv, pool, drop = _layers(config.dims)
        c_in = 2 if config.mask_channel else 1
        widths = [config.base_channels * 2**i for i in range(config.depth)]
        self.encoders = nn.ModuleList()
        prev = c_in
        for w in widths:
            self.encoders.append(_Block(conv, prev, w))
            prev = w
        self.pool = pool(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoders = nn.ModuleList()
        self.reduce = nn.ModuleList()
        for w_skip in reversed(widths[:-1]):
            self.reduce.append(conv(prev, w_skip, 3, padding=1))
            self.decoders.append(_Block(conv, 2 * w_skip, w_skip, dropout=config.dropout, drop=drop))
            prev = w_skip
        # The raw input joins before the last convolutions.
        self.head = nn.Sequential(conv(prev + c_in, prev, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                                  conv(prev, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, enc in enumerate(self.encoders):
            h = enc(h)
            if i < len(self.encoders) - 1:
                skips.append(h)
                h = self.pool(h)
        for reduce, dec, skip in zip(self.reduce, self.decoders, reversed(skips)):
            h = reduce(self.up(h))
            h = dec(torch.cat([h, skip], dim=1))
        return self.head(torch.cat([h, x], dim=1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
