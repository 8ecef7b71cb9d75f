"""CFG-supervised distillation of a sharpener (docs/method.md, "Training objective"; arXiv 2502.03726).

    min_r  E_{x_t, t, prompt} || eps(x_t, t, c + r(c, c_neg)) - [eps_u + w (eps_c - eps_u)] ||

Only r trains; the denoiser, VAE and text encoder stay frozen and gradients flow through the denoiser into r.
Randomness of step k (batch, timestep, noise) is drawn from a generator seeded by (seed, k), so a run that is
interrupted and resumed from its checkpoint ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import InputError, TrainingInterrupted
from ..families import family_of
from ..pipeline import model_id, model_revision
from ..runs.folder import (
    append_stats,
    check_run_folder,
    load_checkpoint,
    run_record,
    save_checkpoint,
    truncate_stats,
    write_run_json,
)
from ..runs.guards import FiniteGuard, StopFlag, out_of_memory, run_lock
from ..runs.jobs import on_rank_0
from ..runs.parallel import Parallel
from ..sampling.checks import check_memory, check_prompts, check_size, check_text
from ..sampling.fast import compiled_denoiser
from ..sharpener import Sharpener
from .config import DistillConfig, channels_last_on, compiles, lr_at
from .data import ImageCaptionFolder
from .objective import Objective, autocast_for
from .sources import ImageSource, TeacherSource, XtSource

log = logging.getLogger(__name__)
COMPILE_NOTICE = (
    "dice train compiles the frozen denoiser for its first steps: a one-time wait of minutes (SD1.5 on an H100: "
    "about 4 min), then faster steps; --no-compile trains eager from the first step"
)
STEPS_PINNED = (  # why a run with a learning-rate schedule cannot grow on resume (docs/reliability.md, 6)
    "steps are part of this run's identity because its learning-rate schedule (lr_schedule={schedule}, "
    "warmup={warmup}) is a function of the run's length: only a constant schedule without warm-up (--recipe "
    "paper) can grow on resume; to train longer, start a new --out with --init-from {run_dir}."
)


def digest(texts: list[str]) -> str:
    """The first 16 hex digits of the sha256 of a list of texts (a run's identity holds its prompts' content,
    not only their count)."""
    return hashlib.sha256(json.dumps(list(texts)).encode("utf-8")).hexdigest()[:16]


def distill(
    pipe: Any,
    prompts: list[str] | None,
    *,
    config: DistillConfig = DistillConfig(),
    images: str | Path | None = None,
    output_dir: str | Path,
) -> Sharpener:
    """Train a sharpener for ``pipe`` by CFG-supervised distillation; resumes from ``output_dir``.

    Args:
        pipe: a supported diffusers pipeline, already on its device and dtype (it is not modified).
        prompts: training prompts (prompt-only mode); ignored in image mode, where captions are used.
        config: hyper-parameters (defaults: the paper's SD1.5 recipe).
        images: folder of captioned images (metadata.jsonl or .txt sidecars) for the paper's x_t source.
        output_dir: run folder: run.json, stats.jsonl, checkpoint.safetensors and the final sharpener.

    Raises ``RunLockedError`` when another live process trains into ``output_dir``, ``TrainingDivergedError``
    on a NaN/Inf loss and ``TrainingInterrupted`` after SIGINT / SIGTERM (both keep the last checkpoint).

    Under ``torchrun`` / ``accelerate launch`` (WORLD_SIZE > 1) it runs data-parallel: ``config.batch_size`` is
    the batch of each process, rank 0 alone holds the lock and writes the run folder (docs/parallel.md).
    Each update averages the loss over the global batch, ``batch_size`` x processes x ``grad_accum`` (every
    process sums the gradients of its ``grad_accum`` micro-batches), whatever the split (up to rounding).
    """
    run_dir = Path(output_dir)
    par = Parallel.current(pipe._execution_device)
    oom = out_of_memory(
        "while training",
        f"The checkpoint in {run_dir} is intact. A resume must keep the batch settings: start a new output "
        "folder with a smaller batch size and a larger grad_accum (the same global batch).",
    )
    with contextlib.ExitStack() as stack:

        def take_folder() -> None:  # rank 0 alone holds the run folder's lock
            check_run_folder(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run_lock(run_dir))

        on_rank_0(par, take_folder)
        with oom:
            return _distill(pipe, prompts, config, images, run_dir, par)


def _distill(
    pipe: Any, prompts: list[str] | None, cfg: DistillConfig, images, run_dir: Path, par: Parallel
) -> Sharpener:
    # Initialize: the run record, the frozen model, the source of x_t and the objective; resume.
    objective, sharpener = _initialize(pipe, prompts, cfg, images, run_dir, par)
    optimizer = new_optimizer(list(sharpener.parameters()), cfg)
    run = Run(objective, sharpener, optimizer, run_dir, par)
    start = _resume(objective, sharpener, optimizer, run_dir, par)

    # Main training loop: one update per step; a stop request (SIGINT / SIGTERM) ends it at a step boundary.
    step = run.train(start)

    # Finish: the sharpener and its config (config.json + model.safetensors) next to the run record.
    sharpener.config["train_steps"] = step
    if par.main:
        sharpener.save_pretrained(run_dir)
    par.barrier()
    return sharpener.eval()


def _initialize(
    pipe: Any, prompts: list[str] | None, cfg: DistillConfig, images, run_dir: Path, par: Parallel
) -> tuple[Objective, Sharpener]:
    """Everything before the first step: what x_t comes from, the sharpener, the run record (refusals come
    before any file), the frozen model, the teacher pool or image source, the objective."""
    fam = family_of(pipe)
    device = pipe._execution_device
    mode = _xt_mode(cfg, prompts, images)
    resolution = _check_sizes(pipe, fam, cfg, device, par)
    sharpener = _new_sharpener(pipe, fam, cfg, device)
    if cfg.init_from:  # a wrong sharpener is refused before run.json and the teacher pool
        start_from(sharpener, cfg.init_from)
    folder = ImageCaptionFolder(images, resolution) if mode == "images" else None
    check_text(folder.captions if folder else prompts, "captions" if folder else "prompts")  # before run.json
    identity = _identity(pipe, fam, cfg, mode, prompts, images, folder, par)
    _write_run_json(pipe, cfg, run_dir, identity, par)

    # The frozen model, the source of x_t and the objective (docs/method.md, "Training objective").
    for module in (fam.denoiser(pipe), pipe.vae, getattr(pipe, "text_encoder", None)):
        if module is not None:
            module.requires_grad_(False)
    neg = fam.encode(pipe, [""])
    with par.main_process_first():  # rank 0 makes the teacher pool, the others then load it
        if par.main:
            check_prompts(pipe, fam, folder.captions if folder else prompts)
            check_prompts(pipe, fam, cfg.negative_prompts, "negative prompts")
        if folder:
            source: XtSource = ImageSource(pipe, fam, folder, cfg, run_dir, par.rank, par.world)
        else:
            source = TeacherSource(
                pipe, fam, list(prompts), neg, cfg, run_dir, resolution, par.rank, par.world
            )
    objective = Objective(pipe, fam, cfg, source, neg, autocast_for(device, cfg.mixed_precision))
    return objective, sharpener


def fused_for(devices: Iterable[torch.device]) -> bool:
    """Whether the sharpener's AdamW runs fused: when every parameter is on CUDA (one kernel for all of them
    instead of several per parameter; the same update up to float rounding). Elsewhere PyTorch's default."""
    devices = list(devices)
    return bool(devices) and all(torch.device(d).type == "cuda" for d in devices)


