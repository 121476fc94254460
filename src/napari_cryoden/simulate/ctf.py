"""Contrast transfer function of the electron microscope (RELION's formulation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


@dataclass(frozen=True)
class CTFParams:
    """Microscope and per-particle CTF parameters (RELION units).

    Attributes
    ----------
    defocus_u, defocus_v
        Defocus in Å along the two astigmatism axes (positive = underfocus).
    defocus_angle
        Angle of the U axis from x, degrees.
    voltage
        kV. cs: spherical aberration, mm. amplitude_contrast: fraction (0..1).
    b_factor
        Envelope B-factor in Å² (``exp(-B k^2 / 4)``).
    phase_shift
        Extra phase shift in degrees (phase plate).
    """

    defocus_u: float = 15000.0
    defocus_v: float = 15000.0
    defocus_angle: float = 0.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07
    b_factor: float = 0.0
    phase_shift: float = 0.0


def ctf_2d(shape: tuple[int, int], *, pixel_size: float, defocus_u, defocus_v=None, defocus_angle=0.0,
           voltage: float = 300.0, cs: float = 2.7, amplitude_contrast: float = 0.07, b_factor: float = 0.0,
           phase_shift: float = 0.0, rfft: bool = True) -> np.ndarray:
    """CTF on the FFT grid of images of ``shape`` (y, x), one per defocus value.

    ``CTF(k) = -(sqrt(1 - A^2) sin(chi) + A cos(chi)) * exp(-B |k|^2 / 4)`` with
    ``chi = pi * lambda * dz(angle) * |k|^2 - pi / 2 * Cs * lambda^3 * |k|^4 + phase_shift``, k in 1/Å.

    Parameters
    ----------
    defocus_u, defocus_v, defocus_angle
        Scalars or arrays of length n (Å, Å, degrees): one defocus per particle, never per pixel.
    rfft
        Return the half spectrum of ``numpy.fft.rfft2`` (default) or the full ``fft2`` grid.

    Returns
    -------
    np.ndarray
        (n, y, x // 2 + 1) or (n, y, x) float64 (n = 1 for scalar defocus, kept as a leading axis).
    """
    h, w = shape
    du = np.atleast_1d(np.asarray(defocus_u, dtype=np.float64))
    dv = du if defocus_v is None else np.atleast_1d(np.asarray(defocus_v, dtype=np.float64))
    da = np.deg2rad(np.atleast_1d(np.asarray(defocus_angle, dtype=np.float64)))
    du, dv, da = np.broadcast_arrays(du, dv, da)
    ky = np.fft.fftfreq(h, d=pixel_size)
    kx = np.fft.rfftfreq(w, d=pixel_size) if rfft else np.fft.fftfreq(w, d=pixel_size)
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    k2 = kxx**2 + kyy**2
    angle = np.arctan2(kyy, kxx)
    lam = electron_wavelength(voltage)
    cs_a = cs * 1e7  # mm -> Å
    dz = 0.5 * (du[:, None, None] + dv[:, None, None]
                + (du - dv)[:, None, None] * np.cos(2.0 * (angle[None] - da[:, None, None])))
    chi = np.pi * lam * dz * k2[None] - 0.5 * np.pi * cs_a * lam**3 * k2[None] ** 2 + np.deg2rad(phase_shift)
    a = amplitude_contrast
    ctf = -(np.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi))
    if b_factor:
        ctf = ctf * np.exp(-b_factor * k2 / 4.0)[None]
    return ctf


def apply_ctf(images: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    """Multiply each image's spectrum by its CTF (half-spectrum layout of :func:`ctf_2d`)."""
    spectrum = np.fft.rfft2(np.asarray(images, dtype=np.float64))
    return np.fft.irfft2(spectrum * ctf, s=images.shape[-2:]).astype(np.float32)
