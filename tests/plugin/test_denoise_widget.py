"""The Denoise dock widget in a real viewer: train and predict, cancel, models, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_cryoden import metrics

PLUGIN = "napari-cryoden"


@pytest.fixture
def noisy_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    clean = gaussian_filter(rng.normal(size=(16, 48, 48)), 2.0)
    clean = ((clean - clean.mean()) / clean.std()).astype(np.float32)
    noisy = (clean + rng.normal(scale=1.2, size=clean.shape)).astype(np.float32)
    layer = viewer.add_image(noisy, name="noisy", scale=(5.0, 5.0, 5.0), metadata={"voxel_size": (5.0, 5.0, 5.0)})
    return viewer, layer, clean


def _widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    return widget


def _small(widget, method="self2self", **extra):
    widget.method.value = method
    values = {**dict(patch_size=16, batch_size=4, epochs=2, time_budget=0.0, base_channels=8, depth=2,
                     n_predictions=2, learning_rate=2e-3), **extra}
    names = {w.name for w in widget.form.fields()}
    for name, value in values.items():
        if name in names:
            widget.form[name].value = value


def test_train_and_predict_adds_a_denoised_layer(noisy_layers, qtbot):
    viewer, layer, clean = noisy_layers
    widget = _widget(viewer)
    widget.image.value = layer
    # No smoothing channels: with them the untrained network is already a Gaussian filter (+5.7 dB over the raw
    # input here, the trained one +6.4), so a PSNR check would not see whether training worked. 60 steps: with 20,
    # and the channels off, the result only matched a sigma = 0.5 blur.
    # White noise by construction; on this smooth, high-SNR toy signal the measured correlation cannot tell the
    # signal's smoothness from correlated noise (tests/core/test_noise_correlation.py) and picks 3x3x3 blocks.
    _small(widget, epochs=6, smooth_sigmas="", mask_block="1,1,1")
    events = []
    widget.runner.on_event = lambda ev: (events.append(ev), widget._on_event(ev))
    widget.run("both")
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=300_000)
    out = viewer.layers["noisy denoised (self2self)"]
    assert out.data.shape == layer.data.shape
    np.testing.assert_allclose(out.scale, layer.scale)
    assert out.metadata["method"] == "self2self" and out.metadata["params"]["patch_size"] == 16
    assert out.contrast_limits[0] < out.contrast_limits[1]
    assert any(e.stage == "train" for e in events) and any(e.stage == "predict" for e in events)
    assert widget.model is not None and widget.predict_button.enabled
    assert widget.progress.bar.format() == "done"
    # The training's loss curve, in step order (the student's distillation, whose steps restart at 1, is not on it).
    steps = widget.loss_plot.steps
    assert not widget.loss_plot.isHidden() and len(steps) > 0 and steps == sorted(steps)
    assert len(steps) == len([e for e in events if e.stage == "train" and e.loss is not None])
    assert any(e.stage == "distill" and e.loss is not None for e in events)
    assert "noise correlation" in widget.noise_label.value  # what was measured, shown with the model
    assert out.metadata["params"]["smooth_sigmas"] == ""
    # Baseline: a sigma = 0.5 Gaussian blur of the input (+2.9 dB over it). Measured over that blur: +1.9 to +2.0 dB
    # (seed 0 at 1 and 2 threads, seed 1 at 2); over the raw input +4.9 dB. Not claimed: the tuned Gaussian (sigma
    # 1: +9.5 dB over raw), out of reach of a test-sized training.
    psnr = metrics.psnr(clean, out.data, fit=True)
    blur = metrics.psnr(clean, gaussian_filter(layer.data, 0.5), fit=True)
    assert psnr > blur + 1.0, (psnr, blur)


def test_previews_keep_the_input_chosen_and_update_one_layer(noisy_layers, qtbot):
    """napari makes each added layer the active one: the input combo must not follow a training preview (it did:
    the form then showed the preview's settings and each preview was named after the last, "noisy preview
    preview preview ...")."""
    viewer, layer, _ = noisy_layers
    widget = _widget(viewer)
    widget.image.value = layer
    _small(widget, epochs=6, mask_block="1,1,1")  # 10 steps an epoch: previews at steps 25 and 50
    previews = []
    widget.runner.on_event = lambda ev: (previews.append(ev.preview is not None), widget._on_event(ev))
    widget.run("train")
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=300_000)
    assert sum(previews) >= 2
    assert widget.image.value is layer
    assert [x.name for x in viewer.layers if x.metadata.get("preview")] == ["noisy preview"]


