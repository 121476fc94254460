"""Sample data in a real viewer, and the npe2 manifest (validation, top-level copy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

PLUGIN = "napari-cryoden"
REPO = Path(__file__).resolve().parents[2]


def test_sample_tomogram(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-tomogram")
    names = [layer.name for layer in viewer.layers]
    assert sorted(names) == ["tomogram clean", "tomogram noisy"]
    noisy, clean = viewer.layers["tomogram noisy"], viewer.layers["tomogram clean"]
    assert noisy.data.ndim == 3
    assert noisy.data.shape == clean.data.shape
    for layer in (noisy, clean):
        assert tuple(layer.scale) == (10.0, 10.0, 10.0)
        assert np.isfinite(np.asarray(layer.data)).all()
    # noisy is the clean volume plus noise, not a copy of it
    diff = np.asarray(noisy.data, dtype=np.float64) - np.asarray(clean.data, dtype=np.float64)
    assert diff.std() > 0
    assert np.corrcoef(np.ravel(noisy.data), np.ravel(clean.data))[0, 1] > 0.1


def test_sample_particles(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-particles")
    images = [layer for layer in viewer.layers if layer._type_string == "image"]
    points = [layer for layer in viewer.layers if layer._type_string == "points"]
    assert len(images) == 2 and len(points) == 1

    stack = viewer.layers["particles"]
    assert stack.data.ndim == 3
    assert stack.data.shape[0] == 150
    assert stack.data.shape[1] == stack.data.shape[2]
    assert stack.scale[0] == 1.0
    pixel = float(stack.scale[-1])
    assert pixel > 0 and stack.scale[-2] == pixel
    assert stack.metadata["is_stack"] is True

    truth = points[0]
    features = truth.features
    assert len(features) == 150 and len(truth.data) == 150
    assert sorted(np.unique(features["rlnClassNumber"]).tolist()) == [1, 2, 3]
    psi = features["rlnAnglePsi"].to_numpy(float)
    assert ((psi >= 0) & (psi < 360)).all()
    assert {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(features.columns)
    np.testing.assert_allclose(truth.scale[-2:], stack.scale[-2:])

    refs = viewer.layers["particles class references"]
    assert refs.data.shape == (3, *stack.data.shape[1:])
    np.testing.assert_allclose(refs.scale, stack.scale)


def test_npe2_validate():
    npe2 = Path(sys.executable).parent / "npe2"
    result = subprocess.run([str(npe2), "validate", PLUGIN], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_top_level_manifest_matches_package():
    top = REPO / "napari.yaml"
    packaged = REPO / "src" / "napari_cryoden" / "napari.yaml"
    assert top.read_text() == packaged.read_text()


def test_manifest_commands_resolve():
    """Every python_name in the manifest imports to a callable."""
    import importlib

    import yaml

    manifest = yaml.safe_load((REPO / "src" / "napari_cryoden" / "napari.yaml").read_text())
    for command in manifest["contributions"]["commands"]:
        module, _, attr = command["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command["id"]


def test_demo_saves_a_screenshot_of_every_widget(tmp_path):
    """`cryoden demo` runs every dock widget in a real napari window (a subprocess, on this test's X server)
    and saves one screenshot each; none may be black."""
    from skimage.io import imread

    from napari_cryoden.demo import widget_screenshots

    shots, problem = widget_screenshots(tmp_path / "shots", budget=2.0)
    assert problem is None
    names = {p.name for p in shots}
    assert names == {f"widget_{w}.png" for w in ("simulate", "align", "cluster", "cluster_averages", "denoise",
                                                  "compare")}
    for path in shots:
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 500 and img[..., :3].mean() > 5, path.name
