"""What runs at each step of one pipeline call: the denoiser's ``forward`` wrapped for the call (``StepRouter``).

The stock pipeline keeps its own loop (one sampling code path). For the duration of one call, the denoiser's
``forward`` is swapped (as the fast paths do, and on top of them) for a router that
- finds the step of each network call from its timestep, not from a count of calls: the i-th distinct
  timestep of ``pipe.scheduler.timesteps`` is step i (a second-order scheduler evaluates some timesteps twice;
  both evaluations belong to the step of that noise level), so it works for every family and scheduler;
- hands the call to the method's *route*, which runs it as given, runs part of its rows, or runs it on other
  conditioning (``cond_only``, ``swap_cond``, ``adaptive_route``);
- counts the rows each image got: an image's network evaluations (NFE) as really run.

A method without a route (unguided, full CFG, scaling, DICE on every step) is run exactly as the stock
pipeline would run it; the router then only counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .fast import flatten, swapped_forward, unflatten


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
class Step:
    """Where a call is in the trajectory: step ``index`` of ``count`` distinct timesteps, at timestep ``t``."""

    index: int
    count: int
    t: float


# (step, call) -> (the denoiser's output, network evaluations per image; None: the rows of the call)
Route = Callable[[Step, DenoiserCall], tuple[Any, "np.ndarray | None"]]


@dataclass
class Plan:
    """How a method runs one batch: the stock pipeline's keyword arguments, and the route of its denoiser calls
    (None: every call as the pipeline makes it)."""

    kwargs: dict[str, Any]
    route: Route | None = None


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


def cond_only(call: DenoiserCall) -> tuple[Any, np.ndarray]:
    """A CFG step left unguided: the conditional rows alone, their prediction given for both halves, so the
    pipeline's u + w (c - u) is c, exactly. One row per image."""
    if not call.paired:
        return call.run(), np.ones(call.batch, dtype=np.int64)
    b = call.batch
    out = call.run_rows(torch.arange(b, 2 * b))
    pred = main_output(out)
    return with_output(out, torch.cat([pred, pred])), np.ones(b, dtype=np.int64)


def swap_cond(fam: Any, pick: Callable[[Step], Any]) -> Route:
    """A route that runs each step on the conditioning ``pick(step)`` (a Cond; None: as given), in place of
    what the pipeline passes (the family says which keyword arguments carry it)."""

    def route(step: Step, call: DenoiserCall) -> tuple[Any, None]:
        cond = pick(step)
        if cond is None:
            return call.run(), None
        swap = {}
        for k, v in fam.denoiser_inputs(cond).items():
            given = call.kwargs.get(k)
            if given is None:
                raise InputError(
                    f"the denoiser was called without {k}; this pipeline cannot run a DICE interval"
                )
            swap[k] = v.to(device=given.device, dtype=given.dtype)
        return call.run(**swap), None

    return route


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


def adaptive_route(pipe: Any, batch: int, threshold: float) -> Route:
    """Adaptive Guidance's route: CFG for the images still guided (both halves), the conditional row alone for
    the others; after each guided step, an image whose two predictions agree (``implied_x0_cosine`` above
    ``threshold``) is guided no more."""
    abars = getattr(pipe.scheduler, "alphas_cumprod", None)
    if abars is None:
        raise InputError(
            f"AdaptiveGuidance needs a scheduler with alphas_cumprod ({type(pipe.scheduler).__name__} has none)."
        )
    kind = pipe.scheduler.config.get("prediction_type", "epsilon")
    done = torch.zeros(batch, dtype=torch.bool)

    def route(step: Step, call: DenoiserCall) -> tuple[Any, np.ndarray]:
        if not call.paired:
            return call.run(), np.ones(batch, dtype=np.int64)
        guided = torch.nonzero(~done).flatten()
        if len(guided) == 0:
            return cond_only(call)
        if len(guided) == batch:
            out = call.run()
            full = main_output(out)
        else:
            out = call.run_rows(torch.cat([guided, torch.arange(batch, 2 * batch)]))
            part = main_output(out)
            cond = part[len(guided) :]
            uncond = cond.clone()
            uncond[guided.to(cond.device)] = part[: len(guided)]
            full = torch.cat([uncond, cond])
            out = with_output(out, full)
        g = guided.to(full.device)
        abar = float(abars[min(int(round(step.t)), len(abars) - 1)])
        cos = implied_x0_cosine(call.sample[batch + g], full[g], full[batch + g], abar, kind)
        done[guided[(cos > threshold).cpu()]] = True
        rows = np.ones(batch, dtype=np.int64)
        rows[guided.numpy()] = 2
        return out, rows

    return route


class StepRouter:
    """The denoiser's ``forward`` during one pipeline call: routes each call by its step and counts rows."""

    def __init__(self, pipe: Any, forward: Callable[..., Any], batch: int, route: Route | None) -> None:
        self.pipe, self.forward, self.batch, self.route = pipe, forward, batch, route
        self.nfe = np.zeros(batch, dtype=np.int64)  # network evaluations per image so far
        self._key: Any = None
        self._steps: list[float] = []  # distinct timesteps in order: step i runs at _steps[i]
        self._pos_step: list[int] = []  # position in scheduler.timesteps -> step

    def _index(self) -> torch.Tensor:
        ts = self.pipe.scheduler.timesteps
        if self._key is not ts:
            values = [float(v) for v in ts.detach().cpu().flatten().tolist()]
            self._steps, self._pos_step = [], []
            for v in values:
                if not self._steps or v != self._steps[-1]:
                    self._steps.append(v)
                self._pos_step.append(len(self._steps) - 1)
            self._key = ts
        return ts

    def step_of(self, t: Any) -> int:
        """The step a call at timestep ``t`` belongs to. ``t`` drawn from the scheduler's own timesteps (a
        view of them, as the stock loops pass it) is placed without reading its value (no device sync)."""
        ts = self._index()
        if (
            isinstance(t, torch.Tensor)
            and t.device == ts.device
            and ts.dim() == 1
            and t.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr()
        ):
            pos = (t.storage_offset() - ts.storage_offset()) // max(1, ts.stride(0))
            if 0 <= pos < len(self._pos_step):
                return self._pos_step[pos]
        value = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
        return min(range(len(self._steps)), key=lambda i: abs(self._steps[i] - value))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = DenoiserCall(self.forward, args, kwargs, self.batch)
        if self.route is None:
            self.nfe += call.rows // self.batch
            return call.run()
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        i = self.step_of(t)
        out, rows = self.route(Step(i, len(self._steps), self._steps[i]), call)
        self.nfe += rows if rows is not None else call.rows // self.batch
        return out


@contextlib.contextmanager
def routed(pipe: Any, denoiser: torch.nn.Module, batch: int, route: Route | None) -> Iterator[StepRouter]:
    """Swap ``denoiser.forward`` for a ``StepRouter`` over whatever forward it has now (eager, graphed or
    compiled) while the block runs."""
    router = StepRouter(pipe, denoiser.forward, batch, route)
    with swapped_forward(denoiser, router):
        yield router
