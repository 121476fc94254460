"""`cryoden simulate ...`: data with exact ground truth."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import CryodenInputError, CryodenOutputError
from ._common import add_overwrite, check_outputs, load_maps, parse_views, positive_float, positive_int


def parse_fractions(text: str) -> list[float]:
    """'0.5,0.3,0.2' -> [0.5, 0.3, 0.2] (argparse type: a bad value is a usage error naming the option)."""
    import argparse

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values or any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected non-negative numbers with a positive sum, got {text!r}")
    return values


def cmd_simulate_particles(args) -> int:
    from ..simulate import CTFParams, simulate_particles

    out = Path(args.output)
    star = Path(args.star) if args.star else out.with_suffix(".star")
    check_outputs((out, star, args.clean, args.references), inputs=list(args.map or []), overwrite=args.overwrite)
    maps = load_maps(args.map)
    views = parse_views(args.views)
    n_classes = len(maps) * (len(views) if views else 1)
    if args.class_fractions is not None and len(args.class_fractions) != n_classes:
        raise CryodenInputError(None, f"--class-fractions gives {len(args.class_fractions)} values but there are "
                                      f"{n_classes} classes ({len(maps)} map(s) x {len(views) if views else 1} "
                                      "view(s)); give one share per class")
    from tqdm import tqdm

    # Random views need one 3D projection per particle: the slow part, so it gets the bar.
    with tqdm(total=args.n if not args.views else 0, desc="projecting", unit="particle", file=sys.stderr,
              disable=bool(args.views) or args.quiet) as bar:
        sim = simulate_particles(
            [m.data for m in maps], voxel_size=[m.pixel_size for m in maps], n_particles=args.n, box=args.box,
            pixel_size=args.pixel_size, class_views=views,
            class_fractions=args.class_fractions, rotate=not args.no_rotation,
            max_shift=args.max_shift, integer_shifts=args.integer_shifts,
            ctf=CTFParams(voltage=args.voltage, cs=args.cs, amplitude_contrast=args.amplitude_contrast,
                          b_factor=args.b_factor),
            ctf_mode=args.ctf, defocus_range=tuple(args.defocus_range), snr=None if args.snr <= 0 else args.snr,
            mask_radius=args.mask_radius, seed=args.seed, on_projected=bar.update)
    written = sim.save(out, star, clean_path=args.clean, references_path=args.references)
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    print(f"{len(sim.images)} particles, {sim.references.shape[0]} classes, box {sim.images.shape[-1]}, "
          f"pixel {sim.pixel_size:.4g} Å, SNR {args.snr if args.snr > 0 else 'inf'}")
    return 0


def cmd_simulate_alignment(args) -> int:
    from ..io.mrc import read_mrc
    from ..simulate import project_map, resample_map, simulate_alignment_stack

    out = Path(args.output)
    star = Path(args.star) if args.star else out.with_suffix(".star")
    check_outputs((out, star, args.clean, args.references), inputs=[p for p in (args.image, *(args.map or [])) if p],
                  overwrite=args.overwrite)
    if args.image:
        img = read_mrc(args.image, mmap=False)
        centres = np.asarray(img.data, dtype=np.float32)
        if centres.ndim == 3 and not img.is_stack:
            raise CryodenInputError(args.image, "expected a 2D image or an image stack (.mrcs) of centre images")
        pixel = img.pixel_size
    else:
        m = load_maps(args.map)[0]
        vol = resample_map(m.data, voxel_size=m.pixel_size, pixel_size=m.pixel_size, box=args.box)
        centres = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)
        pixel = m.pixel_size
    from ..errors import require_finite

    require_finite(centres, name=args.image or "map")
    sim = simulate_alignment_stack(centres, pixel_size=pixel, n_per_image=args.n, max_shift=args.max_shift,
                                   integer_shifts=not args.subpixel, ctf_mode=args.ctf,
                                   snr=None if args.snr <= 0 else args.snr, seed=args.seed)
    written = sim.save(out, star, clean_path=args.clean, references_path=args.references)
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    return 0


def cmd_simulate_tomogram(args) -> int:
    from ..simulate import simulate_tomogram

    out = Path(args.output)
    if out.suffix.lower() != ".mrc":
        raise CryodenOutputError(out, "the tomogram is written as NAME.mrc (with NAME_clean.mrc beside it); "
                                      "give a name ending in .mrc")
    folder, stem = out.parent, out.stem
    check_outputs([folder / f"{stem}{suffix}.mrc" for suffix in
                    ("", "_clean") + (("_even", "_odd") if args.halves else ())], inputs=args.map or [],
                  overwrite=args.overwrite)
    m = load_maps(args.map)[0] if args.map else None
    if m is None:
        from ..sample_data import builtin_map

        m = builtin_map()
    phantom = simulate_tomogram(shape=tuple(args.shape), voxel_size=args.voxel_size, n_vesicles=args.vesicles,
                                n_filaments=args.filaments, n_particles=args.particles, particle_map=m.data,
                                particle_map_voxel_size=m.pixel_size, snr=args.snr, noise=args.noise,
                                missing_wedge=None if args.missing_wedge <= 0 else args.missing_wedge,
                                halves=args.halves, seed=args.seed)
    written = phantom.save(folder, stem=stem)
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    return 0



def register(commands: dict) -> None:
    sim = commands["simulate"]

    p = sim.add_parser("particles", help="particle stack projected from 3D maps, with a truth STAR file")
    p.add_argument("-o", "--output", required=True, help="output stack (.mrcs)")
    p.add_argument("--star", help="truth STAR file (default: OUTPUT with .star)")
    p.add_argument("--map", action="append", help="3D map (repeat for several classes); default: built-in EMD-5625")
    p.add_argument("-n", type=positive_int, default=200, help="number of particles (default 200)")
    p.add_argument("--box", type=positive_int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--pixel-size", type=positive_float, help="Å per pixel (default: the map's voxel size)")
    p.add_argument("--views", help="fixed views 'rot,tilt;rot,tilt' (degrees): each (map, view) is a class; "
                                   "default: random views, one class per map")
    p.add_argument("--class-fractions", type=parse_fractions, metavar="F,F,...",
                   help="share of the particles in each class, in the order maps x views (e.g. 0.5,0.3,0.2; "
                        "normalised to sum 1); default: classes of equal size")
    p.add_argument("--no-rotation", action="store_true", help="no random in-plane rotation")
    p.add_argument("--max-shift", type=float, default=5.0, help="origins ~ U(-S, S) pixels (default 5)")
    p.add_argument("--integer-shifts", action="store_true")
    p.add_argument("--ctf", choices=("none", "full", "abs"), default="none", help="CTF: none, full or |CTF|")
    p.add_argument("--defocus-range", type=float, nargs=2, default=(10000.0, 25000.0), metavar=("MIN", "MAX"),
                   help="defocus range in Å (one value per particle)")
    p.add_argument("--voltage", type=float, default=300.0, help="kV")
    p.add_argument("--cs", type=float, default=2.7, help="mm")
    p.add_argument("--amplitude-contrast", type=float, default=0.07)
    p.add_argument("--b-factor", type=float, default=0.0, help="Å²")
    p.add_argument("--snr", type=float, default=0.1, help="signal variance / noise variance; 0 for no noise")
    p.add_argument("--mask-radius", type=float, help="measure the signal variance inside this radius (pixels)")
    p.add_argument("--clean", help="also write the noise-free stack here")
    p.add_argument("--references", help="also write the class references here")
    p.add_argument("--seed", type=int, default=0)
    add_overwrite(p)
    p.set_defaults(func=cmd_simulate_particles)

    p = sim.add_parser("alignment", help="the UDL/JUDL recipe: centre images rotated U(0,360), shifted "
                                         "U(-10,10) px, |CTF|, SNR 0.1")
    p.add_argument("-o", "--output", required=True, help="output stack (.mrcs)")
    p.add_argument("--star", help="truth STAR file (default: OUTPUT with .star)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", help="centre image(s): a 2D MRC or an .mrcs stack")
    src.add_argument("--map", action="append", help="3D map whose projection along z is the centre image")
    p.add_argument("--box", type=positive_int, default=64)
    p.add_argument("-n", type=positive_int, default=100, help="images per centre image (default 100)")
    p.add_argument("--max-shift", type=float, default=10.0)
    p.add_argument("--subpixel", action="store_true", help="sub-pixel shifts (default: integer)")
    p.add_argument("--ctf", choices=("none", "full", "abs"), default="abs")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--clean", help="also write the noise-free stack here")
    p.add_argument("--references", help="also write the centre images here")
    p.add_argument("--seed", type=int, default=0)
    add_overwrite(p)
    p.set_defaults(func=cmd_simulate_alignment)

    p = sim.add_parser("tomogram", help="phantom tomogram (vesicles, filaments, particles) + clean volume")
    p.add_argument("-o", "--output", required=True, help="noisy volume (.mrc); the clean one is written beside it")
    p.add_argument("--shape", type=positive_int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument("--voxel-size", type=positive_float, default=10.0, help="Å (default 10)")
    p.add_argument("--vesicles", type=int, default=3)
    p.add_argument("--filaments", type=int, default=3)
    p.add_argument("--particles", type=int, default=12)
    p.add_argument("--map", action="append", help="particle map (default: built-in EMD-5625)")
    p.add_argument("--snr", type=float, default=0.5)
    p.add_argument("--noise", choices=("white", "coloured"), default="white")
    p.add_argument("--missing-wedge", type=float, default=60.0, help="tilt range ±degrees; 0 for none")
    p.add_argument("--halves", action="store_true", help="also write even/odd noisy halves")
    p.add_argument("--seed", type=int, default=0)
    add_overwrite(p)
    p.set_defaults(func=cmd_simulate_tomogram)

