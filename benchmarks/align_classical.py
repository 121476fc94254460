"""Classical alignment on a tuning map and on held-out maps: the old defaults beside the new ones.

Issue 14, item 6: at 64², SNR 0.05, a held-out map, the target is ≤ 2° / 0.5 px reference-based and
≤ 3° / 0.75 px reference-free (median angular error modulo the map's in-plane symmetry / median shift error).

Maps (projections along z at the map's own pixel size, in a 64² box): the **tuning** map, emd_5625, is the
only one any setting of this module was chosen on; the **held-out** maps are emd_1832 and the GroEL top view
(emd_1080, 7-fold about z, scored modulo 360°/7). Stacks: psi ~ U(0, 360)°, shifts ~ U(-10, 10) px
(sub-pixel), no CTF or the full CTF (defocus 1-2.5 µm, used by the aligner as a matched filter), SNR 0.05 and
0.1; every case on ``--seeds`` stacks (mean ± sd over seeds of the per-stack medians). Reference-free errors are
after removing the one global rotation and its shift. The structure check (an extra null alignment) is off in
these runs. ``--quick`` runs one seed, no CTF, SNR 0.05 only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine, machine_line, write_section  # noqa: E402
from alignment import crlb, errors, reference_image  # noqa: E402

from napari_cryoden.align.cross_correlation import (  # noqa: E402
    ClassicalParams,
    align_reference_free,
    align_to_reference,
)
from napari_cryoden.report import markdown_table  # noqa: E402
from napari_cryoden.simulate import simulate_alignment_stack  # noqa: E402
from napari_cryoden.simulate.ctf import ctf_2d  # noqa: E402

#: name -> (in-plane symmetry, role)
MAPS = {"emd_5625": (1, "tuning"), "emd_1832": (1, "held-out"), "GroEL (C7 top view)": (7, "held-out")}
#: The defaults before this benchmark's changes, and the current ones.
CONFIGS = {"old": dict(search="polar", fine_steps=0, frc_weighting=False, iterations=15), "new": {}}
BOX = 64


def _ctf(sim, apix):
    p = sim.table.particles
    return ctf_2d((BOX, BOX), pixel_size=apix, defocus_u=p["rlnDefocusU"].to_numpy(),
                  defocus_v=p["rlnDefocusV"].to_numpy(), defocus_angle=p["rlnDefocusAngle"].to_numpy(),
                  amplitude_contrast=0.07, b_factor=50.0).astype(np.float32)


def _mean_sd(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="particles per stack")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--old-free-all", action="store_true",
                    help="run the old defaults reference-free in every case (default: SNR 0.05 without CTF only)")
    args = ap.parse_args()
    torch.manual_seed(0)
    seeds = range(1, 2 if args.quick else args.seeds + 1)
    ctfs = ("none",) if args.quick else ("none", "full")
    snrs = (0.05,) if args.quick else (0.05, 0.1)
    t_start = time.perf_counter()
    raw = []
    for name, (sym, role) in MAPS.items():
        ref, apix = reference_image(name, BOX)
        for ctf_mode in ctfs:
            for snr in snrs:
                for seed in seeds:
                    sim = simulate_alignment_stack(ref, pixel_size=apix, n_per_image=args.n, max_shift=10,
                                                   integer_shifts=False, ctf_mode=ctf_mode, snr=snr, seed=seed)
                    ctf = None if ctf_mode == "none" else _ctf(sim, apix)
                    for config, overrides in CONFIGS.items():
                        params = ClassicalParams(max_shift=10, symmetry=sym, structure_check=False, **overrides)
                        for mode in ("ref", "free"):
                            if (mode == "free" and config == "old" and (snr != 0.05 or ctf_mode != "none")
                                    and not args.old_free_all):
                                continue
                            t = time.perf_counter()
                            if mode == "ref":
                                res = align_to_reference(sim.images, ref, params, ctf=ctf, keep_aligned=False)
                            else:
                                res = align_reference_free(sim.images, params, ctf=ctf, keep_aligned=False)
                            seconds = time.perf_counter() - t
                            deg, px = errors(res, sim, sym, free=mode == "free")
                            rec = {"map": name, "role": role, "CTF": ctf_mode, "SNR": snr, "seed": seed,
                                   "config": config, "mode": mode, "deg": deg, "px": px, "seconds": seconds,
                                   "particles_per_s": args.n / seconds,
                                   "passes": res.info.get("iterations", 1)}
                            raw.append(rec)
                            print(rec, flush=True)
        report(raw, args, seeds, ctfs, snrs, t_start)  # after every map, so a cut-short run leaves a table


def report(raw, args, seeds, ctfs, snrs, t_start) -> None:
    rows = []
    for name, (_sym, role) in MAPS.items():
        ref, _ = reference_image(name, BOX)
        for ctf_mode in ctfs:
            for snr in snrs:
                for mode in ("ref", "free"):
                    for config in CONFIGS:
                        sel = [r for r in raw if r["map"] == name and r["CTF"] == ctf_mode and r["SNR"] == snr
                               and r["mode"] == mode and r["config"] == config]
                        if not sel:
                            continue
                        row = {"map": name, "role": role, "CTF": ctf_mode, "SNR": snr,
                               "reference": "given" if mode == "ref" else "free", "defaults": config,
                               "angle (deg)": _mean_sd([r["deg"] for r in sel]),
                               "shift (px)": _mean_sd([r["px"] for r in sel]),
                               "passes": _mean_sd([r["passes"] for r in sel]) if mode == "free" else "",
                               "particles/s": float(np.mean([r["particles_per_s"] for r in sel])),
                               "CRLB (deg / px)": "%.2f / %.2f" % crlb(ref, snr) if ctf_mode == "none" else ""}
                        rows.append(row)
    targets = []
    for r in rows:
        if r["role"] == "held-out" and r["SNR"] == 0.05 and r["defaults"] == "new":
            lim = (2.0, 0.5) if r["reference"] == "given" else (3.0, 0.75)
            deg, px = float(r["angle (deg)"].split(" ")[0]), float(r["shift (px)"].split(" ")[0])
            targets.append({"map": r["map"], "CTF": r["CTF"], "reference": r["reference"],
                            "target (deg / px)": "%.2g / %.2g" % lim, "measured (deg / px)": f"{deg:.2f} / {px:.2f}",
                            "met": "yes" if deg <= lim[0] and px <= lim[1] else "no"})
    info = machine()
    old = ", ".join(f"{k}={v!r}" for k, v in CONFIGS["old"].items())
    body = "\n\n".join([
        "Written by `benchmarks/align_classical.py`"
        + (" --quick" if args.quick else "") + ". " + machine_line(info)
        + " This 2-core machine was shared with two other agents' jobs during the run: particles/s are lower "
          "bounds and vary with their load.",
        f"{BOX}² box, {args.n} particles per stack, {len(seeds)} seeds per case (mean ± sd over seeds of the "
        "per-stack median). Angle: median angular error (degrees, modulo 360°/symmetry); shift: median shift error "
        "(pixels). `reference free`: after removing the global rotation and its shift; `passes`: reference-free "
        "passes run. **Tuning** map: emd_5625 (the only one the new defaults were chosen on); **held-out**: "
        "emd_1832 and the GroEL top view (C7, scored modulo 360°/7). `old` defaults: "
        f"`{old}` (polar-amplitude angle candidates, unweighted half references); `new`: the current "
        "`ClassicalParams()` (exhaustive half-resolution search every 4°, one more sub-step parabola through exact "
        "rotations, FRC-weighted half references, at most 5 passes). CRLB: the "
        "Cramér-Rao bound (median) for a known reference in white noise. The structure check is off.",
        "Targets (issue 14: held-out map, SNR 0.05):",
        markdown_table(targets),
        markdown_table(rows, floatfmt=".4g"),
        f"Run time {time.perf_counter() - t_start:.0f} s for the maps "
        + ", ".join(dict.fromkeys(r["map"] for r in raw)) + ".",
    ])
    write_section("align_classical", "Classical alignment on held-out maps (issue 14, item 6)", body,
                  {"machine": info, "rows": rows, "targets": targets, "raw": raw, "configs": CONFIGS})


if __name__ == "__main__":
    main()
