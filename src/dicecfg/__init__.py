"""dicecfg: distil classifier-free guidance into a text-embedding sharpener (DICE, arXiv 2502.03726).

    from dicecfg import Sharpener, sharpen, generate, distill, load_pipeline

The public names are imported lazily, so ``import dicecfg.world`` or ``dice --help`` stay fast.
"""

from __future__ import annotations

import importlib
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
    from .distill import DistillConfig, distill
    from .errors import DiceError
    from .pipeline import load_pipeline
    from .sampling import Sample, generate, sharpen
    from .sharpener import Sharpener


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dicecfg' has no attribute {name!r}")
