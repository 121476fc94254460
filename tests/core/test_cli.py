"""The ``cryoden`` command line, run in-process through :func:`napari_cryoden.cli.main` (no Qt).

Known answers: simulated files carry exactly the truth asked for, evaluating a file against itself gives
perfect scores, bad input exits with status 2 and one ``cryoden: error:`` line naming the file, and no
command leaves a partial output or overwrites an input.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _cli import run

from napari_cryoden.cli import build_parser, main
from napari_cryoden.io.mrc import read_mrc, write_mrc
from napari_cryoden.io.star import ParticleTable, make_optics_table, read_star, write_star

# ------------------------------------------------------------------------------------------- helpers


def ok(capsys, *argv) -> str:
    rc, out, err = run(capsys, *argv)
    assert rc == 0, f"cryoden {' '.join(map(str, argv))} -> {rc}\n{out}\n{err}"
    return out


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def blob_map(size: int = 24, *, seed: int = 0) -> np.ndarray:
    """A smooth asymmetric 3D density (two Gaussian blobs), float32."""
    z, y, x = np.mgrid[:size, :size, :size] - size / 2
    vol = np.exp(-((x - 3) ** 2 + y**2 + z**2) / 8.0) + 0.6 * np.exp(-((x + 2) ** 2 + (y - 4) ** 2 + z**2) / 5.0)
    return vol.astype(np.float32)


@pytest.fixture(scope="module")
def particles_sim(tmp_path_factory):
    """One small simulated particle stack + truth STAR shared by the read-only tests."""
    folder = tmp_path_factory.mktemp("sim")
    rc = main(["simulate", "particles", "-o", str(folder / "X.mrcs"), "-n", "20", "--box", "32", "--snr", "0.5",
               "--views", "0,0;0,90", "--seed", "1"])
    assert rc == 0
    return folder / "X.mrcs", folder / "X.star"


# -------------------------------------------------------------------------------------------- simulate
def test_simulate_particles_files_and_truth(particles_sim):
    stack, star = particles_sim
    assert stack.exists() and star.exists()
    mrc = read_mrc(stack)
    assert mrc.is_stack
    assert mrc.data.shape == (20, 32, 32)
    assert np.isfinite(np.asarray(mrc.data)).all()
    table = read_star(star)
    assert len(table) == 20
    p = table.particles
    for col in ("rlnImageName", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnClassNumber"):
        assert col in p.columns
    assert set(p["rlnClassNumber"].astype(int)) == {1, 2}
    psi = p["rlnAnglePsi"].to_numpy(float)
    assert ((psi >= 0) & (psi < 360)).all()
    # the STAR's pixel size is the stack header's
    np.testing.assert_allclose(table.pixel_size(), mrc.pixel_size, rtol=1e-5)
    # image names point at the stack, in order
    assert p["rlnImageName"].tolist() == [f"{i + 1:06d}@X.mrcs" for i in range(20)]
    # the default max shift is 5 px
    assert (np.abs(p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / table.pixel_size()) <= 5 + 1e-6).all()
    # nothing else left in the folder (no .part files)
    assert names(stack.parent) == {"X.mrcs", "X.star"}


def test_simulate_particles_same_seed_same_stack(capsys, tmp_path, particles_sim):
    args = ["-n", "20", "--box", "32", "--snr", "0.5", "--views", "0,0;0,90"]
    ok(capsys, "simulate", "particles", "-o", tmp_path / "a.mrcs", *args, "--seed", "1")
    ok(capsys, "simulate", "particles", "-o", tmp_path / "b.mrcs", *args, "--seed", "1")
    ok(capsys, "simulate", "particles", "-o", tmp_path / "c.mrcs", *args, "--seed", "2")
    a, b, c = (np.asarray(read_mrc(tmp_path / f"{s}.mrcs").data) for s in "abc")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.asarray(read_mrc(particles_sim[0]).data))
    assert not np.array_equal(a, c)
    pa, pb = read_star(tmp_path / "a.star").particles, read_star(tmp_path / "b.star").particles
    pd.testing.assert_frame_equal(pa.drop(columns="rlnImageName"), pb.drop(columns="rlnImageName"))


def test_simulate_particles_snr0_is_clean(capsys, tmp_path):
    base = ["simulate", "particles", "-n", "8", "--box", "32", "--seed", "3"]
    ok(capsys, *base, "-o", tmp_path / "clean.mrcs", "--snr", "0", "--clean", tmp_path / "clean_truth.mrcs")
    ok(capsys, *base, "-o", tmp_path / "noisy.mrcs", "--snr", "0.5", "--clean", tmp_path / "noisy_truth.mrcs")
    clean = np.asarray(read_mrc(tmp_path / "clean.mrcs").data)
    np.testing.assert_array_equal(clean, np.asarray(read_mrc(tmp_path / "clean_truth.mrcs").data))
    assert clean.std() > 0  # a real signal, not zeros
    noisy = np.asarray(read_mrc(tmp_path / "noisy.mrcs").data)
    noisy_truth = np.asarray(read_mrc(tmp_path / "noisy_truth.mrcs").data)
    np.testing.assert_allclose(noisy_truth, clean, atol=1e-5)  # same seed: same clean particles
    # SNR 0.5: the noise variance is about twice the signal variance
    ratio = (noisy - noisy_truth).var() / noisy_truth.var()
    assert 1.0 < ratio < 4.0


def test_simulate_particles_from_map_file(capsys, tmp_path):
    write_mrc(tmp_path / "blob.mrc", blob_map(), voxel_size=3.0)
    out = ok(capsys, "simulate", "particles", "--map", tmp_path / "blob.mrc", "-o", tmp_path / "p.mrcs",
             "-n", "6", "--box", "24", "--references", tmp_path / "refs.mrcs")
    assert "6 particles" in out
    m = read_mrc(tmp_path / "p.mrcs")
    assert m.data.shape == (6, 24, 24)
    np.testing.assert_allclose(m.pixel_size, 3.0, rtol=1e-5)
    np.testing.assert_allclose(read_star(tmp_path / "p.star").pixel_size(), 3.0, rtol=1e-5)
    assert read_mrc(tmp_path / "refs.mrcs").data.shape[-2:] == (24, 24)


def test_simulate_alignment_integer_shifts(capsys, tmp_path):
    out = ok(capsys, "simulate", "alignment", "-o", tmp_path / "A.mrcs", "-n", "10", "--box", "32")
    assert "A.mrcs" in out and "A.star" in out
    assert names(tmp_path) == {"A.mrcs", "A.star"}
    stack = read_mrc(tmp_path / "A.mrcs")
    assert stack.is_stack and stack.data.shape == (10, 32, 32)
    table = read_star(tmp_path / "A.star")
    assert len(table) == 10
    apix = table.pixel_size()
    np.testing.assert_allclose(apix, stack.pixel_size, rtol=1e-5)
    shifts = table.particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float) / apix
    np.testing.assert_allclose(shifts, np.round(shifts), atol=1e-4)
    assert (np.abs(shifts) <= 10 + 1e-4).all()
    assert np.abs(shifts).max() > 0
    psi = table.particles["rlnAnglePsi"].to_numpy(float)
    assert ((psi >= 0) & (psi < 360)).all()


def test_simulate_tomogram_with_halves(capsys, tmp_path):
    ok(capsys, "simulate", "tomogram", "-o", tmp_path / "T.mrc", "--shape", "24", "48", "48", "--halves")
    expected = ["T.mrc", "T_clean.mrc", "T_even.mrc", "T_odd.mrc"]
    assert set(expected) <= names(tmp_path)
    assert not [n for n in names(tmp_path) if n.endswith(".part")]
    vols = {}
    for name in expected:
        m = read_mrc(tmp_path / name)
        assert m.data.shape == (24, 48, 48), name
        np.testing.assert_allclose(m.voxel_size, (10.0, 10.0, 10.0), rtol=1e-5)
        assert not m.is_stack
        vols[name] = np.asarray(m.data)
    assert not np.array_equal(vols["T_even.mrc"], vols["T_odd.mrc"])
    assert not np.array_equal(vols["T.mrc"], vols["T_clean.mrc"])


# ------------------------------------------------------------------------------------------------ info
def info_output(*files) -> str:
    """``cryoden info FILES`` in a subprocess: run as a user would, in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-m", "napari_cryoden.cli", "info", *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_info_mrc_star_volume_zero_voxel_missing_stack(capsys, tmp_path, particles_sim):
    import mrcfile

    stack, star = particles_sim
    write_mrc(tmp_path / "v.mrc", blob_map(16), voxel_size=7.5)
    with mrcfile.new(tmp_path / "zero.mrc") as m:
        m.set_data(blob_map(8))
    _write_table(tmp_path / "s.star", {"rlnImageName": ["000001@gone.mrcs", "000002@gone.mrcs"],
                                       "rlnAnglePsi": [0.0, 1.0]}, pixel=1.2)
    # in-process: status 0
    assert run(capsys, "info", stack, star, tmp_path / "v.mrc", tmp_path / "zero.mrc", tmp_path / "s.star")[0] == 0
    out = info_output(stack, star, tmp_path / "v.mrc", tmp_path / "zero.mrc", tmp_path / "s.star")
    blocks = {b.splitlines()[0].split()[-1]: b for b in out.strip().split("\n\n")}
    assert set(blocks) == {str(stack), str(star), str(tmp_path / "v.mrc"), str(tmp_path / "zero.mrc"),
                           str(tmp_path / "s.star")}
    b = blocks[str(stack)]
    assert "20 x 32 x 32" in b and "image stack" in b
    assert re.search(r"voxel size \(Å\)\s+4\.23", b)
    assert re.search(r"non-finite values\s+0", b)
    b = blocks[str(star)]
    assert re.search(r"particles\s+20", b)
    assert re.search(r"pixel size \(Å\)\s+4\.23", b)
    assert "rlnAnglePsi" in b and re.search(r"stack X\.mrcs\s+found", b)
    b = blocks[str(tmp_path / "v.mrc")]
    assert "16 x 16 x 16" in b and "3D volume" in b
    assert re.search(r"voxel size \(Å\)\s+7\.5", b)
    assert "header says 0; 1.0 assumed" in blocks[str(tmp_path / "zero.mrc")]
    b = blocks[str(tmp_path / "s.star")]
    assert "MISSING" in b and "gone.mrcs" in b and re.search(r"pixel size \(Å\)\s+1\.2", b)


