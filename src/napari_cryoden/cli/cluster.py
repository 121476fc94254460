"""`cryoden cluster`: 2D classification of a particle stack (Siamese, MRA or PCA + KMeans) to RELION STAR;
`cryoden subset`: the particles of chosen classes as a new STAR."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..cluster.pipeline import K_CRITERIA, SCORE_COLUMN, class_members, with_classes
from ..errors import CryodenInputError
from ..io.star import rebase_image_names
from ._common import (
    add_checkpoint_args,
    add_overwrite,
    add_particle_inputs,
    announce_resume,
    check_outputs,
    checkpointer,
    positive_float,
    single_or_batch,
)


def parse_classes(text: str) -> list[int]:
    """'4' -> [4]; '2-6' -> [2, 3, 4, 5, 6]; '2,4,8' -> [2, 4, 8]."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            values = list(range(lo, hi + 1))
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise CryodenInputError(None, f"--classes expects K, K1-K2 or K1,K2,..., got {text!r}") from exc
    if not values or min(values) < 1:
        raise CryodenInputError(None, f"--classes must be positive, got {text!r}")
    return values


def _params(args, method: str):
    """The method's parameters: its defaults, the method options given (``--rounds``, ``--work-box`` ...), and
    the top-level ``--seed`` / ``--epochs`` / ``--time-budget``."""
    from ..cluster import methods
    from ..params import given_params, validate

    cls = methods()[method].params
    names = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted({f.name for m in methods().values() for f in dataclasses.fields(m.params)} - names)
    wrong = [n for n in foreign if getattr(args, f"param_{n}", None) is not None]
    if wrong:  # an option of another method would be ignored without a word
        raise CryodenInputError(None, f"--{wrong[0].replace('_', '-')} does not apply to --method {method}")
    values = given_params(cls, args)
    values["seed"] = args.seed
    for name in ("epochs", "time_budget"):
        if getattr(args, name) is not None:
            if name not in names:
                trainers = ", ".join(n for n, m in methods().items() if m.trains)
                raise CryodenInputError(None, f"--{name.replace('_', '-')} applies to --method {trainers}, "
                                              f"not {method}")
            values[name] = float(getattr(args, name))
    try:
        return validate(cls(**values))
    except ValueError as exc:
        raise CryodenInputError(None, f"--method {method}: {exc}") from exc


def _write_embedding(path, result, inputs) -> None:
    import pandas as pd

    from ..io.outputs import AtomicOutput

    avg = result.averages
    n = len(result.labels)
    frame = pd.DataFrame({
        "particle": np.arange(1, n + 1),
        "class": result.labels + 1,
        "confidence": avg.score if avg is not None else np.full(n, np.nan),
        "distance": avg.distance if avg is not None else np.full(n, np.nan),
        "x": result.embedding[:, 0],
        "y": result.embedding[:, 1],
    })
    with AtomicOutput(path, inputs=inputs) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def cmd_cluster(args) -> int:
    return single_or_batch(args, _cluster_one, suffix="_classes.star", single_outputs=("averages", "embedding", "save_model"))


def _cluster_one(args) -> int:
    from .. import distributed
    from ..align.sources import open_particles
    from ..cluster import iter_cluster, iter_cluster_range, methods
    from ..device import describe_device, resolve_device
    from ..io.mrc import write_mrc
    from ..io.star import write_star
    from ..models import load_model, save_model
    from ..progress import run_with_bar

    inputs = check_outputs((args.output, args.averages, args.embedding, args.save_model),
                           inputs=(args.input, args.model), overwrite=args.overwrite)
    if not str(args.output).lower().endswith(".star"):
        raise CryodenInputError(args.output, "the output must be a .star file")
    ks = parse_classes(args.classes)
    params = _params(args, args.method)  # settings errors before any file is read
    if not Path(args.input).exists():
        raise CryodenInputError(args.input, "file not found")
    chosen = methods()[args.method]
    if not chosen.trains and (args.model or args.save_model):
        raise CryodenInputError(args.model or args.save_model, f"--model/--save-model apply to methods that train "
                                                               f"a network, not {args.method}")
    particles = open_particles(args.input)
    source, table = particles.source, particles.table
    n, box, apix = len(source), source.box, source.pixel_size
    if max(ks) > n or min(ks) < 2:
        raise CryodenInputError(args.input, f"has {n} particles; --classes must be between 2 and {n}, "
                                            f"got {args.classes}")
    model = load_model(args.model, kind=f"cluster/{args.method}") if args.model else None
    train = model is None or args.epochs is not None or args.time_budget is not None
    device = resolve_device(args.device, need_fft=True)
    print(f"clustering {n} particles of {box}x{box} px ({apix:.4g} Å) into {args.classes} classes with "
          f"{args.method} on {describe_device(device)}")
    ckpt = checkpointer(args, args.output, inputs) if chosen.trains and train else None
    kwargs = {"method": args.method, "params": params, "device": device, "model": model, "train": train,
              "checkpoint": ckpt}
    gen = (iter_cluster(source, ks[0], resume=args.resume, **kwargs) if len(ks) == 1 else
           iter_cluster_range(source, ks, resume=args.resume, criterion=args.k_criterion, **kwargs))
    result = run_with_bar(announce_resume(gen, ckpt), disable=bool(getattr(args, "quiet", False)))
    if ckpt is not None and distributed.context().is_main:
        ckpt.remove()
    if "model_selection" in result.info:
        selection = result.info["model_selection"]
        print("silhouette by K: " + ", ".join(f"{k}: {v:.3f}" for k, v in selection["values"].items()))
        print("closest pair of classes (rho; about 1 = one view twice) by K: " +
              ", ".join(f"{k}: {v:.2f}" for k, v in selection["max_rho"].items()))
        print(f"K = {result.k} (by {selection['score']})")

    if not distributed.context().is_main:
        return 0  # under torchrun every process trained the same encoder; rank 0 writes
    out = Path(args.output)
    rows = with_classes(table.particles, result)
    rows["rlnImageName"] = rebase_image_names(table, out)
    write_star(out, table.with_particles(rows), inputs=inputs)
    counts = result.counts
    print(f"wrote {out} (rlnClassNumber 1..{result.k}, 1 = largest; {SCORE_COLUMN})")
    print("particles per class: " + ", ".join(f"{c + 1}: {int(v)}" for c, v in enumerate(counts)))
    if args.averages:
        write_mrc(args.averages, result.averages.averages, voxel_size=apix, is_stack=True, inputs=inputs)
        print(f"wrote class averages (largest class first): {args.averages}")
    if args.embedding:
        _write_embedding(args.embedding, result, inputs)
        print(f"wrote embedding: {args.embedding}")
    if args.save_model and result.model is not None:
        save_model(args.save_model, result.model, inputs=inputs)
        print(f"wrote model: {args.save_model}")
    print(f"silhouette {result.info['silhouette']:.3f}; {result.info['seconds']['total']:.1f} s")
    return 0


