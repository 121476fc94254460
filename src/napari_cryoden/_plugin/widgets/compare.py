"""Compare dock widget: PSNR / SSIM / FRC of layers against a reference, an FRC plot, grid view."""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import CheckBox, PushButton, Select, create_widget
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem

from ... import metrics
from ...errors import CryodenInputError
from ..notify import notify_error
from ._dock import ScrollingDock


def compare_arrays(reference: np.ndarray, estimate: np.ndarray, *, voxel_size: float, fit: bool = True) -> dict:
    """The widget's table row: :func:`napari_cryoden.metrics.compare` plus its FRC/FSC curve."""
    result = metrics.compare(reference, estimate, voxel_size=voxel_size, fit=fit)
    return {**result.rows, "curve": result.curve}


class CompareWidget(ScrollingDock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.reference = create_widget(annotation=napari.layers.Image, label="reference")
        self.layers = Select(label="compare", choices=self._image_names, allow_multiple=True)
        self.fit = CheckBox(label="affine fit", value=True,
                            tooltip="fit a·x + b of each layer to the reference first (normalised outputs)")
        self.grid = CheckBox(label="side by side (grid)", value=False)
        self.button = PushButton(text="Compare")
        self.extend([self.reference, self.layers, self.fit, self.grid, self.button])
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["layer", "PSNR (dB)", "SSIM", "FSC 0.143 (Å)", "FSC 0.5 (Å)"])
        self.figure = Figure(figsize=(3.2, 2.2), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.body.layout().addWidget(self.table)
        self.body.layout().addWidget(self.canvas)
        self.results: dict[str, dict] = {}
        self.button.changed.connect(self.run)
        self.grid.changed.connect(lambda v: setattr(self.viewer.grid, "enabled", bool(v)))
        self.reference.changed.connect(lambda *_: self.layers.reset_choices())
        viewer.layers.events.inserted.connect(lambda e: self.layers.reset_choices())
        viewer.layers.events.removed.connect(lambda e: self.layers.reset_choices())

    def _image_names(self, *_):
        """Image layers that can be compared with the reference: its shape, not itself (a layer of another shape
        would only fail after the click)."""
        ref = self.reference.value if hasattr(self, "reference") else None
        return [layer.name for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)
                and (ref is None or (layer is not ref and layer.data.shape == ref.data.shape))]

    def run(self, *_):
        ref = self.reference.value
        names = [n for n in (self.layers.value or []) if ref is None or n != ref.name]
        if ref is None or not names:
            notify_error(CryodenInputError(None, "choose a reference layer and at least one layer to compare"))
            return
        voxel = float(ref.scale[-1])
        self.results = {}
        for name in names:
            try:
                self.results[name] = compare_arrays(np.asarray(ref.data), np.asarray(self.viewer.layers[name].data),
                                                    voxel_size=voxel, fit=self.fit.value)
            except CryodenInputError as exc:
                notify_error(CryodenInputError(name, exc.problem))
        self._show()

    def _show(self):
        self.table.setRowCount(len(self.results))
        for row, (name, r) in enumerate(self.results.items()):
            values = [name] + [f"{r[k]:.3f}" for k in ("PSNR (dB)", "SSIM", "FSC 0.143 (Å)", "FSC 0.5 (Å)")]
            for col, text in enumerate(values):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.figure.clear()
        ax = self.figure.add_subplot(1, 1, 1)
        for name, r in self.results.items():
            ax.plot(r["curve"].frequency, r["curve"].correlation, label=name, lw=1)
        for t in (0.5, 0.143):
            ax.axhline(t, color="grey", lw=0.6, ls="--")
        ax.set_xlabel("1/Å", fontsize=7)
        ax.set_ylabel("FRC / FSC", fontsize=7)
        ax.tick_params(labelsize=7)
        if self.results:
            ax.legend(fontsize=6)
        self.canvas.draw_idle()
