"""The sampling methods as objects that hold their settings (the idea of diffusers' guiders): each knows what the
stock pipeline is called with, what a step costs, how it is spelled and labelled, and checks its settings once,
when it is made.

Every method hands the stock diffusers pipeline its own ``prompt_embeds`` (docs/method.md, "Sampling"):
- ``Unguided()``: c, guidance_scale=1 (one network evaluation per step);
- ``CFG(guidance_scale=5, start=0, stop=1)``: c and c_neg, guidance_scale=w (two evaluations per guided step);
- ``Scaling(scale=1.2)``: c' = s * c (the paper's training-free baseline; token 0 kept), guidance_scale=1;
- ``Dice(sharpener, alpha=1, start=0, stop=1)``: c' = c + alpha * r(c, c_neg), guidance_scale=1;
- ``AdaptiveGuidance(guidance_scale=5, threshold=0.99)``: CFG until the two predictions agree, then c alone.

Step intervals (docs/method.md, "Where guidance acts"): ``start`` and ``stop`` are fractions of the steps, and
step i (0-based, of N) is guided when ``int(start * N) <= i < int(stop * N)`` (diffusers' guider rule). Outside
its interval a CFG step runs the prompt alone, one pass (the unconditional half is not computed), and a DICE
step runs the plain prompt c instead of c'. Which step a network call belongs to is read off its timestep
(``sampling/steps.py``), so intervals work on every family, on the fast paths and with second-order schedulers.

Methods are spelled ``name[:key=value,...]`` on the command line (``parse_method``): ``cfg:w=5,stop=0.1``,
``dice:alpha=2,stop=0.1``, ``ag:threshold=0.995``; the bare names are the shortcuts of earlier versions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..errors import InputError
from ..families import Cond, Family
from ..sharpener import Sharpener
from .steps import Plan, Step, adaptive_route, cond_only, swap_cond

# the best cheap training-free peer measured on the shapes world: CFG on the first 10% of the steps (2 of 20),
# then the prompt alone (BENCHMARKS.md, "Where guidance acts"); every table shows it beside DICE
PEER_STOP = 0.1
DEFAULT_THRESHOLD = 0.99  # AdaptiveGuidance: the cosine above which guidance stops (ours; tools use 0.99-1)


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
        t: (B,) timesteps, for a sharpener whose edit depends on it (``time_edges``); None otherwise.
    """
    sharpener.to(cond.embeds.device)
    with torch.no_grad():
        tokens = sharpener.edit(cond.embeds, neg.embeds, alpha, neg_mask=fam.key_mask(neg), t=t)
    return fam.edited(cond, tokens, sharpener.config.get("mask_mode", "keep"))


def scale_cond(cond: Cond, s: float, keep_first: bool = True) -> Cond:
    """The scaling baseline c' = s * c; token 0 is kept when the family copies it (CLIP's <SOS> state is the
    same for every prompt), and scaled too where it is a real token (T5)."""
    t = cond.embeds
    if not keep_first:
        return cond.with_embeds(s * t)
    return cond.with_embeds(torch.cat([t[:, :1], s * t[:, 1:]], dim=1))


def guided_steps(start: float, stop: float, steps: int) -> range:
    """The steps (0-based, of ``steps``) inside the interval [start, stop): diffusers' guider rule."""
    return range(int(start * steps), int(stop * steps))


