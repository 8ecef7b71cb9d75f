"""The ceiling of embedding edits: how much of CFG can *any* fixed edit of the text embedding buy on a model?

For each prompt, a free edit ``delta`` of its text embedding (token 0 kept where the family copies it) is
optimised with Adam on the DICE objective (docs/method.md, "Training objective"), nothing amortised:

    min_delta  E_{x_0, t, noise} || eps(x_t, t, c + delta) - [eps_u + w (eps_c - eps_u)] ||

x_0 comes from ``pool`` of the teacher's own CFG samples of that prompt, re-noised at ``draws`` fresh
(t, noise) pairs per prompt and step (t uniform over the training timesteps). Then every prompt is sampled
without guidance from c' = c + delta, beside unguided, CFG on every step, CFG on intervals of the steps
(``cfg-first`` and ``cfg_intervals``) and (optionally) a trained sharpener, with the same per-image seeds.

Edits that change with the step (``edits``: ``blocks:K``, ``steps``; ``interval``; ``ceiling_layout``) bound
what any step-dependent edit can do: K edits per prompt, one per block of sampling steps, optimised together as
one (prompts, K, tokens, dim) tensor; t is drawn uniformly over the timesteps of the steps they act on, and each
draw runs (and trains) the edit of its timestep's block. The optimum row then samples each step on its edit
(the plain prompt outside ``interval``) through the same ``sample_batch``.

What it reports, side by side: each row's NFE, the held-out distillation loss (fixed draws on other CFG
samples of the same prompts, never trained on, at timesteps spread over the whole schedule; a draw outside the
interval runs the plain prompt, as sampling does), the oracle's scores when the prompts are in a world's
grammar, the best CFG rows at the optimum's cost (``evaluation.report.ceiling_comparison``) and a grid image.

A sharpener is an amortised version of this optimum: the gap between the two rows is what a better sharpener
or recipe can still win; the gap between the optimum and CFG is what no embedding edit can.

Work is done in batches of ``prompts_per_batch`` prompts; each batch's edits and Adam state are checkpointed
atomically every ``checkpoint_every`` steps in ``output_dir/edits/`` (with their layout, unless it is the
static one on every step, whose files are those of the first version), and the same call resumes exactly.

This module is the library (the settings, the seeds, the optimisation and the comparison); ``ceiling_job``
holds the run in a folder (``ceiling()``: its checks, its record and its report) and `dice ceiling`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
from .ceiling_layout import (
    EDITS_HELP,
    EditLayout,
    StepEdits,
    check_layout,
    edit_layout,
    interval_spelling,
    layout_key,
    parse_edits,
    parse_interval,
    saved_layout,
)
from .objective import autocast_for, cfg_target, sample_loss
from .sources import add_noise, train_alphas

log = logging.getLogger(__name__)
# in the order of the report and the grid; "cfg-first": the best cheap training-free peer, CFG on the first steps;
# the rows of ``cfg_intervals`` (``cfg_interval_rows``) come after it
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
    edits: str = opt(
        "static",
        f"edits per prompt: {EDITS_HELP}; each trained on the timesteps of its steps (docs/recipes.md)",
        metavar="LAYOUT",
    )
    interval: str = opt(
        "0,1",
        "START,STOP: the fractions of the sampling steps the edits act on (step i of N when "
        "int(START*N) <= i < int(STOP*N)); the plain prompt elsewhere, and training draws only from its timesteps",
        metavar="START,STOP",
    )
    cfg_intervals: tuple[str, ...] = opt(
        ("0,0.05", "0,0.1", "0,0.15", "0,0.25", "0.15,0.9"),
        "START,STOP intervals of the compared CFG rows, beside CFG on every step; the defaults are the first 1, "
        "2, 3 and 5 of 20 steps and the middle band",
        metavar="START,STOP",
    )
    progress: bool = opt(True, "show progress bars", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # choices, ranges (the fields' min / max), finite numbers: as the CLI checks them
        self._spell()
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
        check_layout(self.edits, self.interval, self.num_inference_steps)

    def _spell(self) -> None:
        """``edits``, ``interval`` and ``cfg_intervals`` checked and spelled one way (``blocks:4``, ``0,0.25``), so
        a run record compares settings, not spellings; the CFG intervals in order, each once."""
        kind, count = parse_edits(self.edits)
        object.__setattr__(self, "edits", f"blocks:{count}" if kind == "blocks" else kind)
        object.__setattr__(self, "interval", interval_spelling(*parse_interval(self.interval)))
        if isinstance(self.cfg_intervals, str):
            raise InputError(
                f"--cfg-intervals (cfg_intervals) is a list of START,STOP intervals (got the text "
                f"{self.cfg_intervals!r}); e.g. cfg_intervals=('0,0.1', '0.15,0.9')."
            )
        spelled = [
            interval_spelling(*parse_interval(i, "--cfg-intervals (cfg_intervals)"))
            for i in self.cfg_intervals
        ]
        object.__setattr__(self, "cfg_intervals", tuple(dict.fromkeys(spelled)))


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
    """One batch of prompts: their conditioning, teacher samples, fixed held-out draws and the losses.

    The losses take c' as (p, S, N, d): S conditionings per prompt, and each draw runs the one its timestep's
    slot in ``layout`` names (``EditLayout.slots``: an edit, or slot K, the plain prompt, where none acts);
    with S = 1 every draw runs slot 0."""

    def __init__(
        self,
        pipe,
        fam,
        prompts: list[str],
        neg: Cond,
        cfg: CeilingConfig,
        k: int,
        autocast,
        layout: EditLayout,
    ) -> None:
        self.pipe, self.fam, self.cfg, self.k, self.autocast = pipe, fam, cfg, k, autocast
        self.device = pipe._execution_device
        self.cond = fam.encode(pipe, prompts)
        self.neg = neg
        self.alphas = train_alphas(pipe, self.device)
        self.layout, self.slots = layout, layout.slots().to(self.device)
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
        """Per-prompt mean loss over its draws of c' = ``tokens``: (p, N, d), one c' for every draw, or
        (p, S, N, d), each draw running the slot of its timestep (class docstring). Shape (p,)."""
        x_t, tt, cond = self._x_t(pick, t, noise, source)
        n = pick.shape[1]
        if tokens.dim() == 3 or tokens.shape[1] == 1:  # one c' for every draw: the first version's path
            per_draw = (tokens if tokens.dim() == 3 else tokens[:, 0]).repeat_interleave(n, 0)
        else:  # each draw its slot's c' (one gather; each edit's gradient sums the draws that ran it)
            p, s = tokens.shape[:2]
            rows = torch.arange(p, device=tt.device).repeat_interleave(n) * s + self.slots[tt]
            per_draw = tokens.flatten(0, 1).index_select(0, rows)
        edited = cond.with_embeds(per_draw.to(cond.embeds.dtype))
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
        t = torch.randint(*self.layout.window, (p, d), generator=g)  # where the edits act (all: 0, 1000)
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
    num_train = int(pipe.scheduler.config.num_train_timesteps)
    layout = edit_layout(cfg.edits, cfg.interval, pipe.scheduler, cfg.num_inference_steps, num_train)
    log.info("edits: %s", layout.describe())

    losses = {r: [] for r in ROWS}
    edited: list[torch.Tensor] = []
    step_bar = tqdm(total=cfg.steps * -(-len(prompts) // cfg.prompts_per_batch), desc="ceiling", unit="step",
                    disable=not cfg.progress)  # fmt: skip
    for k, s in enumerate(range(0, len(prompts), cfg.prompts_per_batch)):
        batch = _Batch(pipe, fam, prompts[s : s + cfg.prompts_per_batch], neg, cfg, k, autocast, layout)
        c = batch.cond.embeds.float()
        delta = _optimise(batch, c, keep, Path(edits_dir) / f"batch_{k:04d}.safetensors", step_bar)
        losses["unguided"].append(batch.eval_loss(c))
        losses["optimum"].append(batch.eval_loss(_edited(c, delta, layout)))
        if sharpener is not None:
            sharpener.to(device)
            with torch.no_grad():
                sharp = sharpener.edit(c, neg.embeds.float(), 1.0, neg_mask=fam.key_mask(neg))
            losses["sharpener"].append(batch.eval_loss(sharp))
        edited.append((c + delta if layout.whole else c.unsqueeze(1) + delta).to(batch.cond.embeds.dtype))
    step_bar.close()

    cond_all = fam.encode(pipe, prompts)
    rows, images = [], {}
    for row, (cond, method_of) in _compared(
        fam, cfg, layout, cond_all, torch.cat(edited), neg, sharpener
    ).items():
        out_images = []
        for b in tqdm(range(0, len(prompts), 64), desc=f"sampling {row}", disable=not cfg.progress):
            sl = slice(b, b + 64)
            gens = generators(device, seeds[sl])
            imgs, nfe = sample_batch(
                pipe, fam, method_of(sl), cond.index(sl), neg.expand(len(gens)), gens,
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


def cfg_interval_rows(cfg: CeilingConfig) -> dict[str, tuple[float, float]]:
    """The CFG rows of ``cfg.cfg_intervals`` by name (``cfg [0,0.25)``); an interval that is CFG on every step
    or the ``cfg-first`` row's is that row, not another."""
    out = {}
    for spelled in cfg.cfg_intervals:
        start, stop = parse_interval(spelled)
        if (start, stop) not in ((0.0, 1.0), (0.0, PEER_STOP)):
            out[f"cfg [{interval_spelling(start, stop)})"] = (start, stop)
    return out


