"""Full-size architectures with random weights (configs shipped as data), for speed measurements.

Speed does not depend on weights, so these need no download. The tokenizer is a small stand-in (token ids stay
inside the real vocabulary size); text quality is irrelevant here. Modules are created directly on the target
device in the target dtype, so a full-size model never passes through CPU memory in float32.

PixArt's T5-XXL encoder (4.7B parameters) is only built on request (``full_text_encoder=True``); by default a
one-layer T5 of the same width stands in (the text encoder runs once per prompt, not per step).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ARCH_DIR = Path(__file__).resolve().parent
WORDS = (
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "dog",
    "on",
    "beach",
    "red",
    "blue",
    "car",
    "in",
    "city",
    "at",
    "night",
)


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
        return CLIPTokenizer(
            str(Path(d) / "vocab.json"),
            str(Path(d) / "merges.txt"),
            model_max_length=max_length,
            pad_token="<|endoftext|>",
        )


def word_t5_tokenizer(words=WORDS, max_length: int = 120):
    """A real T5 tokenizer (Unigram, via the tokenizers library) whose vocabulary is a few whole words."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [
        ("\u2581" + w, -1.0) for w in words
    ]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


@contextlib.contextmanager
def on_device(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` ("meta": shapes only, no memory)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _clip(te: dict[str, Any], with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    # token ids of the stand-in tokenizer: <|startoftext|> = 0, <|endoftext|> = 1 (also the pad token)
    return cls(CLIPTextConfig(**{**te, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}))


def build_components(cfg: dict[str, Any], *, full_text_encoder: bool = False) -> dict[str, Any]:
    """The pipeline's modules from an architecture config (created under the current device/dtype)."""
    from diffusers import AutoencoderKL

    family = cfg["family"]
    out: dict[str, Any] = {"vae": AutoencoderKL(**cfg["vae"])}
    if family == "sd":
        from diffusers import UNet2DConditionModel

        out |= {"unet": UNet2DConditionModel(**cfg["unet"]), "text_encoder": _clip(cfg["text_encoder"])}
    elif family == "sdxl":
        from diffusers import UNet2DConditionModel

        out |= {
            "unet": UNet2DConditionModel(**cfg["unet"]),
            "text_encoder": _clip(cfg["text_encoder"]),
            "text_encoder_2": _clip(cfg["text_encoder_2"], with_projection=True),
        }
    elif family == "pixart":
        from diffusers import PixArtTransformer2DModel
        from transformers import T5Config, T5EncoderModel

        te = cfg["text_encoder"] if full_text_encoder else {**cfg["text_encoder"], **cfg["stub_text_encoder"]}
        out |= {
            "transformer": PixArtTransformer2DModel(**cfg["transformer"]),
            "text_encoder": T5EncoderModel(T5Config(**te)),
        }
    else:
        raise ValueError(f"No random builder for family {family}")
    return out


def param_counts(name: str, *, full_text_encoder: bool = True) -> dict[str, int]:
    """Parameters per module of architecture ``name``, counted on the meta device (no memory, no download)."""
    with on_device("meta", torch.float32):
        mods = build_components(arch_config(name), full_text_encoder=full_text_encoder)
    return {k: sum(p.numel() for p in m.parameters()) for k, m in mods.items()}


def random_pipeline(
    name: str,
    *,
    dtype: torch.dtype = torch.float16,
    device: str = "cuda",
    seed: int = 0,
    full_text_encoder: bool = False,
):
    """A stock diffusers pipeline of architecture ``name`` (``available()``) with random weights.

    ``full_text_encoder``: PixArt only, build the full T5-XXL encoder (4.7B parameters) instead of a
    one-layer stand-in of the same width.
    """
    from diffusers import DPMSolverMultistepScheduler

    cfg = arch_config(name)
    family = cfg["family"]
    torch.manual_seed(seed)
    with on_device(device, dtype):
        mods = build_components(cfg, full_text_encoder=full_text_encoder)
    scheduler = DPMSolverMultistepScheduler(**cfg["scheduler"])
    if family == "sd":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            **mods,
            tokenizer=word_clip_tokenizer(),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            **mods, tokenizer=word_clip_tokenizer(), tokenizer_2=word_clip_tokenizer(), scheduler=scheduler
        )
    else:
        from diffusers import PixArtAlphaPipeline

        pipe = PixArtAlphaPipeline(**mods, tokenizer=word_t5_tokenizer(), scheduler=scheduler)
    pipe._dicecfg_source = f"random:{name}"
    return pipe.to(device=device, dtype=dtype)
