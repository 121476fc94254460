"""The npe2 reader and writer in a real napari viewer (headless under Xvfb).

Real files come from ``../shared/data`` (skipped when absent); the committed ``tests/data/emd_3197.map`` and
files written in ``tmp_path`` need nothing outside the repository.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from napari_cryoden.io.mrc import read_mrc, write_mrc
from napari_cryoden.io.star import ParticleTable, make_optics_table, read_star, write_star

PLUGIN = "napari-cryoden"

# (relative path under ../shared/data, expected data shape, expected voxel size from the header (z, y, x),
#  read as a stack)
SHARED_MRC = [
    ("maps/emd_1080_groel_11.5A.mrc", (100, 100, 100), (2.7, 2.7, 2.7), False),
    ("maps/emd_1832.map", (64, 64, 64), (5.7, 5.7, 5.7), False),
    ("maps/emd_5625.map", (56, 56, 56), (4.23, 4.23, 4.23), False),
    ("maps/emd_3197.map", (20, 20, 20), (11.4, 11.4, 11.4), False),
    # header pixel size unset (0): 1.0 Å is used; the .mrcs is a stack, the .mrc one reads as a volume
    ("particles/empiar10017_aspire/sample.mrcs", (17, 200, 200), (1.0, 1.0, 1.0), True),
    ("particles/empiar10076_cryodrgn/empiar_10076_7.mrc", (7, 320, 320), (1.0, 1.0, 1.0), False),
    ("tomograms/cylindra_13pf_MT.mrc", (36, 206, 94), (10.52, 10.52, 10.52), False),
    ("tomograms/cylindra_14pf_MT.mrc", (44, 136, 84), (10.52, 10.52, 10.52), False),
]

# (STAR path, stack shape, pixel size from the STAR file (Å), a column every particle row has)
SHARED_STAR = [
    ("particles/empiar10017_aspire/sample_relion_data.star", (17, 200, 200), 1.338, "rlnAnglePsi"),
    ("particles/empiar10076_cryodrgn/empiar_10076_7.star", (7, 320, 320), 1.31, "rlnDefocusU"),
]


# ------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def notifications():
    """Every napari notification emitted during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event):
        seen.append((str(event.severity).lower(), str(event.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def _errors(seen):
    return [msg for sev, msg in seen if "error" in sev]


def _warnings(seen):
    return [msg for sev, msg in seen if "warning" in sev]


def _assert_viewer_usable(viewer):
    n = len(viewer.layers)
    viewer.add_image(np.zeros((8, 8), dtype=np.float32), name="still works")
    assert len(viewer.layers) == n + 1


# ----------------------------------------------------------------------------------- reading real data
@pytest.mark.parametrize(("rel", "shape", "voxel", "is_stack"), SHARED_MRC, ids=[r[0] for r in SHARED_MRC])
def test_open_real_mrc(make_napari_viewer, shared_data, rel, shape, voxel, is_stack):
    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"{path} is not present")
    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unset pixel sizes warn (checked in test_zero_voxel_size_warns)
        layers = viewer.open(path, plugin=PLUGIN)
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.data.shape == shape
    if is_stack:
        assert layer.scale[0] == 1.0
        np.testing.assert_allclose(layer.scale[-2:], voxel[-2:], rtol=1e-5)
    else:
        np.testing.assert_allclose(layer.scale, voxel, rtol=1e-5)
    meta = layer.metadata
    assert Path(meta["path"]) == path
    assert tuple(meta["shape"]) == shape
    assert meta["is_stack"] is is_stack
    np.testing.assert_allclose(meta["header_voxel_size"], voxel, rtol=1e-5)
    for key in ("dtype", "origin", "labels", "mode", "voxel_size_from_header"):
        assert key in meta
    # the header's truth agrees with what the viewer shows
    mrc = read_mrc(path, warn_zero_voxel_size=False)
    np.testing.assert_array_equal(np.asarray(layer.data[0]), np.asarray(mrc.data[0]))


@pytest.mark.parametrize(("rel", "shape", "pixel", "column"), SHARED_STAR, ids=[r[0] for r in SHARED_STAR])
def test_open_real_star(make_napari_viewer, shared_data, rel, shape, pixel, column):
    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"{path} is not present")
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert len(layers) == 2
    images = [lay for lay in viewer.layers if lay._type_string == "image"]
    points = [lay for lay in viewer.layers if lay._type_string == "points"]
    assert len(images) == 1 and len(points) == 1
    img, pts = images[0], points[0]

    assert img.data.shape == shape
    assert img.scale[0] == 1.0
    np.testing.assert_allclose(img.scale[-2:], (pixel, pixel), rtol=2e-3)
    assert img.metadata["is_stack"] is True
    assert Path(img.metadata["star_path"]) == path
    np.testing.assert_allclose(img.metadata["pixel_size"], pixel, rtol=2e-3)

    table = read_star(path)
    features = pts.features
    assert len(features) == len(table) == shape[0]
    assert len(pts.data) == shape[0]
    for col in ("rlnImageName", column):
        assert col in features.columns
    if column == "rlnAnglePsi":
        np.testing.assert_allclose(features["rlnAnglePsi"].to_numpy(float),
                                   table.particles["rlnAnglePsi"].to_numpy(float))
        assert {"rlnClassNumber", "rlnOriginXAngst", "rlnOriginYAngst"} <= set(features.columns)
    # one point per particle, on its own image
    np.testing.assert_array_equal(pts.data[:, 0], np.arange(shape[0]))
    np.testing.assert_allclose(pts.scale[-2:], img.scale[-2:])


def test_open_committed_map_without_shared(make_napari_viewer, test_data):
    path = test_data / "emd_3197.map"
    viewer = make_napari_viewer()
    viewer.open(path, plugin=PLUGIN)
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.data.shape == (20, 20, 20)
    np.testing.assert_allclose(layer.scale, (11.4,) * 3, rtol=1e-6)
    assert layer.metadata["voxel_size_from_header"] is True


@pytest.mark.parametrize("suffix", [".map.gz", ".map.bz2"])
def test_open_compressed_map_with_its_scale(make_napari_viewer, tmp_path, test_data, suffix):
    """EMDB's emd_NNNN.map.gz opens like the .map: same data, the header's voxel size as scale, named emd_3197."""
    import bz2
    import gzip

    raw = (test_data / "emd_3197.map").read_bytes()
    path = tmp_path / f"emd_3197{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else bz2.compress(raw))
    viewer = make_napari_viewer()
    viewer.open(path, plugin=PLUGIN)
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.name == "emd_3197"
    np.testing.assert_allclose(layer.scale, (11.4,) * 3, rtol=1e-6)
    assert Path(layer.metadata["path"]) == path
    np.testing.assert_array_equal(np.asarray(layer.data), np.asarray(read_mrc(test_data / "emd_3197.map").data))


def test_manifest_offers_the_reader_for_compressed_maps(tmp_path):
    from npe2 import PluginManager

    from napari_cryoden._plugin.reader import get_reader, read_paths

    for name in ("emd_1832.map.gz", "parts.mrcs.bz2", "x.MAP.GZ", "x.mrc"):
        readers = [r.command for r in PluginManager.instance().iter_compatible_readers([str(tmp_path / name)])]
        assert "napari-cryoden.get_reader" in readers, (name, readers)
        assert get_reader(str(tmp_path / name)) is read_paths
    assert get_reader(str(tmp_path / "archive.tar.gz")) is None


def test_open_written_star_and_stack(make_napari_viewer, tmp_path, rng):
    """A STAR written by the package opens with its pixel size and a points layer per particle."""
    stack = rng.standard_normal((6, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "parts.mrcs", stack, voxel_size=2.0, is_stack=True)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@parts.mrcs" for i in range(6)],
        "rlnAnglePsi": np.linspace(0, 300, 6),
        "rlnOriginXAngst": np.arange(6) * 2.0,
        "rlnOriginYAngst": -np.arange(6) * 2.0,
        "rlnClassNumber": [1, 2, 1, 2, 1, 2],
    })
    write_star(tmp_path / "parts.star",
               ParticleTable(particles=particles, optics=make_optics_table(pixel_size=2.5, image_size=16)))
    viewer = make_napari_viewer()
    viewer.open(tmp_path / "parts.star", plugin=PLUGIN)
    img, pts = viewer.layers[0], viewer.layers[1]
    np.testing.assert_array_equal(np.asarray(img.data), stack)
    assert tuple(img.scale) == (1.0, 2.5, 2.5)  # the STAR's pixel size wins over the header's
    np.testing.assert_allclose(pts.features["rlnAnglePsi"], particles["rlnAnglePsi"])
    # a point sits at the box centre minus the origin (in pixels)
    np.testing.assert_allclose(pts.data[:, 2], 8 - particles["rlnOriginXAngst"] / 2.5)
    np.testing.assert_allclose(pts.data[:, 1], 8 - particles["rlnOriginYAngst"] / 2.5)


