"""JUDL: joint unsupervised difference learning — every pair is (reference, particle).

Same network, difference term and half-pair term as :mod:`.udl`, but the first input of every pair is the
one reference (given, or a bootstrap average of the particles: JUDL trains reference-free), so all predicted
angles are relative to one frame. A small autoencoder must reconstruct each particle's amplitude turned back
by its predicted angle (into the reference's frame), which favours mutually consistent rotations; the
gradient reaches the network through the angle of that (differentiable) rotation. The reconstruction term is
on from the first step, weighted ``20 × (1 + step / steps_per_epoch)`` (the seed's ``20 × epoch`` with
epochs counted from 1, by step: :func:`.udl.reconstruction_weight`). Inference is
:func:`.udl.iter_align_with_model` (the trained reference is stored in the model file).
"""

from __future__ import annotations

from collections.abc import Generator

from ..models import ModelFile
from ..progress import ProgressEvent
from .udl import DeepAlignParams, iter_align_with_model, iter_train


def iter_train_judl(images, reference=None, params: DeepAlignParams | None = None, *, device="cpu",
                    model: ModelFile | None = None) -> Generator[ProgressEvent, None, ModelFile]:
    """Train JUDL on (reference, particle) pairs; returns a ``align/judl`` :class:`ModelFile`."""
    return (yield from iter_train(images, reference, params, joint=True, device=device, model=model))


def iter_train_udl(images, params: DeepAlignParams | None = None, *, device="cpu",
                   model: ModelFile | None = None) -> Generator[ProgressEvent, None, ModelFile]:
    """Train UDL on random pairs of particles; returns a ``align/udl`` :class:`ModelFile`."""
    return (yield from iter_train(images, None, params, joint=False, device=device, model=model))


__all__ = ["DeepAlignParams", "iter_align_with_model", "iter_train_judl", "iter_train_udl"]