def test_info_real_relion30_star(shared_data):
    star = shared_data / "particles" / "empiar10017_aspire" / "sample_relion_data.star"
    if not star.exists():
        pytest.skip(f"{star} is not present")
    out = info_output(star)
    assert re.search(r"particles\s+17", out)
    assert re.search(r"pixel size \(Å\)\s+1\.338", out)


def test_info_output_follows_sys_stdout(capsys, particles_sim):
    rc, out, _ = run(capsys, "info", particles_sim[0])
    assert rc == 0
    assert "20 x 32 x 32" in out


# -------------------------------------------------------------------------------------------- evaluate
def test_evaluate_image_identical(capsys, tmp_path):
    write_mrc(tmp_path / "clean.mrc", blob_map(16), voxel_size=2.0)
    rc, out, _ = run(capsys, "evaluate", "image", "--reference", tmp_path / "clean.mrc",
                     "--estimate", tmp_path / "clean.mrc", "--json")
    assert rc == 0
    scores = json.loads(out.strip().splitlines()[-1])
    assert scores["MSE"] == 0.0
    assert scores["PSNR (dB)"] == float("inf") or scores["PSNR (dB)"] > 100
    assert scores["SSIM"] == pytest.approx(1.0, abs=1e-9)


def test_evaluate_image_noisy_is_worse(capsys, tmp_path, rng):
    clean = blob_map(16)
    write_mrc(tmp_path / "clean.mrc", clean, voxel_size=2.0)
    write_mrc(tmp_path / "noisy.mrc", clean + 0.2 * rng.standard_normal(clean.shape).astype(np.float32),
              voxel_size=2.0)
    rc, out, _ = run(capsys, "evaluate", "image", "--reference", tmp_path / "clean.mrc",
                     "--estimate", tmp_path / "noisy.mrc", "--json")
    assert rc == 0
    scores = json.loads(out)
    assert scores["MSE"] == pytest.approx(0.04, rel=0.2)
    assert 0 < scores["SSIM"] < 1
    assert np.isfinite(scores["PSNR (dB)"])


