"""MRC / MRCS / MAP / REC / ST reading (memory-mapped) and atomic writing, with the voxel size in Å.

Reading parses the 1024-byte header itself (with :mod:`mrcfile`'s header layout) and checks it against the
file size in Python integers before anything is mapped, then maps the data block with :class:`numpy.memmap`,
so no file handle stays open and nothing is read until it is sliced: a multi-GB tomogram opens in
milliseconds. gzip and bzip2 files (``emd_1832.map.gz``) are decompressed: into memory when small, else into
an unlinked temporary file that is mapped. Writing goes to a temporary file in the target folder that is
renamed into place, so a crash never leaves a partial output and a reader never sees one.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import math
import os
import shutil
import stat
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from ..errors import CryodenInputError, CryodenOutputError
from .outputs import AtomicOutput, check_output_path, reserve_space

__all__ = ["COMPRESSED_SUFFIXES", "MRC_SUFFIXES", "STACK_SUFFIXES", "AtomicOutput", "MrcData", "MrcWriter",
           "check_output_path", "compression_of", "is_mrc_path", "mrc_stem", "mrc_suffix", "read_mrc", "write_mrc"]

log = logging.getLogger(__name__)

#: File name endings the reader accepts (lower case), each also under one of :data:`COMPRESSED_SUFFIXES`.
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".st", ".ali")
#: Compression endings read transparently (EMDB distributes ``emd_NNNN.map.gz``). The reader recognises
#: gzip and bzip2 by their first bytes, so a compressed file without the ending reads too.
COMPRESSED_SUFFIXES = (".gz", ".bz2")
#: Endings that mean "a stack of 2D images" rather than a volume (also under a compression ending).
STACK_SUFFIXES = (".mrcs", ".st", ".ali")

HEADER_BYTES = 1024
#: A compressed file whose data block is at most this many bytes is decompressed into memory; a larger one
#: is streamed into an unlinked temporary file that is memory-mapped (bounded memory for any size).
DECOMPRESS_IN_MEMORY_BYTES = 256 << 20
_COPY_CHUNK = 8 << 20
#: Room left free on the temporary folder's disk after decompressing into it.
_TEMP_SPARE_BYTES = 64 << 20
#: Upper bounds of decompressed / compressed size (deflate cannot beat ~1032:1; bzip2's run-length stage
#: tops out near 46 million:1), used to refuse a header that asks for more than the file can hold.
_MAX_COMPRESSION_RATIO = {"gzip": 1100, "bzip2": 46_000_000}
_MODE_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 4: np.complex64, 6: np.uint16, 12: np.float16}
_UNSUPPORTED_MODES = {3: "complex int16", 101: "4-bit packed"}


class ZeroVoxelSizeWarning(UserWarning):
    """The file's header has a voxel size of 0; 1.0 Å was used instead."""


@dataclass(frozen=True)
class MrcData:
    """An MRC file's data and the header facts we use.

    Attributes
    ----------
    data
        Read-only array, memory-mapped unless read with ``mmap=False`` (a small compressed file is
        decompressed into memory, a large one into a mapped temporary file). Axes (z, y, x) for a volume,
        (n, y, x) for a stack, (y, x) for a single image.
    voxel_size
        Å per pixel along (z, y, x) (or (y, x) for a 2D image). Never 0.
    origin
        Header origin (x, y, z) in Å, as stored.
    labels
        The header's text labels.
    is_stack
        True when the first axis indexes images (``.mrcs``/``.st`` or space group 0) rather than z.
    path
        The file read (for a compressed file, the compressed one).
    voxel_size_from_header
        False when the header said 0 and 1.0 was substituted.
    """

    data: np.ndarray
    voxel_size: tuple[float, ...]
    origin: tuple[float, float, float]
    labels: tuple[str, ...]
    is_stack: bool
    path: Path
    voxel_size_from_header: bool = True
    header: dict = field(default_factory=dict, repr=False)

    @property
    def pixel_size(self) -> float:
        """In-plane pixel size in Å (the x voxel size)."""
        return float(self.voxel_size[-1])

    def metadata(self) -> dict:
        """A JSON-friendly summary for napari layer ``metadata`` and the CLI."""
        return {
            "path": str(self.path),
            "shape": tuple(int(s) for s in self.data.shape),
            "dtype": str(self.data.dtype),
            "header_voxel_size": tuple(float(v) for v in self.voxel_size),  # what the file says; a layer's scale rules
            "voxel_size_from_header": self.voxel_size_from_header,
            "origin": tuple(float(v) for v in self.origin),
            "labels": list(self.labels),
            "is_stack": self.is_stack,
            **self.header,
        }


