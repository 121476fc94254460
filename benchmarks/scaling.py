"""Scaling: training throughput on 1 and 2 processes (torchrun, gloo, CPU), and peak host memory when
denoising a memory-mapped volume larger than half of this machine's RAM.

``--part processes`` (default) measures the processes, ``--part rss`` the peak memory of predicting a
256×512×512 volume with the default networks, ``--part memory`` the big volume (its own section, as it
takes half an hour and its timing matters less), ``--part all`` all three. ``--memory-gb G`` sets the size of the
big volume (default: 55 % of RAM). The big input and output files go to ``--workdir`` (default: a temporary folder on the same
disk as the repository) and are deleted afterwards. GPU figures come from ``benchmarks/gpu.py`` where a GPU is
available.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, machine, machine_line, write_section  # noqa: E402

from napari_cryoden.report import markdown_table  # noqa: E402

PY = sys.executable
HERE = Path(__file__).resolve().parent


def process_scaling(steps: int) -> list[dict]:
    rows = []
    for procs, threads in ((1, 1), (1, 2), (2, 1)):
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               str(HERE / "_ddp_train.py"), "--steps", str(steps), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        row = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
        rows.append(row)
        print(row, flush=True)
    base = rows[0]["patches/s (all processes)"]
    for r in rows:
        r["speed-up vs 1 process × 1 thread"] = r["patches/s (all processes)"] / base
    return rows


def _status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # MiB
    except OSError:
        pass
    return out


def run_watched(cmd: list[str], *, timeout: float) -> dict:
    """Run ``cmd``, sampling its memory every 0.2 s: peak resident set (all), peak anonymous memory (what the
    process itself allocated, not the file pages of its memory maps, which the kernel can drop)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    timed_out = False
    while proc.poll() is None:
        s = _status(proc.pid)
        for k in peak:
            peak[k] = max(peak[k], s.get(k, 0.0))
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            timed_out = True
            break
        time.sleep(0.2)
    out, err = proc.communicate()
    return {"seconds": time.perf_counter() - t0, "returncode": proc.returncode, "timed_out": timed_out,
            "peak RSS (MiB)": peak["VmRSS"], "peak anonymous (MiB)": peak["RssAnon"],
            "peak file-backed (MiB)": peak["RssFile"], "stderr": err[-500:], "stdout": out[-500:]}


def make_big_volume(path: Path, shape: tuple[int, int, int]) -> float:
    """Write a noisy (z, y, x) float32 MRC slab by slab through a memory map; returns seconds."""
    from napari_cryoden.io.mrc import MrcWriter

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    block = rng.normal(size=(16, shape[1], shape[2])).astype(np.float32)
    with MrcWriter(path, shape, voxel_size=10.0) as target:
        for z in range(0, shape[0], 16):
            n = min(16, shape[0] - z)
            target[z:z + n] = block[:n] + np.float32(z % 7)
            target.flush() if hasattr(target, "flush") else None
    return time.perf_counter() - t0