# -------------------------------------------------------------------------------------------- writing
def test_writer_round_trip_volume(make_napari_viewer, tmp_path, rng):
    data = rng.standard_normal((12, 14, 16)).astype(np.float32)
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, scale=(2.5, 2.5, 2.5), name="vol")
    out = tmp_path / "vol.mrc"
    written = viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    assert [Path(p) for p in written] == [out]
    back = read_mrc(out)
    np.testing.assert_array_equal(np.asarray(back.data), data)
    np.testing.assert_allclose(back.voxel_size, (2.5, 2.5, 2.5), rtol=1e-6)
    assert not back.is_stack
    assert not list(tmp_path.glob("*.part"))
    # layer.save goes through the same writer
    out2 = tmp_path / "vol2.map"
    layer.save(str(out2), plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(read_mrc(out2).data), data)
    np.testing.assert_allclose(read_mrc(out2).voxel_size, (2.5,) * 3, rtol=1e-6)


def test_writer_keeps_stack_pixel_size(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-particles")
    stack = viewer.layers["particles"]
    pixel = float(stack.scale[-1])
    assert stack.scale[0] == 1.0
    out = tmp_path / "particles_copy.mrcs"
    written = stack.save(str(out), plugin=PLUGIN)
    assert [Path(p) for p in written] == [out]
    back = read_mrc(out)
    assert back.is_stack
    assert back.data.shape == stack.data.shape
    np.testing.assert_array_equal(np.asarray(back.data), np.asarray(stack.data))
    np.testing.assert_allclose(back.voxel_size, (pixel, pixel, pixel), rtol=1e-5)
    # and it opens back as a stack with the same scale
    viewer.open(out, plugin=PLUGIN)
    np.testing.assert_allclose(viewer.layers[-1].scale, stack.scale, rtol=1e-5)


def test_writer_refuses_to_overwrite_source(make_napari_viewer, tmp_path, rng, notifications):
    src = tmp_path / "source.mrc"
    write_mrc(src, rng.standard_normal((8, 8, 8)).astype(np.float32), voxel_size=3.0)
    before = src.read_bytes()
    viewer = make_napari_viewer()
    viewer.open(src, plugin=PLUGIN)
    layer = viewer.layers[0]
    assert Path(layer.metadata["path"]) == src
    layer.data = np.asarray(layer.data) + 1.0  # an edit that must not reach the input file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # napari: "did not return any written paths"
        written = layer.save(str(src), plugin=PLUGIN)
    assert not written
    assert src.read_bytes() == before
    errors = _errors(notifications)
    assert errors and any("source.mrc" in m and "input" in m for m in errors), notifications
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.mrc"]


def test_writer_round_trip_2d(make_napari_viewer, tmp_path, rng):
    data = rng.standard_normal((10, 14)).astype(np.float32)
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, scale=(1.5, 1.5), name="flat")
    layer.save(str(tmp_path / "flat.mrc"), plugin=PLUGIN)
    back = read_mrc(tmp_path / "flat.mrc")
    np.testing.assert_array_equal(np.asarray(back.data), data)
    np.testing.assert_allclose(back.voxel_size, (1.5, 1.5), rtol=1e-6)


