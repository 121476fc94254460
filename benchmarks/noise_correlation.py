"""Denoising on correlated noise: the measured correlation, fourier-n2n and self2self vs a tuned Gaussian.

Phantoms (48×128×128 voxels, 10 Å, ±60° missing wedge, from ``simulate_tomogram``):
  tuning    seed 1 (3 vesicles, 3 filaments, 12 particles) — the one settings were chosen on
  held-out  seed 2 (4 vesicles, 2 filaments, 16 particles) — the one the reported table comes from
Noise at SNR 0.1 (``simulate.noise.add_noise``), noise seed = run seed:
  zstretch  Gaussian-correlated along every axis, stretched along z: σ = (1.5, 0.75, 0.75) voxels
  iso       isotropically correlated: σ = 1.0 voxel along z, y and x
  white     pixel-independent
Methods: raw; tuned Gaussian (isotropic σ from a grid, chosen by PSNR against the ground truth: the bound for
a Gaussian filter); ``gaussian-axes`` (σ_z and σ_yx tuned apart); ``wiener-oracle`` (S / (S + N) with the true
signal and noise spectra: the bound for any linear filter); ``wiener-estimated`` (the same filter from the data
alone: its power spectrum and the noise correlation and variance measured on it); our methods with their defaults at the default budget, optionally with
``--set METHOD:name=value`` overrides. PSNR after a least-squares affine fit to the ground truth.

The budget is counted in training steps, not seconds, so that other jobs sharing the CPU do not change the
result: the steps the default 120-s budget buys on a quiet 2-core CPU (docs/methods.md: fourier-n2n ≈ 170 in
96 s, self2self ≈ 353 in 100 s), i.e. 200 and 400 (``--steps`` to change).

Usage: .venv/bin/python benchmarks/noise_correlation.py --phantom held-out --seeds 0 1 2 --kinds zstretch iso
       [--methods gaussian fourier-n2n self2self] [--set fourier-n2n:whitening=off] [--tag NAME]
Each run appends one JSON line to benchmarks/results/noise_correlation.jsonl; ``--table`` prints the
mean ± sd table of the lines recorded (by phantom, tag, method and noise kind).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import machine, machine_line  # noqa: E402

from napari_cryoden import metrics  # noqa: E402
from napari_cryoden.denoise.engine import default_params, iter_predict, iter_train  # noqa: E402
from napari_cryoden.denoise.noise import estimate_noise_correlation  # noqa: E402
from napari_cryoden.progress import run  # noqa: E402
from napari_cryoden.simulate import simulate_tomogram  # noqa: E402
from napari_cryoden.simulate.noise import add_noise  # noqa: E402

OUT = HERE / "results" / "noise_correlation.jsonl"
PHANTOMS = {"tuning": dict(seed=1, n_vesicles=3, n_filaments=3, n_particles=12),
            "held-out": dict(seed=2, n_vesicles=4, n_filaments=2, n_particles=16)}
KINDS = {"zstretch": (1.5, 0.75, 0.75), "iso": (1.0, 1.0, 1.0), "white": None}
SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


def phantom(name: str) -> np.ndarray:
    return simulate_tomogram(shape=(48, 128, 128), voxel_size=10.0, snr=1.0, **PHANTOMS[name]).clean


def noisy_volume(clean, kind: str, seed: int) -> np.ndarray:
    lengths = KINDS[kind]
    if lengths is None:
        return add_noise(clean, 0.1, rng=seed)
    return add_noise(clean, 0.1, rng=seed, colour="coloured", correlation_length=lengths)


def tuned_gaussian(clean, noisy) -> tuple[float, dict]:
    scores = {s: metrics.psnr(clean, gaussian_filter(noisy, s), fit=True) for s in SIGMAS}
    best = max(scores, key=scores.get)
    return scores[best], {"sigma": best}


STEPS = {"fourier-n2n": 200, "self2self": 400}


def tuned_gaussian_axes(clean, noisy) -> tuple[float, dict]:
    """Gaussian with its own σ along z and in the yx plane, both chosen against the ground truth."""
    grid = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
    scores = {(sz, sy): metrics.psnr(clean, gaussian_filter(noisy, (sz, sy, sy)), fit=True) for sz in grid for sy in grid}
    best = max(scores, key=scores.get)
    return scores[best], {"sigma": list(best)}


def wiener_oracle(clean, noisy, kind: str) -> tuple[float, dict]:
    """The best linear shift-invariant filter for this signal and this noise: S / (S + N) with S the clean
    volume's power spectrum and N the noise's expected one (both known here) — the bound for every linear
    filter, Gaussians of any shape included."""
    c = clean - clean.mean()
    spec_c = np.abs(np.fft.rfftn(c)) ** 2
    lengths = KINDS[kind] or (0.0, 0.0, 0.0)
    k = [np.fft.fftfreq(n) for n in clean.shape[:-1]] + [np.fft.rfftfreq(clean.shape[-1])]
    grids = np.meshgrid(*k, indexing="ij")
    t2 = np.exp(-4.0 * np.pi**2 * sum(length**2 * g**2 for length, g in zip(lengths, grids)))
    full = np.exp(-4.0 * np.pi**2 * sum(length**2 * g**2 for length, g in zip(
        lengths, np.meshgrid(*[np.fft.fftfreq(n) for n in clean.shape], indexing="ij"))))
    noise_var = float((noisy - clean).var())
    spec_n = clean.size * noise_var * t2 / full.mean()
    w = spec_c / (spec_c + spec_n)
    out = np.fft.irfftn(np.fft.rfftn(noisy - noisy.mean()) * w, s=clean.shape) + noisy.mean()
    return metrics.psnr(clean, out, fit=True), {}


def wiener_estimated(clean, noisy) -> tuple[float, dict]:
    """The same filter with nothing known: the data's power spectrum (locally averaged over ±2 frequencies) for
    S + N, and for N the spectrum of the noise correlation measured on the data, scaled to the measured noise
    variance (``noise_fraction`` × the data's variance): W = max(0, 1 − N / (S + N))."""
    est = estimate_noise_correlation(noisy)
    v = noisy - noisy.mean()
    power = np.abs(np.fft.fftn(v)) ** 2
    power = np.fft.ifftshift(gaussian_filter(np.fft.fftshift(power), 2.0, mode="wrap"))
    grids = np.meshgrid(*[np.fft.fftfreq(n) for n in noisy.shape], indexing="ij")
    shape = np.exp(-4.0 * np.pi**2 * sum(length**2 * g**2 for length, g in zip(est.lengths, grids)))
    spec_n = noisy.size * est.noise_fraction * float(v.var()) * shape / shape.mean()
    w = np.clip(1.0 - spec_n / np.maximum(power, 1e-12), 0.0, 1.0)
    out = np.real(np.fft.ifftn(np.fft.fftn(v) * w)) + noisy.mean()
    return metrics.psnr(clean, out, fit=True), {"measured": list(est.lengths)}  # clean: only to score


def ours(method: str, clean, noisy, seed: int, overrides: dict, steps: int | None) -> tuple[float, dict]:
    # This volume gives 10 steps per epoch (the engine's minimum), so epochs = steps / 10.
    epochs = max(1, round((steps or STEPS.get(method, 200)) / 10))
    params = default_params(method, dims=3, time_budget=0, epochs=epochs, **overrides)
    t0 = time.perf_counter()
    model = run(iter_train(noisy, params, method=method, seed=seed))
    t1 = time.perf_counter()
    out = run(iter_predict(model, noisy, seed=seed))
    info = {"train_s": round(t1 - t0, 1), "predict_s": round(time.perf_counter() - t1, 1),
            "steps": len(model.history), "noise": model.describe_noise()}
    if hasattr(model.params, "mask_block"):
        info["mask_block"] = model.params.mask_block
    return metrics.psnr(clean, out, fit=True), info


def _overrides(items, method: str) -> dict:
    from dataclasses import fields

    from napari_cryoden.denoise import get_method

    types = {f.name: f.type for f in fields(get_method(method).params)}
    out = {}
    for item in items or ():
        target, _, kv = item.partition(":")
        if target != method:
            continue
        key, _, value = kv.partition("=")
        kind = str(types[key])
        out[key] = float(value) if "float" in kind else int(value) if "int" in kind else \
            (value.lower() in ("1", "true", "yes")) if "bool" in kind else value
    return out


def table() -> None:
    rows = [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["phantom"], r.get("tag", ""), r["method"], r["kind"])].append(r["psnr"])
    print("| phantom | tag | method | noise | PSNR dB (mean ± sd) | n |\n|---|---|---|---|---|---|")
    for (ph, tag, method, kind), values in sorted(groups.items()):
        v = np.array(values)
        print(f"| {ph} | {tag} | {method} | {kind} | {v.mean():.2f} ± {v.std(ddof=1) if v.size > 1 else 0:.2f} "
              f"| {v.size} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phantom", choices=tuple(PHANTOMS), default="tuning")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--kinds", nargs="+", choices=tuple(KINDS), default=["zstretch", "iso"])
    ap.add_argument("--methods", nargs="+", default=["gaussian", "fourier-n2n", "self2self"])
    ap.add_argument("--set", action="append", help="METHOD:name=value parameter override")
    ap.add_argument("--tag", default="defaults")
    ap.add_argument("--steps", type=int, help="training steps (default: 120 s of a quiet 2-core CPU)")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        table()
        return
    print(machine_line(machine()))
    clean = phantom(args.phantom)
    OUT.parent.mkdir(exist_ok=True)
    for seed in args.seeds:
        for kind in args.kinds:
            noisy = noisy_volume(clean, kind, seed)
            est = estimate_noise_correlation(noisy)
            base = {"phantom": args.phantom, "kind": kind, "seed": seed, "tag": args.tag,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "true_lengths": KINDS[kind], "measured_lengths": est.lengths, "block": est.block}
            results = [("raw", metrics.psnr(clean, noisy, fit=True), {})]
            for method in args.methods:
                if method == "gaussian":
                    results.append(("gaussian", *tuned_gaussian(clean, noisy)))
                elif method == "gaussian-axes":
                    results.append(("gaussian-axes", *tuned_gaussian_axes(clean, noisy)))
                elif method == "wiener-estimated":
                    results.append(("wiener-estimated", *wiener_estimated(clean, noisy)))
                elif method == "wiener-oracle":
                    results.append(("wiener-oracle", *wiener_oracle(clean, noisy, kind)))
                else:
                    results.append((method, *ours(method, clean, noisy, seed, _overrides(args.set, method), args.steps)))
            for method, value, info in results:
                row = {**base, "method": method, "psnr": round(float(value), 3), **info}
                print(json.dumps(row), flush=True)
                with OUT.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
