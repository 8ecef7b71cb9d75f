"""The sampling methods, one entry each: how the stock pipeline is called, what a step costs, and the method's
one setting (its knob).

Every method hands the stock diffusers pipeline its own ``prompt_embeds`` (docs/method.md, "Sampling"):
- ``unguided``: c, guidance_scale=1 (one network evaluation per step);
- ``cfg``:      c and c_neg, guidance_scale=w (two evaluations per step);
- ``scaling``:  c' = s * c (the paper's training-free baseline; token 0 kept), guidance_scale=1;
- ``dice``:     c' = c + alpha * r(c, c_neg), guidance_scale=1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..families import Cond, Family
from ..sharpener import Sharpener


def sharpen_cond(fam: Family, sharpener: Sharpener, cond: Cond, neg: Cond, alpha: float = 1.0) -> Cond:
    """c' = c + alpha * r(c, c_neg) on an encoded batch (docs/method.md, "The method")."""
    sharpener.to(cond.tokens.device)
    with torch.no_grad():
        tokens = sharpener.edit(cond.tokens, neg.tokens, alpha, neg_mask=fam.key_mask(neg))
    return fam.edited(cond, tokens, sharpener.config.get("mask_mode", "keep"))


def scale_cond(cond: Cond, s: float, keep_first: bool = True) -> Cond:
    """The scaling baseline c' = s * c; token 0 is kept when the family copies it (CLIP's <SOS> state is the
    same for every prompt), and scaled too where it is a real token (T5)."""
    t = cond.tokens
    if not keep_first:
        return cond.with_tokens(s * t)
    return cond.with_tokens(torch.cat([t[:, :1], s * t[:, 1:]], dim=1))


def _unguided(pipe: Any, fam: Family, cond: Cond, neg: Cond, sharpener: Sharpener | None, value: Any) -> dict:
    return {**fam.pipeline_kwargs(pipe, cond), "guidance_scale": 1.0}


def _cfg(pipe: Any, fam: Family, cond: Cond, neg: Cond, sharpener: Sharpener | None, w: float) -> dict:
    return {**fam.pipeline_kwargs(pipe, cond, neg), "guidance_scale": w}


def _scaling(pipe: Any, fam: Family, cond: Cond, neg: Cond, sharpener: Sharpener | None, s: float) -> dict:
    return {**fam.pipeline_kwargs(pipe, scale_cond(cond, s, fam.copy_first_token)), "guidance_scale": 1.0}


def _dice(pipe: Any, fam: Family, cond: Cond, neg: Cond, sharpener: Sharpener | None, alpha: float) -> dict:
    if sharpener is None:
        raise InputError("method 'dice' needs a sharpener (Sharpener.from_pretrained(...)).")
    sharp = sharpen_cond(fam, sharpener, cond, neg, alpha)
    return {**fam.pipeline_kwargs(pipe, sharp), "guidance_scale": 1.0}


@dataclass(frozen=True)
class Method:
    """One sampling method. ``kwargs(pipe, fam, cond, neg, sharpener, value)`` gives the stock pipeline's
    keyword arguments for an encoded batch, ``value`` being the setting of the method's knob."""

    name: str
    kwargs: Callable[..., dict[str, Any]]
    passes: int = 1  # network evaluations per step (CFG runs c and c_neg)
    knob: str | None = None  # generate()'s keyword for the method's setting (None: no setting)
    short: str = ""  # the knob in tables and plot legends: w=5, s=1.2, alpha=1
    tag: str = ""  # the knob in `dice eval` image folder names: cfg-w5, scaling-s1.2, dice-a1
    # the knob's smallest setting, where the method runs one pass per step: diffusers turns CFG off at w <= 1
    # (w = 1 is conditional sampling, exactly; CFG at w < 1 cannot be made through the stock pipeline)
    floor: float | None = None
    uses: tuple[str, ...] = ()  # generate()'s other keywords the method reads (all others it ignores)

    def passes_at(self, value: Any = None) -> int:
        """Network evaluations per step at the knob's setting ``value``."""
        return 1 if self.floor is not None and value is not None and value <= self.floor else self.passes

    def nfe(self, steps: int, value: Any = None) -> int:
        """Network evaluations of one image sampled in ``steps`` steps at the knob's setting ``value``."""
        return steps * self.passes_at(value)

    def check(self, value: Any) -> None:
        """Refuse a setting of the knob that the method cannot make: NaN or infinite, or below its floor."""
        if self.knob is None or value is None:
            return
        if not math.isfinite(value):
            raise InputError(f"{self.knob} of method '{self.name}' must be a finite number (got {value}).")
        if self.floor is not None and value < self.floor:
            raise InputError(
                f"{self.knob}={value:g} is below {self.floor:g}: the stock pipeline turns {self.name} off there "
                f"and would sample something else. Use {self.knob} >= {self.floor:g}."
            )

    def setting(self, **values: Any) -> dict[str, Any]:
        """``{knob: value}`` picked from the values of every knob (empty for a method without one)."""
        return {self.knob: values[self.knob]} if self.knob else {}


TABLE: dict[str, Method] = {
    m.name: m
    for m in (
        Method("unguided", _unguided),
        Method(
            "cfg",
            _cfg,
            passes=2,
            knob="guidance_scale",
            short="w",
            tag="w",
            floor=1.0,
            uses=("negative_prompt",),
        ),
        Method("scaling", _scaling, knob="scale", short="s", tag="s"),
        Method("dice", _dice, knob="alpha", short="alpha", tag="a", uses=("sharpener", "negative_prompt")),
    )
}
METHODS = tuple(TABLE)


def lookup(name: str) -> Method:
    """The method called ``name``; a clear error for any other name."""
    if name not in TABLE:
        raise InputError(f"Unknown method '{name}'. Choose one of: {', '.join(METHODS)}.")
    return TABLE[name]
