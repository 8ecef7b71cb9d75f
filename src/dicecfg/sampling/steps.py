"""What runs at each step of one pipeline call: the seam between a method and the stock pipeline.

The stock pipeline keeps its own loop (one sampling code path). A method says what it does at each step through
a ``Guide`` (made per batch by ``Method.plan``; diffusers' guiders play the same part in its modular pipelines):
- ``guided(step)``: which images run both halves (c_neg and c) of a CFG call; the others run c alone, one pass;
- ``combine(step, predictions)``: how a guided image's two predictions combine (None: the pipeline's own
  ``u + w (c - u)``);
- ``conditioning(step)``: what a one-pass call runs on (DICE's c' on its steps, the plain c elsewhere).

For the duration of one call the denoiser's ``forward`` is swapped (as the fast paths do, and on top of them)
for a ``StepRouter`` that places each network call in the trajectory by the call's own count of denoiser calls
(``StepClock``): never by the value of its timestep, so a step means the same under an img2img strength (the
pipeline's first call is step 0 of the steps it runs), custom timesteps or sigmas, and schedulers that repeat a
timestep (DPM-Solver++ with Karras sigmas). The router hands each call to the guide and counts the rows each
image got: its network evaluations (NFE) as really run. A method without a guide (unguided, full CFG, scaling,
DICE on every step) runs exactly as the stock pipeline would run it; the router then only counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .fast import flatten, swapped_forward, unflatten


def guided_steps(start: float, stop: float, steps: int) -> range:
    """The steps (0-based, of ``steps``) inside the interval [start, stop): diffusers' guider rule
    ``int(start * N) <= i < int(stop * N)``."""
    return range(int(start * steps), int(stop * steps))


@dataclass(frozen=True)
class Step:
    """Where a call is in the trajectory of one pipeline call: step ``index`` (0-based) of the ``count`` steps
    this call runs, at timestep ``t``. ``plan``: (step index, timestep) of every denoiser call the pipeline call
    is planned to make, as the clock knows them at its first call (empty where unknown), so that work of every
    step can be done at once (``Dice`` makes the edits of a continuous-time sharpener for all its steps in one
    sharpener call)."""

    index: int
    count: int
    t: float
    plan: tuple[tuple[int, float], ...] = field(default=(), compare=False, repr=False)

    def within(self, start: float, stop: float) -> bool:
        """Whether this step is inside [start, stop) (``guided_steps``)."""
        return self.index in guided_steps(start, stop, self.count)


class StepClock:
    """The step of each denoiser call of one pipeline call, from the count of calls so far.

    The first call fixes where the pipeline's steps begin in ``scheduler.timesteps`` (an img2img strength skips
    the first ones; the stock loop passes a view of the scheduler's tensor, or the scheduler knows its
    ``begin_index``), and so how many calls the pipeline makes. A scheduler of order 2 (Heun, KDPM2) evaluates
    ``1 + 2 (N - 1)`` times for N noise levels: calls are grouped by level, call k in step ``(k + 1) // 2``."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.calls = 0
        self.times: list[float] = []  # timestep of each call this pipeline call makes
        self.plan: tuple[tuple[int, float], ...] = ()  # (step, timestep) of each of those calls
        self.order = max(1, int(getattr(scheduler, "order", 1) or 1))

    def begin(self, t: Any) -> None:
        """Where the pipeline's steps begin, from the first call's timestep ``t`` (None: the scheduler's
        ``begin_index``, else its first timestep)."""
        ts = self.scheduler.timesteps
        values = [float(v) for v in ts.detach().cpu().flatten().tolist()]
        first = None
        if isinstance(t, torch.Tensor) and ts.dim() == 1 and t.device == ts.device:
            if t.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr():
                pos = (t.storage_offset() - ts.storage_offset()) // max(1, ts.stride(0))
                first = pos if 0 <= pos < len(values) else None
        if first is None:
            first = getattr(self.scheduler, "begin_index", None)
        if first is None and t is not None and values:
            value = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
            first = min(range(len(values)), key=lambda i: abs(values[i] - value))  # the first nearest
        self.times = values[int(first or 0) :] or [float("nan")]
        self.plan = ()
        self.plan = tuple((step.index, step.t) for step in map(self.at, range(len(self.times))))

    @property
    def count(self) -> int:
        """Steps of this pipeline call."""
        return (len(self.times) + self.order - 1) // self.order

    def at(self, k: int) -> Step:
        """The step of call ``k`` (0-based) of this pipeline call (a call past the planned ones: the last step)."""
        k = min(k, len(self.times) - 1)
        return Step(
            min((k + self.order - 1) // self.order, self.count - 1), self.count, self.times[k], self.plan
        )

    def tick(self, t: Any) -> Step:
        """The step of the next denoiser call (``t``: the timestep it was given)."""
        if self.calls == 0:
            self.begin(t)
        self.calls += 1
        return self.at(self.calls - 1)


@dataclass
class DenoiserCall:
    """One call of the denoiser by the pipeline: its arguments, the forward it would have reached, the number of
    images of the pipeline call (``batch``) and the rows of this call (``batch``, or ``2 * batch`` for CFG's
    [unconditional; conditional] layout)."""

    forward: Callable[..., Any]
    args: tuple
    kwargs: dict[str, Any]
    batch: int

    @property
    def sample(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs.get("sample", self.kwargs.get("hidden_states"))

    @property
    def timestep(self) -> Any:
        return self.args[1] if len(self.args) > 1 else self.kwargs.get("timestep")

    @property
    def rows(self) -> int:
        return self.sample.shape[0]

    @property
    def paired(self) -> bool:
        """The call holds CFG's two halves ([c_neg rows; c rows])."""
        return self.rows == 2 * self.batch

    def run(self, **replace: Any) -> Any:
        """The call as given (``replace``: keyword arguments swapped for others)."""
        return self.forward(*self.args, **{**self.kwargs, **replace})

    def run_rows(self, idx: torch.Tensor) -> Any:
        """The call on some of its rows: every tensor argument with one row per row of the call is indexed."""
        n = self.rows

        def take(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n:
                return x[idx.to(x.device)]
            return x

        leaves, spec = flatten((self.args, self.kwargs))
        args, kwargs = unflatten(spec, iter([take(x) for x in leaves]))
        return self.forward(*args, **kwargs)


@dataclass(frozen=True)
class Predictions:
    """The two predictions of the guided images of one step: ``images`` (their indices in the batch), their noisy
    input ``sample``, and the conditional and unconditional outputs of the denoiser."""

    images: torch.Tensor
    sample: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor


class Guide:
    """What a method does at each step of one pipeline call (made per batch by ``Method.plan``; it may keep
    state across the steps of its call). The defaults: every image guided, the pipeline's own combination, the
    conditioning as the pipeline passes it."""

    def guided(self, step: Step) -> bool | torch.Tensor:
        """Whether each image runs both halves at ``step``: one bool for all, or a (batch,) bool tensor."""
        return True

    def combine(self, step: Step, p: Predictions) -> torch.Tensor | None:
        """The guided images' prediction from their two; None: the pipeline's own ``u + w (c - u)``."""
        return None

    def conditioning(self, step: Step) -> dict[str, torch.Tensor] | None:
        """The denoiser keyword arguments a one-pass call runs on at ``step`` (None: as the pipeline passes)."""
        return None


class IntervalGuide(Guide):
    """Both halves on the steps of [start, stop), the conditional half alone elsewhere (CFG on an interval)."""

    def __init__(self, start: float, stop: float) -> None:
        self.start, self.stop = start, stop

    def guided(self, step: Step) -> bool:
        return step.within(self.start, self.stop)


@dataclass
class Plan:
    """How a method runs one batch: the stock pipeline's keyword arguments, and the guide of its denoiser calls
    (None: every call as the pipeline makes it)."""

    kwargs: dict[str, Any]
    guide: Guide | None = None


def main_output(out: Any) -> torch.Tensor:
    """The prediction tensor of a denoiser's output (a tuple with ``return_dict=False``, else ``.sample``)."""
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.sample if hasattr(out, "sample") else out


def with_output(out: Any, tensor: torch.Tensor) -> Any:
    """``out`` with its prediction tensor replaced."""
    if isinstance(out, tuple):
        return (tensor, *out[1:])
    if isinstance(out, list):
        return [tensor, *out[1:]]
    if hasattr(out, "sample"):
        out.sample = tensor
        if isinstance(out, dict):
            out["sample"] = tensor
        return out
    return tensor


def paired_step(guide: Guide, step: Step, call: DenoiserCall) -> tuple[Any, np.ndarray]:
    """A CFG call ([c_neg rows; c rows]) run as ``guide`` says: both halves for its guided images, the
    conditional rows alone for the others. The pipeline then combines ``u + w (c - u)``: an image left unguided
    gets its conditional prediction in both halves (so the pipeline gives c, exactly); an image the guide
    combines itself gets its combined prediction in both halves (p + w (p - p) = p, exactly)."""
    b = call.batch
    mask = torch.as_tensor(guide.guided(step), dtype=torch.bool).expand(b)
    images = torch.nonzero(mask).flatten()
    rows = 1 + mask.numpy().astype(np.int64)
    if len(images) == b:
        out = call.run()
        full = main_output(out)
        uncond, cond = full[:b], full[b:]
        mine = guide.combine(step, Predictions(images, call.sample[b:], cond, uncond))
        return (out if mine is None else with_output(out, torch.cat([mine, mine]))), rows
    out = call.run_rows(torch.cat([images, torch.arange(b, 2 * b)]))
    part = main_output(out)
    cond = part[len(images) :]
    halves = [cond.clone(), cond]
    if len(images):
        at = images.to(cond.device)
        uncond = part[: len(images)]
        mine = guide.combine(step, Predictions(images, call.sample[b + at], cond[at], uncond))
        if mine is None:
            halves[0][at] = uncond
        else:
            halves = [cond.clone(), cond.clone()]
            halves[0][at] = mine
            halves[1][at] = mine
    else:  # no image guided: the conditional prediction for both halves
        halves = [cond, cond]
    return with_output(out, torch.cat(halves)), rows


def one_pass_step(guide: Guide, step: Step, call: DenoiserCall) -> tuple[Any, np.ndarray]:
    """A call of one row per image, run on the conditioning the guide gives for ``step`` (as passed if none; a
    row per prompt is repeated for each of its images, ``num_images_per_prompt``)."""
    swap = guide.conditioning(step)
    rows = np.ones(call.batch, dtype=np.int64)
    if swap is None:
        return call.run(), rows
    cast = {}
    for k, v in swap.items():
        given = call.kwargs.get(k)
        if given is None:
            raise InputError(f"the denoiser was called without {k}; this pipeline cannot run a DICE interval")
        if v.shape[0] != given.shape[0] and given.shape[0] % v.shape[0] == 0:  # one row per prompt: per image
            v = v.repeat_interleave(given.shape[0] // v.shape[0], 0)
        cast[k] = v.to(device=given.device, dtype=given.dtype)
    return call.run(**cast), rows


class StepRouter:
    """The denoiser's ``forward`` during one pipeline call: places each call by its step and counts rows."""

    def __init__(self, pipe: Any, forward: Callable[..., Any], batch: int, guide: Guide | None) -> None:
        self.forward, self.batch, self.guide = forward, batch, guide
        self.clock = StepClock(pipe.scheduler)
        self.nfe = np.zeros(batch, dtype=np.int64)  # network evaluations per image so far

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = DenoiserCall(self.forward, args, kwargs, self.batch)
        if self.guide is None:
            self.nfe += call.rows // self.batch
            return call.run()
        step = self.clock.tick(call.timestep)
        out, rows = (paired_step if call.paired else one_pass_step)(self.guide, step, call)
        self.nfe += rows
        return out


@contextlib.contextmanager
def routed(pipe: Any, denoiser: torch.nn.Module, batch: int, guide: Guide | None) -> Iterator[StepRouter]:
    """Swap ``denoiser.forward`` for a ``StepRouter`` over whatever forward it has now (eager, graphed or
    compiled) while the block runs."""
    router = StepRouter(pipe, denoiser.forward, batch, guide)
    with swapped_forward(denoiser, router):
        yield router