def _compared(fam, cfg: CeilingConfig, layout: EditLayout, cond: Cond, edited: torch.Tensor, neg: Cond,
              sharpener: Sharpener | None) -> dict[str, tuple[Cond, Callable[[slice], Any]]]:  # fmt: skip
    """Each row's conditioning and method (of a slice of the prompts), in the report's order: ``ROWS``, the
    CFG interval rows after ``cfg-first``. The optimum is unguided sampling from c' (one edit on every step) or,
    when its edits change with the step, ``StepEdits`` through the same ``sample_batch``."""
    w = cfg.guidance_scale
    rows: dict[str, tuple[Cond, Callable[[slice], Any]]] = {
        "unguided": (cond, lambda sl: Unguided()),
        "cfg": (cond, lambda sl: CFG(w)),
        "cfg-first": (cond, lambda sl: CFG(w, stop=PEER_STOP)),
    }
    for name, (a, b) in cfg_interval_rows(cfg).items():
        rows[name] = (cond, lambda sl, a=a, b=b: CFG(w, a, b))
    if layout.whole:  # the edits are in the conditioning
        rows["optimum"] = (cond.with_embeds(edited), lambda sl: Unguided())
    else:
        step_edit = layout.step_edit()
        rows["optimum"] = (cond, lambda sl: StepEdits(edited[sl], step_edit))
    if sharpener is not None:
        sharp = sharpen_cond(fam, sharpener, cond, neg.expand(len(cond)))
        rows["sharpener"] = (sharp, lambda sl: Unguided())
    return rows


