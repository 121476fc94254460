"""Choosing how ``--method pretrained --time-budget`` fine-tunes, on the tuning set only (issue 13, item 3).

The tuning set of ``benchmarks/denoise_tomograms.py`` (phantoms with EMD-5625 particles, phantom seed 101,
SNR 0.1; white, z-stretched 2.0/0.7/0.7 and isotropic 1.0 noise), noise seeds ``--seeds``. For each
fine-tuning learning rate and prediction way (a student distilled from the fine-tuned network's masked passes,
or the fine-tuned network in one unmasked pass), the PSNR after ``--budget`` s of fine-tuning, next to the
shipped model without fine-tuning and the oracle Gaussian. The held-out figures are in the
``denoise_tomograms`` section; nothing here is reported as a result.

    .venv/bin/python benchmarks/denoise_pretrained_tuning.py --budget 30 --seeds 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import RESULTS, append_run, machine, machine_line, read_runs, write_section  # noqa: E402
from denoise_tomograms import SETS, dataset, oracle_gaussian  # noqa: E402

from napari_cryoden import metrics  # noqa: E402
from napari_cryoden.denoise import get_method  # noqa: E402
from napari_cryoden.progress import run  # noqa: E402
from napari_cryoden.report import markdown_table  # noqa: E402

RUNS = RESULTS / "denoise_pretrained_tuning_runs.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    ap.add_argument("--ways", nargs="+", default=["student", "unmasked"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    method = get_method("pretrained")
    done = {(r["noise"], r["seed"], r["variant"], r["budget"], r["quick"]) for r in read_runs(RUNS)}
    variants = [("shipped, no fine-tuning", {}), ("oracle Gaussian", None)]
    variants += [(f"lr {lr:g}, {way}", {"learning_rate": lr, "prediction": way, "time_budget": args.budget})
                 for lr in args.rates for way in args.ways]
    if not args.report_only:
        for noise in SETS["tuning"]["noise"]:
            for seed in args.seeds:
                clean, noisy, _ = dataset("tuning", noise, seed, args.quick)
                for label, overrides in variants:
                    if (noise, seed, label, args.budget, args.quick) in done:
                        continue
                    t0 = time.perf_counter()
                    if overrides is None:
                        out, _ = oracle_gaussian(clean, noisy)
                    else:
                        out = run(method.run(noisy, method.default_params(dims=3, **overrides), seed=seed))
                    row = append_run(RUNS, {"noise": noise, "seed": seed, "variant": label, "budget": args.budget,
                                            "quick": args.quick, "psnr": metrics.psnr(clean, out, fit=True),
                                            "seconds": time.perf_counter() - t0})
                    print({k: row[k] for k in ("noise", "variant", "psnr", "seconds")}, flush=True)
    runs = [r for r in read_runs(RUNS) if r["quick"] == args.quick and r["budget"] == args.budget]
    if not runs:
        return
    table = []
    for label in dict.fromkeys(r["variant"] for r in runs):
        row = {"variant": label}
        for noise in SETS["tuning"]["noise"]:
            v = [r["psnr"] for r in runs if r["variant"] == label and r["noise"] == noise]
            row[f"{noise} PSNR (dB)"] = f"{np.mean(v):.2f}" if v else "–"
        row["mean"] = f"{np.mean([r['psnr'] for r in runs if r['variant'] == label]):.2f}"
        table.append(row)
    info = machine()
    body = "\n\n".join([
        f"Written by `benchmarks/denoise_pretrained_tuning.py --budget {args.budget:g}`. " + machine_line(info),
        "**Tuning set** (phantom seed 101, EMD-5625 particles, SNR 0.1; noise seeds "
        f"{', '.join(str(s) for s in sorted({r['seed'] for r in runs}))}): how the shipped 3D model is fine-tuned "
        f"by `--time-budget {args.budget:g}`. PSNR after a least-squares affine fit, one run each. These figures "
        "chose the settings (`docs/methods.md`, *Pretrained models*, says which and why); they are not results.",
        markdown_table(table),
    ])
    write_section("denoise_pretrained_tuning", "Choosing how the pretrained denoiser is fine-tuned (tuning set)", body,
                  {"machine": info, "rows": table})


if __name__ == "__main__":
    main()
