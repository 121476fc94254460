"""Train the UDL and JUDL models shipped in the package (``cryoden align --model pretrained``).

Training data, disjoint from every benchmark map (emd_5625, emd_1832 and GroEL emd_1080 are never read here):

* projections of **emd_3197** (``../shared/data/maps``, 20³ voxels of 11.4 Å) at random views, and
* projections of **synthetic asymmetric volumes**: 6-24 Gaussian blobs of random sizes and weights inside a
  sphere, some of them elongated (filament- and membrane-like pieces), made here from the seed;

each group of particles one view of one volume at a random pixel size (the particle spanning 30-85 % of the
box), in a 64² or 128² box, rotated by U(0, 360)°, shifted by up to box / 10, with no CTF, the full CTF or
its absolute value (defocus 1-3 µm), at an SNR drawn log-uniformly from ``--snr`` (default 0.5 to 1: on the
tuning map emd_5625, models trained on 0.02-1 or 0.1-1 with a curriculum were no better at SNR 0.05-1 than
this one; ``docs/align.md`` has the figures). The network always sees a ``spectrum_size``² map of
log-amplitudes (the central frequencies; with ``--spectrum-bin 2`` every second one), so one model serves every box (``config["any_box"]``); at inference ``cryoden align`` shows it
the window around the particle (``align.udl.inference_settings``).

Options tried on the tuning set and not kept for the shipped models (``docs/align.md`` has the figures):
``--physical`` (the synthetic particles 100-400 Å across instead of 36 Å, so the CTF acts where it acts on real
particles), ``--window`` (train on that window rather than the whole box), ``--spectrum-bin 2`` (a map that
reaches twice as far in frequency), ``--reference-pairs F`` (UDL pairs a clean reference with a particle).

Training is the library's own losses (:func:`napari_cryoden.align.udl.training_losses`) with pairs drawn
within one group (UDL: two particles of the group; JUDL: the group's clean projection and a particle, plus
the reconstruction term by step). Seeded and counted in steps (``--seconds`` trains for a wall time instead);
the step count, the data drawn and the versions are stored in the model file.

    OMP_NUM_THREADS=1 python scripts/train_align_models.py     # both shipped models, as in the package
    python scripts/train_align_models.py --snr 0.02 1 --steps 12000 --out /tmp/models
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT.parent / "shared" / "data" / "maps"
BENCHMARK_MAPS = ("emd_5625", "emd_1832", "emd_1080")  # never used for training

from napari_cryoden.align.networks import ARCHITECTURE, AmplitudeAutoencoder, SiameseAngleRegressor  # noqa: E402
from napari_cryoden.align.udl import (  # noqa: E402
    DeepAlignParams,
    checkerboard_halves,
    log_amplitudes,
    network_crop,
    reconstruction_weight,
    training_losses,
)
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.models import ModelFile, pretrained_path, save_model  # noqa: E402
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack  # noqa: E402

SPECTRUM = 32


def blob_volume(rng: np.random.Generator, box: int = 48) -> np.ndarray:
    """An asymmetric synthetic particle: Gaussian blobs (some elongated) inside a sphere of radius box / 3."""
    z, y, x = np.mgrid[:box, :box, :box].astype(np.float32) - box / 2
    vol = np.zeros((box, box, box), np.float32)
    for _ in range(rng.integers(6, 25)):
        centre = rng.normal(0, box / 8, 3).clip(-box / 3, box / 3)
        axes = rng.uniform(1.5, 5.0, 3) * (rng.uniform(1.5, 4.0) if rng.random() < 0.3 else 1.0) ** np.eye(3)[
            rng.integers(3)]
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        d = np.stack([z - centre[0], y - centre[1], x - centre[2]], -1) @ rot
        vol += rng.uniform(0.3, 1.0) * np.exp(-0.5 * ((d / axes) ** 2).sum(-1))
    return vol


def volumes(rng: np.random.Generator, n_blobs: int, physical: bool = False) -> list[tuple[str, np.ndarray, float]]:
    """(name, volume, voxel size) of emd_3197 and ``n_blobs`` synthetic volumes."""
    m = read_mrc(MAPS / "emd_3197.map", mmap=False)
    vol = np.asarray(m.data, np.float32)
    r = np.sqrt(sum(c**2 for c in np.meshgrid(*[np.arange(n) - n / 2 + 0.5 for n in vol.shape], indexing="ij")))
    sphere = np.clip((vol.shape[0] / 2 - r) / 2.0, 0, 1)  # soft sphere: the cube's edges do not project
    out = [("emd_3197", (vol - np.median(vol)).clip(0) * sphere, float(m.pixel_size))]
    # each synthetic particle 100-400 Å across (log-uniform): the CTF then acts at the frequencies it acts on in
    # real data (with 1 Å voxels the blobs were 36 Å particles, whose window saw CTF rings real particles never show)
    out += [(f"blobs_{i}", blob_volume(rng), float(np.exp(rng.uniform(np.log(100), np.log(400)))) / (48 * 0.75))
            for i in range(n_blobs)] if physical else [(f"blobs_{i}", blob_volume(rng), 1.0) for i in range(n_blobs)]
    return out


def group(rng: np.random.Generator, vols, n: int, seed: int, snr_range=(0.02, 1.0), *, spectrum_bin: int = 1,
          crop: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One view of one volume as a stack: (n, 2, S, S) log-amplitudes of the particles' two pixel halves, the
    (1, 2, S, S) of the clean centred projection (JUDL's reference), and what was drawn."""
    name, vol, voxel = vols[rng.integers(len(vols))]
    box = int(rng.choice([64, 128]))
    extent = vol.shape[0] * 0.75  # the volume's content spans about this many voxels
    pixel = voxel * extent / (box * rng.uniform(0.3, 0.85))
    reference = project_map(resample_map(vol, voxel_size=voxel, pixel_size=pixel, box=box),
                            rot=rng.uniform(0, 360), tilt=np.rad2deg(np.arccos(rng.uniform(-1, 1))), psi=0.0)[0]
    snr = float(np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]))))
    ctf = str(rng.choice(["none", "full", "abs"]))
    sim = simulate_alignment_stack(reference.astype(np.float32), pixel_size=pixel, n_per_image=n, max_shift=box / 10,
                                   integer_shifts=False, ctf_mode=ctf, defocus_range=(10000.0, 30000.0), snr=snr,
                                   seed=seed)
    images, reference = torch.as_tensor(sim.images), torch.as_tensor(reference.astype(np.float32))
    side = network_crop(reference.numpy(), box, max_shift=box / 10, size=SPECTRUM * spectrum_bin) if crop else box
    lo = (box - side) // 2  # the window cryoden align gives the shipped models
    images, reference = images[:, lo:lo + side, lo:lo + side], reference[lo:lo + side, lo:lo + side]
    h1, h2 = checkerboard_halves(images.contiguous())
    halves = torch.cat([log_amplitudes(h, size=SPECTRUM, spectrum_bin=spectrum_bin) for h in (h1, h2)], 1)
    ref = log_amplitudes(reference[None].contiguous(), size=SPECTRUM, spectrum_bin=spectrum_bin).expand(-1, 2, -1, -1)
    return halves, ref, {"volume": name, "box": box, "window": side, "pixel": float(pixel), "snr": snr, "ctf": ctf}


