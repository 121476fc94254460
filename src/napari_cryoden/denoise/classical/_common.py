"""What every classical method shares: input checks, the noise level, and image-by-image batching.

Classical 2D methods see their input as a stack of 2D images: a 2D image is a stack of one, an (n, y, x)
stack is itself, and a (z, y, x) volume is processed slice by slice along z (with one noise level for the
whole volume). Images are handed to the method's batched core in chunks, read one chunk at a time so a
memory-mapped input is never loaded whole, and the input is never modified.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator

import numpy as np
import torch

from ...errors import CryodenInputError, require_finite, require_ndim
from ...progress import ProgressEvent, StageClock
from .noise_estimate import estimate_noise_sigma

BatchCore = Callable[[np.ndarray, np.ndarray], np.ndarray]


def source_name(data, name: str | os.PathLike | None = None) -> str:
    """The name used in error messages: ``name``, a memory map's file name, or "input data"."""
    if name:
        return os.fspath(name)
    filename = getattr(data, "filename", None)
    return os.fspath(filename) if filename else "input data"


def check_input(data, *, is_stack: bool, name: str | os.PathLike | None = None, min_side: int = 1) -> str:
    """Raise :class:`CryodenInputError` (naming the source) unless ``data`` is a finite 2D/3D array."""
    source = source_name(data, name)
    if not hasattr(data, "ndim"):
        data = np.asarray(data)
    require_ndim(data, (3,) if is_stack else (2, 3), name=source,
                 what="an image stack" if is_stack else "the data to denoise")
    if data.size == 0:
        raise CryodenInputError(source, f"is empty (shape {tuple(data.shape)})")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise CryodenInputError(source, f"must hold real numbers, got dtype {data.dtype}")
    if min(data.shape[-2:]) < min_side:
        raise CryodenInputError(source, f"images must be at least {min_side}×{min_side} pixels for this method, "
                                        f"got {tuple(data.shape[-2:])}")
    require_finite(data, name=source)
    return source


def noise_levels(data, *, is_stack: bool, noise_sigma: float | None) -> np.ndarray:
    """One noise sigma per image of the slice stack (given, or estimated: per image for a stack, one for
    a 2D image or a whole volume)."""
    n = data.shape[0] if data.ndim == 3 else 1
    if noise_sigma is not None:
        return np.full(n, float(noise_sigma))
    if is_stack:
        return np.asarray(estimate_noise_sigma(data, per_image=True), dtype=np.float64)
    return np.full(n, estimate_noise_sigma(data))


def iter_slicewise(data, core: BatchCore, *, sigmas: np.ndarray, chunk: int, stage: str = "denoise",
                   out=None) -> Generator[ProgressEvent, None, np.ndarray]:
    """Run ``core(images (b, y, x) float32, sigmas (b,)) -> (b, y, x)`` over the images of ``data`` in
    chunks of ``chunk``; yields one event per chunk and returns the float32 result of ``data``'s shape
    (written into ``out``, e.g. a memory-mapped output file, when given: then host memory holds one chunk)."""
    images = data if data.ndim == 3 else data[None]
    n = images.shape[0]
    out = np.empty(images.shape, dtype=np.float32) if out is None else out.reshape(images.shape)
    clock = StageClock(stage, n)
    yield clock.event(0)
    chunk = max(1, int(chunk))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        batch = np.array(images[start:stop], dtype=np.float32)  # a copy: the input stays untouched
        out[start:stop] = core(batch, sigmas[start:stop])
        yield clock.event(stop)
    return out.reshape(data.shape)


