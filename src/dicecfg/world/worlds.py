"""The worlds by name: what the mini-model recipe, the metrics and the commands need to know of each.

``shapes`` (the default; :mod:`dicecfg.world`) decides everything its captions name at the noisiest steps of
sampling; ``shapes-fine`` (:mod:`dicecfg.world.fine`) adds patterns and a count of dots, which are settled
later. Each world has one grammar, renderer, oracle and held-out split; this table is the one place that
lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class World:
    """One world's functions (each of its own modules)."""

    name: str
    resolution: int  # images are resolution x resolution RGB
    vocab: tuple[str, ...]  # every word of its grammar (the mini model's tokenizer makes each one token)
    sample_scene: Callable[[np.random.Generator], Any]
    caption_spec: Callable[..., tuple[str, Any]]  # (scene, rng) -> (caption, spec)
    parse: Callable[[str], Any]  # caption -> spec; ValueError outside the grammar
    spec_of: Callable[[Any], Any]  # scene -> its full spec
    is_heldout: Callable[[Any], bool]  # scene or spec -> of a held-out combination?
    render: Callable[[Sequence[Any]], np.ndarray]  # scenes -> uint8 (N, H, W, 3)
    heldout_set: Callable[..., list]  # n -> EvalItems
    validation_set: Callable[..., list]  # n -> EvalItems
    heldout_size: int
    oracle: Callable[[], Any]  # a new oracle: .score(images, specs), .features(images), .keys


def _shapes() -> World:
    from . import captions as c
    from . import heldout as h
    from . import scenes as s
    from .oracle import Oracle
    from .render import render

    return World(
        "shapes", s.RESOLUTION, c.VOCAB, s.sample_scene, c.caption_spec, c.parse, c.spec_of, h.is_heldout,
        render, h.heldout_set, h.validation_set, h.HELDOUT_SIZE, Oracle,
    )  # fmt: skip


def _fine() -> World:
    from .fine import captions as c
    from .fine import heldout as h
    from .fine import scenes as s
    from .fine.render import render

    def new_oracle():
        from .fine.oracle import FineOracle

        return FineOracle()

    return World(
        "shapes-fine", s.RESOLUTION, c.VOCAB, s.sample_scene, c.caption_spec, c.parse, c.spec_of, h.is_heldout,
        render, h.heldout_set, h.validation_set, h.HELDOUT_SIZE, new_oracle,
    )  # fmt: skip


def world_of_item(item: Any) -> str:
    """The world a scene or spec belongs to (by the module that defines its class)."""
    return "shapes-fine" if type(item).__module__.startswith("dicecfg.world.fine") else "shapes"


_MAKERS = {"shapes": _shapes, "shapes-fine": _fine}
WORLD_NAMES = tuple(_MAKERS)
DEFAULT_WORLD = "shapes"
WORLD_FILE = "dicecfg_world.json"  # {"world": name} in a model folder: the world whose oracle judges it


def get_world(name: str | World = DEFAULT_WORLD) -> World:
    """The world called ``name`` (a :class:`World` passes through)."""
    if isinstance(name, World):
        return name
    if name not in _MAKERS:
        raise ValueError(f"unknown world {name!r}; the worlds are {', '.join(WORLD_NAMES)}")
    return _MAKERS[name]()
