"""Parameter dataclasses as the single description of a method's settings.

A method's settings are a frozen dataclass whose fields carry ``metadata`` (``help``, and optionally ``min``,
``max``, ``choices``, ``cli`` for the option name, ``unit`` — "px", "Å", "°", "s" — and ``basic`` for the few
settings a scientist decides, shown first; the rest sit under *Advanced* in the widgets). The CLI and the napari
widgets are both generated from it, and the frozen instance is what crosses the thread boundary into a worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any


def param(default: Any, help: str, *, min: float | None = None, max: float | None = None,
          choices: tuple | None = None, cli: str | None = None, unit: str | None = None,
          basic: bool = False) -> Any:
    """A dataclass field with the metadata the CLI and widgets use.

    Parameters
    ----------
    default, help
        The default value, and one plain sentence saying what the setting does.
    min, max, choices
        Allowed values (checked by :func:`validate`, and the limits of the widget).
    cli
        The CLI option's name when it is not ``--field-name``.
    unit
        The unit of the value ("px", "Å", "°", "s", "voxels"), shown in the widget's label and the help.
    basic
        True for the few settings a scientist decides (time budget, shift range, symmetry...): the widgets show
        them; the others sit in a collapsed *Advanced* section.
    """
    meta = {"help": help, "min": min, "max": max, "choices": choices, "cli": cli, "unit": unit,
            "basic": basic or None}
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def unit(f: dataclasses.Field) -> str:
    """The field's unit ("" when it has none)."""
    return f.metadata.get("unit", "")


def is_basic(f: dataclasses.Field) -> bool:
    """Whether the field is one of the few settings shown before *Advanced* is opened."""
    return bool(f.metadata.get("basic", False))


def _field_type(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    tp = hints.get(f.name, str)
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if args else str, True
    return tp, False


def _option_kwargs(cls, f: dataclasses.Field, prefix: str = "param_") -> dict[str, Any]:
    """argparse keywords of the ``--option`` of field ``f`` of ``cls`` (unset: None, so defaults stay the class's)."""
    meta = f.metadata
    tp, _ = _field_type(cls, f)
    kwargs: dict[str, Any] = {"dest": f"{prefix}{f.name}", "default": None}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = tp if tp in (int, float, str) else str
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["metavar"] = {int: "N", float: "X", str: "S"}.get(tp, "S")
    return kwargs


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("cli") or "--" + f.name.replace("_", "-")


def _shown_default(f: dataclasses.Field) -> str:
    return f"{f.default} {unit(f)}" if unit(f) and f.default is not None else str(f.default)


def add_params_to_parser(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *,
                         skip: Sequence[str] = (), prefix: str = "param_") -> None:
    """Add one ``--option`` per field of the parameter dataclass ``cls`` (default: the field's default), but
    those in ``skip``; each value lands in ``args.<prefix><field>`` (read back with :func:`given_params`)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        help_text = f.metadata.get("help", "")
        parser.add_argument(_flag(f), help=f"{help_text} (default: {_shown_default(f)})" if help_text else None,
                            **_option_kwargs(cls, f, prefix))


def add_method_params(parser: argparse.ArgumentParser, methods: dict[str, type], *, skip: Sequence[str] = (),
                      title: str = "method parameters") -> argparse._ArgumentGroup:
    """One ``--option`` per field name of the methods' parameter classes ``{method: params class}``.

    A field several methods share (``--work-box``) is one option; its help (the first method's) names the methods
    it applies to when not all, and each one's default when they differ; it accepts every method's choices. Read the values back with :func:`given_params`.
    Fields in ``skip`` are left to the caller (e.g. ``seed`` or ``time_budget`` as top-level flags).
    """
    group = parser.add_argument_group(title, "each applies to the methods named in [brackets], or to all")
    uses: dict[str, list[tuple[str, type, dataclasses.Field]]] = {}
    for name, cls in methods.items():
        for f in dataclasses.fields(cls):
            uses.setdefault(f.name, []).append((name, cls, f))
    for field_name, users in uses.items():
        if field_name in skip:
            continue
        _, cls, f = users[0]
        names = [u[0] for u in users]
        defaults = {u[0]: _shown_default(u[2]) for u in users}
        shown = (f"default: {defaults[names[0]]}" if len(set(defaults.values())) == 1 else
                 "defaults: " + ", ".join(f"{m} {d}" for m, d in defaults.items()))
        where = f"[{', '.join(names)}] " if len(names) < len(methods) else ""
        kwargs = _option_kwargs(cls, f)
        if "choices" in kwargs:  # every user's choices (each method's own are checked by validate())
            kwargs["choices"] = tuple(dict.fromkeys(c for u in users for c in u[2].metadata.get("choices", ())))
        group.add_argument(_flag(f), help=f"{where}{f.metadata.get('help', '')} ({shown})", **kwargs)
    return group


def given_params(cls, args: argparse.Namespace, *, prefix: str = "param_") -> dict[str, Any]:
    """{field: value} of the options of ``cls``'s fields that were given (see :func:`add_method_params` and
    :func:`add_params_to_parser`)."""
    return {f.name: getattr(args, f"{prefix}{f.name}") for f in dataclasses.fields(cls)
            if getattr(args, f"{prefix}{f.name}", None) is not None}


def params_from_args(cls, args: argparse.Namespace, **overrides):
    """Build ``cls`` from the options added by :func:`add_params_to_parser` (unset ones keep defaults)."""
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f"param_{f.name}", None)
        if v is not None:
            values[f.name] = v
    values.update({k: v for k, v in overrides.items() if v is not None})
    return validate(cls(**values))


def validate(params):
    """Check every field against its ``min``/``max``/``choices``; raise ValueError naming the field."""
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        meta = f.metadata
        if v is None:
            continue
        if "min" in meta and v < meta["min"]:
            raise ValueError(f"{f.name} must be >= {meta['min']}, got {v}")
        if "max" in meta and v > meta["max"]:
            raise ValueError(f"{f.name} must be <= {meta['max']}, got {v}")
        if "choices" in meta and v not in meta["choices"]:
            raise ValueError(f"{f.name} must be one of {meta['choices']}, got {v!r}")
    return params


def as_dict(params) -> dict:
    """Plain dict of a parameter dataclass (for layer metadata, model files and reports)."""
    return dataclasses.asdict(params)
