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
    return _chunked(_transform, images, angles, shifts, mode)


def _transform(t: torch.Tensor, theta: torch.Tensor, o: torch.Tensor | None, mode: str) -> torch.Tensor:
    n, h, w = t.shape
    yy, xx = _centred_grid(h, w, like=t)
    if o is not None:
        px, py = xx[None] + o[:, 0, None, None], yy[None] + o[:, 1, None, None]
    else:
        px, py = xx[None].expand(n, h, w), yy[None].expand(n, h, w)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    return _sample(t, c * px - s * py, s * px + c * py, mode)


#: Images interpolated at a time: the sampling grids and coordinates are ~6 copies of the images, so a whole
#: stack of 10^5 particles at once needed ~3 GB more than its own size (docs/cluster.md, "Limits").
CHUNK = 4096


def _chunked(fn, images, angles, shifts, mode: str):
    """Apply ``fn(t, theta, origins, mode)`` to (n, h, w) ``images`` (or one (h, w) image) :data:`CHUNK` images
    at a time; a numpy input (a memory map too) is read chunk by chunk into one numpy output."""
    as_numpy = not isinstance(images, torch.Tensor)
    if as_numpy:
        images = np.asarray(images)
    single = images.ndim == 2
    if single:
        images = images[None]
    n = images.shape[0]
    like = _as_tensor(images[:1])[0] if as_numpy else images
    theta = torch.deg2rad(_per_image(angles, n, like=like))
    o = _per_image(shifts, n, like=like, width=2) if shifts is not None else None
    if as_numpy:
        out = np.empty(images.shape, np.float64 if like.dtype == torch.float64 else np.float32)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            t = _as_tensor(images[start:stop])[0]
            out[start:stop] = fn(t, theta[start:stop], None if o is None else o[start:stop], mode).cpu().numpy()
    elif n <= CHUNK:
        out = fn(images, theta, o, mode)
    else:
        out = torch.cat([fn(images[s:s + CHUNK], theta[s:s + CHUNK], None if o is None else o[s:s + CHUNK], mode)
                         for s in range(0, n, CHUNK)])
    return out[0] if single else out


def align_images(images, *, angles, shifts=None, mode: str = "bicubic"):
    """Inverse of :func:`transform_images`: ``aligned(q) = particle(R(-psi) q - o)``.

    Shifts the particle by the origin (back to the centre) and rotates it back, in one interpolation.
    """
    return _chunked(_align, images, angles, shifts, mode)


def _align(t: torch.Tensor, theta: torch.Tensor, o: torch.Tensor | None, mode: str) -> torch.Tensor:
    h, w = t.shape[-2:]
    yy, xx = _centred_grid(h, w, like=t)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    qx, qy = c * xx + s * yy, -s * xx + c * yy  # R(-psi) q
    if o is not None:
        qx, qy = qx - o[:, 0, None, None], qy - o[:, 1, None, None]
    return _sample(t, qx, qy, mode)


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
