"""Shapes-world metrics: oracle alignment per attribute and a Frechet distance in oracle features."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
RENDER_SIZE = 64  # the world's images are 64 x 64


def world_specs(prompts: Sequence[str]) -> list | None:
    """Each prompt's :class:`~dicecfg.world.Spec`, or None when any prompt is outside the world grammar."""
    from ..world import parse

    try:
        return [parse(p) for p in prompts]
    except ValueError:
        return None


def reads_shapes_world(pipe: Any) -> bool:
    """Whether the oracle can judge this model's images: a shapes-world model (the shipped mini model, or one
    trained by its recipe) samples at the world's 64 x 64 pixels."""
    from ..families import family_of

    return family_of(pipe).default_size(pipe) == RENDER_SIZE


def _world_size(images: np.ndarray) -> np.ndarray:
    """Resize to the world's 64 x 64 when a model samples at another size (the oracle's sizes are in px)."""
    if images.shape[1:3] == (RENDER_SIZE, RENDER_SIZE):
        return images
    from PIL import Image

    log.warning("resizing %s images to %d px for the oracle", images.shape[1:3], RENDER_SIZE)
    size = (RENDER_SIZE, RENDER_SIZE)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR)) for im in images])


def alignment(images: np.ndarray, specs: Sequence, oracle=None) -> dict[str, np.ndarray]:
    """Per-image 0/1 oracle scores: count, shape, colour, size, relation, background and all-correct."""
    from ..world import Oracle

    return (oracle or Oracle()).score(_world_size(images), list(specs))


def scene_features(scenes: Sequence, oracle=None) -> np.ndarray:
    """Oracle features of clean renders of ``scenes``: the reference side of ``oracle_frechet``."""
    from ..world import Oracle, render

    return (oracle or Oracle()).features(render(list(scenes)))


def oracle_frechet(
    images: np.ndarray, scenes: Sequence, oracle=None, reference: np.ndarray | None = None
) -> float:
    """Frechet distance between oracle features of ``images`` and of clean renders of the same scenes
    (``reference``: their ``scene_features``, when several image sets are compared with the same scenes)."""
    from ..world import Oracle, frechet_distance

    oracle = oracle or Oracle()
    ref = scene_features(scenes, oracle) if reference is None else reference
    return frechet_distance(oracle.features(_world_size(images)), ref)
