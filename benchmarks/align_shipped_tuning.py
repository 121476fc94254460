"""How the shipped alignment models' training recipe was chosen: on the **tuning** map only.

Each candidate model (``scripts/train_align_models.py`` with other ``--snr`` / ``--steps``, written with
``--out``) predicts the relative angle of 300 projections of **emd_5625** (the tuning map: neither a training
map nor one of the held-out maps of ``benchmarks/alignment.py``) to the reference, in a 64² and a 128² box,
SNR 1 / 0.1 / 0.05, no CTF, seed 1; the table is the median error of the network's own angle, modulo 180°
(chance 45°). The held-out figures are in ``benchmarks/alignment.py``'s tables.

    python benchmarks/align_shipped_tuning.py "SNR 0.5-1, 4000 steps=/tmp/a/align_udl.pt" ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _record import RESULTS, append_run, machine, machine_line, read_runs, write_section  # noqa: E402

from napari_cryoden.align.udl import (  # noqa: E402
    build_network,
    inference_settings,
    network_angle_error,
    predict_relative_angles,
)
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.models import load_model  # noqa: E402
from napari_cryoden.report import markdown_table  # noqa: E402
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack  # noqa: E402

MAP = Path(__file__).resolve().parents[2] / "shared" / "data" / "maps" / "emd_5625.map"
RUNS = RESULTS / "align_shipped_tuning.jsonl"
TUNING_SEED = 424242  # the synthetic tuning volumes; scripts/train_align_models.py draws its own from --seed (0)


def unseen_volumes(n_blobs: int = 4, n_views: int = 3):
    """(name, volume, voxel size, views) of the tuning content: emd_5625 and ``n_blobs`` synthetic volumes drawn
    from a seed the training script never uses (other volumes than it trained on), each at ``n_views`` views."""
    from train_align_models import blob_volume

    rng = np.random.default_rng(TUNING_SEED)
    m = read_mrc(MAP, mmap=False)
    out = [("emd_5625", np.asarray(m.data, np.float32), float(m.pixel_size))]
    out += [(f"unseen blobs {i}", blob_volume(rng), 1.0) for i in range(n_blobs)]
    return [(name, vol, voxel, [(float(rng.uniform(0, 360)), float(np.rad2deg(np.arccos(rng.uniform(-1, 1)))))
                                for _ in range(n_views)]) for name, vol, voxel in out]


DIAMETERS = (120.0, 180.0, 260.0, 350.0)  # Å: the unseen blob volumes' physical size in the CTF columns


def content_errors(net, model, volumes, box: int, snr: float, *, fill: float = 0.6, ctf: str = "none",
                   rotations: int | None = None) -> float:
    """Median error over ``volumes`` (:func:`unseen_volumes`) and their views (each volume spanning ``fill`` of
    the box, 100 particles a view), the network applied as ``cryoden align`` applies it
    (:func:`~napari_cryoden.align.udl.inference_settings`; ``rotations`` overrides its turned copies). With a CTF (defocus 1-2.5 µm, as the held-out benchmark)
    the blobs are particles of :data:`DIAMETERS` Å (emd_5625 its own size), so the pixel size is realistic."""
    errs = []
    for k, (_name, vol, voxel, views) in enumerate(volumes):
        if ctf != "none" and k > 0:
            voxel = DIAMETERS[(k - 1) % len(DIAMETERS)] / (vol.shape[0] * 0.75)
        pixel = voxel * vol.shape[0] * 0.75 / (box * fill)
        resampled = resample_map(vol, voxel_size=voxel, pixel_size=pixel, box=box)
        for j, (rot, tilt) in enumerate(views):
            ref = project_map(resampled, rot=rot, tilt=tilt, psi=0.0)[0].astype(np.float32)
            sim = simulate_alignment_stack(ref, pixel_size=pixel, n_per_image=100, max_shift=box / 10,
                                           integer_shifts=False, ctf_mode=ctf, defocus_range=(10000.0, 25000.0),
                                           snr=snr, seed=10 * k + j)
            how = _how(model, ref, box, box / 10, rotations)
            errs.append(network_angle_error(predict_relative_angles(net, ref, sim.images, **how), sim.angles))
    return float(np.median(np.concatenate(errs)))


def _how(model, ref, box, max_shift, rotations):
    how = inference_settings(model, ref, box, max_shift=max_shift, refine="none")
    return how if rotations is None else {**how, "rotations": rotations}


def errors(model_path: str, rotations: int | None = None) -> dict:
    model = load_model(model_path, kind="align")
    net = build_network(model)
    m = read_mrc(MAP, mmap=False)
    volumes = unseen_volumes()
    k = {"rotations": rotations}
    out = {f"unseen, {box}², SNR 0.1": content_errors(net, model, volumes, box, 0.1, **k) for box in (64, 128)}
    out["unseen small, 128², SNR 0.1"] = content_errors(net, model, volumes, 128, 0.1, fill=0.25, **k)
    out["unseen CTF, 128², SNR 0.1"] = content_errors(net, model, volumes, 128, 0.1, fill=0.5, ctf="full", **k)
    out["unseen CTF small, 128², SNR 0.1"] = content_errors(net, model, volumes, 128, 0.1, fill=0.25, ctf="full",
                                                            **k)
    for box in (64, 128):
        vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size, box=box)
        ref = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
        for snr in (1.0, 0.1, 0.05):
            sim = simulate_alignment_stack(ref, pixel_size=m.pixel_size, n_per_image=300, max_shift=10,
                                           integer_shifts=False, ctf_mode="none", snr=snr, seed=1)
            how = _how(model, ref, box, 10, rotations)
            e = network_angle_error(predict_relative_angles(net, ref, sim.images, **how), sim.angles)
            out[f"{box}², SNR {snr:g}"] = float(np.median(e))
        # as the held-out CTF case of benchmarks/alignment.py: the full CTF, defocus 1-2.5 µm, the map's own pixel
        sim = simulate_alignment_stack(ref, pixel_size=m.pixel_size, n_per_image=300, max_shift=10,
                                       integer_shifts=False, ctf_mode="full", snr=0.1, seed=1)
        e = network_angle_error(predict_relative_angles(net, ref, sim.images, **_how(model, ref, box, 10, rotations)),
                                sim.angles)
        out[f"{box}², SNR 0.1, CTF"] = float(np.median(e))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help='"LABEL=PATH" of each candidate model')
    ap.add_argument("--rotations", type=int, default=None,
                    help="turned copies each particle is read in (default: as cryoden align applies the model)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for item in args.models:
        label, path = item.split("=", 1)
        model = load_model(path, kind="align")
        rotations = args.rotations if args.rotations is not None else inference_settings(
            model, np.zeros((64, 64)), 64, max_shift=0, refine="none")["rotations"]
        window = "cropped (fill 0.4)" if model.config.get("any_box") else "whole box"
        print(append_run(RUNS, {"candidate": label, "kind": model.kind, "network window": window,
                                "rotations": rotations,
                                "training data": model.extra.get("training_data", "?"),
                                "steps": model.extra.get("steps"), **errors(path, rotations)}), flush=True)
    rows = read_runs(RUNS)
    shown = ("candidate", "kind", "steps", *(f"{b}², SNR {s:g}" for b in (64, 128) for s in (1.0, 0.1, 0.05)),
             "64², SNR 0.1, CTF", "128², SNR 0.1, CTF",
             "unseen, 64², SNR 0.1", "unseen, 128², SNR 0.1", "unseen small, 128², SNR 0.1",
             "unseen CTF, 128², SNR 0.1", "unseen CTF small, 128², SNR 0.1", "network window", "rotations", "when")
    table = [{k: (f"{r[k]:.1f}" if isinstance(r.get(k), float) else r.get(k, "–")) for k in shown} for r in rows]
    info = machine()
    body = "\n\n".join([
        "Written by `benchmarks/align_shipped_tuning.py` (its docstring has the recipe). " + machine_line(info),
        "**Tuning map emd_5625** (never used for training, and not one of the held-out maps): median error of the "
        "network's own angle (degrees, modulo 180°; chance 45°), 300 particles, no CTF unless the column says *CTF* "
        "(full CTF, defocus 1-2.5 µm, as the held-out CTF case), one noise draw. "
        "*unseen*: the median over emd_5625 and four synthetic blob volumes the training never drew (seed "
        f"{TUNING_SEED}), three random views each, 100 particles a view (rows before 2026-12-07 did not measure it); "
        "the volume spans 60 % of the box, *small* 25 %. *CTF*: full CTF, defocus 1-2.5 µm, the blobs particles "
        f"of {', '.join(f'{d:g}' for d in DIAMETERS)} Å spanning 50 % (or 25 %) of the box. *network window*: "
        "rows measured since the shipped models read a window cropped around the particle (``network_crop``) "
        "say so; earlier rows read the whole box.",
        markdown_table(table) if table else "(no candidate measured yet)"])
    write_section("align_shipped_tuning", "Choosing the shipped alignment models' training (tuning map)", body,
                  {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
