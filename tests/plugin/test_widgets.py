"""Simulate, Align and Compare dock widgets in a real viewer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cryoden.io.star import read_star
from napari_cryoden.metrics import angular_error

PLUGIN = "napari-cryoden"


def _wait(widget, qtbot, timeout=300_000):
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=timeout)


def test_simulate_tomogram_and_particles(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Simulate")
    w.depth.value, w.size.value, w.snr.value, w.halves.value = 32, 64, 0.5, True
    w.run()
    _wait(w, qtbot)
    names = [layer.name for layer in viewer.layers]
    assert {"phantom SNR 0.5 noisy", "phantom SNR 0.5 clean", "phantom SNR 0.5 even", "phantom SNR 0.5 odd"} <= set(names)
    noisy = viewer.layers["phantom SNR 0.5 noisy"]
    assert noisy.data.shape == (32, 64, 64) and tuple(noisy.scale) == (10.0, 10.0, 10.0)
    w.kind.value = "particle stack"
    w.n.value, w.box.value, w.classes.value = 30, 32, 2
    w.run()
    _wait(w, qtbot)
    stack = viewer.layers["particles SNR 0.5"]
    assert stack.data.shape == (30, 32, 32) and stack.scale[0] == 1.0
    truth = viewer.layers["particles SNR 0.5 truth"].features
    assert sorted(truth["rlnClassNumber"].unique()) == [1, 2] and len(truth) == 30


@pytest.fixture
def particle_viewer(make_particle_viewer):
    return make_particle_viewer(n_particles=40, snr=2.0, max_shift=3.0, seed=2)


def test_align_to_a_reference_recovers_angles_and_exports_star(particle_viewer, qtbot, tmp_path):
    viewer, sim = particle_viewer
    one_class = sim.classes == 0
    viewer.add_image(sim.images[one_class], name="class 1", metadata={"is_stack": True}, scale=(1.0, 4.23, 4.23))
    viewer.add_image(sim.references[0], name="ref", scale=(4.23, 4.23))
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    w.stack.value = viewer.layers["class 1"]
    w.reference.value = viewer.layers["ref"]
    w.run()
    _wait(w, qtbot)
    for suffix in ("aligned", "average", "shifts", "angles"):
        assert f"class 1 {suffix}" in viewer.layers
    feats = viewer.layers["class 1 angles"].features
    assert list(feats.columns) == ["psi", "shift_x", "shift_y", "score"]
    err = angular_error(feats["psi"].to_numpy(), sim.angles[one_class])
    assert np.median(err) < 3.0
    np.testing.assert_allclose(feats[["shift_x", "shift_y"]].to_numpy(), sim.origins[one_class], atol=0.6)
    vectors = viewer.layers["class 1 shifts"].data
    np.testing.assert_allclose(vectors[:, 1, 1:], -feats[["shift_y", "shift_x"]].to_numpy(), atol=1e-4)
    out = w.export_star(str(tmp_path / "aligned.star"))
    table = read_star(out)
    np.testing.assert_allclose(table.particles["rlnAnglePsi"], feats["psi"], atol=1e-4)
    assert table.pixel_size() == pytest.approx(4.23, rel=1e-4)
    assert (tmp_path / "aligned.mrcs").exists()  # the in-memory stack was written beside the STAR


def test_align_cancel_and_bad_input(particle_viewer, qtbot, monkeypatch):
    from napari_cryoden._plugin.widgets import align as module

    viewer, _ = particle_viewer
    shown = []
    monkeypatch.setattr(module, "notify_error", lambda exc: shown.append(str(exc)))
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    viewer.add_image(np.zeros((16, 16), np.float32), name="flat image")
    viewer.add_image(np.zeros((8, 16, 16), np.float32), name="tomogram", metadata={"is_stack": False})
    w.reset_choices()
    offered = [layer.name for layer in w.stack.choices]
    assert "flat image" not in offered and "tomogram" not in offered and "particles" in offered
    n_layers = len(viewer.layers)
    w.stack.value = viewer.layers["particles"]
    w.reference.value = None
    w.run()
    qtbot.waitUntil(lambda: w.progress.bar.value() > 0 or w.runner.worker is None, timeout=60_000)
    w.progress.cancel_button.click()
    _wait(w, qtbot, timeout=60_000)
    qtbot.wait(200)
    assert len(viewer.layers) == n_layers


def test_align_with_a_udl_network_trains_saves_and_reuses_the_model(particle_viewer, qtbot, tmp_path):
    viewer, sim = particle_viewer
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    w.stack.value = viewer.layers["particles"]
    w.reference.value = None
    w.method.value = "udl"
    assert not w.deep_box.native.isHidden()
    w.deep_form["epochs"].value = 1
    w.deep_form["steps_per_epoch"].value = 4
    w.deep_form["batch_size"].value = 8
    w.run()
    _wait(w, qtbot)
    assert w.model is not None and w.model.kind == "align/udl"
    feats = viewer.layers["particles angles"].features
    assert {"psi", "network_psi", "score"} <= set(feats.columns) and len(feats) == 40
    assert viewer.layers["particles average"].metadata["trained_here"] is True
    # The cross-correlation refinement gives every particle a finite angle and a positive score.
    assert np.isfinite(feats["psi"]).all() and (feats["score"] > 0).all()
    path = w.save_model_to(str(tmp_path / "udl.pt"))
    assert path is not None and path.exists()

    viewer.layers.remove("particles average")
    _, w2 = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    assert w2.method.value == "udl"  # remembered from the last run
    assert w2.deep_form["steps_per_epoch"].value == 4
    w2.method.value = "fft"
    w2.load_model_from(str(path))
    assert w2.method.value == "udl" and w2.model.kind == "align/udl"
    w2.stack.value = viewer.layers["particles"]
    w2.run()
    _wait(w2, qtbot)
    assert viewer.layers["particles average"].metadata["trained_here"] is False


def test_compare_table_and_frc(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(16, 32, 32)).astype(np.float32)
    viewer.add_image(clean, name="clean", scale=(5.0, 5.0, 5.0))
    viewer.add_image(clean + 0.1 * rng.normal(size=clean.shape).astype(np.float32), name="good")
    viewer.add_image(clean + 2.0 * rng.normal(size=clean.shape).astype(np.float32), name="bad")
    viewer.add_image(clean[0], name="a slice")  # another shape: not offered
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare")
    w.reference.value = viewer.layers["clean"]
    assert sorted(w.layers.choices) == ["bad", "good"]  # the reference's shape, not the reference itself
    w.layers.value = ["good", "bad"]
    w.run()
    assert set(w.results) == {"good", "bad"}
    assert w.results["good"]["PSNR (dB)"] > w.results["bad"]["PSNR (dB)"] + 10
    assert w.table.rowCount() == 2 and w.table.item(0, 0).text() == "good"
    w.grid.value = True
    assert viewer.grid.enabled
    assert isinstance(pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in w.results.values()]),
                      pd.DataFrame)


def test_align_with_the_shipped_pretrained_network(particle_viewer, qtbot, monkeypatch):
    viewer, sim = particle_viewer
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    w.stack.value = viewer.layers["particles"]
    w.method.value = "judl"
    import napari_cryoden._plugin.widgets.align as align_widget

    shown = []
    monkeypatch.setattr(align_widget, "notify_info", shown.append)
    w.load_pretrained()
    assert w.model is not None and w.model.kind == "align/judl" and w.model_label.value.startswith("pretrained")
    assert shown == [align_widget.SHIPPED_CTF_NOTE]  # what the shipped models do on CTF data is said at once
    w.run()
    _wait(w, qtbot)
    assert viewer.layers["particles average"].metadata["trained_here"] is False  # applied, not trained
    assert w.model_label.value.startswith("pretrained")  # still the shipped model, not "trained here"
    feats = viewer.layers["particles angles"].features
    assert "network_psi" in feats and np.isfinite(feats["psi"]).all() and len(feats) == 40


def test_align_notifies_when_the_network_it_refined_looks_unreliable(particle_viewer, qtbot, monkeypatch, tmp_path):
    """An untrained network's angles are far off: after refine local the widget says so (the edge check of
    docs/align.md), as the CLI does on stderr; the result layers are still added."""
    import napari_cryoden._plugin.widgets.align as align_widget
    from napari_cryoden.align.udl import DeepAlignParams, iter_train
    from napari_cryoden.models import save_model
    from napari_cryoden.progress import run as run_events

    viewer, sim = particle_viewer
    untrained = run_events(iter_train(sim.images, None, DeepAlignParams(epochs=1, steps_per_epoch=1,
                                                                         learning_rate=0.0, seed=0)))
    path = save_model(tmp_path / "untrained.pt", untrained)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    w.stack.value = viewer.layers["particles"]
    w.load_model_from(str(path))
    shown = []
    monkeypatch.setattr(align_widget, "notify_info", shown.append)
    w.run()
    _wait(w, qtbot)
    assert any("unreliable" in m and "particles" in m for m in shown), shown
    assert "particles angles" in viewer.layers
