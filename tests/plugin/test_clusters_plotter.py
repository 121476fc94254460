"""The Cluster widget's features layer opened in napari-clusters-plotter: the plot shows our embedding, the
class column colours it, and a selection drawn in the plot maps back to the particles."""

from __future__ import annotations

import numpy as np
import pytest

PLUGIN = "napari-cryoden"

ncp = pytest.importorskip("napari_clusters_plotter", reason="napari-clusters-plotter is in the testing extra")


def test_clusters_plotter_plots_our_embedding_and_maps_a_selection_back(make_particle_viewer, qtbot):
    viewer, sim = make_particle_viewer(n_particles=45, snr=1.0, max_shift=3.0, seed=4)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Cluster")
    w.stack.value = viewer.layers["particles"]
    w.classes.value = 3
    w.method.value = "pca-kmeans"
    w.run()
    qtbot.waitUntil(lambda: w.runner.worker is None, timeout=300_000)
    result = w.result
    assert result is not None

    layer = viewer.layers["particles cluster features"]
    viewer.layers.selection.active = layer
    plotter = ncp.PlotterWidget(viewer)
    viewer.window.add_dock_widget(plotter, area="right")
    assert plotter.layers == [layer]  # our Points layer is a valid plotter input
    offered = {plotter.control_widget.x_axis_box.itemText(i) for i in range(plotter.control_widget.x_axis_box.count())}
    assert {"embedding_x", "embedding_y", "confidence", "distance"} <= offered
    assert "class" in plotter.categorical_columns  # classes colour the plot as categories, not as a number ramp

    plotter.x_axis, plotter.y_axis, plotter.hue_axis = "embedding_x", "embedding_y", "class"
    plotter.plot_needs_update.emit()
    plotted = plotter.plotting_widget.active_artist.data
    np.testing.assert_allclose(plotted, result.embedding, rtol=1e-6)  # the plot is our embedding, row by row

    # A selection drawn in the plot (here: the points of our class 2) lands in the layer's features, row i =
    # particle i + 1, so it names the particles selected.
    chosen = result.labels == 1
    plotter._on_finish_draw(chosen.astype(int))
    manual = layer.features["MANUAL_CLUSTER_ID"].to_numpy().astype(int)
    picked = layer.features["particle"].to_numpy()[manual == 1]
    np.testing.assert_array_equal(picked, np.flatnonzero(chosen) + 1)
    # and the points sit on their particles' frames of the stack
    np.testing.assert_array_equal(layer.data[manual == 1, 0], np.flatnonzero(chosen))
