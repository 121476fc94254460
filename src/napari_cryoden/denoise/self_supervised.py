"""The self-supervised methods, one class each: Self2Self with dropout, Fourier N2N, and even/odd Noise2Noise.

Each says how to make a training pair from the data the user has, and how to denoise a batch of tiles with
the trained network; the shared training loop and tiled prediction are :class:`.engine.SelfSupervisedMethod`.

* ``self2self``  — input = mask ⊙ patch (Bernoulli mask, keep probability p, optionally in blocks), target =
  the same patch; the loss is the mean squared error over the *dropped* voxels only.
* ``fourier-n2n`` — input and target are two independent Fourier-sampled versions of the same patch
  (blocky Bernoulli masks in Fourier space with an always-kept low-frequency ball and random sign flips);
  Noise2Noise loss (MSE over all voxels). The ball holds a fixed share of the *measured noise power* and the
  spectra are whitened by the measured noise spectrum (undone on output), so correlated noise is not copied.
* ``n2n-halves`` — input and target are the two half volumes (even/odd frames) at the same position.

``docs/methods.md`` gives the formulas and the reasons for each choice.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CryodenInputError
from ..params import param
from ..progress import StageClock, as_stage
from .engine import (
    EngineParams,
    SelfSupervisedMethod,
    TrainedDenoiser,
    _enable_dropout,
    as_volume,
    autocast,
    centre_crop,
)
from .masks import (
    apply_fourier_mask,
    bernoulli_mask,
    complementary_fourier_mask,
    fourier_mask,
    low_frequency_ball,
    stratified_bernoulli_masks,
)
from .networks import MeanOfNetworks
from .noise import NoiseCorrelation, auto_mask_block, per_axis
from .registry import register

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ Self2Self
@dataclass(frozen=True)
class Self2SelfParams(EngineParams):
    """Self2Self's settings: the input mask."""

    keep_probability: float = param(0.7, "probability that a voxel is kept in the input mask when single voxels "
                                         "are dropped (white noise; Self2Self: 0.7)", min=0.05, max=0.95)
    block_keep_probability: float = param(0.4, "probability that a block is kept in the input mask when the mask "
                                               "drops blocks (correlated noise: the loss counts only the voxels "
                                               "whose whole block neighbourhood is dropped, so fewer blocks are "
                                               "kept)", min=0.05, max=0.95)
    mask_block: str = param("auto", "size (z,y,x) of the blocks dropped together, e.g. 7,1,1 for noise correlated "
                                    "over ±3 voxels along z; auto: measured from the data's noise correlation")
    prediction: str = param("student", "how to predict: student (one pass of the network distilled from the "
                                       "averaged masked passes after training; masked when the model has none), "
                                       "masked (average n_predictions masked passes), or unmasked (one pass of the "
                                       "trained network on the whole input)",
                            choices=("student", "masked", "unmasked"))
    distill_steps: int = param(25, "steps training the single-pass student on the averaged masked predictions of "
                                   "training patches after training (0: no student); with a time budget, at most "
                                   "a fifth of it", min=0, max=100000)
    partner: str = param("r2r", "on correlated noise (a measured mask block above one voxel, 3D, predicting with "
                                "the student): r2r trains a copy of the student further by "
                                "Recorrupted-to-Recorrupted in the last quarter of the budget and predicts the "
                                "mean of the two (held-out phantoms: +0.04 dB z-stretched, +0.12 dB isotropic, for "
                                "twice the prediction time); none: the student alone",
                         choices=("r2r", "none"))

    @classmethod
    def from_saved(cls, values: dict):
        """A model saved before ``block_keep_probability`` used ``keep_probability`` for blocks too, and one
        saved before ``partner`` has none."""
        values = dict(values)
        values.setdefault("block_keep_probability", values.get("keep_probability", 0.7))
        values.setdefault("partner", "none")
        return cls(**values)


