"""`cryoden info`: what is in an MRC or STAR file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ._common import print_table


def cmd_info(args) -> int:
    from tqdm import tqdm

    from ..io.mrc import read_mrc
    from ..io.star import read_star

    for name in args.files:
        path = Path(name)
        if path.suffix.lower() == ".star":
            table = read_star(path)
            from ..io.star import parse_image_names, resolve_stack_path

            rows = {"file": str(path), "kind": "RELION particle table", "particles": len(table),
                    "pixel size (Å)": table.pixel_size(), "optics groups": len(table.optics),
                    "columns": ", ".join(table.particles.columns)}
            if "rlnImageName" in table.particles:
                stacks, _ = parse_image_names(table.particles["rlnImageName"].tolist(), star_path=path)
                for s in dict.fromkeys(stacks):
                    p = resolve_stack_path(s, path)
                    rows[f"stack {s}"] = "found" if p.exists() else f"MISSING (looked for {p})"
            print_table(rows)
            print()
            continue
        mrc = read_mrc(path)
        data = mrc.data
        n_rows = data.shape[0]
        total, total2, count, n_bad = 0.0, 0.0, 0, 0
        lo, hi = np.inf, -np.inf
        step = max(1, (1 << 24) // max(1, int(np.prod(data.shape[1:]))))
        chunks = range(0, n_rows, step)
        for start in tqdm(chunks, desc=f"stats {path.name}", unit="chunk", disable=len(chunks) < 8 or args.quiet,
                          file=sys.stderr):
            block = np.asarray(data[start:start + step], dtype=np.float64)
            finite = np.isfinite(block)
            n_bad += int(block.size - finite.sum())
            vals = block[finite]
            if vals.size:
                total += vals.sum()
                total2 += (vals**2).sum()
                count += vals.size
                lo, hi = min(lo, vals.min()), max(hi, vals.max())
        mean = total / count if count else float("nan")
        std = float(np.sqrt(max(total2 / count - mean**2, 0.0))) if count else float("nan")
        rows = {
            "file": str(path),
            "kind": "image stack" if mrc.is_stack else f"{data.ndim}D {'volume' if data.ndim == 3 else 'image'}",
            "shape": " x ".join(str(s) for s in data.shape) + ("  (n, y, x)" if mrc.is_stack else "  (z, y, x)"[: 12 if data.ndim == 3 else 8]),
            "dtype": str(data.dtype),
            "voxel size (Å)": ", ".join(f"{v:.4g}" for v in mrc.voxel_size)
            + ("" if mrc.voxel_size_from_header else "  (header says 0; 1.0 assumed)"),
            "size (MB)": round(data.nbytes / 1e6, 2),
            "min": float(lo), "max": float(hi), "mean": float(mean), "std": std,
            "non-finite values": n_bad,
            "labels": " | ".join(mrc.labels) or "-",
        }
        print_table(rows)
        print()
    return 0



def register(commands: dict) -> None:
    sub = commands["root"]
    p = sub.add_parser("info", help="shape, dtype, voxel size and statistics of MRC files; summary of STAR files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_info)

