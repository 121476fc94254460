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
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    dims: int = 3
    base_channels: int = 16
    depth: int = 3
    dropout: float = 0.3
    mask_channel: bool = False
    smooth_sigmas: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "smooth_sigmas", tuple(float(s) for s in self.smooth_sigmas))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["smooth_sigmas"] = list(self.smooth_sigmas)
        return d

    @property
    def in_channels(self) -> int:
        """Channels the encoder and the head see: the data (and mask), plus one per smoothing scale."""
        return (2 if self.mask_channel else 1) + len(self.smooth_sigmas)

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


class SmoothFeatures(nn.Module):
    """Normalised Gaussian convolutions of the input at fixed scales, as extra input channels.

    With a sampling mask ``m`` (second channel) the feature at scale σ is ``G_σ(m ⊙ x) / G_σ(m)``: an average
    of the *kept* voxels around each voxel, so a dropped voxel's own value never enters (the Self2Self blind
    spot is kept). Without a mask it is ``G_σ(x) / G_σ(1)`` (zero padding, renormalised at the borders).
    These are the Gaussian filters a user would otherwise tune by hand; given to the network from the first
    step, a short training starts from them instead of from noise.
    """

    def __init__(self, dims: int, sigmas, masked: bool):
        super().__init__()
        self.dims, self.masked, self.sigmas = dims, masked, tuple(sigmas)
        for i, sigma in enumerate(self.sigmas):
            radius = max(1, int(round(3 * sigma)))
            t = torch.arange(-radius, radius + 1, dtype=torch.float32)
            k = torch.exp(-0.5 * (t / sigma) ** 2)
            self.register_buffer(f"kernel{i}", k / k.sum(), persistent=False)

    def _blur(self, v: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        conv = F.conv3d if self.dims == 3 else F.conv2d
        r = kernel.numel() // 2
        for axis in range(self.dims):
            shape = [1, 1] + [1] * self.dims
            shape[2 + axis] = kernel.numel()
            pad = [0] * self.dims
            pad[axis] = r
            v = conv(v, kernel.view(shape).to(v.dtype), padding=tuple(pad))
        return v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        data = x[:, :1]
        weight = x[:, 1:2] if self.masked else torch.ones_like(data)
        # Numerator and weights blurred together in one batch, built once for every scale.
        source = torch.cat([data * weight, weight]).float()
        feats = []
        for i in range(len(self.sigmas)):
            both = self._blur(source, getattr(self, f"kernel{i}"))
            feats.append((both[:b] / both[b:].clamp_min(1e-3)).to(x.dtype))
        return torch.cat(feats, dim=1)


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
        c_in = config.in_channels
        self.smooth = SmoothFeatures(config.dims, config.smooth_sigmas, config.mask_channel) \
            if config.smooth_sigmas else None
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
        if self.smooth is not None:
            # A linear path from the smoothing channels to the output, starting as their mean: the untrained
            # network is a Gaussian filter and training learns the residual.
            k = len(config.smooth_sigmas)
            self.smooth_skip = conv(k, 1, 1)
            nn.init.constant_(self.smooth_skip.weight, 1.0 / k)
            nn.init.zeros_(self.smooth_skip.bias)

    def to_device(self, device) -> UNet:
        """Move to ``device`` in the channels-last layout (measured 1.3–1.5× faster convolutions with oneDNN on
        CPU, and the layout cuDNN prefers for mixed precision); outputs stay ordinary tensors."""
        layout = torch.channels_last_3d if self.config.dims == 3 else torch.channels_last
        return self.to(device=device, memory_format=layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = None
        if self.smooth is not None:
            feats = self.smooth(x)
            base = self.smooth_skip(feats)
            x = torch.cat([x, feats], dim=1)
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
        out = self.head(torch.cat([h, x], dim=1))
        return out if base is None else out + base


class MeanOfNetworks(nn.Module):
    """Networks of one configuration acting as one: the mean of their outputs (a trained model's student and
    its partner, predicted in one call)."""

    def __init__(self, *nets: UNet):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.config = nets[0].config

    def to_device(self, device) -> MeanOfNetworks:
        for net in self.nets:
            net.to_device(device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.nets[0](x)
        for net in self.nets[1:]:
            out = out + net(x)
        return out / len(self.nets)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
