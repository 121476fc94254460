"""Parameter forms generated from a method's parameter dataclass (the same source as the CLI options).

:class:`ParamsForm` shows the few settings a scientist decides (fields marked ``basic``, see
:func:`napari_cryoden.params.param`) and keeps the rest in a collapsed *Advanced* section; every label carries
the field's unit and every widget a tooltip in plain words.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable

from magicgui.widgets import Container, Widget, create_widget
from superqt import QCollapsible

from ...params import is_basic, unit, validate
from ..settings import form_widgets


def _annotation(cls, f: dataclasses.Field):
    """The field's type, with ``X | None`` reduced to ``X`` (the form shows None as 0 or an empty text)."""
    hint = typing.get_type_hints(cls).get(f.name, str)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(args) == 1:
        return args[0]
    return hint


def _optional(f: dataclasses.Field) -> bool:
    return f.default is None


#: What an optional field (default None) shows in the form, and reads back as None.
_NONE_VALUE = {int: 0, float: 0.0, str: ""}


def label(f: dataclasses.Field) -> str:
    """The label of a field's widget: its name in words and its unit, e.g. "max shift (px)"."""
    text = f.name.replace("_", " ")
    return f"{text} ({unit(f)})" if unit(f) else text


def tooltip(f: dataclasses.Field) -> str:
    """A field's tooltip: its help sentence, its unit, and what 0 / empty means for an optional field."""
    text = f.metadata.get("help", "")
    if unit(f) and f"({unit(f)})" not in text:
        text += f" [{unit(f)}]"
    return text + (" (0 or empty: automatic / none)" if _optional(f) else "")


def field_widgets(cls, *, values: dict | None = None) -> list[Widget]:
    """One magicgui widget per field of the parameter dataclass ``cls`` (labelled with units, with tooltips)."""
    widgets = []
    defaults = values or {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        value = defaults.get(f.name, f.default)
        options: dict = {}
        annotation = _annotation(cls, f)
        if value is None and _optional(f):
            value = _NONE_VALUE.get(annotation, value)
        if "choices" in meta:
            options["choices"] = list(meta["choices"])
        elif annotation in (int, float):
            options["min"] = meta.get("min", -1e9)
            options["max"] = meta.get("max", 1e9)
            if annotation is float:
                options["step"] = _step(value)
        w = create_widget(value=value, annotation=annotation, name=f.name, label=label(f), options=options)
        w.tooltip = tooltip(f)
        widgets.append(w)
    return widgets


def params_form(cls, *, values: dict | None = None) -> Container:
    """A plain magicgui Container with one widget per field of ``cls`` (all visible)."""
    return Container(widgets=field_widgets(cls, values=values), labels=True)


class ParamsForm(Container):
    """A method's settings: the basic fields shown, the rest (and ``extra_advanced`` widgets, e.g. the seed) in
    a collapsed *Advanced* section.

    ``set_params(cls, values)`` shows another method's settings; :meth:`fields` lists every field widget (basic
    and advanced), ``form.field(name)`` finds one, and the settings helpers (``form_values``,
    ``restore_values``, :func:`params_from_form`) accept the form like a plain Container.
    """

    def __init__(self, cls=None, *, values: dict | None = None, extra_advanced: Iterable[Widget] = (),
                 title: str = "Advanced"):
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.basic = Container(labels=True)
        self.basic.margins = (0, 0, 0, 0)
        self.advanced = Container(labels=True)
        self.advanced.margins = (0, 0, 0, 0)
        self._extra = list(extra_advanced)
        self.append(self.basic)
        self.collapsible = QCollapsible(title)
        self.collapsible.addWidget(self.advanced.native)
        self.collapsible.setToolTip("settings that rarely need changing; the defaults are the measured best")
        self.native.layout().addWidget(self.collapsible)
        self.cls = None
        if cls is not None:
            self.set_params(cls, values=values)
        else:
            self.advanced.extend(self._extra)

    def set_params(self, cls, *, values: dict | None = None) -> None:
        """Show the fields of ``cls`` (values from ``values``, else the defaults)."""
        for w in self._extra:
            if w in self.advanced:
                self.advanced.remove(w)
        self.basic.clear()
        self.advanced.clear()
        self.cls = cls
        widgets = field_widgets(cls, values=values)
        basic = {f.name for f in dataclasses.fields(cls) if is_basic(f)}
        self.basic.extend([w for w in widgets if w.name in basic])
        self.advanced.extend([w for w in widgets if w.name not in basic] + self._extra)
        self.basic.visible = bool(len(self.basic))

    def fields(self) -> list[Widget]:
        """Every field widget of the current parameter class (basic first), without the extra widgets."""
        return [w for w in [*self.basic, *self.advanced] if w not in self._extra]

    def field(self, name: str) -> Widget:
        for w in self.fields():
            if w.name == name:
                return w
        raise KeyError(name)

    def __getitem__(self, key):
        """``form["name"]`` is the field widget of that name, wherever it sits (basic or advanced)."""
        return self.field(key) if isinstance(key, str) else super().__getitem__(key)

    def visible_settings(self) -> list[Widget]:
        """The settings a user sees without opening *Advanced*."""
        return [] if self.basic.native.isHidden() else list(self.basic)  # isHidden: also before the window shows

    def expand(self, expanded: bool = True) -> None:
        self.collapsible.expand(animate=False) if expanded else self.collapsible.collapse(animate=False)


def _step(value: float) -> float:
    if value == 0:
        return 0.01
    magnitude = 10 ** int(f"{abs(value):e}".split("e")[1])
    return magnitude / 10


def params_from_form(cls, form: Container):
    """The frozen parameter object for the form's current values (validated)."""
    values = {}
    by_name = {w.name: w for w in form_widgets(form)}
    for f in dataclasses.fields(cls):
        value = by_name[f.name].value
        if _optional(f) and value == _NONE_VALUE.get(_annotation(cls, f), object()):
            value = None
        values[f.name] = value
    return validate(cls(**values))
