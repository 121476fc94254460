"""The built wheel ships the same napari.yaml as the top level, with the sample map, and validates."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_manifest_and_sample_map(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("napari_cryoden-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "napari_cryoden/napari.yaml" in names
        assert "napari_cryoden/data/emd_5625.map" in names
        shipped = zf.read("napari_cryoden/napari.yaml")
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari_cryoden:napari.yaml" in zf.read(entry_points).decode()
        # no test data or shared data in the package
        assert not any(n.startswith(("tests/", "shared/")) for n in names)
        zf.extract("napari_cryoden/napari.yaml", tmp_path / "x")
    assert shipped == (REPO / "napari.yaml").read_bytes()
    npe2 = Path(sys.executable).parent / "npe2"
    check = subprocess.run([str(npe2), "validate", str(tmp_path / "x" / "napari_cryoden" / "napari.yaml")],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