def parse_mask_block(text: str, dims: int) -> tuple[int, ...]:
    """The (z, y, x) block of ``mask_block`` as a tuple for ``dims``-dimensional patches ((y, x) in 2D)."""
    if str(text).strip().lower() == "auto":  # only a model not yet trained has "auto"; training resolves it
        return (1,) * dims
    try:
        values = per_axis(text, int, minimum=1)
    except ValueError:
        raise ValueError(f"mask_block must be one or three positive integers (z,y,x) like '3,1,1', "
                         f"got {text!r}") from None
    return values[1:] if dims == 2 else values


def blind_voxels(m: torch.Tensor, block) -> torch.Tensor:
    """Loss weights for Self2Self: the dropped voxels whose whole neighbourhood of ±(block − 1)/2 voxels per
    axis is dropped too, so no kept voxel within the noise correlation length can reveal their noise (all
    dropped voxels for pixel-independent noise, block 1)."""
    dropped = 1.0 - m
    if block is None or all(b == 1 for b in block):
        return dropped
    radius = tuple((b - 1) // 2 for b in block)
    pool = F.max_pool3d if m.ndim == 5 else F.max_pool2d
    kept_nearby = pool(m, kernel_size=tuple(2 * r + 1 for r in radius), stride=1, padding=radius)
    return 1.0 - kept_nearby


#: With a time budget, the share of it kept for distilling the student (the teacher trains for the rest).
DISTILL_SHARE = 0.2
#: The student's Adam learning rate (it starts as the teacher, so it needs only small steps).
DISTILL_LEARNING_RATE = 2e-4
#: With a time budget and a partner (``partner="r2r"``), the share of the budget its R2R training takes, after the
#: distillation (the teacher trains for 60 % of the budget, the student is distilled in at most 15 %).
PARTNER_SHARE = 0.25
#: The partner's Adam learning rate (R2R continuing the student; as the pretrained model's R2R fine-tuning).
PARTNER_LEARNING_RATE = 1e-4


def mask_keep_probability(params: Self2SelfParams, block: tuple[int, ...] | None = None) -> float:
    """The keep probability of the input mask: ``block_keep_probability`` when the mask drops blocks of more
    than one voxel (``block``, parsed from ``params.mask_block`` when not given), else ``keep_probability``."""
    block = parse_mask_block(params.mask_block, 3) if block is None else block
    return float(params.block_keep_probability if any(b > 1 for b in block) else params.keep_probability)


def teacher_passes(keep_probability: float) -> int:
    """The fewest stratified masked passes that drop every voxel at least once: ⌈1 / (1 − p)⌉ (4 for p = 0.7)."""
    return max(1, math.ceil(1.0 / (1.0 - keep_probability) - 1e-9))


class Self2Self(SelfSupervisedMethod):
    """Self2Self with dropout: Bernoulli-masked inputs (the mask as a second channel), the loss on the
    dropped voxels, predictions averaged over fresh masks where each voxel was dropped."""

    name = "self2self"
    title = "Self2Self (dropout)"
    params = Self2SelfParams
    description = ("Self2Self with dropout: Bernoulli-masked inputs, loss on the dropped voxels, predictions "
                   "averaged over fresh masks. Works from one noisy volume; the dropped blocks follow the noise "
                   "correlation measured from the data (--mask-block auto), so z-correlated noise is not learned.")
    mask_channel = True

    def needs_noise_estimate(self, params, model) -> bool:
        return model is None and str(getattr(params, "mask_block", "")).strip().lower() == "auto"

    def prepare_params(self, params: Self2SelfParams, vol: np.ndarray, *, dims: int,
                       model: TrainedDenoiser | None, noise: NoiseCorrelation | None = None) -> Self2SelfParams:
        """Replace ``mask_block="auto"`` by the block measured from the (z, y, x) data (stored in the model), or
        by the block of the model whose training continues; and ``partner`` by ``"none"`` where no partner is
        trained (:meth:`_partner_applies`)."""
        if not isinstance(params, Self2SelfParams):
            return params
        if str(params.mask_block).strip().lower() == "auto":
            if model is not None:
                params = replace(params, mask_block=model.params.mask_block)
            else:
                block = auto_mask_block(vol, dims=dims, noise=noise)
                if dims == 2:  # images or a stack: only the in-plane correlation is measured and used
                    block = (1,) + block
                log.info("self2self mask block (z,y,x) from the noise correlation: %s", block)
                params = replace(params, mask_block=",".join(str(b) for b in block))
        if params.partner != "none" and not self._partner_applies(params, dims=dims, noise=noise):
            params = replace(params, partner="none")
        return params

    @staticmethod
    def _partner_applies(params: Self2SelfParams, *, dims: int, noise: NoiseCorrelation | None) -> bool:
        """A partner is trained for correlated noise (a mask block above one voxel) measured on this 3D volume
        (its lengths and level make R2R's noise), when the prediction is the student's (measured there only)."""
        return (params.partner == "r2r" and dims == 3 and noise is not None and params.prediction == "student"
                and params.distill_steps > 0 and max(parse_mask_block(params.mask_block, 3)) > 1)

    def make_pair(self, x, params: Self2SelfParams, *, patch_spatial, generator):
        block = parse_mask_block(params.mask_block, x.ndim - 2)
        x = centre_crop(x[:, :1], patch_spatial)
        m = bernoulli_mask(x.shape, mask_keep_probability(params, block), generator=generator, device=x.device, block=block)
        return torch.cat([x * m, m], dim=1), x, blind_voxels(m, block)

    def predict_batch(self, net, x, params: Self2SelfParams, *, n_predictions, generator, device):
        block = parse_mask_block(params.mask_block, x.ndim - 2)
        x = x[:, :1]
        total = torch.zeros_like(x)
        count = torch.zeros_like(x)
        for m in stratified_bernoulli_masks(x.shape, mask_keep_probability(params, block), n_predictions, generator=generator,
                                            device=device, block=block):
            with autocast(device):
                out = net(torch.cat([x * m, m], dim=1)).float()
            # Average only where the voxel was dropped: those are the predictions the loss trained.
            total += out * (1.0 - m)
            count += 1.0 - m
            fallback = out
        return torch.where(count > 0, total / count.clamp_min(1.0), fallback)

    def predict_single(self, net, x, params: Self2SelfParams, *, device):
        # The whole input, marked as kept: the student was trained on exactly this; the teacher never was.
        x = x[:, :1]
        with autocast(device):
            return net(torch.cat([x, torch.ones_like(x)], dim=1)).float()

    def single_pass(self, model: TrainedDenoiser, n_predictions):
        mode = getattr(model.params, "prediction", "masked")
        if n_predictions is not None or mode == "masked":
            return None
        if mode == "unmasked":
            return model.net
        if model.student is not None and model.partner is not None:
            return MeanOfNetworks(model.student, model.partner)
        return model.student  # None for a model without one (saved before, or distill_steps 0): masked passes

    def distill_share(self, params) -> float:
        if getattr(params, "distill_steps", 0) <= 0:
            return 0.0
        return DISTILL_SHARE * (1.0 - self.finish_share(params))

    def finish_share(self, params) -> float:
        return PARTNER_SHARE if getattr(params, "partner", "none") == "r2r" else 0.0

    def finish(self, model: TrainedDenoiser, data, *, is_stack, seed, device, voxel_size, time_budget):
        """The partner: a copy of the student trained further by Recorrupted-to-Recorrupted (pairs y + αz,
        y − z/α, z drawn like the noise measured on the input) for ``time_budget`` seconds (without a budget,
        a quarter of the epochs); prediction is then the mean of the student's and the partner's single passes.
        The two err partly independently: the student was distilled from blind-spot predictions, which see
        each voxel only through context beyond the noise correlation; the partner sees the voxel itself."""
        if model.params.partner != "r2r":  # prepare_params left "r2r" only with a measured noise and a student
            return model
        from .recorrupted import Recorrupted, continuation_params

        vol, _ = as_volume(data, is_stack=is_stack)
        noise = NoiseCorrelation.from_dict(model.noise_correlation)
        params = continuation_params(model.params, vol, noise, model.normalization,
                                     time_budget=time_budget or 0.0, learning_rate=PARTNER_LEARNING_RATE,
                                     epochs=1_000_000 if time_budget else max(1, model.params.epochs // 4))
        log.info("self2self partner on correlated noise: R2R for %s, noise lengths %s voxels, std %.3f",
                 f"{time_budget:.0f} s" if time_budget else f"{params.epochs} epochs", params.noise_lengths,
                 params.noise_std)
        start = TrainedDenoiser(method="r2r", params=params, net_config=model.student.config,
                                net=copy.deepcopy(model.student), normalization=model.normalization,
                                voxel_size=model.voxel_size, noise_correlation=model.noise_correlation)
        partner = yield from as_stage(Recorrupted(mask_channel=True).train(
            data, params, is_stack=is_stack, model=start, seed=seed + 1, device=device, voxel_size=voxel_size,
            preview_every=0), "partner")
        return replace(model, partner=partner.net.eval())

    def distill(self, net, sampler, params: Self2SelfParams, *, dev, generator, time_budget, is_main):
        """Train a student U-Net, started as a copy of the teacher ``net``, to give in one pass on the unmasked
        input what the teacher gives averaged over masked passes: targets are the teacher's averages over
        :func:`teacher_passes` stratified masks (with its decoder dropout) on fresh training patches, the loss the
        mean squared error over all voxels. The student has no dropout at prediction, so one pass is its
        prediction. ``distill_steps`` steps, stopped early when ``time_budget`` seconds are spent."""
        steps = int(getattr(params, "distill_steps", 0))
        if steps <= 0:
            return None
        student = copy.deepcopy(net)
        student.eval()  # no dropout: the student is deterministic (the network has no batch statistics)
        optimizer = torch.optim.Adam(student.parameters(), lr=DISTILL_LEARNING_RATE)
        passes = teacher_passes(mask_keep_probability(params))
        clock = StageClock("distill", steps, time_budget=time_budget)
        patch = sampler.patch[1:] if sampler.dims == 2 else sampler.patch
        for step in range(1, steps + 1):
            if time_budget is not None and clock.elapsed >= time_budget:
                log.info("distillation stopped by the time budget after %d of %d steps", step - 1, steps)
                break
            x = torch.from_numpy(sampler.sample(params.batch_size))
            x = x.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else x
            x = centre_crop(x[:, :1], patch)
            with torch.no_grad():
                _enable_dropout(net, params.dropout > 0)
                target = self.predict_batch(net, x, params, n_predictions=passes, generator=generator, device=dev)
            with autocast(dev):
                out = student(torch.cat([x, torch.ones_like(x)], dim=1))
            loss = ((out.float() - target) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            yield clock.event(step, loss=float(loss.detach()), device=str(dev))
        net.eval()
        student.eval()
        return student


# ---------------------------------------------------------------------------------------- Fourier N2N
@dataclass(frozen=True)
class FourierN2NParams(EngineParams):
    """Fourier N2N's settings: the frequency masks and the target."""

    # Measured on the white phantom (100 s): 16 channels at 4e-4 29.2 dB, 8 channels at 1e-3 29.0 dB (per-patch
    # FFTs make the network a smaller share of a step, so the wider network costs less here than for Self2Self).
    base_channels: int = param(16, "U-Net channels at the first level (doubled per level)", min=4, max=256)
    learning_rate: float = param(4e-4, "Adam learning rate", min=1e-7, max=1.0)
    fourier_keep: float = param(0.5, "probability of keeping a block of frequencies", min=0.05, max=0.95)
    fourier_block: int = param(8, "side of the frequency blocks kept or dropped together", min=1, max=64)
    low_frequency_fraction: float = param(0.005, "fraction of the spectrum always kept (a low-frequency ball)",
                                          min=0.0, max=0.5)
    flip_probability: float = param(0.1, "probability of flipping the sign of a kept coefficient", min=0.0,
                                    max=0.5)
    n_predictions: int = param(8, "Fourier-pool members × dropout samples averaged per tile", min=1, max=1000)
    fourier_target: str = param("complement", "training target: the frequencies the input dropped (independent "
                                              "noise) or an independent pool member (the thesis)",
                                choices=("complement", "independent"))
    ball: str = param("noise", "what --low-frequency-fraction measures: the share of the measured noise power the "
                               "always-kept ball holds (it shrinks for correlated noise, whose power sits at low "
                               "frequencies) or the share of the spectrum's volume (the thesis)",
                      choices=("noise", "volume"))
    whitening: str = param("auto", "whiten the noise before the Fourier masks and undo it on output: auto (from the "
                                   "noise correlation measured on the data), off, or z,y,x Gaussian lengths (voxels)")
    whitening_floor: float = param(0.1, "regularisation of the whitening filter sqrt((1 + f) / (N(k) + f)), N the "
                                        "noise spectrum (1 at k = 0): its largest gain is sqrt((1 + f) / f)",
                                   min=1e-3, max=10.0)


class FourierN2N(SelfSupervisedMethod):
    """Fourier-space Noise2Noise: input and target are complementary (or independent) frequency samplings
    of the same patch; predictions average fresh input samplings."""

    name = "fourier-n2n"
    title = "Fourier N2N"
    params = FourierN2NParams
    description = ("Fourier-space Noise2Noise: the input keeps random blocks of frequencies (and the lowest ones), "
                   "the target is the frequencies it dropped, whose noise is independent of the input's. Works "
                   "from one noisy volume, with white or correlated noise.")
    needs_fft = True
    crop_margin = 8

    def default_params(self, *, dims: int, **overrides) -> FourierN2NParams:
        p = super().default_params(dims=dims)
        if dims == 2:
            # Small particle boxes hold their signal in a few frequency blocks near the origin: a 7 % ball
            # keeps it in every input (measured on 64² particles at SNR 0.2, 30 s: 23.4 dB with 7 %, 21.7 dB
            # with the 3D default of 0.5 %), at the price of the noise shared inside the ball.
            p = replace(p, low_frequency_fraction=0.07)
        return replace(p, **overrides) if overrides else p

    def prepare_params(self, params: FourierN2NParams, vol: np.ndarray, *, dims: int,
                       model: TrainedDenoiser | None, noise: NoiseCorrelation | None = None) -> FourierN2NParams:
        """Resolve ``whitening="auto"``: the lengths measured on the data (the model's when training continues;
        off when nothing was measured)."""
        if not isinstance(params, FourierN2NParams):
            return params
        if model is not None:  # continue with the model's resolved settings
            return replace(params, whitening=getattr(model.params, "whitening", "off"), ball="volume",
                           low_frequency_fraction=model.params.low_frequency_fraction)
        if params.ball == "noise":
            lengths = noise.lengths if noise is not None else (0.0, 0.0, 0.0)
            fraction = ball_volume_fraction(lengths, params.low_frequency_fraction, dims=dims)
            params = replace(params, ball="volume", low_frequency_fraction=fraction)
        if str(params.whitening).strip().lower() == "auto":
            params = replace(params, whitening="off" if noise is None else ",".join(f"{v:g}" for v in noise.lengths))
        return params

    @staticmethod
    def _mask_options(params: FourierN2NParams, generator, device) -> dict:
        return dict(keep_probability=params.fourier_keep, block=params.fourier_block,
                    low_frequency_fraction=params.low_frequency_fraction, flip_probability=params.flip_probability,
                    generator=generator, device=device)

    def make_pair(self, x, params: FourierN2NParams, *, patch_spatial, generator):
        x = x[:, :1]
        kw = self._mask_options(params, generator, x.device)
        w = whitening_filter(tuple(x.shape[2:]), params, x.device)
        mask = fourier_mask(x.shape, **kw)
        a = apply_fourier_mask(x, mask * w)
        if params.fourier_target == "complement":
            b = apply_fourier_mask(x, complementary_fourier_mask(mask, tuple(x.shape[2:]),
                                                                 params.low_frequency_fraction) * w)
        else:
            b = apply_fourier_mask(x, fourier_mask(x.shape, **kw) * w)
        return centre_crop(a, patch_spatial), centre_crop(b, patch_spatial), None

    def predict_batch(self, net, x, params: FourierN2NParams, *, n_predictions, generator, device):
        x = x[:, :1]
        y = torch.zeros_like(x)
        kw = self._mask_options(params, generator, device)
        w = whitening_filter(tuple(x.shape[2:]), params, device)
        for _ in range(n_predictions):
            member = apply_fourier_mask(x, fourier_mask(x.shape, **kw) * w)
            with autocast(device):
                y += net(member).float()
        y /= n_predictions
        gain = complement_gain(tuple(y.shape[2:]), params, device) if params.fourier_target == "complement" else 1.0
        if params.fourier_target == "complement" or not isinstance(w, float):
            y = apply_fourier_mask(y, gain / w)  # the attenuation and the whitening undone
        return y


def ball_volume_fraction(lengths, noise_share: float, *, dims: int, grid: int = 64) -> float:
    """The share of the spectrum's volume of the low-frequency ball that holds ``noise_share`` of the power of
    noise with Gaussian lengths ``lengths`` (z, y, x): ``noise_share`` itself for white noise, much less for
    correlated noise. The ball is in every input *and* every target, so its noise is copied to the output:
    with the default 0.5 % of the volume, noise of σ = 1 voxel along z, y and x would keep 18 % of its power
    there; sized by noise power it keeps 0.5 %."""
    if noise_share <= 0:
        return 0.0
    if max(lengths[-dims:]) <= 0:
        return float(noise_share)
    k = np.fft.fftfreq(grid)
    use = lengths[-dims:]
    grids = np.meshgrid(*([k] * dims), indexing="ij")
    power = np.exp(-4.0 * np.pi**2 * sum(float(length) ** 2 * g**2 for length, g in zip(use, grids)))
    radius = np.round(np.sqrt(sum(g**2 for g in grids)).ravel(), 9)
    shells, index = np.unique(radius, return_inverse=True)
    share = np.cumsum(np.bincount(index, weights=power.ravel())) / power.sum()
    # The largest ball (whole shells of the grid) that holds no more than the share: at least the origin.
    fits = np.flatnonzero(share <= noise_share)
    r = float(shells[fits[-1]]) if fits.size else 0.0
    r = max(r, 0.5 / grid)
    volume = 4.0 / 3.0 * np.pi * r**3 if dims == 3 else np.pi * r**2
    return float(min(noise_share, volume))


def whitening_lengths(params: FourierN2NParams) -> tuple[float, float, float] | None:
    """The (z, y, x) Gaussian noise lengths the whitening follows, or None when it is off."""
    text = str(getattr(params, "whitening", "off")).strip().lower()
    if text in ("off", "auto", "", "none"):  # "auto" left only in a model not yet trained
        return None
    try:
        values = per_axis(text, float, minimum=0)
    except ValueError:
        raise ValueError(f"whitening must be auto, off or one or three lengths z,y,x ≥ 0, "
                         f"got {params.whitening!r}") from None
    return values if max(values) > 0 else None


def whitening_filter(spatial, params: FourierN2NParams, dev):
    """``W(k) = sqrt((1 + f) / (N(k) + f))`` on the rfftn grid of ``spatial`` (2D: (y, x); 3D: (z, y, x)), with
    ``N(k) = exp(−4π² Σ L_a² k_a²)`` the spectrum of the measured noise (1 at k = 0) and ``f`` the floor;
    the float 1.0 when whitening is off. Noise correlated over L voxels has most of its power at low
    frequencies, where the signal is too; W flattens it, so the Noise2Noise loss no longer spends itself on
    those frequencies, and dividing the output by W undoes it."""
    lengths = whitening_lengths(params)
    if lengths is None:
        return 1.0
    lengths = lengths[-len(spatial):]
    axes = [torch.fft.fftfreq(n, device=dev) for n in spatial[:-1]] + [torch.fft.rfftfreq(spatial[-1], device=dev)]
    grids = torch.meshgrid(*axes, indexing="ij")
    power = torch.exp(-4.0 * math.pi**2 * sum(float(length) ** 2 * g**2 for length, g in zip(lengths, grids)))
    f = float(params.whitening_floor)
    return torch.sqrt((1.0 + f) / (power + f)).to(torch.float32)


def complement_gain(spatial, params: FourierN2NParams, dev) -> torch.Tensor:
    """Undo the expected attenuation of a network trained on complementary targets.

    Outside the shared low-frequency ball the target holds a frequency only when the input dropped it
    (probability 1 − keep), so the network learns (1 − keep) × signal there; averaged over fresh input
    masks, dividing by (1 − keep) gives back the signal at its full amplitude.
    """
    ball = low_frequency_ball(spatial, params.low_frequency_fraction, dev)
    return torch.where(ball, 1.0, 1.0 / (1.0 - params.fourier_keep)).to(torch.float32)


# ------------------------------------------------------------------------------------ N2N on halves
@dataclass(frozen=True)
class HalvesParams(EngineParams):
    """Noise2Noise on halves: one deterministic pass per half by default."""

    n_predictions: int = param(1, "dropout samples averaged per half at inference", min=1, max=1000)
    dropout: float = param(0.0, "decoder dropout rate", min=0.0, max=0.9)


class NoiseToNoiseHalves(SelfSupervisedMethod):
    """Noise2Noise on two independent halves (even/odd frames): each half is the other's target, and
    prediction averages the network's output on both."""

    name = "n2n-halves"
    title = "Noise2Noise (halves)"
    params = HalvesParams
    description = "Noise2Noise on even/odd half volumes (cryoCARE's setting): give the second half with --half2."
    needs_half2 = True

    def training_sources(self, vol, half2, *, is_stack):
        if half2 is None:
            raise CryodenInputError(None, f"{self.name} needs the second half volume (--half2)")
        vol2, _ = as_volume(half2, is_stack=is_stack)
        if vol2.shape != vol.shape:
            raise CryodenInputError(None, f"the two halves differ in shape: {vol.shape} and {vol2.shape}")
        return [vol, vol2]

    def prediction_sources(self, vol, half2, *, is_stack):
        # Without the second half the model still denoises the first (one channel, no average).
        return [vol] if half2 is None else [vol, as_volume(half2, is_stack=is_stack)[0]]

    def use_dropout(self, params: HalvesParams, n_predictions: int) -> bool:
        # One pass of the deterministic network unless several dropout samples are asked for.
        return params.dropout > 0 and n_predictions > 1

    def make_pair(self, x, params: HalvesParams, *, patch_spatial, generator):
        x = centre_crop(x, patch_spatial)
        # Either half is the input half of the time, so the network learns no half-specific bias.
        swap = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
        swap = swap.to(x.device).view(-1, *([1] * (x.ndim - 1)))
        return torch.where(swap, x[:, 1:2], x[:, 0:1]), torch.where(swap, x[:, 0:1], x[:, 1:2]), None

    def predict_batch(self, net, x, params: HalvesParams, *, n_predictions, generator, device):
        y = torch.zeros_like(x[:, :1])
        for _ in range(n_predictions):
            for c in range(x.shape[1]):
                with autocast(device):
                    y += net(x[:, c:c + 1]).float()
        return y / (n_predictions * x.shape[1])


for _method in (Self2Self(), FourierN2N(), NoiseToNoiseHalves()):
    register(_method)