def memory_rows(gb: float, workdir: Path, timeout: float) -> tuple[list[dict], dict]:
    from napari_cryoden.denoise.engine import TrainedDenoiser, default_params, iter_train
    from napari_cryoden.models import save_model
    from napari_cryoden.progress import run

    side = 2048
    depth = int(gb * 2**30 / (4 * side * side))
    shape = (depth, side, side)
    big = workdir / "big.mrc"
    seconds = make_big_volume(big, shape)
    size_gb = big.stat().st_size / 2**30
    print(f"wrote {big}: {shape}, {size_gb:.1f} GiB in {seconds:.0f} s", flush=True)
    # A small trained model (a few steps on a crop), so the measurement is the streaming prediction itself.
    from napari_cryoden.io.mrc import read_mrc

    crop = np.asarray(read_mrc(big).data[:32, :128, :128])
    params = default_params("fourier-n2n", dims=3, patch_size=32, batch_size=2, epochs=1, base_channels=4,
                            depth=2, n_predictions=1, tile_size=96, tile_overlap=8)
    model: TrainedDenoiser = run(iter_train(crop, params, method="fourier-n2n", device="cpu"))
    save_model(workdir / "tiny.pt", model.to_model_file())
    cli = [PY, "-m", "napari_cryoden.cli", "-q", "denoise", str(big)]
    jobs = [
        ("gaussian filter (sigma 1.5), slab by slab", cli + ["-o", str(workdir / "g.mrc"), "--method", "gaussian",
                                                               "--sigma", "1.5"]),
        ("fourier-n2n prediction (tiny U-Net, 1 sample), tile by tile",
         cli + ["-o", str(workdir / "n.mrc"), "--method", "fourier-n2n", "--model", str(workdir / "tiny.pt"),
                "--predict-only", "--device", "cpu"]),
    ]
    rows = []
    for name, cmd in jobs:
        r = run_watched(cmd, timeout=timeout)
        finished = r["returncode"] == 0
        rows.append({"job": name, "volume": f"{shape[0]}×{shape[1]}×{shape[2]} float32, {size_gb:.1f} GiB",
                     "finished": "yes" if finished else f"stopped after {r['seconds']:.0f} s",
                     "seconds": r["seconds"], "peak anonymous (MiB)": r["peak anonymous (MiB)"],
                     "peak RSS incl. mapped file pages (MiB)": r["peak RSS (MiB)"]})
        print(rows[-1], r["stderr"][-300:], flush=True)
        for f in workdir.glob("*.mrc.part*"):
            f.unlink()
        for out in ("g.mrc", "n.mrc"):
            (workdir / out).unlink(missing_ok=True)
    big.unlink()
    return rows, {"shape": shape, "gib": size_gb, "write_seconds": seconds}


