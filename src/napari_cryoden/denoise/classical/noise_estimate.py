"""Estimating the standard deviation of additive white noise from the noisy data alone.

The estimator is Donoho's median absolute deviation of the finest diagonal wavelet band (Donoho &
Johnstone 1994): on each 2×2 block ``[[a, b], [c, d]]`` of an image the orthonormal Haar diagonal
coefficient is ``(a - b - c + d) / 2``. Smooth signal contributes almost nothing to that band, white noise
of standard deviation σ contributes N(0, σ²), and the median of |coefficient| divided by 0.6745 (the median
of |N(0, 1)|) is a robust estimate of σ that ignores the few large coefficients that edges produce.

It slightly over-estimates σ on images with much fine detail (a clean image gives a small positive value)
and under-estimates spatially correlated noise, whose power sits at low frequencies. Give the noise sigma
explicitly when it is known.
"""

from __future__ import annotations

import numpy as np

__all__ = ["estimate_noise_sigma"]

#: Median of |N(0, 1)|.
_MAD_TO_SIGMA = 0.6744897501960817


def _diagonal_band(images: np.ndarray) -> np.ndarray:
    """Finest Haar diagonal coefficients of the last two axes: shape (..., y // 2, x // 2)."""
    h, w = images.shape[-2] // 2 * 2, images.shape[-1] // 2 * 2
    x = np.asarray(images[..., :h, :w], dtype=np.float64)
    return (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2.0


def estimate_noise_sigma(data: np.ndarray, *, per_image: bool = False) -> float | np.ndarray:
    """Standard deviation of white Gaussian noise in ``data`` (input units).

    Parameters
    ----------
    data
        A 2D image (y, x), a 3D volume (z, y, x) or an image stack (n, y, x). Volumes use the 2D diagonal
        band of every z slice, pooled into one estimate.
    per_image
        For a stack: one estimate per image (shape (n,)) instead of one for the whole array.

    Returns
    -------
    float or numpy.ndarray
        ``median(|HH|) / 0.6745``; 0 for an image smaller than 2×2.
    """
    arr = np.asarray(data)
    if arr.shape[-1] < 2 or arr.shape[-2] < 2:
        return np.zeros(arr.shape[0]) if per_image and arr.ndim == 3 else 0.0
    if per_image and arr.ndim == 3:
        out = np.empty(arr.shape[0])
        for i in range(arr.shape[0]):
            out[i] = np.median(np.abs(_diagonal_band(arr[i]))) / _MAD_TO_SIGMA
        return out
    if arr.ndim == 3:
        # pool slices in chunks so a memory-mapped volume is never read whole into float64
        bands = [np.abs(_diagonal_band(arr[i:i + 16])).ravel() for i in range(0, arr.shape[0], 16)]
        return float(np.median(np.concatenate(bands)) / _MAD_TO_SIGMA)
    return float(np.median(np.abs(_diagonal_band(arr))) / _MAD_TO_SIGMA)
