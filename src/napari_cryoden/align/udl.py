"""UDL: unsupervised difference learning of in-plane rotations (pair-wise), after Chen, Feng & Shen (2023).

The network (:class:`.networks.SiameseAngleRegressor`, not rotation-equivariant) sees the centred log Fourier
amplitudes of two images (shift-invariant, 180°-periodic) and predicts their relative angle ``phi`` modulo
180°. No labels:

- **difference term** (the seed's): both inputs of a pair are rotated by random known angles twice,
  ``(alpha, beta)`` and ``(alpha', beta')``; with ``b`` ≈ ``a`` rotated by ``phi`` the two predictions must
  differ by ``(beta - alpha) - (beta' - alpha')`` (our convention, ``docs/align.md``). The two predictions see
  *independent noise*: each particle is split into its two checkerboard pixel halves (disjoint pixels, so
  independent noise for pixel-independent noise; the signal's copy that the split aliases lands at the
  corners of the spectrum, outside what the network sees), one half for each prediction;
- **half-pair term**: the two halves of one particle, rotated by ``beta`` and ``beta'``, are a pair whose
  relative angle is known exactly, ``beta' - beta``, despite independent noise.

Both use the true circular distance ``d(x, y) = |((x - y + 90) mod 180) - 90|``. The network has to learn
the answer: untrained, it guesses at chance. At inference the residual offset is calibrated on rotated copies
of the reference, and the result is refined (``refine``): ``none`` keeps the network's own angle (mod 180°,
no shift), ``local`` searches near it with cross-correlation (the 180° flip, the shift, the fine angle),
``fft`` runs the global classical search (:mod:`.cross_correlation`).

:mod:`.judl` trains the same network on (reference, image) pairs with a reconstruction term.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .. import distributed
from ..checkpoint import Checkpointer, restore_rng, rng_state
from ..errors import CryodenInputError
from ..metrics.alignment import angular_error
from ..models import ModelFile, to_cpu
from ..params import param, validate
from ..progress import ProgressEvent, StageClock
from .cross_correlation import (
    ClassicalAligner,
    ClassicalParams,
    _bootstrap_reference,
    _n_batches,
    _read_ctf,
    _ring_index,
    _source,
    _to_tensor,
    iter_align_pass,
    iter_align_reference_free,
    phase_flip,
    soft_disc,
    symmetrize,
)
from .networks import ARCHITECTURE, AmplitudeAutoencoder, SiameseAngleRegressor
from .result import AlignmentResult
from .transforms import align_images, rotate_images, transform_images

log = logging.getLogger(__name__)

#: How the network's angle is refined: its own angle, a search near it, or the global classical search.
REFINE_CHOICES = ("none", "local", "fft")

#: What docs/align.md measured of the shipped models on particles with a CTF (the network sees amplitudes only,
#: so phase-flipping does not change it); the CLI and the Align widget say it to the user.
SHIPPED_CTF_CAVEAT = ("on particles with a CTF (phase-flipped or not) the shipped models are far off on their own "
                      "(held-out map, 128², SNR 0.1: 26° / 20° median, against 9° / 8° without a CTF; "
                      "docs/align.md)")


@dataclass(frozen=True)
class DeepAlignParams:
    """Training and inference settings of UDL / JUDL."""

    epochs: int = param(3, "passes of steps_per_epoch training steps", min=1)
    steps_per_epoch: int = param(50, "training steps per epoch", min=1)
    time_budget: float | None = param(None, "stop training after this many seconds", min=0.0, unit="s", basic=True)
    batch_size: int = param(32, "pairs per training step", min=2, cli="--train-batch-size")
    learning_rate: float = param(3e-3, "Adam learning rate (the paper: 3e-4 for its 74 M-parameter network; this "
                                       "small one learns at 3e-3)", min=0.0)
    spectrum_size: int = param(32, "side of the centred amplitude spectrum the network sees (pixels; the low "
                                   "frequencies carry the orientation at low SNR); at most the box", min=8, max=256, unit="px")
    base_channels: int = param(8, "channels of the first feature level", min=4)
    levels: int = param(2, "residual stages (each halves the resolution)", min=1, max=4)
    half_pair_weight: float = param(1.0, "weight of the half-pair term (a particle's two pixel halves, whose "
                                         "relative angle is known)", min=0.0)
    max_images: int = param(5000, "at most this many particles are used for training", min=2)
    reconstruction_weight: float = param(20.0, "JUDL: reconstruction loss weight, 20 x (1 + step / "
                                               "steps_per_epoch): on from the first step", min=0.0)
    refine: str = param("local", "after the network: none (its own angle, no shift), local (cross-correlation "
                                 "near its angle: 180° flip, shift, fine angle), fft (global classical search)",
                        choices=REFINE_CHOICES, basic=True)
    refine_window: float = param(10.0, "local refinement: search this many degrees either side of the network's "
                                       "angle", min=0.0, max=90.0, unit="°")
    seed: int = param(0, "random seed")


def circular_distance_180(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|((a - b + 90) mod 180) - 90|`` degrees: the true distance of 180°-periodic angles."""
    return torch.abs(torch.remainder(a - b + 90.0, 180.0) - 90.0)


