"""`cryoden denoise`: any registered denoising method over one or many files, with model save/load.

Several inputs are a batch: one model is trained (on the first input) and every input is denoised into the
output folder; a re-run skips the outputs that exist (each is written atomically, so an existing one is
complete). Under ``torchrun`` the training is data-parallel (DDP) and the outputs are split across the
processes."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ..errors import CryodenInputError, CryodenOutputError, require_finite
from ..io.mrc import MrcWriter, is_mrc_path, mrc_stem, mrc_suffix, read_mrc
from ._common import add_checkpoint_args, announce_resume, check_outputs, checkpointer, drop_own_outputs, expand_paths

log = logging.getLogger(__name__)


#: Columns of a STAR file that list whole images or volumes to denoise (first found wins).
LIST_COLUMNS = ("rlnMicrographName", "rlnTomoName", "rlnTomogramName", "rlnImageName")


def star_file_list(path: Path) -> list[Path]:
    """The files a STAR table lists (micrographs, tomograms), resolved relative to the STAR file's folder."""
    import starfile

    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises several kinds on malformed text
        raise CryodenInputError(path, f"is not a readable STAR file ({exc})") from exc
    for table in blocks.values():
        if not hasattr(table, "columns"):
            continue
        for col in LIST_COLUMNS:
            if col in table.columns:
                names = [str(v) for v in table[col]]
                if any("@" in v for v in names):
                    raise CryodenInputError(path, f"lists particle images ({col} = N@stack); denoise the stack "
                                                  "files themselves")
                files = [Path(v) if Path(v).is_absolute() else path.parent / v for v in dict.fromkeys(names)]
                missing = [f for f in files if not f.exists()]
                if missing:
                    raise CryodenInputError(path, f"lists {missing[0]}, which does not exist "
                                                  f"({len(missing)} of {len(files)} listed files are missing)")
                return files
    raise CryodenInputError(path, f"has none of the columns {', '.join(LIST_COLUMNS)}")


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (their MRC-family files), glob patterns and STAR files listing micrographs or
    tomograms, in order, without duplicates."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.suffix.lower() == ".star" and p.is_file():
            paths += star_file_list(p)
        else:
            paths += expand_paths([item], what=".mrc/.mrcs/.map/.rec/.st files", folder=lambda d: sorted(
                q for q in d.iterdir() if is_mrc_path(q) and q.is_file()))
    return list(dict.fromkeys(paths))


def denoised_name(path: Path) -> str:
    """``STEM_denoised.SUFFIX`` for a batch output; outputs are never compressed (``emd_1.map.gz`` gives
    ``emd_1_denoised.map``)."""
    return f"{mrc_stem(path)}_denoised{mrc_suffix(path)}"


def output_paths(inputs: list[Path], output: str) -> list[Path]:
    """One input: OUTPUT is the file. Several: OUTPUT is a folder, files named STEM_denoised.SUFFIX."""
    out = Path(output)
    if len(inputs) == 1 and not out.is_dir():
        return [out]
    if out.exists() and not out.is_dir():
        raise CryodenOutputError(out, "several inputs need an output folder, and this is a file")
    out.mkdir(parents=True, exist_ok=True)
    names = [out / denoised_name(p) for p in inputs]
    if len(set(names)) != len(names):
        raise CryodenInputError(None, "two inputs have the same file name; denoise them into different folders")
    return names


def build_params(method, args: argparse.Namespace, *, dims: int):
    """The method's defaults for ``dims``-dimensional data, overridden by the options given."""
    from ..params import validate

    base = method.default_params(dims=dims)
    names = {f.name for f in dataclasses.fields(method.params)}
    given = {name: getattr(args, f"param_{name}") for name in names if getattr(args, f"param_{name}", None) is not None}
    if method.needs_model and args.model:  # one --model flag for every method that uses a model file
        given["model"] = str(args.model)
    # --time-budget and --epochs are top-level flags, for the methods whose parameters have them.
    for name in ("time_budget", "epochs"):
        if getattr(args, name) is not None and name in names:
            given[name] = getattr(args, name)
    try:
        return validate(dataclasses.replace(base, **given))
    except ValueError as exc:
        raise CryodenInputError(None, f"--method {method.name}: {exc}") from exc


