"""Align dock widget: classical alignment of a particle stack, to a reference or reference-free.

Results: the aligned stack, the average, and overlays on the input stack — a Vectors layer from the box
centre to each particle's centre (its shift) and a Points layer whose text shows psi and whose ``features``
hold psi, shift x/y and score. Export STAR writes RELION 3.1 with those parameters.
"""

from __future__ import annotations

import os
from pathlib import Path

import napari
import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, PushButton, create_widget
from qtpy.QtWidgets import QFileDialog

from ...align.cross_correlation import ClassicalParams, iter_align_reference_free, iter_align_to_reference
from ...errors import CryodenInputError
from ...io.mrc import write_mrc
from ...io.star import ParticleTable, make_optics_table, rebase_image_names, write_star
from ...params import as_dict
from ...simulate import project_map
from ..jobs import JobRunner
from ..layers import add_image_result, add_layer, image_layer, layer_input
from ..notify import notify_error, notify_info
from ._params import params_form, params_from_form
from ._progress import ProgressRow


def reference_image(layer, box: int) -> np.ndarray:
    """A 2D reference from a layer: the image itself, or the projection along z of a 3D map."""
    data = np.asarray(layer.data, dtype=np.float32)
    if data.ndim == 3 and not (layer.metadata or {}).get("is_stack"):
        data = project_map(data, rot=0.0, tilt=0.0, psi=0.0)[0]
    if data.ndim != 2:
        raise CryodenInputError(layer.name, f"a reference must be a 2D image or a 3D map, got shape {data.shape}")
    if data.shape != (box, box):
        raise CryodenInputError(layer.name, f"reference is {data.shape[0]}×{data.shape[1]}, particles are {box}×{box}")
    return data


class AlignWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.stack = create_widget(annotation=napari.layers.Image, label="particle stack")
        self.reference = create_widget(annotation=napari.layers.Image | None, label="reference",
                                       options={"nullable": True})
        self.method = ComboBox(label="method", choices=["fft"], value="fft",
                               tooltip="classical Fourier alignment (UDL/JUDL: use the CLI for now)")
        self.form = params_form(ClassicalParams)
        self.button = PushButton(text="Align")
        self.export_button = PushButton(text="Export STAR…")
        self.export_button.enabled = False
        self.extend([self.stack, self.reference, self.method, self.form, self.button, self.export_button])
        self.progress = ProgressRow()
        self.native.layout().addWidget(self.progress)
        self.runner = JobRunner(on_event=self.progress.update)
        self.progress.cancel_button.clicked.connect(self.runner.cancel)
        self.button.changed.connect(self.run)
        self.export_button.changed.connect(self._export)
        self.result = None
        self.source_layer = None

    def run(self, *_):
        layer = self.stack.value
        try:
            if layer is None:
                raise CryodenInputError(None, "choose a particle stack layer")
            data, _, _ = layer_input(layer)
            if data.ndim != 3 or data.shape[1] != data.shape[2]:
                raise CryodenInputError(layer.name, f"a particle stack (n, N, N) is required, got shape {data.shape}")
            if not np.isfinite(np.asarray(data[: min(len(data), 256)])).all():
                raise CryodenInputError(layer.name, "contains NaN or Inf values")
            ref = reference_image(self.reference.value, data.shape[-1]) if self.reference.value is not None else None
            params = params_from_form(ClassicalParams, self.form)
        except (CryodenInputError, ValueError) as exc:
            notify_error(exc)
            return

        def job():
            if ref is None:
                result = yield from iter_align_reference_free(data, params)
            else:
                result = yield from iter_align_to_reference(data, ref, params)
            return result

        meta = {"method": "fft", "params": as_dict(params), "reference": getattr(self.reference.value, "name", None)}
        self.progress.start("aligning")
        self.runner.start(job, name=f"alignment of {layer.name}", on_done=lambda r: self._done(r, layer, meta))

    def _done(self, result, layer, meta):
        self.result, self.source_layer = result, layer
        n, box = len(result.angles), result.average.shape[-1]
        px = float(layer.scale[-1])
        cy, cx = box // 2, box // 2
        features = pd.DataFrame({"psi": result.angles, "shift_x": result.origins[:, 0],
                                 "shift_y": result.origins[:, 1], "score": result.scores})
        meta = {**meta, "features": features}
        if result.aligned is not None:
            add_image_result(self.viewer, result.aligned, source=layer, name=f"{layer.name} aligned", metadata=meta)
        add_layer(self.viewer, image_layer(result.average, name=f"{layer.name} average", voxel_size=(px, px),
                                           metadata=meta))
        # The particle's centre is the box centre minus its origin.
        vectors = np.zeros((n, 2, 3), dtype=np.float32)
        vectors[:, 0] = np.stack([np.arange(n), np.full(n, cy), np.full(n, cx)], axis=1)
        vectors[:, 1, 1] = -result.origins[:, 1]
        vectors[:, 1, 2] = -result.origins[:, 0]
        add_layer(self.viewer, (vectors, {"name": f"{layer.name} shifts", "scale": (1.0, px, px),
                                          "features": features, "edge_color": "yellow", "edge_width": 0.4,
                                          "vector_style": "arrow"}, "vectors"))
        points = np.stack([np.arange(n), np.full(n, cy - 0.42 * box), np.full(n, cx)], axis=1)
        add_layer(self.viewer, (points, {"name": f"{layer.name} angles", "scale": (1.0, px, px), "features": features,
                                         "size": 0.5, "face_color": "transparent", "border_color": "transparent",
                                         "text": {"string": "psi {psi:.1f}°  score {score:.2f}", "color": "cyan",
                                                  "size": 10}}, "points"))
        self.export_button.enabled = True
        self.progress.finish("done")

    def _export(self, *_):
        path, _ = QFileDialog.getSaveFileName(self.native, "Export STAR", "aligned.star", "STAR files (*.star)")
        if path:
            self.export_star(path)

    def export_star(self, path: str) -> Path | None:
        """Write RELION 3.1 STAR with rlnAnglePsi, rlnOriginX/YAngst and rlnCryodenScore for the last result."""
        if self.result is None:
            return None
        layer, r = self.source_layer, self.result
        meta = layer.metadata or {}
        px = float(layer.scale[-1])
        n = len(r.angles)
        try:
            if isinstance(meta.get("features"), pd.DataFrame) and len(meta["features"]) == n and "optics" in meta:
                source = ParticleTable(particles=meta["features"].copy(), optics=meta["optics"],
                                       path=Path(meta["star_path"]) if meta.get("star_path") else None)
                particles, optics = source.particles, source.optics
                if source.path is not None and "rlnImageName" in particles:
                    # Names are relative to the STAR the layer came from; keep them right from the new one.
                    particles["rlnImageName"] = rebase_image_names(source, path)
            else:
                stack_path = meta.get("path")
                if not stack_path or not str(stack_path).lower().endswith((".mrcs", ".mrc", ".st")):
                    stack_path = str(Path(path).with_suffix(".mrcs"))
                    write_mrc(stack_path, np.asarray(layer.data), voxel_size=px, is_stack=True)
                rel = os.path.relpath(Path(stack_path).resolve(), Path(path).resolve().parent)
                particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{rel}" for i in range(n)]})
                optics = make_optics_table(pixel_size=px, image_size=r.average.shape[-1])
            particles["rlnAnglePsi"] = r.angles
            particles["rlnOriginXAngst"] = r.origins[:, 0] * px
            particles["rlnOriginYAngst"] = r.origins[:, 1] * px
            particles["rlnCryodenScore"] = r.scores
            inputs = [p for p in (meta.get("path"), meta.get("star_path")) if p]
            out = write_star(path, ParticleTable(particles=particles, optics=optics), inputs=inputs)
        except (CryodenInputError, OSError) as exc:
            notify_error(exc)
            return None
        notify_info(f"wrote {out}")
        return out