def spectrum_size(box: int, requested: int = 32) -> int:
    """The (even) side of the amplitude spectrum used for particles of ``box`` pixels."""
    return int(max(8, min(requested, box)) // 2 * 2)


@lru_cache(maxsize=16)
def _rings(size: int, device: str):
    """Ring index of each pixel of a centred size x size map, pixels per ring, and the disc inside it."""
    c = torch.arange(size, dtype=torch.float32) - size // 2
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    index = torch.round(r).long().flatten()
    counts = torch.bincount(index).to(torch.float32)
    disc = r <= size / 2 - 0.5
    return index.to(device), counts.to(device), disc.to(device)


def log_amplitudes(images, *, size: int | None = None, device="cpu", spectrum_bin: int = 1) -> torch.Tensor:
    """(n, 1, S, S) centred log(1 + |F x|) of images, the network's input.

    The mean-free image is tapered by a soft disc first (the box edges would add a cross to the spectrum
    that does not turn with the particle); the central ``size`` x ``size`` frequencies are kept (default: the
    whole box); each ring's mean is removed (a rotation cannot change it: only the anisotropy says the angle)
    and the map outside the inscribed disc is zeroed (corners do not rotate); each map is scaled to unit
    standard deviation. (The seed min-max scaled the whole map; with that input our small network did not
    learn within 200 steps, with this one it did within 50.) ``spectrum_bin`` = 2: the map reaches twice as
    far in frequency, each of its pixels the mean amplitude of the 3 x 3 frequencies centred on every second
    frequency (the centre stays the zero frequency, so a rotation of the image turns the map about its centre).
    """
    x = _to_tensor(images, device)
    if x.ndim == 2:
        x = x[None]
    box = x.shape[-1]
    size = box if size is None else size
    x = (x - x.mean((-2, -1), keepdim=True)) * soft_disc(box, device=x.device)
    amp = torch.fft.fftshift(torch.fft.fft2(x).abs(), dim=(-2, -1))
    if spectrum_bin > 1:
        span = size * spectrum_bin
        if size % 2:
            raise ValueError(f"a binned map needs an even size (its zero frequency on a pixel), got {size}")
        if span > box:
            raise ValueError(f"a {size}² map binned by {spectrum_bin} needs a box of {span} pixels, got {box}")
        lo = box // 2 - span // 2
        window = amp[..., lo:lo + span, lo:lo + span].reshape(-1, 1, span, span)
        k = 2 * (spectrum_bin // 2) + 1
        amp = torch.nn.functional.avg_pool2d(window, k, stride=spectrum_bin, padding=k // 2,
                                             count_include_pad=False)[:, 0]
    else:
        lo = box // 2 - size // 2
        amp = amp[..., lo:lo + size, lo:lo + size]
    amp = torch.log1p(amp).reshape(x.shape[0], -1)
    index, counts, disc = _rings(size, str(x.device))
    ring_mean = torch.zeros(x.shape[0], counts.numel(), device=x.device).index_add_(1, index, amp) / counts
    amp = (amp - ring_mean[:, index]).reshape(-1, size, size)
    amp = torch.where(disc, amp, torch.zeros_like(amp))
    amp = amp / amp.flatten(1).std(1).clamp_min(1e-6)[:, None, None]
    return amp[:, None]


def checkerboard_halves(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two checkerboard pixel halves of (n, N, N) images, each x2 (same signal, disjoint pixels' noise)."""
    n = images.shape[-1]
    c = torch.arange(n, device=images.device)
    board = ((c[:, None] + c[None, :]) % 2).to(images.dtype)
    x = images - images.mean((-2, -1), keepdim=True)
    return 2 * board * x, 2 * (1 - board) * x


def _rotate(maps: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """(n, 1, S, S) maps rotated by ``angles`` degrees (differentiable in both)."""
    return rotate_images(maps[:, 0], angles, mode="bilinear")[:, None]


def _training_halves(source, params: DeepAlignParams, size: int, rng, device, crop: int | None = None,
                     spectrum_bin: int = 1) -> torch.Tensor:
    """(m, 2, S, S) log-amplitudes of the two pixel halves of up to ``max_images`` particles (of their centred
    ``crop`` x ``crop`` window when given)."""
    n = len(source)
    rows = np.sort(rng.choice(n, size=min(n, params.max_images), replace=False))
    blocks = []
    for start in range(0, len(rows), 1024):
        chunk = rows[start:start + 1024]
        lo, hi = int(chunk.min()), int(chunk.max()) + 1
        block = _to_tensor(source.read(lo, hi)[chunk - lo], device)
        h1, h2 = checkerboard_halves(block if crop is None else _centre_crop(block, crop).contiguous())
        blocks.append(torch.cat([log_amplitudes(h1, size=size, device=device, spectrum_bin=spectrum_bin),
                                 log_amplitudes(h2, size=size, device=device, spectrum_bin=spectrum_bin)], dim=1))
    return torch.cat(blocks)


#: JUDL: noisy copies of the reference drawn once per training (the reference member of each pair is one of them).
REFERENCE_COPIES = 256
#: Particles whose mean power spectrum gives the noise added to those copies.
NOISE_SAMPLE = 512


def ring_power(images: np.ndarray) -> np.ndarray:
    """Mean power ``|F x|²`` per Fourier ring (radius in whole Fourier pixels) of mean-free ``(n, N, N)`` images."""
    x = np.asarray(images, dtype=np.float64)
    x = x - x.mean((-2, -1), keepdims=True)
    power = (np.abs(np.fft.rfft2(x)) ** 2).mean(0)
    ring = _ring_index(x.shape[-1])
    n_rings = x.shape[-1] // 2 + 1
    keep = ring < n_rings
    return np.bincount(ring[keep], power[keep], n_rings) / np.maximum(np.bincount(ring[keep], None, n_rings), 1)


def noisy_reference_copies(reference: np.ndarray, particle_power: np.ndarray, copies: int, rng) -> np.ndarray:
    """(copies, N, N) float32: ``reference`` plus noise with the particles' noise power per Fourier ring —
    ``particle_power`` (:func:`ring_power` of the particles) minus the reference's, at least 0. A ring's power
    does not change when a particle turns or moves, so what the particles have beyond the reference is their
    noise; coloured noise stays coloured."""
    box = reference.shape[-1]
    noise_power = np.maximum(np.asarray(particle_power) - ring_power(reference[None]), 0.0)
    ring = _ring_index(box)
    inside = ring < len(noise_power)
    amplitude = np.sqrt(noise_power[np.where(inside, ring, 0)] * inside) / box  # |F| of unit white noise is box
    white = rng.standard_normal((copies, box, box))
    noise = np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=(box, box))
    return (reference[None] + noise).astype(np.float32)


def _noisy_reference_halves(reference: np.ndarray, source, rng, *, size: int, device, crop: int | None,
                            spectrum_bin: int, copies: int = REFERENCE_COPIES, chunk: int = 64) -> torch.Tensor:
    """(copies, 2, S, S): JUDL's reference member of a pair as the network sees a particle — noisy copies of the
    reference (:func:`noisy_reference_copies`, the particles' power measured on up to :data:`NOISE_SAMPLE` of
    them) split into checkerboard halves like the particles, so the half-pair term learns from them too. Against
    one clean average (both halves the same map), JUDL at 64², SNR 0.05 learned nothing on two seeds of three
    (docs/align.md). Read and made ``chunk`` images at a time (large boxes)."""
    n = len(source)
    rows = np.sort(rng.choice(n, size=min(n, NOISE_SAMPLE), replace=False))
    power = 0.0
    for start in range(0, len(rows), chunk):
        block = np.concatenate([source.read(int(r), int(r) + 1) for r in rows[start:start + chunk]])
        power = power + ring_power(block if crop is None else _centre_crop(block, crop)) * len(block)
    power = power / len(rows)
    maps = []
    for start in range(0, copies, chunk):
        noisy = noisy_reference_copies(reference, power, min(chunk, copies - start), rng)
        h1, h2 = checkerboard_halves(_to_tensor(noisy, device))
        maps.append(torch.cat([log_amplitudes(h1, size=size, device=device, spectrum_bin=spectrum_bin),
                               log_amplitudes(h2, size=size, device=device, spectrum_bin=spectrum_bin)], dim=1))
    return torch.cat(maps)


def reconstruction_weight(params: DeepAlignParams, step: int) -> float:
    """JUDL's weight of the reconstruction term at training step ``step`` (0-based): the seed's ``20 × epoch``
    with epochs counted from 1 and continuous in the step, so it is on from the first step."""
    return params.reconstruction_weight * (1.0 + step / params.steps_per_epoch)


def training_losses(net, ae, model_net: SiameseAngleRegressor, a: torch.Tensor, b: torch.Tensor,
                    rot: torch.Tensor, *, half_pairs_of_a: bool = True) -> dict:
    """The losses of one training step.

    ``a``, ``b``: (bs, 2, S, S) the two pixel halves of the pair's first and second members (JUDL: ``a`` is
    a noisy copy of the reference, :func:`_noisy_reference_halves`); ``rot``: (4, bs) degrees. ``net`` may be a
    DDP wrapper of ``model_net`` (one forward per step); ``ae`` is JUDL's autoencoder (its presence makes the
    step JUDL's) or None. ``half_pairs_of_a``: the half-pair term covers ``a``'s halves too (their noise must be
    independent; ``scripts/train_align_models.py`` trained the shipped JUDL with a clean ``a`` and without it).
    Returns the difference term ``angle``, the ``half`` pair term and ``reconstruction`` (zero without ``ae``).
    """
    bs = a.shape[0]
    a1, a2, b1, b2 = (_rotate(a[:, 0:1], rot[0]), _rotate(a[:, 1:2], rot[2]), _rotate(b[:, 0:1], rot[1]),
                      _rotate(b[:, 1:2], rot[3]))
    za1, za2, zb1, zb2 = net(torch.cat([a1, a2, b1, b2])).split(bs)
    p1, p2 = model_net.relative(za1, zb1), model_net.relative(za2, zb2)
    angle = circular_distance_180(p1 - p2, (rot[1] - rot[0]) - (rot[3] - rot[2])).mean()
    # One image's halves: b2 is b1 turned by rot3 - rot1 (a2 is a1 turned by rot2 - rot0), whatever the
    # (independent) noise says.
    half = circular_distance_180(model_net.relative(zb1, zb2), rot[3] - rot[1])
    if half_pairs_of_a:
        half = torch.cat([half, circular_distance_180(model_net.relative(za1, za2), rot[2] - rot[0])])
    out = {"angle": angle, "half": half.mean(), "reconstruction": torch.zeros((), device=a.device)}
    if ae is not None:
        # b1 ≈ the reference turned by rot0 + p1: turned back by that, every particle's amplitude should be in
        # the reference's frame, and one small autoencoder reconstructs such maps best when they all are. The
        # gradient reaches the network through the angle of the (differentiable) rotation.
        aligned = _rotate(b1, -(rot[0] + p1))
        out["reconstruction"] = torch.mean((ae(aligned) - aligned) ** 2)
    return out


def check_model(model: ModelFile, *, path=None, box: int | None = None, where=None) -> None:
    """Raise :class:`CryodenInputError` naming ``path`` if ``model`` cannot align particles of ``box`` px.

    A model of the previous architecture (the rotation-equivariant matcher of napari-cryoden <= 0.x, whose
    file has no ``architecture``) has other weights; it is refused with what to do instead of a crash.
    """
    if not model.kind.startswith("align/"):
        raise CryodenInputError(path, f"is a {model.kind} model, not an alignment model")
    arch = model.config.get("architecture")
    if arch != ARCHITECTURE:
        raise CryodenInputError(path, f"this {model.kind} model has the network "
                                      f"{arch or 'of an older napari-cryoden (rotation-equivariant matcher)'}, "
                                      f"this version needs {ARCHITECTURE}: train a new model (--save-model)")
    if box is not None and model.config.get("any_box"):  # a general model (the shipped ones): any box it can see
        span = model.config["spectrum_size"] * int(model.config.get("spectrum_bin", 1))
        if box < span:
            raise CryodenInputError(path, f"the model looks at {span}² spectra; "
                                          f"{'the particles' if where is None else where} are {box}², smaller")
        return
    if box is not None and model.config.get("box") != box:
        raise CryodenInputError(path, f"the model was trained on {model.config.get('box')}² particles, "
                                      f"{'the particles' if where is None else where} are {box}²")


def iter_train(images, reference=None, params: DeepAlignParams | None = None, *, joint: bool = False,
               device="cpu", model: ModelFile | None = None, checkpoint: Checkpointer | None = None,
               resume: bool = False, ctf=None, classical: ClassicalParams | None = None
               ) -> Generator[ProgressEvent, None, ModelFile]:
    """Train UDL (``joint=False``: random pairs of particles) or JUDL (``joint=True``: (reference, particle)
    pairs plus the reconstruction term); yields progress events and returns the :class:`ModelFile`.

    ``reference`` is used by JUDL (``None``: a bootstrap average of the particles, as in the classical
    reference-free start: JUDL trains reference-free). ``model`` continues training from a saved model.
    ``checkpoint`` writes the training state every ``checkpoint.every`` seconds; with ``resume`` a training
    continues from it. ``ctf`` (the particles' CTFs, as for alignment): the bootstrap average is built from
    phase-flipped particles aligned with the CTF as a matched filter, as the reference-free alignment builds it
    (without it, JUDL on particles with a CTF learned against a contrast-inverted average that its local
    refinement, which uses the CTF, then worked against). ``classical``: the alignment settings the model will be
    used with (a shipped model's window follows their ``max_shift`` and bootstrap, as at inference).
    """
    params = validate(params or DeepAlignParams())
    ctx = distributed.context()  # under torchrun: DDP and one pair stream per process
    device = distributed.training_device(torch.device(device), ctx)
    source = _source(images)
    box = source.box
    if len(source) < 2:
        raise CryodenInputError(getattr(source, "name", None), "training needs at least 2 particles, got 1")
    if model is not None:
        check_model(model, box=box)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)  # the same training subset on every process
    config = {"architecture": ARCHITECTURE, "box": box, "spectrum_size": spectrum_size(box, params.spectrum_size),
              "base_channels": params.base_channels, "levels": params.levels, "joint": joint}
    if model is not None:
        config = {**model.config, "joint": joint}
    size = config["spectrum_size"]
    net = SiameseAngleRegressor(size, base=config["base_channels"], levels=config["levels"]).to(device)
    ae = AmplitudeAutoencoder().to(device) if joint else None
    if model is not None:
        net.load_state_dict(model.state_dict["net"])
        if ae is not None and "autoencoder" in model.state_dict:
            ae.load_state_dict(model.state_dict["autoencoder"])
    crop, spectrum_bin = None, int(config.get("spectrum_bin", 1))
    if config.get("any_box"):  # fine-tuning a shipped model: it reads the window it will read at inference
        classical = classical or ClassicalParams()
        if reference is None:  # as iter_align_with_model will: a bootstrap average
            aligner = ClassicalAligner(np.zeros((box, box), np.float32), classical, device=device)
            reference = _bootstrap_reference(source, aligner, classical, np.random.default_rng(classical.seed), ctf)
        crop = network_crop(reference, box, max_shift=classical.max_shift, size=size * spectrum_bin)
    halves = _training_halves(source, params, size, rng, device, crop, spectrum_bin)
    ref_halves = None
    if joint:
        if reference is None:  # JUDL trained on the stack, reference-free (drawn from the training's rng, as before)
            aligner = ClassicalAligner(np.zeros((box, box), np.float32), ClassicalParams(), device=device)
            reference = _bootstrap_reference(source, aligner, ClassicalParams(), rng, ctf)
        ref = np.asarray(reference, dtype=np.float32)
        ref_halves = _noisy_reference_halves(ref if crop is None else np.ascontiguousarray(_centre_crop(ref, crop)),
                                             source, rng, size=size, device=device, crop=crop,
                                             spectrum_bin=spectrum_bin)
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
        b = halves[torch.randint(len(halves), (bs,), generator=gen).to(device)]
        swap = (torch.rand(bs, generator=gen) < 0.5).to(device)  # which half goes to which prediction
        b = torch.where(swap[:, None, None, None], b.flip(1), b)
        pool = ref_halves if joint else halves  # JUDL: noisy reference copies; UDL: other particles
        a = pool[torch.randint(len(pool), (bs,), generator=gen).to(device)]
        rot = (torch.rand((4, bs), generator=gen) * 360.0).to(device)
        losses = training_losses(net, ae, model_net, a, b, rot)
        weight = reconstruction_weight(params, step) if joint else 0.0
        loss = losses["angle"] + params.half_pair_weight * losses["half"] + weight * losses["reconstruction"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        angle_value, half_value, recon_value = distributed.mean(
            [float(losses["angle"].detach()), float(losses["half"].detach()),
             float(losses["reconstruction"].detach())], ctx)
        history.append({"step": step, "epoch": epoch, "angle_loss": angle_value, "half_loss": half_value,
                        "reconstruction": recon_value, "reconstruction_weight": weight})
        if checkpoint is not None and ctx.is_main and checkpoint.due():
            saved = {"net": to_cpu(model_net.state_dict()), "optimizer": to_cpu(optimiser.state_dict()),
                     "step": step, "history": list(history), "elapsed": clock.elapsed,
                     "rng": rng_state(generator=gen)}
            if model_ae is not None:
                saved["autoencoder"] = to_cpu(model_ae.state_dict())
            checkpoint.save(saved)
        yield clock.event(step, loss=angle_value, epoch=epoch, half_loss=half_value, reconstruction=recon_value)
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


def build_network(model: ModelFile, *, device="cpu") -> SiameseAngleRegressor:
    """The model's network in eval mode (:func:`check_model` first: an old file raises CryodenInputError)."""
    check_model(model)
    c = model.config
    net = SiameseAngleRegressor(c["spectrum_size"], base=c["base_channels"], levels=c["levels"])
    net.load_state_dict(model.state_dict["net"])
    net.spectrum_bin = int(c.get("spectrum_bin", 1))  # how its input map is made (log_amplitudes)
    return net.to(device).eval()


SHIPPED_FILL = 0.4  # the particle's diameter over the box the shipped models see (chosen on the tuning set)
SHIPPED_ROTATIONS = 8  # turned copies each particle is read in by the shipped models (chosen on the tuning set)


def particle_radius(reference) -> float:
    """Radius (pixels) of the particle in ``reference``: the radius enclosing 95 % of the energy of its
    rotational average above the background (the median of the box's edge). Noise in a bootstrap average
    only enlarges it (a larger, safer crop)."""
    ref = np.asarray(reference, dtype=np.float64)
    box = ref.shape[-1]
    edge = np.concatenate([ref[0], ref[-1], ref[:, 0], ref[:, -1]])
    c = np.arange(box) - box / 2 + 0.5
    r = np.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    ring = np.minimum(np.round(r).astype(int), box // 2)
    energy = np.bincount(ring.ravel(), weights=((ref - np.median(edge)) ** 2).ravel(), minlength=box // 2 + 1)
    cum = np.cumsum(energy)
    if cum[-1] <= 0:
        return box / 2
    return float(np.searchsorted(cum, 0.95 * cum[-1]) + 1)


def network_crop(reference, box: int, *, max_shift: float, fill: float = SHIPPED_FILL, size: int = 32) -> int:
    """Side of the centred window the shipped (any-box) models read: the particle (:func:`particle_radius`)
    spans about ``fill`` of it, as in their training, while a particle shifted by ``max_shift`` stays inside
    its soft disc; never smaller than the spectrum (``size``) nor larger than the box. A small particle in a
    large box is otherwise a few central Fourier pixels to the network (shipped UDL on unseen content at 128²,
    SNR 0.1: 17° median when the particle spans 20 % of the box, 7° at 60 %)."""
    radius = particle_radius(reference)
    side = max(2 * radius / fill, 2 * (radius + max_shift) + 8, size)
    return int(min(box, 2 * math.ceil(side / 2)))


def _centre_crop(x, side: int):
    lo = (x.shape[-1] - side) // 2
    return x[..., lo:lo + side, lo:lo + side]


def relative_angle_predictor(net: SiameseAngleRegressor, reference, *, device="cpu", calibration_angles: int = 24,
                             crop: int | None = None, rotations: int = 1):
    """A function of images giving their (n,) angles (degrees, in [0, 180)) relative to the reference: the
    network's own answer (:func:`predict_relative_angles`), with the reference's orientation and the calibration
    computed once, for every batch of particles after."""
    size, spectrum_bin = net.size, getattr(net, "spectrum_bin", 1)
    ref = np.asarray(reference, dtype=np.float32)
    if crop is not None and crop >= ref.shape[-1]:
        crop = None
    if crop is not None:
        ref = np.ascontiguousarray(_centre_crop(ref, crop))

    def orientation(x):
        return net.orientation(log_amplitudes(x, size=size, device=device, spectrum_bin=spectrum_bin))

    def estimate(x: torch.Tensor) -> torch.Tensor:
        if rotations <= 1:
            return net.relative(za, orientation(x))
        s = c = 0.0
        for k in range(rotations):
            gamma = k * 180.0 / rotations
            turned = x if k == 0 else rotate_images(x, torch.full((len(x),), -gamma, device=x.device))
            d = torch.deg2rad(2 * (net.relative(za, orientation(turned)) + gamma))
            s, c = s + torch.sin(d), c + torch.cos(d)
        return torch.rad2deg(torch.atan2(s, c)) / 2

    with torch.no_grad():
        za = orientation(ref[None])
        gammas = torch.arange(calibration_angles, dtype=torch.float32) * (180.0 / calibration_angles)
        turned = rotate_images(torch.as_tensor(ref)[None].expand(calibration_angles, -1, -1).contiguous(), gammas)
        d = torch.deg2rad(2 * (estimate(_to_tensor(turned, device)).cpu() - gammas))
        offset = float(torch.rad2deg(torch.atan2(torch.sin(d).mean(), torch.cos(d).mean())) / 2)

    @torch.no_grad()
    def predict(images) -> np.ndarray:
        images = _to_tensor(images, device)
        if crop is not None:
            images = _centre_crop(images, crop).contiguous()
        return np.mod(estimate(images).cpu().numpy().astype(np.float64) - offset, 180.0)

    return predict


def predict_relative_angles(net: SiameseAngleRegressor, reference, images, *, device="cpu",
                            calibration_angles: int = 24, crop: int | None = None, rotations: int = 1
                            ) -> np.ndarray:
    """(n,) angles (degrees, in [0, 180)) of each image relative to the reference: the network's own answer.

    The residual offset (what the network says for the reference against itself turned by known angles,
    interpolation included) is calibrated on ``calibration_angles`` rotated copies of the reference.
    ``crop``: read only the centred ``crop`` x ``crop`` window of the reference and the images
    (:func:`network_crop`). ``rotations`` > 1: the network also reads each image turned by k·180°/``rotations``
    (k = 1, 2, ...) and the answers, turned back, are averaged on the circle of doubled angles — the network is
    not equivariant, so its errors on the turned copies are partly independent (test-time augmentation).
    """
    return relative_angle_predictor(net, reference, device=device, calibration_angles=calibration_angles, crop=crop,
                                    rotations=rotations)(images)


def inference_settings(model: ModelFile, reference, box: int, *, max_shift: float, refine: str) -> dict:
    """How ``cryoden align`` applies ``model`` to particles of ``box`` (keyword arguments of
    :func:`predict_relative_angles`): a shipped (any-box) model reads the window around the particle
    (:func:`network_crop`), and where its angle is the answer (``refine="none"``) averages
    :data:`SHIPPED_ROTATIONS` turned copies (a local search after it gains little from them at 8 times the
    network's time: docs/align.md); a model trained on the stack reads the whole box once, as it was trained."""
    if not model.config.get("any_box"):
        return {"crop": None, "rotations": 1}
    span = model.config["spectrum_size"] * int(model.config.get("spectrum_bin", 1))
    return {"crop": network_crop(reference, box, max_shift=max_shift, size=span),
            "rotations": SHIPPED_ROTATIONS if refine == "none" else 1}


def _local_guesses(guess: np.ndarray, window: float, params: ClassicalParams) -> np.ndarray:
    """(n, m) angles to try around each network angle: ± ``window`` at a spacing the hill-climb bridges."""
    spacing = max(params.angular_step, params.climb_steps * params.angular_step)
    if window <= spacing / 2:
        return guess[:, None]
    k = int(math.ceil(window / spacing))
    return guess[:, None] + np.linspace(-window, window, 2 * k + 1)[None, :]


#: ``--refine local``: warn when more than this share of the particles found their best angle at or past the
#: edge of the window around the network's angle (benchmark stacks, 2026-12-07: a network with errors of
#: about 2.5° puts 2 % there, one at chance 50-85 %, one of ~8° median error 44 %).
EDGE_WARNING_SHARE = 0.3


def network_edge_share(psi, guess, window: float, params: ClassicalParams) -> float | None:
    """Share of particles whose refined angle ``psi`` lies ``window`` − one bank step or more from the network's
    angle ``guess`` (modulo 180° and the symmetry): where the local search had to go to its window's edge, or
    climb past it. None when the period is too short for the window to mean anything (e.g. C7: 25.7°)."""
    sym = max(int(params.symmetry), 1)
    fold = 2 * sym // math.gcd(2, sym)  # the network's angle is known modulo 180° and the symmetry
    if 360.0 / fold < 4.0 * window:
        return None
    return float(np.mean(angular_error(psi, guess, symmetry=fold) >= window - params.angular_step))


def edge_warning(share: float, window: float) -> str:
    """The warning for a high :func:`network_edge_share` (the CLI prints it, the widget notifies it)."""
    return (f"{100 * share:.0f} % of the particles found their best angle at or past the edge of the ±{window:g}° "
            "window around the network's angle (a network at chance puts about half there, a good one a few "
            "per cent): the network's angles look unreliable for this stack; compare with --refine fft (or "
            "--method fft) on a subset, or train the network longer")


def _iter_network_only(source, reference, psi, *, clock, ctf, aligned_out, step_offset, device):
    """Scores (normalised correlation at zero shift) and the average for the network's own angles."""
    n, box, bs = len(source), source.box, 512
    ref = _to_tensor(reference, device)
    ref = (ref - ref.mean()) * soft_disc(box, device=ref.device)
    scores = np.zeros(n)
    acc = torch.zeros((box, box), dtype=torch.float64, device=ref.device)
    for b, start in enumerate(range(0, n, bs)):
        stop = min(n, start + bs)
        block = source.read(start, stop)
        angles = torch.as_tensor(psi[start:stop], dtype=torch.float32, device=ref.device)
        x = _to_tensor(block, device)
        x = x - x.mean((-2, -1), keepdim=True)
        r = transform_images(ref[None].expand(stop - start, -1, -1).contiguous(), angles=angles)
        r = r - r.mean((-2, -1), keepdim=True)
        scores[start:stop] = ((x * r).sum((-2, -1)) / (x.flatten(1).norm(dim=1) * r.flatten(1).norm(dim=1))
                              .clamp_min(1e-12)).cpu().numpy()
        aligned = align_images(_to_tensor(block, device), angles=angles)
        block_ctf = _read_ctf(ctf, start, stop)
        for_average = aligned if block_ctf is None else align_images(
            _to_tensor(phase_flip(block, block_ctf), device), angles=angles)
        acc += for_average.sum(0).to(torch.float64)
        if aligned_out is not None:
            aligned_out[start:stop] = aligned.cpu().numpy()
        yield clock.event(step_offset + b + 1, done=stop, particles=n)
    return scores, (acc / max(n, 1)).cpu().numpy().astype(np.float32)


def iter_align_with_model(images, model: ModelFile, reference=None, params: ClassicalParams | None = None, *,
                          refine: str = "local", window: float = 10.0, device="cpu", ctf=None,
                          keep_aligned: bool = True, aligned_out=None
                          ) -> Generator[ProgressEvent, None, AlignmentResult]:
    """Align with a trained UDL/JUDL model: the network gives the angle modulo 180°, then ``refine``:

    - ``"none"``: the network's own angle (in [0, 180): amplitudes cannot tell the 180° flip), zero shifts
      (the network predicts none), score = normalised correlation with the reference at that angle;
    - ``"local"``: cross-correlation over angles within ± ``window`` degrees of the network's angle and of
      that + 180°, then the classical hill-climb, sub-degree angle and sub-pixel shift;
    - ``"fft"``: the global classical search (the network's angle is reported in ``info`` only).

    Without ``reference``: JUDL uses the reference it was trained with; otherwise a bootstrap average. Then
    ``"local"`` is reference-free: the first pass searches near the network's angles against that average,
    later passes refine the average as :func:`iter_align_reference_free` does (split halves, FRC weighting,
    until the angles settle), each searching only at the angle the pass before found (and its 180° flip),
    with the hill-climb. The average returned is the reference-free one (symmetrised once).
    """
    params = validate(params or ClassicalParams())
    if refine not in REFINE_CHOICES:
        raise ValueError(f"refine must be one of {REFINE_CHOICES}, got {refine!r}")
    device = torch.device(device)
    source = _source(images)
    n, box = len(source), source.box
    check_model(model, box=box)
    net = build_network(model, device=device)
    aligner = ClassicalAligner(np.zeros((box, box), np.float32), params, device=device)
    free = reference is None
    if reference is None and "reference" in model.extra:
        reference = np.asarray(model.extra["reference"], dtype=np.float32)
    if reference is None:
        reference = _bootstrap_reference(source, aligner, params, np.random.default_rng(params.seed), ctf)
    reference = np.asarray(reference, dtype=np.float32)
    aligner.set_reference(reference)
    n_batches = _n_batches(n, params.batch_size)
    if refine == "none":
        after = _n_batches(n, 512)
    elif refine == "local" and free:  # as many passes as iter_align_reference_free may run
        after = n_batches * (params.iterations + 1)
    else:
        after = n_batches
    clock = StageClock("align", n_batches + after)
    guess = np.zeros(n)
    how = inference_settings(model, reference, box, max_shift=params.max_shift, refine=refine)
    t0 = time.perf_counter()
    predict = relative_angle_predictor(net, reference, device=device, **how)
    for b, start in enumerate(range(0, n, params.batch_size)):
        stop = min(n, start + params.batch_size)
        guess[start:stop] = predict(source.read(start, stop))
        yield clock.event(b + 1, stage_info="network")
    t_net = time.perf_counter() - t0
    out = aligned_out if aligned_out is not None else (np.empty((n, box, box), np.float32) if keep_aligned else None)
    if refine == "none":
        psi, origins = guess.copy(), np.zeros((n, 2))
        scores, average = yield from _iter_network_only(source, reference, psi, clock=clock, ctf=ctf,
                                                        aligned_out=out, step_offset=n_batches, device=device)
    elif refine == "local" and free:
        res = yield from iter_align_reference_free(
            source, params, device=device, ctf=ctf, initial_reference=reference,
            angle_guess=_local_guesses(guess, window, params), keep_aligned=out is not None,
            aligned_out=out, clock=clock, step_offset=n_batches)
        psi, origins, scores, average, reference = res.angles, res.origins, res.scores, res.average, res.reference
        extra = {k: res.info[k] for k in ("iterations", "history", "structure") if k in res.info}
        extra.update(_edge_check(psi, guess, window, params))
        return AlignmentResult(psi, origins, scores, average, reference, out if aligned_out is None else None,
                               {"method": model.kind.split("/")[-1], "refine": refine, "network_angles": guess,
                                "reference": "free", "network_crop": how["crop"] or box,
                                "network_rotations": how["rotations"], "network_seconds": t_net, **extra,
                                "seconds": clock.elapsed})
    else:
        psi, origins, scores, average = yield from iter_align_pass(
            aligner, source, clock=clock, ctf=ctf, aligned_out=out, step_offset=n_batches, total=clock.total,
            angle_guess=_local_guesses(guess, window, params) if refine == "local" else None)
    check = _edge_check(psi, guess, window, params) if refine == "local" else {}
    return AlignmentResult(psi, origins, scores, symmetrize(average, params.symmetry), reference,
                           out if aligned_out is None else None,
                           {**check, "method": model.kind.split("/")[-1], "refine": refine, "network_angles": guess,
                            "reference": "free" if free else "given", "network_crop": how["crop"] or box,
                            "network_rotations": how["rotations"], "network_seconds": t_net,
                            "seconds": clock.elapsed})


def _edge_check(psi, guess, window: float, params: ClassicalParams) -> dict:
    """``info`` entries of the local refinement's check of the network (:func:`network_edge_share`), with a
    logged warning (and ``info["warning"]``) when the share is above :data:`EDGE_WARNING_SHARE`."""
    share = network_edge_share(psi, guess, window, params)
    if share is None:
        return {}
    info = {"network_edge_share": share}
    if share > EDGE_WARNING_SHARE:
        info["warning"] = edge_warning(share, window)
        log.warning(info["warning"])
    return info


def network_angle_error(guess: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Error (degrees) of network angles modulo 180° against true angles."""
    return np.abs(np.mod(np.asarray(guess) - np.asarray(truth) + 90.0, 180.0) - 90.0)


__all__ = ["REFINE_CHOICES", "SHIPPED_CTF_CAVEAT", "DeepAlignParams", "build_network", "check_model",
           "circular_distance_180", "inference_settings", "iter_align_with_model", "iter_train", "log_amplitudes",
           "network_angle_error", "network_crop", "network_edge_share", "particle_radius", "predict_relative_angles",
           "reconstruction_weight", "relative_angle_predictor", "train", "training_losses"]
