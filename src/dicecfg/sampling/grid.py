"""Small image helpers: labelled grids (validation, demo)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_grid(
    images: Sequence[np.ndarray],
    cols: int | None = None,
    labels: Sequence[str] | None = None,
    label_h: int = 0,
) -> Image.Image:
    """Tile uint8 (H, W, 3) images row-major; optional one-line label above each tile."""
    n = len(images)
    cols = cols or min(n, 8)
    rows = (n + cols - 1) // cols
    h, w = images[0].shape[:2]
    lh = label_h or (12 if labels else 0)
    grid = Image.new("RGB", (cols * w, rows * (h + lh)), "white")
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + lh)
        grid.paste(Image.fromarray(img), (x, y + lh))
        if labels:
            draw.text((x + 2, y), labels[i][: max(1, w // 6)], fill="black")
    return grid


def save_grid(images: Sequence[np.ndarray], path: str | Path, **kwargs) -> Path:
    from ..runs.io import atomic_write

    grid = make_grid(images, **kwargs)
    return atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
