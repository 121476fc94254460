"""Train the pretrained denoisers shipped in the package (``cryoden denoise --method pretrained``).

Two models, one for tomograms (3D) and one for micrographs and particle stacks (2D). Each is the Self2Self
U-Net of :mod:`napari_cryoden.denoise.networks` (mask channel, smoothing channels, decoder dropout), trained
*supervised* on simulated (noisy, clean) pairs: the shipped model predicts in one pass on the whole input, and
``--time-budget S`` continues it self-supervised (Self2Self's loss) on the user's data, because the same network
also learnt to predict from masked inputs here (half of the steps feed Bernoulli-masked inputs, as Self2Self
does).

Training data, disjoint from every benchmark volume (the tomogram phantoms of ``benchmarks/`` use EMD-5625 and
EMD-1832 particles, the alignment and clustering benchmarks EMD-1832 and GroEL EMD-1080, the real crops are
cylindra's; none of these is read here):

* **3D**: ``--volumes`` phantoms from :func:`napari_cryoden.simulate.simulate_tomogram` (vesicles with
  bilayers, actin / intermediate / microtubule filaments, particles of **emd_3197** or of synthetic blob volumes
  from ``scripts/train_align_models.py``), 64×128×128 voxels of 5-20 Å, missing wedge ±45-70° or none, and for
  two thirds of them a 3D CTF (defocus 1.5-6 µm, the CTF or its absolute value after phase flipping);
* **2D**: particle images (projections of emd_3197 and blob volumes at random views, 64-128 px boxes, no, full
  or |CTF|) and micrograph-like slabs (means of 4-16 z-planes of the 3D phantoms);
* noise drawn afresh for every patch: SNR log-uniform in ``--snr`` (default 0.02-1), a third white, a third
  correlated with one Gaussian length per axis (0-2.5 voxels each, z-stretched often), a third isotropically
  correlated (0.5-2 voxels); the input is normalised as the library normalises the user's data (percentile clip
  and standardisation of the whole noisy volume), the target is the clean signal in the same units.

Seeded and counted in steps: the same seed, step count and thread count give the same weights.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/train_denoise_models.py             # both, into the package
    # the shipped 3D model: 4,000 steps as above (into /tmp/a), then 4,000 more on new phantoms at a lower rate
    OMP_NUM_THREADS=2 .venv/bin/python scripts/train_denoise_models.py --out /tmp/a
    OMP_NUM_THREADS=2 .venv/bin/python scripts/train_denoise_models.py --dims 3 --steps 4000 0 --seed 1 \
        --lr 3e-4 --init /tmp/a
    .venv/bin/python scripts/train_denoise_models.py --dims 3 --steps 300 --out /tmp/m  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT.parent / "shared" / "data" / "maps"
sys.path.insert(0, str(ROOT / "scripts"))
from train_align_models import blob_volume  # noqa: E402

from napari_cryoden.denoise.masks import bernoulli_mask  # noqa: E402
from napari_cryoden.denoise.networks import UNet, UNetConfig  # noqa: E402
from napari_cryoden.denoise.noise import block_for_lengths  # noqa: E402
from napari_cryoden.denoise.normalize import fit_normalization  # noqa: E402
from napari_cryoden.denoise.pretrained import PRETRAINED_VERSION, pretrained_kind  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.models import pretrained_path, save_model  # noqa: E402
from napari_cryoden.simulate import simulate_particles, simulate_tomogram  # noqa: E402
from napari_cryoden.simulate.ctf import electron_wavelength  # noqa: E402

BENCHMARK_VOLUMES = ("emd_5625", "emd_1832", "emd_1080 (GroEL)", "cylindra crops")  # never read here
PATCH = {3: 32, 2: 64}
BATCH = {3: 8, 2: 16}
MARGIN = 8  # voxels of noise generated around a patch, so the correlating blur has no edge


# ------------------------------------------------------------------------------------------ content
def particle_maps(rng: np.random.Generator, n_blobs: int) -> list[tuple[str, np.ndarray, float]]:
    """(name, map, voxel size Å) of emd_3197 and ``n_blobs`` synthetic blob volumes (voxel size drawn)."""
    m = read_mrc(MAPS / "emd_3197.map", mmap=False)
    out = [("emd_3197", np.asarray(m.data, np.float32).clip(0), float(m.pixel_size))]
    out += [(f"blobs_{i}", blob_volume(rng), float(rng.uniform(2.0, 5.0))) for i in range(n_blobs)]
    return out


def radial_ctf(shape, voxel: float, defocus: float, absolute: bool) -> np.ndarray:
    """A rotationally symmetric CTF (300 kV, Cs 2.7 mm, 7 % amplitude contrast) on the rfftn grid of ``shape``."""
    axes = [np.fft.fftfreq(n, d=voxel) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1], d=voxel)]
    k2 = sum(g**2 for g in np.meshgrid(*axes, indexing="ij"))
    lam = electron_wavelength(300.0)
    chi = np.pi * lam * defocus * k2 - 0.5 * np.pi * 2.7e7 * lam**3 * k2**2
    ctf = -(np.sqrt(1 - 0.07**2) * np.sin(chi) + 0.07 * np.cos(chi))
    return np.abs(ctf) if absolute else ctf


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return ((x - x.mean()) / max(float(x.std()), 1e-6)).astype(np.float32)


def tomograms(rng: np.random.Generator, n: int, maps, seed: int) -> tuple[list[np.ndarray], list[dict]]:
    """``n`` clean phantoms (unit variance) and what was drawn for each."""
    vols, drawn = [], []
    for i in range(n):
        name, pmap, pvoxel = maps[rng.integers(len(maps))]
        voxel = float(rng.uniform(5.0, 20.0))
        wedge = [None, 45.0, 55.0, 60.0, 70.0][rng.integers(5)]
        ph = simulate_tomogram(shape=(64, 128, 128), voxel_size=voxel, particle_map=pmap, particle_map_voxel_size=pvoxel,
                               n_vesicles=int(rng.integers(0, 7)), n_filaments=int(rng.integers(0, 7)),
                               n_particles=int(rng.integers(5, 61)), snr=1.0, missing_wedge=wedge,
                               seed=seed * 1000 + 500 + i)
        clean = np.asarray(ph.clean, np.float32)
        ctf = str(rng.choice(["none", "full", "abs"]))
        defocus = float(rng.uniform(15000.0, 60000.0))
        if ctf != "none":
            clean = np.fft.irfftn(np.fft.rfftn(clean) * radial_ctf(clean.shape, voxel, defocus, ctf == "abs"),
                                  s=clean.shape, axes=(0, 1, 2)).astype(np.float32)
        if not np.isfinite(clean).all() or clean.std() == 0:
            continue
        vols.append(unit(clean))
        drawn.append({"particle": name, "voxel": voxel, "wedge": wedge, "ctf": ctf,
                      "defocus": defocus if ctf != "none" else None})
    return vols, drawn


def images_2d(rng: np.random.Generator, maps, vols: list[np.ndarray], seed: int) -> tuple[list[np.ndarray], list[dict]]:
    """Stacks of clean 2D images (unit variance per stack): particle stacks and micrograph-like slabs."""
    stacks, drawn = [], []
    for i, (name, pmap, pvoxel) in enumerate(maps):
        box = int(rng.choice([64, 96, 128]))
        extent = pmap.shape[0] * pvoxel * 0.75  # Å spanned by the particle
        pixel = extent / (box * rng.uniform(0.3, 0.8))
        ctf = str(rng.choice(["none", "full", "abs"]))
        sim = simulate_particles(pmap, voxel_size=pvoxel, n_particles=96, box=box, pixel_size=pixel, ctf_mode=ctf,
                                 defocus_range=(8000.0, 30000.0), snr=None, max_shift=box / 10, seed=seed * 1000 + i)
        stacks.append(unit(sim.clean))
        drawn.append({"kind": "particles", "map": name, "box": box, "pixel": float(pixel), "ctf": ctf})
    for j, vol in enumerate(vols):
        slabs = []
        for _ in range(6):
            depth = int(rng.integers(4, 17))
            z = int(rng.integers(0, vol.shape[0] - depth + 1))
            slabs.append(vol[z:z + depth].mean(0))
        stacks.append(unit(np.stack(slabs)))
        drawn.append({"kind": "slabs", "volume": j})
    return stacks, drawn


# ------------------------------------------------------------------------------------------ batches
def noise_lengths(rng: np.random.Generator, dims: int) -> tuple[str, tuple[float, ...]]:
    kind = ["white", "axes", "isotropic"][rng.integers(3)]
    if kind == "white":
        return kind, (0.0,) * dims
    if kind == "isotropic":
        return kind, (float(rng.uniform(0.5, 2.0)),) * dims
    lengths = rng.uniform(0.0, 2.5, dims) * (rng.random(dims) < 0.7)
    if dims == 3 and rng.random() < 0.5:  # z-stretched: longer along z than in the plane
        lengths[0] = max(lengths[0], rng.uniform(1.0, 2.5))
        lengths[1:] *= 0.5
    if not lengths.any():
        lengths[0] = rng.uniform(0.5, 2.5)
    return kind, tuple(float(v) for v in lengths)


class Batches:
    """(input, target) batches: random crops of the clean sources, flipped and turned, with fresh noise."""

    def __init__(self, sources: list[np.ndarray], dims: int, snr: tuple[float, float], rng: np.random.Generator):
        self.sources, self.dims, self.snr, self.rng = sources, dims, snr, rng
        self.patch = PATCH[dims]
        # The clean values the normalisation is fitted on: noisy values are these plus noise of the drawn level
        # (the noise's marginal is Gaussian whatever its correlation, so white noise gives the same statistics).
        self.values = [rng.choice(s.ravel(), 100_000) for s in sources]

    def one(self, masked: bool):
        rng, dims, p = self.rng, self.dims, self.patch
        i = int(rng.integers(len(self.sources)))
        src = self.sources[i]
        if dims == 3:
            corner = [int(rng.integers(0, n - p + 1)) for n in src.shape]
            clean = src[corner[0]:corner[0] + p, corner[1]:corner[1] + p, corner[2]:corner[2] + p]
        else:
            k = int(rng.integers(len(src)))
            corner = [int(rng.integers(0, n - p + 1)) for n in src.shape[1:]]
            clean = src[k, corner[0]:corner[0] + p, corner[1]:corner[1] + p]
        for axis in range(dims):
            if rng.random() < 0.5:
                clean = np.flip(clean, axis)
        clean = np.rot90(clean, int(rng.integers(4)), axes=(dims - 2, dims - 1))
        snr = float(np.exp(rng.uniform(np.log(self.snr[0]), np.log(self.snr[1]))))
        sigma = 1.0 / np.sqrt(snr)
        kind, lengths = noise_lengths(rng, dims)
        noise = rng.standard_normal([p + 2 * MARGIN] * dims).astype(np.float32)
        if max(lengths) > 0:
            noise = gaussian_filter(noise, lengths, mode="wrap")
        noise = noise[(slice(MARGIN, MARGIN + p),) * dims]
        noise *= sigma / max(float(noise.std()), 1e-6)
        norm = fit_normalization(self.values[i] + sigma * rng.standard_normal(self.values[i].shape).astype(np.float32))
        x = norm.apply(clean + noise).astype(np.float32)
        y = ((clean - norm.mean) / norm.std).astype(np.float32)
        return x, y, block_for_lengths(lengths) if masked else None, {"snr": snr, "noise": kind}

    def batch(self, size: int, masked: bool, gen: torch.Generator):
        xs, ys = [], []
        for _ in range(size):
            x, y, block, _ = self.one(masked)
            x = torch.from_numpy(np.ascontiguousarray(x))[None, None]
            m = bernoulli_mask(x.shape, 0.7, generator=gen, block=block) if masked else torch.ones_like(x)
            xs.append(torch.cat([x * m, m], 1))
            ys.append(torch.from_numpy(np.ascontiguousarray(y))[None, None])
        return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------------ training
def train(dims: int, sources, *, steps: int, seed: int, snr, base: int, lr: float, log_every: int = 250,
          init: Path | None = None):
    rng = np.random.default_rng(seed + dims)
    torch.manual_seed(seed + dims)
    gen = torch.Generator().manual_seed(seed + dims)
    config = UNetConfig(dims=dims, base_channels=base, depth=3, dropout=0.3, mask_channel=True,
                        smooth_sigmas=(1.0, 2.0, 3.0))
    net = UNet(config)
    if init is not None:  # continue a model written by this script (its weights; a fresh optimiser and schedule)
        from napari_cryoden.models import load_model

        net.load_state_dict(load_model(init, kind=pretrained_kind(dims)).state_dict)
    net = net.to_device("cpu")
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    batches = Batches(sources, dims, snr, rng)
    val_rng = np.random.default_rng(seed + 99)
    val = Batches(sources, dims, snr, val_rng)
    val_x, val_y = val.batch(32, False, torch.Generator().manual_seed(seed + 99))
    history, recent, t0 = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimiser.param_groups:  # cosine to 2 % of the rate
            group["lr"] = max(lr * 0.02, lr * 0.5 * (1 + np.cos(np.pi * step / steps)))
        net.train()
        x, y = batches.batch(BATCH[dims], masked=step % 2 == 0, gen=gen)
        loss = ((net(x) - y) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        recent.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            net.eval()
            with torch.inference_mode():
                val_loss = float(((net(val_x) - val_y) ** 2).mean())
            history.append({"step": step, "loss": float(np.mean(recent[-log_every:])), "validation": val_loss,
                            "seconds": time.perf_counter() - t0})
            print(f"{dims}D step {step}: loss {history[-1]['loss']:.4f}, validation {val_loss:.4f} "
                  f"(identity {float((val_x[:, :1] - val_y).square().mean()):.3f}), "
                  f"{history[-1]['seconds']:.0f} s", flush=True)
    net.eval()
    return net.cpu(), config, history, time.perf_counter() - t0


def save(dims: int, net: UNet, config: UNetConfig, history, seconds: float, args, drawn, path: Path) -> None:
    from napari_cryoden.denoise.engine import TrainedDenoiser
    from napari_cryoden.denoise.normalize import Normalization
    from napari_cryoden.denoise.self_supervised import Self2SelfParams
    from napari_cryoden.models import ModelFile

    prior_runs, prior_steps = [], 0
    if args.init:  # the steps and runs of the model continued
        from napari_cryoden.models import load_model

        prior = load_model(args.init / path.name).extra["pretrained"]
        prior_runs = prior.get("runs") or [{"steps": prior["steps"], "seed": prior["seed"],
                                            "learning_rate": prior["learning_rate"], "init": False}]
        prior_steps = int(prior["steps"])
    params = Self2SelfParams(base_channels=config.base_channels, depth=config.depth, dropout=config.dropout,
                             smooth_sigmas=",".join(f"{s:g}" for s in config.smooth_sigmas), mask_block="1,1,1",
                             prediction="unmasked", patch_size=PATCH[dims] if dims == 3 else 96,
                             batch_size=BATCH[dims], learning_rate=args.lr)
    model = TrainedDenoiser(method="self2self", params=params, net_config=config, net=net,
                            normalization=Normalization(low=-1e30, high=1e30, mean=0.0, std=1.0))
    mf = model.to_model_file()
    mf = ModelFile(kind=pretrained_kind(dims), config=mf.config, state_dict=mf.state_dict,
                   normalization=mf.normalization,
                   extra={"pretrained": {
                       "version": PRETRAINED_VERSION, "dims": dims, "steps": args.steps[dims] + prior_steps,
                       "runs": prior_runs + [{"steps": args.steps[dims], "seed": args.seed, "learning_rate": args.lr,
                                              "init": bool(args.init)}], "seed": args.seed,
                       "seconds": seconds, "history": history, "script": "scripts/train_denoise_models.py",
                       "snr": list(args.snr), "learning_rate": args.lr, "torch": str(torch.__version__),
                       "threads": torch.get_num_threads(),
                       "training_data": ("simulated tomogram phantoms (vesicles, filaments, particles of emd_3197 "
                                         "and synthetic blob volumes), 5-20 Å voxels, missing wedge or none, "
                                         "no/full/|CTF|" + ("; particle projections of the same maps and slabs of "
                                                            "the phantoms" if dims == 2 else "")
                                         + f"; SNR {args.snr[0]:g}-{args.snr[1]:g}, white, per-axis and isotropic "
                                           "correlated noise; never " + ", ".join(BENCHMARK_VOLUMES)),
                       "drawn": drawn}})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, mf)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[3, 2], choices=(2, 3))
    ap.add_argument("--steps", type=int, nargs=2, default=None, metavar=("STEPS_3D", "STEPS_2D"),
                    help="training steps of the 3D and the 2D model (default 4000 and 5000)")
    ap.add_argument("--volumes", type=int, default=32, help="simulated tomogram phantoms")
    ap.add_argument("--blobs", type=int, default=6, help="synthetic blob volumes besides emd_3197")
    ap.add_argument("--snr", type=float, nargs=2, default=(0.02, 1.0))
    ap.add_argument("--base", type=int, default=16, help="U-Net channels at the first level")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the models (default: the package's)")
    ap.add_argument("--init", type=Path, default=None,
                    help="folder of models written by this script to continue (another --seed draws new phantoms and noise)")
    args = ap.parse_args()
    steps = args.steps or (4000, 5000)
    args.steps = {3: steps[0], 2: steps[1]}
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    maps = particle_maps(rng, args.blobs)
    vols, drawn3 = tomograms(rng, args.volumes, maps, args.seed)
    print(f"simulated {len(vols)} phantoms ({time.perf_counter() - t0:.0f} s)", flush=True)
    for dims in args.dims:
        if dims == 3:
            sources, drawn = vols, drawn3
        else:
            sources, drawn = images_2d(np.random.default_rng(args.seed + 2), maps, vols, args.seed)
            print(f"made {sum(len(s) for s in sources)} clean 2D images", flush=True)
        init = (args.init / Path(pretrained_path(pretrained_kind(dims))).name) if args.init else None
        net, config, history, seconds = train(dims, sources, steps=args.steps[dims], seed=args.seed, snr=args.snr,
                                              base=args.base, lr=args.lr, init=init)
        path = (args.out / Path(pretrained_path(pretrained_kind(dims))).name) if args.out \
            else pretrained_path(pretrained_kind(dims))
        save(dims, net, config, history, seconds, args, drawn, path)


if __name__ == "__main__":
    sys.exit(main())
