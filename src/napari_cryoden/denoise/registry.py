"""The one list of denoising methods, from which the CLI and the napari widget are built.

Each method is one :class:`DenoiseMethod` object: it knows its parameter class, its family, whether it
trains, what else it needs (a model file, a second half), its defaults for 2D and 3D data, and its
generators (``run``; ``train`` and ``predict`` for the methods that train). The CLI and the widget ask the
object and never branch on a method's name, so a new method is one module (plus its tests): a subclass,
or an instance given a ``denoise`` function, passed to :func:`register` at import time. :func:`methods`
imports the built-in method modules listed in ``BUILTIN_MODULES`` first.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Generator

import numpy as np

from ..progress import ProgressEvent

#: Modules whose import registers the built-in methods.
BUILTIN_MODULES: tuple[str, ...] = ("napari_cryoden.denoise.pretrained", "napari_cryoden.denoise.self_supervised",
                                    "napari_cryoden.denoise.classical", "napari_cryoden.denoise.supervised")

#: The method the CLI and the widget start with: the best measured today (docs/benchmarks.md).
DEFAULT_METHOD = "self2self"

#: iter_denoise(data, params, *, is_stack, voxel_size, seed, device, out) -> Generator[ProgressEvent, None, ndarray]
DenoiseFunction = Callable[..., Generator[ProgressEvent, None, np.ndarray]]

FAMILIES = ("self-supervised", "classical", "supervised")

#: What ``DenoiseMethod(...)`` may set by keyword (the class attributes documented below).
_ATTRIBUTES = ("name", "title", "family", "params", "description", "dims", "trains", "needs_model", "needs_half2",
               "needs_fft")


class DenoiseMethod:
    """A denoising method: what the CLI, the widget and the benchmarks need to know about it.

    Subclass it and set the class attributes (and override :meth:`run`, and for a training method
    :meth:`train` and :meth:`predict`), or give the attributes and a ``denoise`` function as keywords:
    ``DenoiseMethod(name="median", title="Median filter", family="classical", params=MedianParams,
    denoise=iter_median)``.

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
    description
        One paragraph for ``--help`` and the docs.
    dims
        What the method accepts: any of "2d", "3d", "stack".
    trains
        True when the method trains on the data it denoises: it has :meth:`train` and :meth:`predict`, and
        its trained model is a :class:`~napari_cryoden.denoise.engine.TrainedDenoiser` file.
    needs_model
        True when the method denoises with a model file trained beforehand: its parameters have a
        ``model`` field (``cryoden denoise --model FILE`` fills it).
    needs_half2
        True when training needs a second, independent half of the data (``--half2``).
    needs_fft
        True when the method uses FFTs (the device choice avoids backends without them).
    """

    name: str = ""
    title: str = ""
    family: str = "classical"
    params: type | None = None
    description: str = ""
    dims: tuple[str, ...] = ("2d", "3d", "stack")
    trains: bool = False
    needs_model: bool = False
    needs_half2: bool = False
    needs_fft: bool = False

    def __init__(self, *, denoise: DenoiseFunction | None = None, **attributes):
        for key, value in attributes.items():
            if key not in _ATTRIBUTES:
                raise TypeError(f"{type(self).__name__} has no attribute {key!r} to set")
            setattr(self, key, value)
        self._denoise = denoise
        if not self.name or self.params is None:
            raise TypeError("a denoising method needs a name and a parameter class")
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        self.title = self.title or self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.family})>"

    def default_params(self, *, dims: int, **overrides):
        """The parameters to start from for ``dims``-dimensional data (2: images or a stack, 3: a volume).

        Parameters
        ----------
        dims
            2 or 3; methods whose best settings differ between images and volumes override this.
        **overrides
            Field values replacing the defaults.
        """
        p = self.params()
        return dataclasses.replace(p, **overrides) if overrides else p

    def run(self, data: np.ndarray, params, *, is_stack: bool = False, voxel_size=None, seed: int = 0,
            device="auto", half2: np.ndarray | None = None, out=None,
            **options) -> Generator[ProgressEvent, None, np.ndarray]:
        """Denoise ``data`` in one call (a training method trains on it first); a progress generator.

        Parameters
        ----------
        data
            A 2D image, a 3D volume, or an (n, y, x) stack when ``is_stack``; it may be memory-mapped and
            is never modified.
        params
            An instance of :attr:`params`.
        half2
            The second half, for a method that :attr:`needs_half2`.
        out
            An array of ``data``'s shape (e.g. a memory-mapped output file) the result is written into
            piece by piece, so a volume larger than memory can be processed.
        **options
            Further keywords of the ``denoise`` function, e.g. ``name``: the source named in error messages.

        Returns
        -------
        numpy.ndarray
            The denoised array (float32, ``data``'s shape and units; ``out`` when given).
        """
        if self._denoise is None:
            raise NotImplementedError(f"{type(self).__name__} must override run() or be given denoise=")
        if self.needs_half2:
            options["half2"] = half2
        return self._denoise(data, params, is_stack=is_stack, voxel_size=voxel_size, seed=seed, device=device,
                             out=out, **options)

    @property
    def denoise(self) -> DenoiseFunction:
        """:meth:`run` under the name callers used before methods were objects (its signature included)."""
        return self.run

    def train(self, data, params, **kwargs):
        """Train a model on ``data`` (only for methods that :attr:`train <trains>`)."""
        raise TypeError(f"{self.name} does not train")

    def predict(self, model, data, **kwargs):
        """Denoise ``data`` with a trained model (only for methods that :attr:`train <trains>`)."""
        raise TypeError(f"{self.name} does not train")


_METHODS: dict[str, DenoiseMethod] = {}


def register(method: DenoiseMethod) -> DenoiseMethod:
    """Add ``method`` to the list the CLI and the widget are built from; returns it.

    Raises
    ------
    ValueError
        When another method of the same name is registered already.
    """
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"a denoising method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method registered with :func:`register` (tests and plugins that add methods at run time)."""
    _METHODS.pop(name, None)


#: Listed first in the widget's menu and in ``--help`` (the shipped model: one pass, no training).
FIRST_METHOD = "pretrained"


def methods() -> dict[str, DenoiseMethod]:
    """All registered methods by name (importing the built-in ones on first use), in a fixed order whatever
    was imported first: :data:`FIRST_METHOD`, then by family (:data:`FAMILIES`), then as registered."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    order = sorted(_METHODS.values(), key=lambda m: (m.name != FIRST_METHOD, FAMILIES.index(m.family)))
    return {m.name: m for m in order}


def get_method(name: str) -> DenoiseMethod:
    """The registered method called ``name``.

    Raises
    ------
    KeyError
        When no method of that name is registered (the message lists those that are).
    """
    all_methods = methods()
    if name not in all_methods:
        raise KeyError(f"unknown denoising method {name!r}; choose from {', '.join(sorted(all_methods))}")
    return all_methods[name]
