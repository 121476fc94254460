"""The base of every dock widget: a magicgui Container that scrolls inside its dock.

magicgui makes a ``scrollable=True`` Container's ``.native`` the widget *inside* its scroll area, and napari
docks ``.native``, so the scroll area is dropped and three docked widgets grow the window past the screen.
:class:`ScrollingDock` hands napari the scroll area itself (``.native``), keeps the inner widget as
``.body`` for extra Qt widgets (progress row, plots), and lets napari find this object back from the
docked widget (``_magic_widget``, as magicgui does for its own widgets).
"""

from __future__ import annotations

from magicgui.widgets import Container
from qtpy.QtCore import Qt, QTimer


class ScrollingDock(Container):
    def __init__(self, **kwargs):
        super().__init__(scrollable=True, **kwargs)
        self.root_native_widget._magic_widget = self
        self.body.layout().setAlignment(Qt.AlignmentFlag.AlignTop)  # rows packed at the top, not spread out
        self.native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # never clip silently
        QTimer.singleShot(0, self.fit_width)  # once the subclass has added all its rows

    def fit_width(self) -> None:
        """As wide as the content needs (rows added to ``body`` after magicgui sized the scroll area count too),
        so the dock scrolls vertically and nothing is cut off at the right."""
        try:
            bar = self.native.verticalScrollBar().sizeHint().width()
            self.native.setMinimumWidth(self.body.minimumSizeHint().width() + bar + 4)
        except RuntimeError:  # closed before the first event loop turn: nothing to size
            pass

    @property
    def native(self):
        """The scroll area (what napari docks)."""
        return self.root_native_widget

    @property
    def body(self):
        """The widget inside the scroll area; add extra Qt widgets to ``self.body.layout()``."""
        return self._widget._mgui_get_native_widget()
