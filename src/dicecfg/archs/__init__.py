"""Full-size architectures with random weights (configs shipped as data), for speed measurements.

Speed does not depend on weights, so these need no download. The tokenizer is a small stand-in (token ids stay
inside the real vocabulary size); text quality is irrelevant here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

ARCH_DIR = Path(__file__).resolve().parent
WORDS = ("a", "photo", "of", "the", "cat", "dog", "on", "beach", "red", "blue", "car", "in", "city", "at", "night")


def available() -> list[str]:
    return sorted(p.stem for p in ARCH_DIR.glob("*.json"))


def arch_config(name: str) -> dict[str, Any]:
    path = ARCH_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"Unknown architecture '{name}'. Known: {', '.join(available())}.")
    return json.loads(path.read_text())


def word_clip_tokenizer(words=WORDS, max_length: int = 77):
    """A real CLIPTokenizer whose vocabulary is a few whole words (BPE merges build each word)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: list[str] = []
    for tok in ("<|startoftext|>", "<|endoftext|>", "!"):
        vocab.setdefault(tok, len(vocab))
    for ch in sorted({c for w in words for c in w}):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        while len(pieces) > 1:
            m = f"{pieces[0]} {pieces[1]}"
            if m not in merges:
                merges.append(m)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"),
                             model_max_length=max_length, pad_token="<|endoftext|>")


def random_pipeline(name: str, *, dtype: torch.dtype = torch.float16, device: str = "cuda", seed: int = 0):
    """A stock diffusers pipeline of architecture ``name`` with random weights."""
    cfg = arch_config(name)
    torch.manual_seed(seed)
    if cfg["family"] == "sd":
        from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        tok = word_clip_tokenizer()
        te = cfg["text_encoder"]
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**te, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}))
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**cfg["vae"]), text_encoder=text_encoder, tokenizer=tok,
            unet=UNet2DConditionModel(**cfg["unet"]), scheduler=DPMSolverMultistepScheduler(**cfg["scheduler"]),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:  # pragma: no cover - other families register their builders in their own issue
        raise ValueError(f"No random builder for family {cfg['family']}")
    pipe._dicecfg_source = f"random:{name}"
    return pipe.to(device=device, dtype=dtype)