def test_cancel_stops_and_adds_nothing(noisy_layers, qtbot):
    viewer, layer, _ = noisy_layers
    widget = _widget(viewer)
    widget.image.value = layer
    _small(widget, epochs=1000)
    n_layers = len(viewer.layers)
    widget.run("both")
    qtbot.waitUntil(lambda: widget.progress.bar.value() > 0, timeout=60_000)
    widget.progress.cancel_button.click()
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=30_000)
    qtbot.wait(300)
    assert len(viewer.layers) == n_layers
    assert widget.model is None


def test_save_and_load_model_then_predict(noisy_layers, qtbot, tmp_path):
    viewer, layer, _ = noisy_layers
    widget = _widget(viewer)
    widget.image.value = layer
    _small(widget, method="fourier-n2n")
    widget.run("train")
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=300_000)
    assert widget.model is not None and "noisy denoised (fourier-n2n)" not in viewer.layers
    widget.save_model_to(str(tmp_path / "m.pt"))
    assert (tmp_path / "m.pt").exists()
    other = _widget(viewer)
    other.image.value = layer
    other.load_model_from(str(tmp_path / "m.pt"))
    assert other.method.value == "fourier-n2n" and other.model is not None
    other.run("predict")
    qtbot.waitUntil(lambda: other.runner.worker is None, timeout=300_000)
    assert "noisy denoised (fourier-n2n)" in viewer.layers


def test_bad_input_is_a_notification_not_a_crash(make_napari_viewer, qtbot, monkeypatch):
    from napari_cryoden._plugin.widgets import denoise as module

    shown = []
    monkeypatch.setattr(module, "notify_error", lambda exc: shown.append(str(exc)))
    viewer = make_napari_viewer()
    bad = np.ones((8, 32, 32), np.float32)
    bad[2, 3, 4] = np.nan
    viewer.add_image(bad, name="has nan")
    widget = _widget(viewer)
    widget.image.value = viewer.layers["has nan"]
    widget.run("both")
    assert shown and "has nan" in shown[-1] and "NaN" in shown[-1]
    viewer.add_image(np.ones((8, 32, 32), np.float32), name="fine")
    widget.image.value = viewer.layers["fine"]
    widget.method.value = "self2self"
    widget.run("predict")
    assert "train or load a model first" in shown[-1]
    widget.load_model_from("/nonexistent/model.pt")
    assert "model file not found" in shown[-1]
    assert widget.runner.worker is None and len(viewer.layers) == 2


def test_a_registered_method_appears_in_the_menu_and_runs(noisy_layers, qtbot):
    """A method is one registration: the widget lists it, builds its form and runs it with no edit of its own."""
    from dataclasses import dataclass

    from napari_cryoden.denoise import DenoiseMethod, register, unregister
    from napari_cryoden.params import param
    from napari_cryoden.progress import ProgressEvent

    @dataclass(frozen=True)
    class Halve:
        factor: float = param(0.5, "multiplier", min=0.0, max=10.0)

    def iter_halve(data, params, *, is_stack, voxel_size, seed, device, out):
        yield ProgressEvent("denoise", 1, 1)
        return np.asarray(data, dtype=np.float32) * params.factor

    register(DenoiseMethod(name="toy-halve", title="Toy: halved", family="classical", params=Halve,
                           denoise=iter_halve, description="The data times --factor."))
    try:
        viewer, layer, _ = noisy_layers
        widget = _widget(viewer)
        widget.image.value = layer
        assert "toy-halve" in widget.method.choices
        widget.method.value = "toy-halve"
        assert [w.name for w in widget.form.fields()] == ["factor"] and widget.description.value == "The data times --factor."
        assert not widget.train_button.enabled and widget.both_button.text == "Denoise"
        widget.run("both")
        qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=60_000)
        np.testing.assert_allclose(viewer.layers["noisy denoised (toy-halve)"].data, layer.data * 0.5)
    finally:
        unregister("toy-halve")


