"""Model families: the only code that knows a pipeline's text conditioning and denoiser call.

Adding a family is one new module that subclasses ``Family`` and decorates it with ``@register``.
"""

from __future__ import annotations

from .base import FAMILIES, Cond, Family, check_compatible, family_of, get_family, register
from . import sd  # noqa: F401,E402  (registers the built-in family)

__all__ = ["FAMILIES", "Cond", "Family", "check_compatible", "family_of", "get_family", "register"]
