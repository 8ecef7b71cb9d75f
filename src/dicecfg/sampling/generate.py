"""One sampling code path for every method (``sampling.methods``): prompts -> ``generate`` -> ``Sample``s.

``sharpen`` gives the stock pipeline's keyword arguments for DICE, for callers that run the pipeline themselves.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..families import Cond, Family, check_compatible, family_of
from ..runs.guards import out_of_memory
from ..sharpener import Sharpener
from .checks import check_alpha, check_memory, check_seeds, check_size, sampling_memory, warn_truncated
from .fast import fast_mode, path_ran, resolve_fast, speedup
from .methods import Dice, Method, as_method, sharpen_cond
from .steps import routed

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One generated image and how it was made."""

    index: int
    prompt: str
    seed: int
    method: str  # the method's name (its settings are in params)
    image: np.ndarray  # uint8 (H, W, 3)
    nfe: int  # network evaluations this image took, counted as they ran (each guided CFG step counts two)
    seconds: float  # wall time of its batch divided by the batch size
    params: dict[str, Any] = field(default_factory=dict)
    fast: str = "off"  # the fast path its batch ran on: "off" (eager), "graphs" or "compile"

    def pil(self):
        from PIL import Image

        return Image.fromarray(self.image)


def per_prompt(x: str | Sequence[str] | None, n: int, what: str) -> list[str]:
    """One text per prompt from None (all ""), one text, or a list of one or ``n`` texts."""
    if x is None:
        return [""] * n
    if isinstance(x, str):
        return [x] * n
    x = list(x)
    if len(x) == 1:
        return x * n
    if len(x) != n:
        raise InputError(f"{what}: got {len(x)} entries for {n} prompts; give one, or one per prompt.")
    return x


def texts(x: Any, what: str) -> list[str]:
    """A text or a sequence of texts as a list; an ``InputError`` naming ``what`` for anything else."""
    items = [x] if isinstance(x, str) else list(x) if isinstance(x, (list, tuple)) else None
    if items is None or not all(isinstance(t, str) for t in items):
        raise InputError(f"{what} must be a text or a list of texts (got {type(x).__name__}).")
    return items


def sharpen(
    pipe: Any,
    sharpener: Sharpener,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    alpha: float = 1.0,
    num_images_per_prompt: int = 1,
) -> dict[str, Any]:
    """Pipeline keyword arguments that sample the sharpened prompts without guidance.

    Use as ``pipe(**sharpen(pipe, sharp, prompts), guidance_scale=1.0)``. ``alpha=0`` is plain unguided
    sampling.

    Args:
        pipe: a stock diffusers pipeline of a supported family (``load_pipeline``).
        sharpener: a ``Sharpener`` trained for that pipeline's family, width and token count (else refused).
        prompt: one prompt or a list of prompts (at least one).
        negative_prompt: passed to the sharpener as c_neg, one for all prompts or one per prompt (default: the
            empty prompt, as in training).
        alpha: the strength of the edit, c + alpha * delta; 0 is plain unguided sampling, 1 what it was trained
            for.
        num_images_per_prompt: images per prompt, passed on to the pipeline.

    Returns:
        The pipeline keyword arguments (``prompt_embeds`` and the family's others).
    """
    fam = check_compatible(pipe, sharpener)
    prompts = texts(prompt, "prompt")
    if not prompts:
        raise InputError("sharpen() needs at least one prompt.")
    check_alpha(alpha)
    negs = per_prompt(None if negative_prompt is None else texts(negative_prompt, "negative_prompt"),
                      len(prompts), "negative_prompt")  # fmt: skip
    warn_truncated(pipe, fam, prompts)
    warn_truncated(pipe, fam, [n for n in negs if n], "negative prompts")
    cond = fam.encode(pipe, prompts)
    neg = fam.encode(pipe, negs)
    kwargs = fam.pipeline_kwargs(pipe, sharpen_cond(fam, sharpener, cond, neg, alpha))
    kwargs["num_images_per_prompt"] = num_images_per_prompt
    return kwargs


def generators(device: torch.device, seeds: Sequence[int]) -> list[torch.Generator]:
    """One seeded generator per image, on the pipeline's device (on the CPU for MPS devices), so an image
    depends on its seed alone, not on the batch it is made in."""
    where = "cpu" if device.type == "mps" else device
    return [torch.Generator(where).manual_seed(int(s)) for s in seeds]


@contextlib.contextmanager
def no_step_bar(pipe: Any) -> Iterator[None]:
    """Silence the pipeline's per-step progress bar for one call (callers show their own), then restore it."""
    saved = getattr(pipe, "_progress_bar_config", None)
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if saved is None:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = saved


