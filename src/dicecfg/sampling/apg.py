"""Adaptive Projected Guidance (APG; Sadat, Hilliges and Weber, "Eliminating Oversaturation and Artifacts of High
Guidance Scales in Diffusion Models", ICLR 2025, arXiv 2410.02416), as one method of ``sampling.methods``.

CFG moves the conditional prediction by ``(w - 1) (c - u)``. APG splits that update ``d = c - u`` into its part
parallel to the conditional prediction ``c`` (which, the paper finds, mostly oversaturates) and the part
orthogonal to it (which carries the gain in quality), and weighs the parallel part by ``eta``:

    d <- d + momentum * d_previous         (a running average over the guided steps; the paper's beta < 0)
    d <- d * min(1, r / ||d||)             (rescaling: the update's norm bounded by r, per image)
    pred = c + (w - 1) (d_orth + eta * d_par),   d_par = (<d, c> / ||c||^2) c,   d_orth = d - d_par

Norms and projections are taken per image over all of its values, in float64. At ``eta=1`` without rescaling or
momentum this is CFG (``u + w (c - u)``), up to float rounding. As in diffusers' ``AdaptiveProjectedGuidance``
(the reference for the formula; this is our own code), it acts on the model's own prediction (noise, or v); the
paper applies it to the denoised estimate. Outside [start, stop) a step runs the prompt alone, one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import InputError
from ..families import Cond, Family
from .methods import (
    GuidedOnInterval,
    Method,
    check_interval,
    finite,
    guidance_scale,
    interval_tag,
    interval_text,
    shown,
)
from .steps import Guide, Plan, Predictions, Step


@dataclass(frozen=True)
class APG(GuidedOnInterval, Method):
    """Adaptive projected guidance at scale w on the steps of [start, stop), the prompt alone elsewhere.

    Args:
        guidance_scale: w, as CFG's (spelled ``w``); at least 1 (1: the prompt alone).
        eta: weight of the update's part parallel to the conditional prediction (spelled ``eta``; 0: dropped,
            the paper's choice; 1: kept, as CFG).
        rescale: r, the largest norm of the update per image (spelled ``r``; 0: not bounded).
        momentum: beta of the running average of the update over the guided steps (spelled ``momentum``; 0: none;
            the paper uses negative values).
        start: first guided step, as a fraction of the steps (CFG's rule).
        stop: end of the guided steps, as a fraction.
    """

    guidance_scale: float = 5.0
    eta: float = 0.0
    rescale: float = 15.0
    momentum: float = 0.0
    start: float = 0.0
    stop: float = 1.0
    name: ClassVar[str] = "apg"
    keys: ClassVar[dict[str, str]] = {
        "w": "guidance_scale",
        "eta": "eta",
        "r": "rescale",
        "momentum": "momentum",
        "start": "start",
        "stop": "stop",
    }
    uses_negative: ClassVar[bool] = True

    def __post_init__(self) -> None:
        guidance_scale("APG", self.guidance_scale)
        finite("APG", "eta", self.eta)
        if finite("APG", "rescale", self.rescale) < 0:
            raise InputError(f"APG: rescale is a norm, >= 0 (0: not bounded; got {shown(self.rescale)}).")
        if not -1.0 < finite("APG", "momentum", self.momentum) < 1.0:
            raise InputError(f"APG: momentum must lie in (-1, 1) (got {shown(self.momentum)}).")
        check_interval("APG", self.start, self.stop)

    def plan(
        self, pipe: Any, fam: Family, cond: Cond, neg: Cond, negative: Sequence[bool] | None = None
    ) -> Plan:
        kwargs = {**fam.pipeline_kwargs(pipe, cond, neg), "guidance_scale": self.guidance_scale}
        return Plan(kwargs, ProjectedGuide(self))

    @property
    def setting(self) -> str:
        return (
            f"w={shown(self.guidance_scale)}, eta={shown(self.eta)}, r={shown(self.rescale)}, "
            f"momentum={shown(self.momentum)}{interval_text(self.start, self.stop)}"
        )

    @property
    def tag(self) -> str:
        return (
            f"apg-w{self.guidance_scale:g}-e{self.eta:g}-r{self.rescale:g}-m{self.momentum:g}"
            f"{interval_tag(self.start, self.stop)}"
        )


class ProjectedGuide(Guide):
    """APG's steps for one batch: both halves on the guided steps, combined by ``projected``; it keeps the running
    average of the update (momentum) across the steps of its pipeline call."""

    def __init__(self, method: APG) -> None:
        self.method = method
        self.average: torch.Tensor | None = None  # the running update of each image (momentum)

    def guided(self, step: Step) -> bool:
        return step.within(self.method.start, self.method.stop)

    def combine(self, step: Step, p: Predictions) -> torch.Tensor:
        k = p.sample.shape[1]  # the latent channels (a learned variance beyond them keeps the conditional's)
        out = p.cond.clone()
        out[:, :k] = self.projected(p.cond[:, :k], p.uncond[:, :k])
        return out

    def projected(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """c + (w - 1) (d_orth + eta d_par) of each image (module docstring)."""
        m = self.method
        dims = tuple(range(1, cond.dim()))
        d = (cond - uncond).double()
        if m.momentum:
            d = d if self.average is None else d + m.momentum * self.average
            self.average = d
        if m.rescale > 0:
            norm = d.norm(p=2, dim=dims, keepdim=True)
            d = d * torch.clamp(m.rescale / norm.clamp_min(1e-30), max=1.0)
        unit = torch.nn.functional.normalize(cond.double().flatten(1), dim=1).view_as(d)
        parallel = (d * unit).sum(dim=dims, keepdim=True) * unit
        update = (d - parallel) + m.eta * parallel
        return (cond.double() + (m.guidance_scale - 1.0) * update).to(cond.dtype)
