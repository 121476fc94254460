"""RELION STAR particle tables (3.1+ optics + particles), read and written through :mod:`starfile`.

RELION 3.0 files (one table, pixel size from magnification, origins in pixels) are upgraded on reading to
the 3.1 layout, so the rest of the code sees one form: an optics table with ``rlnImagePixelSize`` and a
particles table with ``rlnOpticsGroup`` and, where present, ``rlnOriginXAngst``/``rlnOriginYAngst``.
"""

from __future__ import annotations

import codecs
import linecache
import logging
import os
import re
import stat
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
#: Image numbers beyond this are refused outright (they would overflow the int64 index array).
_MAX_IMAGE_NUMBER = 2**62


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


def make_optics_table(*, pixel_size: float, image_size: int, voltage: float | None = None,
                      cs: float | None = None, amplitude_contrast: float | None = None,
                      group_name: str = "opticsGroup1") -> pd.DataFrame:
    """A one-group RELION 3.1 optics table (pixel size in Å, voltage in kV, Cs in mm).

    Microscope values that are not given are left out, never made up: a STAR file without ``rlnVoltage`` says
    plainly that the voltage is unknown, where an invented 300 kV would silently mislead a CTF refinement.
    """
    if not pixel_size or pixel_size <= 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size}")
    table = {
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": [group_name],
        "rlnImagePixelSize": [float(pixel_size)],
        "rlnImageSize": [int(image_size)],
        "rlnImageDimensionality": [2],
    }
    for column, value in (("rlnVoltage", voltage), ("rlnSphericalAberration", cs),
                          ("rlnAmplitudeContrast", amplitude_contrast)):
        if value is not None:
            table[column] = [float(value)]
    return pd.DataFrame(table)


#: Particle columns the package computes with: they must hold finite numbers (a NaN origin or angle would
#: flow into every output), and the integer ones whole numbers.
_NUMERIC_PARTICLE_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginX", "rlnOriginY", "rlnAnglePsi",
                             "rlnAngleRot", "rlnAngleTilt", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                             "rlnClassNumber", "rlnOpticsGroup")
_INTEGER_COLUMNS = ("rlnClassNumber", "rlnOpticsGroup", "rlnImageSize")
_TEXT_CHECK_CHUNK = 16 << 20


def _quote(text: str) -> str:
    """A value for a one-line message: quoted, with control characters escaped."""
    return f"'{text}'" if text.isprintable() else repr(text)


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _parse_problem(exc: BaseException) -> str:
    """What a starfile/pandas parse error means for the person who wrote the file, on one line."""
    text = _one_line(exc)
    m = re.search(r"Length mismatch: Expected axis has (\d+) elements, new values have (\d+) elements", text)
    if m:
        return (f"a loop_ table's first row has {m.group(1)} values for {m.group(2)} columns "
                "(missing values, or a value with spaces that is not quoted?)")
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if m:
        return (f"row {m.group(2)} of a loop_ table has {m.group(3)} values where the rows above have "
                f"{m.group(1)} (a value with spaces that is not quoted?)")
    if "cannot unpack non-iterable NoneType" in text:
        return "a data_ block holds neither a loop_ table nor _name value pairs"
    return text