def _finite(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{owner}: {name} must be a number (got {value!r}).")
    if not math.isfinite(value):
        raise InputError(f"{owner}: {name} must be a finite number (got {value}).")
    return float(value)


def _check_interval(owner: str, start: Any, stop: Any) -> None:
    start, stop = _finite(owner, "start", start), _finite(owner, "stop", stop)
    if not (0.0 <= start <= 1.0 and 0.0 <= stop <= 1.0):
        raise InputError(
            f"{owner}: start and stop are fractions of the steps, in [0, 1] (got {start:g}, {stop:g})."
        )
    if start >= stop:
        raise InputError(
            f"{owner}: start ({start:g}) must be below stop ({stop:g}); steps i with int(start*N) <= i < "
            "int(stop*N) are guided. For no guided step at all use Unguided() (method 'unguided')."
        )


def _interval_text(start: float, stop: float) -> str:
    return "" if (start, stop) == (0.0, 1.0) else f" on [{start:g},{stop:g})"


def _interval_tag(start: float, stop: float) -> str:
    return "" if (start, stop) == (0.0, 1.0) else f"-i{start:g}-{stop:g}"


class Method(ABC):
    """One sampling method with its settings. Subclasses are frozen dataclasses, checked when made."""

    name: ClassVar[str]  # the shortcut (``method="cfg"``) and the first part of its spelling
    keys: ClassVar[dict[str, str]] = {}  # spelled key -> field (``w`` -> ``guidance_scale``)
    uses_negative: ClassVar[bool] = False  # a negative prompt reaches it (as c_neg)

    @abstractmethod
    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        """The stock pipeline's keyword arguments for an encoded batch, and the route of its denoiser calls.
        ``negative``: which rows have a negative prompt (DICE may sample those with settings of their own)."""

    def nfe(self, steps: int) -> int:
        """Network evaluations of one image sampled in ``steps`` first-order steps (``AdaptiveGuidance``: the
        most; ``Sample.nfe`` holds what each image really took, counted as it ran)."""
        return steps

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
            f"{own[f.name]}={getattr(self, f.name):g}"
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


@dataclass(frozen=True)
class CFG(Method):
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

    def __post_init__(self) -> None:
        w = _finite("CFG", "guidance_scale", self.guidance_scale)
        if w < 1.0:
            raise InputError(
                f"CFG: guidance_scale={w:g} is below 1: the stock pipeline turns CFG off there and would "
                "sample something else. Use guidance_scale >= 1."
            )
        _check_interval("CFG", self.start, self.stop)

    @property
    def interval(self) -> bool:
        return (self.start, self.stop) != (0.0, 1.0)

    def guided(self, steps: int) -> range:
        return guided_steps(self.start, self.stop, steps) if self.guidance_scale > 1 else range(0)

    def is_guided(self, step: Step) -> bool:
        return step.index in self.guided(step.count)

    def nfe(self, steps: int) -> int:
        return steps + len(self.guided(steps))

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        kwargs = {**fam.pipeline_kwargs(pipe, cond, neg), "guidance_scale": self.guidance_scale}
        if not self.interval:
            return Plan(kwargs)
        return Plan(
            kwargs, lambda step, call: (call.run(), None) if self.is_guided(step) else cond_only(call)
        )

    @property
    def setting(self) -> str:
        return f"w={self.guidance_scale:g}{_interval_text(self.start, self.stop)}"

    @property
    def tag(self) -> str:
        return f"cfg-w{self.guidance_scale:g}{_interval_tag(self.start, self.stop)}"


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
        _finite("Scaling", "scale", self.scale)

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        scaled = scale_cond(cond, self.scale, fam.copy_first_token)
        return Plan({**fam.pipeline_kwargs(pipe, scaled), "guidance_scale": 1.0})

    @property
    def setting(self) -> str:
        return f"s={self.scale:g}"

    @property
    def tag(self) -> str:
        return f"scaling-s{self.scale:g}"


@dataclass(frozen=True)
class Dice(Method):
    """DICE: the sharpened prompt c' = c + alpha * r(c, c_neg) on the steps of [start, stop), the plain prompt
    elsewhere; one pass per step. Images with a negative prompt use settings of their own (``neg_alpha``,
    ``neg_start``, ``neg_stop``): a negative prompt acts only through the edit, so on the steps without it the
    negative prompt has no effect at all (on the shapes world the negated colour comes back when the edit stops
    early; docs/method.md, "Where guidance acts").

    Settings left as None come from the sampling settings the sharpener records (``config["sampling"]``,
    written by `dice tune`; its ``negative`` entry for the ``neg_*`` ones), else alpha=1 on every step (the
    paper's use); ``neg_*`` default to the prompt's own settings. A sharpener whose edit depends on the timestep
    (``time_edges``) gets one edit per block of steps, all computed once per image.

    Args:
        sharpener: the trained sharpener (``Sharpener.from_pretrained``); required.
        alpha: strength of the edit, c' = c + alpha * r(c, c_neg); 0 is unguided sampling exactly.
        start: first step that samples c', as a fraction of the steps (the guider rule of ``CFG``).
        stop: end of the steps that sample c', as a fraction; after it the plain prompt c runs.
        neg_alpha: ``alpha`` for images with a negative prompt.
        neg_start: ``start`` for images with a negative prompt.
        neg_stop: ``stop`` for images with a negative prompt.
    """

    sharpener: Sharpener | None = field(default=None, compare=False)
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
    DEFAULTS: ClassVar[dict[str, float]] = {"alpha": 1.0, "start": 0.0, "stop": 1.0}

    def __post_init__(self) -> None:
        if self.sharpener is None:
            raise InputError("method 'dice' needs a sharpener (Sharpener.from_pretrained(...)).")
        if not isinstance(self.sharpener, Sharpener):
            raise InputError(
                f"Dice: sharpener must be a Sharpener (Sharpener.from_pretrained(...)), not "
                f"{type(self.sharpener).__name__}."
            )
        recorded = recorded_settings(self.sharpener)
        for k, default in self.DEFAULTS.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, float(recorded.get(k, default)))
        for k in self.DEFAULTS:
            if getattr(self, "neg_" + k) is None:
                object.__setattr__(self, "neg_" + k, float(recorded.get("neg_" + k, getattr(self, k))))
        from .checks import check_alpha

        for prefix in ("", "neg_"):
            check_alpha(_finite("Dice", prefix + "alpha", getattr(self, prefix + "alpha")))
            _check_interval("Dice", getattr(self, prefix + "start"), getattr(self, prefix + "stop"))

    @property
    def settings(self) -> tuple[float, float, float]:
        return (self.alpha, self.start, self.stop)

    @property
    def neg_settings(self) -> tuple[float, float, float]:
        return (self.neg_alpha, self.neg_start, self.neg_stop)

    def edits(self, fam: Family, cond: Cond, neg: Cond, alpha: float) -> Callable[[float], Cond]:
        """t -> c' of every row: one edit, or one per block of timesteps of a ``time_edges`` sharpener, all
        computed here at once (one sharpener call for the batch x blocks)."""
        edges = self.sharpener.config.get("time_edges") or []
        if not edges:
            sharp = sharpen_cond(fam, self.sharpener, cond, neg, alpha)
            return lambda t: sharp
        blocks, n = len(edges) + 1, len(cond)
        rows = torch.arange(n, device=cond.embeds.device).repeat(blocks)
        t_rep = block_timesteps(edges, cond.embeds.device).repeat_interleave(n)
        every = sharpen_cond(fam, self.sharpener, cond.index(rows), neg.expand(n).index(rows), alpha, t=t_rep)
        per_block = [every.index(slice(b * n, (b + 1) * n)) for b in range(blocks)]
        return lambda t: per_block[block_of(edges, t)]

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        rows = torch.tensor(list(negative) if negative is not None else [False] * len(cond), dtype=torch.bool)
        pairs = ((self.settings, ~rows), (self.neg_settings, rows))
        groups = {s: m for s, m in pairs if m.any()}  # settings -> their rows (one entry: the mask is unused)
        if len(groups) == 1 and not self.sharpener.config.get("time_edges"):
            ((alpha, start, stop),) = groups
            if (start, stop) == (0.0, 1.0):  # the paper's use: the edit on every step, no route
                sharp = sharpen_cond(fam, self.sharpener, cond, neg, alpha)
                return Plan({**fam.pipeline_kwargs(pipe, sharp), "guidance_scale": 1.0})
        schedules = [(self.edits(fam, cond, neg, a), s, e, m) for (a, s, e), m in groups.items()]

        def pick(step: Step) -> Cond:
            out = None
            for edit, s, e, mask in schedules:
                c = edit(step.t) if step.index in guided_steps(s, e, step.count) else cond
                out = c if out is None else Cond.where(mask, c, out)
            return out

        return Plan({**fam.pipeline_kwargs(pipe, cond), "guidance_scale": 1.0}, swap_cond(fam, pick))

    @property
    def setting(self) -> str:
        text = f"alpha={self.alpha:g}{_interval_text(self.start, self.stop)}"
        if self.neg_settings != self.settings:
            text += (
                f"; negative prompts: alpha={self.neg_alpha:g}{_interval_text(self.neg_start, self.neg_stop)}"
            )
        return text

    @property
    def tag(self) -> str:
        tag = f"dice-a{self.alpha:g}{_interval_tag(self.start, self.stop)}"
        if self.neg_settings != self.settings:
            tag += f"-n{self.neg_alpha:g}{_interval_tag(self.neg_start, self.neg_stop)}"
        return tag

    @property
    def spec(self) -> str:  # every setting spelled: recorded ones differ from sharpener to sharpener
        text = f"dice:alpha={self.alpha:g},start={self.start:g},stop={self.stop:g}"
        if self.neg_settings != self.settings:
            text += f",neg_alpha={self.neg_alpha:g},neg_start={self.neg_start:g},neg_stop={self.neg_stop:g}"
        return text

    @property
    def params(self) -> dict[str, Any]:
        out = {"alpha": self.alpha, "start": self.start, "stop": self.stop}
        if self.neg_settings != self.settings:
            out |= {"neg_alpha": self.neg_alpha, "neg_start": self.neg_start, "neg_stop": self.neg_stop}
        return out


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
        w = _finite("AdaptiveGuidance", "guidance_scale", self.guidance_scale)
        if w <= 1.0:
            raise InputError(f"AdaptiveGuidance: guidance_scale must be above 1 (got {w:g}).")
        th = _finite("AdaptiveGuidance", "threshold", self.threshold)
        if not 0.0 < th <= 1.0:
            raise InputError(f"AdaptiveGuidance: threshold is a cosine similarity in (0, 1] (got {th:g}).")

    def nfe(self, steps: int) -> int:
        return 2 * steps

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        kwargs = {**fam.pipeline_kwargs(pipe, cond, neg), "guidance_scale": self.guidance_scale}
        return Plan(kwargs, adaptive_route(pipe, len(cond), self.threshold))

    @property
    def setting(self) -> str:
        return f"w={self.guidance_scale:g}, cos>{self.threshold:g}"

    @property
    def tag(self) -> str:
        return f"ag-w{self.guidance_scale:g}-c{self.threshold:g}"


