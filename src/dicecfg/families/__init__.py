"""Model families: the only code that knows a pipeline's text conditioning and denoiser call.

Adding a family is one new module that subclasses ``Family`` and decorates it with ``@register``.
"""

from __future__ import annotations

from . import pixart, sd, sdxl  # noqa: F401  (register the built-in families)
from .base import FAMILIES, Cond, Family, check_compatible, family_of, register

__all__ = ["FAMILIES", "Cond", "Family", "check_compatible", "family_of", "register"]
