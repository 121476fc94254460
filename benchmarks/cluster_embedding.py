"""Does the Siamese embedding add information? PCA + KMeans against Siamese + KMeans on the same pre-aligned input,
neither refined by MRA (issue 15, item 1).

Stacks: 8 classes = 4 views ((rot, tilt) = (0, 0), (0, 30), (0, 90), (90, 90); the first two are neighbours) of
each of two real maps (emd_5625, emd_1832, 4.23 Å, 64² box), ψ ~ U(0, 360)°, shifts ~ U(−5, 5) px, noise at the
stated SNR (inside a disc of radius 0.4 box), optionally |CTF| (``--ctf abs``). Every stack goes through the
clustering front end once (Fourier crop to 32², three passes of the classical reference-free pre-alignment, soft
disc mask); the methods then run on that same array. ARI against the true classes, mean ± sd over the seeds
(the seed draws the stack and seeds the method). Extra ``--variants`` switch one ingredient of the Siamese stage
off at a time. Prints a Markdown table and writes ``benchmarks/results/cluster_embedding.json``; it does not edit
docs/benchmarks.md (the Siamese section of docs/cluster.md quotes the run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, machine, machine_line  # noqa: E402

from napari_cryoden.cluster.mra import iter_prealign  # noqa: E402
from napari_cryoden.cluster.pseudo_labels import kmeans_labels, pca_features, work_images  # noqa: E402
from napari_cryoden.cluster.siamese import SiameseParams, iter_train_siamese  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.metrics import adjusted_rand_index, clustering_accuracy  # noqa: E402
from napari_cryoden.progress import run  # noqa: E402
from napari_cryoden.report import markdown_table  # noqa: E402
from napari_cryoden.simulate import simulate_particles  # noqa: E402
from napari_cryoden.simulate.ctf import CTFParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT.parent / "shared" / "data" / "maps"
VIEWS = ((0.0, 0.0), (0.0, 30.0), (0.0, 90.0), (90.0, 90.0))

VARIANTS = {
    "no confidence selection": {"confident_fraction": 1.0},
    "no same-particle positives": {"instance_fraction": 0.0},
    "cartesian encoder": {"encoder": "cartesian", "learning_rate": 1e-3},
    "polar encoder (the default before 2026-12-04)": {"encoder": "polar", "rounds": 4, "learning_rate": 1e-3},
    "polar encoder, 6 angular harmonics": {"encoder": "polar", "rounds": 4, "harmonics": 6, "learning_rate": 1e-3},
    "templates trained at learning rate 1e-3": {"learning_rate": 1e-3},
    "templates not trained (learning rate 0)": {"learning_rate": 0.0, "rounds": 1},
    "templates at the centre only (no shifted matches)": {"template_shift": 0.0},
    "old recipe (cartesian, all labels, no copies)": {"encoder": "cartesian", "learning_rate": 1e-3,
                                                      "confident_fraction": 1.0,
                                                      "instance_fraction": 0.0},
}


def prealigned(n: int, snr: float, seed: int, ctf: str, iterations: int = 3) -> tuple[np.ndarray, np.ndarray]:
    maps = [read_mrc(MAPS / name, mmap=False) for name in ("emd_5625.map", "emd_1832.map")]
    sim = simulate_particles([m.data for m in maps], voxel_size=[m.pixel_size for m in maps], n_particles=n,
                             box=64, pixel_size=maps[0].pixel_size, class_views=VIEWS, max_shift=5.0, snr=snr,
                             mask_radius=64 * 0.4, ctf_mode=ctf, ctf=CTFParams(b_factor=50.0), seed=seed)
    work = work_images(sim.images, work_box=32, mask_fraction=None)
    pre = run(iter_prealign(work, box=64, iterations=iterations, max_shift=0.0, seed=seed))
    return work_images(pre.aligned, work_box=32), sim.classes


def mean_sd(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="particles per stack")
    ap.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.05])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ctf", choices=("none", "abs", "full"), default="none")
    ap.add_argument("--variants", action="store_true", help="also the Siamese stage with one ingredient off")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), default=[],
                    help="only these variants (repeatable; implies --variants)")
    ap.add_argument("--no-defaults", action="store_true", help="leave out the default Siamese row")
    ap.add_argument("--prealign", type=int, default=3,
                    help="passes of the pre-alignment (0: the methods see the particles at their random angles)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="results file name under benchmarks/results (default cluster_embedding.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    k = 2 * len(VIEWS)
    methods = {"PCA + KMeans": None, "Siamese + KMeans (defaults)": SiameseParams(refine_iterations=0)}
    if args.no_defaults:
        del methods["Siamese + KMeans (defaults)"]
    if args.variants or args.variant:
        methods.update({f"Siamese + KMeans, {name}": replace(SiameseParams(refine_iterations=0), **change)
                        for name, change in VARIANTS.items() if not args.variant or name in args.variant})
    runs = []
    t_start = time.perf_counter()
    for snr in args.snr:
        for seed in args.seeds:
            x, truth = prealigned(args.n, snr, seed, args.ctf, args.prealign)
            start, _ = kmeans_labels(pca_features(x, 20, seed=seed), k, seed=seed)
            for name, params in methods.items():
                t = time.perf_counter()
                if params is None:
                    labels = start
                else:
                    labels = run(iter_train_siamese(x, k, start, replace(params, seed=seed))).labels
                runs.append({"SNR": snr, "seed": seed, "method": name, "ARI": adjusted_rand_index(truth, labels),
                             "accuracy": clustering_accuracy(truth, labels),
                             "seconds": time.perf_counter() - t})
                print(runs[-1], flush=True)
    rows = []
    for snr in args.snr:
        for name in methods:
            sel = [r for r in runs if r["SNR"] == snr and r["method"] == name]
            rows.append({"SNR": snr, "method": name, "ARI": mean_sd([r["ARI"] for r in sel]),
                         "accuracy": mean_sd([r["accuracy"] for r in sel]),
                         "seconds": mean_sd([r["seconds"] for r in sel])})
    info = machine()
    text = "\n\n".join([
        "Written by `benchmarks/cluster_embedding.py`. " + machine_line(info),
        f"{args.n} particles, {k} classes (4 views × 2 maps, two neighbouring views), 64² → 32² work box, "
        f"ψ ~ U(0, 360)°, shifts ±5 px, CTF: {args.ctf}; {args.prealign} pre-alignment passes; the same input for "
        f"every method, no MRA "
        f"refinement; mean ± sd over seeds {args.seeds}. Total {time.perf_counter() - t_start:.0f} s.",
        markdown_table(rows),
    ])
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / (args.out or ("cluster_embedding.json" if args.prealign else "cluster_embedding_unaligned.json"))
    out.write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows, "runs": runs}, indent=2,
                              default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
