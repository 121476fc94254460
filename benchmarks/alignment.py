"""Alignment on held-out maps: classical global search, untrained network, UDL, JUDL, shipped models.

Held-out stacks (no default was chosen on them; UDL/JUDL settings were set on emd_5625, the tuning map, which
appears in no table here): projections along z of **emd_1832** and of **GroEL** (emd_1080, C7 top view,
scored modulo 360°/7) at the map's own pixel size in a 128² or 64² box; psi ~ U(0, 360)°, shifts ~ U(-10, 10)
px (sub-pixel), without CTF or with the full CTF (defocus 1-2.5 µm; the classical aligner uses it as a matched
filter), SNR 0.1 / 0.05; ``--n`` particles (default 1,000); seeds 0, 1, 2 (each seed a new stack and a new
training).

Per stack: ``fft`` (classical, to the known reference, and reference-free after removing the global
rotation and its shift); the **untrained** network (its own angle); **UDL** trained on the stack itself for
``--train-seconds`` (pairs of particles, no reference), its own angle (``--refine none``) and refined near it
(``--refine local``), both against the known reference; **JUDL** trained reference-free (the bootstrap
average as its reference) for the same time, scored after removing the global rotation; the **shipped**
models (``--model pretrained``, no training on the stack), and with ``--fine-tune S`` the shipped models trained
S seconds further on the stack first (``--model pretrained --time-budget S``, what the CLI advises for CTF
data; ``--from-scratch``: the same S seconds from random weights, the ablation). A network's own angle is scored modulo 180° (amplitudes cannot tell the flip) and the symmetry: chance
is a quarter of that period. Particles per second count inference only (network + refinement), not training.
Beside: the Cramér-Rao bound for a known reference in white noise.

Runs are recorded as they end in ``benchmarks/results/alignment_runs.jsonl`` and reused: ``--cases`` picks
part of the grid, so the grid can be filled over several invocations. The tables report mean ± sd over the
seeds recorded.

    python benchmarks/alignment.py --cases "emd_1832 128 0.1 none"      # the issue's headline case
    python benchmarks/alignment.py --train-seconds 120                 # the whole grid
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, append_run, machine, machine_line, read_runs, write_section  # noqa: E402

from napari_cryoden.align.cross_correlation import ClassicalParams, align_reference_free, align_to_reference  # noqa: E402,E501
from napari_cryoden.align.udl import DeepAlignParams, iter_align_with_model, iter_train  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.metrics.alignment import angular_error, remove_global_rotation, shift_error  # noqa: E402
from napari_cryoden.models import load_pretrained  # noqa: E402
from napari_cryoden.progress import run  # noqa: E402
from napari_cryoden.report import markdown_table  # noqa: E402
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack  # noqa: E402
from napari_cryoden.simulate.ctf import ctf_2d  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT.parent / "shared" / "data" / "maps"
ENTRIES = {"emd_1832": ("emd_1832.map", 1), "GroEL": ("emd_1080_groel_11.5A.mrc", 7)}
RUNS = RESULTS / "alignment_runs.jsonl"
GRID = [(name, box, snr, ctf) for box in (128, 64) for name in ENTRIES for snr in (0.1, 0.05) for ctf in ("none", "full")]
METHODS = ["fft (reference)", "fft (reference-free)", "untrained network, own angle", "UDL, own angle",
           "UDL + local", "JUDL (reference-free), own angle", "JUDL (reference-free) + local",
           "shipped UDL, own angle", "shipped UDL + local", "shipped JUDL, own angle", "shipped JUDL + local"]


def reference_image(name: str, box: int) -> tuple[np.ndarray, float]:
    m = read_mrc(MAPS / ENTRIES[name][0], mmap=False)
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size, box=box)
    return project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32), m.pixel_size


def crlb(ref: np.ndarray, snr: float) -> tuple[float, float]:
    """Cramér-Rao medians (degrees, pixels) for a known reference in white noise."""
    r = ref.astype(np.float64)
    s2 = r.var() / snr
    gy, gx = np.gradient(r)
    n = r.shape[-1]
    yy, xx = np.mgrid[:n, :n] - n // 2
    sa = np.rad2deg(np.sqrt(s2 / ((xx * gy - yy * gx) ** 2).sum()))
    sd = np.sqrt(s2 / (gx**2).sum())
    return 0.674 * sa, 1.177 * sd


def global_shift_free(est_o, true_o, psi):
    """Remove the shift that comes with a reference-free result's global frame (a reference centred ``c`` away
    from the true one moves every origin by ``c`` turned by the particle's estimated angle)."""
    th = np.deg2rad(psi)
    d = est_o - true_o
    c = np.array([np.median(-(np.cos(th) * d[:, 0] - np.sin(th) * d[:, 1])),
                  np.median(-(np.sin(th) * d[:, 0] + np.cos(th) * d[:, 1]))])
    back = np.stack([np.cos(th) * c[0] + np.sin(th) * c[1], -np.sin(th) * c[0] + np.cos(th) * c[1]], 1)
    return est_o + back


