"""Trained models as one file: weights, the config to rebuild the network, normalisation, provenance.

The file is a ``torch.save`` dict written atomically; tensors are moved to the CPU before saving so a model
trained on a GPU loads anywhere. Loading uses ``weights_only=True`` (no arbitrary code runs), which is why
everything stored besides tensors is plain Python data (dicts, lists, numbers, strings).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CryodenInputError
from ..io.outputs import AtomicOutput

FORMAT = "napari-cryoden-model"
FORMAT_VERSION = 1


@dataclass
class ModelFile:
    """The content of a model file.

    Attributes
    ----------
    kind
        What the model is for, e.g. "denoise/fourier-n2n", "align/udl", "cluster/siamese".
    config
        Plain-data description sufficient to rebuild the network (architecture, parameters).
    state_dict
        The network weights (CPU tensors).
    normalization
        How inputs were normalised (e.g. {"low": ..., "high": ..., "mean": ..., "std": ...}).
    extra
        Anything else: optimiser state to continue training, training history, voxel size, ...
    """

    kind: str
    config: dict
    state_dict: dict
    normalization: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    created: str = ""
    version: str = __version__


def to_cpu(obj: Any) -> Any:
    """``obj`` (tensors, state dicts, lists of them) with every tensor detached and on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_model(path: str | os.PathLike, model: ModelFile, *, inputs=(), overwrite: bool = True) -> Path:
    """Write ``model`` to ``path`` atomically (never over one of ``inputs``)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "config": to_cpu(model.config),
        "state_dict": to_cpu(model.state_dict),
        "normalization": to_cpu(model.normalization),
        "extra": to_cpu(model.extra),
        "created": model.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": model.version,
    }
    buffer = io.BytesIO()  # serialised first: a write error then is a plain OSError that names the file
    torch.save(payload, buffer)
    with AtomicOutput(path, inputs=inputs, overwrite=overwrite) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def load_model(path: str | os.PathLike, *, kind: str | None = None) -> ModelFile:
    """Read a model file onto the CPU; ``kind`` (or its prefix before "/") must match when given."""
    path = Path(path)
    if not path.is_file():
        raise CryodenInputError(path, "model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CryodenInputError(path, f"not a readable napari-cryoden model file ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CryodenInputError(path, "not a napari-cryoden model file")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CryodenInputError(path, f"model file format {payload['format_version']} is newer than this "
                                      f"napari-cryoden understands ({FORMAT_VERSION}); upgrade napari-cryoden")
    if kind is not None and payload["kind"] != kind and payload["kind"].split("/")[0] != kind:
        raise CryodenInputError(path, f"is a {payload['kind']} model, not a {kind} model")
    return ModelFile(kind=payload["kind"], config=payload["config"], state_dict=payload["state_dict"],
                     normalization=payload.get("normalization", {}), extra=payload.get("extra", {}),
                     created=payload.get("created", ""), version=payload.get("version", ""))


#: Models shipped inside the package (trained by ``scripts/train_align_models.py`` and
#: ``scripts/train_denoise_models.py``), by kind.
PRETRAINED = {"align/udl": "align_udl.pt", "align/judl": "align_judl.pt",
              "denoise/pretrained-2d": "denoise_2d.pt", "denoise/pretrained-3d": "denoise_3d.pt"}

#: What ``--model`` (and the widgets) accept to mean the shipped model of the chosen method.
PRETRAINED_NAME = "pretrained"


def pretrained_path(kind: str) -> Path:
    """Where the shipped model of ``kind`` lives in the installed package (it may be missing)."""
    if kind not in PRETRAINED:
        shipped = ", ".join(sorted(PRETRAINED))
        raise CryodenInputError(None, f"no pretrained {kind} model is shipped (there are: {shipped})")
    return Path(__file__).with_name(PRETRAINED[kind])


def load_pretrained(kind: str) -> ModelFile:
    """The shipped model of ``kind``, read offline from the package; a missing or unreadable file is a
    :class:`CryodenInputError` naming it and saying how to get it back."""
    path = pretrained_path(kind)
    if not path.is_file():
        script = "train_denoise_models" if kind.startswith("denoise/") else "train_align_models"
        raise CryodenInputError(path, f"the pretrained {kind} model is not installed: reinstall napari-cryoden, or "
                                      f"train it with scripts/{script}.py")
    return load_model(path, kind=kind)
