"""MRC reading/writing: round trips, voxel size, memory mapping, atomic writes, and bad files."""

from __future__ import annotations

import os
import resource
import warnings

import mrcfile
import numpy as np
import pytest

from napari_cryoden.errors import CryodenInputError, CryodenOutputError, require_finite, require_ndim
from napari_cryoden.io.mrc import MrcWriter, ZeroVoxelSizeWarning, read_mrc, write_mrc


@pytest.mark.parametrize("shape,is_stack,suffix", [((7, 16, 12), False, ".mrc"), ((5, 16, 16), True, ".mrcs"),
                                                   ((16, 20), False, ".mrc")])
def test_round_trip_keeps_data_voxel_size_and_kind(tmp_path, rng, shape, is_stack, suffix):
    data = rng.normal(size=shape).astype(np.float32)
    path = write_mrc(tmp_path / f"a{suffix}", data, voxel_size=3.25, is_stack=is_stack, labels=["hello"])
    m = read_mrc(path)
    np.testing.assert_array_equal(np.asarray(m.data), data)
    assert m.voxel_size == pytest.approx((3.25,) * len(shape))
    assert m.is_stack == is_stack
    assert "hello" in m.labels
    assert isinstance(m.data, np.memmap)


def test_anisotropic_voxel_size_is_zyx(tmp_path, rng):
    data = rng.normal(size=(4, 5, 6)).astype(np.float32)
    write_mrc(tmp_path / "v.mrc", data, voxel_size=(3.0, 2.0, 1.0))
    m = read_mrc(tmp_path / "v.mrc")
    assert m.voxel_size == pytest.approx((3.0, 2.0, 1.0))
    with mrcfile.open(tmp_path / "v.mrc") as f:  # and mrcfile agrees on (x, y, z)
        assert (float(f.voxel_size.x), float(f.voxel_size.z)) == pytest.approx((1.0, 3.0))


def test_float64_and_int_are_written_as_float32(tmp_path):
    write_mrc(tmp_path / "d.mrc", np.ones((3, 4, 5)), voxel_size=1.0)
    assert read_mrc(tmp_path / "d.mrc").data.dtype == np.float32


def test_zero_voxel_size_becomes_one_with_a_warning(tmp_path, rng):
    path = tmp_path / "z.mrc"
    with mrcfile.new(path) as f:
        f.set_data(rng.normal(size=(4, 8, 8)).astype(np.float32))
        f.voxel_size = 0.0
    with pytest.warns(ZeroVoxelSizeWarning, match="voxel size is 0"):
        m = read_mrc(path)
    assert m.voxel_size == (1.0, 1.0, 1.0)
    assert not m.voxel_size_from_header
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_mrc(path, warn_zero_voxel_size=False)


def test_space_group_zero_reads_as_stack(tmp_path, rng):
    path = write_mrc(tmp_path / "s.mrc", rng.normal(size=(3, 8, 8)).astype(np.float32), voxel_size=2.0, is_stack=True)
    m = read_mrc(path)
    assert m.is_stack and m.voxel_size == (2.0, 2.0, 2.0)


def test_truncated_file_is_named_in_the_error(tmp_path, rng):
    path = write_mrc(tmp_path / "t.mrc", rng.normal(size=(8, 16, 16)).astype(np.float32), voxel_size=1.0)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(CryodenInputError, match=r"t\.mrc: truncated"):
        read_mrc(path)


def test_header_smaller_than_file_is_an_error(tmp_path, rng):
    path = write_mrc(tmp_path / "big.mrc", rng.normal(size=(4, 8, 8)).astype(np.float32), voxel_size=1.0)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 64)
    with pytest.raises(CryodenInputError, match="larger than its header says"):
        read_mrc(path)


@pytest.mark.parametrize("content", [b"", b"x" * 100, b"not an mrc file at all " * 100])
def test_garbage_files(tmp_path, content):
    path = tmp_path / "garbage.mrc"
    path.write_bytes(content)
    with pytest.raises(CryodenInputError, match="garbage.mrc"):
        read_mrc(path)


def test_missing_file(tmp_path):
    with pytest.raises(CryodenInputError, match="file not found"):
        read_mrc(tmp_path / "nope.mrc")


