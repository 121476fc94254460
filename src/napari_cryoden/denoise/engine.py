"""The self-supervised denoising engine: the training loop and the tiled prediction every such method shares.

A method is a :class:`SelfSupervisedMethod` subclass (the built-in ones, Self2Self with dropout, Fourier N2N
and even/odd Noise2Noise, are in :mod:`.self_supervised`) that says how to make a training pair from the data
the user has (:meth:`~SelfSupervisedMethod.make_pair`) and how to denoise a batch of tiles with the trained
network (:meth:`~SelfSupervisedMethod.predict_batch`); sampling, normalisation, the network, the optimiser,
the schedule, checkpoints, previews, tiling and the out-of-memory retry are here, once.

Training and prediction are generators of :class:`~napari_cryoden.progress.ProgressEvent`; prediction is
tiled and streamed (:mod:`.tiling`). ``docs/methods.md`` gives the formulas and the reasons for each choice.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..checkpoint import Checkpointer, restore_rng, rng_state
from ..device import describe_device, resolve_device
from ..errors import CryodenInputError
from ..models import ModelFile, load_model, to_cpu
from ..params import as_dict, param
from ..progress import ProgressEvent, StageClock
from .networks import UNet, UNetConfig
from .noise import NoiseCorrelation, NoNoiseError, estimate_noise_correlation, per_axis
from .normalize import Normalization, fit_normalization
from .registry import DenoiseMethod, get_method, methods
from .tiling import auto_tile, iter_predict_tiled

log = logging.getLogger(__name__)

#: Fewer training steps than this within a time budget is warned about before the result is trusted.
MEANINGFUL_STEPS = 50


def _warn_short_budget(what: str, advice: str) -> None:
    """Say plainly that a time budget buys too few steps: the result would be little more than a smoothing."""
    warnings.warn(f"{what}; fewer than {MEANINGFUL_STEPS} steps give little more than a smoothing of the input: "
                  f"{advice}", UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class EngineParams:
    """Settings shared by the self-supervised methods (defaults run in minutes on a 2-core CPU)."""

    patch_size: int = param(32, "training patch side in voxels (3D) or pixels (2D); rounded to the network's multiple",
                            min=8, max=512)
    batch_size: int = param(8, "patches per training step", min=1, max=1024)
    epochs: int = param(100, "training epochs (an epoch = enough patches to cover the data once)", min=1)
    time_budget: float = param(120.0, "wall-clock training budget in seconds (0: epochs only)", min=0, unit="s", basic=True)
    learning_rate: float = param(1e-3, "Adam learning rate", min=1e-7, max=1.0)
    lr_schedule: str = param("cosine", "learning-rate schedule over the run", choices=("cosine", "constant"))
    base_channels: int = param(8, "U-Net channels at the first level (doubled per level)", min=4, max=256)
    depth: int = param(3, "U-Net levels", min=2, max=6)
    dropout: float = param(0.3, "decoder dropout rate (also used at prediction time for averaging)", min=0.0,
                           max=0.9)
    n_predictions: int = param(8, "predictions averaged per tile at inference (fresh masks / dropout)", min=1,
                               max=1000)
    low_percentile: float = param(0.5, "clip below this percentile before standardising", min=0.0, max=50.0)
    high_percentile: float = param(99.5, "clip above this percentile before standardising", min=50.0, max=100.0)
    smooth_sigmas: str = param("1,2,3", "scales (voxels) of the normalised Gaussian averages given to the network as "
                                      "extra input channels (it starts as their blend); empty: none")
    augment: bool = param(True, "random flips and 90° rotations in the yx plane")
    tile_size: int = param(0, "prediction tile side (0: automatic from free memory)", min=0, max=1024)
    tile_overlap: int = param(16, "overlap between prediction tiles (voxels)", min=0, max=256)

    @classmethod
    def from_saved(cls, values: dict):
        """The settings stored in a model file (a method whose settings changed meaning overrides this)."""
        return cls(**values)


# ---------------------------------------------------------------------------------------------- data
def as_volume(data: np.ndarray, *, is_stack: bool) -> tuple[np.ndarray, int]:
    """View data as (z, y, x) for a volume or (n, y, x) for a stack; returns (array, network dims)."""
    if data.ndim == 2:
        return data[None], 2
    if data.ndim != 3:
        raise CryodenInputError(None, f"denoising needs a 2D image, a 3D volume or a stack, got shape {data.shape}")
    return data, 2 if is_stack else 3


def _patch_shape(shape: Sequence[int], dims: int, patch: int, multiple: int) -> tuple[int, int, int]:
    def fit(n: int) -> int:
        p = min(patch, n)
        p -= p % multiple
        if p < multiple:
            raise CryodenInputError(None, f"the data ({tuple(shape)}) is too small for a U-Net of this depth "
                                          f"(needs at least {multiple} voxels per axis); lower the depth")
        return p

    if dims == 2:
        return (1, fit(shape[1]), fit(shape[2]))
    return tuple(fit(n) for n in shape)


def _parse_sigmas(text) -> tuple[float, ...]:
    if text is None or str(text).strip() == "":
        return ()
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise ValueError(f"smooth_sigmas must look like '1,2', got {text!r}") from exc
    if any(v <= 0 for v in values):
        raise ValueError(f"smooth_sigmas must be positive, got {text!r}")
    return values


class PatchSampler:
    """Random (jittered, augmented) training patches read from the (memory-mapped) data."""

    def __init__(self, sources: Sequence[np.ndarray], norm: Normalization, *, patch: tuple[int, int, int],
                 dims: int, margin: int, augment: bool, rng: np.random.Generator, turns: bool = True):
        self.sources, self.norm, self.patch, self.dims = list(sources), norm, patch, dims
        self.margin, self.augment, self.rng, self.turns = margin, augment, rng, turns
        self.shape = sources[0].shape

    def _crop(self, source, z, y, x, size):
        return np.asarray(source[z:z + size[0], y:y + size[1], x:x + size[2]], dtype=np.float32)

    def sample(self, batch: int) -> np.ndarray:
        """(batch, n_sources, *spatial) normalised float32 patches (spatial 2D or 3D)."""
        m = self.margin
        if self.dims == 2:
            size = (1, min(self.patch[1] + 2 * m, self.shape[1]), min(self.patch[2] + 2 * m, self.shape[2]))
        else:
            size = tuple(min(p + 2 * m, s) for p, s in zip(self.patch, self.shape))
        out = []
        for _ in range(batch):
            z, y, x = (int(self.rng.integers(0, s - c + 1)) for s, c in zip(self.shape, size))
            crops = np.stack([self._crop(src, z, y, x, size) for src in self.sources])
            if self.dims == 2:
                crops = crops[:, 0]
            if self.augment:
                crops = self._augment(crops)
            out.append(crops)
        return self.norm.apply(np.stack(out)).astype(np.float32)

    def _augment(self, c: np.ndarray) -> np.ndarray:
        # Flips of every axis, and 90° turns in the yx plane only: z is special in tomograms (missing wedge,
        # noise correlated along z), so it is never swapped with y or x.
        for axis in range(1, c.ndim):
            if self.rng.random() < 0.5:
                c = np.flip(c, axis=axis)
        k = int(self.rng.integers(0, 4))
        if k and self.turns and c.shape[-1] == c.shape[-2]:
            c = np.rot90(c, k, axes=(c.ndim - 2, c.ndim - 1))
        return np.ascontiguousarray(c)


def centre_crop(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The central ``size`` (spatial) part of a (b, c, *spatial) tensor."""
    sl = [slice(None), slice(None)]
    for n, s in zip(t.shape[2:], size):
        start = (n - s) // 2
        sl.append(slice(start, start + s))
    return t[tuple(sl)]


