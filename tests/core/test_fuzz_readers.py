"""Fuzzing the readers: mangled MRC headers, truncated and corrupt compressed maps, random STAR tables and text.

Every input must either read or raise :class:`~napari_cryoden.errors.CryodenInputError` with a one-line
message that names the file — never another exception, never a hang. The strategies and checks here are
also what ``scripts/fuzz_readers.py`` runs for a longer campaign (``--cases N``), so keep them importable
without pytest fixtures.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import math
import signal
import struct
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mrcfile.dtypes import HEADER_DTYPE

from napari_cryoden.errors import CryodenInputError
from napari_cryoden.io.mrc import read_mrc
from napari_cryoden.io.star import read_particle_images, read_star
from napari_cryoden.io.xmd import read_xmd

# --------------------------------------------------------------------------------------- MRC cases
#: Byte offset of every int32 / float32 header field we mutate (from mrcfile's header layout).
INT_FIELDS = {name: HEADER_DTYPE.fields[name][1] for name in
              ("nx", "ny", "nz", "mode", "mx", "my", "mz", "ispg", "nsymbt", "nlabl", "nversion", "mapc")}
FLOAT_FIELDS = {f"cella.{a}": HEADER_DTYPE.fields["cella"][1] + 4 * i for i, a in enumerate("xyz")}
FLOAT_FIELDS.update({f"origin.{a}": HEADER_DTYPE.fields["origin"][1] + 4 * i for i, a in enumerate("xyz")})
FLOAT_FIELDS.update({name: HEADER_DTYPE.fields[name][1] for name in ("dmin", "dmax", "dmean", "rms")})

#: File names: every compression suffix, also on files that are not (or differently) compressed.
MRC_NAMES = ("a.mrc", "a.mrcs", "a.map", "a.st", "a.MRC", "a.map.gz", "a.mrcs.gz", "a.mrc.bz2", "a.MAP.GZ",
             "a.mrcs.bz2", "a")

int32_values = st.one_of(
    st.sampled_from([0, 1, -1, 2, 3, 4, 6, 12, 101, 401, 630, 2**31 - 1, -(2**31), 1 << 20, 65536, 1024]),
    st.integers(-(2**31), 2**31 - 1),
)
float32_values = st.one_of(
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, -1.0, 1e-30, 3e38, 1.5]),
    st.floats(width=32),
)


@lru_cache(maxsize=None)
def base_mrc(kind: str) -> bytes:
    """The bytes of a small valid MRC file of one kind (built once per process)."""
    rng = np.random.default_rng(0)
    shapes = {"stack": (3, 6, 5), "volume": (4, 5, 6), "image": (7, 9), "int16": (2, 4, 4), "int8": (1, 2, 2),
              "ext": (2, 4, 4)}
    dtype = {"int16": np.int16, "int8": np.int8}.get(kind, np.float32)
    data = (rng.normal(size=shapes[kind]) * 20).astype(dtype)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "base.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)
            if kind == "stack":
                mrc.set_image_stack()
            if kind == "ext":
                mrc.set_extended_header(np.zeros(160, dtype="V1"))
            mrc.voxel_size = 1.5
            mrc.add_label("fuzz base")
        return path.read_bytes()


#: Dimensions whose products overflow int32/int64 (2**21 * 2**21 * 2**22 float32 wraps to 0 bytes) or
#: imply petabytes, next to small ones that may or may not match the data.
dimension_values = st.one_of(st.sampled_from([1, 2, 3, 5, 8, 1 << 16, 1 << 20, 1 << 21, 1 << 22, 2**31 - 1]),
                             st.integers(1, 40))

#: (nx, ny, nz) whose product wraps around in int64: to 4 (an int8 base of 4 values then "matches" its file
#: size), to 0, and plain petabytes.
OVERFLOWING_DIMS = ((48448661, 494770, 769546), (1 << 21, 1 << 21, 1 << 22), (100_000, 100_000, 100_000))

mrc_cases = st.fixed_dictionaries({
    "base": st.sampled_from(["stack", "volume", "image", "int16", "int8", "ext"]),
    "dims": st.one_of(st.none(), st.none(), st.sampled_from(OVERFLOWING_DIMS),
                      st.tuples(dimension_values, dimension_values, dimension_values)),
    "ints": st.lists(st.tuples(st.sampled_from(sorted(INT_FIELDS)), int32_values), max_size=4),
    "floats": st.lists(st.tuples(st.sampled_from(sorted(FLOAT_FIELDS)), float32_values), max_size=3),
    "bytes": st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=6),
    "compress": st.sampled_from([None, None, "gzip", "bzip2"]),
    # After compression: flip bytes of / truncate / extend the file as it lies on disk.
    "raw_bytes": st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=2),
    "cut": st.one_of(st.none(), st.none(), st.floats(0, 1)),
    "append": st.one_of(st.just(b""), st.just(b""), st.binary(max_size=8)),
    "name": st.sampled_from(MRC_NAMES),
})


def build_mrc_case(case: dict) -> bytes:
    """The file content a case describes: header mutations, then compression, then raw damage."""
    raw = bytearray(base_mrc(case["base"]))
    if case["dims"] is not None:
        struct.pack_into("<3i", raw, INT_FIELDS["nx"], *case["dims"])
    for field, value in case["ints"]:
        struct.pack_into("<i", raw, INT_FIELDS[field], value)
    for field, value in case["floats"]:
        struct.pack_into("<f", raw, FLOAT_FIELDS[field], value)
    for offset, value in case["bytes"]:
        raw[offset] = value
    blob = bytes(raw)
    if case["compress"] == "gzip":
        blob = gzip.compress(blob, mtime=0)
    elif case["compress"] == "bzip2":
        blob = bz2.compress(blob)
    blob = bytearray(blob)
    for where, value in case["raw_bytes"]:
        if blob:
            blob[min(len(blob) - 1, int(where * len(blob)))] = value
    if case["cut"] is not None:
        blob = blob[: int(case["cut"] * len(blob))]
    return bytes(blob) + case["append"]


# -------------------------------------------------------------------------------------- STAR cases
KNOWN_COLUMNS = ("rlnImageName", "rlnOpticsGroup", "rlnImagePixelSize", "rlnPixelSize", "rlnMagnification",
                 "rlnDetectorPixelSize", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst",
                 "rlnAnglePsi", "rlnAngleRot", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                 "rlnImageSize", "rlnClassNumber", "rlnDefocusU", "rlnOpticsGroupName")
#: Cell values that hit the readers' special cases: image names in and out of range, malformed names,
#: non-finite and non-numeric numbers, quotes and STAR keywords in a value.
SPECIAL_VALUES = ("000001@parts.mrcs", "3@parts.mrcs", "000005@parts.mrcs", "000009@parts.mrcs", "0@parts.mrcs",
                  "1@missing.mrcs", "1@other.mrcs", "1@parts.mrcs.gz", "@parts.mrcs", "x@parts.mrcs", "1@",
                  "parts.mrcs", "-2@parts.mrcs", "99999999999999999999@parts.mrcs", "1.5@parts.mrcs", "nan",
                  "NaN", "inf", "-inf", "0", "-1", "1", "2", "1e400", "''", '""', "'a b'", "#", "_x", "data_",
                  "loop_", "abc", "1,5", "\x00", "<NA>", "None")
cell_values = st.one_of(
    st.sampled_from(SPECIAL_VALUES),
    st.integers(-3, 3).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85"
                                                                               "\u2028\u2029"),
            min_size=1, max_size=6),
)
column_names = st.one_of(st.sampled_from(KNOWN_COLUMNS), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}",
                                                                        fullmatch=True))


@st.composite
def star_tables(draw, first=None):
    """One ``loop_`` table: random columns (sometimes duplicated) and rows of random length."""
    columns = list(first or []) + draw(st.lists(column_names, max_size=5))
    if not columns:
        columns = [draw(column_names)]
    n = len(columns)
    rows = draw(st.lists(st.lists(cell_values, min_size=max(0, n - 1), max_size=n + 1), max_size=4))
    return columns, rows


def _loop(name: str, columns, rows) -> str:
    lines = [f"data_{name}", "", "loop_"] + [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    lines += [" ".join(row) for row in rows]
    return "\n".join(lines) + "\n"


VALID_STAR_31 = (
    "# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
    "_rlnImagePixelSize #3\n_rlnImageSize #4\n_rlnVoltage #5\n1 opticsGroup1 1.500000 8 300.0\n\n"
    "# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnAnglePsi #2\n_rlnOriginXAngst #3\n"
    "_rlnOriginYAngst #4\n_rlnOpticsGroup #5\n"
    + "".join(f"{i + 1:06d}@parts.mrcs {10.0 * i:.1f} 0.5 -0.5 1\n" for i in range(5))
)
VALID_STAR_30 = (
    "data_\n\nloop_\n_rlnImageName #1\n_rlnMagnification #2\n_rlnDetectorPixelSize #3\n_rlnOriginX #4\n"
    "_rlnOriginY #5\n_rlnVoltage #6\n"
    + "".join(f"{i + 1:06d}@parts.mrcs 50000.0 7.5 0.5 -1.0 300\n" for i in range(5))
)

line_edits = st.lists(st.one_of(
    st.tuples(st.just("delete"), st.floats(0, 1)),
    st.tuples(st.just("duplicate"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.one_of(cell_values, st.sampled_from(
        ["data_particles", "data_optics", "loop_", "_rlnImageName #1", "_rlnOpticsGroup #9", ""]))),
    st.tuples(st.just("token"), st.floats(0, 1), st.integers(0, 5), cell_values),
    st.tuples(st.just("drop_token"), st.floats(0, 1), st.integers(0, 5)),
), max_size=4)


def _edit_lines(text: str, edits) -> str:
    lines = text.split("\n")
    for edit in edits:
        i = min(len(lines) - 1, int(edit[1] * len(lines)))
        if edit[0] == "delete":
            del lines[i]
        elif edit[0] == "duplicate":
            lines.insert(i, lines[i])
        elif edit[0] == "insert":
            lines.insert(i, edit[2])
        else:
            tokens = lines[i].split()
            if tokens:
                j = edit[2] % len(tokens)
                if edit[0] == "token":
                    tokens[j] = edit[3]
                else:
                    del tokens[j]
                lines[i] = " ".join(tokens)
        if not lines:
            lines = [""]
    return "\n".join(lines)


star_cases = st.one_of(
    # A valid RELION 3.1 or 3.0 file with a few lines edited, then maybe truncated.
    st.fixed_dictionaries({"kind": st.just("edited"), "template": st.sampled_from(["31", "30"]),
                           "edits": line_edits, "cut": st.one_of(st.none(), st.floats(0, 1))}),
    # Random optics and particle tables.
    st.fixed_dictionaries({
        "kind": st.just("tables"),
        "optics": st.one_of(st.none(), star_tables(first=["rlnOpticsGroup", "rlnImagePixelSize"])),
        "particles": st.one_of(st.none(), star_tables(first=["rlnImageName"]), star_tables()),
        "particles_name": st.sampled_from(["particles", "particles", "", "images", "optics"]),
        "cut": st.one_of(st.none(), st.floats(0, 1)),
    }),
    # Text or bytes that need not look like STAR at all.
    st.fixed_dictionaries({"kind": st.just("text"), "text": st.one_of(
        st.text(max_size=200), st.binary(max_size=200),
        st.lists(st.one_of(cell_values, st.sampled_from(["data_", "loop_", "_rlnImageName", "data_optics",
                                                         "_rlnImagePixelSize 1.0", "\n"])),
                 max_size=30).map(" ".join))}),
)


def build_star_case(case: dict) -> bytes:
    """The file content a STAR case describes."""
    if case["kind"] == "text":
        text = case["text"]
        return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if case["kind"] == "edited":
        text = _edit_lines(VALID_STAR_31 if case["template"] == "31" else VALID_STAR_30, case["edits"])
    else:
        parts = []
        if case["optics"] is not None:
            parts.append(_loop("optics", *case["optics"]))
        if case["particles"] is not None:
            parts.append(_loop(case["particles_name"], *case["particles"]))
        text = "\n".join(parts)
    blob = text.encode("utf-8", "surrogatepass")
    if case["cut"] is not None:
        blob = blob[: int(case["cut"] * len(blob))]
    return blob


def write_particle_stack(folder: Path) -> None:
    """``parts.mrcs`` (5 images of 8x8, 1.5 Å) and ``other.mrcs`` (2 images of 6x6) beside the STAR files."""
    rng = np.random.default_rng(1)
    for name, shape in (("parts.mrcs", (5, 8, 8)), ("other.mrcs", (2, 6, 6))):
        if not (folder / name).exists():
            with mrcfile.new(folder / name) as mrc:
                mrc.set_data(rng.normal(size=shape).astype(np.float32))
                mrc.set_image_stack()
                mrc.voxel_size = 1.5
    gz = folder / "parts.mrcs.gz"
    if not gz.exists():
        gz.write_bytes(gzip.compress((folder / "parts.mrcs").read_bytes(), mtime=0))


# -------------------------------------------------------------------------------------------- checks
class Hang(Exception):
    """A reader ran past the time limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`Hang` in the main thread after ``seconds`` (no-op where SIGALRM is unavailable)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_message(exc: CryodenInputError, path: Path) -> None:
    text = str(exc)
    assert "\n" not in text, f"multi-line message: {text!r}"
    assert str(path) in text, f"message does not name {path}: {text!r}"


