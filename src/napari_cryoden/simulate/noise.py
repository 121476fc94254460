"""Additive Gaussian noise at a stated signal-to-noise ratio, white or spatially correlated.

SNR follows the project convention: the variance of the clean signal (inside ``mask`` when one is given)
divided by the variance of the noise. SNR 0.1 means the noise variance is ten times the signal variance.
With ``axes`` (e.g. ``(1, 2)`` for an ``(n, y, x)`` stack) each image gets its own noise level, computed from
its own signal variance, and coloured noise is filtered along those axes only, so images stay independent.

Coloured noise is white Gaussian noise low-pass filtered in Fourier space by a Gaussian transfer function
``exp(-2 pi^2 L^2 |k|^2)`` (``k`` in cycles/pixel, ``L = correlation_length`` in pixels), which is a
real-space convolution with a Gaussian of standard deviation ``L`` pixels; ``L`` may differ per axis
(``Π_a exp(-2 pi^2 L_a^2 k_a^2)``, e.g. ``(1.5, 0, 0)`` for noise correlated along z only). The correlation between two
voxels ``d`` pixels apart is then ``exp(-d^2 / (4 L^2))`` (0.89 for neighbours at the default L = 1.5).
After filtering the noise is rescaled so that its empirical variance (per image with ``axes``, over all
of its pixels) is exactly the target, so the SNR is exact rather than only expected.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.fft

from napari_cryoden.errors import CryodenInputError

logger = logging.getLogger(__name__)

__all__ = ["add_noise", "correlated_noise", "measure_snr", "noise_std_for_snr"]

NOISE_COLOURS = ("white", "coloured")
_COLOUR_ALIASES = {"white": "white", "coloured": "coloured", "colored": "coloured"}


def _normalise_axes(axes: int | Sequence[int] | None, ndim: int) -> tuple[int, ...] | None:
    """Sorted, non-negative, unique axes, or None for "all axes"."""
    if axes is None:
        return None
    raw = (axes,) if np.isscalar(axes) else tuple(axes)
    out = set()
    for a in raw:
        if not isinstance(a, (int, np.integer)) or not -ndim <= int(a) < ndim:
            raise CryodenInputError(None, f"axes must be integers in [-{ndim}, {ndim}), got {axes!r}")
        out.add(int(a) % ndim)
    if not out:
        raise CryodenInputError(None, "axes must name at least one axis")
    return tuple(sorted(out))


def _broadcast_mask(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask).astype(bool, copy=False)
    try:
        return np.broadcast_to(m, shape)
    except ValueError as exc:
        raise CryodenInputError(
            None, f"mask of shape {m.shape} does not broadcast to the data shape {shape}"
        ) from exc


def _variance(data: np.ndarray, *, mask: np.ndarray | None, axes: tuple[int, ...] | None) -> np.ndarray:
    """Population variance (float64) over ``axes`` (all when None) inside ``mask``, with keepdims."""
    if mask is None:
        return np.var(data, axis=axes, keepdims=True, dtype=np.float64)
    count = np.sum(mask, axis=axes, keepdims=True)
    if np.any(count == 0):
        raise CryodenInputError(None, "mask selects no pixels" + (" in at least one image" if axes else ""))
    mean = np.sum(data, axis=axes, keepdims=True, where=mask, dtype=np.float64) / count
    dev = data - mean
    return np.sum(dev * dev, axis=axes, keepdims=True, where=mask) / count


def _check_snr(snr) -> np.ndarray:
    s = np.asarray(snr, dtype=np.float64)
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise CryodenInputError(None, f"snr must be positive and finite, got {snr!r}")
    return s


def _as_float(data, what: str) -> np.ndarray:
    arr = np.asarray(data)
    if arr.size == 0:
        raise CryodenInputError(None, f"{what} is empty")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def noise_std_for_snr(
    clean: np.ndarray,
    snr: float,
    *,
    mask: np.ndarray | None = None,
    axes: int | Sequence[int] | None = None,
) -> float | np.ndarray:
    """Standard deviation of the noise that gives ``clean`` the signal-to-noise ratio ``snr``.

    Parameters
    ----------
    clean
        Noise-free image, volume or stack (any shape).
    snr
        Signal variance over noise variance, > 0. With ``axes`` it may also be an array that broadcasts to
        the per-image result (one SNR per image).
    mask
        Boolean array broadcastable to ``clean``; the signal variance is measured where it is True.
    axes
        Axes that make up one image, e.g. ``(1, 2)`` for an ``(n, y, x)`` stack. None: the whole array.

    Returns
    -------
    float or numpy.ndarray
        ``sqrt(var(clean[mask]) / snr)``: a float when ``axes`` is None, otherwise a float64 array with the
        reduced axes kept as length 1 (shape ``(n, 1, 1)`` for a stack), ready to broadcast against
        ``clean``.

    Raises
    ------
    ValueError
        (:class:`~napari_cryoden.errors.CryodenInputError`) if ``snr`` is not positive, the mask selects
        nothing, or the signal is constant (its SNR would be undefined).
    """
    s = _check_snr(snr)
    arr = _as_float(clean, "clean")
    ax = _normalise_axes(axes, arr.ndim)
    var = _variance(arr, mask=_broadcast_mask(mask, arr.shape), axes=ax)
    if np.any(var <= 0) or not np.all(np.isfinite(var)):
        raise CryodenInputError(
            None, "the clean signal is constant (zero variance)" + (" in at least one image" if ax else "")
            + " or not finite, so no noise level gives the requested SNR"
        )
    std = np.sqrt(var / s)
    if ax is None:
        if std.size != 1:
            raise CryodenInputError(None, "snr must be a single number when axes is None")
        return float(std.reshape(()))
    return std


def _lowpass_gaussian(noise: np.ndarray, *, axes: tuple[int, ...], sigma) -> np.ndarray:
    """Convolve ``noise`` with a Gaussian of ``sigma`` pixels (one value, or one per axis of ``axes``; 0 leaves
    that axis uncorrelated) along ``axes`` (periodic, via rFFT)."""
    sigmas = (float(sigma),) * len(axes) if np.isscalar(sigma) else tuple(float(s) for s in sigma)
    spectrum = scipy.fft.rfftn(noise, axes=axes, workers=-1)
    transfer = np.ones((1,) * noise.ndim, dtype=np.float32)
    for i, ax in enumerate(axes):
        n = noise.shape[ax]
        k = scipy.fft.rfftfreq(n) if i == len(axes) - 1 else scipy.fft.fftfreq(n)
        shape = [1] * noise.ndim
        shape[ax] = k.size
        transfer = transfer * np.exp(-2.0 * np.pi**2 * sigmas[i]**2 * k**2).astype(np.float32).reshape(shape)
    spectrum *= transfer
    return scipy.fft.irfftn(spectrum, s=[noise.shape[a] for a in axes], axes=axes, workers=-1)


def _check_lengths(correlation_length, n_axes: int) -> tuple[float, ...]:
    """One Gaussian σ per filtered axis, from one value (isotropic, > 0) or one value per axis (≥ 0, one > 0)."""
    values = np.atleast_1d(np.asarray(correlation_length, dtype=np.float64)) if not isinstance(
        correlation_length, str) else np.array([np.nan])
    if values.ndim != 1 or values.size not in (1, n_axes):
        raise CryodenInputError(None, f"correlation_length must be one value or {n_axes} (one per axis), got "
                                      f"{correlation_length!r}")
    if values.size == 1:
        values = np.repeat(values, n_axes)
    if not (np.all(np.isfinite(values)) and np.all(values >= 0) and np.any(values > 0)):
        raise CryodenInputError(None, f"correlation_length must be positive (per axis: ≥ 0, not all 0), got "
                                      f"{correlation_length!r}")
    return tuple(float(v) for v in values)


def correlated_noise(
    shape: Sequence[int],
    correlation_length: float | Sequence[float],
    *,
    rng: np.random.Generator | int | None,
    std: float = 1.0,
) -> np.ndarray:
    """Pure Gaussian noise of standard deviation ``std`` (exactly, empirically), correlated by a Gaussian blur
    of ``correlation_length`` pixels: one value (isotropic) or one per axis (≥ 0; 0 leaves that axis
    uncorrelated; all 0 gives white noise). The noise :func:`add_noise` adds, without a signal: a known
    answer for noise-correlation estimates.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    gen = np.random.default_rng(rng)
    noise = gen.standard_normal(shape, dtype=np.float32)
    values = np.atleast_1d(np.asarray(correlation_length, dtype=np.float64))
    if values.size and np.all(np.isfinite(values)) and np.all(values == 0):
        sigma = None
    else:
        sigma = _check_lengths(correlation_length, len(shape))
    if sigma is not None:
        noise = _lowpass_gaussian(noise, axes=tuple(range(len(shape))), sigma=sigma).astype(np.float32)
    noise *= np.float32(std / float(noise.std()))
    return noise


