"""Parameter forms generated from a method's parameter dataclass (the same source as the CLI options)."""

from __future__ import annotations

import dataclasses
import typing

from magicgui.widgets import Container, create_widget

from ...params import validate


def _annotation(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    return hints.get(f.name, str)


def params_form(cls, *, values: dict | None = None) -> Container:
    """A magicgui Container with one widget per field of the parameter dataclass ``cls``."""
    widgets = []
    defaults = values or {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        value = defaults.get(f.name, f.default)
        options: dict = {}
        annotation = _annotation(cls, f)
        if "choices" in meta:
            options["choices"] = list(meta["choices"])
        elif annotation in (int, float):
            options["min"] = meta.get("min", -1e9)
            options["max"] = meta.get("max", 1e9)
            if annotation is float:
                options["step"] = _step(value)
        w = create_widget(value=value, annotation=annotation, name=f.name, label=f.name.replace("_", " "),
                          options=options)
        w.tooltip = meta.get("help", "")
        widgets.append(w)
    return Container(widgets=widgets, labels=True)


def _step(value: float) -> float:
    if value == 0:
        return 0.01
    magnitude = 10 ** int(f"{abs(value):e}".split("e")[1])
    return magnitude / 10


def params_from_form(cls, form: Container):
    """The frozen parameter object for the form's current values (validated)."""
    values = {f.name: form[f.name].value for f in dataclasses.fields(cls)}
    return validate(cls(**values))
