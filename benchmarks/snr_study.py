"""The SNR study: classical and supervised denoisers on particle projections of real maps, SNR 0.8 to 0.05.

For every map in ../shared/data/maps (at least 32 voxels a side) and every SNR, ``N_TEST`` particles of
64² pixels are simulated (random views, in-plane rotations, shifts, full CTF, white noise; SNR = signal
variance / noise variance). Each registered classical and supervised method denoises them; we report the
MSE with both images rescaled to [0, 1] (as the study did), PSNR and SSIM against the noise-free particle,
averaged over the particles. Supervised models are trained per SNR on *other* simulated particles of the
same maps (a favourable case: the test data come from the training distribution).

Also: our BM3D against the `bm3d` PyPI package (benchmark only, never a dependency) on the same images,
and the time per 256² image and per 64×256×256 volume for every method.

Run: .venv/bin/python benchmarks/snr_study.py [--quick] [--self-supervised]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, machine, machine_line, write_section  # noqa: E402

from napari_cryoden import metrics  # noqa: E402
from napari_cryoden.denoise import methods  # noqa: E402
from napari_cryoden.denoise.classical import oracle_filter  # noqa: E402
from napari_cryoden.denoise.engine import default_params  # noqa: E402
from napari_cryoden.denoise.supervised import SupervisedParams, iter_train_supervised  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.models import save_model  # noqa: E402
from napari_cryoden.progress import run  # noqa: E402
from napari_cryoden.report import _figure, _save, markdown_table, plot_montage  # noqa: E402
from napari_cryoden.simulate import simulate_particles  # noqa: E402

MAPS = ROOT.parent / "shared" / "data" / "maps"
IMAGES = ROOT / "docs" / "images"
SNRS = (0.8, 0.4, 0.2, 0.1, 0.05)
BOX = 64
#: MSE (both images in [0, 1]) the study reported on its own data (SOURCES.md).
STUDY = {"ddtf": (0.0036, 0.0093, 0.0093, 0.0239, 0.0587), "bm3d": (0.0241, 0.0621, 0.0655, 0.1736, 0.1532),
         "ksvd": (0.0352, 0.0534, 0.1094, 0.1615, 0.1591)}


def load_maps():
    out = []
    for path in sorted(MAPS.glob("*.m*")):
        m = read_mrc(path, mmap=False)
        if min(m.data.shape) < 32:
            print(f"skip {path.name}: {m.data.shape} is too small for {BOX}² particles")
            continue
        n = max(m.data.shape)
        pixel = max(m.pixel_size, m.pixel_size * n / BOX)           # the whole map fits in the box
        out.append((path.stem, np.asarray(m.data, np.float32), m.pixel_size, pixel))
    return out


def simulate(maps, snr, n, seed):
    noisy, clean = [], []
    for i, (_, data, vox, pixel) in enumerate(maps):
        sim = simulate_particles(data, voxel_size=vox, n_particles=n, box=BOX, pixel_size=pixel, ctf_mode="full",
                                 snr=snr, seed=seed + 97 * i)
        noisy.append(sim.images)
        clean.append(sim.clean)
    return np.concatenate(noisy), np.concatenate(clean)


def scores(clean, est):
    mse = np.mean([metrics.mse(c, e, normalize="minmax") for c, e in zip(clean, est)])
    psnr = np.mean([metrics.psnr(c, e) for c, e in zip(clean, est)])
    ssim = np.mean([metrics.ssim(c, e) for c, e in zip(clean, est)])
    return float(mse), float(psnr), float(ssim)


def train_models(maps, budget, models_dir, seed):
    """One autoencoder and one cGAN, each trained for ``budget`` seconds on pairs of all maps at all SNRs of
    the study (other particles than the test ones), so one model serves every SNR."""
    from napari_cryoden.denoise.supervised import simulate_training_pairs

    paths = {}
    per_set = max(32, 1024 // (len(maps) * len(SNRS)))
    noisy, target = [], []
    for si, snr in enumerate(SNRS):
        for i, (_, data, vox, pixel) in enumerate(maps):
            a, b, _ = simulate_training_pairs([data], [vox], n_pairs=per_set, box=BOX, pixel_size=pixel, snr=snr,
                                              ctf_mode="full", target_resolution=10.0,
                                              seed=seed + 1000 + 31 * si + i)
            noisy.append(a)
            target.append(b)
    for kind in ("autoencoder", "cgan"):
        model = run(iter_train_supervised(kind, noisy=np.concatenate(noisy), clean=np.concatenate(target),
                                          epochs=None, time_budget=budget, seed=seed))
        model.extra["pixel_size"] = None                             # maps differ in pixel size
        model.extra["training"]["snrs"] = list(SNRS)
        paths[kind] = save_model(models_dir / f"{kind}.pt", model)
        hist = model.extra["history"]
        print(f"{kind}: {model.extra['training']['steps']} steps, {len(hist['epoch'])} epochs, "
              f"validation L1 {hist['val_l1'][0]:.3f} -> {hist['val_l1'][-1]:.3f}", flush=True)
    return paths


def denoise(name, data, params, *, is_stack=True):
    method = methods()[name]
    return run(method.denoise(data, params, is_stack=is_stack, voxel_size=None, seed=0, device="cpu"))


def timed(fn, *args, repeats=1, **kwargs):
    best = np.inf
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer particles and shorter training (a smoke run)")
    ap.add_argument("--no-self-supervised", action="store_true", help="skip the self-supervised methods")
    ap.add_argument("--ss-budget", type=float, default=45.0,
                    help="seconds of training per self-supervised method and SNR (on the test particles)")
    ap.add_argument("--n", type=int, default=6, help="test particles per map and SNR")
    ap.add_argument("--train-budget", type=float, default=90.0, help="seconds of training per supervised model")
    args = ap.parse_args()
    n_test = 2 if args.quick else args.n
    budget = 10.0 if args.quick else args.train_budget
    t_start = time.perf_counter()
    maps = load_maps()
    print("maps:", [(m[0], m[1].shape, round(m[3], 2)) for m in maps])
    registry = methods()
    classical = [n for n in ("median", "bm3d", "ksvd", "ddtf") if n in registry]
    # Self-supervised methods that need only the noisy particles (n2n-halves needs two exposures).
    self_sup = [] if args.no_self_supervised else [
        n for n, m in registry.items() if m.family == "self-supervised" and n != "n2n-halves"]
    ss_budget = 5.0 if args.quick else args.ss_budget
    ss_times: dict = {}
    tmp = tempfile.TemporaryDirectory(prefix="snr_study_models_")   # trained models are not kept
    models_dir = Path(tmp.name)

    t0 = time.perf_counter()
    paths = train_models(maps, budget, models_dir, seed=0)
    train_time = time.perf_counter() - t0
    rows, curves, examples, example_labels = [], {}, [], []
    for si, snr in enumerate(SNRS):
        noisy, clean = simulate(maps, snr, n_test, seed=10 * si)
        results = {"raw": noisy}
        # oracles: one parameter per (SNR, map set), chosen against the clean particles
        best_sigma, results["gaussian (oracle)"], _ = oracle_filter(noisy, clean, kind="gaussian", is_stack=True)
        best_size, results["median (oracle)"], _ = oracle_filter(noisy, clean, kind="median", is_stack=True)
        times = {}
        for name in classical:
            if name == "median":
                continue
            t, results[name] = timed(denoise, name, noisy, registry[name].params())
            times[name] = t / len(noisy)
        for kind, path in paths.items():
            if kind in registry:
                results[kind] = denoise(kind, noisy, SupervisedParams(model=str(path)))
        for name in self_sup:
            # Trained on this SNR's noisy test particles themselves (all maps together), then applied to them.
            params = default_params(name, dims=2, patch_size=BOX, batch_size=8, time_budget=ss_budget)
            t, results[name] = timed(denoise, name, noisy, params)
            ss_times.setdefault(name, []).append(t)
        for name, est in results.items():
            mse, psnr, ssim = scores(clean, est)
            key = name.split(" ")[0]
            study = STUDY.get(key, (None,) * 5)[si]
            rows.append({"SNR": snr, "method": name, "MSE [0,1]": mse, "PSNR (dB)": psnr, "SSIM": ssim,
                         "study MSE": "" if study is None else study})
            curves.setdefault(name, []).append(mse)
        if snr in (0.4, 0.1):
            k = 0                                                     # the first particle of the first map
            for name in ["clean", *results]:
                examples.append(clean[k] if name == "clean" else results[name][k])
                example_labels.append(f"{name}\nSNR {snr}" if name in ("clean", "raw") else name)
        print(f"SNR {snr}: oracle sigma {best_sigma}, median size {best_size}, "
              f"per-image time {times}, elapsed {time.perf_counter() - t_start:.0f} s", flush=True)

    # --- figure: MSE against SNR, with the study's numbers dashed
    fig = _figure(figsize=(7.5, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    for name, values in curves.items():
        ax.plot(SNRS, values, marker="o", label=name)
    for name, values in STUDY.items():
        ax.plot(SNRS, values, ls="--", color="grey", alpha=0.6, lw=1)
        ax.annotate(f"study {name}", (SNRS[-1], values[-1]), fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.minorticks_off()
    ax.set_xticks(SNRS, [f"{v:g}" for v in SNRS])
    ax.invert_xaxis()
    ax.set_xlabel("SNR (signal variance / noise variance)")
    ax.set_ylabel("MSE, both images rescaled to [0, 1]")
    ax.set_title(f"Denoising {BOX}² particles of {len(maps)} EMDB maps (mean of {n_test} per map)")
    ax.legend(fontsize=7, ncol=2)
    IMAGES.mkdir(parents=True, exist_ok=True)
    _save(fig, IMAGES / "snr_study.png")
    n_cols = len(examples) // 2
    plot_montage(np.stack(examples), IMAGES / "snr_study_examples.png", labels=example_labels, columns=n_cols,
                 title="One particle (EMD map, full CTF) at SNR 0.4 (top) and 0.1 (bottom)")

    # --- our BM3D against the bm3d package, on the same 64² images and on a 256² image
    compare = []
    try:
        import bm3d as bm3d_pkg
    except ImportError:
        bm3d_pkg = None
    if bm3d_pkg is not None:
        from napari_cryoden.denoise.classical import BM3DParams, estimate_noise_sigma

        for snr in SNRS:
            noisy, clean = simulate(maps[:1], snr, n_test, seed=500)
            sig = estimate_noise_sigma(noisy, per_image=True)
            t_ours, ours = timed(denoise, "bm3d", noisy, BM3DParams())
            t_ref = time.perf_counter()
            ref = np.stack([bm3d_pkg.bm3d(img.astype(np.float64), sigma_psd=s) for img, s in zip(noisy, sig)])
            t_ref = time.perf_counter() - t_ref
            p_ours = np.mean([metrics.psnr(c, e) for c, e in zip(clean, ours)])
            p_ref = np.mean([metrics.psnr(c, e) for c, e in zip(clean, ref)])
            compare.append({"images": f"{len(noisy)} × {BOX}² ({maps[0][0]}), SNR {snr}", "ours PSNR": p_ours,
                            "bm3d PSNR": p_ref, "Δ (dB)": p_ours - p_ref,
                            "ours s/image": t_ours / len(noisy), "bm3d s/image": t_ref / len(noisy)})
        big = simulate_particles(maps[0][1], voxel_size=maps[0][2], n_particles=1, box=256,
                                 pixel_size=maps[0][2] * max(maps[0][1].shape) / 200, ctf_mode="full", snr=0.2,
                                 seed=7)
        sig = float(estimate_noise_sigma(big.images[0]))
        t_ours, ours = timed(lambda: denoise("bm3d", big.images[0], BM3DParams(), is_stack=False))
        t_ref, ref = timed(lambda: bm3d_pkg.bm3d(big.images[0].astype(np.float64), sigma_psd=sig))
        compare.append({"images": "1 × 256², SNR 0.2", "ours PSNR": metrics.psnr(big.clean[0], ours),
                        "bm3d PSNR": metrics.psnr(big.clean[0], ref),
                        "Δ (dB)": metrics.psnr(big.clean[0], ours) - metrics.psnr(big.clean[0], ref),
                        "ours s/image": t_ours, "bm3d s/image": t_ref})
        print("bm3d comparison done", flush=True)

    # --- time per 256² image and per 64×256×256 volume
    rng = np.random.default_rng(0)
    big = simulate_particles(maps[0][1], voxel_size=maps[0][2], n_particles=1, box=256,
                             pixel_size=maps[0][2] * max(maps[0][1].shape) / 200, ctf_mode="full", snr=0.2, seed=8)
    image = big.images[0]
    volume = (np.repeat(image[None], 64, axis=0) + rng.normal(0, image.std(), (64, 256, 256))).astype(np.float32)
    speed = []
    slice_wise = {"bm3d", "ksvd", "ddtf"}
    timing_methods = ["gaussian", "median", *classical[1:], *[k for k in ("autoencoder", "cgan") if k in registry]]
    for name in timing_methods:
        method = registry[name]
        params = SupervisedParams(model=str(models_dir / f"{name}.pt")) if method.family == "supervised" \
            else method.params()
        t_img, _ = timed(denoise, name, image, params, is_stack=False,
                         repeats=2 if name in ("gaussian", "median", "ddtf", "autoencoder", "cgan") else 1)
        if name in slice_wise:
            sub = volume[:8]
            t_vol, _ = timed(denoise, name, sub, params, is_stack=False)
            t_vol *= 64 / 8
            how = "extrapolated from 8 of 64 slices (slice-wise method)"
        else:
            t_vol, _ = timed(denoise, name, volume, params, is_stack=False)
            how = "3D filter" if name in ("gaussian", "median") else "slice by slice, measured"
        speed.append({"method": name, "s per 256² image": t_img, "s per 64×256×256 volume": t_vol, "volume": how})
        print(f"timing {name}: {t_img:.2f} s/image, {t_vol:.1f} s/volume", flush=True)
    if bm3d_pkg is not None:
        sig = float(estimate_noise_sigma(image))
        t_ref, _ = timed(lambda: bm3d_pkg.bm3d(image.astype(np.float64), sigma_psd=sig))
        speed.append({"method": "bm3d PyPI package (reference, not a dependency)", "s per 256² image": t_ref,
                      "s per 64×256×256 volume": 64 * t_ref, "volume": "64 × the 2D time (slice-wise)"})

    info = machine()
    table = markdown_table(rows, floatfmt=".4g")
    body = "\n\n".join([
        "Written by `benchmarks/snr_study.py`. " + machine_line(info),
        f"Particles: {BOX}² projections of {', '.join(m[0] for m in maps)} (pixel size chosen so each map fits "
        f"the box: {', '.join(f'{m[3]:.2f}' for m in maps)} Å), random views, in-plane rotations and shifts, "
        f"full CTF (defocus 1-2.5 µm), white noise at each SNR (signal variance / noise variance); {n_test} "
        "particles per map and SNR. Metrics against the noise-free particle (with CTF): MSE after rescaling "
        "both images to [0, 1] (as in the study), PSNR (data range of the clean image) and SSIM, averaged. "
        "Oracles pick one parameter per SNR against the clean particles (a bound, not a usable method). BM3D, "
        "K-SVD and DDTF run with their defaults and the noise sigma estimated from each image. The autoencoder "
        f"and cGAN are trained once ({budget:.0f} s each, {train_time:.0f} s in all with the simulation) on "
        "other simulated particles of the same maps at all five SNRs (targets low-passed to 10 Å) and "
        "applied at every SNR: the favourable case where the test data come from the training distribution. "
        + (f"The self-supervised methods ({', '.join(self_sup)}) see only the noisy test particles of each SNR: "
           f"one model per method and SNR, trained for {ss_budget:.0f} s on those {n_test * len(maps)} images "
           f"({BOX}² patches, batch 8) and applied to them (train + predict "
           + ", ".join(f"{k} {np.mean(v):.0f} s" for k, v in ss_times.items()) + " per SNR on average)."
           if self_sup else ""),
        "![MSE against SNR](images/snr_study.png)",
        "![Example particle denoised by every method](images/snr_study_examples.png)",
        table,
        "### Our BM3D and the `bm3d` package (v4, benchmark only) on the same images and noise sigma",
        markdown_table(compare, floatfmt=".3g") if compare else "(the bm3d package is not installed)",
        "### Time per 256² image and per 64×256×256 volume (CPU)",
        markdown_table(speed, floatfmt=".3g"),
        "See docs/denoise-classical.md for the methods and how these numbers compare with the study's.",
    ])
    write_section("snr_study", "SNR study: classical, supervised and self-supervised denoisers on simulated "
                  "particles", body,
                  {"machine": info, "rows": rows, "bm3d_comparison": compare, "speed": speed,
                   "maps": [m[0] for m in maps], "n_test": n_test, "train_budget_s": budget, "train_time_s": train_time,
                   "elapsed_s": time.perf_counter() - t_start})
    tmp.cleanup()
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
