"""A small resumable training loop shared by the mini model's stages (text encoder, VAE, UNet).

A stage's folder holds ``ckpt.safetensors``, a checkpoint in the shared run-folder format (``runs.folder``:
weights, AdamW state, the EMA as ``ema.*``; metadata = step, param groups, elapsed time, last loss) written
atomically every ``ckpt_every`` steps and when the time limit is near. Running the same stage again resumes
from it. Randomness is drawn from a generator re-seeded from ``(seed, step)`` at every step, so a resumed run
is bitwise identical to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dicecfg.runs.folder import append_stats, read_checkpoint, restore_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
CKPT = "ckpt.safetensors"


@dataclass(frozen=True)
class LoopConfig:
    steps: int  # total optimizer steps of this stage
    lr: float  # AdamW peak learning rate (linear warm-up, then constant)
    warmup: int = 200  # warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    ema_decay: float | None = None  # EMA of weights (None = no EMA)
    grad_clip: float = 1.0  # max gradient norm
    ckpt_every: int = 1000  # checkpoint period in steps
    log_every: int = 50  # stats.jsonl period in steps
    deadline: float | None = None  # time.monotonic() value at which to checkpoint and stop
    seed: int = 0
    progress: bool = True  # tqdm progress bar


def final_weights(run_dir: str | Path, name: str, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """State dict of module ``name`` from a checkpoint (its EMA if present and preferred)."""
    ck = read_checkpoint(run_dir, CKPT)
    if ck is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}; run the stage first")
    tensors = ck[0]
    prefixes = ([f"ema.{name}."] if prefer_ema else []) + [f"model.{name}."]
    for prefix in prefixes:
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if sd:
            return sd
    raise KeyError(f"module {name!r} not in {run_dir}/{CKPT}")


def optimizer_step(
    loss: torch.Tensor, opt, params: list, grad_clip: float, ema: list | None = None, decay: float = 0.0
) -> None:
    """One update: backward, clip the gradient norm to ``grad_clip``, the optimizer's step, then the weight EMA
    (``ema <- decay * ema + (1 - decay) * weights``) when there is one."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    if ema is not None:
        torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1 - decay)


def train(
    run_dir: str | Path,
    stats_dir: str | Path,
    stage: str,
    modules: dict[str, torch.nn.Module],
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    cfg: LoopConfig,
    device: torch.device,
    extra_meta: dict | None = None,
) -> dict:
    """Train ``modules`` on ``loss_fn(generator)`` for ``cfg.steps`` steps, resuming if a checkpoint exists.

    Returns the final metadata (step, elapsed seconds over all runs, last loss, whether finished).
    """
    run_dir, model = Path(run_dir), torch.nn.ModuleDict(modules)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    names = [f"{n}.{k}" for n, m in modules.items() for k, p in m.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    ema = [p.detach().clone().float() for p in params] if cfg.ema_decay else None
    meta = {"step": 0, "elapsed_s": 0.0, "loss": None}
    if (ck := read_checkpoint(run_dir, CKPT)) is not None:
        tensors, meta = ck
        restore_checkpoint(tensors, meta, model, opt)
        meta.pop("param_groups")
        if ema is not None:
            ema = [tensors[f"ema.{k}"].to(device) for k in names]
        log.info("%s: resumed at step %d from %s", stage, meta["step"], run_dir / CKPT)

    def save() -> None:
        extra = {f"ema.{k}": v for k, v in zip(names, ema, strict=True)} if ema is not None else {}
        info = {k: v for k, v in meta.items() if k != "step"} | (extra_meta or {})
        save_checkpoint(run_dir, meta["step"], model, opt, name=CKPT, extra=extra, meta=info)

    gen = torch.Generator(device=device)
    step, t_run, t_log, losses = meta["step"], time.monotonic(), time.monotonic(), []
    elapsed0 = meta["elapsed_s"]
    for m in modules.values():
        m.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=stage, disable=not cfg.progress)
    stopped_early = False
    while step < cfg.steps:
        if cfg.deadline is not None and time.monotonic() >= cfg.deadline:
            stopped_early = True
            break
        gen.manual_seed(cfg.seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        loss = loss_fn(gen)
        decay = min(cfg.ema_decay, (1 + step) / (10 + step)) if ema is not None else 0.0
        optimizer_step(loss, opt, params, cfg.grad_clip, ema, decay)
        step += 1
        losses.append(loss.detach())
        bar.update(1)
        meta.update(step=step, elapsed_s=elapsed0 + time.monotonic() - t_run)
        if step % cfg.log_every == 0 or step == cfg.steps:
            meta["loss"] = torch.stack(losses).float().mean().item()
            rate = len(losses) / (time.monotonic() - t_log)
            append_stats(stats_dir, {"stage": stage, "step": step, "loss": meta["loss"], "it_s": rate})
            bar.set_postfix(loss=f"{meta['loss']:.4f}")
            losses, t_log = [], time.monotonic()
        if step % cfg.ckpt_every == 0:
            save()
    bar.close()
    meta["finished"] = step >= cfg.steps
    save()
    if stopped_early:
        log.info("%s: time limit reached at step %d/%d; re-run to continue", stage, step, cfg.steps)
    return meta
