"""UDL: unsupervised difference learning of in-plane rotations (pair-wise), after Chen, Feng & Shen (2023).

The network sees log Fourier amplitudes (shift-invariant, 180°-periodic) of two images and predicts their
relative angle ``phi`` modulo 180°. No labels: both inputs of a pair are rotated by random known angles
twice, ``(alpha, beta)`` and ``(alpha', beta')``; with ``b`` ≈ ``a`` rotated by ``phi`` the prediction must
change by ``(beta - alpha) - (beta' - alpha')`` (our convention, ``docs/align.md``). The loss is the true
circular distance ``d(x, y) = |((x - y + 90) mod 180) - 90|``. At inference the constant offset left by
difference training is calibrated on rotated copies of the reference, and the 180° ambiguity, the shift
and the fine angle are found by the classical cross-correlation code (:mod:`.cross_correlation`).

:mod:`.judl` trains the same network on (reference, image) pairs with a reconstruction term.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from .. import distributed
from ..checkpoint import Checkpointer, restore_rng, rng_state
from ..models import ModelFile, to_cpu
from ..params import param, validate
from ..progress import ProgressEvent, StageClock
from .cross_correlation import (
    ClassicalAligner,
    ClassicalParams,
    _bootstrap_reference,
    _n_batches,
    _source,
    iter_align_pass,
    symmetrize,
)
from .networks import AmplitudeAutoencoder, RelativeAngleNet, shift_angles
from .result import AlignmentResult
from .transforms import rotate_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeepAlignParams:
    """Training settings of UDL / JUDL."""

    epochs: int = param(3, "passes of steps_per_epoch training steps", min=1)
    steps_per_epoch: int = param(50, "training steps per epoch", min=1)
    time_budget: float | None = param(None, "stop training after this many seconds", min=0.0)
    batch_size: int = param(32, "pairs per training step", min=2)
    learning_rate: float = param(3e-4, "Adam learning rate (the paper: 3e-4; 1e-4 for real data and JUDL)",
                                 min=0.0)
    base_channels: int = param(8, "channels of the first feature level", min=4)
    levels: int = param(2, "residual stages (each halves the radial sampling)", min=1, max=4)
    max_images: int = param(5000, "at most this many particles are used for training", min=2)
    reconstruction_weight: float = param(20.0, "JUDL: reconstruction loss weight per epoch (20 x epoch)", min=0.0)
    seed: int = param(0, "random seed")


def circular_distance_180(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|((a - b + 90) mod 180) - 90|`` degrees: the true distance of 180°-periodic angles."""
    return torch.abs(torch.remainder(a - b + 90.0, 180.0) - 90.0)