def full_errors(res, sim, sym: int, *, free: bool = False) -> tuple[float, float]:
    psi, o = res.angles, res.origins
    if free:
        _, psi = remove_global_rotation(psi, sim.angles, symmetry=sym)
        o = global_shift_free(o, sim.origins, psi)
    return (float(np.median(angular_error(psi, sim.angles, symmetry=sym))),
            float(np.median(shift_error(o, sim.origins))))


def own_angle_error(angles, truth, sym: int, *, free: bool = False) -> float:
    """Median error of a network's own angle modulo 180° and the symmetry (period 360 / lcm(2, sym))."""
    fold = 2 * sym // math.gcd(2, sym)
    angles = np.asarray(angles, dtype=np.float64)
    if free:
        _, angles = remove_global_rotation(angles, truth, symmetry=fold)
    return float(np.median(angular_error(angles, truth, symmetry=fold)))


def done_runs() -> dict:
    return {(r["map"], r["box"], r["SNR"], r["CTF"], r["seed"], r["method"], r["train seconds"]): r
            for r in read_runs(RUNS)}


def record(row: dict) -> None:
    print(append_run(RUNS, row), flush=True)


def run_case(name: str, box: int, snr: float, ctf_mode: str, seed: int, n: int, train_seconds: float,
             done: dict, shipped_only: bool = False, again: bool = False, judl_only: bool = False,
             classical_only: bool = False, fine_tune: float = 0.0, from_scratch: bool = False) -> None:
    key = (name, box, snr, ctf_mode, seed)
    if not shipped_only and not again and all(key + (m, train_seconds) in done for m in METHODS):
        return
    sym = ENTRIES[name][1]
    ref, apix = reference_image(name, box)
    sim = simulate_alignment_stack(ref, pixel_size=apix, n_per_image=n, max_shift=10, integer_shifts=False,
                                   ctf_mode=ctf_mode, snr=snr, seed=1000 + seed)
    ctf = None
    if ctf_mode != "none":
        p = sim.table.particles
        ctf = ctf_2d((box, box), pixel_size=apix, defocus_u=p["rlnDefocusU"].to_numpy(),
                     defocus_v=p["rlnDefocusV"].to_numpy(), defocus_angle=p["rlnDefocusAngle"].to_numpy(),
                     amplitude_contrast=0.07, b_factor=50.0).astype(np.float32)
    params = ClassicalParams(max_shift=10, symmetry=sym)
    bound = crlb(ref, snr) if ctf_mode == "none" else (float("nan"), float("nan"))
    base = {"map": name, "box": box, "SNR": snr, "CTF": ctf_mode, "seed": seed, "train seconds": train_seconds,
            "particles": n, "CRLB deg": bound[0], "CRLB px": bound[1]}

    def put(method, deg, px=float("nan"), seconds=float("nan"), **extra):
        record({**base, "method": method, "deg": deg, "px": px, "particles/s": n / seconds, **extra})

    def deep(label, model, reference, *, free, train_info=None):
        extra = train_info or {}
        for refine in ("none", "local"):
            t = time.perf_counter()
            res = run(iter_align_with_model(sim.images, model, reference, params, refine=refine, ctf=ctf,
                                            keep_aligned=False))
            seconds = time.perf_counter() - t
            if refine == "none":
                put(f"{label}, own angle", own_angle_error(res.info["network_angles"], sim.angles, sym, free=free),
                    seconds=seconds, **extra)
            else:
                put(f"{label} + local", *full_errors(res, sim, sym, free=free), seconds, **extra)

    if fine_tune > 0:  # only the shipped models fine-tuned on the stack (cryoden align --model pretrained
        for method in ("udl", "judl"):  # --time-budget S), against the known reference as their own rows
            t = time.perf_counter()
            start = None if from_scratch else load_pretrained(f"align/{method}")
            tuned = run(iter_train(sim.images, ref, DeepAlignParams(epochs=1, steps_per_epoch=10**7, seed=seed,
                                                                    time_budget=fine_tune),
                                   joint=method == "judl", model=start, ctf=ctf, classical=params))
            info = {"train steps": len(tuned.extra["history"]), "training s": time.perf_counter() - t}
            label = (f"{method.upper()} from scratch, {fine_tune:g} s, reference given" if from_scratch
                     else f"shipped {method.upper()} + {fine_tune:g} s on the stack")
            deep(label, tuned, ref, free=False, train_info=info)
        return
    if shipped_only:  # the shipped models were retrained: their rows again, the latest record per key wins
        for method in ("udl", "judl"):
            deep(f"shipped {method.upper()}", load_pretrained(f"align/{method}"), ref, free=False)
        return
    if judl_only:  # JUDL's training changed: its rows again, the latest record per key wins
        _train_and_score("judl", sim, ctf, seed, train_seconds, deep)
        return
    t = time.perf_counter()
    res = align_to_reference(sim.images, ref, params, ctf=ctf, keep_aligned=False)
    put("fft (reference)", *full_errors(res, sim, sym), time.perf_counter() - t)
    t = time.perf_counter()
    res = align_reference_free(sim.images, params, ctf=ctf, keep_aligned=False)
    put("fft (reference-free)", *full_errors(res, sim, sym, free=True), time.perf_counter() - t)
    if classical_only:  # the classical rows again, e.g. on the CPU that ran a rerun of the networks' rows
        return
    untrained = run(iter_train(sim.images, None, DeepAlignParams(epochs=1, steps_per_epoch=1, learning_rate=0.0,
                                                                 seed=seed)))
    t = time.perf_counter()
    res = run(iter_align_with_model(sim.images, untrained, ref, params, refine="none", keep_aligned=False))
    put("untrained network, own angle", own_angle_error(res.info["network_angles"], sim.angles, sym),
        seconds=time.perf_counter() - t)
    for method in ("udl", "judl"):
        _train_and_score(method, sim, ctf, seed, train_seconds, deep, ref)
    for method in ("udl", "judl"):
        deep(f"shipped {method.upper()}", load_pretrained(f"align/{method}"), ref, free=False)


