"""Gaussian and median filters (scipy), with an oracle mode that picks the parameter against a reference.

The Gaussian filter convolves with ``exp(-r² / (2 sigma²))`` (``sigma`` in pixels, reflecting borders); the
median filter takes the median of a ``size``×``size`` (×``size`` for volumes) neighbourhood. An (n, y, x)
stack is filtered image by image (no smoothing across images); a (z, y, x) volume is filtered in 3D.

**Oracle mode** (``reference=`` a clean MRC file, or :func:`oracle_filter` with an array): the parameter
is chosen on a grid to minimise the mean squared error against the clean reference, one value for the whole
input. This is what benchmarks call the "Gaussian oracle": the best any Gaussian filter can do, a bound
that no real run (which has no clean reference) can reach. Never use it on data you want to interpret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ...errors import CryodenInputError
from ...params import param
from ...progress import StageClock
from ..registry import DenoiseMethod, register
from ._common import check_input

__all__ = ["GaussianParams", "MedianParams", "gaussian_filter", "median_filter", "oracle_filter",
           "GAUSSIAN_SIGMA_GRID", "MEDIAN_SIZE_GRID"]

#: Oracle grid of Gaussian sigmas (pixels).
GAUSSIAN_SIGMA_GRID = tuple(float(s) for s in np.round(np.arange(0.25, 6.01, 0.25), 2))
#: Oracle grid of median sizes (pixels).
MEDIAN_SIZE_GRID = (1, 3, 5, 7, 9, 11)


def gaussian_filter(data: np.ndarray, sigma: float, *, is_stack: bool) -> np.ndarray:
    """Gaussian-filtered float32 copy of ``data`` (``sigma`` pixels; stacks image by image)."""
    arr = np.asarray(data, dtype=np.float32)
    if sigma <= 0:
        return arr.copy()
    sig = (0.0, sigma, sigma) if is_stack else sigma
    return ndimage.gaussian_filter(arr, sigma=sig, mode="reflect").astype(np.float32, copy=False)


def median_filter(data: np.ndarray, size: int, *, is_stack: bool) -> np.ndarray:
    """Median-filtered float32 copy of ``data`` (``size`` pixels per side; stacks image by image)."""
    arr = np.asarray(data, dtype=np.float32)
    if size <= 1:
        return arr.copy()
    sz = (1, size, size) if is_stack else size
    return ndimage.median_filter(arr, size=sz, mode="reflect").astype(np.float32, copy=False)


def oracle_filter(noisy: np.ndarray, reference: np.ndarray, *, kind: str = "gaussian", is_stack: bool = False,
                  grid: Sequence[float] | None = None) -> tuple[float, np.ndarray, dict[float, float]]:
    """Filter ``noisy`` with the grid value that minimises the MSE against ``reference``.

    Returns ``(best_value, filtered, {value: mse})``.
    """
    if np.shape(noisy) != np.shape(reference):
        raise CryodenInputError("reference", f"must have the shape of the data, {np.shape(noisy)}, got "
                                             f"{np.shape(reference)}")
    ref = np.asarray(reference, dtype=np.float64)
    if kind == "gaussian":
        values, fn = (grid or GAUSSIAN_SIGMA_GRID), gaussian_filter
    elif kind == "median":
        values, fn = (grid or MEDIAN_SIZE_GRID), median_filter
    else:
        raise ValueError(f"kind must be 'gaussian' or 'median', got {kind!r}")
    scores: dict[float, float] = {}
    best, best_img = None, None
    for v in values:
        img = fn(noisy, int(v) if kind == "median" else float(v), is_stack=is_stack)
        scores[v] = float(np.mean((img - ref) ** 2))
        if best is None or scores[v] < scores[best]:
            best, best_img = v, img
    return best, best_img, scores


def _load_reference(path: str, shape: tuple[int, ...]) -> np.ndarray:
    from ...errors import require_finite
    from ...io.mrc import read_mrc

    ref = read_mrc(path).data
    if tuple(ref.shape) != tuple(shape):
        raise CryodenInputError(path, f"the oracle reference must have the data's shape {tuple(shape)}, got "
                                      f"{tuple(ref.shape)}")
    require_finite(ref, name=path)
    return np.asarray(ref, dtype=np.float32)


@dataclass(frozen=True)
class GaussianParams:
    sigma: float = param(1.0, "Gaussian standard deviation in pixels", min=0.0, max=50.0, unit="px", basic=True)
    reference: str | None = param(None, "oracle mode (benchmarks only): clean MRC of the same shape; sigma "
                                        "is then chosen on a grid (0.25-6 px) to minimise the MSE against it")


@dataclass(frozen=True)
class MedianParams:
    size: int = param(3, "median window side in pixels", min=1, max=51, unit="px", basic=True)
    reference: str | None = param(None, "oracle mode (benchmarks only): clean MRC of the same shape; size "
                                        "is then chosen among 1-11 px to minimise the MSE against it")


#: Planes per slab when a volume is filtered slab by slab (into a memory-mapped output).
SLAB_PLANES = 32


def _iter_filter(data, filt, halo: int, *, is_stack: bool, out=None):
    """Apply ``filt(array) -> array`` to ``data``: whole when it fits and no ``out`` is given, else slab by slab
    along the first axis with ``halo`` planes of context (images one by one for a stack), so host memory holds
    one slab. With ``halo`` at least the filter's radius the result equals the whole-array filter exactly."""
    n = data.shape[0] if data.ndim == 3 else 1
    if out is None and data.nbytes <= 2**30 or data.ndim == 2:
        clock = StageClock("denoise", 1)
        yield clock.event(0)
        result = filt(np.asarray(data, dtype=np.float32))
        yield clock.event(1)
        if out is not None:
            out[...] = result
            return out
        return result
    if out is None:
        out = np.empty(data.shape, dtype=np.float32)
    step = SLAB_PLANES if not is_stack else max(1, SLAB_PLANES * 4)
    halo = 0 if is_stack else halo
    clock = StageClock("denoise", n)
    yield clock.event(0)
    for z0 in range(0, n, step):
        z1 = min(n, z0 + step)
        a, b = max(0, z0 - halo), min(n, z1 + halo)
        res = filt(np.asarray(data[a:b], dtype=np.float32))
        out[z0:z1] = res[z0 - a:z1 - a]
        yield clock.event(z1)
    return out


