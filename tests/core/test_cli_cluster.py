"""`cryoden cluster` and `cryoden subset` end to end, in-process; bad inputs exit 2 naming the file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile
from _cli import run

from napari_cryoden.io.mrc import read_mrc
from napari_cryoden.metrics import adjusted_rand_index
from napari_cryoden.sample_data import SAMPLE_CLASS_VIEWS, builtin_map
from napari_cryoden.simulate import simulate_particles

BOX = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    m = builtin_map()
    sim = simulate_particles(m.data, voxel_size=m.pixel_size, pixel_size=m.pixel_size * 56 / BOX * 0.9,
                             n_particles=90, box=BOX, class_views=SAMPLE_CLASS_VIEWS, max_shift=3.0, snr=2.0,
                             mask_radius=BOX * 0.4, seed=2)
    sim.save(tmp / "p.mrcs", tmp / "truth.star")
    return tmp, sim




FAST = ("--method", "siamese", "--epochs", "0.5")


def test_cluster_star_writes_classes_averages_embedding_and_model(data, capsys, tmp_path):
    tmp, sim = data
    out, avg, emb, model = tmp_path / "c.star", tmp_path / "avg.mrcs", tmp_path / "e.csv", tmp_path / "m.pt"
    rc, stdout, err = run(capsys, "-q", "cluster", tmp / "truth.star", "-o", out, "--classes", 3, "--averages", avg,
                          "--embedding", emb, "--save-model", model, "--seed", 1, *FAST)
    assert rc == 0, err
    star = starfile.read(out, always_dict=True)
    particles = star["particles"]
    truth = starfile.read(tmp / "truth.star", always_dict=True)["particles"]
    # The input's columns are kept, rlnClassNumber is replaced by ours (1-based, 1 = largest).
    assert set(truth.columns) <= set(particles.columns)
    classes = particles["rlnClassNumber"].to_numpy()
    assert sorted(set(classes)) == [1, 2, 3]
    counts = np.bincount(classes)[1:]
    assert list(counts) == sorted(counts, reverse=True)
    assert adjusted_rand_index(sim.classes, classes) == 1.0
    # Image names still resolve from the output's folder.
    assert (out.parent / particles["rlnImageName"].iloc[0].split("@")[1]).exists()
    stack = read_mrc(avg)
    assert stack.data.shape == (3, BOX, BOX)
    assert stack.pixel_size == pytest.approx(sim.pixel_size, rel=1e-4)
    table = pd.read_csv(emb)
    assert list(table.columns) == ["particle", "class", "confidence", "distance", "x", "y"]
    assert np.array_equal(table["class"], classes)
    assert model.exists()
    # Applying the saved model (no training) gives a clustering again.
    out2 = tmp_path / "c2.star"
    rc, _, err = run(capsys, "-q", "cluster", tmp / "p.mrcs", "-o", out2, "--classes", 3, "--method", "siamese",
                     "--model", model)
    assert rc == 0, err
    again = starfile.read(out2, always_dict=True)["particles"]["rlnClassNumber"].to_numpy()
    assert adjusted_rand_index(classes, again) > 0.9
    # evaluate clusters agrees.
    rc, stdout, _ = run(capsys, "evaluate", "clusters", "--truth", tmp / "truth.star", "--estimate", out)
    assert rc == 0 and "ARI" in stdout


def test_cluster_range_picks_k_by_distinctness_and_subset_matches(data, capsys, tmp_path):
    tmp, sim = data
    out = tmp_path / "c.star"
    rc, stdout, err = run(capsys, "-q", "cluster", tmp / "p.mrcs", "-o", out, "--classes", "2-5",
                          "--method", "pca-kmeans", "--prealign-iterations", 3, "--refine-iterations", 2)
    assert rc == 0, err
    assert "silhouette by K" in stdout and "closest pair of classes" in stdout  # both criteria are shown
    assert "K = 3 (by distinct)" in stdout  # three views, SNR 2
    classes = starfile.read(out, always_dict=True)["particles"]["rlnClassNumber"].to_numpy()
    assert adjusted_rand_index(sim.classes, classes) > 0.95
    sub = tmp_path / "sub.star"
    rc, stdout, err = run(capsys, "subset", out, "--classes", "1", "-o", sub)
    assert rc == 0, err
    kept = starfile.read(sub, always_dict=True)["particles"]
    assert len(kept) == int((classes == 1).sum())
    assert set(kept["rlnClassNumber"]) == {1}
    rc, _, err = run(capsys, "subset", out, "--classes", "9", "-o", tmp_path / "none.star")
    assert rc == 2 and str(out) in err


def test_cluster_mra_method_runs(data, capsys, tmp_path):
    tmp, sim = data
    out = tmp_path / "m.star"
    rc, _, err = run(capsys, "-q", "cluster", tmp / "p.mrcs", "-o", out, "--classes", 3, "--method", "mra")
    assert rc == 0, err
    classes = starfile.read(out, always_dict=True)["particles"]["rlnClassNumber"].to_numpy()
    assert adjusted_rand_index(sim.classes, classes) == 1.0


def test_bad_inputs_exit_2_naming_the_file(data, capsys, tmp_path):
    tmp, _ = data
    missing = tmp_path / "missing.mrcs"
    rc, _, err = run(capsys, "cluster", missing, "-o", tmp_path / "o.star", "--classes", 3)
    assert rc == 2 and str(missing) in err and err.count("\n") == 1
    bad = tmp_path / "bad.mrcs"
    bad.write_bytes(b"not an mrc file at all" * 20)
    rc, _, err = run(capsys, "cluster", bad, "-o", tmp_path / "o.star", "--classes", 3)
    assert rc == 2 and str(bad) in err
    rc, _, err = run(capsys, "cluster", tmp / "p.mrcs", "-o", tmp_path / "o.star", "--classes", 500)
    assert rc == 2 and "p.mrcs" in err
    rc, _, err = run(capsys, "cluster", tmp / "truth.star", "-o", tmp / "truth.star", "--classes", 3)
    assert rc == 2 and "truth.star" in err
    rc, _, err = run(capsys, "cluster", tmp / "p.mrcs", "-o", tmp_path / "o.star", "--classes", "x")
    assert rc == 2 and "--classes" in err
    rc, _, err = run(capsys, "subset", tmp / "p.mrcs", "--classes", "1", "-o", tmp_path / "s.star")
    assert rc == 2


def test_a_star_of_mixed_box_sizes_exits_2_naming_it_and_writes_nothing(data, capsys, tmp_path):
    tmp, sim = data
    from napari_cryoden.io.mrc import write_mrc

    write_mrc(tmp_path / "small.mrcs", sim.images[:10, 4:-4, 4:-4], voxel_size=sim.pixel_size, is_stack=True)
    write_mrc(tmp_path / "big.mrcs", sim.images[10:20], voxel_size=sim.pixel_size, is_stack=True)
    star = starfile.read(tmp / "truth.star", always_dict=True)
    particles = star["particles"].iloc[:20].copy()
    particles["rlnImageName"] = [f"{i % 10 + 1:06d}@{'small' if i < 10 else 'big'}.mrcs" for i in range(20)]
    starfile.write({"optics": star["optics"], "particles": particles}, tmp_path / "mixed.star")
    before = {p.name for p in tmp_path.iterdir()}
    rc, _, err = run(capsys, "cluster", tmp_path / "mixed.star", "-o", tmp_path / "o.star", "--classes", 2,
                     "--method", "pca-kmeans")
    assert rc == 2 and "mixed.star" in err and "box" in err and err.count("\n") == 1
    assert {p.name for p in tmp_path.iterdir()} == before


def test_cluster_batch_over_a_folder_is_resumable_and_reports_bad_files(data, capsys, tmp_path):
    tmp, sim = data
    folder = tmp_path / "stacks"
    folder.mkdir()
    from napari_cryoden.io.mrc import write_mrc

    for i in range(2):  # two halves of the stack as two inputs
        write_mrc(folder / f"part{i}.mrcs", sim.images[i::2], voxel_size=sim.pixel_size, is_stack=True)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "-q", "cluster", folder, "-o", out, "--classes", 3, "--method", "pca-kmeans")
    assert rc == 0, err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["part0_classes.star", "part1_classes.star"]
    for i in range(2):
        classes = starfile.read(out / f"part{i}_classes.star", always_dict=True)["particles"]["rlnClassNumber"]
        assert len(classes) == len(sim.images[i::2]) and sorted(set(classes)) == [1, 2, 3]
    # A re-run skips both; one more (corrupt) input fails alone, with its name, and exits 2.
    (folder / "part2.mrcs").write_bytes(b"not an MRC file")
    stamp = (out / "part0_classes.star").stat().st_mtime_ns
    rc, stdout, err = run(capsys, "-q", "cluster", folder, "-o", out, "--classes", 3, "--method", "pca-kmeans")
    assert rc == 2 and "part2.mrcs" in err and "2 of 3 outputs exist already" in stdout
    assert (out / "part0_classes.star").stat().st_mtime_ns == stamp
    assert not (out / "part2_classes.star").exists() and not list(out.glob("*.part"))
    # Per-file extras cannot be given a single name in a batch.
    rc, _, err = run(capsys, "cluster", folder / "part0.mrcs", folder / "part1.mrcs", "-o", out, "--classes", 3,
                     "--averages", tmp_path / "a.mrcs")
    assert rc == 2 and "--averages" in err


def test_every_method_parameter_is_an_option_and_reaches_the_method(capsys, tmp_path):
    """CLI parity: the options are generated from the parameter dataclasses, so each field of each method is
    settable, and an option of another method is refused instead of being ignored."""
    import dataclasses

    from napari_cryoden.cli import build_parser
    from napari_cryoden.cli.cluster import _params
    from napari_cryoden.cluster import PARAMS, MRAParams, SiameseParams

    parser = build_parser()
    for method, cls in PARAMS.items():
        for f in dataclasses.fields(cls):
            if f.name in ("seed", "epochs", "time_budget"):
                continue  # top-level flags
            flag = "--" + f.name.replace("_", "-")
            assert _has_option(parser, "cluster", flag), (method, flag)
    args = parser.parse_args(["cluster", "x.mrcs", "-o", "y.star", "--classes", "3", "--method", "mra",
                              "--iterations", "2", "--n-angles", "36", "--work-box", "24", "--seed", "5"])
    assert _params(args, "mra") == MRAParams(iterations=2, n_angles=36, work_box=24, seed=5)
    args = parser.parse_args(["cluster", "x.mrcs", "-o", "y.star", "--classes", "3", "--method", "siamese",
                              "--rounds", "2", "--embedding-dim", "8", "--time-budget", "30"])
    assert _params(args, "siamese") == SiameseParams(rounds=2, embedding_dim=8, time_budget=30.0)
    rc, _, err = run(capsys, "cluster", tmp_path / "x.mrcs", "-o", tmp_path / "y.star", "--classes", 3,
                     "--method", "mra", "--rounds", 2)
    assert rc == 2 and "--rounds does not apply to --method mra" in err


def _has_option(parser, command: str, flag: str) -> bool:
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return flag in sub.choices[command]._option_string_actions
