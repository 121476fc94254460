"""The one list of alignment methods, from which the CLI and the napari widget are built.

Each method is one :class:`AlignMethod` object: whether it trains a network (and so takes a model file, a
time budget and checkpoints), the parameter class of its network (``None`` for the classical search), a
description, and its generators — :meth:`AlignMethod.train` (methods that train) and
:meth:`AlignMethod.align`. Every method also takes the classical search's
:class:`~napari_cryoden.align.cross_correlation.ClassicalParams` (shift range, symmetry, ...), which the
networks use to refine their angles. The CLI and the Align widget ask the object and never branch on a
method's name; a new method is a subclass passed to :func:`register`.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..models import ModelFile
from ..progress import ProgressEvent
from .cross_correlation import ClassicalParams, iter_align_reference_free, iter_align_to_reference
from .result import AlignmentResult
from .udl import DeepAlignParams, check_model, iter_align_with_model, iter_train


class AlignMethod:
    """An in-plane alignment method.

    Attributes
    ----------
    name
        CLI name ("fft", "udl", "judl").
    description
        One sentence for ``--help`` and the widget.
    trains
        True when the method trains a network (:meth:`train`; a model file of kind ``align/NAME``).
    params
        The network's parameter dataclass, or None for a method without one.
    """

    name: str = ""
    description: str = ""
    trains: bool = False
    params: type | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def model_kind(self) -> str:
        return f"align/{self.name}"

    def check_model(self, model: ModelFile, *, path=None, box: int | None = None, where=None) -> None:
        """Raise CryodenInputError naming ``path`` when ``model`` is not this method's or of another box."""
        from ..errors import CryodenInputError

        if model.kind != self.model_kind:
            raise CryodenInputError(path, f"is a {model.kind} model; --method {self.name} needs {self.model_kind}")
        check_model(model, path=path, box=box, where=where)

    def train(self, images, reference, params, *, device="cpu", model: ModelFile | None = None, checkpoint=None,
              resume: bool = False, ctf=None, classical=None) -> Generator[ProgressEvent, None, ModelFile]:
        raise TypeError(f"{self.name} does not train")

    def align(self, images, reference, classical: ClassicalParams, params=None, *, model: ModelFile | None = None,
              device="cpu", ctf=None, keep_aligned: bool = True,
              aligned_out=None) -> Generator[ProgressEvent, None, AlignmentResult]:
        """Align ``images`` (array, memory map or particle source) to ``reference``, or reference-free when
        None; yields progress events, returns the :class:`AlignmentResult`."""
        raise NotImplementedError


class FFTAlign(AlignMethod):
    name = "fft"
    description = "classical Fourier cross-correlation: rotations by amplitude correlation, then shifts (default)"

    def align(self, images, reference, classical, params=None, *, model=None, device="cpu", ctf=None,
              keep_aligned=True, aligned_out=None):
        if reference is None:
            return (yield from iter_align_reference_free(images, classical, device=device, ctf=ctf,
                                                         keep_aligned=keep_aligned, aligned_out=aligned_out))
        return (yield from iter_align_to_reference(images, np.asarray(reference, np.float32), classical,
                                                   device=device, ctf=ctf, keep_aligned=keep_aligned,
                                                   aligned_out=aligned_out))


class DeepAlign(AlignMethod):
    """UDL (``joint=False``) or JUDL: a Siamese network predicts the angle; ``params.refine`` says what
    follows (none / local cross-correlation near it / the global search)."""

    trains = True
    params = DeepAlignParams

    def __init__(self, name: str, *, joint: bool, description: str):
        self.name, self.joint, self.description = name, joint, description

    def train(self, images, reference, params, *, device="cpu", model=None, checkpoint=None, resume=False,
              ctf=None, classical=None):
        return (yield from iter_train(images, reference, params, joint=self.joint, device=device, model=model,
                                      checkpoint=checkpoint, resume=resume, ctf=ctf, classical=classical))

    def align(self, images, reference, classical, params=None, *, model=None, device="cpu", ctf=None,
              keep_aligned=True, aligned_out=None):
        if model is None:
            raise ValueError(f"{self.name} aligns with a trained model: train one first")
        params = params or DeepAlignParams()
        return (yield from iter_align_with_model(images, model, reference, classical, refine=params.refine,
                                                 window=params.refine_window, device=device, ctf=ctf,
                                                 keep_aligned=keep_aligned, aligned_out=aligned_out))


_REGISTRY: dict[str, AlignMethod] = {}

#: The method the CLI and the widget start with: the best measured today (docs/align.md).
DEFAULT_METHOD = "fft"


def register(method: AlignMethod) -> AlignMethod:
    """Add ``method`` to the list the CLI and the widget offer (replacing one of the same name)."""
    if not method.name:
        raise TypeError("an alignment method needs a name")
    _REGISTRY[method.name] = method
    return method


def methods() -> dict[str, AlignMethod]:
    """Every alignment method by name, the default first."""
    return dict(_REGISTRY)


register(FFTAlign())
register(DeepAlign("udl", joint=False, description="unsupervised deep learning: a Siamese network regresses the "
                                                   "angle from log-amplitude spectra, trained on the stack"))
register(DeepAlign("judl", joint=True, description="UDL with a joint reconstruction term, for reference-free "
                                                   "training"))
