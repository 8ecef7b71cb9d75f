"""The shapes-fine world's held-out and validation sets, split from training by attribute combination.

As in the shapes world (:mod:`dicecfg.world.heldout`): a two-object scene's identity is
``(shape0, colour0, shape1, colour1, relation)`` in canonical form, a one-object scene's is
``(shape, colour, pattern)``; ``HELDOUT_PAIRS`` (192 of 2,100) and ``HELDOUT_SINGLES`` (10 of 140) are drawn
once from this world's own seed, and training never shows them. Sizes, patterns of pairs, positions, dots
and the background are free.

Every held-out and validation caption names each object's pattern and the number of dots (1-4), since those
are what this world adds; sizes and the background are named as often as in training. Item ``i`` of
:func:`heldout_set` is a one-object item when ``i % 4 == 3``, drawn from the generator ``[HELDOUT_SEED, i]``,
and sampled with seed ``SAMPLER_SEED_BASE + i``; any ``n`` up to ``HELDOUT_SIZE`` gives a prefix of one list.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from ..heldout import (
    CONDITIONS,
    EvalItem,
    all_pairs,
    combination_held_out,
    first_items,
    pick_subset,
    validation_items,
)
from ..scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, pick
from .captions import FineSpec, caption_spec
from .scenes import DOT_COUNTS, PATTERNS, FineScene, place_scene, sample_scene

HELDOUT_SEED = 20261207
N_PAIRS, N_SINGLES = 192, 10
HELDOUT_SIZE = 512
SAMPLER_SEED_BASE = 5_000_000  # item i is sampled with seed SAMPLER_SEED_BASE + i
VALIDATION_SEED = 535_353
VALIDATION_SEED_BASE = 7_000_000

_rng = np.random.default_rng(HELDOUT_SEED)
HELDOUT_PAIRS = pick_subset(all_pairs(), N_PAIRS, _rng)
HELDOUT_SINGLES = pick_subset(list(itertools.product(SHAPES, COLOURS, PATTERNS)), N_SINGLES, _rng)
del _rng
_PAIR_SET, _SINGLE_SET = frozenset(HELDOUT_PAIRS), frozenset(HELDOUT_SINGLES)


def is_heldout(scene_or_spec: FineScene | FineSpec) -> bool:
    """True if the scene's (or spec's) combination is held out; a spec that leaves an identity attribute open
    counts as held out when some held-out combination fits it."""
    return combination_held_out(scene_or_spec, ("shape", "colour", "pattern"), _SINGLE_SET, _PAIR_SET)


def _caption(scene: FineScene, rng: np.random.Generator) -> tuple[str, FineSpec]:
    return caption_spec(scene, rng, p_pattern=1.0, p_dots=1.0)


def _item(i: int) -> EvalItem:
    rng = np.random.default_rng([HELDOUT_SEED, i])
    background = pick(rng, BACKGROUNDS)
    n_dots = pick(rng, DOT_COUNTS[1:])
    if i % 4 == 3:
        shape, colour, pattern = HELDOUT_SINGLES[(i // 4) % N_SINGLES]
        scene = place_scene(rng, [(shape, colour, pick(rng, SIZES), pattern)], None, background, n_dots)
    else:
        s0, c0, s1, c1, relation = HELDOUT_PAIRS[(i - i // 4) % N_PAIRS]
        objs = [
            (s0, c0, pick(rng, SIZES), pick(rng, PATTERNS)),
            (s1, c1, pick(rng, SIZES), pick(rng, PATTERNS)),
        ]
        scene = place_scene(rng, objs, relation, background, n_dots)
    prompt, spec = _caption(scene, rng)
    return EvalItem(prompt, spec, scene, SAMPLER_SEED_BASE + i)


@functools.lru_cache(maxsize=4)
def _items(n: int) -> tuple[EvalItem, ...]:
    return tuple(_item(i) for i in range(n))


def heldout_set(n: int = HELDOUT_SIZE) -> list[EvalItem]:
    """The first ``n`` held-out items (the same list on every call, machine and numpy version)."""
    return first_items(n, HELDOUT_SIZE, _items)


@functools.lru_cache(maxsize=4)
def _validation_items(n: int) -> tuple[EvalItem, ...]:
    keep = lambda scene: scene.dots and not is_heldout(scene)  # noqa: E731
    return validation_items(n, VALIDATION_SEED, VALIDATION_SEED_BASE, sample_scene, _caption, keep)


def validation_set(n: int = 512) -> list[EvalItem]:
    """``n`` items to choose methods and recipes on: fresh training-distribution scenes with 1-4 dots, never
    a held-out combination, captioned as the held-out set is, with sampler seeds of their own."""
    return first_items(n, None, _validation_items)


def oracle_accuracy(
    n: int = HELDOUT_SIZE, *, blur: float = 0.0, noise: float = 0.0, seed: int = 0, split: str = "heldout"
) -> dict[str, float]:
    """Mean :class:`~dicecfg.world.fine.oracle.FineOracle` scores of the renders of the first ``n`` held-out
    (or ``split="validation"``) items against their own prompts, optionally blurred / noised."""
    from ..render import degrade
    from .oracle import FineOracle
    from .render import render

    if split not in ("heldout", "validation"):
        raise ValueError(f"split must be 'heldout' or 'validation', got {split!r}")
    items = heldout_set(n) if split == "heldout" else validation_set(n)
    images = render([it.scene for it in items])
    if blur or noise:
        images = degrade(images, blur=blur, noise=noise, seed=seed)
    return {k: float(v.mean()) for k, v in FineOracle().score(images, [it.spec for it in items]).items()}


def oracle_table(n: int = HELDOUT_SIZE, split: str = "heldout") -> str:
    """The shapes-fine oracle accuracy table of docs/world.md (the shapes world's degradations), as text."""
    from .oracle import FineOracle

    keys = FineOracle.keys
    lines = [f"{'condition':<22} " + " ".join(f"{k:>10}" for k in keys)]
    for name, blur, noise in CONDITIONS:
        acc = oracle_accuracy(n, blur=blur, noise=noise, split=split)
        lines.append(f"{name:<22} " + " ".join(f"{acc[k]:>10.4f}" for k in keys))
    return "\n".join(lines)
