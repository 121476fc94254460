"""User-facing messages in the viewer (the library itself only logs)."""

from __future__ import annotations

import logging

from napari.utils.notifications import show_error, show_info, show_warning

log = logging.getLogger(__name__)


def notify_error(exc: BaseException) -> None:
    """Show an exception as a one-line napari error notification (no traceback for input errors)."""
    log.debug("error shown to the user", exc_info=exc)
    show_error(str(exc))


def notify_warning(message: str) -> None:
    show_warning(message)


def notify_info(message: str) -> None:
    show_info(message)
