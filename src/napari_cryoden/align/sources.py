"""Particle images read in batches: an in-memory or memory-mapped array, or a particle table.

Alignment streams its input: a source only ever hands out ``read(start, stop)`` blocks, so a stack of
10⁵ particles is never loaded whole (an ``.mrcs`` is memory-mapped; a STAR / XMD table reads only the
requested rows from its stacks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CryodenInputError, require_finite
from ..io.mrc import release_pages
from ..io.star import ParticleTable, make_optics_table, read_particle_images


class ArraySource:
    """Images from an (n, y, x) array (numpy array or memory map); ``name`` is used in error messages."""

    def __init__(self, images, *, pixel_size: float = 1.0, name: str | os.PathLike | None = None):
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
            raise CryodenInputError(name, f"particles must be a stack of square 2D images (n, y, x), got shape "
                                          f"{tuple(images.shape)}")
        self.images, self.pixel_size, self.name = images, float(pixel_size), name

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def box(self) -> int:
        return int(self.images.shape[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        release_pages(self.images)  # the previous blocks of a memory-mapped stack leave the resident set
        block = np.asarray(self.images[start:stop], dtype=np.float32)
        if not np.isfinite(block).all():
            require_finite(block, name=self.name)
        return block


class RowsSource(ArraySource):
    """The images ``rows`` (sorted indices) of an (n, y, x) array or memory map, read batch by batch (a class's
    members are never copied out of the stack at once)."""

    def __init__(self, images, rows, *, pixel_size: float = 1.0, name: str | os.PathLike | None = None):
        super().__init__(images, pixel_size=pixel_size, name=name)
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        release_pages(self.images)
        block = np.asarray(self.images[self.rows[start:stop]], dtype=np.float32)
        if not np.isfinite(block).all():
            require_finite(block, name=self.name)
        return block


class TableSource:
    """Images of the particles of a :class:`ParticleTable` (stacks memory-mapped, rows read on demand)."""

    def __init__(self, table: ParticleTable, *, name: str | os.PathLike | None = None):
        self.table, self.name = table, name if name is not None else table.path
        self.pixel_size = table.pixel_size()
        first = read_particle_images(table, rows=[0])
        if first.shape[-1] != first.shape[-2]:
            raise CryodenInputError(self.name, f"particles must be square images, got {first.shape[1:]}")
        self._box = int(first.shape[-1])

    def __len__(self) -> int:
        return len(self.table)

    @property
    def box(self) -> int:
        return self._box

    def read(self, start: int, stop: int) -> np.ndarray:
        block = read_particle_images(self.table, rows=np.arange(start, min(stop, len(self))))
        if not np.isfinite(block).all():
            require_finite(block, name=self.name)
        return block


@dataclass(frozen=True)
class ParticleInput:
    """An opened particle input: the image source and the particle table that the output STAR extends."""

    source: ArraySource | TableSource
    table: ParticleTable
    path: Path
    kind: str  # "stack", "star" or "xmd"


def open_particles(path: str | os.PathLike) -> ParticleInput:
    """Open an ``.mrcs`` stack (or MRC stack), a RELION ``.star`` or an Xmipp ``.xmd`` particle list.

    For a bare stack the table gets one row per image (``rlnImageName`` = ``N@stack``, relative to the
    stack's own folder) and a one-group optics table with the header's pixel size.
    """
    from ..io.mrc import read_mrc

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        from ..io.star import read_star

        table = read_star(path)
        return ParticleInput(TableSource(table, name=path), table, path, "star")
    if suffix == ".xmd":
        from ..io.xmd import read_xmd

        table = read_xmd(path)
        return ParticleInput(TableSource(table, name=path), table, path, "xmd")
    m = read_mrc(path, stack=True)
    data = m.data if m.data.ndim == 3 else m.data[None]
    source = ArraySource(data, pixel_size=m.pixel_size, name=path)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{path.name}" for i in range(len(source))],
                              "rlnOpticsGroup": 1})
    optics = make_optics_table(pixel_size=m.pixel_size, image_size=source.box)
    return ParticleInput(source, ParticleTable(particles=particles, optics=optics, path=path), path, "stack")
