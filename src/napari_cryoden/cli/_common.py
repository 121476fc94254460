"""Helpers shared by the command modules: output checks, argument types, table printing, inputs."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import CryodenInputError, CryodenOutputError
from ..io.outputs import check_outputs  # noqa: F401  (the commands import it from here)


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


def add_overwrite(parser, *, batch: bool = False) -> None:
    """The --overwrite option: without it an existing output is an error (a batch skips it instead)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that exist already (without it a single run refuses them"
                             + ("; a batch re-run skips them, so it resumes" if batch else "") + ")")


def add_checkpoint_args(parser) -> None:
    """--checkpoint-every / --resume of a command that trains a network."""
    parser.add_argument("--checkpoint-every", type=float, default=0.0, metavar="S",
                        help="write the training state to OUTPUT.ckpt every S seconds (default 0: never), so a "
                             "killed run can continue with --resume; removed when the job finishes")
    parser.add_argument("--resume", action="store_true",
                        help="continue the training from OUTPUT.ckpt when it exists (same input and settings), "
                             "else start normally")


def checkpointer(args, output: str | Path, inputs):
    """The Checkpointer of a training command (None when neither --checkpoint-every nor --resume is given).
    A folder output (a batch) keeps it as FOLDER/cryoden-training.ckpt."""
    if not (getattr(args, "checkpoint_every", 0) or getattr(args, "resume", False)):
        return None
    from ..checkpoint import Checkpointer
    from ..io.outputs import check_output_path

    if args.checkpoint_every < 0:
        raise CryodenInputError(None, f"--checkpoint-every must be 0 or more seconds, got {args.checkpoint_every}")
    out = Path(output)
    path = out / "cryoden-training.ckpt" if out.is_dir() else out.with_name(out.name + ".ckpt")
    check_output_path(path, inputs=inputs)
    return Checkpointer(path, every=args.checkpoint_every, inputs=inputs)


def announce_resume(gen, checkpoint):
    """Pass a training's events through, saying once on stdout where it resumed."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if checkpoint is not None and event.info.get("resumed_from") is not None:
            print(f"resumed from {checkpoint.path} at step {event.info['resumed_from']}")
        yield event


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
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




# ------------------------------------------------------------------------------------------- batch runs
#: What a folder given as particle input contributes: its STAR files, else its Xmipp metadata, else its stacks.
PARTICLE_SUFFIXES = ((".star",), (".xmd",), (".mrcs", ".mrc", ".st"))


def expand_paths(items, *, folder, what: str) -> list[Path]:
    """Files, folders and glob patterns, in order and without duplicates; ``folder(path)`` lists what a folder
    contributes (empty: an error saying it holds no ``what``)."""
    import glob

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = folder(p)
            if not found:
                raise CryodenInputError(p, f"folder holds no {what}")
            paths += found
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(str(item)))
            if not found:
                raise CryodenInputError(item, "the pattern matches no file")
            paths += found
        else:
            paths.append(p)
    return list(dict.fromkeys(paths))


def expand_particle_inputs(items) -> list[Path]:
    """Particle inputs from files, folders and glob patterns. A folder gives its STAR files (or, without any,
    its .xmd files, or else its stacks), so a stack is not taken twice."""

    def folder(p: Path) -> list[Path]:
        files = sorted(q for q in p.iterdir() if q.is_file())
        from ..io.mrc import mrc_suffix

        for suffixes in PARTICLE_SUFFIXES:  # .mrcs.gz counts as .mrcs
            found = [q for q in files if (mrc_suffix(q) or q.suffix).lower() in suffixes]
            if found:
                return found
        return []

    return expand_paths(items, folder=folder, what=".star, .xmd or .mrcs files")


def add_particle_inputs(parser, *, job: str, suffix: str) -> None:
    """The IN... / -o / --overwrite arguments of a particle command that also runs as a batch."""
    parser.add_argument("inputs", nargs="+", metavar="IN",
                        help="particles: .mrcs stack, RELION .star or Xmipp .xmd; several files, folders or glob "
                             f"patterns make a batch (one {job} each, into the -o folder)")
    parser.add_argument("-o", "--output", required=True,
                        help=f"output STAR file; with several inputs a folder, files named STEM{suffix}")
    add_overwrite(parser, batch=True)


def single_or_batch(args, single, *, suffix: str, single_outputs: Sequence[str]) -> int:
    """Run ``single`` on the one particle input of ``args.inputs``, or :func:`run_batch` over several."""
    inputs = expand_particle_inputs(args.inputs)
    if len(inputs) > 1:
        return run_batch(args, single, inputs, suffix=suffix, single_outputs=single_outputs)
    args.input = str(inputs[0])
    return single(args)


def drop_own_outputs(inputs: list[Path], outdir: Path, name) -> list[Path]:
    """Inputs less the files this batch writes itself (``outdir / name(input)``): a batch run into its own
    input folder must not take its earlier outputs as new inputs on a re-run."""
    own = {(outdir / name(p)).resolve() for p in inputs}
    kept = [p for p in inputs if p.resolve() not in own]
    if len(kept) < len(inputs):
        print(f"{len(inputs) - len(kept)} file(s) of the input are outputs of this batch and are not taken as inputs")
    if not kept:
        raise CryodenInputError(None, "every input is an output of this batch; nothing to do")
    return kept


def run_batch(args, single, inputs: list[Path], *, suffix: str, single_outputs: Sequence[str] = ()) -> int:
    """Run ``single(args)`` once per input into the folder ``args.output`` (``STEM{suffix}``).

    Resumable: an output that exists is complete (outputs are written atomically) and is skipped unless
    ``args.overwrite``. Under torchrun the inputs are split across the processes, each working alone. An input
    that fails is reported and the others go on; the exit status is then 2. ``single_outputs`` are options
    that name one file and so cannot be used with several inputs.
    """
    import copy

    from .. import distributed

    given = [f"--{name.replace('_', '-')}" for name in single_outputs if getattr(args, name, None)]
    if given:
        raise CryodenInputError(None, f"{', '.join(given)} name(s) one file; with several inputs only the "
                                      f"outputs STEM{suffix} are written into the -o folder")
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise CryodenOutputError(outdir, "several inputs need an output folder, and this is a file")
    from ..io.mrc import mrc_stem

    inputs = drop_own_outputs(inputs, outdir, lambda p: f"{mrc_stem(p)}{suffix}")
    outputs = [outdir / f"{mrc_stem(p)}{suffix}" for p in inputs]
    if len(set(outputs)) != len(outputs):
        raise CryodenInputError(None, "two inputs have the same file name; run them into different folders")
    missing = [p for p in inputs if not p.exists()]
    if missing:
        raise CryodenInputError(missing[0], "file not found")
    outdir.mkdir(parents=True, exist_ok=True)
    ctx = distributed.context()
    todo = [(i, o) for i, o in zip(inputs, outputs) if getattr(args, "overwrite", False) or not o.exists()]
    if ctx.is_main and len(todo) < len(inputs):
        print(f"{len(inputs) - len(todo)} of {len(inputs)} outputs exist already and are skipped "
              "(--overwrite redoes them)")
    failures = 0
    with distributed.independent():
        for source, target in distributed.shard(todo, ctx):
            job = copy.copy(args)
            job.input, job.output = str(source), str(target)
            try:
                single(job)
            except (CryodenInputError, CryodenOutputError) as exc:
                failures += 1
                print(f"cryoden: error: {exc}", file=sys.stderr)
    distributed.barrier(ctx)
    return 2 if failures else 0
