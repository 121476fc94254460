"""Tiled prediction with smooth overlap blending, streamed slab by slab.

A volume of any size is cut into overlapping tiles; each tile's prediction is weighted by a separable
window that ramps smoothly (raised cosine) across the overlap and is flat inside, and the weighted sum is
divided by the summed weights, so there are no seams and a constant or linear input passes through an
identity predictor exactly. Tiles are read from the (memory-mapped) input one z-slab at a time and finished
planes are written to the output as soon as no later tile touches them, so host memory is bounded by a
slab, not by the volume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence

import numpy as np

from ..progress import ProgressEvent, StageClock

log = logging.getLogger(__name__)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start indices of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` overlap."""
    if tile >= length:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return sorted(set(starts))


def blend_window(tile: Sequence[int], overlap: Sequence[int], *, floor: float = 1e-3) -> np.ndarray:
    """Separable weights: raised-cosine ramps of ``overlap`` voxels at both ends of each axis, 1 inside."""
    w = np.ones(tuple(tile), dtype=np.float32)
    for axis, (n, o) in enumerate(zip(tile, overlap)):
        o = min(int(o), n // 2)
        ramp = np.ones(n, dtype=np.float32)
        if o > 0:
            r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(o) + 0.5) / o)
            ramp[:o] = r
            ramp[n - o:] = r[::-1]
        ramp = np.maximum(ramp, floor)
        shape = [1] * len(tile)
        shape[axis] = n
        w = w * ramp.reshape(shape)
    return w


def iter_predict_tiled(predict: Callable[[np.ndarray], np.ndarray], source, *, tile: Sequence[int],
                       overlap: Sequence[int], out=None, batch_size: int = 4,
                       stage: str = "predict") -> Generator[ProgressEvent, None, np.ndarray]:
    """Predict a 3D array (z, y, x) tile by tile; returns ``out`` (allocated when None).

    Parameters
    ----------
    predict
        Maps a batch of tiles (b, c, tz, ty, tx) float32 to predictions (b, tz, ty, tx).
    source
        The input (numpy array or memory map), or a list of same-shape inputs that become the channels c
        (e.g. two half volumes); read one slab of ``tile[0]`` planes at a time.
    tile, overlap
        Tile size and overlap per axis (tile is clipped to the volume). For a stack of 2D images use
        ``tile=(1, ty, tx)``, ``overlap=(0, oy, ox)``.
    out
        Where to write the result (e.g. a writable memory map); planes are written once, when final.
    """
    sources = list(source) if isinstance(source, list | tuple) else [source]
    shape = tuple(int(s) for s in sources[0].shape)
    if any(tuple(s.shape) != shape for s in sources):
        raise ValueError("all sources must have the same shape")
    if len(shape) != 3:
        raise ValueError(f"tiled prediction works on 3D arrays (z, y, x), got shape {shape}")
    tile = tuple(min(int(t), s) for t, s in zip(tile, shape))
    overlap = tuple(min(int(o), t // 2) for o, t in zip(overlap, tile))
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    window = blend_window(tile, overlap)
    zs, ys, xs = (tile_starts(s, t, o) for s, t, o in zip(shape, tile, overlap))
    yx = [(y, x) for y in ys for x in xs]
    total = len(zs) * len(yx)
    clock = StageClock(stage, total)
    done = 0
    # Accumulators for planes [buf_z0, buf_z0 + buf_len): enough for the current slab.
    buf_z0 = 0
    acc = np.zeros((tile[0],) + shape[1:], dtype=np.float32)
    wsum = np.zeros_like(acc)
    for z in zs:
        # Planes below z are final (no later tile starts lower): write them and slide the buffer.
        if z > buf_z0:
            n_final = z - buf_z0
            out[buf_z0:z] = acc[:n_final] / wsum[:n_final]
            acc = np.concatenate([acc[n_final:], np.zeros((n_final,) + shape[1:], np.float32)])
            wsum = np.concatenate([wsum[n_final:], np.zeros((n_final,) + shape[1:], np.float32)])
            buf_z0 = z
        slab = np.stack([np.asarray(s[z:z + tile[0]], dtype=np.float32) for s in sources])
        for b in range(0, len(yx), batch_size):
            chunk = yx[b:b + batch_size]
            batch = np.stack([slab[:, :, y:y + tile[1], x:x + tile[2]] for y, x in chunk])
            pred = np.asarray(predict(batch), dtype=np.float32)
            for (y, x), p in zip(chunk, pred):
                dz = z - buf_z0
                acc[dz:dz + tile[0], y:y + tile[1], x:x + tile[2]] += p * window
                wsum[dz:dz + tile[0], y:y + tile[1], x:x + tile[2]] += window
            done += len(chunk)
            yield clock.event(done)
    n_left = shape[0] - buf_z0
    out[buf_z0:] = acc[:n_left] / wsum[:n_left]
    return out


def auto_tile(shape: Sequence[int], *, bytes_per_voxel: float, budget_bytes: float, multiple: int,
              max_tile: int = 160, min_tile: int = 16) -> tuple[int, ...]:
    """The largest cubic-ish tile (multiple of ``multiple``) whose working memory fits ``budget_bytes``."""
    side = max_tile
    while side > min_tile and (side ** len(shape)) * bytes_per_voxel > budget_bytes:
        side -= multiple
    side = max(min_tile, side - side % multiple)
    return tuple(min(side, _round_up(s, multiple)) for s in shape)


def _round_up(n: int, m: int) -> int:
    return ((int(n) + m - 1) // m) * m