def test_writer_refuses_to_overwrite_stack_of_star_layer(make_napari_viewer, tmp_path, rng, notifications):
    write_mrc(tmp_path / "p.mrcs", rng.standard_normal((4, 16, 16)).astype(np.float32), voxel_size=2.0,
              is_stack=True)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@p.mrcs" for i in range(4)]})
    write_star(tmp_path / "p.star",
               ParticleTable(particles=particles, optics=make_optics_table(pixel_size=2.0, image_size=16)))
    before = (tmp_path / "p.mrcs").read_bytes()
    viewer = make_napari_viewer()
    viewer.open(tmp_path / "p.star", plugin=PLUGIN)
    layer = viewer.layers["p"]
    layer.data = np.asarray(layer.data) * 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        layer.save(str(tmp_path / "p.mrcs"), plugin=PLUGIN)
    assert (tmp_path / "p.mrcs").read_bytes() == before


def test_writer_refuses_4d_layer(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((2, 3, 4, 5), dtype=np.float32), name="fourd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert not layer.save(str(tmp_path / "x.mrc"), plugin=PLUGIN)
    assert not list(tmp_path.iterdir())
    assert any("4D" in m for m in _errors(notifications))


# ----------------------------------------------------------------------------------------- bad input
def _truncated_mrc(folder: Path, rng) -> tuple[Path, str]:
    path = folder / "cut.mrc"
    write_mrc(path, rng.standard_normal((10, 32, 32)).astype(np.float32), voxel_size=2.0)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 1000)
    return path, "truncated"


def _garbage_file(folder: Path, rng) -> tuple[Path, str]:
    path = folder / "garbage.mrc"
    path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path, "MRC"


def _tiny_file(folder: Path, rng) -> tuple[Path, str]:
    path = folder / "tiny.map"
    path.write_bytes(b"not an mrc file at all\n")
    return path, "truncated"


