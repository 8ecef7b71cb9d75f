"""dicecfg: distil classifier-free guidance into a text-embedding sharpener (DICE, arXiv 2502.03726).

    from dicecfg import Sharpener, sharpen, generate, distill, load_pipeline, enable_dice, disable_dice
    from dicecfg import Unguided, CFG, Scaling, Dice, AdaptiveGuidance   # the sampling methods (and more:
                                                                          # sampling/registry.py lists them)

The public names are imported lazily, so ``import dicecfg.world`` or ``dice --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .sampling.registry import METHOD_CLASSES

__version__ = "0.1.0"

_EXPORTS = {
    "DiceError": "errors",
    "DistillConfig": "training.config",
    "Sample": "sampling.generate",
    "Sharpener": "sharpener",
    "disable_dice": "sampling.enable",
    "distill": "training.loop",
    "enable_dice": "sampling.enable",
    "generate": "sampling.generate",
    "load_pipeline": "pipeline",
    "sharpen": "sampling.generate",
    **METHOD_CLASSES,  # the sampling methods, from their one list
}
__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover
    from .errors import DiceError  # noqa: F401
    from .pipeline import load_pipeline  # noqa: F401
    from .sampling.enable import disable_dice, enable_dice  # noqa: F401
    from .sampling.generate import Sample, generate, sharpen  # noqa: F401
    from .sampling.methods import CFG, AdaptiveGuidance, Dice, Scaling, Unguided  # noqa: F401
    from .sharpener import Sharpener  # noqa: F401
    from .training.config import DistillConfig  # noqa: F401
    from .training.loop import distill  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dicecfg' has no attribute {name!r}")
