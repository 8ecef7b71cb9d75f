"""The ceiling of embedding edits: how much of CFG can *any* fixed edit of the text embedding buy on a model?

For each prompt, a free edit ``delta`` of its text embedding (token 0 kept where the family copies it) is
optimised with Adam on the DICE objective (docs/method.md, "Training objective"), nothing amortised:

    min_delta  E_{x_0, t, noise} || eps(x_t, t, c + delta) - [eps_u + w (eps_c - eps_u)] ||

x_0 comes from ``pool`` of the teacher's own CFG samples of that prompt, re-noised at ``draws`` fresh
(t, noise) pairs per prompt and step (t uniform over the training timesteps). Then every prompt is sampled
without guidance from c' = c + delta, beside unguided, CFG and (optionally) a trained sharpener, with the
same per-image seeds. What it reports, side by side: the held-out distillation loss (fixed draws on other
CFG samples of the same prompts, never trained on), the oracle's scores when the prompts are in the shapes-
world grammar, and a grid image for any model.

A sharpener is an amortised version of this optimum: the gap between the two rows is what a better sharpener
or recipe can still win; the gap between the optimum and CFG is what no embedding edit can.

Work is done in batches of ``prompts_per_batch`` prompts; each batch's edit and Adam state are checkpointed
atomically every ``checkpoint_every`` steps in ``output_dir/edits/``, and the same call resumes exactly.

This module is the library (the settings, the seeds, the optimisation and the comparison); ``ceiling_job``
holds the run in a folder (``ceiling()``: its checks, its record and its report) and `dice ceiling`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..families import Cond
from ..flags import Checked, opt
from ..runs.io import atomic_save_tensors, load_tensors
from ..sampling.generate import generators, sample_batch
from ..sampling.methods import CFG, PEER_STOP, Unguided, sharpen_cond
from ..sharpener import Sharpener
from .objective import autocast_for, cfg_target, sample_loss
from .sources import add_noise, train_alphas

log = logging.getLogger(__name__)
# in the order of the report and the grid; "cfg-first": the best cheap training-free peer, CFG on the first steps
ROWS = ("unguided", "cfg", "cfg-first", "optimum", "sharpener")


@dataclass(frozen=True)
class CeilingConfig(Checked):
    """The per-prompt optimisation and the comparison of ``ceiling`` (module docstring)."""

    steps: int = opt(300, "Adam updates of each prompt's edit")
    lr: float = opt(0.05, "Adam learning rate of the edit")
    draws: int = opt(8, "(x_0, t, noise) draws per prompt and step")
    pool: int = opt(4, "teacher CFG samples per prompt: the x_0 of the draws")
    eval_draws: int = opt(8, "fixed held-out draws per prompt for the loss (x_0 from other CFG samples)")
    guidance_scale: float = opt(5.0, "teacher CFG scale w (and the CFG row's)", min=1.0)
    loss: str = opt("l1", "distance of the objective, as in training", choices=("l1", "l2"))
    teacher_steps: int = opt(20, "sampling steps of the teacher's CFG samples")
    num_inference_steps: int = opt(20, "sampling steps of the compared images")
    prompts_per_batch: int = opt(32, "prompts optimised together (each pass holds prompts x draws samples)")
    seed: int = opt(
        0,
        "seeds every random draw; given prompts are sampled with seeds seed, seed + 1, ...",
        min=0,
        max=2**32 - 1,
    )
    checkpoint_every: int = opt(100, "steps between atomic checkpoints of a batch's edits")
    mixed_precision: str = opt(
        "auto", 'bf16 autocast on CUDA ("auto"), "bf16" or "no"', choices=("auto", "bf16", "no")
    )
    progress: bool = opt(True, "show progress bars", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # choices, ranges (the fields' min / max), finite numbers: as the CLI checks them
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (
                self.draws >= 1 and self.pool >= 1 and self.eval_draws >= 1,
                "draws, pool, eval_draws must be >= 1",
            ),
            (self.loss in ("l1", "l2"), "loss must be 'l1' or 'l2'"),
            (self.teacher_steps >= 1 and self.num_inference_steps >= 1, "sampling steps must be >= 1"),
            (self.prompts_per_batch >= 1, "prompts_per_batch must be >= 1"),
            (
                self.prompts_per_batch * max(self.pool, 2) < 10_000,
                "prompts_per_batch x pool must stay under 10,000",
            ),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.mixed_precision in ("auto", "bf16", "no"), "mixed_precision must be auto, bf16 or no"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"CeilingConfig: {msg}.")


SEED_STREAMS = ("pool", "eval_x0")  # the teacher samples' streams; an int stream: a step's draws


def derive_seeds(seed: int, stream: str | int, k: int, n: int = 1) -> list[int]:
    """Every seed of a ceiling run, derived from ``seed`` (``CeilingConfig.seed``), the use and batch ``k``;
    the same on every resume, whatever else changes.

    Args:
        seed: the run's seed.
        stream: ``"pool"``: the per-image seeds of the teacher's CFG samples whose re-noised versions train the
            edits; ``"eval_x0"``: those of the other CFG samples behind the fixed held-out draws; an int ``step``
            >= 0: the one seed of training step ``step``'s (x_0, t, noise) draws; -1: that of the fixed
            held-out draws.
        k: the batch of prompts (``prompts_per_batch`` each).
        n: how many seeds (per-image streams; the draws take one).

    Teacher seeds are ``seed * 7919 + 10_000 * (2k | 2k + 1) + i``: distinct across batches and streams while
    ``prompts_per_batch x pool`` stays under 10,000 (``CeilingConfig`` refuses more). Draw seeds are
    ``((seed * 1_000_003 + k) * 1_000_003 + step) mod 2**63``. These are the formulas of the first version,
    kept as they were rather than moved to ``numpy.random.SeedSequence``: the edits checkpointed in an
    earlier ceiling folder then resume to the same numbers.
    """
    if isinstance(stream, str):
        if stream not in SEED_STREAMS:
            raise ValueError(f"unknown seed stream {stream!r}: use one of {SEED_STREAMS} or a step")
        base = seed * 7919 + 10_000 * (2 * k + SEED_STREAMS.index(stream))
        return [base + i for i in range(n)]
    return [((seed * 1_000_003 + k) * 1_000_003 + stream) % (2**63)] * n


def draw_generator(seed: int, k: int, step: int) -> torch.Generator:
    """The CPU generator of batch ``k``'s draws at ``step`` (-1: the held-out draws), seeded by ``derive_seeds``."""
    return torch.Generator().manual_seed(derive_seeds(seed, step, k)[0])