def add_noise(
    clean: np.ndarray,
    snr: float,
    *,
    rng: np.random.Generator | int | None,
    mask: np.ndarray | None = None,
    axes: int | Sequence[int] | None = None,
    colour: str = "white",
    correlation_length: float | Sequence[float] = 1.5,
) -> np.ndarray:
    """Return ``clean`` plus Gaussian noise whose variance is the signal variance divided by ``snr``.

    Parameters
    ----------
    clean
        Noise-free image, volume or stack. Not modified.
    snr
        Signal variance over noise variance (> 0), measured on ``clean`` inside ``mask``. With ``axes`` it
        may be one value per image.
    rng
        Random generator (or a seed for :func:`numpy.random.default_rng`); the same generator state gives
        the same noise.
    mask
        Boolean array broadcastable to ``clean``: where the signal variance is measured (the noise covers
        the whole array).
    axes
        Axes that make up one image, e.g. ``(1, 2)`` for an ``(n, y, x)`` stack: each image gets its own
        noise level and coloured noise is correlated only within an image. None: the whole array.
    colour
        ``"white"``: i.i.d. Gaussian (its empirical variance matches the target up to sampling error).
        ``"coloured"`` (or ``"colored"``): Gaussian noise low-pass filtered by a Gaussian of standard
        deviation ``correlation_length`` pixels along ``axes`` (periodic boundaries), then rescaled so its
        empirical variance over each image is exactly the target.
    correlation_length
        Standard deviation in pixels of the Gaussian smoothing kernel of coloured noise (> 0): one value for
        noise correlated alike along every axis (isotropic), or one value (≥ 0, not all 0) per filtered axis
        (those of ``axes``, else all), e.g. ``(1.5, 0, 0)`` for a volume whose noise is correlated along z
        only, ``(2.0, 1.0, 0.7)`` for different lengths per axis.

    Returns
    -------
    numpy.ndarray
        float32 array of ``clean``'s shape.
    """
    arr = _as_float(clean, "clean")
    ax = _normalise_axes(axes, arr.ndim)
    kind = _COLOUR_ALIASES.get(str(colour).lower())
    if kind is None:
        raise CryodenInputError(None, f"colour must be one of {NOISE_COLOURS}, got {colour!r}")
    std = noise_std_for_snr(arr, snr, mask=mask, axes=ax)
    gen = np.random.default_rng(rng)
    noise = gen.standard_normal(arr.shape, dtype=np.float32)
    if kind == "coloured":
        filter_axes = ax if ax is not None else tuple(range(arr.ndim))
        sigma = _check_lengths(correlation_length, len(filter_axes))
        noise = _lowpass_gaussian(noise, axes=filter_axes, sigma=sigma)
        empirical = np.sqrt(_variance(noise, mask=None, axes=ax))
        noise *= (np.asarray(std) / empirical).astype(np.float32)
    else:
        noise *= np.asarray(std, dtype=np.float32)
    out = arr.astype(np.float32, copy=True)
    out += noise
    return out