def _exists(path: Path) -> bool:
    """``path.exists()`` that is False, not an exception, for a name the OS refuses (too long, NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _check_text_file(path: Path, what: str = "STAR") -> None:
    """CryodenInputError unless ``path`` is a regular file of UTF-8 text with Unix or Windows line ends.

    starfile reads through :mod:`linecache`, which turns undecodable bytes into an empty file and splits lines
    at a lone carriage return that its own line count does not see; both would silently lose particles.
    Read in chunks so a large table is never held twice.
    """
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise CryodenInputError(path, "file not found") from exc
    except (OSError, ValueError) as exc:
        raise CryodenInputError(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise CryodenInputError(path, f"is a folder, not a {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise CryodenInputError(path, "is not a regular file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    lone_cr = CryodenInputError(path, "has carriage returns without line feeds (old Mac line ends); convert it "
                                      "to Unix line ends first (e.g. `mac2unix`)")
    offset, carry = 0, b""
    try:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(_TEXT_CHECK_CHUNK)
                nul = chunk.find(b"\x00")
                if nul >= 0:
                    raise CryodenInputError(path, f"not a {what} file (it holds binary data: a NUL byte at offset "
                                                  f"{offset + nul})")
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as exc:
                    byte = chunk[exc.start:exc.start + 1].hex() or "??"
                    raise CryodenInputError(path, f"not a {what} file (not UTF-8 text: byte 0x{byte} near offset "
                                                  f"{offset + exc.start})") from exc
                # A CR at the end of a chunk is judged with the next chunk's first byte.
                text = carry + chunk
                carry = b"\r" if chunk and text.endswith(b"\r") else b""
                judged = text[:-1] if carry else text
                if judged.count(b"\r") != judged.count(b"\r\n"):
                    raise lone_cr
                if not chunk:
                    break
                offset += len(chunk)
    except OSError as exc:
        raise CryodenInputError(path, f"cannot be read ({exc.strerror or exc})") from exc


def _numeric_column(path: Path, table: pd.DataFrame, column: str, where: str) -> pd.Series:
    """``table[column]`` as numbers; CryodenInputError naming the first row that is not a finite number (or,
    for the integer columns, not a whole number)."""
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce")
    as_float = values.to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(as_float)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = raw.iloc[i]
        at = f"in row {i + 1} of {where}"
        if _missing(value) or (isinstance(value, str) and value.strip().lower() in ("nan", "")):
            problem = f"is missing or NaN {at}"
        elif isinstance(value, str) and np.isnan(as_float[i]):
            problem = f"is {_quote(value)} {at}, not a number"
        else:
            problem = f"is {value} {at}, not a finite number"
        raise CryodenInputError(path, f"{column} {problem}")
    if column in _INTEGER_COLUMNS:
        whole = (as_float == np.round(as_float)) & (np.abs(as_float) < 2**53)
        if not whole.all():
            i = int(np.flatnonzero(~whole)[0])
            raise CryodenInputError(path, f"{column} is {raw.iloc[i]} in row {i + 1} of {where}, not a whole number")
        return pd.Series(as_float.astype(np.int64), index=table.index, name=column)
    return values.astype(float) if values.dtype == object else values


def _refuse_duplicate_columns(path: Path, table: pd.DataFrame, where: str) -> None:
    duplicated = table.columns[table.columns.duplicated()]
    if len(duplicated):
        raise CryodenInputError(path, f"{where} lists the column {duplicated[0]} twice")


def _check_image_names(path: Path, names: pd.Series, where: str) -> None:
    """Every ``rlnImageName`` is ``N@stack`` with 1 <= N, or a plain file name (no ``@``): checked for the whole
    column at once, so a bad row is reported when the table is read, not when its images are."""
    numbers = names.str.extract(_IMAGE_NAME, expand=True)[0]
    malformed = (numbers.isna() & names.str.contains("@", regex=False)).to_numpy()
    value = pd.to_numeric(numbers, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    out_of_range = ~np.isnan(value) & ((value < 1) | (value > _MAX_IMAGE_NUMBER))
    bad = malformed | out_of_range
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        parse_image_names([names.iloc[i]], star_path=path, first_row=i + 1, where=f" of {where}")


def _checked_particles(path: Path, particles: pd.DataFrame, where: str) -> pd.DataFrame:
    """The particle table with its image names present and its numeric columns numbers (or an error)."""
    _refuse_duplicate_columns(path, particles, where)
    if len(particles) == 0:
        raise CryodenInputError(path, f"the particle table ({where}) has no rows")
    particles = particles.copy()
    if "rlnImageName" in particles:
        names = particles["rlnImageName"]
        empty = names.isna().to_numpy() | names.astype(str).str.strip().eq("").to_numpy()
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise CryodenInputError(path, f"row {i + 1} of {where} has no image name (rlnImageName is empty or NaN)")
        particles["rlnImageName"] = names = names.astype(str)
        _check_image_names(path, names, where)
    for column in _NUMERIC_PARTICLE_COLUMNS:
        if column in particles:
            particles[column] = _numeric_column(path, particles, column, where)
    return particles


def _checked_optics(path: Path, optics: pd.DataFrame) -> pd.DataFrame:
    """The optics table with unique whole group numbers and a finite positive pixel size per group."""
    where = "data_optics"
    _refuse_duplicate_columns(path, optics, where)
    if len(optics) == 0:
        raise CryodenInputError(path, "the optics table (data_optics) has no rows")
    if "rlnImagePixelSize" not in optics:
        raise CryodenInputError(path, "optics table has no rlnImagePixelSize")
    optics = optics.copy()
    if "rlnOpticsGroup" not in optics:
        if len(optics) > 1:
            raise CryodenInputError(path, f"the optics table has {len(optics)} rows but no rlnOpticsGroup column "
                                          "to tell them apart")
        optics.insert(0, "rlnOpticsGroup", 1)
    optics["rlnOpticsGroup"] = _numeric_column(path, optics, "rlnOpticsGroup", where)
    groups = optics["rlnOpticsGroup"]
    if groups.duplicated().any():
        raise CryodenInputError(path, f"optics group {int(groups[groups.duplicated()].iloc[0])} is listed twice in "
                                      "data_optics")
    raw = optics["rlnImagePixelSize"]
    pixel = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    for i, (group, value) in enumerate(zip(groups, pixel)):
        if not np.isfinite(value):
            shown = _quote(raw.iloc[i]) if isinstance(raw.iloc[i], str) else str(raw.iloc[i])
            raise CryodenInputError(path, f"rlnImagePixelSize is {shown} in optics group {group}; it must be a "
                                          "positive number of Å")
        if value <= 0:
            raise CryodenInputError(path, f"optics table has a zero or negative rlnImagePixelSize ({value:g} Å in "
                                          f"optics group {group})")
    optics["rlnImagePixelSize"] = pixel
    return optics


def _checked_optics_groups(path: Path, particles: pd.DataFrame, optics: pd.DataFrame, where: str) -> pd.DataFrame:
    """Particles whose optics group is one the optics table lists (the first group when they name none)."""
    if "rlnOpticsGroup" not in particles:
        return particles.assign(rlnOpticsGroup=int(optics["rlnOpticsGroup"].iloc[0]))
    known = set(int(g) for g in optics["rlnOpticsGroup"])
    missing = ~particles["rlnOpticsGroup"].isin(known).to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        listed = ", ".join(str(g) for g in sorted(known)[:10])
        raise CryodenInputError(path, f"row {i + 1} of {where} refers to optics group "
                                      f"{int(particles['rlnOpticsGroup'].iloc[i])}, which data_optics does not "
                                      f"list (it lists {listed})")
    return particles


def _first_number(path: Path, particles: pd.DataFrame, column: str, rows, default: float | None,
                  where: str) -> float | None:
    if column not in particles:
        return default
    return float(_numeric_column(path, particles.iloc[rows[:1]], column, where).iloc[0])


def _upgrade_relion30(path: Path, particles: pd.DataFrame, where: str = "the particle table"
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build an optics table for a RELION 3.0 particle table and move origins to Å.

    The pixel size of each particle comes from ``rlnImagePixelSize``, ``rlnPixelSize`` or
    ``rlnDetectorPixelSize`` (µm) × 10⁴ / ``rlnMagnification``; particles with different pixel sizes get
    different optics groups. Every row must give a finite positive pixel size.
    """
    particles = particles.copy()
    if len(particles) == 0:
        raise CryodenInputError(path, f"the particle table ({where}) has no rows")
    columns = set(particles.columns)
    if "rlnImagePixelSize" in columns:
        apix = _numeric_column(path, particles, "rlnImagePixelSize", where).to_numpy(dtype=float)
    elif "rlnPixelSize" in columns:
        apix = _numeric_column(path, particles, "rlnPixelSize", where).to_numpy(dtype=float)
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= columns:
        detector = _numeric_column(path, particles, "rlnDetectorPixelSize", where).to_numpy(dtype=float)
        magnification = _numeric_column(path, particles, "rlnMagnification", where).to_numpy(dtype=float)
        if (magnification == 0).any():
            i = int(np.flatnonzero(magnification == 0)[0])
            raise CryodenInputError(path, f"rlnMagnification is 0 in row {i + 1} of {where}, so the pixel size "
                                          "(rlnDetectorPixelSize × 10⁴ / rlnMagnification) is undefined")
        # Detector pixel in µm, magnification dimensionless: Å = µm * 1e4 / mag.
        with np.errstate(over="ignore"):
            apix = detector * 1e4 / magnification
    else:
        raise CryodenInputError(path, "no pixel size: the STAR file has no optics table and no "
                                      "rlnImagePixelSize / rlnDetectorPixelSize + rlnMagnification columns")
    bad = ~(np.isfinite(apix) & (apix > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CryodenInputError(path, f"pixel size from the STAR file is {apix[i]:g} Å in row {i + 1} of {where}; "
                                      "it must be positive")
    # One optics group per distinct pixel size (to about 1 ppm), in order of first appearance.
    keys = np.round(np.log(apix) * 1e6).astype(np.int64)
    _, first_rows, group_of_row = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first_rows), dtype=np.int64)
    rank[np.argsort(first_rows)] = np.arange(len(first_rows))
    group_of_row = rank[group_of_row.ravel()]
    image_size = 0
    if "rlnImageSize" in particles:
        image_size = int(_numeric_column(path, particles.iloc[:1], "rlnImageSize", where).iloc[0])
    optics_rows = []
    for group, first in enumerate(np.sort(first_rows), start=1):
        row = [int(first)]
        optics_rows.append(make_optics_table(
            pixel_size=float(apix[first]),
            image_size=image_size,
            voltage=_first_number(path, particles, "rlnVoltage", row, None, where),
            cs=_first_number(path, particles, "rlnSphericalAberration", row, None, where),
            amplitude_contrast=_first_number(path, particles, "rlnAmplitudeContrast", row, None, where),
            group_name=f"opticsGroup{group}",
        ).assign(rlnOpticsGroup=group))
    optics = pd.concat(optics_rows, ignore_index=True)
    for axis in ("X", "Y"):
        old = f"rlnOrigin{axis}"
        if old in particles and f"rlnOrigin{axis}Angst" not in particles:
            # Origins were in pixels; each particle's own pixel size makes them Å.
            particles[f"rlnOrigin{axis}Angst"] = particles.pop(old).to_numpy(dtype=float) * apix
    moved = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                         "rlnMagnification", "rlnDetectorPixelSize", "rlnPixelSize") if c in particles]
    particles = particles.drop(columns=moved)
    particles["rlnOpticsGroup"] = group_of_row + 1
    log.info("%s: RELION 3.0 table upgraded to 3.1 layout (pixel size %s Å)", path,
             ", ".join(f"{p:.4f}" for p in optics["rlnImagePixelSize"]))
    return particles, optics