def _train_and_score(method, sim, ctf, seed, train_seconds, deep, ref=None) -> None:
    """Train UDL / JUDL on the stack for ``train_seconds`` (JUDL reference-free, with the CTF when there is one)
    and record its rows."""
    t = time.perf_counter()
    model = run(iter_train(sim.images, None, DeepAlignParams(epochs=1, steps_per_epoch=10**7, seed=seed,
                                                             time_budget=train_seconds), joint=method == "judl",
                           ctf=ctf))
    info = {"train steps": len(model.extra["history"]), "training s": time.perf_counter() - t}
    if method == "udl":
        deep("UDL", model, ref, free=False, train_info=info)
    else:  # reference-free: aligned to the bootstrap reference stored in the model
        deep("JUDL (reference-free)", model, None, free=True, train_info=info)


def mean_sd(values, digits: int = 2) -> str:
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    if not len(v):
        return "–"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def tables(done: dict, train_seconds: float) -> tuple[str, list]:
    texts, rows_out = [], []
    for case in GRID:
        runs = [r for k, r in done.items() if k[:4] == case and k[6] == train_seconds]
        if not runs:
            continue
        seeds = sorted({r["seed"] for r in runs})
        rows = []
        # e.g. the shipped models fine-tuned (--fine-tune), each network's own angle before its + local row
        extra = sorted({r["method"] for r in runs} - set(METHODS),
                       key=lambda m: (m.replace(", own angle", "").replace(" + local", ""), m.endswith(" + local")))
        for method in METHODS + extra:
            rs = [r for r in runs if r["method"] == method]
            if not rs:
                continue
            rows.append({"method": method, "median error (°)": mean_sd(r["deg"] for r in rs),
                         "median shift error (px)": mean_sd(r["px"] for r in rs),
                         "particles/s (inference)": f"{np.mean([r['particles/s'] for r in rs]):.0f}",
                         "training steps": mean_sd((r["train steps"] for r in rs), 0) if "train steps" in rs[0] else "–",
                         "seeds": len(rs)})
        name, box, snr, ctf = case
        sym = ENTRIES[name][1]
        crb = runs[0]
        head = (f"**Held-out: {name}, {box}², SNR {snr}, CTF {ctf}** ({runs[0]['particles']} particles, seeds "
                f"{', '.join(map(str, seeds))}; UDL/JUDL trained {train_seconds:.0f} s on the stack; own angles "
                f"modulo {360 / (2 * sym // math.gcd(2, sym)):.4g}°, full results modulo {360 / sym:.4g}°"
                + (f"; Cramér-Rao {crb['CRLB deg']:.2f}° / {crb['CRLB px']:.2f} px" if ctf == "none" else "")
                + f"; run {', '.join(sorted({str(r.get('when', '?'))[:10] for r in runs}))} on "
                + f"{' and '.join(sorted({r.get('cpu', 'a CPU not recorded') for r in runs}))})")
        texts.append(head + "\n\n" + markdown_table(rows))
        rows_out += [{"case": case, **r} for r in rows]
    return "\n\n".join(texts), rows_out


