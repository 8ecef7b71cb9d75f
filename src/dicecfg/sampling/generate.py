"""One sampling code path for every method (``sampling.methods``): prompts -> ``generate`` -> ``Sample``s.

``generate`` is four jobs in a row: check the request (``sampling_request``), cut it into batches
(``batches``), sample and time each batch (``timed_batch``), and turn each image into a ``Sample``
(``to_samples``). ``sharpen`` gives the stock pipeline's keyword arguments for DICE, for callers that run the
pipeline themselves.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
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
from ..runs.jobs import seeds_of
from ..sharpener import Sharpener
from .checks import check_memory, check_prompts, check_seeds, check_size, sampling_memory
from .fast import fast_mode, path_ran, resolve_fast, speedup
from .methods import Dice, Method, sharpen_cond, time_option
from .spelling import as_method
from .steps import StepClock, routed

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
    params: dict[str, Any] = field(default_factory=dict)  # the settings that acted on it
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


def whole_number(value: Any, name: str, least: int = 1) -> int:
    """``value`` as an int of at least ``least`` (Python's or NumPy's integers); a one-line ``InputError``
    else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise InputError(f"{name} must be a whole number >= {least} (got {value!r}).")
    return int(value)


def encoded_prompts(
    pipe: Any, fam: Family, prompt: Any, negative_prompt: Any
) -> tuple[list[str], list[str], Cond, Cond]:
    """Prompts and negative prompts checked (text, length) and encoded, for ``sharpen`` and ``enable_dice``."""
    prompts = texts(prompt, "prompt")
    if not prompts:
        raise InputError("sharpen() needs at least one prompt.")
    negs = per_prompt(None if negative_prompt is None else texts(negative_prompt, "negative_prompt"),
                      len(prompts), "negative_prompt")  # fmt: skip
    check_prompts(pipe, fam, prompts)
    check_prompts(pipe, fam, [n for n in negs if n], "negative prompts")
    return prompts, negs, fam.encode(pipe, prompts), fam.encode(pipe, negs)


class EditInterval:
    """A ``callback_on_step_end`` that runs each step of the stock pipeline on what DICE runs there: after step
    i, the embedding of step i + 1 (c' inside a row's interval, c outside it). One row per prompt, repeated for
    each of its images."""

    def __init__(self, pick: Any, per_prompt: int) -> None:
        self.pick, self.per_prompt = pick, per_prompt

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        clock = StepClock(pipe.scheduler)
        clock.begin(None)  # where the pipeline's steps begin (an img2img strength skips the first ones)
        if i + 1 >= len(clock.times):
            return {}
        given = kwargs["prompt_embeds"]
        embeds = self.pick(clock.at(i + 1)).embeds.repeat_interleave(self.per_prompt, 0)
        return {"prompt_embeds": embeds.to(device=given.device, dtype=given.dtype)}