def chunk_for(shape: tuple[int, ...], *, floats_per_pixel: float, budget_bytes: float = 768e6) -> int:
    """How many images of ``shape[-2:]`` fit in ``budget_bytes`` when a method needs ``floats_per_pixel``
    float32 working values per pixel."""
    pixels = int(shape[-1]) * int(shape[-2])
    return max(1, int(budget_bytes // max(1.0, 4.0 * floats_per_pixel * pixels)))


def torch_device(device: str) -> torch.device:
    from ...device import resolve_device

    return resolve_device(device)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n, n): row k is the k-th cosine."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def haar_matrix(n: int) -> np.ndarray:
    """Orthonormal Haar matrix (n, n) for n a power of two (rows: coarse to fine)."""
    if n & (n - 1):
        raise ValueError(f"the Haar transform needs a power of two, got {n}")
    h = np.array([[1.0]])
    while h.shape[0] < n:
        top = np.kron(h, [1.0, 1.0])
        bottom = np.kron(np.eye(h.shape[0]), [1.0, -1.0])
        h = np.vstack([top, bottom]) / np.sqrt(2.0)
    return h


def patch_offsets(patch_size: int, width: int) -> np.ndarray:
    """Flat pixel offsets of a p×p patch in an image of ``width`` columns (row-major)."""
    oy, ox = np.mgrid[:patch_size, :patch_size]
    return (oy * width + ox).ravel()


def grid_positions(length: int, patch_size: int, step: int) -> np.ndarray:
    """Top-left corners 0, step, 2·step, ... and always the last one, so the grid covers every pixel."""
    last = length - patch_size
    pos = np.arange(0, last + 1, max(1, step))
    if pos[-1] != last:
        pos = np.append(pos, last)
    return pos


def extract_patches(images: torch.Tensor, patch_size: int, step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches on a grid of corners (see :func:`grid_positions`).

    Returns ``patches`` (b, p², m) and ``index`` (m, p²), the flat pixel index of every patch pixel.
    """
    b, h, w = images.shape
    ys = grid_positions(h, patch_size, step)
    xs = grid_positions(w, patch_size, step)
    corners = (ys[:, None] * w + xs[None, :]).ravel()
    index = torch.as_tensor(corners[:, None] + patch_offsets(patch_size, w)[None, :], device=images.device)
    flat = images.reshape(b, h * w)
    patches = flat[:, index.reshape(-1)].reshape(b, index.shape[0], patch_size * patch_size)
    return patches.transpose(1, 2), index


def average_patches(patches: torch.Tensor, index: torch.Tensor, shape: tuple[int, int],
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Put patches (b, p², m) back by averaging every pixel's overlapping estimates (optionally weighted
    per patch, weights (b, m)); returns (b, y, x)."""
    b = patches.shape[0]
    h, w = shape
    values = patches.transpose(1, 2)  # (b, m, p²)
    idx = index.reshape(1, -1).expand(b, -1)
    if weights is None:
        wts = torch.ones_like(values)
    else:
        wts = weights[:, :, None].expand_as(values)
    num = torch.zeros(b, h * w, dtype=values.dtype, device=values.device)
    den = torch.zeros_like(num)
    num.scatter_add_(1, idx, (values * wts).reshape(b, -1))
    den.scatter_add_(1, idx, wts.reshape(b, -1))
    return (num / den.clamp_min(1e-12)).reshape(b, h, w)


class single_thread:
    """Run torch on one CPU thread inside the block (for loops of many small operations).

    Small tensor operations gain nothing from a thread pool and lose a lot when the cores are shared
    (every operation waits for the slowest thread): K-SVD's atom loop ran ~30× faster on one thread on a
    busy 2-core machine. Process-wide while active; restored afterwards.
    """

    def __enter__(self):
        self.previous = torch.get_num_threads()
        if self.previous != 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.previous != 1:
            torch.set_num_threads(self.previous)
        return False


def tiled(core: BatchCore, *, tile: int, margin: int) -> BatchCore:
    """Wrap ``core`` so images larger than ``tile + 2 margin`` pixels go through it in overlapping tiles.

    Each tile carries ``margin`` pixels of context on every side (the search window and patch of the
    method), and only its central ``tile``² part is kept, so memory stays bounded on micrographs of any size
    while the result differs from the untiled one only where context was cut (none for filters whose reach
    is within ``margin``; patch-learning methods learn one dictionary per tile).
    """

    def run_tiled(batch: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
        b, h, w = batch.shape
        if h <= tile + 2 * margin and w <= tile + 2 * margin:
            return core(batch, sigmas)
        out = np.empty(batch.shape, dtype=np.float32)
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                ya, xa = max(0, y0 - margin), max(0, x0 - margin)
                yb, xb = min(h, y1 + margin), min(w, x1 + margin)
                res = core(np.ascontiguousarray(batch[:, ya:yb, xa:xb]), sigmas)
                out[:, y0:y1, x0:x1] = res[:, y0 - ya:y1 - ya, x0 - xa:x1 - xa]
        return out

    return run_tiled


def iter_tiled_method(data, core_images: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, is_stack: bool,
                      name, device: str, noise_sigma: float | None, min_side: int, tile: int, margin: int,
                      bytes_per_image: Callable[[int, int], float], budget_bytes: float = 512e6, out=None):
    """The registry adapter shared by the patch methods (BM3D, K-SVD, DDTF).

    Validates the input, estimates the noise sigma when not given, picks how many (tile-sized) images fit
    ``budget_bytes`` of working memory, and runs ``core_images(images, sigmas)`` image by image for stacks
    and slice by slice for volumes, on overlapping tiles of ``tile`` pixels with ``margin`` pixels of context.
    """
    check_input(data, is_stack=is_stack, name=name, min_side=min_side)
    dev = torch_device(device)
    sigmas = noise_levels(data, is_stack=is_stack, noise_sigma=noise_sigma)
    h, w = (min(s, tile + 2 * margin) for s in data.shape[-2:])
    chunk = max(1, int(budget_bytes // bytes_per_image(h, w)))

    def core(batch: np.ndarray, sig: np.ndarray) -> np.ndarray:
        out = core_images(torch.as_tensor(batch, device=dev), torch.as_tensor(sig, dtype=torch.float32))
        return out.cpu().numpy()

    result = yield from iter_slicewise(data, tiled(core, tile=tile, margin=margin), sigmas=sigmas, chunk=chunk,
                                       out=out)
    return result
