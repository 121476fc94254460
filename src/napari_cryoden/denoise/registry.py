"""The one list of denoising methods, from which the CLI and the napari widget are built.

A method module registers a :class:`DenoiseMethod` at import time; :func:`methods` imports the built-in
method modules listed in ``BUILTIN_MODULES`` first, so adding a method means writing its module and adding
it there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from ..progress import ProgressEvent

#: Modules whose import registers the built-in methods.
BUILTIN_MODULES: tuple[str, ...] = ("napari_cryoden.denoise.self_supervised", "napari_cryoden.denoise.classical", "napari_cryoden.denoise.supervised")

#: iter_denoise(data, params, *, is_stack, voxel_size, seed, device) -> Generator[ProgressEvent, None, ndarray]
DenoiseFunction = Callable[..., Generator[ProgressEvent, None, np.ndarray]]


@dataclass(frozen=True)
class DenoiseMethod:
    """A registered denoising method.

    Attributes
    ----------
    name
        CLI name, e.g. "bm3d", "fourier-n2n".
    title
        Human-readable name for menus.
    family
        "self-supervised", "classical" or "supervised".
    params
        Frozen parameter dataclass (see :mod:`napari_cryoden.params`).
    denoise
        ``iter_denoise(data, params, *, is_stack, voxel_size, seed, device, out=None)``: a generator of
        progress events returning the denoised array (same shape as ``data``, float32, the input's units).
        ``data`` is a 2D image, a 3D volume, or an (n, y, x) stack when ``is_stack``; it may be memory-mapped
        and is never modified. With ``out`` (e.g. a memory-mapped output file of ``data``'s shape) the result
        is written there piece by piece and returned, so a volume larger than memory can be processed.
    description
        One paragraph for ``--help`` and the docs.
    dims
        What the method accepts: any of "2d", "3d", "stack".
    """

    name: str
    title: str
    family: str
    params: type
    denoise: DenoiseFunction
    description: str = ""
    dims: tuple[str, ...] = ("2d", "3d", "stack")


_METHODS: dict[str, DenoiseMethod] = {}


def register(method: DenoiseMethod) -> DenoiseMethod:
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"a denoising method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def methods() -> dict[str, DenoiseMethod]:
    """All registered methods by name (importing the built-in ones on first use)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(_METHODS)


def get_method(name: str) -> DenoiseMethod:
    all_methods = methods()
    if name not in all_methods:
        raise KeyError(f"unknown denoising method {name!r}; choose from {', '.join(sorted(all_methods))}")
    return all_methods[name]
