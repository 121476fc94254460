"""Denoising tomograms, side by side with peers, on a tuning set and a held-out set (issue 13, item 5).

Sets (ground truth known; 64×256×256 voxels of 10 Å unless ``--quick``):

* **tuning** — phantoms with EMD-5625 particles (phantom seed 101), SNR 0.1, noise white, z-stretched
  (Gaussian lengths z/y/x 2.0/0.7/0.7 voxels) and isotropically correlated (1.0 voxel). Defaults are chosen here
  only (``benchmarks/denoise_pretrained_tuning.py`` for the pretrained model's fine-tuning).
* **held-out** — phantoms with EMD-1832 particles (phantom seeds 201-203, one per run seed), SNR 0.15, noise
  white, z-stretched (1.5/0.5/0.6) and isotropic (0.8): other particles, phantoms, SNR and noise lengths.
* **real** — the real tomogram crop ``../shared/data/tomograms/cylindra_14pf_MT.mrc`` plus white noise of
  SNR 0.2 against the crop's variance (the crop is the reference): real content, simulated noise.

Neither set is in the shipped pretrained models' training data (``scripts/train_denoise_models.py`` reads
emd_3197 and synthetic blobs only).

Methods, each run with seeds ``--seeds`` (default 1 2 3: the run seed is the noise seed, the phantom seed of
the held-out set and every method's seed): raw; the oracle Gaussian (σ chosen against the reference: a bound
no user has); careamics Noise2Void (``--budget`` s, seeded, its structured mask spanning the true in-plane
noise correlation on correlated noise); Topaz-Denoise's two pretrained 3D U-Nets; our ``self2self`` and
``fourier-n2n`` at their defaults with ``--budget`` s (self2self) and ``--budget`` − 30 s (fourier-n2n, whose
averaged prediction takes longer) of training, and ``pretrained`` without and with 30 s of fine-tuning; the
ablation ``untrained`` is ``pretrained``'s own call with the weights freshly initialised (seeded), which says
what the shipped training adds (the oracle Gaussian is the classical step it replaces); the ablation
``self2self-no-partner`` is ``self2self`` with ``partner="none"`` (on correlated noise: its student alone, without
the R2R-trained partner it is averaged with).
*total* is the wall time of the whole call (measuring the noise, normalising, loading, training, predicting;
N2V: its configuration, training and prediction); PSNR/SSIM after a least-squares affine fit to the reference.

Resumable: each (set, noise, seed, method) run is appended to ``benchmarks/results/denoise_tomograms_runs.jsonl``
and skipped when it is there (``--again`` reruns); the tables report every run there (the latest per key).

    .venv/bin/python benchmarks/denoise_tomograms.py --sets held-out real --methods raw gaussian topaz pretrained
    .venv/bin/python benchmarks/denoise_tomograms.py --report-only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import RESULTS, append_run, machine, machine_line, read_runs, write_section  # noqa: E402

from napari_cryoden import metrics  # noqa: E402
from napari_cryoden.denoise import get_method  # noqa: E402
from napari_cryoden.denoise.engine import default_params, iter_predict, iter_train  # noqa: E402
from napari_cryoden.denoise.noise import block_for_lengths  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.progress import run  # noqa: E402
from napari_cryoden.report import markdown_table  # noqa: E402
from napari_cryoden.sample_data import builtin_map  # noqa: E402
from napari_cryoden.simulate import add_noise, simulate_tomogram  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
RUNS = RESULTS / "denoise_tomograms_runs.jsonl"
SETS = {
    "tuning": {"map": "emd_5625", "snr": 0.1, "phantom_seed": lambda s: 101,
               "noise": {"white": 0.0, "z-stretched": (2.0, 0.7, 0.7), "isotropic": 1.0}},
    "held-out": {"map": "emd_1832", "snr": 0.15, "phantom_seed": lambda s: 200 + s,
                 "noise": {"white": 0.0, "z-stretched": (1.5, 0.5, 0.6), "isotropic": 0.8}},
    "real": {"map": None, "snr": 0.2, "noise": {"white": 0.0}},
}
METHODS = ("raw", "gaussian", "n2v", "topaz-10a", "topaz-20a", "self2self", "self2self-no-partner", "fourier-n2n",
           "pretrained", "pretrained+30s", "untrained")
LABELS = {"raw": "raw", "gaussian": "oracle Gaussian", "n2v": "careamics N2V", "topaz-10a": "Topaz 3D unet-3d-10a",
          "topaz-20a": "Topaz 3D unet-3d-20a", "self2self": "ours: self2self", "fourier-n2n": "ours: fourier-n2n",
          "pretrained": "ours: pretrained", "pretrained+30s": "ours: pretrained + 30 s",
          "untrained": "ablation: pretrained's network untrained",
          "self2self-no-partner": "ablation: self2self without its partner (the student alone)"}
PEERS = ("n2v", "topaz-10a", "topaz-20a")


def _map(name: str):
    if name == "emd_5625":
        m = builtin_map()
        return np.asarray(m.data), float(m.pixel_size)
    m = read_mrc(SHARED / "maps" / f"{name}.map", mmap=False)
    return np.asarray(m.data, np.float32), float(m.pixel_size)


def dataset(set_name: str, noise: str, seed: int, quick: bool):
    """(clean, noisy, noise lengths z/y/x) of one run."""
    spec = SETS[set_name]
    lengths = spec["noise"][noise]
    if set_name == "real":
        clean = np.asarray(read_mrc(SHARED / "tomograms" / "cylindra_14pf_MT.mrc").data, dtype=np.float32)
    else:
        pmap, voxel = _map(spec["map"])
        shape = (32, 128, 128) if quick else (64, 256, 256)
        ph = simulate_tomogram(shape=shape, voxel_size=10.0, particle_map=pmap, particle_map_voxel_size=voxel,
                               n_vesicles=6, n_filaments=5, n_particles=40, snr=1.0, seed=spec["phantom_seed"](seed))
        clean = ph.clean.astype(np.float32)
    if np.max(lengths) == 0:
        noisy = add_noise(clean, spec["snr"], rng=seed)
    else:
        noisy = add_noise(clean, spec["snr"], rng=seed, colour="coloured", correlation_length=lengths)
    return clean, noisy, tuple(np.broadcast_to(np.asarray(lengths, float), (3,)))


# ------------------------------------------------------------------------------------------ methods
def oracle_gaussian(ref, noisy, **_):
    best = None
    for sigma in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0):
        out = gaussian_filter(noisy, sigma)
        p = metrics.psnr(ref, out, fit=True)
        if best is None or p > best[0]:
            best = (p, sigma, out)
    return best[2], {"sigma": best[1]}


def ours(method: str, budget: float, noisy, seed: int, **overrides):
    params = default_params(method, dims=3, time_budget=budget, epochs=100000, **overrides)
    t0 = time.perf_counter()
    model = run(iter_train(noisy, params, method=method, seed=seed))
    t1 = time.perf_counter()
    out = run(iter_predict(model, noisy, seed=seed))
    info = {"train s": t1 - t0, "predict s": time.perf_counter() - t1, "steps": len(model.history)}
    if model.method == "self2self":
        info["mask block"] = model.params.mask_block
        if model.partner is not None:
            info["partner"] = "r2r"
    return out, info


def pretrained(noisy, seed: int, fine_tune: float = 0.0, **_):
    method = get_method("pretrained")
    events = []
    out = run(method.run(noisy, method.default_params(dims=3, time_budget=fine_tune), seed=seed), events.append)
    train = [e for e in events if e.stage == "train"]
    predict = [e for e in events if e.stage == "predict"]
    info = {"steps": train[-1].step} if train else {}
    if train:  # which self-supervised loss fine-tuned it (the noise kind decides: docs/methods.md)
        info["fine-tuned by"] = "r2r" if "Recorrupted" in events[0].info.get("noise", "") else "self2self"
    if predict:
        info["predict s"] = predict[-1].elapsed
    return out, info


def pretrained_untrained(noisy, seed: int, **_):
    """The ablation: the shipped architecture and settings with freshly initialised weights (seeded), no training."""
    import torch

    import napari_cryoden.denoise.pretrained as shipped
    from napari_cryoden.denoise.networks import UNet

    load = shipped.load_shipped

    def untrained(dims, path=None):
        model = load(dims, path)
        torch.manual_seed(seed)
        model.net = UNet(model.net_config)
        if model.student is not None:
            model.student = UNet(model.student.config)
        return model

    shipped.load_shipped = untrained
    try:
        return pretrained(noisy, seed)
    finally:
        shipped.load_shipped = load


def in_plane_span(lengths) -> int:
    """N2V's structured-mask span: 2ℓ + 1 with ℓ the in-plane reach of the noise correlation (the rule of our
    Self2Self blocks)."""
    return block_for_lengths([max(lengths[1:])])[0]


def careamics_n2v(budget: float, noisy, seed: int, lengths, **_):
    sys.path.insert(0, str(HERE / "_stubs"))
    from careamics import CAREamist
    from careamics.config import create_n2v_config
    from careamics.config.algorithms.n2v_manipulation.n2v_manipulate_config import StructMaskConfig
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import Timer

    seed_everything(seed, workers=True)
    z = 32 if noisy.shape[0] >= 64 else 16
    yx = 64 if min(noisy.shape[1:]) >= 128 else 32
    cfg = create_n2v_config(experiment_name="bench", data_type="array", axes="ZYX", patch_size=[z, yx, yx],
                            batch_size=4, num_epochs=10000, n_val_patches=2)
    cfg.data_config.seed = seed
    cfg.algorithm_config.n2v_config.seed = seed
    info = {}
    span = in_plane_span(lengths)
    if span > 1:  # structN2V: mask the in-plane neighbours the noise is correlated with (its best documented use)
        cfg.algorithm_config.n2v_config.struct_mask = StructMaskConfig(axis="square", span=span)
        info["struct mask"] = f"square {span}"
    with tempfile.TemporaryDirectory() as tmp:
        cam = CAREamist(cfg, work_dir=tmp, callbacks=[Timer(duration=timedelta(seconds=budget))],
                        enable_progress_bar=False)
        t0 = time.perf_counter()
        cam.train(train_data=noisy)
        t1 = time.perf_counter()
        pred = cam.predict(noisy, axes="ZYX", data_type="array", tile_size=(z, 2 * yx, 2 * yx),
                           tile_overlap=(8, yx // 2, yx // 2))
    out = np.asarray(pred[0] if isinstance(pred, tuple) else pred).reshape(noisy.shape)
    return out, {**info, "train s": t1 - t0, "predict s": time.perf_counter() - t1}


def topaz_3d(name: str, noisy, **_):
    sys.path.insert(0, str(HERE / "_stubs"))
    import topaz
    import torch
    from topaz.denoise import Denoise3D
    from topaz.denoising.models import UDenoiseNet3D, model_name_dict

    # topaz's own loader needs pkg_resources (gone from current setuptools); load the shipped weights directly.
    weights = Path(topaz.__file__).parent / "pretrained" / "denoise" / model_name_dict[name]
    model = UDenoiseNet3D(base_width=7)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=False))
    model.eval()
    # Denoise() accepts only an exact nn.Module/nn.Sequential type: wrap the network.
    den = Denoise3D(torch.nn.Sequential(model), use_cuda=torch.cuda.is_available(), dims=3)
    t0 = time.perf_counter()
    out = den.denoise(noisy.astype(np.float32), patch_size=64, padding=16, verbose=False)
    return out, {"predict s": time.perf_counter() - t0}


def method_call(name: str, budget: float):
    return {
        "raw": lambda ref, noisy, **kw: (noisy, {}),
        "gaussian": oracle_gaussian,
        "n2v": lambda ref, noisy, **kw: careamics_n2v(budget, noisy, **kw),
        "topaz-10a": lambda ref, noisy, **kw: topaz_3d("unet-3d-10a", noisy),
        "topaz-20a": lambda ref, noisy, **kw: topaz_3d("unet-3d-20a", noisy),
        "self2self": lambda ref, noisy, **kw: ours("self2self", budget, noisy, kw["seed"]),
        "self2self-no-partner": lambda ref, noisy, **kw: ours("self2self", budget, noisy, kw["seed"], partner="none"),
        "fourier-n2n": lambda ref, noisy, **kw: ours("fourier-n2n", max(10.0, budget - 30.0), noisy, kw["seed"]),
        "pretrained": lambda ref, noisy, **kw: pretrained(noisy, kw["seed"]),
        "pretrained+30s": lambda ref, noisy, **kw: pretrained(noisy, kw["seed"], fine_tune=30.0),
        "untrained": lambda ref, noisy, **kw: pretrained_untrained(noisy, kw["seed"]),
    }[name]


def key(row: dict) -> tuple:
    return row["set"], row["noise"], int(row["seed"]), row["method"], bool(row.get("quick", False))


def measure(set_name, noise, seed, method, budget, quick, clean, noisy, lengths) -> dict:
    fn = method_call(method, budget)
    t0 = time.perf_counter()
    try:
        out, info = fn(clean, noisy, seed=seed, lengths=lengths)
        total = time.perf_counter() - t0 if method not in ("raw", "gaussian") else 0.0
        p, s = metrics.psnr(clean, out, fit=True), metrics.ssim(clean, out, fit=True)
        failed = None
    except Exception as exc:  # a peer that fails is reported as such, not dropped silently
        traceback.print_exc()
        p = s = total = float("nan")
        info, failed = {}, f"{exc.__class__.__name__}: {exc}"[:160]
    predict = info.pop("predict s", None)
    train = info.pop("train s", None)
    return {"set": set_name, "noise": noise, "seed": seed, "method": method, "quick": quick, "budget": budget,
            "shape": list(noisy.shape), "psnr": p, "ssim": s, "total s": total, "train s": train,
            "predict s": predict, "Mvox/s": noisy.size / predict / 1e6 if predict else None,
            "info": {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in info.items()},
            "failed": failed}


# ------------------------------------------------------------------------------------------- report
def _ms(values, digits=2) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not v.size:
        return "–"
    return f"{v.mean():.{digits}f}" if v.size == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def tables(rows: list[dict], quick: bool) -> tuple[str, list[dict]]:
    latest = {}
    for r in rows:
        if bool(r.get("quick", False)) == quick:
            latest[key(r)] = r
    parts, out_rows = [], []
    titles = {"tuning": "Tuning set (defaults were chosen here)", "held-out": "Held-out set",
              "real": "Real crop (cylindra 14-pf microtubule, white noise added; held-out)"}
    for set_name in SETS:
        runs = [r for r in latest.values() if r["set"] == set_name]
        if not runs:
            continue
        table = []
        for noise in SETS[set_name]["noise"]:
            by_method = {m: [r for r in runs if r["noise"] == noise and r["method"] == m] for m in METHODS}
            means = {m: np.mean([r["psnr"] for r in rs]) for m, rs in by_method.items()
                     if rs and all(np.isfinite(r["psnr"]) for r in rs)}
            # Δ is paired per seed (each held-out seed is another phantom) against the baseline best on average.
            candidates = [m for m in ("gaussian", *PEERS) if m in means]
            best = max(candidates, key=lambda m: means[m]) if candidates else None
            base = {r["seed"]: r["psnr"] for r in by_method.get(best, [])} if best else {}
            for m, rs in by_method.items():
                if not rs:
                    continue
                rs = sorted(rs, key=lambda r: r["seed"])
                notes = sorted({f"{k}={v}" for r in rs for k, v in r["info"].items() if k not in ("steps",)})
                steps = [r["info"].get("steps") for r in rs if r["info"].get("steps") is not None]
                if steps and max(steps) > 0:
                    notes.insert(0, f"steps {min(steps)}-{max(steps)}")
                elif m == "pretrained+30s":
                    notes.insert(0, "correlated noise measured: the shipped model alone, not fine-tuned")
                failed = [r["failed"] for r in rs if r.get("failed")]
                if m == best:
                    notes.insert(0, "the Δ baseline")
                row = {"noise": noise, "method": LABELS[m], "seeds": ",".join(str(r["seed"]) for r in rs),
                       "PSNR (dB)": _ms([r["psnr"] for r in rs]), "SSIM": _ms([r["ssim"] for r in rs], 3),
                       "Δ vs best of Gaussian and peers (dB)": (_ms([r["psnr"] - base[r["seed"]] for r in rs
                                                                     if r["seed"] in base])
                                                                if best and m not in ("raw", best) else "–"),
                       "total (s)": _ms([r["total s"] for r in rs], 0) if m not in ("raw", "gaussian") else "–",
                       "predict Mvox/s": _ms([r["Mvox/s"] if r["Mvox/s"] else (r["shape"][0] * r["shape"][1] *
                                                                                r["shape"][2] / r["total s"] / 1e6
                                                                                if m == "pretrained" else None)
                                              for r in rs], 3),
                       "note": "; ".join(notes + [f"failed: {f}" for f in failed[:1]])[:140]}
                table.append(row)
                out_rows.append({"set": set_name, **row})
        shape = "×".join(str(v) for v in runs[0]["shape"])
        commits = sorted({r.get("commit", "?") for r in runs})
        whens = sorted({r.get("when", "?")[:10] for r in runs})
        loads = [r.get("load") for r in runs if r.get("load") is not None]
        parts.append(f"### {titles[set_name]}\n\n{shape} voxels; runs of {', '.join(whens)} at "
                     f"{', '.join(commits)}; load average {min(loads):.1f}-{max(loads):.1f} during the runs.\n\n"
                     + markdown_table(table))
    return "\n\n".join(parts), out_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["held-out", "real"], choices=list(SETS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS),
                    help=f"any of {', '.join(METHODS)}; 'topaz' means both Topaz models")
    noises = list(SETS["held-out"]["noise"])
    ap.add_argument("--noises", nargs="+", default=noises, choices=noises,
                    help="noise kinds to run (the real set has white only)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds of N2V and self2self")
    ap.add_argument("--quick", action="store_true", help="32×128×128 phantoms, for a smoke run")
    ap.add_argument("--again", action="store_true", help="rerun runs already in the log")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    chosen = [m for m in METHODS if m in args.methods or (m.startswith("topaz") and "topaz" in args.methods)]
    done = {key(r) for r in read_runs(RUNS)}
    if not args.report_only:
        for set_name in args.sets:
            for noise in [n for n in SETS[set_name]["noise"] if n in args.noises]:
                for seed in args.seeds:
                    todo = [m for m in chosen if args.again or (set_name, noise, seed, m, args.quick) not in done]
                    if not todo:
                        continue
                    clean, noisy, lengths = dataset(set_name, noise, seed, args.quick)
                    print(f"== {set_name} {noise} seed {seed} {noisy.shape}: {', '.join(todo)}", flush=True)
                    for m in todo:
                        row = append_run(RUNS, measure(set_name, noise, seed, m, args.budget, args.quick, clean,
                                                       noisy, lengths))
                        print({k: row[k] for k in ("method", "psnr", "ssim", "total s", "failed")}, flush=True)
    text, rows = tables(read_runs(RUNS), args.quick)
    if not rows:
        return
    info = machine()
    body = "\n\n".join([
        "Written by `benchmarks/denoise_tomograms.py` (issue 13, item 5). " + machine_line(info) +
        " The run log keeps each run's own date, commit and load (below, per set).",
        "Defaults were chosen on the tuning set only; the held-out set has other particles (EMD-1832 instead of "
        "EMD-5625), phantoms, SNR (0.15 instead of 0.1) and noise lengths; the real crop is real content with "
        "simulated white noise. Every method runs with each seed (the run seed draws the noise, the held-out "
        "phantom and the method's own randomness); mean ± sd over the seeds. PSNR/SSIM after a least-squares "
        "affine fit of each output to the reference. *oracle Gaussian* picks σ against the reference (no user "
        "can). N2V and self2self train for the budget, fourier-n2n for 30 s less (its prediction averages 8 "
        "passes); careamics N2V is seeded and uses its structured mask (square, spanning the true in-plane noise "
        "correlation) on correlated noise. Topaz uses its two pretrained 3D U-Nets as shipped; *pretrained* is "
        "ours (`--method pretrained`), without and with 30 s of fine-tuning on the input. *total* is the whole "
        "call's wall time, all set-up included. *Δ* is against the best mean PSNR among the oracle Gaussian and "
        "the peers (N2V, Topaz) of that noise kind, paired per seed (each held-out seed is another phantom, "
        "so the PSNRs' own sd mixes phantoms). *predict Mvox/s* of *pretrained* without fine-tuning counts the "
        "whole call where the prediction was not timed apart. On the real crop the reference is itself a noisy "
        "real tomogram, so removing its own noise is penalised: it cannot rank methods, only show that nothing "
        "breaks on real content.",
        text,
    ])
    write_section("denoise_tomograms", "Denoising tomograms: tuning set, held-out set, real crop", body,
                  {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
