"""Periodic training checkpoints, so a killed job (SLURM time limit, pre-emption, kill -9) continues where it
stopped instead of starting over.

A checkpoint is one ``torch.save`` file written atomically (never a half-written checkpoint) holding the network
and optimiser state, the step, the training time spent, the history and the random-number states, plus a
*fingerprint* of what was being trained (method, input shape, parameters): resuming onto other data or other
settings is refused with a message instead of silently mixing two trainings. The training loops
(``denoise.engine.iter_train``, ``align.udl.iter_train``, ``cluster.siamese.iter_train_siamese``) call
:meth:`Checkpointer.due` after each step and :meth:`Checkpointer.save` when it is; with ``resume`` they start
from :meth:`Checkpointer.load`.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from .errors import CryodenInputError
from .io.outputs import AtomicOutput

log = logging.getLogger(__name__)

FORMAT = "napari-cryoden-checkpoint"


def _plain(value):
    """JSON-like data for the fingerprint (tuples as lists, numpy scalars as Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Checkpointer:
    """Writes a training checkpoint to ``path`` at most every ``every`` seconds (0: only when asked).

    Parameters
    ----------
    path
        The checkpoint file (conventionally ``OUTPUT.ckpt`` beside the job's output).
    every
        Seconds of wall time between checkpoints; 0 disables the periodic ones.
    fingerprint
        What is being trained; a checkpoint whose fingerprint differs is not resumed.
    inputs
        Files the checkpoint must never replace (see :func:`napari_cryoden.io.outputs.input_files`).
    """

    def __init__(self, path: str | os.PathLike, *, every: float = 0.0, fingerprint: dict | None = None,
                 inputs=()):
        self.path = Path(path)
        self.every = float(every)
        self.fingerprint = _plain(fingerprint or {})
        self.inputs = inputs
        self._last = time.monotonic()
        self.saved = 0
        self._parts: list[Checkpointer] = []

    def part(self, name: str) -> Checkpointer:
        """A sibling checkpoint ``PATH.NAME`` for one of several trainings of a job (e.g. one per K);
        :meth:`remove` removes it too."""
        sibling = Checkpointer(self.path.with_name(f"{self.path.name}.{name}"), every=self.every,
                               fingerprint=self.fingerprint, inputs=self.inputs)
        self._parts.append(sibling)
        return sibling

    def bind(self, **fingerprint) -> Checkpointer:
        """Set what is being trained (the training loop knows it best: method, input shape, parameters)."""
        self.fingerprint = _plain({**self.fingerprint, **fingerprint})
        return self

    def due(self) -> bool:
        """True when ``every`` seconds have passed since the last checkpoint (or the start)."""
        return self.every > 0 and time.monotonic() - self._last >= self.every

    def save(self, state: dict) -> Path:
        """Write ``state`` (tensors moved to the CPU by the caller or here) atomically."""
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "fingerprint": self.fingerprint, "state": state,
                    "written": time.time()}, buffer)
        with AtomicOutput(self.path, inputs=self.inputs) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        self._last = time.monotonic()
        self.saved += 1
        log.info("checkpoint %s: step %s", self.path, state.get("step"))
        return self.path

    def load(self) -> dict | None:
        """The saved state, or None when there is no checkpoint; raises CryodenInputError when the file is not
        a checkpoint or was made for other data or settings."""
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CryodenInputError(self.path, f"is not a readable checkpoint ({exc.__class__.__name__}); remove it "
                                               "to start over") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CryodenInputError(self.path, "is not a napari-cryoden checkpoint; remove it to start over")
        saved = payload.get("fingerprint", {})
        if saved != self.fingerprint:
            keys = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise CryodenInputError(self.path, f"was made for other data or settings (differs in {', '.join(keys)}); "
                                               "run without --resume, or remove it")
        return payload["state"]

    def remove(self) -> None:
        """Delete the checkpoint and its parts (the job finished)."""
        self.path.unlink(missing_ok=True)
        for sibling in self._parts:
            sibling.remove()


def rng_state(*, numpy_rng: np.random.Generator | None = None, generator: torch.Generator | None = None) -> dict:
    """The random-number states a training draws from (torch's global one for dropout, plus its own)."""
    state = {"torch": torch.get_rng_state()}
    if numpy_rng is not None:
        state["numpy"] = _plain(numpy_rng.bit_generator.state)
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict, *, numpy_rng: np.random.Generator | None = None,
                generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if numpy_rng is not None and "numpy" in state:
        numpy_rng.bit_generator.state = state["numpy"]
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