def _box_size_of_first_stack(image_name: str, star_path: Path) -> int:
    """Box size (pixels) of the stack the first particle lives in; 0 when it cannot be found yet."""
    stacks, _ = parse_image_names([image_name], star_path=star_path)
    try:
        mrc = read_mrc(resolve_stack_path(stacks[0], star_path), stack=True, warn_zero_voxel_size=False)
        return int(mrc.data.shape[-1])
    except CryodenInputError:
        return 0  # reported with the full message when the images are read


def read_star(path: str | os.PathLike) -> ParticleTable:
    """Read a RELION particle STAR file (3.1+ or 3.0) into a :class:`ParticleTable`.

    A RELION 3.0 table (no ``data_optics``) is upgraded to the 3.1 layout. The tables are checked as they
    are read, so that what is returned can be computed with: at least one particle, image names present,
    origins/angles/defocus finite numbers, optics groups unique with a finite positive
    ``rlnImagePixelSize``, and every particle in an optics group the optics table lists.

    Raises
    ------
    CryodenInputError
        Naming the file: missing, binary or not UTF-8, not parsable as STAR, no particle table, no rows,
        a duplicated column or optics group, a bad pixel size, a non-numeric value in a numeric column,
        an empty image name, a particle in a missing optics group.
    """
    path = Path(path)
    _check_text_file(path)
    # starfile reads through linecache, which keeps a file's lines when parsing fails: clear it before (a
    # file rewritten under the same name must not be served from an old copy) and after (memory).
    linecache.clearcache()
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile and pandas raise many types on malformed text
        raise CryodenInputError(path, f"not a readable STAR file ({_parse_problem(exc)})") from exc
    finally:
        linecache.clearcache()
    tables: dict[str, pd.DataFrame] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            tables[name] = block
        elif isinstance(block, dict) and block:  # a one-row block written as "_name value" pairs
            tables[name] = pd.DataFrame([block])
    if "particles" in tables:
        name = "particles"
    else:
        candidates = [k for k, v in tables.items() if k != "optics" and "rlnImageName" in v.columns]
        if not candidates:
            raise CryodenInputError(path, "has no particle table (no data block with rlnImageName)")
        name = candidates[0]
    where = f"data_{name}"
    particles = _checked_particles(path, tables[name].reset_index(drop=True), where)
    optics = tables.get("optics")
    if optics is None:
        particles, optics = _upgrade_relion30(path, particles, where)
        if "rlnImageName" in particles:
            optics.loc[:, "rlnImageSize"] = _box_size_of_first_stack(particles["rlnImageName"].iloc[0], path)
    else:
        optics = _checked_optics(path, optics.reset_index(drop=True))
        particles = _checked_optics_groups(path, particles, optics, where)
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


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def parse_image_names(names: Sequence[str], *, star_path: Path | None = None, first_row: int = 1,
                      where: str = "") -> tuple[list[str], np.ndarray]:
    """Split RELION image names ``NNNNNN@stack.mrcs`` into (stack names, 0-based indices).

    A name without ``@`` is a single-image file (index 0).

    Raises
    ------
    CryodenInputError
        Naming ``star_path`` and the row (counted from ``first_row``; ``where`` names the table, e.g.
        ``" of data_particles"``): an empty or NaN name, a name with ``@`` that is not ``N@stack``, an image
        number below 1 (RELION counts from 1) or beyond any stack.
    """
    stacks, indices = [], np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        text = "" if _missing(name) else str(name)
        row = f"row {i + first_row}{where}"
        if not text.strip():
            raise CryodenInputError(star_path, f"{row}: empty image name (rlnImageName)")
        m = _IMAGE_NAME.match(text)
        if m is None:
            if "@" in text:
                raise CryodenInputError(star_path, f"{row}: image name {_quote(text)} is not of the form N@stack "
                                                   "(an image number counting from 1, '@', a file)")
            stacks.append(text.strip())  # a plain file name: a single image
            indices[i] = 0
            continue
        number = int(m.group(1))
        if number < 1:
            raise CryodenInputError(star_path, f"{row}: image number {number} in {_quote(text)} (RELION counts from 1)")
        if number > _MAX_IMAGE_NUMBER:
            raise CryodenInputError(star_path, f"{row}: image number {number} in {_quote(text)} is beyond any stack")
        stacks.append(m.group(2))
        indices[i] = number - 1
    return stacks, indices


