"""The CFG-supervised distillation objective (docs/method.md, "Training objective"; arXiv 2502.03726).

loss = || eps(x_t, t, c + r(c, c_neg)) - [eps_u + w (eps_c - eps_u)] ||   (L1 or L2, summed over elements)

averaged over the global batch of a step (each process may go through its share in several micro-batches).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..families import Cond, Family
from ..sharpener import Sharpener
from .sources import XtSource


def loss_fn(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """L1 or L2 distance summed over elements, averaged over the batch (docs/method.md, "Training objective")."""
    d = pred.float() - target.float()
    per = d.abs() if kind == "l1" else d.square()
    return per.sum() / pred.shape[0]


def cfg_target(pipe, fam: Family, x_t, t, cond: Cond, neg: Cond, w: float) -> torch.Tensor:
    """Teacher: eps_u + w (eps_c - eps_u) from one batched call of the frozen denoiser."""
    with torch.no_grad():
        both = fam.denoise(pipe, torch.cat([x_t, x_t]), torch.cat([t, t]), Cond.cat([neg, cond]))
        eps_u, eps_c = both.chunk(2)
        return eps_u + w * (eps_c - eps_u)


def student(pipe, fam: Family, sharpener: Sharpener, x_t, t, cond: Cond, neg: Cond) -> torch.Tensor:
    """Student: the same frozen denoiser on the sharpened embedding c + r(c, c_neg), no guidance."""
    sharp = sharpener.edit(cond.tokens, neg.tokens, 1.0, neg_mask=fam.key_mask(neg))
    return fam.denoise(pipe, x_t, t, fam.edited(cond, sharp, sharpener.config["mask_mode"]))


@dataclass
class Objective:
    """The distillation objective of one run: teacher target, student prediction, loss, held-out loss."""

    pipe: Any
    fam: Family
    cfg: Any  # DistillConfig
    source: XtSource
    neg: Cond
    autocast: Any = field(default=contextlib.nullcontext)

    def batch_loss(
        self, sharpener: Sharpener, x0, noise, t, cond: Cond, neg: Cond | None = None
    ) -> torch.Tensor:
        """Distillation loss of one batch; c_neg is "" unless ``neg`` gives one per sample."""
        x_t = self.source.add_noise(x0, noise, t)
        neg = self.neg.expand(len(cond)) if neg is None else neg
        with self.autocast():
            target = cfg_target(self.pipe, self.fam, x_t, t, cond, neg, self.cfg.guidance_scale)
            pred = student(self.pipe, self.fam, sharpener, x_t, t, cond, neg)
        return loss_fn(pred, target, self.cfg.loss)

    def accumulate(self, sharpener: Sharpener, step: int) -> torch.Tensor:
        """Backward pass of step ``step`` over this process's slice of the global batch, in ``grad_accum``
        micro-batches; adds to the gradients and returns the slice's mean loss (detached).

        Each micro-batch loss is a mean over ``batch_size`` samples, so dividing it by ``grad_accum`` makes the
        summed gradients those of the mean over the slice; averaging them over the processes then gives the
        gradient of the mean over the global batch, as one process with the whole batch computes it.
        """
        total = None
        for x0, noise, t, cond, neg in self.source.train_batches(step):
            loss = self.batch_loss(sharpener, x0, noise, t, cond, neg) / self.cfg.grad_accum
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    @torch.no_grad()
    def eval_loss(self, sharpener: Sharpener) -> float:
        """Mean held-out distillation loss over the fixed evaluation tuples."""
        total, n = 0.0, 0
        for x0, noise, t, cond in self.source.eval_batches(self.source.infer_batch):
            total += self.batch_loss(sharpener, x0, noise, t, cond).item() * len(cond)
            n += len(cond)
        return total / n
