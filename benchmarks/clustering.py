"""Particle clustering on a hard stack: our Siamese pipeline against PCA + KMeans, RELION-style MRA and ASPIRE.

Stack (``--part hard``): 9 classes = 3 views ((rot, tilt) = (0, 0), (0, 30), (90, 90); the first two are
neighbours 30° apart) of each of three real maps (EMD-5625, EMD-1832, GroEL EMD-1080; all resampled to 4.23 Å
in a 64² box), unbalanced (class shares 25, 15, 12, 10, 9, 8, 8, 7, 6 %, assigned to the classes in an order
drawn by the seed), ψ ~ U(0, 360)°, shifts ~ U(−5, 5) px, CTF with defocus 1–2.5 µm already phase-flipped
(|CTF|, what a CTF-corrected stack looks like; every method gets the same images), noise at SNR 0.1 / 0.05 /
0.02 (signal variance inside a disc of radius 0.4 box / noise variance), 3,000 particles, seeds 0–2 (the seed
draws the stack and seeds every method). This stack is **held out**: the clustering defaults were chosen on
two-map stacks without CTF, of balanced classes, and GroEL was in none of them.

Methods, all at their default or best documented settings, times end to end (pre-alignment, training,
refinement, class averages; ASPIRE: everything after the stack is in memory):
- PCA + KMeans on the pre-aligned stack, with and without MRA refinement;
- the Siamese templates started from the PCA + KMeans class means but not trained (learning rate 0; the
  ablation that says what training adds), Siamese + KMeans (our default pipeline stopped before its MRA
  refinement: the same run's labels) and the
  full default pipeline (Siamese + MRA);
- MRA from random-subset references (RELION-style multi-reference alignment);
- ASPIRE's rotation-invariant classifier (``RIRClass2D``, run by ``_aspire_classify.py`` under ASPIRE's own
  interpreter, given by ``--aspire-python``), partitioned by spectral clustering of its nearest-neighbour graph
  and by KMeans on its bispectrum features.

Scores against the true classes: ARI, accuracy after Hungarian matching, per-class recall (the smallest class's
recall and the lowest recall are in the table, every recall in the JSON).

``--part k``: how often choosing K by the silhouette over a range (``cryoden cluster --classes 5-13``) finds the
true 9 on the same stacks. ``--part scale``: 10⁵ particles of 64² clustered from a memory-mapped MRC stack, with
time and peak host memory. Every run is appended to ``benchmarks/results/clustering_runs.jsonl`` as it ends and
skipped when the script is run again (``--fresh`` starts over), so a long grid can be resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, append_run, machine, machine_line, read_runs, write_section  # noqa: E402

from napari_cryoden.cluster import MRAParams, PCAKMeansParams, SiameseParams, cluster  # noqa: E402
from napari_cryoden.cluster.model_selection import SAME_VIEW_RHO, choose_distinct_k  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.metrics import adjusted_rand_index, clustering_accuracy  # noqa: E402
from napari_cryoden.metrics.clustering import match_labels  # noqa: E402
from napari_cryoden.report import markdown_table, plot_montage  # noqa: E402
from napari_cryoden.simulate import simulate_particles  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT.parent / "shared" / "data" / "maps"
MAP_NAMES = ("emd_5625.map", "emd_1832.map", "emd_1080_groel_11.5A.mrc")
VIEWS = ((0.0, 0.0), (0.0, 30.0), (90.0, 90.0))
SHARES = (0.25, 0.15, 0.12, 0.10, 0.09, 0.08, 0.08, 0.07, 0.06)
K_TRUE = len(MAP_NAMES) * len(VIEWS)
PIXEL = 4.23
RUNS = RESULTS / "clustering_runs.jsonl"

UNTRAINED = "Siamese templates not trained + KMeans (ablation)"
OURS = {  # run in this order (the slowest and most wanted first)
    "Siamese + MRA (default pipeline)": ("siamese", SiameseParams()),
    "PCA + KMeans (pre-aligned)": ("pca-kmeans", PCAKMeansParams(prealign_iterations=3)),
    "PCA + KMeans (pre-aligned) + MRA": ("pca-kmeans", PCAKMeansParams(  # the default pipeline's refinement
        prealign_iterations=3, refine_iterations=SiameseParams().refine_iterations)),
    "MRA (random-subset start)": ("mra", MRAParams()),
    UNTRAINED: ("siamese", SiameseParams(learning_rate=0.0, rounds=1, epochs=0.0, min_steps=0, refine_iterations=0)),
}
SIAMESE_ALONE = "Siamese + KMeans (same run, before MRA)"
ASPIRE = {"spectral": "ASPIRE RIRClass2D + spectral (its k-NN graph)",
          "kmeans": "ASPIRE RIRClass2D + KMeans (its bispectrum)"}
ORDER = ["PCA + KMeans (pre-aligned)", "PCA + KMeans (pre-aligned) + MRA", UNTRAINED, SIAMESE_ALONE,
         "Siamese + MRA (default pipeline)", "MRA (random-subset start)", *ASPIRE.values()]


def simulate(n: int, snr: float, seed: int, *, box: int = 64, map_names=MAP_NAMES, views=VIEWS):
    """The hard stack (or, with other ``map_names`` / ``views``, one made the same way: unbalanced shares in an
    order drawn by the seed, phase-flipped CTF, ±5 px)."""
    maps = [read_mrc(MAPS / name, mmap=False) for name in map_names]
    shares = np.random.default_rng(1000 + seed).permutation(SHARES)
    return simulate_particles([m.data for m in maps], voxel_size=[m.pixel_size for m in maps], n_particles=n,
                              box=box, pixel_size=PIXEL, class_views=views, class_fractions=shares, max_shift=5.0,
                              ctf_mode="abs", defocus_range=(10000.0, 25000.0), snr=snr, mask_radius=box * 0.4,
                              seed=seed)


def scores(truth: np.ndarray, labels: np.ndarray) -> dict:
    mapping = match_labels(truth, labels)  # found class -> true class
    matched = np.array([mapping.get(int(c), -1) for c in labels])
    sizes = np.bincount(truth, minlength=K_TRUE)
    recall = [float(np.mean(matched[truth == t] == t)) if sizes[t] else float("nan") for t in range(K_TRUE)]
    return {"ARI": adjusted_rand_index(truth, labels), "accuracy": clustering_accuracy(truth, labels),
            "recall": recall, "smallest-class recall": recall[int(np.argmin(sizes))],
            "lowest recall": float(np.nanmin(recall))}


def done_runs() -> dict:
    return {(r["part"], r["SNR"], r["seed"], r["method"]): r for r in read_runs(RUNS)}


def record(row: dict) -> None:
    row = append_run(RUNS, row)
    print({k: v for k, v in row.items() if k not in ("recall", "labels", "silhouettes")}, flush=True)


def run_ours(sim, name: str, snr: float, seed: int, done: dict, montage: list | None) -> None:
    method, params = OURS[name]
    key = ("hard", snr, seed, name)
    if key in done and (name != "Siamese + MRA (default pipeline)" or ("hard", snr, seed, SIAMESE_ALONE) in done):
        return
    from dataclasses import replace

    torch.manual_seed(seed)
    t = time.perf_counter()
    # Class averages only where the figure needs them: ARI does not depend on them and ASPIRE makes none.
    res = cluster(sim.images, K_TRUE, method=method, params=replace(params, seed=seed),
                  averages=montage is not None and method == "siamese")
    seconds = time.perf_counter() - t
    base = {"part": "hard", "SNR": snr, "seed": seed}
    stages = dict(res.info["seconds"])
    if "averages" in stages:  # timed like the other rows: without the class averages
        seconds -= stages.pop("averages")
    record({**base, "method": name, **scores(sim.classes, res.labels), "seconds": seconds, "stages": stages})
    if "siamese_labels" in res.info and name == "Siamese + MRA (default pipeline)":
        record({**base, "method": SIAMESE_ALONE, **scores(sim.classes, res.info["siamese_labels"]),
                "seconds": float("nan"), "note": "labels of the default run before its MRA refinement",
                "stages": stages})
    if montage is not None and method == "siamese":
        mapping = match_labels(sim.classes, res.labels)
        for c in range(K_TRUE):
            montage.append((sim.references[mapping[c]] if c in mapping else np.zeros_like(sim.references[0]),
                            "truth"))
            montage.append((res.averages.averages[c], f"class {c + 1}: {res.counts[c]}"))


def run_aspire(sim, snr: float, seed: int, done: dict, python: str | None) -> None:
    if not python or all(("hard", snr, seed, name) in done for name in ASPIRE.values()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        stack, out = Path(tmp) / "stack.npy", Path(tmp) / "labels.json"
        np.save(stack, sim.images)
        t = time.perf_counter()
        proc = subprocess.run([python, str(Path(__file__).with_name("_aspire_classify.py")), str(stack),
                               str(K_TRUE), str(seed), str(out), str(PIXEL)], capture_output=True, text=True,
                              cwd=tmp)  # ASPIRE writes its logs into the working folder
        wall = time.perf_counter() - t
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"ASPIRE failed (exit {proc.returncode})")
        got = json.loads(out.read_text())
    for key, name in ASPIRE.items():
        sec = got["seconds"]["classify"] + got["seconds"]["spectral" if key == "spectral" else "bispectrum_kmeans"]
        record({"part": "hard", "SNR": snr, "seed": seed, "method": name,
                **scores(sim.classes, np.asarray(got[key])), "seconds": sec, "aspire": got["aspire"],
                "process wall seconds": wall})


def mean_sd(values) -> str:
    v = np.asarray([x for x in values if x == x], dtype=float)
    if not v.size:
        return ""
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v[0]:.3f}"


def seconds_text(values) -> str:
    v = np.asarray([x for x in values if x == x], dtype=float)
    return f"{v.mean():.0f} ± {v.std(ddof=1):.0f}" if v.size > 1 else (f"{v[0]:.0f}" if v.size else "(in the row below)")


def hard_table(runs: dict, snrs, seeds) -> list[dict]:
    rows = []
    for snr in snrs:
        for name in ORDER:
            got = [runs[k] for k in sorted(runs) if k[0] == "hard" and k[1] == snr and k[2] in seeds and k[3] == name]
            if not got:
                continue
            rows.append({"SNR": snr, "method": name, "seeds": len(got),
                         "ARI": mean_sd(r["ARI"] for r in got), "accuracy": mean_sd(r["accuracy"] for r in got),
                         "smallest-class recall": mean_sd(r["smallest-class recall"] for r in got),
                         "lowest recall": mean_sd(r["lowest recall"] for r in got),
                         "seconds": seconds_text(r["seconds"] for r in got)})
    return rows


def part_hard(args, done: dict) -> tuple[str, list]:
    montage: list = []
    for snr in [] if args.report_only else args.snrs:  # in the order given: the most wanted SNR first, so an interrupted grid has it
        for seed in args.seeds:
            sim = simulate(args.n, snr, seed)
            done = {key: r for key, r in done.items() if key[3] not in args.redo}
            for name in OURS:
                figure = snr == max(args.snrs) and seed == args.seeds[0] and args.figure
                run_ours(sim, name, snr, seed, {} if figure and "Siamese" in name else done, montage if figure else None)
                if figure and montage:  # drawn at once: a long grid may be stopped before its end
                    plot_montage(np.stack([m for m, _ in montage]), ROOT / "docs" / "images" / "cluster_averages.png",
                                 labels=[t for _, t in montage], columns=6,
                                 title=f"true views (left of each pair) and Siamese + MRA class averages, SNR {snr}, "
                                       f"seed {seed}, largest class first")
                    montage = []
            run_aspire(sim, snr, seed, done, args.aspire_python)
            done = done_runs()
    rows = hard_table(done_runs(), sorted(args.snrs, reverse=True), args.seeds)
    text = "\n\n".join([
        f"{args.n} particles per stack, {K_TRUE} unbalanced classes (3 views × 3 maps, shares 6–25 %), 64², "
        "phase-flipped CTF, held-out composition (see the script's docstring); mean ± sd over seeds "
        f"{', '.join(map(str, args.seeds))}. `Siamese + KMeans` is the default run's own labels before its MRA "
        "refinement (its time is in the default pipeline's row). Recall: share of a true class in its "
        "Hungarian-matched class.",
        markdown_table(rows, floatfmt=".3g"),
        "![class averages](images/cluster_averages.png)" if (ROOT / "docs/images/cluster_averages.png").exists()
        else ""])
    return text, rows


def part_k(args, done: dict) -> tuple[str, list]:
    from napari_cryoden.cluster import iter_cluster_range
    from napari_cryoden.progress import run

    ks = list(range(args.k_min, args.k_max + 1))
    rows = []
    redone: set = set()
    for method in args.k_methods:
        method_name, params = {"pca-kmeans": OURS["PCA + KMeans (pre-aligned)"],
                               "pca-kmeans-mra": OURS["PCA + KMeans (pre-aligned) + MRA"],
                               "siamese": OURS["Siamese + MRA (default pipeline)"]}[method]
        for snr in args.k_snrs:
            for seed in args.seeds:
                key = ("k", snr, seed, method)
                again = method in args.redo and key not in redone and not args.report_only
                if key not in done and args.report_only:
                    continue
                if key not in done or again:
                    redone.add(key)
                    from dataclasses import replace

                    sim = simulate(args.n, snr, seed)
                    torch.manual_seed(seed)
                    t = time.perf_counter()
                    res = run(iter_cluster_range(sim.images, ks, method=method_name,
                                                 params=replace(params, seed=seed), averages=False))
                    selection = res.info["model_selection"]
                    silhouettes = {str(k): float(v) for k, v in selection["values"].items()}
                    rho = {str(k): float(v) for k, v in selection["max_rho"].items()}
                    record({"part": "k", "SNR": snr, "seed": seed, "method": method,
                            "chosen": int(max(silhouettes, key=lambda k: (silhouettes[k], -int(k)))),
                            "chosen distinct": choose_distinct_k({int(k): v for k, v in rho.items()}),
                            "silhouettes": silhouettes, "max_rho": rho, "seconds": time.perf_counter() - t})
                    done = done_runs()
                r = done[key]
                rows.append({"method": method, "SNR": snr, "seed": seed, "K by silhouette": r["chosen"],
                             "K by distinctness": (choose_distinct_k({int(k): v for k, v in r["max_rho"].items()})
                                                   if "max_rho" in r else ""),
                             "closest pair rho at 9": round(r["max_rho"][str(K_TRUE)], 3) if "max_rho" in r else "",
                             "silhouette at 9": round(r["silhouettes"][str(K_TRUE)], 3),
                             "best silhouette": round(max(r["silhouettes"].values()), 3),
                             "seconds": round(r["seconds"])})
    summary = []
    for method in args.k_methods:
        for snr in args.k_snrs:
            got = [r for r in rows if r["method"] == method and r["SNR"] == snr]
            by_sil = [r["K by silhouette"] for r in got]
            by_rho = [r["K by distinctness"] for r in got if r["K by distinctness"] != ""]
            summary.append({"method": method, "SNR": snr, "runs": len(got),
                            "silhouette: true K chosen": f"{sum(c == K_TRUE for c in by_sil)} / {len(by_sil)}",
                            "silhouette: K chosen": ", ".join(map(str, by_sil)),
                            "distinctness: true K chosen": f"{sum(c == K_TRUE for c in by_rho)} / {len(by_rho)}",
                            "distinctness: K chosen": ", ".join(map(str, by_rho))})
    text = "\n\n".join([
        f"K chosen over K = {args.k_min}–{args.k_max} (`cryoden cluster --classes {args.k_min}-{args.k_max}`: one "
        "clustering per K after one shared pre-alignment, no class averages) by the highest silhouette of the "
        "method's features (`--k-criterion silhouette`) and by the largest K whose classes are all distinct "
        f"(`--k-criterion distinct`, closest pair rho < {SAME_VIEW_RHO}), on the stacks of the hard benchmark "
        f"(true K = {K_TRUE}; {args.n} particles).",
        markdown_table(summary), markdown_table(rows)])
    return text, rows


def part_scale(args, done: dict) -> tuple[str, list]:
    for n in args.n_scale:
        if (args.again or ("scale", 0.1, 0, f"siamese {n}") not in done) and not args.report_only:
            scale_run(args, n)
            done = done_runs()
    rows = [scale_row(r) for r in sorted(read_runs(RUNS), key=lambda r: r["when"]) if r["part"] == "scale"]
    if not rows:
        return "(not run yet)", []
    text = "\n\n".join([
        "The default Siamese pipeline on 10⁴ and 10⁵ particles of the hard benchmark's kind (SNR 0.1, 9 "
        "unbalanced classes, phase-flipped CTF) read from a memory-mapped MRC stack (`--part scale --n-scale N`). "
        "Peak host memory is the peak resident set (VmHWM) of the process that clustered, which only read the "
        "stack; \"before clustering\" is its resident set (VmRSS) after opening the memory map. Peak anonymous / "
        "file-backed: the largest of each part of the resident set, sampled every 0.1 s (file-backed pages are "
        "the memory-mapped stack's and the libraries'). Every run is listed, oldest first: the commit column says "
        "which code ran, the load column whether other work shared the CPU.",
        markdown_table(rows)])
    return text, rows


def scale_row(r: dict) -> dict:
    return {"particles": int(r["method"].split()[-1]), "box": 64, "SNR": 0.1, "classes": K_TRUE,
            "ARI": round(r["ARI"], 3), "end-to-end seconds": round(r["seconds"]),
            **{f"{k} (s)": round(v) for k, v in r["stages"].items() if k != "total"},
            "peak host memory (GB)": round(r["peak RSS GB"], 2),
            "of which before clustering (GB)": round(r.get("RSS before GB", float("nan")), 2),
            "peak anonymous / file-backed (GB)": (f"{r['peak anonymous GB']:.2f} / {r['peak file-backed GB']:.2f}"
                                                  if "peak anonymous GB" in r else "not sampled"),
            "stack on disk (GB)": round(r["stack GB"], 2), "torch threads": r.get("torch threads", "?"),
            "load at the end": round(r.get("load", float("nan")), 1), "commit": r.get("commit", "?"),
            "when": r.get("when", "")}


def scale_run(args, n_scale: int) -> None:
    from napari_cryoden.io.mrc import write_mrc

    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        path = Path(tmp) / "stack.mrcs"
        t = time.perf_counter()
        parts, classes = [], []
        for i in range(0, n_scale, 20000):  # simulated in chunks, written once
            sim = simulate(min(20000, n_scale - i), 0.1, 100 + i)
            parts.append(sim.images)
            classes.append(sim.classes)
        write_mrc(path, np.concatenate(parts), voxel_size=PIXEL, is_stack=True)
        truth = np.concatenate(classes)
        del parts, sim
        sim_seconds = time.perf_counter() - t
        # The clustering runs in a fresh process, so its peak memory is its own, not the simulation's.
        np.save(Path(tmp) / "truth.npy", truth)
        proc = subprocess.run([sys.executable, __file__, "--scale-child", str(path)], capture_output=True,
                              text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the scale run failed (exit {proc.returncode})")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        record({"part": "scale", "SNR": 0.1, "seed": 0, "method": f"siamese {n_scale}",
                **scores(truth, np.asarray(child["labels"])), "seconds": child["seconds"],
                "stages": child["stages"], "peak RSS GB": child["peak RSS GB"],
                "RSS before GB": child["RSS before GB"], "stack GB": os.path.getsize(path) / 2**30,
                "peak anonymous GB": child["peak anonymous GB"], "peak file-backed GB": child["peak file-backed GB"],
                "simulation seconds": sim_seconds})


def _memory_gb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in GB, from /proc/self/status; elsewhere ru_maxrss.

    Not ru_maxrss on Linux: it survives execve, so a child started by a process that had simulated 5 GB of
    particles would report the parent's peak as its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def scale_child(path: str) -> None:
    """Cluster the memory-mapped stack at ``path`` and print labels, time and peak memory as one JSON line."""
    import threading

    stack = read_mrc(path, mmap=True).data
    base_rss = _memory_gb("VmRSS")
    peaks = {"RssAnon": 0.0, "RssFile": 0.0}
    running = True

    def sample() -> None:  # the kernel keeps no peak of the anonymous part alone: sample it
        while running:
            for field in peaks:
                peaks[field] = max(peaks[field], _memory_gb(field))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    res = cluster(stack, K_TRUE, method="siamese")
    seconds = time.perf_counter() - t
    running = False
    sampler.join()
    print(json.dumps({"labels": res.labels.tolist(), "seconds": seconds, "stages": res.info["seconds"],
                      "peak RSS GB": _memory_gb("VmHWM"), "RSS before GB": base_rss,
                      "peak anonymous GB": peaks["RssAnon"], "peak file-backed GB": peaks["RssFile"]}))


def main() -> None:
    global RUNS
    if len(sys.argv) == 3 and sys.argv[1] == "--scale-child":
        scale_child(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("hard", "k", "scale"), action="append",
                    help="which part(s) to run (default: hard)")
    ap.add_argument("--n", type=int, default=3000, help="particles per stack (hard, k)")
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.05, 0.1, 0.02],
                    help="SNRs in the order they are run (tables list them from high to low)")
    ap.add_argument("--figure", action="store_true",
                    help="(re)draw docs/images/cluster_averages.png from the default pipeline at the highest SNR, "
                         "first seed (that run is repeated with class averages)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--aspire-python", default=os.environ.get("ASPIRE_PYTHON"),
                    help="python of a virtualenv with aspire installed (default $ASPIRE_PYTHON; without it the "
                         "ASPIRE rows are skipped)")
    ap.add_argument("--k-min", type=int, default=5)
    ap.add_argument("--k-max", type=int, default=13)
    ap.add_argument("--k-methods", nargs="+", default=["pca-kmeans-mra", "siamese"],
                    choices=("pca-kmeans", "pca-kmeans-mra", "siamese"))
    ap.add_argument("--k-snrs", type=float, nargs="+", default=[0.1, 0.05])
    ap.add_argument("--n-scale", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--again", action="store_true",
                    help="scale: run the sizes even if they were recorded before (the newest run of each is reported)")
    ap.add_argument("--scratch", default=None, help="folder for the scale part's temporary stack")
    ap.add_argument("--fresh", action="store_true", help="forget earlier runs (clustering_runs.jsonl)")
    ap.add_argument("--redo", nargs="+", default=[], metavar="METHOD",
                    help="hard: run these methods (table names), k: these --k-methods, again although they were "
                         "recorded (after a change to them; the newest record of each run is reported)")
    ap.add_argument("--dry-run", action="store_true", help="print the tables instead of writing the docs")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing new: write the tables of the runs recorded so far")
    ap.add_argument("--runs", type=Path, default=RUNS, help="where runs are recorded (default %(default)s)")
    args = ap.parse_args()
    RUNS = args.runs
    if args.fresh and RUNS.exists():
        RUNS.unlink()
    parts = args.part or ["hard"]
    t0 = time.perf_counter()
    for part in parts:
        text, rows = {"hard": part_hard, "k": part_k, "scale": part_scale}[part](args, done_runs())
        name, title = {"hard": ("clustering", "Particle clustering on a hard, held-out stack"),
                       "k": ("clustering_k", "Choosing the number of classes"),
                       "scale": ("clustering_scale", "Clustering 10⁴ and 10⁵ particles from a memory map")}[part]
        info = machine()
        body = "\n\n".join(["Written by `benchmarks/clustering.py --part " + part + "`. " + machine_line(info)
                            + " Runs are recorded as they end in benchmarks/results/clustering_runs.jsonl and "
                              "reused by later invocations, so rows may come from runs on different days: each "
                              "record there has its time.",
                            text, f"Run time of this invocation {time.perf_counter() - t0:.0f} s."])
        if args.dry_run:
            print(body)
        else:
            write_section(name, title, body, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
