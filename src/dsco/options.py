"""Command-line options generated from a method's config dataclass, so a method's knobs are declared once.

A field becomes `--<prefix>-<name>` (underscores as dashes) with the field's type, `metadata["help"]` as its help
and `metadata["choices"]` as argparse choices; `metadata["aliases"]` adds older names, `metadata["cli"] = False`
keeps a field off the command line. Every generated option defaults to None, which means "the dataclass's own
default", so the command line and the Python API cannot disagree about a default. Imports no torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional, Union, get_args, get_origin


def _option(prefix: str, name: str) -> str:
    return f"--{prefix}-{name.replace('_', '-')}"


def _dest(prefix: str, name: str) -> str:
    return f"{prefix}_{name}"


def _element_type(annotation: Any) -> tuple[type, Optional[int | str]]:
    """(the scalar type argparse converts to, its nargs: None for one value, n for a fixed-size tuple, "+")."""
    origin = get_origin(annotation)
    if origin is Union:  # Optional[X]
        annotation = next(a for a in get_args(annotation) if a is not type(None))
        origin = get_origin(annotation)
    if origin in (tuple, list):
        items = get_args(annotation)
        return items[0], "+" if origin is list or Ellipsis in items else len(items)
    return annotation, None


def add_dataclass_options(group: argparse._ActionsContainer, cls: type, prefix: str) -> None:
    """One option per field of the dataclass `cls` (see the module's docstring)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli", True) is False:
            continue
        kind, nargs = _element_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        helptext = meta.get("help", "") + ("" if default is None else f" (default: {shown})")
        names = [_option(prefix, f.name), *(_option(prefix, a) for a in meta.get("aliases", ()))]
        if kind is bool:
            group.add_argument(*names, dest=_dest(prefix, f.name), action=argparse.BooleanOptionalAction, default=None,
                               help=helptext)
        else:
            group.add_argument(*names, dest=_dest(prefix, f.name), type=kind, nargs=nargs, default=None,
                               choices=meta.get("choices"), metavar=None if meta.get("choices") else kind.__name__.upper(),
                               help=helptext)


def dataclass_from_options(args: argparse.Namespace, cls: type, prefix: str) -> Any:
    """`cls` with the fields given on the command line set, every other field at its default."""
    given = {}
    for f in dataclasses.fields(cls):
        value: Optional[Any] = getattr(args, _dest(prefix, f.name), None)
        if value is not None:
            given[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**given)
