"""dicecfg: distil classifier-free guidance into a text-embedding sharpener (DICE, arXiv 2502.03726).

    from dicecfg import Sharpener, sharpen, generate, distill, load_pipeline
"""

__version__ = "0.1.0"

from .distill import DistillConfig, distill  # noqa: E402
from .errors import DiceError  # noqa: E402
from .pipeline import load_pipeline  # noqa: E402
from .sampling import Sample, generate, sharpen  # noqa: E402
from .sharpener import Sharpener  # noqa: E402

__all__ = [
    "DiceError", "DistillConfig", "Sample", "Sharpener", "__version__", "distill", "generate", "load_pipeline",
    "sharpen",
]
