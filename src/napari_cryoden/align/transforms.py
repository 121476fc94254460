"""In-plane rotations and shifts of image stacks, in RELION's convention.

Coordinates: ``x`` is the column and ``y`` the row of an image, both measured from the box centre
``(N // 2, N // 2)`` (RELION/SPIDER/Xmipp centre). With ``R(a) = [[cos a, -sin a], [sin a, cos a]]``:

* forward model (what RELION's projector does for ``rlnAnglePsi`` = psi and ``rlnOriginX/YAngst`` = o):
  ``particle(p) = reference(R(psi) (p + o))`` — the reference rotated by psi, then moved by ``-o``; so the
  origin is the shift that brings the particle back to the box centre;
* alignment (the inverse): ``aligned(q) = particle(R(-psi) q - o)`` — shift by ``+o``, then rotate back.

Seen on screen with the row axis pointing down (napari), a positive psi turns the reference
counter-clockwise. ``docs/conventions.md`` has a picture. Functions accept numpy arrays or torch tensors and
return the same kind; torch work stays on the input's device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensor(images) -> tuple[torch.Tensor, bool]:
    if isinstance(images, torch.Tensor):
        return images, False
    arr = np.asarray(images)
    dtype = torch.float64 if arr.dtype == np.float64 else torch.float32
    if not (arr.flags.writeable and arr.flags.c_contiguous):
        arr = np.array(arr)  # torch cannot wrap read-only (e.g. memory-mapped) arrays safely
    return torch.as_tensor(arr, dtype=dtype), True


def _per_image(values, n: int, *, like: torch.Tensor, width: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.array(values, dtype=np.float64) if not isinstance(values, torch.Tensor) else values,
                        dtype=like.dtype, device=like.device)
    if width is None:
        return t.reshape(-1).expand(n) if t.numel() == 1 else t.reshape(n)
    return t.reshape(1, width).expand(n, width) if t.numel() == width else t.reshape(n, width)


def relion_euler_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION's ZYZ Euler matrix ``A(rot, tilt, psi)`` (degrees), shape (n, 3, 3) or (3, 3).

    A projection at these angles is ``P(x, y) = sum_z V(A^T (x, y, z))`` (RELION's Fourier-slice
    ``F_P(k) = F_V(A^T k)``). ``A`` equals
    ``scipy.spatial.transform.Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T``.
    """
    scalar = np.ndim(rot) == 0 and np.ndim(tilt) == 0 and np.ndim(psi) == 0
    a, b, g = (np.deg2rad(np.atleast_1d(np.asarray(v, dtype=np.float64))) for v in (rot, tilt, psi))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m[0] if scalar else m


def _centred_grid(h: int, w: int, *, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(h, dtype=like.dtype, device=like.device) - h // 2
    x = torch.arange(w, dtype=like.dtype, device=like.device) - w // 2
    return torch.meshgrid(y, x, indexing="ij")


def _sample(images: torch.Tensor, src_x: torch.Tensor, src_y: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample (n, h, w) images at centred source coordinates (n, h, w); zeros outside."""
    n, h, w = images.shape
    # align_corners=True maps -1/+1 to the centres of the first/last pixels.
    u = (src_x + w // 2) * (2.0 / max(w - 1, 1)) - 1.0
    v = (src_y + h // 2) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([u, v], dim=-1)
    return F.grid_sample(images[:, None], grid, mode=mode, padding_mode="zeros", align_corners=True)[:, 0]


def rotate_images(images, angles, *, mode: str = "bicubic"):
    """Rotate each image of an (n, y, x) stack about the box centre: ``out(p) = in(R(angle) p)``.

    This is RELION's in-plane rotation by psi (``angles`` in degrees), without shift.
    """
    return transform_images(images, angles=angles, shifts=None, mode=mode)


def transform_images(images, *, angles, shifts=None, mode: str = "bicubic"):
    """Forward model: ``out(p) = in(R(psi) (p + o))`` for each image (RELION's particle from reference).

    Parameters
    ----------
    images
        (n, y, x) stack or a single (y, x) image (numpy or torch).
    angles
        psi in degrees, one per image or one for all.
    shifts
        RELION origins ``o = (x, y)`` in pixels, shape (n, 2) or (2,); None for no shift.
    mode
        ``grid_sample`` interpolation: "bicubic" (default), "bilinear" or "nearest".
    """
    t, was_numpy = _as_tensor(images)
    single = t.ndim == 2
    if single:
        t = t[None]
    n, h, w = t.shape
    theta = torch.deg2rad(_per_image(angles, n, like=t))[:, None, None]
    yy, xx = _centred_grid(h, w, like=t)
    if shifts is not None:
        o = _per_image(shifts, n, like=t, width=2)
        px, py = xx[None] + o[:, 0, None, None], yy[None] + o[:, 1, None, None]
    else:
        px, py = xx[None].expand(n, h, w), yy[None].expand(n, h, w)
    c, s = torch.cos(theta), torch.sin(theta)
    out = _sample(t, c * px - s * py, s * px + c * py, mode)
    if single:
        out = out[0]
    return out.cpu().numpy() if was_numpy else out


def align_images(images, *, angles, shifts=None, mode: str = "bicubic"):
    """Inverse of :func:`transform_images`: ``aligned(q) = particle(R(-psi) q - o)``.

    Shifts the particle by the origin (back to the centre) and rotates it back, in one interpolation.
    """
    t, was_numpy = _as_tensor(images)
    single = t.ndim == 2
    if single:
        t = t[None]
    n, h, w = t.shape
    theta = torch.deg2rad(_per_image(angles, n, like=t))[:, None, None]
    yy, xx = _centred_grid(h, w, like=t)
    c, s = torch.cos(theta), torch.sin(theta)
    qx, qy = c * xx + s * yy, -s * xx + c * yy  # R(-psi) q
    if shifts is not None:
        o = _per_image(shifts, n, like=t, width=2)
        qx, qy = qx - o[:, 0, None, None], qy - o[:, 1, None, None]
    out = _sample(t, qx, qy, mode)
    if single:
        out = out[0]
    return out.cpu().numpy() if was_numpy else out


def fourier_shift(images, shifts):
    """Move each image by ``shifts = (dx, dy)`` pixels with a Fourier phase ramp (exact, periodic).

    ``out(p) = in(p - d)``: content moves towards +x / +y. To apply a RELION origin ``o`` as the forward
    model does, pass ``-o``.
    """
    t, was_numpy = _as_tensor(images)
    single = t.ndim == 2
    if single:
        t = t[None]
    n, h, w = t.shape
    d = _per_image(shifts, n, like=t, width=2)
    ky = torch.fft.fftfreq(h, device=t.device, dtype=t.dtype)
    kx = torch.fft.rfftfreq(w, device=t.device, dtype=t.dtype)
    phase = -2.0 * math.pi * (kx[None, None, :] * d[:, 0, None, None] + ky[None, :, None] * d[:, 1, None, None])
    spectrum = torch.fft.rfft2(t) * torch.polar(torch.ones_like(phase), phase)
    out = torch.fft.irfft2(spectrum, s=(h, w))
    if single:
        out = out[0]
    return out.cpu().numpy() if was_numpy else out
