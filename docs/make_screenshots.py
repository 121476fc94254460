"""Regenerate the screenshots and figures in docs/images (run under Xvfb: `make docs-screenshots`).

Screenshots come from a real napari window (``show=True``) rendered by Mesa under Xvfb.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"


def _settle(viewer) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(3):
        QApplication.processEvents()


def _save(viewer, name: str) -> None:
    from skimage.io import imsave

    from napari_cryoden.report import _figure  # noqa: F401  (keeps matplotlib on Agg)

    shot = viewer.screenshot(canvas_only=False, flash=False)
    if shot.mean() < 5:
        sys.exit(f"{name}: the screenshot is black; run under Xvfb with the xcb platform")
    imsave(IMAGES / name, shot, check_contrast=False)
    print(f"wrote {IMAGES / name} {shot.shape}")


def sample_screenshots() -> None:
    import napari

    viewer = napari.Viewer(show=True, title="napari-cryoden")
    viewer.window._qt_window.resize(1400, 900)
    _settle(viewer)
    viewer.open_sample("napari-cryoden", "synthetic-tomogram")
    viewer.layers["tomogram clean"].visible = True
    viewer.grid.enabled = True
    viewer.dims.current_step = (viewer.layers["tomogram noisy"].data.shape[0] // 2, 0, 0)
    _settle(viewer)
    _save(viewer, "sample_tomogram.png")
    viewer.layers.clear()
    viewer.grid.enabled = False
    viewer.open_sample("napari-cryoden", "synthetic-particles")
    viewer.layers["particles truth"].visible = True
    viewer.layers.selection.active = viewer.layers["particles"]
    viewer.dims.current_step = (3, 0, 0)
    _settle(viewer)
    _save(viewer, "sample_particles.png")
    viewer.close()


def convention_figure() -> None:
    """The in-plane convention: reference, rotated by psi, then moved by -origin."""
    from napari_cryoden.align.transforms import align_images, transform_images
    from napari_cryoden.report import _figure
    from napari_cryoden.report import _save as save_fig

    # A letter F: chiral, so rotation direction and mirror errors are obvious at a glance.
    ref = np.zeros((64, 64), np.float32)
    ref[18:46, 24:30] = 1.0  # stem
    ref[18:24, 30:44] = 1.0  # top bar (rows point down: the top of the screen)
    ref[29:34, 30:40] = 1.0  # middle bar
    psi, origin = 30.0, (6.0, -4.0)
    rotated = transform_images(ref, angles=psi)
    particle = transform_images(ref, angles=psi, shifts=origin)
    aligned = align_images(particle, angles=psi, shifts=origin)
    fig = _figure(figsize=(11, 3.2))
    panels = [(ref, "reference"), (rotated, f"rotated by psi = {psi:g}°"),
              (particle, f"particle: then moved by -origin\norigin = (x {origin[0]:g}, y {origin[1]:g}) px"),
              (aligned, "aligned: shift by +origin,\nrotate by -psi")]
    c = ref.shape[0] // 2
    for i, (img, title) in enumerate(panels):
        ax = fig.add_subplot(1, 4, i + 1)
        ax.imshow(img, cmap="gray")
        ax.plot([c], [c], "r+", ms=10)
        ax.annotate("", xy=(c + 12, c), xytext=(c, c), arrowprops=dict(arrowstyle="->", color="c"))
        ax.annotate("", xy=(c, c + 12), xytext=(c, c), arrowprops=dict(arrowstyle="->", color="y"))
        ax.text(c + 13, c, "x", color="c", va="center")
        ax.text(c, c + 15, "y", color="y", ha="center")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("RELION in-plane convention, rows drawn downwards as in napari: + = box centre (N // 2)",
                 fontsize=9)
    save_fig(fig, IMAGES / "convention_psi_origin.png")
    print(f"wrote {IMAGES / 'convention_psi_origin.png'}")


def _run_and_wait(widget, call, timeout: float = 900.0) -> None:
    import time

    from qtpy.QtWidgets import QApplication

    call()
    start = time.time()
    while widget.runner.worker is not None and time.time() - start < timeout:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(10):
        QApplication.processEvents()


def widget_screenshots() -> None:
    """One screenshot per dock widget, each after a real run on the sample data."""
    import napari

    viewer = napari.Viewer(show=True, title="napari-cryoden")
    viewer.window._qt_window.resize(1500, 950)
    _settle(viewer)

    # Simulate -> a particle stack; Align it reference-free.
    _, sim = viewer.window.add_plugin_dock_widget("napari-cryoden", "Simulate")
    sim.kind.value = "particle stack"
    sim.n.value, sim.snr.value = 100, 0.5
    _run_and_wait(sim, sim.run)
    _settle(viewer)
    _save(viewer, "widget_simulate.png")
    _, al = viewer.window.add_plugin_dock_widget("napari-cryoden", "Align")
    al.stack.value = viewer.layers["particles SNR 0.5"]
    _run_and_wait(al, al.run)
    for name in ("particles SNR 0.5 aligned", "particles SNR 0.5 class references", "particles SNR 0.5 average"):
        viewer.layers[name].visible = False
    viewer.layers.selection.active = viewer.layers["particles SNR 0.5"]
    viewer.dims.current_step = (4, 0, 0)
    _settle(viewer)
    _save(viewer, "widget_align.png")
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()

    # Denoise the sample tomogram, then Compare with the clean volume.
    viewer.open_sample("napari-cryoden", "synthetic-tomogram")
    _, dn = viewer.window.add_plugin_dock_widget("napari-cryoden", "Denoise")
    dn.image.value = viewer.layers["tomogram noisy"]
    dn.method.value = "self2self"
    for name, value in dict(time_budget=60.0, patch_size=32, n_predictions=4).items():
        dn.form[name].value = value
    _run_and_wait(dn, lambda: dn.run("both"))
    viewer.grid.enabled = True
    viewer.layers["tomogram clean"].visible = False
    if "tomogram noisy preview" in viewer.layers:
        viewer.layers["tomogram noisy preview"].visible = False
    viewer.dims.current_step = (viewer.layers["tomogram noisy"].data.shape[0] // 2, 0, 0)
    _settle(viewer)
    _save(viewer, "widget_denoise.png")
    viewer.window.remove_dock_widget("all")
    _, cmp = viewer.window.add_plugin_dock_widget("napari-cryoden", "Compare")
    cmp.reference.value = viewer.layers["tomogram clean"]
    cmp.layers.value = ["tomogram noisy", "tomogram noisy denoised (self2self)"]
    cmp.run()
    _settle(viewer)
    _save(viewer, "widget_compare.png")
    viewer.close()


if __name__ == "__main__":
    IMAGES.mkdir(exist_ok=True)
    convention_figure()
    sample_screenshots()
    widget_screenshots()
