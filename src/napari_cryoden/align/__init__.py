"""Rigid 2D alignment of particle images (in-plane rotation + shift)."""

from .transforms import (
    align_images,
    fourier_shift,
    relion_euler_matrix,
    rotate_images,
    transform_images,
)

__all__ = ["align_images", "fourier_shift", "relion_euler_matrix", "rotate_images", "transform_images"]
