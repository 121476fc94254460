"""The voxel size lives in a layer's ``scale`` only: a scale edited in napari is what every job reads."""

from __future__ import annotations

import numpy as np

from napari_cryoden.io.mrc import write_mrc

PLUGIN = "napari-cryoden"


def test_an_edited_scale_is_what_jobs_use(make_napari_viewer, tmp_path):
    from napari_cryoden._plugin.layers import layer_input

    write_mrc(tmp_path / "t.mrc", np.ones((4, 8, 8), np.float32), voxel_size=(3.0, 2.0, 2.0))
    write_mrc(tmp_path / "s.mrcs", np.ones((5, 8, 8), np.float32), voxel_size=1.5, is_stack=True)
    viewer = make_napari_viewer()
    tomo = viewer.open(str(tmp_path / "t.mrc"), plugin=PLUGIN)[0]
    stack = viewer.open(str(tmp_path / "s.mrcs"), plugin=PLUGIN)[0]
    assert layer_input(tomo)[2] == (3.0, 2.0, 2.0)
    assert layer_input(stack)[2] == (1.5, 1.5, 1.5)
    tomo.scale = (6.0, 4.0, 4.0)  # the user corrects a wrong header in napari
    stack.scale = (1.0, 2.5, 2.5)
    assert layer_input(tomo)[2] == (6.0, 4.0, 4.0)
    assert layer_input(stack)[2] == (2.5, 2.5, 2.5)
    assert tomo.metadata["header_voxel_size"] == (3.0, 2.0, 2.0)  # what the file said stays on record
