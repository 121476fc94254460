"""npe2 reader: MRC-family files (also gzip/bzip2-compressed, e.g. EMDB's ``emd_1832.map.gz``) and RELION STAR
particle tables.

Bad files never crash the viewer: the problem is shown as a notification naming the file, and no layer is
added.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from ..errors import CryodenInputError
from ..io.mrc import MRC_SUFFIXES, ZeroVoxelSizeWarning, is_mrc_path, mrc_stem, read_mrc
from ..io.star import parse_image_names, read_particle_images, read_star, resolve_stack_path
from .layers import image_layer, particle_points_layer
from .notify import notify_error, notify_warning

log = logging.getLogger(__name__)
SUFFIXES = (*MRC_SUFFIXES, ".star")


def _readable_name(path) -> bool:
    return is_mrc_path(path) or Path(path).suffix.lower() == ".star"


def get_reader(path):
    """Return :func:`read_paths` when every path has a suffix we read (``.map.gz`` etc. included), else None."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if paths and all(_readable_name(p) for p in paths):
        return read_paths
    return None


def read_paths(path) -> list:
    """Read one or several files into layer data tuples; ``[(None,)]`` (no layer) after an error."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers: list = []
    for p in paths:
        try:
            layers.extend(read_file(p))
        except (CryodenInputError, OSError) as exc:
            notify_error(exc if isinstance(exc, CryodenInputError) else CryodenInputError(p, str(exc)))
    return layers or [(None,)]


def read_file(path) -> list:
    """Layer data tuples for one file (raises CryodenInputError on bad input)."""
    path = Path(path)
    if path.suffix.lower() == ".star":
        return read_star_layers(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ZeroVoxelSizeWarning)
        mrc = read_mrc(path)
    for w in caught:
        notify_warning(str(w.message))
    if np.iscomplexobj(mrc.data):
        raise CryodenInputError(path, f"holds complex values (MRC mode {mrc.header.get('mode')}), which napari "
                                      "cannot display")
    meta = {**mrc.metadata(), "role": "raw"}
    # mrc_stem: "emd_1832.map.gz" is layer "emd_1832", as "emd_1832.map" is.
    return [image_layer(mrc.data, name=mrc_stem(path), voxel_size=mrc.voxel_size, is_stack=mrc.is_stack,
                        metadata=meta)]


def read_star_layers(path: Path) -> list:
    """The particle stack a STAR file points at, plus a points layer carrying the table as ``features``."""
    table = read_star(path)
    if len(table) == 0:
        raise CryodenInputError(path, "has no particles")
    pixel = table.pixel_size()
    names = table.particles["rlnImageName"].tolist() if "rlnImageName" in table.particles else []
    stacks, indices = parse_image_names(names, star_path=path)
    data = None
    stack_paths = [str(resolve_stack_path(s, path)) for s in dict.fromkeys(stacks)]
    if len(set(stacks)) == 1 and np.array_equal(indices, np.arange(len(indices))):
        # One stack in order: keep it memory-mapped instead of copying it.
        stack_path = resolve_stack_path(stacks[0], path)
        if stack_path.exists():
            mrc = read_mrc(stack_path, stack=True, warn_zero_voxel_size=False)
            if mrc.data.ndim == 3 and mrc.data.shape[0] >= len(indices):
                data = mrc.data[: len(indices)]
    if data is None:
        data = read_particle_images(table)
    meta = {"star_path": str(path), "source_paths": stack_paths, "pixel_size": pixel, "role": "raw",
            "features": table.particles, "optics": table.optics}
    img = image_layer(data, name=path.stem, voxel_size=(1.0, pixel, pixel), is_stack=True, metadata=meta)
    pts = particle_points_layer(table.particles, box=data.shape[-2:], pixel_size=pixel, name=f"{path.stem} particles")
    return [img, pts]
