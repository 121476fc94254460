"""Fixtures of the plugin tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_particle_viewer(make_napari_viewer):
    """A viewer holding a simulated 3-class particle stack (the sample-data layers); returns (viewer, sim)."""
    from napari_cryoden._plugin.layers import add_layer
    from napari_cryoden._plugin.sample_data import particle_layers
    from napari_cryoden.sample_data import sample_particles

    def make(**simulation):
        viewer = make_napari_viewer()
        sim = sample_particles(**simulation)
        for tup in particle_layers(sim):
            add_layer(viewer, tup)
        return viewer, sim

    return make
