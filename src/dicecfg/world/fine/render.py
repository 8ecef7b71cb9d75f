"""Vectorised renderer of the shapes-fine world: scenes -> uint8 (N, 64, 64, 3) images.

Shapes use the shapes world's signed distance fields (:func:`dicecfg.world.render.sdf`, anti-aliased by a
one-pixel ramp); a pattern multiplies the shape's coverage by a second anti-aliased coverage:
- hollow: the band ``-OUTLINE_PX < sdf <= 0`` (coverage ``clip(0.5 - sdf) - clip(0.5 - sdf - OUTLINE_PX)``);
- stripes: ``clip(0.5 - d)`` with ``d`` the distance from the nearest stripe's edge (stripes centred on the
  object's centre, ``STRIPE_PERIOD_PX`` apart, half of that wide), along y for horizontal stripes, x for
  vertical ones.
Dots are discs drawn last, in the background's contrast colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..render import object_windows, sdf
from ..scenes import BACKGROUND_RGB, SHAPES
from .scenes import (
    DOT_RADIUS_PX,
    DOT_RGB,
    HALF_EXTENT_PX,
    OUTLINE_PX,
    PATTERNS,
    RESOLUTION,
    STRIPE_PERIOD_PX,
    FineScene,
)

_WINDOW = int(2 * max(HALF_EXTENT_PX.values()) + 4)
_WIN = np.arange(_WINDOW)
_WIN_CENTRES = _WIN.astype(np.float32) + 0.5
_DOT_WINDOW = int(2 * DOT_RADIUS_PX + 4)
_DWIN = np.arange(_DOT_WINDOW)


def _ramp(d: np.ndarray) -> np.ndarray:
    """Pixel coverage of the region ``d <= 0`` of a signed distance ``d`` (pixels)."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _stripes(u: np.ndarray) -> np.ndarray:
    """Coverage of stripes ``STRIPE_PERIOD_PX / 2`` wide centred on ``u = k * STRIPE_PERIOD_PX``."""
    p = np.float32(STRIPE_PERIOD_PX)
    return _ramp(np.abs(u - p * np.round(u / p)) - p / 4)


def pattern_coverage(pattern: str, d: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Coverage of a patterned shape from its signed distance ``d`` and offsets from its centre."""
    inside = _ramp(d)
    if pattern == "solid":
        return inside
    if pattern == "hollow":
        return inside - _ramp(d + OUTLINE_PX)
    if pattern == "horizontal stripes":
        return inside * _stripes(dy)
    if pattern == "vertical stripes":
        return inside * _stripes(dx)
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


def _blend(img: np.ndarray, ii, yy, xx, cov: np.ndarray, rgb: np.ndarray) -> None:
    win = img[ii, yy, xx].astype(np.float32)
    img[ii, yy, xx] = np.rint(win + cov[..., None] * (rgb - win))


def render(scenes: Sequence[FineScene]) -> np.ndarray:
    """Render scenes to a uint8 array of shape (N, 64, 64, 3)."""
    n = len(scenes)
    img = np.empty((n, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    img[...] = np.array([BACKGROUND_RGB[s.background] for s in scenes], dtype=np.uint8).reshape(n, 1, 1, 3)
    for k in range(max((len(s.objects) for s in scenes), default=0)):
        rows = [(i, s.objects[k]) for i, s in enumerate(scenes) if len(s.objects) > k]
        idx, cx, cy, r, rgb, ox, oy = object_windows(rows, HALF_EXTENT_PX, _WINDOW, RESOLUTION)
        for shape in SHAPES:
            for pattern in PATTERNS:
                m = np.flatnonzero([o.shape == shape and o.pattern == pattern for _, o in rows])
                if m.size == 0:
                    continue
                dx = np.broadcast_to(
                    (ox[m, None] + _WIN_CENTRES[None, :] - cx[m, None])[:, None, :],
                    (m.size, _WINDOW, _WINDOW),
                )
                dy = np.broadcast_to(
                    (oy[m, None] + _WIN_CENTRES[None, :] - cy[m, None])[:, :, None],
                    (m.size, _WINDOW, _WINDOW),
                )
                cov = pattern_coverage(pattern, sdf(shape, dx, dy, r[m, None, None]), dx, dy)
                yy = oy[m, None, None] + _WIN[None, :, None]
                xx = ox[m, None, None] + _WIN[None, None, :]
                _blend(img, idx[m, None, None], yy, xx, cov, rgb[m, None, None, :])
    for k in range(max((len(s.dots) for s in scenes), default=0)):  # one dot per image at a time
        dots = [(i, *s.dots[k]) for i, s in enumerate(scenes) if len(s.dots) > k]
        idx = np.array([i for i, _, _ in dots])
        cx = np.array([x * RESOLUTION for _, x, _ in dots], dtype=np.float32)
        cy = np.array([y * RESOLUTION for _, _, y in dots], dtype=np.float32)
        rgb = np.array([DOT_RGB[scenes[i].background] for i in idx], dtype=np.float32)
        ox = np.clip(np.floor(cx - _DOT_WINDOW / 2).astype(np.int64), 0, RESOLUTION - _DOT_WINDOW)
        oy = np.clip(np.floor(cy - _DOT_WINDOW / 2).astype(np.int64), 0, RESOLUTION - _DOT_WINDOW)
        dx = (ox[:, None] + _DWIN[None, :] + 0.5 - cx[:, None])[:, None, :]
        dy = (oy[:, None] + _DWIN[None, :] + 0.5 - cy[:, None])[:, :, None]
        cov = _ramp(np.sqrt(dx * dx + dy * dy) - DOT_RADIUS_PX)
        yy = oy[:, None, None] + _DWIN[None, :, None]
        xx = ox[:, None, None] + _DWIN[None, None, :]
        _blend(img, idx[:, None, None], yy, xx, cov, rgb[:, None, None, :])
    return img
