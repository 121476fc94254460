"""`cryoden evaluate ...`: results against references or ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CryodenInputError
from ._common import check_outputs, print_table, read_array


def cmd_evaluate_image(args) -> int:
    from .. import metrics

    ref, est = read_array(args.reference), read_array(args.estimate)
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
        print_table(rows)
    return 0


def cmd_evaluate_fsc(args) -> int:
    from .. import metrics

    check_outputs((args.csv, args.plot), inputs=(args.a, args.b))
    a, b = read_array(args.a), read_array(args.b)
    if a.data.shape != b.data.shape:
        raise CryodenInputError(args.b, f"shape {b.data.shape} differs from {args.a}'s {a.data.shape}")
    curve = metrics.fourier_shell_correlation(np.asarray(a.data), np.asarray(b.data), voxel_size=a.pixel_size)
    print(f"resolution at FSC 0.5:   {curve.resolution(0.5):.2f} Å")
    print(f"resolution at FSC 0.143: {curve.resolution(0.143):.2f} Å")
    if args.csv:
        from ..io.mrc import AtomicOutput

        with AtomicOutput(args.csv, inputs=[args.a, args.b]) as tmp:
            np.savetxt(tmp, np.stack([curve.frequency, curve.correlation, curve.n_coefficients], 1), delimiter=",",
                       header="frequency_per_angstrom,fsc,n_coefficients", comments="")
        print(f"wrote {args.csv}")
    if args.plot:
        from ..report import plot_fsc

        plot_fsc({f"{Path(args.a).name} vs {Path(args.b).name}": curve}, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_evaluate_alignment(args) -> int:
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
    t_psi, e_psi = truth.particles["rlnAnglePsi"].to_numpy(), est.particles["rlnAnglePsi"].to_numpy()
    offset, corrected = metrics.remove_global_rotation(e_psi, t_psi, symmetry=args.symmetry)
    ang = metrics.angular_error(corrected, t_psi, symmetry=args.symmetry)
    to_px = lambda t: t.particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix  # noqa: E731
    shift = metrics.shift_error(to_px(est), to_px(truth))
    rows = {"particles": len(truth), "global rotation removed (deg)": offset,
            "median angular error (deg)": float(np.median(ang)), "mean angular error (deg)": float(np.mean(ang)),
            "median shift error (px)": float(np.median(shift)), "mean shift error (px)": float(np.mean(shift))}
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