def sharpen(
    pipe: Any,
    sharpener: Sharpener,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    alpha: float | None = None,
    start: float | None = None,
    stop: float | None = None,
    num_images_per_prompt: int = 1,
) -> dict[str, Any]:
    """Pipeline keyword arguments that sample the sharpened prompts without guidance: DICE with the sharpener's
    recorded settings unless told otherwise, as ``Dice(sharpener)`` and ``enable_dice`` do.

    Use as ``pipe(**sharpen(pipe, sharp, prompts), guidance_scale=1.0)``. ``alpha=0`` is plain unguided
    sampling. Where the settings (recorded or given) put the edit on an interval of the steps, the arguments
    carry a ``callback_on_step_end`` that switches the embedding between steps (pipelines that take one: SD1.x/2.x
    and SDXL; the interval must start at step 0, since the first step's embedding is given here, and step 0 runs
    sharpened even where the interval gives no step at the call's count: ``generate`` warns about that case).
    A sharpener whose edit depends on the timestep (``time_edges``, ``time_embed``) is refused (unless alpha is
    0): the first step's embedding is given before the pipeline sets its timesteps; ``generate`` and
    ``enable_dice`` apply it.

    Args:
        pipe: a stock diffusers pipeline of a supported family (``load_pipeline``).
        sharpener: a ``Sharpener`` trained for that pipeline's family, width and token count (else refused).
        prompt: one prompt or a list of prompts (at least one).
        negative_prompt: passed to the sharpener as c_neg, one for all prompts or one per prompt (default: the
            empty prompt, as in training).
        alpha: the strength of the edit, c + alpha * delta (default: the recorded one, else 1); 0 is plain
            unguided sampling.
        start: first step of the edit, a fraction of the steps (default: recorded, else 0).
        stop: end of the edit's steps, a fraction (default: recorded, else 1).
        num_images_per_prompt: images per prompt, passed on to the pipeline.

    Returns:
        The pipeline keyword arguments (``prompt_embeds`` and the family's others).
    """
    method = Dice(sharpener, alpha=alpha, start=start, stop=stop)
    fam = check_compatible(pipe, sharpener)
    n = whole_number(num_images_per_prompt, "num_images_per_prompt")
    _, negs, cond, neg = encoded_prompts(pipe, fam, prompt, negative_prompt)
    negative = [bool(x) for x in negs]
    used = {s for s, rows in ((method.settings, False), (method.neg_settings, True)) if rows in negative}
    if sharpener.time_dependent:
        if {alpha for alpha, _, _ in used} == {0.0}:  # no edit: the prompt alone, exactly
            return {**fam.pipeline_kwargs(pipe, cond), "num_images_per_prompt": n}
        raise InputError(
            f"sharpen() cannot apply a sharpener whose edit depends on the timestep ({time_option(sharpener)}): "
            "it gives the first step's embedding before the pipeline sets its timesteps. Use "
            "generate(method=Dice(sharpener)) or enable_dice(pipe, sharpener), which edit at each step's timestep."
        )
    fixed, pick = method.schedule(fam, cond, neg, negative)
    if fixed is not None:
        return {**fam.pipeline_kwargs(pipe, fixed), "num_images_per_prompt": n}
    if any(start > 0 for _, start, _ in used):
        raise InputError(
            f"sharpen() cannot start the edit after step 0 ({method.label}): it gives the first step's "
            "embedding. Use generate(method=Dice(...)) or enable_dice(), which act on any interval."
        )
    if "prompt_embeds" not in getattr(pipe, "_callback_tensor_inputs", ()):
        raise InputError(
            f"sharpen() cannot put the edit on an interval ({method.label}) for {type(pipe).__name__}: it "
            "takes no callback_on_step_end that changes prompt_embeds. Pass start=0, stop=1 for the edit on "
            "every step, or use generate(method=Dice(...)) or enable_dice(), which act on any interval."
        )
    first = Cond.where(torch.tensor(negative), *[sharpen_cond(fam, sharpener, cond, neg, a)
                                                 for a in (method.neg_alpha, method.alpha)])  # fmt: skip
    return {
        **fam.pipeline_kwargs(pipe, first),
        "num_images_per_prompt": n,
        "callback_on_step_end": EditInterval(pick, n),
        "callback_on_step_end_tensor_inputs": ["prompt_embeds"],
    }


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
    ``"compile"`` runs it ``torch.compile``d; eager with a notice where unsupported. The method's guide
    (``sampling/steps.py``) wraps whichever forward runs.
    """
    plan = method.plan(pipe, fam, cond, neg, negative)
    denoiser = fam.denoiser(pipe)
    speed = speedup(pipe, denoiser, fast)
    doing = f"while sampling a batch of {len(generators)} images ({method.label})"
    advice = f"Use a smaller --batch-size (batch_size=); {BATCH_NOTE}."
    with out_of_memory(doing, advice), speed, no_step_bar(pipe):
        with routed(pipe, denoiser, len(generators), plan.guide) as router:
            out = pipe(
                **plan.kwargs,
                **pipe_kwargs,
                num_inference_steps=num_inference_steps,
                generator=generators,
                output_type=output_type,
            )
    return out.images, router.nfe


# what holds when the batch size changes (tests/test_sampling.py measures it): each image has its own generator,
# so the same seed gives the same image up to float rounding of batched kernels (on a CPU, pixels may differ by 1
# of 255)
BATCH_NOTE = "an image depends on its seed, not on its batch (up to float rounding: 1/255 at most on a CPU)"


# settings that once sat next to a method (0.1's flat keywords): refused with their place, never passed on to a
# pipeline that would take them into its **kwargs and ignore them
MOVED_SETTINGS = {
    "guidance_scale": "guidance_scale= is CFG(guidance_scale=...) or 'cfg:w=...'",
    "scale": "scale= is Scaling(scale=...) or 'scaling:s=...'",
    "alpha": "alpha= is Dice(sharpener, alpha=...) or 'dice:alpha=...'",
}


@dataclass(frozen=True)
class SamplingRequest:
    """A ``generate`` call, checked before any work (``sampling_request``)."""

    prompts: list[str]
    seeds: list[int]
    negative_prompts: list[str]  # "" where a prompt has none
    method: Method  # as it acts at the call's step count (``Method.acting``)
    fam: Family
    fast: str  # the fast path chosen for this call (``resolve_fast``)


def sampling_request(
    pipe: Any,
    prompts: Sequence[str],
    *,
    method: Method | str,
    seeds: Sequence[int] | int,
    sharpener: Sharpener | None,
    negative_prompt: str | Sequence[str] | None,
    num_inference_steps: int,
    batch_size: int,
    height: int | None,
    width: int | None,
    fast: bool | str,
    pipe_kwargs: dict[str, Any],
) -> SamplingRequest:
    """Every input of ``generate`` checked, before any work: the method and its settings, steps, batch size,
    seeds, negative prompts, image size, memory, prompt text. A method whose interval gives no guided step at
    ``num_inference_steps`` gets one warning and runs (and is recorded) as what acts."""
    prompts = list(prompts)
    m = as_method(method, sharpener=sharpener)
    moved = [k for k in MOVED_SETTINGS if k in pipe_kwargs]
    if moved:
        raise InputError(
            f"generate() takes {', '.join(moved)} in the method, not next to it: "
            f"{'; '.join(MOVED_SETTINGS[k] for k in moved)} (CHANGELOG.md, 0.2.0)."
        )
    fast_mode(fast)
    steps = whole_number(num_inference_steps, "num_inference_steps")
    batch_size = whole_number(batch_size, "batch_size")
    seeds = seeds_of(seeds, range(len(prompts))) if isinstance(seeds, numbers.Integral) else list(seeds)
    if len(seeds) != len(prompts):
        raise InputError(f"Got {len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt.")
    check_seeds(seeds)
    negs = per_prompt(negative_prompt, len(prompts), "negative_prompt")
    fam = check_compatible(pipe, m.sharpener) if isinstance(m, Dice) else family_of(pipe)
    check_size(pipe, fam, height, width)
    device = pipe._execution_device
    per_call = min(batch_size, len(prompts))
    check_memory(
        sampling_memory(pipe, fam, per_call, height, width),
        device,
        f"Sampling {per_call} image(s) per pipeline call",
        f"Use a smaller --batch-size (batch_size=; {BATCH_NOTE}) or a smaller image size.",
    )
    check_prompts(pipe, fam, prompts)
    check_prompts(pipe, fam, [n for n in negs if n], "negative prompts")
    acting = m.acting(steps)
    if acting != m:
        log.warning(
            "%s gives no guided step at %d steps (step i of N is guided when int(start*N) <= i < int(stop*N)): "
            "it runs, and is recorded, as %s",
            m.label,
            steps,
            acting.label,
        )
    return SamplingRequest(prompts, seeds, negs, acting, fam, resolve_fast(fast, device, len(prompts)))


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """The slices of ``n`` prompts, ``batch_size`` at a time, in order."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def timed_batch(
    pipe: Any, req: SamplingRequest, sl: slice, **call: Any
) -> tuple[np.ndarray, np.ndarray, float, str]:
    """One batch of ``req`` encoded and sampled (``call``: the pipeline's other arguments); returns its images,
    the NFE each took, the wall time per image (encoding included, the device synchronised) and the fast path
    that ran."""
    device = pipe._execution_device
    t0 = time.perf_counter()
    cond, neg = req.fam.encode(pipe, req.prompts[sl]), req.fam.encode(pipe, req.negative_prompts[sl])
    images, nfe = sample_batch(pipe, req.fam, req.method, cond, neg, generators(device, req.seeds[sl]),
                               negative=[bool(n) for n in req.negative_prompts[sl]], output_type="np",
                               fast=req.fast, **call)  # fmt: skip
    ran = path_ran(pipe, req.fam.denoiser(pipe), req.fast)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images, nfe, (time.perf_counter() - t0) / len(images), ran


