"""The training recipe of ``distill``: every hyper-parameter of a run, with the paper's values as defaults, and
the named recipes (``RECIPES``) that `dice train --recipe` starts from (docs/recipes.md says why each)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import InputError
from ..flags import Checked, opt
from ..sampling.checks import check_text
from ..sharpener import ARCHS, DEFAULT_TIME_WIDTH, TIME_EMBEDS
from .objective import LOSS_WEIGHTINGS
from .sources import T_WEIGHTINGS

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")  # torch.compile's modes we offer


@dataclass(frozen=True)
class DistillConfig(Checked):
    steps: int = opt(8000, "optimizer updates (paper: 8000 for SD1.5, 4000 for SDXL)")
    batch_size: int = opt(16, "samples per forward pass and process (paper: 16 per GPU x 8 GPUs)")
    grad_accum: int = opt(
        1, "micro-batches per update and process; global batch = batch-size x gpus x grad-accum"
    )
    lr: float = opt(2e-4, "AdamW, constant, no warm-up (paper)")
    weight_decay: float = opt(1e-2, "AdamW weight decay (paper)")
    guidance_scale: float = opt(5.0, "teacher CFG scale w (paper: 5)", min=1.0)
    loss: str = opt(
        "l1",
        '"l1" (paper, SD1.5) or "l2" (paper, SDXL); summed over elements, mean over the batch',
        choices=("l1", "l2"),
    )
    xt_source: str = opt(
        "auto",
        '"images" (VAE-encoded data, paper), "teacher" (noised CFG samples), "auto"',
        choices=("auto", "images", "teacher"),
    )
    teacher_pool: int = opt(
        256, "teacher mode: CFG samples made once per run, re-noised at every step", min=1
    )
    teacher_steps: int = opt(20, "teacher mode: sampling steps of those CFG samples", min=1)
    shared_timestep: bool = opt(
        True, "one t for the whole batch (paper); --no-shared-timestep: one per sample"
    )
    t_range: tuple[float, ...] = opt(
        (0.0, 1.0),
        "train on the timesteps of this fraction of the noise schedule, LO HI (0 1: all, the paper); 0.85 1: "
        "the noisiest 15%, where guidance acts (docs/recipes.md); the run records the DICE interval of the "
        "steps it covers",
        metavar="F",
    )
    time_edges: tuple[float, ...] = opt(
        (),
        "timesteps (descending) that cut the schedule into blocks, one edit per block (ours; default: one "
        "edit for all timesteps, the paper's)",
        metavar="T",
    )
    time_embed: str = opt(
        "none",
        '"none" (the paper\'s one edit for all timesteps) or "sinusoidal": the edit a smooth function of the '
        "timestep, made at each sampling step's own t (ours; docs/recipes.md)",
        choices=TIME_EMBEDS,
    )
    time_width: int = opt(
        DEFAULT_TIME_WIDTH,
        "with --time-embed sinusoidal: width of the timestep's embedding and its MLP (even)",
        min=2,
    )
    t_weighting: str = opt(
        "uniform",
        'how training timesteps are drawn inside --t-range: "uniform" (paper), "noisy" (density rising '
        'linearly with t: 3/4 of the draws in the noisier half) or "steps" (only the timesteps of a --t-steps '
        "sampling schedule of the model's scheduler)",
        choices=T_WEIGHTINGS,
    )
    t_steps: int = opt(20, "with --t-weighting steps: the sampling steps whose timesteps are drawn", min=1)
    loss_weighting: str = opt(
        "none",
        '"none" (paper), "x0" (error of the implied x_0) or "relative" (error over the size of CFG\'s correction)',
        choices=LOSS_WEIGHTINGS,
    )
    lr_schedule: str = opt(
        "constant",
        '"constant" (paper) or "cosine" (decay to 0 at the last step)',
        choices=("constant", "cosine"),
    )
    warmup: float = opt(0.0, "fraction of the steps with a linear lr warm-up (paper: none)")
    grad_clip: float = opt(0.0, "clip each update's gradient norm to this (0: off, as in the paper)")
    arch: str = opt(
        "paper",
        'sharpener network: "paper" or "block" (a residual transformer block; docs/recipes.md)',
        choices=ARCHS,
    )
    mixed_precision: str = opt(
        "auto", '"bf16" autocast on CUDA, "no" elsewhere ("auto")', choices=("auto", "bf16", "no")
    )
    init_from: str | None = opt(
        None,
        "start from this sharpener's weights instead of the identity (its network must match --arch, "
        "--inner-dim and --heads): fine-tune a sharpener, e.g. to add negative prompts (docs/recipes.md)",
        metavar="SHARPENER",
    )
    gradient_checkpointing: bool = opt(False, "recompute denoiser activations in backward (less memory)")
    compile: bool | None = opt(
        None,
        "torch.compile the frozen denoiser for the teacher and the student (default: on CUDA, eager "
        "elsewhere): the first steps compile once, losses equal eager up "
        "to float rounding; --no-compile runs eager (a speed option: a run may resume with or without it; "
        "docs/recipes.md)",
    )
    compile_mode: str = opt(
        "default",
        "with compiling, torch.compile's mode for the frozen denoiser: \"default\" (Inductor's kernels), "
        '"reduce-overhead" (replayed as CUDA graphs, no launch gaps; more memory) or "max-autotune-no-cudagraphs" '
        "(kernels chosen by timing them: a longer first compile); a speed option like --compile",
        choices=COMPILE_MODES,
    )
    channels_last: bool | None = opt(
        None,
        "the frozen denoiser's convolutions and its latents in channels_last memory format while training (cuDNN's "
        "own layout; default: as loaded); a speed option: losses equal up to float rounding, a run may resume with "
        "or without it",
    )
    checkpoint_every: int = opt(500, "steps between atomic checkpoints", min=1)
    eval_every: int = opt(
        250, "steps between held-out distillation-loss evaluations (0: start and end only)", min=0
    )
    eval_pairs: int = opt(16, "fixed (x_0, noise, t, prompt) tuples never trained on")
    log_every: int = opt(10, "steps between stats.jsonl records", min=1)
    validate_every: int = opt(0, "steps between validation image grids (0: never)", min=0)
    validation_prompts: tuple[str, ...] = opt(
        (), "prompts of the validation grids", flag="--validation-prompt", metavar="PROMPT"
    )
    seed: int = opt(0, "seeds every random draw of the run", min=0, max=2**32 - 1)
    resolution: int | None = opt(
        None, "training resolution in pixels (default: the model's native size)", min=8
    )
    inner_dim: int = opt(512, "sharpener attention width (paper: 8 heads x 64)", min=1)
    heads: int = opt(8, "sharpener attention heads (paper: 8); must divide --inner-dim", min=1)
    mask_mode: str = opt(
        "keep",
        'PixArt: c\' keeps the prompt\'s mask ("keep") or opens it over padding ("open")',
        choices=("keep", "open"),
    )
    negative_prompts: tuple[str, ...] = opt(
        (), 'negative prompts sometimes used as c_neg instead of "" (not in paper)', cli=False
    )
    negative_prob: float = opt(
        0.5, "probability that a sample uses a random one of negative_prompts as c_neg"
    )
    progress: bool = opt(True, "show a progress bar", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # choices, ranges (the fields' min / max), finite numbers
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (isinstance(self.grad_accum, int) and self.grad_accum >= 1, "grad_accum must be an integer >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.eval_pairs >= 1, "eval_pairs must be >= 1"),
            (0.0 <= self.warmup < 1.0, "warmup must be a fraction in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0: off)"),
            (
                self.inner_dim % self.heads == 0,
                f"heads ({self.heads}) must divide inner_dim ({self.inner_dim})",
            ),
            (0.0 <= self.negative_prob <= 1.0, "negative_prob must be in [0, 1]"),
            (isinstance(self.negative_prompts, tuple), "negative_prompts must be a tuple of strings"),
            (
                len(self.t_range) == 2 and 0.0 <= self.t_range[0] < self.t_range[1] <= 1.0,
                f"t_range must be two fractions LO < HI in [0, 1] (got {list(self.t_range)})",
            ),
            (
                all(0 < e < 1000 for e in self.time_edges)
                and list(self.time_edges) == sorted(set(self.time_edges), reverse=True),
                f"time_edges must be distinct timesteps in (0, 1000), descending (got {list(self.time_edges)})",
            ),
            (
                self.time_embed == "none" or not self.time_edges,
                "time_edges and time_embed are two ways of making the edit depend on the timestep; give one "
                "(--time-edges or --time-embed)",
            ),
            (self.time_width % 2 == 0, f"time_width must be even (got {self.time_width}), e.g. 128"),
            (
                self.compile is None or isinstance(self.compile, bool),
                f"compile must be True, False or None (got {self.compile!r})",
            ),
            (
                self.channels_last is None or isinstance(self.channels_last, bool),
                f"channels_last must be True, False or None (got {self.channels_last!r})",
            ),
            (
                self.compile is not False or self.compile_mode == "default",
                f"compile_mode={self.compile_mode!r} needs compiling, which compile=False turns off; drop "
                "--no-compile or --compile-mode",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"DistillConfig: {msg}.")
        check_text(self.validation_prompts, "validation prompts")  # here, not at the first validation grid
        check_text(self.negative_prompts, "negative prompts")

    def identity(self) -> dict[str, Any]:
        """Settings that shape the result (a resumed run must repeat them; steps may grow)."""
        skip = {
            "steps",
            "progress",
            "checkpoint_every",
            "eval_every",
            "log_every",
            "validate_every",
            "compile",  # the speed options: a run may resume with other values
            "compile_mode",
            "channels_last",
        }
        if not self.negative_prompts:  # options added later are left out at their defaults: old runs resume
            skip |= {"negative_prompts", "negative_prob"}
        if self.time_embed == "none":
            skip |= {"time_embed", "time_width"}
        if self.t_weighting == "uniform":
            skip.add("t_weighting")
        if self.t_weighting != "steps":
            skip.add("t_steps")
        if self.lr_schedule != "constant" or self.warmup:
            skip.discard("steps")  # the schedule is a function of the run's length: it cannot grow on resume
        return {k: v for k, v in asdict(self).items() if k not in skip}


# name -> the settings that differ from DistillConfig's defaults (the paper's); `dice train --recipe NAME`
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},  # the paper's recipe, exactly (docs/method.md)
    "dicecfg": {  # the recipe study's winner on the mini model (docs/recipes.md, BENCHMARKS.md)
        "shared_timestep": False,  # one timestep per sample, not per batch
        "lr_schedule": "cosine",
        "warmup": 0.05,
        "grad_clip": 1.0,
        "arch": "block",  # the residual transformer-block sharpener
    },
}
DEFAULT_RECIPE = "dicecfg"  # what `dice train` starts from unless --recipe says otherwise


def recipe_config(name: str, **overrides: Any) -> DistillConfig:
    """The named recipe (``RECIPES``) as a DistillConfig, with ``overrides`` on top."""
    if name not in RECIPES:
        raise InputError(f"Unknown recipe '{name}'. Choose one of: {', '.join(RECIPES)}.")
    return DistillConfig(**{**RECIPES[name], **overrides})


def compiles(cfg: DistillConfig, device: torch.device) -> bool:
    """Whether ``distill`` compiles the frozen denoiser: ``cfg.compile`` when set, else on CUDA only (compiling
    on a CPU takes minutes for what it saves)."""
    return cfg.compile if cfg.compile is not None else device.type == "cuda"


def channels_last_on(cfg: DistillConfig, device: torch.device) -> bool:
    """Whether ``distill`` trains with the frozen denoiser in channels_last: ``cfg.channels_last`` when set, else
    the layout as loaded (no default is measured yet: benchmarks/speed_profile/issue32.md plans it)."""
    return bool(cfg.channels_last)


def lr_at(cfg: DistillConfig, step: int) -> float:
    """Learning rate of update ``step`` (0-based): linear warm-up over ``warmup`` of the steps, then constant
    or cosine decay to 0 at ``steps``. A function of the step alone, so a resumed run follows the same curve."""
    warm = round(cfg.warmup * cfg.steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))
    return cfg.lr
