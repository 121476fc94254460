"""`cryoden align` end to end, in-process, on a tiny simulated stack; bad inputs exit 2 naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import starfile
from _cli import run

from napari_cryoden.io.mrc import read_mrc, write_mrc
from napari_cryoden.metrics.alignment import angular_error, shift_error
from napari_cryoden.sample_data import builtin_map
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack

BOX = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("align")
    m = builtin_map()
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size * 1.5, box=BOX)
    ref = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
    sim = simulate_alignment_stack(ref, pixel_size=2.0, n_per_image=30, max_shift=4, integer_shifts=False,
                                   ctf_mode="none", snr=None, seed=0)
    sim.save(tmp / "p.mrcs", tmp / "truth.star")
    write_mrc(tmp / "ref.mrc", ref, voxel_size=2.0)
    return tmp, sim




def test_align_stack_to_reference_writes_star_stack_and_average(data, capsys, tmp_path):
    folder, sim = data
    out = tmp_path / "out.star"
    rc, _, err = run(capsys, "-q", "align", folder / "p.mrcs", "-o", out, "--reference", folder / "ref.mrc",
                     "--aligned", tmp_path / "al.mrcs", "--average", tmp_path / "avg.mrc", "--max-shift", 6,
                     "--device", "cpu")
    assert rc == 0, err
    star = starfile.read(out, always_dict=True)
    parts = star["particles"]
    for col in ("rlnImageName", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnCryodenScore"):
        assert col in parts
    assert "optics" in star
    origins = parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 2.0
    assert np.median(angular_error(parts["rlnAnglePsi"].to_numpy(), sim.angles)) < 0.5
    assert np.median(shift_error(origins, sim.origins)) < 0.1
    aligned = read_mrc(tmp_path / "al.mrcs")
    assert aligned.data.shape == sim.images.shape and aligned.pixel_size == pytest.approx(2.0)
    assert read_mrc(tmp_path / "avg.mrc").data.shape == (BOX, BOX)
    # Image names resolve from the output's folder.
    assert (out.parent / parts["rlnImageName"].iloc[0].split("@")[1]).resolve() == (folder / "p.mrcs").resolve()
    # Evaluate against the truth, with the original project's two similarity measures.
    rc, stdout, err = run(capsys, "evaluate", "alignment", "--truth", folder / "truth.star", "--estimate", out,
                          "--aligned", tmp_path / "al.mrcs", "--reference", folder / "ref.mrc", "--json")
    assert rc == 0, err
    rows = json.loads(stdout)
    assert rows["median angular error (deg)"] < 0.5 and rows["median shift error (px)"] < 0.1
    assert rows["mean similarity to reference"] > 0.9
    assert rows["mean similarity of consecutive images"] > 0.9


def test_align_star_reference_free_and_global_rotation_is_removed(data, capsys, tmp_path):
    folder, sim = data
    out = tmp_path / "free.star"
    rc, stdout, err = run(capsys, "-q", "align", folder / "truth.star", "-o", out, "--max-shift", 6, "--device",
                          "cpu")
    assert rc == 0, err
    assert "reference-free: " in stdout and "passes (global search" in stdout
    rc, stdout, err = run(capsys, "evaluate", "alignment", "--truth", folder / "truth.star", "--estimate", out,
                          "--json")
    rows = json.loads(stdout)
    assert rows["median angular error (deg)"] < 1.0
    assert rows["median shift error (px)"] < 0.3


def test_align_xmd_input(data, capsys, tmp_path):
    folder, sim = data
    xmd = tmp_path / "p.xmd"
    lines = ["# XMIPP_STAR_1 *", "#", "data_noname", "loop_", " _image", " _enabled"]
    lines += [f"{i + 1:06d}@{folder / 'p.mrcs'} 1" for i in range(len(sim.images))]
    xmd.write_text("\n".join(lines) + "\n")
    rc, _, err = run(capsys, "-q", "align", xmd, "-o", tmp_path / "x.star", "--reference", folder / "ref.mrc",
                     "--device", "cpu")
    assert rc == 0, err
    parts = starfile.read(tmp_path / "x.star", always_dict=True)["particles"]
    assert np.median(angular_error(parts["rlnAnglePsi"].to_numpy(), sim.angles)) < 0.5


def test_bad_inputs_exit_2_naming_the_file(data, capsys, tmp_path):
    folder, sim = data
    missing = tmp_path / "nothere.mrcs"
    rc, _, err = run(capsys, "align", missing, "-o", tmp_path / "o.star")
    assert rc == 2 and str(missing) in err and err.count("\n") == 1
    nan = sim.images.copy()
    nan[3, 5, 5] = np.nan
    write_mrc(tmp_path / "nan.mrcs", nan, voxel_size=2.0, is_stack=True)
    rc, _, err = run(capsys, "align", tmp_path / "nan.mrcs", "-o", tmp_path / "o.star", "--reference",
                     folder / "ref.mrc", "--device", "cpu")
    assert rc == 2 and "nan.mrcs" in err and "NaN" in err
    rc, _, err = run(capsys, "align", folder / "p.mrcs", "-o", tmp_path / "o.star", "--reference", folder / "p.mrcs")
    assert rc == 2 and "p.mrcs" in err  # a stack is not a reference (and the output check names it first)
    write_mrc(tmp_path / "big.mrc", np.zeros((64, 64), np.float32) + 1, voxel_size=2.0)
    rc, _, err = run(capsys, "align", folder / "p.mrcs", "-o", tmp_path / "o.star", "--reference", tmp_path / "big.mrc")
    assert rc == 2 and "big.mrc" in err
    rc, _, err = run(capsys, "align", folder / "p.mrcs", "-o", folder / "p.mrcs")
    assert rc == 2 and "p.mrcs" in err
    assert not (tmp_path / "o.star").exists()


def test_help_lists_the_refine_choices_with_the_default(capsys):
    rc, out, _ = run(capsys, "align", "--help")
    out = " ".join(out.split())  # argparse wraps lines
    assert rc == 0 and "--refine {none,local,fft}" in out and "(default: local)" in out and "--refine-window" in out


def test_udl_refine_none_writes_the_networks_raw_prediction(data, capsys, tmp_path):
    from napari_cryoden.align.udl import build_network, predict_relative_angles
    from napari_cryoden.models import load_model

    folder, sim = data
    out = tmp_path / "net.star"
    rc, stdout, err = run(capsys, "align", folder / "p.mrcs", "-o", out, "--method", "udl", "--reference",
                          folder / "ref.mrc", "--refine", "none", "--epochs", "1", "--time-budget", "1", "--save-model",
                          tmp_path / "m.pt", "--device", "cpu")
    assert rc == 0, err
    assert "refining the network's angles: none" in stdout
    parts = starfile.read(out, always_dict=True)["particles"]
    model = load_model(tmp_path / "m.pt", kind="align/udl")
    raw = predict_relative_angles(build_network(model), read_mrc(folder / "ref.mrc").data, sim.images)
    np.testing.assert_allclose(parts["rlnAnglePsi"].to_numpy(), raw, atol=1e-4)
    assert np.all(parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() == 0)


def test_deep_alignment_bad_inputs_exit_2_naming_the_file_and_write_nothing(data, capsys, tmp_path):
    import torch

    from napari_cryoden.align.networks import ARCHITECTURE, SiameseAngleRegressor
    from napari_cryoden.models import ModelFile, save_model

    folder, sim = data
    out = tmp_path / "o.star"
    small = ModelFile(kind="align/udl", config={"architecture": ARCHITECTURE, "box": 32, "spectrum_size": 16,
                                                 "base_channels": 8, "levels": 2, "joint": False},
                      state_dict={"net": SiameseAngleRegressor(16).state_dict()})
    save_model(tmp_path / "small.pt", small)
    rc, _, err = run(capsys, "align", folder / "p.mrcs", "-o", out, "--method", "udl", "--model",
                     tmp_path / "small.pt", "--reference", folder / "ref.mrc", "--aligned", tmp_path / "a.mrcs")
    assert rc == 2 and "small.pt" in err and "32²" in err and "40²" in err, err
    old = ModelFile(kind="align/udl", config={"box": BOX, "base_channels": 8, "levels": 2, "joint": False},
                    state_dict={"net": {"mask.0.weight": torch.zeros(8, 1, 3, 3)}})
    save_model(tmp_path / "old.pt", old)
    rc, _, err = run(capsys, "align", folder / "p.mrcs", "-o", out, "--method", "udl", "--model", tmp_path / "old.pt")
    assert rc == 2 and "old.pt" in err and "older napari-cryoden" in err and err.count("\n") == 1, err
    write_mrc(tmp_path / "ref3A.mrc", read_mrc(folder / "ref.mrc").data, voxel_size=3.0)  # particles: 2 Å
    rc, _, err = run(capsys, "align", folder / "p.mrcs", "-o", out, "--method", "udl", "--reference",
                     tmp_path / "ref3A.mrc")
    assert rc == 2 and "ref3A.mrc" in err and "pixel size" in err, err
    write_mrc(tmp_path / "one.mrcs", sim.images[:1], voxel_size=2.0, is_stack=True)
    for method in ("udl", "judl"):
        rc, _, err = run(capsys, "align", tmp_path / "one.mrcs", "-o", out, "--method", method,
                         "--aligned", tmp_path / "a.mrcs", "--save-model", tmp_path / "m1.pt")
        assert rc == 2 and "one.mrcs" in err and "at least 2" in err, err
    rc, _, err = run(capsys, "align", folder / "p.mrcs", "-o", out, "--refine", "none")
    assert rc == 2 and "--method udl or judl" in err
    assert not out.exists() and not (tmp_path / "a.mrcs").exists() and not (tmp_path / "m1.pt").exists()


def test_refine_local_after_a_network_far_off_warns_on_stderr(data, capsys, tmp_path):
    """An untrained network's angles are far off; --refine local then cannot be trusted, and the CLI says so
    (the share of particles at the edge of the window: tests/core/test_align_deep.py measures it)."""
    from napari_cryoden.align.udl import DeepAlignParams, iter_train
    from napari_cryoden.models import save_model
    from napari_cryoden.progress import run as run_events

    folder, sim = data
    untrained = run_events(iter_train(sim.images, None, DeepAlignParams(epochs=1, steps_per_epoch=1,
                                                                         learning_rate=0.0, seed=0)))
    save_model(tmp_path / "untrained.pt", untrained)
    rc, stdout, err = run(capsys, "align", folder / "p.mrcs", "-o", tmp_path / "a.star", "--method", "udl",
                          "--model", tmp_path / "untrained.pt", "--reference", folder / "ref.mrc", "--device", "cpu")
    assert rc == 0, err
    assert "refining the network's angles: local" in stdout
    assert "p.mrcs" in err and "edge of the ±10° window" in err and "unreliable" in err