CLASSES: dict[str, type[Method]] = {c.name: c for c in (Unguided, CFG, Scaling, Dice, AdaptiveGuidance)}
METHODS = tuple(CLASSES)  # the shortcut names
SPELLING_HELP = (
    "a method, optionally with settings: unguided | cfg[:w=5,start=0,stop=0.1] | scaling[:s=1.2] | "
    "dice[:alpha=1,start=0,stop=0.1] | ag[:w=5,threshold=0.99]"
)


def recorded_settings(sharpener: Sharpener) -> dict[str, float]:
    """The sampling settings a sharpener records (``config["sampling"]``: alpha, start, stop, and under
    ``negative`` those of images with a negative prompt, as ``neg_*``); {} for none."""
    rec = sharpener.config.get("sampling") or {}
    out = {k: float(v) for k, v in rec.items() if k in Dice.DEFAULTS}
    return out | {"neg_" + k: float(v) for k, v in (rec.get("negative") or {}).items() if k in Dice.DEFAULTS}


def block_timesteps(edges: list[float], device: Any) -> torch.Tensor:
    """A representative timestep inside each block that ``edges`` (descending) cut [0, 1000) into."""
    bounds = [1000.0, *edges, 0.0]
    return torch.tensor([(hi + lo) / 2 for hi, lo in zip(bounds, bounds[1:], strict=False)], device=device)