def test_evaluate_fsc_writes_csv_and_plot(capsys, tmp_path, rng):
    a = blob_map(16)
    write_mrc(tmp_path / "a.mrc", a, voxel_size=2.0)
    write_mrc(tmp_path / "b.mrc", a + 0.05 * rng.standard_normal(a.shape).astype(np.float32), voxel_size=2.0)
    rc, out, _ = run(capsys, "evaluate", "fsc", tmp_path / "a.mrc", tmp_path / "b.mrc",
                     "--csv", tmp_path / "out.csv", "--plot", tmp_path / "out.png")
    assert rc == 0
    assert "FSC 0.143" in out
    curve = np.loadtxt(tmp_path / "out.csv", delimiter=",", skiprows=1)
    assert curve.ndim == 2 and curve.shape[1] == 3 and len(curve) >= 4
    assert (np.diff(curve[:, 0]) > 0).all()
    assert (curve[:, 1] <= 1 + 1e-6).all()
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert names(tmp_path) == {"a.mrc", "b.mrc", "out.csv", "out.png"}


def test_evaluate_alignment_against_itself(capsys, particles_sim):
    _, star = particles_sim
    rc, out, _ = run(capsys, "evaluate", "alignment", "--truth", star, "--estimate", star, "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["particles"] == 20
    for key in ("median angular error (deg)", "mean angular error (deg)", "median shift error (px)",
                "mean shift error (px)"):
        assert r[key] == pytest.approx(0.0, abs=1e-6), key


def test_evaluate_clusters_against_itself(capsys, particles_sim):
    _, star = particles_sim
    rc, out, _ = run(capsys, "evaluate", "clusters", "--truth", star, "--estimate", star, "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["ARI"] == pytest.approx(1.0)
    assert r["accuracy (Hungarian)"] == pytest.approx(1.0)
    assert r["NMI"] == pytest.approx(1.0)


def test_evaluate_clusters_relabelled(capsys, tmp_path, particles_sim):
    """Swapping class labels is still a perfect clustering."""
    _, star = particles_sim
    table = read_star(star)
    swapped = table.particles.copy()
    swapped["rlnClassNumber"] = 3 - swapped["rlnClassNumber"]
    write_star(tmp_path / "est.star", table.with_particles(swapped))
    rc, out, _ = run(capsys, "evaluate", "clusters", "--truth", star, "--estimate", tmp_path / "est.star", "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["ARI"] == pytest.approx(1.0) and r["accuracy (Hungarian)"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ demo
def test_demo_quick_writes_report_and_figures(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    rc, out, _ = run(capsys, "demo", out_dir, "--quick", "--no-screenshots")
    assert rc == 0
    report = out_dir / "report.md"
    assert report.exists()
    text = report.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images, "the report shows no figures"
    for name in images:
        path = out_dir / name
        assert path.exists(), f"report.md refers to missing {name}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".part")]


# ------------------------------------------------------------------------------------------- bad input
def _write_truncated(path: Path) -> None:
    write_mrc(path, blob_map(16), voxel_size=2.0)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 500)


def _write_nan_map(path: Path) -> None:
    vol = blob_map(16)
    vol[3, 4, 5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile: "Data array contains NaN values"
        write_mrc(path, vol, voxel_size=2.0)


def _write_table(path: Path, columns: dict, *, pixel: float = 2.0) -> None:
    write_star(path, ParticleTable(pd.DataFrame(columns), make_optics_table(pixel_size=pixel, image_size=16)))


def _setup_bad(case: str, d: Path) -> tuple[list, str, str]:
    """Create the inputs of a bad-input case in ``d``: (argv, file the message must name, problem word)."""
    good = d / "good.mrc"
    if case == "info-missing":
        return ["info", d / "missing.mrc"], "missing.mrc", "not found"
    if case == "info-truncated":
        _write_truncated(d / "cut.mrc")
        return ["info", d / "cut.mrc"], "cut.mrc", "truncated"
    if case == "info-garbage":
        (d / "garbage.mrc").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return ["info", d / "garbage.mrc"], "garbage.mrc", "MRC"
    if case == "info-folder":
        (d / "folder.mrc").mkdir()
        return ["info", d / "folder.mrc"], "folder.mrc", "folder"
    if case == "info-star-missing":
        return ["info", d / "none.star"], "none.star", "not found"
    if case == "particles-missing-map":
        return ["simulate", "particles", "--map", d / "missing.mrc", "-o", d / "out.mrcs", "-n", "4",
                "--box", "16"], "missing.mrc", "not found"
    if case == "particles-2d-map":
        write_mrc(d / "flat.mrc", blob_map(16)[8], voxel_size=2.0)
        return ["simulate", "particles", "--map", d / "flat.mrc", "-o", d / "out.mrcs", "-n", "4", "--box", "16"], \
            "flat.mrc", "3D"
    if case == "particles-stack-map":
        write_mrc(d / "stack.mrcs", blob_map(16), voxel_size=2.0, is_stack=True)
        return ["simulate", "particles", "--map", d / "stack.mrcs", "-o", d / "out.mrcs", "-n", "4",
                "--box", "16"], "stack.mrcs", "stack"
    if case == "particles-nan-map":
        _write_nan_map(d / "nan.mrc")
        return ["simulate", "particles", "--map", d / "nan.mrc", "-o", d / "out.mrcs", "-n", "4", "--box", "16"], \
            "nan.mrc", "NaN"
    if case == "particles-truncated-map":
        _write_truncated(d / "cut.mrc")
        return ["simulate", "particles", "--map", d / "cut.mrc", "-o", d / "out.mrcs", "-n", "4", "--box", "16"], \
            "cut.mrc", "truncated"
    if case == "alignment-nan-map":
        _write_nan_map(d / "nan.mrc")
        return ["simulate", "alignment", "--map", d / "nan.mrc", "-o", d / "out.mrcs", "-n", "4", "--box", "16"], \
            "nan.mrc", "NaN"
    if case == "alignment-volume-image":
        write_mrc(d / "vol.mrc", blob_map(16), voxel_size=2.0)
        return ["simulate", "alignment", "--image", d / "vol.mrc", "-o", d / "out.mrcs", "-n", "4"], \
            "vol.mrc", "2D image"
    if case == "tomogram-nan-map":
        _write_nan_map(d / "nan.mrc")
        return ["simulate", "tomogram", "--map", d / "nan.mrc", "-o", d / "t.mrc", "--shape", "16", "32", "32"], \
            "nan.mrc", "NaN"
    if case == "image-truncated":
        write_mrc(good, blob_map(16), voxel_size=2.0)
        _write_truncated(d / "cut.mrc")
        return ["evaluate", "image", "--reference", good, "--estimate", d / "cut.mrc"], "cut.mrc", "truncated"
    if case == "image-shape-mismatch":
        write_mrc(good, blob_map(16), voxel_size=2.0)
        write_mrc(d / "small.mrc", blob_map(12), voxel_size=2.0)
        return ["evaluate", "image", "--reference", good, "--estimate", d / "small.mrc"], "small.mrc", "shape"
    if case == "image-nan":
        write_mrc(good, blob_map(16), voxel_size=2.0)
        _write_nan_map(d / "nan.mrc")
        return ["evaluate", "image", "--reference", good, "--estimate", d / "nan.mrc"], "nan.mrc", "NaN"
    if case == "fsc-garbage":
        write_mrc(good, blob_map(16), voxel_size=2.0)
        (d / "junk.map").write_bytes(b"\x00" * 2048)
        return ["evaluate", "fsc", good, d / "junk.map", "--csv", d / "fsc.csv"], "junk.map", None
    if case == "alignment-garbage-star":
        (d / "junk.star").write_text("nothing here\n")
        _write_table(d / "est.star", {"rlnImageName": ["1@x.mrcs"], "rlnAnglePsi": [0.0],
                                      "rlnOriginXAngst": [0.0], "rlnOriginYAngst": [0.0]})
        return ["evaluate", "alignment", "--truth", d / "junk.star", "--estimate", d / "est.star"], "junk.star", \
            "particle table"
    if case == "alignment-missing-columns":
        _write_table(d / "truth.star", {"rlnImageName": ["1@x.mrcs", "2@x.mrcs"], "rlnAnglePsi": [0.0, 5.0],
                                        "rlnOriginXAngst": [0.0, 0.0], "rlnOriginYAngst": [0.0, 0.0]})
        _write_table(d / "est.star", {"rlnImageName": ["1@x.mrcs", "2@x.mrcs"], "rlnAnglePsi": [0.0, 5.0]})
        return ["evaluate", "alignment", "--truth", d / "truth.star", "--estimate", d / "est.star"], "est.star", \
            "lacks"
    if case == "alignment-count-mismatch":
        cols = {"rlnImageName": ["1@x.mrcs", "2@x.mrcs"], "rlnAnglePsi": [0.0, 5.0],
                "rlnOriginXAngst": [0.0, 0.0], "rlnOriginYAngst": [0.0, 0.0]}
        _write_table(d / "truth.star", cols)
        _write_table(d / "est.star", {k: v[:1] for k, v in cols.items()})
        return ["evaluate", "alignment", "--truth", d / "truth.star", "--estimate", d / "est.star"], "est.star", \
            "particles"
    if case == "clusters-missing-class":
        _write_table(d / "truth.star", {"rlnImageName": ["1@x.mrcs"], "rlnClassNumber": [1]})
        _write_table(d / "est.star", {"rlnImageName": ["1@x.mrcs"], "rlnAnglePsi": [3.0]})
        return ["evaluate", "clusters", "--truth", d / "truth.star", "--estimate", d / "est.star"], "est.star", \
            "rlnClassNumber"
    raise AssertionError(case)


BAD_CASES = [
    "info-missing", "info-truncated", "info-garbage", "info-folder", "info-star-missing",
    "particles-missing-map", "particles-2d-map", "particles-stack-map", "particles-nan-map",
    "particles-truncated-map", "alignment-nan-map", "alignment-volume-image", "tomogram-nan-map",
    "image-truncated", "image-shape-mismatch", "image-nan", "fsc-garbage",
    "alignment-garbage-star", "alignment-missing-columns", "alignment-count-mismatch", "clusters-missing-class",
]


def assert_one_error_line(err: str, *, naming: str | None, problem: str | None = None) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("cryoden: error:")]
    assert len(errors) == 1, err
    # anything else on stderr is a warning line, never a continuation of the error
    assert all(line.startswith("cryoden: ") for line in lines), err
    if naming is not None:
        assert naming in errors[0], errors[0]
    if problem is not None:
        assert problem.lower() in errors[0].lower(), errors[0]
    return errors[0]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_and_leaves_nothing(capsys, tmp_path, case):
    argv, culprit, problem = _setup_bad(case, tmp_path)
    before = names(tmp_path)
    rc, _, err = run(capsys, *argv)
    assert rc == 2, err
    assert_one_error_line(err, naming=culprit, problem=problem)
    after = names(tmp_path)
    assert after == before, f"left behind: {sorted(after - before)}"
    assert not list(tmp_path.rglob("*.part"))


def test_class_fractions_make_unbalanced_classes_and_a_wrong_count_exits_2(capsys, tmp_path):
    ok(capsys, "simulate", "particles", "-o", tmp_path / "p.mrcs", "-n", "40", "--box", "24", "--views", "0,0;0,90",
       "--class-fractions", "3,1", "--seed", "1")
    counts = read_star(tmp_path / "p.star").particles["rlnClassNumber"].value_counts().sort_index().tolist()
    assert counts == [30, 10]
    rc, _, err = run(capsys, "simulate", "particles", "-o", tmp_path / "q.mrcs", "-n", "40", "--box", "24",
                     "--views", "0,0;0,90", "--class-fractions", "1,1,1")
    assert rc == 2
    assert_one_error_line(err, naming=None, problem="--class-fractions")
    assert not (tmp_path / "q.mrcs").exists()
    rc, _, err = run(capsys, "simulate", "particles", "-o", tmp_path / "q.mrcs", "--class-fractions", "1,-1")
    assert rc == 2 and "--class-fractions" in err


def test_bad_views_text(capsys, tmp_path):
    rc, _, err = run(capsys, "simulate", "particles", "-o", tmp_path / "x.mrcs", "--views", "0;abc")
    assert rc == 2
    assert_one_error_line(err, naming=None, problem="--views")
    assert names(tmp_path) == set()


@pytest.fixture
def small_map(tmp_path) -> Path:
    path = tmp_path / "M.mrc"
    write_mrc(path, blob_map(), voxel_size=3.0)
    return path


@pytest.mark.parametrize("argv", [
    ["simulate", "particles", "--map", "M.mrc", "-o", "M.mrc", "-n", "4", "--box", "16"],
    ["simulate", "particles", "--map", "M.mrc", "-o", "p.mrcs", "--star", "M.mrc", "-n", "4", "--box", "16"],
    ["simulate", "particles", "--map", "M.mrc", "-o", "p.mrcs", "--clean", "M.mrc", "-n", "4", "--box", "16"],
    ["simulate", "alignment", "--map", "M.mrc", "-o", "M.mrc", "-n", "4", "--box", "16"],
    ["simulate", "alignment", "--image", "M.mrc", "-o", "p.mrcs", "--references", "M.mrc", "-n", "4"],
    ["simulate", "tomogram", "--map", "M.mrc", "-o", "M.mrc", "--shape", "16", "32", "32"],
    ["evaluate", "fsc", "M.mrc", "M.mrc", "--csv", "M.mrc"],
], ids=["particles-o", "particles-star", "particles-clean", "alignment-o", "alignment-references", "tomogram-o",
        "fsc-csv"])
def test_output_equal_to_input_is_refused(capsys, tmp_path, small_map, argv):
    before = small_map.read_bytes()
    argv = [str(tmp_path / a) if a.endswith((".mrc", ".mrcs")) else a for a in argv]
    rc, _, err = run(capsys, *argv)
    assert rc == 2, err
    assert_one_error_line(err, naming="M.mrc", problem="input")
    assert small_map.read_bytes() == before
    assert names(tmp_path) == {"M.mrc"}


@pytest.mark.parametrize("argv", [
    ["simulate", "particles", "-o", "{d}/nowhere/x.mrcs", "-n", "4", "--box", "16"],
    ["simulate", "particles", "-o", "{d}/x.mrcs", "--star", "{d}/nowhere/x.star", "-n", "4", "--box", "16"],
    ["simulate", "alignment", "-o", "{d}/nowhere/a.mrcs", "-n", "4", "--box", "16"],
    ["simulate", "tomogram", "-o", "{d}/nowhere/t.mrc", "--shape", "16", "32", "32"],
    ["evaluate", "fsc", "{d}/M.mrc", "{d}/M.mrc", "--csv", "{d}/nowhere/fsc.csv"],
], ids=["particles", "particles-star", "alignment", "tomogram", "fsc-csv"])
def test_output_in_missing_folder(capsys, tmp_path, small_map, argv):
    rc, _, err = run(capsys, *[a.format(d=tmp_path) for a in argv])
    assert rc == 2, err
    assert_one_error_line(err, naming="nowhere", problem="does not exist")
    assert names(tmp_path) == {"M.mrc"}


# ---- outputs that collide, plots over inputs, bad sizes
@pytest.mark.parametrize("argv", [
    ["simulate", "particles", "-o", "{d}/Y.star", "-n", "4", "--box", "16"],
    ["simulate", "particles", "-o", "{d}/Y.mrcs", "--star", "{d}/Y.mrcs", "-n", "4", "--box", "16"],
    ["simulate", "alignment", "-o", "{d}/Y.star", "-n", "4", "--box", "16"],
], ids=["particles-o-star", "particles-star-eq-o", "alignment-o-star"])
def test_outputs_that_collide_are_refused(capsys, tmp_path, argv):
    rc, _, err = run(capsys, *[a.format(d=tmp_path) for a in argv])
    assert rc == 2, err
    assert_one_error_line(err, naming="Y.", problem=None)
    assert names(tmp_path) == set()


def test_fsc_plot_over_input_is_refused(capsys, tmp_path, small_map):
    before = small_map.read_bytes()
    rc, _, err = run(capsys, "evaluate", "fsc", small_map, small_map, "--plot", small_map)
    assert small_map.read_bytes() == before
    assert rc == 2, err


def test_demo_into_a_file_exits_2(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    rc, _, err = run(capsys, "demo", tmp_path / "afile", "--quick")
    assert rc == 2
    assert_one_error_line(err, naming="afile")


@pytest.mark.parametrize("opts", [["-n", "-3", "--box", "16"], ["-n", "3", "--box", "0"]], ids=["n-neg", "box0"])
def test_nonpositive_sizes_exit_2(capsys, tmp_path, opts):
    rc, _, err = run(capsys, "simulate", "particles", "-o", tmp_path / "z.mrcs", *opts)
    assert rc == 2
    assert "Traceback" not in err
    assert names(tmp_path) == set()


# ------------------------------------------------------------------------------------------------ help
def _all_command_paths(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(_all_command_paths(sub, (*prefix, name)))
    return paths


COMMAND_PATHS = _all_command_paths(build_parser())


def test_every_expected_command_exists():
    expected = {("info",), ("simulate",), ("simulate", "particles"), ("simulate", "alignment"),
                ("simulate", "tomogram"), ("evaluate",), ("evaluate", "image"), ("evaluate", "fsc"),
                ("evaluate", "alignment"), ("evaluate", "clusters"), ("demo",)}
    assert expected <= set(COMMAND_PATHS)


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "cryoden")
def test_help_exits_0(capsys, path):
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cryoden")


def test_version(capsys):
    from napari_cryoden import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
