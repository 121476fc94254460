"""MRC / MRCS / MAP / REC / ST reading (memory-mapped) and atomic writing, with the voxel size in Å.

Reading parses and validates the header with :mod:`mrcfile`, then maps the data block with
:class:`numpy.memmap` ourselves, so no file handle stays open and nothing is read until it is sliced: a
multi-GB tomogram opens in milliseconds. Writing goes to a temporary file in the target folder that is
renamed into place, so a crash never leaves a partial output and a reader never sees one.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from ..errors import CryodenInputError, CryodenOutputError
from .outputs import AtomicOutput, check_output_path, reserve_space

__all__ = ["MRC_SUFFIXES", "STACK_SUFFIXES", "AtomicOutput", "MrcData", "MrcWriter", "check_output_path", "read_mrc",
           "write_mrc"]

log = logging.getLogger(__name__)

#: File name endings the reader accepts (lower case).
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".st", ".ali")
#: Endings that mean "a stack of 2D images" rather than a volume.
STACK_SUFFIXES = (".mrcs", ".st", ".ali")

HEADER_BYTES = 1024


class ZeroVoxelSizeWarning(UserWarning):
    """The file's header has a voxel size of 0; 1.0 Å was used instead."""


@dataclass(frozen=True)
class MrcData:
    """An MRC file's data and the header facts we use.

    Attributes
    ----------
    data
        Read-only array, memory-mapped unless read with ``mmap=False``. Axes (z, y, x) for a volume,
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
        The file read.
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
            "voxel_size": tuple(float(v) for v in self.voxel_size),
            "voxel_size_from_header": self.voxel_size_from_header,
            "origin": tuple(float(v) for v in self.origin),
            "labels": list(self.labels),
            "is_stack": self.is_stack,
            **self.header,
        }


def _open_header(path: Path):
    """Validate and return the header of ``path`` (raises CryodenInputError naming the file)."""
    if not path.exists():
        raise CryodenInputError(path, "file not found")
    if path.is_dir():
        raise CryodenInputError(path, "is a folder, not an MRC file")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise CryodenInputError(path, f"truncated: {size} bytes is smaller than the 1024-byte MRC header")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header.copy()
                ext_bytes = int(header.nsymbt)
    except Exception as exc:  # mrcfile raises ValueError/OSError/struct errors on garbage
        raise CryodenInputError(path, f"not a readable MRC file ({exc})") from exc
    if bytes(header.map).rstrip(b"\x00 ") not in (b"MAP", b""):
        raise CryodenInputError(path, "not an MRC file (no 'MAP ' identifier in the header)")
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as exc:
        raise CryodenInputError(path, f"unsupported MRC data mode {int(header.mode)} ({exc})") from exc
    shape = tuple(int(v) for v in mrcfile.utils.data_shape_from_header(header))
    if any(s <= 0 for s in (int(header.nx), int(header.ny), int(header.nz))):
        raise CryodenInputError(path, f"header has a non-positive dimension (nx, ny, nz) = "
                                      f"({int(header.nx)}, {int(header.ny)}, {int(header.nz)})")
    expected = HEADER_BYTES + ext_bytes + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size != expected:
        what = "truncated" if size < expected else "larger than its header says"
        raise CryodenInputError(
            path,
            f"{what}: the header describes {shape[::-1]} (x, y, z) values of {np.dtype(dtype).name} "
            f"({expected} bytes with the header) but the file has {size} bytes",
        )
    return header, dtype, shape, ext_bytes


def read_mrc(path: str | os.PathLike, *, mmap: bool = True, stack: bool | None = None,
             warn_zero_voxel_size: bool = True) -> MrcData:
    """Open an MRC-family file, memory-mapped by default.

    Parameters
    ----------
    path
        ``.mrc``, ``.mrcs``, ``.map``, ``.rec``, ``.st`` or ``.ali`` file.
    mmap
        Map the data lazily (default). With ``False`` the data are read into memory.
    stack
        Force the first axis to be read as an image index (True) or as z (False). By default a file is a
        stack when it ends in ``.mrcs``/``.st``/``.ali`` or its space group is 0 (MRC2014 image stack).

    Returns
    -------
    MrcData
        Data with axes (z, y, x) or (n, y, x), voxel size in Å (0 in the header becomes 1.0 with a
        :class:`ZeroVoxelSizeWarning` unless ``warn_zero_voxel_size`` is False, e.g. when a STAR file
        supplies the pixel size), origin and labels.
    """
    path = Path(path)
    header, dtype, shape, ext_bytes = _open_header(path)
    offset = HEADER_BYTES + ext_bytes
    if int(np.prod(shape)) == 0:
        raise CryodenInputError(path, "holds no data")
    if mmap:
        data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    else:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = np.fromfile(fh, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        data.flags.writeable = False
    # Drop a singleton z so a single image reads as 2D (y, x).
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]

    vx = header.cella.x / header.mx if header.mx else 0.0
    vy = header.cella.y / header.my if header.my else 0.0
    vz = header.cella.z / header.mz if header.mz else 0.0
    from_header = True
    vox = [float(vz), float(vy), float(vx)]
    if vx <= 0 or vy <= 0 or not np.isfinite([vx, vy]).all():
        from_header = False
        if warn_zero_voxel_size:
            warnings.warn(f"{path}: voxel size is 0 in the header; using 1.0 Å", ZeroVoxelSizeWarning, stacklevel=2)
        vox = [1.0, 1.0, 1.0]
    is_stack = bool(stack) if stack is not None else (
        path.suffix.lower() in STACK_SUFFIXES or int(header.ispg) == 0
    )
    if data.ndim == 3 and (vox[0] <= 0 or is_stack):
        # Stacks carry no z spacing; volumes with an unset z spacing get the in-plane one.
        vox[0] = vox[2]
    voxel_size = tuple(vox[-data.ndim:])
    nlabl = int(header.nlabl)
    labels = tuple(
        bytes(lbl).decode("ascii", errors="replace").strip() for lbl in header.label[:nlabl]
    )
    extra = {
        "mode": int(header.mode),
        "space_group": int(header.ispg),
        "mean": float(header.dmean),
        "min": float(header.dmin),
        "max": float(header.dmax),
        "extended_header_bytes": ext_bytes,
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