def new_optimizer(params: list[torch.nn.Parameter], cfg: DistillConfig) -> torch.optim.AdamW:
    """The sharpener's AdamW (paper: constant lr, weight decay), fused where ``fused_for`` says. A speed choice of
    the process, not of the run: a checkpoint resumes across fused and unfused (``live_implementation``)."""
    fused = True if fused_for(p.device for p in params) else None  # None: PyTorch's default, as before
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


@dataclass(frozen=True)
class Due:
    """What is due after the update that ended ``step``, decided here, once."""

    log: bool
    checkpoint: bool
    evaluate: bool
    validate: bool
    stop: bool

    @classmethod
    def at(cls, cfg: DistillConfig, step: int, stop: bool) -> Due:
        last = step == cfg.steps
        return cls(
            log=step % cfg.log_every == 0 or last,
            checkpoint=step % cfg.checkpoint_every == 0 or last,
            evaluate=bool(cfg.eval_every and step % cfg.eval_every == 0) or last,
            validate=bool(cfg.validate_every and cfg.validation_prompts and step % cfg.validate_every == 0),
            stop=stop,
        )

    @property
    def anything(self) -> bool:
        """Whether something is kept, logged or stopped: the loss must then be known to be finite."""
        return self.log or self.checkpoint or self.evaluate or self.validate or self.stop


