"""RELION STAR tables: 3.1 round trips through starfile, 3.0 upgrade, image names, bad references."""

from __future__ import annotations

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
