"""Shared by the benchmark scripts: machine/version facts and writing a section of docs/benchmarks.md.

Each script owns one section, delimited by HTML comments, and replaces only that section, so scripts can
be re-run independently. Raw results go to benchmarks/results/<name>.json.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"

HEADER = """# Benchmarks

Every table below is written by a script in `benchmarks/` (named in its section) from a run of the code;
re-run one with `.venv/bin/python benchmarks/<script>.py`, or all with `make benchmarks`. Each section
states the machine, versions and date of its run. Tests never assert timings; these tables are where speed,
memory and quality are measured.
"""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import numpy
    import torch

    cpu = cpu_model()
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    from napari_cryoden import __version__

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "napari_cryoden": __version__,
        "commit": commit,
        # Other work on the machine inflates timings; the 1-minute load average says how much there was.
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


#: 1-minute load average when the benchmark script started (this module is imported first thing).
START_LOAD = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_line(info: dict) -> str:
    start = f"{START_LOAD:.2f}" if START_LOAD is not None else "?"
    end = info.get("load_average")
    busy = max(START_LOAD or 0.0, float(end or 0.0)) > (info.get("cores") or 2) + 0.5
    note = (" Other jobs shared the CPU during this run, so times are upper bounds." if busy else
            " No other job of note ran beside it.")
    return (f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, {info['memory_gb']} GB RAM, "
            f"GPU: {info['gpu']}); Python {info['python']}, torch {info['torch']}, numpy {info['numpy']}, "
            f"napari-cryoden {info['napari_cryoden']} ({info['commit'] or 'uncommitted'}); load average "
            f"{start} at the start and {end} at the end of the run (the benchmark itself keeps "
            f"{info.get('cores')} cores busy).{note}")


def write_section(name: str, title: str, body: str, results: dict) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md and save the raw results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    text = DOC.read_text() if DOC.exists() else HEADER
    start, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    section = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    print(f"updated {DOC} [{name}]")


def code_version() -> str:
    """The short commit, with "+uncommitted" when the package (src/) differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+uncommitted" if git("status", "--porcelain", "src") else "")


def read_runs(path: Path) -> list[dict]:
    """Every record of a JSON-lines run log (oldest first); [] when there is none yet."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_run(path: Path, row: dict) -> dict:
    """Append ``row`` to a run log with when, load, code version, torch threads and CPU model; returns the record."""
    import time

    import torch

    row = {**row, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()[0],
           "commit": code_version(), "torch threads": torch.get_num_threads(), "cpu": cpu_model()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    return row
