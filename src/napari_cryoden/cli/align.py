"""`cryoden align`: in-plane alignment of a particle stack (classical FFT, UDL or JUDL) to RELION STAR."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..align.result import SCORE_COLUMN, with_alignment
from ..errors import CryodenInputError
from ..io.star import rebase_image_names
from ._common import (
    add_checkpoint_args,
    add_particle_inputs,
    announce_resume,
    check_outputs,
    checkpointer,
    single_or_batch,
)


def _read_reference(path: str, box: int, pixel_size: float) -> np.ndarray:
    """A 2D reference image, or the projection along z of a 3D map, of the particles' box size."""
    from ..errors import require_finite
    from ..io.mrc import read_mrc

    m = read_mrc(path, mmap=False)
    data = np.asarray(m.data, dtype=np.float32)
    require_finite(data, name=path)
    if m.is_stack or data.ndim not in (2, 3):
        raise CryodenInputError(path, f"the reference must be a 2D image or a 3D map, got an image stack of shape "
                                      f"{data.shape}" if m.is_stack else f"unsupported shape {data.shape}")
    if data.ndim == 3:
        from ..simulate import project_map, resample_map

        vol = resample_map(data, voxel_size=m.pixel_size, pixel_size=pixel_size, box=box)
        data = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
    if data.shape != (box, box):
        raise CryodenInputError(path, f"reference image is {data.shape[::-1]} pixels, the particles are {box}x{box}")
    if data.ndim == 2 and m.voxel_size_from_header and abs(m.pixel_size - pixel_size) > 0.01 * pixel_size:
        # A 2D image cannot be resampled without losing its band limit silently: say so instead.
        raise CryodenInputError(path, f"reference pixel size is {m.pixel_size:.4g} Å, the particles' is "
                                      f"{pixel_size:.4g} Å: give a reference of the same sampling (or a 3D map)")
    return data


def _ctf_reader(table, box: int, pixel_size: float):
    """Per-batch CTF from the table's defocus columns, or None when it has none."""
    p = table.particles
    if "rlnDefocusU" not in p:
        return None
    from ..simulate.ctf import ctf_2d

    optics = table.optics.iloc[0]
    missing = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast") if c not in optics]
    if missing:  # never assume a microscope: a wrong voltage or Cs gives a wrong CTF without any warning
        raise CryodenInputError(table.path, f"--ctf needs {', '.join(missing)} in the optics table")
    du = p["rlnDefocusU"].to_numpy(float)
    dv = p["rlnDefocusV"].to_numpy(float) if "rlnDefocusV" in p else du
    da = p["rlnDefocusAngle"].to_numpy(float) if "rlnDefocusAngle" in p else np.zeros_like(du)

    def read(start, stop):
        return ctf_2d((box, box), pixel_size=pixel_size, defocus_u=du[start:stop], defocus_v=dv[start:stop],
                      defocus_angle=da[start:stop], voltage=float(optics["rlnVoltage"]),
                      cs=float(optics["rlnSphericalAberration"]),
                      amplitude_contrast=float(optics["rlnAmplitudeContrast"])).astype(np.float32)

    return read




def cmd_align(args) -> int:
    return single_or_batch(args, _align_one, suffix="_aligned.star", single_outputs=("aligned", "average", "save_model"))


