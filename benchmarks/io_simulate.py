"""Foundation figures: opening a 4 GiB MRC (memory-mapped), simulation and metric throughput."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine, machine_line, write_section  # noqa: E402

from napari_cryoden import metrics  # noqa: E402
from napari_cryoden.io.mrc import read_mrc  # noqa: E402
from napari_cryoden.report import markdown_table  # noqa: E402
from napari_cryoden.sample_data import builtin_map  # noqa: E402
from napari_cryoden.simulate import simulate_particles, simulate_tomogram  # noqa: E402


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        path = Path(tmp) / "huge.mrc"
        shape = (1024, 1024, 1024)
        with mrcfile.new(path) as f:
            f.set_data(np.zeros((1, 1, 1), np.float32))
        with mrcfile.open(path, mode="r+", permissive=True) as f:
            f.header.nx, f.header.ny, f.header.nz = shape
            f.header.mx, f.header.my, f.header.mz = shape
            f.header.cella = (1024.0,) * 3
        with open(path, "r+b") as fh:
            fh.truncate(1024 + 4 * int(np.prod(shape)))  # sparse: no disk space used
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t_open, m = best_of(lambda: read_mrc(path))
        t_slice, _ = best_of(lambda: np.asarray(m.data[512]))
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows.append({"task": "open a 4 GiB MRC (1024³ float32), memory-mapped", "time (s)": t_open,
                     "note": f"peak RSS grew {max(0, rss1 - rss0) / 1024:.0f} MB (incl. reading one 4 MB slice in {t_slice * 1e3:.2f} ms)"})

    mp = builtin_map()
    for n, views in ((1000, [(0, 0), (0, 90), (90, 90)]), (1000, None)):
        t, _ = best_of(lambda n=n, views=views: simulate_particles(mp.data, voxel_size=mp.pixel_size, n_particles=n, box=64,
                                                  class_views=views, ctf_mode="full", snr=0.1, seed=0), repeats=1)
        kind = "3 fixed views" if views else "random views (one 3D projection each)"
        rows.append({"task": f"simulate {n} particles 64², CTF, SNR 0.1, {kind}", "time (s)": t,
                     "note": f"{n / t:.0f} particles/s"})
    t, _ = best_of(lambda: simulate_tomogram(shape=(64, 128, 128), particle_map=mp.data,
                                             particle_map_voxel_size=mp.pixel_size, seed=0), repeats=1)
    rows.append({"task": "simulate a 64×128×128 tomogram phantom (wedge, noise)", "time (s)": t, "note": ""})
    t, _ = best_of(lambda: simulate_tomogram(shape=(128, 256, 256), particle_map=mp.data,
                                             particle_map_voxel_size=mp.pixel_size, seed=0), repeats=1)
    rows.append({"task": "simulate a 128×256×256 tomogram phantom (wedge, noise)", "time (s)": t, "note": ""})
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 256, 256, 256)).astype(np.float32)
    t, _ = best_of(lambda: metrics.fourier_shell_correlation(a, b, voxel_size=1.0))
    rows.append({"task": "FSC of two 256³ volumes", "time (s)": t, "note": ""})
    info = machine()
    body = "\n\n".join([
        "Written by `benchmarks/io_simulate.py`. " + machine_line(info),
        markdown_table(rows, floatfmt=".3g"),
    ])
    write_section("io_simulate", "I/O, simulation and metrics", body, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
