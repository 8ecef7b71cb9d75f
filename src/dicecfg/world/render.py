"""Vectorised renderer: scenes -> uint8 images, anti-aliased through signed distance functions.

Each shape is a signed distance field in pixels (negative inside); pixel coverage is
``clip(0.5 - sdf, 0, 1)``, a one-pixel linear ramp across the edge. All scenes of a batch are drawn
at once, one shape kind at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scenes import BACKGROUND_RGB, COLOUR_RGB, HALF_EXTENT_PX, RESOLUTION, SHAPES, Scene

CROSS_ARM = 0.33  # half-width of a cross's arms, as a fraction of the half extent
_WINDOW = int(2 * max(HALF_EXTENT_PX.values()) + 4)  # side of the square drawn around an object
_WIN = np.arange(_WINDOW)
_WIN_CENTRES = _WIN.astype(np.float32) + 0.5


def sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels) to a shape of half extent ``r`` centred at the origin."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(ax, ay) - r
    if shape == "diamond":
        return (ax + ay - r) * np.float32(1 / np.sqrt(2))
    if shape == "triangle":  # apex up at (0, -r), base corners at (+-r, r)
        return np.maximum(dy - r, (2 * ax - dy - r) * np.float32(1 / np.sqrt(5)))
    if shape == "cross":
        a = CROSS_ARM * r
        return np.minimum(np.maximum(ax - r, ay - a), np.maximum(ax - a, ay - r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def object_windows(rows: Sequence, half_extent: dict[str, float], window: int, resolution: int = RESOLUTION):
    """Per object of ``rows`` ((image index, object) pairs): image index, centre (px), half extent, colour and
    the top-left corner of the ``window`` x ``window`` square drawn around it (shared by the worlds)."""
    idx = np.array([i for i, _ in rows])
    cx = np.array([o.x * resolution for _, o in rows], dtype=np.float32)
    cy = np.array([o.y * resolution for _, o in rows], dtype=np.float32)
    r = np.array([half_extent[o.size] for _, o in rows], dtype=np.float32)
    rgb = np.array([COLOUR_RGB[o.colour] for _, o in rows], dtype=np.float32)
    ox = np.clip(np.floor(cx - window / 2).astype(np.int64), 0, resolution - window)
    oy = np.clip(np.floor(cy - window / 2).astype(np.int64), 0, resolution - window)
    return idx, cx, cy, r, rgb, ox, oy


def render(scenes: Sequence[Scene]) -> np.ndarray:
    """Render scenes to a uint8 array of shape (N, 64, 64, 3)."""
    n = len(scenes)
    bg = np.array([BACKGROUND_RGB[s.background] for s in scenes], dtype=np.uint8).reshape(n, 1, 1, 3)
    img = np.empty((n, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    img[...] = bg
    shape_id = {s: i for i, s in enumerate(SHAPES)}
    slots = max((len(s.objects) for s in scenes), default=0)
    for k in range(slots):
        rows = [(i, s.objects[k]) for i, s in enumerate(scenes) if len(s.objects) > k]
        kind = np.array([shape_id[o.shape] for _, o in rows])
        # Draw in a window around each object (shapes never reach beyond r + 1 px from the centre).
        idx, cx, cy, r, rgb, ox, oy = object_windows(rows, HALF_EXTENT_PX, _WINDOW)
        for j, shape in enumerate(SHAPES):
            m = np.flatnonzero(kind == j)
            if m.size == 0:
                continue
            dx = (ox[m, None] + _WIN_CENTRES[None, :] - cx[m, None])[:, None, :]
            dy = (oy[m, None] + _WIN_CENTRES[None, :] - cy[m, None])[:, :, None]
            cov = np.clip(0.5 - sdf(shape, dx, dy, r[m, None, None]), 0.0, 1.0)[..., None]
            ii = idx[m, None, None]
            yy = oy[m, None, None] + _WIN[None, :, None]
            xx = ox[m, None, None] + _WIN[None, None, :]
            win = img[ii, yy, xx].astype(np.float32)
            img[ii, yy, xx] = np.rint(win + cov * (rgb[m, None, None, :] - win))
    return img


def _gaussian_kernel(sigma: float) -> np.ndarray:
    half = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def degrade(images: np.ndarray, *, blur: float = 0.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Gaussian blur (sigma ``blur`` px, edge padding) then Gaussian noise (std ``noise`` in [0, 1]).

    Used to measure how the oracle copes with images that look like a small diffusion model's.
    Returns uint8 (N, 64, 64, 3).
    """
    x = images.astype(np.float64) / 255.0
    if blur > 0:
        k = _gaussian_kernel(blur)
        h = len(k) // 2
        for axis in (1, 2):
            pad = [(0, 0)] * 4
            pad[axis] = (h, h)
            xp = np.pad(x, pad, mode="edge")
            n = x.shape[axis]
            x = sum(w * np.take(xp, np.arange(j, j + n), axis=axis) for j, w in enumerate(k))
    if noise > 0:
        x = x + np.random.default_rng(seed).normal(0.0, noise, size=x.shape)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
