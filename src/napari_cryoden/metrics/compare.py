"""One bundle of image metrics, shared by ``cryoden evaluate image``, the Compare widget and the demo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CryodenInputError
from .fourier import FSCCurve, fourier_shell_correlation
from .intensity import mse, psnr, ssim


@dataclass(frozen=True)
class Comparison:
    """``rows``: metric name -> value, in display order; ``curve``: the FSC/FRC curve (None without one)."""

    rows: dict
    curve: FSCCurve | None


def compare(reference: np.ndarray, estimate: np.ndarray, *, voxel_size: float | None = None, fit: bool = True,
            fsc: bool = True) -> Comparison:
    """MSE (also on [0, 1]-scaled data), PSNR (dB) and SSIM of ``estimate`` against ``reference`` — after a
    least-squares affine fit of the estimate when ``fit`` — and, with ``fsc`` and a ``voxel_size`` in Å, the
    Fourier shell/ring correlation and its 0.5 / 0.143 resolutions (Å).

    Raises CryodenInputError when the shapes differ.
    """
    if reference.shape != estimate.shape:
        raise CryodenInputError(None, f"shapes differ: {reference.shape} and {estimate.shape}")
    r = np.asarray(reference, dtype=np.float64)
    e = np.asarray(estimate, dtype=np.float64)
    rows = {
        "MSE": mse(r, e, fit=fit),
        "MSE ([0,1]-scaled)": mse(r, e, normalize="minmax"),
        "PSNR (dB)": psnr(r, e, fit=fit),
        "SSIM": ssim(r, e, fit=fit),
    }
    curve = None
    if fsc and voxel_size is not None:
        curve = fourier_shell_correlation(r, e, voxel_size=voxel_size)
        rows["FSC 0.5 (Å)"] = curve.resolution(0.5)
        rows["FSC 0.143 (Å)"] = curve.resolution(0.143)
    return Comparison(rows=rows, curve=curve)
