"""RELION STAR particle tables (3.1+ optics + particles), read and written through :mod:`starfile`.

RELION 3.0 files (one table, pixel size from magnification, origins in pixels) are upgraded on reading to
the 3.1 layout, so the rest of the code sees one form: an optics table with ``rlnImagePixelSize`` and a
particles table with ``rlnOpticsGroup`` and, where present, ``rlnOriginXAngst``/``rlnOriginYAngst``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ..errors import CryodenInputError
from .mrc import read_mrc
from .outputs import AtomicOutput

log = logging.getLogger(__name__)

_IMAGE_NAME = re.compile(r"^\s*(\d+)@(.+?)\s*$")


@dataclass(frozen=True)
class ParticleTable:
    """A particle table with its optics groups.

    Attributes
    ----------
    particles
        One row per particle (RELION column names, e.g. ``rlnImageName``, ``rlnAnglePsi``).
    optics
        One row per optics group (``rlnOpticsGroup``, ``rlnImagePixelSize``, ...).
    path
        The STAR file read, or None for a table built in memory; image names resolve relative to its folder.
    """

    particles: pd.DataFrame
    optics: pd.DataFrame
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.particles)

    def pixel_sizes(self) -> np.ndarray:
        """Pixel size in Å of every particle, from its optics group."""
        groups = self.particles.get("rlnOpticsGroup", pd.Series(np.ones(len(self.particles), int)))
        lookup = dict(zip(self.optics["rlnOpticsGroup"].astype(int), self.optics["rlnImagePixelSize"].astype(float)))
        try:
            return np.array([lookup[int(g)] for g in groups], dtype=float)
        except KeyError as exc:
            raise CryodenInputError(self.path, f"particle refers to optics group {exc.args[0]} that the optics table lacks") from exc

    def pixel_size(self) -> float:
        """The single pixel size of the table (Å); error if the optics groups disagree."""
        sizes = np.unique(self.pixel_sizes())
        if len(sizes) == 0:
            return float(self.optics["rlnImagePixelSize"].iloc[0])
        if len(sizes) > 1:
            raise CryodenInputError(self.path, f"particles have different pixel sizes {sizes.tolist()} Å; "
                                               "split the table by optics group first")
        return float(sizes[0])

    def with_particles(self, particles: pd.DataFrame) -> ParticleTable:
        """Same optics and path, new particle rows (e.g. a subset or added columns)."""
        return ParticleTable(particles=particles.reset_index(drop=True), optics=self.optics, path=self.path)


def make_optics_table(*, pixel_size: float, image_size: int, voltage: float = 300.0, cs: float = 2.7,
                      amplitude_contrast: float = 0.1, group_name: str = "opticsGroup1") -> pd.DataFrame:
    """A one-group RELION 3.1 optics table (pixel size in Å, voltage in kV, Cs in mm)."""
    if not pixel_size or pixel_size <= 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size}")
    return pd.DataFrame({
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": [group_name],
        "rlnImagePixelSize": [float(pixel_size)],
        "rlnImageSize": [int(image_size)],
        "rlnImageDimensionality": [2],
        "rlnVoltage": [float(voltage)],
        "rlnSphericalAberration": [float(cs)],
        "rlnAmplitudeContrast": [float(amplitude_contrast)],
    })


def _upgrade_relion30(path: Path, particles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build an optics table for a RELION 3.0 particle table and move origins to Å."""
    particles = particles.copy()
    if "rlnImagePixelSize" in particles:
        apix = float(particles["rlnImagePixelSize"].iloc[0])
    elif "rlnPixelSize" in particles:
        apix = float(particles["rlnPixelSize"].iloc[0])
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(particles.columns):
        # Detector pixel in µm, magnification dimensionless: Å = µm * 1e4 / mag.
        apix = float(particles["rlnDetectorPixelSize"].iloc[0]) * 1e4 / float(particles["rlnMagnification"].iloc[0])
    else:
        raise CryodenInputError(path, "no pixel size: the STAR file has no optics table and no "
                                      "rlnImagePixelSize / rlnDetectorPixelSize + rlnMagnification columns")
    if not np.isfinite(apix) or apix <= 0:
        raise CryodenInputError(path, f"pixel size from the STAR file is {apix} Å; it must be positive")
    optics = make_optics_table(
        pixel_size=apix,
        image_size=int(particles["rlnImageSize"].iloc[0]) if "rlnImageSize" in particles else 0,
        voltage=float(particles["rlnVoltage"].iloc[0]) if "rlnVoltage" in particles else 300.0,
        cs=float(particles["rlnSphericalAberration"].iloc[0]) if "rlnSphericalAberration" in particles else 2.7,
        amplitude_contrast=float(particles["rlnAmplitudeContrast"].iloc[0]) if "rlnAmplitudeContrast" in particles else 0.1,
    )
    for axis in ("X", "Y"):
        old = f"rlnOrigin{axis}"
        if old in particles and f"rlnOrigin{axis}Angst" not in particles:
            particles[f"rlnOrigin{axis}Angst"] = particles.pop(old).astype(float) * apix
    moved = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                         "rlnMagnification", "rlnDetectorPixelSize", "rlnPixelSize") if c in particles]
    particles = particles.drop(columns=moved)
    particles["rlnOpticsGroup"] = 1
    log.info("%s: RELION 3.0 table upgraded to 3.1 layout (pixel size %.4f Å)", path, apix)
    return particles, optics


