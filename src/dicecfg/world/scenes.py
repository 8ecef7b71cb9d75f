"""Scenes of the shapes world: one or two coloured shapes on a plain background.

A scene is pure data (frozen dataclasses); :func:`sample_scene` draws valid scenes whose stated
relation holds in the geometry with a clear margin. Every random draw goes through
``rng.random()`` (raw PCG64 doubles), whose stream numpy keeps stable, so scenes drawn from a
fixed seed are the same on every machine and numpy version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 10),
    "yellow": (240, 225, 30),
    "green": (30, 170, 50),
    "cyan": (30, 200, 230),
    "blue": (30, 60, 220),
    "purple": (140, 40, 190),
}
COLOURS = tuple(COLOUR_RGB)
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
BACKGROUNDS = tuple(BACKGROUND_RGB)

RESOLUTION = 64
HALF_EXTENT_PX = {"small": 7.0, "large": 12.0}  # half the bounding-box side of a shape, in pixels
GAP_PX = 4.0  # least free space between two objects' bounding boxes along the relation axis
MAX_OFF_AXIS = 0.5  # |offset across the relation axis| <= this * |offset along it|
P_SINGLE = 0.3  # share of one-object scenes when max_objects == 2

INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

T = TypeVar("T")


@dataclass(frozen=True)
class Obj:
    """One shape; ``x``, ``y`` is the centre of its bounding box in [0, 1] (y grows downwards)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float


