"""Alignment accuracy and speed: classical (reference-based and reference-free), UDL, JUDL.

Stacks: projections (along z) of emd_5625, emd_1832 and GroEL (emd_1080, 7-fold about z) at the map's own
pixel size in a 64² or 128² box; psi ~ U(0, 360)°, shifts ~ U(-10, 10) px (sub-pixel), with and without
the CTF (full CTF, defocus 1-2.5 µm; the aligner uses it as a matched filter), SNR 0.1 / 0.05 / 0.02.
Median errors against the truth (reference-free: after removing the one global rotation and its shift).
``--quick`` runs a smaller grid. The Cramér-Rao bound of each no-CTF case is printed beside the errors.
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

from napari_cryoden.align.cross_correlation import (  # noqa: E402
    ClassicalAligner,
    ClassicalParams,
    align_reference_free,
    align_to_reference,
)
from napari_cryoden.align.udl import DeepAlignParams, iter_align_with_model, iter_train  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.metrics.alignment import angular_error, remove_global_rotation, shift_error  # noqa: E402
from napari_cryoden.progress import run  # noqa: E402
from napari_cryoden.report import markdown_table  # noqa: E402
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack  # noqa: E402
from napari_cryoden.simulate.ctf import ctf_2d  # noqa: E402

MAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "maps"
ENTRIES = {"emd_5625": ("emd_5625.map", 1), "emd_1832": ("emd_1832.map", 1),
           "GroEL (C7 top view)": ("emd_1080_groel_11.5A.mrc", 7)}


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
    """Remove the shift that comes with a reference-free result's global frame: a reference centred ``c`` away
    from the true one moves every origin by ``c`` turned by the particle's angle. ``psi`` is the estimated
    angle after removing the global rotation (for a symmetric particle it may differ from the truth by a
    symmetry step, and the offset turns with the estimate, not with the truth)."""
    th = np.deg2rad(psi)
    d = est_o - true_o
    c = np.array([np.median(-(np.cos(th) * d[:, 0] - np.sin(th) * d[:, 1])),
                  np.median(-(np.sin(th) * d[:, 0] + np.cos(th) * d[:, 1]))])
    back = np.stack([np.cos(th) * c[0] + np.sin(th) * c[1], -np.sin(th) * c[0] + np.cos(th) * c[1]], 1)
    return est_o + back


def errors(res, sim, sym, *, free=False):
    psi = res.angles
    o = res.origins
    if free:
        _, psi = remove_global_rotation(psi, sim.angles, symmetry=sym)
        o = global_shift_free(o, sim.origins, psi)
    return (float(np.median(angular_error(psi, sim.angles, symmetry=sym))),
            float(np.median(shift_error(o, sim.origins))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--train-seconds", type=float, default=60.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    n = args.n
    boxes = (64, 128)
    snrs = (0.1, 0.05, 0.02)
    ctfs = ("none", "full") if not args.quick else ("none",)
    names = list(ENTRIES) if not args.quick else ["emd_5625"]
    rows, raw = [], []
    models = {}
    t_start = time.perf_counter()
    for box in boxes:
        # One UDL and one JUDL model per box, trained on emd_5625 at SNR 0.05 (no CTF) for a fixed time.
        ref, apix = reference_image("emd_5625", box)
        train_sim = simulate_alignment_stack(ref, pixel_size=apix, n_per_image=n, max_shift=10, integer_shifts=False,
                                             ctf_mode="none", snr=0.05, seed=99)
        for method in ("udl", "judl"):
            t = time.perf_counter()
            models[(box, method)] = run(iter_train(
                train_sim.images, ref if method == "judl" else None,
                # the network's own defaults (learning rate, batch) — they were measured for the new regressor
                DeepAlignParams(epochs=3, steps_per_epoch=1000, time_budget=args.train_seconds),
                joint=method == "judl"))
            steps = len(models[(box, method)].extra["history"])
            raw.append({"train": method, "box": box, "seconds": time.perf_counter() - t, "steps": steps})
    for name in names:
        sym = ENTRIES[name][1]
        for box in boxes:
            ref, apix = reference_image(name, box)
            for ctf_mode in ctfs:
                for snr in snrs:
                    sim = simulate_alignment_stack(ref, pixel_size=apix, n_per_image=n, max_shift=10,
                                                   integer_shifts=False, ctf_mode=ctf_mode, snr=snr, seed=1)
                    ctf = None
                    if ctf_mode != "none":
                        p = sim.table.particles
                        ctf = ctf_2d((box, box), pixel_size=apix, defocus_u=p["rlnDefocusU"].to_numpy(),
                                     defocus_v=p["rlnDefocusV"].to_numpy(), defocus_angle=p["rlnDefocusAngle"].to_numpy(),
                                     amplitude_contrast=0.07, b_factor=50.0).astype(np.float32)
                    params = ClassicalParams(max_shift=10, symmetry=sym)
                    row = {"map": name, "box": box, "CTF": ctf_mode, "SNR": snr}
                    res = align_to_reference(sim.images, ref, params, ctf=ctf, keep_aligned=False)
                    row["fft ref (deg / px)"] = "%.2f / %.2f" % errors(res, sim, sym)
                    res = align_reference_free(sim.images, params, ctf=ctf, keep_aligned=False)
                    row["fft free (deg / px)"] = "%.2f / %.2f" % errors(res, sim, sym, free=True)
                    for method in ("udl", "judl"):
                        res = run(iter_align_with_model(sim.images, models[(box, method)], ref, params, ctf=ctf,
                                                        keep_aligned=False))
                        net_err = np.abs(np.mod(res.info["network_angles"] - sim.angles + 90, 180) - 90)
                        row[f"{method} (deg / px)"] = "%.2f / %.2f" % errors(res, sim, sym)
                        row[f"{method} net only (deg mod 180)"] = float(np.median(net_err))
                    if ctf_mode == "none":
                        row["CRLB (deg / px)"] = "%.2f / %.2f" % crlb(ref, snr)
                    rows.append(row)
                    print(row, flush=True)
    # Throughput.
    speed = []
    for box in boxes:
        ref, apix = reference_image("emd_5625", box)
        sim = simulate_alignment_stack(ref, pixel_size=apix, n_per_image=2048, max_shift=10, integer_shifts=False,
                                       ctf_mode="none", snr=0.1, seed=2)
        aligner = ClassicalAligner(ref, ClassicalParams(max_shift=10, batch_size=1024))
        aligner.align_batch(sim.images[:256])
        t = time.perf_counter()
        for s in range(0, 2048, 1024):
            aligner.align_batch(sim.images[s:s + 1024])
        speed.append({"task": f"classical reference-based, {box}² (parameters only)",
                      "particles/s": 2048 / (time.perf_counter() - t)})
        t = time.perf_counter()
        align_to_reference(sim.images, ref, ClassicalParams(max_shift=10, batch_size=1024), keep_aligned=True)
        speed.append({"task": f"classical reference-based, {box}² (+ aligned stack and average)",
                      "particles/s": 2048 / (time.perf_counter() - t)})
        for method in ("udl", "judl"):
            res = run(iter_align_with_model(sim.images, models[(box, method)], ref, ClassicalParams(max_shift=10),
                                            keep_aligned=False))
            speed.append({"task": f"{method} network inference, {box}²",
                          "particles/s": 2048 / res.info["network_seconds"]})
            speed.append({"task": f"{method} end to end (network + cross-correlation refinement), {box}²",
                          "particles/s": 2048 / res.info["seconds"]})
    info = machine()
    body = "\n\n".join([
        "Written by `benchmarks/alignment.py`. " + machine_line(info),
        f"{n} particles per stack; median angular error (degrees, modulo 360/symmetry) / median shift error "
        "(pixels). `fft ref`: classical to the known reference; `fft free`: classical reference-free (after "
        "removing the global rotation and its shift); `udl`/`judl`: the network's angle, then the same "
        "cross-correlation for the 180° choice, the shift and the fine search; `net only`: the network's angle "
        "modulo 180° before that. CRLB: the Cramér-Rao bound (median) for a known reference in white noise. "
        f"UDL/JUDL trained {args.train_seconds:.0f} s each per box on emd_5625 SNR 0.05.",
        markdown_table(rows, floatfmt=".3g"),
        markdown_table(speed, floatfmt=".4g"),
        f"Total run time {time.perf_counter() - t_start:.0f} s.",
    ])
    write_section("alignment", "Particle alignment (classical, UDL, JUDL)", body,
                  {"machine": info, "rows": rows, "speed": speed, "training": raw})


if __name__ == "__main__":
    main()
