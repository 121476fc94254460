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


def layer_particle_table(layer, out_star: str | os.PathLike) -> tuple[ParticleTable, list[str]]:
    """(table, input paths) for a particle-stack layer about to be exported to ``out_star``.

    A layer read from a STAR file keeps its table and optics (image names rebased to the new folder). A layer
    read from a stack file points at that file. A stack that exists only in memory (simulated, computed) is
    written as ``<out_star>.mrcs`` beside the STAR so that the STAR file points at real images. The input paths
    are those an export must never overwrite.
    """
    meta = layer.metadata or {}
    out_star = Path(out_star)
    n = int(layer.data.shape[0])
    px = float(layer.scale[-1])
    inputs = open_sources(layer)
    features = meta.get("features")
    if isinstance(features, pd.DataFrame) and len(features) == n and "optics" in meta:
        source = ParticleTable(particles=features.copy(), optics=meta["optics"],
                               path=Path(meta["star_path"]) if meta.get("star_path") else None)
        particles = source.particles
        if source.path is not None and "rlnImageName" in particles:
            particles["rlnImageName"] = rebase_image_names(source, out_star)
        return ParticleTable(particles=particles, optics=source.optics), inputs
    stack_path = meta.get("path")
    if not stack_path or not str(stack_path).lower().endswith((".mrcs", ".mrc", ".st")):
        stack_path = str(out_star.with_suffix(".mrcs"))
        write_mrc(stack_path, np.asarray(layer.data), voxel_size=px, is_stack=True, inputs=inputs)
    rel = os.path.relpath(Path(stack_path).resolve(), out_star.resolve().parent)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{rel}" for i in range(n)]})
    optics = make_optics_table(pixel_size=px, image_size=int(layer.data.shape[-1]))
    return ParticleTable(particles=particles, optics=optics), inputs
