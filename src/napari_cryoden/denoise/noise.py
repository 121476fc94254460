"""How far the noise is correlated along each axis, estimated from the noisy data alone.

Masking methods (Self2Self, Noise2Void) assume that a voxel's noise cannot be read from its neighbours. Real
tomogram noise is correlated along z (the reconstruction filter and the missing wedge), and there a single
dropped voxel is predicted from correlated neighbours: the network learns to reproduce the noise. This
module measures the correlation length per axis so the dropped blocks can span it (``mask_block="auto"``).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

MAX_LAG = 6
THRESHOLD = 0.2  # a neighbour with correlation ρ explains ρ² of the noise variance: < 4 % below 0.2


def _central_crop(data, size=(64, 128, 128)) -> np.ndarray:
    starts = [max(0, (n - s) // 2) for n, s in zip(data.shape, size)]
    sl = tuple(slice(a, a + s) for a, s in zip(starts, size))
    return np.asarray(data[sl], dtype=np.float32)


def autocorrelation(data, *, max_lag: int = MAX_LAG, highpass_sigma: float = 3.0) -> np.ndarray:
    """(3, max_lag) normalised autocorrelation of the high-passed central crop at lags 1..max_lag along
    z, y, x. High-passing (subtracting a Gaussian blur) removes most of the signal's own correlation, so at
    low SNR what remains is the noise's. Only a crop of at most 64×128×128 voxels is read."""
    v = _central_crop(data)
    if v.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {v.shape}")
    v = v - gaussian_filter(v, highpass_sigma, mode="reflect")
    v = v - v.mean()
    var = float((v * v).mean()) or 1.0
    out = np.zeros((3, max_lag))
    for axis in range(3):
        n = v.shape[axis]
        for k in range(1, min(max_lag, n - 1) + 1):
            a = np.take(v, np.arange(0, n - k), axis=axis)
            b = np.take(v, np.arange(k, n), axis=axis)
            out[axis, k - 1] = float((a * b).mean()) / var
    return out


def correlation_lengths(data, *, threshold: float = THRESHOLD, max_lag: int = MAX_LAG,
                        axes: tuple[int, ...] = (0, 1, 2)) -> tuple[int, int, int]:
    """Per axis, the largest lag ℓ (0..max_lag) up to which the autocorrelation *in excess of the least
    correlated of* ``axes`` stays above ``threshold``: 0 for pixel-independent noise; axes not in ``axes``
    get 0.

    The excess is what makes the estimate safe at high SNR: there the high-passed data are still mostly
    signal, whose correlation is about the same along every axis, and taking it for noise correlation would
    drop needlessly large blocks. Noise correlated along one axis (z in tomograms) stands out against the
    others. (Noise correlated equally along every axis is not detected; set the block by hand then.)
    """
    rho = autocorrelation(data, max_lag=max_lag)
    floor = rho[list(axes)].min(axis=0)
    lengths = []
    for axis in range(3):
        ell = 0
        while axis in axes and ell < max_lag and rho[axis, ell] - floor[ell] > threshold:
            ell += 1
        lengths.append(ell)
    return tuple(lengths)


def auto_mask_block(data, *, dims: int) -> tuple[int, ...]:
    """Block for Self2Self masks: 2ℓ + 1 voxels along an axis with correlation length ℓ, so the centre of a
    dropped block has no kept voxel within the correlation length. ``dims=3``: (z, y, x) of a volume;
    ``dims=2``: (y, x) of an image or a stack of images (shape (n, y, x); the stack axis is not measured)."""
    lengths = correlation_lengths(data, axes=(0, 1, 2) if dims == 3 else (1, 2))
    block = tuple(2 * ell + 1 for ell in lengths)
    return block[1:] if dims == 2 else block