def _iter_filter_method(kind: str, data, params, filt, halo: int, *, is_stack: bool, name, out):
    """The registry body shared by the Gaussian and median filters: the oracle mode (``params.reference``)
    or the filter itself, slab by slab (:func:`_iter_filter`)."""
    check_input(data, is_stack=is_stack, name=name)
    if not params.reference:
        result = yield from _iter_filter(data, filt, halo, is_stack=is_stack, out=out)
        return result
    clock = StageClock("denoise", 1)
    yield clock.event(0)
    best, result, _ = oracle_filter(data, _load_reference(params.reference, data.shape), kind=kind,
                                    is_stack=is_stack)
    yield clock.event(1, **{"oracle_sigma" if kind == "gaussian" else "oracle_size": best})
    if out is None:
        return result
    out[...] = result
    return out


def iter_gaussian(data, params: GaussianParams, *, is_stack: bool, voxel_size=None, seed: int = 0,
                  device: str = "auto", name=None, out=None):
    """Gaussian filter (registry interface); returns a float32 array of ``data``'s shape (``out`` when given)."""
    halo = int(4.0 * params.sigma + 0.5) + 1  # scipy truncates the kernel at 4 sigma
    return (yield from _iter_filter_method("gaussian", data, params,
                                           lambda a: gaussian_filter(a, params.sigma, is_stack=is_stack), halo,
                                           is_stack=is_stack, name=name, out=out))


def iter_median(data, params: MedianParams, *, is_stack: bool, voxel_size=None, seed: int = 0,
                device: str = "auto", name=None, out=None):
    """Median filter (registry interface); returns a float32 array of ``data``'s shape (``out`` when given)."""
    return (yield from _iter_filter_method("median", data, params,
                                           lambda a: median_filter(a, params.size, is_stack=is_stack),
                                           params.size // 2 + 1, is_stack=is_stack, name=name, out=out))


register(DenoiseMethod(
    name="gaussian", title="Gaussian filter", family="classical", params=GaussianParams, denoise=iter_gaussian,
    description="Gaussian low-pass filter (sigma in pixels); stacks image by image, volumes in 3D. With "
                "--reference CLEAN.mrc (oracle mode, benchmarks only) sigma is chosen to minimise the MSE.",
))
register(DenoiseMethod(
    name="median", title="Median filter", family="classical", params=MedianParams, denoise=iter_median,
    description="Median filter (window side in pixels); stacks image by image, volumes in 3D. With "
                "--reference CLEAN.mrc (oracle mode, benchmarks only) the size is chosen to minimise the MSE.",
))