def block_of(edges: list[float], t: float) -> int:
    """The block of timestep ``t``: 0 at t >= edges[0] (the noisiest), len(edges) below the last edge."""
    return sum(t < e for e in edges)


def parse_method(text: str) -> tuple[type[Method], dict[str, float]]:
    """``"cfg:w=5,stop=0.1"`` -> (CFG, {"guidance_scale": 5.0, "stop": 0.1}); a one-line error naming the
    allowed names and keys for anything else."""
    name, _, rest = str(text).strip().partition(":")
    cls = CLASSES.get(name.strip().lower())
    if cls is None:
        raise InputError(f"Unknown method {text!r}: use {SPELLING_HELP}.")
    settings: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in cls.keys:
            allowed = ", ".join(cls.keys) or "none"
            raise InputError(
                f"Method {text!r}: {part!r} is not a setting of {cls.name} (its keys: {allowed})."
            )
        try:
            settings[cls.keys[key]] = float(value)
        except ValueError:
            raise InputError(f"Method {text!r}: {key} must be a number (got {value.strip()!r}).") from None
    return cls, settings


def make_method(cls: type[Method], settings: dict[str, Any], sharpener: Sharpener | None = None) -> Method:
    """An object of ``cls`` with ``settings`` (fields), given the sharpener when it is DICE."""
    return cls(sharpener=sharpener, **settings) if cls is Dice else cls(**settings)