def _star_missing_stack(folder: Path, rng) -> tuple[Path, str]:
    particles = pd.DataFrame({"rlnImageName": [f"{i:06d}@nowhere.mrcs" for i in (1, 2, 3)],
                              "rlnAnglePsi": [0.0, 10.0, 20.0]})
    path = folder / "missing_stack.star"
    write_star(path, ParticleTable(particles=particles, optics=make_optics_table(pixel_size=1.5, image_size=16)))
    return path, "does not exist"


def _star_out_of_range(folder: Path, rng) -> tuple[Path, str]:
    write_mrc(folder / "three.mrcs", rng.standard_normal((3, 16, 16)).astype(np.float32), voxel_size=1.5,
              is_stack=True)
    particles = pd.DataFrame({"rlnImageName": [f"{i:06d}@three.mrcs" for i in (1, 2, 3, 4, 5)],
                              "rlnAnglePsi": np.zeros(5)})
    path = folder / "out_of_range.star"
    write_star(path, ParticleTable(particles=particles, optics=make_optics_table(pixel_size=1.5, image_size=16)))
    return path, "out of range"


def _star_garbage(folder: Path, rng) -> tuple[Path, str]:
    path = folder / "nonsense.star"
    path.write_text("this is not\na star file\n")
    return path, "nonsense.star"


def _truncated_gz(folder: Path, rng) -> tuple[Path, str]:
    import gzip

    plain = write_mrc(folder / "cut.map", rng.standard_normal((10, 32, 32)).astype(np.float32), voxel_size=2.0)
    blob = gzip.compress(plain.read_bytes())
    plain.unlink()
    path = folder / "cut.map.gz"
    path.write_bytes(blob[: len(blob) // 2])
    return path, "truncated"


def _nan_voxel_size(folder: Path, rng) -> tuple[Path, str]:
    path = folder / "nan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(rng.standard_normal((4, 8, 8)).astype(np.float32))
        mrc.header.cella = (np.nan, 8.0, 8.0)
    return path, "NaN or Inf"


def _star_nan_pixel_size(folder: Path, rng) -> tuple[Path, str]:
    write_mrc(folder / "p.mrcs", rng.standard_normal((2, 16, 16)).astype(np.float32), voxel_size=1.5, is_stack=True)
    path = folder / "nan_pixel.star"
    path.write_text("data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 nan\n\n"
                    "data_particles\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n000001@p.mrcs 1\n")
    return path, "rlnImagePixelSize is nan"


BAD_INPUTS = {
    "truncated-map-gz": _truncated_gz,
    "nan-voxel-size": _nan_voxel_size,
    "star-nan-pixel-size": _star_nan_pixel_size,
    "truncated-mrc": _truncated_mrc,
    "garbage-mrc": _garbage_file,
    "tiny-file": _tiny_file,
    "star-missing-stack": _star_missing_stack,
    "star-out-of-range": _star_out_of_range,
    "star-garbage": _star_garbage,
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_notifies_and_adds_no_layer(make_napari_viewer, tmp_path, rng, notifications, kind):
    path, problem = BAD_INPUTS[kind](tmp_path, rng)
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)  # must not raise
    assert layers == [] or not layers
    assert len(viewer.layers) == 0
    errors = _errors(notifications)
    assert errors, f"no error notification for {kind}: {notifications}"
    assert any(path.name in m and problem.lower() in m.lower() for m in errors), errors
    assert all("\n" not in m for m in errors)  # one line, no traceback
    _assert_viewer_usable(viewer)


def test_bad_file_among_good_ones(make_napari_viewer, tmp_path, rng, notifications):
    """Opening several files: the good ones load, the bad one is reported."""
    good = tmp_path / "good.mrc"
    write_mrc(good, rng.standard_normal((4, 8, 8)).astype(np.float32), voxel_size=4.0)
    bad, _ = _truncated_mrc(tmp_path, rng)
    viewer = make_napari_viewer()
    viewer.open([good, bad], plugin=PLUGIN, stack=False)
    assert [lay.name for lay in viewer.layers] == ["good"]
    assert any("cut.mrc" in m for m in _errors(notifications))


def test_zero_voxel_size_warns(make_napari_viewer, tmp_path, rng, notifications):
    path = tmp_path / "zero.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(rng.standard_normal((6, 10, 12)).astype(np.float32))
        mrc.voxel_size = 0.0
    assert read_mrc(path, warn_zero_voxel_size=False).voxel_size_from_header is False
    viewer = make_napari_viewer()
    viewer.open(path, plugin=PLUGIN)
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)
    assert layer.metadata["voxel_size_from_header"] is False
    warns = _warnings(notifications)
    assert any("zero.mrc" in m and "voxel size is 0" in m for m in warns), notifications
    assert not _errors(notifications)