def cli_info(path: Path) -> tuple[int, str]:
    """``cryoden -q info PATH`` in-process: (status, stderr)."""
    from napari_cryoden.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["-q", "info", str(path)])
    return rc, err.getvalue()


def check_mrc(path: Path, *, cli: bool = True) -> str:
    """Read ``path`` every way the package does; returns "ok" or the error message. Raises on a crash."""
    outcome = "ok"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kwargs in ({}, {"mmap": False}, {"stack": True, "warn_zero_voxel_size": False}):
            try:
                m = read_mrc(path, **kwargs)
            except CryodenInputError as exc:
                _check_message(exc, path)
                outcome = exc.problem
                continue
            np.asarray(m.data).sum()  # every byte of the map is really there (no SIGBUS, no short read)
            assert m.data.ndim in (2, 3, 4)
            assert len(m.voxel_size) == min(m.data.ndim, 3)
            assert all(math.isfinite(v) and v > 0 for v in m.voxel_size), m.voxel_size
        if cli:
            rc, err = cli_info(path)
            assert rc in (0, 2), (rc, err)
            if rc == 2:
                assert err.startswith(f"cryoden: error: {path}: ") and err.count("\n") == 1, err
    return outcome


def check_star(path: Path, *, cli: bool = True) -> str:
    """Read a STAR file (and its images) every way the package does; "ok" or the error message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = "ok"
        try:
            table = read_star(path)
        except CryodenInputError as exc:
            _check_message(exc, path)
            outcome = exc.problem
        else:
            # What a successful read promises: a pixel size per particle, finite and positive.
            sizes = table.pixel_sizes()
            assert len(sizes) == len(table) > 0
            assert np.isfinite(sizes).all() and (sizes > 0).all(), sizes
            try:
                table.pixel_size()
                images = read_particle_images(table)
                assert images.shape[0] == len(table) and images.ndim == 3
            except CryodenInputError as exc:
                _check_message(exc, path)
                outcome = exc.problem
        if cli:
            rc, err = cli_info(path)
            assert rc in (0, 2), (rc, err)
            if rc == 2:
                assert err.startswith("cryoden: error: ") and err.count("\n") == 1, err
    return outcome


def check_xmd(path: Path) -> str:
    """Read an Xmipp metadata file and its images; "ok" or the error message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = read_xmd(path)
            read_particle_images(table)
        except CryodenInputError as exc:
            _check_message(exc, path)
            return exc.problem
    return "ok"


