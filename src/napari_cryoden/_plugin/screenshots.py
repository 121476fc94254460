"""Screenshots of every dock widget after a real run, in a real napari window (needs an X display: Xvfb).

Used by ``docs/make_screenshots.py`` (the docs' images) and by ``cryoden demo`` (which runs
``python -m napari_cryoden._plugin.screenshots OUTDIR`` under ``xvfb-run`` so that the core never imports napari).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


class BlackScreenshotError(RuntimeError):
    """The screenshot came out black: Qt rendered offscreen instead of on an X server."""


def settle(viewer) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(3):
        QApplication.processEvents()


def save(viewer, path: Path) -> Path:
    from skimage.io import imsave

    shot = viewer.screenshot(canvas_only=False, flash=False)
    if shot.mean() < 5:
        raise BlackScreenshotError(f"{path.name}: the screenshot is black; run under Xvfb with the xcb platform")
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, shot, check_contrast=False)
    print(f"wrote {path} {shot.shape}", flush=True)
    return path


def run_and_wait(widget, call, timeout: float = 900.0) -> None:
    from qtpy.QtWidgets import QApplication

    call()
    start = time.time()
    while widget.runner.worker is not None and time.time() - start < timeout:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(10):
        QApplication.processEvents()


def cluster_screenshots(viewer, stack: str, outdir: Path) -> list[Path]:
    """Cluster a simulated 3-class stack: the classes on the stack with the embedding plot, then the averages."""
    _, cl = viewer.window.add_plugin_dock_widget("napari-cryoden", "Cluster")
    cl.stack.value = viewer.layers[stack]
    cl.classes.value = 3
    run_and_wait(cl, cl.run)
    for layer in viewer.layers:
        layer.visible = layer.name in (stack, f"{stack} classes")
    viewer.layers.selection.active = viewer.layers[stack]
    cl.plot.pick(7)
    settle(viewer)
    shots = [save(viewer, outdir / "widget_cluster.png")]
    for layer in viewer.layers:
        layer.visible = layer.name in (f"{stack} class averages", f"{stack} class counts")
    viewer.dims.current_step = (0, 0, 0)
    settle(viewer)
    shots.append(save(viewer, outdir / "widget_cluster_averages.png"))
    return shots


def denoise_screenshots(viewer, outdir: Path, *, budget: float = 0.0) -> list[Path]:
    """Denoise the sample tomogram with the widget's first method (the shipped ``pretrained`` model,
    fine-tuned for ``budget`` seconds when > 0), then Compare it with the clean volume."""
    viewer.open_sample("napari-cryoden", "synthetic-tomogram")
    _, dn = viewer.window.add_plugin_dock_widget("napari-cryoden", "Denoise")
    dn.image.value = viewer.layers["tomogram noisy"]
    method = dn.method.value
    dn.form["time_budget"].value = float(budget)
    run_and_wait(dn, lambda: dn.run("both"))
    viewer.grid.enabled = True
    viewer.layers["tomogram clean"].visible = False
    if "tomogram noisy preview" in viewer.layers:
        viewer.layers["tomogram noisy preview"].visible = False
    viewer.dims.current_step = (viewer.layers["tomogram noisy"].data.shape[0] // 2, 0, 0)
    settle(viewer)
    shots = [save(viewer, outdir / "widget_denoise.png")]
    viewer.window.remove_dock_widget("all")
    _, cmp = viewer.window.add_plugin_dock_widget("napari-cryoden", "Compare")
    cmp.reference.value = viewer.layers["tomogram clean"]
    cmp.layers.value = ["tomogram noisy", f"tomogram noisy denoised ({method})"]
    cmp.run()
    settle(viewer)
    shots.append(save(viewer, outdir / "widget_compare.png"))
    return shots


def widget_screenshots(outdir: str | Path, *, budget: float = 0.0, only: str | None = None) -> list[Path]:
    """One screenshot per dock widget, each after a real run on simulated data; returns the PNG paths.

    ``budget``: seconds of fine-tuning of the shipped denoiser in the Denoise screenshot (0: one pass).
    ``only="cluster"``: just the Cluster widget's two screenshots; ``only="align"``: just the Align widget's (the
    shipped UDL model); ``only="denoise"``: the Denoise and Compare widgets'.
    """
    import os
    import tempfile

    import napari

    outdir = Path(outdir)
    shots: list[Path] = []
    # Widgets start from their defaults, not from the user's remembered settings (and do not change them).
    saved_env = os.environ.get("CRYODEN_CONFIG_DIR")
    config = tempfile.TemporaryDirectory(prefix="cryoden-screenshots-")
    os.environ["CRYODEN_CONFIG_DIR"] = config.name
    viewer = napari.Viewer(show=True, title="napari-cryoden")
    viewer.window._qt_window.resize(1500, 950)
    settle(viewer)
    try:
        # Simulate -> a particle stack; Align it reference-free; Cluster it.
        _, sim = viewer.window.add_plugin_dock_widget("napari-cryoden", "Simulate")
        sim.kind.value = "particle stack"
        sim.n.value, sim.snr.value = 100, 0.5
        run_and_wait(sim, sim.run)
        settle(viewer)
        stack = "particles SNR 0.5"
        if only == "denoise":
            viewer.window.remove_dock_widget("all")
            viewer.layers.clear()
            return denoise_screenshots(viewer, outdir, budget=budget)
        if only == "cluster":
            viewer.window.remove_dock_widget("all")
            return cluster_screenshots(viewer, stack, outdir)
        if only != "align":
            shots.append(save(viewer, outdir / "widget_simulate.png"))
        _, al = viewer.window.add_plugin_dock_widget("napari-cryoden", "Align")
        al.stack.value = viewer.layers[stack]
        al.method.value = "udl"  # the shipped network, refined near its angle (the form shows the model row)
        al.load_pretrained()
        run_and_wait(al, al.run)
        for name in (f"{stack} aligned", f"{stack} class references", f"{stack} average"):
            if name in viewer.layers:
                viewer.layers[name].visible = False
        viewer.layers.selection.active = viewer.layers[stack]
        viewer.dims.current_step = (4, 0, 0)
        settle(viewer)
        shots.append(save(viewer, outdir / "widget_align.png"))
        if only == "align":
            return shots
        viewer.window.remove_dock_widget("all")
        shots += cluster_screenshots(viewer, stack, outdir)
        viewer.window.remove_dock_widget("all")
        viewer.layers.clear()

        shots += denoise_screenshots(viewer, outdir, budget=budget)
    finally:
        viewer.close()
        config.cleanup()
        if saved_env is None:
            os.environ.pop("CRYODEN_CONFIG_DIR", None)
        else:
            os.environ["CRYODEN_CONFIG_DIR"] = saved_env
    return shots


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Screenshots of every napari-cryoden dock widget after a real run")
    ap.add_argument("outdir")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="seconds of fine-tuning of the shipped denoiser before its pass (0: none)")
    ap.add_argument("--only", choices=["cluster", "align", "denoise"], default=None)
    args = ap.parse_args(argv)
    try:
        widget_screenshots(args.outdir, budget=args.budget, only=args.only)
    except BlackScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
