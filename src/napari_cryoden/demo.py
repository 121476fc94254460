"""``cryoden demo``: run the product end to end on the built-in sample data and write a report.

Each capability adds its step here as it lands, so the demo always shows everything the product does.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, metrics
from .errors import CryodenOutputError
from .report import markdown_table, plot_fsc, plot_montage, plot_slices, write_text
from .sample_data import sample_particles, sample_tomogram

log = logging.getLogger(__name__)


@dataclass
class DemoRun:
    """What the demo's steps share: the output folder, the settings and what earlier steps made."""

    out: Path
    seed: int = 0
    quick: bool = False
    screenshots: bool = True
    made: dict = field(default_factory=dict)  # e.g. "tomogram" -> phantom, "particles" -> simulated stack


def run_demo(outdir: str | os.PathLike, *, seed: int = 0, quick: bool = False, screenshots: bool = True) -> Path:
    """Simulate, denoise, align, cluster, evaluate and plot; with ``screenshots``, also a screenshot of every
    dock widget after a real run (napari under Xvfb, in a subprocess). Returns the path of ``report.md``.

    The demo is the list :data:`STEPS`: each step is a function of the :class:`DemoRun` that returns its report
    section (Markdown) or None; a new capability adds one step there."""
    from tqdm import tqdm

    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise CryodenOutputError(out, "exists and is not a folder; give a folder for the demo outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CryodenOutputError(out, f"cannot create the folder ({exc.strerror})") from exc
    demo = DemoRun(out=out, seed=seed, quick=quick, screenshots=screenshots)
    t0 = time.perf_counter()
    sections: list[str] = []
    with tqdm(total=len(STEPS) + 1, desc="demo", unit="step") as steps:
        for step in STEPS:
            section = step(demo)
            if section:
                sections.append(section)
            steps.update()
        header = "\n".join([
            "# napari-cryoden demo report",
            "",
            f"napari-cryoden {__version__}, Python {platform.python_version()}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
            f"ran in {time.perf_counter() - t0:.1f} s.",
            "",
        ])
        report = write_text(out / "report.md", header + "\n\n".join(sections) + "\n")
        steps.update()
    return report


def tomogram_step(demo: DemoRun) -> str:
    """A tomogram phantom with even/odd halves, its slices and FSC curves."""
    out = demo.out
    ph = demo.made["tomogram"] = sample_tomogram(halves=True, seed=demo.seed)
    files = ph.save(out, stem="tomogram")
    # One PSNR/SSIM definition in the whole report: after a least-squares affine fit to the clean volume.
    noisy = metrics.compare(ph.clean, ph.noisy, fit=True, fsc=False).rows
    fsc_halves = metrics.fourier_shell_correlation(ph.even, ph.odd, voxel_size=ph.voxel_size)
    fsc_truth = metrics.fourier_shell_correlation(ph.clean, ph.noisy, voxel_size=ph.voxel_size)
    plot_slices({"noisy": ph.noisy, "clean": ph.clean}, out / "tomogram_slices.png", voxel_size=ph.voxel_size)
    plot_fsc({"even vs odd": fsc_halves, "noisy vs clean": fsc_truth}, out / "tomogram_fsc.png")
    return "\n".join([
        "## Tomogram phantom",
        f"Shape {ph.noisy.shape} (z, y, x), voxel {ph.voxel_size:g} Å, requested SNR {ph.snr:g} "
        f"(measured {metrics_snr(ph):.3f}); {len(ph.particles)} particles of EMD-5625 placed at random.",
        "",
        "PSNR and SSIM here and below are after a least-squares affine fit of each volume to the clean one.",
        "",
        markdown_table([{"volume": "noisy", "PSNR (dB)": noisy["PSNR (dB)"], "SSIM": noisy["SSIM"],
                         "FSC 0.143 vs clean (Å)": fsc_truth.resolution(0.143)}]),
        "",
        f"Files: {', '.join(p.name for p in files.values())}",
        "",
        "![slices](tomogram_slices.png)",
        "",
        "![fsc](tomogram_fsc.png)",
    ])


def particles_step(demo: DemoRun) -> str:
    """A particle stack with known classes, angles and shifts."""
    out = demo.out
    sim = demo.made["particles"] = sample_particles(n_particles=60 if demo.quick else 150, seed=demo.seed)
    written = sim.save(out / "particles.mrcs", out / "particles.star", references_path=out / "particle_references.mrcs")
    per_class = max(1, 16 // len(sim.references))
    order = np.concatenate([np.flatnonzero(sim.classes == c)[:per_class] for c in range(len(sim.references))])
    plot_montage(sim.images[order], out / "particles_montage.png",
                 labels=[f"class {c + 1}, psi {a:.0f}°" for c, a in zip(sim.classes[order], sim.angles[order])],
                 title=f"simulated particles, SNR {sim.snr:g}")
    plot_montage(sim.references, out / "particle_references.png",
                 labels=[f"class {i + 1}" for i in range(len(sim.references))], columns=len(sim.references))
    counts = np.bincount(sim.classes)
    return "\n".join([
        "## Particle stack",
        f"{len(sim.images)} particles, box {sim.images.shape[-1]}, pixel {sim.pixel_size:g} Å, SNR {sim.snr:g}; "
        f"class sizes {counts.tolist()}; truth in `particles.star` (rlnAnglePsi, rlnOriginX/YAngst, rlnClassNumber).",
        "",
        f"Files: {', '.join(p.name for p in written.values())}",
        "",
        "![references](particle_references.png)",
        "",
        "![particles](particles_montage.png)",
    ])


def denoise_step(demo: DemoRun) -> str:
    """Self-supervised denoising of the tomogram with the default (best measured) method, Self2Self, on a short
    wall-clock budget."""
    from .denoise.engine import default_params, iter_predict, iter_train
    from .denoise.registry import DEFAULT_METHOD
    from .io.mrc import write_mrc
    from .progress import run

    out, ph, seed = demo.out, demo.made["tomogram"], demo.seed
    budget = 5.0 if demo.quick else 60.0
    params = default_params(DEFAULT_METHOD, dims=3, time_budget=budget, n_predictions=2 if demo.quick else 8)
    model = run(iter_train(ph.noisy, params, method=DEFAULT_METHOD, seed=seed))
    denoised = run(iter_predict(model, ph.noisy, seed=seed))
    write_mrc(out / "tomogram_denoised.mrc", denoised, voxel_size=ph.voxel_size)
    plot_slices({"noisy": ph.noisy, DEFAULT_METHOD: denoised, "clean": ph.clean}, out / "tomogram_denoised.png",
                voxel_size=ph.voxel_size)
    den_rows = []
    for name, v in (("noisy", ph.noisy), (DEFAULT_METHOD, denoised)):
        rows = metrics.compare(ph.clean, v, fit=True, fsc=False).rows
        den_rows.append({"volume": name, "PSNR (dB)": rows["PSNR (dB)"], "SSIM": rows["SSIM"]})
    return "\n".join([
        f"## Denoising ({DEFAULT_METHOD}, the default method)",
        f"{len(model.history)} training steps in a {budget:g} s budget, then tiled prediction "
        f"({_prediction_text(model, params)}). PSNR/SSIM after the same affine fit to the clean volume:",
        "",
        markdown_table(den_rows),
        "",
        "![denoised](tomogram_denoised.png)",
    ])


def align_step(demo: DemoRun) -> str:
    """Classical alignment of the particles of class 1 to their true reference."""
    from .align.cross_correlation import align_to_reference
    from .metrics import angular_error, shift_error

    sim = demo.made["particles"]
    sel = sim.classes == 0
    res = align_to_reference(sim.images[sel], sim.references[0])
    ang = angular_error(res.angles, sim.angles[sel])
    shf = shift_error(res.origins, sim.origins[sel])
    plot_montage(np.stack([sim.references[0], res.average]), demo.out / "alignment_average.png",
                 labels=["true reference", f"average of {int(sel.sum())} aligned"], columns=2)
    return "\n".join([
        "## Alignment (classical, to the reference)",
        f"{int(sel.sum())} particles of class 1: median angular error {np.median(ang):.2f}°, median shift error "
        f"{np.median(shf):.2f} px (SNR {sim.snr:g}).",
        "",
        "![average](alignment_average.png)",
    ])


def _prediction_text(model, params) -> str:
    """How the denoiser predicts: one pass of its distilled student, or masked passes averaged."""
    if getattr(params, "prediction", "masked") == "student" and getattr(model, "student", None) is not None:
        return "one pass of the student distilled from the averaged masked passes"
    if getattr(params, "prediction", "masked") == "unmasked":
        return "one unmasked pass"
    return f"{params.n_predictions} masked passes averaged"


def cluster_step(demo: DemoRun) -> str:
    """Clustering of the whole stack into its classes (the default method, MRA from random-subset references)."""
    from .cluster import DEFAULT_METHOD, cluster, methods
    from .metrics import adjusted_rand_index, clustering_accuracy

    sim = demo.made["particles"]
    cres = cluster(sim.images, len(sim.references), method=DEFAULT_METHOD)
    ari = adjusted_rand_index(sim.classes, cres.labels)
    acc = clustering_accuracy(sim.classes, cres.labels)
    plot_montage(cres.averages.averages, demo.out / "class_averages.png",
                 labels=[f"class {c + 1}: {int(n)}" for c, n in enumerate(cres.counts)],
                 columns=len(cres.counts))
    return "\n".join([
        f"## Clustering ({DEFAULT_METHOD}: {methods()[DEFAULT_METHOD].description})",
        f"{len(cres.labels)} particles into {cres.k} classes in {cres.info['seconds']['total']:.1f} s: ARI "
        f"{ari:.3f}, accuracy {acc:.3f} against the true classes; class averages, largest class first:",
        "",
        "![class averages](class_averages.png)",
    ])


def screenshots_step(demo: DemoRun) -> str | None:
    """A screenshot of every dock widget after a real run."""
    if not demo.screenshots:
        return None
    shots, problem = widget_screenshots(demo.out / "screenshots", budget=3.0 if demo.quick else 20.0)
    lines = ["## The dock widgets", ""]
    lines += [f"![{p.stem}](screenshots/{p.name})" for p in shots]
    if problem:
        lines.append(f"Screenshots incomplete: {problem}")
    return "\n".join(lines)


#: The demo, in order; each step returns its report section.
STEPS = (tomogram_step, particles_step, denoise_step, align_step, cluster_step, screenshots_step)


def widget_screenshots(outdir: Path, *, budget: float) -> tuple[list[Path], str | None]:
    """Run ``python -m napari_cryoden._plugin.screenshots`` (under ``xvfb-run`` when there is no display);
    returns the PNGs written and, when something was missing or failed, why."""
    import importlib.util
    import shutil
    import subprocess
    import sys

    if importlib.util.find_spec("napari") is None:
        return [], "napari is not installed"
    cmd = [sys.executable, "-m", "napari_cryoden._plugin.screenshots", str(outdir), "--budget", f"{budget:g}"]
    if not os.environ.get("DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            return [], "no X display and no xvfb-run (install xvfb, or run `make demo`, which does)"
        cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", *cmd]
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    except subprocess.TimeoutExpired:
        return sorted(outdir.glob("widget_*.png")), "the screenshot run took over 20 minutes and was stopped"
    shots = sorted(outdir.glob("widget_*.png"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        log.warning("widget screenshots failed: %s", tail[0])
        return shots, f"the screenshot run failed ({tail[0]})"
    return shots, None


def metrics_snr(ph) -> float:
    """Measured SNR of the phantom's full noisy volume."""
    from .simulate import measure_snr

    return float(measure_snr(ph.clean, ph.noisy))
