"""The sampling methods as objects that hold their settings (the idea of diffusers' guiders): each knows what the
stock pipeline is called with, what it does at each step, what a step costs, how it is spelled and labelled, and
checks its settings once, when it is made.

Every method hands the stock diffusers pipeline its own ``prompt_embeds`` (docs/method.md, "Sampling"):
- ``Unguided()``: c, guidance_scale=1 (one network evaluation per step);
- ``CFG(guidance_scale=5, start=0, stop=1)``: c and c_neg, guidance_scale=w (two evaluations per guided step);
- ``Scaling(scale=1.2)``: c' = s * c (the paper's training-free baseline; token 0 kept), guidance_scale=1;
- ``Dice(sharpener, alpha=None, start=None, stop=None)``: c' = c + alpha * r(c, c_neg), guidance_scale=1;
- ``AdaptiveGuidance(guidance_scale=5, threshold=0.99)``: CFG until the two predictions agree, then c alone.
More methods live in modules of their own (``sampling/apg.py``); ``sampling/registry.py`` lists them all.

Step intervals (docs/method.md, "Where guidance acts"): ``start`` and ``stop`` are fractions of the steps a
pipeline call runs, and step i (0-based, of N) is guided when ``int(start * N) <= i < int(stop * N)`` (diffusers'
guider rule). What a method does at a step is its ``Guide`` (``sampling/steps.py``): outside its interval a CFG
step runs the prompt alone, one pass, and a DICE step runs the plain prompt c instead of c'.

Methods are spelled ``name[:key=value,...]`` on the command line (``registry.parse_method``):
``cfg:w=5,stop=0.1``, ``dice:alpha=2,stop=0.1``, ``ag:threshold=0.995``.
"""

from __future__ import annotations

import logging
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch

from ..errors import InputError
from ..families import Cond, Family
from ..sharpener import Sharpener
from .steps import Guide, IntervalGuide, Plan, Predictions, Step, guided_steps

log = logging.getLogger(__name__)

# the best cheap training-free peer measured on the shapes world: CFG on the first 10% of the steps (2 of 20),
# then the prompt alone (BENCHMARKS.md, "Where guidance acts"); every table shows it beside DICE
PEER_STOP = 0.1
DEFAULT_THRESHOLD = 0.99  # AdaptiveGuidance: the cosine above which guidance stops (ours; tools use 0.99-1)


def shown(value: float) -> str:
    """A setting as messages, labels and spellings print it: every digit it has (``0.9999999``, never a rounded
    ``1`` that would contradict the message), without a trailing ``.0``."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def sharpen_cond(
    fam: Family,
    sharpener: Sharpener,
    cond: Cond,
    neg: Cond,
    alpha: float = 1.0,
    t: torch.Tensor | None = None,
) -> Cond:
    """c' = c + alpha * r(c, c_neg) on an encoded batch (docs/method.md, "The method").

    Args:
        fam: the pipeline's family (``family_of(pipe)``): it knows the key mask and how c' is carried.
        sharpener: the network r.
        cond: the encoded prompts c.
        neg: the encoded negative prompts c_neg (batch 1 or the batch of ``cond``).
        alpha: strength of the edit.
        t: (B,) timesteps, for a sharpener whose edit depends on it (``time_edges``, ``time_embed``); None
            otherwise.
    """
    if t is None and sharpener.time_dependent:
        raise InputError(
            f"This sharpener's edit depends on the timestep ({time_option(sharpener)}): it has no one edit per "
            "prompt. Sample with it through generate(method=Dice(sharpener)), enable_dice() or `dice sample`, "
            "which edit at each step's timestep."
        )
    sharpener.to(cond.embeds.device)
    with torch.no_grad():
        embeds = sharpener.edit(cond.embeds, neg.embeds, alpha, neg_mask=fam.key_mask(neg), t=t)
    if not torch.isfinite(embeds).all():
        raise InputError(
            f"The sharpened embedding is not finite at alpha={shown(alpha)}: the edit overflows "
            f"{str(embeds.dtype).removeprefix('torch.')}. Use a smaller alpha."
        )
    return fam.edited(cond, embeds, sharpener.config.get("mask_mode", "keep"))


def time_option(sharpener: Sharpener) -> str:
    """How a sharpener's edit depends on the timestep, for messages: ``time_embed=sinusoidal``."""
    if sharpener.config.get("time_edges"):
        return f"time_edges={sharpener.config['time_edges']}"
    return f"time_embed={sharpener.config.get('time_embed', 'none')}"