def _align_one(args) -> int:
    from .. import distributed
    from ..align.methods import methods
    from ..align.sources import open_particles
    from ..device import describe_device, resolve_device
    from ..io.mrc import MrcWriter, write_mrc
    from ..io.star import write_star
    from ..progress import run_with_bar

    chosen = methods()[args.method]
    params, deep = _params(args, chosen)  # settings errors before any file is read
    inputs = check_outputs((args.output, args.aligned, args.average, args.save_model),
                           inputs=(args.input, args.reference, None if args.model == "pretrained" else args.model),
                           overwrite=args.overwrite)
    if not str(args.output).lower().endswith(".star"):
        raise CryodenInputError(args.output, "the output must be a .star file")
    if not chosen.trains and (args.model or args.save_model):
        raise CryodenInputError(args.model or args.save_model, f"--model/--save-model apply to methods that train "
                                                               f"a network, not {args.method}")
    if not Path(args.input).exists():
        raise CryodenInputError(args.input, "file not found")
    particles = open_particles(args.input)
    source, table = particles.source, particles.table
    n, box, apix = len(source), source.box, source.pixel_size
    source.read(0, min(n, 1))  # fail early on unreadable images
    reference = _read_reference(args.reference, box, apix) if args.reference else None
    model = _deep_model(args, chosen, box) if chosen.trains else None
    train = chosen.trains and _trains(args, model)
    from ..align.udl import SHIPPED_CTF_CAVEAT
    from ..models import PRETRAINED_NAME

    if args.model == PRETRAINED_NAME and not train and table is not None and "rlnDefocusU" in table.particles:
        print(f"warning: {args.input} has a CTF (rlnDefocusU) and the shipped {args.method} model is not fine-tuned: "
              f"{SHIPPED_CTF_CAVEAT}; fine-tune them (--time-budget), train on the stack, or use --method fft",
              file=sys.stderr)
    if train and n < 2:
        raise CryodenInputError(args.input, f"has {n} particle: training {args.method} needs at least 2 "
                                            "(or give a trained --model)")
    device = resolve_device(args.device, need_fft=True)
    print(f"aligning {n} particles of {box}x{box} px ({apix:.4g} Å) with {args.method} on {describe_device(device)}"
          f" (max shift {params.max_shift:g} px)")
    ctf = _ctf_reader(table, box, apix) if args.ctf else None
    disable = bool(getattr(args, "quiet", False))
    ctx = distributed.context()
    if not ctx.is_main and (not ctx.active or not train):
        return 0  # under torchrun rank 0 aligns one input alone; the others only help train a network
    if train:
        model = _train(args, chosen, deep, source, reference, device, model, inputs, disable, ctf, params)
        if model is None:
            return 0  # a helper process of a distributed training
    if chosen.trains:
        print(f"refining the network's angles: {deep.refine}"
              + (f" (±{deep.refine_window:g}°)" if deep.refine == "local" else ""))
    writer = MrcWriter(args.aligned, (n, box, box), voxel_size=apix, is_stack=True, inputs=inputs) \
        if args.aligned else None
    aligned_out = writer.__enter__() if writer is not None else None
    try:
        result = run_with_bar(chosen.align(source, reference, params, deep, model=model, device=device, ctf=ctf,
                                           keep_aligned=False, aligned_out=aligned_out), disable=disable)
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if writer is not None:
        writer.__exit__(None, None, None)
        print(f"wrote aligned stack: {args.aligned}")

    out = Path(args.output)
    rows = with_alignment(table.particles, result, pixel_size=apix)
    rows["rlnImageName"] = rebase_image_names(table, out)
    write_star(out, table.with_particles(rows), inputs=inputs)
    print(f"wrote {out} (rlnAnglePsi, rlnOriginXAngst, rlnOriginYAngst, {SCORE_COLUMN})")
    if args.average:
        write_mrc(args.average, result.average, voxel_size=apix, inputs=inputs)
        print(f"wrote average: {args.average}")
    if result.info.get("network_crop", box) < box:  # a shipped model read a window around the particle
        print(f"the network read the central {result.info['network_crop']}² of the {box}² box (a window around "
              "the particle, as the shipped models were trained)")
    if result.info.get("reference") == "free" and "iterations" in result.info:
        history = result.info.get("history") or []
        where = "near the network's angles" if "network_angles" in result.info else "global search"
        print(f"reference-free: {result.info['iterations'] + 1} passes ({where}; the last against the settled "
              "average)"
              + (f", last median change {history[-1]['median_angle_change']:.3f}°" if history else ""))
    if result.info.get("warning"):
        print(f"warning: {args.input}: {result.info['warning']}", file=sys.stderr)
    print(f"mean score {float(np.mean(result.scores)):.4f}; {result.info.get('seconds', 0):.1f} s")
    return 0


