"""Scenes of the shapes-fine world: the shapes world's composition plus attributes decided late in sampling.

A scene holds one or two objects, as in the shapes world (shape, colour, size, position, a relation, a
background), and two finer things:
- each object's **pattern**: ``solid``, ``hollow`` (an outline ``OUTLINE_PX`` wide), or stripes of a stated
  direction (``STRIPE_PERIOD_PX`` apart, half on, half off);
- a number (0-4) of small **dots** (discs of radius ``DOT_RADIUS_PX``) scattered on the free background, in
  the colour that contrasts with the background (black on white, white on black or gray).
A stripe is 2 px wide and a dot about 3 px across: each is about one latent pixel of the mini model's VAE
(64 x 64 px -> 16 x 16 latents), so, unlike which colour is where, they are settled late in sampling.

Every random draw goes through ``rng.random()`` (see :mod:`dicecfg.world.scenes`), so a scene drawn from a
fixed seed is the same on every machine and numpy version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..scenes import (
    BACKGROUNDS,
    COLOURS,
    RELATIONS,
    SHAPES,
    SIZES,
    centre_range,
    check_layout,
    pick,
    place_pair,
    uniform,
)
from ..scenes import relation_holds as relation_holds

RESOLUTION = 64
HALF_EXTENT_PX = {"small": 8.0, "large": 13.0}  # a little larger than the shapes world's: room for patterns
PATTERNS = ("solid", "hollow", "horizontal stripes", "vertical stripes")
STRIPE_PERIOD_PX = 4.0  # stripe pitch; a stripe is half of it wide, and one runs through the centre
OUTLINE_PX = 2.0  # width of a hollow shape's outline
DOT_RADIUS_PX = 1.6
DOT_COUNTS = (0, 1, 2, 3, 4)
MAX_DOTS = DOT_COUNTS[-1]
DOT_CLEARANCE_PX = 3.0  # least free space between a dot's edge and an object's bounding box
DOT_SPACING_PX = 6.0  # least distance between two dots' centres
DOT_MARGIN_PX = 4.0  # least distance between a dot's centre and the image border
DOT_RGB = {"white": (0, 0, 0), "black": (255, 255, 255), "gray": (255, 255, 255)}  # per background
GAP_PX = 4.0
P_SINGLE = 0.3  # share of one-object scenes
P_NO_DOTS = 0.2  # share of scenes without dots; the rest hold 1-4, evenly
_DOT_TRIES = 200


@dataclass(frozen=True)
class FineObj:
    """One shape; ``x``, ``y`` is the centre of its bounding box in [0, 1] (y grows downwards)."""

    shape: str
    colour: str
    size: str
    pattern: str
    x: float
    y: float


@dataclass(frozen=True)
class FineScene:
    """One or two objects, their relation (of ``objects[0]`` to ``objects[1]``), the background and the
    centres of the dots, in [0, 1]."""

    objects: tuple[FineObj, ...]
    background: str
    relation: str | None
    dots: tuple[tuple[float, float], ...]


def _place_dots(rng: np.random.Generator, objects: Sequence[FineObj], n: int) -> tuple | None:
    """``n`` dot centres (pixels) clear of the objects and of each other, or None if they do not fit."""
    lo, hi = DOT_MARGIN_PX, RESOLUTION - DOT_MARGIN_PX
    boxes = [(o.x * RESOLUTION, o.y * RESOLUTION, HALF_EXTENT_PX[o.size]) for o in objects]
    dots: list[tuple[float, float]] = []
    tries = 0
    while len(dots) < n:
        tries += 1
        if tries > _DOT_TRIES:
            return None
        x, y = uniform(rng, lo, hi), uniform(rng, lo, hi)
        reach = DOT_RADIUS_PX + DOT_CLEARANCE_PX
        if any(abs(x - cx) < r + reach and abs(y - cy) < r + reach for cx, cy, r in boxes):
            continue
        if any((x - dx) ** 2 + (y - dy) ** 2 < DOT_SPACING_PX**2 for dx, dy in dots):
            continue
        dots.append((x, y))
    return tuple(dots)


def place_scene(
    rng: np.random.Generator,
    objects: Sequence[tuple[str, str, str, str]],
    relation: str | None,
    background: str,
    n_dots: int,
) -> FineScene:
    """Place given (shape, colour, size, pattern) objects and ``n_dots`` dots at random valid positions so
    that ``relation`` holds (positions are drawn again until the dots fit)."""
    while True:
        if len(objects) == 1:
            shape, colour, size, pattern = objects[0]
            lo, hi = centre_range(HALF_EXTENT_PX[size], RESOLUTION)
            placed = ((shape, colour, size, pattern, uniform(rng, lo, hi), uniform(rng, lo, hi)),)
        else:
            if relation not in RELATIONS:
                raise ValueError(f"two objects need a relation from {RELATIONS}, got {relation!r}")
            (s0, c0, z0, p0), (s1, c1, z1, p1) = objects
            x0, y0, x1, y1 = place_pair(
                rng, HALF_EXTENT_PX[z0], HALF_EXTENT_PX[z1], relation, resolution=RESOLUTION, gap=GAP_PX
            )
            placed = ((s0, c0, z0, p0, x0, y0), (s1, c1, z1, p1, x1, y1))
        objs = tuple(FineObj(s, c, z, p, x / RESOLUTION, y / RESOLUTION) for s, c, z, p, x, y in placed)
        dots = _place_dots(rng, objs, n_dots)
        if dots is not None:
            break
    scene = FineScene(objs, background, relation, tuple((x / RESOLUTION, y / RESOLUTION) for x, y in dots))
    validate_scene(scene)
    return scene


def sample_scene(rng: np.random.Generator) -> FineScene:
    """Draw a valid scene: about 30% one object, 70% two with a relation; 20% without dots, else 1-4."""
    background = pick(rng, BACKGROUNDS)
    n_dots = 0 if rng.random() < P_NO_DOTS else pick(rng, DOT_COUNTS[1:])
    if rng.random() < P_SINGLE:
        obj = (pick(rng, SHAPES), pick(rng, COLOURS), pick(rng, SIZES), pick(rng, PATTERNS))
        return place_scene(rng, [obj], None, background, n_dots)
    c0 = pick(rng, COLOURS)
    c1 = pick(rng, [c for c in COLOURS if c != c0])
    objs = [(pick(rng, SHAPES), c, pick(rng, SIZES), pick(rng, PATTERNS)) for c in (c0, c1)]
    return place_scene(rng, objs, pick(rng, RELATIONS), background, n_dots)


def validate_scene(scene: FineScene) -> None:
    """Raise ValueError if the scene breaks a rule of the world (used by tests and loaders)."""
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {scene.background!r}")
    if not 1 <= len(scene.objects) <= 2:
        raise ValueError(f"a scene holds 1 or 2 objects, got {len(scene.objects)}")
    if len(scene.dots) > MAX_DOTS:
        raise ValueError(f"a scene holds at most {MAX_DOTS} dots, got {len(scene.dots)}")
    for o in scene.objects:
        if (
            o.shape not in SHAPES
            or o.colour not in COLOURS
            or o.size not in SIZES
            or o.pattern not in PATTERNS
        ):
            raise ValueError(f"unknown attribute in {o}")
    boxes = check_layout(scene, HALF_EXTENT_PX, RESOLUTION)
    for i, (x, y) in enumerate(scene.dots):
        px, py = x * RESOLUTION, y * RESOLUTION
        lo, hi = DOT_MARGIN_PX - 1e-6, RESOLUTION - DOT_MARGIN_PX + 1e-6
        if not (lo <= px <= hi and lo <= py <= hi):
            raise ValueError(f"dot {i} is too close to the border")
        reach = DOT_RADIUS_PX + DOT_CLEARANCE_PX - 1e-6
        if any(x0 - reach < px < x1 + reach and y0 - reach < py < y1 + reach for x0, y0, x1, y1 in boxes):
            raise ValueError(f"dot {i} touches an object")
