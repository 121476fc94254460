"""Projections of 3D maps (real-space line integrals) and map resampling."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from ..align.transforms import relion_euler_matrix


def resample_map(volume: np.ndarray, *, voxel_size: float, pixel_size: float, box: int | None = None) -> np.ndarray:
    """Rescale a cubic map from ``voxel_size`` to ``pixel_size`` Å and pad/crop it to ``box`` voxels.

    Padding and cropping keep the map centre at ``N // 2``.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if not np.isclose(voxel_size, pixel_size, rtol=1e-4):
        vol = ndi.zoom(vol, voxel_size / pixel_size, order=3, prefilter=True).astype(np.float32)
    if box is None:
        return vol
    out = np.zeros((box,) * 3, dtype=np.float32)
    src, dst = [], []
    for n in vol.shape:
        # Align the centres n // 2 and box // 2.
        start_src = max(0, n // 2 - box // 2)
        start_dst = max(0, box // 2 - n // 2)
        length = min(n - start_src, box - start_dst)
        src.append(slice(start_src, start_src + length))
        dst.append(slice(start_dst, start_dst + length))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def project_map(volume: np.ndarray, *, rot, tilt, psi, batch_voxels: int = 1 << 23,
                device: str | torch.device = "cpu", on_batch=None) -> np.ndarray:
    """Project a (z, y, x) map at RELION Euler angles (degrees): ``P(x, y) = sum_z V(A^T (x, y, z))``.

    Trilinear interpolation about the centre ``N // 2`` of each axis; for the identity rotation the result
    is exactly ``volume.sum(axis=0)``.

    ``on_batch(n_done)`` is called after each batch of projections (for progress bars).

    Returns
    -------
    np.ndarray
        (n, y, x) float32 projections, one per angle triplet.
    """
    vol = torch.as_tensor(np.array(volume, dtype=np.float32), device=device)  # a writable copy
    d, h, w = vol.shape
    mats = relion_euler_matrix(rot, tilt, psi).reshape(-1, 3, 3)
    n = mats.shape[0]
    zz, yy, xx = torch.meshgrid(
        *(torch.arange(s, dtype=torch.float32, device=device) - s // 2 for s in (d, h, w)), indexing="ij")
    p = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)  # (d*h*w, 3) as (x, y, z)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1), 2.0 / max(d - 1, 1)], device=device)
    centre = torch.tensor([w // 2, h // 2, d // 2], dtype=torch.float32, device=device)
    out = np.empty((n, h, w), dtype=np.float32)
    step = max(1, batch_voxels // (d * h * w))
    for start in range(0, n, step):
        m = torch.as_tensor(mats[start:start + step], dtype=torch.float32, device=device)  # A
        src = torch.einsum("nij,pj->npi", m.transpose(1, 2), p)  # A^T p
        grid = ((src + centre) * scale - 1.0).reshape(m.shape[0], d, h, w, 3)
        sampled = F.grid_sample(vol[None, None].expand(m.shape[0], 1, d, h, w), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=True)
        out[start:start + m.shape[0]] = sampled[:, 0].sum(dim=1).cpu().numpy()
        if on_batch is not None:
            on_batch(m.shape[0])
    return out