class _Batch:
    """One batch of prompts: their conditioning, teacher samples, fixed held-out draws and the losses."""

    def __init__(
        self, pipe, fam, prompts: list[str], neg: Cond, cfg: CeilingConfig, k: int, autocast
    ) -> None:
        self.pipe, self.fam, self.cfg, self.k, self.autocast = pipe, fam, cfg, k, autocast
        self.device = pipe._execution_device
        self.cond = fam.encode(pipe, prompts)
        self.neg = neg
        self.alphas = train_alphas(pipe, self.device)
        p = len(prompts)
        size = fam.default_size(pipe)

        def teacher(n: int, stream: str) -> torch.Tensor:  # (p, n, C, h, w) CFG samples of each prompt
            rep = self.cond.index(torch.arange(p, device=self.device).repeat_interleave(n))
            gens = generators(self.device, derive_seeds(cfg.seed, stream, k, p * n))
            lat, _ = sample_batch(
                pipe, fam, CFG(cfg.guidance_scale), rep, neg.expand(p * n), gens,
                num_inference_steps=cfg.teacher_steps, height=size, width=size, output_type="latent",
            )  # fmt: skip
            return lat.float().view(p, n, *lat.shape[1:])

        self.pool = teacher(cfg.pool, "pool")
        self.eval_x0 = teacher(2, "eval_x0")
        g = draw_generator(cfg.seed, k, -1)
        e = cfg.eval_draws
        self.eval_pick = torch.randint(0, 2, (p, e), generator=g)
        self.eval_t = torch.linspace(0, len(self.alphas) - 1, e).round().long().repeat(p, 1)
        self.eval_noise = torch.randn((p * e, *self.pool.shape[2:]), generator=g)

    def _x_t(self, pick: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, source: torch.Tensor):
        p, n = pick.shape
        rows = torch.arange(p).repeat_interleave(n)
        x0 = source[rows.to(self.device), pick.flatten().to(self.device)]
        t = t.flatten().to(self.device)
        return add_noise(self.alphas, x0, noise.to(self.device), t), t, self.cond.index(rows.to(self.device))

    def loss(self, tokens: torch.Tensor, pick, t, noise, source) -> torch.Tensor:
        """Per-prompt mean loss of c' = ``tokens`` (p, N, d) over its draws: shape (p,)."""
        x_t, tt, cond = self._x_t(pick, t, noise, source)
        n = pick.shape[1]
        edited = cond.with_embeds(tokens.repeat_interleave(n, 0).to(cond.embeds.dtype))
        with self.autocast():
            target, _ = cfg_target(
                self.pipe, self.fam, x_t, tt, cond, self.neg.expand(len(cond)), self.cfg.guidance_scale
            )
            pred = self.fam.denoise(self.pipe, x_t, tt, edited)
        return sample_loss(pred, target, self.cfg.loss).view(-1, n).mean(1)

    def train_draw(self, step: int):
        g = draw_generator(self.cfg.seed, self.k, step)
        p, d = len(self.cond), self.cfg.draws
        pick = torch.randint(0, self.cfg.pool, (p, d), generator=g)
        t = torch.randint(0, len(self.alphas), (p, d), generator=g)
        return pick, t, torch.randn((p * d, *self.pool.shape[2:]), generator=g)

    @torch.no_grad()
    def eval_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.loss(tokens, self.eval_pick, self.eval_t, self.eval_noise, self.eval_x0)


