"""Denoise dock widget: pick a layer and a method, train / predict / both, watch loss and preview."""

from __future__ import annotations

import dataclasses

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox, create_widget
from qtpy.QtWidgets import QFileDialog, QSizePolicy

from ...denoise import methods
from ...denoise.engine import TrainedDenoiser
from ...errors import CryodenInputError
from ...models import save_model
from ...params import as_dict
from ..export import open_sources
from ..jobs import JobRunner
from ..layers import add_image_result, follow_active_layer, image_choices, layer_input
from ..notify import notify_error, notify_info
from ..settings import form_values, load_state, restore_values, save_state
from ._dock import ScrollingDock
from ._params import ParamsForm, params_from_form
from ._plot import LossPlot
from ._progress import ProgressRow

STATE_KEY = "denoise"
CUSTOM = "custom"
#: Presets of the methods that train: {name: (field values, what it means)}.
PRESETS = {
    CUSTOM: ({}, ""),
    "fast preview": ({"time_budget": 30.0, "n_predictions": 2},
                     "30 s of training, 2 predictions averaged where the method averages them (self2self predicts "
                     "with one pass of its distilled student unless prediction is 'masked')"),
    "best quality": ({"time_budget": 600.0, "n_predictions": 8},
                     "10 min of training, 8 predictions averaged where the method averages them"),
}


