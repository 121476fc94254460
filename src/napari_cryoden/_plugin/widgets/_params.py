"""Parameter forms generated from a method's parameter dataclass (the same source as the CLI options)."""

from __future__ import annotations

import dataclasses
import typing

from magicgui.widgets import Container, create_widget

from ...params import validate


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


def params_form(cls, *, values: dict | None = None) -> Container:
    """A magicgui Container with one widget per field of the parameter dataclass ``cls``."""
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
        w = create_widget(value=value, annotation=annotation, name=f.name, label=f.name.replace("_", " "),
                          options=options)
        w.tooltip = meta.get("help", "") + (" (0 or empty: automatic / none)" if _optional(f) else "")
        widgets.append(w)
    return Container(widgets=widgets, labels=True)


def _step(value: float) -> float:
    if value == 0:
        return 0.01
    magnitude = 10 ** int(f"{abs(value):e}".split("e")[1])
    return magnitude / 10


def params_from_form(cls, form: Container):
    """The frozen parameter object for the form's current values (validated)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = form[f.name].value
        if _optional(f) and value == _NONE_VALUE.get(_annotation(cls, f), object()):
            value = None
        values[f.name] = value
    return validate(cls(**values))
