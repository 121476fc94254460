"""The UDL / JUDL models shipped in the package: they load offline from the installed package, see any box,
find angles on a map they never saw (emd_5625 is not in their training data) where the untrained network
cannot, are used by ``cryoden align --model pretrained`` and fine-tuned by ``--time-budget``; a missing
shipped file is a message, not a crash.

The quality margins hold for any CPU: the shipped weights are fixed, so only the test data's noise draw and
float rounding vary; the margins (measured below) are tens of degrees wide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import starfile
import torch
from _cli import run as run_cli

import napari_cryoden
from napari_cryoden.align.networks import ARCHITECTURE, SiameseAngleRegressor
from napari_cryoden.align.udl import (
    build_network,
    inference_settings,
    network_angle_error,
    predict_relative_angles,
)
from napari_cryoden.errors import CryodenInputError
from napari_cryoden.io.mrc import read_mrc, write_mrc
from napari_cryoden.models import PRETRAINED, ModelFile, load_model, load_pretrained, pretrained_path
from napari_cryoden.sample_data import builtin_map
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack

KINDS = ("align/udl", "align/judl")


def _stack(box: int, snr: float, n: int = 96, seed: int = 0):
    m = builtin_map()  # emd_5625: a benchmark tuning map, never in the shipped models' training data
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size * 64 / box, box=box)
    ref = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
    sim = simulate_alignment_stack(ref, pixel_size=1.0, n_per_image=n, max_shift=box / 16, integer_shifts=False,
                                   ctf_mode="none", snr=snr, seed=seed)
    return ref, sim


def _untrained(model: ModelFile) -> ModelFile:
    torch.manual_seed(0)
    c = model.config
    net = SiameseAngleRegressor(c["spectrum_size"], base=c["base_channels"], levels=c["levels"])
    return ModelFile(kind=model.kind, config=dict(c), state_dict={"net": net.state_dict()})


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_models_load_offline_from_the_installed_package(kind):
    path = pretrained_path(kind)
    assert path.parent == Path(napari_cryoden.__file__).parent / "models" and path.name == PRETRAINED[kind]
    assert path.stat().st_size < 5e6
    model = load_pretrained(kind)
    assert model.kind == kind and model.config["architecture"] == ARCHITECTURE and model.config["any_box"]
    data = model.extra["training_data"]
    assert "emd_3197" in data and "never emd_5625, emd_1832, emd_1080" in data
    assert model.extra["steps"] >= 1000 and model.extra["script"] == "scripts/train_align_models.py"
    again = load_pretrained(kind)  # the same weights every time: a pure function of the file
    for name, value in model.state_dict["net"].items():
        assert torch.equal(value, again.state_dict["net"][name])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("box", [64, 128])
def test_shipped_model_finds_angles_on_a_map_it_never_saw(kind, box):
    """The network's own angle (no cross-correlation after it) on emd_5625 projections, SNR 1."""
    ref, sim = _stack(box, snr=1.0)
    model = load_pretrained(kind)
    shipped = np.median(network_angle_error(predict_relative_angles(build_network(model), ref, sim.images),
                                            sim.angles))
    untrained = np.median(network_angle_error(
        predict_relative_angles(build_network(_untrained(model)), ref, sim.images), sim.angles))
    assert shipped < 10.0 and untrained > 20.0, (shipped, untrained)


