"""The fixed held-out evaluation set, and the split rule that keeps it out of training.

The split is by attribute *combination*, not by image:
- a two-object scene's identity is ``(shape0, colour0, shape1, colour1, relation)`` in canonical form
  ("right of" and "below" are rewritten as "left of" / "above" with the objects swapped, so "a red
  circle left of a blue square" and "a blue square right of a red circle" are one combination);
  sizes, positions and background are free;
- a one-object scene's identity is ``(shape, colour, size)``.

``HELDOUT_PAIRS`` (192 of the 2,100 canonical pair combinations) and ``HELDOUT_SINGLES`` (8 of the 70
single combinations) are drawn once from a fixed seed; :func:`make_dataset` never shows them.
Item ``i`` of :func:`heldout_set` is a one-object item when ``i % 4 == 3`` (so 25% are), takes the
next combination of its kind in turn, and is drawn from its own generator seeded with
``[HELDOUT_SEED, i]``; any ``n`` up to ``HELDOUT_SIZE`` (512: each pair combination twice, each single 16
times) gives a prefix of the same list. Beyond it the combinations would only repeat: it is refused.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .captions import Spec, caption_spec
from .scenes import (
    BACKGROUNDS,
    COLOURS,
    INVERSE_RELATION,
    SHAPES,
    SIZES,
    Scene,
    pick,
    place_scene,
    sample_scene,
)

HELDOUT_SEED = 20240611
N_PAIRS, N_SINGLES = 192, 8
HELDOUT_SIZE = 512  # items in the held-out set (the whole set); heldout_set(n) refuses a larger n
SAMPLER_SEED_BASE = 1_000_000  # item i is sampled (by a diffusion model) with seed SAMPLER_SEED_BASE + i
VALIDATION_SEED = 424_242  # the validation items' scenes and captions
VALIDATION_SEED_BASE = 3_000_000  # validation item i is sampled with seed VALIDATION_SEED_BASE + i

PairKey = tuple[str, str, str, str, str]
SingleKey = tuple[str, str, str]


@dataclass(frozen=True)
class EvalItem:
    """A held-out prompt, what it asserts, a scene that satisfies it, and the sampler seed to use."""

    prompt: str
    spec: Spec
    scene: Scene
    seed: int


def pick_subset(options: list, k: int, rng: np.random.Generator) -> tuple:
    """``k`` of ``options`` drawn without replacement from one raw double each (shared by the worlds)."""
    keys = rng.random(len(options))
    return tuple(options[i] for i in np.argsort(keys, kind="stable")[:k])  # in random order


def all_pairs() -> list[PairKey]:
    """Every canonical pair combination (shape0, colour0, shape1, colour1, "left of" | "above")."""
    return [
        (s0, c0, s1, c1, rel)
        for s0, c0, s1, c1, rel in itertools.product(SHAPES, COLOURS, SHAPES, COLOURS, ("left of", "above"))
        if c0 != c1
    ]


_rng = np.random.default_rng(HELDOUT_SEED)
HELDOUT_PAIRS: tuple[PairKey, ...] = pick_subset(all_pairs(), N_PAIRS, _rng)
HELDOUT_SINGLES: tuple[SingleKey, ...] = pick_subset(
    list(itertools.product(SHAPES, COLOURS, SIZES)), N_SINGLES, _rng
)
del _rng
_PAIR_SET, _SINGLE_SET = frozenset(HELDOUT_PAIRS), frozenset(HELDOUT_SINGLES)


def canonical(s0, c0, s1, c1, relation: str) -> PairKey:
    """The pair's identity with "right of" / "below" rewritten as "left of" / "above", objects swapped."""
    if relation in ("right of", "below"):
        return (s1, c1, s0, c0, INVERSE_RELATION[relation])
    return (s0, c0, s1, c1, relation)


def fits(key: tuple, stated: tuple) -> bool:
    """Whether a combination agrees with every stated (non-None) attribute."""
    return all(v is None or v == k for k, v in zip(key, stated, strict=True))


def is_heldout(scene_or_spec: Scene | Spec) -> bool:
    """True if the scene's (or spec's) combination is held out.

    A spec that leaves an identity attribute open counts as held out when some held-out combination
    fits it (so the test is conservative for partial prompts).
    """
    return combination_held_out(scene_or_spec, ("shape", "colour", "size"), _SINGLE_SET, _PAIR_SET)


def combination_held_out(
    scene_or_spec, single_keys: tuple[str, ...], singles: frozenset, pairs: frozenset
) -> bool:
    """The split rule shared by the worlds: a one-object scene's identity is its ``single_keys`` attributes, a
    two-object scene's its canonical pair; open attributes (None) count as held out when a held-out
    combination fits."""
    objs, relation = scene_or_spec.objects, scene_or_spec.relation
    if len(objs) == 1:
        stated = tuple(getattr(objs[0], k) for k in single_keys)
        return any(fits(k, stated) for k in singles)
    if len(objs) != 2 or relation is None:
        return False
    a, b = objs
    stated = canonical(a.shape, a.colour, b.shape, b.colour, relation)
    if None not in stated:
        return stated in pairs
    return any(fits(k, stated) for k in pairs)