def scale_cond(cond: Cond, s: float, keep_first: bool = True) -> Cond:
    """The scaling baseline c' = s * c; token 0 is kept when the family copies it (CLIP's <SOS> state is the
    same for every prompt), and scaled too where it is a real token (T5)."""
    t = cond.embeds
    if not keep_first:
        return cond.with_embeds(s * t)
    return cond.with_embeds(torch.cat([t[:, :1], s * t[:, 1:]], dim=1))


def finite(owner: str, name: str, value: Any) -> float:
    """``value`` as a float: any real number (Python's or NumPy's), finite; a one-line ``InputError`` else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{owner}: {name} must be a number (got {value!r}).")
    if not math.isfinite(value):
        raise InputError(f"{owner}: {name} must be a finite number (got {value}).")
    return float(value)


def check_interval(owner: str, start: Any, stop: Any, names: tuple[str, str] = ("start", "stop")) -> None:
    start, stop = finite(owner, names[0], start), finite(owner, names[1], stop)
    if not (0.0 <= start <= 1.0 and 0.0 <= stop <= 1.0):
        raise InputError(
            f"{owner}: {names[0]} and {names[1]} are fractions of the steps, in [0, 1] (got {shown(start)}, "
            f"{shown(stop)})."
        )
    if start >= stop:
        raise InputError(
            f"{owner}: {names[0]} ({shown(start)}) must be below {names[1]} ({shown(stop)}); steps i with "
            "int(start*N) <= i < int(stop*N) are guided. For no guided step at all use Unguided() (method "
            "'unguided')."
        )


def interval_text(start: float, stop: float) -> str:
    return "" if (start, stop) == (0.0, 1.0) else f" on [{shown(start)},{shown(stop)})"


def interval_tag(start: float, stop: float) -> str:
    return "" if (start, stop) == (0.0, 1.0) else f"-i{start:g}-{stop:g}"


class Method(ABC):
    """One sampling method with its settings. Subclasses are frozen dataclasses, checked when made; a subclass
    in a module of its own joins the others by its line in ``sampling/registry.py``."""

    name: ClassVar[str]  # the shortcut (``method="cfg"``) and the first part of its spelling
    keys: ClassVar[dict[str, str]] = {}  # spelled key -> field (``w`` -> ``guidance_scale``)
    uses_negative: ClassVar[bool] = False  # a negative prompt reaches it (as c_neg)
    example: ClassVar[str] = ""  # settings shown in the help (default: each key at its default)

    @classmethod
    def create(cls, settings: dict[str, Any], sharpener: Sharpener | None = None) -> Method:
        """An object of this class with ``settings`` (fields); ``sharpener`` is for the methods that take one."""
        return cls(**settings)

    @abstractmethod
    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        """The stock pipeline's keyword arguments for an encoded batch, and the ``Guide`` of its steps.
        ``negative``: which rows have a negative prompt (DICE may sample those with settings of their own)."""

    def nfe(self, steps: int) -> int:
        """Network evaluations of one image sampled in ``steps`` first-order steps (``AdaptiveGuidance``: the
        most; ``Sample.nfe`` holds what each image really took, counted as it ran)."""
        return steps

    def acting(self, steps: int) -> Method:
        """The method as it acts at ``steps`` steps: an interval that gives no guided step there becomes what
        runs instead (CFG on no step is unguided sampling). ``generate`` warns and labels by it."""
        return self

    @property
    def setting(self) -> str:
        """The settings in a table cell: ``w=5 on [0,0.1)``; "-" for none."""
        return "-"

    @property
    def tag(self) -> str:
        """The method and its settings as a folder-safe name: ``cfg-w5-i0-0.1``."""
        return self.name

    @property
    def spec(self) -> str:
        """How the method is spelled (``parse_method`` reads it back): ``cfg:w=5,stop=0.1``."""
        own = {v: k for k, v in self.keys.items()}
        parts = [
            f"{own[f.name]}={shown(getattr(self, f.name))}"
            for f in fields(self)
            if f.name in own and getattr(self, f.name) != f.default
        ]
        return self.name + (":" + ",".join(parts) if parts else "")

    @property
    def params(self) -> dict[str, Any]:
        """The settings for records (samples.jsonl, eval.json): field -> value."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in self.keys.values()}

    @property
    def label(self) -> str:
        """``cfg w=5 on [0,0.1)``: name and settings, for legends and captions."""
        return self.name if self.setting == "-" else f"{self.name} {self.setting}"