def _box_size_of_first_stack(image_name: str, star_path: Path) -> int:
    """Box size (pixels) of the stack the first particle lives in; 0 when it cannot be found yet."""
    stacks, _ = parse_image_names([image_name], star_path=star_path)
    try:
        return int(read_mrc(resolve_stack_path(stacks[0], star_path), stack=True, warn_zero_voxel_size=False).data.shape[-1])
    except CryodenInputError:
        return 0  # reported with the full message when the images are read


def read_star(path: str | os.PathLike) -> ParticleTable:
    """Read a RELION particle STAR file (3.1+ or 3.0) into a :class:`ParticleTable`.

    Raises
    ------
    CryodenInputError
        If the file is missing, cannot be parsed or has no particle table.
    """
    path = Path(path)
    if not path.is_file():
        raise CryodenInputError(path, "file not found")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise CryodenInputError(path, f"not a readable STAR file ({exc})") from exc
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in tables:
        particles = tables["particles"]
    else:
        candidates = [v for k, v in tables.items() if k != "optics" and "rlnImageName" in v]
        if not candidates:
            raise CryodenInputError(path, "has no particle table (no data block with rlnImageName)")
        particles = candidates[0]
    particles = particles.reset_index(drop=True)
    optics = tables.get("optics")
    if optics is None:
        particles, optics = _upgrade_relion30(path, particles)
        if "rlnImageName" in particles and len(particles):
            optics.loc[:, "rlnImageSize"] = _box_size_of_first_stack(particles["rlnImageName"].iloc[0], path)
    else:
        optics = optics.reset_index(drop=True)
        if "rlnImagePixelSize" not in optics:
            raise CryodenInputError(path, "optics table has no rlnImagePixelSize")
        if (optics["rlnImagePixelSize"].astype(float) <= 0).any():
            raise CryodenInputError(path, "optics table has a zero or negative rlnImagePixelSize")
        if "rlnOpticsGroup" not in particles:
            particles = particles.assign(rlnOpticsGroup=int(optics["rlnOpticsGroup"].iloc[0]))
    return ParticleTable(particles=particles, optics=optics, path=path)


def write_star(path: str | os.PathLike, table: ParticleTable, *, inputs: Iterable[str | os.PathLike] = (),
               overwrite: bool = True) -> Path:
    """Write a RELION 3.1 STAR file (``data_optics`` + ``data_particles``) atomically."""
    particles = table.particles.reset_index(drop=True)
    if "rlnOpticsGroup" not in particles:
        particles = particles.assign(rlnOpticsGroup=int(table.optics["rlnOpticsGroup"].iloc[0]))
    with AtomicOutput(path, inputs=inputs, overwrite=overwrite) as tmp:
        starfile.write({"optics": table.optics, "particles": particles}, tmp)
    return Path(path)


