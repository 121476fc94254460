"""Fourier ring / shell correlation (FRC in 2D, FSC in 3D) and the resolution read from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft

from napari_cryoden.errors import CryodenInputError

logger = logging.getLogger(__name__)

__all__ = [
    "FSCCurve",
    "fourier_ring_correlation",
    "fourier_shell_correlation",
    "resolution_at",
]


@dataclass(frozen=True, eq=False)
class FSCCurve:
    """A Fourier ring/shell correlation curve.

    Attributes
    ----------
    frequency : np.ndarray
        ``(n_shells,)`` shell centres in 1/Å; shell 0 is the DC term, the last is at (or just below) Nyquist.
    correlation : np.ndarray
        ``(n_shells,)`` correlation per shell, in [-1, 1].
    n_coefficients : np.ndarray
        ``(n_shells,)`` number of Fourier coefficients of the full (not half) transform in each shell.
    voxel_size : float
        Pixel / voxel size in Å.
    """

    frequency: np.ndarray
    correlation: np.ndarray
    n_coefficients: np.ndarray
    voxel_size: float

    def __post_init__(self):
        for name in ("frequency", "correlation", "n_coefficients"):
            value = np.array(getattr(self, name))
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if not (self.frequency.shape == self.correlation.shape == self.n_coefficients.shape):
            raise CryodenInputError(None, "frequency, correlation and n_coefficients must have the same length")
        if not self.voxel_size > 0:
            raise CryodenInputError(None, f"voxel_size must be positive (Å), got {self.voxel_size}")

    def resolution(self, threshold: float = 0.143) -> float:
        """Resolution in Å where the curve first drops below ``threshold``.

        The search starts at the first shell after DC. The crossing frequency is interpolated linearly
        between the last shell at or above the threshold and the first shell below it; the resolution is
        its inverse. NaN correlations count as not below.

        Parameters
        ----------
        threshold : float
            Usually 0.143 (half maps of a reconstruction) or 0.5 (a map against a reference).

        Returns
        -------
        float
            Resolution in Å; ``2 * voxel_size`` (Nyquist) if the curve never drops below the threshold,
            ``inf`` if it is already below at the first shell after DC.
        """
        below = np.flatnonzero(self.correlation[1:] < threshold) + 1
        if below.size == 0:
            return 2.0 * float(self.voxel_size)
        i = int(below[0])
        if i == 1:
            return float("inf")
        f0, f1 = float(self.frequency[i - 1]), float(self.frequency[i])
        c0, c1 = float(self.correlation[i - 1]), float(self.correlation[i])
        crossing = f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1)
        return 1.0 / crossing


def resolution_at(curve: FSCCurve, threshold: float = 0.143) -> float:
    """Resolution in Å where ``curve`` first drops below ``threshold``; see :meth:`FSCCurve.resolution`."""
    return curve.resolution(threshold)


def _frequency_magnitude(shape: tuple[int, ...]) -> np.ndarray:
    """|k| in cycles/pixel on the rfftn grid of ``shape``, each axis normalised by its own length."""
    axes = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    k2 = np.zeros([len(a) for a in axes], dtype=np.float64)
    for dim, k in enumerate(axes):
        view = [1] * len(axes)
        view[dim] = -1
        k2 = k2 + (k * k).reshape(view)
    return np.sqrt(k2)


def _hermitian_weights(shape: tuple[int, ...]) -> np.ndarray:
    """Weight 2 for rfft coefficients whose conjugate twin is not stored, 1 for the x = 0 and Nyquist planes."""
    n = shape[-1]
    weights = np.full(n // 2 + 1, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return weights


def fourier_ring_correlation(a, b, *, voxel_size: float = 1.0, mask=None) -> FSCCurve:
    """Fourier ring (2D) or shell (3D) correlation between two maps.

    Parameters
    ----------
    a, b : array_like
        2D images ``(y, x)`` or 3D volumes ``(z, y, x)`` of the same shape; the sides may differ.
    voxel_size : float
        Pixel / voxel size in Å, used to express the frequencies in 1/Å.
    mask : array_like, optional
        Real-space mask of the same shape (soft edges recommended), multiplied into both maps first.

    Returns
    -------
    FSCCurve
        One shell per Fourier pixel of the largest side ``N``: shell ``i`` holds the coefficients whose
        frequency magnitude ``|k|`` (cycles/pixel, each axis normalised by its own length so non-square
        and non-cubic maps work) rounds to ``i / N``, for ``i = 0 .. N // 2``; coefficients beyond Nyquist
        (the corners) are dropped. Per shell the correlation is
        ``Re(sum F_a conj F_b) / sqrt(sum |F_a|^2 sum |F_b|^2)`` over the full transform: the rfft half
        stores each conjugate pair once, so those coefficients count twice. Identical maps give exactly 1
        in every shell with non-zero power; a shell with no power in either map gives 0.

    Notes
    -----
    The same function serves 3D maps; :func:`fourier_shell_correlation` is an alias.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise CryodenInputError(None, f"the two maps must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise CryodenInputError(None, f"maps must be 2D or 3D, got a {a.ndim}D array of shape {a.shape}")
    if min(a.shape) < 2:
        raise CryodenInputError(None, f"maps must be at least 2 pixels on every side, got shape {a.shape}")
    if not voxel_size > 0:
        raise CryodenInputError(None, f"voxel_size must be positive (Å), got {voxel_size}")
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float64)
        if mask.shape != a.shape:
            raise CryodenInputError(None, f"mask must have the map shape {a.shape}, got {mask.shape}")
        a = a * mask
        b = b * mask

    fa = scipy.fft.rfftn(a, workers=-1)
    fb = scipy.fft.rfftn(b, workers=-1)

    size = max(a.shape)
    n_shells = size // 2 + 1
    shell = np.rint(_frequency_magnitude(a.shape) * size).astype(np.intp).ravel()
    keep = shell < n_shells
    shell = shell[keep]
    weights = np.broadcast_to(_hermitian_weights(a.shape), fa.shape).ravel()[keep]

    fa = fa.ravel()[keep]
    fb = fb.ravel()[keep]
    # Written out (not np.abs(...)**2) so that identical maps give bit-identical numerator and powers.
    cross = np.bincount(shell, weights * (fa.real * fb.real + fa.imag * fb.imag), minlength=n_shells)
    power_a = np.bincount(shell, weights * (fa.real * fa.real + fa.imag * fa.imag), minlength=n_shells)
    power_b = np.bincount(shell, weights * (fb.real * fb.real + fb.imag * fb.imag), minlength=n_shells)
    counts = np.bincount(shell, weights, minlength=n_shells)

    denominator = np.sqrt(power_a * power_b)
    correlation = np.zeros(n_shells)
    nonzero = denominator > 0
    correlation[nonzero] = cross[nonzero] / denominator[nonzero]

    frequency = np.arange(n_shells) / (size * float(voxel_size))
    return FSCCurve(
        frequency=frequency,
        correlation=correlation,
        n_coefficients=counts.astype(np.int64),
        voxel_size=float(voxel_size),
    )


fourier_shell_correlation = fourier_ring_correlation
