"""Xmipp metadata (``.xmd``) particle lists, read into a RELION-style :class:`ParticleTable`.

An ``.xmd`` file is STAR-like text (``# XMIPP_STAR_1`` header, ``data_`` blocks, ``loop_`` tables or
``_label value`` pairs). Its ``_image`` entries are ``N@stack`` (1-based, as in RELION) or a plain file name.
We keep what alignment needs: ``_image`` becomes ``rlnImageName``; the CTF defocus columns become RELION's;
rows with ``_enabled -1`` (disabled in Xmipp) are dropped. The pixel size is ``_samplingRate`` when given,
else the first stack's header (1.0 Å with a warning when that is 0).
"""

from __future__ import annotations

import os
import shlex
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CryodenInputError
from .star import (
    ParticleTable,
    _check_image_names,
    _exists,
    make_optics_table,
    parse_image_names,
    resolve_stack_path,
)

#: Xmipp label -> RELION label for the columns we carry over.
XMIPP_TO_RELION = {
    "image": "rlnImageName",
    "ctfDefocusU": "rlnDefocusU",
    "ctfDefocusV": "rlnDefocusV",
    "ctfDefocusAngle": "rlnDefocusAngle",
}


def _parse_blocks(path: Path) -> list[pd.DataFrame]:
    """Every ``data_`` block of the file as a DataFrame (a ``loop_`` table or one row of pairs)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise CryodenInputError(path, f"cannot be read ({exc.strerror})") from exc
    if "\x00" in text:
        raise CryodenInputError(path, "not an Xmipp metadata file (it holds binary data)")
    # Only the line ends Python's text mode knows: str.splitlines would also break at form feeds etc.
    lines = text.split("\n")
    blocks: list[pd.DataFrame] = []
    labels: list[str] = []
    rows: list[list[str]] = []
    pairs: dict[str, str] = {}
    in_loop = False

    def flush():
        nonlocal labels, rows, pairs, in_loop
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise CryodenInputError(path, f"a loop_ lists the label _{twice[0]} twice")
        if labels and rows:
            blocks.append(pd.DataFrame(rows, columns=labels))
        elif pairs:
            blocks.append(pd.DataFrame([pairs]))
        labels, rows, pairs, in_loop = [], [], {}, False

    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            flush()
            continue
        if line == "loop_":
            flush()
            in_loop = True
            continue
        if line.startswith("_"):
            if in_loop and not rows:
                labels.append(line.split()[0][1:])
            else:
                parts = line.split(None, 1)
                pairs[parts[0][1:]] = parts[1].strip() if len(parts) > 1 else ""
            continue
        if in_loop:
            try:
                values = shlex.split(line)
            except ValueError:
                values = line.split()
            if len(values) != len(labels):
                raise CryodenInputError(path, f"line {number}: {len(values)} values for {len(labels)} labels")
            rows.append(values)
    flush()
    return blocks


def read_xmd(path: str | os.PathLike) -> ParticleTable:
    """Read an Xmipp ``.xmd`` particle list (the block with ``_image``) into a RELION 3.1 table."""
    path = Path(path)
    if not path.is_file():
        raise CryodenInputError(path, "file not found")
    blocks = [b for b in _parse_blocks(path) if "image" in b.columns]
    if not blocks:
        raise CryodenInputError(path, "has no particle list (no data block with an _image label)")
    raw = blocks[0]
    if "enabled" in raw:
        raw = raw[pd.to_numeric(raw["enabled"], errors="coerce").fillna(1) != -1]
    if raw.empty:
        raise CryodenInputError(path, "lists no (enabled) particles")
    particles = pd.DataFrame({XMIPP_TO_RELION[k]: raw[k].to_numpy() for k in XMIPP_TO_RELION if k in raw})
    for column in particles.columns:
        if column != "rlnImageName":
            particles[column] = pd.to_numeric(particles[column], errors="coerce")
    names = particles["rlnImageName"].astype(str)
    empty = names.str.strip().eq("").to_numpy()
    if empty.any():
        raise CryodenInputError(path, f"particle {int(np.flatnonzero(empty)[0]) + 1} has an empty _image")
    particles["rlnImageName"] = names
    _check_image_names(path, names, "the particle list")
    particles["rlnOpticsGroup"] = 1
    pixel = float(pd.to_numeric(raw["samplingRate"], errors="coerce").iloc[0]) if "samplingRate" in raw else 0.0
    stacks, _ = parse_image_names([particles["rlnImageName"].iloc[0]], star_path=path)
    box = 0
    stack_path = resolve_stack_path(stacks[0], path)
    if _exists(stack_path):
        from .mrc import read_mrc

        try:
            m = read_mrc(stack_path, stack=True, warn_zero_voxel_size=False)
            box = int(m.data.shape[-1])
            if not pixel > 0 and m.voxel_size_from_header:
                pixel = m.pixel_size
        except CryodenInputError:
            pass  # reported with the full message when the images are read
    if not (np.isfinite(pixel) and pixel > 0):
        warnings.warn(f"{path}: no pixel size (_samplingRate or stack header); using 1.0 Å", stacklevel=2)
        pixel = 1.0
    optics = make_optics_table(pixel_size=pixel, image_size=box)
    return ParticleTable(particles=particles.reset_index(drop=True), optics=optics, path=path)
