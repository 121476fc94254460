"""Quality metrics: pixel-wise (MSE, PSNR, SSIM), Fourier (FRC/FSC), alignment and clustering errors.

Everything here takes numpy arrays and returns numpy arrays or floats; nothing imports napari or Qt.
"""

from napari_cryoden.metrics.alignment import angular_distance, angular_error, remove_global_rotation, shift_error
from napari_cryoden.metrics.clustering import (
    adjusted_rand_index,
    clustering_accuracy,
    match_labels,
    normalized_mutual_info,
)
from napari_cryoden.metrics.compare import Comparison, compare
from napari_cryoden.metrics.fourier import (
    FSCCurve,
    fourier_ring_correlation,
    fourier_shell_correlation,
    resolution_at,
)
from napari_cryoden.metrics.intensity import fit_affine, mse, psnr, ssim, stack_mse, stack_psnr, stack_ssim

__all__ = [
    "Comparison",
    "FSCCurve",
    "adjusted_rand_index",
    "angular_distance",
    "angular_error",
    "clustering_accuracy",
    "compare",
    "fit_affine",
    "fourier_ring_correlation",
    "fourier_shell_correlation",
    "match_labels",
    "mse",
    "normalized_mutual_info",
    "psnr",
    "remove_global_rotation",
    "resolution_at",
    "shift_error",
    "ssim",
    "stack_mse",
    "stack_psnr",
    "stack_ssim",
]
