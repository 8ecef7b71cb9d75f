"""Method spellings (``cfg:w=5,stop=0.1``): every method of the registry (``sampling/registry.py``) by its name,
its keys and its help text, parsed once per spelling, and made into an object (``as_method``)."""

from __future__ import annotations

import importlib
from functools import cache

from ..errors import InputError
from ..sharpener import Sharpener
from .methods import Method, shown
from .registry import METHOD_CLASSES


@cache
def method_classes() -> dict[str, type[Method]]:
    """Spelled name (``"cfg"``) -> class, for every method of ``METHOD_CLASSES``."""
    classes = [getattr(importlib.import_module(f"dicecfg.{m}"), c) for c, m in METHOD_CLASSES.items()]
    return {c.name: c for c in classes}


def spelling(cls: type[Method]) -> str:
    """How the help shows one method: ``cfg[:w=5,start=0,stop=0.1]``."""
    if not cls.keys:
        return cls.name
    if cls.example:
        return f"{cls.name}[:{cls.example}]"
    defaults = {f: getattr(cls, f, None) for f in cls.keys.values()}
    parts = [
        f"{k}={shown(defaults[f])}" for k, f in cls.keys.items() if isinstance(defaults[f], (int, float))
    ]
    return f"{cls.name}[:{','.join(parts)}]"


def spelling_help() -> str:
    """The methods and their settings, for help texts and error messages."""
    return "a method, optionally with settings: " + " | ".join(map(spelling, method_classes().values()))


def parse_method(text: str) -> tuple[type[Method], dict[str, float]]:
    """``"cfg:w=5,stop=0.1"`` -> (CFG, {"guidance_scale": 5.0, "stop": 0.1}); a one-line error naming the
    allowed names and keys for anything else (an unknown key, a value that is not a number, a key given twice)."""
    name, _, rest = str(text).strip().partition(":")
    cls = method_classes().get(name.strip().lower())
    if cls is None:
        raise InputError(f"Unknown method {text!r}: use {spelling_help()}.")
    settings: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in cls.keys:
            allowed = ", ".join(cls.keys) or "none"
            raise InputError(
                f"Method {text!r}: {part!r} is not a setting of {cls.name} (its keys: {allowed})."
            )
        if cls.keys[key] in settings:
            raise InputError(f"Method {text!r}: {key} is given twice; give each setting once.")
        try:
            settings[cls.keys[key]] = float(value)
        except ValueError:
            raise InputError(f"Method {text!r}: {key} must be a number (got {value.strip()!r}).") from None
    return cls, settings


def as_method(method: Method | str, *, sharpener: Sharpener | None = None) -> Method:
    """A method object from an object or a spelling (``"cfg"``, ``"dice:stop=0.1"``; ``sharpener`` is the one
    a spelled ``dice`` uses). An object comes with its own settings and sharpener."""
    if isinstance(method, Method):
        if sharpener is not None and sharpener is not getattr(method, "sharpener", sharpener):
            raise InputError("sharpener= is given twice: once in Dice(...) and once to generate(); give one.")
        return method
    if not isinstance(method, str):
        raise InputError(
            f"method must be a method object or a name ({spelling_help()}); got {type(method).__name__}."
        )
    cls, settings = parse_method(method)
    return cls.create(settings, sharpener)
