"""What the app computes, without the web page: one request -> unguided, CFG, the training-free peer (CFG on the
first steps only) and DICE images of the same seed.

Every image comes from ``generate()`` (the one sampling path), one call per method, so each carries its own NFE
and measured seconds. On a model of one of the worlds (shapes, shapes-fine) the oracle's verdict comes with each image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..metrics.world import alignment, world_specs
from ..sampling.checks import NOT_TEXT
from ..sampling.generate import Sample, generate
from ..sampling.methods import CFG, PEER_STOP, Dice, Method, Unguided
from ..sharpener import Sharpener

SHOWN = ("unguided", "cfg", "peer", "dice")  # the panels side by side, in this order
CHECKED = ("count", "shape", "colour", "size", "relation", "background")  # named in a verdict when wrong


@dataclass(frozen=True)
class Limits:
    """Accepted inputs: the page's sliders show these bounds and every request is checked against them (an API
    call can send anything)."""

    steps: tuple[int, int] = (1, 100)
    guidance_scale: tuple[float, float] = (1.0, 20.0)
    alpha: tuple[float, float] = (0.0, 4.0)
    seed: tuple[int, int] = (0, 2**32 - 1)
    prompt_chars: int = 1000


LIMITS = Limits()


@dataclass(frozen=True)
class Request:
    """One comparison: a prompt and the knobs of the three methods (the defaults are the page's)."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 5.0  # CFG's w
    alpha: float | None = None  # DICE's edit strength; None: the sharpener's recorded settings

    def checked(self, limits: Limits = LIMITS) -> Request:
        """This request with text stripped and integral numbers as ints; an ``InputError`` saying what to
        change for any value outside ``limits``."""
        prompt, negative = as_text(self.prompt, "prompt"), as_text(self.negative_prompt, "negative prompt")
        if not prompt:
            raise InputError("The prompt is empty: type what the image should show.")
        for name, text in (("prompt", prompt), ("negative prompt", negative)):
            if len(text) > limits.prompt_chars:
                raise InputError(f"The {name} has {len(text)} characters; the most is {limits.prompt_chars}.")
            if m := NOT_TEXT.search(text):  # a lone surrogate or NUL: the tokenizer's TypeError otherwise
                raise InputError(
                    f"The {name} holds U+{ord(m[0]):04X} after {text[: m.start()][-30:]!r}, which is not a "
                    "character; delete it or type the text again."
                )
        values = {
            "seed": number(self.seed, "seed", whole=True),
            "steps": number(self.steps, "steps", whole=True),
            "guidance_scale": number(self.guidance_scale, "guidance scale"),
            "alpha": None if self.alpha is None else number(self.alpha, "alpha"),
        }
        for name, v in values.items():
            if v is None:
                continue
            lo, hi = getattr(limits, name)
            if not (math.isfinite(v) and lo <= v <= hi):
                raise InputError(f"{name.replace('_', ' ')} must be between {lo} and {hi} (got {v}).")
        return Request(prompt, negative, **values)


def as_text(value: Any, name: str) -> str:
    """``value`` stripped ("" for None); an ``InputError`` for anything but text (an API call can send any JSON)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"The {name} must be text (got {type(value).__name__}).")
    return value.strip()


def number(value: Any, name: str, whole: bool = False) -> float | int:
    """``value`` as a float (an int when ``whole``: 7.0 -> 7); an ``InputError`` for text, None, or 7.5 when a
    whole number is needed."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        kind = "a whole number" if whole else "a number"
        raise InputError(f"{name} must be {kind} (got {value!r}).") from None
    if not whole:
        return f
    if not f.is_integer():
        raise InputError(f"{name} must be a whole number (got {value!r}).")
    return int(f)


@dataclass
class Shot:
    """One panel's image of a comparison (``key``: its entry of ``SHOWN``; ``method``: what made it), and the
    oracle's per-attribute scores of it (None: not judged)."""

    key: str
    method: Method
    sample: Sample
    scores: dict[str, float] | None = None

    @property
    def verdict(self) -> str | None:
        """ "correct", or the attributes the oracle found wrong ("wrong count" alone when the objects are not
        the ones asked for: then the other attributes say nothing); None when not judged."""
        if self.scores is None:
            return None
        if self.scores["all"] == 1:
            return "correct"
        wrong = ["count"] if self.scores["count"] < 1 else [k for k in CHECKED if self.scores[k] < 1]
        return "wrong " + ", ".join(wrong)

    @property
    def caption(self) -> str:
        """``method settings: NFE, seconds[, oracle: verdict]``, the label under the image."""
        s = self.sample
        text = f"{self.method.label}: {s.nfe} NFE, {s.seconds:.2f} s"
        return text + (f", oracle: {self.verdict}" if self.verdict else "")

    def record(self) -> dict[str, Any]:
        s = self.sample
        return {
            "method": self.key,
            "setting": self.method.setting,
            "nfe": s.nfe,
            "seconds": round(s.seconds, 4),
            "oracle": self.verdict,
            "oracle_scores": self.scores,
            **s.params,
        }


def judge(images: list, prompt: str, oracle: Any) -> list[dict[str, float] | None]:
    """The oracle's 0/1 score of each attribute (and "all") of each image of ``prompt``; None for each image
    when the prompt is outside the world's grammar."""
    specs = world_specs([prompt], oracle.world)
    if specs is None:
        return [None] * len(images)
    scores = alignment(np.stack(images), specs * len(images), oracle)
    return [{k: float(v[i]) for k, v in scores.items()} for i in range(len(images))]


def panels(sharpener: Sharpener, r: Request) -> dict[str, Method]:
    """The method of each panel of ``SHOWN`` for request ``r``, as it acts at ``r.steps`` (``Method.acting``: an
    interval with no guided step there is labelled by what runs). DICE: the sharpener's recorded settings, unless
    the request's alpha differs from the recorded one (the page's slider starts there): then that alpha, for
    images with and without a negative prompt."""
    dice = Dice(sharpener)
    if r.alpha is not None and r.alpha != dice.alpha:
        dice = Dice(sharpener, alpha=r.alpha)
    methods = {
        "unguided": Unguided(),
        "cfg": CFG(r.guidance_scale),
        "peer": CFG(r.guidance_scale, stop=PEER_STOP),
        "dice": dice,
    }
    return {k: m.acting(r.steps) for k, m in methods.items()}


def compare(pipe: Any, sharpener: Sharpener, request: Request, *, oracle: Any = None) -> list[Shot]:
    """Unguided, CFG, peer and DICE images of ``request`` (checked first) from the same seed, in ``SHOWN`` order.
    With an ``oracle`` (of the model's world: ``metrics.world.world_of``) each image gets its verdict."""
    r = request.checked()
    knobs = dict(seeds=[r.seed], negative_prompt=r.negative_prompt or None, num_inference_steps=r.steps)
    methods = panels(sharpener, r)
    samples = [
        s for k in SHOWN for s in generate(pipe, [r.prompt], method=methods[k], progress=False, **knobs)
    ]
    scores = (
        judge([s.image for s in samples], r.prompt, oracle) if oracle is not None else [None] * len(SHOWN)
    )
    return [Shot(k, methods[k], s, v) for k, s, v in zip(SHOWN, samples, scores, strict=True)]
