"""Helpers shared by the command modules: output checks, argument types, table printing, inputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import CryodenInputError, CryodenOutputError


def parse_views(text: str | None):
    """'0,0;0,90' -> [(0.0, 0.0), (0.0, 90.0)]."""
    if not text:
        return None
    views = []
    for part in text.split(";"):
        try:
            rot, tilt = (float(v) for v in part.split(","))
        except ValueError as exc:
            raise CryodenInputError(None, f"--views expects 'rot,tilt;rot,tilt;...' in degrees, got {text!r}") from exc
        views.append((rot, tilt))
    return views


def check_outputs(outputs, *, inputs=()) -> None:
    """Validate every output path before any work: writable, not an input, and all distinct."""
    from ..io.mrc import check_output_path

    seen: dict[Path, str] = {}
    for p in outputs:
        if not p:
            continue
        path = check_output_path(p, inputs=inputs)
        key = path.resolve()
        if key in seen:
            raise CryodenOutputError(path, f"is given for two outputs ({seen[key]} and this one); give distinct names")
        seen[key] = str(p)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def load_maps(paths: Sequence[str] | None):
    from ..io.mrc import read_mrc
    from ..sample_data import builtin_map

    mrcs = [read_mrc(p, mmap=False) for p in paths] if paths else [builtin_map()]
    for m in mrcs:
        if m.data.ndim != 3 or m.is_stack:
            raise CryodenInputError(m.path, f"a 3D map is required, got shape {m.data.shape}"
                                            f"{' (an image stack)' if m.is_stack else ''}")
        from ..errors import require_finite

        require_finite(m.data, name=m.path)
    return mrcs


def print_table(rows: dict, *, file=None) -> None:
    file = file or sys.stdout
    width = max(len(k) for k in rows) if rows else 0
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        print(f"{key:<{width}}  {value}", file=file)


def read_array(path: str):
    from ..errors import require_finite
    from ..io.mrc import read_mrc

    m = read_mrc(path)
    require_finite(m.data, name=path)
    return m


