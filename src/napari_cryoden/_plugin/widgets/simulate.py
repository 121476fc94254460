"""Simulate dock widget: a tomogram phantom or a particle stack with ground truth, in one click."""

from __future__ import annotations

import napari
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, PushButton, SpinBox

from ... import sample_data as core
from ...simulate import iter_simulate_particles, iter_simulate_tomogram
from ..jobs import JobRunner
from ..layers import add_layer
from ..sample_data import particle_layers, tomogram_layers
from ._dock import ScrollingDock
from ._progress import ProgressRow

#: Views (rot, tilt) of the built-in map used as classes, in this order.
VIEWS = ((0.0, 0.0), (0.0, 90.0), (90.0, 90.0), (45.0, 45.0), (120.0, 60.0), (200.0, 30.0))


class SimulateWidget(ScrollingDock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.kind = ComboBox(label="make", choices=["tomogram", "particle stack"], value="tomogram")
        self.snr = FloatSpinBox(label="SNR", value=0.3, min=0.001, max=100.0, step=0.05,
                                tooltip="signal variance / noise variance")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        # tomogram
        self.depth = SpinBox(label="z", value=64, min=16, max=1024)
        self.size = SpinBox(label="y, x", value=128, min=32, max=4096)
        self.noise = ComboBox(label="noise", choices=["white", "coloured"], value="white")
        self.wedge = FloatSpinBox(label="missing wedge ±°", value=60.0, min=0.0, max=90.0,
                                  tooltip="tilt range; 0 for no missing wedge")
        self.halves = CheckBox(label="even/odd halves", value=False)
        # particles
        self.n = SpinBox(label="particles", value=150, min=1, max=100_000)
        self.box = SpinBox(label="box", value=64, min=16, max=1024)
        self.classes = SpinBox(label="classes", value=3, min=1, max=len(VIEWS))
        self.max_shift = FloatSpinBox(label="max shift (px)", value=4.0, min=0.0, max=100.0)
        self.ctf = ComboBox(label="CTF", choices=["none", "full", "abs"], value="none")
        self.button = PushButton(text="Simulate")
        self.tomo_widgets = [self.depth, self.size, self.noise, self.wedge, self.halves]
        self.particle_widgets = [self.n, self.box, self.classes, self.max_shift, self.ctf]
        self.extend([self.kind, self.snr, self.seed, *self.tomo_widgets, *self.particle_widgets, self.button])
        self.progress = ProgressRow()
        self.body.layout().addWidget(self.progress)
        self.runner = JobRunner(on_event=self.progress.update)
        self.progress.follow(self.runner)
        self.kind.changed.connect(self._kind_changed)
        self.button.changed.connect(self.run)
        self._kind_changed()

    def _kind_changed(self, *_):
        tomo = self.kind.value == "tomogram"
        for w in self.tomo_widgets:
            w.visible = tomo
        for w in self.particle_widgets:
            w.visible = not tomo

    def run(self, *_):
        m = core.builtin_map()
        snr, seed = float(self.snr.value), int(self.seed.value)
        if self.kind.value == "tomogram":
            shape = (int(self.depth.value), int(self.size.value), int(self.size.value))
            noise, wedge, halves = self.noise.value, float(self.wedge.value) or None, bool(self.halves.value)

            def job():
                ph = yield from iter_simulate_tomogram(shape=shape, voxel_size=10.0, particle_map=m.data,
                                                       particle_map_voxel_size=m.pixel_size, snr=snr, noise=noise,
                                                       missing_wedge=wedge, halves=halves, seed=seed)
                return tomogram_layers(ph, name=f"phantom SNR {snr:g}")
        else:
            n, box, k = int(self.n.value), int(self.box.value), int(self.classes.value)
            shift, ctf = float(self.max_shift.value), self.ctf.value

            def job():
                sim = yield from iter_simulate_particles(m.data, voxel_size=m.pixel_size, n_particles=n, box=box,
                                                         class_views=VIEWS[:k], max_shift=shift, ctf_mode=ctf,
                                                         snr=snr, mask_radius=box * 0.4, seed=seed)
                return particle_layers(sim, name=f"particles SNR {snr:g}")

        self.runner.start(job, name="simulation", on_done=self._add, stage="simulating")

    def _add(self, layers):
        for tup in layers:
            add_layer(self.viewer, tup)