def as_method(
    method: Method | str,
    *,
    sharpener: Sharpener | None = None,
    guidance_scale: float | None = None,
    scale: float | None = None,
    alpha: float | None = None,
) -> Method:
    """A method object from an object or a spelling (``"cfg"``, ``"dice:stop=0.1"``). With a spelling, the
    flat keywords of earlier versions set what the spelling leaves open: guidance_scale for cfg and ag, scale
    for scaling, alpha and the sharpener for dice; other methods ignore them. An object comes with its own
    settings, so flat keywords next to it are refused."""
    if isinstance(method, Method):
        given = [
            k
            for k, v in (("guidance_scale", guidance_scale), ("scale", scale), ("alpha", alpha))
            if v is not None
        ]
        if given:
            raise InputError(
                f"{', '.join(given)} cannot be given next to a method object ({method.label}): set it in the "
                f"object, e.g. {type(method).__name__}(...)."
            )
        if isinstance(method, Dice) and sharpener is not None and sharpener is not method.sharpener:
            raise InputError("sharpener= is given twice: once in Dice(...) and once to generate(); give one.")
        return method
    if not isinstance(method, str):
        raise InputError(
            f"method must be a method object or a name ({SPELLING_HELP}); got {type(method).__name__}."
        )
    cls, settings = parse_method(method)
    return spelled_method(
        cls, settings, sharpener=sharpener, guidance_scale=guidance_scale, scale=scale, alpha=alpha
    )


def spelled_method(
    cls: type[Method],
    settings: dict[str, float],
    *,
    sharpener: Sharpener | None = None,
    guidance_scale: float | None = None,
    scale: float | None = None,
    alpha: float | None = None,
) -> Method:
    """The method a parsed spelling (``parse_method``) names, the flat keywords setting what it leaves open
    (``as_method``); for callers that parse once and build the object later (``dice sample``)."""
    flat = {"guidance_scale": guidance_scale, "scale": scale, "alpha": alpha}
    settings = dict(settings)
    for f in cls.keys.values():
        if f not in settings and flat.get(f) is not None:
            settings[f] = flat[f]
    return make_method(cls, settings, sharpener)
