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
from _record import RESULTS, append_run, machine, machine_line, read_runs, write_section  # noqa: E402

from napari_cryoden.align.udl import build_network, network_angle_error, predict_relative_angles  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.models import load_model  # noqa: E402
from napari_cryoden.report import markdown_table  # noqa: E402
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack  # noqa: E402

MAP = Path(__file__).resolve().parents[2] / "shared" / "data" / "maps" / "emd_5625.map"
RUNS = RESULTS / "align_shipped_tuning.jsonl"


def errors(model_path: str) -> dict:
    model = load_model(model_path, kind="align")
    net = build_network(model)
    m = read_mrc(MAP, mmap=False)
    out = {}
    for box in (64, 128):
        vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size, box=box)
        ref = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
        for snr in (1.0, 0.1, 0.05):
            sim = simulate_alignment_stack(ref, pixel_size=m.pixel_size, n_per_image=300, max_shift=10,
                                           integer_shifts=False, ctf_mode="none", snr=snr, seed=1)
            e = network_angle_error(predict_relative_angles(net, ref, sim.images), sim.angles)
            out[f"{box}², SNR {snr:g}"] = float(np.median(e))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help='"LABEL=PATH" of each candidate model')
    args = ap.parse_args()
    torch.set_num_threads(1)
    for item in args.models:
        label, path = item.split("=", 1)
        model = load_model(path, kind="align")
        print(append_run(RUNS, {"candidate": label, "kind": model.kind,
                                "training data": model.extra.get("training_data", "?"),
                                "steps": model.extra.get("steps"), **errors(path)}), flush=True)
    rows = read_runs(RUNS)
    shown = ("candidate", "kind", "steps", *(f"{b}², SNR {s:g}" for b in (64, 128) for s in (1.0, 0.1, 0.05)), "when")
    table = [{k: (f"{r[k]:.1f}" if isinstance(r[k], float) else r[k]) for k in shown if k in r} for r in rows]
    info = machine()
    body = "\n\n".join([
        "Written by `benchmarks/align_shipped_tuning.py` (its docstring has the recipe). " + machine_line(info),
        "**Tuning map emd_5625** (never used for training, and not one of the held-out maps): median error of the "
        "network's own angle (degrees, modulo 180°; chance 45°), 300 particles, no CTF, one noise draw.",
        markdown_table(table) if table else "(no candidate measured yet)"])
    write_section("align_shipped_tuning", "Choosing the shipped alignment models' training (tuning map)", body,
                  {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
