"""Up-front checks of sampling inputs, before any work: prompt length, image size, edit strength.
See docs/reliability.md for the guarantees."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from ..errors import InputError

log = logging.getLogger(__name__)


def warn_truncated(pipe: Any, fam: Any, prompts: Sequence[str]) -> int:
    """Warn once with the number of prompts longer than the text encoder's limit; returns that number."""
    tok, limit = getattr(pipe, "tokenizer", None), fam.num_tokens(pipe)
    if tok is None or not prompts:
        return 0
    unique = sorted(set(prompts))
    lengths = [len(ids) for ids in tok(unique, truncation=False)["input_ids"]]
    long = {p for p, n in zip(unique, lengths, strict=True) if n > limit}
    count = sum(p in long for p in prompts)
    if count:
        example = max(long, key=len)
        log.warning(
            "%d of %d prompts are longer than the text encoder's %d tokens and are truncated "
            "(longest starts: %r)",
            count,
            len(prompts),
            limit,
            example[:60],
        )
    return count


def check_size(pipe: Any, fam: Any, height: int | None, width: int | None) -> None:
    """Refuse image sizes the pipeline cannot make, before any work: positive multiples of the VAE factor
    (x the patch size for transformers) and of 8 (the stock pipelines' own check)."""
    patch = getattr(fam.denoiser(pipe).config, "patch_size", None) or 1
    m = math.lcm(8, int(pipe.vae_scale_factor) * int(patch))
    for name, v in (("height", height), ("width", width)):
        if v is not None and (v <= 0 or v % m):
            ok = max(m, round(v / m) * m)
            raise InputError(
                f"{name}={v} is not a positive multiple of {m} (VAE factor {pipe.vae_scale_factor}"
                f"{f' x patch {patch}' if patch > 1 else ''}, and 8); try {ok}."
            )


def check_alpha(alpha: float) -> None:
    """Warn for edit strengths outside the range the method was tested on (0 to 4)."""
    if not math.isfinite(alpha):
        raise InputError(f"alpha must be a finite number (got {alpha}).")
    if alpha < 0 or alpha > 4:
        log.warning(
            "alpha=%g is outside the usual range 0..4: %s",
            alpha,
            "a negative alpha moves away from the guided result" if alpha < 0 else "expect oversaturation",
        )
