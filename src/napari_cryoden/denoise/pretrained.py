"""Pretrained denoisers shipped in the package: one pass, no training (``--method pretrained``).

Two models, trained by ``scripts/train_denoise_models.py`` on simulated data (tomogram phantoms, particle
projections, SNR 0.02-1, white and correlated noise, missing wedge, CTF; never a benchmark volume): a 3D model for
tomograms and a 2D model for micrographs and particle stacks. Each is a Self2Self U-Net (mask channel,
smoothing channels) trained supervised against the clean signal, on whole inputs and on Bernoulli-masked ones.

* Without a time budget the shipped network predicts in one pass on the whole input (normalised as every method
  normalises: percentile clip and standardisation of the data).
* With ``time_budget`` S > 0 it is first trained further for S seconds on the input, self-supervised: on white
  noise by Self2Self's own loss (masked inputs, loss on the dropped voxels), then a single-pass student is
  distilled from it, as ``self2self`` does; on correlated noise (a measured mask block above one voxel) by
  Recorrupted-to-Recorrupted (``recorrupted.py``: pairs y + αz, y − z/α with z drawn like the measured noise),
  then it predicts in one pass.

The noise correlation of the input is measured and reported either way (and refused when it cannot be: a
constant or tiny input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from ..errors import CryodenInputError, require_finite
from ..params import param
from .registry import DenoiseMethod, register

log = logging.getLogger(__name__)

#: The version of the shipped models' training recipe this code predicts with; a file of another version is
#: refused with a message (its network or its normalisation may differ).
PRETRAINED_VERSION = 1


def pretrained_kind(dims: int) -> str:
    """The model kind of the shipped ``dims``-dimensional denoiser (:data:`napari_cryoden.models.PRETRAINED`)."""
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    return f"denoise/pretrained-{dims}d"


def load_shipped(dims: int, path=None):
    """The shipped ``dims``-dimensional denoiser as a :class:`~napari_cryoden.denoise.engine.TrainedDenoiser`
    (a fresh copy: fine-tuning it changes nothing shipped), read offline from the package (or from ``path``).

    Raises
    ------
    CryodenInputError
        Naming the file, when it is missing, unreadable, or of another version than this code predicts with.
    """
    from ..models import load_model, load_pretrained, pretrained_path
    from .engine import TrainedDenoiser

    kind = pretrained_kind(dims)
    where = pretrained_path(kind) if path is None else path
    model_file = load_pretrained(kind) if path is None else load_model(path, kind=kind)
    info = model_file.extra.get("pretrained") or {}
    version = info.get("version")
    if version != PRETRAINED_VERSION or info.get("dims") != dims:
        raise CryodenInputError(where, f"is a pretrained denoiser of version {version} for {info.get('dims')}D data; "
                                       f"this napari-cryoden predicts {dims}D data with version {PRETRAINED_VERSION}: "
                                       "reinstall napari-cryoden, or retrain it with scripts/train_denoise_models.py")
    try:
        return TrainedDenoiser.from_model_file(model_file)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CryodenInputError(where, f"cannot be read as a pretrained denoiser ({exc.__class__.__name__}: "
                                       f"{exc})") from exc


@dataclass(frozen=True)
class PretrainedParams:
    """The shipped models' settings: how long to fine-tune on the input, and how to tile the prediction."""

    time_budget: float = param(0.0, "seconds of self-supervised fine-tuning on the input before predicting "
                                    "(Self2Self's loss on white noise; on correlated noise as --correlated says); "
                                    "0: the shipped model as it is, in one pass", min=0, unit="s", basic=True)
    learning_rate: float = param(3e-4, "Adam learning rate (pretrained: of the fine-tuning by Self2Self's loss; "
                                       "by R2R: --r2r-learning-rate)", min=1e-7, max=1.0)
    prediction: str = param("student", "how to predict: student (one pass of a network distilled from the averaged "
                                       "masked passes after training; pretrained: after fine-tuning, in a fifth "
                                       "of the budget), masked (self2self: average n_predictions masked passes), "
                                       "or unmasked (one pass of the trained network on the whole input); "
                                       "pretrained without fine-tuning, or fine-tuned by R2R, predicts in one "
                                       "pass",
                            choices=("student", "unmasked"))
    correlated: str = param("r2r", "when the noise measured on the input is correlated (a Self2Self mask block "
                                   "above 1 voxel) and there is a time budget: fine-tune by Recorrupted-to-Recorrupted "
                                   "(pairs y + αz, y − z/α, z drawn like the measured noise: +0.2-0.3 dB in 30 s on "
                                   "the tuning set), by Self2Self's loss (which lowered PSNR by 1.4-2.3 dB there), "
                                   "or predict with the shipped model alone",
                            choices=("r2r", "self2self", "predict"))
    r2r_learning_rate: float = param(1e-4, "Adam learning rate of the Recorrupted-to-Recorrupted fine-tuning "
                                           "(correlated noise)", min=1e-7, max=1.0)
    mask_block: str = param("auto", "size (z,y,x) of the blocks dropped together, e.g. 7,1,1 for noise correlated "
                                    "over ±3 voxels along z (pretrained: while fine-tuning); auto: measured from the "
                                    "data's noise correlation")
    tile_size: int = param(0, "prediction tile side (0: automatic from free memory)", min=0, max=1024)
    tile_overlap: int = param(16, "overlap between prediction tiles (voxels)", min=0, max=256)