@dataclass
class Throughput:
    """Samples trained since the last stats record, and when that was."""

    samples: int = 0
    since: float = field(default_factory=time.perf_counter)

    def per_second(self) -> float:
        return self.samples / max(time.perf_counter() - self.since, 1e-9)

    def restart(self) -> None:
        self.samples, self.since = 0, time.perf_counter()


@dataclass
class Run:
    """The training state of one run: the objective, the sharpener and its optimizer, the run folder, the
    process group. ``train`` is the main loop."""

    objective: Objective
    sharpener: Sharpener
    optimizer: torch.optim.Optimizer
    run_dir: Path
    par: Parallel

    def train(self, start: int) -> int:
        """Updates from ``start`` to ``cfg.steps``; returns the last step. A stop request (SIGINT / SIGTERM)
        ends it at a step boundary with a checkpoint (``TrainingInterrupted``)."""
        cfg, par, run_dir = self.objective.cfg, self.par, self.run_dir
        step, saved, speed = start, start, Throughput()
        with contextlib.ExitStack() as stack:
            bar, stop = self._enter(stack, start)
            guard = (
                FiniteGuard()
            )  # NaN / Inf losses, read from the device only when something is kept or logged
            try:
                while step < cfg.steps:
                    mean_loss, stopping = self.update(step, stop.signum is not None)
                    guard.add(mean_loss, step + 1)
                    step += 1
                    speed.samples += self.objective.source.global_batch
                    bar.update(1)
                    due = Due.at(cfg, step, stopping or (par.world == 1 and stop.signum is not None))
                    if due.anything:
                        guard.check(saved, run_dir)  # a diverged update is never logged, evaluated or kept
                    if par.main and (rec := self.keep(step, mean_loss, speed, due)):
                        bar.set_postfix(loss=f"{rec['loss']:.4g}", samples_s=f"{rec['samples_per_s']:.1f}")
                    if due.log:
                        speed.restart()
                    if due.checkpoint:
                        saved = step
                    if due.stop:  # a signal after the check above is taken at the next step
                        self.stop_at(step, saved, stop.signum)
            except (
                KeyboardInterrupt
            ) as e:  # a second signal stops mid-step: the last checkpoint on disk is kept
                if not isinstance(e, TrainingInterrupted):
                    log.warning(
                        "interrupted in step %d; checkpoint of step %d kept in %s", step + 1, saved, run_dir
                    )
                raise
        return step

    def _enter(self, stack: contextlib.ExitStack, start: int) -> tuple[Any, StopFlag]:
        """The loop's surroundings: gradient checkpointing, the progress bar, the stop flag, compilation."""
        cfg, pipe = self.objective.cfg, self.objective.pipe
        denoiser, device = self.objective.fam.denoiser(pipe), pipe._execution_device
        if cfg.gradient_checkpointing:
            stack.enter_context(_gradient_checkpointing(denoiser))
        if channels_last_on(cfg, device):  # before compiling: the compiled graph is traced for this layout
            stack.enter_context(_channels_last(denoiser, self.objective))
        show = cfg.progress and self.par.main
        bar = stack.enter_context(
            tqdm(total=cfg.steps, initial=start, desc="distill", unit="step", disable=not show)
        )
        stop = stack.enter_context(StopFlag())
        if compiles(cfg, device):
            stack.enter_context(compiled_denoiser(pipe, denoiser, training=True, mode=cfg.compile_mode))
            if device.type == "cuda" and self.par.main:
                log.info(COMPILE_NOTICE)
                bar.set_postfix_str("the first steps compile (one time)")
        elif cfg.compile_mode != "default" and self.par.main:
            log.warning(
                "compile_mode=%r has no effect: the denoiser runs eager on %s (--compile compiles it there too)",
                cfg.compile_mode,
                device.type,
            )
        return bar, stop

    def update(self, step: int, stop: bool) -> tuple[torch.Tensor, bool]:
        """One optimizer update (``step`` is the number of updates before it); returns the loss averaged over
        the ranks and whether any rank was asked to stop."""
        cfg, optimizer = self.objective.cfg, self.optimizer
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss = self.objective.accumulate(self.sharpener, step)  # backward over grad_accum micro-batches
        mean_loss, stopping = self.par.reduce_step(loss, stop)  # the same on every rank
        self.par.average_gradients(list(self.sharpener.parameters()))  # one all-reduce per update
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.sharpener.parameters(), cfg.grad_clip)
        optimizer.step()
        return mean_loss, stopping

    def keep(self, step: int, loss: torch.Tensor, speed: Throughput, due: Due) -> dict | None:
        """Rank 0 after an update: what ``due`` says (stats, held-out evaluation, checkpoint, validation grid).
        Returns the stats record it logged, if any."""
        rec = None
        if due.log:
            rec = {"step": step, "loss": loss.item(), "samples_per_s": speed.per_second()}
            append_stats(self.run_dir, rec)
        if due.evaluate:
            append_stats(self.run_dir, {"step": step, "eval_loss": self.objective.eval_loss(self.sharpener)})
        if due.checkpoint:
            save_checkpoint(self.run_dir, step, self.sharpener, self.optimizer)
        if due.validate:
            _validation_grid(self.objective.pipe, self.sharpener, self.objective.cfg, self.run_dir, step)
        return rec

    def stop_at(self, step: int, saved: int, signum: int | None) -> None:
        """Stop on request at the end of ``step``: a checkpoint unless one was just written, then
        ``TrainingInterrupted`` (exit 130 / 143)."""
        if saved != step and self.par.main:
            save_checkpoint(self.run_dir, step, self.sharpener, self.optimizer)
        self.par.barrier()
        log.warning(
            "stopped at step %d; checkpoint in %s (run the same command to resume)", step, self.run_dir
        )
        raise TrainingInterrupted(signum or signal.SIGTERM, step)


