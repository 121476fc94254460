"""Denoising methods are objects: a new one is one registration, and the CLI picks it up with no other edit;
the built-in objects answer what the CLI and the widget used to decide from method names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from _cli import run as cryoden

from napari_cryoden.denoise import DenoiseMethod, get_method, methods, register, unregister
from napari_cryoden.denoise.engine import SelfSupervisedMethod, centre_crop
from napari_cryoden.io.mrc import read_mrc, write_mrc
from napari_cryoden.params import param
from napari_cryoden.progress import ProgressEvent, run


@dataclass(frozen=True)
class ScaleParams:
    factor: float = param(0.5, "what the toy method multiplies the data by", min=0.0, max=10.0)


class ScaleMethod(DenoiseMethod):
    """A toy method: the input scaled (written into ``out`` when given, like a real method)."""

    name = "toy-scale"
    title = "Toy: scaled copy"
    params = ScaleParams
    description = "Multiplies the data by --factor (a test of the method registry)."

    def run(self, data, params, *, is_stack=False, voxel_size=None, seed=0, device="auto", half2=None, out=None):
        result = out if out is not None else np.empty(np.shape(data), dtype=np.float32)
        result[...] = np.asarray(data, dtype=np.float32) * params.factor
        yield ProgressEvent("denoise", 1, 1)
        return result


@pytest.fixture
def toy_method():
    method = register(ScaleMethod())
    yield method
    unregister(method.name)


def _denoise_parser():
    from napari_cryoden.cli import build_parser

    root = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return root.choices["denoise"]


def test_a_registered_method_is_a_cli_choice_with_its_parameters_and_runs(toy_method, tmp_path, capsys):
    parser = _denoise_parser()
    method_option = next(a for a in parser._actions if "--method" in a.option_strings)
    assert "toy-scale" in method_option.choices
    assert any("--factor" in a.option_strings for a in parser._actions)
    assert "Multiplies the data by --factor" in parser.epilog

    data = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    write_mrc(tmp_path / "in.mrc", data, voxel_size=2.0)
    rc, out, err = cryoden(capsys, "denoise", tmp_path / "in.mrc", "-o", tmp_path / "out.mrc", "--method",
                           "toy-scale", "--factor", "0.25")
    assert rc == 0, err
    assert "method toy-scale; device" in out
    np.testing.assert_allclose(read_mrc(tmp_path / "out.mrc").data, data * 0.25, rtol=1e-6)


def test_unregistering_removes_the_method(toy_method):
    assert "toy-scale" in methods()
    unregister("toy-scale")
    assert "toy-scale" not in methods()
    register(toy_method)  # the fixture's teardown unregisters it again


def test_a_method_given_as_keywords_runs_its_function(toy_method):
    def iter_negate(data, params, *, is_stack, voxel_size, seed, device, out):
        yield ProgressEvent("denoise", 1, 1)
        return -np.asarray(data, dtype=np.float32)

    method = DenoiseMethod(name="toy-negate", family="classical", params=ScaleParams, denoise=iter_negate)
    assert method.title == "toy-negate" and not method.trains and method.default_params(dims=2) == ScaleParams()
    assert run(method.run(np.ones((4, 4), np.float32), ScaleParams())).sum() == -16
    with pytest.raises(TypeError, match="no attribute 'colour'"):
        DenoiseMethod(name="x", params=ScaleParams, denoise=iter_negate, colour="red")
    with pytest.raises(ValueError, match="already registered"):
        register(ScaleMethod())


def test_the_default_method_is_self2self_and_said_so(tmp_path, capsys):
    parser = _denoise_parser()
    method_option = next(a for a in parser._actions if "--method" in a.option_strings)
    assert "default: self2self" in method_option.help
    write_mrc(tmp_path / "in.mrc", np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32),
              voxel_size=2.0)
    rc, out, err = cryoden(capsys, "denoise", tmp_path / "in.mrc", "-o", tmp_path / "out.mrc", "--epochs", "1",
                           "--time-budget", "0", "--patch-size", "16", "--batch-size", "2", "--base-channels", "4",
                           "--depth", "2", "--n-predictions", "1")
    assert rc == 0, err
    assert "method self2self (default); device" in out
    assert read_mrc(tmp_path / "out.mrc").data.shape == (24, 24, 24)


def test_the_method_objects_say_what_the_cli_and_widget_need():
    flags = {n: (m.family, m.trains, m.needs_model, m.needs_half2, m.needs_fft) for n, m in methods().items()}
    assert flags["self2self"] == ("self-supervised", True, False, False, False)
    assert flags["fourier-n2n"] == ("self-supervised", True, False, False, True)
    assert flags["n2n-halves"] == ("self-supervised", True, False, True, False)
    assert flags["bm3d"] == ("classical", False, False, False, False)
    assert flags["cgan"] == ("supervised", False, True, False, False)
    # 2D defaults: larger patches for every engine method, a larger always-kept ball for Fourier N2N only.
    s2s, fourier = get_method("self2self"), get_method("fourier-n2n")
    assert (s2s.default_params(dims=2).patch_size, s2s.default_params(dims=3).patch_size) == (96, 32)
    assert fourier.default_params(dims=2).low_frequency_fraction == 0.07
    assert fourier.default_params(dims=3).low_frequency_fraction == 0.005
    assert get_method("bm3d").default_params(dims=2) == get_method("bm3d").params()
    with pytest.raises(TypeError, match="bm3d does not train"):
        get_method("bm3d").train(np.zeros((8, 8)), get_method("bm3d").params())


def test_engine_names_follow_the_registry():
    from napari_cryoden.denoise import engine

    assert engine.METHODS == ("self2self", "fourier-n2n", "n2n-halves")
    assert engine.PARAMS["self2self"] is engine.Self2SelfParams is get_method("self2self").params
    with pytest.raises(ValueError, match="unknown method 'bm3d'"):
        run(engine.iter_train(np.zeros((16, 16, 16), np.float32), get_method("bm3d").params(), method="bm3d"))


class IdentityPairs(SelfSupervisedMethod):
    """A toy self-supervised method (the network learns to copy its input): only the two required hooks."""

    name = "toy-identity"
    title = "Toy: identity pairs"
    description = "Input and target are the same patch (a test of the engine's method hooks)."

    def make_pair(self, x, params, *, patch_spatial, generator):
        x = centre_crop(x[:, :1], patch_spatial)
        return x, x, None

    def predict_batch(self, net, x, params, *, n_predictions, generator, device):
        return net(x[:, :1])


def test_a_self_supervised_method_is_two_hooks_on_the_shared_engine(tmp_path):
    from napari_cryoden.denoise import engine

    method = register(IdentityPairs())
    try:
        assert "toy-identity" in engine.METHODS and method.trains
        assert "toy-identity" in next(a for a in _denoise_parser()._actions if a.dest == "method").choices
        vol = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
        params = method.default_params(dims=3, patch_size=16, batch_size=2, epochs=1, time_budget=0,
                                       base_channels=4, depth=2)
        model = run(engine.iter_train(vol, params, method="toy-identity", seed=0))
        assert model.method == "toy-identity" and len(model.history) == 10
        reloaded = engine.TrainedDenoiser.from_model_file(model.to_model_file())
        assert reloaded.params == params
        out = run(engine.iter_predict(reloaded, vol, device="cpu"))
        assert out.shape == vol.shape and np.isfinite(out).all()
    finally:
        unregister("toy-identity")
