"""Denoising with a trained supervised model ("cgan", "autoencoder") through the registry.

The model is a 2D network: a stack is denoised image by image (in batches), a volume slice by slice along
z. Each image is standardised by its own mean and std, passed through the generator (reflect-padded to a
multiple of ``2**depth``) and mapped back, so the output is in the input's units.

Supervised output is only as trustworthy as the simulation the model was trained on: a cGAN can add
density that is not there on data unlike its training set (another particle, pixel size, SNR or CTF).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import CryodenInputError
from ...models import load_model
from ...params import param
from ...progress import StageClock
from ..classical._common import check_input
from ..registry import DenoiseMethod, register
from .networks import build_generator
from .train import standardise

log = logging.getLogger(__name__)

__all__ = ["SupervisedParams", "denoise_with_model", "iter_cgan", "iter_autoencoder", "load_generator"]


@dataclass(frozen=True)
class SupervisedParams:
    # `cryoden denoise --model FILE` fills this field (one --model flag for every trained method).
    model: str = param("", "trained model file (.pt) written by `cryoden train-supervised`", basic=True)
    batch_size: int = param(16, "images per inference batch", min=1, max=4096)


def load_generator(path: str | Path, kind: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The generator of a model file of ``kind`` ("cgan"/"autoencoder"), in eval mode, and the file's extra."""
    if not path:
        raise CryodenInputError(None, f"the {kind} method needs a trained model: pass model=PATH (cryoden denoise --model PATH); "
                                      "train one with `cryoden train-supervised`")
    mf = load_model(path, kind=f"denoise/{kind}")
    gen = build_generator(mf.config)
    try:
        gen.load_state_dict(mf.state_dict)
    except RuntimeError as exc:
        raise CryodenInputError(path, f"weights do not fit the stored network config ({exc})") from exc
    gen.to(device).eval()
    gen.depth_multiple = 2 ** int(mf.config.get("depth", 3))
    return gen, mf.extra


@torch.no_grad()
def denoise_with_model(gen: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """(b, y, x) float32 images through the generator, each standardised and mapped back."""
    x = torch.tensor(np.array(images, dtype=np.float32), device=device)[:, None]  # a copy: inputs may be read-only
    h, w = x.shape[-2:]
    mult = getattr(gen, "depth_multiple", 8)
    ph, pw = (-h) % mult, (-w) % mult
    xs, mean, std = standardise(x)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        xs = torch.nn.functional.pad(xs, (0, pw, 0, ph), mode=mode)
    out = gen(xs)[..., :h, :w] * std + mean
    return out[:, 0].cpu().numpy().astype(np.float32)


def _iter_supervised(kind: str, data, params: SupervisedParams, *, is_stack: bool, voxel_size=None,
                     seed: int = 0, device: str = "auto", name=None, out=None):
    check_input(data, is_stack=is_stack, name=name, min_side=2)
    from ...device import resolve_device

    dev = resolve_device(device)
    gen, extra = load_generator(params.model, kind, dev)
    trained_px = extra.get("pixel_size")
    if trained_px and voxel_size is not None:
        px = float(np.ravel(voxel_size)[-1])
        if abs(px - trained_px) > 0.05 * trained_px:
            log.warning("the %s model was trained at %.3g Å/pixel but the data are %.3g Å/pixel; its output is "
                        "unreliable (resample the data or retrain)", kind, trained_px, px)
    images = data if data.ndim == 3 else data[None]
    n = images.shape[0]
    out = np.empty(images.shape, dtype=np.float32) if out is None else out.reshape(images.shape)
    clock = StageClock("denoise", n)
    yield clock.event(0)
    for start in range(0, n, params.batch_size):
        stop = min(n, start + params.batch_size)
        out[start:stop] = denoise_with_model(gen, np.asarray(images[start:stop], dtype=np.float32), dev)
        yield clock.event(stop)
    return out.reshape(data.shape)


def iter_cgan(data, params: SupervisedParams, *, is_stack: bool, voxel_size=None, seed: int = 0,
              device: str = "auto", name=None, out=None):
    """cGAN generator (registry interface); see :mod:`.train`."""
    return (yield from _iter_supervised("cgan", data, params, is_stack=is_stack, voxel_size=voxel_size, seed=seed,
                                        device=device, name=name, out=out))


def iter_autoencoder(data, params: SupervisedParams, *, is_stack: bool, voxel_size=None, seed: int = 0,
                     device: str = "auto", name=None, out=None):
    """U-Net autoencoder (registry interface); see :mod:`.train`."""
    return (yield from _iter_supervised("autoencoder", data, params, is_stack=is_stack, voxel_size=voxel_size,
                                        seed=seed, device=device, name=name, out=out))


_CAVEAT = ("Only as trustworthy as the simulation it was trained on: on data unlike it, it can invent or "
           "remove density.")

register(DenoiseMethod(
    name="cgan", title="Conditional GAN (supervised)", family="supervised", params=SupervisedParams,
    needs_model=True, denoise=iter_cgan,
    description="pix2pix-style U-Net generator trained adversarially (PatchGAN) + L1 on simulated or given "
                "(noisy, clean) pairs (`cryoden train-supervised cgan`). " + _CAVEAT + " Stacks image by "
                "image; volumes slice by slice.",
))
register(DenoiseMethod(
    name="autoencoder", title="U-Net autoencoder (supervised)", family="supervised", params=SupervisedParams,
    needs_model=True, denoise=iter_autoencoder,
    description="The cGAN's U-Net generator trained alone with an L1/L2 loss on simulated or given (noisy, "
                "clean) pairs (`cryoden train-supervised autoencoder`). " + _CAVEAT + " Stacks image by "
                "image; volumes slice by slice.",
))
