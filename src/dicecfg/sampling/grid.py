"""Small image helpers: labelled grids (validation, ceiling) and the annotated grid of `dice demo`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]


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


def font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font, scalable to ``size`` px where Pillow has it (>= 10.1, with FreeType), else its
    fixed bitmap font; both need no font file, so grids draw the same offline everywhere."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: load_default() takes no size
        return ImageFont.load_default()


def wrap(text: str, fnt, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer single word stays whole)."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            if line and fnt.getlength(f"{line} {word}") > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines


def annotated_grid(
    rows: Sequence[Sequence[np.ndarray]],
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    frames: Sequence[Sequence[RGB]] | None = None,
    notes: Sequence[Sequence[str]] | None = None,
    title: str = "",
    scale: int = 2,
    label_width: int = 150,
    font_size: int = 13,
    frame: int = 4,
    gap: int = 8,
) -> Image.Image:
    """Rows of equal-sized uint8 (H, W, 3) tiles (enlarged ``scale`` x, nearest) under a wrapped ``title``, with
    a wrapped label above each column and left of each row; tile (r, c) gets a ``frame`` px border in
    ``frames[r][c]`` and the text ``notes[r][c]`` below it in the same colour. Text wraps, never truncates."""
    fnt = font(font_size)
    line_h = fnt.getbbox("Ag")[3] + 3
    h, w = rows[0][0].shape[:2]
    cell_w, cell_h = w * scale + 2 * frame, h * scale + 2 * frame
    cols = len(col_labels)
    width = label_width + cols * (cell_w + gap)

    def lines(texts, px):  # each text wrapped, and the height of the tallest
        wrapped = [wrap(t, fnt, px) for t in texts]
        return wrapped, max(len(x) for x in wrapped) * line_h

    title_lines = wrap(title, fnt, width - 2 * gap) if title else []
    title_h = len(title_lines) * line_h + gap if title else 0
    heads, head_h = lines(col_labels, cell_w)
    note_lines = [lines(r, cell_w) for r in notes] if notes else [([[]] * cols, 0)] * len(rows)
    row_h = [cell_h + nh + gap for _, nh in note_lines]
    top = gap + title_h + head_h + gap // 2
    img = Image.new("RGB", (width, top + sum(row_h)), "white")
    draw = ImageDraw.Draw(img)

    def text(x, y, texts, fill="black"):
        for i, t in enumerate(texts):
            draw.text((x, y + i * line_h), t, fill=fill, font=fnt)

    text(gap, gap, title_lines)
    for c, head in enumerate(heads):
        text(label_width + c * (cell_w + gap), gap + title_h, head)
    y = top
    for r, row in enumerate(rows):
        label = wrap(row_labels[r], fnt, label_width - 2 * gap)
        text(gap, y + max(0, (cell_h - len(label) * line_h) // 2), label)
        for c, tile in enumerate(row):
            x = label_width + c * (cell_w + gap)
            colour = frames[r][c] if frames else (255, 255, 255)
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=colour)
            big = Image.fromarray(tile).resize((w * scale, h * scale), Image.NEAREST)
            img.paste(big, (x + frame, y + frame))
            text(x, y + cell_h + 2, note_lines[r][0][c], fill=colour if frames else "black")
        y += row_h[r]
    return img


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG atomically (a reader never sees half a file)."""
    from ..runs.io import atomic_write

    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_grid(images: Sequence[np.ndarray], path: str | Path, **kwargs) -> Path:
    return save_png(make_grid(images, **kwargs), path)
