"""Options of every command as frozen dataclasses whose fields carry their own help (``opt``)."""

from __future__ import annotations

import dataclasses
from typing import Any

MISSING = dataclasses.MISSING


def opt(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, **extra: Any) -> Any:
    """A dataclass field with its one-line help (and flag extras: ``flag``, ``metavar``, ``choices``,
    ``positional``, ``cli=False``) in its metadata, so a default and its help live once."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help, **extra})
