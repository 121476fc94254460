"""Figures (PNG, matplotlib's Agg backend) and Markdown for reports written by the CLI and benchmarks."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .io.outputs import AtomicOutput


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False) if matplotlib.get_backend().lower() != "agg" else None
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(*args, **kwargs)


def _save(fig, path: str | os.PathLike) -> Path:
    with AtomicOutput(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def _limits(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def plot_fsc(curves: Mapping[str, object], path: str | os.PathLike, *, thresholds: Sequence[float] = (0.5, 0.143),
             title: str = "Fourier shell correlation") -> Path:
    """Plot FSC/FRC curves (objects with ``frequency`` in 1/Å and ``correlation``) against resolution."""
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for label, c in curves.items():
        ax.plot(c.frequency, c.correlation, label=f"{label} ({c.resolution(0.143):.1f} Å @0.143)")
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("correlation")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_slices(volumes: Mapping[str, np.ndarray], path: str | os.PathLike, *, voxel_size: float | None = None) -> Path:
    """Central XY and XZ slices of each (z, y, x) volume, side by side, each with robust contrast."""
    names = list(volumes)
    fig = _figure(figsize=(3.2 * len(names), 4.6))
    for i, name in enumerate(names):
        vol = np.asarray(volumes[name], dtype=np.float32)
        xy, xz = vol[vol.shape[0] // 2], vol[:, vol.shape[1] // 2]
        lo, hi = _limits(xy)
        ax = fig.add_subplot(2, len(names), i + 1)
        ax.imshow(xy, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(f"{name}\nXY", fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(2, len(names), len(names) + i + 1)
        ax.imshow(xz, cmap="gray", vmin=lo, vmax=hi, aspect="equal")
        ax.set_title("XZ", fontsize=9)
        ax.axis("off")
    if voxel_size:
        fig.suptitle(f"voxel size {voxel_size:g} Å", fontsize=9)
    return _save(fig, path)


def plot_montage(images: np.ndarray, path: str | os.PathLike, *, labels: Sequence[str] | None = None,
                 columns: int = 8, title: str | None = None) -> Path:
    """A grid of 2D images (each with its own robust contrast) with optional labels."""
    n = len(images)
    rows = int(np.ceil(n / columns))
    fig = _figure(figsize=(1.3 * columns, 1.45 * rows + (0.4 if title else 0)))
    for i in range(n):
        ax = fig.add_subplot(rows, columns, i + 1)
        img = np.asarray(images[i], dtype=np.float32)
        lo, hi = _limits(img)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        if labels is not None:
            ax.set_title(labels[i], fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def markdown_table(rows: Sequence[Mapping[str, object]], *, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured Markdown table from a list of dicts with the same keys."""
    if not rows:
        return ""
    keys = list(rows[0])

    def fmt(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with AtomicOutput(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
