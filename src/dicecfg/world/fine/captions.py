"""Captions of the shapes-fine world: the shapes world's grammar plus patterns and a count of dots.

Grammar (lower-case words separated by spaces; a final "." is allowed)::

    caption    := [prefix] object [[copula] relation object] [background] [dots]
    object     := ("a" | "an") [size] [fill] [colour] shape [stripes]      (at most one of fill, stripes)
    fill       := "solid" | "hollow" | "outlined"
    stripes    := "with horizontal stripes" | "with vertical stripes"
    dots       := "and" ("no" | "one" | "two" | "three" | "four") ("dot" | "dots")
    prefix, copula, size, relation, background: as in the shapes world (:mod:`dicecfg.world.captions`)

A :class:`FineSpec` says exactly what a caption asserts; ``None`` leaves an attribute open ("and no dots"
asserts zero dots; a caption without a dots phrase leaves their number open).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..captions import PREFIXES, RELATION_PHRASES, SIZE_WORDS, CaptionParser
from ..captions import VOCAB as SHAPES_VOCAB
from ..scenes import COLOURS, INVERSE_RELATION, pick
from .scenes import PATTERNS, FineScene

FILL_WORDS = {"solid": ("solid",), "hollow": ("hollow", "outlined")}
STRIPE_PHRASES = {
    "horizontal stripes": "with horizontal stripes",
    "vertical stripes": "with vertical stripes",
}
COUNT_WORDS = ("no", "one", "two", "three", "four")
P_SIZE = 0.7  # chance that an object's size is named (as in the shapes world)
P_BACKGROUND = 0.6
P_PATTERN = 0.75  # chance that an object's pattern is named
P_DOTS = 0.8  # chance that the number of dots is named when there are some
P_NO_DOTS = 0.5  # chance that "and no dots" is said when there are none
P_COPULA = 0.3
P_SWAP = 0.5

_SIZE_OF_WORD = {w: s for s, words in SIZE_WORDS.items() for w in words}
_FILL_OF_WORD = {w: p for p, words in FILL_WORDS.items() for w in words}
_STRIPES_OF_WORDS = {tuple(ph.split()[1:]): p for p, ph in STRIPE_PHRASES.items()}
VOCAB: tuple[str, ...] = tuple(
    sorted(
        set(SHAPES_VOCAB)
        | set(_FILL_OF_WORD)
        | {w for ph in STRIPE_PHRASES.values() for w in ph.split()}
        | {"and", "dot", "dots", *COUNT_WORDS}
    )
)


@dataclass(frozen=True)
class FineObjSpec:
    """What a caption says about one object; ``None`` = left open."""

    shape: str | None
    colour: str | None
    size: str | None
    pattern: str | None


@dataclass(frozen=True)
class FineSpec:
    """What a caption asserts: objects in caption order, their relation, the background, the dot count."""

    objects: tuple[FineObjSpec, ...]
    relation: str | None
    background: str | None
    dots: int | None


def spec_of(scene: FineScene) -> FineSpec:
    """The full spec of a scene: every attribute stated."""
    objects = tuple(FineObjSpec(o.shape, o.colour, o.size, o.pattern) for o in scene.objects)
    return FineSpec(objects, scene.relation, scene.background, len(scene.dots))


def _noun_phrase(o: FineObjSpec, rng: np.random.Generator) -> str:
    words = [pick(rng, SIZE_WORDS[o.size])] if o.size else []
    if o.pattern in FILL_WORDS:
        words.append(pick(rng, FILL_WORDS[o.pattern]))
    words += [w for w in (o.colour, o.shape) if w]
    if o.pattern in STRIPE_PHRASES:
        words.append(STRIPE_PHRASES[o.pattern])
    return " ".join(["an" if words[0][0] in "aeiou" else "a", *words])


def caption_spec(
    scene: FineScene,
    rng: np.random.Generator,
    *,
    p_size: float = P_SIZE,
    p_background: float = P_BACKGROUND,
    p_pattern: float = P_PATTERN,
    p_dots: float = P_DOTS,
) -> tuple[str, FineSpec]:
    """A random paraphrase of the scene and exactly what it asserts (``p_*``: chance that each is named;
    ``p_dots`` applies to scenes with dots, :data:`P_NO_DOTS` to scenes without)."""
    objects = [
        FineObjSpec(
            o.shape,
            o.colour,
            o.size if rng.random() < p_size else None,
            o.pattern if rng.random() < p_pattern else None,
        )
        for o in scene.objects
    ]
    relation = scene.relation
    if len(objects) == 2 and rng.random() < P_SWAP:
        objects.reverse()
        relation = INVERSE_RELATION[relation]
    background = scene.background if rng.random() < p_background else None
    n = len(scene.dots)
    dots = n if rng.random() < (p_dots if n else P_NO_DOTS) else None
    prefix = pick(rng, PREFIXES)
    parts = [prefix] if prefix else []
    parts.append(_noun_phrase(objects[0], rng))
    if relation is not None:
        if not prefix and rng.random() < P_COPULA:
            parts.append("is")
        parts += [pick(rng, RELATION_PHRASES[relation]), _noun_phrase(objects[1], rng)]
    if background is not None:
        parts.append(f"on a {background} background" if rng.random() < 0.5 else f"on {background}")
    if dots is not None:
        parts.append(f"and {COUNT_WORDS[dots]} {'dot' if dots == 1 else 'dots'}")
    return " ".join(parts), FineSpec(tuple(objects), relation, background, dots)


def caption(scene: FineScene, rng: np.random.Generator) -> str:
    """A random paraphrase of the scene (see :func:`caption_spec` for what it asserts)."""
    return caption_spec(scene, rng)[0]


class _Parser(CaptionParser):
    """The shapes world's parser, with patterns on objects and the dots after the background."""

    def object(self) -> FineObjSpec:
        self.article()
        size = self.take(_SIZE_OF_WORD)
        pattern = self.take(_FILL_OF_WORD)
        colour = self.take({c: c for c in COLOURS})
        shape = self.shape()
        if self.peek() == ("with",):
            stripes = _STRIPES_OF_WORDS.get(self.peek(3)[1:])
            if stripes is None:
                self.pos += 1
                raise self.fail("'horizontal stripes' or 'vertical stripes'")
            if pattern is not None:
                raise self.fail(f"one pattern per object ({pattern!r} was already said)")
            pattern = stripes
            self.pos += 3
        return FineObjSpec(shape, colour, size, pattern)

    def after_background(self) -> int | None:
        if self.peek() != ("and",):
            return None
        self.pos += 1
        n = self.take({w: i for i, w in enumerate(COUNT_WORDS)})
        if n is None:
            raise self.fail("a number of dots (" + ", ".join(COUNT_WORDS) + ")")
        if self.peek() != (("dot",) if n == 1 else ("dots",)):
            raise self.fail("'dot'" if n == 1 else "'dots'")
        self.pos += 1
        return n

    def ending(self, relation: str | None) -> str:
        return "'on <background>', 'and <number> dots' or the end"

    def spec(
        self, objects: list, relation: str | None, background: str | None, extra: int | None
    ) -> FineSpec:
        return FineSpec(tuple(objects), relation, background, extra)


def parse(text: str) -> FineSpec:
    """Parse a caption of the grammar above; raise ValueError naming the first word that does not fit."""
    return _Parser(text).parse()


assert set(PATTERNS) == set(FILL_WORDS) | set(STRIPE_PHRASES)