class DenoiseWidget(ScrollingDock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.model: TrainedDenoiser | None = None
        self._methods = methods()
        state = load_state(STATE_KEY)
        self._saved_params: dict = dict(state.get("params", {}))
        self._form_key: str | None = None  # the (method, 2D/3D) whose settings the form shows
        # Raw data first (the noisy volume, not the clean one after Open Sample), then the layer the user selects.
        self.image = create_widget(annotation=napari.layers.Image, label="image",
                                   options={"choices": image_choices(viewer)})
        follow_active_layer(viewer, self.image)
        self.half2 = create_widget(annotation=napari.layers.Image | None, label="second half",
                                   options={"nullable": True})
        # Without a remembered choice the widget opens on the first method of the menu, the shipped pretrained
        # model (one pass, seconds, no training); the CLI's default is registry.DEFAULT_METHOD.
        default = state.get("method") if state.get("method") in self._methods else list(self._methods)[0]
        self.method = ComboBox(label="method", choices=list(self._methods), value=default)
        self.preset = ComboBox(label="preset", choices=list(PRESETS), value=CUSTOM,
                               tooltip="; ".join(f"{k}: {v[1]}" for k, v in PRESETS.items() if v[0]) +
                                       f"; {CUSTOM}: the values below as you set them")
        self.stack = CheckBox(label="2D (per image)", value=False,
                              tooltip="treat the first axis as an image index (particle stacks)")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1,
                            tooltip="random seed: the same seed, data and settings give the same result")
        self.description = Label(value="")
        self.description.native.setWordWrap(True)
        # a long description wraps to the dock's width instead of widening the dock past the window
        self.description.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.form = ParamsForm(extra_advanced=[self.seed])
        self.train_button = PushButton(text="Train")
        self.predict_button = PushButton(text="Predict")
        self.both_button = PushButton(text="Train and predict")
        self.save_button = PushButton(text="Save model…")
        self.load_button = PushButton(text="Load model…")
        self.model_label = Label(value="no model")
        self.model_label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.noise_label = Label(value="")  # the noise correlation measured for the model, on its own wrapped row
        self.noise_label.native.setWordWrap(True)
        self.noise_label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.noise_label.visible = False
        buttons = Container(widgets=[self.train_button, self.predict_button, self.both_button], layout="horizontal",
                            labels=False)
        model_row = Container(widgets=[self.save_button, self.load_button, self.model_label], layout="horizontal",
                              labels=False)
        self.extend([self.image, self.half2, self.method, self.preset, self.stack, self.description, self.form,
                     buttons, model_row, self.noise_label])
        self.progress = ProgressRow()
        self.loss_plot = LossPlot()
        self.body.layout().addWidget(self.progress)
        self.body.layout().addWidget(self.loss_plot)
        self.loss_plot.setVisible(False)  # shown by the first training loss: a one-pass method has none
        self.runner = JobRunner(on_event=self._on_event)
        self._job_layer = None  # the input layer of the job running or last run (its previews follow it)
        self.progress.follow(self.runner)
        self.method.changed.connect(self._method_changed)
        self.preset.changed.connect(self._preset_changed)
        self.image.changed.connect(self._image_changed)
        self.stack.changed.connect(self._dims_changed)
        self.train_button.changed.connect(lambda: self.run("train"))
        self.predict_button.changed.connect(lambda: self.run("predict"))
        self.both_button.changed.connect(lambda: self.run("both"))
        self.save_button.changed.connect(self._save_model)
        self.load_button.changed.connect(self._load_model)
        self._image_changed()
        self._method_changed()

    # -------------------------------------------------------------------------------------- state
    @property
    def method_info(self):
        return self._methods[self.method.value]

    def _dims(self) -> int:
        layer = self.image.value
        return 2 if (self.stack.value or (layer is not None and layer.data.ndim == 2)) else 3

    def _form_key_now(self) -> str:
        return f"{self.method.value}/{self._dims()}d"

    def _method_changed(self, *_):
        # Keep what the user set for the method and kind of data the form showed (2D and 3D settings are kept
        # apart: a 2D patch of 96 must never become the 3D setting), then show this method's for the current kind.
        if getattr(self, "_form_key", None) is not None and self.form.cls is not None:
            self._saved_params[self._form_key] = form_values(self.form)
        m = self.method_info
        values = as_dict(m.default_params(dims=self._dims()))
        self.form.set_params(m.params, values=values)
        self._form_key = self._form_key_now()
        restore_values(self.form, self._saved_params.get(self._form_key, {}))
        self.description.value = m.description
        self.description.tooltip = m.description
        self.train_button.enabled = m.trains
        self.predict_button.enabled = m.trains and self.model is not None
        self.save_button.enabled = m.trains and self.model is not None
        self.load_button.enabled = m.trains
        self.both_button.text = "Train and predict" if m.trains else "Denoise"
        self.half2.visible = m.needs_half2
        names = {w.name for w in self.form.fields()}
        self.preset.visible = m.trains and all(k in names for v in PRESETS.values() for k in v[0])
        self.preset.value = CUSTOM

    def _show_model(self, model) -> None:
        """The model row: method, steps, and the noise correlation measured for it (mask block for Self2Self)."""
        noise = model.describe_noise()
        self.model_label.value = f"{model.method} model, {len(model.history)} steps"
        self.model_label.tooltip = self.model_label.value
        self.noise_label.value = noise or ""
        self.noise_label.visible = bool(noise)

    def _preset_changed(self, *_):
        """A preset sets the time budget and the predictions averaged; the form shows what it set."""
        values, _ = PRESETS[self.preset.value]
        for name, value in values.items():
            self.form.field(name).value = value

    def _save_state(self) -> None:
        """Remember the method and its settings (per method and 2D/3D) for the next napari session."""
        self._saved_params[self._form_key] = form_values(self.form)
        save_state(STATE_KEY, {"method": self.method.value, "params": self._saved_params})

    def _image_changed(self, *_):
        layer = self.image.value
        if layer is not None:
            self.stack.value = bool((layer.metadata or {}).get("is_stack", False))
        self._dims_changed()

    def _dims_changed(self, *_):
        """The settings follow the kind of data: another layer or the 2D box switches the form to that kind."""
        if getattr(self, "_form_key", None) is not None and self._form_key != self._form_key_now():
            self._method_changed()

    def params(self):
        cls = self.method_info.params
        return params_from_form(cls, self.form)

    # ---------------------------------------------------------------------------------------- run
    def run(self, mode: str):
        layer = self._job_layer = self.image.value  # the previews are named and placed after it
        try:
            if layer is None:
                raise CryodenInputError(None, "choose an image layer first")
            params = self.params()
            data, is_stack, voxel = layer_input(layer)
            is_stack = self.stack.value
            if not np.isfinite(np.asarray(data[: min(len(data), 64)])).all():
                raise CryodenInputError(layer.name, "contains NaN or Inf values")
        except (CryodenInputError, ValueError) as exc:
            notify_error(exc)
            return
        m = self.method_info
        seed = int(self.seed.value)
        self._save_state()
        half2 = None
        if m.needs_half2:
            if self.half2.value is None:
                notify_error(CryodenInputError(layer.name, f"{m.title} needs the second half layer"))
                return
            half2 = layer_input(self.half2.value)[0]
        model = self.model
        if mode == "predict" and model is None:
            notify_error(CryodenInputError(None, "train or load a model first"))
            return

        def job():
            nonlocal model
            if not m.trains:
                result = yield from m.run(data, params, is_stack=is_stack, voxel_size=voxel, seed=seed)
                return None, result
            if mode in ("train", "both"):
                model = yield from m.train(data, params, is_stack=is_stack, half2=half2, seed=seed, voxel_size=voxel)
            if mode == "train":
                return model, None
            # A loaded model predicts with its own method, whichever the menu shows now.
            result = yield from self._methods[model.method].predict(model, data, is_stack=is_stack, half2=half2,
                                                                   seed=seed)
            return model, result

        self.runner.cancel()  # before the plot is cleared, so no event of the old run lands on the new plot
        self.loss_plot.clear()
        self.loss_plot.setVisible(False)
        meta = {"method": m.name, "params": as_dict(params), "seed": seed, "source": layer.name}
        self.runner.start(job, name=f"{m.title} on {layer.name}",
                          on_done=lambda out: self._on_done(out, layer, meta), stage=f"{mode}: preparing")

    def _on_event(self, ev):
        self.progress.update(ev)
        if ev.info.get("noise"):  # measured on the input by a method that trains no model here (pretrained)
            self.noise_label.value = str(ev.info["noise"])
            self.noise_label.visible = True
        if ev.loss is not None and ev.stage == "train":  # not the distillation's (its steps start again at 1)
            self.loss_plot.setVisible(True)
            self.loss_plot.add(ev.step, ev.loss)
        if ev.preview is not None:
            self._show_preview(ev)

    def _show_preview(self, ev):
        layer = self._job_layer  # the running job's input, whatever the combo shows now
        if layer is None:
            return
        name = f"{layer.name} preview"
        y0, x0 = ev.info.get("preview_origin", (0, 0))
        scale = tuple(layer.scale[-2:])
        translate = (layer.translate[-2] + y0 * scale[0], layer.translate[-1] + x0 * scale[1])
        if name in self.viewer.layers:
            preview = self.viewer.layers[name]
            preview.data = ev.preview
        else:
            self.viewer.add_image(ev.preview, name=name, scale=scale, translate=translate, colormap="gray",
                                  blending="translucent", metadata={"preview": True})

    def _on_done(self, out, layer, meta):
        model, result = out
        if model is not None:
            self.model = model
            self._show_model(model)
            self.predict_button.enabled = True
            self.save_button.enabled = True
        if result is not None:
            result = result.reshape(layer.data.shape)
            add_image_result(self.viewer, result, source=layer, name=f"{layer.name} denoised ({meta['method']})",
                             metadata=meta)

    # ------------------------------------------------------------------------------------- models
    def _save_model(self, *_):
        if self.model is None:
            return
        path, _ = QFileDialog.getSaveFileName(self.native, "Save model", "model.pt", "Model files (*.pt)")
        if path:
            self.save_model_to(path)

    def save_model_to(self, path: str) -> None:
        try:
            save_model(path, self.model.to_model_file(), inputs=open_sources())
            notify_info(f"model saved to {path}")
        except Exception as exc:  # an unwritable path must not take the viewer down
            notify_error(exc)

    def _load_model(self, *_):
        path, _ = QFileDialog.getOpenFileName(self.native, "Load model", "", "Model files (*.pt)")
        if path:
            self.load_model_from(path)

    def load_model_from(self, path: str) -> None:
        try:
            model = TrainedDenoiser.load(path)
        except CryodenInputError as exc:
            notify_error(exc)
            return
        self.model = model
        self.method.value = model.method
        names = {w.name for w in self.form.fields()}
        for f in dataclasses.fields(model.params):
            if f.name in names:
                self.form.field(f.name).value = getattr(model.params, f.name)
        self.stack.value = model.net_config.dims == 2
        self._show_model(model)
        self.predict_button.enabled = self.save_button.enabled = True