def log_amplitudes(images, *, device="cpu") -> torch.Tensor:
    """(n, 1, N, N) centred log(1 + |F|) of mean-free images, min-max scaled to [0, 1] inside a disc.

    The disc (radius N/2 - 1 about the centre) removes the corners, which do not rotate with the image.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32), device=device)
    if x.ndim == 2:
        x = x[None]
    x = x - x.mean((-2, -1), keepdim=True)
    amp = torch.log1p(torch.fft.fftshift(torch.fft.fft2(x).abs(), dim=(-2, -1)))
    n = x.shape[-1]
    yy = torch.arange(n, device=device, dtype=torch.float32) - n // 2
    disc = (yy[:, None] ** 2 + yy[None, :] ** 2) <= (n / 2 - 1) ** 2
    amp = torch.where(disc, amp, torch.zeros_like(amp))
    lo = torch.where(disc, amp, torch.full_like(amp, torch.inf)).flatten(1).min(1).values[:, None, None]
    hi = amp.flatten(1).max(1).values[:, None, None]
    amp = torch.where(disc, (amp - lo) / (hi - lo).clamp_min(1e-6), torch.zeros_like(amp))
    return amp[:, None]


def _rotate(maps: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    return rotate_images(maps[:, 0], angles, mode="bilinear")[:, None]


def _training_amplitudes(source, params: DeepAlignParams, rng, device) -> torch.Tensor:
    n = len(source)
    rows = np.sort(rng.choice(n, size=min(n, params.max_images), replace=False))
    blocks = []
    for start in range(0, len(rows), 1024):
        chunk = rows[start:start + 1024]
        lo, hi = int(chunk.min()), int(chunk.max()) + 1
        blocks.append(log_amplitudes(source.read(lo, hi)[chunk - lo], device=device))
    return torch.cat(blocks)


def iter_train(images, reference=None, params: DeepAlignParams | None = None, *, joint: bool = False,
               device="cpu", model: ModelFile | None = None, checkpoint: Checkpointer | None = None,
               resume: bool = False) -> Generator[ProgressEvent, None, ModelFile]:
    """Train UDL (``joint=False``: random pairs of particles) or JUDL (``joint=True``: (reference, particle)
    pairs plus the reconstruction term); yields progress events and returns the :class:`ModelFile`.

    ``reference`` is needed for JUDL (``None``: a bootstrap average of the particles is used, as in the
    classical reference-free start). ``model`` continues training from a saved model. ``checkpoint`` writes
    the training state every ``checkpoint.every`` seconds; with ``resume`` a training continues from it.
    """
    params = validate(params or DeepAlignParams())
    ctx = distributed.context()  # under torchrun: DDP and one pair stream per process
    device = distributed.training_device(torch.device(device), ctx)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)  # the same training subset on every process
    source = _source(images)
    box = source.box
    config = {"box": box, "base_channels": params.base_channels, "levels": params.levels, "joint": joint}
    if model is not None:
        config = {**model.config, "joint": joint}
    net = RelativeAngleNet(box, base=config["base_channels"], levels=config["levels"]).to(device)
    ae = AmplitudeAutoencoder().to(device) if joint else None
    if model is not None:
        net.load_state_dict(model.state_dict["net"])
        if ae is not None and "autoencoder" in model.state_dict:
            ae.load_state_dict(model.state_dict["autoencoder"])
    amps = _training_amplitudes(source, params, rng, device)
    ref_amp = None
    if joint:
        if reference is None:
            aligner = ClassicalAligner(np.zeros((box, box), np.float32), ClassicalParams(), device=device)
            reference = _bootstrap_reference(source, aligner, ClassicalParams(), rng)
        ref_amp = log_amplitudes(np.asarray(reference, dtype=np.float32)[None], device=device)
    model_net, model_ae = net, ae
    net = distributed.wrap(net, ctx)
    ae = distributed.wrap(ae, ctx) if ae is not None else None
    modules = list(net.parameters()) + (list(ae.parameters()) if ae is not None else [])
    optimiser = torch.optim.Adam(modules, lr=params.learning_rate)
    total = params.epochs * params.steps_per_epoch
    clock = StageClock("train", total, time_budget=params.time_budget)
    history: list[dict] = []
    step = 0
    gen = torch.Generator(device="cpu").manual_seed(distributed.rank_seed(params.seed, ctx))
    if checkpoint is not None:
        checkpoint.bind(kind="align/judl" if joint else "align/udl", n=len(source), box=box,
                        params=dict(params.__dict__), world_size=ctx.world_size)
        saved = checkpoint.load() if resume else None
        if saved is not None:
            model_net.load_state_dict(saved["net"])
            if model_ae is not None:
                model_ae.load_state_dict(saved["autoencoder"])
            optimiser.load_state_dict(saved["optimizer"])
            step, history = int(saved["step"]), list(saved["history"])
            clock.start -= float(saved["elapsed"])
            restore_rng(saved["rng"], generator=gen)
            yield clock.event(step, resumed_from=step)
    net.train()
    while step < total:
        epoch = step // params.steps_per_epoch
        bs = params.batch_size
        j = torch.randint(len(amps), (bs,), generator=gen).to(device)
        b = amps[j]
        if joint:
            a = ref_amp.expand(bs, -1, -1, -1)
        else:
            a = amps[torch.randint(len(amps), (bs,), generator=gen).to(device)]
        rot = (torch.rand((4, bs), generator=gen) * 360.0).to(device)
        a1, b1, a2, b2 = _rotate(a, rot[0]), _rotate(b, rot[1]), _rotate(a, rot[2]), _rotate(b, rot[3])
        p1, p2 = net(torch.cat([a1, a2]), torch.cat([b1, b2])).split(bs)  # one forward a step (DDP)
        target = (rot[1] - rot[0]) - (rot[3] - rot[2])
        angle_loss = circular_distance_180(p1 - p2, target).mean()
        loss = angle_loss
        recon = torch.zeros(())
        if joint and epoch > 0 and params.reconstruction_weight > 0:
            # The image's amplitude turned back by the predicted angle; one small autoencoder must
            # reconstruct all of them, which it does best when all share one frame.
            polar = model_net.polar(b1)
            aligned = shift_angles(polar, p1)  # P_b(theta - phi) = P_a(theta): into the reference frame
            recon = torch.mean((ae(aligned) - aligned) ** 2)
            loss = loss + params.reconstruction_weight * epoch * recon
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        angle_value, recon_value = distributed.mean([float(angle_loss.detach()), float(recon.detach())], ctx)
        history.append({"step": step, "epoch": epoch, "angle_loss": angle_value, "reconstruction": recon_value})
        if checkpoint is not None and ctx.is_main and checkpoint.due():
            saved = {"net": to_cpu(model_net.state_dict()), "optimizer": to_cpu(optimiser.state_dict()),
                     "step": step, "history": list(history), "elapsed": clock.elapsed,
                     "rng": rng_state(generator=gen)}
            if model_ae is not None:
                saved["autoencoder"] = to_cpu(model_ae.state_dict())
            checkpoint.save(saved)
        yield clock.event(step, loss=angle_value, epoch=epoch, reconstruction=recon_value)
        if distributed.agree(params.time_budget is not None and clock.elapsed > params.time_budget, ctx):
            break
    state = {"net": model_net.state_dict()}
    if model_ae is not None:
        state["autoencoder"] = model_ae.state_dict()
    extra = {"history": history, "params": {k: v for k, v in params.__dict__.items()},
             "previous_steps": (model.extra.get("previous_steps", 0) + len(model.extra.get("history", [])))
             if model is not None else 0}
    if joint and reference is not None:
        extra["reference"] = torch.as_tensor(np.asarray(reference, dtype=np.float32))
    return ModelFile(kind="align/judl" if joint else "align/udl", config=config, state_dict=state, extra=extra)


def train(images, reference=None, params: DeepAlignParams | None = None, **kwargs) -> ModelFile:
    """Synchronous :func:`iter_train`."""
    from ..progress import run

    return run(iter_train(images, reference, params, **kwargs))


def build_network(model: ModelFile, *, device="cpu") -> RelativeAngleNet:
    net = RelativeAngleNet(model.config["box"], base=model.config["base_channels"], levels=model.config["levels"])
    net.load_state_dict(model.state_dict["net"])
    return net.to(device).eval()


@torch.no_grad()
def predict_relative_angles(net: RelativeAngleNet, reference, images, *, device="cpu",
                            calibration_angles: int = 24) -> np.ndarray:
    """(n,) angles (degrees, mod 180) of each image relative to the reference, offset-calibrated."""
    ref_amp = log_amplitudes(np.asarray(reference, dtype=np.float32)[None], device=device)
    fa = net.embed(ref_amp)
    gammas = torch.arange(calibration_angles, device=device, dtype=torch.float32) * (180.0 / calibration_angles)
    calib = net(ref_amp, _rotate(ref_amp.expand(calibration_angles, -1, -1, -1), gammas), embedded_a=fa)
    d = torch.deg2rad(2 * (calib - gammas))
    offset = float(torch.rad2deg(torch.atan2(torch.sin(d).mean(), torch.cos(d).mean())) / 2)
    phi = net(ref_amp, log_amplitudes(images, device=device), embedded_a=fa)
    return np.mod(phi.cpu().numpy().astype(np.float64) - offset, 180.0)


def iter_align_with_model(images, model: ModelFile, reference=None, params: ClassicalParams | None = None, *,
                          device="cpu", ctf=None, keep_aligned: bool = True, aligned_out=None
                          ) -> Generator[ProgressEvent, None, AlignmentResult]:
    """Align with a trained UDL/JUDL model: the network gives the angle modulo 180°, cross-correlation
    decides between it and +180°, finds the shift and refines both (as in the classical method).

    Without ``reference``: JUDL uses the reference it was trained with; otherwise a bootstrap average.
    """
    params = validate(params or ClassicalParams())
    device = torch.device(device)
    source = _source(images)
    n, box = len(source), source.box
    if model.config.get("box") != box:
        from ..errors import CryodenInputError

        raise CryodenInputError(None, f"the model was trained on {model.config.get('box')}² images, "
                                      f"the particles are {box}²")
    net = build_network(model, device=device)
    aligner = ClassicalAligner(np.zeros((box, box), np.float32), params, device=device)
    if reference is None and "reference" in model.extra:
        reference = np.asarray(model.extra["reference"], dtype=np.float32)
    if reference is None:
        reference = _bootstrap_reference(source, aligner, params, np.random.default_rng(params.seed), ctf)
    reference = np.asarray(reference, dtype=np.float32)
    aligner.set_reference(reference)
    clock = StageClock("align", 2 * _n_batches(n, params.batch_size))
    guess = np.zeros(n)
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, n, params.batch_size)):
        stop = min(n, start + params.batch_size)
        guess[start:stop] = predict_relative_angles(net, reference, source.read(start, stop), device=device)
        yield clock.event(b + 1, stage_info="network")
    t_net = time.perf_counter() - t0
    out = aligned_out if aligned_out is not None else (np.empty((n, box, box), np.float32) if keep_aligned else None)
    psi, origins, scores, average = yield from iter_align_pass(
        aligner, source, clock=clock, ctf=ctf, angle_guess=guess, aligned_out=out,
        step_offset=_n_batches(n, params.batch_size), total=clock.total)
    return AlignmentResult(psi, origins, scores, symmetrize(average, params.symmetry), reference,
                           out if aligned_out is None else None,
                           {"method": model.kind.split("/")[-1], "network_angles": guess,
                            "network_seconds": t_net, "seconds": clock.elapsed})


def network_angle_error(guess: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Error (degrees) of network angles modulo 180° against true angles."""
    return np.abs(np.mod(np.asarray(guess) - np.asarray(truth) + 90.0, 180.0) - 90.0)


__all__ = ["DeepAlignParams", "circular_distance_180", "iter_align_with_model", "iter_train",
           "log_amplitudes", "predict_relative_angles", "train"]
