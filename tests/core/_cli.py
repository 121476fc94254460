"""Running ``cryoden`` in-process from the CLI tests."""

from __future__ import annotations

from napari_cryoden.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``cryoden ARGV``; argparse exits are turned into statuses."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return rc, out, err