def _member(starts: torch.Tensor, sizes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random particle index within each drawn group (groups are contiguous: ``starts``, ``sizes``)."""
    return starts + (torch.rand(len(starts), generator=gen) * sizes).long()


def snr_floor(step: int, warm: int, ramp: int, lowest: float) -> float:
    """The curriculum: only views of SNR >= 0.5 for the first ``warm`` steps (at the full range from the start
    the network did not learn within 5,000 steps; on clear views it does within 1,500), then the floor falls
    log-linearly to ``lowest`` over ``ramp`` steps."""
    t = min(1.0, max(0.0, (step - warm) / max(ramp, 1)))
    return float(np.exp(np.log(0.5) + t * (np.log(lowest) - np.log(0.5))))


def train(joint: bool, data, params: DeepAlignParams, *, seconds: float | None, steps: int | None, seed: int,
          warm: int = 2000, ramp: int = 4000, reference_pairs: float = 0.0):
    halves, refs, owner, snrs = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = SiameseAngleRegressor(SPECTRUM, base=params.base_channels, levels=params.levels)
    ae = AmplitudeAutoencoder() if joint else None
    modules = list(net.parameters()) + (list(ae.parameters()) if ae is not None else [])
    optimiser = torch.optim.Adam(modules, lr=params.learning_rate)
    starts = torch.as_tensor(np.r_[0, np.cumsum(np.bincount(owner))[:-1]])
    sizes = torch.as_tensor(np.bincount(owner))
    history, recent, t0, step = [], [], time.perf_counter(), 0
    net.train()
    while (steps is None or step < steps) and (seconds is None or time.perf_counter() - t0 < seconds):
        bs = params.batch_size
        eligible = torch.as_tensor(np.flatnonzero(snrs >= snr_floor(step, warm, ramp, snrs.min())))
        g = eligible[torch.randint(len(eligible), (bs,), generator=gen)]  # pairs within one view of one volume
        b = halves[_member(starts[g], sizes[g], gen)]
        swap = torch.rand(bs, generator=gen) < 0.5
        b = torch.where(swap[:, None, None, None], b.flip(1), b)
        a = refs[g] if joint else halves[_member(starts[g], sizes[g], gen)]
        if not joint and reference_pairs > 0:  # as at inference: the clean reference against a particle
            use_ref = torch.rand(bs, generator=gen) < reference_pairs
            a = torch.where(use_ref[:, None, None, None], refs[g], a)
        rot = torch.rand((4, bs), generator=gen) * 360.0
        losses = training_losses(net, ae, net, a, b, rot, half_pairs_of_a=not joint)  # as the shipped models
        weight = min(reconstruction_weight(params, step), 5 * params.reconstruction_weight) if joint else 0.0
        loss = losses["angle"] + params.half_pair_weight * losses["half"] + weight * losses["reconstruction"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        recent.append((float(losses["angle"].detach()), float(losses["half"].detach())))
        if step % 50 == 0:
            angle, half = np.mean(recent[-50:], axis=0)
            history.append({"step": step, "angle_loss": float(angle), "half_loss": float(half),
                            "seconds": time.perf_counter() - t0})
            if step % 500 == 0:
                print(f"{'judl' if joint else 'udl'} step {step}: angle {history[-1]['angle_loss']:.2f}°, "
                      f"half {history[-1]['half_loss']:.2f}°, {history[-1]['seconds']:.0f} s", flush=True)
    state = {"net": net.state_dict()}
    if ae is not None:
        state["autoencoder"] = ae.state_dict()
    return state, step, history, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4000, help="training steps per model")
    ap.add_argument("--seconds", type=float, default=None, help="train for this long instead of --steps")
    ap.add_argument("--groups", type=int, default=160, help="views (stacks) simulated")
    ap.add_argument("--per-group", type=int, default=64, help="particles per view")
    ap.add_argument("--blobs", type=int, default=24, help="synthetic volumes besides emd_3197")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snr", type=float, nargs=2, default=(0.5, 1.0),
                    help="SNR range of the views (log-uniform; the shipped models: 0.5 1, see docs/align.md)")
    ap.add_argument("--reference-pairs", type=float, default=0.0,
                    help="UDL: fraction of pairs that are (clean reference, particle) instead of two particles")
    ap.add_argument("--physical", action="store_true",
                    help="synthetic particles 100-400 Å across (default: 1 Å voxels, 36 Å particles, as shipped)")
    ap.add_argument("--spectrum-bin", type=int, default=1, choices=(1, 2),
                    help="2: the network's 32² map reaches twice as far in frequency (log_amplitudes)")
    ap.add_argument("--window", action="store_true",
                    help="train on the window cryoden align crops around the particle (default: the whole box, "
                         "as shipped)")
    ap.add_argument("--methods", nargs="+", default=["udl", "judl"], choices=("udl", "judl"))
    ap.add_argument("--out", type=Path, default=None, help="folder for the models (default: the package's)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    vols = volumes(rng, args.blobs, physical=args.physical)
    halves, refs, owner, drawn = [], [], [], []
    for i in range(args.groups):
        h, r, d = group(rng, vols, args.per_group, seed=args.seed * 100_000 + i, snr_range=args.snr,
                        spectrum_bin=args.spectrum_bin, crop=args.window)
        halves.append(h)
        refs.append(r)
        owner.append(np.full(len(h), i))
        drawn.append(d)
    data = (torch.cat(halves), torch.cat(refs), np.concatenate(owner), np.array([d["snr"] for d in drawn]))
    print(f"simulated {len(data[0])} particles in {args.groups} views of {len(vols)} volumes "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    params = DeepAlignParams()
    for method in args.methods:
        joint = method == "judl"
        state, steps, history, seconds = train(joint, data, params, seconds=args.seconds,
                                               steps=None if args.seconds else args.steps, seed=args.seed,
                                               reference_pairs=args.reference_pairs)
        config = {"architecture": ARCHITECTURE, "box": None, "any_box": True, "spectrum_size": SPECTRUM,
                  "spectrum_bin": args.spectrum_bin,
                  "base_channels": params.base_channels, "levels": params.levels, "joint": joint}
        extra = {"history": history, "params": dict(params.__dict__), "steps": steps, "seconds": seconds,
                 "seed": args.seed, "script": "scripts/train_align_models.py",
                 "training_data": f"emd_3197 and {args.blobs} synthetic blob volumes, {args.groups} views x "
                                  f"{args.per_group} particles, 64²/128², SNR {args.snr[0]:g}-{args.snr[1]:g}, "
                                  + ("blobs 100-400 Å, " if args.physical else "blobs at 1 Å voxels, ")
                                  + ("cropped window, " if args.window else "whole box, ")
                                  + f"spectrum bin {args.spectrum_bin}, "
                                  + (f"UDL reference pairs {args.reference_pairs:g}, " if not joint else "") +
                                  "no/full/|CTF|; never "
                                  + ", ".join(BENCHMARK_MAPS),
                 "groups": drawn, "torch": str(torch.__version__), "threads": torch.get_num_threads()}
        model = ModelFile(kind=f"align/{method}", config=config, state_dict=state, extra=extra)
        path = (args.out / f"align_{method}.pt") if args.out else pretrained_path(f"align/{method}")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(path, model)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {steps} steps in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
