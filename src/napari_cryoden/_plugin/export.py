"""STAR export shared by the Align and Cluster widgets: the particle table of a stack layer, with image names
that resolve from the new STAR file's folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.mrc import write_mrc
from ..io.outputs import input_files
from ..io.star import ParticleTable, make_optics_table, rebase_image_names


def layer_source_paths(layer) -> list[str]:
    """The files a layer was read from: its MRC, or its STAR file and the stacks that points at."""
    meta = getattr(layer, "metadata", None) or {}
    return [str(p) for p in (meta.get("path"), meta.get("star_path"), *(meta.get("source_paths") or ())) if p]


def open_sources(*layers) -> dict:
    """Every file that ``layers`` and the layers of the current viewer were read from (the files a save or an
    export from napari must never replace), in the form :func:`napari_cryoden.io.outputs.input_files` gives."""
    import napari

    viewer = napari.current_viewer()
    every = list(layers) + (list(viewer.layers) if viewer is not None else [])
    return input_files(p for layer in every for p in layer_source_paths(layer))


def source_particle_table(layer) -> ParticleTable | None:
    """The particle table a stack layer's images come from, every column kept: the STAR table of a layer read
    from a STAR file (or derived from one, e.g. an aligned stack carrying the new alignment), a table pointing
    at the stack file a layer was read from, or None for a stack that exists only in memory."""
    meta = layer.metadata or {}
    n = int(layer.data.shape[0])
    features = meta.get("features")
    if isinstance(features, pd.DataFrame) and len(features) == n and "optics" in meta:
        return ParticleTable(particles=features.copy(), optics=meta["optics"],
                             path=Path(meta["star_path"]) if meta.get("star_path") else None)
    stack_path = meta.get("path")
    if stack_path and str(stack_path).lower().endswith((".mrcs", ".mrc", ".st")):
        particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{stack_path}" for i in range(n)]})
        optics = make_optics_table(pixel_size=float(layer.scale[-1]), image_size=int(layer.data.shape[-1]))
        return ParticleTable(particles=particles, optics=optics, path=None)
    return None


def derived_metadata(source_layer, particles: pd.DataFrame) -> dict:
    """Metadata for a layer computed from ``source_layer`` particle by particle (an aligned stack, ...): its
    particle table becomes ``particles`` (the source's table with new columns), the optics and the files it
    points at stay the source's, so an export from the new layer loses nothing. Empty without a source table."""
    table = source_particle_table(source_layer)
    if table is None:
        return {}
    meta = source_layer.metadata or {}
    derived = {"features": particles, "optics": table.optics}
    for key in ("star_path", "source_paths", "path"):
        if meta.get(key):
            derived[key] = meta[key]
    return derived


def layer_particle_table(layer, out_star: str | os.PathLike) -> tuple[ParticleTable, list[str]]:
    """(table, input paths) for a particle-stack layer about to be exported to ``out_star``.

    A layer read from a STAR file (or derived from one) keeps every column of its table and its optics (image
    names rebased to the new folder). A layer read from a stack file points at that file. A stack that exists
    only in memory (simulated, computed) is written as ``<out_star>.mrcs`` beside the STAR so that the STAR file
    points at real images. Optics the layer does not know (voltage, Cs, amplitude contrast) are left out, never
    made up. The input paths are those an export must never overwrite.
    """
    out_star = Path(out_star)
    n = int(layer.data.shape[0])
    px = float(layer.scale[-1])
    inputs = open_sources(layer)
    source = source_particle_table(layer)
    if source is not None:
        particles = source.particles
        if "rlnImageName" in particles:
            if source.path is not None:
                particles["rlnImageName"] = rebase_image_names(source, out_star)
            else:  # names of a stack file: N@/absolute/path, made relative to the new STAR's folder
                particles["rlnImageName"] = [_relative_name(name, out_star) for name in particles["rlnImageName"]]
        return ParticleTable(particles=particles, optics=source.optics), inputs
    stack_path = str(out_star.with_suffix(".mrcs"))
    write_mrc(stack_path, np.asarray(layer.data), voxel_size=px, is_stack=True, inputs=inputs)
    rel = os.path.relpath(Path(stack_path).resolve(), out_star.resolve().parent)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{rel}" for i in range(n)]})
    optics = make_optics_table(pixel_size=px, image_size=int(layer.data.shape[-1]))
    return ParticleTable(particles=particles, optics=optics), inputs


def _relative_name(name: str, out_star: Path) -> str:
    index, _, stack = str(name).partition("@")
    return f"{index}@{os.path.relpath(Path(stack).resolve(), out_star.resolve().parent)}"
