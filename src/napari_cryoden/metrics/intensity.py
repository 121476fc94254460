"""Pixel-wise quality metrics between a reference image (or volume) and an estimate.

All metrics work on 2D images and 3D volumes and compute in float64. ``fit=True`` first replaces the
estimate by the least-squares affine map ``a * estimate + b`` closest to the reference, so that a method
whose output is rescaled or offset (a normalised denoiser output, say) is not penalised for it.
The ``stack_*`` variants return one value per image of an ``(n, y, x)`` stack.
"""

from __future__ import annotations

import logging
from typing import Callable, Literal

import numpy as np
from skimage.metrics import structural_similarity

from napari_cryoden.errors import CryodenInputError

logger = logging.getLogger(__name__)

__all__ = [
    "fit_affine",
    "mse",
    "psnr",
    "ssim",
    "stack_mse",
    "stack_psnr",
    "stack_ssim",
]


def _as_pair(reference, estimate, *, ndims: tuple[int, ...] = (2, 3)) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise CryodenInputError(
            None, f"reference and estimate must have the same shape, got {ref.shape} and {est.shape}"
        )
    if ref.ndim not in ndims:
        want = " or ".join(f"{d}D" for d in ndims)
        raise CryodenInputError(None, f"images must be {want}, got a {ref.ndim}D array of shape {ref.shape}")
    if ref.size == 0:
        raise CryodenInputError(None, "images are empty")
    return ref, est


def _minmax(image: np.ndarray) -> np.ndarray:
    lo, hi = image.min(), image.max()
    if hi == lo:
        return np.zeros_like(image)
    return (image - lo) / (hi - lo)


