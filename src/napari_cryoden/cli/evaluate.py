"""`cryoden evaluate ...`: results against references or ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CryodenInputError
from ._common import add_overwrite, check_outputs, print_table, read_array


def cmd_evaluate_image(args) -> int:
    from .. import metrics

    ref, est = read_array(args.reference), read_array(args.estimate)
    if ref.data.shape != est.data.shape:
        raise CryodenInputError(args.estimate, f"shape {est.data.shape} differs from the reference's {ref.data.shape}")
    rows = metrics.compare(np.asarray(ref.data), np.asarray(est.data), voxel_size=ref.pixel_size, fit=args.fit,
                           fsc=not ref.is_stack).rows
    if args.json:
        print(json.dumps({k: float(v) for k, v in rows.items()}))
    else:
        print_table(rows)
    return 0


def cmd_evaluate_fsc(args) -> int:
    from .. import metrics

    inputs = check_outputs((args.csv, args.plot), inputs=(args.a, args.b), overwrite=args.overwrite)
    a, b = read_array(args.a), read_array(args.b)
    if a.data.shape != b.data.shape:
        raise CryodenInputError(args.b, f"shape {b.data.shape} differs from {args.a}'s {a.data.shape}")
    curve = metrics.fourier_shell_correlation(np.asarray(a.data), np.asarray(b.data), voxel_size=a.pixel_size)
    print(f"resolution at FSC 0.5:   {curve.resolution(0.5):.2f} Å")
    print(f"resolution at FSC 0.143: {curve.resolution(0.143):.2f} Å")
    if args.csv:
        from ..io.outputs import AtomicOutput

        with AtomicOutput(args.csv, inputs=inputs) as tmp:
            np.savetxt(tmp, np.stack([curve.frequency, curve.correlation, curve.n_coefficients], 1), delimiter=",",
                       header="frequency_per_angstrom,fsc,n_coefficients", comments="")
        print(f"wrote {args.csv}")
    if args.plot:
        from ..report import plot_fsc

        plot_fsc({f"{Path(args.a).name} vs {Path(args.b).name}": curve}, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation (Pearson, at zero shift) of images, pair by pair along the first axis."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def cmd_evaluate_alignment(args) -> int:
    """Errors against the truth after removing the one global rotation (and the shift that goes with it).

    A reference-free result may describe the particles relative to the true reference turned by ``delta``
    and moved by ``c``: then ``psi_est = psi - delta`` and ``o_est = o - R(-psi) c`` (``docs/align.md``).
    The offset is the circular median of the angle differences; ``c`` is the median of
    ``-R(psi) (o_est - o)``.
    """
    from .. import metrics
    from ..io.star import read_star

    truth, est = read_star(args.truth), read_star(args.estimate)
    if len(truth) != len(est):
        raise CryodenInputError(args.estimate, f"has {len(est)} particles, the truth has {len(truth)}")
    for t, name in ((truth, args.truth), (est, args.estimate)):
        missing = {"rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"} - set(t.particles.columns)
        if missing:
            raise CryodenInputError(name, f"lacks columns {sorted(missing)}")
    apix = truth.pixel_size()
    t_psi, e_psi = truth.particles["rlnAnglePsi"].to_numpy(float), est.particles["rlnAnglePsi"].to_numpy(float)
    to_px = lambda t: t.particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float) / apix  # noqa: E731
    t_o, e_o = to_px(truth), to_px(est)
    raw_ang = metrics.angular_error(e_psi, t_psi, symmetry=args.symmetry)
    raw_shift = metrics.shift_error(e_o, t_o)
    offset, corrected = metrics.remove_global_rotation(e_psi, t_psi, symmetry=args.symmetry)
    ang = metrics.angular_error(corrected, t_psi, symmetry=args.symmetry)
    # The shift that goes with the global rotation: o_est - o = -R(-psi) c, so c = -R(psi) (o_est - o).
    th = np.deg2rad(t_psi)
    d = e_o - t_o
    cx = -(np.cos(th) * d[:, 0] - np.sin(th) * d[:, 1])
    cy = -(np.sin(th) * d[:, 0] + np.cos(th) * d[:, 1])
    c = np.array([np.median(cx), np.median(cy)])
    back = np.stack([np.cos(th) * c[0] + np.sin(th) * c[1], -np.sin(th) * c[0] + np.cos(th) * c[1]], 1)
    shift = metrics.shift_error(e_o + back, t_o)
    rows = {"particles": len(truth), "symmetry": args.symmetry,
            "median angular error (deg)": float(np.median(ang)), "mean angular error (deg)": float(np.mean(ang)),
            "median shift error (px)": float(np.median(shift)), "mean shift error (px)": float(np.mean(shift)),
            "global rotation removed (deg)": offset, "global shift removed x (px)": float(c[0]),
            "global shift removed y (px)": float(c[1]),
            "median angular error, raw (deg)": float(np.median(raw_ang)),
            "median shift error, raw (px)": float(np.median(raw_shift))}
    if args.aligned:
        aligned = read_array(args.aligned)
        stack = np.asarray(aligned.data, dtype=np.float64)
        if stack.ndim != 3 or len(stack) != len(truth):
            raise CryodenInputError(args.aligned, f"expected a stack of {len(truth)} aligned images, got shape "
                                                  f"{stack.shape}")
        if args.reference:
            ref = read_array(args.reference)
            r = np.asarray(ref.data, dtype=np.float64)
            if r.shape != stack.shape[1:]:
                raise CryodenInputError(args.reference, f"a 2D reference of {stack.shape[1:]} is needed, got "
                                                        f"shape {r.shape}")
            sim = _similarity(stack, np.broadcast_to(r, stack.shape))
            rows["mean similarity to reference"] = float(sim.mean())
            rows["median similarity to reference"] = float(np.median(sim))
        if len(stack) > 1:
            pair = _similarity(stack[:-1], stack[1:])
            rows["mean similarity of consecutive images"] = float(pair.mean())
    print(json.dumps(rows)) if args.json else print_table(rows)
    return 0


def cmd_evaluate_clusters(args) -> int:
    from .. import metrics
    from ..io.star import read_star

    truth, est = read_star(args.truth), read_star(args.estimate)
    for t, name in ((truth, args.truth), (est, args.estimate)):
        if "rlnClassNumber" not in t.particles:
            raise CryodenInputError(name, "lacks the rlnClassNumber column")
    if len(truth) != len(est):
        raise CryodenInputError(args.estimate, f"has {len(est)} particles, the truth has {len(truth)}")
    a, b = truth.particles["rlnClassNumber"].to_numpy(), est.particles["rlnClassNumber"].to_numpy()
    rows = {"particles": len(a), "ARI": metrics.adjusted_rand_index(a, b), "NMI": metrics.normalized_mutual_info(a, b),
            "accuracy (Hungarian)": metrics.clustering_accuracy(a, b)}
    print(json.dumps(rows)) if args.json else print_table(rows)
    return 0



def register(commands: dict) -> None:
    ev = commands["evaluate"]
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
    add_overwrite(p)
    p.set_defaults(func=cmd_evaluate_fsc)

    p = ev.add_parser("alignment", help="angular and shift errors of estimated against true parameters")
    p.add_argument("--truth", required=True)
    p.add_argument("--estimate", required=True)
    p.add_argument("--symmetry", type=int, default=1, help="in-plane symmetry order n (errors modulo 360/n)")
    p.add_argument("--aligned", help="aligned stack (.mrcs): similarity of consecutive aligned images")
    p.add_argument("--reference", help="with --aligned: similarity of each aligned image to this 2D reference")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_alignment)

    p = ev.add_parser("clusters", help="ARI, NMI and Hungarian accuracy of class assignments")
    p.add_argument("--truth", required=True)
    p.add_argument("--estimate", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_clusters)