# --------------------------------------------------------------------------------------------- model
@dataclass
class TrainedDenoiser:
    """A trained network with everything needed to predict and to continue training."""

    method: str
    params: EngineParams
    net_config: UNetConfig
    net: UNet
    normalization: Normalization
    history: list = field(default_factory=list)
    optimizer_state: dict | None = None
    voxel_size: tuple | None = None
    #: The noise correlation measured on the training data (:meth:`NoiseCorrelation.to_dict`), or None.
    noise_correlation: dict | None = None
    #: A single-pass network distilled from ``net``'s averaged prediction (Self2Self), or None (models saved
    #: before, or trained without distillation): prediction then averages ``net``'s masked passes.
    student: UNet | None = None
    #: A second single-pass network whose output is averaged with the student's (Self2Self on correlated noise:
    #: a copy of the student trained further by Recorrupted-to-Recorrupted), or None.
    partner: UNet | None = None

    def describe_noise(self) -> str | None:
        """The measured noise correlation in one line (with the mask block the model uses, for Self2Self),
        for the CLI, the widget and the logs; None when it was not measured (e.g. a model saved before)."""
        if not self.noise_correlation:
            return None
        noise = NoiseCorrelation.from_dict(self.noise_correlation)
        block = getattr(self.params, "mask_block", None)
        if block is None:
            return noise.describe(show_block=False)
        parsed = per_axis(block, int) if str(block).lower() != "auto" else None  # "3" is 3x3x3
        line = noise.describe(block=parsed)
        if self.partner is not None:
            line += "; predicted as the mean of the student and its partner trained by Recorrupted-to-Recorrupted"
        return line

    def to_model_file(self) -> ModelFile:
        extra = {"history": list(self.history), "optimizer": self.optimizer_state or {},
                 "voxel_size": list(self.voxel_size) if self.voxel_size else [],
                 "noise_correlation": dict(self.noise_correlation or {})}
        for name in ("student", "partner"):
            net = getattr(self, name)
            if net is not None:
                extra[name] = {"net": net.config.to_dict(), "state_dict": to_cpu(net.state_dict())}
        return ModelFile(
            kind=f"denoise/{self.method}",
            config={"method": self.method, "params": as_dict(self.params), "net": self.net_config.to_dict()},
            state_dict=self.net.state_dict(),
            normalization=self.normalization.to_dict(),
            extra=extra,
        )

    @classmethod
    def from_model_file(cls, model: ModelFile) -> TrainedDenoiser:
        method = model.config["method"]
        if method not in _engine_methods():
            raise CryodenInputError(None, f"model is for method {method!r}, which this engine does not know")
        params = _engine_methods()[method].params.from_saved(model.config["params"])
        net_config = UNetConfig(**model.config["net"])
        net = UNet(net_config)
        net.load_state_dict(model.state_dict)
        extra_nets = {}
        for name in ("student", "partner"):  # absent from files saved before distillation (or the partner)
            saved = model.extra.get(name) or None
            if saved:
                extra_nets[name] = UNet(UNetConfig(**saved["net"]))
                extra_nets[name].load_state_dict(saved["state_dict"])
                extra_nets[name].eval()
        return cls(method=method, params=params, net_config=net_config, net=net,
                   normalization=Normalization.from_dict(model.normalization),
                   history=list(model.extra.get("history", [])),
                   optimizer_state=model.extra.get("optimizer") or None,
                   voxel_size=tuple(model.extra.get("voxel_size") or ()) or None,
                   noise_correlation=model.extra.get("noise_correlation") or None,
                   student=extra_nets.get("student"), partner=extra_nets.get("partner"))

    @classmethod
    def load(cls, path) -> TrainedDenoiser:
        model = load_model(path, kind="denoise")
        if model.kind.startswith("denoise/pretrained"):
            raise CryodenInputError(path, "is a shipped pretrained denoiser: use --method pretrained (and --time-budget "
                                          "to fine-tune it on your data), or Pretrained in the Denoise widget")
        try:
            return cls.from_model_file(model)
        except CryodenInputError as exc:
            raise CryodenInputError(path, exc.problem) from exc


def autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16 where supported), full precision elsewhere."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


# ------------------------------------------------------------------------------------------ training
def _learning_rate(params: EngineParams, progress: float) -> float:
    """The rate at ``progress`` (0 to 1 of the steps or the time budget): cosine decay, floored at 2 %."""
    lr = params.learning_rate * (0.5 + 0.5 * math.cos(math.pi * min(progress, 1.0))) \
        if params.lr_schedule == "cosine" else params.learning_rate
    return max(lr, params.learning_rate * 0.02)


def _optimizer(net: torch.nn.Module, params: EngineParams, model: TrainedDenoiser | None) -> torch.optim.Adam:
    """Adam at the parameters' rate, continuing the optimiser state of ``model`` when it fits."""
    optimizer = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
    if model is not None and model.optimizer_state:
        try:
            optimizer.load_state_dict(model.optimizer_state)
            for group in optimizer.param_groups:
                group["lr"] = params.learning_rate
        except (ValueError, KeyError):
            log.warning("optimizer state of the loaded model does not fit; starting a fresh optimizer")
    return optimizer


@dataclass
class _Training:
    """What a training step changes, and all a checkpoint needs to continue it exactly."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    generator: torch.Generator
    clock: StageClock
    history: list
    step: int = 0
    running: float | None = None

    def snapshot(self) -> dict:
        return {"net": to_cpu(distributed.unwrap(self.net).state_dict()),
                "optimizer": to_cpu(self.optimizer.state_dict()), "step": self.step, "running": self.running,
                "history": list(self.history), "elapsed": self.clock.elapsed,
                "rng": rng_state(numpy_rng=self.rng, generator=self.generator)}

    def restore(self, saved: dict) -> None:
        distributed.unwrap(self.net).load_state_dict(saved["net"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step, self.running, self.history = int(saved["step"]), saved["running"], list(saved["history"])
        self.clock.start -= float(saved["elapsed"])  # the time budget counts the time trained before
        restore_rng(saved["rng"], numpy_rng=self.rng, generator=self.generator)


class SelfSupervisedMethod(DenoiseMethod):
    """A method that trains a U-Net on the noisy data itself, then denoises that data with it.

    A subclass sets the :class:`~napari_cryoden.denoise.registry.DenoiseMethod` attributes (``name``,
    ``title``, ``params``: an :class:`EngineParams` subclass, ``description``) and overrides
    :meth:`make_pair` and :meth:`predict_batch`; the other hooks have defaults that fit a method training
    on one volume.

    Attributes
    ----------
    mask_channel
        The network gets the input's mask as a second channel.
    crop_margin
        Voxels sampled around each training patch and cropped off by :meth:`make_pair` (per-patch FFTs on a
        larger crop have fewer edge effects in its centre).
    """

    family = "self-supervised"
    trains = True
    params = EngineParams
    mask_channel: bool = False
    crop_margin: int = 0

    # ------------------------------------------------------------------------------ per-method hooks
    def default_params(self, *, dims: int, **overrides) -> EngineParams:
        """Method defaults, adjusted for 2D (larger patches, more of them per step)."""
        p = self.params()
        if dims == 2:
            p = replace(p, patch_size=96, batch_size=16)
        return replace(p, **overrides) if overrides else p

    def training_sources(self, vol: np.ndarray, half2: np.ndarray | None, *, is_stack: bool) -> list[np.ndarray]:
        """The arrays training patches are cut from, at the same positions (``vol``: the data as (z, y, x))."""
        return [vol]

    def prediction_sources(self, vol: np.ndarray, half2: np.ndarray | None, *, is_stack: bool) -> list[np.ndarray]:
        """The arrays whose tiles :meth:`predict_batch` gets as its channels."""
        return [vol]

    def needs_noise_estimate(self, params: EngineParams, model: TrainedDenoiser | None) -> bool:
        """Whether training cannot go on without a noise-correlation measurement (then a volume where it is
        impossible — constant, tiny — is refused; otherwise the measurement is only reported)."""
        return False

    def measure_noise(self, vol: np.ndarray, half2: np.ndarray | None, *, dims: int, params: EngineParams,
                      model: TrainedDenoiser | None) -> NoiseCorrelation | None:
        """The noise correlation of the training data (from the two halves when the method has them), or None
        where it cannot be measured and the method does not need it. Constant data (no noise at all) are
        refused by every method: there is nothing to denoise."""
        try:
            other = None
            if self.needs_half2 and half2 is not None:
                other, _ = as_volume(half2, is_stack=dims == 2)
            return estimate_noise_correlation(vol, dims=dims, half2=other)
        except CryodenInputError as exc:
            if isinstance(exc, NoNoiseError) or self.needs_noise_estimate(params, model):
                raise
            log.info("noise correlation not measured on data of shape %s", vol.shape)
            return None

    def prepare_params(self, params: EngineParams, vol: np.ndarray, *, dims: int,
                       model: TrainedDenoiser | None, noise: NoiseCorrelation | None = None) -> EngineParams:
        """The parameters the training uses and the model stores (settings measured from the data resolved;
        ``noise``: the measured noise correlation)."""
        return params

    def make_pair(self, x: torch.Tensor, params: EngineParams, *, patch_spatial: Sequence[int],
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(network input, target, loss weights or None for all voxels) for one batch of normalised patches.

        Parameters
        ----------
        x
            (b, n_sources, *spatial) patches, ``crop_margin`` voxels larger than ``patch_spatial`` per side.
        patch_spatial
            The spatial size the input and the target must have.
        generator
            The training's random generator (its state is checkpointed).
        """
        raise NotImplementedError

    def allows_turns(self, params: EngineParams) -> bool:
        """Whether training patches may be turned by 90° in the yx plane (augmentation; flips always may)."""
        return True

    def use_dropout(self, params: EngineParams, n_predictions: int) -> bool:
        """Whether prediction samples the decoder's dropout (averaged over ``n_predictions`` passes)."""
        return params.dropout > 0

    def predict_batch(self, net: UNet, x: torch.Tensor, params: EngineParams, *, n_predictions: int,
                      generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Denoised (b, 1, *spatial) from normalised, padded tiles ``x`` (b, n_sources, *spatial)."""
        raise NotImplementedError

    def predict_single(self, net: UNet, x: torch.Tensor, params: EngineParams, *,
                       device: torch.device) -> torch.Tensor:
        """Denoised (b, 1, *spatial) from tiles ``x`` in one deterministic pass of ``net`` (a distilled student,
        or the trained network on the whole input); only for methods whose :meth:`single_pass` can say yes."""
        raise NotImplementedError

    def single_pass(self, model: TrainedDenoiser, n_predictions: int | None) -> UNet | None:
        """The network :meth:`predict` runs once per tile instead of averaging :meth:`predict_batch`'s passes,
        or None to average them (the default; an explicit ``n_predictions`` always averages)."""
        return None

    def distill_share(self, params: EngineParams) -> float:
        """The share of a training time budget kept for :meth:`distill` after the main loop (0: none)."""
        return 0.0

    def finish_share(self, params: EngineParams) -> float:
        """The share of a training time budget kept for :meth:`finish` after the distillation (0: none)."""
        return 0.0

    def finish(self, model: TrainedDenoiser, data: np.ndarray, *, is_stack: bool, seed: int, device,
               voxel_size, time_budget: float | None) -> Generator[ProgressEvent, None, TrainedDenoiser]:
        """After training and distillation: a last stage on the trained ``model`` (the default: none).
        ``time_budget``: the seconds left of the training budget (None: no budget)."""
        return model
        yield  # a generator that yields nothing

    def distill(self, net: UNet, sampler: PatchSampler, params: EngineParams, *, dev: torch.device,
                generator: torch.Generator, time_budget: float | None,
                is_main: bool) -> Generator[ProgressEvent, None, UNet | None]:
        """After training: a single-pass network distilled from ``net``'s averaged prediction, or None (the
        default). ``time_budget``: seconds it may take at most (None: its steps only)."""
        return None
        yield  # a generator that yields nothing

    # --------------------------------------------------------------------------------- shared engine
    def tile_predictor(self, net: UNet, params: EngineParams, norm: Normalization, dev: torch.device,
                       generator: torch.Generator, *, n_predictions: int | None = None, single: bool = False):
        """A function (b, c, tz, ty, tx) raw tiles -> (b, tz, ty, tx) denoised tiles in input units
        (``single``: one deterministic pass of ``net`` per tile, :meth:`predict_single`)."""
        n_pred = n_predictions or params.n_predictions
        dims = net.config.dims
        use_dropout = self.use_dropout(params, n_pred) and not single

        # inference_mode: no autograd bookkeeping at all (no_grad still tracks versions and views).
        @torch.inference_mode()
        def predict(tiles: np.ndarray) -> np.ndarray:
            _enable_dropout(net, use_dropout)
            x = torch.from_numpy(np.ascontiguousarray(norm.apply(tiles), dtype=np.float32))
            x = x.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else x  # one copy per tile batch
            if dims == 2:  # tiles (b, c, 1, y, x) -> (b, c, y, x)
                x = x[:, :, 0]
            x, pads = _pad_to_multiple(x, net.config.multiple)
            if single:
                y = self.predict_single(net, x, params, device=dev)
            else:
                y = self.predict_batch(net, x, params, n_predictions=n_pred, generator=generator, device=dev)
            y = _unpad(y, pads)[:, 0]
            if dims == 2:
                y = y[:, None]
            return norm.invert(y.cpu().numpy())

        return predict

    def _network(self, vol: np.ndarray, dims: int, params: EngineParams, model: TrainedDenoiser | None):
        """(normalisation, network config, network, history): new ones, or those of the model continued."""
        if model is None:
            norm = fit_normalization(vol, low_percentile=params.low_percentile,
                                     high_percentile=params.high_percentile)
            net_config = UNetConfig(dims=dims, base_channels=params.base_channels, depth=params.depth,
                                    dropout=params.dropout, mask_channel=self.mask_channel,
                                    smooth_sigmas=_parse_sigmas(params.smooth_sigmas))
            return norm, net_config, UNet(net_config), []
        if model.method != self.name or model.net_config.dims != dims:
            raise CryodenInputError(None, f"the model was trained with {model.method} in {model.net_config.dims}D; "
                                          f"cannot continue it as {self.name} in {dims}D")
        return model.normalization, model.net_config, model.net, list(model.history)

    def _step(self, state: _Training, sampler: PatchSampler, params: EngineParams, *, patch_spatial, dev,
              scaler, ctx) -> float:
        """One optimiser step on a fresh batch; returns the loss averaged over the processes."""
        x = torch.from_numpy(sampler.sample(params.batch_size))
        x = x.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else x
        inp, target, weights = self.make_pair(x, params, patch_spatial=patch_spatial, generator=state.generator)
        with autocast(dev):
            out = state.net(inp)
        err = (out.float() - target) ** 2
        loss = (err * weights).sum() / weights.sum().clamp_min(1.0) if weights is not None else err.mean()
        state.optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(state.optimizer)
            scaler.update()
        else:
            loss.backward()
            state.optimizer.step()
        return distributed.mean(float(loss.detach()), ctx)

    def _preview(self, net: UNet, params, norm, region: np.ndarray, dev, generator) -> np.ndarray:
        predict = self.tile_predictor(net, params, norm, dev, generator, n_predictions=2)
        out = predict(region[None, None])[0]
        return out[out.shape[0] // 2] if out.ndim == 3 else out

    def train(self, data: np.ndarray, params: EngineParams, *, is_stack: bool = False,
              half2: np.ndarray | None = None, model: TrainedDenoiser | None = None, seed: int = 0,
              device: str | torch.device = "auto", voxel_size=None, preview_every: int = 25,
              checkpoint: Checkpointer | None = None,
              resume: bool = False) -> Generator[ProgressEvent, None, TrainedDenoiser]:
        """Train (or continue training) this method's denoiser on ``data``.

        Parameters
        ----------
        data
            2D image, (z, y, x) volume, or (n, y, x) stack when ``is_stack``; may be memory-mapped; not modified.
        params
            An instance of :attr:`params`.
        half2
            The second half, for a method that :attr:`needs_half2` (then ``data`` is the first).
        model
            Continue training this model (its network, normalisation and optimiser state) instead of a new one.
        checkpoint
            Write the training state there every ``checkpoint.every`` seconds.
        resume
            Continue from ``checkpoint``'s file when it exists (its step, training time, optimiser and random
            states), so a killed training ends where the uninterrupted one would have.

        Yields progress events (loss, ETA, and every ``preview_every`` steps a denoised central slice) and
        returns the :class:`TrainedDenoiser`.
        """
        vol, dims = as_volume(data, is_stack=is_stack)
        sources = self.training_sources(vol, half2, is_stack=is_stack)
        noise = self.measure_noise(vol, half2, dims=dims, params=params, model=model)
        params = self.prepare_params(params, vol, dims=dims, model=model, noise=noise)
        ctx = distributed.context()  # under torchrun: DDP, one sample stream per process, rank 0 reports
        dev = distributed.training_device(resolve_device(device, need_fft=self.needs_fft), ctx)
        torch.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
        rng = np.random.default_rng(distributed.rank_seed(seed, ctx))
        generator = torch.Generator(device="cpu").manual_seed(distributed.rank_seed(seed, ctx))
        norm, net_config, net, history = self._network(vol, dims, params, model)
        net = distributed.wrap(net.to_device(dev), ctx)
        optimizer = _optimizer(net, params, model)
        scaler = torch.amp.GradScaler("cuda") if (dev.type == "cuda" and not torch.cuda.is_bf16_supported()) else None

        patch = _patch_shape(vol.shape, dims, params.patch_size, net_config.multiple)
        patch_spatial = patch[1:] if dims == 2 else patch
        sampler = PatchSampler(sources, norm, patch=patch, dims=dims, margin=self.crop_margin,
                               augment=params.augment, rng=rng, turns=self.allows_turns(params))
        steps_per_epoch = max(10, math.ceil(int(np.prod(vol.shape)) / (params.batch_size * int(np.prod(patch)))))
        total_steps = steps_per_epoch * params.epochs
        budget = params.time_budget if params.time_budget > 0 else None
        state = _Training(net=net, optimizer=optimizer, rng=rng, generator=generator, history=history,
                          clock=StageClock("train", total_steps, time_budget=budget))
        log.info("training %s on %s: %s, patches %s, %d steps max, budget %s s", self.name, describe_device(dev),
                 vol.shape, patch, total_steps, budget)

        preview_input, preview_origin = _preview_source(vol, dims)
        if checkpoint is not None:
            checkpoint.bind(kind=f"denoise/{self.name}", shape=list(vol.shape), params=as_dict(params), seed=seed,
                            world_size=ctx.world_size)
            saved = checkpoint.load() if resume else None
            if saved is not None:
                state.restore(saved)
                log.info("resumed from %s at step %d (%.1f s trained)", checkpoint.path, state.step,
                         saved["elapsed"])
                yield state.clock.event(state.step, loss=state.running, resumed_from=state.step,
                                        device=describe_device(dev))
        net.train()
        clock = state.clock
        # A model trained before (continued here) is more than a smoothing after a few steps: no warning then.
        warned, first_done = model is not None, None
        # With a time budget, a share of it is kept for the distillation after the loop (Self2Self's student).
        # A further share is kept for the last stage after it (Self2Self's partner on correlated noise).
        finish_share = self.finish_share(params)
        main_budget = (budget * (1.0 - self.distill_share(params) - finish_share) if budget is not None
                       else None)
        while True:
            # Under torchrun every process acts on the same elapsed time (the slowest process's): the learning
            # rate follows the time budget, and two clocks read a few ms apart would give two rates and two
            # sets of weights.
            elapsed = distributed.maximum(clock.elapsed, ctx) if main_budget is not None else 0.0
            if state.step >= total_steps or (main_budget is not None and elapsed >= main_budget):
                break
            progress = state.step / total_steps
            if main_budget is not None:
                progress = max(progress, elapsed / main_budget)
            lr = _learning_rate(params, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            value = self._step(state, sampler, params, patch_spatial=patch_spatial, dev=dev, scaler=scaler, ctx=ctx)
            state.step += 1
            state.running = value if state.running is None else 0.95 * state.running + 0.05 * value
            state.history.append(value)
            if main_budget is not None and not warned:
                # After two steps past the first (which pays the one-off set-up), say plainly when the budget
                # cannot buy a meaningful training: the result would be little more than the input smoothing.
                if first_done is None:
                    first_done = (state.step, time.perf_counter())
                elif state.step - first_done[0] >= 2:
                    per_step = (time.perf_counter() - first_done[1]) / (state.step - first_done[0])
                    expected = state.step + max(0.0, main_budget - clock.elapsed) / per_step
                    warned = True
                    if expected < MEANINGFUL_STEPS and ctx.is_main:
                        _warn_short_budget(f"a {budget:g} s budget allows about {expected:.0f} training steps here "
                                           f"({per_step:.2g} s each on {describe_device(dev)})",
                                           f"give about {MEANINGFUL_STEPS * per_step:.0f} s or more")
            preview = None
            if preview_every and state.step % preview_every == 0 and ctx.is_main:
                preview = self._preview(distributed.unwrap(net), params, norm, preview_input, dev, generator)
                net.train()
            if checkpoint is not None and ctx.is_main and checkpoint.due():
                checkpoint.save(state.snapshot())
            yield clock.event(state.step, loss=state.running, preview=preview, lr=lr, device=describe_device(dev),
                              preview_origin=preview_origin)
        if main_budget is not None and not warned and state.step < MEANINGFUL_STEPS and ctx.is_main:
            # The budget ran out before the step rate could be measured (a very short budget or a busy CPU).
            _warn_short_budget(f"a {budget:g} s budget allowed only {state.step} training steps here on "
                               f"{describe_device(dev)}", "give more time")
        net = distributed.unwrap(net)
        net.eval()
        left = None if budget is None else max(0.0, budget * (1.0 - finish_share) - clock.elapsed)
        student = yield from self.distill(net, sampler, params, dev=dev, generator=generator, time_budget=left,
                                          is_main=ctx.is_main)
        net.eval()
        trained = TrainedDenoiser(method=self.name, params=params, net_config=net_config, net=net.cpu(),
                               normalization=norm, history=state.history,
                               optimizer_state=to_cpu(optimizer.state_dict()),
                               voxel_size=tuple(voxel_size) if voxel_size is not None else None,
                               noise_correlation=noise.to_dict() if noise is not None else None,
                               student=student.cpu() if student is not None else None)
        if not finish_share:
            return trained
        left = None if budget is None else max(0.0, budget - clock.elapsed)
        return (yield from self.finish(trained, data, is_stack=is_stack, seed=seed, device=device,
                                       voxel_size=voxel_size, time_budget=left))

    def predict(self, model: TrainedDenoiser, data: np.ndarray, *, is_stack: bool = False,
                half2: np.ndarray | None = None, out=None, seed: int = 0, device: str | torch.device = "auto",
                n_predictions: int | None = None, tile_size: int | None = None,
                batch_size: int = 2) -> Generator[ProgressEvent, None, np.ndarray]:
        """Denoise ``data`` with a trained model, tiled and streamed; returns the result (``out`` if given).

        On out-of-memory the tile side is halved and the prediction restarts.
        """
        vol, dims = as_volume(data, is_stack=is_stack)
        if dims != model.net_config.dims:
            raise CryodenInputError(None, f"the model is {model.net_config.dims}D but the data needs a {dims}D model")
        sources = self.prediction_sources(vol, half2, is_stack=is_stack)
        dev = resolve_device(device, need_fft=self.needs_fft)
        single = self.single_pass(model, n_predictions)
        used = single if single is not None else model.net
        net = used.to_device(dev)
        torch.manual_seed(seed + 7919)  # dropout draws from the global generator
        generator = torch.Generator(device="cpu").manual_seed(seed + 7919)
        predict = self.tile_predictor(net, model.params, model.normalization, dev, generator,
                                      n_predictions=n_predictions, single=single is not None)
        tile = choose_tile(vol.shape, dims, model.net_config, dev, tile_size or model.params.tile_size,
                           overlap=model.params.tile_overlap)
        overlap_side = model.params.tile_overlap
        target = out if out is not None else np.empty(vol.shape, dtype=np.float32)
        try:
            while True:
                overlap = (0, overlap_side, overlap_side) if dims == 2 else (overlap_side,) * 3
                try:
                    result = yield from iter_predict_tiled(predict, sources, tile=tile, overlap=overlap, out=target,
                                                           batch_size=batch_size)
                    break
                except (RuntimeError, MemoryError) as exc:
                    if not _is_oom(exc) or max(tile) <= 2 * model.net_config.multiple:
                        raise
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    tile = tuple(t if (dims == 2 and i == 0) else max(model.net_config.multiple, t // 2)
                                 for i, t in enumerate(tile))
                    batch_size = 1
                    log.warning("out of memory; retrying with tiles of %s", tile)
        finally:  # also when cancelled: the model goes back to the host and the GPU memory is released
            used.cpu()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        return result.reshape(np.shape(data)) if out is None else result

    def run(self, data: np.ndarray, params: EngineParams, *, is_stack: bool = False, voxel_size=None,
            seed: int = 0, device="auto", half2: np.ndarray | None = None,
            out=None) -> Generator[ProgressEvent, None, np.ndarray]:
        """Train on ``data`` then predict it (the one-call path the CLI and the widget use)."""
        model = yield from self.train(data, params, is_stack=is_stack, half2=half2, seed=seed, device=device,
                                      voxel_size=voxel_size)
        return (yield from self.predict(model, data, is_stack=is_stack, half2=half2, out=out, seed=seed,
                                        device=device))


def _preview_source(vol: np.ndarray, dims: int, size: int = 128) -> tuple[np.ndarray, tuple[int, int]]:
    """A small central region for live previews (the central slice of a volume, the first image of a
    stack) and the (y, x) of its corner in the data."""
    if dims == 3:
        z = vol.shape[0] // 2
        zs = slice(max(0, z - 8), min(vol.shape[0], z + 8))
        region = np.asarray(vol[zs], dtype=np.float32)
    else:
        region = np.asarray(vol[:1], dtype=np.float32)
    cy, cx = region.shape[1] // 2, region.shape[2] // 2
    h = size // 2
    y0, x0 = max(0, cy - h), max(0, cx - h)
    return region[:, y0:cy + h, x0:cx + h], (y0, x0)


# ---------------------------------------------------------------------------------------- prediction
def _pad_to_multiple(t: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple]:
    spatial = t.shape[2:]
    pads = []
    for n in reversed(spatial):
        extra = (-n) % multiple
        pads += [extra // 2, extra - extra // 2]
    if any(pads):
        mode = "reflect" if all(n > max(pads) for n in spatial) else "replicate"
        t = F.pad(t, pads, mode=mode)
    return t, tuple(pads)


def _unpad(t: torch.Tensor, pads: tuple) -> torch.Tensor:
    sl = [slice(None)] * t.ndim
    for i, axis in enumerate(reversed(range(2, t.ndim))):
        lo, hi = pads[2 * i], pads[2 * i + 1]
        sl[axis] = slice(lo, t.shape[axis] - hi)
    return t[tuple(sl)]


def _enable_dropout(net: torch.nn.Module, on: bool) -> None:
    net.eval()
    if on:
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout | torch.nn.Dropout2d | torch.nn.Dropout3d):
                m.train()


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


def choose_tile(shape: Sequence[int], dims: int, net_config: UNetConfig, dev: torch.device,
                requested: int = 0, *, overlap: int = 0) -> tuple[int, int, int]:
    """Tile size: as asked, else the tile that computes the fewest voxels in all (tiles × tile size, overlaps
    counted twice) among those within the voxel count of a cube of the largest side that fits a quarter of
    the free (GPU or host) memory. A volume that fits in one such tile is one tile; the cube alone would cut a
    64×128×128 volume into four 64×96×96 tiles that compute 2.25× its voxels."""
    multiple = net_config.multiple
    if requested:
        side = max(multiple, requested - requested % multiple)
        return (1, min(side, shape[1]), min(side, shape[2])) if dims == 2 else tuple(min(side, s) for s in shape)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
    else:
        import psutil

        free = psutil.virtual_memory().available
    # Activation memory of a U-Net forward pass ≈ 6 feature maps of base_channels × 4 bytes per voxel.
    bytes_per_voxel = 4.0 * net_config.base_channels * 6
    max_tile = 512 if dims == 2 else (160 if dev.type == "cuda" else 96)
    if dims == 2:
        ty, tx = auto_tile(shape[1:], bytes_per_voxel=bytes_per_voxel, budget_bytes=free / 4, multiple=multiple,
                           max_tile=max_tile)
        cube = (ty, tx)
        best = _fewest_voxels(tuple(shape[1:]), cube, multiple, overlap)
        return (1, *best)
    cube = auto_tile(shape, bytes_per_voxel=bytes_per_voxel, budget_bytes=free / 4, multiple=multiple,
                     max_tile=max_tile)
    return _fewest_voxels(tuple(shape), cube, multiple, overlap)


def _fewest_voxels(shape: tuple[int, ...], cube: Sequence[int], multiple: int, overlap: int) -> tuple[int, ...]:
    """Per-axis tile sides (multiples of ``multiple``, or the whole axis) of at most ``prod(cube)`` voxels that
    compute the fewest voxels over the tiling of ``shape``; ties go to fewer tiles."""
    from .tiling import tile_starts

    cap = max(cube) ** len(shape)
    step = max(multiple, 16) // multiple * multiple  # a coarse grid of sides keeps the search to milliseconds
    options = [sorted({t for t in range(step, s, step)} | {s}) for s in shape]
    best, best_key = tuple(min(c, s) for c, s in zip(cube, shape)), None  # the cube, if nothing is better
    for sides in np.array(np.meshgrid(*options, indexing="ij")).reshape(len(shape), -1).T:
        if int(np.prod(sides)) > cap:
            continue
        counts = [len(tile_starts(s, int(t), min(overlap, int(t) // 2))) for s, t in zip(shape, sides)]
        key = (int(np.prod([c * int(t) for c, t in zip(counts, sides)])), int(np.prod(counts)))
        if best_key is None or key < best_key:
            best, best_key = tuple(int(t) for t in sides), key
    return best


# ------------------------------------------------------------------------------------ public functions
def _engine_methods() -> dict[str, SelfSupervisedMethod]:
    """The registered methods this engine trains, by name (in registration order)."""
    return {n: m for n, m in methods().items() if isinstance(m, SelfSupervisedMethod)}


def _engine_method(name: str) -> SelfSupervisedMethod:
    engine_methods = _engine_methods()
    if name not in engine_methods:
        raise ValueError(f"unknown method {name!r}; choose from {tuple(engine_methods)}")
    return engine_methods[name]


def iter_train(data: np.ndarray, params: EngineParams, *, method: str, is_stack: bool = False,
               half2: np.ndarray | None = None, model: TrainedDenoiser | None = None, seed: int = 0,
               device: str | torch.device = "auto", voxel_size=None, preview_every: int = 25,
               checkpoint: Checkpointer | None = None,
               resume: bool = False) -> Generator[ProgressEvent, None, TrainedDenoiser]:
    """Train (or continue training) the self-supervised ``method`` on ``data``: :meth:`SelfSupervisedMethod.train`.

    Parameters
    ----------
    method
        The name of a registered :class:`SelfSupervisedMethod` ("self2self", "fourier-n2n", "n2n-halves":
        then ``data`` is the first half, ``half2`` the second).
    """
    return (yield from _engine_method(method).train(
        data, params, is_stack=is_stack, half2=half2, model=model, seed=seed, device=device, voxel_size=voxel_size,
        preview_every=preview_every, checkpoint=checkpoint, resume=resume))


def iter_predict(model: TrainedDenoiser, data: np.ndarray, *, is_stack: bool = False,
                 half2: np.ndarray | None = None, out=None, seed: int = 0, device: str | torch.device = "auto",
                 n_predictions: int | None = None, tile_size: int | None = None,
                 batch_size: int = 2) -> Generator[ProgressEvent, None, np.ndarray]:
    """Denoise ``data`` with a trained model (:meth:`SelfSupervisedMethod.predict` of the model's method)."""
    return (yield from _engine_method(model.method).predict(
        model, data, is_stack=is_stack, half2=half2, out=out, seed=seed, device=device, n_predictions=n_predictions,
        tile_size=tile_size, batch_size=batch_size))


def iter_predict_to_file(model: TrainedDenoiser, source, path, *, voxel_size, is_stack: bool = False,
                         origin=None, labels=(), inputs=(), half2=None, seed: int = 0,
                         device: str | torch.device = "auto") -> Generator[ProgressEvent, None, Path]:
    """Predict ``source`` (an :class:`~napari_cryoden.io.mrc.MrcData`-like array) straight into an MRC file.

    The output is a memory map of a temporary file renamed into place at the end: closing the generator
    early (Cancel) or an error leaves no file behind.
    """
    from ..io.mrc import MrcWriter

    shape = np.shape(source)
    with MrcWriter(path, shape, voxel_size=voxel_size, is_stack=is_stack, origin=origin, labels=labels,
                   inputs=inputs) as target:
        view = target if len(shape) == 3 else target.reshape((1,) + tuple(shape))
        yield from iter_predict(model, source, is_stack=is_stack, half2=half2, out=view, seed=seed, device=device)
    return Path(path)


def iter_denoise(data: np.ndarray, params: EngineParams, *, method: str, is_stack: bool = False,
                 half2: np.ndarray | None = None, seed: int = 0, device: str = "auto", voxel_size=None,
                 out=None) -> Generator[ProgressEvent, None, np.ndarray]:
    """Train on ``data`` then predict it (:meth:`SelfSupervisedMethod.run`)."""
    return (yield from _engine_method(method).run(data, params, is_stack=is_stack, half2=half2, seed=seed,
                                                  device=device, voxel_size=voxel_size, out=out))


def default_params(method: str, *, dims: int, **overrides):
    """The registered ``method``'s defaults for ``dims``-dimensional data (:meth:`DenoiseMethod.default_params`)."""
    return get_method(method).default_params(dims=dims, **overrides)


def __getattr__(name: str):
    # The methods and their parameter classes live in .self_supervised, one class per method; these names stay
    # importable from here for the code written when the engine held them. Computed on access, so a method
    # registered later is listed too.
    if name == "METHODS":
        return tuple(_engine_methods())
    if name == "PARAMS":
        return {n: m.params for n, m in _engine_methods().items()}
    if name in ("Self2SelfParams", "FourierN2NParams", "HalvesParams"):
        from . import self_supervised

        return getattr(self_supervised, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
