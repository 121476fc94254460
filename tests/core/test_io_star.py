"""RELION STAR tables: 3.1 round trips through starfile, 3.0 upgrade, image names, bad references."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryoden.errors import CryodenInputError
from napari_cryoden.io.mrc import write_mrc
from napari_cryoden.io.star import (
    ParticleTable,
    make_optics_table,
    parse_image_names,
    read_particle_images,
    read_star,
    write_star,
)


def _stack_and_table(tmp_path, rng, n=5, box=8, pixel=1.5, sub=""):
    folder = tmp_path / sub if sub else tmp_path
    folder.mkdir(exist_ok=True)
    stack = rng.normal(size=(n, box, box)).astype(np.float32)
    write_mrc(folder / "parts.mrcs", stack, voxel_size=pixel, is_stack=True)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{sub + '/' if sub else ''}parts.mrcs" for i in range(n)],
        "rlnAnglePsi": rng.uniform(0, 360, n),
        "rlnOriginXAngst": rng.uniform(-3, 3, n),
        "rlnOriginYAngst": rng.uniform(-3, 3, n),
        "rlnClassNumber": rng.integers(1, 4, n),
    })
    return stack, ParticleTable(particles=particles, optics=make_optics_table(pixel_size=pixel, image_size=box))


def test_round_trip_through_starfile(tmp_path, rng):
    stack, table = _stack_and_table(tmp_path, rng)
    path = write_star(tmp_path / "p.star", table)
    raw = starfile.read(path, always_dict=True)
    assert set(raw) == {"optics", "particles"}  # RELION 3.1 layout
    back = read_star(path)
    assert back.pixel_size() == pytest.approx(1.5)
    for col in ("rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(back.particles[col], table.particles[col], atol=1e-5)
    np.testing.assert_array_equal(back.particles["rlnClassNumber"], table.particles["rlnClassNumber"])
    np.testing.assert_array_equal(read_particle_images(back), stack)


def test_image_names_resolve_relative_to_the_star_file(tmp_path, rng, monkeypatch):
    stack, table = _stack_and_table(tmp_path, rng, sub="Extract")
    path = write_star(tmp_path / "p.star", table)
    monkeypatch.chdir("/")
    np.testing.assert_array_equal(read_particle_images(read_star(path), rows=[3, 1]), stack[[3, 1]])


def test_parse_image_names():
    stacks, idx = parse_image_names(["000001@a.mrcs", "12@b/c.mrcs", "x.mrc"])
    assert stacks == ["a.mrcs", "b/c.mrcs", "x.mrc"]
    assert idx.tolist() == [0, 11, 0]


def test_missing_stack_is_named(tmp_path, rng):
    _, table = _stack_and_table(tmp_path, rng)
    path = write_star(tmp_path / "p.star", table)
    (tmp_path / "parts.mrcs").unlink()
    with pytest.raises(CryodenInputError, match=r"p\.star: refers to stack 'parts\.mrcs', which does not exist"):
        read_particle_images(read_star(path))


def test_out_of_range_index_is_named(tmp_path, rng):
    _, table = _stack_and_table(tmp_path, rng, n=3)
    parts = table.particles.copy()
    parts.loc[2, "rlnImageName"] = "000009@parts.mrcs"
    path = write_star(tmp_path / "p.star", table.with_particles(parts))
    with pytest.raises(CryodenInputError, match=r"image 9@parts\.mrcs is out of range: the stack holds 3"):
        read_particle_images(read_star(path))


def test_not_a_star_file(tmp_path):
    (tmp_path / "x.star").write_text("data_\nloop_\n_rlnFoo #1\n")
    with pytest.raises(CryodenInputError, match="no particle table"):
        read_star(tmp_path / "x.star")
    with pytest.raises(CryodenInputError, match="file not found"):
        read_star(tmp_path / "missing.star")


def test_zero_pixel_size_in_optics_is_an_error(tmp_path, rng):
    _, table = _stack_and_table(tmp_path, rng)
    optics = table.optics.copy()
    optics["rlnImagePixelSize"] = 0.0
    starfile.write({"optics": optics, "particles": table.particles}, tmp_path / "z.star")
    with pytest.raises(CryodenInputError, match="zero or negative rlnImagePixelSize"):
        read_star(tmp_path / "z.star")


def test_relion30_file_is_upgraded(shared_data):
    t = read_star(shared_data / "particles" / "empiar10076_cryodrgn" / "empiar_10076_7.star")
    # 5 µm detector pixel at 38168x magnification.
    assert t.pixel_size() == pytest.approx(5e4 / 38168)
    assert int(t.optics["rlnImageSize"].iloc[0]) == 320
    assert read_particle_images(t).shape == (7, 320, 320)
    t2 = read_star(shared_data / "particles" / "empiar10017_aspire" / "sample_relion_data.star")
    assert t2.pixel_size() == pytest.approx(1.338, rel=1e-4)
    # rlnOriginX (pixels) became rlnOriginXAngst.
    assert t2.particles["rlnOriginXAngst"].iloc[0] == pytest.approx(0.1996 * 1.338, rel=1e-3)
    assert "rlnOriginX" not in t2.particles


# ------------------------------------------------------------------------------------------ edge cases
_OPTICS = "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n{optics}\n\n"
_PARTICLES = "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n{particles}\n"
_RELION30 = "data_\n\nloop_\n_rlnImageName #1\n_rlnMagnification #2\n_rlnDetectorPixelSize #3\n{rows}\n"


def _star31(optics="1 1.5", particles="000001@parts.mrcs 1\n000002@parts.mrcs 1"):
    return _OPTICS.format(optics=optics) + _PARTICLES.format(particles=particles)


# (name, STAR text, what the message must say); every one must be refused naming the STAR file, by
# read_star or, for what only the images show, by read_particle_images.
STAR_EDGE_CASES = [
    ("pixel-nan", _star31("1 nan"), r"rlnImagePixelSize is nan in optics group 1; it must be a positive number"),
    ("pixel-inf", _star31("1 inf"), r"rlnImagePixelSize is inf in optics group 1"),
    ("pixel-zero", _star31("1 0"), r"zero or negative rlnImagePixelSize \(0 Å in optics group 1\)"),
    ("pixel-negative", _star31("1 -1.5"), r"zero or negative rlnImagePixelSize \(-1.5 Å"),
    ("pixel-text", _star31("1 abc"), r"rlnImagePixelSize is 'abc' in optics group 1"),
    ("relion30-magnification-0", _RELION30.format(rows="000001@parts.mrcs 0 5.0"),
     r"rlnMagnification is 0 in row 1 of data_, so the pixel size .* is undefined"),
    ("relion30-magnification-nan", _RELION30.format(rows="000001@parts.mrcs nan 5.0"),
     r"rlnMagnification is missing or NaN in row 1 of data_"),
    ("relion30-magnification-text", _RELION30.format(rows="000001@parts.mrcs x2 5.0"),
     r"rlnMagnification is 'x2' in row 1 of data_, not a number"),
    ("relion30-no-rows", "data_\n\nloop_\n_rlnImageName #1\n_rlnMagnification #2\n",
     r"the particle table \(data_\) has no rows"),
    ("no-particle-rows", _OPTICS.format(optics="1 1.5") + "data_particles\n\nloop_\n_rlnImageName #1\n",
     r"the particle table \(data_particles\) has no rows"),
    ("no-optics-rows", "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n\n"
     + _PARTICLES.format(particles="000001@parts.mrcs 1"), r"the optics table \(data_optics\) has no rows"),
    ("row-missing-a-field", _star31(particles="000001@parts.mrcs 1\n000002@parts.mrcs"),
     r"rlnOpticsGroup is missing or NaN in row 2 of data_particles"),
    ("first-row-missing-a-field", _star31(particles="000001@parts.mrcs\n000002@parts.mrcs 1"),
     r"not a readable STAR file \(row 2 of a loop_ table has 2 values where the rows above have 1"),
    ("optics-row-missing-a-field", _star31(optics="1"),
     r"not a readable STAR file \(a loop_ table's first row has 1 values for 2 columns"),
    ("row-with-extra-field", _star31(particles="000001@parts.mrcs 1\n000002@parts.mrcs 1 7"),
     r"row 2 of a loop_ table has 3 values where the rows above have 2"),
    ("image-name-not-n-at-stack", _star31(particles="x@parts.mrcs 1"),
     r"row 1 of data_particles: image name 'x@parts.mrcs' is not of the form N@stack"),
    ("image-name-without-stack", _star31(particles="000001@ 1"), r"image name '000001@' is not of the form N@stack"),
    ("image-name-nan", _star31(particles="nan 1"), r"row 1 of data_particles has no image name"),
    ("image-name-empty", _star31(particles="'' 1"), r"row 1 of data_particles has no image name"),
    ("image-number-0", _star31(particles="000000@parts.mrcs 1"), r"image number 0 .* \(RELION counts from 1\)"),
    ("image-number-huge", _star31(particles="99999999999999999999999@parts.mrcs 1"), r"is beyond any stack"),
    ("garbage-text", "hello\nthis is not a STAR file\n", r"has no particle table"),
    ("binary-junk", bytes(range(256)) * 8, r"not a STAR file \(it holds binary data"),
    ("not-utf8", _star31().encode() + "# Å\n".encode("latin-1"), r"not a STAR file \(not UTF-8 text"),
    ("old-mac-line-ends", _star31().replace("\n", "\r"), r"carriage returns without line feeds"),
    ("optics-without-particles", _OPTICS.format(optics="1 1.5"), r"has no particle table"),
    ("empty-data-block", "data_particles\n", r"a data_ block holds neither a loop_ table nor _name value pairs"),
    ("duplicate-optics-group", _star31(optics="1 1.5\n1 2.0"), r"optics group 1 is listed twice in data_optics"),
    ("missing-optics-group", _star31(particles="000001@parts.mrcs 1\n000002@parts.mrcs 3"),
     r"row 2 of data_particles refers to optics group 3, which data_optics does not list \(it lists 1\)"),
    ("optics-group-fraction", _star31(particles="000001@parts.mrcs 1.5"), r"rlnOpticsGroup is 1.5 .* not a whole"),
    ("optics-without-group-column-two-rows",
     "data_optics\n\nloop_\n_rlnImagePixelSize #1\n1.5\n2.0\n\n" + _PARTICLES.format(particles="000001@parts.mrcs 1"),
     r"the optics table has 2 rows but no rlnOpticsGroup column"),
    ("duplicate-column", _OPTICS.format(optics="1 1.5") + "data_particles\n\nloop_\n_rlnImageName #1\n"
     "_rlnImageName #2\n000001@parts.mrcs 000001@parts.mrcs\n", r"data_particles lists the column rlnImageName twice"),
    ("non-numeric-origin", _OPTICS.format(optics="1 1.5") + "data_particles\n\nloop_\n_rlnImageName #1\n"
     "_rlnOriginXAngst #2\n000001@parts.mrcs abc\n", r"rlnOriginXAngst is 'abc' in row 1 of data_particles, not a number"),
    ("nan-angle", _OPTICS.format(optics="1 1.5") + "data_particles\n\nloop_\n_rlnImageName #1\n"
     "_rlnAnglePsi #2\n000001@parts.mrcs nan\n", r"rlnAnglePsi is missing or NaN in row 1 of data_particles"),
    # Found only when the images are read: they name the stack as well.
    ("mixed-box-sizes", _star31(particles="000001@parts.mrcs 1\n000001@small.mrcs 1"),
     r"stack .*small\.mrcs has images of \(6, 6\), others have \(8, 8\)"),
    ("index-past-stack-end", _star31(particles="000009@parts.mrcs 1"),
     r"image 9@parts\.mrcs is out of range: the stack holds 5 images"),
    ("missing-stack", _star31(particles="000001@nowhere.mrcs 1"), r"refers to stack 'nowhere\.mrcs', which does not"),
    ("bad-stack", _star31(particles="000001@bad.mrcs 1"), r"stack .*bad\.mrcs: truncated"),
]


@pytest.mark.parametrize(("text", "problem"), [c[1:] for c in STAR_EDGE_CASES], ids=[c[0] for c in STAR_EDGE_CASES])
def test_star_edge_cases_name_the_file(tmp_path, rng, text, problem):
    write_mrc(tmp_path / "parts.mrcs", rng.normal(size=(5, 8, 8)).astype(np.float32), voxel_size=1.5, is_stack=True)
    write_mrc(tmp_path / "small.mrcs", rng.normal(size=(2, 6, 6)).astype(np.float32), voxel_size=1.5, is_stack=True)
    (tmp_path / "bad.mrcs").write_bytes(b"\0" * 100)
    path = tmp_path / "edge.star"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CryodenInputError) as info:
        read_particle_images(read_star(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert re.search(problem, message), message


def test_star_with_crlf_line_ends_and_blank_rows_reads(tmp_path, rng):
    stack = rng.normal(size=(5, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "parts.mrcs", stack, voxel_size=1.5, is_stack=True)
    text = _star31(particles="\n000002@parts.mrcs 1\n\n\n000004@parts.mrcs 1\n\n")
    (tmp_path / "a.star").write_bytes(text.replace("\n", "\r\n").encode())
    np.testing.assert_array_equal(read_particle_images(read_star(tmp_path / "a.star")), stack[[1, 3]])


def test_star_pairs_blocks_read_as_one_row_tables(tmp_path, rng):
    stack = rng.normal(size=(5, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "parts.mrcs", stack, voxel_size=1.5, is_stack=True)
    (tmp_path / "one.star").write_text("data_optics\n_rlnOpticsGroup 1\n_rlnImagePixelSize 1.5\n\n"
                                       "data_particles\n_rlnImageName 000003@parts.mrcs\n_rlnOpticsGroup 1\n")
    table = read_star(tmp_path / "one.star")
    assert len(table) == 1 and table.pixel_size() == 1.5
    np.testing.assert_array_equal(read_particle_images(table), stack[[2]])


def test_relion30_with_two_magnifications_gets_two_optics_groups(tmp_path, rng):
    write_mrc(tmp_path / "parts.mrcs", rng.normal(size=(5, 8, 8)).astype(np.float32), voxel_size=1.5, is_stack=True)
    rows = "000001@parts.mrcs 50000 5.0 1.0\n000002@parts.mrcs 40000 5.0 1.0\n000003@parts.mrcs 50000 5.0 2.0\n"
    (tmp_path / "r30.star").write_text(_RELION30.replace("#3\n", "#3\n_rlnOriginX #4\n").format(rows=rows))
    table = read_star(tmp_path / "r30.star")
    np.testing.assert_allclose(table.pixel_sizes(), [1.0, 1.25, 1.0])
    assert table.particles["rlnOpticsGroup"].tolist() == [1, 2, 1] and len(table.optics) == 2
    np.testing.assert_allclose(table.particles["rlnOriginXAngst"], [1.0, 1.25, 2.0])  # each with its own pixel
    with pytest.raises(CryodenInputError, match="different pixel sizes"):
        table.pixel_size()


def test_rewritten_star_is_not_read_from_a_stale_cache(tmp_path, rng):
    """starfile reads through linecache; a failed read must not leave the old text to be served again."""
    write_mrc(tmp_path / "parts.mrcs", rng.normal(size=(5, 8, 8)).astype(np.float32), voxel_size=1.5, is_stack=True)
    path = tmp_path / "fixed.star"
    path.write_text(_star31(optics="1 abc"))
    with pytest.raises(CryodenInputError):
        read_star(path)
    path.write_text(_star31(optics="1 2.5"))
    assert read_star(path).pixel_size() == 2.5


def test_star_referencing_a_compressed_stack(tmp_path, rng):
    import gzip

    stack = rng.normal(size=(5, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "parts.mrcs", stack, voxel_size=1.5, is_stack=True)
    (tmp_path / "parts.mrcs.gz").write_bytes(gzip.compress((tmp_path / "parts.mrcs").read_bytes()))
    (tmp_path / "parts.mrcs").unlink()
    (tmp_path / "z.star").write_text(_star31(particles="000005@parts.mrcs.gz 1\n000001@parts.mrcs.gz 1"))
    np.testing.assert_array_equal(read_particle_images(read_star(tmp_path / "z.star")), stack[[4, 0]])


def test_image_names_that_are_not_n_at_stack():
    with pytest.raises(CryodenInputError, match=r"t\.star: row 2: image name 'a@b' is not of the form N@stack"):
        parse_image_names(["1@x.mrcs", "a@b"], star_path=Path("t.star"))
    with pytest.raises(CryodenInputError, match=r"row 1: empty image name"):
        parse_image_names([float("nan")], star_path=Path("t.star"))
