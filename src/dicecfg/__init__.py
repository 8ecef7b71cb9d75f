"""dicecfg: distil classifier-free guidance into a text-embedding sharpener (DICE, arXiv 2502.03726).

    from dicecfg import Sharpener, sharpen, generate, distill, load_pipeline

The public names are imported lazily, so ``import dicecfg.world`` or ``dice --help`` stay fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DiceError": "errors",
    "DistillConfig": "distill",
    "Sample": "sampling",
    "Sharpener": "sharpener",
    "distill": "distill",
    "generate": "sampling",
    "load_pipeline": "pipeline",
    "sharpen": "sampling",
}
__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover
    from .distill import DistillConfig, distill  # noqa: F401
    from .errors import DiceError  # noqa: F401
    from .pipeline import load_pipeline  # noqa: F401
    from .sampling import Sample, generate, sharpen  # noqa: F401
    from .sharpener import Sharpener  # noqa: F401


class _Package(types.ModuleType):
    """``dicecfg.distill`` is the function, as with eager imports: importing the submodule of the same name
    (``from .distill import ...`` anywhere) would otherwise rebind the package attribute to the module, and
    ``from dicecfg import distill`` would then return the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dicecfg' has no attribute {name!r}")