def test_cli_uses_the_pretrained_model_and_fine_tunes_it(capsys, tmp_path):
    ref, sim = _stack(64, snr=1.0, n=24)
    sim.save(tmp_path / "p.mrcs", tmp_path / "truth.star")
    write_mrc(tmp_path / "ref.mrc", ref, voxel_size=1.0)
    out = tmp_path / "net.star"
    rc, stdout, err = run_cli(capsys, "align", tmp_path / "p.mrcs", "-o", out, "--method", "udl", "--model",
                              "pretrained", "--reference", tmp_path / "ref.mrc", "--refine", "none", "--device", "cpu")
    assert rc == 0, err
    assert "using the pretrained udl model" in stdout
    reference = read_mrc(tmp_path / "ref.mrc").data
    how = inference_settings(load_pretrained("align/udl"), reference, 64, max_shift=10.0, refine="none")  # as cryoden align
    raw = predict_relative_angles(build_network(load_pretrained("align/udl")), reference, sim.images, **how)
    np.testing.assert_allclose(starfile.read(out, always_dict=True)["particles"]["rlnAnglePsi"], raw, atol=1e-4)
    # --time-budget fine-tunes the shipped model on the input first; the result still serves any box.
    rc, stdout, err = run_cli(capsys, "align", tmp_path / "p.mrcs", "-o", tmp_path / "tuned.star", "--method", "judl",
                              "--model", "pretrained", "--time-budget", "2", "--save-model", tmp_path / "tuned.pt",
                              "--device", "cpu")
    assert rc == 0, err
    tuned = load_model(tmp_path / "tuned.pt", kind="align/judl")
    shipped = load_pretrained("align/judl")
    assert tuned.config["any_box"] and len(tuned.extra["history"]) >= 1
    assert any(not torch.equal(v, shipped.state_dict["net"][k]) for k, v in tuned.state_dict["net"].items())


def test_a_missing_shipped_model_is_a_message_naming_the_file(capsys, tmp_path, monkeypatch):
    from napari_cryoden import models

    monkeypatch.setitem(models.PRETRAINED, "align/udl", "no_such_model.pt")
    with pytest.raises(CryodenInputError, match="no_such_model.pt.*not installed"):
        load_pretrained("align/udl")
    ref, sim = _stack(64, snr=1.0, n=4)
    sim.save(tmp_path / "p.mrcs", tmp_path / "truth.star")
    rc, _, err = run_cli(capsys, "align", tmp_path / "p.mrcs", "-o", tmp_path / "o.star", "--method", "udl",
                         "--model", "pretrained")
    assert rc == 2 and "no_such_model.pt" in err and "not installed" in err, err
    assert not (tmp_path / "o.star").exists()
    with pytest.raises(CryodenInputError, match="no pretrained"):
        pretrained_path("align/fft")


def test_a_box_smaller_than_the_models_spectrum_is_refused(capsys, tmp_path):
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "tiny.mrcs", rng.normal(size=(6, 24, 24)).astype(np.float32), voxel_size=1.0, is_stack=True)
    rc, _, err = run_cli(capsys, "align", tmp_path / "tiny.mrcs", "-o", tmp_path / "o.star", "--method", "udl",
                         "--model", "pretrained")
    assert rc == 2 and "24²" in err and "32²" in err, err
    assert not (tmp_path / "o.star").exists()


def test_the_shipped_model_on_particles_with_a_ctf_warns_unless_it_is_fine_tuned(capsys, tmp_path):
    """Measured (docs/align.md): on particles with a CTF the shipped models are far off on their own; the
    CLI says so when a STAR with defoci is aligned by a shipped model that is not fine-tuned, and not otherwise."""
    m = builtin_map()
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size, box=64)
    ref = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
    for ctf_mode in ("full", "none"):
        sim = simulate_alignment_stack(ref, pixel_size=m.pixel_size, n_per_image=8, max_shift=2, ctf_mode=ctf_mode,
                                       snr=1.0, seed=0)
        sim.save(tmp_path / f"{ctf_mode}.mrcs", tmp_path / f"{ctf_mode}.star")
        rc, _, err = run_cli(capsys, "align", tmp_path / f"{ctf_mode}.star", "-o", tmp_path / f"out_{ctf_mode}.star",
                             "--method", "udl", "--model", "pretrained", "--refine", "none", "--device", "cpu")
        assert rc == 0, err
        assert ("has a CTF" in err) == (ctf_mode == "full"), err
        assert ("--time-budget" in err) == (ctf_mode == "full")
