"""The one dataclass -> argparse builder behind every command (``dice ...`` and the mini-model recipe).

A command's options are a frozen dataclass whose fields carry their default and one-line help
(``opt(default, "help")``), so both live once. ``add_flags`` makes one flag per field, with that help and the
default; ``from_flags`` builds the dataclass back from the flags the user gave, every other field keeping its
default. A field whose type is itself a dataclass (``TrainJob.config``) contributes the flags of its fields.

Extras in a field's metadata: ``flag`` (another flag name), ``metavar``, ``choices``, ``positional`` (the
command's bare arguments), ``cli=False`` (no flag: set by the caller, e.g. ``progress`` from ``-q``),
``presets`` with ``presets_for`` (the field's value names an entry of ``presets``, the values that the
dataclass field ``presets_for`` starts from before the flags given are applied: `dice train --recipe`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

MISSING = dataclasses.MISSING


def opt(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, **extra: Any) -> Any:
    """A dataclass field with its one-line help (and flag extras: ``flag``, ``metavar``, ``choices``,
    ``positional``, ``cli=False``) in its metadata, so a default and its help live once."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help, **extra})


def _value_type(kind: Any) -> tuple[Any, bool]:
    """The argparse type of a field type and whether it takes several values: ``int | None`` -> (int, False),
    ``tuple[str, ...]`` -> (str, True)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is tuple:
        return typing.get_args(kind)[0], True
    return kind, False


def _shown_default(f: dataclasses.Field, presets: dict[str, dict[str, Any]] | None = None) -> str:
    """`` (default: X)`` for the help text, or each preset's value where presets differ on this field
    (`` (paper recipe: X; dicecfg recipe: Y)``); nothing for defaults that say nothing (None, empty)."""
    d = f.default
    if presets and any(p.get(f.name, d) != d for p in presets.values()):
        return " (" + "; ".join(f"{name} recipe: {p.get(f.name, d)}" for name, p in presets.items()) + ")"
    if d is MISSING or d is None or d == () or d == "":
        return ""
    return f" (default: {' '.join(map(str, d)) if isinstance(d, tuple) else d})"


def add_flags(
    parser: argparse.ArgumentParser, cls: type, presets: dict[str, dict[str, Any]] | None = None
) -> None:
    """One flag per field of the dataclass ``cls`` (and of its dataclass-typed fields); ``presets``: the named
    settings a preset field offers for ``cls`` (shown in the help of the fields they set)."""
    types_ = typing.get_type_hints(cls)
    offered = {
        f.metadata["presets_for"]: f.metadata["presets"]
        for f in dataclasses.fields(cls)
        if "presets" in f.metadata
    }
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, types_[f.name]
        if not meta.get("cli", True):
            continue
        if dataclasses.is_dataclass(kind):
            add_flags(parser, kind, offered.get(f.name))
            continue
        text = (meta.get("help", "") + _shown_default(f, presets)).replace("%", "%%")
        value_type, several = _value_type(kind)
        if meta.get("positional"):
            parser.add_argument(f.name, nargs="*", type=value_type, help=text)
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        common: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
        if value_type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
            continue
        common |= {k: meta[k] for k in ("metavar", "choices") if k in meta}
        if several:
            common |= {"nargs": "+", "action": "extend"}
        required = f.default is MISSING and f.default_factory is MISSING
        parser.add_argument(flag, type=value_type, required=required, **common)


def from_flags(ns: argparse.Namespace, cls: type, base: dict[str, Any] | None = None, **fixed: Any) -> Any:
    """The dataclass ``cls`` from the flags given (lists become tuples); flags not given keep the defaults, or
    the values of ``base`` (a preset, see the module docstring). ``fixed`` sets fields by name, in ``cls`` or in
    its dataclass-typed fields (names no field has are ignored)."""
    types_, kwargs = typing.get_type_hints(cls), dict(base or {})
    presets = {  # dataclass-typed field -> the preset chosen for it by another field
        f.metadata["presets_for"]: f.metadata["presets"][getattr(ns, f.name, None) or f.default]
        for f in dataclasses.fields(cls)
        if "presets" in f.metadata
    }
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            kwargs[f.name] = fixed[f.name]
        elif dataclasses.is_dataclass(types_[f.name]):
            kwargs[f.name] = from_flags(ns, types_[f.name], presets.get(f.name), **fixed)
        elif f.metadata.get("cli", True) and (value := getattr(ns, f.name, None)) is not None:
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
