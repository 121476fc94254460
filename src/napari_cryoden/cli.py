"""The cryoden command line: simulate, inspect, evaluate, and run the demo.

Every command exits with status 2 and a one-line message on bad input (naming the file and the problem) and
never leaves a partial output file behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import CryodenInputError, CryodenOutputError

log = logging.getLogger("napari_cryoden")


# --------------------------------------------------------------------------------------------- helpers
def _parse_views(text: str | None):
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


def _check_outputs(outputs, *, inputs=()) -> None:
    """Validate every output path before any work: writable, not an input, and all distinct."""
    from .io.mrc import check_output_path

    seen: dict[Path, str] = {}
    for p in outputs:
        if not p:
            continue
        path = check_output_path(p, inputs=inputs)
        key = path.resolve()
        if key in seen:
            raise CryodenOutputError(path, f"is given for two outputs ({seen[key]} and this one); give distinct names")
        seen[key] = str(p)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _load_maps(paths: Sequence[str] | None):
    from .io.mrc import read_mrc
    from .sample_data import builtin_map

    mrcs = [read_mrc(p, mmap=False) for p in paths] if paths else [builtin_map()]
    for m in mrcs:
        if m.data.ndim != 3 or m.is_stack:
            raise CryodenInputError(m.path, f"a 3D map is required, got shape {m.data.shape}"
                                            f"{' (an image stack)' if m.is_stack else ''}")
        from .errors import require_finite

        require_finite(m.data, name=m.path)
    return mrcs


def _print_table(rows: dict, *, file=None) -> None:
    file = file or sys.stdout
    width = max(len(k) for k in rows) if rows else 0
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        print(f"{key:<{width}}  {value}", file=file)


# ------------------------------------------------------------------------------------------- commands
def cmd_info(args) -> int:
    from tqdm import tqdm

    from .io.mrc import read_mrc
    from .io.star import read_star

    for name in args.files:
        path = Path(name)
        if path.suffix.lower() == ".star":
            table = read_star(path)
            from .io.star import parse_image_names, resolve_stack_path

            rows = {"file": str(path), "kind": "RELION particle table", "particles": len(table),
                    "pixel size (Å)": table.pixel_size(), "optics groups": len(table.optics),
                    "columns": ", ".join(table.particles.columns)}
            if "rlnImageName" in table.particles:
                stacks, _ = parse_image_names(table.particles["rlnImageName"].tolist(), star_path=path)
                for s in dict.fromkeys(stacks):
                    p = resolve_stack_path(s, path)
                    rows[f"stack {s}"] = "found" if p.exists() else f"MISSING (looked for {p})"
            _print_table(rows)
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
        _print_table(rows)
        print()
    return 0


def cmd_simulate_particles(args) -> int:
    from .simulate import CTFParams, simulate_particles

    out = Path(args.output)
    star = Path(args.star) if args.star else out.with_suffix(".star")
    _check_outputs((out, star, args.clean, args.references), inputs=list(args.map or []))
    maps = _load_maps(args.map)
    sim = simulate_particles(
        [m.data for m in maps], voxel_size=[m.pixel_size for m in maps], n_particles=args.n, box=args.box,
        pixel_size=args.pixel_size, class_views=_parse_views(args.views), rotate=not args.no_rotation,
        max_shift=args.max_shift, integer_shifts=args.integer_shifts,
        ctf=CTFParams(voltage=args.voltage, cs=args.cs, amplitude_contrast=args.amplitude_contrast,
                      b_factor=args.b_factor),
        ctf_mode=args.ctf, defocus_range=tuple(args.defocus_range), snr=None if args.snr <= 0 else args.snr,
        mask_radius=args.mask_radius, seed=args.seed)
    written = sim.save(out, star, clean_path=args.clean, references_path=args.references)
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    print(f"{len(sim.images)} particles, {sim.references.shape[0]} classes, box {sim.images.shape[-1]}, "
          f"pixel {sim.pixel_size:.4g} Å, SNR {args.snr if args.snr > 0 else 'inf'}")
    return 0


def cmd_simulate_alignment(args) -> int:
    from .io.mrc import read_mrc
    from .simulate import project_map, resample_map, simulate_alignment_stack

    out = Path(args.output)
    star = Path(args.star) if args.star else out.with_suffix(".star")
    _check_outputs((out, star, args.clean, args.references), inputs=[p for p in (args.image, *(args.map or [])) if p])
    if args.image:
        img = read_mrc(args.image, mmap=False)
        centres = np.asarray(img.data, dtype=np.float32)
        if centres.ndim == 3 and not img.is_stack:
            raise CryodenInputError(args.image, "expected a 2D image or an image stack (.mrcs) of centre images")
        pixel = img.pixel_size
    else:
        m = _load_maps(args.map)[0]
        vol = resample_map(m.data, voxel_size=m.pixel_size, pixel_size=m.pixel_size, box=args.box)
        centres = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)
        pixel = m.pixel_size
    from .errors import require_finite

    require_finite(centres, name=args.image or "map")
    sim = simulate_alignment_stack(centres, pixel_size=pixel, n_per_image=args.n, max_shift=args.max_shift,
                                   integer_shifts=not args.subpixel, ctf_mode=args.ctf,
                                   snr=None if args.snr <= 0 else args.snr, seed=args.seed)
    written = sim.save(out, star, clean_path=args.clean, references_path=args.references)
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    return 0


def cmd_simulate_tomogram(args) -> int:
    from .simulate import simulate_tomogram

    out = Path(args.output)
    if out.suffix.lower() != ".mrc":
        raise CryodenOutputError(out, "the tomogram is written as NAME.mrc (with NAME_clean.mrc beside it); "
                                      "give a name ending in .mrc")
    folder, stem = out.parent, out.stem
    _check_outputs([folder / f"{stem}{suffix}.mrc" for suffix in
                    ("", "_clean") + (("_even", "_odd") if args.halves else ())], inputs=args.map or [])
    m = _load_maps(args.map)[0] if args.map else None
    if m is None:
        from .sample_data import builtin_map

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


def _read_array(path: str):
    from .errors import require_finite
    from .io.mrc import read_mrc

    m = read_mrc(path)
    require_finite(m.data, name=path)
    return m


def cmd_evaluate_image(args) -> int:
    from . import metrics

    ref, est = _read_array(args.reference), _read_array(args.estimate)
    if ref.data.shape != est.data.shape:
        raise CryodenInputError(args.estimate, f"shape {est.data.shape} differs from the reference's {ref.data.shape}")
    r, e = np.asarray(ref.data, dtype=np.float64), np.asarray(est.data, dtype=np.float64)
    rows = {
        "MSE": metrics.mse(r, e, fit=args.fit),
        "MSE ([0,1]-scaled)": metrics.mse(r, e, normalize="minmax"),
        "PSNR (dB)": metrics.psnr(r, e, fit=args.fit),
        "SSIM": metrics.ssim(r, e, fit=args.fit),
    }
    if not ref.is_stack:
        curve = metrics.fourier_shell_correlation(r, e, voxel_size=ref.pixel_size)
        rows["FSC 0.5 (Å)"] = curve.resolution(0.5)
        rows["FSC 0.143 (Å)"] = curve.resolution(0.143)
    if args.json:
        print(json.dumps({k: float(v) for k, v in rows.items()}))
    else:
        _print_table(rows)
    return 0


def cmd_evaluate_fsc(args) -> int:
    from . import metrics

    _check_outputs((args.csv, args.plot), inputs=(args.a, args.b))
    a, b = _read_array(args.a), _read_array(args.b)
    if a.data.shape != b.data.shape:
        raise CryodenInputError(args.b, f"shape {b.data.shape} differs from {args.a}'s {a.data.shape}")
    curve = metrics.fourier_shell_correlation(np.asarray(a.data), np.asarray(b.data), voxel_size=a.pixel_size)
    print(f"resolution at FSC 0.5:   {curve.resolution(0.5):.2f} Å")
    print(f"resolution at FSC 0.143: {curve.resolution(0.143):.2f} Å")
    if args.csv:
        from .io.mrc import AtomicOutput

        with AtomicOutput(args.csv, inputs=[args.a, args.b]) as tmp:
            np.savetxt(tmp, np.stack([curve.frequency, curve.correlation, curve.n_coefficients], 1), delimiter=",",
                       header="frequency_per_angstrom,fsc,n_coefficients", comments="")
        print(f"wrote {args.csv}")
    if args.plot:
        from .report import plot_fsc

        plot_fsc({f"{Path(args.a).name} vs {Path(args.b).name}": curve}, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_evaluate_alignment(args) -> int:
    from . import metrics
    from .io.star import read_star

    truth, est = read_star(args.truth), read_star(args.estimate)
    if len(truth) != len(est):
        raise CryodenInputError(args.estimate, f"has {len(est)} particles, the truth has {len(truth)}")
    for t, name in ((truth, args.truth), (est, args.estimate)):
        missing = {"rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"} - set(t.particles.columns)
        if missing:
            raise CryodenInputError(name, f"lacks columns {sorted(missing)}")
    apix = truth.pixel_size()
    t_psi, e_psi = truth.particles["rlnAnglePsi"].to_numpy(), est.particles["rlnAnglePsi"].to_numpy()
    offset, corrected = metrics.remove_global_rotation(e_psi, t_psi, symmetry=args.symmetry)
    ang = metrics.angular_error(corrected, t_psi, symmetry=args.symmetry)
    to_px = lambda t: t.particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix  # noqa: E731
    shift = metrics.shift_error(to_px(est), to_px(truth))
    rows = {"particles": len(truth), "global rotation removed (deg)": offset,
            "median angular error (deg)": float(np.median(ang)), "mean angular error (deg)": float(np.mean(ang)),
            "median shift error (px)": float(np.median(shift)), "mean shift error (px)": float(np.mean(shift))}
    print(json.dumps(rows)) if args.json else _print_table(rows)
    return 0


def cmd_evaluate_clusters(args) -> int:
    from . import metrics
    from .io.star import read_star

    truth, est = read_star(args.truth), read_star(args.estimate)
    for t, name in ((truth, args.truth), (est, args.estimate)):
        if "rlnClassNumber" not in t.particles:
            raise CryodenInputError(name, "lacks the rlnClassNumber column")
    if len(truth) != len(est):
        raise CryodenInputError(args.estimate, f"has {len(est)} particles, the truth has {len(truth)}")
    a, b = truth.particles["rlnClassNumber"].to_numpy(), est.particles["rlnClassNumber"].to_numpy()
    rows = {"particles": len(a), "ARI": metrics.adjusted_rand_index(a, b), "NMI": metrics.normalized_mutual_info(a, b),
            "accuracy (Hungarian)": metrics.clustering_accuracy(a, b)}
    print(json.dumps(rows)) if args.json else _print_table(rows)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    report = run_demo(args.outdir, seed=args.seed, quick=args.quick)
    print(f"demo report: {report}")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryoden", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="shape, dtype, voxel size and statistics of MRC files; summary of STAR files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_info)

    # simulate ------------------------------------------------------------------------------------
    sim = sub.add_parser("simulate", help="make data with exact ground truth").add_subparsers(
        dest="what", required=True, metavar="WHAT")

    p = sim.add_parser("particles", help="particle stack projected from 3D maps, with a truth STAR file")
    p.add_argument("-o", "--output", required=True, help="output stack (.mrcs)")
    p.add_argument("--star", help="truth STAR file (default: OUTPUT with .star)")
    p.add_argument("--map", action="append", help="3D map (repeat for several classes); default: built-in EMD-5625")
    p.add_argument("-n", type=_positive_int, default=200, help="number of particles (default 200)")
    p.add_argument("--box", type=_positive_int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--pixel-size", type=_positive_float, help="Å per pixel (default: the map's voxel size)")
    p.add_argument("--views", help="fixed views 'rot,tilt;rot,tilt' (degrees): each (map, view) is a class; "
                                   "default: random views, one class per map")
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
    p.set_defaults(func=cmd_simulate_particles)

    p = sim.add_parser("alignment", help="the UDL/JUDL recipe: centre images rotated U(0,360), shifted "
                                         "U(-10,10) px, |CTF|, SNR 0.1")
    p.add_argument("-o", "--output", required=True, help="output stack (.mrcs)")
    p.add_argument("--star", help="truth STAR file (default: OUTPUT with .star)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", help="centre image(s): a 2D MRC or an .mrcs stack")
    src.add_argument("--map", action="append", help="3D map whose projection along z is the centre image")
    p.add_argument("--box", type=_positive_int, default=64)
    p.add_argument("-n", type=_positive_int, default=100, help="images per centre image (default 100)")
    p.add_argument("--max-shift", type=float, default=10.0)
    p.add_argument("--subpixel", action="store_true", help="sub-pixel shifts (default: integer)")
    p.add_argument("--ctf", choices=("none", "full", "abs"), default="abs")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--clean", help="also write the noise-free stack here")
    p.add_argument("--references", help="also write the centre images here")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate_alignment)

    p = sim.add_parser("tomogram", help="phantom tomogram (vesicles, filaments, particles) + clean volume")
    p.add_argument("-o", "--output", required=True, help="noisy volume (.mrc); the clean one is written beside it")
    p.add_argument("--shape", type=_positive_int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument("--voxel-size", type=_positive_float, default=10.0, help="Å (default 10)")
    p.add_argument("--vesicles", type=int, default=3)
    p.add_argument("--filaments", type=int, default=3)
    p.add_argument("--particles", type=int, default=12)
    p.add_argument("--map", action="append", help="particle map (default: built-in EMD-5625)")
    p.add_argument("--snr", type=float, default=0.5)
    p.add_argument("--noise", choices=("white", "coloured"), default="white")
    p.add_argument("--missing-wedge", type=float, default=60.0, help="tilt range ±degrees; 0 for none")
    p.add_argument("--halves", action="store_true", help="also write even/odd noisy halves")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate_tomogram)

    # evaluate ------------------------------------------------------------------------------------
    ev = sub.add_parser("evaluate", help="compare results with references or ground truth").add_subparsers(
        dest="what", required=True, metavar="WHAT")
    p = ev.add_parser("image", help="MSE, PSNR, SSIM (and FSC resolution) of an estimate against a reference")
    p.add_argument("--reference", required=True)
    p.add_argument("--estimate", required=True)
    p.add_argument("--fit", action="store_true", help="least-squares affine fit of the estimate first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_image)

    p = ev.add_parser("fsc", help="Fourier shell/ring correlation of two maps or images")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--csv", help="write the curve as CSV")
    p.add_argument("--plot", help="write a PNG plot")
    p.set_defaults(func=cmd_evaluate_fsc)

    p = ev.add_parser("alignment", help="angular and shift errors of estimated against true parameters")
    p.add_argument("--truth", required=True)
    p.add_argument("--estimate", required=True)
    p.add_argument("--symmetry", type=int, default=1, help="in-plane symmetry order n (errors modulo 360/n)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_alignment)

    p = ev.add_parser("clusters", help="ARI, NMI and Hungarian accuracy of class assignments")
    p.add_argument("--truth", required=True)
    p.add_argument("--estimate", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_clusters)

    p = sub.add_parser("demo", help="run the product on built-in sample data; writes figures and a report")
    p.add_argument("outdir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller data, for tests")
    p.set_defaults(func=cmd_demo)
    _describe_subcommands(parser)
    return parser


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """Show each sub-command's one-line help at the top of its own ``--help`` too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sub = action.choices[choice.dest]
                sub.description = sub.description or choice.help
                _describe_subcommands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="cryoden: %(levelname)s: %(message)s")

    def _show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"cryoden: warning: {message}", file=sys.stderr)

    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except (CryodenInputError, CryodenOutputError) as exc:
        print(f"cryoden: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cryoden: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
