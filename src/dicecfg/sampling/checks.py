"""Up-front checks of sampling inputs, before any work: prompt text and length, image size, edit strength.
See docs/reliability.md for the guarantees."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from ..errors import InputError

log = logging.getLogger(__name__)
NOT_TEXT = re.compile("[\0\ud800-\udfff]")  # a NUL byte or a lone surrogate: no tokenizer takes them
TOKENIZE_CHUNK = 4096  # prompts tokenized at a time to count the long ones: bounded memory for huge files
SEED_MAX = 2**63 - 1  # per-image seeds are 0 .. SEED_MAX (torch.Generator.manual_seed takes 64 bits)


def check_text(prompts: Sequence[str], what: str = "prompts") -> None:
    """Refuse prompts a tokenizer cannot take, naming the first bad one by its position (1-based) among
    ``what``: a NUL byte, or a lone surrogate (bytes that are not UTF-8 in a command-line argument arrive in
    Python as U+DC80..U+DCFF; a JSON ``"\\ud800"`` escape gives one too)."""
    for i, p in enumerate(prompts, 1):
        if (m := NOT_TEXT.search(p)) is None:
            continue
        one = what[:-1] if what.endswith("s") else what
        c = ord(m[0])  # U+DC80..U+DCFF: the byte 0x80..0xFF of an argument (Python's surrogateescape)
        shown = f"byte 0x{c - 0xDC00:02X}" if 0xDC80 <= c <= 0xDCFF else f"U+{c:04X}"
        where = f"{one[0].upper()}{one[1:]} {i} ({p[: m.start()][-30:]!r}, then {shown})"
        if m[0] == "\0":
            raise InputError(f"{where} holds a NUL byte; prompts are plain text.")
        raise InputError(
            f"{where} is not valid text: it holds bytes that are not UTF-8 (a terminal or file in another "
            "encoding?). Type it again as UTF-8, or convert the file (e.g. iconv -f latin1 -t utf-8)."
        )


def check_prompts(pipe: Any, fam: Any, prompts: Sequence[str], what: str = "prompts") -> int:
    """Refuse prompts that are not valid text (``check_text``: every prompt passes here before it is encoded),
    then warn once with the number of prompts longer than the text encoder's limit; returns that number.
    ``what`` names them in the messages (``"negative prompts"`` are counted apart from the prompts)."""
    check_text(prompts, what)
    tok, limit = getattr(pipe, "tokenizer", None), fam.num_tokens(pipe)
    if tok is None or not prompts:
        return 0
    # An ASCII prompt of n characters has at most n + 3 tokens (each token covers a character or more; start,
    # end and a SentencePiece word marker besides), so only longer ones need the tokenizer; they are tokenized
    # in chunks, keeping the lengths alone (all at once, 1M prompts took 5.5 GB of token-id lists).
    unique = [p for p in sorted(set(prompts)) if not p.isascii() or len(p) + 3 > limit]
    long = set()
    for start in range(0, len(unique), TOKENIZE_CHUNK):
        part = unique[start : start + TOKENIZE_CHUNK]
        ids = tok(part, truncation=False)["input_ids"]
        long.update(p for p, n in zip(part, map(len, ids), strict=True) if n > limit)
    count = sum(p in long for p in prompts)
    if count:
        example = max(long, key=len)
        log.warning(
            "%d of %d %s are longer than the text encoder's %d tokens and are truncated (longest starts: %r)",
            count,
            len(prompts),
            what,
            limit,
            example[:60],
        )
    return count


def check_size(
    pipe: Any, fam: Any, height: int | None, width: int | None, names: tuple[str, str] = ("height", "width")
) -> None:
    """Refuse image sizes the pipeline cannot make, before any work: positive multiples of the VAE factor
    (x the patch size for transformers) and of 8 (the stock pipelines' own check). ``names`` name the two
    sizes in the message."""
    patch = getattr(fam.denoiser(pipe).config, "patch_size", None) or 1
    m = math.lcm(8, int(pipe.vae_scale_factor) * int(patch))
    for name, v in zip(names, (height, width), strict=True):
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


def check_seeds(seeds: Sequence[int]) -> None:
    """Refuse per-image seeds outside 0 .. SEED_MAX (a first seed near the top overflows for later images)."""
    if seeds and (min(seeds) < 0 or max(seeds) > SEED_MAX):
        raise InputError(
            f"Seeds must lie in 0..{SEED_MAX}; these run from {min(seeds)} to {max(seeds)} "
            "(image i uses seed + i). Pick a smaller seed."
        )


def available_memory(device: Any) -> int | None:
    """Bytes free for new tensors on ``device``: CUDA's free memory, else the host's available memory (None
    when unknown)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_memory(need: int, device: Any, what: str, advice: str) -> None:
    """Refuse work whose memory need (a lower bound, estimated by the caller) exceeds what ``device`` has free,
    before any of it runs; warn when it takes more than half."""
    free = available_memory(device)
    if free is None:
        return
    gib = 2**30
    if need > free:
        raise InputError(
            f"{what} needs at least {need / gib:.1f} GiB of memory; {free / gib:.1f} GiB are free. {advice}"
        )
    if need > free // 2:
        log.warning("%s needs at least %.1f of the %.1f GiB free. %s", what, need / gib, free / gib, advice)


def sampling_memory(pipe: Any, fam: Any, batch: int, height: int | None, width: int | None) -> int:
    """A lower bound of the memory one pipeline call of ``batch`` images needs: the float32 images it returns
    and the VAE decoder's widest activation (its first block's channels at full size, twice: in and out)."""
    size = fam.default_size(pipe)
    pixels = batch * (height or size) * (width or size)
    vae = getattr(pipe, "vae", None)
    channels = vae.config.block_out_channels[0] if vae is not None else 0
    itemsize = vae.dtype.itemsize if vae is not None else 4
    return pixels * (3 * 4 + 2 * channels * itemsize)