def _item(i: int) -> EvalItem:
    rng = np.random.default_rng([HELDOUT_SEED, i])
    background = pick(rng, BACKGROUNDS)
    if i % 4 == 3:
        shape, colour, size = HELDOUT_SINGLES[(i // 4) % N_SINGLES]
        scene = place_scene(rng, [(shape, colour, size)], None, background)
        prompt, spec = caption_spec(scene, rng, p_size=1.0)  # the size is part of a single's identity
    else:
        s0, c0, s1, c1, relation = HELDOUT_PAIRS[(i - i // 4) % N_PAIRS]
        z0, z1 = pick(rng, SIZES), pick(rng, SIZES)
        scene = place_scene(rng, [(s0, c0, z0), (s1, c1, z1)], relation, background)
        prompt, spec = caption_spec(scene, rng)
    return EvalItem(prompt, spec, scene, SAMPLER_SEED_BASE + i)


@functools.lru_cache(maxsize=4)
def _items(n: int) -> tuple[EvalItem, ...]:
    return tuple(_item(i) for i in range(n))


def first_items(n: int, size: int | None, items: Callable[[int], tuple[EvalItem, ...]]) -> list[EvalItem]:
    """The first ``n`` items of a fixed list (``items(n)``), refused beyond its ``size`` (None: unbounded)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if size is not None and n > size:
        raise ValueError(f"the held-out set has {size} prompts; asked for {n}")
    return list(items(n))


def validation_items(
    n: int,
    seed: int,
    seed_base: int,
    sample: Callable[[np.random.Generator], Any],
    caption: Callable[[Any, np.random.Generator], tuple[str, Any]],
    keep: Callable[[Any], bool],
) -> tuple[EvalItem, ...]:
    """``n`` validation items of a world: scenes drawn from generator ``seed`` that ``keep`` accepts, captioned,
    sampled with seeds ``seed_base + i`` (shared by the worlds)."""
    rng = np.random.default_rng(seed)
    items: list[EvalItem] = []
    while len(items) < n:
        scene = sample(rng)
        if not keep(scene):
            continue
        prompt, spec = caption(scene, rng)
        items.append(EvalItem(prompt, spec, scene, seed_base + len(items)))
    return tuple(items)


def heldout_set(n: int = HELDOUT_SIZE) -> list[EvalItem]:
    """The first ``n`` held-out items (the same list on every call, machine and numpy version); at most
    ``HELDOUT_SIZE``."""
    return first_items(n, HELDOUT_SIZE, _items)


@functools.lru_cache(maxsize=4)
def _validation_items(n: int) -> tuple[EvalItem, ...]:
    keep = lambda scene: not is_heldout(scene)  # noqa: E731
    return validation_items(n, VALIDATION_SEED, VALIDATION_SEED_BASE, sample_scene, caption_spec, keep)


def validation_set(n: int = 512) -> list[EvalItem]:
    """``n`` items to choose methods and recipes on, so that the held-out set stays a clean test.

    Fresh scenes of the training distribution (never a held-out combination), captioned by the same grammar,
    from their own generator, with sampler seeds of their own; any ``n`` gives a prefix of the same list.
    """
    return first_items(n, None, _validation_items)


def oracle_accuracy(
    n: int = 512, *, blur: float = 0.0, noise: float = 0.0, seed: int = 0
) -> dict[str, float]:
    """Mean oracle scores of held-out renders against their own prompts (optionally blurred / noised)."""
    from .oracle import Oracle
    from .render import degrade, render

    items = heldout_set(n)
    images = render([it.scene for it in items])
    if blur or noise:
        images = degrade(images, blur=blur, noise=noise, seed=seed)
    return {k: float(v.mean()) for k, v in Oracle().score(images, [it.spec for it in items]).items()}


CONDITIONS = (  # (name, blur sigma in px, noise std in [0, 1] units) of docs/world.md's table
    ("clean", 0.0, 0.0),
    ("blur 0.7", 0.7, 0.0),
    ("noise 0.05", 0.0, 0.05),
    ("blur 0.7 + noise 0.05", 0.7, 0.05),
    ("blur 1.0", 1.0, 0.0),
    ("noise 0.1", 0.0, 0.1),
    ("blur 1.0 + noise 0.08", 1.0, 0.08),
)


def oracle_table(n: int = 512) -> str:
    """The oracle accuracy table of docs/world.md, as text."""
    keys = ("count", "shape", "colour", "size", "relation", "background", "all")
    lines = [f"{'condition':<22} " + " ".join(f"{k:>10}" for k in keys)]
    for name, blur, noise in CONDITIONS:
        acc = oracle_accuracy(n, blur=blur, noise=noise)
        lines.append(f"{name:<22} " + " ".join(f"{acc[k]:>10.4f}" for k in keys))
    return "\n".join(lines)