def _split_compression(name: str) -> tuple[str, str]:
    """(name without a compression ending, that ending in lower case or "")."""
    lower = name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def compression_suffix(path: str | os.PathLike) -> str:
    """The compression ending of a file name in lower case (``.gz`` for ``emd_1832.map.gz``), else ``""``."""
    return _split_compression(Path(path).name)[1]


def mrc_suffix(path: str | os.PathLike) -> str:
    """The MRC-family ending of a file name under any compression ending, as spelt.

    ``.map`` for ``emd_1832.map.gz``, ``.mrcs`` for ``parts.mrcs``; ``""`` when the name has none of
    :data:`MRC_SUFFIXES`. Output files are written uncompressed, so this is the ending to give them.
    """
    inner, _ = _split_compression(Path(path).name)
    suffix = Path(inner).suffix
    return suffix if suffix.lower() in MRC_SUFFIXES else ""


def mrc_stem(path: str | os.PathLike) -> str:
    """The file name without its compression ending and its last suffix: ``emd_1832`` for ``emd_1832.map.gz``.

    Like :attr:`pathlib.Path.stem`, but ``.map.gz`` counts as one ending.
    """
    inner, _ = _split_compression(Path(path).name)
    return Path(inner).stem


def is_mrc_path(path: str | os.PathLike) -> bool:
    """True when a file name ends in an MRC-family suffix, optionally compressed, in any letter case.

    ``x.mrc``, ``x.MRCS``, ``emd_1832.map.gz`` and ``x.mrcs.bz2`` are; ``x.tif.gz`` is not. Only the name is
    looked at (for listing the maps in a folder); :func:`read_mrc` also recognises compression by content.
    """
    return mrc_suffix(path) != ""


