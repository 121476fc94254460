"""The docs stay true: the CLI reference matches the parser, and every linked image exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_cli_reference_is_current():
    result = subprocess.run([sys.executable, str(DOCS / "make_cli_reference.py"), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_image_linked_from_the_docs_exists():
    missing = []
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            if not (page.parent / target).exists():
                missing.append(f"{page.name}: {target}")
    assert missing == []


def test_every_widget_and_reader_page_has_a_screenshot():
    import yaml

    page = (DOCS / "getting-started.md").read_text()
    assert "images/sample_tomogram.png" in page and "images/sample_particles.png" in page
    manifest = yaml.safe_load((DOCS.parent / "napari.yaml").read_text())
    for widget in manifest["contributions"]["widgets"]:
        doc = DOCS / f"widget-{widget['display_name'].lower()}.md"
        assert doc.exists(), f"{widget['display_name']} has no docs page ({doc.name})"
        assert re.search(r"!\[[^\]]*\]\(images/widget_[a-z]+\.png\)", doc.read_text()), doc.name