def cmd_subset(args) -> int:
    from ..io.star import read_star, write_star

    inputs = check_outputs((args.output,), inputs=(args.input,), overwrite=args.overwrite)
    if not str(args.output).lower().endswith(".star"):
        raise CryodenInputError(args.output, "the output must be a .star file")
    if not Path(args.input).exists():
        raise CryodenInputError(args.input, "file not found")
    table = read_star(args.input)
    if "rlnClassNumber" not in table.particles:
        raise CryodenInputError(args.input, "lacks the rlnClassNumber column (run `cryoden cluster` first)")
    wanted = parse_classes(args.classes)
    try:
        keep = class_members(table.particles["rlnClassNumber"], wanted)
    except ValueError as exc:
        raise CryodenInputError(args.input, f"has {exc}") from exc
    out = Path(args.output)
    rows = table.particles.copy()
    rows["rlnImageName"] = rebase_image_names(table, out)
    write_star(out, table.with_particles(rows[keep]), inputs=inputs)
    print(f"wrote {out}: {int(keep.sum())} of {len(keep)} particles (classes {wanted})")
    return 0


def register(commands: dict) -> None:
    from ..cluster import DEFAULT_METHOD, methods
    from ..params import add_method_params

    p = commands["root"].add_parser(
        "cluster", help="2D classification of particles: classes, class averages, an embedding to plot",
        description="Cluster particle images into classes and write the input's STAR table plus rlnClassNumber "
                    f"(1-based, 1 = largest class) and {SCORE_COLUMN}; optionally the class averages (largest "
                    "class first) and a 2D embedding (CSV). Methods: docs/cluster.md.")
    add_particle_inputs(p, job="clustering", suffix="_classes.star")
    p.add_argument("--classes", required=True,
                   help="number of classes K, or a range K1-K2 / list K1,K2 (one K is kept: --k-criterion)")
    p.add_argument("--k-criterion", choices=K_CRITERIA, default="distinct",
                   help="how a range of K picks one: silhouette (the highest silhouette of the features) or "
                        "distinct (the largest K whose class averages all differ by more than their noise); "
                        "docs/cluster.md measures both (default: %(default)s)")
    p.add_argument("--method", choices=list(methods()), default=DEFAULT_METHOD,
                   help="; ".join(f"{n}: {m.description}" for n, m in methods().items()) +
                        f" (default: {DEFAULT_METHOD})")
    p.add_argument("--averages", help="write the class averages (.mrcs), largest class first")
    p.add_argument("--embedding", help="write particle, class, confidence, distance, x, y per particle (.csv)")
    p.add_argument("--model", help="siamese: trained encoder to apply (or continue with --epochs/--time-budget)")
    p.add_argument("--save-model", help="siamese: write the trained encoder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--epochs", type=positive_float, default=None,
                       help="siamese: training per round in passes of pairs over the particles (default 2)")
    group.add_argument("--time-budget", type=positive_float, default=None,
                       help="siamese: stop training after S seconds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_checkpoint_args(p)
    add_method_params(p, {n: m.params for n, m in methods().items()}, skip=("seed", "epochs", "time_budget"))
    p.set_defaults(func=cmd_cluster)

    p = commands["root"].add_parser("subset", help="the particles of chosen classes of a classified STAR file")
    p.add_argument("input", help="STAR file with rlnClassNumber (e.g. from cryoden cluster)")
    p.add_argument("--classes", required=True, help="classes to keep: 1,3 or 2-4 (as in rlnClassNumber)")
    p.add_argument("-o", "--output", required=True, help="output STAR file")
    add_overwrite(p)
    p.set_defaults(func=cmd_subset)