@dataclass(frozen=True)
class Unguided(Method):
    """The prompt alone, one pass per step."""

    name: ClassVar[str] = "unguided"

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        return Plan({**fam.pipeline_kwargs(pipe, cond), "guidance_scale": 1.0})


def guidance_scale(owner: str, w: Any) -> float:
    """A CFG-like scale: finite and at least 1 (below 1 the stock pipeline turns CFG off and would sample
    something else)."""
    w = finite(owner, "guidance_scale", w)
    if w < 1.0:
        raise InputError(
            f"{owner}: guidance_scale={shown(w)} is below 1: the stock pipeline turns CFG off there and would "
            "sample something else. Use guidance_scale >= 1."
        )
    return w


class GuidedOnInterval:
    """What the methods that guide at ``guidance_scale`` on the steps of ``[start, stop)`` share (CFG, APG): which
    steps run both halves, the NFE, and what acts where no step is guided (unguided sampling)."""

    guidance_scale: float
    start: float
    stop: float

    def guided(self, steps: int) -> range:
        return guided_steps(self.start, self.stop, steps) if self.guidance_scale > 1 else range(0)

    def nfe(self, steps: int) -> int:
        return steps + len(self.guided(steps))

    def acting(self, steps: int) -> Method:
        return Unguided() if self.guidance_scale > 1 and not self.guided(steps) else self


@dataclass(frozen=True)
class CFG(GuidedOnInterval, Method):
    """Classifier-free guidance at scale w on the steps of [start, stop), the prompt alone elsewhere.

    At ``guidance_scale=1`` the stock pipeline samples the prompt alone with one pass per step (conditional
    sampling, exactly); below 1 it cannot make CFG, so that is refused.

    Args:
        guidance_scale: w in eps_u + w (eps_c - eps_u); at least 1 (spelled ``w``: ``cfg:w=5``).
        start: first guided step, as a fraction of the steps (step i is guided when
            ``int(start*N) <= i < int(stop*N)``).
        stop: end of the guided steps, as a fraction; ``cfg:stop=0.1`` guides the first 10% of the steps.
    """

    guidance_scale: float = 5.0
    start: float = 0.0
    stop: float = 1.0
    name: ClassVar[str] = "cfg"
    keys: ClassVar[dict[str, str]] = {"w": "guidance_scale", "start": "start", "stop": "stop"}
    uses_negative: ClassVar[bool] = True
    example: ClassVar[str] = "w=5,start=0,stop=0.1"

    def __post_init__(self) -> None:
        guidance_scale("CFG", self.guidance_scale)
        check_interval("CFG", self.start, self.stop)

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        kwargs = {**fam.pipeline_kwargs(pipe, cond, neg), "guidance_scale": self.guidance_scale}
        whole = (self.start, self.stop) == (0.0, 1.0)
        return Plan(kwargs, None if whole else IntervalGuide(self.start, self.stop))

    @property
    def setting(self) -> str:
        return f"w={shown(self.guidance_scale)}{interval_text(self.start, self.stop)}"

    @property
    def tag(self) -> str:
        return f"cfg-w{self.guidance_scale:g}{interval_tag(self.start, self.stop)}"