def test_large_file_is_memory_mapped_not_loaded(tmp_path):
    """A 4 GB (sparse) file opens without reading its data into memory."""
    path = tmp_path / "huge.mrc"
    shape = (1024, 1024, 1024)  # 4 GiB of float32
    with mrcfile.new(path, overwrite=True) as f:  # header of a 1-voxel file, then patch the dimensions
        f.set_data(np.zeros((1, 1, 1), np.float32))
    with mrcfile.open(path, mode="r+", permissive=True) as f:
        f.header.nx, f.header.ny, f.header.nz = shape[::-1]
        f.header.mx, f.header.my, f.header.mz = shape[::-1]
        f.header.cella = (4096.0, 4096.0, 4096.0)
    with open(path, "r+b") as fh:
        fh.truncate(1024 + 4 * int(np.prod(shape)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = read_mrc(path)
    assert m.data.shape == shape and isinstance(m.data, np.memmap)
    assert m.voxel_size == pytest.approx((4.0, 4.0, 4.0))
    assert float(m.data[512, 100:110, 5].sum()) == 0.0  # slicing reads only that part
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000  # far below the 4 GiB the file holds


def test_write_refuses_to_overwrite_an_input(tmp_path, rng):
    src = write_mrc(tmp_path / "in.mrc", rng.normal(size=(4, 8, 8)).astype(np.float32), voxel_size=1.0)
    before = src.read_bytes()
    with pytest.raises(CryodenOutputError, match="refusing to overwrite an input"):
        write_mrc(tmp_path / "." / "in.mrc", np.zeros((4, 8, 8), np.float32), voxel_size=1.0, inputs=[src])
    assert src.read_bytes() == before


def test_write_to_missing_folder_and_no_partial_output(tmp_path):
    with pytest.raises(CryodenOutputError, match="does not exist"):
        write_mrc(tmp_path / "nope" / "x.mrc", np.zeros((2, 2)), voxel_size=1.0)
    with pytest.raises(CryodenOutputError, match="voxel size must be positive"):
        write_mrc(tmp_path / "x.mrc", np.zeros((2, 2)), voxel_size=0.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(CryodenOutputError, match="not writable"):
        write_mrc(folder / "x.mrc", np.zeros((2, 2)), voxel_size=1.0)


def test_mrc_writer_streams_and_is_atomic(tmp_path, rng):
    data = rng.normal(size=(6, 10, 12)).astype(np.float32)
    with MrcWriter(tmp_path / "w.mrc", data.shape, voxel_size=2.0) as out:
        for z in range(data.shape[0]):
            out[z] = data[z]
    m = read_mrc(tmp_path / "w.mrc")
    np.testing.assert_array_equal(np.asarray(m.data), data)
    assert m.voxel_size == (2.0, 2.0, 2.0)
    with pytest.raises(RuntimeError):
        with MrcWriter(tmp_path / "cancelled.mrc", data.shape, voxel_size=2.0) as out:
            out[0] = 1
            raise RuntimeError("cancelled")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.mrc"]


def test_require_finite_and_ndim_name_the_source(rng):
    a = rng.normal(size=(5, 4, 4))
    require_finite(a, name="ok.mrc")
    a[3, 1, 1] = np.nan
    with pytest.raises(CryodenInputError, match=r"vol\.mrc: contains NaN or Inf"):
        require_finite(a, name="vol.mrc", chunk=16)
    with pytest.raises(CryodenInputError, match="must be 3D, got a 2D"):
        require_ndim(np.zeros((3, 3)), 3, name="img.mrc", what="tomogram")


def test_real_files_open(shared_data):
    groel = read_mrc(shared_data / "maps" / "emd_1080_groel_11.5A.mrc")
    assert groel.data.shape == (100, 100, 100)
    assert groel.voxel_size == pytest.approx((2.7, 2.7, 2.7), rel=1e-4)
    tomo = read_mrc(shared_data / "tomograms" / "cylindra_13pf_MT.mrc")
    assert tomo.data.shape == (36, 206, 94) and tomo.voxel_size[0] == pytest.approx(10.52, rel=1e-4)


def test_committed_map_opens(test_data):
    m = read_mrc(test_data / "emd_3197.map")
    assert m.data.shape == (20, 20, 20) and m.voxel_size == pytest.approx((11.4,) * 3, rel=1e-4)


def test_streamed_writer_header_statistics_are_exact(tmp_path):
    """MrcWriter computes dmin/dmax/dmean/rms slab by slab (never the whole volume's temporaries at once)."""
    import mrcfile

    from napari_cryoden.io.mrc import MrcWriter

    x = (np.random.default_rng(0).normal(size=(40, 30, 20)) * 3 + 1).astype(np.float32)
    with MrcWriter(tmp_path / "a.mrc", x.shape, voxel_size=2.0) as target:
        target[...] = x
    with mrcfile.open(tmp_path / "a.mrc") as m:
        h = m.header
        np.testing.assert_allclose([h.dmin, h.dmax, h.dmean, h.rms], [x.min(), x.max(), x.mean(), x.std()],
                                   rtol=1e-5)
