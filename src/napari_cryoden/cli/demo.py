"""`cryoden demo`: the whole product on built-in sample data."""

from __future__ import annotations


def cmd_demo(args) -> int:
    from ..demo import run_demo

    report = run_demo(args.outdir, seed=args.seed, quick=args.quick, screenshots=not args.no_screenshots)
    print(f"demo report: {report}")
    return 0


def register(commands: dict) -> None:
    sub = commands["root"]
    p = sub.add_parser("demo", help="run the product on built-in sample data; writes figures and a report")
    p.add_argument("outdir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller data, for tests")
    p.add_argument("--no-screenshots", action="store_true",
                   help="skip the screenshots of the dock widgets (napari under Xvfb, about a minute)")
    p.set_defaults(func=cmd_demo)
