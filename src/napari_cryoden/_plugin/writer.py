"""npe2 writer: an image layer to MRC, with the layer's ``scale`` as the voxel size (Å)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import CryodenInputError, CryodenOutputError
from ..io.mrc import write_mrc
from .export import open_sources
from .notify import notify_error


def write_mrc_layer(path: str, data, attributes: dict) -> list[str]:
    """Write one image layer atomically; never over the file it was read from."""
    arr = np.asarray(data)
    meta = attributes.get("metadata") or {}
    scale = attributes.get("scale")
    scale = tuple(float(s) for s in scale) if scale is not None and len(scale) else (1.0,) * arr.ndim
    is_stack = bool(meta.get("is_stack", Path(path).suffix.lower() == ".mrcs"))
    # The index axis of a stack has scale 1; its voxel size is the in-plane one.
    voxel = (scale[-1], scale[-2], scale[-1]) if (is_stack and arr.ndim == 3) else scale
    # Never write over a file this layer or any open layer came from (an MRC, a STAR file and its stacks).
    sources = open_sources(SimpleNamespace(metadata=meta))
    try:
        if arr.ndim not in (2, 3):
            raise CryodenInputError(attributes.get("name"), f"MRC holds 2D or 3D data, the layer is {arr.ndim}D")
        write_mrc(path, arr, voxel_size=voxel, is_stack=is_stack, inputs=sources,
                  labels=[f"napari-cryoden: layer {attributes.get('name', '')}"])
    except (CryodenInputError, CryodenOutputError) as exc:
        notify_error(exc)
        return []
    return [path]
