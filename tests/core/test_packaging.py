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
        # the shipped models load offline from the installed package (no download at first use)
        for model in ("align_udl.pt", "align_judl.pt", "denoise_2d.pt", "denoise_3d.pt"):
            assert f"napari_cryoden/models/{model}" in names, model
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


GUI_MODULES = ("napari", "magicgui", "qtpy", "superqt", "vispy", "npe2", "PyQt6", "PyQt5", "PySide6", "PySide2")


def test_the_gui_stack_is_an_extra_not_a_requirement():
    from importlib.metadata import requires

    for req in requires("napari-cryoden") or []:
        name = req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower()
        if name in {m.lower() for m in GUI_MODULES}:
            assert "extra ==" in req, f"{req} must sit in an extra, not in the plain install"


def test_the_cli_runs_where_napari_and_qt_cannot_be_imported(tmp_path):
    # What `pip install napari-cryoden` on a cluster node gives: no napari, no Qt. Importing any of them fails.
    import numpy as np

    from napari_cryoden.io.mrc import write_mrc

    write_mrc(tmp_path / "in.mrc", np.random.default_rng(0).standard_normal((6, 16, 16)).astype(np.float32),
              voxel_size=2.0)
    code = f"""
import sys
BLOCKED = {GUI_MODULES!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
sys.meta_path.insert(0, Block())
from napari_cryoden.cli import main
rc = main(["-q", "denoise", {str(tmp_path / "in.mrc")!r}, "-o", {str(tmp_path / "out.mrc")!r}, "--method", "gaussian"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("loaded:", loaded)
sys.exit(rc)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    assert (tmp_path / "out.mrc").exists()
