"""Parameter dataclasses as the single description of a method's settings.

A method's settings are a frozen dataclass whose fields carry ``metadata`` (``help``, and optionally ``min``,
``max``, ``choices``, ``cli`` for the option name). The CLI and the napari widgets are both generated from
it, and the frozen instance is what crosses the thread boundary into a worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def param(default: Any, help: str, *, min: float | None = None, max: float | None = None,
          choices: tuple | None = None, cli: str | None = None) -> Any:
    """A dataclass field with the metadata the CLI and widgets use."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "cli": cli}
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def _field_type(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    tp = hints.get(f.name, str)
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if args else str, True
    return tp, False


def add_params_to_parser(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls) -> None:
    """Add one ``--option`` per field of the parameter dataclass ``cls`` (default: the field's default)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        flag = meta.get("cli") or "--" + f.name.replace("_", "-")
        tp, optional = _field_type(cls, f)
        kwargs: dict[str, Any] = {"dest": f"param_{f.name}", "default": None}
        help_text = meta.get("help", "")
        default = f.default
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp if tp in (int, float, str) else str
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = {int: "N", float: "X", str: "S"}.get(tp, "S") if "choices" not in meta else None
            if kwargs["metavar"] is None:
                kwargs.pop("metavar")
        parser.add_argument(flag, help=f"{help_text} (default: {default})" if help_text else None, **kwargs)


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
