"""Where the edits of `dice ceiling` act: one edit for every step (``static``), one per block of contiguous
sampling steps (``blocks:K``) or one per step (``steps``), on the steps of an interval (``interval``).

An edit is trained where it acts: on the training timesteps nearest to its steps' sampling timesteps. The
sampling timesteps come from the pipeline's own scheduler at ``num_inference_steps``; step i owns the training
timesteps halfway to its neighbours' (a tie goes to the later, less noisy step), the first step everything up
to the top of the schedule and the last everything down to 0. An interval [start, stop) holds the steps
``int(start * N) <= i < int(stop * N)`` (``sampling.steps.guided_steps``, the rule of ``Step.within`` and of
every method's interval); on the other steps the plain prompt runs, and training draws come only from the
timesteps of the interval's steps.

``StepEdits`` samples precomputed per-step edits through the one sampling path (``sample_batch``): a method
whose guide hands each step its edit (``Guide.conditioning``), the plain prompt elsewhere. It is internal to
the ceiling.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..families import Cond, Family
from ..sampling.methods import Method, shown
from ..sampling.steps import Guide, Plan, Step, StepClock, guided_steps

EDITS_HELP = "static (one edit for every step), blocks:K (K edits, one per block of contiguous steps) or steps (one per step)"


def parse_edits(text: Any, flag: str = "--edits (edits)") -> tuple[str, int | None]:
    """An edit layout's spelling -> (kind, K): ``static`` -> ("static", None), ``blocks:4`` -> ("blocks", 4),
    ``steps`` -> ("steps", None); anything else is an ``InputError`` naming the spellings."""
    if isinstance(text, str):
        word, sep, count = text.strip().partition(":")
        if not sep and word in ("static", "steps"):
            return word, None
        if word == "blocks" and sep and count.strip().isdecimal() and int(count) >= 1:
            return "blocks", int(count)
    raise InputError(f"{flag}: {text!r} is not an edit layout; use {EDITS_HELP}, e.g. --edits blocks:4.")


def parse_interval(text: Any, flag: str = "--interval (interval)") -> tuple[float, float]:
    """``"START,STOP"`` (fractions of the steps, 0 <= START < STOP <= 1) -> (start, stop); anything else is an
    ``InputError`` saying how to write it."""
    how = f"write START,STOP, two fractions of the steps with START below STOP, e.g. {flag.split()[0]} 0,0.25"
    parts = text.split(",") if isinstance(text, str) else []
    try:
        start, stop = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not an interval; {how}.") from None
    if not (math.isfinite(start) and math.isfinite(stop) and 0.0 <= start < stop <= 1.0):
        raise InputError(f"{flag}: {text!r} is not inside [0, 1] with START below STOP; {how}.")
    return start, stop


def interval_spelling(start: float, stop: float) -> str:
    """How an interval is recorded and shown: ``0,0.25``."""
    return f"{shown(start)},{shown(stop)}"


def edit_spans(kind: str, count: int | None, steps: range) -> list[tuple[int, int]]:
    """The steps [first, end) of each edit: one span for ``static``, ``count`` contiguous blocks of ``steps``
    (sizes differing by at most one, the larger first) for ``blocks``, one per step for ``steps``."""
    if kind == "static":
        return [(steps.start, steps.stop)]
    k = len(steps) if kind == "steps" else int(count or 1)
    cuts = np.cumsum([0] + [len(b) for b in np.array_split(np.arange(len(steps)), k)])
    return [(steps.start + int(a), steps.start + int(b)) for a, b in zip(cuts, cuts[1:], strict=False)]


def check_layout(edits: str, interval: str, num_inference_steps: int) -> None:
    """Refuse a layout that cannot be made at ``num_inference_steps`` steps (before any work): an interval that
    holds no step, more blocks than the interval has steps."""
    kind, count = parse_edits(edits)
    start, stop = parse_interval(interval)
    steps = guided_steps(start, stop, num_inference_steps)
    if not steps:
        raise InputError(
            f"--interval (interval) {interval} holds no step of {num_inference_steps} (step i acts when "
            f"int(START*N) <= i < int(STOP*N)); widen it, e.g. --interval 0,{shown(1 / num_inference_steps)}."
        )
    if kind == "blocks" and count > len(steps):
        raise InputError(
            f"--edits (edits) {edits} asks for {count} blocks of the {len(steps)} steps that --interval {interval} "
            f"holds at {num_inference_steps} steps; use at most blocks:{len(steps)}, or steps (one edit per step)."
        )


def step_timesteps(scheduler: Any, num_inference_steps: int) -> list[float]:
    """The sampling timestep of each of ``num_inference_steps`` steps of ``scheduler`` (a copy is set; the first
    call of a step where the scheduler evaluates several times a step)."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_inference_steps)
    clock = StepClock(sched)
    clock.begin(None)
    first: dict[int, float] = {}
    for k in range(len(clock.times)):
        step = clock.at(k)
        first.setdefault(step.index, step.t)
    return [first[i] for i in range(clock.count)]