def _xt_mode(cfg: DistillConfig, prompts: list[str] | None, images) -> str:
    """Where x_t comes from: ``images`` (the paper's source, re-noised training images) or ``teacher`` (the
    teacher's own CFG samples, prompt-only mode); ``auto`` picks by whether an image folder is given."""
    mode = cfg.xt_source if cfg.xt_source != "auto" else ("images" if images else "teacher")
    if mode == "images" and images is None:
        raise InputError("xt_source='images' needs an image folder (--images).")
    if mode == "teacher" and not prompts:
        raise InputError("Prompt-only distillation needs prompts (--prompts FILE).")
    return mode


def _check_sizes(pipe: Any, fam, cfg: DistillConfig, device, par: Parallel) -> int:
    """The training resolution, refused when the model cannot take it or the run could not fit in memory."""
    resolution = cfg.resolution or fam.default_size(pipe)
    check_size(pipe, fam, resolution, None, names=("resolution", ""))
    shape = (
        fam.latent_channels(pipe),
        resolution // pipe.vae_scale_factor,
        resolution // pipe.vae_scale_factor,
    )
    samples = cfg.batch_size * cfg.grad_accum * par.world + cfg.teacher_pool + cfg.eval_pairs
    check_memory(  # the x_0 and noise tensors alone: a floor that stops absurd sizes before any work
        2 * samples * math.prod(shape) * 4,
        device,
        "Training with this batch size, teacher pool and held-out set",
        "Lower --batch-size (raise --grad-accum to keep the global batch), --teacher-pool or --eval-pairs.",
    )
    return resolution


