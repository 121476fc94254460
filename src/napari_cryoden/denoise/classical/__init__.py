"""Classical denoisers: Gaussian and median filters, BM3D, K-SVD and DDTF (our own torch/scipy code).

Importing this package registers the methods "gaussian", "median", "bm3d", "ksvd" and "ddtf" in
:mod:`napari_cryoden.denoise.registry`. Each takes a 2D image, an (n, y, x) stack (image by image) or a
(z, y, x) volume (Gaussian/median in 3D, the patch methods slice by slice along z); the noise sigma is
estimated from the data when not given (:func:`estimate_noise_sigma`). See docs/denoise-classical.md.
"""

from .bm3d import BM3DParams, bm3d_images, iter_bm3d
from .ddtf import DDTFParams, ddtf_images, iter_ddtf, learn_tight_frame
from .filters import (
    GaussianParams,
    MedianParams,
    gaussian_filter,
    iter_gaussian,
    iter_median,
    median_filter,
    oracle_filter,
)
from .ksvd import KSVDParams, iter_ksvd, ksvd_images, omp
from .noise_estimate import estimate_noise_sigma

__all__ = [
    "BM3DParams",
    "DDTFParams",
    "GaussianParams",
    "KSVDParams",
    "MedianParams",
    "bm3d_images",
    "ddtf_images",
    "estimate_noise_sigma",
    "gaussian_filter",
    "iter_bm3d",
    "iter_ddtf",
    "iter_gaussian",
    "iter_ksvd",
    "iter_median",
    "ksvd_images",
    "learn_tight_frame",
    "median_filter",
    "omp",
    "oracle_filter",
]