def as_uint8(image: np.ndarray, what: str) -> np.ndarray:
    """A float image in [0, 1] as uint8 pixels; a non-finite image (settings that overflow the arithmetic) is
    refused, never written as black."""
    if not np.isfinite(image).all():
        raise InputError(
            f"{what} came out not finite (NaN or inf): its settings overflow the model's arithmetic. Use a "
            "smaller guidance scale, scale or alpha."
        )
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def to_samples(
    req: SamplingRequest, sl: slice, images: np.ndarray, nfe: np.ndarray, seconds: float, ran: str
) -> Iterator[Sample]:
    """The ``Sample``s of one batch, each with the settings that acted on it."""
    m = req.method
    for i, img in zip(range(sl.start, sl.stop), images, strict=True):
        neg = req.negative_prompts[i]
        yield Sample(
            index=i,
            prompt=req.prompts[i],
            seed=int(req.seeds[i]),
            method=m.name,
            image=as_uint8(img, f"The image of prompt {i + 1} ({m.label}, seed {req.seeds[i]})"),
            nfe=int(nfe[i - sl.start]),
            seconds=seconds,
            params=m.params | ({"negative_prompt": neg} if neg else {}),
            fast=ran,
        )


def generate(
    pipe: Any,
    prompts: Sequence[str],
    *,
    method: Method | str = "dice",
    seeds: Sequence[int] | int = 0,
    sharpener: Sharpener | None = None,
    negative_prompt: str | Sequence[str] | None = None,
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
            ``Dice(sharpener, alpha=1)``, ``AdaptiveGuidance()``, ...) or its spelling (``"cfg:w=7"``,
            ``"dice:stop=0.1"``; ``sharpener`` is the one a spelled ``dice`` uses).
        negative_prompt: c_neg of the methods that take one (CFG, DICE, Adaptive Guidance); others ignore it.

    Seeds: an int gives seeds ``seed, seed+1, ...``; a list gives one seed per prompt. Each image has its own
    ``torch.Generator``, so an image depends on its seed, not on the batch it was made in (up to float rounding).
    ``fast=True`` (or ``"graphs"``) replays the denoiser as CUDA graphs (the same images; eager with a one-line
    notice off CUDA); ``fast="compile"`` runs it ``torch.compile``d (any device; the first call of a shape
    compiles; docs/fast.md). ``fast="auto"`` picks one for this call's number of images
    (``sampling.fast.resolve_fast``: eager off CUDA, graphs, compile for long jobs). Each ``Sample.fast`` says
    which path its batch ran on.
    """
    req = sampling_request(pipe, prompts, method=method, seeds=seeds, sharpener=sharpener,
                           negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, height=height, width=width, fast=fast,
                           pipe_kwargs=pipe_kwargs)  # fmt: skip
    call = dict(num_inference_steps=num_inference_steps, height=height, width=width, **pipe_kwargs)
    with tqdm(total=len(req.prompts), desc=req.method.label, unit="img", disable=not progress) as bar:
        for sl in batches(len(req.prompts), batch_size):
            yield from to_samples(req, sl, *timed_batch(pipe, req, sl, **call))
            bar.update(sl.stop - sl.start)
