"""Cluster dock widget in a real viewer: classes, averages, features, embedding clicks, class selection, STAR
export, Cancel, bad input and persisted settings."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden.io.star import read_particle_images, read_star
from napari_cryoden.metrics import adjusted_rand_index

PLUGIN = "napari-cryoden"


def _wait(widget, qtbot, timeout=300_000):
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=timeout)


@pytest.fixture
def stack_viewer(make_particle_viewer):
    return make_particle_viewer(n_particles=60, snr=1.0, max_shift=3.0, seed=4)


def test_cluster_widget_finds_the_classes_and_exports(stack_viewer, qtbot, tmp_path):
    viewer, sim = stack_viewer
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Cluster")
    w.stack.value = viewer.layers["particles"]
    w.classes.value = 3
    w.method.value = "siamese"
    w.form["max_steps"].value = 20
    w.form["min_steps"].value = 10
    w.run()
    _wait(w, qtbot)
    assert w.result is not None
    labels = w.result.labels
    assert adjusted_rand_index(sim.classes, labels) == pytest.approx(1.0)

    averages = viewer.layers["particles class averages"]
    assert averages.data.shape == (3, 64, 64)
    assert tuple(averages.scale) == pytest.approx((1.0, sim.pixel_size, sim.pixel_size))
    counts = averages.metadata["counts"]
    assert counts == sorted(counts, reverse=True) and sum(counts) == 60
    assert list(viewer.layers["particles class counts"].features["particles"]) == counts

    classes = viewer.layers["particles classes"]
    frame = np.asarray(classes.data[5])
    assert frame[0, 0] == labels[5] + 1 and frame[32, 32] == 0  # a ring of the class number at the box edge
    assert tuple(classes.scale) == pytest.approx(tuple(viewer.layers["particles"].scale))

    feats = viewer.layers["particles cluster features"].features
    assert list(feats.columns) == ["particle", "class", "confidence", "distance", "embedding_x", "embedding_y"]
    np.testing.assert_array_equal(feats["class"], labels + 1)
    assert (feats["confidence"] > 0).all() and len(feats) == 60

    # A click in the embedding plot at a particle's coordinates jumps the viewer to it.
    x, y = w.result.embedding[17]
    assert w.plot.nearest(x, y) == 17
    w.plot.pick(17)
    assert viewer.dims.current_step[0] == 17

    # Selecting a class shows only its members.
    w.class_list.value = [1]
    members = np.flatnonzero(labels == 1)
    sel = viewer.layers["particles selected classes"]
    np.testing.assert_array_equal(sel.data, np.asarray(viewer.layers["particles"].data)[members])
    np.testing.assert_array_equal(viewer.layers["particles cluster features"].shown, labels == 1)
    w.plot.pick(int(members[2]))
    assert viewer.dims.current_step[0] == 2  # the position inside the selected-classes layer
    w.class_list.value = []
    assert "particles selected classes" not in viewer.layers

    out = w.export_star(str(tmp_path / "classes.star"))
    table = read_star(out)
    np.testing.assert_array_equal(table.particles["rlnClassNumber"], labels + 1)
    assert "rlnCryodenClassScore" in table.particles
    images = read_particle_images(table)  # the in-memory stack was written beside the STAR
    np.testing.assert_allclose(images, np.asarray(viewer.layers["particles"].data), atol=1e-6)

    sub = w.export_star(str(tmp_path / "subset.star"), classes=[2, 3])
    subset = read_star(sub)
    assert set(subset.particles["rlnClassNumber"]) == {2, 3}
    assert len(subset) == int((labels >= 1).sum())
    assert w.export_star(str(tmp_path / "none.star"), classes=[]) is None
    assert not (tmp_path / "none.star").exists()


def test_cluster_widget_remembers_its_settings(stack_viewer):
    viewer, _ = stack_viewer
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Cluster")
    w.stack.value = viewer.layers["particles"]
    w.method.value = "mra"
    w.classes.value = 4
    w.form["iterations"].value = 3
    w._save_state()
    viewer.window.remove_dock_widget(w.native)
    _, w2 = viewer.window.add_plugin_dock_widget(PLUGIN, "Cluster")
    assert w2.method.value == "mra" and w2.classes.value == 4
    assert w2.form["iterations"].value == 3


def test_cluster_widget_cancel_and_bad_input(stack_viewer, qtbot, monkeypatch):
    from napari_cryoden._plugin.widgets import cluster as module

    viewer, _ = stack_viewer
    errors = []
    monkeypatch.setattr(module, "notify_error", lambda exc: errors.append(str(exc)))
    viewer.add_image(np.zeros((16, 16), np.float32), name="flat")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Cluster")
    assert "flat" not in [layer.name for layer in w.stack.choices]  # only particle stacks are offered
    from napari_cryoden._plugin.layers import particle_stack_input

    with pytest.raises(Exception, match=r"\(n, N, N\)"):  # the check behind it, for layers set by scripts
        particle_stack_input(viewer.layers["flat"])
    assert w.runner.worker is None

    w.stack.value = viewer.layers["particles"]
    w.classes.value = 61
    w.run()
    assert "60 particles" in errors[-1]

    w.classes.value = 3
    w.method.value = "siamese"
    w.form["max_steps"].value = 100000
    w.form["min_steps"].value = 100000
    w.run()
    qtbot.waitUntil(lambda: "siamese" in w.progress.bar.format() or "train" in w.progress.bar.format(),
                    timeout=120_000)
    w.runner.cancel()
    assert w.progress.bar.format() == "cancelled"
    qtbot.wait(500)
    assert "particles class averages" not in viewer.layers
    assert w.result is None