# ----------------------------------------------------------------------------------------- the tests
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_counter = iter(range(10**9))


@FUZZ
@given(case=mrc_cases)
def test_fuzzed_mrc_reads_or_raises_input_error(tmp_path, case):
    path = tmp_path / f"{next(_counter)}-{case['name']}"
    path.write_bytes(build_mrc_case(case))
    with time_limit(20):
        check_mrc(path, cli=False)


@settings(FUZZ, max_examples=12)
@given(case=mrc_cases)
def test_fuzzed_mrc_through_cryoden_info(tmp_path, case):
    path = tmp_path / f"{next(_counter)}-{case['name']}"
    path.write_bytes(build_mrc_case(case))
    with time_limit(20):
        check_mrc(path, cli=True)


@FUZZ
@given(case=star_cases)
def test_fuzzed_star_reads_or_raises_input_error(tmp_path, case):
    write_particle_stack(tmp_path)
    path = tmp_path / f"{next(_counter)}.star"
    blob = build_star_case(case)
    path.write_bytes(blob)
    with time_limit(20):
        check_star(path, cli=False)
    xmd = path.with_suffix(".xmd")
    xmd.write_bytes(blob)
    with time_limit(20):
        check_xmd(xmd)


@settings(FUZZ, max_examples=12)
@given(case=star_cases)
def test_fuzzed_star_through_cryoden_info(tmp_path, case):
    write_particle_stack(tmp_path)
    path = tmp_path / f"{next(_counter)}.star"
    path.write_bytes(build_star_case(case))
    with time_limit(20):
        check_star(path, cli=True)


@pytest.mark.parametrize("kind", ["stack", "volume", "image", "int16", "int8", "ext"])
def test_unmutated_bases_read(tmp_path, kind):
    """The fuzz bases themselves are valid, plain and compressed, so the mutations start from a good file."""
    for name, blob in (("b.mrc", base_mrc(kind)), ("b.mrc.gz", gzip.compress(base_mrc(kind))),
                       ("b.mrc.bz2", bz2.compress(base_mrc(kind)))):
        (tmp_path / name).write_bytes(blob)
        assert check_mrc(tmp_path / name) == "ok"


@pytest.mark.parametrize("template", [VALID_STAR_31, VALID_STAR_30])
def test_unmutated_star_templates_read(tmp_path, template):
    write_particle_stack(tmp_path)
    (tmp_path / "t.star").write_text(template)
    assert check_star(tmp_path / "t.star") == "ok"
