"""Widget state that persists between napari sessions: the last method and parameter values of each widget.

Stored as one small JSON file per widget in the user's config folder (``platformdirs``), or in
``$CRYODEN_CONFIG_DIR`` when set (tests point it at a temporary folder). Reading never fails: a missing,
unreadable or stale file gives the defaults, and values that no longer fit a widget are skipped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def config_dir() -> Path:
    env = os.environ.get("CRYODEN_CONFIG_DIR")
    if env:
        return Path(env)
    try:
        from platformdirs import user_config_dir

        return Path(user_config_dir("napari-cryoden", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs comes with napari
        return Path.home() / ".config" / "napari-cryoden"


def load_state(widget: str) -> dict:
    """The saved state of ``widget`` ({} when there is none or it cannot be read)."""
    path = config_dir() / f"{widget}.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_state(widget: str, state: dict) -> None:
    """Save ``widget``'s state (JSON-serialisable values only); failures are logged, never raised."""
    path = config_dir() / f"{widget}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=str))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save the %s widget settings to %s: %s", widget, path, exc)


def form_values(form) -> dict:
    """{name: value} of a magicgui Container's value widgets."""
    out = {}
    for w in form_widgets(form):
        value = getattr(w, "value", None)
        if isinstance(value, bool | int | float | str):
            out[w.name] = value
    return out


def restore_values(form, values: dict) -> None:
    """Set the widgets of ``form`` from ``values`` where names match and the value is accepted."""
    for w in form_widgets(form):
        if w.name in values:
            try:
                w.value = values[w.name]
            except (ValueError, TypeError):
                log.debug("skipped stale setting %s=%r", w.name, values[w.name])


def form_widgets(form):
    """The value widgets of a Container, or of a ParamsForm (its basic and advanced fields)."""
    fields = getattr(form, "fields", None)
    return fields() if callable(fields) else list(form)
