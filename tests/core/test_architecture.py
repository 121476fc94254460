"""The dependency rule: nothing outside napari_cryoden._plugin imports napari or Qt."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_linter_contract():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_core_import_pulls_in_no_gui_modules():
    code = (
        "import sys, napari_cryoden, napari_cryoden.io, napari_cryoden.simulate, napari_cryoden.metrics, "
        "napari_cryoden.align, napari_cryoden.cli, napari_cryoden.demo, napari_cryoden.sample_data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'magicgui', 'superqt', 'PyQt6', 'PyQt5', 'PySide6', 'vispy'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_contract_covers_every_core_module():
    """New core modules must be added to the import-linter contract in pyproject.toml."""
    import tomllib

    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    pkg = REPO / "src" / "napari_cryoden"
    core = {p.stem for p in pkg.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
            and p.stem not in ("__init__", "_plugin")}
    listed = {m.split(".", 1)[1] for m in contract["source_modules"]}
    assert core <= listed, f"add {sorted(core - listed)} to the contract's source_modules"


def test_no_gui_import_statement_outside_plugin():
    pattern = re.compile(r"^\s*(import|from)\s+(napari|qtpy|magicgui|superqt|PyQt6|PyQt5|PySide6|vispy)\b")
    pkg = REPO / "src" / "napari_cryoden"
    offenders = [f"{p.relative_to(REPO)}:{i + 1}" for p in pkg.rglob("*.py") if "_plugin" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines()) if pattern.match(line)]
    assert offenders == []


def test_ruff_lint_passes():
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "src", "tests", "benchmarks", "docs"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
