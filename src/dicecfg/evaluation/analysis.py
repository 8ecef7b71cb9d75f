"""Where the sharpener's edit lands (`dice analyze`): per-token size of delta = c' - c by token group.

The paper's analysis says the edit r(c, c_neg) concentrates on the end-of-text / padding positions and leaves
the word tokens almost unchanged. Token positions are classified from the pipeline's own tokenizer (its
attention mask and end-of-text id): ``sos`` (position 0 when it is the start token), ``words``, ``eos`` (the
first end-of-text token) and ``padding`` (everything after it). Per group we report the mean per-token norm
of the edit, the edit relative to the token's norm, the cosine similarity of c and c', and the group's
share of the total squared edit (the shares sum to 1) next to its share of positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..flags import Checked, opt
from ..pipeline import device_option, dtype_option, model_option, sharpener_option
from ..runs.jobs import job_pipeline

log = logging.getLogger(__name__)
GROUPS = ("sos", "words", "eos", "padding")


@dataclass(frozen=True)
class AnalyzeConfig(Checked):
    """`dice analyze`: the sharpener, the prompts, and where to write the statistics."""

    out: str = opt("analysis", "output folder: analysis.json, analysis.md, analysis.png", path="out_dir")
    model: str | None = model_option()
    sharpener: str | None = sharpener_option()
    prompts: tuple[str, ...] = opt((), "prompts (default: the shapes world's held-out set)", positional=True)
    prompts_file: str | None = opt(
        None, "text file or JSONL of prompts", flag="--prompts", metavar="FILE", path="file"
    )
    limit: int = opt(64, "use the first N prompts", min=1)
    alpha: float = opt(1.0, "edit strength: c' = c + alpha * r(c, c_neg)")
    negative_prompt: str | None = opt(None, "c_neg (default: the empty prompt, as in training)")
    device: str | None = device_option()
    dtype: str | None = dtype_option()


def token_groups(tokenizer: Any, prompts: Sequence[str], num_tokens: int) -> torch.Tensor:
    """(B, N) group index into :data:`GROUPS` for each position, from the tokenizer's mask and special ids."""
    enc = tokenizer(
        list(prompts), padding="max_length", max_length=num_tokens, truncation=True, return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"].bool()
    length = mask.sum(1)  # real tokens, start and end tokens included
    pos = torch.arange(ids.shape[1])[None]
    groups = torch.full(ids.shape, GROUPS.index("words"))
    groups[pos >= length[:, None]] = GROUPS.index("padding")
    last = (length - 1).clamp(min=0)
    eos = tokenizer.eos_token_id
    if eos is not None:
        is_eos = ids.gather(1, last[:, None])[:, 0] == eos
        groups[torch.arange(len(ids))[is_eos], last[is_eos]] = GROUPS.index("eos")
    bos = tokenizer.bos_token_id
    if bos is not None:
        groups[:, 0] = torch.where(ids[:, 0] == bos, GROUPS.index("sos"), groups[:, 0])
    return groups


def edit_stats(c: torch.Tensor, c_new: torch.Tensor, groups: torch.Tensor) -> dict[str, Any]:
    """Per-group and per-position statistics of delta = c_new - c for (B, N, d) embeddings."""
    c, c_new = c.double().cpu(), c_new.double().cpu()
    delta = c_new - c
    norm = delta.norm(dim=-1)  # (B, N)
    cnorm = c.norm(dim=-1)
    cos = torch.nn.functional.cosine_similarity(c, c_new, dim=-1)
    total = float((norm**2).sum())
    out: dict[str, Any] = {"groups": {}, "total_sq_edit": total}
    for g, name in enumerate(GROUPS):
        sel = groups == g
        k = int(sel.sum())
        if k == 0:
            continue
        out["groups"][name] = {
            "tokens": k,
            "position_share": k / groups.numel(),
            "edit_norm": float(norm[sel].mean()),
            "token_norm": float(cnorm[sel].mean()),
            "relative_edit": float((norm[sel] / cnorm[sel].clamp(min=1e-12)).mean()),
            "cosine": float(cos[sel].mean()),
            "sq_edit": float((norm[sel] ** 2).sum()),
            "edit_share": float((norm[sel] ** 2).sum()) / total if total > 0 else 0.0,
        }
    out["per_position"] = {"edit_norm": norm.mean(0).tolist(), "cosine": cos.mean(0).tolist()}
    return out


def analyze(
    pipe: Any,
    sharpener: Any,
    prompts: Sequence[str],
    *,
    alpha: float = 1.0,
    negative_prompt: str | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Edit statistics of ``sharpener`` on ``prompts``, encoded and sharpened exactly as sampling does."""
    from ..families import check_compatible
    from ..sampling.generate import per_prompt
    from ..sampling.methods import sharpen_cond

    fam = check_compatible(pipe, sharpener)
    prompts = list(prompts)
    if not prompts:
        raise InputError("analyze needs at least one prompt.")
    negs = per_prompt(negative_prompt, len(prompts), "negative_prompt")
    cs, cps, gs = [], [], []
    for s in range(0, len(prompts), batch_size):
        cond, neg = fam.encode(pipe, prompts[s : s + batch_size]), fam.encode(pipe, negs[s : s + batch_size])
        cs.append(cond.embeds)
        cps.append(sharpen_cond(fam, sharpener, cond, neg, alpha).embeds)
        gs.append(token_groups(pipe.tokenizer, prompts[s : s + batch_size], cond.embeds.shape[1]))
    stats = edit_stats(torch.cat(cs), torch.cat(cps), torch.cat(gs))
    stats |= {
        "n_prompts": len(prompts),
        "alpha": alpha,
        "negative_prompt": negative_prompt,
        "family": fam.name,
    }
    return stats


ANALYSIS_FILES = ("analysis.json", "analysis.md", "analysis.png")


def check_analysis_folder(out: Path) -> None:
    """Refuse an --out folder whose analysis.json / .md / .png were not written by `dice analyze` (they would be
    replaced); a folder of an earlier analysis is the command's own: it is written again."""
    from ..runs.io import check_own_files, read_record

    record = read_record(out / "analysis.json")
    ours = record is not None and {"config", "n_prompts", "family"} <= set(record)
    check_own_files(out, ANALYSIS_FILES, command="analyze", ours=ours)


def run_analyze(cfg: AnalyzeConfig) -> dict[str, Any]:
    """`dice analyze`: writes analysis.json, analysis.md and analysis.png under ``cfg.out``."""
    from ..pipeline import default_sharpener
    from ..runs.io import atomic_write_json, atomic_write_text
    from ..sampling.prompts import collect_prompts
    from ..sharpener import Sharpener
    from .report import analysis_summary, plot_analysis

    name = default_sharpener(cfg.model, cfg.sharpener)
    if name is None:
        raise InputError("dice analyze needs --sharpener (a folder written by `dice train`).")
    sharp = Sharpener.from_pretrained(name)
    if cfg.prompts or cfg.prompts_file:
        prompts = collect_prompts(cfg.prompts, cfg.prompts_file)[: cfg.limit]
    else:
        from ..metrics.world import world_of_model
        from .evaluate import heldout_items

        prompts = [it.prompt for it in heldout_items(cfg.limit, world_of_model(cfg.model))]
    out = Path(cfg.out)
    check_analysis_folder(out)  # before the model loads
    pipe = job_pipeline(cfg.model, cfg.device, cfg.dtype)
    stats = analyze(pipe, sharp, prompts, alpha=cfg.alpha, negative_prompt=cfg.negative_prompt)
    stats["config"] = asdict(cfg)
    atomic_write_json(out / "analysis.json", stats)
    atomic_write_text(out / "analysis.md", analysis_summary(stats) + "\n")
    plot_analysis(stats, out / "analysis.png")
    return stats
