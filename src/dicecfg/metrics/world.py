"""World metrics: oracle alignment per attribute and a Frechet distance in oracle features, for either world
(``shapes`` or ``shapes-fine``; the specs and scenes say which)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..world.worlds import WORLD_FILE

log = logging.getLogger(__name__)
RENDER_SIZE = 64  # the worlds' images are 64 x 64


def world_specs(prompts: Sequence[str], world: str = "shapes") -> list | None:
    """Each prompt's spec in ``world``'s grammar, or None when any prompt is outside it."""
    from ..world.worlds import get_world

    parse = get_world(world).parse
    try:
        return [parse(p) for p in prompts]
    except ValueError:
        return None


def recorded_world(folder: str | Path | None) -> str | None:
    """The world a model folder records (``dicecfg_world.json``, written by the mini-model recipe), or None."""
    marker = Path(folder) / WORLD_FILE if folder else None
    if marker is None or not marker.is_file():
        return None
    try:
        world = json.loads(marker.read_text(encoding="utf-8"))["world"]
    except (ValueError, KeyError, TypeError):
        log.warning("%s is not {'world': NAME}; judging the model as a shapes-world model", marker)
        return None
    from ..world.worlds import WORLD_NAMES

    if world not in WORLD_NAMES:
        log.warning("%s names the unknown world %r; no oracle judges this model", marker, world)
        return None
    return world


def world_of_model(model: str | None) -> str:
    """The world whose prompts a model argument (``--model``; None = the shipped default) is measured on before
    it loads: the world its folder records, else the shapes world (whose grammar then decides, prompt by
    prompt, whether the oracle can judge)."""
    from ..errors import ModelNotFoundError
    from ..pipeline import resolve_model

    try:
        folder = resolve_model(model)
    except ModelNotFoundError:  # a shipped name whose folder is missing: loading says so
        return "shapes"
    return recorded_world(folder) or "shapes"


def world_of(pipe: Any) -> str | None:
    """The world whose oracle can judge this model's images, or None: the world its folder records
    (``dicecfg_world.json``, written by the mini-model recipe), else ``"shapes"`` for an SD-family model that
    samples at the worlds' 64 x 64 pixels (folders trained by the recipe before it recorded its world)."""
    from ..families import family_of

    folder = pipe.config.get("_name_or_path") if hasattr(pipe, "config") else None
    if folder and (Path(folder) / WORLD_FILE).is_file():
        return recorded_world(folder)
    return "shapes" if family_of(pipe).default_size(pipe) == RENDER_SIZE else None


def reads_shapes_world(pipe: Any) -> bool:
    """Whether an oracle can judge this model's images (a model of either world: see :func:`world_of`)."""
    return world_of(pipe) is not None


def oracle_for(items: Sequence) -> Any:
    """A new oracle of the world that specs or scenes belong to (the shapes world's for none)."""
    from ..world.worlds import get_world, world_of_item

    return get_world(world_of_item(items[0]) if items else "shapes").oracle()


def _world_size(images: np.ndarray) -> np.ndarray:
    """Resize to the world's 64 x 64 when a model samples at another size (the oracle's sizes are in px)."""
    if images.shape[1:3] == (RENDER_SIZE, RENDER_SIZE):
        return images
    from PIL import Image

    log.warning("resizing %s images to %d px for the oracle", images.shape[1:3], RENDER_SIZE)
    size = (RENDER_SIZE, RENDER_SIZE)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR)) for im in images])


def alignment(images: np.ndarray, specs: Sequence, oracle=None) -> dict[str, np.ndarray]:
    """Per-image 0/1 oracle scores of each of the oracle's keys (count, shape, colour, size, relation,
    background, and pattern and dots in shapes-fine) and all-correct."""
    return (oracle or oracle_for(specs)).score(_world_size(images), list(specs))


def scene_features(scenes: Sequence, oracle=None) -> np.ndarray:
    """Oracle features of clean renders of ``scenes``: the reference side of ``oracle_frechet``."""
    from ..world.worlds import get_world, world_of_item

    world = get_world(world_of_item(scenes[0]) if len(scenes) else "shapes")
    return (oracle or world.oracle()).features(world.render(list(scenes)))


def oracle_frechet(
    images: np.ndarray, scenes: Sequence, oracle=None, reference: np.ndarray | None = None
) -> float:
    """Frechet distance between oracle features of ``images`` and of clean renders of the same scenes
    (``reference``: their ``scene_features``, when several image sets are compared with the same scenes)."""
    from ..world import frechet_distance

    oracle = oracle or oracle_for(scenes)
    ref = scene_features(scenes, oracle) if reference is None else reference
    return frechet_distance(oracle.features(_world_size(images)), ref)
