"""The self-supervised denoising engine: Self2Self with dropout, Fourier N2N, and even/odd Noise2Noise.

One engine, three ways to make a training pair from the data the user has:

* ``self2self``  — input = mask ⊙ patch (Bernoulli mask, keep probability p, optionally in blocks), target =
  the same patch; the loss is the mean squared error over the *dropped* voxels only.
* ``fourier-n2n`` — input and target are two independent Fourier-sampled versions of the same patch
  (blocky Bernoulli masks in Fourier space with an always-kept low-frequency ball and random sign flips);
  Noise2Noise loss (MSE over all voxels).
* ``n2n-halves`` — input and target are the two half volumes (even/odd frames) at the same position.

Training and prediction are generators of :class:`~napari_cryoden.progress.ProgressEvent`; prediction is
tiled and streamed (:mod:`.tiling`). ``docs/methods.md`` gives the formulas and the reasons for each choice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..checkpoint import Checkpointer, cpu_state, restore_rng, rng_state
from ..device import describe_device, resolve_device
from ..errors import CryodenInputError
from ..models import ModelFile, load_model
from ..params import as_dict, param
from ..progress import ProgressEvent, StageClock
from .masks import (
    apply_fourier_mask,
    bernoulli_mask,
    complementary_fourier_mask,
    fourier_mask,
    low_frequency_ball,
    stratified_bernoulli_masks,
)
from .networks import UNet, UNetConfig
from .noise import auto_mask_block
from .normalize import Normalization, fit_normalization
from .tiling import auto_tile, iter_predict_tiled

log = logging.getLogger(__name__)

METHODS = ("self2self", "fourier-n2n", "n2n-halves")


# ------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class EngineParams:
    """Settings shared by the self-supervised methods (defaults run in minutes on a 2-core CPU)."""

    patch_size: int = param(32, "training patch side in voxels (3D) or pixels (2D); rounded to the network's multiple",
                            min=8, max=512)
    batch_size: int = param(8, "patches per training step", min=1, max=1024)
    epochs: int = param(100, "training epochs (an epoch = enough patches to cover the data once)", min=1)
    time_budget: float = param(120.0, "wall-clock training budget in seconds (0: epochs only)", min=0)
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


@dataclass(frozen=True)
class Self2SelfParams(EngineParams):
    keep_probability: float = param(0.7, "probability that a voxel is kept in the input mask (Self2Self: 0.7)",
                                    min=0.05, max=0.95)
    mask_block: str = param("auto", "size (z,y,x) of the blocks dropped together, e.g. 7,1,1 for noise correlated "
                                    "over ±3 voxels along z; auto: measured from the data's noise correlation")


@dataclass(frozen=True)
class FourierN2NParams(EngineParams):
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


@dataclass(frozen=True)
class HalvesParams(EngineParams):
    n_predictions: int = param(1, "dropout samples averaged per half at inference", min=1, max=1000)
    dropout: float = param(0.0, "decoder dropout rate", min=0.0, max=0.9)


PARAMS = {"self2self": Self2SelfParams, "fourier-n2n": FourierN2NParams, "n2n-halves": HalvesParams}


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


def _parse_block(text: str, dims: int) -> tuple[int, ...]:
    if str(text).strip().lower() == "auto":  # only a model not yet trained has "auto"; training resolves it
        return (1,) * dims
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError as exc:
        raise ValueError(f"mask_block must look like '3,1,1', got {text!r}") from exc
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"mask_block must be three positive integers (z,y,x), got {text!r}")
    return values[1:] if dims == 2 else values


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
                 dims: int, margin: int, augment: bool, rng: np.random.Generator):
        self.sources, self.norm, self.patch, self.dims = list(sources), norm, patch, dims
        self.margin, self.augment, self.rng = margin, augment, rng
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
        if k and c.shape[-1] == c.shape[-2]:
            c = np.rot90(c, k, axes=(c.ndim - 2, c.ndim - 1))
        return np.ascontiguousarray(c)


def _centre_crop(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
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

    def to_model_file(self) -> ModelFile:
        return ModelFile(
            kind=f"denoise/{self.method}",
            config={"method": self.method, "params": as_dict(self.params), "net": self.net_config.to_dict()},
            state_dict=self.net.state_dict(),
            normalization=self.normalization.to_dict(),
            extra={"history": list(self.history), "optimizer": self.optimizer_state or {},
                   "voxel_size": list(self.voxel_size) if self.voxel_size else []},
        )

    @classmethod
    def from_model_file(cls, model: ModelFile) -> TrainedDenoiser:
        method = model.config["method"]
        if method not in PARAMS:
            raise CryodenInputError(None, f"model is for method {method!r}, which this engine does not know")
        params = PARAMS[method](**model.config["params"])
        net_config = UNetConfig(**model.config["net"])
        net = UNet(net_config)
        net.load_state_dict(model.state_dict)
        return cls(method=method, params=params, net_config=net_config, net=net,
                   normalization=Normalization.from_dict(model.normalization),
                   history=list(model.extra.get("history", [])),
                   optimizer_state=model.extra.get("optimizer") or None,
                   voxel_size=tuple(model.extra.get("voxel_size") or ()) or None)

    @classmethod
    def load(cls, path) -> TrainedDenoiser:
        model = load_model(path, kind="denoise")
        try:
            return cls.from_model_file(model)
        except CryodenInputError as exc:
            raise CryodenInputError(path, exc.problem) from exc


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


# ------------------------------------------------------------------------------------------ training
def _make_pair(method: str, x: torch.Tensor, params: EngineParams, *, patch_spatial, generator, block):
    """(network input, target, loss weights or None) for one batch of patches x (b, c, *spatial)."""
    if method == "self2self":
        x = _centre_crop(x[:, :1], patch_spatial)
        m = bernoulli_mask(x.shape, params.keep_probability, generator=generator, device=x.device, block=block)
        inp = torch.cat([x * m, m], dim=1)
        return inp, x, _blind_voxels(m, block)
    if method == "fourier-n2n":
        x = x[:, :1]
        kw = dict(keep_probability=params.fourier_keep, block=params.fourier_block,
                  low_frequency_fraction=params.low_frequency_fraction, flip_probability=params.flip_probability,
                  generator=generator, device=x.device)
        mask = fourier_mask(x.shape, **kw)
        a = apply_fourier_mask(x, mask)
        if params.fourier_target == "complement":
            b = apply_fourier_mask(x, complementary_fourier_mask(mask, tuple(x.shape[2:]),
                                                                 params.low_frequency_fraction))
        else:
            b = apply_fourier_mask(x, fourier_mask(x.shape, **kw))
        return _centre_crop(a, patch_spatial), _centre_crop(b, patch_spatial), None
    if method == "n2n-halves":
        x = _centre_crop(x, patch_spatial)
        swap = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
        swap = swap.to(x.device)
        inp = torch.where(swap[:, None, None, None] if x.ndim == 4 else swap[:, None, None, None, None],
                          x[:, 1:2], x[:, 0:1])
        tgt = torch.where(swap[:, None, None, None] if x.ndim == 4 else swap[:, None, None, None, None],
                          x[:, 0:1], x[:, 1:2])
        return inp, tgt, None
    raise ValueError(f"unknown method {method!r}")


def _blind_voxels(m: torch.Tensor, block) -> torch.Tensor:
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


def resolve_mask_block(params: EngineParams, vol, dims: int, model: TrainedDenoiser | None = None) -> EngineParams:
    """Replace ``mask_block="auto"`` by the block measured from the (z, y, x) data (stored in the model), or
    by the block of the model whose training continues."""
    if not isinstance(params, Self2SelfParams) or str(params.mask_block).strip().lower() != "auto":
        return params
    if model is not None:
        return replace(params, mask_block=model.params.mask_block)
    block = auto_mask_block(vol, dims=dims)
    if dims == 2:  # images or a stack: only the in-plane correlation is measured and used
        block = (1,) + block
    log.info("self2self mask block (z,y,x) from the noise correlation: %s", block)
    return replace(params, mask_block=",".join(str(b) for b in block))


def iter_train(data: np.ndarray, params: EngineParams, *, method: str, is_stack: bool = False,
               half2: np.ndarray | None = None, model: TrainedDenoiser | None = None, seed: int = 0,
               device: str | torch.device = "auto", voxel_size=None, preview_every: int = 25,
               checkpoint: Checkpointer | None = None,
               resume: bool = False) -> Generator[ProgressEvent, None, TrainedDenoiser]:
    """Train (or continue training) a self-supervised denoiser on ``data``.

    Parameters
    ----------
    data
        2D image, (z, y, x) volume, or (n, y, x) stack when ``is_stack``; may be memory-mapped; not modified.
    params
        :class:`Self2SelfParams`, :class:`FourierN2NParams` or :class:`HalvesParams`.
    method
        "self2self", "fourier-n2n" or "n2n-halves" (then ``data`` is the first half, ``half2`` the second).
    model
        Continue training this model (its network, normalisation and optimiser state) instead of a new one.
    checkpoint
        Write the training state there every ``checkpoint.every`` seconds.
    resume
        Continue from ``checkpoint``'s file when it exists (its step, training time, optimiser and random
        states), so a killed training ends where the uninterrupted one would have.

    Yields progress events (loss, ETA, and every ``preview_every`` steps a denoised central slice) and returns
    the :class:`TrainedDenoiser`.
    """
    if method not in PARAMS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    vol, dims = as_volume(data, is_stack=is_stack)
    sources = [vol]
    if method == "n2n-halves":
        if half2 is None:
            raise CryodenInputError(None, "n2n-halves needs the second half volume (--half2)")
        vol2, _ = as_volume(half2, is_stack=is_stack)
        if vol2.shape != vol.shape:
            raise CryodenInputError(None, f"the two halves differ in shape: {vol.shape} and {vol2.shape}")
        sources.append(vol2)
    params = resolve_mask_block(params, vol, dims, model)
    ctx = distributed.context()  # under torchrun: DDP, one sample stream per process, rank 0 reports
    dev = distributed.training_device(resolve_device(device, need_fft=method == "fourier-n2n"), ctx)
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    rng = np.random.default_rng(distributed.rank_seed(seed, ctx))
    generator = torch.Generator(device="cpu").manual_seed(distributed.rank_seed(seed, ctx))

    if model is None:
        norm = fit_normalization(vol, low_percentile=params.low_percentile, high_percentile=params.high_percentile)
        net_config = UNetConfig(dims=dims, base_channels=params.base_channels, depth=params.depth,
                                dropout=params.dropout, mask_channel=method == "self2self",
                                smooth_sigmas=_parse_sigmas(params.smooth_sigmas))
        net = UNet(net_config)
        history: list = []
    else:
        if model.method != method or model.net_config.dims != dims:
            raise CryodenInputError(None, f"the model was trained with {model.method} in {model.net_config.dims}D; "
                                          f"cannot continue it as {method} in {dims}D")
        norm, net_config, net, history = model.normalization, model.net_config, model.net, list(model.history)
    net = distributed.wrap(net.to_device(dev), ctx)
    optimizer = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
    if model is not None and model.optimizer_state:
        try:
            optimizer.load_state_dict(model.optimizer_state)
            for group in optimizer.param_groups:
                group["lr"] = params.learning_rate
        except (ValueError, KeyError):
            log.warning("optimizer state of the loaded model does not fit; starting a fresh optimizer")
    scaler = torch.amp.GradScaler("cuda") if (dev.type == "cuda" and not torch.cuda.is_bf16_supported()) else None

    patch = _patch_shape(vol.shape, dims, params.patch_size, net_config.multiple)
    patch_spatial = patch[1:] if dims == 2 else patch
    margin = 8 if method == "fourier-n2n" else 0  # FFT on a larger crop, keep the centre: fewer edge effects
    sampler = PatchSampler(sources, norm, patch=patch, dims=dims, margin=margin, augment=params.augment, rng=rng)
    block = _parse_block(params.mask_block, dims) if method == "self2self" else None
    voxels = int(np.prod(vol.shape))
    steps_per_epoch = max(10, math.ceil(voxels / (params.batch_size * int(np.prod(patch)))))
    total_steps = steps_per_epoch * params.epochs
    budget = params.time_budget if params.time_budget > 0 else None
    clock = StageClock("train", total_steps, time_budget=budget)
    log.info("training %s on %s: %s, patches %s, %d steps max, budget %s s", method, describe_device(dev),
             vol.shape, patch, total_steps, budget)

    preview_input, preview_origin = _preview_source(vol, dims)
    step, running = 0, None
    if checkpoint is not None:
        checkpoint.bind(kind=f"denoise/{method}", shape=list(vol.shape), params=as_dict(params), seed=seed,
                        world_size=ctx.world_size)
        saved = checkpoint.load() if resume else None
        if saved is not None:
            distributed.unwrap(net).load_state_dict(saved["net"])
            optimizer.load_state_dict(saved["optimizer"])
            step, running, history = int(saved["step"]), saved["running"], list(saved["history"])
            clock.start -= float(saved["elapsed"])
            restore_rng(saved["rng"], numpy_rng=rng, generator=generator)
            log.info("resumed from %s at step %d (%.1f s trained)", checkpoint.path, step, saved["elapsed"])
            yield clock.event(step, loss=running, resumed_from=step, device=describe_device(dev))
    net.train()
    while not distributed.agree(step >= total_steps or (budget is not None and clock.elapsed >= budget), ctx):
        frac = step / total_steps
        if budget is not None:
            frac = max(frac, clock.elapsed / budget)
        lr = params.learning_rate * (0.5 + 0.5 * math.cos(math.pi * min(frac, 1.0))) \
            if params.lr_schedule == "cosine" else params.learning_rate
        lr = max(lr, params.learning_rate * 0.02)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = torch.from_numpy(sampler.sample(params.batch_size))
        x = x.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else x
        inp, target, weights = _make_pair(method, x, params, patch_spatial=patch_spatial, generator=generator,
                                          block=block)
        with _autocast(dev):
            out = net(inp)
        err = (out.float() - target) ** 2
        loss = (err * weights).sum() / weights.sum().clamp_min(1.0) if weights is not None else err.mean()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step += 1
        value = distributed.mean(float(loss.detach()), ctx)
        running = value if running is None else 0.95 * running + 0.05 * value
        history.append(value)
        preview = None
        if preview_every and step % preview_every == 0 and ctx.is_main:
            preview = _preview(distributed.unwrap(net), method, params, norm, preview_input, dev, generator, block)
            net.train()
        if checkpoint is not None and ctx.is_main and checkpoint.due():
            checkpoint.save({"net": cpu_state(distributed.unwrap(net).state_dict()),
                             "optimizer": cpu_state(optimizer.state_dict()), "step": step, "running": running,
                             "history": list(history), "elapsed": clock.elapsed,
                             "rng": rng_state(numpy_rng=rng, generator=generator)})
        yield clock.event(step, loss=running, preview=preview, lr=lr, device=describe_device(dev),
                          preview_origin=preview_origin)
    net = distributed.unwrap(net)
    net.eval()
    trained = TrainedDenoiser(method=method, params=params, net_config=net_config, net=net.cpu(),
                              normalization=norm, history=history, optimizer_state=_cpu_state(optimizer.state_dict()),
                              voxel_size=tuple(voxel_size) if voxel_size is not None else None)
    return trained


def _cpu_state(state):
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _cpu_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cpu_state(v) for v in state]
    return state


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


def _preview(net, method, params, norm, region, dev, generator, block) -> np.ndarray:
    predict = _tile_predictor(net, method, params, norm, dev, generator, block, n_predictions=2)
    out = predict(region[None, None])[0]
    return out[out.shape[0] // 2] if out.ndim == 3 else out


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


def _tile_predictor(net: UNet, method: str, params: EngineParams, norm: Normalization, dev: torch.device,
                    generator: torch.Generator, block, *, n_predictions: int | None = None):
    """A function (b, c, tz, ty, tx) raw tiles -> (b, tz, ty, tx) denoised tiles in input units."""
    n_pred = n_predictions or params.n_predictions
    dims = net.config.dims
    use_dropout = params.dropout > 0 and (method != "n2n-halves" or n_pred > 1)

    @torch.no_grad()
    def predict(tiles: np.ndarray) -> np.ndarray:
        _enable_dropout(net, use_dropout)
        x = torch.from_numpy(np.ascontiguousarray(norm.apply(tiles), dtype=np.float32))
        x = x.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else x  # one copy per tile batch
        if dims == 2:  # tiles (b, c, 1, y, x) -> (b, c, y, x)
            x = x[:, :, 0]
        x, pads = _pad_to_multiple(x, net.config.multiple)
        if method == "self2self":
            x = x[:, :1]
            total = torch.zeros_like(x)
            count = torch.zeros_like(x)
            for m in stratified_bernoulli_masks(x.shape, params.keep_probability, n_pred, generator=generator,
                                                device=dev, block=block):
                with _autocast(dev):
                    out = net(torch.cat([x * m, m], dim=1)).float()
                # Average only where the voxel was dropped: those are the predictions the loss trained.
                total += out * (1.0 - m)
                count += 1.0 - m
                fallback = out
            y = torch.where(count > 0, total / count.clamp_min(1.0), fallback)
        elif method == "fourier-n2n":
            x = x[:, :1]
            y = torch.zeros_like(x)
            kw = dict(keep_probability=params.fourier_keep, block=params.fourier_block,
                      low_frequency_fraction=params.low_frequency_fraction, flip_probability=params.flip_probability,
                      generator=generator, device=dev)
            for _ in range(n_pred):
                member = apply_fourier_mask(x, fourier_mask(x.shape, **kw))
                with _autocast(dev):
                    y += net(member).float()
            y /= n_pred
            if params.fourier_target == "complement":
                y = apply_fourier_mask(y, _complement_gain(tuple(y.shape[2:]), params, dev))
        else:  # n2n-halves: each half through the network, averaged
            y = torch.zeros_like(x[:, :1])
            for _ in range(n_pred):
                for c in range(x.shape[1]):
                    with _autocast(dev):
                        y += net(x[:, c:c + 1]).float()
            y /= n_pred * x.shape[1]
        y = _unpad(y, pads)[:, 0]
        if dims == 2:
            y = y[:, None]
        return norm.invert(y.cpu().numpy())

    return predict


def _complement_gain(spatial, params: FourierN2NParams, dev) -> torch.Tensor:
    """Undo the expected attenuation of a network trained on complementary targets.

    Outside the shared low-frequency ball the target holds a frequency only when the input dropped it
    (probability 1 − keep), so the network learns (1 − keep) × signal there; averaged over fresh input
    masks, dividing by (1 − keep) gives back the signal at its full amplitude.
    """
    ball = low_frequency_ball(spatial, params.low_frequency_fraction, dev)
    return torch.where(ball, 1.0, 1.0 / (1.0 - params.fourier_keep)).to(torch.float32)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


def choose_tile(shape: Sequence[int], dims: int, net_config: UNetConfig, dev: torch.device,
                requested: int = 0) -> tuple[int, int, int]:
    """Tile size: as asked, else the largest that fits a quarter of the free (GPU or host) memory."""
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
        return (1, min(ty, shape[1]), min(tx, shape[2]))
    t = auto_tile(shape, bytes_per_voxel=bytes_per_voxel, budget_bytes=free / 4, multiple=multiple,
                  max_tile=max_tile)
    return tuple(min(a, s) for a, s in zip(t, shape))


def iter_predict(model: TrainedDenoiser, data: np.ndarray, *, is_stack: bool = False,
                 half2: np.ndarray | None = None, out=None, seed: int = 0, device: str | torch.device = "auto",
                 n_predictions: int | None = None, tile_size: int | None = None,
                 batch_size: int = 2) -> Generator[ProgressEvent, None, np.ndarray]:
    """Denoise ``data`` with a trained model, tiled and streamed; returns the result (``out`` if given).

    On out-of-memory the tile side is halved and the prediction restarts.
    """
    vol, dims = as_volume(data, is_stack=is_stack)
    if dims != model.net_config.dims:
        raise CryodenInputError(None, f"the model is {model.net_config.dims}D but the data needs a {dims}D model")
    sources = [vol]
    if model.method == "n2n-halves" and half2 is not None:
        sources.append(as_volume(half2, is_stack=is_stack)[0])
    dev = resolve_device(device, need_fft=model.method == "fourier-n2n")
    net = model.net.to_device(dev)
    torch.manual_seed(seed + 7919)  # dropout draws from the global generator
    generator = torch.Generator(device="cpu").manual_seed(seed + 7919)
    block = _parse_block(model.params.mask_block, dims) if model.method == "self2self" else None
    predict = _tile_predictor(net, model.method, model.params, model.normalization, dev, generator, block,
                              n_predictions=n_predictions)
    tile = choose_tile(vol.shape, dims, model.net_config, dev, tile_size or model.params.tile_size)
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
        model.net.cpu()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return result.reshape(np.shape(data)) if out is None else result


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
    """Train on ``data`` then predict it (the one-call path the CLI and the widget use)."""
    model = yield from iter_train(data, params, method=method, is_stack=is_stack, half2=half2, seed=seed,
                                  device=device, voxel_size=voxel_size)
    result = yield from iter_predict(model, data, is_stack=is_stack, half2=half2, out=out, seed=seed, device=device)
    return result


def default_params(method: str, *, dims: int, **overrides) -> EngineParams:
    """Method defaults, adjusted for 2D (larger patches, more of them per step)."""
    p = PARAMS[method]()
    if dims == 2:
        p = replace(p, patch_size=96, batch_size=16)
        if isinstance(p, FourierN2NParams):
            # Small particle boxes hold their signal in a few frequency blocks near the origin: a 7 % ball
            # keeps it in every input (measured on 64² particles at SNR 0.2, 30 s: 23.4 dB with 7 %, 21.7 dB
            # with the 3D default of 0.5 %), at the price of the noise shared inside the ball.
            p = replace(p, low_frequency_fraction=0.07)
    return replace(p, **overrides) if overrides else p
