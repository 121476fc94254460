"""Recorrupted-to-Recorrupted (R2R): Noise2Noise pairs made from one noisy volume and its noise model.

For data ``y = s + n`` with Gaussian noise ``n ~ N(0, Σ)`` and an independent draw ``z ~ N(0, Σ)``, the pair
``y₁ = y + α z`` and ``y₂ = y − z / α`` has noises ``n + α z`` and ``n − z / α`` whose covariance is
``Σ − Σ = 0``: being jointly Gaussian they are independent, so training ``f(y₁) → y₂`` with the mean squared
error over *all* voxels is Noise2Noise (Pang et al., CVPR 2021), with no blind spot and no mask — whatever the
noise correlation, as long as ``Σ`` is known. Here ``Σ`` is the measured one (``denoise/noise.py``: Gaussian
lengths per axis and the noise variance), so correlated noise is handled by drawing ``z`` with the same
correlation. Prediction averages the network over fresh recorruptions ``y + α z`` (the inputs it was trained
on), or runs it once on ``y``.

It is how ``--method pretrained --time-budget S`` fine-tunes the shipped model when the noise measured on the
input is correlated, where Self2Self's blind-spot loss lowered it. It is not a method of its own (yet): trained
from scratch for 120 s on the tuning set it was 0.2 dB (z-stretched) and 0.5 dB (isotropic) above the oracle
Gaussian, below ``self2self`` on z-stretched noise. ``docs/methods.md`` has the measurements.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import CryodenInputError
from ..params import param
from .engine import EngineParams, SelfSupervisedMethod, TrainedDenoiser, autocast, centre_crop
from .noise import NoiseCorrelation, per_axis
from .normalize import fit_normalization, subsample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecorruptedParams(EngineParams):
    """R2R's settings: the recorruption strength and the noise model (measured from the data by default)."""

    alpha: float = param(0.5, "recorruption strength α: input y + α z, target y − z / α (z drawn like the noise)",
                         min=0.05, max=5.0)
    noise_lengths: str = param("auto", "Gaussian correlation lengths z,y,x (voxels) of the noise drawn for the "
                                       "recorruption; auto: measured from the data")
    noise_std: float = param(0.0, "noise standard deviation in units of the normalised data (its std after the "
                                  "percentile clip); 0: measured from the data", min=0.0)
    prediction: str = param("recorrupted", "how to predict: recorrupted (average the network over n_predictions "
                                           "inputs y + αz, the inputs it was trained on) or direct (one pass on y)",
                            choices=("recorrupted", "direct"))
    n_predictions: int = param(8, "recorrupted inputs averaged per tile at prediction", min=1, max=1000)
    dropout: float = param(0.0, "decoder dropout rate", min=0.0, max=0.9)


