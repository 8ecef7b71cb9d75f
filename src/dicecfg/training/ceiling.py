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
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..families import Cond, check_compatible, family_of
from ..flags import Checked, opt
from ..pipeline import (
    default_sharpener,
    device_option,
    dtype_option,
    is_mini,
    load_pipeline,
    model_option,
    resolve_device,
    resolve_dtype,
)
from ..runs.io import (
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    check_own_files,
    load_tensors,
    read_record,
)
from ..sampling.generate import generators, sample_batch
from ..sampling.methods import CFG, PEER_STOP, Unguided, sharpen_cond
from ..sharpener import Sharpener
from ..world.heldout import HELDOUT_SIZE
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


@dataclass
class CeilingReport:
    """What ``ceiling`` measured: one row per method (NFE, held-out loss, oracle scores) and where files went."""

    rows: list[dict[str, Any]]
    output_dir: Path

    def table(self) -> str:
        from ..evaluation.report import ceiling_table

        return ceiling_table(self.rows)


def _generator(seed: int, *parts: int) -> torch.Generator:
    h = seed
    for p in parts:
        h = h * 1_000_003 + p
    return torch.Generator().manual_seed(h % (2**63))


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

        def teacher(n: int, salt: int) -> torch.Tensor:  # (p, n, C, h, w) CFG samples of each prompt
            rep = self.cond.index(torch.arange(p, device=self.device).repeat_interleave(n))
            gens = generators(self.device, [cfg.seed * 7919 + salt + i for i in range(p * n)])
            lat, _ = sample_batch(
                pipe, fam, CFG(cfg.guidance_scale), rep, neg.expand(p * n), gens,
                num_inference_steps=cfg.teacher_steps, height=size, width=size, output_type="latent",
            )  # fmt: skip
            return lat.float().view(p, n, *lat.shape[1:])

        # seeds: distinct for batches and uses while prompts_per_batch x pool stays under 10,000
        self.pool = teacher(cfg.pool, 10_000 * (2 * k))
        self.eval_x0 = teacher(2, 10_000 * (2 * k + 1))
        g = _generator(cfg.seed, k, -1)
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
        g = _generator(self.cfg.seed, self.k, step)
        p, d = len(self.cond), self.cfg.draws
        pick = torch.randint(0, self.cfg.pool, (p, d), generator=g)
        t = torch.randint(0, len(self.alphas), (p, d), generator=g)
        return pick, t, torch.randn((p * d, *self.pool.shape[2:]), generator=g)

    @torch.no_grad()
    def eval_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.loss(tokens, self.eval_pick, self.eval_t, self.eval_noise, self.eval_x0)


def ceiling(
    pipe: Any,
    prompts: Sequence[str],
    *,
    output_dir: str | Path,
    config: CeilingConfig = CeilingConfig(),
    sharpener: Sharpener | None = None,
    seeds: Sequence[int] | int = 0,
    specs: Sequence[Any] | None = None,
) -> CeilingReport:
    """Optimise a free embedding edit per prompt on the DICE objective and compare it with unguided, CFG and
    ``sharpener`` (module docstring). ``seeds``: the sampler seed of each prompt's images (an int: seed + i).
    ``specs``: what each prompt asserts in the shapes world (default: parsed from the prompts when they are
    all in its grammar); with them the report has the oracle's scores. Re-running resumes from
    ``output_dir``; its ``ceiling.json`` and ``grid.png`` hold the report."""
    from ..metrics.world import alignment, world_specs

    prompts = list(prompts)
    if not prompts:
        raise InputError("ceiling() needs at least one prompt.")
    cfg = config
    fam = family_of(pipe) if sharpener is None else check_compatible(pipe, sharpener)
    seeds = seed_list(seeds, len(prompts))
    if len(seeds) != len(prompts):
        raise InputError(f"Got {len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt.")
    specs = list(specs) if specs is not None else world_specs(prompts)
    out = Path(output_dir)
    record = run_record(cfg, prompts, seeds)
    check_ceiling_folder(out, record)
    (out / "edits").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_FILE, record)
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
        delta = _optimise(batch, c, keep, out / "edits" / f"batch_{k:04d}.safetensors", step_bar)
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
    report = CeilingReport(rows, out)
    atomic_write_json(out / "ceiling.json", {"config": asdict(cfg), "rows": rows})
    atomic_write_text(out / "ceiling.md", report.table() + "\n")
    _grid(images, prompts, out / "grid.png")
    return report