@dataclass(frozen=True)
class Scene:
    """One or two objects; ``relation`` is that of ``objects[0]`` to ``objects[1]`` (None for one)."""

    objects: tuple[Obj, ...]
    background: str
    relation: str | None


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """Uniform choice from one raw double (stable across numpy versions, unlike ``rng.choice``)."""
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw in [lo, hi) from one raw double."""
    return lo + (hi - lo) * float(rng.random())


def centre_range(r: float, resolution: int = RESOLUTION) -> tuple[float, float]:
    """Pixel range of the centre of a shape of half extent ``r`` that keeps it one pixel inside the image."""
    return r + 1.0, resolution - 1.0 - r


def place_pair(
    rng: np.random.Generator,
    r0: float,
    r1: float,
    relation: str,
    *,
    resolution: int = RESOLUTION,
    gap: float = GAP_PX,
) -> tuple[float, ...]:
    """Pixel centres (x0, y0, x1, y1) of shapes of half extents ``r0``, ``r1`` with ``relation`` of object 0
    to object 1 clearly true: at least ``gap`` px apart along the relation's axis, at most ``MAX_OFF_AXIS``
    as far off it. Shared by the worlds."""
    lo0, hi0 = centre_range(r0, resolution)
    lo1, hi1 = centre_range(r1, resolution)
    min_sep = r0 + r1 + gap
    sign = -1.0 if relation in ("left of", "above") else 1.0  # sign of (object 0 - object 1) on the axis
    while True:
        a0, a1 = uniform(rng, lo0, hi0), uniform(rng, lo1, hi1)
        if sign * (a0 - a1) >= min_sep:
            break
    d = abs(a0 - a1) * MAX_OFF_AXIS
    b1 = uniform(rng, lo1, hi1)
    b0 = uniform(rng, max(lo0, b1 - d), min(hi0, b1 + d))
    if relation in ("left of", "right of"):
        return a0, b0, a1, b1
    return b0, a0, b1, a1


def sample_scene(rng: np.random.Generator, max_objects: int = 2) -> Scene:
    """Draw a valid scene: distinct colours, no overlap, the relation true with a clear margin.

    With ``max_objects=2`` about 30% of scenes hold one object and 70% two objects with a relation.
    """
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2, got {max_objects}")
    background = pick(rng, BACKGROUNDS)
    if max_objects == 1 or rng.random() < P_SINGLE:
        return place_scene(rng, [(pick(rng, SHAPES), pick(rng, COLOURS), pick(rng, SIZES))], None, background)
    shapes = (pick(rng, SHAPES), pick(rng, SHAPES))
    c0 = pick(rng, COLOURS)
    c1 = pick(rng, [c for c in COLOURS if c != c0])
    sizes = (pick(rng, SIZES), pick(rng, SIZES))
    relation = pick(rng, RELATIONS)
    return place_scene(rng, [(shapes[0], c0, sizes[0]), (shapes[1], c1, sizes[1])], relation, background)


def place_scene(
    rng: np.random.Generator,
    objects: Sequence[tuple[str, str, str]],
    relation: str | None,
    background: str,
) -> Scene:
    """Place given (shape, colour, size) objects at random valid positions so that ``relation`` holds."""
    if len(objects) == 1:
        shape, colour, size = objects[0]
        lo, hi = centre_range(HALF_EXTENT_PX[size])
        x, y = uniform(rng, lo, hi), uniform(rng, lo, hi)
        scene = Scene((Obj(shape, colour, size, x / RESOLUTION, y / RESOLUTION),), background, None)
    else:
        (s0, c0, z0), (s1, c1, z1) = objects
        if relation not in RELATIONS:
            raise ValueError(f"two objects need a relation from {RELATIONS}, got {relation!r}")
        x0, y0, x1, y1 = place_pair(rng, HALF_EXTENT_PX[z0], HALF_EXTENT_PX[z1], relation)
        scene = Scene(
            (
                Obj(s0, c0, z0, x0 / RESOLUTION, y0 / RESOLUTION),
                Obj(s1, c1, z1, x1 / RESOLUTION, y1 / RESOLUTION),
            ),
            background,
            relation,
        )
    validate_scene(scene)
    return scene


def relation_holds(relation: str, dx: float, dy: float) -> bool:
    """The relation rule shared by sampler and oracle: the dominant axis of (dx, dy) and its sign.

    ``dx, dy`` is object 0's centre minus object 1's (image y grows downwards).
    """
    if relation == "left of":
        return dx < 0 and abs(dx) > abs(dy)
    if relation == "right of":
        return dx > 0 and abs(dx) > abs(dy)
    if relation == "above":
        return dy < 0 and abs(dy) > abs(dx)
    if relation == "below":
        return dy > 0 and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def validate_scene(scene: Scene) -> None:
    """Raise ValueError if the scene breaks a rule of the world (used by tests and loaders)."""
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {scene.background!r}")
    if not 1 <= len(scene.objects) <= 2:
        raise ValueError(f"a scene holds 1 or 2 objects, got {len(scene.objects)}")
    for o in scene.objects:
        if o.shape not in SHAPES or o.colour not in COLOURS or o.size not in SIZES:
            raise ValueError(f"unknown attribute in {o}")
    check_layout(scene, HALF_EXTENT_PX, RESOLUTION)


def check_layout(scene, half_extent: dict[str, float], resolution: int) -> list[tuple[float, ...]]:
    """The rules on where objects are, shared by the worlds: inside the image, one object without a relation,
    two of distinct colours that do not overlap and whose relation holds. Returns their pixel boxes."""
    boxes = []
    for o in scene.objects:
        r = half_extent[o.size]
        cx, cy = o.x * resolution, o.y * resolution
        if not (r < cx < resolution - r and r < cy < resolution - r):
            raise ValueError(f"{o} leaves the image")
        boxes.append((cx - r, cy - r, cx + r, cy + r))
    if len(scene.objects) == 1:
        if scene.relation is not None:
            raise ValueError("a one-object scene has no relation")
        return boxes
    a, b = scene.objects
    if a.colour == b.colour:
        raise ValueError("the two objects of a scene have distinct colours")
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
    if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
        raise ValueError("objects overlap")
    if scene.relation is None or not relation_holds(scene.relation, a.x - b.x, a.y - b.y):
        raise ValueError(f"relation {scene.relation!r} does not hold in the geometry")
    return boxes
