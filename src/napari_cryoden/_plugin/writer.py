"""npe2 writer: an image layer to MRC, with the layer's ``scale`` as the voxel size (Å)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CryodenInputError, CryodenOutputError
from ..io.mrc import write_mrc
from .notify import notify_error


def write_mrc_layer(path: str, data, attributes: dict) -> list[str]:
    """Write one image layer atomically; never over the file it was read from."""
    arr = np.asarray(data)
    meta = attributes.get("metadata") or {}
    scale = tuple(float(s) for s in attributes.get("scale") or (1.0,) * arr.ndim)
    is_stack = bool(meta.get("is_stack", Path(path).suffix.lower() == ".mrcs"))
    # The index axis of a stack has scale 1; its voxel size is the in-plane one.
    voxel = (scale[-1], scale[-2], scale[-1]) if (is_stack and arr.ndim == 3) else scale
    # Never write over a file the layer came from (its MRC, or the STAR file and the stacks it points at).
    sources = [p for p in (meta.get("path"), meta.get("star_path"), *meta.get("source_paths", ())) if p]
    try:
        if arr.ndim not in (2, 3):
            raise CryodenInputError(attributes.get("name"), f"MRC holds 2D or 3D data, the layer is {arr.ndim}D")
        write_mrc(path, arr, voxel_size=voxel, is_stack=is_stack, inputs=sources,
                  labels=[f"napari-cryoden: layer {attributes.get('name', '')}"])
    except (CryodenInputError, CryodenOutputError) as exc:
        notify_error(exc)
        return []
    return [path]