def check_method_options(method, args: argparse.Namespace, *, n_inputs: int) -> None:
    """Refuse the options ``method`` cannot use, and ask for those it needs (its object says which)."""
    if args.predict_only and not args.model:
        raise CryodenInputError(None, "--predict-only needs a trained model (--model FILE)")
    if args.save_model and not method.trains:
        raise CryodenInputError(None, f"--save-model applies to self-supervised methods, not to {method.name} "
                                      "(train supervised models with cryoden train-supervised)")
    if args.model and not (method.trains or method.needs_model):
        raise CryodenInputError(None, f"{method.name} uses no trained model; drop --model")
    if method.needs_model and not args.model:
        raise CryodenInputError(None, f"{method.name} needs a model trained with cryoden train-supervised: --model FILE")
    if method.needs_half2 and (not args.half2 or n_inputs != 1) and not args.predict_only:
        raise CryodenInputError(None, f"{method.name} trains on two halves: give one input and --half2 SECOND_HALF")


def cmd_denoise(args) -> int:
    from .. import distributed
    from ..denoise import get_method
    from ..denoise.engine import TrainedDenoiser, iter_predict_to_file
    from ..denoise.registry import DEFAULT_METHOD
    from ..device import describe_device, resolve_device
    from ..models import save_model
    from ..progress import run_with_bar

    method = get_method(args.method or DEFAULT_METHOD)
    inputs = expand_inputs(args.inputs)
    batch = len(inputs) > 1 or Path(args.output).is_dir()
    if batch:
        inputs = drop_own_outputs(inputs, Path(args.output), denoised_name)
    outputs = output_paths(inputs, args.output)
    listed = [p for p in args.inputs if Path(p).is_file()]  # STAR lists are read too
    protected = check_outputs([*outputs, args.save_model],
                              inputs=[*listed, *inputs, args.half2, args.model],
                              overwrite=args.overwrite or batch)  # a batch skips what exists (below)
    ctx = distributed.context()
    if batch and not args.overwrite:
        # Resumable: outputs are written atomically, so one that exists is finished.
        done = [o for o in outputs if o.exists()]
        if done and ctx.is_main:
            print(f"{len(done)} of {len(outputs)} outputs exist already and are skipped (--overwrite redoes them)")
        if len(done) == len(outputs):
            return 0
        if args.save_model and Path(args.save_model).exists() and not args.model and not args.predict_only:
            if ctx.is_main:
                print(f"reusing the model an earlier run saved: {args.save_model} (--overwrite retrains)")
            args.model, args.predict_only, args.save_model = args.save_model, True, None
    check_method_options(method, args, n_inputs=len(inputs))

    volumes = [read_mrc(p) for p in inputs]
    half2 = read_mrc(args.half2) if args.half2 else None
    for v in volumes + ([half2] if half2 else []):
        require_finite(v.data, name=v.path)
    if half2 is not None and half2.data.shape != volumes[0].data.shape:
        raise CryodenInputError(args.half2, f"shape {half2.data.shape} differs from {inputs[0]}'s {volumes[0].data.shape}")
    dev = resolve_device(args.device, need_fft=method.needs_fft)
    if not args.quiet:
        print(f"method {method.name}{' (default)' if args.method is None else ''}; device {describe_device(dev)}")

    model, ckpt = None, None
    if method.trains:
        first = volumes[0]
        dims = 2 if (first.is_stack or first.data.ndim == 2) else 3
        if args.model:
            model = TrainedDenoiser.load(args.model)
            if model.method != method.name:
                raise CryodenInputError(args.model, f"is a {model.method} model; run with --method {model.method}")
        if not args.predict_only:
            params = build_params(method, args, dims=dims)
            ckpt = checkpointer(args, args.output, protected)
            gen = method.train(first.data, params, is_stack=first.is_stack, half2=half2.data if half2 else None,
                               model=model, seed=args.seed, device=dev, voxel_size=first.voxel_size, checkpoint=ckpt,
                               resume=args.resume)
            try:
                model = run_with_bar(announce_resume(gen, ckpt), disable=args.quiet)
            except CryodenInputError as exc:
                if exc.path is not None:
                    raise
                # The data could not be used (e.g. its noise cannot be measured): say which file.
                raise CryodenInputError(first.path, exc.problem) from exc
            line = model.describe_noise()
            if line and ctx.is_main and not args.quiet:
                print(line)
            if args.save_model and ctx.is_main:  # every process holds the same model
                save_model(args.save_model, model.to_model_file(), inputs=protected)
                print(f"wrote model: {args.save_model}")
    # Several processes: each writes its share of the outputs (one input: rank 0 writes it).
    jobs = [(v, o) for v, o in zip(volumes, outputs) if args.overwrite or not batch or not o.exists()]
    jobs = distributed.shard(jobs, ctx) if batch else (jobs if ctx.is_main else [])
    for vol, out in jobs:
        labels = [*vol.labels[:8], f"napari-cryoden denoise --method {method.name}"]
        if method.trains:
            run_with_bar(iter_predict_to_file(model, vol.data, out, voxel_size=_zyx(vol), is_stack=vol.is_stack,
                                              origin=vol.origin, labels=labels, inputs=protected,
                                              half2=half2.data if (half2 is not None and vol is volumes[0]) else None,
                                              seed=args.seed, device=dev), disable=args.quiet)
        else:
            dims = 2 if (vol.is_stack or vol.data.ndim == 2) else 3
            params = build_params(method, args, dims=dims)
            with MrcWriter(out, vol.data.shape, voxel_size=_zyx(vol), is_stack=vol.is_stack, origin=vol.origin,
                           labels=labels, inputs=protected) as target:
                # Written straight into the memory-mapped output: host memory holds a slab or a chunk.
                run_with_bar(method.run(vol.data, params, is_stack=vol.is_stack, voxel_size=vol.voxel_size,
                                        seed=args.seed, device=args.device, out=target), disable=args.quiet)
        print(f"wrote {out}" + (f" (rank {ctx.rank})" if ctx.world_size > 1 else ""))
    distributed.barrier(ctx)
    if ckpt is not None and ctx.is_main:
        ckpt.remove()  # finished: nothing left to resume
    return 0


