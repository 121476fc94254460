"""Align dock widget: in-plane alignment of a particle stack, to a reference or reference-free, with the
classical Fourier method or a deep unsupervised network (UDL / JUDL, trained here or loaded from a file).

Results: the aligned stack, the average, and overlays on the input stack — a Vectors layer from the box
centre to each particle's centre (its shift) and a Points layer whose text shows psi and whose ``features``
hold psi, shift x/y and score. Export STAR writes RELION 3.1 with those parameters.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, create_widget
from qtpy.QtWidgets import QFileDialog

from ...align.cross_correlation import ClassicalParams
from ...align.methods import DEFAULT_METHOD, methods
from ...align.result import with_alignment
from ...align.udl import SHIPPED_CTF_CAVEAT, DeepAlignParams
from ...errors import CryodenInputError
from ...io.star import write_star
from ...models import ModelFile, load_model, load_pretrained, pretrained_path, save_model
from ...params import as_dict
from ...simulate import project_map
from ..export import derived_metadata, layer_particle_table, open_sources, source_particle_table
from ..jobs import JobRunner
from ..layers import (
    add_image_result,
    add_layer,
    alignment_layers,
    follow_active_layer,
    is_particle_stack,
    particle_stack_choices,
    particle_stack_input,
)
from ..notify import notify_error, notify_info
from ..settings import form_values, load_state, restore_values, save_state
from ._dock import ScrollingDock
from ._params import ParamsForm, params_from_form
from ._progress import ProgressRow

#: Shown when the shipped model is loaded (the layer carries no defoci to test, so it is said at once).
SHIPPED_CTF_NOTE = f"shipped model loaded. Note: {SHIPPED_CTF_CAVEAT}; for such data give a time budget to fine-tune it"

STATE_KEY = "align"


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


class AlignWidget(ScrollingDock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        # Only particle stacks are offered: a tomogram is never aligned as if its planes were particles.
        self.stack = create_widget(annotation=napari.layers.Image, label="particle stack",
                                   options={"choices": particle_stack_choices(viewer)})
        follow_active_layer(viewer, self.stack, is_particle_stack)
        self.reference = create_widget(annotation=napari.layers.Image | None, label="reference",
                                       options={"nullable": True})
        state = load_state(STATE_KEY)
        self._methods = methods()
        self.method = ComboBox(label="method", choices=list(self._methods),
                               value=state.get("method") if state.get("method") in self._methods else DEFAULT_METHOD,
                               tooltip="fft: classical Fourier cross-correlation; udl / judl: a network predicts "
                                       "the angle, then 'refine' says what follows: none (the network's own "
                                       "angle), local (cross-correlation near it), fft (docs/align.md)")
        self.form = ParamsForm(ClassicalParams)
        self.deep_form = ParamsForm(DeepAlignParams, title="Advanced (network)")
        restore_values(self.form, state.get("classical", {}))
        restore_values(self.deep_form, state.get("deep", {}))
        self.retrain = CheckBox(label="train the loaded model further", value=False)
        self.save_button = PushButton(text="Save model…")
        self.load_button = PushButton(text="Load model…")
        self.pretrained_button = PushButton(text="Pretrained", tooltip="the model shipped with napari-cryoden for "
                                            "this method (trained on simulated data, any box); tick 'train the "
                                            "loaded model further' to fine-tune it on this stack first")
        self.model_label = Label(value="no model")
        model_row = Container(widgets=[self.save_button, self.load_button, self.pretrained_button, self.model_label],
                              layout="horizontal",
                              labels=False)
        self.deep_box = Container(widgets=[self.deep_form, self.retrain, model_row], labels=False)
        self.button = PushButton(text="Align")
        self.export_button = PushButton(text="Export STAR…")
        self.export_button.enabled = False
        self.extend([self.stack, self.reference, self.method, self.form, self.deep_box, self.button,
                     self.export_button])
        self.progress = ProgressRow()
        self.body.layout().addWidget(self.progress)
        self.runner = JobRunner(on_event=self.progress.update)
        self.progress.follow(self.runner)
        self.button.changed.connect(self.run)
        self.export_button.changed.connect(self._export)
        self.save_button.changed.connect(self._save_model)
        self.load_button.changed.connect(self._load_model)
        self.pretrained_button.changed.connect(self.load_pretrained)
        self.method.changed.connect(self._method_changed)
        self.result = None
        self.source_layer = None
        self.model: ModelFile | None = None
        self.model_path: str | None = None  # the file the model came from (named in error messages)
        self._method_changed()

    def _method_changed(self, *_):
        self.deep_box.visible = self._methods[self.method.value].trains
        self.save_button.enabled = self.model is not None
        self.retrain.enabled = self.model is not None

    def _save_state(self) -> None:
        save_state(STATE_KEY, {"method": self.method.value, "classical": form_values(self.form),
                               "deep": form_values(self.deep_form)})

    def run(self, *_):
        layer = self.stack.value
        try:
            data = particle_stack_input(layer)
            ref = reference_image(self.reference.value, data.shape[-1]) if self.reference.value is not None else None
            params = params_from_form(ClassicalParams, self.form)
            deep = params_from_form(DeepAlignParams, self.deep_form)
        except (CryodenInputError, ValueError) as exc:
            notify_error(exc)
            return
        method = self.method.value
        self._save_state()
        chosen = self._methods[method]
        model = self.model if self.model is not None and self.model.kind == chosen.model_kind else None
        if model is not None:
            try:
                chosen.check_model(model, path=self.model_path, box=data.shape[-1],
                                   where=f"the particles of {layer.name}")
            except CryodenInputError as exc:
                notify_error(exc)
                return
        train = chosen.trains and (model is None or self.retrain.value)

        def job():
            nonlocal model
            if train:
                model = yield from chosen.train(data, ref, deep, model=model, classical=params)
            result = yield from chosen.align(data, ref, params, deep, model=model, keep_aligned=True)
            return (model if chosen.trains else None), result

        meta = {"method": method, "params": as_dict(params), "reference": getattr(self.reference.value, "name", None)}
        if chosen.trains:
            meta["deep_params"] = as_dict(deep)
            meta["trained_here"] = train
        self.runner.start(job, name=f"alignment of {layer.name}", on_done=lambda r: self._done(r, layer, meta),
                          stage="training" if train else "aligning")

    def _done(self, out, layer, meta):
        model, result = out
        if model is not None and meta.get("trained_here"):  # a model applied as loaded keeps its label and file
            self.model = model
            box = "any box" if model.config.get("any_box") else f"{model.config.get('box')}²"
            self.model_label.value = f"{model.kind.split('/')[-1]} model, {box}"
            self.model_path = None  # trained here
            self._method_changed()
        self.result, self.source_layer = result, layer
        px = float(layer.scale[-1])
        features = pd.DataFrame({"psi": result.angles, "shift_x": result.origins[:, 0],
                                 "shift_y": result.origins[:, 1], "score": result.scores})
        if "network_angles" in result.info:  # UDL/JUDL: the network's own estimate (mod 180), before refine
            features["network_psi"] = result.info["network_angles"]
        meta = {**meta, "alignment": features}
        if result.aligned is not None:
            # The aligned stack carries the source's particle table with the new alignment (and its optics and
            # files), so clustering it and exporting keeps every column and writes this alignment.
            source = source_particle_table(layer)
            provenance = {} if source is None else derived_metadata(
                layer, with_alignment(source.particles, result, pixel_size=px))
            add_image_result(self.viewer, result.aligned, source=layer, name=f"{layer.name} aligned",
                             metadata={**meta, **provenance})
        for tup in alignment_layers(result, name=layer.name, pixel_size=px, features=features, metadata=meta):
            add_layer(self.viewer, tup)
        self.export_button.enabled = True
        if result.info.get("warning"):  # e.g. the network's angles look unreliable (--refine local's check)
            notify_info(f"{layer.name}: {result.info['warning']}")

    # ------------------------------------------------------------------------------------- models
    def _save_model(self, *_):
        path, _ = QFileDialog.getSaveFileName(self.native, "Save model", "align.pt", "Model files (*.pt)")
        if path:
            self.save_model_to(path)

    def save_model_to(self, path: str) -> Path | None:
        if self.model is None:
            return None
        try:
            out = save_model(path, self.model, inputs=open_sources())
        except Exception as exc:  # an unwritable path must not take the viewer down
            notify_error(exc)
            return None
        notify_info(f"model saved to {out}")
        return out

    def _load_model(self, *_):
        path, _ = QFileDialog.getOpenFileName(self.native, "Load model", "", "Model files (*.pt)")
        if path:
            self.load_model_from(path)

    def load_pretrained(self, *_) -> None:
        """Load the shipped model of the chosen method (udl or judl)."""
        chosen = self._methods[self.method.value]
        try:
            model = load_pretrained(chosen.model_kind)
        except CryodenInputError as exc:
            notify_error(exc)
            return
        self.model, self.model_path = model, str(pretrained_path(chosen.model_kind))
        self.model_label.value = f"pretrained {self.method.value} model (any box)"
        self._method_changed()
        notify_info(SHIPPED_CTF_NOTE)

    def load_model_from(self, path: str) -> None:
        try:
            model = load_model(path, kind="align")
            chosen = self._methods.get(model.kind.split("/")[-1])
            if chosen is None or not chosen.trains:
                raise CryodenInputError(path, f"is a {model.kind} model, not one of an alignment network")
            chosen.check_model(model, path=path)  # a file of the older network: a message, not a crash at Align
        except CryodenInputError as exc:
            notify_error(exc)
            return
        self.model = model
        self.method.value = model.kind.split("/")[-1]
        box = "any box" if model.config.get("any_box") else f"{model.config.get('box')}²"
        self.model_label.value = f"{self.method.value} model, {box}"
        self.model_path = str(path)
        self._method_changed()

    # ------------------------------------------------------------------------------------- export
    def _export(self, *_):
        path, _ = QFileDialog.getSaveFileName(self.native, "Export STAR", "aligned.star", "STAR files (*.star)")
        if path:
            self.export_star(path)

    def export_star(self, path: str) -> Path | None:
        """Write RELION 3.1 STAR with rlnAnglePsi, rlnOriginX/YAngst and rlnCryodenScore for the last result."""
        if self.result is None:
            return None
        layer, r = self.source_layer, self.result
        try:
            table, inputs = layer_particle_table(layer, path)
            particles = with_alignment(table.particles, r, pixel_size=float(layer.scale[-1]))
            out = write_star(path, table.with_particles(particles), inputs=inputs)
        except (CryodenInputError, ValueError, OSError) as exc:
            notify_error(exc)
            return None
        notify_info(f"wrote {out}")
        return out