class Pretrained(DenoiseMethod):
    """The shipped 2D or 3D denoiser, applied in one pass, optionally fine-tuned on the input first."""

    name = "pretrained"
    title = "Pretrained (instant)"
    family = "supervised"
    params = PretrainedParams
    description = ("A denoiser trained beforehand on simulated tomograms and particle images (SNR 0.02-1, white and "
                   "correlated noise, missing wedge, CTF), shipped in the package: one pass, no training. A time "
                   "budget fine-tunes it on your data first (self-supervised: Self2Self's loss on white noise, "
                   "Recorrupted-to-Recorrupted on correlated noise). Trained on simulations "
                   "only: check it against a method trained on your data.")

    def run(self, data, params: PretrainedParams, *, is_stack: bool = False, voxel_size=None, seed: int = 0,
            device="auto", half2=None, out=None, name=None, **options):
        """Denoise ``data`` with the shipped model of its kind (2D images and stacks, or 3D volumes); a progress
        generator returning the denoised array (``out`` when given). The first event's ``info["noise"]`` (and
        ``info["message"]``, which the CLI prints) is the noise correlation measured on the input, in one line."""
        from ..progress import ProgressEvent
        from .engine import as_volume
        from .noise import NoNoiseError
        from .normalize import fit_normalization
        from .self_supervised import Self2Self

        source = name or getattr(data, "filename", None) or "input data"
        require_finite(data, name=source)
        vol, dims = as_volume(data, is_stack=is_stack)
        model = load_shipped(dims)
        s2s = Self2Self()
        tune = float(params.time_budget) > 0
        block_text = str(params.mask_block).strip().lower()
        try:
            noise = s2s.measure_noise(vol, None, dims=dims, params=replace(model.params, mask_block=block_text),
                                      model=None if tune else model)
        except CryodenInputError as exc:
            raise (NoNoiseError if isinstance(exc, NoNoiseError) else CryodenInputError)(source, exc.problem) from exc
        model.normalization = fit_normalization(vol, low_percentile=model.params.low_percentile,
                                                high_percentile=model.params.high_percentile)
        model.noise_correlation = noise.to_dict() if noise is not None else None
        model.voxel_size = tuple(voxel_size) if voxel_size is not None else None
        correlated = noise is not None and max(noise.block) > 1 and block_text == "auto"
        r2r = tune and correlated and params.correlated == "r2r"
        if r2r:
            line = (noise.describe(show_block=False) + "; correlated: fine-tuning by Recorrupted-to-Recorrupted "
                    "(noise drawn like the measured noise)")
        elif tune and correlated and params.correlated == "predict":
            tune = False
            log.warning("correlated noise measured (mask block %s): the shipped model predicts without fine-tuning "
                        "(--correlated r2r or self2self to fine-tune)", "×".join(str(b) for b in noise.block))
            line = (noise.describe(show_block=False) + "; correlated: predicting with the shipped model, not "
                    "fine-tuned (--correlated r2r or self2self to fine-tune)")
        else:
            line = noise.describe(show_block=tune) if noise is not None else "noise correlation not measured"
            if tune:
                line += "; fine-tuning by Self2Self's loss"
        log.info("pretrained %dD denoiser; %s", dims, line)
        yield ProgressEvent("measure", 1, 1, info={"noise": line, "message": line})
        if r2r:
            from .recorrupted import Recorrupted, continuation_params

            tuned = continuation_params(model.params, vol, noise, model.normalization,
                                        time_budget=float(params.time_budget),
                                        learning_rate=float(params.r2r_learning_rate),
                                        tile_size=int(params.tile_size), tile_overlap=int(params.tile_overlap))
            method = Recorrupted(mask_channel=True)  # the shipped network takes a mask channel: all ones
            model.method, model.params = method.name, tuned
            model = yield from method.train(data, tuned, is_stack=is_stack, model=model, seed=seed, device=device,
                                            voxel_size=voxel_size)
            return (yield from method.predict(model, data, is_stack=is_stack, out=out, seed=seed, device=device))
        if tune:
            if block_text == "auto":
                block = noise.block
            else:
                from .self_supervised import parse_mask_block
                block = (1,) * (3 - dims) + parse_mask_block(block_text, dims)
            tuned = replace(model.params, time_budget=float(params.time_budget), epochs=1_000_000,
                            learning_rate=float(params.learning_rate), mask_block=",".join(str(b) for b in block),
                            prediction=params.prediction,
                            distill_steps=model.params.distill_steps if params.prediction == "student" else 0)
            model.params = tuned
            model = yield from s2s.train(data, tuned, is_stack=is_stack, model=model, seed=seed, device=device,
                                         voxel_size=voxel_size)
        model.params = replace(model.params, tile_size=int(params.tile_size), tile_overlap=int(params.tile_overlap))
        return (yield from s2s.predict(model, data, is_stack=is_stack, out=out, seed=seed, device=device))


register(Pretrained())