def resolve_stack_path(stack: str, star_path: Path | None) -> Path:
    """Find a stack named in a STAR file: relative to the STAR file's folder first, then as given.

    Returns the path beside the STAR file when nothing exists (so that the error names where it looked).
    """
    candidate = Path(stack)
    if not candidate.is_absolute() and star_path is not None:
        beside = star_path.parent / candidate
        if _exists(beside):
            return beside
        # RELION writes names relative to its project folder; try the STAR's folder with the bare name.
        if candidate.name and _exists(star_path.parent / candidate.name):
            return star_path.parent / candidate.name
    if _exists(candidate):
        return candidate
    return (star_path.parent / candidate) if (star_path is not None and not candidate.is_absolute()) else candidate


def read_particle_images(table: ParticleTable, *, rows: Sequence[int] | np.ndarray | None = None,
                         dtype=np.float32) -> np.ndarray:
    """Load the images of (some of) the particles of a table as one (n, y, x) array.

    Stacks are memory-mapped (compressed ones decompressed) and only the requested images are read.

    Raises
    ------
    CryodenInputError
        Naming the STAR file and the stack when a stack is missing, unreadable, not 2D images, of another
        box size, or an image number is out of range; or when the table is empty or its image names are
        malformed.
    """
    if "rlnImageName" not in table.particles:
        raise CryodenInputError(table.path, "particle table has no rlnImageName column")
    sel = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
    names = table.particles["rlnImageName"].to_numpy()[sel]
    stacks, indices = parse_image_names(names, star_path=table.path)
    if not stacks:
        raise CryodenInputError(table.path, "particle table is empty")
    # Group the rows by stack in one pass (a table can point at tens of thousands of micrograph stacks).
    codes, unique_stacks = pd.factorize(np.asarray(stacks, dtype=object))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(unique_stacks) + 1))
    opened: list[tuple[str, Path, np.ndarray]] = []
    for stack in unique_stacks:
        stack_path = resolve_stack_path(stack, table.path)
        if not _exists(stack_path):
            raise CryodenInputError(table.path, f"refers to stack {_quote(stack)}, which does not exist "
                                                f"(looked for {stack_path})")
        try:
            mrc = read_mrc(stack_path, stack=True, warn_zero_voxel_size=False)
        except CryodenInputError as exc:
            raise CryodenInputError(table.path, f"stack {stack_path}: {exc.problem}") from exc
        if mrc.data.ndim not in (2, 3):
            raise CryodenInputError(table.path, f"stack {stack_path}: holds {mrc.data.ndim}D data of shape "
                                                f"{mrc.data.shape}, not 2D images")
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
        opened.append((stack, stack_path, data))
    out: np.ndarray | None = None
    for k, (stack, stack_path, data) in enumerate(opened):
        where = order[bounds[k]:bounds[k + 1]]
        idx = indices[where]
        if idx.size and idx.max() >= data.shape[0]:
            bad = int(idx.max()) + 1
            raise CryodenInputError(table.path, f"image {bad}@{stack} is out of range: the stack holds "
                                                f"{data.shape[0]} images")
        if out is None:
            shape = (len(sel),) + data.shape[1:]
            try:
                out = np.empty(shape, dtype=dtype)
            except MemoryError as exc:
                raise CryodenInputError(table.path, f"{len(sel)} images of {data.shape[1:]} do not fit in memory; "
                                                    "read them in batches (rows=...)") from exc
        elif data.shape[1:] != out.shape[1:]:
            raise CryodenInputError(table.path, f"stack {stack_path} has images of {data.shape[1:]}, others have "
                                                f"{out.shape[1:]}; split the table by box size")
        # Read in sorted order: sequential access to the memory map is much faster than random.
        sort = np.argsort(idx, kind="stable")
        out[where[sort]] = data[idx[sort]]
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