def measure_ceiling(
    pipe: Any,
    fam: Any,
    prompts: list[str],
    seeds: list[int],
    specs: list | None,
    cfg: CeilingConfig,
    sharpener: Sharpener | None,
    edits_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The optimisation and the comparison (module docstring) for checked inputs (``ceiling_job.ceiling``):
    each batch's edits optimised, resuming from and checkpointing to ``edits_dir``; then each row's held-out
    loss, NFE and (with ``specs``) oracle scores, and its images. Returns (rows, images by row)."""
    from ..metrics.world import alignment

    if sharpener is not None and sharpener.time_dependent:  # the sharpener row is one fixed edit per prompt
        raise InputError(
            "dice ceiling compares one fixed edit per prompt, and this sharpener's edit depends on the timestep "
            "(time_edges / time_embed): leave out --sharpener, or compare it with `dice eval`."
        )
    device = pipe._execution_device
    autocast = autocast_for(device, cfg.mixed_precision)
    fam.denoiser(pipe).requires_grad_(False)
    neg = fam.encode(pipe, [""])
    keep = torch.ones(1, fam.num_tokens(pipe), 1, device=device)
    if fam.copy_first_token:
        keep[:, 0] = 0

    losses = {r: [] for r in ROWS}
    edited: list[torch.Tensor] = []
    step_bar = tqdm(total=cfg.steps * -(-len(prompts) // cfg.prompts_per_batch), desc="ceiling", unit="step",
                    disable=not cfg.progress)  # fmt: skip
    for k, s in enumerate(range(0, len(prompts), cfg.prompts_per_batch)):
        batch = _Batch(pipe, fam, prompts[s : s + cfg.prompts_per_batch], neg, cfg, k, autocast)
        c = batch.cond.embeds.float()
        delta = _optimise(batch, c, keep, Path(edits_dir) / f"batch_{k:04d}.safetensors", step_bar)
        losses["unguided"].append(batch.eval_loss(c))
        losses["optimum"].append(batch.eval_loss(c + delta))
        if sharpener is not None:
            sharpener.to(device)
            with torch.no_grad():
                sharp = sharpener.edit(c, neg.embeds.float(), 1.0, neg_mask=fam.key_mask(neg))
            losses["sharpener"].append(batch.eval_loss(sharp))
        edited.append((c + delta).to(batch.cond.embeds.dtype))
    step_bar.close()

    cond_all = fam.encode(pipe, prompts)
    conds = {
        "unguided": cond_all,
        "cfg": cond_all,
        "cfg-first": cond_all,
        "optimum": cond_all.with_embeds(torch.cat(edited)),
    }
    if sharpener is not None:
        conds["sharpener"] = sharpen_cond(fam, sharpener, cond_all, neg.expand(len(prompts)))
    rows, images = [], {}
    for row in [r for r in ROWS if r in conds]:
        peer = CFG(cfg.guidance_scale, stop=PEER_STOP)
        method = {"cfg": CFG(cfg.guidance_scale), "cfg-first": peer}.get(
            row, Unguided()
        )  # edits: in the cond
        out_images = []
        for b in tqdm(range(0, len(prompts), 64), desc=f"sampling {row}", disable=not cfg.progress):
            sl = slice(b, b + 64)
            gens = generators(device, seeds[sl])
            imgs, nfe = sample_batch(
                pipe, fam, method, conds[row].index(sl), neg.expand(len(gens)), gens,
                num_inference_steps=cfg.num_inference_steps,
            )  # fmt: skip
            out_images.append((np.clip(imgs, 0, 1) * 255).round().astype(np.uint8))
        images[row] = np.concatenate(out_images)
        loss = torch.cat(losses[row]).mean().item() if losses.get(row) else (0.0 if row == "cfg" else None)
        r = {"row": row, "nfe": int(nfe.max()), "eval_loss": loss}
        if specs is not None:
            r |= {k: float(v.mean()) for k, v in alignment(images[row], specs).items()}
        rows.append(r)
    return rows, images


def _load_edit(path: Path, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch's checkpoint, checked: a cut or foreign file, or edits of another shape, are named with the fix."""
    from safetensors import SafetensorError

    try:
        saved = load_tensors(path, device=str(like.device))
        shapes = {k: tuple(saved[k].shape) for k in ("delta", "exp_avg", "exp_avg_sq")}
        int(saved["step"].item()), saved["adam_step"].reshape(())
    except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as e:
        problem = f"damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    else:
        if all(v == tuple(like.shape) for v in shapes.values()):
            return saved
        problem = f"of another shape ({shapes['delta']} for this batch's {tuple(like.shape)})"
    raise InputError(
        f"{path} is {problem}. Delete it to optimise that batch again (the other batches are kept)."
    )


def _optimise(batch: _Batch, c: torch.Tensor, keep: torch.Tensor, path: Path, bar) -> torch.Tensor:
    """Adam on the batch's free edits, resuming from (and checkpointing to) ``path``; returns the edits."""
    cfg = batch.cfg
    delta = torch.zeros_like(c, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    start = 0
    if path.is_file():
        saved = _load_edit(path, c)
        with torch.no_grad():
            delta.copy_(saved["delta"])
        start = int(saved["step"].item())
        if start < cfg.steps:
            opt.state[delta] = {
                "step": saved["adam_step"].cpu(),
                "exp_avg": saved["exp_avg"],
                "exp_avg_sq": saved["exp_avg_sq"],
            }
    bar.update(start)
    for step in range(start, cfg.steps):
        opt.zero_grad(set_to_none=True)
        loss = batch.loss(c + delta * keep, *batch.train_draw(step), batch.pool).sum()  # each prompt its own
        loss.backward()
        opt.step()
        bar.update(1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            st = opt.state[delta]
            atomic_save_tensors(path, {
                "delta": delta.detach(), "step": torch.tensor(step + 1), "adam_step": st["step"].reshape(()),
                "exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"],
            })  # fmt: skip
    return (delta * keep).detach()