def main() -> None:
    global RUNS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=None,
                    help='cases "MAP BOX SNR CTF" (default: the whole grid, 128² first)')
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--train-seconds", type=float, default=300.0, help="UDL/JUDL training on each stack")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--shipped-only", action="store_true",
                    help="only the shipped models' rows (after retraining them); they replace the earlier ones")
    ap.add_argument("--again", action="store_true",
                    help="run the cases again though recorded (after a change); the latest record per key wins")
    ap.add_argument("--judl-only", action="store_true", help="only the JUDL rows (after a change to its training)")
    ap.add_argument("--classical-only", action="store_true",
                    help="only the classical rows (so that their speed is measured on the CPU of a rerun)")
    ap.add_argument("--fine-tune", type=float, default=0.0, metavar="S",
                    help="only the shipped models fine-tuned for S seconds on each stack (as --model pretrained "
                         "--time-budget S), own angle and + local, against the known reference")
    ap.add_argument("--from-scratch", action="store_true",
                    help="with --fine-tune S: train the networks S seconds from random weights instead, with the "
                         "known reference as the fine-tuned rows (the ablation of the shipped start)")
    ap.add_argument("--runs", type=Path, default=RUNS)
    args = ap.parse_args()
    RUNS = args.runs
    grid = GRID if args.cases is None else [(c.split()[0], int(c.split()[1]), float(c.split()[2]), c.split()[3])
                                            for c in args.cases]
    t0 = time.perf_counter()
    if not args.report_only:
        for case in grid:
            for seed in args.seeds:
                run_case(*case, seed, args.n, args.train_seconds, done_runs(), shipped_only=args.shipped_only,
                         again=args.again or args.judl_only or args.classical_only or args.fine_tune > 0,
                         judl_only=args.judl_only,
                         classical_only=args.classical_only, fine_tune=args.fine_tune,
                         from_scratch=args.from_scratch)
    text, rows = tables(done_runs(), args.train_seconds)
    info = machine()
    where = ("Tables rebuilt from the recorded runs (`--report-only`, no case run) on "
             f"{info['date']} at {info['commit'] or 'uncommitted'}." if args.report_only else machine_line(info))
    body = "\n\n".join([
        "Written by `benchmarks/alignment.py` (its docstring has the recipe). " + where
        + " Runs are recorded in benchmarks/results/alignment_runs.jsonl as they end and reused, so the cases may "
          "come from several invocations and machines; each record has its date, commit and load, and since "
          "2026-12-07 its CPU (each case's heading says when and where its runs were made).",
        text or "(no case run yet)"]
        + ([] if args.report_only else [f"Run time of this invocation {time.perf_counter() - t0:.0f} s."]))
    write_section("alignment", "Particle alignment on held-out maps (classical, UDL, JUDL, shipped models)", body,
                  {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
