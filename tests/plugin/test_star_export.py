"""STAR exports from napari lose nothing: every column of the source table (CTF included) and its real optics
survive align → export and align → cluster the aligned layer → export; the newest alignment is written; no
optics value is made up for a layer without a STAR source."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cryoden.io.mrc import write_mrc
from napari_cryoden.io.star import ParticleTable, read_star, write_star

PLUGIN = "napari-cryoden"
N = 24


@pytest.fixture
def rich_star(tmp_path):
    """A STAR file with the columns a RELION Extract/Refine job leaves, and a real optics table."""
    from napari_cryoden.sample_data import sample_particles

    sim = sample_particles(n_particles=N, snr=2.0, max_shift=2.0, seed=3)
    write_mrc(tmp_path / "stack.mrcs", sim.images, voxel_size=sim.pixel_size, is_stack=True)
    rng = np.random.default_rng(0)
    particles = pd.DataFrame({
        "rlnCoordinateX": rng.uniform(0, 4000, N), "rlnCoordinateY": rng.uniform(0, 4000, N),
        "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(N)],
        "rlnMicrographName": [f"mics/m{i % 3}.mrc" for i in range(N)],
        "rlnDefocusU": rng.uniform(1e4, 2e4, N), "rlnDefocusV": rng.uniform(1e4, 2e4, N),
        "rlnDefocusAngle": rng.uniform(0, 180, N), "rlnCtfBfactor": np.zeros(N), "rlnPhaseShift": np.zeros(N),
        "rlnAngleRot": rng.uniform(0, 360, N), "rlnAngleTilt": rng.uniform(0, 180, N),
        "rlnAnglePsi": rng.uniform(0, 360, N), "rlnOriginXAngst": np.zeros(N), "rlnOriginYAngst": np.zeros(N),
        "rlnRandomSubset": (np.arange(N) % 2) + 1, "rlnGroupNumber": np.ones(N, int), "rlnOpticsGroup": 1,
    })
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["krios_K3"], "rlnAmplitudeContrast": [0.07],
        "rlnSphericalAberration": [2.62], "rlnVoltage": [200.0], "rlnImagePixelSize": [sim.pixel_size],
        "rlnImageSize": [sim.images.shape[-1]], "rlnImageDimensionality": [2],
        "rlnMicrographOriginalPixelSize": [sim.pixel_size / 2],
    })
    write_star(tmp_path / "parts.star", ParticleTable(particles, optics))
    return tmp_path / "parts.star", particles, optics


KEPT = ["rlnCoordinateX", "rlnCoordinateY", "rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
        "rlnCtfBfactor", "rlnPhaseShift", "rlnRandomSubset", "rlnGroupNumber", "rlnOpticsGroup"]


def _same_optics(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


def test_align_then_cluster_the_aligned_layer_exports_every_column(make_napari_viewer, qtbot, tmp_path, rich_star):
    star, source, optics = rich_star
    viewer = make_napari_viewer()
    viewer.open(str(star), plugin=PLUGIN)
    stack = viewer.layers["parts"]
    _, a = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    a.stack.value = stack
    a.run()
    qtbot.waitUntil(lambda: a.runner.worker is None, timeout=300_000)
    assert a.result is not None

    (tmp_path / "out").mkdir()
    aligned_star = read_star(a.export_star(str(tmp_path / "out" / "aligned.star")))
    got = aligned_star.particles
    for col in KEPT:
        pd.testing.assert_series_equal(got[col], source[col], check_names=False, check_dtype=False)
    assert "rlnAngleRot" not in got and "rlnAngleTilt" not in got  # no stale 3D orientation beside the new psi
    np.testing.assert_allclose(got["rlnAnglePsi"], a.result.angles, atol=1e-4)
    np.testing.assert_allclose(got["rlnOriginXAngst"], a.result.origins[:, 0] * stack.scale[-1], atol=1e-3)
    _same_optics(aligned_star.optics, optics)  # the real microscope, not 300 kV / 2.7 mm / 0.1
    # the image names still resolve to the raw stack from the new folder
    name = got["rlnImageName"].iloc[0].split("@")[1]
    assert (tmp_path / "out" / name).resolve() == (tmp_path / "stack.mrcs").resolve()

    # Cluster the aligned layer and export: the source's columns, its optics, and the newest alignment.
    _, c = viewer.window.add_plugin_dock_widget(PLUGIN, "Cluster")
    c.stack.value = viewer.layers["parts aligned"]
    c.method.value = "pca-kmeans"
    c.classes.value = 2
    c.run()
    qtbot.waitUntil(lambda: c.runner.worker is None, timeout=300_000)
    classes = read_star(c.export_star(str(tmp_path / "classes.star")))
    got = classes.particles
    for col in KEPT:
        pd.testing.assert_series_equal(got[col], source[col], check_names=False, check_dtype=False)
    np.testing.assert_allclose(got["rlnAnglePsi"], a.result.angles, atol=1e-4)  # not RELION's old psi
    assert set(got["rlnClassNumber"]) == {1, 2}
    _same_optics(classes.optics, optics)


def test_a_layer_without_a_star_source_gets_no_made_up_optics(make_particle_viewer, qtbot, tmp_path):
    viewer, _ = make_particle_viewer(n_particles=20, snr=2.0, seed=1)
    _, a = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    a.stack.value = viewer.layers["particles"]
    a.run()
    qtbot.waitUntil(lambda: a.runner.worker is None, timeout=300_000)
    table = read_star(a.export_star(str(tmp_path / "a.star")))
    for invented in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        assert invented not in table.optics
    assert table.pixel_size() == pytest.approx(float(viewer.layers["particles"].scale[-1]))


def test_align_and_cluster_offer_particle_stacks_not_the_sample_tomogram(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-tomogram")
    viewer.open_sample(PLUGIN, "synthetic-particles")
    for name in ("Align", "Cluster"):
        _, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        offered = [layer.name for layer in w.stack.choices]
        assert offered and not any("tomogram" in n for n in offered), offered
        assert "tomogram" not in w.stack.value.name and w.stack.value.data.ndim == 3


def test_denoise_starts_on_the_noisy_volume_and_follows_the_selected_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-tomogram")
    viewer.open_sample(PLUGIN, "synthetic-particles")
    _, d = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    assert d.image.value.metadata.get("role") == "raw"  # a noisy layer, never "tomogram clean"
    assert "clean" not in d.image.value.name
    viewer.layers.selection.active = viewer.layers["tomogram noisy"]
    assert d.image.value.name == "tomogram noisy"
    viewer.layers.selection.active = viewer.layers["tomogram clean"]  # ground truth is not taken as an input
    assert d.image.value.name == "tomogram noisy"
    _, a = viewer.window.add_plugin_dock_widget(PLUGIN, "Align")
    assert a.stack.value.name == "particles"  # the raw stack, not the class references
    viewer.layers.selection.active = viewer.layers["particles"]
    assert d.image.value.name == "particles" and a.stack.value.name == "particles"
