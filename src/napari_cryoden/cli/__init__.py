"""The ``cryoden`` command line.

Each capability registers its own commands from a module of this package (``register(commands)``), so a
new method touches one module and the ``COMMAND_MODULES`` list. Every command exits with status 2 and a
one-line message on bad input (naming the file and the problem) and never leaves a partial output file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import CryodenInputError, CryodenOutputError

#: Modules of this package that add commands, in the order they appear in ``--help``.
COMMAND_MODULES = ("info", "simulate", "denoise", "supervised", "align", "cluster", "evaluate", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryoden", description="The cryoden command line: denoise, align and cluster cryo-EM/ET data; simulate, inspect, evaluate, and run the demo.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    root = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {"root": root}
    for name in COMMAND_MODULES:
        if name == "evaluate":
            commands["evaluate"] = root.add_parser(
                "evaluate", help="compare results with references or ground truth").add_subparsers(
                dest="what", required=True, metavar="WHAT")
        elif name == "simulate":
            commands["simulate"] = root.add_parser("simulate", help="make data with exact ground truth").add_subparsers(
                dest="what", required=True, metavar="WHAT")
        importlib.import_module(f".{name}", __name__).register(commands)
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

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    previous_term = _handle_sigterm()
    ctx = None
    try:
        ctx = _join_process_group(args)
        return int(args.func(args) or 0)
    except (CryodenInputError, CryodenOutputError) as exc:
        print(f"cryoden: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("cryoden: terminated (SIGTERM); partial outputs removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("cryoden: interrupted; partial outputs removed", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous
        if previous_term is not False:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_term is None else previous_term)
        if ctx is not None:
            from ..distributed import shutdown

            shutdown()


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and torchrun send to stop a job) arrived; unwinds like Ctrl-C, so every open
    output removes its temporary file."""


def _handle_sigterm():
    """Turn SIGTERM into :class:`Terminated` in the main thread; returns the previous handler (False when the
    handler cannot be set, e.g. outside the main thread)."""

    def _raise(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        return False
    return signal.signal(signal.SIGTERM, _raise)


def _join_process_group(args):
    """Under torchrun: join the process group (gloo on CPU, NCCL on CUDA); only rank 0 shows progress bars."""
    from ..distributed import init_from_env, launched_by_torchrun

    if not launched_by_torchrun():
        return None
    ctx = init_from_env(getattr(args, "device", "auto") or "auto")
    if not ctx.is_main:
        args.quiet = True
    return ctx
