"""Rigid 2D alignment of particle images (in-plane rotation + shift)."""

from .cross_correlation import (
    ClassicalParams,
    align_reference_free,
    align_to_reference,
    iter_align_reference_free,
    iter_align_to_reference,
)
from .methods import DEFAULT_METHOD, AlignMethod, methods, register
from .result import SCORE_COLUMN, AlignmentResult, with_alignment
from .transforms import (
    align_images,
    fourier_shift,
    relion_euler_matrix,
    rotate_images,
    transform_images,
)

#: Alignment methods by name (the CLI's --method choices).
METHODS = tuple(methods())

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "SCORE_COLUMN",
    "AlignMethod",
    "AlignmentResult",
    "ClassicalParams",
    "align_images",
    "align_reference_free",
    "align_to_reference",
    "fourier_shift",
    "iter_align_reference_free",
    "iter_align_to_reference",
    "methods",
    "register",
    "relion_euler_matrix",
    "rotate_images",
    "transform_images",
    "with_alignment",
]