@dataclass(frozen=True)
class Scaling(Method):
    """The paper's training-free baseline: the prompt's embedding scaled, c' = s * c, no guidance.

    Args:
        scale: s, the factor on every token embedding but the first (where the family keeps it).
    """

    scale: float = 1.2
    name: ClassVar[str] = "scaling"
    keys: ClassVar[dict[str, str]] = {"s": "scale"}

    def __post_init__(self) -> None:
        finite("Scaling", "scale", self.scale)

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        scaled = scale_cond(cond, self.scale, fam.copy_first_token)
        if not torch.isfinite(scaled.embeds).all():
            raise InputError(
                f"Scaling: s={shown(self.scale)} makes the embedding overflow "
                f"{str(scaled.embeds.dtype).removeprefix('torch.')}; use a smaller scale."
            )
        return Plan({**fam.pipeline_kwargs(pipe, scaled), "guidance_scale": 1.0})

    @property
    def setting(self) -> str:
        return f"s={shown(self.scale)}"

    @property
    def tag(self) -> str:
        return f"scaling-s{self.scale:g}"


SETTINGS_FILE = "config.json"  # where a sharpener records its sampling settings, under "sampling"
RECORDED_KEYS = {"alpha": 1.0, "start": 0.0, "stop": 1.0}  # the settings recorded, and their defaults


def recorded_entry(entry: Any, where: str) -> dict[str, float]:
    """One recorded entry (``"sampling"`` or its ``"negative"``) checked: an object whose alpha, start and stop
    are finite numbers, the interval inside [0, 1] and not empty; a one-line ``InputError`` naming config.json
    and the key else."""
    fix = f"fix or delete it in the sharpener's {SETTINGS_FILE} (`dice tune` writes it)"
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise InputError(f'{SETTINGS_FILE}: {where} must be an object like {{"alpha": 1.5, "stop": 0.15}} '
                         f"(got {entry!r}); {fix}.")  # fmt: skip
    out = {}
    for k in RECORDED_KEYS:
        if k not in entry:
            continue
        v = entry[k]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise InputError(f"{SETTINGS_FILE}: {where}.{k} must be a finite number (got {v!r}); {fix}.")
        out[k] = float(v)
    start, stop = out.get("start", 0.0), out.get("stop", 1.0)
    if not (0.0 <= start < stop <= 1.0):
        raise InputError(
            f"{SETTINGS_FILE}: {where} records the interval [{shown(start)}, {shown(stop)}), which is not "
            f"inside [0, 1] with start below stop; {fix}."
        )
    return out


def recorded_settings(sharpener: Sharpener) -> dict[str, float]:
    """The sampling settings a sharpener records (``config["sampling"]``: alpha, start, stop), checked where read;
    {} for none. Those of images with a negative prompt: ``recorded_negative``."""
    return recorded_entry(sharpener.config.get("sampling"), '"sampling"')


def recorded_negative(sharpener: Sharpener) -> dict[str, float]:
    """The recorded settings of images with a negative prompt (``config["sampling"]["negative"]``); {} for
    none."""
    entry = sharpener.config.get("sampling")
    return recorded_entry(entry.get("negative") if isinstance(entry, dict) else None, '"sampling"."negative"')


def check_recorded(sharpener: Sharpener) -> None:
    """Refuse a sharpener whose recorded settings cannot be used, the negative ones included (for `dice serve`,
    which checks once at start rather than refusing every request)."""
    recorded_settings(sharpener)
    recorded_negative(sharpener)