def _edited(c: torch.Tensor, delta: torch.Tensor, layout: EditLayout) -> torch.Tensor:
    """c' for ``_Batch.loss``: c + delta (one edit for every draw) for the whole layout, else (p, S, N, d): the
    K edits, then the plain prompt c where some timestep has no edit (the steps outside the interval)."""
    if layout.whole:
        return c + delta
    tokens = c.unsqueeze(1) + delta
    return tokens if layout.covers_all else torch.cat([tokens, c.unsqueeze(1)], 1)


def _layout_text(found: tuple | None) -> str:
    if found is None:
        return "one edit on every step, the static layout"
    spans, windows, (steps,) = found
    pairs = lambda v: tuple(zip(v[::2], v[1::2], strict=True))  # noqa: E731
    return EditLayout(steps, 0, pairs(spans), pairs(windows)).describe()


def _load_edit(path: Path, like: torch.Size, layout: EditLayout) -> dict[str, torch.Tensor]:
    """A batch's checkpoint, checked: a cut or foreign file, edits of another layout or shape, are named with
    the fix."""
    from safetensors import SafetensorError

    try:
        saved = load_tensors(path, device="cpu")
        shapes = {k: tuple(saved[k].shape) for k in ("delta", "exp_avg", "exp_avg_sq")}
        int(saved["step"].item()), saved["adam_step"].reshape(())
        found = saved_layout(saved)
    except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as e:
        problem = f"damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    else:
        if found != layout_key(layout):
            problem = (
                f"of another edit layout ({_layout_text(found)}; this run's: {layout.describe()}; was the "
                "folder's ceiling_run.json replaced?)"
            )
        elif all(v == tuple(like) for v in shapes.values()):
            return saved
        else:
            problem = f"of another shape ({shapes['delta']} for this batch's {tuple(like)})"
    raise InputError(
        f"{path} is {problem}. Delete it to optimise that batch again (the other batches are kept)."
    )


def _optimise(batch: _Batch, c: torch.Tensor, keep: torch.Tensor, path: Path, bar) -> torch.Tensor:
    """Adam on the batch's free edits, resuming from (and checkpointing to) ``path``; returns the edits: (p, N, d)
    for the whole layout (as the first version), else (p, K, N, d), one per edit of ``batch.layout``. All K edits
    are one tensor and one optimisation; each draw's loss reaches only the edit of its timestep's block."""
    cfg, layout = batch.cfg, batch.layout
    shape = c.shape if layout.whole else (c.shape[0], layout.count, *c.shape[1:])
    delta = torch.zeros(shape, dtype=c.dtype, device=c.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    start = 0
    if path.is_file():
        saved = _load_edit(path, delta.shape, layout)
        with torch.no_grad():
            delta.copy_(saved["delta"].to(c.device))
        start = int(saved["step"].item())
        if start < cfg.steps:
            opt.state[delta] = {
                "step": saved["adam_step"].cpu(),
                "exp_avg": saved["exp_avg"].to(c.device),
                "exp_avg_sq": saved["exp_avg_sq"].to(c.device),
            }
    bar.update(start)
    for step in range(start, cfg.steps):
        opt.zero_grad(set_to_none=True)
        tokens = _edited(c, delta * keep, layout)
        loss = batch.loss(tokens, *batch.train_draw(step), batch.pool).sum()  # each prompt its own
        loss.backward()
        opt.step()
        bar.update(1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            st = opt.state[delta]
            atomic_save_tensors(path, {
                "delta": delta.detach(), "step": torch.tensor(step + 1), "adam_step": st["step"].reshape(()),
                "exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"], **layout.tensors(),
            })  # fmt: skip
    return (delta * keep).detach()