def _params(args, chosen):
    """(ClassicalParams, the network's params or None) from the defaults and the options given; options of a
    network given with a method that has none are refused, not ignored."""
    from ..align.cross_correlation import ClassicalParams
    from ..align.methods import methods
    from ..align.udl import DeepAlignParams
    from ..params import given_params, validate

    net = given_params(DeepAlignParams, args, prefix="net_")
    if chosen.params is None and net:
        name = next(iter(net))
        trainers = " or ".join(n for n, m in methods().items() if m.params is not None)
        raise CryodenInputError(None, f"--{name.replace('_', '-')} applies to a method that trains a network: use "
                                      f"it with --method {trainers}, not {args.method}")
    try:
        classical = validate(ClassicalParams(**given_params(ClassicalParams, args, prefix="xc_"), seed=args.seed))
        deep = validate(chosen.params(**net, seed=args.seed)) if chosen.params is not None else None
    except (TypeError, ValueError) as exc:
        raise CryodenInputError(None, f"--method {args.method}: {exc}") from exc
    return classical, deep


def _deep_model(args, chosen, box: int):
    """The --model file checked against the method and the particles' box (errors name the file), or None."""
    from ..models import PRETRAINED_NAME, load_model, load_pretrained, pretrained_path

    if not args.model:
        return None
    if args.model == PRETRAINED_NAME:  # the model shipped in the package (no network needed)
        model, path = load_pretrained(chosen.model_kind), pretrained_path(chosen.model_kind)
        print(f"using the pretrained {args.method} model ({path.name}, trained on "
              f"{model.extra.get('training_data', 'simulated data')})")
    else:
        model, path = load_model(args.model, kind="align"), args.model
    chosen.check_model(model, path=path, box=box, where=f"the particles of {args.input}")
    return model


def _trains(args, model) -> bool:
    """No model, or a model to train further (--epochs / --time-budget given)."""
    return model is None or any(getattr(args, f"net_{name}", None) is not None for name in ("epochs", "time_budget"))


def _train(args, chosen, deep, source, reference, device, model, inputs, disable, ctf=None, classical=None):
    from .. import distributed
    from ..models import save_model
    from ..progress import run_with_bar

    ckpt = checkpointer(args, args.output, inputs)
    gen = chosen.train(source, reference, deep, device=device, model=model, checkpoint=ckpt, resume=args.resume,
                       ctf=ctf, classical=classical)
    model = run_with_bar(announce_resume(gen, ckpt), disable=disable)
    if ckpt is not None and distributed.context().is_main:
        ckpt.remove()  # trained: aligning with the network is quick and needs no checkpoint
    if not distributed.context().is_main:
        return None  # every process holds the same model; rank 0 saves it and aligns
    if args.save_model:
        save_model(args.save_model, model, inputs=inputs)
        print(f"wrote model: {args.save_model}")
    return model


def register(commands: dict) -> None:
    from ..align.cross_correlation import ClassicalParams
    from ..align.methods import DEFAULT_METHOD, methods
    from ..align.udl import DeepAlignParams
    from ..params import add_params_to_parser

    p = commands["root"].add_parser(
        "align", help="align particles in plane (rotation + shift) to a reference or reference-free",
        description="Align particle images in plane and write RELION 3.1 STAR parameters (rlnAnglePsi, "
                    f"rlnOriginX/YAngst, {SCORE_COLUMN} = normalised cross-correlation), the aligned stack "
                    "and the average. Convention: docs/conventions.md.")
    add_particle_inputs(p, job="alignment", suffix="_aligned.star")
    p.add_argument("--method", choices=list(methods()), default=DEFAULT_METHOD,
                   help="; ".join(f"{n}: {m.description}" for n, m in methods().items()))
    p.add_argument("--reference", help="2D reference image, or a 3D map (projected along z); none: reference-free")
    p.add_argument("--aligned", help="write the aligned stack (.mrcs)")
    p.add_argument("--average", help="write the average of the aligned particles (.mrc)")
    p.add_argument("--ctf", action="store_true", help="use the STAR file's defocus as a matched filter")
    p.add_argument("--model", help="trained udl/judl model to use, or 'pretrained' for the model shipped with "
                                   "napari-cryoden (with --time-budget / --epochs it is fine-tuned on the input first)")
    p.add_argument("--save-model", help="write the trained udl/judl model")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_checkpoint_args(p)
    add_params_to_parser(p.add_argument_group("alignment parameters (every method; udl/judl refine with them)"),
                         ClassicalParams, skip=("seed",), prefix="xc_")
    add_params_to_parser(p.add_argument_group("network parameters (udl, judl)"), DeepAlignParams, skip=("seed",),
                         prefix="net_")
    p.set_defaults(func=cmd_align)