@dataclass(frozen=True)
class Dice(Method):
    """DICE: the sharpened prompt c' = c + alpha * r(c, c_neg) on the steps of [start, stop), the plain prompt
    elsewhere; one pass per step. Images with a negative prompt use settings of their own (``neg_alpha``,
    ``neg_start``, ``neg_stop``): a negative prompt acts only through the edit, so on the steps without it the
    negative prompt has no effect at all (on the shapes world the negated colour comes back when the edit stops
    early; docs/method.md, "Where guidance acts").

    Settings left as None come from what the sharpener records (``config["sampling"]``, written by `dice tune`;
    its ``negative`` entry for the ``neg_*`` ones), else alpha=1 on every step (the paper's use). What is given
    wins over everything recorded: an alpha given applies to images with a negative prompt too (unless
    ``neg_alpha`` is given), and a start or stop given makes the whole interval (the other end 0 or 1), for both
    kinds of image (unless ``neg_start``/``neg_stop`` are given). A sharpener whose edit depends on the timestep
    gets its edits computed once per image: one per block of steps (``time_edges``) when planned, or one at each
    step's own timestep (``time_embed``) at the call's first step, for all its steps in one sharpener call. Two
    ``Dice`` are equal when their settings are and their sharpener is the same object.

    Args:
        sharpener: the trained sharpener (``Sharpener.from_pretrained``); required.
        alpha: strength of the edit, c' = c + alpha * r(c, c_neg); 0 is unguided sampling exactly.
        start: first step that samples c', as a fraction of the steps (the guider rule of ``CFG``).
        stop: end of the steps that sample c', as a fraction; after it the plain prompt c runs.
        neg_alpha: ``alpha`` for images with a negative prompt.
        neg_start: ``start`` for images with a negative prompt.
        neg_stop: ``stop`` for images with a negative prompt.
    """

    sharpener: Sharpener | None = field(default=None, repr=False)
    alpha: float | None = None
    start: float | None = None
    stop: float | None = None
    neg_alpha: float | None = None
    neg_start: float | None = None
    neg_stop: float | None = None
    name: ClassVar[str] = "dice"
    keys: ClassVar[dict[str, str]] = {
        k: k for k in ("alpha", "start", "stop", "neg_alpha", "neg_start", "neg_stop")
    }
    uses_negative: ClassVar[bool] = True
    example: ClassVar[str] = "alpha=1,start=0,stop=0.1"

    @classmethod
    def create(cls, settings: dict[str, Any], sharpener: Sharpener | None = None) -> Method:
        return cls(sharpener, **settings)

    def __post_init__(self) -> None:
        if self.sharpener is None:
            raise InputError("method 'dice' needs a sharpener (Sharpener.from_pretrained(...)).")
        if not isinstance(self.sharpener, Sharpener):
            raise InputError(
                f"Dice: sharpener must be a Sharpener (Sharpener.from_pretrained(...)), not "
                f"{type(self.sharpener).__name__}."
            )
        given = {k: finite("Dice", k, getattr(self, k)) for k in self.keys if getattr(self, k) is not None}
        interval = ("start", "stop")
        told = {k: k in given for k in ("alpha", "start", "stop", "neg_alpha", "neg_start", "neg_stop")}
        whole = told["alpha"] and (told["start"] or told["stop"])  # nothing recorded is read then
        own = self.resolve(given, "", {} if whole else recorded_settings(self.sharpener), {})
        neg_told = (told["neg_alpha"] or told["alpha"]) and any(told[k] or told["neg_" + k] for k in interval)
        try:
            neg = self.resolve(given, "neg_", {} if neg_told else recorded_negative(self.sharpener), own)
            problem = None
        except InputError as e:  # acts only on images with a negative prompt: refused there (``plan``)
            neg, problem = own, str(e)
        for k in RECORDED_KEYS:
            object.__setattr__(self, k, own[k])
            object.__setattr__(self, "neg_" + k, neg[k])
        object.__setattr__(self, "_negative_problem", problem)
        from .checks import check_alpha

        for prefix in ("", "neg_"):
            check_alpha(getattr(self, prefix + "alpha"))
            check_interval("Dice", getattr(self, prefix + "start"), getattr(self, prefix + "stop"),
                           (prefix + "start", prefix + "stop"))  # fmt: skip

    @staticmethod
    def resolve(
        given: dict[str, float], prefix: str, recorded: dict[str, float], fallback: dict[str, float]
    ) -> dict[str, float]:
        """alpha, start, stop of one kind of image (``prefix`` "" or "neg_"): what is given for it, else (for
        "neg_") what is given for the plain prompt, else what is recorded, else ``fallback`` (the plain prompt's
        settings) or the defaults. An interval is taken whole from one source."""

        def pick(keys: tuple[str, ...]) -> dict[str, float]:
            sources = [{k: given[prefix + k] for k in keys if prefix + k in given}]
            if prefix:
                sources.append({k: given[k] for k in keys if k in given})
            sources += [{k: recorded[k] for k in keys if k in recorded}, {k: fallback[k] for k in keys
                                                                         if k in fallback}]  # fmt: skip
            chosen = next((s for s in sources if s), {})
            return {k: chosen.get(k, RECORDED_KEYS[k]) for k in keys}

        return pick(("alpha",)) | pick(("start", "stop"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dice):
            return NotImplemented
        return self.sharpener is other.sharpener and (self.settings, self.neg_settings) == (
            other.settings,
            other.neg_settings,
        )

    def __hash__(self) -> int:
        return hash((id(self.sharpener), self.settings, self.neg_settings))

    @property
    def settings(self) -> tuple[float, float, float]:
        return (self.alpha, self.start, self.stop)

    @property
    def neg_settings(self) -> tuple[float, float, float]:
        return (self.neg_alpha, self.neg_start, self.neg_stop)

    def acting(self, steps: int) -> Method:
        empty = [not guided_steps(s, e, steps) for (_, s, e) in (self.settings, self.neg_settings)]
        if not any(empty):
            return self
        if all(empty):
            return Unguided()
        no_edit = {"alpha": 0.0, "start": 0.0, "stop": 1.0}
        plain = no_edit if empty[0] else dict(zip(RECORDED_KEYS, self.settings, strict=True))
        neg = no_edit if empty[1] else dict(zip(RECORDED_KEYS, self.neg_settings, strict=True))
        return replace(self, **plain, **{"neg_" + k: v for k, v in neg.items()})

    def edits(
        self, fam: Family, cond: Cond, neg: Cond, alpha: float, start: float = 0.0, stop: float = 1.0
    ) -> Callable[[Step], Cond]:
        """step -> c' of every row: one edit; or one per block of timesteps of a ``time_edges`` sharpener, all
        computed here at once (one sharpener call for the batch x blocks); or, for a ``time_embed`` sharpener,
        one at each step's timestep, made at the first step for every step of [start, stop) (``StepEdits``)."""
        if self.sharpener.config.get("time_embed", "none") != "none":
            return StepEdits(fam, self.sharpener, cond, neg, alpha, start, stop)
        edges = self.sharpener.config.get("time_edges") or []
        if not edges:
            sharp = sharpen_cond(fam, self.sharpener, cond, neg, alpha)
            return lambda step: sharp
        every = edits_at(fam, self.sharpener, cond, neg, alpha, block_timesteps(edges, cond.embeds.device))
        return lambda step: every[block_of(edges, step.t)]

    def schedule(
        self, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> tuple[Cond | None, Callable[[Step], Cond] | None]:
        """What each row runs on: (one conditioning for every step, None) when nothing changes with the step,
        else (None, step -> conditioning). For ``plan`` and ``sharpen``."""
        rows = torch.tensor(list(negative) if negative is not None else [False] * len(cond), dtype=torch.bool)
        if rows.any() and self._negative_problem:
            raise InputError(self._negative_problem)
        pairs = ((self.settings, ~rows), (self.neg_settings, rows))
        groups = {s: m for s, m in pairs if m.any()}  # settings -> their rows (one entry: the mask is unused)
        if len(groups) == 1 and not self.sharpener.time_dependent:
            ((alpha, start, stop),) = groups
            if (start, stop) == (0.0, 1.0):  # the paper's use: the edit on every step
                return sharpen_cond(fam, self.sharpener, cond, neg, alpha), None
        schedules = [(self.edits(fam, cond, neg, a, s, e), s, e, m) for (a, s, e), m in groups.items()]

        def pick(step: Step) -> Cond:
            out = None
            for edit, s, e, mask in schedules:
                c = edit(step) if step.within(s, e) else cond
                out = c if out is None else Cond.where(mask, c, out)
            return out

        return None, pick

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        fixed, pick = self.schedule(fam, cond, neg, negative)
        if fixed is not None:
            return Plan({**fam.pipeline_kwargs(pipe, fixed), "guidance_scale": 1.0})
        return Plan({**fam.pipeline_kwargs(pipe, cond), "guidance_scale": 1.0}, SwapGuide(fam, pick))

    @property
    def setting(self) -> str:
        text = f"alpha={shown(self.alpha)}{interval_text(self.start, self.stop)}"
        if self.neg_settings != self.settings:
            text += (
                f"; negative prompts: alpha={shown(self.neg_alpha)}"
                f"{interval_text(self.neg_start, self.neg_stop)}"
            )
        return text

    @property
    def tag(self) -> str:
        tag = f"dice-a{self.alpha:g}{interval_tag(self.start, self.stop)}"
        if self.neg_settings != self.settings:
            tag += f"-n{self.neg_alpha:g}{interval_tag(self.neg_start, self.neg_stop)}"
        return tag

    @property
    def spec(self) -> str:  # every setting spelled: recorded ones differ from sharpener to sharpener
        text = f"dice:alpha={shown(self.alpha)},start={shown(self.start)},stop={shown(self.stop)}"
        if self.neg_settings != self.settings:
            text += (
                f",neg_alpha={shown(self.neg_alpha)},neg_start={shown(self.neg_start)},"
                f"neg_stop={shown(self.neg_stop)}"
            )
        return text

    @property
    def params(self) -> dict[str, Any]:
        out = {"alpha": self.alpha, "start": self.start, "stop": self.stop}
        if self.neg_settings != self.settings:
            out |= {"neg_alpha": self.neg_alpha, "neg_start": self.neg_start, "neg_stop": self.neg_stop}
        return out


def edits_at(
    fam: Family, sharpener: Sharpener, cond: Cond, neg: Cond, alpha: float, ts: torch.Tensor
) -> list[Cond]:
    """c' of every row at each timestep of ``ts``, from one sharpener call over (timesteps x rows)."""
    n, k = len(cond), len(ts)
    rows = torch.arange(n, device=cond.embeds.device).repeat(k)
    every = sharpen_cond(fam, sharpener, cond.index(rows), neg.expand(n).index(rows), alpha,
                         t=ts.to(cond.embeds.device).repeat_interleave(n))  # fmt: skip
    return [every.index(slice(i * n, (i + 1) * n)) for i in range(k)]


class StepEdits:
    """c' of every row at each step's own timestep, for a sharpener whose edit is a smooth function of t
    (``time_embed``). At the first step it is asked for, the edits of every planned step inside [start, stop)
    (``Step.plan``) are made in one sharpener call over (steps x rows); a step off the plan (a pipeline that
    calls the denoiser more often than planned) gets one call of its own."""

    def __init__(
        self,
        fam: Family,
        sharpener: Sharpener,
        cond: Cond,
        neg: Cond,
        alpha: float,
        start: float,
        stop: float,
    ) -> None:
        self.fam, self.sharpener, self.cond, self.neg, self.alpha = fam, sharpener, cond, neg, alpha
        self.start, self.stop = start, stop
        self.made: dict[float, Cond] = {}  # timestep -> c'

    def __call__(self, step: Step) -> Cond:
        if not math.isfinite(step.t):
            raise InputError(
                f"this sharpener's edit depends on the timestep ({time_option(self.sharpener)}), and the "
                "pipeline's scheduler gave none for this step (no timesteps set)."
            )
        if step.t not in self.made:
            ts = [step.t]
            if not self.made:  # the first step: every step of the interval at once
                count = step.count
                inside = {t for i, t in step.plan if Step(i, count, t).within(self.start, self.stop)}
                ts = sorted(inside | {step.t}, reverse=True)
            every = edits_at(self.fam, self.sharpener, self.cond, self.neg, self.alpha,
                             torch.tensor(ts, dtype=torch.float32))  # fmt: skip
            self.made.update(zip(ts, every, strict=True))
        return self.made[step.t]


class SwapGuide(Guide):
    """One pass per step on the conditioning ``pick(step)`` (DICE's c' on its steps, the plain c elsewhere)."""

    def __init__(self, fam: Family, pick: Callable[[Step], Cond]) -> None:
        self.fam, self.pick = fam, pick

    def conditioning(self, step: Step) -> dict[str, torch.Tensor]:
        return self.fam.denoiser_inputs(self.pick(step))


@dataclass(frozen=True)
class AdaptiveGuidance(Method):
    """Adaptive Guidance (Castillo et al., arXiv 2312.12487): CFG at scale w until, for an image, the
    conditional and unconditional predictions agree (cosine similarity above ``threshold``), then the prompt
    alone for the rest of its steps. Its NFE differs per image; ``Sample.nfe`` is what each image took.

    The similarity is taken between the x_0 predictions the two outputs imply (our choice: at high noise the
    two noise predictions are nearly parallel for any prompt, so their own cosine would stop guidance at the
    first step).

    Args:
        guidance_scale: w of CFG while it runs; above 1 (spelled ``w``).
        threshold: the cosine similarity in (0, 1] of the two x_0 predictions above which an image stops being
            guided.
    """

    guidance_scale: float = 5.0
    threshold: float = DEFAULT_THRESHOLD
    name: ClassVar[str] = "ag"
    keys: ClassVar[dict[str, str]] = {"w": "guidance_scale", "threshold": "threshold"}
    uses_negative: ClassVar[bool] = True

    def __post_init__(self) -> None:
        w = finite("AdaptiveGuidance", "guidance_scale", self.guidance_scale)
        if w <= 1.0:
            raise InputError(f"AdaptiveGuidance: guidance_scale must be above 1 (got {shown(w)}).")
        th = finite("AdaptiveGuidance", "threshold", self.threshold)
        if not 0.0 < th <= 1.0:
            raise InputError(
                f"AdaptiveGuidance: threshold is a cosine similarity in (0, 1] (got {shown(th)})."
            )

    def nfe(self, steps: int) -> int:
        return 2 * steps

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        kwargs = {**fam.pipeline_kwargs(pipe, cond, neg), "guidance_scale": self.guidance_scale}
        return Plan(kwargs, AdaptiveGuide(pipe.scheduler, len(cond), self.threshold))

    @property
    def setting(self) -> str:
        return f"w={shown(self.guidance_scale)}, cos>{shown(self.threshold)}"

    @property
    def tag(self) -> str:
        return f"ag-w{self.guidance_scale:g}-c{self.threshold:g}"


def implied_x0_cosine(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, abar: float, prediction_type: str
) -> torch.Tensor:
    """Per image, the cosine similarity of the x_0 that two predictions ``a`` and ``b`` imply at noisy input
    ``x`` (x_0 = (x - sqrt(1-abar) eps) / sqrt(abar); for v, x_0 = sqrt(abar) x - sqrt(1-abar) v; the common
    factor drops out of the cosine)."""
    x, a, b = x.float(), a[:, : x.shape[1]].float(), b[:, : x.shape[1]].float()
    s, r = (1.0 - abar) ** 0.5, abar**0.5
    scale_x = r if prediction_type == "v_prediction" else 1.0
    xa, xb = (scale_x * x - s * p for p in (a, b))
    cos = torch.nn.functional.cosine_similarity(xa.flatten(1), xb.flatten(1), dim=1)
    return cos.clamp(max=1.0)  # rounding can put equal predictions a hair above 1: threshold 1 never stops


class AdaptiveGuide(Guide):
    """Adaptive Guidance's steps: CFG for the images still guided, the prompt alone for the others; after each
    guided step, an image whose two predictions agree (``implied_x0_cosine`` above ``threshold``) is guided no
    more."""

    def __init__(self, scheduler: Any, batch: int, threshold: float) -> None:
        self.abars = getattr(scheduler, "alphas_cumprod", None)
        if self.abars is None:
            raise InputError(
                f"AdaptiveGuidance needs a scheduler with alphas_cumprod ({type(scheduler).__name__} has none)."
            )
        self.kind = scheduler.config.get("prediction_type", "epsilon")
        self.threshold = threshold
        self.done = torch.zeros(batch, dtype=torch.bool)

    def guided(self, step: Step) -> torch.Tensor:
        return ~self.done

    def combine(self, step: Step, p: Predictions) -> None:
        abar = float(self.abars[min(int(round(step.t)), len(self.abars) - 1)])
        cos = implied_x0_cosine(p.sample, p.uncond, p.cond, abar, self.kind)
        self.done[p.images[(cos > self.threshold).cpu()]] = True
        return None  # the pipeline's own u + w (c - u)


def block_timesteps(edges: list[float], device: Any) -> torch.Tensor:
    """A representative timestep inside each block that ``edges`` (descending) cut [0, 1000) into."""
    bounds = [1000.0, *edges, 0.0]
    return torch.tensor([(hi + lo) / 2 for hi, lo in zip(bounds, bounds[1:], strict=False)], device=device)


def block_of(edges: list[float], t: float) -> int:
    """The block of timestep ``t``: 0 at t >= edges[0] (the noisiest), len(edges) below the last edge."""
    return sum(t < e for e in edges)