def rss_rows(workdir: Path, timeout: float, shape=(256, 512, 512)) -> list[dict]:
    """Peak memory of ``cryoden denoise --predict-only`` with the default self2self and fourier-n2n networks, and
    of ``cryoden denoise --method pretrained`` (noise measurement included), on a (z, y, x) float32 volume,
    against the resident set of a process that has only imported the CLI."""
    from napari_cryoden.denoise.engine import default_params, iter_train
    from napari_cryoden.models import save_model
    from napari_cryoden.progress import run

    vol = workdir / "vol.mrc"
    make_big_volume(vol, shape)
    crop = np.asarray(__import__("napari_cryoden.io.mrc", fromlist=["read_mrc"]).read_mrc(vol).data[:32, :96, :96])
    base = run_watched([PY, "-c", "import time, torch, napari_cryoden.cli, napari_cryoden.denoise.engine; "
                                  "time.sleep(2)"], timeout=60)
    rows = []

    def denoise(job: str, out: Path, *args: str) -> None:
        """One `cryoden denoise` of the volume in its own process: its row, and the output removed."""
        r = run_watched([PY, "-m", "napari_cryoden.cli", "-q", "denoise", str(vol), "-o", str(out), *args,
                         "--device", "cpu"], timeout=timeout)
        rows.append({"job": job,
                     "volume": f"{shape[0]}×{shape[1]}×{shape[2]} float32 ({vol.stat().st_size / 2**20:.0f} MiB)",
                     "finished": "yes" if r["returncode"] == 0 else f"no ({r['stderr'][-120:]})",
                     "seconds": r["seconds"],
                     "voxels/s": float(np.prod(shape)) / r["seconds"] if r["returncode"] == 0 else float("nan"),
                     "baseline RSS (MiB)": base["peak RSS (MiB)"], "peak RSS (MiB)": r["peak RSS (MiB)"],
                     "peak RSS above baseline (MiB)": r["peak RSS (MiB)"] - base["peak RSS (MiB)"],
                     "peak anonymous above baseline (MiB)": r["peak anonymous (MiB)"] - base["peak anonymous (MiB)"]})
        print(rows[-1], flush=True)
        out.unlink(missing_ok=True)

    for method in ("self2self", "fourier-n2n"):
        # The default network (16 channels, depth 3, smoothing channels); a few steps are enough, since the
        # measurement is the prediction's memory. Two samples per tile instead of eight keep the run short:
        # samples are accumulated one after the other, so their number does not change the peak.
        params = default_params(method, dims=3, epochs=1, time_budget=0, n_predictions=2)
        model = run(iter_train(crop, params, method=method, device="cpu"))
        save_model(workdir / f"{method}.pt", model.to_model_file())
        denoise(f"{method} prediction, default network, 2 samples per tile", workdir / f"{method}-out.mrc",
                "--method", method, "--model", str(workdir / f"{method}.pt"), "--predict-only")
    # The shipped model as a user runs it: the noise is measured on the whole volume, then one pass per tile.
    denoise("pretrained (shipped 3D model, noise measured on the volume, one pass)", workdir / "pretrained-out.mrc",
            "--method", "pretrained")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--memory-gb", type=float, default=None)
    ap.add_argument("--part", choices=("processes", "memory", "rss", "all"), default="processes")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per memory job before it is stopped")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if args.part in ("processes", "all"):
        proc_rows = process_scaling(args.steps)
        info = machine()
        body = [
            "Written by `benchmarks/scaling.py --part processes`. " + machine_line(info),
            f"Fourier N2N training steps (32³ patches, batch 4 per process, default U-Net) on a 64×128×128 volume, "
            f"{args.steps} steps after 5 warm-up steps, launched with torchrun; the 2-process run is "
            "DistributedDataParallel over gloo (gradients averaged every step, one patch stream per process). "
            "This machine has two cores: one process with two threads and two processes with one thread each "
            "use the same hardware, so the honest comparison is between those two rows; the first row is the "
            "one-core baseline.",
            markdown_table(proc_rows, floatfmt=".3g"),
        ]
        write_section("scaling", "Scaling: training on 1 and 2 processes", "\n\n".join(body),
                      {"machine": info, "processes": proc_rows})
    if args.part in ("rss", "all"):
        with tempfile.TemporaryDirectory(prefix="cryoden-rss-", dir=args.workdir or ROOT.parent) as tmp:
            rows = rss_rows(Path(tmp), args.timeout)
        info = machine()
        body = [
            "Written by `benchmarks/scaling.py --part rss`. " + machine_line(info),
            "`cryoden denoise --predict-only` with a trained default network, and `cryoden denoise --method "
            "pretrained` (which first measures the noise correlation on the whole volume), on a 256×512×512 "
            "float32 volume "
            "(a separate process sampled every 0.2 s). The baseline is the resident set of a process that has "
            "imported torch and the CLI and done nothing else. The resident set includes the pages of the "
            "memory-mapped input and output files; *anonymous* is what the process allocated itself. Target: at "
            "most 2 GB above the baseline.",
            markdown_table(rows, floatfmt=".4g"),
        ]
        write_section("rss", "Peak memory when denoising a 512×512×256 volume with a trained model",
                      "\n\n".join(body), {"machine": info, "rows": rows})
    if args.part in ("memory", "all"):
        with tempfile.TemporaryDirectory(prefix="cryoden-scaling-", dir=args.workdir or ROOT.parent) as tmp:
            mem_rows, mem_info = memory_rows(args.memory_gb or 0.55 * ram_gb, Path(tmp), args.timeout)
        info = machine()
        body = [
            "Written by `benchmarks/scaling.py --part memory`. " + machine_line(info),
            f"The input ({mem_info['shape'][0]}×{mem_info['shape'][1]}×{mem_info['shape'][2]}, "
            f"{mem_info['gib']:.1f} GiB on a {ram_gb:.1f} GiB machine) is memory-mapped in and the output "
            "memory-mapped out (`cryoden denoise`, a separate process sampled every 0.2 s). *Peak anonymous* is "
            "the memory the process allocated itself; the resident set also counts pages of the mapped files, "
            "which the kernel drops under pressure. The network is a small Fourier N2N model (4 channels, "
            "depth 2, one sample per tile) trained for a few steps on a crop: the measurement is the streaming "
            "prediction, not denoising quality.",
            markdown_table(mem_rows, floatfmt=".4g"),
        ]
        write_section("memory", "Peak host memory on a volume larger than half of the RAM", "\n\n".join(body),
                      {"machine": info, "memory": mem_rows, "memory_info": mem_info})


if __name__ == "__main__":
    main()