def parse_image_names(names: Sequence[str], *, star_path: Path | None = None) -> tuple[list[str], np.ndarray]:
    """Split RELION image names ``NNNNNN@stack.mrcs`` into (stack names, 0-based indices)."""
    stacks, indices = [], np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        m = _IMAGE_NAME.match(str(name))
        if m is None:
            stacks.append(str(name).strip())  # a plain file name: a single image
            indices[i] = 0
            continue
        number = int(m.group(1))
        if number < 1:
            raise CryodenInputError(star_path, f"row {i}: image number {number} in '{name}' (RELION counts from 1)")
        stacks.append(m.group(2))
        indices[i] = number - 1
    return stacks, indices


def resolve_stack_path(stack: str, star_path: Path | None) -> Path:
    """Find a stack named in a STAR file: relative to the STAR file's folder first, then as given."""
    candidate = Path(stack)
    if not candidate.is_absolute() and star_path is not None:
        beside = star_path.parent / candidate
        if beside.exists():
            return beside
        # RELION writes names relative to its project folder; try the STAR's folder with the bare name.
        if (star_path.parent / candidate.name).exists():
            return star_path.parent / candidate.name
    if candidate.exists():
        return candidate
    return (star_path.parent / candidate) if (star_path is not None and not candidate.is_absolute()) else candidate


def read_particle_images(table: ParticleTable, *, rows: Sequence[int] | np.ndarray | None = None,
                         dtype=np.float32) -> np.ndarray:
    """Load the images of (some of) the particles of a table as one (n, y, x) array.

    Stacks are memory-mapped and only the requested images are read.

    Raises
    ------
    CryodenInputError
        Naming the STAR file and the stack when a stack is missing, unreadable, of another box size, or an
        image number is out of range.
    """
    if "rlnImageName" not in table.particles:
        raise CryodenInputError(table.path, "particle table has no rlnImageName column")
    sel = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
    names = table.particles["rlnImageName"].to_numpy()[sel]
    stacks, indices = parse_image_names(names, star_path=table.path)
    out: np.ndarray | None = None
    opened: dict[str, np.ndarray] = {}
    for stack in dict.fromkeys(stacks):
        stack_path = resolve_stack_path(stack, table.path)
        if not stack_path.exists():
            raise CryodenInputError(table.path, f"refers to stack '{stack}', which does not exist (looked for {stack_path})")
        try:
            mrc = read_mrc(stack_path, stack=True, warn_zero_voxel_size=False)
        except CryodenInputError as exc:
            raise CryodenInputError(table.path, f"stack {stack_path}: {exc.problem}") from exc
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
        opened[stack] = data
    for stack, data in opened.items():
        where = np.flatnonzero(np.array([s == stack for s in stacks]))
        idx = indices[where]
        if idx.size and idx.max() >= data.shape[0]:
            bad = int(idx.max()) + 1
            raise CryodenInputError(table.path, f"image {bad}@{stack} is out of range: the stack holds {data.shape[0]} images")
        if out is None:
            out = np.empty((len(sel),) + data.shape[1:], dtype=dtype)
        elif data.shape[1:] != out.shape[1:]:
            raise CryodenInputError(table.path, f"stack {stack} has images of {data.shape[1:]}, others have {out.shape[1:]}")
        # Read in sorted order: sequential access to the memory map is much faster than random.
        order = np.argsort(idx, kind="stable")
        out[where[order]] = data[idx[order]]
    if out is None:
        raise CryodenInputError(table.path, "particle table is empty")
    return out


def rebase_image_names(table: ParticleTable, out_star: str | os.PathLike) -> list[str]:
    """``rlnImageName`` values of ``table`` rewritten relative to the folder of ``out_star``, so a STAR file
    written elsewhere still points at the same stacks."""
    out_star = Path(out_star)

    names = table.particles["rlnImageName"].astype(str).to_numpy()
    stacks, indices = parse_image_names(names, star_path=table.path)
    cache: dict[str, str] = {}
    out = []
    base = table.path if table.path is not None and table.path.suffix.lower() in (".star", ".xmd") else None
    for stack, idx in zip(stacks, indices):
        if stack not in cache:
            path = resolve_stack_path(stack, base) if base is not None else (table.path.parent / stack)
            cache[stack] = os.path.relpath(Path(path).resolve(), out_star.resolve().parent)
        out.append(f"{idx + 1:06d}@{cache[stack]}")
    return out
