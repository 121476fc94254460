"""Errors that carry the offending file and a one-line description of the problem.

The CLI prints ``str(error)`` and exits with status 2; the napari plugin shows it as a notification.
"""

from __future__ import annotations

import os


class CryodenInputError(ValueError):
    """Bad input: a file that cannot be read, has the wrong shape, non-finite values, etc.

    Parameters
    ----------
    path
        The file (or layer name) the problem is in; ``None`` when it is not about a file.
    problem
        One line saying what is wrong and, where possible, what to do about it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CryodenOutputError(OSError):
    """An output cannot be written (unwritable folder, would overwrite an input, ...)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def require_finite(data, *, name: str | os.PathLike | None, chunk: int = 1 << 24) -> None:
    """Raise :class:`CryodenInputError` if ``data`` holds NaN or Inf.

    Works chunk by chunk along the first axis so a memory-mapped volume is never loaded whole.
    """
    import numpy as np

    arr = data
    if arr.ndim == 0:
        if not np.isfinite(arr):
            raise CryodenInputError(name, "contains NaN or Inf values")
        return
    per_row = max(1, int(np.prod(arr.shape[1:])))
    step = max(1, chunk // per_row)
    for start in range(0, arr.shape[0], step):
        block = np.asarray(arr[start : start + step])
        if not np.isfinite(block).all():
            n_bad = int(block.size - np.count_nonzero(np.isfinite(block)))
            raise CryodenInputError(
                name,
                f"contains NaN or Inf values (at least {n_bad} in rows {start}-{start + block.shape[0] - 1}); "
                "replace or mask them before processing",
            )


def require_ndim(data, ndims: int | tuple[int, ...], *, name: str | os.PathLike | None, what: str) -> None:
    """Raise :class:`CryodenInputError` unless ``data.ndim`` is one of ``ndims``."""
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if data.ndim not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise CryodenInputError(name, f"{what} must be {want}, got a {data.ndim}D array of shape {tuple(data.shape)}")
