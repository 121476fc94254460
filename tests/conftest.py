"""Shared fixtures. Core tests need no display; plugin tests run in a real napari viewer under Xvfb
(pytest-xvfb starts it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # Fallback only: with no X server at all Qt can still start offscreen (screenshots are then black, so
    # this must never win over Xvfb, which pytest-xvfb sets up before this hook runs).
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests that need it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def builtin_map():
    from napari_cryoden.sample_data import builtin_map as load

    return load()


@pytest.fixture(autouse=True)
def _isolated_widget_settings(tmp_path_factory, monkeypatch):
    """Widget settings persist in a per-test folder, never in the user's config."""
    monkeypatch.setenv("CRYODEN_CONFIG_DIR", str(tmp_path_factory.mktemp("cryoden-config")))
