"""MRC reading/writing: round trips, voxel size, memory mapping, atomic writes, and bad files."""

from __future__ import annotations

import os
import re
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


# ------------------------------------------------------------------------------------ compressed maps
def _compress(path, suffix):
    """A compressed copy of ``path`` named with ``suffix`` (e.g. ``emd.map.gz``) beside it."""
    import bz2
    import gzip

    raw = path.read_bytes()
    out = path.with_name(path.stem + suffix)
    out.write_bytes(gzip.compress(raw, mtime=0) if ".gz" in suffix.lower() or suffix.endswith(".mrc")
                    else bz2.compress(raw))
    return out


@pytest.mark.parametrize("suffix", [".map.gz", ".mrc.bz2", ".MAP.GZ", ".mrc"])
def test_compressed_map_reads_like_the_uncompressed_one(tmp_path, rng, suffix):
    """gzip and bzip2 are found by their first bytes (the last case is a gzip file named .mrc)."""
    data = rng.normal(size=(6, 10, 12)).astype(np.float32)
    plain = write_mrc(tmp_path / "emd.raw.map", data, voxel_size=(3.5, 2.5, 2.5), origin=(1.0, 2.0, 3.0),
                      labels=["from EMDB"])
    packed = _compress(plain, suffix)
    for mmap in (True, False):
        m = read_mrc(packed, mmap=mmap)
        np.testing.assert_array_equal(np.asarray(m.data), data)
        assert m.voxel_size == pytest.approx((3.5, 2.5, 2.5))
        assert m.origin == (1.0, 2.0, 3.0) and "from EMDB" in m.labels
        assert m.path == packed and not m.is_stack
        assert not m.data.flags.writeable
        assert m.header["compression"] in ("gzip", "bzip2")


def test_committed_map_gzipped(tmp_path, test_data):
    import shutil

    shutil.copy(test_data / "emd_3197.map", tmp_path / "emd_3197.map")
    m = read_mrc(_compress(tmp_path / "emd_3197.map", ".map.gz"))
    assert m.data.shape == (20, 20, 20) and m.voxel_size == pytest.approx((11.4,) * 3, rel=1e-4)
    np.testing.assert_array_equal(np.asarray(m.data), np.asarray(read_mrc(test_data / "emd_3197.map").data))


def test_large_compressed_map_is_streamed_to_an_unlinked_temporary_file(tmp_path, rng, monkeypatch):
    import tempfile

    import napari_cryoden.io.mrc as mrc_module

    data = rng.normal(size=(9, 16, 16)).astype(np.float32)
    packed = _compress(write_mrc(tmp_path / "big.map", data, voxel_size=2.0), ".map.gz")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(mrc_module, "DECOMPRESS_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(mrc_module, "_COPY_CHUNK", 1000)  # many chunks
    m = read_mrc(packed)
    assert isinstance(m.data, np.memmap) and m.path == packed
    assert list(scratch.iterdir()) == []  # never a name in the folder, nothing left behind
    np.testing.assert_array_equal(np.asarray(m.data), data)
    assert read_mrc(packed, mmap=False).data.__class__ is np.ndarray  # mmap=False: into memory


def test_no_room_to_decompress_is_a_clear_error(tmp_path, rng, monkeypatch):
    import shutil
    from collections import namedtuple

    import napari_cryoden.io.mrc as mrc_module

    packed = _compress(write_mrc(tmp_path / "big.map", rng.normal(size=(4, 16, 16)).astype(np.float32),
                                 voxel_size=2.0), ".map.gz")
    monkeypatch.setattr(mrc_module, "DECOMPRESS_IN_MEMORY_BYTES", 0)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CryodenInputError, match=r"big\.map\.gz: cannot decompress: its data need .* free; "
                                                r"point TMPDIR"):
        read_mrc(packed)


def test_compressed_stack_suffix_means_stack(tmp_path, rng):
    path = tmp_path / "parts.mrcs"
    with mrcfile.new(path) as f:  # space group 1: only the name says "stack"
        f.set_data(rng.normal(size=(4, 8, 8)).astype(np.float32))
        f.voxel_size = 1.25
    for suffix in (".mrcs.gz", ".mrcs.bz2"):
        m = read_mrc(_compress(path, suffix))
        assert m.is_stack and m.data.shape == (4, 8, 8) and m.voxel_size == (1.25, 1.25, 1.25)
    assert not read_mrc(_compress(path, ".mrc.gz")).is_stack