def step_windows(times: Sequence[float], num_train: int) -> list[tuple[int, int]]:
    """The training timesteps [lo, hi) each sampling step owns: boundaries halfway between consecutive sampling
    timesteps (a tie to the later step), the first step up to the top (``num_train``), the last down to 0."""
    mids = [math.floor((a + b) / 2) + 1 for a, b in zip(times, times[1:], strict=False)]
    bounds = [num_train, *(min(max(m, 0), num_train) for m in mids), 0]
    return [(bounds[i + 1], bounds[i]) for i in range(len(times))]


@dataclass(frozen=True)
class EditLayout:
    """Which sampling steps each edit acts on (``spans``, [first, end)) and which training timesteps train it
    (``windows``, [lo, hi)), of ``steps`` sampling steps and ``num_train`` training timesteps. ``whole``: one
    edit on every step, trained on every timestep: the first version's layout, checkpointed as it was."""

    steps: int
    num_train: int
    spans: tuple[tuple[int, int], ...]
    windows: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        """K, the edits per prompt."""
        return len(self.spans)

    @property
    def whole(self) -> bool:
        return self.spans == ((0, self.steps),) and self.windows == ((0, self.num_train),)

    @property
    def window(self) -> tuple[int, int]:
        """The training timesteps [lo, hi) of every edit together: where the training draws come from."""
        return min(lo for lo, _ in self.windows), max(hi for _, hi in self.windows)

    def step_edit(self) -> tuple[int, ...]:
        """The edit of each sampling step (-1: none, the plain prompt)."""
        out = [-1] * self.steps
        for e, (a, b) in enumerate(self.spans):
            out[a:b] = [e] * (b - a)
        return tuple(out)

    def slots(self) -> torch.Tensor:
        """(num_train,) the edit that acts at each training timestep; K where none does (the plain prompt)."""
        table = torch.full((self.num_train,), self.count, dtype=torch.long)
        for e, (lo, hi) in enumerate(self.windows):
            table[lo:hi] = e
        return table

    @property
    def covers_all(self) -> bool:
        """Every training timestep has an edit (no slot for the plain prompt is needed)."""
        return self.window == (0, self.num_train)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The layout as a checkpoint stores it beside the edits (none for the whole layout: the first
        version's files)."""
        if self.whole:
            return {}
        return {
            "edit_steps": torch.tensor(self.spans, dtype=torch.long),
            "edit_timesteps": torch.tensor(self.windows, dtype=torch.long),
            "num_inference_steps": torch.tensor(self.steps),
        }

    def describe(self) -> str:
        """``2 edits on steps 0-4, 5-9 of 20 (timesteps 875-999, 625-874)``, for messages."""
        spans = ", ".join(f"{a}-{b - 1}" for a, b in self.spans)
        windows = ", ".join(f"{lo}-{hi - 1}" for lo, hi in self.windows)
        return f"{self.count} edit{'s' * (self.count != 1)} on steps {spans} of {self.steps} (timesteps {windows})"


def edit_layout(
    edits: str, interval: str, scheduler: Any, num_inference_steps: int, num_train: int
) -> EditLayout:
    """The layout of ``edits`` on ``interval`` for ``scheduler`` at ``num_inference_steps`` steps (module
    docstring); an edit whose steps own no training timestep (a scheduler that repeats a timestep) is refused."""
    check_layout(edits, interval, num_inference_steps)
    kind, count = parse_edits(edits)
    steps = guided_steps(*parse_interval(interval), num_inference_steps)
    spans = edit_spans(kind, count, steps)
    if kind == "static" and len(steps) == num_inference_steps:
        return EditLayout(num_inference_steps, num_train, tuple(spans), ((0, num_train),))
    per_step = step_windows(step_timesteps(scheduler, num_inference_steps), num_train)
    windows = [(per_step[b - 1][0], per_step[a][1]) for a, b in spans]
    for (a, b), (lo, hi) in zip(spans, windows, strict=True):
        if lo >= hi:
            raise InputError(
                f"--edits {edits}: the edit of steps {a}-{b - 1} owns no training timestep (this scheduler gives "
                f"those steps timesteps no other step lies between); use fewer blocks."
            )
    return EditLayout(num_inference_steps, num_train, tuple(spans), tuple(windows))


def saved_layout(saved: dict[str, torch.Tensor]) -> tuple | None:
    """The layout a checkpoint records (None: the whole layout of the first version's files), comparable with
    ``layout_key``."""
    if "edit_steps" not in saved:
        return None
    return tuple(
        tuple(saved[k].flatten().tolist()) for k in ("edit_steps", "edit_timesteps", "num_inference_steps")
    )


def layout_key(layout: EditLayout) -> tuple | None:
    """``layout`` as ``saved_layout`` reads it back from a checkpoint."""
    t = layout.tensors()
    return saved_layout(t) if t else None


class EditGuide(Guide):
    """One pass per step: step i runs each image's edit ``step_edit[i]`` (``edits[:, e]``), the conditioning
    the pipeline passes (the plain prompt) where it is -1."""

    def __init__(self, fam: Family, cond: Cond, edits: torch.Tensor, step_edit: tuple[int, ...]) -> None:
        self.fam, self.cond, self.edits, self.step_edit = fam, cond, edits, step_edit

    def conditioning(self, step: Step) -> dict[str, torch.Tensor] | None:
        if step.count != len(self.step_edit):
            raise InputError(
                f"these edits were laid out for {len(self.step_edit)} steps; the pipeline runs {step.count}."
            )
        e = self.step_edit[step.index]
        if e < 0:
            return None
        return self.fam.denoiser_inputs(self.cond.with_embeds(self.edits[:, e].to(self.cond.embeds.dtype)))


@dataclass(frozen=True, eq=False)
class StepEdits(Method):
    """Unguided sampling on precomputed edits that change with the step: ``edits`` (images, K, tokens, dim), the
    edited embeddings c' of each image, and ``step_edit`` the edit each step runs (-1: the plain prompt). One pass
    per step; a layout with one edit on every step hands the pipeline that edit as its prompt (no guide)."""

    edits: torch.Tensor
    step_edit: tuple[int, ...]
    name: ClassVar[str] = "optimum"

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        if set(self.step_edit) == {0}:
            return Plan(
                {**fam.pipeline_kwargs(pipe, cond.with_embeds(self.edits[:, 0])), "guidance_scale": 1.0}
            )
        return Plan(
            {**fam.pipeline_kwargs(pipe, cond), "guidance_scale": 1.0},
            EditGuide(fam, cond, self.edits, self.step_edit),
        )