def measure_snr(
    clean: np.ndarray,
    noisy: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    axes: int | Sequence[int] | None = None,
) -> float | np.ndarray:
    """Signal-to-noise ratio of ``noisy`` given its noise-free version: ``var(clean) / var(noisy - clean)``.

    Parameters
    ----------
    clean, noisy
        Arrays of the same shape.
    mask
        Boolean array broadcastable to them; both variances are measured where it is True.
    axes
        Axes that make up one image (e.g. ``(1, 2)`` for a stack) to get one SNR per image.

    Returns
    -------
    float or numpy.ndarray
        A float, or with ``axes`` a float64 array over the remaining axes (shape ``(n,)`` for a stack).
    """
    c = _as_float(clean, "clean")
    n = _as_float(noisy, "noisy")
    if c.shape != n.shape:
        raise CryodenInputError(None, f"clean and noisy must have the same shape, got {c.shape} and {n.shape}")
    ax = _normalise_axes(axes, c.ndim)
    m = _broadcast_mask(mask, c.shape)
    signal = _variance(c, mask=m, axes=ax)
    noise = _variance(n.astype(np.float64) - c, mask=m, axes=ax)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = signal / noise
    if ax is None:
        return float(snr.reshape(()))
    return np.squeeze(snr, axis=ax)
