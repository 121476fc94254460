"""Regenerate the screenshots and figures in docs/images (run under Xvfb: `make docs-screenshots`).

Screenshots come from a real napari window (``show=True``) rendered by Mesa under Xvfb.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"


def sample_screenshots() -> None:
    import napari

    from napari_cryoden._plugin.screenshots import save, settle

    viewer = napari.Viewer(show=True, title="napari-cryoden")
    viewer.window._qt_window.resize(1400, 900)
    settle(viewer)
    viewer.open_sample("napari-cryoden", "synthetic-tomogram")
    viewer.layers["tomogram clean"].visible = True
    viewer.grid.enabled = True
    viewer.dims.current_step = (viewer.layers["tomogram noisy"].data.shape[0] // 2, 0, 0)
    settle(viewer)
    save(viewer, IMAGES / "sample_tomogram.png")
    viewer.layers.clear()
    viewer.grid.enabled = False
    viewer.open_sample("napari-cryoden", "synthetic-particles")
    viewer.layers["particles truth"].visible = True
    viewer.layers.selection.active = viewer.layers["particles"]
    viewer.dims.current_step = (3, 0, 0)
    settle(viewer)
    save(viewer, IMAGES / "sample_particles.png")
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


if __name__ == "__main__":
    from napari_cryoden._plugin.screenshots import widget_screenshots

    IMAGES.mkdir(exist_ok=True)
    if sys.argv[1:2] == ["--only"] and sys.argv[2:] in (["cluster"], ["align"], ["denoise"]):  # one widget's screenshots
        widget_screenshots(IMAGES, only=sys.argv[2])
        sys.exit(0)
    convention_figure()
    sample_screenshots()
    widget_screenshots(IMAGES)
