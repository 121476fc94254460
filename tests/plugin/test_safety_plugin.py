"""Saving and exporting from napari never replaces a file that an open layer was read from (the same guard as
the CLI): the napari writer, the Align widget's STAR export and the Denoise widget's model save."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from napari_cryoden.io.mrc import write_mrc
from napari_cryoden.io.star import ParticleTable, make_optics_table, write_star

PLUGIN = "napari-cryoden"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _star(tmp_path):
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "stack.mrcs", rng.standard_normal((12, 24, 24)).astype(np.float32), voxel_size=2.0,
              is_stack=True)
    rows = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(12)], "rlnOpticsGroup": 1})
    write_star(tmp_path / "parts.star", ParticleTable(rows, make_optics_table(pixel_size=2.0, image_size=24)))
    return tmp_path / "parts.star", tmp_path / "stack.mrcs"


def test_napari_writer_refuses_the_files_of_open_layers(make_napari_viewer, tmp_path, monkeypatch):
    from napari_cryoden._plugin import writer

    star, stack = _star(tmp_path)
    write_mrc(tmp_path / "tomo.mrc", np.ones((4, 8, 8), np.float32), voxel_size=5.0)
    viewer = make_napari_viewer()
    viewer.open(str(star), plugin=PLUGIN)
    viewer.open(str(tmp_path / "tomo.mrc"), plugin=PLUGIN)
    before = {p: _digest(p) for p in (star, stack, tmp_path / "tomo.mrc")}
    shown = []
    monkeypatch.setattr(writer, "notify_error", lambda exc: shown.append(str(exc)))
    tomo = viewer.layers["tomo"]
    attrs = {"name": tomo.name, "scale": tomo.scale, "metadata": tomo.metadata}
    # Another layer saved over the stack that the STAR layer reads from: refused, naming both files.
    assert writer.write_mrc_layer(str(stack), tomo.data, attrs) == []
    assert "stack.mrcs" in shown[-1] and "parts.star" in shown[-1]
    # A layer over its own file, and over the STAR file.
    assert writer.write_mrc_layer(str(tmp_path / "tomo.mrc"), tomo.data, attrs) == []
    assert writer.write_mrc_layer(str(tmp_path / "PARTS.star"), tomo.data, attrs) == []
    assert {p: _digest(p) for p in before} == before
    assert writer.write_mrc_layer(str(tmp_path / "copy.mrc"), tomo.data, attrs) == [str(tmp_path / "copy.mrc")]


def test_widget_exports_and_model_saves_refuse_open_files(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_cryoden._plugin.widgets import align as align_module
    from napari_cryoden._plugin.widgets import denoise as denoise_module

    star, stack = _star(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(star), plugin=PLUGIN)
    before = {p: _digest(p) for p in (star, stack)}
    errors = []
    monkeypatch.setattr(align_module, "notify_error", lambda exc: errors.append(str(exc)))
    monkeypatch.setattr(denoise_module, "notify_error", lambda exc: errors.append(str(exc)))
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    w.stack.value = next(layer for layer in viewer.layers if layer.data.ndim == 3)
    w.run()
    qtbot.waitUntil(lambda: w.runner.worker is None, timeout=300_000)
    assert w.result is not None
    assert w.export_star(str(star)) is None and "overwrite an input" in errors[-1]
    assert w.export_star(str(stack)) is None and "stack.mrcs" in errors[-1]
    # A model saved from the Denoise widget over the stack the STAR layer reads: refused too.
    _, d = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    d.model = type("M", (), {"to_model_file": lambda self: __import__("napari_cryoden.models").models.ModelFile(
        kind="denoise/self2self", config={}, state_dict={})})()
    d.save_model_to(str(stack))
    assert "stack.mrcs" in errors[-1]
    assert {p: _digest(p) for p in before} == before
    assert w.export_star(str(tmp_path / "aligned.star")) is not None
