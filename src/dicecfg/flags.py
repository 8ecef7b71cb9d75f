"""The one dataclass -> argparse builder behind every command (``dice ...`` and the mini-model recipe).

A command's options are a frozen dataclass whose fields carry their default and one-line help
(``opt(default, "help")``), so both live once. ``add_flags`` makes one flag per field, with that help and the
default; ``from_flags`` builds the dataclass back from the flags the user gave, every other field keeping its
default. A field whose type is itself a dataclass (``TrainJob.config``) contributes the flags of its fields.

Extras in a field's metadata: ``flag`` (another flag name), ``metavar``, ``choices``, ``positional`` (the
command's bare arguments), ``cli=False`` (no flag: set by the caller, e.g. ``progress`` from ``-q``),
``const`` (the value of the flag given alone: ``--fast`` for ``--fast graphs``; ``spell_bare_consts``),
``presets`` with ``presets_for`` (the field's value names an entry of ``presets``, the values that the
dataclass field ``presets_for`` starts from before the flags given are applied: `dice train --recipe`), ``min`` /
``max`` (the range of a number) and ``path`` (what a path must be: ``PATH_KINDS``). ``check_values`` refuses
values outside ``choices`` / ``min`` / ``max``, NaN and infinite floats and integers beyond 64 bits (option
dataclasses derive from ``Checked``, which calls it when one is made; ``from_flags`` for any other); ``check_paths`` refuses paths that are not
what their field reads or writes (``from_flags``: before any work).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import types
import typing
from typing import Any

from .errors import InputError

MISSING = dataclasses.MISSING


def opt(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, **extra: Any) -> Any:
    """A dataclass field with its one-line help (and flag extras: ``flag``, ``metavar``, ``choices``,
    ``positional``, ``cli=False``, ``min``, ``max``, ``path``) in its metadata, so a default, its help and its
    range live once."""
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
        if "const" in meta:  # the flag alone means this value: `--fast` = `--fast graphs`
            common |= {"nargs": "?", "const": meta["const"]}
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
    obj = cls(**kwargs)
    return check_paths(obj if isinstance(obj, Checked) else check_values(obj))  # Checked: checked when made


def spell_bare_consts(argv: list[str], cls: type) -> list[str]:
    """``argv`` with every option of ``cls`` that has a ``const`` and is followed by a word that is not one of
    its choices (or by nothing, or another option) written ``--flag=CONST``, so that argparse does not take the
    command's next bare argument for the option's value: ``dice sample --fast "a red car"``."""
    consts = {
        _flag(f): f.metadata
        for f in dataclasses.fields(cls)
        if "const" in f.metadata and f.metadata.get("cli", True)
    }
    out = list(argv)
    for i, arg in enumerate(out):
        meta = consts.get(arg)
        if meta is not None and (i + 1 == len(out) or out[i + 1] not in meta.get("choices", ())):
            out[i] = f"{arg}={meta['const']}"
    return out


def take_positionals(ns: argparse.Namespace, cls: type, extra: list[str]) -> list[str]:
    """Bare arguments argparse left over because they came after an option (``dice sample "a" --seed 5 "b"``)
    join the command's positional field; returns what is still unknown (options, or bare arguments of a
    command that takes none)."""
    bare = [a for a in extra if not a.startswith("-")]
    field = next((f for f in dataclasses.fields(cls) if f.metadata.get("positional")), None)
    if field is None or not bare or len(bare) < len(extra):
        return extra
    setattr(ns, field.name, [*(getattr(ns, field.name, None) or []), *bare])
    return []


INT64 = 2**63  # integers beyond +-2**63 fit no tensor size, index or seed
PATH_KINDS = {
    "model": "a local folder or a hub id",
    "file": "an existing file to read",
    "dir": "an existing folder to read",
    "out_dir": "a folder to write into (made when missing)",
    "out_file": "a file to write (made when missing)",
}


def _flag(f: dataclasses.Field) -> str:
    if f.metadata.get("positional"):
        return f.name
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _option(f: dataclasses.Field) -> str:
    """A field in a message, for readers of the command line and of Python: ``--mask-mode (mask_mode)``."""
    return (
        f.name
        if f.metadata.get("positional") or not f.metadata.get("cli", True)
        else f"{_flag(f)} ({f.name})"
    )


def _values(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


class Checked:
    """A base for the option dataclasses (configs and jobs): their values are checked when one is made
    (``check_values``), so a value out of range fails alike from Python and from the command line. A subclass
    with checks of its own calls ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        check_values(self)


def check_values(obj: Any) -> Any:
    """Refuse field values outside their metadata's ``choices``, ``min`` and ``max``, NaN or infinite floats and
    integers beyond 64 bits, naming the flag; returns ``obj``. Nested dataclasses check themselves."""
    for f in dataclasses.fields(obj):
        meta = f.metadata
        for v in _values(getattr(obj, f.name)):
            if v is None or isinstance(v, bool) or dataclasses.is_dataclass(v):
                continue
            if "choices" in meta and v not in meta["choices"]:
                choices = ", ".join(map(str, meta["choices"]))
                raise InputError(f"{_option(f)} must be one of {choices} (got {v!r}).")
            if not isinstance(v, int | float):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise InputError(f"{_option(f)} must be a finite number (got {v}).")
            if isinstance(v, int) and not -INT64 <= v < INT64:
                raise InputError(f"{_option(f)} is out of range (got {v}; at most {INT64 - 1}).")
            if "min" in meta and v < meta["min"]:
                raise InputError(f"{_option(f)} must be >= {meta['min']} (got {v}).")
            if "max" in meta and v > meta["max"]:
                raise InputError(f"{_option(f)} must be <= {meta['max']} (got {v}).")
    return obj


def _writable(folder: str, flag: str, value: str) -> None:
    """Refuse ``value`` unless its nearest existing folder is a folder this process can write into."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"{flag} {value}: {probe} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise InputError(f"{flag} {value}: cannot write in {probe} ({e.strerror or e}).") from e


def check_paths(obj: Any) -> Any:
    """Refuse paths that are not what their field's ``path`` metadata says (``PATH_KINDS``), before any work:
    a folder given for a file, a file for a folder, a missing input, an output that cannot be written."""
    for f in dataclasses.fields(obj):
        kind, flag = f.metadata.get("path"), _flag(f)
        for v in _values(getattr(obj, f.name)) if kind else ():
            if v is None:
                continue
            if not v.strip():
                raise InputError(f"{flag} is empty; {PATH_KINDS[kind]} is expected.")
            if kind in ("file", "dir") and not os.path.exists(v):
                raise InputError(f"{flag} {v}: no such {'file' if kind == 'file' else 'folder'}.")
            if kind in ("file", "out_file") and os.path.isdir(v):
                raise InputError(f"{flag} {v} is a folder; {PATH_KINDS[kind]} is expected.")
            if kind in ("model", "dir", "out_dir") and os.path.exists(v) and not os.path.isdir(v):
                raise InputError(f"{flag} {v} is a file; {PATH_KINDS[kind]} is expected.")
            if kind == "out_dir":
                _writable(v, flag, v)
            elif kind == "out_file":
                _writable(os.path.dirname(os.path.abspath(v)), flag, v)
    return obj