def sample_batch(
    pipe: Any,
    fam: Family,
    method: Method,
    cond: Cond,
    neg: Cond,
    generators: list[torch.Generator],
    *,
    negative: Sequence[bool] | None = None,
    num_inference_steps: int = 20,
    output_type: str = "np",
    fast: bool | str = False,
    **pipe_kwargs: Any,
) -> tuple[Any, np.ndarray]:
    """Run the stock pipeline once on an encoded batch with ``method`` (an object of ``sampling.methods``);
    returns its images/latents and the network evaluations each image took, counted as they ran. ``negative``:
    which rows have a negative prompt (``neg`` holds it).

    ``fast`` picks a fast path (``sampling/fast.py``): True or ``"graphs"`` replays the denoiser as CUDA graphs,
    ``"compile"`` runs it ``torch.compile``d; eager with a notice where unsupported. The method's step route
    (``sampling/steps.py``) wraps whichever forward runs.
    """
    plan = method.plan(pipe, fam, cond, neg, negative)
    denoiser = fam.denoiser(pipe)
    speed = speedup(pipe, denoiser, fast)
    doing = f"while sampling a batch of {len(generators)} images ({method.label})"
    advice = "Use a smaller --batch-size (batch_size=); results do not depend on it."
    with out_of_memory(doing, advice), speed, no_step_bar(pipe):
        with routed(pipe, denoiser, len(generators), plan.route) as router:
            out = pipe(
                **plan.kwargs,
                **pipe_kwargs,
                num_inference_steps=num_inference_steps,
                generator=generators,
                output_type=output_type,
            )
    return out.images, router.nfe


def generate(
    pipe: Any,
    prompts: Sequence[str],
    *,
    method: Method | str = "dice",
    seeds: Sequence[int] | int = 0,
    sharpener: Sharpener | None = None,
    negative_prompt: str | Sequence[str] | None = None,
    guidance_scale: float | None = None,
    scale: float | None = None,
    alpha: float | None = None,
    num_inference_steps: int = 20,
    batch_size: int = 8,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
    fast: bool | str = False,
    **pipe_kwargs: Any,
) -> Iterator[Sample]:
    """Generate one image per prompt with ``method``, yielding ``Sample``s in prompt order.

    Args:
        method: a method object (``Unguided()``, ``CFG(guidance_scale=5, start=0, stop=0.1)``, ``Scaling()``,
            ``Dice(sharpener, alpha=1)``, ``AdaptiveGuidance()``) or its spelling (``"cfg"``,
            ``"dice:stop=0.1"``). With a spelling, ``guidance_scale`` / ``scale`` / ``alpha`` and
            ``sharpener`` set what it leaves open (the flat keywords of earlier versions).
        negative_prompt: c_neg of the methods that take one (CFG, DICE, Adaptive Guidance); others ignore it.

    Seeds: an int gives seeds ``seed, seed+1, ...``; a list gives one seed per prompt. Each image has its own
    ``torch.Generator``, so an image does not depend on the batch it was made in. ``fast=True`` (or ``"graphs"``)
    replays the denoiser as CUDA graphs (the same images; eager with a one-line notice off CUDA);
    ``fast="compile"`` runs it ``torch.compile``d (any device; the first call of a shape compiles; docs/fast.md).
    ``fast="auto"`` picks one for this call's number of images (``sampling.fast.resolve_fast``: eager off CUDA,
    graphs, compile for long jobs). Each ``Sample.fast`` says which path its batch ran on.
    """
    prompts = list(prompts)
    m = as_method(method, sharpener=sharpener, guidance_scale=guidance_scale, scale=scale, alpha=alpha)
    fast_mode(fast)
    if num_inference_steps < 1:
        raise InputError(f"num_inference_steps must be >= 1 (got {num_inference_steps}).")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1 (got {batch_size}).")
    seeds = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else list(seeds)
    if len(seeds) != len(prompts):
        raise InputError(f"Got {len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt.")
    check_seeds(seeds)
    negs = per_prompt(negative_prompt, len(prompts), "negative_prompt")
    fam = check_compatible(pipe, m.sharpener) if isinstance(m, Dice) else family_of(pipe)
    check_size(pipe, fam, height, width)
    device = pipe._execution_device
    mode = resolve_fast(fast, device, len(prompts))
    check_memory(
        sampling_memory(pipe, fam, min(batch_size, len(prompts)), height, width),
        device,
        f"Sampling {min(batch_size, len(prompts))} image(s) per pipeline call",
        "Use a smaller --batch-size (batch_size=; results do not depend on it) or a smaller image size.",
    )
    warn_truncated(pipe, fam, prompts)
    warn_truncated(pipe, fam, [n for n in negs if n], "negative prompts")
    bar = tqdm(total=len(prompts), desc=m.label, unit="img", disable=not progress)
    try:
        for start in range(0, len(prompts), batch_size):
            sl = slice(start, start + batch_size)
            batch, batch_seeds = prompts[sl], seeds[sl]
            t0 = time.perf_counter()
            cond, neg = fam.encode(pipe, batch), fam.encode(pipe, negs[sl])
            out, nfe = sample_batch(
                pipe,
                fam,
                m,
                cond,
                neg,
                generators(device, batch_seeds),
                negative=[bool(n) for n in negs[sl]],
                num_inference_steps=num_inference_steps,
                height=height,
                width=width,
                output_type="np",
                fast=mode,
                **pipe_kwargs,
            )
            ran = path_ran(pipe, fam.denoiser(pipe), mode)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            per_image = (time.perf_counter() - t0) / len(batch)
            for i, img in enumerate(out):
                yield Sample(
                    index=start + i,
                    prompt=batch[i],
                    seed=int(batch_seeds[i]),
                    method=m.name,
                    image=(np.clip(img, 0, 1) * 255).round().astype(np.uint8),
                    nfe=int(nfe[i]),
                    seconds=per_image,
                    params=m.params | ({"negative_prompt": negs[start + i]} if negs[start + i] else {}),
                    fast=ran,
                )
            bar.update(len(batch))
    finally:
        bar.close()