def test_settings_follow_the_kind_of_data_and_stay_apart(make_napari_viewer, monkeypatch, tmp_path):
    # A 2D setting must never reach a 3D run (a "20 s" 3D run once trained one step with the 2D patch of 96).
    monkeypatch.setenv("CRYODEN_CONFIG_DIR", str(tmp_path))
    from napari_cryoden.denoise.engine import default_params

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.standard_normal((16, 48, 48)).astype(np.float32), name="tomo", metadata={"is_stack": False})
    viewer.add_image(rng.standard_normal((20, 32, 32)).astype(np.float32), name="stack", metadata={"is_stack": True})
    _, w = viewer.window.add_plugin_dock_widget("napari-cryoden", "Denoise")
    w.method.value = "self2self"
    patch2d = default_params("self2self", dims=2).patch_size
    patch3d = default_params("self2self", dims=3).patch_size
    assert patch2d != patch3d
    w.image.value = viewer.layers["stack"]
    assert w.stack.value is True and w.form["patch_size"].value == patch2d
    w.form["patch_size"].value = patch2d + 16  # the user's 2D choice
    w.image.value = viewer.layers["tomo"]
    assert w.stack.value is False and w.form["patch_size"].value == patch3d  # not the 2D value
    w._save_state()
    w.image.value = viewer.layers["stack"]
    assert w.form["patch_size"].value == patch2d + 16  # the 2D choice came back with 2D data
    assert w._saved_params["self2self/3d"]["patch_size"] == patch3d


def test_pretrained_is_first_and_denoises_in_one_pass(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("CRYODEN_CONFIG_DIR", str(tmp_path))  # nothing remembered from the tests before
    from napari_cryoden.sample_data import builtin_map
    from napari_cryoden.simulate import simulate_tomogram

    viewer = make_napari_viewer()
    m = builtin_map()  # EMD-5625 particles: never in the shipped model's training data
    ph = simulate_tomogram(shape=(48, 128, 128), voxel_size=10.0, particle_map=m.data,
                           particle_map_voxel_size=m.pixel_size, n_vesicles=4, n_filaments=4, n_particles=20, snr=0.2,
                           seed=101)
    layer = viewer.add_image(ph.noisy, name="tomo", scale=(10.0, 10.0, 10.0))
    widget = _widget(viewer)
    widget.image.value = layer
    # First in the menu, and what the widget opens on when nothing is remembered.
    assert widget.method.choices[0] == "pretrained" and widget.method.value == "pretrained"
    assert widget.both_button.text == "Denoise" and not widget.train_button.enabled
    assert widget.form["time_budget"].value == 0.0
    widget.run("both")
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=120_000)
    out = viewer.layers["tomo denoised (pretrained)"]
    assert out.data.shape == layer.data.shape
    best_gauss = max(metrics.psnr(ph.clean, gaussian_filter(ph.noisy, s), fit=True) for s in (0.5, 1, 1.5, 2, 3, 4))
    assert metrics.psnr(ph.clean, out.data, fit=True) > best_gauss + 0.5
    assert not widget.noise_label.native.isHidden() and "noise correlation" in widget.noise_label.value
    assert widget.loss_plot.isHidden()  # one pass: no training, so no empty loss plot either