def _zyx(vol) -> tuple[float, ...]:
    vs = tuple(vol.voxel_size)
    return vs if len(vs) == 3 else (vs[-1],) + vs


def register(commands: dict) -> None:
    from ..denoise import methods
    from ..denoise.registry import DEFAULT_METHOD
    from ..params import add_method_params

    all_methods = methods()
    p = commands["root"].add_parser(
        "denoise", help="denoise tomograms, micrographs or particle stacks (self-supervised, classical, supervised)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="methods:\n" + "\n".join(f"  {n:13s} {m.description}" for n, m in all_methods.items()))
    p.add_argument("inputs", nargs="+", metavar="IN",
                   help="MRC files, folders, glob patterns, or STAR files listing micrographs/tomograms "
                        "(rlnMicrographName or rlnTomoName)")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder (several inputs)")
    # No argparse default, so the run can say the method was not chosen ("method self2self (default)").
    p.add_argument("--method", choices=sorted(all_methods), default=None,
                   help=f"denoising method (default: {DEFAULT_METHOD}, the best measured today)")
    p.add_argument("--half2", help="second half volume (" + ", ".join(n for n, m in all_methods.items() if m.needs_half2)
                   + ")")
    p.add_argument("--time-budget", type=float, help="wall-clock training budget in seconds")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    model_users = ", ".join(n for n, m in all_methods.items() if m.needs_model)
    p.add_argument("--model", help="trained model file: self-supervised methods predict with it (--predict-only) or "
                                   f"continue training it; supervised methods ({model_users}) need one")
    p.add_argument("--save-model", help="save the trained model here (one file)")
    p.add_argument("--predict-only", action="store_true", help="do not train; needs --model")
    p.add_argument("--seed", type=int, default=0)
    add_checkpoint_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs that exist already (without it a single run refuses them; a batch re-run "
                        "skips them and reuses the --save-model file an earlier run wrote)")
    # --time-budget, --epochs and --model are the top-level flags above
    add_method_params(p, {n: m.params for n, m in all_methods.items()}, skip=("time_budget", "epochs", "model"))
    p.set_defaults(func=cmd_denoise)
