"""Captions of the shapes world: a small grammar with paraphrases, its generator and its parser.

Grammar (words are lower-case, separated by spaces; a final "." is allowed)::

    caption    := [prefix] object [[copula] relation object] [background]
    prefix     := "there is" | "a picture of"
    copula     := "is"                       (only without a prefix, only before a relation)
    object     := ("a" | "an") [size] [colour] shape
    size       := "small" | "little" | "large" | "big"
    relation   := "to the left of" | "left of" | "to the right of" | "right of"
                | "above" | "over" | "below" | "under"
    background := "on a" bgcolour "background" | "on" bgcolour

The generator always names colour and shape, names sizes and the background only sometimes, and
may mention the two objects in either order (inverting the relation). A :class:`Spec` says exactly
what a caption asserts; ``None`` leaves an attribute open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .scenes import BACKGROUNDS, COLOURS, INVERSE_RELATION, RELATIONS, SHAPES, Scene, pick

SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
PREFIXES = ("", "there is", "a picture of")
P_SIZE = 0.7  # chance that an object's size is named
P_BACKGROUND = 0.6  # chance that the background is named
P_COPULA = 0.3  # chance of "... is left of ..." when there is no prefix
P_SWAP = 0.5  # chance of naming the second object first (with the inverse relation)

_SIZE_OF_WORD = {w: s for s, words in SIZE_WORDS.items() for w in words}
_PHRASES = sorted(
    ((tuple(p.split()), rel) for rel, ps in RELATION_PHRASES.items() for p in ps), key=lambda t: -len(t[0])
)
VOCAB: tuple[str, ...] = tuple(
    sorted(
        {"a", "an", "is", "on", "background"}
        | {w for p in PREFIXES for w in p.split()}
        | set(_SIZE_OF_WORD)
        | set(COLOURS)
        | set(SHAPES)
        | {w for ps in RELATION_PHRASES.values() for p in ps for w in p.split()}
        | set(BACKGROUNDS)
    )
)


@dataclass(frozen=True)
class ObjSpec:
    """What a caption says about one object; ``None`` = left open."""

    shape: str | None
    colour: str | None
    size: str | None


@dataclass(frozen=True)
class Spec:
    """What a caption asserts: objects in caption order, their relation, the background."""

    objects: tuple[ObjSpec, ...]
    relation: str | None
    background: str | None


def spec_of(scene: Scene) -> Spec:
    """The full spec of a scene: every attribute stated."""
    objects = tuple(ObjSpec(o.shape, o.colour, o.size) for o in scene.objects)
    return Spec(objects, scene.relation, scene.background)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(o: ObjSpec, rng: np.random.Generator) -> str:
    words = [pick(rng, SIZE_WORDS[o.size])] if o.size else []
    words += [w for w in (o.colour, o.shape) if w]
    return " ".join([_article(words[0]), *words])


def caption_spec(
    scene: Scene, rng: np.random.Generator, *, p_size: float = P_SIZE, p_background: float = P_BACKGROUND
) -> tuple[str, Spec]:
    """A random paraphrase of the scene and exactly what it asserts.

    ``p_size`` / ``p_background``: chance that each object's size / the background is named.
    """
    objects = [ObjSpec(o.shape, o.colour, o.size if rng.random() < p_size else None) for o in scene.objects]
    relation = scene.relation
    if len(objects) == 2 and rng.random() < P_SWAP:
        objects.reverse()
        relation = INVERSE_RELATION[relation]
    background = scene.background if rng.random() < p_background else None
    prefix = pick(rng, PREFIXES)
    parts = [prefix] if prefix else []
    parts.append(_noun_phrase(objects[0], rng))
    if relation is not None:
        if not prefix and rng.random() < P_COPULA:
            parts.append("is")
        parts += [pick(rng, RELATION_PHRASES[relation]), _noun_phrase(objects[1], rng)]
    if background is not None:
        parts.append(f"on a {background} background" if rng.random() < 0.5 else f"on {background}")
    return " ".join(parts), Spec(tuple(objects), relation, background)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random paraphrase of the scene (see :func:`caption_spec` for what it asserts)."""
    return caption_spec(scene, rng)[0]


class CaptionParser:
    """A recursive-descent parser of the shapes world's grammar; a world that extends the grammar subclasses it
    (its ``object``, ``after_background`` and ``spec``)."""

    def __init__(self, text: str):
        self.text = text
        self.words = text.strip().lower().removesuffix(".").split()
        self.pos = 0

    def fail(self, expected: str) -> ValueError:
        found = f"{self.words[self.pos]!r} (word {self.pos + 1})" if self.pos < len(self.words) else "the end"
        return ValueError(f"cannot parse caption {self.text!r}: expected {expected}, found {found}")

    def peek(self, n: int = 1) -> tuple[str, ...]:
        return tuple(self.words[self.pos : self.pos + n])

    def take(self, table: dict[str, Any]) -> Any:
        """The value of the next word in ``table`` (consumed), or None (nothing consumed)."""
        if self.peek() and self.peek()[0] in table:
            self.pos += 1
            return table[self.words[self.pos - 1]]
        return None

    def article(self) -> None:
        if self.peek() not in (("a",), ("an",)):
            raise self.fail("'a' or 'an'")
        self.pos += 1

    def shape(self) -> str:
        shape = self.take({s: s for s in SHAPES})
        if shape is None:
            raise self.fail(f"a shape ({', '.join(SHAPES)})")
        return shape

    def object(self) -> ObjSpec:
        self.article()
        size = self.take(_SIZE_OF_WORD)
        colour = self.take({c: c for c in COLOURS})
        return ObjSpec(self.shape(), colour, size)

    def relation(self) -> str | None:
        for phrase, rel in _PHRASES:
            if self.peek(len(phrase)) == phrase:
                self.pos += len(phrase)
                return rel
        return None

    def background(self) -> str | None:
        if self.peek() != ("on",):
            return None
        self.pos += 1
        long_form = self.peek() == ("a",)
        self.pos += long_form
        background = self.take({b: b for b in BACKGROUNDS})
        if background is None:
            raise self.fail(f"a background colour ({', '.join(BACKGROUNDS)})")
        if long_form:
            if self.peek() != ("background",):
                raise self.fail("'background'")
            self.pos += 1
        return background

    def after_background(self) -> Any:
        """What a world's grammar allows after the background (nothing in the shapes world)."""
        return None

    def ending(self, relation: str | None) -> str:
        """What could have come where a caption did not end."""
        return "a relation, 'on <background>' or the end" if relation is None else "the end"

    def spec(self, objects: list, relation: str | None, background: str | None, extra: Any) -> Any:
        return Spec(tuple(objects), relation, background)

    def parse(self) -> Any:
        prefix = next((p for p in PREFIXES if p and self.peek(len(p.split())) == tuple(p.split())), "")
        self.pos += len(prefix.split())
        objects = [self.object()]
        copula = not prefix and self.peek() == ("is",)
        self.pos += copula
        relation = self.relation()
        if relation is not None:
            objects.append(self.object())
        elif copula:
            raise self.fail("a relation (" + ", ".join(RELATIONS) + ")")
        background = self.background()
        extra = self.after_background()
        if self.pos < len(self.words):
            raise self.fail(self.ending(relation))
        return self.spec(objects, relation, background, extra)


def parse(text: str) -> Spec:
    """Parse a caption of the grammar above; raise ValueError naming the first word that does not fit."""
    return CaptionParser(text).parse()
