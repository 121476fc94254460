#!/usr/bin/env python
"""A longer fuzz campaign of the MRC, STAR and Xmipp readers than the test suite runs.

Reuses the strategies and checks of ``tests/core/test_fuzz_readers.py``: mangled MRC headers, truncated and
corrupt gzip/bzip2 maps, random STAR tables, edited RELION 3.0/3.1 files and random text or bytes, each read
by ``read_mrc`` / ``read_star`` / ``read_particle_images`` / ``read_xmd`` and (every ``--cli-every``-th case)
``cryoden info``. A case passes when it reads or raises ``CryodenInputError`` with a one-line message naming
the file; anything else (another exception, a broken invariant, a case running past ``--timeout`` seconds)
is a crash. Crashes are grouped by exception type and the innermost package frame; one reproducer file per
group is kept under ``--out``.

Usage::

    .venv/bin/python scripts/fuzz_readers.py --cases 2000            # 2000 MRC + 2000 STAR cases
    .venv/bin/python scripts/fuzz_readers.py --cases 500 --kind mrc --seed 7

Exit status 0 when no case crashed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load_fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_readers_cases", REPO / "tests" / "core" / "test_fuzz_readers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _signature(exc: BaseException) -> str:
    """Exception type, its message with numbers blanked, and the innermost frame inside the package."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "napari_cryoden" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    message = re.sub(r"\d+", "N", str(exc).splitlines()[0] if str(exc) else "")[:120]
    return f"{type(exc).__name__} at {where}: {message}"


def run_campaign(kind: str, n: int, seed: int, folder: Path, out: Path, timeout: float, cli_every: int,
                 fz) -> tuple[int, Counter, dict, Counter]:
    """Run ``n`` cases of one kind; (cases run, crash signature counts, one reproducer per signature,
    outcome counts)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    strategy = fz.mrc_cases if kind == "mrc" else fz.star_cases
    crashes: Counter = Counter()
    examples: dict = {}
    outcomes: Counter = Counter()
    count = 0
    fz.write_particle_stack(folder)

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hypothesis_seed(seed)
    @given(case=strategy)
    def one(case):
        nonlocal count
        count += 1
        cli = cli_every > 0 and count % cli_every == 0
        if kind == "mrc":
            paths = [folder / f"{count}-{case['name']}"]
            paths[0].write_bytes(fz.build_mrc_case(case))
        else:
            blob = fz.build_star_case(case)
            paths = [folder / f"{count}.star", folder / f"{count}.xmd"]
            for p in paths:
                p.write_bytes(blob)
        for path in paths:
            try:
                with fz.time_limit(timeout):
                    if path.suffix == ".xmd":
                        outcome = fz.check_xmd(path)
                    elif kind == "mrc":
                        outcome = fz.check_mrc(path, cli=cli)
                    else:
                        outcome = fz.check_star(path, cli=cli)
                outcomes[re.sub(r"\d+", "N", outcome.split(":")[0])[:60]] += 1
            except Exception as exc:  # noqa: BLE001 - every non-CryodenInputError is what we are looking for
                sig = _signature(exc)
                crashes[sig] += 1
                if sig not in examples:
                    keep = out / f"crash-{len(examples):03d}-{path.name}"
                    shutil.copyfile(path, keep)
                    examples[sig] = (keep, repr(case), "".join(traceback.format_exception(exc))[-3000:])
            finally:
                path.unlink(missing_ok=True)

    one()
    return count, crashes, examples, outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per kind (default 2000)")
    parser.add_argument("--kind", choices=["mrc", "star", "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before a case counts as a hang")
    parser.add_argument("--cli-every", type=int, default=5, help="also run `cryoden info` on every Nth case (0: never)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "cryoden-fuzz",
                        help="folder for one reproducer per crash kind")
    parser.add_argument("--verbose", action="store_true", help="print each crash's traceback")
    args = parser.parse_args(argv)

    fz = _load_fuzz_module()
    args.out.mkdir(parents=True, exist_ok=True)
    total_cases, total_crashes = 0, 0
    kinds = ["mrc", "star"] if args.kind == "all" else [args.kind]
    for kind in kinds:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"cryoden-fuzz-{kind}-") as tmp:
            count, crashes, examples, outcomes = run_campaign(kind, args.cases, args.seed, Path(tmp), args.out,
                                                              args.timeout, args.cli_every, fz)
        seconds = time.perf_counter() - started
        total_cases += count
        total_crashes += sum(crashes.values())
        print(f"{kind}: {count} cases in {seconds:.0f} s, {sum(crashes.values())} crashes "
              f"({len(crashes)} kinds)")
        for outcome, n in outcomes.most_common(12):
            print(f"    {n:6d}  {outcome}")
        for sig, n in crashes.most_common():
            keep, case, tb = examples[sig]
            print(f"  CRASH x{n}: {sig}\n    reproducer: {keep}\n    case: {case[:400]}")
            if args.verbose:
                print("    " + tb.replace("\n", "\n    "))
    print(f"total: {total_cases} cases, {total_crashes} crashes")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