def _compression_from_magic(head: bytes) -> str | None:
    # gzip: 1f 8b and method 8 (deflate, the only one defined). bzip2: "BZh" and a block size digit. An
    # uncompressed MRC starts with nx, which would have to be 560,927+ (gzip) or 6.8 million+ (bzip2) to
    # look like either.
    if head[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if len(head) >= 4 and head[:3] == b"BZh" and head[3] in b"123456789":
        return "bzip2"
    return None


def compression_of(path: str | os.PathLike) -> str | None:
    """``"gzip"`` or ``"bzip2"`` when the file starts with that format's magic bytes, else None.

    Raises
    ------
    CryodenInputError
        When the file cannot be opened.
    """
    try:
        with open(path, "rb") as fh:
            return _compression_from_magic(fh.read(4))
    except OSError as exc:
        raise CryodenInputError(path, f"cannot be read ({exc.strerror or exc})") from exc


def _bytes_text(n: int) -> str:
    """``1,049,600 bytes (1.0 MB)``: exact, and readable when the header describes petabytes."""
    if n < 10_000:
        return f"{n} bytes"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB", "EB", "ZB"):
        value /= 1000.0
        if value < 1000.0:
            return f"{n:,} bytes ({value:.1f} {unit})"
    return f"{n:,} bytes ({value / 1000.0:.1f} YB)"


@dataclass(frozen=True)
class _Layout:
    """Where an MRC file's data are and how to read them; every size a Python int (no int32/int64 overflow)."""

    header: np.recarray
    dtype: np.dtype
    shape: tuple[int, ...]
    ext_bytes: int
    compression: str | None  # "gzip", "bzip2" or None
    voxel_size: tuple[float, float, float]  # (z, y, x) Å from the header; 0 where unset

    @property
    def offset(self) -> int:
        return HEADER_BYTES + self.ext_bytes

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def total_bytes(self) -> int:
        return self.offset + self.data_bytes

    def describe(self) -> str:
        h = self.header
        return f"({int(h.nx)}, {int(h.ny)}, {int(h.nz)}) (x, y, z) values of {self.dtype.name}"


def _parse_header(path: Path, raw: bytes, compression: str | None) -> _Layout:
    """Check the 1024 header bytes on their own (identifier, byte order, mode, dimensions, extended header size,
    cell) and work out the data layout. The file size is checked by the caller."""
    map_id = raw[208:212]
    # MRC2014 says "MAP "; some writers put "MAP\0", and files from before 2000 have nothing there.
    if map_id[:3] != b"MAP" and map_id.strip(b"\x00 ") != b"":
        raise CryodenInputError(path, "not an MRC file (no 'MAP ' identifier in the header)")
    stamp = raw[212:214]
    if stamp[0] == 0x44 and stamp[1] in (0x44, 0x41):
        order = "<"
    elif stamp == b"\x11\x11":
        order = ">"
    else:
        order = "<"  # unset or garbled machine stamp: little-endian unless only big-endian gives a valid mode
    # Files exist whose machine stamp contradicts their byte order; like mrcfile's permissive mode, trust the
    # order in which the mode is one we know.
    for candidate in (order, ">" if order == "<" else "<"):
        mode = int.from_bytes(raw[12:16], "little" if candidate == "<" else "big", signed=True)
        if mode in _MODE_DTYPES:
            order = candidate
            break
    else:
        mode = int.from_bytes(raw[12:16], "little" if order == "<" else "big", signed=True)
        what = f" ({_UNSUPPORTED_MODES[mode]})" if mode in _UNSUPPORTED_MODES else ""
        raise CryodenInputError(path, f"unsupported MRC data mode {mode}{what}; cryoden reads modes 0 (int8), "
                                      "1 (int16), 2 (float32), 4 (complex64), 6 (uint16) and 12 (float16)")
    header = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(order)).reshape(()).view(np.recarray)
    dtype = np.dtype(_MODE_DTYPES[mode]).newbyteorder(order)

    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) <= 0:
        raise CryodenInputError(path, f"header has a non-positive dimension (nx, ny, nz) = ({nx}, {ny}, {nz})")
    ext_bytes = int(header.nsymbt)
    if ext_bytes < 0:
        raise CryodenInputError(path, f"header has a negative extended header size (nsymbt = {ext_bytes})")
    ispg, mz = int(header.ispg), int(header.mz)
    if 401 <= ispg <= 630 and mz > 0 and nz % mz == 0:
        shape: tuple[int, ...] = (nz // mz, mz, ny, nx)  # a stack of volumes, as mrcfile reads it
    elif ispg == 0 and nz == 1:
        shape = (ny, nx)
    else:
        # Also a "volume stack" whose mz does not divide nz (mrcfile divides by zero there): one volume.
        shape = (nz, ny, nx)
    return _Layout(header=header, dtype=dtype, shape=shape, ext_bytes=ext_bytes, compression=compression,
                   voxel_size=_header_voxel_size(path, header))


def _header_voxel_size(path: Path, header) -> tuple[float, float, float]:
    """(z, y, x) Å from cella / (mx, my, mz); 0 where the header leaves it unset. NaN, Inf or negative values
    are refused: they are a damaged header, and would end up as NaN coordinates in every output."""
    cella = (float(header.cella.x), float(header.cella.y), float(header.cella.z))
    sampling = (int(header.mx), int(header.my), int(header.mz))
    cell_text = f"({cella[0]:g}, {cella[1]:g}, {cella[2]:g}) Å"
    if not all(math.isfinite(c) for c in cella):
        raise CryodenInputError(path, f"header cell size (cella) is {cell_text}: NaN or Inf gives no voxel size; "
                                      "fix the header (e.g. set mrcfile's voxel_size)")
    if any(c < 0 for c in cella):
        raise CryodenInputError(path, f"header cell size (cella) is {cell_text}: a voxel size cannot be negative")
    if any(m < 0 for m in sampling):
        raise CryodenInputError(path, f"header sampling (mx, my, mz) = {sampling} is negative")
    vx, vy, vz = (c / m if m else 0.0 for c, m in zip(cella, sampling))
    return (vz, vy, vx)


def _describe_size_mismatch(layout: _Layout, size: int, *, decompressed: bool = False) -> str:
    expected = layout.total_bytes
    data = "decompressed stream" if decompressed else "file"
    if layout.ext_bytes > size - HEADER_BYTES and size < expected:
        return (f"truncated or corrupt header: the extended header alone (nsymbt) is {layout.ext_bytes} bytes "
                f"but the {data} has {size} bytes")
    if size > expected:
        what = "larger than its header says"
    elif expected > max(16 * size, 1 << 40):
        what = "truncated or corrupt header"  # dimensions that imply terabytes in a small file
    else:
        what = "truncated"
    return (f"{what}: the header describes {layout.describe()} ({_bytes_text(expected)} with the header) "
            f"but the {data} has {size} bytes")


def _stat_regular_file(path: Path) -> int:
    """The size of ``path``; CryodenInputError unless it is a readable regular file (a FIFO would block)."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise CryodenInputError(path, "file not found") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise CryodenInputError(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise CryodenInputError(path, "is a folder, not an MRC file")
    if not stat.S_ISREG(st.st_mode):
        raise CryodenInputError(path, "is not a regular file")
    return int(st.st_size)


def _open_header(path: Path) -> _Layout:
    """Validate the header of ``path`` against the file before anything is mapped (raises CryodenInputError
    naming the file). For a compressed file the header is read from the decompressed stream."""
    size = _stat_regular_file(path)
    compression = compression_of(path) if size >= 4 else None
    if compression is None:
        if size < HEADER_BYTES:
            raise CryodenInputError(path, f"truncated: {size} bytes is smaller than the 1024-byte MRC header")
        try:
            with open(path, "rb") as fh:
                raw = fh.read(HEADER_BYTES)
        except OSError as exc:
            raise CryodenInputError(path, f"cannot be read ({exc.strerror or exc})") from exc
        if len(raw) < HEADER_BYTES:  # shrunk since the stat
            raise CryodenInputError(path, f"truncated: {len(raw)} bytes is smaller than the 1024-byte MRC header")
        layout = _parse_header(path, raw, None)
        if size != layout.total_bytes:
            raise CryodenInputError(path, _describe_size_mismatch(layout, size))
        return layout
    with _open_compressed(path, compression) as stream:
        raw = bytearray(HEADER_BYTES)
        got = _read_into(path, stream, memoryview(raw), 0)
    if got < HEADER_BYTES:
        raise CryodenInputError(path, f"truncated: the decompressed data end after {got} bytes, inside the "
                                      "1024-byte MRC header")
    layout = _parse_header(path, bytes(raw), compression)
    # The best ratio the format can reach bounds what a file this size can decompress to: a header asking
    # for more is damaged (or the file truncated), and we say so before decompressing anything.
    limit = size * _MAX_COMPRESSION_RATIO[compression] + (1 << 16)
    if layout.total_bytes > limit:
        raise CryodenInputError(path, f"truncated or corrupt header: the header describes {layout.describe()} "
                                      f"({_bytes_text(layout.total_bytes)} with the header), more than "
                                      f"{size} bytes of {compression} data can hold")
    return layout


def _open_compressed(path: Path, compression: str):
    try:
        if compression == "gzip":
            return gzip.open(path, "rb")
        return bz2.open(path, "rb")
    except OSError as exc:
        raise CryodenInputError(path, f"cannot be read ({exc.strerror or exc})") from exc


def _read_into(path: Path, stream, view: memoryview, done: int, *, expected: int | None = None) -> int:
    """Fill ``view`` from a decompressing stream, chunk by chunk; the bytes read (fewer at the end of the
    data). ``done`` (decompressed bytes before ``view``) and ``expected`` only make the messages precise."""
    got = 0
    try:
        while got < len(view):
            n = stream.readinto(view[got:got + _COPY_CHUNK])
            if not n:
                break
            got += n
    except EOFError as exc:  # gzip and bzip2: the compressed stream stops before its end marker
        but = f", but the header describes {_bytes_text(expected)}" if expected else ""
        raise CryodenInputError(path, f"truncated: the compressed data stop after {_bytes_text(done + got)} of "
                                      f"decompressed data{but}") from exc
    except (OSError, zlib.error, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # a real read error, not bad data
            raise CryodenInputError(path, f"cannot be read ({exc.strerror or exc})") from exc
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CryodenInputError(path, f"corrupt compressed data ({reason}) after {_bytes_text(done + got)} "
                                      "decompressed") from exc
    return got


def _skip(path: Path, stream, n: int) -> None:
    buf = memoryview(bytearray(min(n, _COPY_CHUNK)))
    done = 0
    while done < n:
        got = _read_into(path, stream, buf[: min(len(buf), n - done)], done)
        if not got:
            raise CryodenInputError(path, f"truncated: the decompressed data end after {done} bytes, inside the "
                                          f"{n}-byte header and extended header")
        done += got


def _copy_exact(path: Path, layout: _Layout, stream, sink) -> None:
    """Decompress exactly the data block into ``sink(view)`` chunk by chunk, then make sure the stream ends
    there (reading on also checks the gzip/bzip2 checksum)."""
    need = layout.data_bytes
    buf = memoryview(bytearray(min(need, _COPY_CHUNK)))
    done = 0
    while done < need:
        got = _read_into(path, stream, buf[: min(len(buf), need - done)], layout.offset + done,
                         expected=layout.total_bytes)
        if not got:
            raise CryodenInputError(path, _describe_size_mismatch(layout, layout.offset + done, decompressed=True))
        sink(buf[:got], done)
        done += got
    extra = memoryview(bytearray(1))
    if _read_into(path, stream, extra, layout.total_bytes):
        raise CryodenInputError(path, f"larger than its header says: the decompressed data go on past the "
                                      f"{_bytes_text(layout.total_bytes)} that the header describes")


def _read_compressed(path: Path, layout: _Layout, *, mmap: bool) -> np.ndarray:
    """The data of a gzip/bzip2 MRC file: decompressed into memory when small (or ``mmap`` is False),
    else streamed into an unlinked temporary file that is memory-mapped."""
    with _open_compressed(path, layout.compression) as stream:
        _skip(path, stream, layout.offset)
        if mmap and layout.data_bytes > DECOMPRESS_IN_MEMORY_BYTES:
            return _decompress_to_temporary_map(path, layout, stream)
        try:
            flat = np.empty(layout.data_bytes, dtype=np.uint8)
        except MemoryError as exc:
            raise CryodenInputError(path, f"not enough memory to decompress its {_bytes_text(layout.data_bytes)} "
                                          "of data") from exc

        def into_memory(chunk, at):
            flat[at:at + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)

        _copy_exact(path, layout, stream, into_memory)
    data = flat.view(layout.dtype).reshape(layout.shape)
    data.flags.writeable = False
    return data


def _decompress_to_temporary_map(path: Path, layout: _Layout, stream) -> np.memmap:
    # A compressed stream cannot be memory-mapped, and a large map should not be held in memory: write the
    # data block to a temporary file and map that. TemporaryFile has no name on Linux (O_TMPFILE) or is
    # unlinked at once, so nothing is left behind even after a crash; the mapping keeps the blocks alive.
    # The file is written in full before it is mapped, so a full disk is an error here, never a SIGBUS later.
    folder = tempfile.gettempdir()
    need = layout.data_bytes
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and need + _TEMP_SPARE_BYTES > free:
        raise CryodenInputError(path, f"cannot decompress: its data need {_bytes_text(need)} in the temporary "
                                      f"folder {folder}, which has {_bytes_text(free)} free; point TMPDIR at "
                                      "a folder with more room, or decompress the file first")
    try:
        tmp = tempfile.TemporaryFile(prefix="cryoden-", suffix=".mrcdata", dir=folder)
    except OSError as exc:
        raise CryodenInputError(path, f"cannot decompress: no temporary file in {folder} "
                                      f"({exc.strerror or exc})") from exc
    with tmp:
        def to_file(chunk, at):
            try:
                tmp.write(chunk)
            except OSError as exc:
                raise CryodenInputError(path, f"cannot decompress into the temporary folder {folder} "
                                              f"({exc.strerror or exc})") from exc

        _copy_exact(path, layout, stream, to_file)
        try:
            tmp.flush()
            return np.memmap(tmp, dtype=layout.dtype, mode="r", shape=layout.shape)
        except (OSError, ValueError) as exc:
            raise CryodenInputError(path, f"cannot map the decompressed data in {folder} ({exc})") from exc


def read_mrc(path: str | os.PathLike, *, mmap: bool = True, stack: bool | None = None,
             warn_zero_voxel_size: bool = True) -> MrcData:
    """Open an MRC-family file, memory-mapped by default; gzip and bzip2 files are decompressed.

    Parameters
    ----------
    path
        ``.mrc``, ``.mrcs``, ``.map``, ``.rec``, ``.st`` or ``.ali`` file, optionally compressed
        (``emd_1832.map.gz``, ``parts.mrcs.bz2``; compression is recognised by the file's first bytes).
    mmap
        Map the data lazily (default). With ``False`` the data are read into memory. A compressed file
        is decompressed into memory when its data are at most :data:`DECOMPRESS_IN_MEMORY_BYTES`, else
        into an unlinked temporary file in :func:`tempfile.gettempdir` that is memory-mapped.
    stack
        Force the first axis to be read as an image index (True) or as z (False). By default a file is a
        stack when its name ends in ``.mrcs``/``.st``/``.ali`` (before any ``.gz``/``.bz2``) or its space
        group is 0 (MRC2014 image stack).
    warn_zero_voxel_size
        Warn when the header's voxel size is 0 and 1.0 Å is used.

    Returns
    -------
    MrcData
        Data with axes (z, y, x) or (n, y, x), voxel size in Å (0 in the header becomes 1.0 with a
        :class:`ZeroVoxelSizeWarning` unless ``warn_zero_voxel_size`` is False, e.g. when a STAR file
        supplies the pixel size), origin and labels. ``path`` is the file as given (the compressed one).

    Raises
    ------
    CryodenInputError
        Naming the file, before anything is mapped: missing or unreadable, not MRC, an unsupported mode,
        non-positive dimensions, a negative extended header, a NaN/Inf/negative cell size, a size that
        does not match the header, truncated or corrupt compressed data, no room to decompress.
    """
    path = Path(path)
    layout = _open_header(path)
    header, dtype, shape = layout.header, layout.dtype, layout.shape
    if layout.compression is not None:
        data = _read_compressed(path, layout, mmap=mmap)
    else:
        try:
            if mmap:
                data = np.memmap(path, dtype=dtype, mode="r", offset=layout.offset, shape=shape)
            else:
                with open(path, "rb") as fh:
                    fh.seek(layout.offset)
                    data = np.fromfile(fh, dtype=dtype, count=math.prod(shape)).reshape(shape)
                data.flags.writeable = False
        except (OSError, ValueError) as exc:  # e.g. the file shrank since the header was checked
            raise CryodenInputError(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from exc
    # Drop a singleton z so a single image reads as 2D (y, x).
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]

    vz, vy, vx = layout.voxel_size
    from_header = True
    vox = [vz, vy, vx]
    if vx <= 0 or vy <= 0:
        from_header = False
        if warn_zero_voxel_size:
            warnings.warn(f"{path}: voxel size is 0 in the header; using 1.0 Å", ZeroVoxelSizeWarning, stacklevel=2)
        vox = [1.0, 1.0, 1.0]
    is_stack = bool(stack) if stack is not None else (
        mrc_suffix(path).lower() in STACK_SUFFIXES or int(header.ispg) == 0
    )
    if data.ndim >= 3 and (vox[0] <= 0 or is_stack):
        # Stacks carry no z spacing; volumes with an unset z spacing get the in-plane one.
        vox[0] = vox[2]
    voxel_size = tuple(vox[-min(data.ndim, 3):])
    nlabl = min(max(int(header.nlabl), 0), 10)
    labels = tuple(
        bytes(lbl).decode("ascii", errors="replace").strip() for lbl in header.label[:nlabl]
    )
    extra = {
        "mode": int(header.mode),
        "space_group": int(header.ispg),
        "mean": float(header.dmean),
        "min": float(header.dmin),
        "max": float(header.dmax),
        "extended_header_bytes": layout.ext_bytes,
        "compression": layout.compression,
    }
    return MrcData(
        data=data,
        voxel_size=voxel_size,
        origin=(float(header.origin.x), float(header.origin.y), float(header.origin.z)),
        labels=labels,
        is_stack=is_stack and data.ndim == 3,
        path=path,
        voxel_size_from_header=from_header,
        header=extra,
    )


def _as_voxel_triplet(voxel_size, ndim: int) -> tuple[float, float, float]:
    """(x, y, z) Å for the header from a scalar or a (z, y, x) / (y, x) sequence."""
    if np.isscalar(voxel_size):
        v = float(voxel_size)
        return (v, v, v)
    vs = [float(v) for v in voxel_size]
    if len(vs) == 2:
        vs = [vs[-1]] + vs
    if len(vs) != 3:
        raise ValueError(f"voxel_size must be a number or a (z, y, x) triplet, got {voxel_size!r}")
    return (vs[2], vs[1], vs[0])


def _refuse_compressed_output(path) -> None:
    if compression_suffix(path):
        raise CryodenOutputError(path, "MRC files are written uncompressed; give a name without "
                                       f"{compression_suffix(path)}")


def write_mrc(path: str | os.PathLike, data: np.ndarray, *, voxel_size: float | Sequence[float],
              is_stack: bool = False, origin: Sequence[float] | None = None,
              labels: Sequence[str] = (), inputs: Iterable[str | os.PathLike] = (),
              overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically, with the voxel size (Å) in the header.

    Parameters
    ----------
    path
        Output file. Written to a temporary file in the same folder, then renamed into place.
    data
        2D image, 3D volume (z, y, x) or stack (n, y, x). float64 is stored as float32; other dtypes that
        MRC supports are kept.
    voxel_size
        Å per pixel, a scalar or (z, y, x).
    is_stack
        Mark the file as an image stack (space group 0), as RELION expects for ``.mrcs``.
    origin
        Header origin (x, y, z) in Å.
    labels
        Up to 10 text labels (80 characters each).
    inputs
        Files this output must not overwrite.

    Returns
    -------
    Path
        The written file.
    """
    arr = np.asarray(data)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.int8)
    elif arr.dtype in (np.int64, np.int32, np.uint32):
        arr = arr.astype(np.float32)
    if arr.ndim not in (2, 3):
        raise CryodenOutputError(path, f"can only write 2D or 3D arrays, got shape {arr.shape}")
    _refuse_compressed_output(path)
    vox = _as_voxel_triplet(voxel_size, arr.ndim)
    if any(v <= 0 or not np.isfinite(v) for v in vox):
        raise CryodenOutputError(path, f"voxel size must be positive, got {voxel_size!r}")
    with AtomicOutput(path, inputs=inputs, overwrite=overwrite) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(arr))
            if is_stack and arr.ndim == 3:
                mrc.set_image_stack()
            mrc.voxel_size = vox
            if origin is not None:
                mrc.header.origin = tuple(float(o) for o in origin)
            for lbl in list(labels)[:9]:
                mrc.add_label(str(lbl)[:80])
            mrc.update_header_stats()
    return Path(path)