def recorruption_noise(shape, lengths, std: float, *, generator: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise of ``shape`` (b, c, *spatial), standard deviation ``std``, correlated as white noise
    blurred by a Gaussian of ``lengths`` voxels per spatial axis (periodic; power ``exp(−4π² Σ L² k²)``)."""
    w = torch.randn(shape, generator=generator, device=generator.device).to(device)
    spatial = tuple(shape[2:])
    lengths = tuple(lengths)[-len(spatial):]
    if max(lengths) <= 0:
        return w * std
    axes = [torch.fft.fftfreq(n, device=device) for n in spatial[:-1]] + [torch.fft.rfftfreq(spatial[-1], device=device)]
    grids = torch.meshgrid(*axes, indexing="ij")
    amplitude = torch.exp(-2.0 * math.pi**2 * sum(float(length) ** 2 * g**2 for length, g in zip(lengths, grids)))
    dims = tuple(range(2, 2 + len(spatial)))
    out = torch.fft.irfftn(torch.fft.rfftn(w, dim=dims) * amplitude, s=spatial, dim=dims)
    power = _mean_power(spatial, lengths, device)  # the variance of the blurred unit white noise
    return out * (std / math.sqrt(power))


def _mean_power(spatial, lengths, device) -> float:
    """Mean over the full FFT grid of ``exp(−4π² Σ L² k²)``: the variance of unit white noise after the blur."""
    p = 1.0
    for length, n in zip(lengths, spatial):
        k = torch.fft.fftfreq(n, device=device)
        p *= float(torch.exp(-4.0 * math.pi**2 * float(length) ** 2 * k**2).mean())
    return p


def normalised_noise_std(vol, noise: NoiseCorrelation, norm) -> float:
    """The noise standard deviation of ``vol`` in the units of its normalisation ``norm`` (which divides by
    ``norm.std``): the measured noise variance (``noise.noise_variance``, on the measured crop); for a
    measurement without it, the measured noise share of the variance times the whole data's variance."""
    variance = noise.noise_variance
    if variance is None:
        values = subsample(vol)
        variance = max(noise.noise_fraction, 0.0) * float(np.var(values[np.isfinite(values)]))
    return float(math.sqrt(max(float(variance), 0.0)) / norm.std)


#: α of an R2R continuation of a Self2Self-style network (input y + αz, target y − z/α). Tuning set, 30 s at
#: 10⁻⁴, seed 1 (2026-12-07, AMD EPYC), continuing the shipped model: z-stretched 24.55 / 24.51 / 23.60 dB and
#: isotropic 24.48 / 24.42 / 23.68 dB for α = 0.3 / 0.5 / 1.0, from its 24.20 / 24.21 (oracle Gaussian 23.45 /
#: 23.36).
R2R_ALPHA = 0.3

#: The engine settings an R2R continuation keeps from the network it continues (network, patches, normalisation,
#: schedule).
SHARED_ENGINE_FIELDS = ("patch_size", "batch_size", "lr_schedule", "base_channels", "depth", "dropout",
                        "low_percentile", "high_percentile", "smooth_sigmas", "augment")


def continuation_params(params: EngineParams, vol, noise: NoiseCorrelation, norm, *, time_budget: float,
                        learning_rate: float, epochs: int = 1_000_000, **overrides) -> RecorruptedParams:
    """R2R settings to train a Self2Self-style network further on ``vol`` (``params``: the settings it was
    trained with; ``norm``: its normalisation) for ``time_budget`` seconds (0: ``epochs``), with the noise drawn
    like the measured ``noise`` (its Gaussian lengths, and its level in the units of ``norm``), predicting in
    one pass (``prediction="direct"``): the network's input stays the data itself."""
    shared = {name: getattr(params, name) for name in SHARED_ENGINE_FIELDS}
    return RecorruptedParams(**{**shared, **overrides}, time_budget=float(time_budget), epochs=int(epochs),
                             learning_rate=float(learning_rate), alpha=R2R_ALPHA, prediction="direct",
                             noise_lengths=",".join(f"{v:.3g}" for v in noise.lengths),
                             noise_std=normalised_noise_std(vol, noise, norm))


def _resolved(params: RecorruptedParams) -> bool:
    return str(params.noise_lengths).strip().lower() != "auto" and params.noise_std > 0


def _lengths(params: RecorruptedParams) -> tuple[float, float, float]:
    text = str(params.noise_lengths).strip().lower()
    if text == "auto":  # only in a model not yet trained
        return (0.0, 0.0, 0.0)
    try:
        return per_axis(text, float, minimum=0)
    except ValueError:
        raise ValueError(f"noise_lengths must be auto or one or three lengths z,y,x ≥ 0, "
                         f"got {params.noise_lengths!r}") from None


class Recorrupted(SelfSupervisedMethod):
    """Recorrupted-to-Recorrupted: Noise2Noise pairs from one volume and its measured (correlated) noise."""

    name = "r2r"
    title = "Recorrupted-to-Recorrupted"
    params = RecorruptedParams
    description = ("Recorrupted-to-Recorrupted: input y + αz, target y − z/α, with z drawn like the noise measured "
                   "on the data (its level and correlation), whose noises are independent: Noise2Noise from one "
                   "volume with no blind spot, for white or correlated Gaussian noise.")

    def __init__(self, *, mask_channel: bool = False):
        # mask_channel: continue a network that takes a mask channel (the shipped Self2Self-style models; the
        # channel is all ones, "nothing dropped", as when they predict in one pass).
        self.mask_channel = mask_channel

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.ones_like(x)], dim=1) if self.mask_channel else x

    def needs_noise_estimate(self, params, model) -> bool:
        return model is None and (str(params.noise_lengths).strip().lower() == "auto" or params.noise_std <= 0)

    def prepare_params(self, params: RecorruptedParams, vol: np.ndarray, *, dims: int,
                       model: TrainedDenoiser | None, noise: NoiseCorrelation | None = None) -> RecorruptedParams:
        """Resolve the noise model: the model's when training continues, else the measured one."""
        if not isinstance(params, RecorruptedParams):
            return params
        if model is not None and isinstance(model.params, RecorruptedParams) and _resolved(model.params) \
                and not _resolved(params):  # continue with the noise model the model was trained with
            return replace(params, noise_lengths=model.params.noise_lengths, noise_std=model.params.noise_std)
        if _resolved(params):
            return params
        if noise is None:
            raise CryodenInputError(None, "r2r needs the noise measured on the data (level and correlation)")
        if str(params.noise_lengths).strip().lower() == "auto":
            lengths = noise.lengths if dims == 3 else (0.0,) + tuple(noise.lengths[1:])
            params = replace(params, noise_lengths=",".join(f"{v:.3g}" for v in lengths))
        if params.noise_std <= 0:
            norm = fit_normalization(vol, low_percentile=params.low_percentile, high_percentile=params.high_percentile)
            params = replace(params, noise_std=normalised_noise_std(vol, noise, norm))
        log.info("r2r noise model: lengths %s voxels, std %.3f (normalised units)", params.noise_lengths,
                 params.noise_std)
        return params

    def allows_turns(self, params: RecorruptedParams) -> bool:
        # A 90° turn swaps y and x of the data's noise, not of the drawn z: only when their lengths agree.
        lengths = _lengths(params)
        return abs(lengths[-1] - lengths[-2]) <= 0.05

    def make_pair(self, x, params: RecorruptedParams, *, patch_spatial, generator):
        x = centre_crop(x[:, :1], patch_spatial)
        z = recorruption_noise(x.shape, _lengths(params), params.noise_std, generator=generator, device=x.device)
        a = float(params.alpha)
        return self._input(x + a * z), x - z / a, None

    def predict_batch(self, net, x, params: RecorruptedParams, *, n_predictions, generator, device):
        x = x[:, :1]
        y = torch.zeros_like(x)
        lengths, a = _lengths(params), float(params.alpha)
        for _ in range(n_predictions):
            z = recorruption_noise(x.shape, lengths, params.noise_std, generator=generator, device=device)
            with autocast(device):
                y += net(self._input(x + a * z)).float()
        return y / n_predictions


    def single_pass(self, model: TrainedDenoiser, n_predictions):
        if n_predictions is None and getattr(model.params, "prediction", "recorrupted") == "direct":
            return model.net
        return None

    def predict_single(self, net, x, params: RecorruptedParams, *, device):
        with autocast(device):
            return net(self._input(x[:, :1])).float()

