"""FLOPs of one distillation update, counted with ``torch.utils.flop_counter.FlopCounterMode``, not estimated.

One training sample costs the teacher's two denoiser passes (conditional and unconditional, one batched call,
no gradient), the student's forward on the sharpened embedding, and the student's backward. The denoiser is
frozen: the backward computes gradients of its activations (to reach the sharpener through the input
embedding) but none for its weights, so it costs about one forward rather than two. Counting runs the same
calls as ``Objective.batch_loss`` on random inputs of the training shape; on the ``meta`` device it needs no
memory and no compute (``bench.archs.random_pipeline(arch, device="meta")``), so the full-size counts come from
any machine. Achieved FLOP/s = ``per_sample`` x measured samples/s (``benchmarks/distill_throughput/distill_throughput.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..families import family_of
from ..sampling.fast import swapped_forward
from ..sharpener import Sharpener
from .objective import cfg_target, sample_loss, student


def _counted(fn: Any) -> tuple[Any, int]:
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


@contextlib.contextmanager
def unmasked_text_encoders(pipe: Any) -> Iterator[None]:
    """The pipeline's text encoders called without their padding mask while the block runs. On the meta device
    transformers' T5 (PixArt) would ask whether the mask masks anything, a value meta tensors lack; the output's
    shape is the same, and encoding is no part of an update's FLOPs (prompts are encoded once)."""
    encoders = [getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2")]
    with contextlib.ExitStack() as stack:
        for enc in encoders:
            if isinstance(enc, torch.nn.Module):
                forward = enc.forward
                stack.enter_context(
                    swapped_forward(enc, lambda *a, attention_mask=None, _f=forward, **k: _f(*a, **k))
                )
        yield


def update_flops(
    pipe: Any,
    sharpener: Sharpener,
    batch_size: int,
    resolution: int | None = None,
    guidance_scale: float = 5.0,
) -> dict[str, float]:
    """FLOPs of one update of ``batch_size`` samples at ``resolution`` (default: the model's native size):
    ``teacher``, ``student_forward``, ``student_backward``, ``total`` and ``per_sample``; also
    ``denoiser_forward_per_sample`` (one pass, half the teacher's) to read the others against."""
    fam = family_of(pipe)
    den = fam.denoiser(pipe)
    den.requires_grad_(False)  # frozen, as in distill: no weight gradients
    param = next(den.parameters())
    size = resolution or fam.default_size(pipe)
    f = pipe.vae_scale_factor
    x_t = torch.randn(batch_size, fam.latent_channels(pipe), size // f, size // f, device=param.device)
    x_t = x_t.to(param.dtype)
    t = torch.full((batch_size,), 500, device=param.device, dtype=torch.long)
    meta = param.device.type == "meta"
    with torch.no_grad(), unmasked_text_encoders(pipe) if meta else contextlib.nullcontext():
        cond = fam.encode(pipe, ["a photo of a cat on the beach"] * batch_size)
        neg = fam.encode(pipe, [""] * batch_size)
    sharpener = sharpener.to(device=param.device, dtype=cond.embeds.dtype)
    (target, _), teacher = _counted(lambda: cfg_target(pipe, fam, x_t, t, cond, neg, guidance_scale))
    loss, forward = _counted(
        lambda: sample_loss(student(pipe, fam, sharpener, x_t, t, cond, neg), target, "l1").mean()
    )
    _, backward = _counted(loss.backward)
    total = teacher + forward + backward
    return {
        "batch_size": batch_size,
        "resolution": size,
        "teacher": teacher,
        "student_forward": forward,
        "student_backward": backward,
        "total": total,
        "per_sample": total / batch_size,
        "denoiser_forward_per_sample": teacher / 2 / batch_size,
    }