def _data_range(reference: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        data_range = float(reference.max() - reference.min())
        if data_range == 0:
            raise CryodenInputError(None, "the reference is constant, so its data range is 0; pass data_range=")
    elif not data_range > 0:
        raise CryodenInputError(None, f"data_range must be positive, got {data_range}")
    return float(data_range)


def fit_affine(estimate, reference) -> np.ndarray:
    """Return ``a * estimate + b`` with ``a, b`` chosen by least squares to be closest to ``reference``.

    Parameters
    ----------
    estimate, reference : array_like
        Arrays of the same shape (any number of dimensions).

    Returns
    -------
    np.ndarray
        float64 array of the shape of ``estimate``. A constant ``estimate`` gives the mean of ``reference``
        everywhere.
    """
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape:
        raise CryodenInputError(
            None, f"estimate and reference must have the same shape, got {est.shape} and {ref.shape}"
        )
    est_centred = est - est.mean()
    variance = float(np.sum(est_centred * est_centred))
    slope = 0.0 if variance == 0 else float(np.sum(est_centred * (ref - ref.mean()))) / variance
    return slope * est_centred + ref.mean()


def mse(reference, estimate, *, fit: bool = False, normalize: Literal["minmax"] | None = None) -> float:
    """Mean squared error between ``reference`` and ``estimate``.

    Parameters
    ----------
    reference, estimate : array_like
        2D images or 3D volumes of the same shape.
    fit : bool
        Replace ``estimate`` by :func:`fit_affine` ``(estimate, reference)`` first.
    normalize : {None, "minmax"}
        ``"minmax"`` rescales each of the two arrays independently to [0, 1] before the error is taken
        (a constant array becomes all zeros). Cannot be combined with ``fit=True``.

    Returns
    -------
    float
        The mean of the squared differences, in the squared units of the inputs (or of [0, 1]).
    """
    ref, est = _as_pair(reference, estimate)
    if normalize not in (None, "minmax"):
        raise CryodenInputError(None, f"normalize must be None or 'minmax', got {normalize!r}")
    if fit and normalize is not None:
        raise CryodenInputError(None, "choose fit=True or normalize='minmax', not both")
    if fit:
        est = fit_affine(est, ref)
    if normalize == "minmax":
        ref, est = _minmax(ref), _minmax(est)
    diff = ref - est
    return float(np.mean(diff * diff))


def psnr(reference, estimate, *, data_range: float | None = None, fit: bool = False) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``.

    Parameters
    ----------
    reference, estimate : array_like
        2D images or 3D volumes of the same shape.
    data_range : float, optional
        Peak-to-peak range of the signal; defaults to ``reference.max() - reference.min()``.
    fit : bool
        Replace ``estimate`` by :func:`fit_affine` ``(estimate, reference)`` first.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the two agree exactly. Equals
        :func:`skimage.metrics.peak_signal_noise_ratio` with the same ``data_range``.
    """
    ref, est = _as_pair(reference, estimate)
    data_range = _data_range(ref, data_range)
    error = mse(ref, est, fit=fit)
    if error == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / error))


def _ssim_window(shape: tuple[int, ...]) -> int:
    # skimage needs an odd window no larger than the smallest side; 7 is its default.
    side = min(7, min(shape))
    if side % 2 == 0:
        side -= 1
    if side < 3:
        raise CryodenInputError(None, f"SSIM needs every side to be at least 3 pixels, got shape {shape}")
    return side


def ssim(reference, estimate, *, data_range: float | None = None, fit: bool = False) -> float:
    """Mean structural similarity (SSIM) via :func:`skimage.metrics.structural_similarity`.

    Parameters
    ----------
    reference, estimate : array_like
        2D images or 3D volumes of the same shape, every side at least 3 pixels.
    data_range : float, optional
        Peak-to-peak range of the signal; defaults to ``reference.max() - reference.min()``.
    fit : bool
        Replace ``estimate`` by :func:`fit_affine` ``(estimate, reference)`` first.

    Returns
    -------
    float
        Mean SSIM over the image, 1 for identical inputs. The uniform window is 7 pixels wide, or the
        largest odd width that fits a smaller image.
    """
    ref, est = _as_pair(reference, estimate)
    data_range = _data_range(ref, data_range)
    if fit:
        est = fit_affine(est, ref)
    return float(structural_similarity(ref, est, data_range=data_range, win_size=_ssim_window(ref.shape)))


def _per_image(metric: Callable[..., float], reference_stack, estimate_stack, **options) -> np.ndarray:
    est = np.asarray(estimate_stack)
    ref = np.asarray(reference_stack)
    if est.ndim != 3:
        raise CryodenInputError(None, f"estimate_stack must be an (n, y, x) stack, got shape {est.shape}")
    if ref.shape == est.shape[1:]:
        ref = np.broadcast_to(ref, est.shape)
    if ref.shape != est.shape:
        raise CryodenInputError(
            None,
            f"reference_stack must have shape {est.shape} or {est.shape[1:]}, got {ref.shape}",
        )
    return np.array([metric(r, e, **options) for r, e in zip(ref, est)], dtype=np.float64)


def stack_mse(
    reference_stack, estimate_stack, *, fit: bool = False, normalize: Literal["minmax"] | None = None
) -> np.ndarray:
    """:func:`mse` of every image of an ``(n, y, x)`` stack.

    ``reference_stack`` is ``(n, y, x)`` or a single ``(y, x)`` image used for every estimate; fitting and
    normalisation are per image. Returns an ``(n,)`` float64 array.
    """
    return _per_image(mse, reference_stack, estimate_stack, fit=fit, normalize=normalize)


def stack_psnr(
    reference_stack, estimate_stack, *, data_range: float | None = None, fit: bool = False
) -> np.ndarray:
    """:func:`psnr` (dB) of every image of an ``(n, y, x)`` stack.

    ``reference_stack`` is ``(n, y, x)`` or a single ``(y, x)`` image used for every estimate. The affine
    fit and the default ``data_range`` (of each reference image) are per image. Returns an ``(n,)`` array.
    """
    return _per_image(psnr, reference_stack, estimate_stack, data_range=data_range, fit=fit)


def stack_ssim(
    reference_stack, estimate_stack, *, data_range: float | None = None, fit: bool = False
) -> np.ndarray:
    """:func:`ssim` of every image of an ``(n, y, x)`` stack (2D SSIM per image, not 3D).

    ``reference_stack`` is ``(n, y, x)`` or a single ``(y, x)`` image used for every estimate. The affine
    fit and the default ``data_range`` are per image. Returns an ``(n,)`` array.
    """
    return _per_image(ssim, reference_stack, estimate_stack, data_range=data_range, fit=fit)