def _new_sharpener(pipe: Any, fam, cfg: DistillConfig, device) -> Sharpener:
    """A fresh sharpener for ``pipe``, its config carrying the base model and the training settings."""
    with torch.random.fork_rng(devices=[]):  # initial weights depend on cfg.seed alone, not on process state
        torch.manual_seed(cfg.seed)
        return Sharpener(
            fam.dim(pipe),
            cfg.inner_dim,
            cfg.heads,
            family=fam.name,
            num_tokens=fam.num_tokens(pipe),
            copy_first_token=fam.copy_first_token,
            mask_mode=cfg.mask_mode,
            arch=cfg.arch,
            time_edges=list(cfg.time_edges),
            time_embed=cfg.time_embed,
            time_width=cfg.time_width,
            sampling=interval_of(pipe, cfg),
            base_model=model_id(pipe),
            base_revision=model_revision(pipe),
            guidance_scale=cfg.guidance_scale,
            loss=cfg.loss,
        ).to(device)


def _identity(pipe: Any, fam, cfg: DistillConfig, mode: str, prompts, images, folder, par: Parallel) -> dict:
    """What a run folder must match to be resumed: the settings that change the result, and the data's content."""
    identity = {
        **cfg.identity(),
        "xt_source": mode,
        "family": fam.name,
        "base_model": model_id(pipe),
        "images": str(images) if images else None,
        "num_prompts": len(prompts or []),
        "prompts_sha256": digest(prompts) if prompts else None,  # the content, not only the count
        "images_sha256": folder.fingerprint() if folder else None,
    }
    if par.world > 1:  # left out for one process, so earlier runs resume
        identity["world_size"] = par.world
    return identity


def _write_run_json(pipe: Any, cfg: DistillConfig, run_dir: Path, identity: dict, par: Parallel) -> None:
    """Rank 0 writes (or checks, on a resume) run.json; a refusal is raised on every rank."""
    record = {**run_record(cfg), "base_revision": model_revision(pipe)}
    why = {"steps": STEPS_PINNED.format(schedule=cfg.lr_schedule, warmup=cfg.warmup, run_dir=run_dir)}
    on_rank_0(par, lambda: write_run_json(run_dir, record, identity, why=why))


def _resume(objective: Objective, sharpener: Sharpener, optimizer, run_dir: Path, par: Parallel) -> int:
    """The step to start from: the run folder's checkpoint, loaded into ``sharpener`` and ``optimizer`` on every
    rank (it replaces the init_from weights), or 0 with the held-out loss of the starting weights recorded."""
    start = load_checkpoint(run_dir, sharpener, optimizer)
    par.barrier()  # all have read it before rank 0 may write the next one
    if par.main:
        truncate_stats(run_dir, start if start else -1)  # a fresh start also drops an earlier step-0 record
        if start:
            log.info("resuming %s from step %d", run_dir, start)
        if start == 0:
            append_stats(run_dir, {"step": 0, "eval_loss": objective.eval_loss(sharpener)})
    return start


@contextlib.contextmanager
def _gradient_checkpointing(denoiser: torch.nn.Module):
    """Recompute the frozen denoiser's activations in the backward pass (less memory, more time), for the
    duration of the training loop."""
    if hasattr(denoiser, "enable_gradient_checkpointing"):
        denoiser.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if hasattr(denoiser, "disable_gradient_checkpointing"):
            denoiser.disable_gradient_checkpointing()


@contextlib.contextmanager
def _channels_last(denoiser: torch.nn.Module, objective: Objective):
    """The frozen denoiser's 4-D weights (its convolutions) and the latents ``objective`` gives it in channels_last
    memory format for the duration of the training loop: cuDNN's own layout, so the activations stay in it from
    the first convolution on (no NCHW <-> NHWC conversion around each). The weights it converted go back after."""
    moved = [
        p
        for p in denoiser.parameters()
        if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last)
    ]
    for p in moved:  # frozen weights: their values stay, only the order of their elements in memory changes
        p.data = p.data.contiguous(memory_format=torch.channels_last)
    objective.memory_format = torch.channels_last
    try:
        yield
    finally:
        objective.memory_format = None
        for p in moved:
            p.data = p.data.contiguous()


