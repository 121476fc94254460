"""The result of an in-plane alignment: per-particle parameters, the aligned stack and the average."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AlignmentResult:
    """Per-particle in-plane parameters in RELION's convention (``docs/conventions.md``).

    Attributes
    ----------
    angles
        (n,) psi in degrees, in [0, 360 / symmetry).
    origins
        (n, 2) RELION origins (x, y) in pixels: the shift that brings the particle back to the centre,
        ``particle(p) = reference(R(psi) (p + o))``.
    scores
        (n,) normalised cross-correlation of each particle with the rotated, shifted reference, in [-1, 1].
    average
        (y, x) float32 average of the aligned particles.
    reference
        (y, x) float32 reference the particles were finally aligned to (the given one, or the last average
        of a reference-free run).
    aligned
        (n, y, x) aligned particles (``align_images``), or None when they were written elsewhere / not kept.
    info
        Method, iterations, timings and anything else worth reporting.
    """

    angles: np.ndarray
    origins: np.ndarray
    scores: np.ndarray
    average: np.ndarray
    reference: np.ndarray
    aligned: np.ndarray | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.angles)


#: The per-particle score column written beside the RELION parameters (normalised cross-correlation with the
#: rotated, shifted reference, in [-1, 1]).
SCORE_COLUMN = "rlnCryodenScore"


def with_alignment(particles, result: AlignmentResult, *, pixel_size: float):
    """A copy of the particle rows (pandas DataFrame) with the alignment in RELION 3.1 columns:
    ``rlnAnglePsi`` (degrees), ``rlnOriginXAngst`` / ``rlnOriginYAngst`` (Å, from pixels × ``pixel_size``) and
    :data:`SCORE_COLUMN`. Used by ``cryoden align`` and the Align widget's export alike.

    Every other column is kept (CTF, micrograph names, classes, ...), except ``rlnAngleRot`` and
    ``rlnAngleTilt``: a 3D orientation from an earlier refinement does not belong beside a new in-plane psi,
    and RELION would read the three as one orientation."""
    if len(particles) != len(result.angles):
        raise ValueError(f"{len(particles)} particle rows but {len(result.angles)} aligned particles")
    rows = particles.reset_index(drop=True).drop(columns=["rlnAngleRot", "rlnAngleTilt"], errors="ignore").copy()
    rows["rlnAnglePsi"] = result.angles
    rows["rlnOriginXAngst"] = result.origins[:, 0] * float(pixel_size)
    rows["rlnOriginYAngst"] = result.origins[:, 1] * float(pixel_size)
    rows[SCORE_COLUMN] = result.scores
    return rows