@pytest.mark.parametrize("suffix", [".map.gz", ".map.bz2"])
def test_truncated_compressed_map_says_truncated(tmp_path, rng, suffix):
    packed = _compress(write_mrc(tmp_path / "t.map", rng.normal(size=(8, 32, 32)).astype(np.float32),
                                 voxel_size=1.0), suffix)
    blob = packed.read_bytes()
    for keep in (len(blob) // 2, 30, 3):
        packed.write_bytes(blob[:keep])
        with pytest.raises(CryodenInputError, match=re.escape(f"t{suffix}: truncated")) as info:
            read_mrc(packed)
        assert "\n" not in str(info.value)


def test_corrupt_compressed_data_is_named(tmp_path, rng):
    packed = _compress(write_mrc(tmp_path / "c.map", rng.normal(size=(8, 32, 32)).astype(np.float32),
                                 voxel_size=1.0), ".map.gz")
    blob = bytearray(packed.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    packed.write_bytes(bytes(blob))
    with pytest.raises(CryodenInputError, match=r"c\.map\.gz: (corrupt compressed data|truncated)"):
        read_mrc(packed)
    blob = bytearray(packed.read_bytes())
    blob = blob[:-8] + b"\0\0\0\0" + blob[-4:]  # the CRC-32 in the trailer
    packed.write_bytes(bytes(blob))
    with pytest.raises(CryodenInputError, match=r"corrupt compressed data \(CRC check failed"):
        read_mrc(packed)


def test_compressed_header_asking_for_more_than_the_file_can_hold(tmp_path, rng):
    import gzip

    path = write_mrc(tmp_path / "h.map", rng.normal(size=(2, 8, 8)).astype(np.float32), voxel_size=1.0)
    raw = bytearray(path.read_bytes())
    raw[8:12] = np.int32(1_000_000).tobytes()  # nz
    (tmp_path / "h.map.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(CryodenInputError, match=r"h\.map\.gz: truncated or corrupt header: .* more than \d+ bytes "
                                                r"of gzip data can hold"):
        read_mrc(tmp_path / "h.map.gz")


def test_mrc_name_helpers():
    from napari_cryoden.io.mrc import compression_suffix, is_mrc_path, mrc_stem, mrc_suffix

    assert mrc_stem("maps/emd_1832.map.gz") == "emd_1832" and mrc_suffix("emd_1832.map.gz") == ".map"
    assert mrc_stem("x.MRCS.BZ2") == "x" and mrc_suffix("x.MRCS.BZ2") == ".MRCS"
    assert mrc_stem("x.mrc") == "x" and mrc_suffix("x.mrc") == ".mrc" and compression_suffix("x.mrc") == ""
    assert compression_suffix("a.map.GZ") == ".gz"
    assert all(is_mrc_path(n) for n in ("a.mrc", "a.map.gz", "a.mrcs.bz2", "A.ST", "a.rec.gz"))
    assert not any(is_mrc_path(n) for n in ("a.gz", "a.tif.gz", "a.star", ".gz", "mrc", "a.mrc.zip"))


# ---------------------------------------------------------------------------- header sanity checks
def _patched(tmp_path, rng, name="h.mrc", shape=(2, 8, 8), **fields):
    """A valid file whose header fields (int32 ones by name; cella as a triple) are then overwritten."""
    from mrcfile.dtypes import HEADER_DTYPE

    path = write_mrc(tmp_path / name, rng.normal(size=shape).astype(np.float32), voxel_size=1.0)
    raw = bytearray(path.read_bytes())
    for key, value in fields.items():
        offset = HEADER_DTYPE.fields[key][1]
        arr = np.asarray(value, dtype="<f4" if key == "cella" else "<i4")
        raw[offset:offset + arr.nbytes] = arr.tobytes()
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("dims", [(100_000, 100_000, 100_000), (2**21, 2**21, 2**22), (2**31 - 1,) * 3])
def test_petabyte_header_is_a_one_line_error(tmp_path, rng, dims):
    """Python ints, not int64: (2**21, 2**21, 2**22) float32 overflows int64 to 0 bytes of data."""
    path = _patched(tmp_path, rng, nx=dims[0], ny=dims[1], nz=dims[2])
    for size in (None, 1024):
        if size:
            with open(path, "r+b") as fh:
                fh.truncate(size)
        with pytest.raises(CryodenInputError, match=r"h\.mrc: truncated or corrupt header: the header describes "
                                                    r"\(\d+, \d+, \d+\) .* (PB|EB|ZB|YB)\)") as info:
            read_mrc(path)
        assert "\n" not in str(info.value)


def test_dimensions_overflowing_int64_never_reach_memmap(tmp_path):
    """48448661 * 494770 * 769546 = 2**64 + 4: in int64 that is 4 int8 values, which a 1028-byte file "holds";
    np.memmap then failed with "array is too big"."""
    path = write_mrc(tmp_path / "wrap.mrc", np.zeros((1, 2, 2), np.int8), voxel_size=1.0)
    raw = bytearray(path.read_bytes())
    raw[0:12] = np.asarray([48448661, 494770, 769546], "<i4").tobytes()
    path.write_bytes(bytes(raw))
    assert path.stat().st_size == 1028
    with pytest.raises(CryodenInputError, match=r"wrap\.mrc: truncated or corrupt header: .* \(18\.4 EB\) with the "
                                                r"header\) but the file has 1028 bytes"):
        read_mrc(path)


@pytest.mark.parametrize(("cella", "problem"), [((np.nan, 8.0, 8.0), "NaN or Inf"), ((8.0, np.inf, 8.0), "NaN or Inf"),
                                                ((8.0, 8.0, np.nan), "NaN or Inf"),
                                                ((-8.0, 8.0, 8.0), "cannot be negative")])
def test_nan_inf_or_negative_cell_is_refused(tmp_path, rng, cella, problem):
    path = _patched(tmp_path, rng, cella=cella)
    with pytest.raises(CryodenInputError, match=rf"h\.mrc: header cell size \(cella\) is .*{problem}"):
        read_mrc(path)


@pytest.mark.parametrize(("fields", "problem"), [
    ({"nsymbt": -4}, r"header has a negative extended header size \(nsymbt = -4\)"),
    ({"nsymbt": 2**31 - 1}, r"truncated or corrupt header: the extended header alone \(nsymbt\) is 2147483647"),
    ({"nsymbt": 64}, "truncated"),
    ({"mode": 101}, r"unsupported MRC data mode 101 \(4-bit packed\)"),
    ({"mode": 3}, r"unsupported MRC data mode 3 \(complex int16\)"),
    ({"mode": 77}, "unsupported MRC data mode 77; cryoden reads modes"),
    ({"nx": 0}, r"header has a non-positive dimension \(nx, ny, nz\) = \(0, 8, 2\)"),
    ({"ny": -3}, "header has a non-positive dimension"),
    ({"mx": -1}, r"header sampling \(mx, my, mz\) = \(-1, "),
])
def test_bad_header_fields_are_named(tmp_path, rng, fields, problem):
    with pytest.raises(CryodenInputError, match=rf"h\.mrc: {problem}"):
        read_mrc(_patched(tmp_path, rng, **fields))


def test_volume_stack_with_zero_mz_reads_as_one_volume(tmp_path, rng):
    path = _patched(tmp_path, rng, shape=(4, 8, 8), ispg=401, mz=0)
    m = read_mrc(path, warn_zero_voxel_size=False)
    assert m.data.shape == (4, 8, 8) and all(v > 0 for v in m.voxel_size)


def test_big_endian_file_reads(tmp_path, rng):
    from mrcfile.dtypes import HEADER_DTYPE

    data = rng.normal(size=(3, 5, 7)).astype(np.float32)
    path = write_mrc(tmp_path / "le.mrc", data, voxel_size=2.0)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype=HEADER_DTYPE).copy()
    swapped = header.astype(HEADER_DTYPE.newbyteorder(">"))
    swapped["machst"] = [0x11, 0x11, 0, 0]
    body = np.frombuffer(raw[1024:], dtype="<f4").astype(">f4")
    (tmp_path / "be.mrc").write_bytes(swapped.tobytes() + body.tobytes())
    m = read_mrc(tmp_path / "be.mrc")
    np.testing.assert_array_equal(np.asarray(m.data), data)
    assert m.voxel_size == (2.0, 2.0, 2.0)


def test_fifo_and_folder_do_not_hang(tmp_path):
    fifo = tmp_path / "pipe.mrc"
    os.mkfifo(fifo)
    with pytest.raises(CryodenInputError, match="not a regular file"):
        read_mrc(fifo)
    with pytest.raises(CryodenInputError, match="is a folder"):
        read_mrc(tmp_path)


def test_release_pages_keeps_the_data_and_leaves_other_arrays_alone(tmp_path):
    """Dropping a read-only memory map's pages from the resident set changes nothing that is read from it;
    arrays in memory and writable maps are not touched."""
    from napari_cryoden.io.mrc import release_pages

    data = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    write_mrc(tmp_path / "s.mrcs", data, voxel_size=1.0, is_stack=True)
    mapped = read_mrc(tmp_path / "s.mrcs", mmap=True).data
    view = np.asarray(mapped)[1:3]  # a plain ndarray view of the map, as the pipeline holds it
    before = view.copy()
    release_pages(view)
    release_pages(mapped)
    np.testing.assert_array_equal(view, before)
    np.testing.assert_array_equal(mapped, data)
    in_memory = data.copy()
    release_pages(in_memory)
    np.testing.assert_array_equal(in_memory, data)
    writable = np.memmap(tmp_path / "w.raw", dtype=np.float32, mode="w+", shape=(8,))
    writable[:] = 7.0
    release_pages(writable)  # a writable map's unsaved pages must survive
    np.testing.assert_array_equal(writable, 7.0)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident set from /proc")
def test_release_pages_shrinks_the_resident_set(tmp_path):
    from napari_cryoden.io.mrc import release_pages

    def file_backed_mb() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    write_mrc(tmp_path / "big.mrcs", np.ones((128, 256, 256), np.float32), voxel_size=1.0, is_stack=True)  # 32 MB
    mapped = np.asarray(read_mrc(tmp_path / "big.mrcs", mmap=True).data)
    start = file_backed_mb()
    assert float(mapped.sum()) == 128 * 256 * 256
    read = file_backed_mb()
    release_pages(mapped)
    assert read - start > 24 and read - file_backed_mb() > 24, (start, read, file_backed_mb())