class MrcWriter:
    """Write a large MRC block by block through a memory map, atomically.

    Use as a context manager; the array returned by ``__enter__`` is a writable memory map of the final
    shape. The file only appears at ``path`` when the block exits without an exception, so a cancelled or
    failed job leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], *, voxel_size, dtype=np.float32,
                 is_stack: bool = False, origin: Sequence[float] | None = None, labels: Sequence[str] = (),
                 inputs: Iterable[str | os.PathLike] = (), overwrite: bool = True):
        _refuse_compressed_output(path)
        self._atomic = AtomicOutput(path, inputs=inputs, overwrite=overwrite)
        self.origin = origin
        self.labels = list(labels)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size = _as_voxel_triplet(voxel_size, len(self.shape))
        self.is_stack = is_stack
        self._mrc = None

    def __enter__(self) -> np.ndarray:
        tmp = self._atomic.__enter__()
        try:
            self._mrc = mrcfile.new_mmap(tmp, shape=self.shape, mrc_mode=mrcfile.utils.mode_from_dtype(self.dtype),
                                         overwrite=True)
            # The map is sparse until written: reserve its blocks now, or a full disk kills us with SIGBUS.
            fd = os.open(tmp, os.O_RDWR)
            try:
                reserve_space(fd, HEADER_BYTES + int(self._mrc.data.nbytes), path=self._atomic.path)
            finally:
                os.close(fd)
        except BaseException as exc:
            if self._mrc is not None:
                self._mrc.close()
                self._mrc = None
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self._mrc.data

    def __exit__(self, exc_type, exc, tb) -> bool:
        mrc = self._mrc
        try:
            if exc_type is None:
                if self.is_stack and len(self.shape) == 3:
                    mrc.set_image_stack()
                mrc.voxel_size = self.voxel_size
                if self.origin is not None:
                    mrc.header.origin = tuple(float(o) for o in self.origin)
                for lbl in self.labels[:9]:
                    mrc.add_label(str(lbl)[:80])
                mrc.update_header_from_data()
                _set_header_stats(mrc)
        finally:
            mrc.close()
            self._atomic.__exit__(exc_type, exc, tb)
        return False


def _set_header_stats(mrc, *, chunk_bytes: int = 64 << 20) -> None:
    """dmin, dmax, dmean and rms of the data, slab by slab (mrcfile's ``update_header_stats`` computes
    ``data.std()``, whose temporaries are as large as the whole volume)."""
    data = mrc.data
    n = data.shape[0] if data.ndim >= 1 and data.size else 0
    if n == 0:
        mrc.update_header_stats()
        return
    per_row = max(1, int(np.prod(data.shape[1:])) * data.itemsize)
    step = max(1, chunk_bytes // per_row)
    lo, hi, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    for start in range(0, n, step):
        block = np.asarray(data[start:start + step], dtype=np.float64)
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        total += float(block.sum())
        total_sq += float(np.square(block).sum())
    count = float(data.size)
    mean = total / count
    mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = lo, hi, mean
    mrc.header.rms = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def release_pages(array) -> None:
    """Drop the pages of a read-only memory-mapped ``array`` (e.g. a stack from ``read_mrc(mmap=True)``) from
    this process's resident memory, after a pass over it.

    They stay in the kernel's page cache and are read back on the next access, so nothing changes but the
    process's resident set, which would otherwise grow to the whole file as a pass reads it (1.5 GB for 10⁵
    particles of 64²). Anything that is not a read-only memory map (arrays in memory, copy-on-write or writable
    maps, whose pages may hold changes) is left alone.
    """
    import mmap as _mmap

    while array is not None and not isinstance(array, np.memmap):  # np.asarray(a memmap) is a plain view of it
        array = getattr(array, "base", None)
    if array is None or getattr(array, "mode", None) not in ("r", "readonly"):
        return
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(_mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(_mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map, or a platform that refuses: only a missed saving
            pass