def start_from(sharpener: Sharpener, name: str) -> None:
    """Copy the weights of the sharpener ``name`` into ``sharpener`` (``DistillConfig.init_from``); refuse one
    made for another model (text width, tokens, family) or whose network differs (architecture, sizes),
    naming the difference."""
    src = Sharpener.from_pretrained(name)

    def differing(keys: tuple[str, ...], names: dict[str, str] | None = None) -> list[str]:
        return [
            f"{(names or {}).get(k, k)}: {src.config.get(k)!r} there, {sharpener.config.get(k)!r} here"
            for k in keys
            if src.config.get(k) != sharpener.config.get(k)
        ]

    model = differing(
        ("dim", "num_tokens", "family", "copy_first_token"), {"dim": "text width", "num_tokens": "tokens"}
    )
    if model:  # no option of this run can fix it: the sharpener belongs to another base model
        base = src.config.get("base_model")
        raise InputError(
            f"init_from={name}: that sharpener was trained for another model"
            f"{f' ({base})' if base else ''}: {'; '.join(model)}. "
            "Start from a sharpener trained for this model, or leave out --init-from."
        )
    diff = differing(("inner_dim", "heads", "arch", "mask_mode"))
    if src.config.get("time_edges") and src.config.get("time_edges") != sharpener.config.get("time_edges"):
        diff.append(
            f"time_edges: {src.config['time_edges']} there, {sharpener.config.get('time_edges')} here"
        )
    if src.config.get("time_embed", "none") != "none":  # its time MLP must have a place here, of its width

        def timing(config: dict) -> str:
            embed = config.get("time_embed", "none")
            return repr(embed) if embed == "none" else f"{embed!r} of width {config.get('time_width')}"

        if timing(src.config) != timing(sharpener.config):
            diff.append(f"time_embed: {timing(src.config)} there, {timing(sharpener.config)} here")
    if diff:
        raise InputError(
            f"init_from={name}: that sharpener's network differs from this run's ({'; '.join(diff)}). "
            "Give the options it was trained with (--arch, --inner-dim, --heads, --mask-mode, --time-edges, "
            "--time-embed, --time-width)."
        )
    own = dict(sharpener.named_parameters())
    # a static sharpener may start a time-dependent one: a time-block one starts each block from its edit, a
    # continuous-time one (its time MLP's last layer zero) from its edit at every timestep
    with torch.no_grad():
        for k, q in src.named_parameters():
            own[k].copy_(q.to(own[k].dtype))
    log.info("starting from the weights of %s (%s steps)", name, src.config.get("train_steps", "?"))


def interval_of(pipe: Any, cfg: DistillConfig, steps: int = 20) -> dict[str, float] | None:
    """The DICE interval a run trained on part of the schedule (``t_range``) records as its sampling settings:
    the steps of ``steps`` default-scheduler steps whose timesteps lie in the trained window (None for the whole
    schedule: sample as the paper does). `dice tune` measures better settings on the model itself."""
    if tuple(cfg.t_range) == (0.0, 1.0):
        return None
    from .sources import schedule_timesteps, timestep_window

    lo, hi = timestep_window(cfg, int(pipe.scheduler.config.num_train_timesteps))
    inside = [i for i, t in enumerate(schedule_timesteps(pipe, steps)) if lo <= t < hi]
    if not inside:
        return None
    return {"alpha": 1.0, "start": inside[0] / steps, "stop": (inside[-1] + 1) / steps}


def _validation_grid(pipe, sharpener: Sharpener, cfg: DistillConfig, run_dir: Path, step: int) -> None:
    from ..sampling.generate import generate
    from ..sampling.grid import save_grid

    samples = list(
        generate(pipe, list(cfg.validation_prompts), method="dice", sharpener=sharpener, progress=False)
    )
    save_grid(
        [s.image for s in samples],
        run_dir / "validation" / f"step_{step:07d}.png",
        labels=[s.prompt for s in samples],
    )