RUN_FILE = "ceiling_run.json"  # the run's prompts, seeds and settings: the provenance of the folder
FILES = ("ceiling.json", "ceiling.md", "grid.png", "edits")  # what a run writes beside it
NOT_SETTINGS = ("progress",)  # config fields that do not shape the result: never compared


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two ceiling_run.json records, each named (settings that do not shape the result
    left out)."""
    out = []
    old_cfg = old.get("config") if isinstance(old.get("config"), dict) else {}
    new_cfg = new["config"]
    for k in sorted((set(old_cfg) | set(new_cfg)) - set(NOT_SETTINGS)):
        if old_cfg.get(k) != new_cfg.get(k):
            out.append(f"{k}: {old_cfg.get(k, 'missing')!r} -> {new_cfg.get(k, 'missing')!r}")
    for k in ("prompts", "seeds"):
        a, b = old.get(k) if isinstance(old.get(k), list) else [], new[k]
        if a != b:
            first = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
            )
            out.append(f"{k}: {len(a)} -> {len(b)}" if len(a) != len(b) else f"{k}: #{first + 1} differs")
    return out


def seed_list(seeds: Sequence[int] | int, n: int) -> list[int]:
    """The sampler seed of each of ``n`` prompts: the given list, or (an int) seed, seed + 1, ..."""
    return [seeds + i for i in range(n)] if isinstance(seeds, int) else list(seeds)


def run_record(cfg: CeilingConfig, prompts: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """What ceiling_run.json holds: the settings, prompts and seeds of a run (JSON types)."""
    return json.loads(json.dumps({"config": asdict(cfg), "prompts": list(prompts), "seeds": list(seeds)}))


def check_ceiling_folder(out: Path, record: dict[str, Any]) -> None:
    """Before a run writes into ``out``: a folder of a ceiling run resumes when its prompts, seeds and settings
    are the same (else each difference is named); any other file it would replace is refused
    (``runs.io.check_own_files``); a damaged ceiling_run.json is named with what to do."""
    path = out / RUN_FILE
    if os.path.lexists(path):
        old = read_record(path)
        if old is None:
            raise InputError(
                f"{path} is damaged (not a JSON object in UTF-8). It records the prompts, seeds and settings of "
                f"the edits in {out / 'edits'}: restore it, or use another --out folder."
            )
        changed = _differences(old, record)
        if changed:
            raise InputError(
                f"{out} holds a ceiling run with other prompts, seeds or settings ({'; '.join(changed)}). Repeat "
                "the original ones to resume it, or use another --out folder."
            )
    check_own_files(out, FILES, command="ceiling", ours=os.path.lexists(path))


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


def _grid(images: dict[str, np.ndarray], prompts: list[str], path: Path, n: int = 8) -> None:
    from ..sampling.grid import save_grid

    n = min(n, len(prompts))
    tiles = [images[row][i] for row in images for i in range(n)]
    labels = [f"{row}: {prompts[i]}" for row in images for i in range(n)]
    save_grid(tiles, path, cols=n, labels=labels)


@dataclass(frozen=True)
class CeilingJob(Checked):
    """`dice ceiling`: the model, the prompts, the sharpener to compare and the optimisation (``config``)."""

    prompts: tuple[str, ...] = opt(
        (), "prompts (default with the mini model: its held-out prompts)", positional=True
    )
    prompts_file: str | None = opt(
        None, "text file (one prompt per line) or JSONL", flag="--prompts", metavar="FILE", path="file"
    )
    limit: int = opt(
        32,
        f"held-out prompts of the shapes world used when no prompts are given (mini model; {HELDOUT_SIZE}: all)",
        min=1,
        max=HELDOUT_SIZE,
    )
    out: str = opt(
        "ceiling",
        "output folder: ceiling.json, ceiling.md, grid.png, edits/ (re-run to resume)",
        path="out_dir",
    )
    model: str | None = model_option()
    sharpener: str | None = opt(None, "sharpener to compare (default with the mini model: the shipped one)")
    device: str | None = device_option()
    dtype: str | None = dtype_option(training=True)
    config: CeilingConfig = opt(help="the optimisation", factory=CeilingConfig)


def run_ceiling(job: CeilingJob) -> CeilingReport:
    """``dice ceiling``: load the model (and sharpener), pick the prompts, run :func:`ceiling`."""
    from ..sampling.prompts import collect_prompts

    name = default_sharpener(job.model, job.sharpener)
    sharp = Sharpener.from_pretrained(name) if name else None  # the small file first: a bad path fails fast
    specs = None
    if job.prompts or job.prompts_file:
        prompts, seeds = collect_prompts(job.prompts, job.prompts_file), job.config.seed
    elif is_mini(job.model):
        from ..world import heldout_set

        if not 1 <= job.limit <= HELDOUT_SIZE:
            raise InputError(
                f"--limit must be 1 to {HELDOUT_SIZE}, the held-out set's size (got {job.limit})."
            )
        items = heldout_set(job.limit)
        prompts, seeds, specs = (
            [it.prompt for it in items],
            [it.seed for it in items],
            [it.spec for it in items],
        )
    else:
        raise InputError(
            "dice ceiling needs prompts for this model: pass them as arguments or --prompts FILE."
        )
    check_ceiling_folder(
        Path(job.out), run_record(job.config, prompts, seed_list(seeds, len(prompts)))
    )  # before the model loads
    device = resolve_device(job.device)
    pipe = load_pipeline(job.model, dtype=resolve_dtype(job.dtype, device, training=True), device=device)
    return ceiling(
        pipe, prompts, output_dir=job.out, config=job.config, sharpener=sharp, seeds=seeds, specs=specs
    )
